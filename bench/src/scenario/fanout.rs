//! fanout: one publisher, N subscribers of a channel's broadcast. The publisher is a raw
//! AMQP (lapin) client publishing with key `<channel>.all`, as a backend service would:
//! to `<ns>.warren.out` through the gateway, to `<ns>.warren.out.baseline` (a topic
//! exchange of the baselines' own, not bound to the outbound stream) for raw AMQP and
//! Web-STOMP. Through the gateway each subscriber is a WebSocket client subscribed to
//! the broadcast (the gateway fans the outbound stream out to it); raw, each
//! subscriber is a lapin consumer of its own bound queue, bounded and expiring. The publisher stays at most `--fanout-window`
//! messages ahead of the slowest subscriber (closed loop), so the figures measure
//! sustained delivery rather than queue build-up. Latency is end to end: the publish
//! time is stamped in the message.

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

use super::{join_workers, message, stamp_of, watch_gateway_use, SharedEnv, Target, WorkerOutcome};
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

    /// Whether subscriber `i`, having received `n`, has everything there will be.
    fn finished(&self, n: u64) -> bool {
        self.done.load(Ordering::Acquire) && n >= self.published.load(Ordering::Acquire)
    }

    /// How many of what was published a subscriber that stopped waiting after `n`
    /// deliveries never got: counted as errors, so `--strict` fails a fan-out that
    /// lost messages instead of reporting the speed of what arrived.
    fn missed(&self, n: u64) -> u64 {
        self.published.load(Ordering::Acquire).saturating_sub(n)
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
                let body = message(cfg.size, Some(now_us()));
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
    let mut n = 0u64;
    while !progress.finished(n) && now_us() < give_up_at(env, progress) {
        let frame = match tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
            Ok(f) => f?,
            Err(_) => continue,
        };
        if let ServerFrame::Deliver(d) = frame {
            let done = now_us();
            n += 1;
            progress.received[i].store(n, Ordering::Release);
            progress.moved.notify_one();
            if let (Some(w), Some(t)) =
                (progress.window.get(), stamp_of(d.message.get().as_bytes()))
            {
                tally.record(w, t, done);
            }
            c.ack_if_due(cfg.ack_every, true).await?;
        }
    }
    tally.errors += progress.missed(n);
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
    let mut n = 0u64;
    while !progress.finished(n) && now_us() < give_up_at(env, progress) {
        let frame = match tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
            Ok(f) => f?,
            Err(_) => continue,
        };
        if frame.command == "MESSAGE" {
            let done = now_us();
            n += 1;
            progress.received[i].store(n, Ordering::Release);
            progress.moved.notify_one();
            if let (Some(w), Some(t)) = (progress.window.get(), stamp_of(&frame.body)) {
                tally.record(w, t, done);
            }
        }
    }
    tally.errors += progress.missed(n);
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
    let (mut n, mut unacked) = (0u64, 0u64);
    while !progress.finished(n) && now_us() < give_up_at(env, progress) {
        let d = match tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await {
            Ok(Some(d)) => d?,
            Ok(None) => return Err(BenchError::Closed),
            Err(_) => continue,
        };
        let done = now_us();
        n += 1;
        progress.received[i].store(n, Ordering::Release);
        progress.moved.notify_one();
        if let (Some(w), Some(stamp)) = (progress.window.get(), stamp_of(&d.data)) {
            tally.record(w, stamp, done);
        }
        unacked += 1;
        if unacked >= cfg.ack_every {
            let ack = ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true });
            bounded(t, "a raw ack", ack).await?;
            unacked = 0;
        }
    }
    tally.errors += progress.missed(n);
    Ok(WorkerOutcome {
        tally,
        session: None,
    })
}
