//! fanout: one publisher, N subscribers of a channel's broadcast. The publisher is a raw
//! AMQP (lapin) client publishing with key `<channel>.all`, as a backend service would:
//! to `<ns>.warren.out` through the gateway, to `<ns>.warren.out.baseline` (a topic
//! exchange of the baselines' own, not bound to the outbound stream) for raw AMQP and
//! Web-STOMP. Through the gateway each subscriber is a WebSocket client subscribed to
//! the broadcast (the gateway fans the outbound stream out to it); raw, each
//! subscriber is a lapin consumer of its own bound queue, bounded and expiring. The publisher stays at most `--fanout-window`
//! messages ahead of the slowest subscriber (closed loop), so the figures measure
//! sustained delivery rather than queue build-up. Latency is end to end: the publish
//! time is stamped in the message, with the publish number: subscribers count distinct
//! messages, not deliveries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use tokio::sync::{mpsc, Notify, SemaphorePermit};
use tokio::task::JoinHandle;
use warren_protocol::amqp::keys;
use warren_protocol::{ClientFrame, ServerFrame, Subscribe};

use super::{
    join_workers, numbered_message, stamp_and_number_of, watch_gateway_use, SharedEnv, Target,
    WorkerOutcome,
};
use crate::amqp::bounded;
use crate::error::{BenchError, Result};
use crate::measurement::{now_us, Figures, MeasureWindow, Tally};
use crate::stomp::StompClient;

/// Prefetch of a raw subscriber: the gateway's default delivery window.
const RAW_PREFETCH: u16 = 256;

/// Time for the raw subscribers' clean-up beyond 3 × `--op-timeout` (5,000 queues
/// deleted and connections closed at once keep a two-core RabbitMQ busy for a while).
const CLEANUP_WAIT: Duration = Duration::from_secs(120);

/// How far the subscribers have got, shared with the publisher.
struct Progress {
    received: Vec<AtomicU64>,
    /// Wakes the publisher when a subscriber moved on.
    moved: Notify,
    /// Total published, final once `done` is set.
    published: AtomicU64,
    done: AtomicBool,
    window: OnceLock<MeasureWindow>,
    /// Raw subscribers' clean-up (queue deletion, connection close), which is not
    /// measured: it runs on after a subscriber hands in its tally.
    cleanups: Mutex<Vec<JoinHandle<()>>>,
}

impl Progress {
    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|r| r.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    /// Whether a subscriber that got `got` has everything there will be.
    fn finished(&self, got: &Received) -> bool {
        self.done.load(Ordering::Acquire)
            && got.distinct() >= self.published.load(Ordering::Acquire)
    }

    /// How many of what was published a subscriber that stopped waiting with `got`
    /// never got: counted as errors, so `--strict` fails a fan-out that lost messages
    /// instead of reporting the speed of what arrived.
    fn missed(&self, got: &Received) -> u64 {
        got.missed(self.published.load(Ordering::Acquire))
    }

    /// Subscriber `i` has now got `got`: wakes the publisher.
    fn moved_on(&self, i: usize, got: &Received) {
        self.received[i].store(got.distinct(), Ordering::Release);
        self.moved.notify_one();
    }
}

/// The distinct messages one subscriber got, by publish number (the `"n"` the
/// publisher writes in each body, from 1): a duplicate delivery (a redelivery) is not
/// counted again, neither in the throughput nor against the messages that never came,
/// so it can neither inflate the one nor hide the other.
#[derive(Debug, Default)]
struct Received {
    /// Bit `n - 1` set: publish number `n` came.
    seen: Vec<u64>,
    distinct: u64,
}

impl Received {
    /// Publish numbers above this are not the publisher's (it would take days to get
    /// there): ignored rather than grown into.
    const MAX: u64 = 1 << 32;

    /// Notes a delivery of publish number `n`; whether it is one not seen before.
    fn note(&mut self, n: u64) -> bool {
        if n == 0 || n > Self::MAX {
            return false;
        }
        let (word, bit) = (((n - 1) / 64) as usize, (n - 1) % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            return false;
        }
        self.seen[word] |= 1 << bit;
        self.distinct += 1;
        true
    }

    /// Distinct publish numbers seen.
    fn distinct(&self) -> u64 {
        self.distinct
    }

    /// How many of publish numbers 1..=`published` never came.
    fn missed(&self, published: u64) -> u64 {
        published.saturating_sub(self.distinct)
    }

    /// Takes in one delivery of `body` completed at `done`: a message not seen before
    /// counts (its latency, when inside the window); a duplicate, or a body without a
    /// publish number, does not.
    fn deliver(
        &mut self,
        body: &[u8],
        done: u64,
        window: Option<&MeasureWindow>,
        tally: &mut Tally,
    ) -> bool {
        match stamp_and_number_of(body) {
            Some((stamp, n)) if self.note(n) => {
                if let Some(w) = window {
                    tally.record(w, stamp, done);
                }
                true
            }
            _ => false,
        }
    }
}

/// The exchange `target`'s publisher publishes to and its subscribers are bound to:
/// the gateways' outbound exchange for a gateway, an exchange of the baselines' own
/// for raw AMQP and Web-STOMP. On the outbound exchange, a baseline's messages were
/// also written to the outbound stream (bound to it with `#`) and read by the
/// gateway's hub, on the same two cores: work the gateway's run needs and the
/// baselines' do not, which slowed the baselines and flattered the ratios.
fn exchange_of(env: &SharedEnv, target: Target) -> String {
    match target {
        Target::Gateway | Target::GatewayDeflate => env.names.outbound_exchange(),
        Target::Raw | Target::WebStomp => format!("{}.baseline", env.names.outbound_exchange()),
    }
}

/// Runs the fanout scenario once with `subscribers` subscribers.
///
/// # Errors
/// When a subscriber cannot subscribe, or the publisher cannot publish.
pub async fn run(env: &SharedEnv, target: Target, subscribers: usize) -> Result<Figures> {
    let cfg = &env.config;
    let exchange = exchange_of(env, target);
    tokio::time::timeout(
        cfg.op_timeout,
        crate::amqp::ensure_exchange(&env.amqp, &exchange),
    )
    .await
    .map_err(|_| BenchError::Timeout("the fan-out exchange"))??;
    let progress = Arc::new(Progress {
        received: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
        moved: Notify::new(),
        published: AtomicU64::new(0),
        done: AtomicBool::new(false),
        window: OnceLock::new(),
        cleanups: Mutex::new(Vec::new()),
    });
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(subscribers);
    let handles = (0..subscribers)
        .map(|i| {
            let (env, progress, ready) = (env.clone(), progress.clone(), ready_tx.clone());
            tokio::spawn(async move {
                let r = match target {
                    Target::Gateway | Target::GatewayDeflate => {
                        gateway_subscriber(&env, target, i, &progress, ready).await
                    }
                    Target::Raw => raw_subscriber(&env, i, &progress, ready).await,
                    Target::WebStomp => stomp_subscriber(&env, i, &progress, ready).await,
                };
                if r.is_err() {
                    // Let the publisher stop instead of waiting for this one.
                    progress.received[i].store(u64::MAX, Ordering::Release);
                    progress.moved.notify_one();
                }
                r
            })
        })
        .collect::<Vec<_>>();
    drop(ready_tx);
    // Set-up may take minutes for thousands of subscribers (RabbitMQ declares a queue
    // per raw subscriber, `--setup-concurrency` at a time); it fails when no subscriber
    // became ready for 3 × `--op-timeout`.
    let mut ready = 0;
    while ready < subscribers {
        match tokio::time::timeout(cfg.op_timeout * 3, ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let window = env.window();
    let _ = progress.window.set(window);
    let used = watch_gateway_use(env, target, window);
    let published = if ready == subscribers {
        publish(env, &progress, window, &exchange).await
    } else {
        Ok(0)
    };
    progress.done.store(true, Ordering::Release);
    let (tally, _sessions) = join_workers(handles, env.join_deadline(&window)).await;
    clean_up(&progress, cfg.op_timeout * 3 + CLEANUP_WAIT).await;
    published?;
    if ready < subscribers {
        tally?;
        return Err(BenchError::Timeout("subscribers to be ready"));
    }
    let mut figures = Figures::from_tally(tally?, &window);
    figures.add_gateway_use(used.await.ok().flatten());
    Ok(figures)
}

/// Waits at most `wait` for the raw subscribers' clean-up, so the next run starts on a
/// broker that has finished it; what is left then is aborted (the queues expire after
/// a minute of disuse) and only logged: the run's figures are complete by then.
async fn clean_up(progress: &Progress, wait: Duration) {
    let handles = std::mem::take(&mut *progress.cleanups.lock().expect("clean-up list"));
    if handles.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut left = 0usize;
    for mut h in handles {
        if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
            h.abort();
            left += 1;
        }
    }
    if left > 0 {
        tracing::warn!(
            left,
            wait_s = wait.as_secs(),
            "raw subscribers' clean-up took too long; aborted"
        );
    }
}

/// The raw AMQP publisher: stamps each message, keeps at most `--fanout-window` ahead of
/// the slowest subscriber. Returns how many it published.
async fn publish(
    env: &SharedEnv,
    progress: &Progress,
    window: MeasureWindow,
    exchange: &str,
) -> Result<u64> {
    let cfg = &env.config;
    let t = cfg.op_timeout;
    let conn = env.connect_load("warren-bench-fanout-publisher").await?;
    let key = keys::broadcast(&cfg.fanout_channel);
    let mut n = 0u64;
    let result = async {
        let ch = bounded(t, "a channel", conn.create_channel()).await?;
        // Confirms, waited for before the connection closes: a close right after the
        // last publishes could beat them to the broker (the raw subscribers then
        // waited for messages that never came).
        bounded(
            t,
            "publisher confirms",
            ch.confirm_select(lapin::options::ConfirmSelectOptions::default()),
        )
        .await?;
        let published = async {
            while window.may_issue(n) {
                while n.saturating_sub(progress.slowest()) >= cfg.fanout_window as u64 {
                    if !window.may_issue(n) {
                        return Ok(());
                    }
                    let _ =
                        tokio::time::timeout(Duration::from_millis(50), progress.moved.notified())
                            .await;
                }
                n += 1;
                let body = numbered_message(cfg.size, n, now_us());
                let props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(format!("fanout-{n}").into())
                    .with_content_type("application/json".into());
                let publish = ch.basic_publish(
                    exchange.into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    props,
                );
                bounded(t, "the fanout publisher's publish", publish).await?;
                progress.published.store(n, Ordering::Release);
            }
            Ok::<(), BenchError>(())
        }
        .await;
        bounded(t, "the fanout publisher's confirms", ch.wait_for_confirms()).await?;
        published
    }
    .await;
    progress.published.store(n, Ordering::Release);
    crate::amqp::close(&conn, t).await;
    result.map(|()| n)
}

/// The hard end of a subscriber's wait for the last messages.
fn give_up_at(env: &SharedEnv, progress: &Progress) -> u64 {
    progress.window.get().map_or(u64::MAX, |w| {
        w.end_us + env.config.op_timeout.as_micros() as u64
    })
}

async fn gateway_subscriber(
    env: &SharedEnv,
    target: Target,
    i: usize,
    progress: &Progress,
    ready: mpsc::Sender<()>,
) -> Result<WorkerOutcome> {
    let cfg = &env.config;
    let (mut c, setup) = env.gateway_client(target, i).await?;
    c.send(&ClientFrame::<()>::Subscribe(Subscribe {
        id: "sub".into(),
        channel: cfg.fanout_channel.clone(),
        broadcast: Some(true),
        ..Subscribe::default()
    }))
    .await?;
    loop {
        match tokio::time::timeout(cfg.op_timeout, c.recv()).await?? {
            ServerFrame::Ack(a) if a.id == "sub" => break,
            ServerFrame::Error(e) if e.id.as_deref() == Some("sub") => {
                return Err(BenchError::Unexpected(format!(
                    "subscribe refused: {}",
                    e.message
                )))
            }
            _ => {}
        }
    }
    drop(setup);
    let _ = ready.send(()).await;
    let mut tally = Tally::default();
    let mut got = Received::default();
    while !progress.finished(&got) && now_us() < give_up_at(env, progress) {
        let frame = match tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
            Ok(f) => f?,
            Err(_) => continue,
        };
        if let ServerFrame::Deliver(d) = frame {
            let done = now_us();
            let body = d.message.get().as_bytes();
            if got.deliver(body, done, progress.window.get(), &mut tally) {
                progress.moved_on(i, &got);
            }
            c.ack_if_due(cfg.ack_every, true).await?;
        }
    }
    tally.errors += progress.missed(&got);
    let session = c.session().to_string();
    c.close().await;
    Ok(WorkerOutcome {
        tally,
        session: Some(session),
    })
}

/// A Web-STOMP subscriber: STOMP 1.2 over RabbitMQ's WebSocket endpoint, subscribed
/// to the broadcast key on the baselines' exchange (the plugin declares an exclusive
/// queue per subscription), `ack:auto` as Web-STOMP apps usually run it.
async fn stomp_subscriber(
    env: &SharedEnv,
    i: usize,
    progress: &Progress,
    ready: mpsc::Sender<()>,
) -> Result<WorkerOutcome> {
    let cfg = &env.config;
    let setup = env.setup_permit().await;
    let mut c = StompClient::connect(&cfg.web_stomp_url, cfg.op_timeout).await?;
    let destination = format!(
        "/exchange/{}/{}",
        exchange_of(env, Target::WebStomp),
        keys::broadcast(&cfg.fanout_channel)
    );
    let id = format!("sub-{i}");
    c.send(
        "SUBSCRIBE",
        &[
            ("id", id.as_str()),
            ("destination", destination.as_str()),
            ("ack", "auto"),
            ("receipt", "ready"),
        ],
        b"",
    )
    .await?;
    loop {
        let frame = tokio::time::timeout(cfg.op_timeout, c.recv())
            .await
            .map_err(|_| BenchError::Timeout("the web-stomp subscription"))??;
        if frame.command == "RECEIPT" {
            break;
        }
    }
    drop(setup);
    let _ = ready.send(()).await;
    let mut tally = Tally::default();
    let mut got = Received::default();
    while !progress.finished(&got) && now_us() < give_up_at(env, progress) {
        let frame = match tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
            Ok(f) => f?,
            Err(_) => continue,
        };
        if frame.command == "MESSAGE"
            && got.deliver(&frame.body, now_us(), progress.window.get(), &mut tally)
        {
            progress.moved_on(i, &got);
        }
    }
    tally.errors += progress.missed(&got);
    c.close().await;
    Ok(WorkerOutcome {
        tally,
        session: None,
    })
}

async fn raw_subscriber(
    env: &SharedEnv,
    i: usize,
    progress: &Progress,
    ready: mpsc::Sender<()>,
) -> Result<WorkerOutcome> {
    let cfg = &env.config;
    let setup = env.setup_permit().await;
    let conn = env
        .connect_load(&format!("warren-bench-fanout-{i}"))
        .await?;
    let queue = format!(
        "{}bench.fanout.{i}-{}",
        env.names.prefix(),
        super::run_tag()
    );
    let outcome = raw_deliveries(env, &conn, &queue, i, progress, ready, setup).await;
    // 5,000 subscribers deleting their queues and closing at once keep RabbitMQ busy
    // for longer than the run may take to end: clean-up goes on after the tally.
    let t = cfg.op_timeout;
    let cleanup = tokio::spawn(async move {
        crate::amqp::delete_queues(&conn, &[queue]).await;
        crate::amqp::close(&conn, t).await;
    });
    progress
        .cleanups
        .lock()
        .expect("clean-up list")
        .push(cleanup);
    outcome
}

async fn raw_deliveries(
    env: &SharedEnv,
    conn: &Connection,
    queue: &str,
    i: usize,
    progress: &Progress,
    ready: mpsc::Sender<()>,
    setup: SemaphorePermit<'_>,
) -> Result<WorkerOutcome> {
    let cfg = &env.config;
    let t = cfg.op_timeout;
    let ch = bounded(t, "a channel", conn.create_channel()).await?;
    bounded(
        t,
        "the subscriber's prefetch",
        ch.basic_qos(RAW_PREFETCH, BasicQosOptions::default()),
    )
    .await?;
    let declare = ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::durable(),
        crate::amqp::subscriber_queue_args(),
    );
    bounded(t, "the subscriber's queue", declare).await?;
    let bind = ch.queue_bind(
        queue.into(),
        exchange_of(env, Target::Raw).into(),
        keys::broadcast(&cfg.fanout_channel).into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    );
    bounded(t, "the subscriber's binding", bind).await?;
    let consume = ch.basic_consume(
        queue.into(),
        format!("fanout-{i}").into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    );
    let mut deliveries = bounded(t, "the subscriber's consumer", consume).await?;
    drop(setup);
    let _ = ready.send(()).await;
    let mut tally = Tally::default();
    let mut got = Received::default();
    let mut unacked = 0u64;
    while !progress.finished(&got) && now_us() < give_up_at(env, progress) {
        let d = match tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await {
            Ok(Some(d)) => d?,
            Ok(None) => return Err(BenchError::Closed),
            Err(_) => continue,
        };
        if got.deliver(&d.data, now_us(), progress.window.get(), &mut tally) {
            progress.moved_on(i, &got);
        }
        unacked += 1;
        if unacked >= cfg.ack_every {
            let ack = ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true });
            bounded(t, "a raw ack", ack).await?;
            unacked = 0;
        }
    }
    tally.errors += progress.missed(&got);
    Ok(WorkerOutcome {
        tally,
        session: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_count_neither_as_messages_nor_against_the_missed_ones() {
        let window = MeasureWindow {
            start_us: 0,
            end_us: u64::MAX,
            per_client_limit: u64::MAX,
        };
        let (mut got, mut tally) = (Received::default(), Tally::default());
        // 10 published; 1..=8 came, then 3 and 5 again (redelivered): 9 and 10 never.
        let new: Vec<bool> = (1..=8)
            .chain([3, 5])
            .map(|n| {
                let body = numbered_message(128, n, 100);
                got.deliver(body.as_bytes(), 200, Some(&window), &mut tally)
            })
            .collect();
        assert_eq!(
            new,
            [true, true, true, true, true, true, true, true, false, false]
        );
        assert_eq!(got.distinct(), 8);
        assert_eq!(tally.ops, 8, "duplicates are not operations");
        assert_eq!(got.missed(10), 2);
        // A body without a publish number is not counted either.
        assert!(!got.deliver(b"{\"t\":1}", 200, Some(&window), &mut tally));
        assert_eq!(got.distinct(), 8);
        // The subscriber is not finished at 8 of 10, whatever it was delivered.
        let progress = Progress {
            received: vec![AtomicU64::new(0)],
            moved: Notify::new(),
            published: AtomicU64::new(10),
            done: AtomicBool::new(true),
            window: OnceLock::new(),
            cleanups: Mutex::new(Vec::new()),
        };
        assert!(!progress.finished(&got));
        assert_eq!(progress.missed(&got), 2);
        got.note(9);
        got.note(10);
        assert!(progress.finished(&got));
        assert_eq!(progress.missed(&got), 0);
    }
}
