//! Request/reply over RabbitMQ's direct reply-to: a request carries
//! `reply_to = amq.rabbitmq.reply-to` and a fresh `correlation_id`, and the answer a
//! service publishes to the default exchange with that key comes straight back to the
//! channel that published it, so no queue is declared for answers. Direct reply-to needs
//! the publish and the answer consumer on one channel: [`DirectReply`] holds that
//! channel (re-opened when it dies) and hands each answer to the caller waiting for its
//! correlation id. Used by the auth service client, the HTTP API's
//! `POST /request/{channel}` and, with `request_replies = "direct"`, WebSocket
//! `request`s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use tokio::sync::oneshot;

use crate::broker::{Broker, NACKED_CHANNEL_MIN_AGE};
use crate::confirms::Publisher;

/// The pseudo-queue a request names as `reply_to`.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

type Waiting = Arc<Mutex<Table>>;

/// How often forwarded calls past their deadline are swept from the table.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Where an answer goes.
enum Waiter {
    /// To a [`Call`] that awaits it.
    Once(oneshot::Sender<Delivery>),
    /// Handed to a function on arrival, from the consumer's task (no task in between
    /// waits for it); forgotten once `until` passed.
    Forward {
        to: Box<dyn FnOnce(Delivery) + Send>,
        until: Instant,
    },
}

/// The calls in flight, by correlation id, each with the generation of the channel
/// its request went out on.
struct Table {
    calls: HashMap<String, (u64, Waiter)>,
    swept: Instant,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            calls: HashMap::new(),
            swept: Instant::now(),
        }
    }
}

impl Table {
    /// Adds a forwarded call answered within `within` of `now`, first sweeping those
    /// past their deadline (at most every [`SWEEP_EVERY`]).
    fn forward(
        &mut self,
        id: String,
        generation: u64,
        within: Duration,
        to: Box<dyn FnOnce(Delivery) + Send>,
        now: Instant,
    ) {
        if now.duration_since(self.swept) >= SWEEP_EVERY {
            self.calls
                .retain(|_, (_, w)| !matches!(w, Waiter::Forward { until, .. } if *until <= now));
            self.swept = now;
        }
        let until = now + within;
        self.calls
            .insert(id, (generation, Waiter::Forward { to, until }));
    }

    /// The answer consumer of channel `generation` ended: no answer to a request that
    /// went out on it can come any more. The [`Call`]s awaiting one are told at once
    /// (their callers answer `broker_unavailable` instead of waiting out their
    /// timeout); forwarded calls are swept at their deadline as before.
    fn channel_ended(&mut self, generation: u64) {
        self.calls
            .retain(|_, (g, w)| *g != generation || !matches!(w, Waiter::Once(_)));
    }
}

fn lock(waiting: &Waiting) -> std::sync::MutexGuard<'_, Table> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`DirectReply`] holds behind its lock.
#[derive(Default)]
struct Slot {
    /// The channel, when it was opened, and its generation (one more per channel
    /// opened; channel ids are reused).
    open: Option<(Publisher, Instant, u64)>,
    /// When the last attempt to open it failed, and why: the callers that were
    /// already waiting then share that outcome instead of each waiting out an attempt
    /// of its own behind the lock (`broker_wait_ms` each, one after the other).
    failed: Option<(Instant, String)>,
}

/// One confirm-mode channel consuming `amq.rabbitmq.reply-to`, and the calls waiting
/// for their answers.
pub(crate) struct DirectReply {
    broker: Arc<Broker>,
    /// The channel and the last failed attempt to open one.
    channel: tokio::sync::Mutex<Slot>,
    generations: std::sync::atomic::AtomicU64,
    waiting: Waiting,
}

/// A call in flight: publish the request on `channel` with `correlation_id` = `id` and
/// `reply_to` = [`DIRECT_REPLY_TO`], then wait for [`Call::answer`]. Dropping it
/// forgets the call (a late answer is dropped).
pub(crate) struct Call {
    pub(crate) id: String,
    pub(crate) channel: Publisher,
    answer: oneshot::Receiver<Delivery>,
    _forget: Forget,
}

impl Call {
    /// The answer, when it comes (bound it with a timeout).
    ///
    /// # Errors
    /// When the answer consumer ended (the channel died) before the answer came.
    pub(crate) async fn answer(self) -> Result<Delivery, String> {
        self.answer
            .await
            .map_err(|_| "the answer channel closed".to_string())
    }
}

impl DirectReply {
    pub(crate) fn new(broker: Arc<Broker>) -> DirectReply {
        DirectReply {
            broker,
            channel: tokio::sync::Mutex::default(),
            generations: std::sync::atomic::AtomicU64::new(0),
            waiting: Arc::default(),
        }
    }

    /// Registers a call with correlation id `id` (unique among calls in flight).
    ///
    /// # Errors
    /// When the channel cannot be opened (RabbitMQ is unreachable).
    pub(crate) async fn begin(&self, id: String) -> Result<Call, String> {
        let (channel, generation) = self.channel().await?;
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting)
            .calls
            .insert(id.clone(), (generation, Waiter::Once(tx)));
        Ok(Call {
            _forget: Forget {
                waiting: self.waiting.clone(),
                id: id.clone(),
            },
            id,
            channel,
            answer: rx,
        })
    }

    /// Registers a call with correlation id `id` (unique among calls in flight) whose
    /// answer, if it comes within `within`, is handed to `to` as it arrives; returns
    /// the channel to publish the request on. No task waits for the answer (the
    /// WebSocket path: one task switch less per reply); a call not answered in time
    /// is swept from the table later, and [`DirectReply::forget`] drops one at once.
    ///
    /// # Errors
    /// When the channel cannot be opened (RabbitMQ is unreachable).
    pub(crate) async fn forward(
        &self,
        id: String,
        within: Duration,
        to: impl FnOnce(Delivery) + Send + 'static,
    ) -> Result<Publisher, String> {
        let (channel, generation) = self.channel().await?;
        lock(&self.waiting).forward(id, generation, within, Box::new(to), Instant::now());
        Ok(channel)
    }

    /// Drops the call `id` (its request was refused: no answer will come).
    pub(crate) fn forget(&self, id: &str) {
        lock(&self.waiting).calls.remove(id);
    }

    /// Stops sending calls on `channel` after a request on it was nacked, unless it
    /// was opened less than a second ago (as
    /// [`Broker::retire_nacked`](crate::broker::Broker::retire_nacked)): the next call
    /// opens a fresh channel, and this one closes after `linger` (the answers still due
    /// on it come in until then). Why: a nack can mean the channel is stuck on a
    /// quorum queue whose leader's node is gone
    /// ([`Broker::retire_publisher`](crate::broker::Broker::retire_publisher)).
    pub(crate) async fn retire(&self, channel: &Channel, linger: std::time::Duration) {
        let mut guard = self.channel.lock().await;
        let keep = guard.open.as_ref().is_none_or(|(c, opened, _)| {
            c.channel().id() != channel.id() || opened.elapsed() < NACKED_CHANNEL_MIN_AGE
        });
        if keep {
            return; // already replaced, or too young to tell
        }
        let old = guard.open.take().map(|(c, _, _)| c);
        drop(guard);
        tracing::warn!(
            channel = channel.id(),
            "a request was nacked; requests go out on a new channel from now on"
        );
        if let Some(old) = old {
            tokio::spawn(async move {
                tokio::time::sleep(linger).await;
                let _ = old
                    .channel()
                    .close(200, "a request was nacked".into())
                    .await;
            });
        }
    }

    /// The request/answer channel and its generation, opened (with its answer
    /// consumer) when missing or dead.
    ///
    /// # Errors
    /// When it cannot be opened within `broker_wait_ms`; also, at once, when an
    /// attempt to open it failed while this call waited for the lock and RabbitMQ is
    /// still not connected, or blocks publishes (the calls that came together share
    /// one attempt, each answered within `broker_wait_ms`).
    async fn channel(&self) -> Result<(Publisher, u64), String> {
        let asked = Instant::now();
        let mut guard = self.channel.lock().await;
        if let Some((ch, _, generation)) = guard.open.as_ref() {
            if ch.channel().status().connected() {
                return Ok((ch.clone(), *generation));
            }
        }
        // Shared only while RabbitMQ is still away or blocking publishes: a call that
        // came as the connections were back tries again.
        if let Some((at, e)) = &guard.failed {
            if *at >= asked && self.broker.known_obstacle().is_some() {
                return Err(e.clone());
            }
        }
        // Bounded: the channel is opened on the publishing connection, on which
        // nothing is written while RabbitMQ blocks it (an alarm the gateway has not
        // been told of yet), and every call waits behind this lock meanwhile.
        let open = async {
            let ch = self
                .broker
                .request_channel()
                .await
                .map_err(|e| e.to_string())?;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let answers = ch
                .basic_consume(
                    ShortString::from(DIRECT_REPLY_TO),
                    ShortString::from(""),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((ch, answers))
        };
        let opened = tokio::time::timeout(self.broker.wait_limit(), open)
            .await
            .map_err(|_| {
                "RabbitMQ did not open the request channel in time (unreachable, or \
                 blocking publishes)"
                    .to_string()
            })
            .and_then(|r| r);
        let (ch, mut answers) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                guard.failed = Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        let waiting = self.waiting.clone();
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            while let Some(Ok(d)) = answers.next().await {
                let Some(id) = d.properties.correlation_id().as_ref() else {
                    continue;
                };
                let waiter = lock(&waiting).calls.remove(id.as_str());
                match waiter {
                    Some((_, Waiter::Once(tx))) => {
                        let _ = tx.send(d);
                    }
                    Some((_, Waiter::Forward { to, .. })) => to(d),
                    None => {}
                }
            }
            tracing::debug!("direct reply-to consumer ended");
            lock(&waiting).channel_ended(generation);
        });
        let ch = Publisher::new(ch);
        guard.open = Some((ch.clone(), Instant::now(), generation));
        guard.failed = None;
        Ok((ch, generation))
    }
}

/// Removes a call's waiting entry however it ends (answer, timeout, error), so the map
/// holds only calls still in flight.
struct Forget {
    waiting: Waiting,
    id: String,
}

impl Drop for Forget {
    fn drop(&mut self) {
        lock(&self.waiting).calls.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_calls_past_their_deadline_are_swept_and_others_kept() {
        let start = Instant::now();
        let mut table = Table {
            calls: HashMap::new(),
            swept: start,
        };
        let ms = Duration::from_millis;
        table.forward("short".into(), 0, ms(100), Box::new(|_| {}), start);
        table.forward("long".into(), 0, ms(5_000), Box::new(|_| {}), start);
        let (tx, _rx) = oneshot::channel();
        table.calls.insert("once".into(), (0, Waiter::Once(tx)));
        // Not a second since the last sweep: nothing is swept yet.
        table.forward("a".into(), 0, ms(100), Box::new(|_| {}), start + ms(500));
        assert_eq!(table.calls.len(), 4);
        // Past "short"'s and "a"'s deadlines and a second on: both go; a `Call`'s
        // entry stays (its guard removes it).
        table.forward("b".into(), 0, ms(100), Box::new(|_| {}), start + ms(1_000));
        let mut left: Vec<&str> = table.calls.keys().map(String::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["b", "long", "once"]);
    }

    #[test]
    fn the_calls_awaiting_an_answer_on_a_channel_that_ended_are_told_at_once() {
        let now = Instant::now();
        let mut table = Table::default();
        let (old_tx, mut old_rx) = oneshot::channel();
        let (new_tx, mut new_rx) = oneshot::channel();
        table.calls.insert("old".into(), (1, Waiter::Once(old_tx)));
        table.calls.insert("new".into(), (2, Waiter::Once(new_tx)));
        let long = Duration::from_secs(5);
        table.forward("forwarded".into(), 1, long, Box::new(|_| {}), now);
        table.channel_ended(1);
        assert!(old_rx
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed));
        assert_eq!(new_rx.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        let mut left: Vec<&str> = table.calls.keys().map(String::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["forwarded", "new"]);
    }
}
