//! The SVG chart: for each of publish, rpc and fanout, throughput and p99 latency
//! against client count, gateway next to raw AMQP (and gateway+deflate, when it ran). Drawn with plotters' SVG backend,
//! which writes text as SVG `<text>`, so no system fonts are needed.

use std::path::Path;

use plotters::coord::combinators::IntoLogRange;
use plotters::prelude::*;

use crate::config::ScenarioKind;
use crate::error::{BenchError, Result};
use crate::measurement::Figures;
use crate::report::Report;
use crate::scenario::Target;

const GATEWAY: RGBColor = RGBColor(0xd9, 0x48, 0x1b);
const RAW: RGBColor = RGBColor(0x1f, 0x5f, 0xa8);
const GATEWAY_DEFLATE: RGBColor = RGBColor(0x2e, 0x8b, 0x57);

/// Draws the chart of `report` into `path` (SVG).
///
/// # Errors
/// `Chart` when there is nothing to draw or the file cannot be written.
pub fn draw(report: &Report, path: &Path) -> Result<()> {
    let fail = |why: String| BenchError::Chart {
        path: path.to_path_buf(),
        why,
    };
    let scenarios: Vec<ScenarioKind> = [
        ScenarioKind::Publish,
        ScenarioKind::Rpc,
        ScenarioKind::Fanout,
    ]
    .into_iter()
    .filter(|s| {
        report
            .results
            .iter()
            .any(|r| r.scenario == *s && r.median.is_some())
    })
    .collect();
    if scenarios.is_empty() {
        return Err(fail("no publish, rpc or fanout figures to draw".into()));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let height = 40 + 300 * scenarios.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let (title, body) = root.split_vertically(40);
    let deflate = report
        .results
        .iter()
        .any(|r| r.target == Target::GatewayDeflate && r.median.is_some());
    title
        .titled(
            if deflate {
                "warren-bench: gateway and gateway+deflate vs raw AMQP (median of runs)"
            } else {
                "warren-bench: gateway vs raw AMQP (median of runs)"
            },
            ("sans-serif", 20),
        )
        .map_err(|e| fail(e.to_string()))?;
    let panels = body.split_evenly((scenarios.len(), 2));
    for (row, s) in scenarios.iter().enumerate() {
        let unit = match s {
            ScenarioKind::Publish => "acked writes/s",
            ScenarioKind::Rpc => "requests/s",
            _ => "deliveries/s",
        };
        panel(report, &panels[row * 2], *s, unit, |f| f.throughput)
            .map_err(|e| fail(e.to_string()))?;
        panel(report, &panels[row * 2 + 1], *s, "p99 latency, ms", |f| {
            f.p99_ms
        })
        .map_err(|e| fail(e.to_string()))?;
    }
    root.present().map_err(|e| fail(e.to_string()))?;
    Ok(())
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn series(report: &Report, s: ScenarioKind, t: Target, f: fn(&Figures) -> f64) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = report
        .results
        .iter()
        .filter(|r| r.scenario == s && r.target == t)
        .filter_map(|r| r.median.map(|m| (r.clients as f64, f(&m))))
        .filter(|(_, y)| y.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

fn panel(
    report: &Report,
    area: &Area<'_>,
    s: ScenarioKind,
    y_label: &str,
    f: fn(&Figures) -> f64,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let gw = series(report, s, Target::Gateway, f);
    let raw = series(report, s, Target::Raw, f);
    let deflate = series(report, s, Target::GatewayDeflate, f);
    let all = gw.iter().chain(raw.iter()).chain(deflate.iter());
    let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let y_max = all.map(|p| p.1).fold(0.0, f64::max).max(1e-3) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{} — {}", s.name(), y_label), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((0.8f64..x_max * 1.25).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE.mix(0.0))
        .x_desc("clients")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 10_000.0 {
                format!("{:.0}k", y / 1000.0)
            } else if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()?;
    for (name, pts, color) in [
        ("gateway", gw, GATEWAY),
        ("gateway+deflate", deflate, GATEWAY_DEFLATE),
        ("raw AMQP", raw, RAW),
    ] {
        if pts.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}
