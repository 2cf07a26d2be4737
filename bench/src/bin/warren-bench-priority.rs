//! `warren-bench-priority`: the switch latency of priority consumption
//! (`Service::consume_queues`). A worker is kept busy on the lower of two queues
//! (each message takes `--work-ms`); in each trial a message enters the empty higher
//! queue at a random moment of the current lower message, and the time until the
//! handler takes it is measured. In the same run, the source system's 5 s polling is
//! simulated on the very same arrival and end times: a poll at a random phase every
//! `--poll-ms` notices the higher message, and the worker switches after the lower
//! message in progress at that poll.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use lapin::types::ShortString;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::mpsc;
use tokio::time::Instant;
use warren_protocol::amqp::Names;
use warren_service::{topology, Context, HandlerError, Incoming, Outcome, Service, ServiceConfig};

/// Switch latency of priority consumption, next to simulated polling.
#[derive(Debug, Parser)]
#[command(name = "warren-bench-priority")]
struct Args {
    /// AMQP URI of the RabbitMQ to use.
    #[arg(long, env = "AMQP_ADDR", default_value = "amqp://127.0.0.1:5672/%2f")]
    amqp_uri: String,
    /// Trials (higher-priority messages sent while the worker is busy).
    #[arg(long, default_value_t = 200)]
    trials: usize,
    /// How long the handler works on each lower-priority message, in milliseconds.
    #[arg(long, default_value_t = 100)]
    work_ms: u64,
    /// Poll interval of the simulated polling worker, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    poll_ms: u64,
}

/// A handler event: a message (its body) started or ended, and when.
#[derive(Debug)]
enum Event {
    Start(String, Instant),
    End(String, Instant),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let ns = format!("bench-prio-{}", &id[..8]);
    let names = Names::new(&ns);
    let queues = vec![format!("{ns}.high"), format!("{ns}.low")];
    let connection = Connection::connect(&args.amqp_uri, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    for queue in &queues {
        topology::declare_work_queue(&connection, &names, queue, &ServiceConfig::default()).await?;
    }
    let producer = connection.create_channel().await?;
    producer
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let publish = |queue: String, body: String| {
        let producer = producer.clone();
        async move {
            producer
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default()
                        .with_message_id(ShortString::from(body.as_str()))
                        .with_delivery_mode(2),
                )
                .await?
                .await?;
            Ok::<_, lapin::Error>(())
        }
    };
    // Enough lower messages that the worker never runs out.
    for i in 0..args.trials + 20 {
        publish(queues[1].clone(), format!("low{i}")).await?;
    }

    let (tx, mut events) = mpsc::unbounded_channel();
    let tx = Arc::new(Mutex::new(tx));
    let work = Duration::from_millis(args.work_ms);
    let service = Service::connect(&args.amqp_uri, names.clone()).await?;
    service
        .consume_queues(&queues, move |_ctx: Context, msg: Incoming| {
            let tx = tx.clone();
            async move {
                let body = String::from_utf8_lossy(&msg.body).to_string();
                let _ = tx
                    .lock()
                    .unwrap()
                    .send(Event::Start(body.clone(), Instant::now()));
                if body.starts_with("low") {
                    tokio::time::sleep(work).await;
                }
                let _ = tx.lock().unwrap().send(Event::End(body, Instant::now()));
                Ok::<_, HandlerError>(Outcome::Done)
            }
        })
        .await?;

    let poll = Duration::from_millis(args.poll_ms);
    let mut taken = Vec::new(); // arrival → taken
    let mut after_current = Vec::new(); // end of the current message → taken
    let mut polled = Vec::new(); // simulated polling: arrival → taken
    let mut seed = u64::from_str_radix(&id[8..24], 16).unwrap_or(7) | 1;
    let mut random = move || {
        // xorshift64: a uniform fraction in [0, 1).
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    for trial in 0..args.trials {
        // Wait for a lower message to start, then send the higher one at a random
        // moment of its work.
        let low_started = loop {
            match next(&mut events).await? {
                Event::Start(body, at) if body.starts_with("low") => break (body, at),
                _ => {}
            }
        };
        tokio::time::sleep_until(low_started.1 + work.mul_f64(random() * 0.8)).await;
        let high = format!("high{trial}");
        let arrived = Instant::now();
        publish(queues[0].clone(), high.clone()).await?;
        let mut low_end = None;
        let high_start = loop {
            match next(&mut events).await? {
                Event::End(body, at) if body == low_started.0 => low_end = Some(at),
                Event::Start(body, at) if body == high => break at,
                Event::Start(body, _) => {
                    anyhow::bail!("{body} was taken before {high}: priority not kept")
                }
                Event::End(..) => {}
            }
        };
        let low_end = low_end.context("the lower message ended before the higher started")?;
        taken.push(high_start - arrived);
        after_current.push(high_start.saturating_duration_since(low_end));
        // Polling: ticks at a random phase every `poll`; the first tick at or after
        // the arrival notices it; the worker switches when the lower message in
        // progress at that tick ends (lower messages follow each other every `work`).
        let phase = poll.mul_f64(random());
        let since_arrival = phase; // the first tick after the arrival, uniformly in [0, poll)
        let seen = arrived + since_arrival;
        let switch = if seen <= low_end {
            low_end
        } else {
            let periods = ((seen - low_end).as_secs_f64() / work.as_secs_f64()).ceil();
            low_end + work.mul_f64(periods)
        };
        polled.push(switch - arrived);
    }

    service.stop().await?;
    let cleanup = connection.create_channel().await?;
    for queue in queues.iter().cloned().chain([names.dead_letter_queue()]) {
        let _ = cleanup
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        names.inbound_exchange(),
        names.outbound_exchange(),
        names.dead_letter_exchange(),
    ] {
        let _ = cleanup
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;

    println!(
        "priority switch, {} trials, lower messages of {} ms, polling every {} ms (simulated)\n",
        args.trials, args.work_ms, args.poll_ms
    );
    println!("| measure | p50 | p99 | max |");
    println!("|---|---|---|---|");
    let polling = format!(
        "{} polling (simulated): arrival → taken",
        seconds(args.poll_ms)
    );
    for (name, samples) in [
        ("event-driven: arrival → taken", &mut taken),
        (
            "event-driven: end of the current message → taken",
            &mut after_current,
        ),
        (polling.as_str(), &mut polled),
    ] {
        samples.sort();
        println!(
            "| {name} | {} | {} | {} |",
            show(percentile(samples, 0.50)),
            show(percentile(samples, 0.99)),
            show(*samples.last().unwrap_or(&Duration::ZERO)),
        );
    }
    Ok(())
}

/// The next handler event, within 30 s.
async fn next(events: &mut mpsc::UnboundedReceiver<Event>) -> anyhow::Result<Event> {
    tokio::time::timeout(Duration::from_secs(30), events.recv())
        .await
        .context("no handler event within 30 s")?
        .context("the handler is gone")
}

/// The `q` quantile of sorted samples (nearest rank).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn show(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1000.0)
    }
}

/// `ms` milliseconds as the row label says it: "5 s", "0.5 s".
fn seconds(ms: u64) -> String {
    format!("{} s", ms as f64 / 1000.0)
}
