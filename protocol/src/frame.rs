//! Every frame of protocol v1. Client frames go browser → gateway, server frames go
//! gateway → browser. Each frame is a JSON object with a `"type"` field.
//!
//! Frames are generic over the application payload `M`, which the gateway never looks
//! into: natively it is [`Raw`] (the exact bytes the client sent), in the browser SDK
//! it is a JavaScript value. Optional fields are omitted on the wire when empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::poc::PocPacket;
use crate::positions::Positions;
use crate::registry::ErrorCode;

/// The opaque application payload as raw JSON text, passed through byte for byte.
pub type Raw = Box<RawValue>;

/// String headers carried next to a message (AMQP headers converted to text).
pub type Headers = BTreeMap<String, String>;

fn is_false(b: &bool) -> bool {
    !*b
}

/// `hello`: opens a new session, or resumes the one named in `session`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The session to resume; absent to open a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Credential the gateway turns into a user id (see the gateway's `auth` setting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Client name and version, e.g. `warren-sdk/0.1.0`, for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Protocol version the client speaks; absent means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// Resuming on a gateway whose outbound path is a stream: the stream position of
    /// the last `deliver`/`reply` the client received. The gateway replays what this
    /// session may receive after it, then joins the live flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Resuming: the last position received in each channel stream (a channel whose
    /// retention is its own; see `Deliver::stream`), by channel. `position` is the
    /// default stream's. A channel stream without an entry is replayed from its start.
    #[serde(default, skip_serializing_if = "Positions::is_empty")]
    pub positions: Positions,
    /// The session's subscriptions, re-established before the replay (so nothing
    /// published while the client was away is filtered out). The client sends them as
    /// `subscribe` frames again after `welcome`, which is where refusals are reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<Subscribe>,
}

/// Limits the gateway enforces on this connection, announced in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest text frame accepted, in bytes; larger frames get `too_large`.
    pub max_frame_bytes: u64,
    /// Most subscriptions one session may hold.
    pub max_subscriptions: u32,
    /// Most unacknowledged deliveries the gateway sends before waiting for
    /// `ack_deliveries`.
    pub delivery_window: u32,
}

/// `welcome`: the session is open. Sent once per connection, before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Session id; name it in a later `hello` to resume.
    pub session: String,
    /// Whether an existing session was resumed (its queue kept what was not acked).
    pub resumed: bool,
    /// The user id the gateway resolved from the token (direct messages reach it).
    pub user: String,
    /// Name of the gateway node that serves this connection.
    pub node: String,
    /// The gateway sends `ping` when it has been silent this long; a client that hears
    /// nothing for about twice this long should consider the connection dead.
    pub heartbeat_ms: u64,
    /// Limits of this connection.
    pub limits: Limits,
    /// Protocol version the gateway speaks.
    pub protocol: u32,
    /// Why a requested resume did not happen (`session_expired`), when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<ErrorCode>,
    /// Stream outbound, a new session: the stream position it starts after (name it in
    /// `hello.position` until a `deliver` brings a newer one). Absent when the stream is
    /// empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// A new session: the position it starts after in each channel stream that is not
    /// empty, by channel (name them in `hello.positions`).
    #[serde(default, skip_serializing_if = "Positions::is_empty")]
    pub positions: Positions,
}

/// Who receives a message: everyone on the channel, some groups, some users.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distribution {
    /// Everyone subscribed to the channel's broadcast.
    #[serde(default, skip_serializing_if = "is_false")]
    pub broadcast: bool,
    /// Members of these groups (the POC called this `multicast`).
    #[serde(default, alias = "multicast", skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// These users, directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub direct: Vec<String>,
}

impl Distribution {
    /// True when no target at all is named.
    pub fn is_empty(&self) -> bool {
        !self.broadcast && self.groups.is_empty() && self.direct.is_empty()
    }
}

/// `publish` (the SDK's `write`): answered by `ack` once the broker confirmed it, or
/// by `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publish<M = Raw> {
    /// Client-chosen id, echoed in the `ack` or `error`; reused when re-sent.
    pub id: String,
    /// Channel, e.g. `chat`.
    pub channel: String,
    /// Optional subject: the message is routed with key `<channel>.<subject>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Who the service should relay this to (the service decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<Distribution>,
    /// Extra string headers passed to the service.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// The application message, opaque to the gateway.
    pub message: M,
}

/// `request` (the SDK's `writeAndWait`): like `publish`, answered by `reply` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request<M = Raw> {
    /// Client-chosen id; the `reply` carries the same id.
    pub id: String,
    /// Channel, e.g. `tickets`.
    pub channel: String,
    /// Optional subject: the request is routed with key `<channel>.<subject>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Extra string headers passed to the service.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// How long to wait for the reply; the gateway's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The application message, opaque to the gateway.
    pub message: M,
}

/// `subscribe` / `unsubscribe`: which messages of a channel this session receives.
///
/// When none of `broadcast`, `groups`, `direct` and `topic` is given, the subscription
/// is to the channel's broadcast.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Client-chosen id, echoed in the `ack` or `error`.
    pub id: String,
    /// Channel, e.g. `chat`.
    pub channel: String,
    /// Receive the channel's broadcast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<bool>,
    /// Receive these groups' messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Receive messages sent directly to this session's user on this channel.
    #[serde(default, skip_serializing_if = "is_false")]
    pub direct: bool,
    /// Receive events whose name matches this AMQP topic pattern (`order.*`, `a.#`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl Subscribe {
    /// Whether the broadcast is part of this subscription, applying the default.
    pub fn wants_broadcast(&self) -> bool {
        match self.broadcast {
            Some(b) => b,
            None => self.groups.is_empty() && !self.direct && self.topic.is_none(),
        }
    }
}

/// `refresh`: a renewed token for the open session, answered by `ack` (the new token is
/// in force) or `error` (`unauthorized` when it is refused, `forbidden` when it names
/// another user). The connection and the session stay as they are either way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refresh {
    /// Client-chosen id, echoed in the `ack` or `error`.
    pub id: String,
    /// The new token.
    pub token: String,
}

/// `ack_deliveries`: the client has handled every delivery (and reply) up to `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckDeliveries {
    /// Highest sequence number handled; acknowledgement is cumulative.
    pub seq: u64,
}

/// `ping` / `pong`, either direction. `pong` echoes the `ts` of its `ping`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Sender's clock, echoed back, for round-trip measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<u64>,
    /// A gateway's `ping` only: the position up to which everything the session may
    /// receive in a stream was sent (the outbound stream, or `stream`'s), so that a
    /// session that receives nothing for long keeps a position its stream still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// With `position`, for a channel stream: the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// `ack`: a `publish`, `subscribe` or `unsubscribe` took effect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The id of the acknowledged frame.
    pub id: String,
    /// For a `subscribe` of a session that is up to date in the subscription's stream:
    /// the position up to which everything the session may receive there was sent
    /// before this `ack`. The client keeps it as the newest position received in that
    /// stream, so a resume does not replay what was published before the subscription.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// With `position`: the channel whose own stream it is in (absent: the outbound
    /// stream), as in `deliver`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// `error`: a frame failed, or (without `id`) the connection has a problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// The id of the failed frame, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Registry code: tells whether a retry can help.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Sequence number to acknowledge, when the error came from the outbound stream
    /// (a service rejecting a request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Stream position of that refusal (stream outbound only); see `Deliver::position`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// A `session_expired` about a channel stream: that channel (see `Deliver::stream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// `reply`: the answer to a `request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<M = Raw> {
    /// The id of the request.
    pub id: String,
    /// Sequence number to acknowledge with `ack_deliveries`.
    pub seq: u64,
    /// Stream position (stream outbound only); see `Deliver::position`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// String headers the service set.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// The service's answer, opaque to the gateway.
    pub message: M,
}

/// `deliver`: a message for one of this session's subscriptions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deliver<M = Raw> {
    /// Per-connection sequence number, acknowledged with `ack_deliveries`.
    pub seq: u64,
    /// Position of the message in the gateway's outbound stream, when the outbound
    /// path is a stream: positions only grow, and a client that names the last one it
    /// received in `hello.position` is sent everything after it on reconnect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// The stream `position` belongs to, when the channel has a stream of its own (its
    /// own retention): the channel's name. Absent: the default outbound stream.
    /// Positions of different streams are unrelated; the client keeps one per stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Stable id: the same message redelivered carries the same id.
    pub message_id: String,
    /// Channel the message was published on.
    pub channel: String,
    /// AMQP routing key, e.g. `chat.group.room-1`.
    pub routing_key: String,
    /// The message's other routing keys this session's subscriptions hold, when a
    /// service sent it to several targets the session receives (e.g. a group and the
    /// user): it is for the subscriptions of each. Absent for most messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// True when the broker delivered this message before (it may be a duplicate).
    #[serde(default, skip_serializing_if = "is_false")]
    pub redelivered: bool,
    /// String headers the publisher set.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// The application message, opaque to the gateway.
    pub message: M,
}

/// `drain`: this gateway is going away; reconnect to another URL and resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// Why, for logs.
    pub reason: String,
    /// The gateway closes the connection after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// `overflow`: messages were dropped because the client fell behind. Sent only by the
/// removed `outbound = "queues"` mode (its session queue dropped them); the outbound
/// stream drops nothing. Kept so clients still parse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overflow {
    /// How many messages were dropped (at least).
    pub dropped: u64,
}

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame<M = Raw> {
    /// Open or resume a session.
    Hello(Hello),
    /// `write`.
    Publish(Publish<M>),
    /// `writeAndWait`.
    Request(Request<M>),
    /// Start receiving.
    Subscribe(Subscribe),
    /// Stop receiving.
    Unsubscribe(Subscribe),
    /// Cumulative acknowledgement of deliveries and replies.
    AckDeliveries(AckDeliveries),
    /// Liveness probe.
    Ping(Ping),
    /// Answer to the gateway's `ping`.
    Pong(Ping),
    /// A renewed token for the open session.
    Refresh(Refresh),
    /// A proof-of-concept packet, which has no `type` field.
    #[serde(untagged)]
    Poc(PocPacket<M>),
}

/// A frame sent by the gateway.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<M = Raw> {
    /// The session is open.
    Welcome(Welcome),
    /// A frame took effect.
    Ack(Ack),
    /// A frame failed.
    Error(Error),
    /// Answer to a request.
    Reply(Reply<M>),
    /// A message for a subscription.
    Deliver(Deliver<M>),
    /// Liveness probe.
    Ping(Ping),
    /// Answer to the client's `ping`.
    Pong(Ping),
    /// Move to another gateway.
    Drain(Drain),
    /// Messages were dropped by the overflow policy.
    Overflow(Overflow),
}

/// The `type` names of client frames.
pub const CLIENT_TYPES: &[&str] = &[
    "hello",
    "publish",
    "request",
    "subscribe",
    "unsubscribe",
    "ack_deliveries",
    "ping",
    "pong",
    "refresh",
];

/// The `type` names of server frames.
pub const SERVER_TYPES: &[&str] = &[
    "welcome", "ack", "error", "reply", "deliver", "ping", "pong", "drain", "overflow",
];

impl<M> ClientFrame<M> {
    /// Deserialises the frame body of the given `type` (or a POC packet when `kind` is
    /// `None`) from any serde deserializer. Used in the second pass of decoding, so the
    /// payload goes straight into `M` without being buffered.
    ///
    /// # Errors
    /// Returns `Ok(None)` for an unknown `type`, or the deserializer's error when the
    /// fields do not match the frame.
    pub fn deserialize_kind<'de, D>(kind: Option<&str>, de: D) -> Result<Option<Self>, D::Error>
    where
        D: Deserializer<'de>,
        M: Deserialize<'de>,
    {
        Ok(Some(match kind {
            None => ClientFrame::Poc(PocPacket::deserialize(de)?),
            Some("hello") => ClientFrame::Hello(Hello::deserialize(de)?),
            Some("publish") => ClientFrame::Publish(Publish::deserialize(de)?),
            Some("request") => ClientFrame::Request(Request::deserialize(de)?),
            Some("subscribe") => ClientFrame::Subscribe(Subscribe::deserialize(de)?),
            Some("unsubscribe") => ClientFrame::Unsubscribe(Subscribe::deserialize(de)?),
            Some("ack_deliveries") => ClientFrame::AckDeliveries(AckDeliveries::deserialize(de)?),
            Some("ping") => ClientFrame::Ping(Ping::deserialize(de)?),
            Some("pong") => ClientFrame::Pong(Ping::deserialize(de)?),
            Some("refresh") => ClientFrame::Refresh(Refresh::deserialize(de)?),
            Some(_) => return Ok(None),
        }))
    }

    /// The frame's `type` name (`"poc"` for a POC packet).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Hello(_) => "hello",
            ClientFrame::Publish(_) => "publish",
            ClientFrame::Request(_) => "request",
            ClientFrame::Subscribe(_) => "subscribe",
            ClientFrame::Unsubscribe(_) => "unsubscribe",
            ClientFrame::AckDeliveries(_) => "ack_deliveries",
            ClientFrame::Ping(_) => "ping",
            ClientFrame::Pong(_) => "pong",
            ClientFrame::Refresh(_) => "refresh",
            ClientFrame::Poc(_) => "poc",
        }
    }
}

impl<M> ServerFrame<M> {
    /// Deserialises the frame body of the given `type` from any serde deserializer.
    ///
    /// # Errors
    /// Returns `Ok(None)` for an unknown `type`, or the deserializer's error when the
    /// fields do not match the frame.
    pub fn deserialize_kind<'de, D>(kind: &str, de: D) -> Result<Option<Self>, D::Error>
    where
        D: Deserializer<'de>,
        M: Deserialize<'de>,
    {
        Ok(Some(match kind {
            "welcome" => ServerFrame::Welcome(Welcome::deserialize(de)?),
            "ack" => ServerFrame::Ack(Ack::deserialize(de)?),
            "error" => ServerFrame::Error(Error::deserialize(de)?),
            "reply" => ServerFrame::Reply(Reply::deserialize(de)?),
            "deliver" => ServerFrame::Deliver(Deliver::deserialize(de)?),
            "ping" => ServerFrame::Ping(Ping::deserialize(de)?),
            "pong" => ServerFrame::Pong(Ping::deserialize(de)?),
            "drain" => ServerFrame::Drain(Drain::deserialize(de)?),
            "overflow" => ServerFrame::Overflow(Overflow::deserialize(de)?),
            _ => return Ok(None),
        }))
    }

    /// The frame's `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Welcome(_) => "welcome",
            ServerFrame::Ack(_) => "ack",
            ServerFrame::Error(_) => "error",
            ServerFrame::Reply(_) => "reply",
            ServerFrame::Deliver(_) => "deliver",
            ServerFrame::Ping(_) => "ping",
            ServerFrame::Pong(_) => "pong",
            ServerFrame::Drain(_) => "drain",
            ServerFrame::Overflow(_) => "overflow",
        }
    }
}

impl ServerFrame {
    /// An `error` frame answering the frame `id`.
    pub fn error(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error(Error {
            id,
            code,
            message: message.into(),
            seq: None,
            position: None,
            stream: None,
        })
    }

    /// An `ack` frame for the frame `id`.
    pub fn ack(id: impl Into<String>) -> Self {
        ServerFrame::Ack(Ack {
            id: id.into(),
            ..Ack::default()
        })
    }
}
