//! What a client's write becomes on RabbitMQ: the checks every inbound message passes
//! (channel served, permissions, names, headers) and the routing key and properties it
//! is published with on `warren.in` (PROTOCOL.md, "What the gateway publishes"), and
//! what the broker's confirm means for it. The WebSocket connection and the HTTP API
//! both go through [`prepare`], so they check and label messages alike: a check that
//! applies to every publish and request (e.g. `no_service` for a channel nothing
//! consumes) belongs there.
//!
//! In tenant mode (`[tenants] enabled`) every message also carries the sender's tenant
//! (`x-warren-tenant`, from the verified identity) and type (`x-warren-type`, from the
//! configured client header), and the tenant-routed channels are published to the
//! `warren.tenants` headers exchange instead of `warren.in` (`warren_protocol::tenants`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel};
use warren_protocol::amqp::{
    self, keys, validate_client_headers, validate_dotted, validate_segment, validate_short,
    HeaderError,
};
use warren_protocol::{Distribution, ErrorCode, Headers};

use crate::auth::{Action, Identity};
use crate::broker::Broker;
use crate::config::{Config, NoServiceMode};
use crate::confirms::{Confirm, Publisher};
use crate::metrics;
use crate::server::Shared;

/// A refused message or frame: the registry code and why.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// Who sends an inbound message: the verified identity and the session it speaks for
/// (`x-warren-session`; the HTTP API names each call).
pub(crate) struct Sender<'a> {
    pub(crate) identity: &'a Identity,
    pub(crate) session: &'a str,
}

/// Where the answer to a request goes, and how long it may take.
pub(crate) struct ReplyTo {
    pub(crate) reply_to: String,
    pub(crate) correlation_id: String,
    pub(crate) timeout_ms: u64,
}

/// One inbound message as a `publish` / `request` frame, a POC packet or an HTTP call
/// describes it; the body travels separately.
pub(crate) struct Message<'a> {
    /// The frame id (`message_id` = `<user>:<id>`).
    pub(crate) id: &'a str,
    pub(crate) channel: &'a str,
    pub(crate) subject: Option<&'a str>,
    pub(crate) distribution: Option<&'a Distribution>,
    /// The client's own headers (allow-listed here).
    pub(crate) headers: &'a Headers,
    /// A POC packet's `publish_target`.
    pub(crate) publish_target: Option<&'a str>,
    /// Set for a request.
    pub(crate) request: Option<ReplyTo>,
}

/// A checked message: the exchange it goes to (`warren.in`, or `warren.tenants` for a
/// tenant-routed channel), its routing key and its properties, and the queue it should
/// land in (for the `no_service` check; `None` when no queue is configured for it).
#[derive(Debug)]
pub(crate) struct Prepared {
    exchange: String,
    key: ShortString,
    properties: BasicProperties,
    queue: Option<String>,
}

/// The tenant of a session in tenant mode: the identity's, or with `auth.mode = "none"`
/// `tenants.default`; `None` with tenant mode off. Never anything the client chose.
pub(crate) fn tenant_of<'a>(config: &'a Config, identity: &'a Identity) -> Option<&'a str> {
    if !config.tenants.enabled {
        return None;
    }
    match config.auth.mode {
        crate::config::AuthMode::None => config.tenants.default.as_deref(),
        _ => identity.tenant.as_deref(),
    }
}

/// The AMQP `message_id` of a client's message `id`: `<user>:<id>`, stable when the
/// client sends it again, so that services drop the copy. In tenant mode
/// `<tenant>/<user>:<id>`: a user id is unique only within its tenant, and two
/// tenants' `admin` sending `r-1` must not be one message to a service's duplicate
/// window (a tenant name has no `/`).
pub(crate) fn message_id(config: &Config, identity: &Identity, id: &str) -> String {
    match tenant_of(config, identity) {
        Some(tenant) => format!("{tenant}/{}:{id}", identity.user),
        None => format!("{}:{id}", identity.user),
    }
}

/// Checks the `id` of a message that becomes its `message_id` `<user>:<id>`: 1 to
/// [`amqp::MAX_NAME_LEN`] bytes and no `:`. A user id may hold a `:`, so without the
/// second rule user `a` sending `b:c` and user `a:b` sending `c` would be one
/// `message_id` to a service's duplicate window, which would drop one user's message
/// as the other's copy, or answer it with the other's reply. Without `:` in the id,
/// the user is everything before the last `:`.
///
/// # Errors
/// `invalid`.
pub(crate) fn check_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > amqp::MAX_NAME_LEN || id.contains(':') {
        return Err(Refusal::new(
            ErrorCode::Invalid,
            format!(
                "id must be 1..={} bytes without `:` (it becomes the message_id `<user>:<id>`)",
                amqp::MAX_NAME_LEN
            ),
        ));
    }
    Ok(())
}

/// Whether `channel` is served here (by this gateway, and by the listener if it is
/// pinned to one channel).
///
/// # Errors
/// `unknown_channel`, naming the pinned channel when that is the reason.
pub(crate) fn check_channel(
    config: &Config,
    pinned: Option<&str>,
    channel: &str,
) -> Result<(), Refusal> {
    let served = config.has_channel(channel) && pinned.is_none_or(|p| p == channel);
    if served {
        return Ok(());
    }
    let msg = match pinned {
        Some(p) if config.has_channel(channel) => {
            format!("this port serves channel `{p}` only, not `{channel}`")
        }
        _ => format!("channel `{}` is not served here", truncate(channel, 64)),
    };
    Err(Refusal::new(ErrorCode::UnknownChannel, msg))
}

/// The timeout of a request: the one asked for, or `request_timeout_ms`.
///
/// # Errors
/// `invalid` outside `1..=max_request_timeout_ms`.
pub(crate) fn request_timeout(config: &Config, asked: Option<u64>) -> Result<u64, Refusal> {
    let timeout = asked.unwrap_or(config.request_timeout_ms);
    let max = config.max_request_timeout_ms;
    if timeout == 0 || timeout > max {
        return Err(Refusal::new(
            ErrorCode::Invalid,
            format!("timeout_ms must be in 1..={max}"),
        ));
    }
    Ok(timeout)
}

/// Refuses with `no_service` a frame on a channel nobody can answer, as
/// `no_service` in the configuration says (see [`crate::services`]).
pub(crate) async fn check_service(
    shared: &Shared,
    channel: &str,
    queue: &str,
    action: Action,
) -> Result<(), Refusal> {
    let check = match shared.config.no_service {
        NoServiceMode::Off => false,
        NoServiceMode::Requests => action == Action::Request,
        NoServiceMode::All => true,
    };
    if !check {
        return Ok(());
    }
    if shared
        .services
        .answerable(&shared.broker, channel, queue)
        .await
    {
        return Ok(());
    }
    metrics::add(&shared.metrics.no_service, 1);
    Err(Refusal::new(
        ErrorCode::NoService,
        format!(
            "no service answers on channel `{channel}`: none announced on {}, no consumer on {queue}",
            shared.names.services_exchange()
        ),
    ))
}

/// Checks one inbound message and builds what it is published with: the one place
/// every publish and request passes, from a WebSocket or the HTTP API.
///
/// # Errors
/// `invalid` (id, subject, targets, headers, names too long), `unknown_channel`,
/// `forbidden` (the identity may not, or a reserved header).
pub(crate) fn prepare(
    shared: &Shared,
    pinned: Option<&str>,
    sender: &Sender<'_>,
    m: &Message<'_>,
) -> Result<Prepared, Refusal> {
    let id = m.id;
    check_id(id)?;
    check_channel(&shared.config, pinned, m.channel)?;
    let action = if m.request.is_some() {
        Action::Request
    } else {
        Action::Publish
    };
    let identity = sender.identity;
    if !identity.may(action, m.channel) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            identity.refusal(action, m.channel),
        ));
    }
    if let Some(s) = m.subject {
        validate_dotted("subject", s, false)
            .map_err(|e| Refusal::new(ErrorCode::Invalid, e.to_string()))?;
    }
    if let Some(d) = m.distribution {
        for g in d.groups.iter().chain(&d.direct) {
            validate_segment("distribution target", g)
                .map_err(|e| Refusal::new(ErrorCode::Invalid, e.to_string()))?;
        }
        if let Some(g) = d.groups.iter().find(|g| !identity.may_group(g)) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("user `{}` may not address group `{g}`", identity.user),
            ));
        }
    }
    let key = short("routing key", keys::inbound(m.channel, m.subject))?;
    let message_id = short("message id", message_id(&shared.config, identity, id))?;
    validate_client_headers(m.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(
        |e| {
            let code = match e {
                HeaderError::Reserved(_) => ErrorCode::Forbidden,
                _ => ErrorCode::Invalid,
            };
            Refusal::new(code, e.to_string())
        },
    )?;
    let mut headers = FieldTable::default();
    for (k, v) in m.headers {
        headers.insert(ShortString::from(k.as_str()), text(v));
    }
    headers.insert(amqp::H_SESSION.into(), text(sender.session));
    headers.insert(amqp::H_USER.into(), text(&identity.user));
    headers.insert(amqp::H_GATEWAY.into(), text(&shared.config.node));
    headers.insert(amqp::H_CHANNEL.into(), text(m.channel));
    if let Some(s) = m.subject {
        headers.insert(amqp::H_SUBJECT.into(), text(s));
    }
    if let Some(d) = m.distribution {
        headers.insert(amqp::H_BROADCAST.into(), AMQPValue::Boolean(d.broadcast));
        if !d.groups.is_empty() {
            headers.insert(amqp::H_GROUPS.into(), text_array(&d.groups));
        }
        if !d.direct.is_empty() {
            headers.insert(amqp::H_DIRECT.into(), text_array(&d.direct));
        }
    }
    if let Some(t) = m.publish_target {
        headers.insert(amqp::H_PUBLISH_TARGET.into(), text(t));
    }
    let mut exchange = shared.names.inbound_exchange();
    let mut queue = Some(shared.names.channel_queue(m.channel));
    if shared.config.tenants.enabled {
        let tenants = &shared.config.tenants;
        let Some(tenant) = tenant_of(&shared.config, identity) else {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!(
                    "user `{}` has no tenant, and this deployment routes by tenant",
                    identity.user
                ),
            ));
        };
        let kind = m
            .headers
            .get(&tenants.type_header)
            .map(String::as_str)
            .unwrap_or("");
        headers.insert(amqp::H_TENANT.into(), text(tenant));
        headers.insert(amqp::H_TYPE.into(), text(kind));
        if tenants.channels.iter().any(|c| c == m.channel) {
            exchange = shared.names.tenants_exchange();
            // The broker decides where a write goes: a tenant or type this gateway's
            // configuration does not list may still have a queue (services declare
            // tenants themselves, `Service::declare_tenants`, without a gateway
            // restart). Only one the configuration lists is checked for a service.
            queue = tenants.tenant.get(tenant).and_then(|t| {
                let typed = !kind.is_empty();
                (!typed || t.types.iter().any(|k| k == kind)).then(|| {
                    shared
                        .names
                        .tenant_queue(m.channel, tenant, typed.then_some(kind))
                })
            });
        }
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_app_id("warren-gateway".into())
        .with_message_id(message_id)
        .with_timestamp(now_ms_epoch() / 1000);
    if let Some(r) = &m.request {
        headers.insert(amqp::H_REQUEST_ID.into(), text(id));
        properties = properties
            .with_correlation_id(short("session and request id", r.correlation_id.clone())?)
            .with_reply_to(short("reply_to", r.reply_to.clone())?)
            .with_expiration(ShortString::from(r.timeout_ms.to_string()));
    }
    Ok(Prepared {
        exchange,
        key,
        properties: properties.with_headers(headers),
        queue,
    })
}

impl Prepared {
    /// Publishes `body` on its exchange through `channel` (a confirm-mode channel),
    /// `mandatory`: an unroutable message comes back as [`Outcome::Returned`].
    ///
    /// # Errors
    /// `broker_unavailable` when the channel cannot take the publish.
    pub(crate) async fn publish(
        self,
        channel: &Publisher,
        body: &[u8],
    ) -> Result<Pending, Refusal> {
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        Pending::publish(
            channel,
            ShortString::from(self.exchange),
            self.key,
            options,
            body.to_vec(),
            self.properties,
        )
        .await
    }
}

/// How long a publish waits for RabbitMQ's confirm before it is answered
/// `broker_unavailable` and its channel is taken out of use; also how long a channel
/// taken out of use stays open for the confirms still due on it. The service
/// library's default `publish_timeout` too.
pub(crate) const CONFIRM_WAIT: Duration = Duration::from_secs(10);

/// How long a WebSocket request waits for its publish confirm: [`CONFIRM_WAIT`], or
/// longer than its own timeout (`timeout_ms`). A request is answered by its reply, a
/// refusal or `timeout` at its deadline, not `broker_unavailable` for a late confirm:
/// under a resource alarm that clears within the timeout the request goes through
/// (before, it was refused at 10 s, and a retry ran it twice). A channel or
/// connection that closes before the confirm is still `broker_unavailable` at once
/// ([`Outcome::Failed`]), though the request may have been routed.
pub(crate) fn request_confirm_wait(timeout_ms: u64) -> Duration {
    CONFIRM_WAIT.max(Duration::from_millis(timeout_ms) + Duration::from_secs(1))
}

/// A publish on a publisher channel (pooled, or the stream publisher), its confirm
/// still to come.
pub(crate) struct Pending {
    /// The channel it went out on (taken out of use when the confirm is negative or
    /// does not come).
    pub(crate) channel: Channel,
    /// The publish's frames being written, then its confirm matched to its return
    /// ([`Publisher`]).
    confirm: Confirm,
}

impl Pending {
    /// Publishes `body` on `channel` and returns at once, the publish handed to lapin
    /// (so publishes go out in the order they were made) and its confirm to come.
    ///
    /// Why not await `basic_publish`: lapin writes nothing on a connection RabbitMQ has
    /// sent `connection.blocked` (a resource alarm), and `basic_publish` waits until its
    /// frames are written. The gateway's own flag ([`Broker::publisher`] waits while it
    /// is set) follows that notice a moment later; a publish in between would wait
    /// for the alarm to clear, stalling a client's connection and leaving an HTTP
    /// call unanswered. Here that wait is part of the confirm's, which
    /// [`Pending::outcome_within`] bounds.
    ///
    /// # Errors
    /// `broker_unavailable` when the channel cannot take the publish.
    pub(crate) async fn publish(
        channel: &Publisher,
        exchange: ShortString,
        key: ShortString,
        options: BasicPublishOptions,
        body: Vec<u8>,
        properties: BasicProperties,
    ) -> Result<Pending, Refusal> {
        let confirm = channel
            .publish(exchange, key, options, body, properties)
            .await
            .map_err(|e| Refusal::new(ErrorCode::BrokerUnavailable, e.to_string()))?;
        Ok(Pending {
            channel: channel.channel().clone(),
            confirm,
        })
    }

    /// The broker's verdict, as it came.
    pub(crate) async fn verdict(self) -> Outcome {
        self.confirm.await
    }

    /// The broker's verdict. A negative confirm also takes the channel out of use (in
    /// the background; [`Broker::retire_nacked`] says when, [`Broker::retire_publisher`]
    /// why), so the client's next try goes out on a fresh one.
    pub(crate) async fn outcome(self, broker: &Arc<Broker>) -> Outcome {
        let outcome = self.confirm.await;
        #[cfg(feature = "fault-injection")]
        crate::fault::delay(crate::fault::CONFIRM_DELAY_MS).await;
        if matches!(outcome, Outcome::Nacked) {
            let broker = broker.clone();
            let channel = self.channel;
            tokio::spawn(async move { broker.retire_nacked(&channel, CONFIRM_WAIT).await });
        }
        outcome
    }

    /// The verdict on a request sent by [`send_direct`], within `wait`
    /// ([`request_confirm_wait`]). A negative confirm takes the direct reply-to
    /// channel out of use ([`DirectReply::retire`](crate::direct_reply::DirectReply::retire)),
    /// not a pooled one.
    pub(crate) async fn direct_outcome(self, shared: &Shared, wait: Duration) -> Outcome {
        let channel = self.channel.clone();
        let Ok(outcome) = tokio::time::timeout(wait, self.confirm).await else {
            return Outcome::Unconfirmed;
        };
        if matches!(outcome, Outcome::Nacked) {
            let linger = Duration::from_millis(shared.config.max_request_timeout_ms);
            shared.ws_replies.retire(&channel, linger).await;
        }
        outcome
    }

    /// [`Pending::outcome`] within `wait` ([`CONFIRM_WAIT`] for a publish; a request
    /// waits past its own deadline: [`request_confirm_wait`]). Without a confirm by
    /// then the channel is taken out of use too — in the background: under a resource
    /// alarm opening its replacement waits for the alarm to clear — and the outcome is
    /// [`Outcome::Unconfirmed`].
    pub(crate) async fn outcome_within(self, broker: &Arc<Broker>, wait: Duration) -> Outcome {
        let channel = self.channel.clone();
        if let Ok(outcome) = tokio::time::timeout(wait, self.outcome(broker)).await {
            return outcome;
        }
        let broker = broker.clone();
        tokio::spawn(async move {
            broker
                .retire_publisher(&channel, CONFIRM_WAIT, "a publish got no confirm in time")
                .await
        });
        Outcome::Unconfirmed
    }
}

/// Refuses (`too_large`) a message whose properties (headers, the `CC` list) do not
/// fit in one frame of `frame_max` bytes with room for what RabbitMQ adds on delivery
/// ([`warren_protocol::amqp::content_header_limit`]): RabbitMQ would close the
/// gateway's whole publishing connection on a frame too large (`frame_too_large`),
/// failing every client's writes on it, and a frame filled to the byte grew past
/// `frame_max` on its way to the gateways' stream readers, which then stopped for
/// good. The body is split into frames and is not counted.
///
/// # Errors
/// `too_large`, saying how many bytes the properties take and how many fit.
pub(crate) fn fits_one_frame(properties: &BasicProperties, frame_max: u32) -> Result<(), Refusal> {
    let encoded = cookie_factory::gen_simple(
        lapin::protocol::basic::gen_properties(properties),
        Vec::new(),
    );
    // The class, weight and body size before the properties; 8 bytes of frame overhead.
    let bytes = 12 + encoded.map_or(0, |v| v.len());
    let limit = warren_protocol::amqp::content_header_limit(frame_max);
    if bytes > limit {
        return Err(Refusal::new(
            ErrorCode::TooLarge,
            format!("the message's headers and targets take {bytes} bytes; at most {limit} fit in one frame (frame_max) with room for what RabbitMQ adds on delivery"),
        ));
    }
    Ok(())
}

/// `m` prepared ([`prepare`]) and sized ([`fits_one_frame`]), once [`check_service`]
/// found someone to take it.
pub(crate) async fn checked(
    shared: &Shared,
    pinned: Option<&str>,
    sender: &Sender<'_>,
    m: &Message<'_>,
) -> Result<Prepared, Refusal> {
    let prepared = prepare(shared, pinned, sender, m)?;
    fits_one_frame(&prepared.properties, shared.broker.frame_max())?;
    let action = if m.request.is_some() {
        Action::Request
    } else {
        Action::Publish
    };
    if let Some(queue) = &prepared.queue {
        check_service(shared, m.channel, queue, action).await?;
    }
    Ok(prepared)
}

/// Checks `m` ([`prepare`], [`check_service`]) and publishes it on a pooled publisher
/// channel.
///
/// # Errors
/// As [`prepare`]; `broker_unavailable` when RabbitMQ does not come back within
/// `broker_wait_ms` or refuses the publish.
pub(crate) async fn send(
    shared: &Shared,
    pinned: Option<&str>,
    sender: &Sender<'_>,
    m: &Message<'_>,
    body: &[u8],
) -> Result<Pending, Refusal> {
    let prepared = checked(shared, pinned, sender, m).await?;
    send_prepared(shared, prepared, body).await
}

/// Publishes a message already [`checked`] on a pooled publisher channel.
///
/// # Errors
/// `broker_unavailable` when RabbitMQ does not come back within `broker_wait_ms` or
/// refuses the publish.
pub(crate) async fn send_prepared(
    shared: &Shared,
    prepared: Prepared,
    body: &[u8],
) -> Result<Pending, Refusal> {
    let channel = shared
        .broker
        .publisher()
        .await
        .map_err(|e| Refusal::new(ErrorCode::BrokerUnavailable, e.to_string()))?;
    prepared.publish(&channel, body).await
}

/// Checks `m` ([`prepare`], [`check_service`]), a request, and publishes it on the
/// channel of WebSocket requests answered by direct reply-to (`request_replies =
/// "direct"`); `m.request` names [`crate::direct_reply::DIRECT_REPLY_TO`] and a
/// correlation id unique in this gateway. Its reply, if it comes within the request's
/// timeout, is handed to `answer`
/// ([`DirectReply::forward`](crate::direct_reply::DirectReply::forward)).
///
/// # Errors
/// As [`prepare`]; `broker_unavailable` when the channel cannot be opened or refuses
/// the publish.
pub(crate) async fn send_direct(
    shared: &Shared,
    pinned: Option<&str>,
    sender: &Sender<'_>,
    m: &Message<'_>,
    body: &[u8],
    answer: impl FnOnce(lapin::message::Delivery) + Send + 'static,
) -> Result<Pending, Refusal> {
    let Some(request) = &m.request else {
        return Err(Refusal::new(ErrorCode::Internal, "not a request"));
    };
    let call_id = request.correlation_id.clone();
    let within = Duration::from_millis(request.timeout_ms);
    let prepared = checked(shared, pinned, sender, m).await?;
    let channel = shared
        .ws_replies
        .forward(call_id.clone(), within, answer)
        .await
        .map_err(|e| Refusal::new(ErrorCode::BrokerUnavailable, e))?;
    let published = prepared.publish(&channel, body).await;
    if published.is_err() {
        shared.ws_replies.forget(&call_id);
    }
    published
}

/// The broker's verdict on a publish.
#[derive(Debug)]
pub(crate) enum Outcome {
    Acked,
    /// `mandatory` and nothing bound: returned.
    Returned,
    /// Negative confirm: a full `reject-publish` queue, or a quorum queue without a
    /// leader it can reach (a node lost).
    Nacked,
    /// The channel or connection went away before the confirm.
    Failed(String),
    /// No confirm within [`CONFIRM_WAIT`].
    Unconfirmed,
}

impl Outcome {
    /// What to tell the client; `None` when the broker took the message.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        Some(match self {
            Outcome::Acked => return None,
            Outcome::Returned => Refusal::new(
                ErrorCode::NoRoute,
                "no queue is bound for this message; it was not delivered",
            ),
            // With `x-overflow: reject-publish` a full inbound queue nacks; so does a
            // quorum queue that lost its leader's node, until a new leader is known.
            Outcome::Nacked => Refusal::new(
                ErrorCode::Overloaded,
                "RabbitMQ refused the message: the channel's queue is full \
                 (inbound_max_length / inbound_max_bytes) or is failing over to a new \
                 leader; retry later",
            ),
            Outcome::Failed(e) => Refusal::new(ErrorCode::BrokerUnavailable, e.clone()),
            Outcome::Unconfirmed => Refusal::new(
                ErrorCode::BrokerUnavailable,
                format!(
                    "RabbitMQ did not confirm within {} s; the message may still be \
                     delivered (send it again with the same id: the copy is dropped)",
                    CONFIRM_WAIT.as_secs()
                ),
            ),
        })
    }
}

/// An AMQP short string composed from client input, or `invalid` if it is too long.
pub(crate) fn short(what: &'static str, value: String) -> Result<ShortString, Refusal> {
    validate_short(what, &value).map_err(|e| Refusal::new(ErrorCode::Invalid, e.to_string()))?;
    Ok(ShortString::from(value))
}

/// A header value: a long string.
pub(crate) fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// A header value: an array of long strings.
pub(crate) fn text_array(items: &[String]) -> AMQPValue {
    AMQPValue::FieldArray(FieldArray::from(
        items.iter().map(|s| text(s)).collect::<Vec<_>>(),
    ))
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_one_to_128_bytes_without_a_colon() {
        assert!(check_id("r-1").is_ok());
        assert!(check_id(&"i".repeat(amqp::MAX_NAME_LEN)).is_ok());
        for bad in ["", "b:c", ":", &"i".repeat(amqp::MAX_NAME_LEN + 1)] {
            let refusal = check_id(bad).expect_err(bad);
            assert_eq!(refusal.code, ErrorCode::Invalid, "{bad}");
        }
    }

    #[test]
    fn a_message_id_names_the_tenant_in_tenant_mode_only() {
        let mut config = Config::default();
        config.auth.mode = crate::config::AuthMode::Jwt;
        let mut admin = Identity::unrestricted("admin");
        admin.tenant = Some("acme".into());
        assert_eq!(message_id(&config, &admin, "r-1"), "admin:r-1");
        config.tenants.enabled = true;
        assert_eq!(message_id(&config, &admin, "r-1"), "acme/admin:r-1");
        admin.tenant = Some("globex".into());
        assert_eq!(message_id(&config, &admin, "r-1"), "globex/admin:r-1");
    }

    #[test]
    fn properties_that_do_not_fit_one_frame_are_refused_too_large() {
        let mut headers = FieldTable::default();
        headers.insert(
            "big".into(),
            AMQPValue::LongString("h".repeat(200_000).into()),
        );
        let big = BasicProperties::default().with_headers(headers);
        let refusal = fits_one_frame(&big, 131_072).expect_err("200 KB of headers");
        assert_eq!(refusal.code, ErrorCode::TooLarge);
        assert!(
            fits_one_frame(&big, 1_048_576).is_ok(),
            "a larger frame_max takes it"
        );
        assert!(fits_one_frame(&BasicProperties::default(), 0).is_ok());
    }
}
