//! `warren-bench`: a load generator for the Warren gateway that measures the same work
//! done by raw AMQP clients against RabbitMQ in the same run.
//!
//! # Layout
//!
//! - [`config`]: the command line.
//! - [`stack`]: the gateway and demo service under test (started, or external).
//! - [`client`]: a protocol-v1 WebSocket client built on `warren_protocol`.
//! - [`amqp`]: raw lapin plumbing for the baseline and the fanout publisher.
//! - [`stomp`]: a STOMP 1.2 over WebSocket client for the Web-STOMP baseline.
//! - [`responder`]: a builtin raw-AMQP echo service (`--responder builtin`).
//! - [`scenario`]: publish, rpc, fanout and idle, each against the gateway or raw AMQP
//!   (rpc and fanout also against Web-STOMP).
//! - [`measurement`]: measured windows, tallies, percentiles, medians.
//! - [`process_stats`]: the gateway's memory and CPU from `/proc`.
//! - [`runner`]: sweeps, repetitions, medians, clean-up.
//! - [`report`]: tables, ratios, targets, JSON; [`chart`]: the SVG chart.

mod amqp;
mod chart;
mod client;
mod config;
mod error;
mod measurement;
mod process_stats;
mod report;
mod responder;
mod runner;
mod scenario;
mod stack;
mod stomp;

use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let config = config::Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warren_bench=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let (json, chart, markdown, strict) = (
        config.json.clone(),
        config.chart.clone(),
        config.markdown.clone(),
        config.strict,
    );
    let report = runtime.block_on(runner::run(config))?;
    println!("{}", report.table());
    if let Some(path) = json {
        report
            .write_json(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = chart {
        if report.results.iter().any(|r| r.median.is_some()) {
            chart::draw(&report, &path).with_context(|| format!("drawing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        } else {
            // Every run failed: say so through the table and --strict, not a chart error.
            eprintln!("no figures to draw: {} not written", path.display());
        }
    }
    if let Some(path) = markdown {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, report.markdown())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let problems = report.problems();
    if strict && !problems.is_empty() {
        anyhow::bail!(
            "{} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}
