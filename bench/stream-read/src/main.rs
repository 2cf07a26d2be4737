//! `warren-bench-stream-read`: how fast one reader gets through a RabbitMQ stream with
//! each of the two clients the gateway could use, measured in the same run:
//!
//! - **lapin** (AMQP 0-9-1): `basic.consume` with `x-stream-offset`, prefetch 2,000 and
//!   one `basic.ack` (multiple) per 200 deliveries — exactly how the gateway's hub and
//!   its catch-up readers read the outbound stream (`gateway/src/hub.rs`);
//! - **rabbitmq-stream-client** 0.4.4 (the stream protocol, port 5552), with its
//!   default credits. Later releases (0.5 on) open every connection with the
//!   `exchange_command_versions` command of RabbitMQ 3.11, and RabbitMQ 3.10 (Debian
//!   12's, which Warren targets) closes the connection on it.
//!
//! The stream is filled once with `--messages` messages of `--size` bytes (published
//! with confirms), then read from its first position by each client in turn,
//! alternating which goes first, `--runs` times. For each read: messages/s, and the CPU
//! time the reading process and RabbitMQ spent per message. Prints the medians and
//! the ratio; exits non-zero if a reader did not get every message, in order, once.
//!
//! With `--latency`, it measures instead what the gateway's rpc waits for: one message
//! at a time, published persistent with confirms over AMQP as a service replies, and
//! the time from publish to delivery to each client reading the stream's live end
//! (`next`), the clients taking turns going first. Prints the medians of each run's p50
//! and p99.
//!
//! A workspace of its own (see `Cargo.toml`); `./dev bench-stream-read` enables the
//! stream plugin, builds it in release mode and runs it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rabbitmq_stream_client::types::OffsetSpecification;
use rabbitmq_stream_client::Environment;

mod latency;

/// The gateway's hub reader settings (gateway/src/hub.rs: HUB_PREFETCH, ACK_EVERY).
const HUB_PREFETCH: u16 = 2_000;
const ACK_EVERY: u64 = 200;

/// Reads one RabbitMQ stream with lapin and with rabbitmq-stream-client, alternating.
#[derive(Debug, Parser)]
#[command(name = "warren-bench-stream-read")]
struct Args {
    /// AMQP URI of the RabbitMQ to use (the stream is declared and filled over AMQP).
    #[arg(long, env = "AMQP_ADDR", default_value = "amqp://127.0.0.1:5672/%2f")]
    amqp_uri: String,
    /// Host of RabbitMQ's stream protocol listener (the rabbitmq_stream plugin).
    #[arg(long, default_value = "127.0.0.1")]
    stream_host: String,
    /// Port of RabbitMQ's stream protocol listener.
    #[arg(long, default_value_t = 5552)]
    stream_port: u16,
    /// Messages in the stream; each run reads all of them.
    #[arg(long, default_value_t = 200_000)]
    messages: u64,
    /// Body size of each message, in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Reads per client; the medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Measure publish → delivered latency of single messages instead of read speed:
    /// `--messages` becomes the messages per run (1,000 is plenty).
    #[arg(long)]
    latency: bool,
    /// Longest one read may take before the run fails.
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    timeout_s: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("seconds expected: {e}"))
}

/// One read of the whole stream.
#[derive(Debug, Clone, Copy)]
struct Read {
    per_s: f64,
    /// CPU of this process per message, µs.
    client_us: f64,
    /// CPU of RabbitMQ per message, µs (0 when its process was not found).
    broker_us: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let stream = format!("bench-stream-read-{}", std::process::id());
    let conn = Connection::connect(&args.amqp_uri, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ over AMQP")?;
    let env = Environment::builder()
        .host(&args.stream_host)
        .port(args.stream_port)
        .build()
        .await
        .with_context(|| {
            format!(
                "connecting to the stream protocol on {}:{} (is the rabbitmq_stream plugin \
                 enabled? `./dev bench-stream-read` enables it)",
                args.stream_host, args.stream_port
            )
        })?;
    let result = if args.latency {
        declare(&conn, &stream).await?;
        latency::compare(&args, &conn, &env, &stream).await
    } else {
        fill(&conn, &stream, args.messages, args.size).await?;
        compare(&args, &conn, &env, &stream).await
    };
    let ch = conn.create_channel().await?;
    let _ = ch
        .queue_delete(
            ShortString::from(stream.as_str()),
            QueueDeleteOptions::default(),
        )
        .await;
    let _ = conn.close(200, "done".into()).await;
    result
}

async fn compare(
    args: &Args,
    conn: &Connection,
    env: &Environment,
    stream: &str,
) -> anyhow::Result<()> {
    let mut lapin_reads = Vec::new();
    let mut client_reads = Vec::new();
    for run in 0..args.runs {
        for first_lapin in [run % 2 == 0, run % 2 != 0] {
            if first_lapin {
                let r = measure(args, || read_lapin(conn, stream, args.messages)).await?;
                eprintln!("run {}: lapin                  {}", run + 1, show(&r));
                lapin_reads.push(r);
            } else {
                let r = measure(args, || read_stream_client(env, stream, args.messages)).await?;
                eprintln!("run {}: rabbitmq-stream-client {}", run + 1, show(&r));
                client_reads.push(r);
            }
        }
    }
    let l = median(&lapin_reads);
    let c = median(&client_reads);
    println!(
        "Reading {} messages of {} B from one stream, median of {} runs each:",
        args.messages, args.size, args.runs
    );
    println!("| client | messages/s | client CPU µs/msg | RabbitMQ CPU µs/msg |");
    println!("|---|---:|---:|---:|");
    println!(
        "| lapin, AMQP 0-9-1 (`x-stream-offset`, prefetch {HUB_PREFETCH}) | {:.0} | {:.2} | {:.2} |",
        l.per_s, l.client_us, l.broker_us
    );
    println!(
        "| rabbitmq-stream-client, stream protocol | {:.0} | {:.2} | {:.2} |",
        c.per_s, c.client_us, c.broker_us
    );
    println!(
        "rabbitmq-stream-client ÷ lapin: {:.2}× messages/s, {:.2}× RabbitMQ CPU per message",
        c.per_s / l.per_s,
        if l.broker_us > 0.0 {
            c.broker_us / l.broker_us
        } else {
            f64::NAN
        }
    );
    Ok(())
}

fn show(r: &Read) -> String {
    format!(
        "{:>9.0} msg/s, client {:.2} µs/msg, RabbitMQ {:.2} µs/msg",
        r.per_s, r.client_us, r.broker_us
    )
}

/// The median of each figure on its own.
fn median(reads: &[Read]) -> Read {
    let pick = |f: fn(&Read) -> f64| {
        let mut v: Vec<f64> = reads.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Read {
        per_s: pick(|r| r.per_s),
        client_us: pick(|r| r.client_us),
        broker_us: pick(|r| r.broker_us),
    }
}

/// Times one read of the whole stream, with the CPU this process and RabbitMQ spent.
async fn measure<F, Fut>(args: &Args, read: F) -> anyhow::Result<Read>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let broker = broker_pid();
    let (cpu0, broker0) = (self_cpu(), broker.map_or(Duration::ZERO, proc_cpu));
    let start = Instant::now();
    tokio::time::timeout(args.timeout_s, read())
        .await
        .with_context(|| format!("a read took longer than {:?}", args.timeout_s))??;
    let took = start.elapsed();
    let (cpu1, broker1) = (self_cpu(), broker.map_or(Duration::ZERO, proc_cpu));
    let n = args.messages as f64;
    Ok(Read {
        per_s: n / took.as_secs_f64(),
        client_us: (cpu1 - cpu0).as_secs_f64() * 1e6 / n,
        broker_us: broker1.saturating_sub(broker0).as_secs_f64() * 1e6 / n,
    })
}

/// Declares the stream.
async fn declare(conn: &Connection, stream: &str) -> anyhow::Result<()> {
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(4 * 1024 * 1024 * 1024),
    );
    ch.queue_declare(
        ShortString::from(stream),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .context("declaring the stream")?;
    Ok(())
}

/// Declares the stream and publishes `n` messages to it, with confirms.
async fn fill(conn: &Connection, stream: &str, n: u64, size: usize) -> anyhow::Result<()> {
    declare(conn, stream).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![b'x'; size];
    eprintln!("filling stream {stream} with {n} messages of {size} B");
    let mut pending = Vec::new();
    for _ in 0..n {
        let confirm = ch
            .basic_publish(
                ShortString::from(""),
                ShortString::from(stream),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push(confirm);
        if pending.len() >= 1_000 {
            for c in pending.drain(..) {
                c.await?;
            }
        }
    }
    for c in pending {
        c.await?;
    }
    Ok(())
}

/// A lapin consumer of `stream` from `offset` (`first`, `next`, ...), with the hub's
/// prefetch, on a channel of its own.
async fn consume_lapin(
    conn: &Connection,
    stream: &str,
    offset: &str,
) -> anyhow::Result<(lapin::Channel, lapin::Consumer)> {
    let ch = conn.create_channel().await?;
    ch.basic_qos(HUB_PREFETCH, BasicQosOptions::default())
        .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString(offset.into()),
    );
    let consumer = ch
        .basic_consume(
            ShortString::from(stream),
            ShortString::from("bench-stream-read"),
            BasicConsumeOptions::default(),
            args,
        )
        .await?;
    Ok((ch, consumer))
}

/// The stream position RabbitMQ gives a delivery (its `x-stream-offset` header).
fn position_of(d: &lapin::message::Delivery) -> anyhow::Result<u64> {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-stream-offset").cloned())
    {
        Some(AMQPValue::LongLongInt(o)) => Ok(o as u64),
        other => bail!("lapin: a delivery without x-stream-offset: {other:?}"),
    }
}

/// Reads the stream from its first position with lapin, as the gateway's hub does.
async fn read_lapin(conn: &Connection, stream: &str, n: u64) -> anyhow::Result<()> {
    let (ch, mut consumer) = consume_lapin(conn, stream, "first").await?;
    let mut got = 0u64;
    while got < n {
        let Some(d) = consumer.next().await else {
            bail!("lapin: the consumer ended after {got} of {n} messages");
        };
        let d = d?;
        let at = position_of(&d)?;
        if at != got {
            bail!("lapin: position {at} where {got} was expected");
        }
        got += 1;
        if got.is_multiple_of(ACK_EVERY) {
            d.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    ch.close(200, "done".into()).await?;
    Ok(())
}

/// Reads the stream from its first position with rabbitmq-stream-client.
async fn read_stream_client(env: &Environment, stream: &str, n: u64) -> anyhow::Result<()> {
    let mut consumer = env
        .consumer()
        .offset(OffsetSpecification::First)
        .build(stream)
        .await
        .context("rabbitmq-stream-client: subscribing")?;
    let mut got = 0u64;
    while got < n {
        let Some(d) = consumer.next().await else {
            bail!("rabbitmq-stream-client: the consumer ended after {got} of {n} messages");
        };
        let d = d.context("rabbitmq-stream-client: a delivery failed")?;
        if d.offset() != got {
            bail!(
                "rabbitmq-stream-client: position {} where {got} was expected",
                d.offset()
            );
        }
        got += 1;
    }
    consumer
        .handle()
        .close()
        .await
        .context("rabbitmq-stream-client: closing the consumer")?;
    Ok(())
}

/// CPU time (user + system) of this process.
fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// The pid of RabbitMQ: the `beam.smp` running `rabbit` that started first (the
/// system's node; private test nodes start later).
fn broker_pid() -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        if comm.trim() != "beam.smp" {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        // Arguments are NUL-separated: `-s rabbit boot`.
        if !String::from_utf8_lossy(&cmd).contains("rabbit\0boot") {
            continue;
        }
        if let Some(started) = stat_fields(pid).and_then(|f| f.get(19)?.parse::<u64>().ok()) {
            found.push((started, pid));
        }
    }
    found.into_iter().min().map(|(_, pid)| pid)
}

/// The fields of /proc/`pid`/stat after the command (which may hold spaces): field 3
/// onwards, so `state` is index 0.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// CPU time (user + system) of process `pid`, from /proc.
fn proc_cpu(pid: u32) -> Duration {
    let Some(f) = stat_fields(pid) else {
        return Duration::ZERO;
    };
    let ticks: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1_000 / hz)
}
