//! `warren-bench-reply-path`: what it costs a reply to come back through a RabbitMQ
//! stream, as Warren's replies do (the `reply_to` of a gateway request is the outbound
//! stream, which the gateway reads), rather than through a classic reply queue, as
//! RabbitMQ's Web-STOMP (`/temp-queue/`) and raw AMQP clients (an exclusive reply
//! queue) receive theirs.
//!
//! One message at a time, as a service replies: published persistent with publisher
//! confirms to the default exchange, routed to
//!
//! - **stream**: a stream read as the gateway's hub reads the outbound stream
//!   (`basic.consume` with `x-stream-offset`, prefetch 2,000, one multiple ack per 200;
//!   `gateway/src/hub.rs`);
//! - **queue**: an exclusive, server-named classic queue with the same consumer
//!   settings;
//! - **direct**: RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`, no queue at all,
//!   consumed without acks), as the gateway's HTTP API and auth client get their
//!   answers: what replies that skipped the stream would cost. Nothing keeps such a
//!   reply when its reader is gone.
//!
//! For each message: publish → delivered to the consumer (what a client waiting for
//! its reply sees) and publish → confirmed (what a service that acknowledges a request
//! only after its reply is confirmed waits for before it may take the next one). The
//! kinds take turns going first, `--runs` times; the first tenth of each run is
//! warm-up. Prints the medians of the runs' p50 and p99 and the difference of each
//! kind from the classic queue; exits non-zero when a message is not delivered, or
//! not in order, within `--timeout-s`.

use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tokio::time::Instant;

/// RabbitMQ's pseudo-queue for direct replies.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The gateway's hub reader settings (gateway/src/hub.rs: HUB_PREFETCH, ACK_EVERY).
const PREFETCH: u16 = 2_000;
const ACK_EVERY: u64 = 200;

/// Reply latency through a stream against a classic reply queue, in the same run.
#[derive(Debug, Parser)]
#[command(name = "warren-bench-reply-path")]
struct Args {
    /// AMQP URI of the RabbitMQ to use.
    #[arg(long, env = "AMQP_ADDR", default_value = "amqp://127.0.0.1:5672/%2f")]
    amqp_uri: String,
    /// Messages per run and kind, sent one at a time.
    #[arg(long, default_value_t = 1_000)]
    messages: u64,
    /// Body size of each message, in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Runs per kind; the medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Longest one message may take to be delivered and confirmed before the run fails.
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    timeout_s: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("seconds expected: {e}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    Queue,
    Direct,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Stream, Kind::Queue, Kind::Direct];

    fn name(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Queue => "classic queue",
            Kind::Direct => "direct reply-to",
        }
    }
}

/// The runs of each kind, in [`Kind::ALL`]'s order.
type Runs = [Vec<Run>; 3];

/// One figure of a run.
type Measure = fn(&Run) -> f64;

/// One run's percentiles, µs.
#[derive(Debug, Clone, Copy)]
struct Run {
    deliver_p50: f64,
    deliver_p99: f64,
    confirm_p50: f64,
    confirm_p99: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.messages < 10 || args.runs == 0 {
        bail!("--messages must be at least 10 and --runs at least 1");
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let stream = format!("bench-reply-path-{}", &id[..8]);
    let publisher = connect(&args.amqp_uri).await?;
    let reader = connect(&args.amqp_uri).await?;
    let setup = reader.create_channel().await?;
    let mut stream_args = FieldTable::default();
    stream_args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString("stream".into()),
    );
    setup
        .queue_declare(
            stream.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            stream_args,
        )
        .await
        .context("declaring the stream (RabbitMQ 3.9 or later)")?;
    let outcome = measure(&args, &publisher, &reader, &stream).await;
    let _ = setup
        .queue_delete(stream.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = publisher.close(200, "done".into()).await;
    let _ = reader.close(200, "done".into()).await;
    report(&args, &outcome?);
    Ok(())
}

async fn connect(uri: &str) -> anyhow::Result<Connection> {
    Connection::connect(uri, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to RabbitMQ at {uri}"))
}

async fn measure(
    args: &Args,
    publisher: &Connection,
    reader: &Connection,
    stream: &str,
) -> anyhow::Result<Runs> {
    let mut runs: Runs = Default::default();
    for run in 0..args.runs {
        // Each kind goes first in turn.
        let mut order = Kind::ALL;
        order.rotate_left(run % Kind::ALL.len());
        for kind in order {
            let r = one_run(args, publisher, reader, stream, kind)
                .await
                .with_context(|| format!("run {} through the {}", run + 1, kind.name()))?;
            eprintln!(
                "run {} {:>13}: deliver p50 {:.0} µs p99 {:.0} µs, confirm p50 {:.0} µs p99 {:.0} µs",
                run + 1,
                kind.name(),
                r.deliver_p50,
                r.deliver_p99,
                r.confirm_p50,
                r.confirm_p99
            );
            let i = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
            runs[i].push(r);
        }
    }
    Ok(runs)
}

/// Opens the consumer of one run: the stream from its end, a fresh reply queue, or
/// direct reply-to; and the routing key that reaches it from the default exchange.
async fn consume(
    reader: &Connection,
    publisher: &Channel,
    stream: &str,
    kind: Kind,
) -> anyhow::Result<(Channel, Consumer, String)> {
    let ch = reader.create_channel().await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let (queue, consume_args) = match kind {
        Kind::Direct => {
            let consumer = ch
                .basic_consume(
                    DIRECT_REPLY_TO.into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let address = direct_address(&ch, publisher).await?;
            return Ok((ch, consumer, address));
        }
        Kind::Stream => {
            let mut a = FieldTable::default();
            a.insert(
                ShortString::from("x-stream-offset"),
                AMQPValue::LongString("next".into()),
            );
            (stream.to_string(), a)
        }
        Kind::Queue => (scratch_queue(&ch).await?, FieldTable::default()),
    };
    let consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            consume_args,
        )
        .await?;
    Ok((ch, consumer, queue))
}

/// An exclusive, server-named classic queue on `ch`; its name.
async fn scratch_queue(ch: &Channel) -> anyhow::Result<String> {
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.name().to_string())
}

/// The address RabbitMQ gives `requester`'s direct reply-to consumer: what a request
/// it publishes carries as `reply_to`, read back from a probe through a scratch queue.
async fn direct_address(requester: &Channel, other: &Channel) -> anyhow::Result<String> {
    let probe = ShortString::from(scratch_queue(other).await?);
    requester
        .basic_publish(
            "".into(),
            probe.clone(),
            BasicPublishOptions::default(),
            b"probe",
            BasicProperties::default().with_reply_to(DIRECT_REPLY_TO.into()),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = other
            .basic_get(probe.clone(), BasicGetOptions { no_ack: true })
            .await?;
        if let Some(m) = got {
            let _ = other
                .queue_delete(probe.clone(), QueueDeleteOptions::default())
                .await;
            return m
                .delivery
                .properties
                .reply_to()
                .as_ref()
                .map(|r| r.to_string())
                .context("the probe came without its reply_to");
        }
        if Instant::now() > deadline {
            bail!("the direct reply-to probe did not arrive");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn one_run(
    args: &Args,
    publisher: &Connection,
    reader: &Connection,
    stream: &str,
    kind: Kind,
) -> anyhow::Result<Run> {
    let pch = publisher.create_channel().await?;
    let (rch, mut consumer, queue) = consume(reader, &pch, stream, kind).await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    let padding = "x".repeat(args.size.saturating_sub(20));
    let warmup = args.messages / 10;
    let (mut deliver, mut confirm) = (Vec::new(), Vec::new());
    for n in 0..args.messages {
        let body = format!("{n:020}{padding}");
        let started = Instant::now();
        let pending = pch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        let confirmed = async {
            let c = pending.await?;
            if !c.is_ack() {
                bail!("message {n} was not confirmed: {c:?}");
            }
            Ok(started.elapsed())
        };
        let delivered = async {
            let d = consumer
                .next()
                .await
                .context("the consumer ended")?
                .context("the consumer failed")?;
            let took = started.elapsed();
            let seq: u64 = std::str::from_utf8(&d.data[..20.min(d.data.len())])
                .ok()
                .and_then(|s| s.parse().ok())
                .context("a message that is not this run's")?;
            if seq != n {
                bail!("expected message {n}, got {seq}");
            }
            if kind != Kind::Direct && (n + 1) % ACK_EVERY == 0 {
                d.acker.ack(BasicAckOptions { multiple: true }).await?;
            }
            Ok(took)
        };
        let (c, d) = tokio::time::timeout(args.timeout_s, async {
            tokio::try_join!(confirmed, delivered)
        })
        .await
        .with_context(|| format!("message {n} took over {:?}", args.timeout_s))??;
        if n >= warmup {
            confirm.push(c);
            deliver.push(d);
        }
    }
    let _ = pch.close(200, "done".into()).await;
    let _ = rch.close(200, "done".into()).await;
    deliver.sort();
    confirm.sort();
    Ok(Run {
        deliver_p50: micros(percentile(&deliver, 0.50)),
        deliver_p99: micros(percentile(&deliver, 0.99)),
        confirm_p50: micros(percentile(&confirm, 0.50)),
        confirm_p99: micros(percentile(&confirm, 0.99)),
    })
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn report(args: &Args, runs: &Runs) {
    let med = |runs: &[Run], f: Measure| median(runs.iter().map(f).collect());
    println!(
        "Reply path, one {} B message at a time, persistent, publisher confirms; median of {} runs of {} messages (first tenth warm-up)",
        args.size, args.runs, args.messages
    );
    println!();
    println!(
        "| measure | stream | classic queue | direct reply-to | stream − queue | direct − queue |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let rows: [(&str, Measure); 4] = [
        ("publish → delivered, p50 µs", |r| r.deliver_p50),
        ("publish → delivered, p99 µs", |r| r.deliver_p99),
        ("publish → confirmed, p50 µs", |r| r.confirm_p50),
        ("publish → confirmed, p99 µs", |r| r.confirm_p99),
    ];
    for (name, f) in rows {
        let [s, q, d] = [0, 1, 2].map(|i| med(&runs[i], f));
        println!(
            "| {name} | {s:.0} | {q:.0} | {d:.0} | {:+.0} | {:+.0} |",
            s - q,
            d - q
        );
    }
}
