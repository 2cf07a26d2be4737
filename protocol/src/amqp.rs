//! How Warren maps onto AMQP 0.9.1: exchange, queue and routing-key names, and the
//! headers the gateway and services exchange. The gateway, the service library and
//! services in other languages all follow this module (documented in PROTOCOL.md).
//!
//! - Inbound exchange `warren.in` (topic): a client publish on channel `chat` is routed
//!   with key `chat` or `chat.<subject>`; queue `IN_CHAT` is bound with `chat.#`.
//! - Outbound exchange `warren.out` (topic): services publish with `chat.all`
//!   (broadcast), `chat.group.<g>` (multicast), `chat.user.<u>` (direct) or
//!   `chat.event.<name>` (topic subscriptions).
//! - What services publish there lands in the outbound stream `warren.out.stream`
//!   (bound with `#`; a channel with a retention of its own has a stream of its own),
//!   which each gateway reads once and fans out to its sessions in memory: sessions
//!   own no queue. Replies to requests go to the same stream, named as `reply_to`,
//!   through the default exchange.
//!
//! Every name can carry a namespace prefix (`<ns>.warren.in`), so several deployments
//! or parallel tests can share a vhost.

/// Header: the session that sent the message.
pub const H_SESSION: &str = "x-warren-session";
/// Header: the user id of the session that sent the message.
pub const H_USER: &str = "x-warren-user";
/// Header: the gateway node that published the message.
pub const H_GATEWAY: &str = "x-warren-gateway";
/// Header: the channel the client published on.
pub const H_CHANNEL: &str = "x-warren-channel";
/// Header: the subject the client published with, if any.
pub const H_SUBJECT: &str = "x-warren-subject";
/// Header (bool): the client asked for a broadcast.
pub const H_BROADCAST: &str = "x-warren-broadcast";
/// Header (array of strings): groups the client addressed.
pub const H_GROUPS: &str = "x-warren-groups";
/// Header (array of strings): users the client addressed directly.
pub const H_DIRECT: &str = "x-warren-direct";
/// Header on a reply: the registry error code when the service refused the request.
pub const H_ERROR: &str = "x-warren-error";
/// Header: the exchange a POC client named in `publish_target`.
pub const H_PUBLISH_TARGET: &str = "x-warren-publish-target";
/// Header on a message a gateway publishes for a request: the request's frame id.
pub const H_REQUEST_ID: &str = "x-warren-request-id";
/// The extra routing keys of a multi-target publish (the `CC` header's keys) as one
/// space-separated string: a stream keeps only simple header values, so the `CC`
/// array does not survive it and a gateway reading the outbound stream reads this.
pub const H_CC: &str = "x-warren-cc";

/// Header (tenant mode, [`crate::tenants`]): the tenant of the client that sent the
/// message — set by the gateway from the verified identity, overwriting anything a
/// client sent — and, on what services publish to clients, the tenant whose sessions
/// may receive it.
pub const H_TENANT: &str = "x-warren-tenant";
/// Header (tenant mode): the message type that picks a tenant's specialised queue;
/// `""` for the tenant's general queue. Set by the gateway on every write in tenant
/// mode.
pub const H_TYPE: &str = "x-warren-type";

/// Header (boolean) of a gateway's report that a message to users reached none of
/// them (no session anywhere), sent to the message's `reply_to`.
pub const H_UNDELIVERED: &str = "x-warren-undelivered";

/// The value of [`H_CC`] for the extra routing keys of one publish.
pub fn cc_header(extra_keys: &[String]) -> String {
    extra_keys.join(" ")
}

/// The AMQP names of one Warren deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Names::new("")
    }
}

impl Names {
    /// Names under `namespace` (empty for none): `ns.warren.in`, `ns.IN_CHAT`, ...
    pub fn new(namespace: &str) -> Self {
        let prefix = if namespace.is_empty() {
            String::new()
        } else {
            format!("{namespace}.")
        };
        Names { prefix }
    }

    /// The namespace prefix including its trailing dot (empty for none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Inbound topic exchange (clients → services).
    pub fn inbound_exchange(&self) -> String {
        format!("{}warren.in", self.prefix)
    }

    /// Outbound topic exchange (services → clients).
    pub fn outbound_exchange(&self) -> String {
        format!("{}warren.out", self.prefix)
    }

    /// Fanout exchange on which gateways announce themselves.
    pub fn gateways_exchange(&self) -> String {
        format!("{}warren.gateways", self.prefix)
    }

    /// Fanout exchange on which service instances announce themselves (the service
    /// registry, [`crate::services`]).
    pub fn services_exchange(&self) -> String {
        format!("{}warren.services", self.prefix)
    }

    /// Topic exchange for `client.connected` / `client.disconnected` events.
    pub fn presence_exchange(&self) -> String {
        format!("{}warren.presence", self.prefix)
    }

    /// Dead-letter exchange for expired or rejected messages.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}warren.dead", self.prefix)
    }

    /// Queue that collects dead-lettered messages for inspection.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}warren.dead", self.prefix)
    }

    /// The inbound queue of a channel: `IN_CHAT` for `chat`.
    pub fn channel_queue(&self, channel: &str) -> String {
        format!("{}IN_{}", self.prefix, channel.to_ascii_uppercase())
    }

    /// The outbound stream: bound to the outbound exchange
    /// with `#`, and the `reply_to` of requests (replies reach it through the default
    /// exchange).
    pub fn outbound_stream(&self) -> String {
        format!("{}warren.out.stream", self.prefix)
    }

    /// The stream of a channel with a retention of its own: `warren.out.stream.chat`.
    /// It is bound to the outbound exchange with `chat.#`, and the outbound stream
    /// then binds each other channel instead of `#`.
    pub fn channel_stream(&self, channel: &str) -> String {
        format!("{}warren.out.stream.{channel}", self.prefix)
    }

    /// Tenant mode: the root **headers** exchange every client write goes to; it
    /// routes by [`H_TENANT`] to the tenant's exchange.
    pub fn tenants_exchange(&self) -> String {
        format!("{}warren.tenants", self.prefix)
    }

    /// Tenant mode: the **headers** exchange of one tenant; it routes by
    /// [`H_CHANNEL`] and [`H_TYPE`] to the tenant's queues.
    pub fn tenant_exchange(&self, tenant: &str) -> String {
        format!("{}warren.tenant.{tenant}", self.prefix)
    }

    /// Tenant mode: a tenant's general queue of a channel (`IN_SCAN.acme`), or with a
    /// type its specialised queue (`IN_SCAN.acme.delta`).
    pub fn tenant_queue(&self, channel: &str, tenant: &str, kind: Option<&str>) -> String {
        match kind {
            Some(t) => format!("{}.{tenant}.{t}", self.channel_queue(channel)),
            None => format!("{}.{tenant}", self.channel_queue(channel)),
        }
    }

    /// The channel whose writes a queue of this namespace receives: `chat` for
    /// `IN_CHAT` and for the tenant queues `IN_CHAT.<tenant>[.<type>]` (channel names
    /// are lower case); `None` for another queue.
    pub fn channel_of_queue(&self, queue: &str) -> Option<String> {
        let rest = queue
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("IN_")?;
        let upper = rest.split('.').next().unwrap_or_default();
        (!upper.is_empty()).then(|| upper.to_ascii_lowercase())
    }
}

/// Routing keys.
pub mod keys {
    /// Inbound key for a client publish: `chat` or `chat.<subject>`.
    pub fn inbound(channel: &str, subject: Option<&str>) -> String {
        match subject {
            Some(s) if !s.is_empty() => format!("{channel}.{s}"),
            _ => channel.to_string(),
        }
    }

    /// Binding of a channel's inbound queue: `chat.#` (matches `chat` too).
    pub fn inbound_binding(channel: &str) -> String {
        format!("{channel}.#")
    }

    /// Outbound broadcast key: `chat.all`.
    pub fn broadcast(channel: &str) -> String {
        format!("{channel}.all")
    }

    /// Outbound group key: `chat.group.<g>`.
    pub fn group(channel: &str, group: &str) -> String {
        format!("{channel}.group.{group}")
    }

    /// Outbound direct key: `chat.user.<u>`.
    pub fn user(channel: &str, user: &str) -> String {
        format!("{channel}.user.{user}")
    }

    /// Outbound event key or pattern: `chat.event.<name>`.
    pub fn event(channel: &str, name: &str) -> String {
        format!("{channel}.event.{name}")
    }

    /// The event name of an outbound event key: its last segment
    /// (`tickets.event.ticket.created` → `created`), as the source system's cache
    /// worker took it; `None` when the key is not `<channel>.event.<...>`. (The
    /// browser SDK derives the same in JS, `sdk-wasm/src/browser/delivery.js`: cheaper
    /// in its size budget than this function in the wasm.)
    pub fn event_name(routing_key: &str) -> Option<&str> {
        let dot = routing_key.bytes().position(|b| b == b'.')?;
        let path = routing_key.get(dot + 1..)?.strip_prefix("event.")?;
        let last = path.bytes().rposition(|b| b == b'.').map_or(0, |i| i + 1);
        path.get(last..).filter(|name| !name.is_empty())
    }

    /// The outbound keys of one message to clients of `channel`: its broadcast, groups,
    /// users and events, without duplicates, broadcast first. One publish carries them
    /// all: the first as its routing key, the others in `CC` and in
    /// [`H_CC`](super::H_CC) ([`cc_header`](super::cc_header)). Empty when no target is
    /// named.
    ///
    /// # Errors
    /// [`NameError`](super::NameError) when the channel, a group, a user or an event
    /// name would change routing (dots, wildcards, spaces...); events may be dotted.
    pub fn outbound(
        channel: &str,
        broadcast: bool,
        groups: &[String],
        users: &[String],
        events: &[String],
    ) -> Result<Vec<String>, super::NameError> {
        use super::{validate_dotted, validate_segment};
        validate_segment("channel", channel)?;
        let mut out: Vec<String> = Vec::new();
        // A set beside the list: `contains` on the list made a long list of targets
        // (an HTTP API `/publish` to 100,000 users) take seconds of a runtime thread.
        let mut seen = std::collections::HashSet::new();
        let mut push = |key: String| {
            if seen.insert(key.clone()) {
                out.push(key);
            }
        };
        if broadcast {
            push(self::broadcast(channel));
        }
        for g in groups {
            validate_segment("group", g)?;
            push(group(channel, g));
        }
        for u in users {
            validate_segment("user", u)?;
            push(user(channel, u));
        }
        for e in events {
            validate_dotted("event", e, false)?;
            push(event(channel, e));
        }
        Ok(out)
    }

    /// The channel of an outbound routing key (its first segment).
    pub fn channel_of(routing_key: &str) -> &str {
        routing_key.split('.').next().unwrap_or(routing_key)
    }
}

/// AMQP topic matching: `*` is exactly one word, `#` zero or more words.
///
/// Glob matching over words (`#` as the glob's star, `*` as its `?`) with one point to
/// go back to, the last `#`: at most words × words steps, without allocating. (Trying
/// every split of each `#` recursively took time exponential in the `#`s: a client's
/// pattern of ten `#`s against a 32-word key took 13 s, under the hub's lock.)
pub fn topic_matches(pattern: &str, key: &str) -> bool {
    // Words are walked in place by byte offset (no `split` and no `Vec`: smaller wasm);
    // an offset past the end means every word was consumed.
    fn end(s: &[u8], mut at: usize) -> usize {
        while at < s.len() && s[at] != b'.' {
            at += 1;
        }
        at
    }
    let (p, k) = (pattern.as_bytes(), key.as_bytes());
    let (mut pi, mut ki) = (0, 0);
    // After the last `#`: where the pattern goes on, and the key word it eats next.
    let (mut back_p, mut back_k) = (usize::MAX, 0);
    loop {
        if pi > p.len() {
            if ki > k.len() {
                return true;
            }
        } else {
            let pe = end(p, pi);
            let word = &p[pi..pe];
            if word == b"#" {
                (pi, back_p, back_k) = (pe + 1, pe + 1, ki);
                continue;
            }
            if ki <= k.len() {
                let ke = end(k, ki);
                if word == b"*" || word == &k[ki..ke] {
                    (pi, ki) = (pe + 1, ke + 1);
                    continue;
                }
            }
        }
        // A mismatch: the last `#` takes one more word, if there is one.
        if back_p == usize::MAX || back_k > k.len() {
            return false;
        }
        back_k = end(k, back_k) + 1;
        (pi, ki) = (back_p, back_k);
    }
}

/// Why a name cannot be used in a routing key or queue name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{what} is empty")]
    Empty {
        /// Which name.
        what: &'static str,
    },
    /// The name is longer than `max` bytes ([`MAX_NAME_LEN`] for a segment, twice
    /// that for a dotted name).
    #[error("{what} is longer than {max} bytes")]
    TooLong {
        /// Which name.
        what: &'static str,
        /// Its limit.
        max: usize,
    },
    /// A name composed from client input (routing key, message id, binding key) is
    /// longer than an AMQP short string can be.
    #[error("{what} would be {len} bytes; AMQP allows at most {MAX_SHORT_STRING}")]
    TooLongForAmqp {
        /// Which name.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a character other than letters, digits, `-`, `_`, `:`, `@`.
    #[error("{what} `{value}` may hold only letters, digits, '-', '_', ':' and '@'")]
    BadChar {
        /// Which name.
        what: &'static str,
        /// The offending value.
        value: String,
    },
}

/// Longest channel, group, user, subject segment or session id accepted.
pub const MAX_NAME_LEN: usize = 128;

/// What one content-header frame holds for a message Warren publishes (its headers and
/// other properties), on a connection with `frame_max` (0: RabbitMQ's default,
/// 131,072): the frame's 8 bytes of overhead and [`delivery_headroom`] taken off.
pub fn content_header_limit(frame_max: u32) -> usize {
    let frame_max = if frame_max == 0 { 131_072 } else { frame_max } as usize;
    frame_max.saturating_sub(8 + delivery_headroom(frame_max))
}

/// Room left in a content-header frame for the headers RabbitMQ adds when it delivers
/// (`x-stream-offset` to a stream's readers, `x-delivery-count` to a quorum queue's
/// redelivery, `x-death` once dead-lettered): 4 KiB, an eighth of smaller frames. A
/// message that filled its frame took more than `frame_max` once delivered, and lapin
/// gives up a connection on a frame over `frame_max`: the gateways' outbound stream
/// reader (which meets the message again at every reconnect) or a service's consumer
/// stopped for good.
pub fn delivery_headroom(frame_max: usize) -> usize {
    (frame_max / 8).min(4096)
}

/// Longest AMQP short string (routing keys, message ids, correlation ids, queue names).
pub const MAX_SHORT_STRING: usize = 255;

/// Checks that a name composed from client input (e.g. `chat.<subject>` or
/// `<user>:<id>`) fits in an AMQP short string, so it can be sent to RabbitMQ.
///
/// # Errors
/// [`NameError::TooLongForAmqp`] when it is longer than [`MAX_SHORT_STRING`] bytes.
pub fn validate_short(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.len() > MAX_SHORT_STRING {
        return Err(NameError::TooLongForAmqp {
            what,
            len: value.len(),
        });
    }
    Ok(())
}

/// Most headers a client may attach to one message.
pub const MAX_CLIENT_HEADERS: usize = 32;
/// Longest header name a client may use.
pub const MAX_CLIENT_HEADER_NAME: usize = 64;
/// Longest header value a client may use, in bytes.
pub const MAX_CLIENT_HEADER_VALUE: usize = 4096;

/// Header names a client may not use besides `x-*`: the routing headers and the names
/// of AMQP message properties, which a service could mistake for the real ones.
pub const RESERVED_HEADER_NAMES: &[&str] = &[
    "cc",
    "bcc",
    "reply_to",
    "reply-to",
    "correlation_id",
    "correlation-id",
    "message_id",
    "message-id",
    "user_id",
    "user-id",
    "app_id",
    "app-id",
    "expiration",
    "timestamp",
    "priority",
    "delivery_mode",
    "content_type",
    "content_encoding",
];

/// Why a client header is not passed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The name belongs to RabbitMQ (`x-...`, `CC`, `BCC`) or to Warren (`x-warren-...`).
    #[error("header `{0}` is reserved")]
    Reserved(String),
    /// The name is empty, too long, or has characters outside `a-z 0-9 - _ .`.
    #[error("header name `{0}` must be 1..=64 characters of a-z, A-Z, 0-9, '-', '_', '.'")]
    BadName(String),
    /// The value is longer than [`MAX_CLIENT_HEADER_VALUE`].
    #[error("header `{0}` has a value over 4096 bytes")]
    ValueTooLong(String),
    /// More than [`MAX_CLIENT_HEADERS`] headers.
    #[error("at most 32 headers per message")]
    TooMany,
}

/// The allow-list for headers a client sets on a message: at most
/// [`MAX_CLIENT_HEADERS`], names of ASCII letters, digits, `-`, `_` and `.`, not
/// starting with `x-` (RabbitMQ's and Warren's namespace: `x-death`, `x-delay`,
/// `x-match`, `x-delivery-count`, `x-warren-user`, ...) and not the routing headers
/// `CC` / `BCC`; values up to [`MAX_CLIENT_HEADER_VALUE`] bytes. Services can trust
/// every `x-` header they read: only the gateway or the broker set it.
///
/// # Errors
/// The first header that breaks a rule.
pub fn validate_client_headers<'a>(
    headers: impl ExactSizeIterator<Item = (&'a str, &'a str)>,
) -> Result<(), HeaderError> {
    if headers.len() > MAX_CLIENT_HEADERS {
        return Err(HeaderError::TooMany);
    }
    for (name, value) in headers {
        let shown = || name.chars().take(64).collect::<String>();
        if name.is_empty()
            || name.len() > MAX_CLIENT_HEADER_NAME
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(HeaderError::BadName(shown()));
        }
        let lower = name.to_ascii_lowercase();
        if lower.starts_with("x-") || RESERVED_HEADER_NAMES.contains(&lower.as_str()) {
            return Err(HeaderError::Reserved(shown()));
        }
        if value.len() > MAX_CLIENT_HEADER_VALUE {
            return Err(HeaderError::ValueTooLong(shown()));
        }
    }
    Ok(())
}

/// Checks a single routing-key segment (channel, group, user, session id).
///
/// # Errors
/// When it is empty, too long, or holds `.`, `*`, `#`, spaces or other characters that
/// would change routing.
pub fn validate_segment(what: &'static str, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { what });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            max: MAX_NAME_LEN,
        });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'@'))
    {
        return Err(NameError::BadChar {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

/// Checks a dotted subject or topic pattern: segments as [`validate_segment`], and,
/// when `pattern` is true, whole segments `*` or `#` as wildcards.
///
/// # Errors
/// When a segment is invalid or the whole is too long.
pub fn validate_dotted(what: &'static str, value: &str, pattern: bool) -> Result<(), NameError> {
    if value.len() > 2 * MAX_NAME_LEN {
        return Err(NameError::TooLong {
            what,
            max: 2 * MAX_NAME_LEN,
        });
    }
    for seg in value.split('.') {
        if pattern && (seg == "*" || seg == "#") {
            continue;
        }
        validate_segment(what, seg)?;
    }
    Ok(())
}

/// The value of a queue argument, as plain data (turned into an AMQP field value by
/// whoever declares the queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueArg {
    /// A string (`x-queue-type`, `x-dead-letter-exchange`, ...).
    Text(String),
    /// A signed integer (`x-message-ttl`, `x-max-length`, ...): send it as a long-long.
    Int(i64),
}

/// The longest queue TTL or message expiration RabbitMQ takes, in ms: ten years
/// (365-day years). A declare with more is refused (`value_too_large`).
pub const MAX_TTL_MS: u64 = 315_360_000_000;

/// The arguments of an inbound channel queue (`IN_<CHANNEL>`): its type (`quorum` or
/// `classic`), dead-lettering of expired and rejected messages to `warren.dead`, and
/// the channel's message TTL when it has one. The gateway and the service library both
/// declare these queues with exactly this list, so neither meets the other's
/// declaration with different arguments (406 PRECONDITION_FAILED).
pub fn inbound_queue_args(
    names: &Names,
    queue_type: &str,
    message_ttl_ms: Option<u64>,
    bounds: QueueBounds,
) -> Vec<(&'static str, QueueArg)> {
    let mut args = vec![
        ("x-queue-type", QueueArg::Text(queue_type.to_string())),
        (
            "x-dead-letter-exchange",
            QueueArg::Text(names.dead_letter_exchange()),
        ),
    ];
    if let Some(ttl) = message_ttl_ms {
        args.push((
            "x-message-ttl",
            QueueArg::Int(i64::try_from(ttl).unwrap_or(i64::MAX)),
        ));
    }
    bounds.push_args(&mut args, "reject-publish");
    args
}

/// How much an `IN_<CHANNEL>` queue (or `warren.dead`) holds at most. A full inbound
/// queue refuses new messages (`x-overflow: reject-publish`: the publisher gets a
/// negative confirm, which the gateway answers with `overloaded`) instead of growing
/// until the broker's memory alarm stops every publisher; `warren.dead` drops its
/// oldest (`drop-head`). 0 turns a bound off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// `x-max-length`: messages.
    pub max_length: u64,
    /// `x-max-length-bytes`: bytes of message bodies.
    pub max_bytes: u64,
}

impl QueueBounds {
    /// The inbound queues' defaults: 100,000 messages, 1 GiB.
    pub const INBOUND: QueueBounds = QueueBounds {
        max_length: 100_000,
        max_bytes: 1024 * 1024 * 1024,
    };
    /// `warren.dead`'s bounds: 100,000 messages, 256 MiB.
    pub const DEAD_LETTERS: QueueBounds = QueueBounds {
        max_length: 100_000,
        max_bytes: 256 * 1024 * 1024,
    };

    fn push_args(self, args: &mut Vec<(&'static str, QueueArg)>, overflow: &str) {
        let int = |n: u64| QueueArg::Int(i64::try_from(n).unwrap_or(i64::MAX));
        if self.max_length > 0 {
            args.push(("x-max-length", int(self.max_length)));
        }
        if self.max_bytes > 0 {
            args.push(("x-max-length-bytes", int(self.max_bytes)));
        }
        if self.max_length > 0 || self.max_bytes > 0 {
            args.push(("x-overflow", QueueArg::Text(overflow.to_string())));
        }
    }
}

/// The arguments of the `warren.dead` queue, declared alike by gateways and services:
/// the same queue type as the inbound queues, so a quorum deployment keeps what is
/// parked there when a node is lost (a classic queue on a lost node would also answer
/// every re-declaration with 404).
pub fn dead_letter_queue_args(queue_type: &str) -> Vec<(&'static str, QueueArg)> {
    let mut args = vec![("x-queue-type", QueueArg::Text(queue_type.to_string()))];
    QueueBounds::DEAD_LETTERS.push_args(&mut args, "drop-head");
    args
}

#[cfg(test)]
mod tests {
    #[test]
    fn outbound_keys_drop_duplicates_in_order_and_a_long_list_of_targets_takes_no_time() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let k = super::keys::outbound(
            "chat",
            true,
            &names(&["g", "g"]),
            &names(&["u", "v", "u"]),
            &names(&["e.x", "e.x"]),
        )
        .unwrap();
        assert_eq!(
            k,
            [
                "chat.all",
                "chat.group.g",
                "chat.user.u",
                "chat.user.v",
                "chat.event.e.x"
            ]
        );
        // 100,000 users (an HTTP API `/publish` with a large body): each compared with
        // every one before it took about 40 s here (a debug build); a set takes well
        // under a second.
        let users: Vec<String> = (0..100_000).map(|i| format!("user{i}")).collect();
        let started = std::time::Instant::now();
        let k = super::keys::outbound("chat", false, &[], &users, &[]).unwrap();
        assert_eq!(k.len(), 100_000);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_content_header_leaves_room_for_what_rabbitmq_adds_on_delivery() {
        // x-stream-offset is 25 bytes (29 without headers before), x-delivery-count 26.
        assert_eq!(content_header_limit(131_072), 131_072 - 8 - 4096);
        assert_eq!(content_header_limit(0), content_header_limit(131_072));
        assert_eq!(content_header_limit(1_048_576), 1_048_576 - 8 - 4096);
        // RabbitMQ's smallest frame_max: an eighth of it.
        assert_eq!(content_header_limit(4096), 4096 - 8 - 512);
        assert_eq!(content_header_limit(4), 0);
    }

    #[test]
    fn a_too_long_name_says_its_own_limit() {
        let segment = "a".repeat(MAX_NAME_LEN + 1);
        let e = validate_segment("group", &segment).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("group is longer than {MAX_NAME_LEN} bytes")
        );
        let dotted = ["a".repeat(100), "b".repeat(100)].join(".");
        assert!(
            validate_dotted("subject", &dotted, false).is_ok(),
            "201 bytes"
        );
        let dotted = ["a".repeat(128), "b".repeat(128), "c".into()].join(".");
        let e = validate_dotted("subject", &dotted, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("subject is longer than {} bytes", 2 * MAX_NAME_LEN)
        );
    }

    #[test]
    fn the_channel_of_a_gateway_fed_queue_is_found_and_no_other() {
        let n = Names::new("ns");
        assert_eq!(
            n.channel_of_queue(&n.channel_queue("chat")).as_deref(),
            Some("chat")
        );
        let typed = n.tenant_queue("scan", "acme", Some("pdf"));
        assert_eq!(n.channel_of_queue(&typed).as_deref(), Some("scan"));
        assert_eq!(n.channel_of_queue("IN_CHAT"), None, "another namespace");
        assert_eq!(
            n.channel_of_queue(&format!("{}conversions_delta", n.prefix())),
            None
        );
        assert_eq!(n.channel_of_queue(&format!("{}IN_", n.prefix())), None);
    }

    use super::*;

    #[test]
    fn the_event_name_is_the_last_segment_of_an_event_key_only() {
        assert_eq!(
            keys::event_name("tickets.event.ticket.created"),
            Some("created")
        );
        assert_eq!(keys::event_name("tickets.event.renamed"), Some("renamed"));
        assert_eq!(keys::event_name(&keys::event("t", "a.b.c.d")), Some("d"));
        for not_an_event in [
            "tickets.all",
            "tickets.user.event",
            "tickets",
            "event.a",
            "t.event.",
        ] {
            assert_eq!(keys::event_name(not_an_event), None, "{not_an_event}");
        }
    }

    #[test]
    fn composed_names_longer_than_an_amqp_short_string_are_refused() {
        assert!(validate_short("routing key", &"a".repeat(255)).is_ok());
        let e = validate_short("routing key", &"a".repeat(256)).unwrap_err();
        assert_eq!(
            e,
            NameError::TooLongForAmqp {
                what: "routing key",
                len: 256
            }
        );
    }

    #[test]
    fn client_headers_outside_the_allow_list_are_refused() {
        let check = |pairs: &[(&str, &str)]| {
            validate_client_headers(
                pairs
                    .iter()
                    .map(|(k, v)| (*k, *v))
                    .collect::<Vec<_>>()
                    .into_iter(),
            )
        };
        assert!(check(&[("trace-id", "abc"), ("App.Version", "1.2")]).is_ok());
        for reserved in [
            "x-death",
            "x-delay",
            "x-match",
            "X-Delivery-Count",
            "x-warren-user",
            "CC",
            "bcc",
            "reply_to",
            "Correlation-Id",
        ] {
            assert!(
                matches!(check(&[(reserved, "v")]), Err(HeaderError::Reserved(_))),
                "{reserved}"
            );
        }
        for bad in [
            "",
            "reply_to ",
            "x-warren\u{200b}-user",
            "a/b",
            &"n".repeat(65),
        ] {
            assert!(
                matches!(check(&[(bad, "v")]), Err(HeaderError::BadName(_))),
                "{bad:?}"
            );
        }
        let big = "v".repeat(MAX_CLIENT_HEADER_VALUE + 1);
        assert!(matches!(
            check(&[("big", &big)]),
            Err(HeaderError::ValueTooLong(_))
        ));
        let names: Vec<String> = (0..=MAX_CLIENT_HEADERS).map(|i| format!("h{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        assert_eq!(check(&many), Err(HeaderError::TooMany));
    }

    #[test]
    fn inbound_queues_dead_letter_to_warren_dead_and_carry_a_ttl_only_when_set() {
        let names = Names::new("ns");
        let unbounded = QueueBounds {
            max_length: 0,
            max_bytes: 0,
        };
        let args = inbound_queue_args(&names, "quorum", None, unbounded);
        assert_eq!(
            args,
            vec![
                ("x-queue-type", QueueArg::Text("quorum".into())),
                (
                    "x-dead-letter-exchange",
                    QueueArg::Text("ns.warren.dead".into())
                ),
            ]
        );
        let args = inbound_queue_args(&names, "classic", Some(500), unbounded);
        assert!(args.contains(&("x-message-ttl", QueueArg::Int(500))));
        let args = inbound_queue_args(&names, "quorum", None, QueueBounds::INBOUND);
        assert!(args.contains(&("x-max-length", QueueArg::Int(100_000))));
        assert!(args.contains(&("x-overflow", QueueArg::Text("reject-publish".into()))));
        let dead = dead_letter_queue_args("quorum");
        assert!(dead.contains(&("x-overflow", QueueArg::Text("drop-head".into()))));
    }

    #[test]
    fn names_carry_the_namespace_prefix() {
        let n = Names::new("t1");
        assert_eq!(n.inbound_exchange(), "t1.warren.in");
        assert_eq!(n.channel_queue("chat"), "t1.IN_CHAT");
        assert_eq!(Names::default().outbound_exchange(), "warren.out");
    }

    /// The definition `topic_matches` computes, recursively (exponential in `#`s).
    fn matches_by_definition(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => {
                matches_by_definition(rest, k)
                    || (!k.is_empty() && matches_by_definition(p, &k[1..]))
            }
            Some((w, rest)) => {
                !k.is_empty() && (*w == "*" || *w == k[0]) && matches_by_definition(rest, &k[1..])
            }
        }
    }

    #[test]
    fn topic_matching_agrees_with_the_definition_for_every_short_pattern_and_scales() {
        // Every dotted string of 1 to 5 words over a, b, *, # and the empty word.
        let mut all: Vec<Vec<&str>> = vec![];
        let mut last: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..5 {
            let mut next = Vec::new();
            for p in &last {
                for word in ["a", "b", "*", "#", ""] {
                    let mut q = p.clone();
                    q.push(word);
                    next.push(q);
                }
            }
            all.extend(next.iter().cloned());
            last = next;
        }
        let keys: Vec<&Vec<&str>> = all
            .iter()
            .filter(|k| k.iter().all(|w| *w != "*" && *w != "#"))
            .collect();
        for p in &all {
            for k in &keys {
                let (pattern, key) = (p.join("."), k.join("."));
                assert_eq!(
                    topic_matches(&pattern, &key),
                    matches_by_definition(p, k),
                    "{pattern} {key}"
                );
            }
        }
        // 100 `#`s against a 64-word key: the recursion would not finish.
        let many = format!("chat.event.{}z", "#.".repeat(100));
        let long = format!("chat.event.{}b", "a.".repeat(60));
        assert!(!topic_matches(&many, &long));
        assert!(topic_matches(
            &format!("chat.event.{}b", "#.".repeat(100)),
            &long
        ));
    }

    #[test]
    fn routing_keys_follow_the_mapping() {
        assert_eq!(keys::inbound("chat", None), "chat");
        assert_eq!(keys::inbound("chat", Some("x")), "chat.x");
        assert_eq!(keys::group("chat", "room-1"), "chat.group.room-1");
        assert_eq!(keys::user("voice", "bob"), "voice.user.bob");
        assert_eq!(keys::channel_of("voice.user.bob"), "voice");
    }

    #[test]
    fn segments_that_would_change_routing_are_refused() {
        assert!(validate_segment("group", "room-1").is_ok());
        for bad in ["", "a.b", "#", "a*", "sp ace", &"x".repeat(200)] {
            assert!(validate_segment("group", bad).is_err(), "{bad}");
        }
        assert!(validate_dotted("topic", "order.*.created", true).is_ok());
        assert!(validate_dotted("topic", "order.#", true).is_ok());
        assert!(validate_dotted("subject", "order.*", false).is_err());
    }
}
