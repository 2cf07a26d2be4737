//! Publishing from a service: messages to clients on `warren.out` (one publish for
//! many targets, with the `CC` header) and replies to requests through the default
//! exchange. Every publish is persistent, carries a unique `message_id`, and waits for
//! the broker's confirm. While the connection is down the publisher waits for the
//! link (bounded by `publish_timeout`) and publishes again — same `message_id` — when
//! a confirm was lost with the connection; it never drops a message silently.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, ErrorKind};
use tokio::sync::Mutex;
use tracing::{debug, warn};
use warren_protocol::amqp::{
    cc_header, keys, Names, H_CC, H_CHANNEL, H_SESSION, H_SUBJECT, H_USER,
};

use crate::error::{Result, ServiceError};
use crate::handler::Answer;
use crate::incoming::Incoming;
use crate::link::{Epoch, Link};
use crate::short_string::{exact, fitted};
use crate::target::{cc_value, Targets, CC_HEADER};

/// AMQP delivery mode of persistent messages.
const PERSISTENT: u8 = 2;

/// A message to clients: its targets, JSON body, headers and `message_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Who receives it.
    pub targets: Targets,
    /// JSON bytes, sent as they are.
    pub body: Bytes,
    /// String headers (the gateway shows them to clients, except `x-warren-*`
    /// internals other than the sender's user and session).
    pub headers: BTreeMap<String, String>,
    /// The `message_id`; a fresh UUID when `None`. Set it to something stable when the
    /// same message may be published again (a retry), so receivers drop the copy. One
    /// longer than 255 bytes is sent shortened ([`fitted`]: a prefix and a hash of the
    /// whole, the same for the same id).
    pub message_id: Option<String>,
}

impl Outgoing {
    /// A message with these targets and JSON bytes.
    pub fn new(targets: Targets, body: impl Into<Bytes>) -> Self {
        Outgoing {
            targets,
            body: body.into(),
            headers: BTreeMap::new(),
            message_id: None,
        }
    }

    /// Relays a client's message to `targets`: the body as it came, the client's own
    /// headers, the sender (`x-warren-user`, `x-warren-session`, `x-warren-channel`,
    /// `x-warren-subject`) in headers, and a `message_id` derived from the incoming one,
    /// so a redelivered incoming message produces a relay with the same id (shortened
    /// when it passes 255 bytes: [`fitted`]).
    pub fn relay(incoming: Incoming, targets: Targets) -> Self {
        let mut headers = incoming.headers;
        let sender = [
            (H_USER, incoming.user),
            (H_SESSION, incoming.session),
            (H_CHANNEL, Some(incoming.channel)),
            (H_SUBJECT, incoming.subject),
        ];
        for (name, value) in sender {
            if let Some(value) = value {
                headers.insert(name.to_string(), value);
            }
        }
        Outgoing {
            targets,
            body: incoming.body,
            headers,
            message_id: incoming.message_id.map(|id| format!("{id}:relay")),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the `message_id`.
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }
}

/// A fresh unique `message_id`.
pub fn fresh_message_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Publishes on confirm-mode channels of the service's current connection, reopened
/// when the broker closed them or the link moved to a new connection: one per Warren
/// channel published to on `warren.out`, one for replies to the outbound stream, one
/// for everything else ([`Lane`] says why). A channel unused for `publish_channel_idle`
/// is closed and opened again on its lane's next publish. Cheap to clone; clones share
/// the channels.
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    link: Arc<Link>,
    /// Per [`Lane`], created on its first publish and kept: its [`Slot`]. The map's
    /// lock is held only to look a lane up; a lane's own lock is held while its
    /// channel opens, so one lane's opening does not hold up publishes on another.
    /// A lane stays in the map once created (its slot empties when its channel is
    /// closed for being idle), so a publish never holds a slot the map forgot.
    lanes: std::sync::Mutex<HashMap<Lane, Slot>>,
    names: Names,
    app_id: String,
    timeout: Duration,
    /// The service's returns queue: the `reply_to` of messages to users, where
    /// gateways report the ones no user received ([`crate::Service::undelivered`]).
    returns: Option<String>,
}

impl Publisher {
    pub(crate) fn new(
        link: Arc<Link>,
        names: Names,
        app_id: String,
        timeout: Duration,
        idle: Duration,
        returns: Option<String>,
    ) -> Self {
        let inner = Arc::new(Inner {
            link,
            lanes: std::sync::Mutex::new(HashMap::new()),
            names,
            app_id,
            timeout,
            returns,
        });
        tokio::spawn(close_idle_channels(
            Arc::downgrade(&inner),
            idle.max(Duration::from_secs(1)),
        ));
        Publisher { inner }
    }

    /// Publishes `message` to `warren.out`: ONE publish whose routing key is the first
    /// target and whose `CC` header lists the others. Waits for the broker's confirm.
    /// Returns the message's `message_id` as sent (an id longer than 255 bytes is
    /// shortened: [`fitted`]).
    ///
    /// Not mandatory: a message no session is subscribed to is dropped by RabbitMQ, as
    /// a broadcast nobody listens to should be. A message to users is not silently
    /// lost, though: when none of its users has a session anywhere, a gateway reports
    /// it on [`Service::undelivered`](crate::Service::undelivered).
    ///
    /// # Errors
    /// [`ServiceError::NoTargets`] / [`ServiceError::InvalidTarget`] for bad targets,
    /// As [`Publisher::publish_confirmed`] (which waits for the broker within the
    /// publish timeout).
    pub async fn publish(&self, message: &Outgoing) -> Result<String> {
        let mut keys = message.targets.routing_keys()?;
        let routing_key = keys.remove(0);
        let message_id = match &message.message_id {
            Some(id) => fitted(id).to_string(),
            None => fresh_message_id(),
        };
        let mut headers = string_table(&message.headers);
        if let Some(cc) = cc_value(&keys) {
            headers.insert(ShortString::from(CC_HEADER), cc);
            // The same keys as a string, which survives the gateway's outbound stream.
            headers.insert(
                ShortString::from(H_CC),
                AMQPValue::LongString(cc_header(&keys).into()),
            );
        }
        let mut properties = self.properties(&message_id).with_headers(headers);
        if let Some(returns) = &self.inner.returns {
            if message.targets.has_users() {
                // Gateways report here a message none of its users received.
                properties = properties.with_reply_to(fitted(returns));
            }
        }
        let exchange = self.inner.names.outbound_exchange();
        self.publish_confirmed(&exchange, &routing_key, &message.body, properties)
            .await?;
        debug!(
            exchange = %exchange,
            routing_key = %routing_key,
            message_id = %message_id,
            "published to clients"
        );
        Ok(message_id)
    }

    /// Sends `answer` to the queue `reply_to` through the default exchange, with
    /// `correlation_id` copied and `message_id` as given (shortened past 255 bytes:
    /// [`fitted`]). Waits for the confirm.
    ///
    /// # Errors
    /// [`ServiceError::TooLongForAmqp`] for a `correlation_id` longer than 255 bytes:
    /// a shortened one would match no request, so none is sent. Otherwise as
    /// [`Publisher::publish_confirmed`] (which waits for the broker within the publish
    /// timeout).
    pub async fn reply(
        &self,
        reply_to: &str,
        correlation_id: Option<&str>,
        answer: &Answer,
        message_id: &str,
    ) -> Result<()> {
        let mut properties = self
            .properties(message_id)
            .with_headers(string_table(&answer.headers));
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(exact("correlation id", id)?);
        }
        self.publish_confirmed("", reply_to, &answer.body, properties)
            .await?;
        debug!(
            reply_to = %reply_to,
            correlation_id = correlation_id.unwrap_or(""),
            message_id = %message_id,
            refused = answer.error_code().map(|c| c.as_str()).unwrap_or(""),
            "replied"
        );
        Ok(())
    }

    /// Publishes raw bytes to any exchange with the given properties and waits for
    /// the confirm (used for dead-lettering; also handy for services that need
    /// something the other methods do not offer).
    ///
    /// While the connection is down, waits for the link; when the connection is lost
    /// before the confirm arrived, publishes again on the next connection (the broker
    /// may then hold two copies with the same `message_id`, which receivers drop); a
    /// negative confirm (the broker could not take the message, e.g. a quorum queue
    /// electing a new leader while a node shuts down) is published again after a pause
    /// (100 ms doubling, at most 1 s) on a fresh channel. When the broker closed the
    /// publishing channel with a channel error (e.g. `NOT_FOUND` for a missing
    /// exchange), every publish pending on it failed with that error, though only one
    /// of them caused it: each is published again once, on a channel of its own, so the
    /// one that caused it fails with its own error and the others go through (they may
    /// then be stored twice, with the same `message_id`). All of it within the
    /// configured `publish_timeout`.
    ///
    /// # Errors
    /// [`ServiceError::TooLongForAmqp`] for an `exchange` or `routing_key` longer than
    /// 255 bytes (nothing is published);
    /// [`ServiceError::Nacked`] when the broker still nacks at the deadline;
    /// [`ServiceError::BrokerUnavailable`] when no confirm came within the timeout;
    /// [`ServiceError::Amqp`] when the broker refused the publish itself (e.g. the
    /// exchange does not exist); [`ServiceError::Stopped`] once the service stopped.
    pub async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let exchange_name = exact("exchange name", exchange)?;
        let key = exact("routing key", routing_key)?;
        let started = tokio::time::Instant::now();
        let deadline = started
            .checked_add(self.inner.timeout)
            .unwrap_or_else(|| crate::config::deadline_in(self.inner.timeout));
        let mut min_generation = 0;
        let mut attempt = 0u32;
        let mut nacks = 0u32;
        // Whether the next attempt goes on a channel of its own (after a channel
        // error), and whether one did already.
        let mut alone = false;
        let mut tried_alone = false;
        let lane = Lane::of(&self.inner.names, exchange, routing_key);
        let header_bytes = content_header_bytes(&properties);
        loop {
            attempt += 1;
            let epoch = self.inner.link.up(min_generation, Some(deadline)).await?;
            let limit = warren_protocol::amqp::content_header_limit(
                epoch.connection.configuration().frame_max(),
            );
            if header_bytes > limit {
                return Err(ServiceError::TooLarge {
                    bytes: header_bytes,
                    limit,
                });
            }
            let mut used = None;
            let once = async {
                if std::mem::take(&mut alone) {
                    publish_alone(
                        &epoch,
                        exchange_name.clone(),
                        key.clone(),
                        body,
                        properties.clone(),
                    )
                    .await
                } else {
                    self.publish_once(
                        &epoch,
                        &lane,
                        &mut used,
                        exchange_name.clone(),
                        key.clone(),
                        body,
                        properties.clone(),
                    )
                    .await
                }
            };
            let result = match tokio::time::timeout_at(deadline, once).await {
                Ok(result) => result,
                Err(_) => {
                    if let Some(id) = used {
                        self.retire(&lane, id, epoch.generation, Retire::NoConfirm)
                            .await;
                    }
                    return Err(ServiceError::BrokerUnavailable {
                        waited: started.elapsed(),
                        reason: self.inner.link.describe(),
                    });
                }
            };
            match result {
                Ok(Confirmation::Nack(_)) => {
                    // The broker could not take it (a full `reject-publish` queue, or a
                    // quorum queue whose leader's node is gone): publish again after a
                    // pause, while the deadline allows, on a fresh channel
                    // ([`Retire::Nacked`] says why).
                    if let Some(id) = used {
                        self.retire(&lane, id, epoch.generation, Retire::Nacked)
                            .await;
                    }
                    nacks += 1;
                    let wait = retry_pause(nacks);
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(ServiceError::Nacked {
                            exchange: exchange.to_string(),
                            routing_key: routing_key.to_string(),
                        });
                    }
                    warn!(
                        exchange,
                        routing_key,
                        nacks,
                        retry_in_ms = wait.as_millis() as u64,
                        "the broker nacked the publish; publishing again"
                    );
                    tokio::time::sleep(wait).await;
                }
                Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => {
                    if attempt > 1 {
                        debug!(
                            exchange,
                            routing_key, attempt, "published after a reconnect"
                        );
                    }
                    return Ok(());
                }
                Err(e) => {
                    let connection_up = epoch.connection.status().connected();
                    if connection_up && e.is_amqp_soft_error() && !tried_alone {
                        // The broker closed the channel: for this publish, or for
                        // another one pending beside it. Alone on a channel, this one
                        // goes through or fails with its own error.
                        warn!(exchange, routing_key, attempt, error = %e, "the broker closed the publishing channel; publishing again once on a channel of its own");
                        alone = true;
                        tried_alone = true;
                        continue;
                    }
                    if !retryable(&e, connection_up) {
                        return Err(e.into());
                    }
                    warn!(exchange, routing_key, attempt, error = %e, "publish lost with its channel or connection; publishing again");
                    if !connection_up {
                        self.inner.link.report_lost(epoch.generation);
                        min_generation = epoch.generation + 1;
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// One publish and its confirm on `lane`; `used` names the channel it went out on.
    #[allow(clippy::too_many_arguments)]
    async fn publish_once(
        &self,
        epoch: &Epoch,
        lane: &Lane,
        used: &mut Option<u16>,
        exchange: ShortString,
        routing_key: ShortString,
        body: &[u8],
        properties: BasicProperties,
    ) -> std::result::Result<Confirmation, lapin::Error> {
        let channel = self.channel(epoch, lane).await?;
        *used = Some(channel.id());
        publish_and_confirm(&channel, exchange, routing_key, body, properties).await
    }

    /// The properties every service message carries: persistent, JSON, `message_id`,
    /// `timestamp`, `app_id` (the ids shortened past 255 bytes: [`fitted`]).
    fn properties(&self, message_id: &str) -> BasicProperties {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(ShortString::from("application/json"))
            .with_message_id(fitted(message_id))
            .with_timestamp(now)
            .with_app_id(fitted(&self.inner.app_id))
    }

    /// `lane`'s slot, created on the lane's first publish.
    fn slot(&self, lane: &Lane) -> Slot {
        let mut lanes = self.inner.lanes.lock().expect("lanes lock");
        if let Some(slot) = lanes.get(lane) {
            return slot.clone();
        }
        let slot = Slot::default();
        lanes.insert(lane.clone(), slot.clone());
        slot
    }

    /// `lane`'s slot if the lane has published before.
    fn existing_slot(&self, lane: &Lane) -> Option<Slot> {
        self.inner
            .lanes
            .lock()
            .expect("lanes lock")
            .get(lane)
            .cloned()
    }

    /// `lane`'s confirm-mode channel on `epoch`'s connection, opened when there is
    /// none yet, the broker closed it, or it belongs to an earlier connection.
    async fn channel(
        &self,
        epoch: &Epoch,
        lane: &Lane,
    ) -> std::result::Result<Channel, lapin::Error> {
        let slot = self.slot(lane);
        let mut guard = slot.lock().await;
        if let Some(open) = guard.as_mut() {
            if open.generation == epoch.generation && open.channel.status().connected() {
                open.used = Instant::now();
                return Ok(open.channel.clone());
            }
        }
        let channel = epoch.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let now = Instant::now();
        *guard = Some(LaneChannel {
            channel: channel.clone(),
            generation: epoch.generation,
            opened: now,
            used: now,
        });
        Ok(channel)
    }

    /// Stops publishing on channel `id` of connection `generation` (see [`Retire`] for
    /// when and why): later publishes open a fresh channel, and this one is closed
    /// once its outstanding confirms came (or after another `publish_timeout`).
    async fn retire(&self, lane: &Lane, id: u16, generation: u64, why: Retire) {
        let Some(slot) = self.existing_slot(lane) else {
            return;
        };
        let mut guard = slot.lock().await;
        let same = guard.as_ref().is_some_and(|open| {
            open.channel.id() == id
                && open.generation == generation
                && (why != Retire::Nacked || open.opened.elapsed() >= NACKED_CHANNEL_MIN_AGE)
        });
        if !same {
            return; // already replaced, or too young to tell (Retire::Nacked)
        }
        let Some(open) = guard.take() else {
            return;
        };
        drop(guard);
        warn!(
            channel = id,
            lane = ?lane,
            reason = why.reason(),
            "publishing on a new channel from now on"
        );
        tokio::spawn(close_after_confirms(
            open.channel,
            self.inner.timeout,
            why.reason(),
        ));
    }

    /// Closes every lane's publishing channel, all at once, each after waiting (at
    /// most 5 s) for its outstanding confirms.
    pub(crate) async fn close(&self) {
        let slots: Vec<Slot> = {
            let lanes = self.inner.lanes.lock().expect("lanes lock");
            lanes.values().cloned().collect()
        };
        join_all(slots.into_iter().map(|slot| async move {
            if let Some(open) = slot.lock().await.take() {
                close_after_confirms(open.channel, Duration::from_secs(5), "bye").await;
            }
        }))
        .await;
    }
}

/// A lane's channel; `None` until its first publish and after it was retired or
/// closed (for being idle, or with the publisher).
type Slot = Arc<Mutex<Option<LaneChannel>>>;

/// A lane's open channel.
#[derive(Debug)]
struct LaneChannel {
    channel: Channel,
    /// The generation of the connection it belongs to.
    generation: u64,
    opened: Instant,
    /// When a publish last took it.
    used: Instant,
}

/// One publish on `channel` (in confirm mode) and its confirm.
async fn publish_and_confirm(
    channel: &Channel,
    exchange: ShortString,
    routing_key: ShortString,
    body: &[u8],
    properties: BasicProperties,
) -> std::result::Result<Confirmation, lapin::Error> {
    channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await
}

/// A publish and its confirm on a confirm-mode channel of its own, closed after it
/// (after a channel error: [`Publisher::publish_confirmed`]).
async fn publish_alone(
    epoch: &Epoch,
    exchange: ShortString,
    routing_key: ShortString,
    body: &[u8],
    properties: BasicProperties,
) -> std::result::Result<Confirmation, lapin::Error> {
    let channel = epoch.connection.create_channel().await?;
    let result = async {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        publish_and_confirm(&channel, exchange, routing_key, body, properties).await
    }
    .await;
    if channel.status().connected() {
        let _ = channel.close(200, ShortString::from("published")).await;
    }
    result
}

/// Closes `channel` once its outstanding confirms came (or after `wait`): publishes
/// still waiting on it keep their confirms, or their timeouts.
async fn close_after_confirms(channel: Channel, wait: Duration, reason: &'static str) {
    if channel.status().connected() {
        let _ = tokio::time::timeout(wait, channel.wait_for_confirms()).await;
        let _ = channel.close(200, ShortString::from(reason)).await;
    }
}

/// Every `idle / 2`, closes the lanes' channels that no publish took for `idle`
/// (their lanes open them again when next published on), until the publisher is
/// gone.
async fn close_idle_channels(inner: Weak<Inner>, idle: Duration) {
    let mut tick = tokio::time::interval(idle / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let slots: Vec<(Lane, Slot)> = {
            let lanes = inner.lanes.lock().expect("lanes lock");
            lanes.iter().map(|(l, s)| (l.clone(), s.clone())).collect()
        };
        for (lane, slot) in slots {
            let mut guard = slot.lock().await;
            if guard
                .as_ref()
                .is_some_and(|open| open.used.elapsed() >= idle)
            {
                if let Some(open) = guard.take() {
                    debug!(lane = ?lane, channel = open.channel.id(), "closing an idle publishing channel");
                    tokio::spawn(close_after_confirms(open.channel, inner.timeout, "idle"));
                }
            }
        }
    }
}

/// Which channel a publish goes out on. An AMQP channel must publish to one stream
/// only, and to nothing else: so each Warren channel published to on `warren.out` has
/// a channel of its own, replies to the outbound stream have one, and everything else
/// shares the last.
///
/// Why: RabbitMQ 3.10.8, when a stream's leader changes, publishes a channel's
/// unconfirmed stream messages again to the new leader numbered by the *channel's*
/// publish sequence (`rabbit_stream_queue:resend_all/1`) instead of the stream writer's
/// own sequence. On a channel that also published elsewhere (the service's
/// announcements on `warren.services`, requests to `warren.in`), the channel's number
/// is ahead of the writer's by that many publishes, so the stream's de-duplication
/// takes the next that many new messages for copies of messages it has. After a
/// graceful stop it confirmed them and stored nothing (`fault_cluster`: 3–4 broadcasts
/// lost in 2 of 5 runs and in CI, one per announcement before the stop); after a kill
/// it never confirmed them (`fault_leader_change`: broadcasting stalled). On a
/// channel that publishes only to one stream the two numbers are the same.
///
/// Why per Warren channel: a channel with a retention of its own has a stream of its
/// own ([`Names::channel_stream`]), which the outbound stream then no longer receives,
/// and the library cannot tell which channels those are. One AMQP channel publishing
/// `chat.all` (outbound stream) and `news.all` (news's stream) would run ahead of both
/// streams' writers. Several AMQP channels publishing to one stream are fine: each
/// has a writer of its own. One AMQP channel per Warren channel a service publishes
/// to is opened on its first publish and closed once unused for
/// `publish_channel_idle` (AMQP allows 2,047 per connection by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Lane {
    /// Everything not for a stream: announcements, requests, dead-lettering...
    Other,
    /// `warren.out` with routing keys of this Warren channel (`chat.all`,
    /// `chat.user.<u>`...: [`keys::channel_of`]).
    Out(String),
    /// Replies addressed to the outbound stream (default exchange, the stream's name
    /// as routing key).
    Replies,
}

impl Lane {
    /// The lane of a publish to `exchange` with `routing_key`.
    fn of(names: &Names, exchange: &str, routing_key: &str) -> Lane {
        if exchange == names.outbound_exchange() {
            Lane::Out(keys::channel_of(routing_key).to_string())
        } else if exchange.is_empty() && routing_key == names.outbound_stream() {
            Lane::Replies
        } else {
            Lane::Other
        }
    }
}

/// Why the publishing channel is left for a fresh one: a channel that shows either
/// is not trusted with more publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retire {
    /// A publish got no confirm within `publish_timeout`: whatever holds it up may
    /// hold up the channel's later publishes too. (Introduced against broadcasts that
    /// RabbitMQ 3.10.8 confirmed and never stored after a stream leader change; their
    /// cause turned out to be the one [`Lane`] describes.)
    NoConfirm,
    /// A publish was nacked. A channel's quorum-queue client is set up from the
    /// queue's record the first time the channel routes to that queue; if that
    /// happens while the record still names a leader whose node is gone (for about
    /// 300 ms after a kill here), the client never learns the new leader and nacks
    /// every publish to that queue for as long as the node stays down. A fresh
    /// channel reads the record again. Only a channel at least
    /// [`NACKED_CHANNEL_MIN_AGE`] old is left: a full `reject-publish` queue nacks
    /// everything, and a new channel per nack would churn channels at that rate.
    Nacked,
}

impl Retire {
    /// The log's and the channel close's reason.
    fn reason(self) -> &'static str {
        match self {
            Retire::NoConfirm => "a publish got no confirm in time",
            Retire::Nacked => "a publish was nacked",
        }
    }
}

/// A nacked channel younger than this is kept ([`Retire::Nacked`]).
const NACKED_CHANNEL_MIN_AGE: Duration = Duration::from_secs(1);

/// Pause before publishing again after the `n`-th negative confirm: 100 ms doubling,
/// at most 1 s.
fn retry_pause(n: u32) -> Duration {
    Duration::from_millis(100u64 << n.saturating_sub(1).min(4)).min(Duration::from_secs(1))
}

/// Whether a failed publish is worth publishing again: the connection is gone, or
/// the channel was closed under it (by the broker or by another publish's error).
/// A broker refusal of this very publish (unknown exchange, access refused) is not.
fn retryable(error: &lapin::Error, connection_up: bool) -> bool {
    if !connection_up {
        return true;
    }
    matches!(
        error.kind(),
        ErrorKind::InvalidChannelState(..)
            | ErrorKind::InvalidChannel(_)
            | ErrorKind::InvalidConnectionState(_)
            | ErrorKind::IOError(_)
            | ErrorKind::MissingHeartbeatError
    ) || error.is_amqp_hard_error()
}

/// The size of a publish's content header payload (class, weight, body size and the
/// encoded `properties`): it must fit in one frame, unlike the body.
pub(crate) fn content_header_bytes(properties: &BasicProperties) -> usize {
    let encoded = cookie_factory::gen_simple(
        lapin::protocol::basic::gen_properties(properties),
        Vec::new(),
    );
    // Encoding into a Vec cannot fail; were it to, nothing is refused here.
    12 + encoded.map_or(0, |v| v.len())
}

/// String headers as an AMQP field table of long strings (a name longer than 255
/// bytes shortened: [`fitted`]).
pub(crate) fn string_table(headers: &BTreeMap<String, String>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            fitted(k),
            AMQPValue::LongString(LongString::from(v.as_str())),
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;
    use warren_protocol::amqp::H_USER;

    #[test]
    fn a_relay_keeps_the_body_and_names_the_sender() {
        let mut table = FieldTable::default();
        table.insert(H_USER.into(), AMQPValue::LongString("alice".into()));
        table.insert("x-app".into(), AMQPValue::LongString("1".into()));
        let props = BasicProperties::default()
            .with_headers(table)
            .with_message_id("alice:7".into());
        let body = b"{ \"text\" : \"hi\" }".to_vec();
        let incoming = Incoming::from_parts("IN_CHAT", "chat", false, &props, body.clone());
        let out = Outgoing::relay(incoming, Targets::broadcast("chat"));
        assert_eq!(&out.body[..], &body[..]);
        assert_eq!(out.headers.get(H_USER).map(String::as_str), Some("alice"));
        assert_eq!(out.headers.get(H_CHANNEL).map(String::as_str), Some("chat"));
        assert_eq!(out.headers.get("x-app").map(String::as_str), Some("1"));
        assert_eq!(out.message_id.as_deref(), Some("alice:7:relay"));
    }

    #[test]
    fn a_publish_lost_with_its_connection_or_channel_is_retried_a_refused_one_is_not() {
        use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};
        use lapin::ChannelState;
        let soft: lapin::Error = ErrorKind::ProtocolError(AMQPError::new(
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND),
            "NOT_FOUND - no exchange".into(),
        ))
        .into();
        let hard: lapin::Error = ErrorKind::ProtocolError(AMQPError::new(
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
            "CONNECTION_FORCED - shutdown".into(),
        ))
        .into();
        let closed: lapin::Error =
            ErrorKind::InvalidChannelState(ChannelState::Closed, "publish").into();
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(!retryable(&soft, true), "the broker refused this publish");
        assert!(
            retryable(&soft, false),
            "the connection went away meanwhile"
        );
        assert!(retryable(&hard, true));
        assert!(retryable(&closed, true), "the channel was closed under it");
        assert!(retryable(&io, true));
    }

    #[test]
    fn nacked_publishes_are_retried_after_a_growing_capped_pause() {
        assert_eq!(retry_pause(1), Duration::from_millis(100));
        assert_eq!(retry_pause(3), Duration::from_millis(400));
        assert_eq!(retry_pause(20), Duration::from_secs(1));
    }

    #[test]
    fn each_warren_channel_publishes_on_a_lane_of_its_own() {
        let names = Names::new("acme");
        let out = names.outbound_exchange();
        let chat = Lane::of(&names, &out, "chat.all");
        assert_eq!(chat, Lane::Out("chat".into()));
        assert_eq!(Lane::of(&names, &out, "chat.user.x"), chat);
        assert_eq!(Lane::of(&names, &out, "chat.group.g"), chat);
        assert_eq!(Lane::of(&names, &out, "chat.event.ticket.created"), chat);
        let news = Lane::of(&names, &out, "news.all");
        assert_ne!(news, chat, "news may have a stream of its own");
        assert_eq!(news, Lane::Out("news".into()));
    }

    #[test]
    fn replies_to_the_outbound_stream_have_a_lane_of_their_own() {
        let names = Names::new("acme");
        let replies = Lane::of(&names, "", &names.outbound_stream());
        assert_eq!(replies, Lane::Replies);
        let out = names.outbound_exchange();
        assert_ne!(replies, Lane::of(&names, &out, "chat.all"));
        assert_ne!(replies, Lane::Other);
        assert_eq!(
            Lane::of(&names, "", &Names::new("").outbound_stream()),
            Lane::Other,
            "another namespace's stream"
        );
    }

    #[test]
    fn everything_else_shares_the_other_lane() {
        let names = Names::new("acme");
        let other = [
            (names.inbound_exchange(), "chat.all".to_string()),
            (names.services_exchange(), String::new()),
            (names.dead_letter_exchange(), "chat".to_string()),
            (String::new(), names.channel_queue("chat")),
            (String::new(), "amq.gen-reply".to_string()),
            // `warren.out` of another namespace.
            (Names::new("").outbound_exchange(), "chat.all".to_string()),
        ];
        for (exchange, key) in &other {
            assert_eq!(
                Lane::of(&names, exchange, key),
                Lane::Other,
                "{exchange} {key}"
            );
        }
    }

    #[test]
    fn fresh_message_ids_are_unique() {
        assert_ne!(fresh_message_id(), fresh_message_id());
    }
}
