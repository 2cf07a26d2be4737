//! The consume loop of one channel: takes deliveries from `IN_<CHANNEL>` (at most
//! `prefetch` at a time), suppresses duplicates, calls the handler, sends its reply,
//! and only then acknowledges. A handler error hands the message back (nack with
//! requeue, after a short backoff) until `max_attempts`, then the message is
//! dead-lettered to `warren.dead` (and a request is refused with `internal`). A reply
//! that cannot be published counts as a failed attempt the same way, unless the
//! duplicate window keeps it for the redelivered copy to re-send.
//! A request whose correlation id does not fit in an AMQP short string cannot be
//! answered: it is dead-lettered at once, unhandled.
//!
//! [`keep_consuming`] runs that loop for the life of the service: when the consumer is
//! lost with its connection, it waits for the link's next connection, re-declares the
//! queue and consumes again, with the same handler and duplicate window (so a message
//! redelivered after the reconnect is recognised). Handlers still running on the lost
//! channel finish in the background; their acks fail and RabbitMQ redelivers, and the
//! duplicate window answers the copy. They keep their slots meanwhile: the consumer
//! keeps one set of `prefetch` slots across reconnects ([`Slots`]), so the new consumer
//! runs no more handlers beside them than `prefetch` allows, for at most
//! [`LOST_HANDLERS_WAIT`].

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::BasicQosOptions;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Channel, Consumer};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn, Instrument};
use warren_protocol::ErrorCode;

use crate::config::ServiceConfig;
use crate::duplicate_window::{DuplicateWindow, RememberedReply, Seen};
use crate::error::ServiceError;
use crate::handler::{Answer, Context, Handler, HandlerError, Outcome};
use crate::incoming::Incoming;
use crate::link::{Epoch, Link};
use crate::publisher::{fresh_message_id, Publisher};
use crate::service::ServiceState;
use crate::short_string::{exact, fitted, MAX_SHORT_STRING};
use crate::topology;

/// How often a copy of a message whose `message_id` is being handled right now by
/// another delivery looks again whether that handling ended.
const IN_FLIGHT_RETRY: Duration = Duration::from_millis(200);

/// How long a copy waits for the handling of the same `message_id` to end before it is
/// handed back to the queue.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(30);

/// How long a consumer started again after a lost one leaves the slots still taken by
/// the lost consumer's handlers to them. Until those handlers end, the new consumer
/// runs only as many handlers as `prefetch` leaves free (none with a prefetch of 1);
/// after this wait, handlers still running from the lost consumer are no longer
/// counted, and the new consumer takes deliveries again.
///
/// That does not free it from a hung handler's own message: RabbitMQ redelivered it
/// with the lost channel, and its copy finds the `message_id` still in flight, waits
/// [`IN_FLIGHT_WAIT`] (30 s) in a slot, is handed back, comes again (a returned message
/// is delivered before those behind it) and waits again, for as long as the handler
/// hangs. With a prefetch of 1 the consumer thus handles nothing else meanwhile; a
/// larger prefetch leaves it the other slots. Each hand-back raises the copy's
/// `x-delivery-count`, which counts as failed attempts: should the handler end without
/// an answer, the copy runs it again, and its first failure may already park it in
/// `warren.dead`.
pub(crate) const LOST_HANDLERS_WAIT: Duration = Duration::from_secs(60);

/// Header on a dead-lettered message: why it was parked.
pub const H_DEAD_REASON: &str = "x-warren-dead-reason";
/// Header on a dead-lettered message: the queue it came from.
pub const H_DEAD_QUEUE: &str = "x-warren-dead-queue";
/// Header on a dead-lettered message: how many attempts failed.
pub const H_DEAD_ATTEMPTS: &str = "x-warren-dead-attempts";

/// Delay before handing a failed message back, growing with the attempts: 100 ms,
/// 200 ms, 400 ms, ... at most 5 s.
pub fn retry_backoff(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(6);
    Duration::from_millis(100u64 << exp).min(Duration::from_secs(5))
}

/// Everything the tasks of one consumer share, across reconnects.
pub(crate) struct Shared<H> {
    pub(crate) channel: String,
    pub(crate) queue: String,
    pub(crate) handler: H,
    pub(crate) context: Context,
    pub(crate) publisher: Publisher,
    pub(crate) link: Arc<Link>,
    pub(crate) config: ServiceConfig,
    pub(crate) window: Mutex<DuplicateWindow>,
    /// Whether a message failing `max_attempts` times is parked in `warren.dead` (and
    /// the queue declared dead-lettering there), or dropped (the auth channel).
    pub(crate) dead_letters: topology::DeadLetters,
}

/// A consumer started on one connection.
pub(crate) struct Started {
    pub(crate) channel: Channel,
    pub(crate) consumer: Consumer,
    pub(crate) generation: u64,
}

/// Opens a channel on `epoch`'s connection with the configured prefetch and consumes
/// `queue` with a fresh consumer tag (`<app_id>-<channel>-<uuid>`, shortened past 255
/// bytes: [`fitted`]).
pub(crate) async fn start(
    epoch: &Epoch,
    queue: &str,
    channel_name: &str,
    config: &ServiceConfig,
) -> crate::error::Result<Started> {
    let queue_name = exact("queue name", queue)?;
    let tag = consumer_tag(&config.app_id, channel_name);
    let channel = epoch.connection.create_channel().await?;
    channel
        .basic_qos(config.consumer_prefetch(), BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue_name,
            tag.clone(),
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    info!(channel = channel_name, queue, consumer = %tag, prefetch = config.consumer_prefetch(), generation = epoch.generation, "consuming");
    Ok(Started {
        channel,
        consumer,
        generation: epoch.generation,
    })
}

/// A fresh consumer tag, `<app_id>-<what>-<uuid>`, shortened past 255 bytes
/// ([`fitted`]: the hash covers the UUID, so tags stay unique).
pub(crate) fn consumer_tag(app_id: &str, what: &str) -> ShortString {
    fitted(&format!("{app_id}-{what}-{}", uuid::Uuid::new_v4()))
}

/// Why a consumer could not be started again.
enum Restart {
    /// The queue is gone while the connection stayed up: deleted on purpose.
    QueueGone,
    /// Anything else (connection lost meanwhile, broker refusal): try again later.
    Failed(crate::error::ServiceError),
}

/// Starts the consumer again on `epoch`. On a new connection the queue is declared
/// again (the broker may have lost it); on the same connection it is only checked,
/// so a queue deleted on purpose is not re-created. "Gone" is only believed when a
/// second check a second later agrees and the connection is still up (a node that is
/// shutting down may briefly answer 404 for a queue it cannot reach).
async fn restart<H>(
    shared: &Shared<H>,
    epoch: &Epoch,
    same_connection: bool,
) -> Result<Started, Restart> {
    let names = shared.context.names();
    if same_connection {
        let mut misses = 0;
        loop {
            match topology::channel_queue_exists(&epoch.connection, names, &shared.channel).await {
                Ok(true) => break,
                Ok(false) if misses == 0 => {
                    misses += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(false) if epoch.connection.status().connected() => {
                    return Err(Restart::QueueGone)
                }
                Ok(false) => {
                    return Err(Restart::Failed(
                        crate::error::ServiceError::BrokerUnavailable {
                            waited: Duration::from_secs(1),
                            reason: "the connection was lost while checking the queue".into(),
                        },
                    ))
                }
                Err(e) => return Err(Restart::Failed(e)),
            }
        }
    } else {
        topology::declare_channel_queue_as(
            &epoch.connection,
            names,
            &shared.channel,
            &shared.config,
            shared.dead_letters,
        )
        .await
        .map_err(Restart::Failed)?;
    }
    start(epoch, &shared.queue, &shared.channel, &shared.config)
        .await
        .map_err(Restart::Failed)
}

/// Runs the consume loop for the life of the service: on a lost consumer, waits for
/// the link to be up (on a newer connection when the old one died), starts again,
/// and goes on. Returns when `halt` turns true (the service stopped or failed), the
/// link is closed, or the queue was deleted: then the service turns
/// [`ServiceState::Failed`] and `halt` stops its other consumers too.
pub(crate) async fn keep_consuming<H: Handler>(
    shared: Arc<Shared<H>>,
    first: Started,
    halt: watch::Sender<bool>,
    state: watch::Sender<ServiceState>,
    grace: Duration,
) {
    let mut stop = halt.subscribe();
    let slots = Slots::new(shared.config.consumer_prefetch());
    let mut next = Some(first);
    let mut generation = 0;
    let mut min_generation = 0;
    let mut failures = 0u32;
    loop {
        let started = match next.take() {
            Some(started) => started,
            None => {
                let epoch = tokio::select! {
                    epoch = shared.link.up(min_generation, None) => match epoch {
                        Ok(epoch) => epoch,
                        Err(_) => return,
                    },
                    _ = stop.changed() => return,
                };
                if *stop.borrow() {
                    return;
                }
                match restart(&shared, &epoch, epoch.generation == generation).await {
                    Ok(started) => started,
                    Err(Restart::QueueGone) => {
                        let reason = format!("the queue {} was deleted", shared.queue);
                        error!(queue = %shared.queue, "{reason}; not consuming any more");
                        state.send_if_modified(|s| {
                            if matches!(s, ServiceState::Running | ServiceState::Reconnecting(_)) {
                                *s = ServiceState::Failed(reason);
                                true
                            } else {
                                false
                            }
                        });
                        halt.send_replace(true);
                        return;
                    }
                    Err(Restart::Failed(e)) => {
                        failures += 1;
                        if !epoch.connection.status().connected() {
                            shared.link.report_lost(epoch.generation);
                            min_generation = epoch.generation + 1;
                        }
                        let wait = retry_backoff(failures);
                        warn!(queue = %shared.queue, error = %e, retry_in_ms = wait.as_millis() as u64, "restarting the consumer failed");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = stop.changed() => return,
                        }
                        continue;
                    }
                }
            }
        };
        generation = started.generation;
        let connection = shared.link.current().filter(|e| e.generation == generation);
        let since = tokio::time::Instant::now();
        match run(
            shared.clone(),
            &slots,
            started.channel,
            started.consumer,
            stop.clone(),
            grace,
        )
        .await
        {
            LoopEnd::Stopped => return,
            LoopEnd::Lost(reason) => {
                // A consumer lost again right after it started: slow down.
                if since.elapsed() < Duration::from_secs(1) {
                    failures += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(retry_backoff(failures)) => {}
                        _ = stop.changed() => return,
                    }
                } else {
                    failures = 0;
                }
                let connection_up = connection.is_some_and(|e| e.connection.status().connected());
                if connection_up {
                    min_generation = generation;
                } else {
                    shared.link.report_lost(generation);
                    min_generation = generation + 1;
                }
                warn!(queue = %shared.queue, reason = %reason, connection_up, "consumer lost; consuming again once RabbitMQ is back");
            }
        }
    }
}

/// How a consume loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoopEnd {
    /// Asked to stop.
    Stopped,
    /// The consumer stream ended or failed (connection or channel lost).
    Lost(String),
}

/// The handler slots of one consumer, `prefetch` of them, kept across reconnects: a
/// handler of a lost consumer still running holds its slot, so the consumer started
/// again runs no more than `prefetch` handlers in all. A fresh set per consumer run let
/// the new consumer run `prefetch` handlers beside the lost one's.
pub(crate) struct Slots {
    semaphore: Arc<Semaphore>,
}

impl Slots {
    fn new(prefetch: u16) -> Self {
        Slots {
            semaphore: Arc::new(Semaphore::new(usize::from(prefetch.max(1)))),
        }
    }
}

/// The slots one consumer run's handlers hold: how many, and whether they were given
/// up ([`LOST_HANDLERS_WAIT`]: the run was lost and its handlers outlived the wait).
#[derive(Default)]
struct Ledger {
    held: usize,
    given_up: bool,
}

impl Ledger {
    /// A handler of the run takes `permit`: its slot, counted here.
    fn take(ledger: &Arc<Mutex<Ledger>>, permit: OwnedSemaphorePermit) -> Slot {
        ledger.lock().unwrap_or_else(|e| e.into_inner()).held += 1;
        Slot {
            permit: Some(permit),
            ledger: ledger.clone(),
        }
    }

    /// The run's handlers no longer count against the prefetch: the slots they hold
    /// are added back to `semaphore` at once, and forgotten as they end. Returns how
    /// many were.
    fn give_up(ledger: &Mutex<Ledger>, semaphore: &Semaphore) -> usize {
        let mut ledger = ledger.lock().unwrap_or_else(|e| e.into_inner());
        ledger.given_up = true;
        semaphore.add_permits(ledger.held);
        ledger.held
    }
}

/// One handler's slot: released when its handling ends, or forgotten then when its
/// run's slots were given up (they were added back to the consumer's slots already).
struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    ledger: Arc<Mutex<Ledger>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut ledger = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(permit) = self.permit.take() {
            if ledger.given_up {
                permit.forget();
            } else {
                ledger.held -= 1;
                drop(permit);
            }
        }
    }
}

/// Runs the consume loop until `stop` turns true or the consumer ends, taking one of
/// `slots` for each delivery it handles. On stop, the consumer is cancelled and
/// in-flight handlers get `grace` to finish; then the channel is closed, so RabbitMQ
/// requeues whatever was not acknowledged. When the consumer is lost, the handlers
/// still running finish in the background, however long they take; they keep their
/// slots for at most [`LOST_HANDLERS_WAIT`], then the consumer's slots are made whole
/// again without them.
pub(crate) async fn run<H: Handler>(
    shared: Arc<Shared<H>>,
    slots: &Slots,
    channel: Channel,
    mut consumer: Consumer,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> LoopEnd {
    let permits = slots.semaphore.clone();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut tasks = JoinSet::new();
    let tag = consumer.tag();
    // Any change of `stop` (or its sender going away) means stop.
    let end = loop {
        if *stop.borrow() {
            break LoopEnd::Stopped;
        }
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            _ = stop.changed() => break LoopEnd::Stopped,
        };
        let next = tokio::select! {
            next = consumer.next() => next,
            _ = stop.changed() => break LoopEnd::Stopped,
        };
        match next {
            Some(Ok(delivery)) => {
                let shared = shared.clone();
                let slot = Ledger::take(&ledger, permit);
                tasks.spawn(process(shared, delivery, slot));
            }
            Some(Err(e)) => {
                error!(queue = %shared.queue, error = %e, "consumer failed");
                break LoopEnd::Lost(e.to_string());
            }
            None => {
                warn!(queue = %shared.queue, "consumer ended");
                break LoopEnd::Lost("the consumer was cancelled".into());
            }
        }
        while tasks.try_join_next().is_some() {}
    };
    let queue = shared.queue.clone();
    let cancel = (channel.clone(), tag.clone());
    let stopped = end == LoopEnd::Stopped;
    let finish = async move {
        let drain = async { while tasks.join_next().await.is_some() {} };
        if !stopped {
            // Lost: never aborted. A handler cut off at an `await` may have done its
            // side effects; its copy, redelivered on the next connection, waits in
            // the duplicate window for this run's end and is answered from it.
            // Aborted after a grace period, this run was marked failed and the copy
            // ran the handler a second time.
            drain.await;
        } else if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(queue = %queue, "handlers still running after the grace period; their messages go back to the queue");
            tasks.abort_all();
        }
        if channel.status().connected() {
            let close = channel.close(200, ShortString::from("stopping"));
            let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
        }
        info!(queue = %queue, consumer = %tag, "consumer stopped");
    };
    if end == LoopEnd::Stopped {
        let (channel, tag) = cancel;
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            channel.basic_cancel(tag, BasicCancelOptions::default()),
        )
        .await;
        finish.await;
    } else {
        // Lost: consume again at once; the handlers still running finish in the
        // background (their acks go to a dead channel, RabbitMQ redelivers, and the
        // duplicate window answers the copy). They keep their slots, so the next run
        // handles no more beside them than the prefetch allows, until they end or
        // `LOST_HANDLERS_WAIT` passed: then their slots are handed to the next run
        // (and forgotten as they end).
        let permits = permits.clone();
        let queue = shared.queue.clone();
        tokio::spawn(async move {
            let mut finish = std::pin::pin!(finish);
            tokio::select! {
                _ = &mut finish => return,
                _ = tokio::time::sleep(LOST_HANDLERS_WAIT) => {}
            }
            let held = Ledger::give_up(&ledger, &permits);
            if held > 0 {
                warn!(queue = %queue, handlers = held, waited_s = LOST_HANDLERS_WAIT.as_secs(), "handlers of a lost consumer still running; no longer counted against the prefetch");
            }
            finish.await;
        });
    }
    end
}

/// Handles one delivery, from duplicate check to acknowledgement, holding `_slot` (the
/// handler's slot of the prefetch) until it ends.
pub(crate) async fn process<H: Handler, S: Send>(
    shared: Arc<Shared<H>>,
    mut delivery: Delivery,
    _slot: S,
) {
    let body = Bytes::from(std::mem::take(&mut delivery.data));
    let incoming = Incoming::from_parts(
        &shared.queue,
        delivery.routing_key.as_str(),
        delivery.redelivered,
        &delivery.properties,
        body,
    );
    let span = tracing::info_span!(
        "message",
        queue = %shared.queue,
        delivery_tag = delivery.delivery_tag,
        message_id = incoming.message_id.as_deref().unwrap_or(""),
        correlation_id = incoming.correlation_id.as_deref().unwrap_or(""),
        user = incoming.user.as_deref().unwrap_or(""),
        redelivered = incoming.redelivered,
    );
    handle(&shared, &delivery.acker, delivery.properties, incoming)
        .instrument(span)
        .await;
}

async fn handle<H: Handler>(
    shared: &Shared<H>,
    acker: &Acker,
    properties: BasicProperties,
    incoming: Incoming,
) {
    let id = incoming.message_id.clone();
    let reply_to = incoming.reply_to.clone();
    let correlation_id = incoming.correlation_id.clone();
    let delivery_count = incoming.delivery_count;
    let routing_key = incoming.routing_key.clone();
    let body = incoming.body.clone();
    // What a dead-lettered message is parked with.
    let original = Original {
        routing_key: &routing_key,
        properties: &properties,
        body: &body,
    };

    if let (Some(_), Some(too_long)) = (
        &reply_to,
        correlation_id
            .as_deref()
            .filter(|c| c.len() > MAX_SHORT_STRING),
    ) {
        // A request whose correlation id does not fit in an AMQP short string cannot
        // be answered: the reply's `correlation_id` is one, and a shortened id (or
        // none) would match no request of the requester's. Gateways never send one
        // (they set the `correlation_id` property itself, a short string); only
        // another publisher setting the `x-warren-request-id` header alone can. So
        // the request is not handled — running the handler for an answer nobody can
        // receive would only apply its effects — but parked in `warren.dead` with
        // the reason, and acknowledged, for an operator to look at.
        let reason = format!(
            "the request's correlation id (x-warren-request-id) is {} bytes, longer than an AMQP short string (255): it cannot be replied to",
            too_long.len()
        );
        error!(reason = %reason, "request not handled; dead-lettering it");
        if let Err(e) = dead_letter(shared, &routing_key, &properties, &body, &reason, 0).await {
            error!(error = %e, "dead-lettering failed; handing the message back");
            tokio::time::sleep(retry_backoff(delivery_count.saturating_add(1))).await;
            nack(acker).await;
            return;
        }
        ack(acker).await;
        return;
    }

    // A message without `message_id` is not deduplicated, but its failures are
    // counted all the same, under a key made of its content: on a classic queue (no
    // `x-delivery-count`) it was otherwise handed back, and handled again, for ever.
    // Copies alike in routing key, correlation id and body share the count.
    let anonymous = id
        .is_none()
        .then(|| anonymous_key(&routing_key, correlation_id.as_deref(), &body));
    // The duplicate window's key of this message's failures.
    let key = id.as_deref().or(anonymous.as_deref()).unwrap_or_default();
    let mut waited = Duration::ZERO;
    while let Some(id) = &id {
        let seen = shared
            .window
            .lock()
            .expect("window lock")
            .begin(id, Instant::now());
        match seen {
            Seen::New { .. } => break,
            Seen::InFlight if waited < IN_FLIGHT_WAIT => {
                // A copy while the first is being handled (the SDK sent it again, or
                // RabbitMQ redelivered it after a lost channel): wait for the first's
                // end here, then answer it as a duplicate or handle it. Handing it back
                // every 200 ms instead raised its `x-delivery-count` with each return,
                // which counts as failed attempts.
                tokio::time::sleep(IN_FLIGHT_RETRY).await;
                waited += IN_FLIGHT_RETRY;
            }
            Seen::InFlight => {
                debug!("same message_id still in flight; handing this copy back");
                nack(acker).await;
                return;
            }
            Seen::Done(remembered) => {
                info!(
                    resend_reply = remembered.is_some(),
                    "duplicate message_id; not handled again"
                );
                if let (Some(r), Some(to)) = (remembered, reply_to.as_deref()) {
                    if let Err(e) = shared
                        .publisher
                        .reply(to, correlation_id.as_deref(), &r.answer, &r.message_id)
                        .await
                    {
                        // A failed attempt, as a first reply that failed: handed back at
                        // once, the copy came straight back and its reply was sent again
                        // (on a fresh publishing channel each time) as fast as RabbitMQ
                        // redelivered, for as long as the reply failed. The reply stays
                        // kept for the next copy meanwhile.
                        let failures = shared.window.lock().expect("window lock").fail_resend(id);
                        let attempts = attempts_so_far(failures, delivery_count);
                        unpublished(
                            shared,
                            acker,
                            Some(id.as_str()),
                            key,
                            &original,
                            attempts,
                            &e,
                        )
                        .await;
                        return;
                    }
                    // A reply kept unsent is now sent: remembered as any other.
                    shared.window.lock().expect("window lock").sent(id);
                }
                ack(acker).await;
                return;
            }
        }
    }

    // Holds the id in flight until this handling ends: dropped with this future, after
    // the message was handed back (a failed attempt is counted with the id still held,
    // so that a copy waits for the hand-back instead of running beside the redelivered
    // message) or when its task is aborted mid-way (the service was stopped and the
    // handler outlived the grace period); its next copy is then handled, not refused
    // as in flight.
    let _held = id.as_deref().map(|id| Held {
        window: &shared.window,
        id,
    });
    let context = shared.context.for_message(&incoming);
    // The call itself inside the caught future: a handler may panic before it returns
    // its future (a closure's work before `async move`), and that panic, unwinding
    // this task, left the message neither acked nor nacked and its prefetch slot taken
    // for good: with the default prefetch of 1 the consumer got nothing more.
    let result = catch_panic(async { shared.handler.handle(context, incoming).await }).await;
    // Parked by the handler's own failures (its answer is then a refusal).
    let mut parked_already = false;
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(e) => {
            let attempts = failed_attempt(shared, key, delivery_count);
            if attempts < shared.config.max_attempts {
                let wait = retry_backoff(attempts);
                warn!(error = %e, attempts, retry_in_ms = wait.as_millis() as u64, "handler failed; handing the message back");
                tokio::time::sleep(wait).await;
                nack(acker).await;
                return;
            }
            error!(error = %e, attempts, "handler failed too often; dead-lettering the message");
            if let Err(de) = dead_letter(
                shared,
                &routing_key,
                &properties,
                &body,
                &e.to_string(),
                attempts,
            )
            .await
            {
                error!(error = %de, "dead-lettering failed; handing the message back");
                tokio::time::sleep(retry_backoff(attempts)).await;
                nack(acker).await;
                return;
            }
            parked_already = true;
            Outcome::refuse(
                ErrorCode::Internal,
                format!("the service failed to handle this message {attempts} times"),
            )
        }
    };

    let remembered = match (outcome, reply_to.as_deref()) {
        (Outcome::Done, Some(_)) => {
            warn!("handler answered a request with Done: no reply is sent");
            None
        }
        (Outcome::Done, None) => None,
        (Outcome::Reply(_), None) => {
            debug!("handler replied to a message that is not a request; reply dropped");
            None
        }
        (Outcome::Reply(answer), Some(to)) => {
            let message_id = fresh_message_id();
            // Within both bounds: a reply larger than the whole budget was remembered
            // only to be forgotten at once.
            let rememberable = answer.body.len()
                <= shared
                    .config
                    .remember_reply_bytes
                    .min(shared.config.remember_replies_total_bytes);
            if let Err(e) = shared
                .publisher
                .reply(to, correlation_id.as_deref(), &answer, &message_id)
                .await
            {
                // What failed, counted as a failed attempt below.
                let failure = if refused_for_good(&e) {
                    // RabbitMQ will never take this reply: handing the message back
                    // would run the handler again and again. The requester is told.
                    error!(error = %e, "the reply cannot be published; answering the request `internal` instead");
                    let refusal = Answer::refusal(
                        ErrorCode::Internal,
                        format!("the service's reply could not be published: {e}"),
                    );
                    let message_id = fresh_message_id();
                    match shared
                        .publisher
                        .reply(to, correlation_id.as_deref(), &refusal, &message_id)
                        .await
                    {
                        Ok(()) => {
                            let remembered = Some(RememberedReply {
                                message_id,
                                answer: refusal,
                            });
                            handled(shared, id.as_deref(), key, remembered);
                            ack(acker).await;
                            return;
                        }
                        Err(e) => {
                            warn!(error = %e, "the refusal could not be published either");
                            e
                        }
                    }
                } else if let (Some(id), true) = (&id, rememberable) {
                    // The handler ran: keep its answer, so the redelivered message
                    // re-sends it instead of running the handler a second time (or
                    // runs it again, a failed attempt counted, should the answer be
                    // pushed out over the reply budget before that). Not a failed
                    // attempt: the handler is not run again.
                    let kept = shared.window.lock().expect("window lock").finish_unsent(
                        id,
                        RememberedReply { message_id, answer },
                        Instant::now(),
                    );
                    if kept {
                        warn!(error = %e, "reply failed; handing the message back (its answer is kept)");
                        nack(acker).await;
                        return;
                    }
                    // Larger than the whole reply budget with its headers and id:
                    // nothing keeps it, as below.
                    e
                } else {
                    // Nothing keeps the answer (too large to remember, or no
                    // `message_id`): the handler runs again when it comes back.
                    e
                };
                if parked_already {
                    // Handled for good: a copy of it is acknowledged, not run.
                    handled(shared, id.as_deref(), key, None);
                    ack(acker).await;
                    return;
                }
                // Handing it back at once ran the handler again and again, as fast as
                // RabbitMQ redelivered (e.g. the service may not write to the default
                // exchange, or the broker nacks every reply for now). Counted as a
                // failed attempt instead.
                let attempts = failed_attempt(shared, key, delivery_count);
                unpublished(
                    shared,
                    acker,
                    id.as_deref(),
                    key,
                    &original,
                    attempts,
                    &failure,
                )
                .await;
                return;
            }
            rememberable.then_some(RememberedReply { message_id, answer })
        }
    };
    handled(shared, id.as_deref(), key, remembered);
    ack(acker).await;
}

/// Records in the duplicate window that the message was handled for good: its
/// `message_id`, with the reply to re-send to a copy; a message without one has its
/// failure count (under `key`) forgotten.
fn handled<H>(
    shared: &Shared<H>,
    id: Option<&str>,
    key: &str,
    remembered: Option<RememberedReply>,
) {
    let mut window = shared.window.lock().expect("window lock");
    match id {
        Some(id) => window.finish(id, remembered, Instant::now()),
        None => window.forget(key),
    }
}

/// What a dead-lettered message is parked with: the delivery's routing key,
/// properties and body.
struct Original<'a> {
    routing_key: &'a str,
    properties: &'a BasicProperties,
    body: &'a [u8],
}

/// Ends the delivery of a request whose answer could not be published (`failure`),
/// first or re-sent, counted as a failed attempt (`attempts` so far): parked in
/// `warren.dead` and acknowledged at `max_attempts` (a copy of it is then acknowledged
/// unanswered, `id` handled for good), else handed back after [`retry_backoff`].
async fn unpublished<H>(
    shared: &Shared<H>,
    acker: &Acker,
    id: Option<&str>,
    key: &str,
    original: &Original<'_>,
    attempts: u32,
    failure: &ServiceError,
) {
    if attempts >= shared.config.max_attempts {
        error!(error = %failure, attempts, "the answer could not be published, too often; dead-lettering the message");
        let reason = format!("its answer could not be published: {failure}");
        let parked = dead_letter(
            shared,
            original.routing_key,
            original.properties,
            original.body,
            &reason,
            attempts,
        )
        .await;
        if parked.is_ok() {
            handled(shared, id, key, None);
            ack(acker).await;
            return;
        }
    }
    let wait = retry_backoff(attempts);
    warn!(error = %failure, attempts, retry_in_ms = wait.as_millis() as u64, "the answer could not be published; handing the message back");
    tokio::time::sleep(wait).await;
    nack(acker).await;
}

/// The attempts at a message so far: `failures` counted in this process, or more when
/// its `x-delivery-count` says so (any publisher may set it).
fn attempts_so_far(failures: u32, delivery_count: u32) -> u32 {
    failures.max(delivery_count.saturating_add(1))
}

/// Records a failed attempt at the message whose failures the window counts under
/// `key`; returns the attempts so far: those counted here, or more when the message's
/// `x-delivery-count` says so (any publisher may set it).
fn failed_attempt<H>(shared: &Shared<H>, key: &str, delivery_count: u32) -> u32 {
    let failures = shared
        .window
        .lock()
        .expect("window lock")
        .fail_held(key, Instant::now());
    attempts_so_far(failures, delivery_count)
}

/// The duplicate window's key for counting the failures of a message without
/// `message_id`: a hash of what it carries. It starts with a NUL, which no id a gateway
/// makes holds.
fn anonymous_key(routing_key: &str, correlation_id: Option<&str>, body: &[u8]) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    (routing_key, correlation_id, body).hash(&mut hasher);
    format!("\0anonymous:{:016x}", hasher.finish())
}

/// Whether a failed reply can never be published (the broker or the library refused
/// this very message), so that handing its request back would only run the handler
/// again: not when the broker was unreachable or nacked it.
fn refused_for_good(e: &ServiceError) -> bool {
    !matches!(
        e,
        ServiceError::BrokerUnavailable { .. }
            | ServiceError::Nacked { .. }
            | ServiceError::Stopped
            | ServiceError::Failed(_)
    )
}

/// Releases a handling's id in the duplicate window when dropped
/// ([`DuplicateWindow::release`]; a no-op once it finished).
struct Held<'a> {
    window: &'a std::sync::Mutex<DuplicateWindow>,
    id: &'a str,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Ok(mut window) = self.window.lock() {
            window.release(self.id);
        }
    }
}

/// Runs the handler's future, turning a panic into [`HandlerError::Panicked`].
async fn catch_panic<F>(future: F) -> Result<Outcome, HandlerError>
where
    F: Future<Output = Result<Outcome, HandlerError>>,
{
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(HandlerError::Panicked(what))
        }
    }
}

/// The most bytes of a reason a dead-lettered message carries in
/// [`H_DEAD_REASON`]; a longer one is cut at a character boundary and marked
/// ([`bounded_reason`]).
pub const MAX_DEAD_REASON_BYTES: usize = 4096;

/// `reason`, at most [`MAX_DEAD_REASON_BYTES`] bytes: a longer one is cut at a
/// character boundary and ends with `… (truncated, <n> bytes in all)`. A handler's
/// error may quote a whole message body; copied as it was into a header, it could pass
/// the frame size, and the dead-letter publish was refused for good.
pub(crate) fn bounded_reason(reason: &str) -> std::borrow::Cow<'_, str> {
    if reason.len() <= MAX_DEAD_REASON_BYTES {
        return std::borrow::Cow::Borrowed(reason);
    }
    let marker = format!("… (truncated, {} bytes in all)", reason.len());
    let mut end = MAX_DEAD_REASON_BYTES.saturating_sub(marker.len());
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{marker}", &reason[..end]))
}

/// Publishes the message to the dead-letter exchange with the reason (bounded:
/// [`bounded_reason`]) in headers, and the message's own headers. When those make the
/// publish too large for a frame ([`ServiceError::TooLarge`], which would never
/// change), it is parked again with the dead-letter headers alone: a message that
/// cannot be parked was handed back and handled again for ever.
async fn dead_letter<H>(
    shared: &Shared<H>,
    routing_key: &str,
    properties: &BasicProperties,
    body: &[u8],
    reason: &str,
    attempts: u32,
) -> crate::error::Result<()> {
    if shared.dead_letters == topology::DeadLetters::Dropped {
        warn!(queue = %shared.queue, reason, "message dropped, not parked: this channel's messages carry credentials");
        return Ok(());
    }
    let names = shared.context.names().clone();
    // Declared before every parked message, not once per connection: `warren.dead`
    // deleted meanwhile (an operator emptying it) left the fanout exchange with no
    // queue, and RabbitMQ confirmed the message unroutable: acknowledged and lost.
    // Parking is rare (a message that failed `max_attempts` times); the declares are
    // three round trips.
    let epoch = shared
        .link
        .up(
            0,
            Some(crate::config::deadline_in(shared.config.publish_timeout)),
        )
        .await?;
    // Not fatal, as when consuming: a classic `warren.dead` whose node is down answers
    // 404 to any declaration; the publish below then fails or not on its own.
    if let Err(e) =
        topology::declare_dead_letter_with(&epoch.connection, &names, &shared.config.queue_type)
            .await
    {
        warn!(queue = %names.dead_letter_queue(), error = %e, "cannot declare the dead-letter queue; parking anyway");
    }
    let reason = bounded_reason(reason);
    let message_id = properties
        .message_id()
        .clone()
        .unwrap_or_else(|| ShortString::from(fresh_message_id()));
    let parked = |headers: FieldTable| {
        let mut headers = headers;
        let text = |s: &str| AMQPValue::LongString(LongString::from(s));
        headers.insert(H_DEAD_REASON.into(), text(&reason));
        headers.insert(H_DEAD_QUEUE.into(), text(&shared.queue));
        headers.insert(H_DEAD_ATTEMPTS.into(), AMQPValue::LongUInt(attempts));
        // No expiration: the request may have had one, the parked copy must stay.
        BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(message_id.clone())
    };
    let exchange = names.dead_letter_exchange();
    let full = parked(properties.headers().clone().unwrap_or_default());
    match shared
        .publisher
        .publish_confirmed(&exchange, routing_key, body, full)
        .await
    {
        Err(ServiceError::TooLarge { bytes, limit }) => {
            warn!(
                bytes,
                limit,
                "the message's headers are too large to park it with; parking it without them"
            );
            shared
                .publisher
                .publish_confirmed(&exchange, routing_key, body, parked(FieldTable::default()))
                .await
        }
        other => other,
    }
}

async fn ack(acker: &Acker) {
    if let Err(e) = acker.ack(BasicAckOptions::default()).await {
        warn!(error = %e, "ack failed; RabbitMQ will redeliver the message");
    }
}

async fn nack(acker: &Acker) {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = acker.nack(options).await {
        warn!(error = %e, "nack failed; RabbitMQ will redeliver the message when the channel closes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_backoff_grows_and_is_capped() {
        assert_eq!(retry_backoff(1), Duration::from_millis(100));
        assert_eq!(retry_backoff(2), Duration::from_millis(200));
        assert_eq!(retry_backoff(4), Duration::from_millis(800));
        assert_eq!(retry_backoff(50), Duration::from_secs(5));
    }

    #[test]
    fn consumer_tags_stay_short_strings_and_unique_whatever_the_names() {
        let tag = consumer_tag("warren-service", "chat");
        assert!(tag.as_str().starts_with("warren-service-chat-"), "{tag}");
        let queue = "q".repeat(255);
        let a = consumer_tag("warren-service", &queue);
        let b = consumer_tag("warren-service", &queue);
        assert!(a.as_str().len() <= MAX_SHORT_STRING);
        assert_ne!(a, b, "the hash covers the UUID");
    }

    #[test]
    fn a_long_dead_reason_is_cut_at_a_character_boundary_and_marked() {
        assert_eq!(bounded_reason("short"), "short");
        let exact = "a".repeat(MAX_DEAD_REASON_BYTES);
        assert_eq!(bounded_reason(&exact), exact);
        let long = "é".repeat(100_000);
        let bounded = bounded_reason(&long);
        assert!(bounded.len() <= MAX_DEAD_REASON_BYTES, "{}", bounded.len());
        assert!(bounded.starts_with("éé"));
        assert!(
            bounded.ends_with("… (truncated, 200000 bytes in all)"),
            "{bounded}"
        );
    }

    /// The slots a lost run's handlers held past `LOST_HANDLERS_WAIT` are added back at
    /// once and forgotten as those handlers end: the consumer has `prefetch` slots
    /// again, not more.
    #[test]
    fn slots_given_up_are_made_whole_once_and_not_twice() {
        let slots = Slots::new(2);
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let take = || {
            let permit = slots.semaphore.clone().try_acquire_owned().expect("a slot");
            Ledger::take(&ledger, permit)
        };
        let (first, second) = (take(), take());
        assert_eq!(slots.semaphore.available_permits(), 0);
        drop(first);
        assert_eq!(
            slots.semaphore.available_permits(),
            1,
            "released as it ends"
        );
        assert_eq!(
            Ledger::give_up(&ledger, &slots.semaphore),
            1,
            "one still held"
        );
        assert_eq!(
            slots.semaphore.available_permits(),
            2,
            "given up: whole again"
        );
        drop(second);
        assert_eq!(
            slots.semaphore.available_permits(),
            2,
            "forgotten, not released"
        );
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_handler_error() {
        let result = catch_panic(async { panic!("boom") }).await;
        assert!(matches!(result, Err(HandlerError::Panicked(m)) if m == "boom"));
    }
}
