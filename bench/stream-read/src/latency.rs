//! `--latency`: publish → delivered for single messages at the stream's live end, read
//! with lapin as the gateway's hub reads and with rabbitmq-stream-client. This is the
//! wait a reply through the outbound stream adds to a gateway request (BENCHMARKS.md,
//! "Where the rpc gap comes from").

use std::time::Instant;

use anyhow::{bail, Context as _};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Connection};
use rabbitmq_stream_client::types::OffsetSpecification;
use rabbitmq_stream_client::{Consumer, Environment};

use crate::{consume_lapin, position_of, Args, ACK_EVERY};

/// One run's percentiles of publish → delivered, µs.
#[derive(Debug, Clone, Copy)]
struct Run {
    p50: f64,
    p99: f64,
}

/// Where a run's messages are read from.
enum Reader {
    Lapin(Channel, Box<lapin::Consumer>),
    StreamClient(Consumer),
}

impl Reader {
    /// The next message's body, with its acknowledgement done as the hub does.
    async fn next(&mut self) -> anyhow::Result<Vec<u8>> {
        match self {
            Reader::Lapin(_, consumer) => {
                let d = consumer
                    .next()
                    .await
                    .context("lapin: the consumer ended")?
                    .context("lapin: a delivery failed")?;
                let at = position_of(&d)?;
                if (at + 1).is_multiple_of(ACK_EVERY) {
                    d.acker.ack(BasicAckOptions { multiple: true }).await?;
                }
                Ok(d.data)
            }
            Reader::StreamClient(consumer) => {
                let d = consumer
                    .next()
                    .await
                    .context("rabbitmq-stream-client: the consumer ended")?
                    .context("rabbitmq-stream-client: a delivery failed")?;
                Ok(d.message().data().map(<[u8]>::to_vec).unwrap_or_default())
            }
        }
    }

    async fn close(self) {
        match self {
            Reader::Lapin(ch, _) => {
                let _ = ch.close(200, "done".into()).await;
            }
            Reader::StreamClient(c) => {
                let _ = c.handle().close().await;
            }
        }
    }
}

async fn open_lapin(conn: &Connection, stream: &str) -> anyhow::Result<Reader> {
    let (ch, consumer) = consume_lapin(conn, stream, "next").await?;
    Ok(Reader::Lapin(ch, Box::new(consumer)))
}

async fn open_stream_client(env: &Environment, stream: &str) -> anyhow::Result<Reader> {
    let consumer = env
        .consumer()
        .offset(OffsetSpecification::Next)
        .build(stream)
        .await
        .context("rabbitmq-stream-client: subscribing")?;
    Ok(Reader::StreamClient(consumer))
}

/// Runs both clients `args.runs` times, taking turns going first, and prints the table.
pub async fn compare(
    args: &Args,
    conn: &Connection,
    env: &Environment,
    stream: &str,
) -> anyhow::Result<()> {
    if args.messages < 10 {
        bail!("--messages must be at least 10 with --latency");
    }
    let publisher = conn.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let (mut lapin_runs, mut client_runs) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        for lapin_turn in [run % 2 == 0, run % 2 != 0] {
            let reader = if lapin_turn {
                open_lapin(conn, stream).await?
            } else {
                open_stream_client(env, stream).await?
            };
            let name = if lapin_turn {
                "lapin"
            } else {
                "rabbitmq-stream-client"
            };
            let r = tokio::time::timeout(args.timeout_s, one_run(args, &publisher, stream, reader))
                .await
                .with_context(|| format!("{name}: a run took longer than {:?}", args.timeout_s))?
                .with_context(|| format!("{name}: run {}", run + 1))?;
            eprintln!(
                "run {}: {name:<22} delivered p50 {:.0} µs, p99 {:.0} µs",
                run + 1,
                r.p50,
                r.p99
            );
            if lapin_turn {
                lapin_runs.push(r)
            } else {
                client_runs.push(r)
            }
        }
    }
    let med = |runs: &[Run], f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "Publish (AMQP, persistent, confirms, one at a time) → delivered at the stream's live end, {} B, median of {} runs of {} messages (first tenth warm-up):",
        args.size, args.runs, args.messages
    );
    println!("| client | p50 µs | p99 µs |");
    println!("|---|---:|---:|");
    for (name, runs) in [
        ("lapin, AMQP 0-9-1 (`x-stream-offset` next)", &lapin_runs),
        ("rabbitmq-stream-client, stream protocol", &client_runs),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} |",
            med(runs, |r| r.p50),
            med(runs, |r| r.p99)
        );
    }
    println!(
        "rabbitmq-stream-client − lapin: {:+.0} µs at p50",
        med(&client_runs, |r| r.p50) - med(&lapin_runs, |r| r.p50)
    );
    Ok(())
}

/// Publishes `args.messages` messages one at a time and times each to its delivery.
async fn one_run(
    args: &Args,
    publisher: &Channel,
    stream: &str,
    mut reader: Reader,
) -> anyhow::Result<Run> {
    let padding = "x".repeat(args.size.saturating_sub(20));
    let warmup = args.messages / 10;
    let mut took = Vec::new();
    for n in 0..args.messages {
        let body = format!("{n:020}{padding}");
        let started = Instant::now();
        let confirm = publisher
            .basic_publish(
                ShortString::from(""),
                ShortString::from(stream),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        let delivered = async {
            let data = reader.next().await?;
            let at = started.elapsed();
            let seq: u64 = std::str::from_utf8(&data[..20.min(data.len())])
                .ok()
                .and_then(|s| s.parse().ok())
                .context("a message that is not this run's")?;
            if seq != n {
                bail!("expected message {n}, got {seq}");
            }
            Ok(at)
        };
        let confirmed = async {
            if !confirm.await?.is_ack() {
                bail!("message {n} was not confirmed");
            }
            Ok(())
        };
        let (at, ()) = tokio::try_join!(delivered, confirmed)?;
        if n >= warmup {
            took.push(at);
        }
    }
    reader.close().await;
    took.sort();
    let pick = |q: f64| {
        let i = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1;
        took[i].as_secs_f64() * 1e6
    };
    Ok(Run {
        p50: pick(0.50),
        p99: pick(0.99),
    })
}
