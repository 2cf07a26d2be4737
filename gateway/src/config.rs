//! Configuration: one serde struct with documented defaults, read from a TOML file,
//! overridden by `WARREN_*` environment variables and then by command-line flags
//! (clap), and validated once at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use warren_protocol::amqp::validate_segment;

use crate::error::GatewayError;

/// The largest `max_delivery_bytes` accepted: RabbitMQ's `max_message_size` default.
pub const MAX_DELIVERY_BYTES_LIMIT: usize = 128 * 1024 * 1024;

/// The largest `max_frame_bytes` accepted: 64 MiB (RabbitMQ's `max_message_size` is
/// 128 MiB by default, and a frame is at most 4x `max_frame_bytes` before it closes).
pub const MAX_FRAME_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// Everything the gateway can be told. Every field has a default (see [`Default`]), so
/// a TOML file only names what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Prefix of every exchange and queue name (`<ns>.warren.in`); empty for none.
    pub namespace: String,
    /// Name of this gateway node, in `welcome`, headers, logs and announcements.
    /// Default: `gw-<8 random hex digits>`.
    pub node: String,
    /// RabbitMQ URIs, tried in order at connect and reconnect.
    /// Default: `["amqp://127.0.0.1:5672/%2f"]`.
    pub amqp_uri: Vec<String>,
    /// WebSocket listeners. Default: one on `127.0.0.1:4000` serving every channel
    /// (loopback only: other machines are let in by naming an address, e.g.
    /// `0.0.0.0:4000`, once `auth.mode` checks who connects).
    pub listen: Vec<ListenerConfig>,
    /// The channels this deployment serves. Default: `chat`, `voice`, `tickets`, `echo`.
    pub channels: Vec<String>,
    /// Type of the `IN_<CHANNEL>` queues. Default: `quorum`.
    pub queue_type: QueueType,
    /// Publisher channels (in confirm mode) in the pool, at most
    /// [`MAX_PUBLISHER_CHANNELS`]. Default: 4.
    pub publisher_channels: usize,
    /// Channels that carry the gateway's own consumers (registry, presence,
    /// announcements); with `max_stream_readers` at most [`MAX_CONSUMING_CHANNELS`].
    /// Default: 4.
    pub consumer_channels: usize,
    /// The gateway pings each open session this often, quiet or busy (the pings carry
    /// stream positions); a client heard from not at all for 2.5× this long is closed
    /// with `heartbeat_timeout`. Default: 15000.
    pub heartbeat_ms: u64,
    /// Largest text frame accepted; larger ones get `too_large`. Frames beyond
    /// `max(4 × this, 1 MiB)` close the connection with 1009. 1024 to 64 MiB.
    /// Default: 65536.
    pub max_frame_bytes: usize,
    /// Largest message body delivered to a client (a service's publish or reply); one
    /// over it is not sent: the session gets `error too_large` in its place, with its
    /// `seq` and stream position (a reply's with the request's id). Each receiving
    /// socket holds its own copy of a delivery until it is written: a 16 MiB broadcast
    /// to 1,000 sessions would take 16 GB or more. 1024 to 128 MiB. Default: 1048576.
    pub max_delivery_bytes: usize,
    /// Most subscriptions (binding keys) per session; at least 1. Default: 256.
    pub max_subscriptions: u32,
    /// Unacknowledged deliveries in flight per session: the gateway sends no more until
    /// the client acknowledges. Default: 256.
    pub delivery_window: u16,
    /// Request timeout when the `request` names none. Default: 10000.
    pub request_timeout_ms: u64,
    /// Longest request timeout a client may ask for (it is the request's AMQP
    /// expiration too): at most 315360000000, ten years, RabbitMQ's limit.
    /// Default: 300000.
    pub max_request_timeout_ms: u64,
    /// How long a session whose client went away may be resumed before presence
    /// reports it ended (`client.disconnected` with `expired`). What it missed is
    /// replayed from the outbound stream, whose retention is `stream_max_age`.
    /// Default: 60000.
    pub session_expires_ms: u64,
    /// Consecutive bad frames after which the connection is closed with
    /// `too_many_errors`. Default: 32.
    pub max_consecutive_errors: u32,
    /// On shutdown, how long connections may take to finish pending confirms.
    /// Default: 5000.
    pub shutdown_grace_ms: u64,
    /// Period of the gateway's announcement on `warren.gateways`; 0 turns it off,
    /// otherwise at least 100. Default: 5000.
    pub announce_interval_ms: u64,
    /// Publish `client.connected` / `client.disconnected` on `warren.presence`.
    /// Default: true.
    pub presence: bool,
    /// Most publishes of one connection awaiting their broker confirm; at this many the
    /// gateway stops reading that client's socket until confirms come back. Default: 1024.
    pub max_pending_confirms: usize,
    /// How long a publish waits for RabbitMQ to come back before it fails with
    /// `broker_unavailable`; at least 100. Default: 5000.
    pub broker_wait_ms: u64,
    /// How long the gateway (every command) keeps trying to reach RabbitMQ when it
    /// starts, for RabbitMQ starting beside it; 0 = fail at the first refusal. A refused
    /// login fails at once. Default: 30000.
    pub broker_start_wait_ms: u64,
    /// How long one attempt to connect to one RabbitMQ URI may take (TCP, TLS, the AMQP
    /// handshake, and opening the connection's channels); past it the URI counts as
    /// unreachable and the next is tried. Bounds a reconnect too. At least 100.
    /// Default: 10000.
    pub amqp_connect_timeout_ms: u64,
    /// Message TTL of every `IN_<CHANNEL>` queue (`x-message-ttl`) in ms; 0 = none,
    /// at most 315360000000 (ten years, RabbitMQ's limit). Expired messages are
    /// dead-lettered to `warren.dead`. Default: 0.
    pub message_ttl_ms: u64,
    /// Per-channel settings (`[channel_options.<name>]`), e.g. `message_ttl_ms`.
    pub channel_options: std::collections::BTreeMap<String, ChannelOptions>,
    /// A connection that has opened no session this long after the upgrade (no
    /// `hello`, or only unreadable ones) is closed with 4500. Default: 10000.
    pub hello_timeout_ms: u64,
    /// Pending connections the kernel queues per listener (`listen(2)` backlog, capped
    /// by `net.core.somaxconn`). Default: 4096.
    pub listen_backlog: u32,
    /// A client must finish its HTTP request headers (the WebSocket upgrade) this long
    /// after connecting, or it is disconnected (slowloris); on a kept-alive HTTP
    /// connection the next request's, this long after the previous response (an idle
    /// one is closed then). Default: 10000.
    pub header_read_timeout_ms: u64,
    /// An admin listener (e.g. `127.0.0.1:9090`, loopback for operators and scrapers):
    /// when set, `/healthz`, `/metrics` and `/services` are served there and no longer
    /// on the WebSocket listeners. Default: none (served on every listener).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    /// Most messages an `IN_<CHANNEL>` queue holds (`x-max-length`); beyond it a
    /// publish is answered `overloaded` (`x-overflow: reject-publish`). 0 = no bound.
    /// Services declare the same default. Default: 100000.
    pub inbound_max_length: u64,
    /// Most bytes an `IN_<CHANNEL>` queue holds (`x-max-length-bytes`), likewise.
    /// Default: 1073741824 (1 GiB).
    pub inbound_max_bytes: u64,
    /// Open connections per client IP address; more are refused with HTTP 429.
    /// 0 = no limit. Default: 1000.
    pub max_connections_per_ip: u32,
    /// New connections per client IP address per second (bursts of twice this); more
    /// are refused with HTTP 429. A `GET /presence` call counts as one. 0 = no limit.
    /// Default: 100.
    pub max_new_connections_per_ip_per_s: u32,
    /// Whether the per-IP limits also count loopback addresses (a reverse proxy, or
    /// tests and benchmarks on the same machine, all connect from loopback). Default:
    /// false.
    pub ip_limits_on_loopback: bool,
    /// Whether WebSocket compression (permessage-deflate, RFC 7692) is negotiated with
    /// clients that offer it (browsers do). Compression keeps no context between
    /// messages, with deflate state shared across connections, so an idle connection
    /// costs no more than without; frames under 64 bytes go out uncompressed. It costs
    /// CPU per frame and per connection: fan-out compresses each delivery once per
    /// socket. Default: false.
    pub permessage_deflate: bool,
    /// Open sessions per user (in tenant mode, per user of each tenant: user ids need
    /// be unique only within a tenant); one more gets `error overloaded` and a close with
    /// `4005 rate_limited`. 0 = no limit. Default: 100.
    pub max_connections_per_user: u32,
    /// Frames one connection may send per second (bursts of twice this); beyond it the
    /// gateway reads that socket more slowly (nothing is refused, other connections are
    /// unaffected). 0 = no limit. Default: 10000. Also the HTTP API calls a second of
    /// one user's token (`http_api.accept_jwt`; over it `429 overloaded`).
    pub max_frames_per_s: u32,
    /// Requests one connection may have waiting for their reply; one more is answered
    /// `overloaded`. Default: 1000. Also the HTTP API calls in progress of one user's
    /// token.
    pub max_pending_requests: usize,
    /// Stream readers open at once for sessions whose position is older than a hub's
    /// ring (shared replays and a session's own readers, all streams together): each
    /// takes an AMQP channel on the consuming connection (RabbitMQ allows 2,047) and up
    /// to a 16 MiB window. A resume that needs one more waits for one to close, its
    /// connection served meanwhile; live sessions and resumes within the ring never
    /// wait. Default: 256.
    pub max_stream_readers: usize,
    /// Sessions of one user reading behind a hub's ring at once (in a shared replay or
    /// with a reader of their own), so that one user's sessions, resuming from
    /// scattered old positions and reading slowly, cannot hold every one of
    /// `max_stream_readers`. One more waits for one of them to reach the ring or
    /// leave, its connection served meanwhile. Default: 32.
    pub max_stream_readers_per_user: usize,
    /// Retention of the outbound stream by age (`x-max-age`: `Y`, `M`, `D`, `h`, `m`,
    /// `s` units): how far back a resuming client is replayed. What services send to
    /// clients lands in this one replicated stream, which each gateway reads once and
    /// fans out in memory; sessions hold no broker state (README, "Outbound").
    /// Default: `24h`.
    pub stream_max_age: String,
    /// Retention of the outbound stream by size (`x-max-length-bytes`). Default:
    /// 2147483648 (2 GiB).
    pub stream_max_bytes: u64,
    /// Newest outbound-stream messages a gateway keeps in memory:
    /// resumes and slow clients within them are served without reading the broker.
    /// Default: 100000.
    pub hub_buffer_messages: usize,
    /// Which client frames are answered `no_service` at once when their channel has
    /// nobody to answer: no live instance in the service registry (`warren.services`)
    /// and no consumer on the channel's `IN_<CHANNEL>` queue. `requests` (a request
    /// would only wait for its timeout), `all` (publishes too: they would wait in the
    /// queue for a service to come back), `off`. Default: `requests`.
    pub no_service: NoServiceMode,
    /// How replies to WebSocket `request`s come back. `stream` (the default): through
    /// the outbound stream, so a reply in flight when its gateway dies is replayed to
    /// the client wherever it resumes, from any service. `direct`: by RabbitMQ's direct
    /// reply-to, straight to the gateway that sent the request, about 0.4 ms sooner
    /// (BENCHMARKS.md, "rpc with direct replies"); a reply in flight when that gateway
    /// dies is lost, and the request is answered only because the SDK sends it again
    /// when it resumes and the service answers the copy (the Warren service library
    /// does, from its duplicate window; a service that drops copies unanswered leaves
    /// the request to time out). Default: `stream`.
    pub request_replies: RequestReplies,
    /// Tokens, identities, allowed origins.
    pub auth: AuthConfig,
    /// The external HTTP API (`/external`, `/publish`, `/request`); off by default.
    pub http_api: HttpApiConfig,
    /// Multi-tenant routing (README, "Multi-tenant deployments"); off by default.
    pub tenants: TenantsConfig,
}

/// `[tenants]`: multi-tenant routing. When enabled, every session has the tenant of
/// its verified identity (the token's `tenant` claim; with `auth.mode = "none"`,
/// `default`), never one a client chooses; writes carry it in `x-warren-tenant`, the
/// routed channels' writes go through the `<ns>.warren.tenants` headers exchange to the
/// tenant's queues, and outbound messages reach only sessions of the tenant named in
/// their `x-warren-tenant` header (a message without one reaches only sessions
/// without a tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantsConfig {
    /// Turn tenant mode on. Default: false (nothing changes).
    pub enabled: bool,
    /// The tenant of every session when `auth.mode = "none"` (development); ignored
    /// in the other modes, where the identity names it. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// The channels whose writes are routed per tenant (`IN_<CHANNEL>.<tenant>` and
    /// `IN_<CHANNEL>.<tenant>.<type>` instead of `IN_<CHANNEL>`). The other channels
    /// keep `warren.in` and `IN_<CHANNEL>`, with the tenant header on every message.
    /// Default: none.
    pub channels: Vec<String>,
    /// The client header (`headers` of a `publish` / `request`) naming the message
    /// type that picks a specialised queue; absent or empty = the general queue.
    /// Default: `type`.
    pub type_header: String,
    /// The tenants (`[tenants.tenant.<name>]`) and their message types.
    pub tenant: std::collections::BTreeMap<String, TenantOptions>,
}

/// `[tenants.tenant.<name>]`: one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantOptions {
    /// Message types with a specialised queue each; a write naming another type is
    /// answered `no_route`.
    pub types: Vec<String>,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        TenantsConfig {
            enabled: false,
            default: None,
            channels: Vec::new(),
            type_header: "type".into(),
            tenant: std::collections::BTreeMap::new(),
        }
    }
}

impl TenantsConfig {
    /// Whether a session with `tenant` may receive a message for `message_tenant` (the
    /// `x-warren-tenant` of an outbound message): always with tenant mode off; in
    /// tenant mode only when both name the same tenant, or neither names one.
    pub fn admits(&self, tenant: Option<&str>, message_tenant: Option<&str>) -> bool {
        !self.enabled || tenant == message_tenant
    }

    /// The tenant routing as the protocol crate describes it (tenants in name order).
    pub fn routing(&self) -> warren_protocol::tenants::TenantRouting {
        warren_protocol::tenants::TenantRouting {
            channels: self.channels.clone(),
            tenants: self
                .tenant
                .iter()
                .map(|(name, o)| warren_protocol::tenants::Tenant {
                    name: name.clone(),
                    types: o.types.clone(),
                })
                .collect(),
        }
    }
}

/// `[http_api]`: the external HTTP API for backends that do not speak AMQP
/// (README, "HTTP API").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpApiConfig {
    /// Serve it. Default: false.
    pub enabled: bool,
    /// An address of its own. Without one the API is served beside `/ws` on every
    /// WebSocket listener that serves all channels. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Keys a caller sends as `Authorization: Bearer <key>` (compared in constant
    /// time); it then acts as user `http-api`, which may do everything. Prefer the
    /// `WARREN_HTTP_API_KEYS` environment variable to a config file. Default: none.
    pub api_keys: Vec<String>,
    /// Also accept a token verified as `auth.mode = "jwt"` verifies them, with the
    /// token's user and channel permissions (not for `POST /publish`). Default: false.
    pub accept_jwt: bool,
    /// Largest request body, in bytes; a larger one gets 413 `too_large`.
    /// Default: 65536.
    pub max_body_bytes: usize,
}

impl Default for HttpApiConfig {
    fn default() -> Self {
        HttpApiConfig {
            enabled: false,
            listen: None,
            api_keys: Vec::new(),
            accept_jwt: false,
            max_body_bytes: 64 * 1024,
        }
    }
}

pub use warren_protocol::amqp::MAX_TTL_MS;

/// Most `publisher_channels`: each takes two of the publishing connection's AMQP
/// channels (RabbitMQ allows 2,047 per connection), and direct replies, the auth
/// service and the HTTP API open theirs there too.
pub const MAX_PUBLISHER_CHANNELS: usize = 512;

/// Most `consumer_channels` + `max_stream_readers`: they share the consuming
/// connection's 2,047 AMQP channels with the hubs' readers and their looks at a
/// stream's tail and first message.
pub const MAX_CONSUMING_CHANNELS: usize = 1792;

/// Most `auth.jwt.leeway_s` (a day).
pub const MAX_JWT_LEEWAY_S: u64 = 86_400;

/// Which frames get `no_service` (see [`Config::no_service`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum NoServiceMode {
    /// Never: requests wait for their timeout, publishes wait in the queue.
    Off,
    /// Requests only; publishes wait in the queue for a service to come back.
    Requests,
    /// Requests and publishes.
    All,
}

/// How replies to WebSocket requests come back (see [`Config::request_replies`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RequestReplies {
    /// Through the outbound stream: replayed on resume, from any service.
    Stream,
    /// By direct reply-to: sooner; lost with their gateway, recovered only by a
    /// service that answers the copy the SDK sends again.
    Direct,
}

/// Settings of one channel (`[channel_options.chat]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelOptions {
    /// Message TTL of this channel's `IN_<CHANNEL>` queue in ms, overriding the global
    /// `message_ttl_ms`; 0 = none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_ttl_ms: Option<u64>,
    /// Retention of this channel's messages to clients by age, when it is not the
    /// outbound stream's (`stream_max_age`). Either stream setting gives the channel a
    /// stream of its own, `warren.out.stream.<channel>`, so a busy channel does not
    /// push a quiet one's history out and a channel can keep its history longer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_max_age: Option<String>,
    /// Retention of this channel's messages to clients by size, in bytes, when it is
    /// not the outbound stream's (`stream_max_bytes`); see `stream_max_age`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_max_bytes: Option<u64>,
}

/// A channel stream: where a channel with a retention of its own keeps what services
/// send its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStream {
    /// The channel.
    pub channel: String,
    /// Retention by age (`x-max-age`).
    pub max_age: String,
    /// Retention by size (`x-max-length-bytes`).
    pub max_bytes: u64,
}

/// A WebSocket listener: an address, serving every channel or pinned to one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind; port 0 picks a free port.
    pub bind: SocketAddr,
    /// The one channel this listener serves; `None` serves all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl FromStr for ListenerConfig {
    type Err = String;

    /// Parses `ADDR` or `ADDR=CHANNEL`, e.g. `127.0.0.1:4001=voice`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, channel) = match s.split_once('=') {
            Some((a, c)) => (a, Some(c.trim().to_string())),
            None => (s, None),
        };
        let bind = addr
            .trim()
            .parse()
            .map_err(|e| format!("`{addr}` is not an address like 127.0.0.1:4000: {e}"))?;
        Ok(ListenerConfig { bind, channel })
    }
}

/// Whether `age` is a stream `x-max-age` RabbitMQ takes: a positive number and one
/// unit letter (it refuses `0s` with `invalid_max_age`).
fn valid_max_age(age: &str) -> bool {
    let Some(unit) = age.chars().last() else {
        return false;
    };
    let digits = &age[..age.len() - unit.len_utf8()];
    "YMDhms".contains(unit)
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

/// Options of the `outbound = "queues"` mode (a durable queue per session), removed
/// with that mode: a configuration that still sets one is refused at start-up rather
/// than silently ignored. `outbound = "stream"` alone is accepted (a no-op).
pub const REMOVED_OPTIONS: &[(&str, &str)] = &[
    (
        "outbound",
        "the `queues` outbound mode (a queue per session) was removed",
    ),
    (
        "session_max_length",
        "session queues were removed with `outbound = \"queues\"`",
    ),
    (
        "session_takeover_ms",
        "session queues were removed with `outbound = \"queues\"`",
    ),
    (
        "overflow_check_ms",
        "session queues (and their overflow) were removed with `outbound = \"queues\"`",
    ),
    (
        "overflow_record_max",
        "session queues (and their overflow) were removed with `outbound = \"queues\"`",
    ),
];

/// Queue type of the inbound channel queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    /// Replicated, durable (`x-queue-type=quorum`); the production choice.
    Quorum,
    /// A classic queue (`x-queue-type=classic`).
    Classic,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

/// Who a connection is, and where it may come from (README, "Authentication and
/// permissions").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` (development: the token, if given, is the user id, who may do
    /// everything), `jwt` (a signed token; see [`JwtConfig`]) or `service` (an auth
    /// service on RabbitMQ answers; see [`AuthServiceConfig`]). Default: `none`.
    pub mode: AuthMode,
    /// Settings of `jwt` mode.
    pub jwt: JwtConfig,
    /// Settings of `service` mode.
    pub service: AuthServiceConfig,
    /// `Origin`s allowed to open a WebSocket: exact origins (`https://app.example.com`)
    /// or patterns with a leading `*.` host label (`https://*.example.com`); an upgrade
    /// from anywhere else is refused with HTTP 403. Requests without `Origin` (not from
    /// a browser) are allowed. Default: empty, which allows every origin.
    pub allowed_origins: Vec<String>,
    /// Name of a cookie whose value is taken as the token when `hello` carries none
    /// (for same-site apps). An `Authorization: Bearer` header on the upgrade is
    /// always read. Needs `allowed_origins` (a browser sends the cookie whichever
    /// site opens the socket). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_cookie: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            jwt: JwtConfig::default(),
            service: AuthServiceConfig::default(),
            allowed_origins: Vec::new(),
            token_cookie: None,
        }
    }
}

/// `[auth.jwt]`: how tokens are verified in `jwt` mode. At least one key is needed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted algorithms (`HS256`, `HS384`, `HS512`, `RS256`, ..., `PS512`, `ES256`,
    /// `ES384`, `EdDSA`). A token whose header names another is refused.
    /// Default: `["HS256"]`.
    pub algorithms: Vec<String>,
    /// The shared HMAC secret (at least 32 bytes). Prefer `secret_file` or the
    /// `WARREN_AUTH_JWT_SECRET` environment variable to keep it out of config files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// A file holding the HMAC secret (trailing white space is ignored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// PEM files of RSA, EC (P-256/P-384) or Ed25519 public keys.
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS document (`{"keys": [...]}`); a token's `kid` picks the key. A `kid`
    /// no key holds is tried against the keys without one (the secret, the PEM files,
    /// JWKs without a `kid`) and refused when none of them verifies the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// A JWKS document fetched at start, fetched again when a token
    /// names a `kid` it does not hold and when the keys held are older than
    /// `jwks_max_age_s` (each at most once per `jwks_refresh_min_s`), so the issuer can
    /// rotate keys, and withdraw one, without a gateway restart. Bodies over 1 MiB and
    /// fetches over 5 s fail, and so does a document listing no keys: the keys held
    /// are kept. An `https://` URL (redirects stay on https), or `http://` to a
    /// loopback host (`127.0.0.1`, `::1`, `localhost`; no redirect followed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// Least time between two fetches of `jwks_url`, in seconds (at least 1).
    /// Default: 60.
    pub jwks_refresh_min_s: u64,
    /// Most age of the keys fetched from `jwks_url`, in seconds (at least 1): a token
    /// verified after it makes the gateway fetch the document again in the background
    /// (the keys held verify meanwhile), so a key the issuer removed stops verifying
    /// within about this time, or `jwks_refresh_min_s` if that is longer.
    /// Default: 300.
    pub jwks_max_age_s: u64,
    /// Allow a plain `http://` `jwks_url` to a host that is not loopback (an issuer
    /// inside a private network without TLS): anyone on the path could then replace
    /// the keys, and so sign tokens the gateway accepts. Logged as a warning at start.
    /// Default: false.
    pub jwks_allow_http: bool,
    /// Required `iss`, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds, at most 86400. Default: 30.
    pub leeway_s: u64,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithms: vec!["HS256".into()],
            secret: None,
            secret_file: None,
            public_key_files: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_min_s: 60,
            jwks_max_age_s: 300,
            jwks_allow_http: false,
            issuer: None,
            audience: None,
            leeway_s: 30,
        }
    }
}

/// `[auth.service]`: the auth worker on RabbitMQ (`auth.mode = "service"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthServiceConfig {
    /// The channel auth requests travel on: key `<channel>.client.auth` on `warren.in`,
    /// queue `IN_<CHANNEL>` (declared by the auth service). It must not be one of
    /// the client channels. Default: `auth`.
    pub channel: String,
    /// How long the gateway waits for the answer before `auth_unavailable`.
    /// Default: 3000.
    pub timeout_ms: u64,
    /// Most answers cached (by token, until their `expires_at`). Default: 10000.
    pub cache_entries: usize,
}

impl Default for AuthServiceConfig {
    fn default() -> Self {
        AuthServiceConfig {
            channel: "auth".into(),
            timeout_ms: 3000,
            cache_entries: 10_000,
        }
    }
}

/// Authentication modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Development: trust the token as the user id.
    None,
    /// A JSON Web Token signed by the app's backend.
    Jwt,
    /// An auth service on RabbitMQ answers `client.auth` (the source system's auth
    /// worker).
    Service,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: String::new(),
            node: format!("gw-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            amqp_uri: vec!["amqp://127.0.0.1:5672/%2f".to_string()],
            listen: vec![ListenerConfig {
                bind: SocketAddr::from(([127, 0, 0, 1], 4000)),
                channel: None,
            }],
            channels: ["chat", "voice", "tickets", "echo"]
                .map(String::from)
                .to_vec(),
            queue_type: QueueType::Quorum,
            publisher_channels: 4,
            consumer_channels: 4,
            heartbeat_ms: 15_000,
            max_frame_bytes: 64 * 1024,
            max_delivery_bytes: 1024 * 1024,
            max_subscriptions: 256,
            delivery_window: 256,
            request_timeout_ms: 10_000,
            max_request_timeout_ms: 300_000,
            session_expires_ms: 60_000,
            max_consecutive_errors: 32,
            shutdown_grace_ms: 5_000,
            announce_interval_ms: 5_000,
            presence: true,
            max_pending_confirms: 1024,
            broker_wait_ms: 5_000,
            broker_start_wait_ms: 30_000,
            amqp_connect_timeout_ms: 10_000,
            message_ttl_ms: 0,
            channel_options: std::collections::BTreeMap::new(),
            hello_timeout_ms: 10_000,
            inbound_max_length: warren_protocol::amqp::QueueBounds::INBOUND.max_length,
            inbound_max_bytes: warren_protocol::amqp::QueueBounds::INBOUND.max_bytes,
            listen_backlog: 4096,
            header_read_timeout_ms: 10_000,
            admin_listen: None,
            max_connections_per_ip: 1000,
            max_new_connections_per_ip_per_s: 100,
            ip_limits_on_loopback: false,
            permessage_deflate: false,
            max_connections_per_user: 100,
            max_frames_per_s: 10_000,
            max_pending_requests: 1000,
            max_stream_readers: 256,
            max_stream_readers_per_user: 32,
            no_service: NoServiceMode::Requests,
            request_replies: RequestReplies::Stream,
            stream_max_age: "24h".to_string(),
            stream_max_bytes: 2 * 1024 * 1024 * 1024,
            hub_buffer_messages: 100_000,
            auth: AuthConfig::default(),
            http_api: HttpApiConfig::default(),
            tenants: TenantsConfig::default(),
        }
    }
}

impl Config {
    /// Parses a TOML document; fields it does not name keep their defaults.
    ///
    /// # Errors
    /// [`GatewayError::ConfigParse`] when the text is not valid TOML or names an
    /// unknown option.
    ///
    /// Options of the removed `outbound = "queues"` mode are refused with
    /// [`GatewayError::Config`] naming the key (see [`REMOVED_OPTIONS`]); `outbound =
    /// "stream"`, what every gateway now does, is accepted and ignored.
    pub fn from_toml(text: &str, path: &str) -> Result<Config, GatewayError> {
        let parse_error = |e| GatewayError::ConfigParse {
            path: path.to_string(),
            source: Box::new(e),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse_error)?;
        for (key, value) in &table {
            if let Some(why) = refused(key, value.as_str()) {
                return Err(GatewayError::Config(format!(
                    "{path}: `{key} = {value}` is no longer supported: {why}; remove it \
                     (the gateway always uses the outbound stream)"
                )));
            }
        }
        if table.remove("outbound").is_some() {
            // `outbound = "stream"`: the only mode left; read without the key (the
            // document's line numbers are lost in errors, so only then).
            return toml::Value::Table(table).try_into().map_err(parse_error);
        }
        toml::from_str(text).map_err(parse_error)
    }

    /// Reads a TOML file.
    ///
    /// # Errors
    /// [`GatewayError::ConfigFile`] when it cannot be read, or as [`Config::from_toml`].
    pub fn from_file(path: &std::path::Path) -> Result<Config, GatewayError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| GatewayError::ConfigFile {
            path: shown.clone(),
            source,
        })?;
        Config::from_toml(&text, &shown)
    }

    /// The hard cap handed to the WebSocket library: beyond it a frame closes the
    /// connection with 1009 instead of getting a `too_large` error frame.
    pub fn hard_frame_bytes(&self) -> usize {
        (self.max_frame_bytes.saturating_mul(4)).max(1024 * 1024)
    }

    /// Whether `channel` is one this deployment serves.
    pub fn has_channel(&self, channel: &str) -> bool {
        self.channels.iter().any(|c| c == channel)
    }

    /// The message TTL of `channel`'s inbound queue, if any.
    pub fn message_ttl_of(&self, channel: &str) -> Option<u64> {
        let ttl = self
            .channel_options
            .get(channel)
            .and_then(|o| o.message_ttl_ms)
            .unwrap_or(self.message_ttl_ms);
        (ttl > 0).then_some(ttl)
    }

    /// The channels with a stream of their own (a `stream_max_age` or
    /// `stream_max_bytes` in their `[channel_options]`), in the order of `channels`;
    /// what a channel does not set is the outbound stream's.
    pub fn channel_streams(&self) -> Vec<ChannelStream> {
        self.channels
            .iter()
            .filter_map(|ch| {
                let o = self.channel_options.get(ch)?;
                if o.stream_max_age.is_none() && o.stream_max_bytes.is_none() {
                    return None;
                }
                Some(ChannelStream {
                    channel: ch.clone(),
                    max_age: o
                        .stream_max_age
                        .clone()
                        .unwrap_or_else(|| self.stream_max_age.clone()),
                    max_bytes: o.stream_max_bytes.unwrap_or(self.stream_max_bytes),
                })
            })
            .collect()
    }

    /// What serving clients needs beyond [`Config::validate`], checked when the gateway
    /// starts ([`crate::Gateway::start`]), not by `topology` commands: a file for
    /// `topology apply` is often run with the default `auth.mode` though the gateways
    /// reading it verify tokens.
    ///
    /// # Errors
    /// [`GatewayError::Config`] naming the problem.
    pub fn check_to_serve(&self) -> Result<(), GatewayError> {
        // With auth.mode = "none" no token carries a tenant: `default` is the only tenant
        // a session (or an HTTP API write) can have, and without one every write would
        // be refused `forbidden` ("has no tenant"). The other modes take it from tokens.
        if self.tenants.enabled
            && self.auth.mode == AuthMode::None
            && self.tenants.default.is_none()
        {
            return Err(GatewayError::Config(
                "tenants: auth.mode = \"none\" needs tenants.default (--tenants-default): no \
                 token carries a tenant in that mode, so without a default tenant every write \
                 would be refused `forbidden`"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Checks the configuration once, at start-up.
    ///
    /// # Errors
    /// [`GatewayError::Config`] naming the first problem found.
    pub fn validate(&self) -> Result<(), GatewayError> {
        let bad = |m: String| Err(GatewayError::Config(m));
        if !self.namespace.is_empty() {
            for seg in self.namespace.split('.') {
                if let Err(e) = validate_segment("namespace", seg) {
                    return bad(e.to_string());
                }
            }
        }
        if let Err(e) = validate_segment("node", &self.node) {
            return bad(e.to_string());
        }
        if self.amqp_uri.is_empty() {
            return bad("at least one amqp_uri is needed".into());
        }
        for uri in &self.amqp_uri {
            if let Err(e) = uri.parse::<lapin::uri::AMQPUri>() {
                return bad(format!("amqp_uri `{}`: {e}", redact(uri)));
            }
        }
        if self.channels.is_empty() {
            return bad("at least one channel is needed".into());
        }
        for (i, ch) in self.channels.iter().enumerate() {
            if let Err(e) = validate_segment("channel", ch) {
                return bad(e.to_string());
            }
            // Queue names are upper-cased (`IN_CHAT`): `chat` and `Chat` would share one.
            if let Some(other) = self.channels[..i]
                .iter()
                .find(|c| c.eq_ignore_ascii_case(ch))
            {
                return bad(if other == ch {
                    format!("channel `{ch}` is listed twice")
                } else {
                    format!("channels `{other}` and `{ch}` would share one queue (IN_ names are upper case); keep one")
                });
            }
        }
        let streams = self.channel_streams().len();
        if streams > warren_protocol::positions::MAX_POSITIONS {
            return bad(format!(
                "{streams} channels have a stream of their own; at most {} may (a client's \
                 hello names a position in each)",
                warren_protocol::positions::MAX_POSITIONS
            ));
        }
        if self.listen.is_empty() {
            return bad("at least one listener is needed".into());
        }
        for l in &self.listen {
            if let Some(ch) = &l.channel {
                if !self.has_channel(ch) {
                    return bad(format!(
                        "listener {} is pinned to `{ch}`, which is not in channels {:?}",
                        l.bind, self.channels
                    ));
                }
            }
        }
        if self.publisher_channels == 0 || self.consumer_channels == 0 {
            return bad("publisher_channels and consumer_channels must be at least 1".into());
        }
        // Past RabbitMQ's channels per connection, start-up failed on a channel.open
        // naming no option (or, far past, the pool's allocation panicked), and resumes
        // failed in a storm when a reader could not get a channel.
        if self.publisher_channels > MAX_PUBLISHER_CHANNELS {
            return bad(format!(
                "publisher_channels is {}; at most {MAX_PUBLISHER_CHANNELS}: each takes two \
                 of the publishing connection's AMQP channels (RabbitMQ allows 2047), and \
                 direct replies and the HTTP API need some",
                self.publisher_channels
            ));
        }
        if self
            .consumer_channels
            .saturating_add(self.max_stream_readers)
            > MAX_CONSUMING_CHANNELS
        {
            return bad(format!(
                "consumer_channels ({}) + max_stream_readers ({}) is more than \
                 {MAX_CONSUMING_CHANNELS}: each takes one of the consuming connection's AMQP \
                 channels (RabbitMQ allows 2047), and the streams' own readers need some",
                self.consumer_channels, self.max_stream_readers
            ));
        }
        self.validate_listen_addresses()?;
        if self.heartbeat_ms < 100 {
            return bad("heartbeat_ms must be at least 100".into());
        }
        // Peers count a gateway dead three periods after its last announcement: with
        // a few ms, ordinary scheduling delays made them count each other dead (their
        // sessions away, `gateway_lost` for live ones).
        if (1..100).contains(&self.announce_interval_ms) {
            return bad(format!(
                "announce_interval_ms must be 0 (off) or at least 100, not {} (peers count \
                 a gateway dead three periods after its last announcement)",
                self.announce_interval_ms
            ));
        }
        if self.max_frame_bytes < 1024 {
            return bad("max_frame_bytes must be at least 1024".into());
        }
        if !(1024..=MAX_DELIVERY_BYTES_LIMIT).contains(&self.max_delivery_bytes) {
            return bad(format!(
                "max_delivery_bytes must be 1024 to {MAX_DELIVERY_BYTES_LIMIT} (128 MiB, \
                 RabbitMQ's largest message), not {}",
                self.max_delivery_bytes
            ));
        }
        // The hard cap is 4x, and the pre-`hello` cap adds 4 KiB: near usize::MAX those
        // wrapped, and every frame was refused.
        if self.max_frame_bytes > MAX_FRAME_BYTES_LIMIT {
            return bad(format!(
                "max_frame_bytes must be at most {MAX_FRAME_BYTES_LIMIT} (64 MiB)"
            ));
        }
        // Opening a channel is a round trip to RabbitMQ: with a wait shorter than that,
        // every operation that opens one (direct replies, the auth service, the HTTP
        // API's calls) failed with broker_unavailable while RabbitMQ was up.
        if self.broker_wait_ms < 100 {
            return bad(
                "broker_wait_ms must be at least 100 (shorter, even opening a channel \
                 on a healthy RabbitMQ would fail with broker_unavailable)"
                    .into(),
            );
        }
        // A RabbitMQ that takes the TCP connection and never answers held the
        // gateway's start, or its reconnects, for good; the bound is a few round trips.
        if self.amqp_connect_timeout_ms < 100 {
            return bad(
                "amqp_connect_timeout_ms must be at least 100 (shorter, even a healthy \
                 RabbitMQ could not finish the handshake in time)"
                    .into(),
            );
        }
        if self.delivery_window == 0 {
            return bad("delivery_window must be at least 1".into());
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > self.max_request_timeout_ms {
            return bad(format!(
                "request_timeout_ms ({}) must be in 1..=max_request_timeout_ms ({}): lower \
                 request_timeout_ms or raise max_request_timeout_ms",
                self.request_timeout_ms, self.max_request_timeout_ms
            ));
        }
        // RabbitMQ refuses a longer queue TTL or message expiration (a request's
        // expiration is its timeout).
        let ttls = [
            (
                "max_request_timeout_ms".to_string(),
                self.max_request_timeout_ms,
            ),
            ("message_ttl_ms".to_string(), self.message_ttl_ms),
        ]
        .into_iter()
        .chain(self.channel_options.iter().filter_map(|(c, o)| {
            Some((
                format!("channel_options.{c}.message_ttl_ms"),
                o.message_ttl_ms?,
            ))
        }));
        for (name, ms) in ttls {
            if ms > MAX_TTL_MS {
                return bad(format!(
                    "{name} must be at most {MAX_TTL_MS} (ten years, RabbitMQ's limit for a \
                     TTL or an expiration)"
                ));
            }
        }
        if self.session_expires_ms == 0 || self.session_expires_ms > u32::MAX as u64 {
            return bad("session_expires_ms must be in 1..=4294967295".into());
        }
        if !valid_max_age(&self.stream_max_age) {
            return bad(format!(
                "stream_max_age `{}` is not a positive number followed by Y, M, D, h, m or s (e.g. `24h`)",
                self.stream_max_age
            ));
        }
        if self.hub_buffer_messages == 0 {
            return bad("hub_buffer_messages must be at least 1".into());
        }
        for name in self.channel_options.keys() {
            if !self.has_channel(name) {
                return bad(format!("channel_options.{name}: not a configured channel"));
            }
            if let Some(age) = &self.channel_options[name].stream_max_age {
                if !valid_max_age(age) {
                    return bad(format!(
                        "channel_options.{name}.stream_max_age `{age}` is not a positive number followed by Y, M, D, h, m or s (e.g. `7D`)"
                    ));
                }
            }
            if self.channel_options[name].stream_max_bytes == Some(0) {
                return bad(format!(
                    "channel_options.{name}.stream_max_bytes must be at least 1"
                ));
            }
        }
        if self.stream_max_bytes == 0 {
            return bad("stream_max_bytes must be at least 1 (it bounds the outbound stream: 0 would keep almost nothing to resume from)".into());
        }
        if self.max_pending_confirms == 0 {
            return bad("max_pending_confirms must be at least 1".into());
        }
        if self.max_consecutive_errors == 0 {
            return bad("max_consecutive_errors must be at least 1".into());
        }
        if self.max_subscriptions == 0 {
            return bad(
                "max_subscriptions must be at least 1 (with 0 every subscribe would be refused \
                 forbidden and the gateway would deliver nothing)"
                    .into(),
            );
        }
        if self.hello_timeout_ms == 0
            || self.max_pending_requests == 0
            || self.header_read_timeout_ms == 0
            || self.listen_backlog == 0
        {
            return bad(
                "hello_timeout_ms, header_read_timeout_ms, listen_backlog and \
                 max_pending_requests must be at least 1"
                    .into(),
            );
        }
        if self.max_stream_readers_per_user == 0 {
            return bad(
                "max_stream_readers_per_user must be at least 1 (with 0 no session could \
                 resume from a position older than the hub's ring)"
                    .into(),
            );
        }
        if self.max_stream_readers == 0 {
            return bad(
                "max_stream_readers must be at least 1 (with 0 no session could resume \
                 from a position older than the hub's ring)"
                    .into(),
            );
        }
        for origin in &self.auth.allowed_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return bad(format!(
                    "auth.allowed_origins: `{origin}` must start with http:// or https://"
                ));
            }
        }
        if self.auth.token_cookie.is_some() && self.auth.allowed_origins.is_empty() {
            return bad(
                "auth.token_cookie needs auth.allowed_origins: the browser sends the cookie \
                 whichever page opens the WebSocket, so without an origin list any site \
                 could open sessions as the cookie's user"
                    .into(),
            );
        }
        if self.auth.mode == AuthMode::Jwt
            && self.auth.jwt.jwks_url.is_some()
            && self.auth.jwt.jwks_refresh_min_s == 0
        {
            return bad(
                "auth.jwt.jwks_refresh_min_s must be at least 1 (with 0, every token naming \
                 an unknown kid, which anyone can send, would fetch jwks_url)"
                    .into(),
            );
        }
        if self.auth.mode == AuthMode::Jwt
            && self.auth.jwt.jwks_url.is_some()
            && self.auth.jwt.jwks_max_age_s == 0
        {
            return bad(
                "auth.jwt.jwks_max_age_s must be at least 1 (the most age, in seconds, of the \
                 keys fetched from jwks_url before they are fetched again)"
                    .into(),
            );
        }
        // jsonwebtoken subtracts the leeway from the time: past it, every token was
        // refused as expired (and debug builds panicked on each).
        if self.auth.jwt.leeway_s > MAX_JWT_LEEWAY_S {
            return bad(format!(
                "auth.jwt.leeway_s is {}; at most {MAX_JWT_LEEWAY_S} (a day): it allows \
                 for clock skew, it cannot turn expiry off",
                self.auth.jwt.leeway_s
            ));
        }
        crate::auth::Verifier::from_config(&self.auth)?;
        if self.auth.mode == AuthMode::Service {
            let svc = &self.auth.service;
            if let Err(e) = validate_segment("auth.service.channel", &svc.channel) {
                return bad(e.to_string());
            }
            if self
                .channels
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&svc.channel))
            {
                return bad(format!(
                    "auth.service.channel `{}` is a client channel; pick another name",
                    svc.channel
                ));
            }
            if svc.timeout_ms == 0 {
                return bad("auth.service.timeout_ms must be at least 1".into());
            }
        }
        self.validate_tenants()?;
        self.validate_name_lengths()?;
        self.validate_http_api()
    }

    /// No two listeners (WebSocket, admin, HTTP API) name one address, or one port on
    /// overlapping addresses (`0.0.0.0` or `[::]` take the port on every address): the
    /// second failed to bind only after start-up had connected to RabbitMQ, with an
    /// error that blamed another process. Port 0 (any free port) may repeat.
    fn validate_listen_addresses(&self) -> Result<(), GatewayError> {
        let named = self
            .listen
            .iter()
            .map(|l| ("listen", l.bind))
            .chain(self.admin_listen.map(|a| ("admin_listen", a)))
            .chain(
                self.http_api
                    .listen
                    .filter(|_| self.http_api.enabled)
                    .map(|a| ("http_api.listen", a)),
            )
            .filter(|(_, addr)| addr.port() != 0);
        let mut seen: Vec<(&str, SocketAddr)> = Vec::new();
        for (name, addr) in named {
            let overlaps = |a: &SocketAddr| {
                a.port() == addr.port()
                    && (a.ip() == addr.ip()
                        || a.ip().is_unspecified()
                        || addr.ip().is_unspecified())
            };
            if let Some((first, _)) = seen.iter().find(|(_, a)| overlaps(a)) {
                let hint = if name == "http_api.listen" && *first == "listen" {
                    " (leave http_api.listen out to serve the API beside /ws)"
                } else {
                    ""
                };
                return Err(GatewayError::Config(format!(
                    "{name} {addr} is also {first}'s address: each listener needs one of its own{hint}"
                )));
            }
            seen.push((name, addr));
        }
        Ok(())
    }

    /// Every exchange, queue and stream name composed from the namespace, channels
    /// and tenants fits in an AMQP short string (each part is checked on its own, not
    /// their sum: a long namespace and a long channel made a name RabbitMQ cannot
    /// take, and start-up failed on a corrupt frame).
    /// Settings that are set but do nothing, because the feature they belong to is
    /// off: each a sentence for a warning at start (a `--tenants-default` without
    /// `--tenants true`, API keys with the HTTP API off, JWT keys no mode reads).
    pub fn unused_settings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let t = &self.tenants;
        if !t.enabled && (t.default.is_some() || !t.channels.is_empty() || !t.tenant.is_empty()) {
            out.push(
                "[tenants] settings are set but tenants.enabled is false (--tenants true): \
                 they do nothing"
                    .to_string(),
            );
        }
        let h = &self.http_api;
        if !h.enabled && (!h.api_keys.is_empty() || h.listen.is_some() || h.accept_jwt) {
            out.push(
                "[http_api] settings are set but http_api.enabled is false \
                 (--http-api-enabled true): they do nothing"
                    .to_string(),
            );
        }
        let j = &self.auth.jwt;
        let keys = j.secret.is_some()
            || j.secret_file.is_some()
            || !j.public_key_files.is_empty()
            || j.jwks_file.is_some()
            || j.jwks_url.is_some();
        let read = self.auth.mode == AuthMode::Jwt || (h.enabled && h.accept_jwt);
        if keys && !read {
            out.push(format!(
                "[auth.jwt] keys are set but nothing verifies tokens with them (auth.mode is \
                 \"{}\", and the HTTP API does not accept_jwt): they do nothing",
                match self.auth.mode {
                    AuthMode::None => "none",
                    AuthMode::Jwt => "jwt",
                    AuthMode::Service => "service",
                }
            ));
        }
        out
    }

    fn validate_name_lengths(&self) -> Result<(), GatewayError> {
        let names = warren_protocol::amqp::Names::new(&self.namespace);
        let mut composed = vec![
            names.inbound_exchange(),
            names.outbound_exchange(),
            names.outbound_stream(),
            names.gateways_exchange(),
            names.services_exchange(),
            names.presence_exchange(),
            names.dead_letter_exchange(),
            names.dead_letter_queue(),
            names.tenants_exchange(),
            names.channel_queue(&self.auth.service.channel),
        ];
        for ch in &self.channels {
            composed.push(names.channel_queue(ch));
            composed.push(names.channel_stream(ch));
        }
        if self.tenants.enabled {
            for (tenant, options) in &self.tenants.tenant {
                composed.push(names.tenant_exchange(tenant));
                for ch in &self.tenants.channels {
                    composed.push(names.tenant_queue(ch, tenant, None));
                    for kind in &options.types {
                        composed.push(names.tenant_queue(ch, tenant, Some(kind)));
                    }
                }
            }
        }
        match composed
            .iter()
            .find(|n| n.len() > warren_protocol::amqp::MAX_SHORT_STRING)
        {
            Some(n) => Err(GatewayError::Config(format!(
                "the name `{}…` would be {} bytes; AMQP allows at most {}: shorten the namespace, a channel or a tenant",
                crate::inbound::truncate(n, 64),
                n.len(),
                warren_protocol::amqp::MAX_SHORT_STRING
            ))),
            None => Ok(()),
        }
    }

    fn validate_tenants(&self) -> Result<(), GatewayError> {
        let bad = |m: String| Err(GatewayError::Config(format!("tenants: {m}")));
        let t = &self.tenants;
        if !t.enabled {
            return Ok(());
        }
        if let Err(e) = t.routing().validate() {
            return bad(e.to_string());
        }
        for ch in &t.channels {
            if !self.has_channel(ch) {
                return bad(format!(
                    "channel `{ch}` is not in channels {:?}",
                    self.channels
                ));
            }
        }
        if let Some(d) = &t.default {
            if let Err(e) = validate_segment("tenants.default", d) {
                return bad(e.to_string());
            }
            // Every routed write of such a session would be answered no_route.
            if !t.channels.is_empty() && !t.tenant.contains_key(d) {
                return bad(format!(
                    "default `{d}` is not one of the tenants ([tenants.tenant.<name>]): {:?}",
                    t.tenant.keys().collect::<Vec<_>>()
                ));
            }
        }
        if t.type_header.is_empty() {
            return bad("type_header is empty".into());
        }
        // Clients send the type in this header: one the gateway refuses on every write
        // (`x-...`, a reserved name, other characters) would make the per-type queues
        // unreachable. The protocol crate's own allow-list decides.
        if let Err(e) = warren_protocol::amqp::validate_client_headers(std::iter::once((
            t.type_header.as_str(),
            "",
        ))) {
            return bad(format!(
                "type_header `{}` is a header clients may not send ({e})",
                t.type_header
            ));
        }
        Ok(())
    }

    fn validate_http_api(&self) -> Result<(), GatewayError> {
        let bad = |m: &str| Err(GatewayError::Config(format!("http_api: {m}")));
        let api = &self.http_api;
        if !api.enabled {
            return Ok(());
        }
        if api.api_keys.is_empty() && !api.accept_jwt {
            return bad("enabled without api_keys or accept_jwt: nobody could call it");
        }
        if api
            .api_keys
            .iter()
            .any(|k| k.is_empty() || k.chars().any(char::is_whitespace))
        {
            return bad("an api_keys entry is empty or holds white space");
        }
        if api.accept_jwt && self.auth.mode != AuthMode::Jwt {
            return bad("accept_jwt needs auth.mode = \"jwt\"");
        }
        if api.max_body_bytes < 1024 {
            return bad("max_body_bytes must be at least 1024");
        }
        // An address another listener has is refused by `validate_listen_addresses`.
        match api.listen {
            None if self.listen.iter().all(|l| l.channel.is_some()) => bad(
                "no listen address and no WebSocket listener serving all channels to serve it on",
            ),
            _ => Ok(()),
        }
    }

    /// Applies flag and environment overrides (clap already merged those two, flags
    /// winning) on top of this configuration.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(v) = &o.namespace {
            self.namespace = v.clone();
        }
        if let Some(v) = &o.node {
            self.node = v.clone();
        }
        if !o.amqp_uri.is_empty() {
            self.amqp_uri = o.amqp_uri.clone();
        }
        if !o.listen.is_empty() {
            self.listen = o.listen.clone();
        }
        if !o.channels.is_empty() {
            self.channels = o.channels.clone();
        }
        if let Some(a) = o.admin_listen {
            self.admin_listen = Some(a);
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = o.$f { self.$f = v; } )* };
        }
        set!(
            queue_type,
            publisher_channels,
            consumer_channels,
            heartbeat_ms,
            max_frame_bytes,
            max_delivery_bytes,
            max_subscriptions,
            delivery_window,
            request_timeout_ms,
            max_request_timeout_ms,
            session_expires_ms,
            max_consecutive_errors,
            shutdown_grace_ms,
            announce_interval_ms,
            presence,
            max_pending_confirms,
            broker_wait_ms,
            broker_start_wait_ms,
            amqp_connect_timeout_ms,
            message_ttl_ms,
            hello_timeout_ms,
            inbound_max_length,
            inbound_max_bytes,
            listen_backlog,
            header_read_timeout_ms,
            max_connections_per_ip,
            max_new_connections_per_ip_per_s,
            ip_limits_on_loopback,
            permessage_deflate,
            max_connections_per_user,
            max_frames_per_s,
            max_pending_requests,
            max_stream_readers,
            max_stream_readers_per_user,
            stream_max_bytes,
            hub_buffer_messages,
            no_service,
            request_replies
        );
        if let Some(v) = &o.stream_max_age {
            self.stream_max_age = v.clone();
        }
        if let Some(mode) = o.auth_mode {
            self.auth.mode = mode;
        }
        // The secret and its file are one setting: either, given by the environment
        // or a flag, replaces both of the file's (the file's `secret` kept winning,
        // so a secret rotated through `--auth-jwt-secret-file` was silently ignored).
        // One from the environment and the other by flag: the flag's, as for every
        // setting. Both from the same place are refused when the keys are loaded.
        if o.auth_jwt_secret.is_some() || o.auth_jwt_secret_file.is_some() {
            let from_env = |var: &str, given: Option<&std::ffi::OsStr>| {
                given.is_some() && std::env::var_os(var).as_deref() == given
            };
            let secret_env = from_env(
                "WARREN_AUTH_JWT_SECRET",
                o.auth_jwt_secret.as_deref().map(std::ffi::OsStr::new),
            );
            let file_env = from_env(
                "WARREN_AUTH_JWT_SECRET_FILE",
                o.auth_jwt_secret_file.as_deref().map(|p| p.as_os_str()),
            );
            let (mut secret, mut file) =
                (o.auth_jwt_secret.clone(), o.auth_jwt_secret_file.clone());
            if secret.is_some() && file.is_some() && secret_env != file_env {
                if secret_env {
                    secret = None;
                } else {
                    file = None;
                }
            }
            self.auth.jwt.secret = secret;
            self.auth.jwt.secret_file = file;
        }
        if !o.allowed_origins.is_empty() {
            self.auth.allowed_origins = o.allowed_origins.clone();
        }
        if let Some(v) = o.tenants {
            self.tenants.enabled = v;
        }
        if let Some(v) = &o.tenants_default {
            self.tenants.default = Some(v.clone());
        }
        let api = &mut self.http_api;
        if let Some(v) = o.http_api_enabled {
            api.enabled = v;
        }
        if let Some(v) = o.http_api_listen {
            api.listen = Some(v);
        }
        if !o.http_api_keys.is_empty() {
            api.api_keys = o.http_api_keys.clone();
        }
        if let Some(v) = o.http_api_accept_jwt {
            api.accept_jwt = v;
        }
        if let Some(v) = o.http_api_max_body_bytes {
            api.max_body_bytes = v;
        }
    }

    /// Builds the configuration from the command line: defaults, then the TOML file
    /// (`--config` / `WARREN_CONFIG`), then environment and flags; then validates.
    ///
    /// # Errors
    /// As [`Config::from_file`] and [`Config::validate`].
    pub fn load(o: &Overrides) -> Result<Config, GatewayError> {
        refuse_removed_env(
            std::env::vars_os().filter_map(|(k, v)| {
                Some((k.into_string().ok()?, v.to_string_lossy().into_owned()))
            }),
        )?;
        let mut config = match &o.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply(o);
        config.validate()?;
        Ok(config)
    }
}

/// Why option `key` set to `value` is refused, if it is one of [`REMOVED_OPTIONS`]
/// (`outbound = "stream"`, what every gateway does, is accepted).
fn refused(key: &str, value: Option<&str>) -> Option<&'static str> {
    let (_, why) = REMOVED_OPTIONS.iter().find(|(k, _)| *k == key)?;
    (!(key == "outbound" && value == Some("stream"))).then_some(*why)
}

/// Refuses the environment variables of [`REMOVED_OPTIONS`] (`WARREN_<KEY>`), as a
/// configuration file naming them is refused: set, they would otherwise be ignored
/// without a word. `WARREN_OUTBOUND=stream` is accepted.
///
/// # Errors
/// [`GatewayError::Config`] naming the first such variable set.
fn refuse_removed_env(vars: impl Iterator<Item = (String, String)>) -> Result<(), GatewayError> {
    for (name, value) in vars {
        let Some(key) = name.strip_prefix("WARREN_") else {
            continue;
        };
        let Some(why) = refused(&key.to_ascii_lowercase(), Some(&value)) else {
            continue;
        };
        return Err(GatewayError::Config(format!(
            "{name}={value} is no longer supported: {why}; unset it (the gateway always \
             uses the outbound stream)"
        )));
    }
    Ok(())
}

/// A URI with its password replaced, for logs and errors.
pub fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &uri[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &uri[..s + 3], &uri[at..]),
                None => uri.to_string(),
            }
        }
        _ => uri.to_string(),
    }
}

/// The `warren-gateway` command line.
#[derive(Debug, Parser)]
#[command(
    name = "warren-gateway",
    version,
    about = "Warren gateway: WebSocket clients bridged to RabbitMQ",
    long_about = "Warren gateway: serves WebSocket clients (protocol warren.v1 at /ws, \
                  health at /healthz) and bridges them to RabbitMQ.\n\n\
                  Settings come from defaults, then the TOML file (--config), then \
                  WARREN_* environment variables, then flags. These settings are in the \
                  file only: auth.token_cookie, [auth.jwt] but its secret \
                  (--auth-jwt-secret, --auth-jwt-secret-file), [auth.service], \
                  [tenants] but enabled and default (--tenants, --tenants-default), and \
                  [channel_options.<channel>]; gateway/warren-gateway.example.toml shows \
                  every setting with its default."
)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings that override the configuration file.
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve WebSocket clients (the default).
    Run,
    /// The AMQP topology: print it, apply (declare) it, or check it against a broker.
    Topology {
        /// `print`, `apply` or `check`.
        #[command(subcommand)]
        action: TopologyAction,
    },
}

/// `topology` subcommands.
#[derive(Debug, Subcommand)]
pub enum TopologyAction {
    /// Print what would be declared, without connecting.
    Print,
    /// Connect and declare the topology, then exit (1 naming each object that exists
    /// with other arguments, kept as it is: RabbitMQ cannot change them).
    Apply,
    /// Compare the configuration's topology with a live broker, creating nothing.
    #[command(
        long_about = "Compare the configuration's topology with a live broker, \
        creating nothing.\n\n\
        Every exchange and queue the configuration declares (with [tenants] enabled, \
        every tenant's exchange and queues too) is looked up passively; one that \
        exists is declared again with the expected kind and arguments on a scratch \
        channel, so the broker itself names any difference (its PRECONDITION_FAILED \
        text, e.g. \"inequivalent arg 'x-queue-type' for queue 'IN_CHAT' in vhost \
        '/': received 'classic' but current is 'quorum'\"). Bindings cannot be read \
        over AMQP 0.9.1: with --management-url they are read from RabbitMQ's \
        management HTTP API (plugin rabbitmq_management, with the user, password and \
        virtual host of the first AMQP URI) and each one the configuration declares \
        and the broker lacks is a mismatch; without it they are not compared (the \
        summary says so).\n\n\
        Prints one line per mismatch (`MISMATCH <object>: missing` or \
        `MISMATCH <object>: <difference>`) and a summary line.\n\n\
        Exit status: 0 when everything matches, 1 when anything is missing or \
        different, 2 when the broker or the management API cannot be reached or the \
        configuration is invalid."
    )]
    Check {
        /// RabbitMQ's management API, e.g. `http://127.0.0.1:15672`, to compare the
        /// bindings too [default: bindings are not compared].
        #[arg(long, env = "WARREN_MANAGEMENT_URL")]
        management_url: Option<String>,
    },
}

/// Flags and environment variables; each overrides the configuration file.
#[derive(Debug, Default, Clone, Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "WARREN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Namespace prefix of every exchange and queue name [default: none].
    #[arg(long, env = "WARREN_NAMESPACE", global = true)]
    pub namespace: Option<String>,
    /// Node name [default: gw-<random>].
    #[arg(long, env = "WARREN_NODE", global = true)]
    pub node: Option<String>,
    /// RabbitMQ URI; repeat (or comma-separate in the env) for fallbacks
    /// [default: amqp://127.0.0.1:5672/%2f].
    #[arg(long, env = "WARREN_AMQP_URI", value_delimiter = ',', global = true)]
    pub amqp_uri: Vec<String>,
    /// Listener `ADDR` or `ADDR=CHANNEL` (pinned to one channel); repeatable
    /// [default: 127.0.0.1:4000, loopback only; 0.0.0.0:4000 lets other machines in].
    #[arg(long, env = "WARREN_LISTEN", value_delimiter = ',', global = true)]
    pub listen: Vec<ListenerConfig>,
    /// Channels served [default: chat,voice,tickets,echo].
    #[arg(long, env = "WARREN_CHANNELS", value_delimiter = ',', global = true)]
    pub channels: Vec<String>,
    /// Type of the IN_<CHANNEL> queues [default: quorum].
    #[arg(long, env = "WARREN_QUEUE_TYPE", global = true)]
    pub queue_type: Option<QueueType>,
    /// Outbound stream retention by age, the resume window (x-max-age): a positive
    /// number and a unit, Y, M, D, h, m or s [default: 24h].
    /// A channel can have its own, in a stream of its own: `stream_max_age` /
    /// `stream_max_bytes` under `[channel_options.<channel>]` in the --config file.
    #[arg(long, env = "WARREN_STREAM_MAX_AGE", global = true)]
    pub stream_max_age: Option<String>,
    /// Outbound stream retention by size, in bytes [default: 2147483648].
    #[arg(long, env = "WARREN_STREAM_MAX_BYTES", global = true)]
    pub stream_max_bytes: Option<u64>,
    /// Newest outbound-stream messages kept in memory per gateway [default: 100000].
    #[arg(long, env = "WARREN_HUB_BUFFER_MESSAGES", global = true)]
    pub hub_buffer_messages: Option<usize>,
    /// Frames answered `no_service` at once when no service consumes their channel:
    /// requests, all (publishes too) or off [default: requests].
    #[arg(long, env = "WARREN_NO_SERVICE", global = true)]
    pub no_service: Option<NoServiceMode>,
    /// How replies to WebSocket requests come back: `stream` (replayed on resume) or
    /// `direct` (RabbitMQ's direct reply-to: about 0.4 ms sooner, but a reply in
    /// flight when its gateway dies is recovered only by a service that answers the
    /// request's copy, as the Warren service library does) [default: stream].
    #[arg(long, env = "WARREN_REQUEST_REPLIES", global = true)]
    pub request_replies: Option<RequestReplies>,
    /// Publisher channels in the pool, at most 512 [default: 4].
    #[arg(long, env = "WARREN_PUBLISHER_CHANNELS", global = true)]
    pub publisher_channels: Option<usize>,
    /// Channels carrying the gateway's own consumers; with max_stream_readers at most
    /// 1792 [default: 4].
    #[arg(long, env = "WARREN_CONSUMER_CHANNELS", global = true)]
    pub consumer_channels: Option<usize>,
    /// How often the gateway pings each session, quiet or busy, in ms [default: 15000].
    #[arg(long, env = "WARREN_HEARTBEAT_MS", global = true)]
    pub heartbeat_ms: Option<u64>,
    /// Largest text frame accepted, in bytes, 1024 to 64 MiB [default: 65536].
    #[arg(long, env = "WARREN_MAX_FRAME_BYTES", global = true)]
    pub max_frame_bytes: Option<usize>,
    /// Largest message body delivered to a client, in bytes, 1024 to 128 MiB; one over
    /// it reaches the session as `error too_large` [default: 1048576].
    #[arg(long, env = "WARREN_MAX_DELIVERY_BYTES", global = true)]
    pub max_delivery_bytes: Option<usize>,
    /// Most subscriptions per session, at least 1 [default: 256].
    #[arg(long, env = "WARREN_MAX_SUBSCRIPTIONS", global = true)]
    pub max_subscriptions: Option<u32>,
    /// Unacknowledged deliveries per session [default: 256].
    #[arg(long, env = "WARREN_DELIVERY_WINDOW", global = true)]
    pub delivery_window: Option<u16>,
    /// Default request timeout, in ms [default: 10000].
    #[arg(long, env = "WARREN_REQUEST_TIMEOUT_MS", global = true)]
    pub request_timeout_ms: Option<u64>,
    /// Longest request timeout a client may ask for, in ms; at most 315360000000 (ten
    /// years, RabbitMQ's limit for a message expiration) [default: 300000].
    #[arg(long, env = "WARREN_MAX_REQUEST_TIMEOUT_MS", global = true)]
    pub max_request_timeout_ms: Option<u64>,
    /// How long an unresumed session is kept in presence, in ms [default: 60000].
    #[arg(long, env = "WARREN_SESSION_EXPIRES_MS", global = true)]
    pub session_expires_ms: Option<u64>,
    /// Consecutive bad frames before closing with too_many_errors [default: 32].
    #[arg(long, env = "WARREN_MAX_CONSECUTIVE_ERRORS", global = true)]
    pub max_consecutive_errors: Option<u32>,
    /// Time to finish pending confirms on shutdown, in ms [default: 5000].
    #[arg(long, env = "WARREN_SHUTDOWN_GRACE_MS", global = true)]
    pub shutdown_grace_ms: Option<u64>,
    /// Announcement period on warren.gateways, in ms; 0 = off, else at least 100
    /// [default: 5000].
    #[arg(long, env = "WARREN_ANNOUNCE_INTERVAL_MS", global = true)]
    pub announce_interval_ms: Option<u64>,
    /// Publish presence events on warren.presence [default: true].
    #[arg(long, env = "WARREN_PRESENCE", global = true, value_parser = BoolishValueParser::new())]
    pub presence: Option<bool>,
    /// Multi-tenant routing on or off (`[tenants] enabled`; the tenants, their types
    /// and the routed channels are set in the file) [default: false].
    #[arg(long, env = "WARREN_TENANTS", global = true, value_parser = BoolishValueParser::new())]
    pub tenants: Option<bool>,
    /// The tenant of every session with auth mode `none` (`[tenants] default`).
    #[arg(long, env = "WARREN_TENANTS_DEFAULT", global = true)]
    pub tenants_default: Option<String>,
    /// Unconfirmed publishes per connection before its socket is no longer read
    /// [default: 1024].
    #[arg(long, env = "WARREN_MAX_PENDING_CONFIRMS", global = true)]
    pub max_pending_confirms: Option<usize>,
    /// How long a publish waits for RabbitMQ to come back, in ms, at least 100
    /// [default: 5000].
    #[arg(long, env = "WARREN_BROKER_WAIT_MS", global = true)]
    pub broker_wait_ms: Option<u64>,
    /// How long to keep trying to reach RabbitMQ at start, in ms, for a broker starting
    /// beside the gateway; 0 = fail at once [default: 30000].
    #[arg(long, env = "WARREN_BROKER_START_WAIT_MS", global = true)]
    pub broker_start_wait_ms: Option<u64>,
    /// How long one connection attempt to one RabbitMQ URI may take (TCP, TLS, AMQP
    /// handshake, channels) before the next URI is tried, in ms, at least 100
    /// [default: 10000].
    #[arg(long, env = "WARREN_AMQP_CONNECT_TIMEOUT_MS", global = true)]
    pub amqp_connect_timeout_ms: Option<u64>,
    /// Message TTL of the IN_<CHANNEL> queues in ms, 0 = none, at most 315360000000
    /// (ten years, RabbitMQ's limit); per channel in the file's
    /// [channel_options.<name>] [default: 0].
    #[arg(long, env = "WARREN_MESSAGE_TTL_MS", global = true)]
    pub message_ttl_ms: Option<u64>,
    /// Close (4500) a connection that has opened no session within this many ms
    /// [default: 10000].
    #[arg(long, env = "WARREN_HELLO_TIMEOUT_MS", global = true)]
    pub hello_timeout_ms: Option<u64>,
    /// Most messages per IN_<CHANNEL> queue, 0 = no bound [default: 100000].
    #[arg(long, env = "WARREN_INBOUND_MAX_LENGTH", global = true)]
    pub inbound_max_length: Option<u64>,
    /// Most bytes per IN_<CHANNEL> queue, 0 = no bound [default: 1073741824].
    #[arg(long, env = "WARREN_INBOUND_MAX_BYTES", global = true)]
    pub inbound_max_bytes: Option<u64>,
    /// listen(2) backlog of each listener [default: 4096].
    #[arg(long, env = "WARREN_LISTEN_BACKLOG", global = true)]
    pub listen_backlog: Option<u32>,
    /// Time for a client to send each request's headers (on a kept-alive connection
    /// from the previous response), in ms [default: 10000].
    #[arg(long, env = "WARREN_HEADER_READ_TIMEOUT_MS", global = true)]
    pub header_read_timeout_ms: Option<u64>,
    /// Admin listener for /healthz, /metrics and /services (then not on the WebSocket
    /// listeners), e.g. 127.0.0.1:9090 [default: none].
    #[arg(long, env = "WARREN_ADMIN_LISTEN", global = true)]
    pub admin_listen: Option<SocketAddr>,
    /// Open connections per client IP address, 0 = no limit [default: 1000].
    #[arg(long, env = "WARREN_MAX_CONNECTIONS_PER_IP", global = true)]
    pub max_connections_per_ip: Option<u32>,
    /// New connections (and `GET /presence` calls) per IP address per second,
    /// 0 = no limit [default: 100].
    #[arg(long, env = "WARREN_MAX_NEW_CONNECTIONS_PER_IP_PER_S", global = true)]
    pub max_new_connections_per_ip_per_s: Option<u32>,
    /// Apply the per-IP limits to loopback addresses too [default: false].
    #[arg(long, env = "WARREN_IP_LIMITS_ON_LOOPBACK", global = true, value_parser = BoolishValueParser::new())]
    pub ip_limits_on_loopback: Option<bool>,
    /// Negotiate WebSocket compression (permessage-deflate) with clients that offer it;
    /// no context is kept between messages [default: false].
    #[arg(long, env = "WARREN_PERMESSAGE_DEFLATE", global = true, value_parser = BoolishValueParser::new())]
    pub permessage_deflate: Option<bool>,
    /// Open sessions per user, 0 = no limit [default: 100].
    #[arg(long, env = "WARREN_MAX_CONNECTIONS_PER_USER", global = true)]
    pub max_connections_per_user: Option<u32>,
    /// Frames per connection per second before its socket is read more slowly (and
    /// HTTP API calls per second of one user's token), 0 = no limit [default: 10000].
    #[arg(long, env = "WARREN_MAX_FRAMES_PER_S", global = true)]
    pub max_frames_per_s: Option<u32>,
    /// Requests per connection awaiting their reply (and HTTP API calls in progress of
    /// one user's token) [default: 1000].
    #[arg(long, env = "WARREN_MAX_PENDING_REQUESTS", global = true)]
    pub max_pending_requests: Option<usize>,
    /// Stream readers open at once for sessions resuming from before a hub's ring
    /// (shared and own; each an AMQP channel; with consumer_channels at most 1792); one
    /// more waits for one to close [default: 256].
    #[arg(long, env = "WARREN_MAX_STREAM_READERS", global = true)]
    pub max_stream_readers: Option<usize>,
    /// Sessions of one user reading behind a hub's ring at once; one more waits for
    /// one of them [default: 32].
    #[arg(long, env = "WARREN_MAX_STREAM_READERS_PER_USER", global = true)]
    pub max_stream_readers_per_user: Option<usize>,
    /// Authentication mode: none (development only), jwt (a signed token; keys in the
    /// file's [auth.jwt]) or service (an auth service on RabbitMQ; the file's
    /// [auth.service]) [default: none].
    #[arg(long, env = "WARREN_AUTH_MODE", global = true)]
    pub auth_mode: Option<AuthMode>,
    /// HMAC secret of jwt mode (at least 32 bytes); the file's auth.jwt.secret.
    #[arg(
        long,
        env = "WARREN_AUTH_JWT_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub auth_jwt_secret: Option<String>,
    /// File holding the HMAC secret of jwt mode.
    #[arg(long, env = "WARREN_AUTH_JWT_SECRET_FILE", global = true)]
    pub auth_jwt_secret_file: Option<PathBuf>,
    /// Origins allowed to open a WebSocket (exact, or https://*.example.com);
    /// repeatable [default: any].
    #[arg(
        long,
        env = "WARREN_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub allowed_origins: Vec<String>,
    /// Serve the external HTTP API (POST /external/{channel}, /publish,
    /// /request/{channel}) [default: false].
    #[arg(long, env = "WARREN_HTTP_API_ENABLED", global = true, value_parser = BoolishValueParser::new())]
    pub http_api_enabled: Option<bool>,
    /// Address of the HTTP API's own listener [default: beside /ws on every listener
    /// serving all channels].
    #[arg(long, env = "WARREN_HTTP_API_LISTEN", global = true)]
    pub http_api_listen: Option<SocketAddr>,
    /// HTTP API keys (Authorization: Bearer <key>); repeatable, or comma-separated
    /// (on the command line too: a key cannot hold a comma); the environment keeps
    /// them out of the process list [default: none].
    #[arg(
        long,
        env = "WARREN_HTTP_API_KEYS",
        value_delimiter = ',',
        global = true,
        hide_env_values = true
    )]
    pub http_api_keys: Vec<String>,
    /// Accept tokens verified as auth.mode = "jwt" does on the HTTP API, with their
    /// permissions [default: false].
    #[arg(long, env = "WARREN_HTTP_API_ACCEPT_JWT", global = true, value_parser = BoolishValueParser::new())]
    pub http_api_accept_jwt: Option<bool>,
    /// Largest HTTP API request body, in bytes [default: 65536].
    #[arg(long, env = "WARREN_HTTP_API_MAX_BODY_BYTES", global = true)]
    pub http_api_max_body_bytes: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("warren-gateway").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_serve_the_four_channels_on_port_4000() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.channels, ["chat", "voice", "tickets", "echo"]);
        assert_eq!(c.listen[0].bind.port(), 4000);
        // Auth is off by default: nobody beyond this machine gets in by default.
        assert_eq!(c.auth.mode, AuthMode::None);
        assert!(
            c.listen.iter().all(|l| l.bind.ip().is_loopback()),
            "{:?}",
            c.listen
        );
        assert_eq!(c.max_frame_bytes, 65536);
        assert_eq!(c.max_delivery_bytes, 1024 * 1024);
        assert_eq!(c.hard_frame_bytes(), 1024 * 1024);
    }

    #[test]
    fn a_toml_file_changes_only_what_it_names() {
        let c = Config::from_toml(
            r#"
            namespace = "prod"
            channels = ["chat", "voice"]
            [[listen]]
            bind = "127.0.0.1:4001"
            channel = "voice"
            [[listen]]
            bind = "127.0.0.1:4000"
            "#,
            "test.toml",
        )
        .unwrap();
        assert_eq!(c.namespace, "prod");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.listen[0].channel.as_deref(), Some("voice"));
        assert_eq!(c.listen[1].channel, None);
        assert_eq!(c.heartbeat_ms, 15_000);
        c.validate().unwrap();
    }

    #[test]
    fn ttls_and_request_timeouts_stop_at_rabbitmqs_ten_years() {
        let at = |toml: &str| Config::from_toml(toml, "test").unwrap().validate();
        let ten_years = MAX_TTL_MS;
        at(&format!("message_ttl_ms = {ten_years}")).unwrap();
        at(&format!("max_request_timeout_ms = {ten_years}")).unwrap();
        for (toml, field) in [
            (
                format!("message_ttl_ms = {}", ten_years + 1),
                "message_ttl_ms",
            ),
            (
                format!("max_request_timeout_ms = {}", i64::MAX),
                "max_request_timeout_ms",
            ),
            (
                format!("[channel_options.echo]\nmessage_ttl_ms = {}", ten_years + 1),
                "channel_options.echo.message_ttl_ms",
            ),
        ] {
            let err = at(&toml).unwrap_err().to_string();
            assert!(
                err.contains(field) && err.contains("ten years"),
                "{toml}: {err}"
            );
        }
    }

    /// A jwt configuration with a `jwks_url` and `setting` (one `key = value` line of
    /// `[auth.jwt]`), validated.
    fn jwks_with(setting: &str) -> Result<(), GatewayError> {
        Config::from_toml(
            &format!(
                "[auth]\nmode = \"jwt\"\n[auth.jwt]\n\
                 jwks_url = \"https://issuer.example/.well-known/jwks.json\"\n{setting}"
            ),
            "test",
        )
        .unwrap()
        .validate()
    }

    #[test]
    fn jwks_refetches_cannot_be_unlimited() {
        let at = |refresh: u64| jwks_with(&format!("jwks_refresh_min_s = {refresh}"));
        at(1).unwrap();
        let err = at(0).unwrap_err().to_string();
        assert!(
            err.contains("auth.jwt.jwks_refresh_min_s must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn jwks_keys_have_a_most_age_of_at_least_a_second() {
        let at = |age: u64| jwks_with(&format!("jwks_max_age_s = {age}"));
        assert_eq!(JwtConfig::default().jwks_max_age_s, 300);
        at(1).unwrap();
        let err = at(0).unwrap_err().to_string();
        assert!(
            err.contains("auth.jwt.jwks_max_age_s must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn replies_come_through_the_stream_unless_direct_is_asked_for() {
        assert_eq!(Config::default().request_replies, RequestReplies::Stream);
        let c = Config::from_toml("request_replies = \"direct\"", "test").unwrap();
        assert_eq!(c.request_replies, RequestReplies::Direct);
        assert!(Config::from_toml("request_replies = \"queue\"", "test").is_err());
    }

    #[test]
    fn the_example_config_in_the_repo_is_valid() {
        let c =
            Config::from_toml(include_str!("../warren-gateway.example.toml"), "example").unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.len(), 4);
        // Two gateways started from copies of it get node names of their own.
        let other =
            Config::from_toml(include_str!("../warren-gateway.example.toml"), "example").unwrap();
        assert_ne!(c.node, other.node);
        // Without auth, the example lets nobody beyond this machine in.
        assert_eq!(c.auth.mode, AuthMode::None);
        assert!(
            c.listen.iter().all(|l| l.bind.ip().is_loopback()),
            "{:?}",
            c.listen
        );
    }

    /// Every key path of `value` (`auth.jwt.leeway_s`, `listen.bind`), a name under
    /// `channel_options` or `tenants.tenant` written `*`.
    fn key_paths(value: &toml::Value, at: &str, out: &mut std::collections::BTreeSet<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let k = match at {
                        "channel_options" | "tenants.tenant" => "*",
                        _ => k,
                    };
                    let path = if at.is_empty() {
                        k.to_string()
                    } else {
                        format!("{at}.{k}")
                    };
                    out.insert(path.clone());
                    key_paths(v, &path, out);
                }
            }
            toml::Value::Array(items) => {
                for item in items {
                    key_paths(item, at, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn the_example_config_shows_every_option_where_uncommenting_it_works() {
        // A commented-out setting (`# key = value`, `# [table]`), uncommented, is what
        // a reader gets who uncomments it: it must land in its own table.
        let setting = |line: &str| {
            let name = |c: char| c.is_ascii_lowercase() || c == '_';
            let header = line.starts_with('[')
                && line.ends_with(']')
                && line
                    .trim_matches(['[', ']'])
                    .chars()
                    .all(|c| name(c) || c == '.');
            let key = line
                .split_once(" = ")
                .is_some_and(|(k, _)| !k.is_empty() && k.chars().all(name));
            header || key
        };
        let uncommented: Vec<&str> = include_str!("../warren-gateway.example.toml")
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if setting(rest) => rest,
                _ => l,
            })
            .collect();
        let shown = Config::from_toml(&uncommented.join("\n"), "example, uncommented")
            .unwrap_or_else(|e| panic!("{e}"));
        // Every option set, the optional ones too.
        let mut every = Config::default();
        every.listen[0].channel = Some("chat".into());
        every.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 9090)));
        every.auth.token_cookie = Some("c".into());
        let jwt = &mut every.auth.jwt;
        jwt.secret = Some("s".into());
        jwt.secret_file = Some("f".into());
        jwt.jwks_file = Some("f".into());
        jwt.jwks_url = Some("https://x".into());
        jwt.issuer = Some("i".into());
        jwt.audience = Some("a".into());
        every.http_api.listen = Some(SocketAddr::from(([127, 0, 0, 1], 4100)));
        every.tenants.default = Some("acme".into());
        every.tenants.tenant.insert(
            "acme".into(),
            TenantOptions {
                types: vec!["t".into()],
            },
        );
        every.channel_options.insert(
            "echo".into(),
            ChannelOptions {
                message_ttl_ms: Some(1),
                stream_max_age: Some("1h".into()),
                stream_max_bytes: Some(1),
            },
        );
        let paths = |c: &Config| {
            let mut out = std::collections::BTreeSet::new();
            key_paths(&toml::Value::try_from(c).unwrap(), "", &mut out);
            out
        };
        let missing: Vec<String> = paths(&every).difference(&paths(&shown)).cloned().collect();
        assert!(missing.is_empty(), "not in the example: {missing:?}");
    }

    #[test]
    fn help_names_every_auth_mode_every_topology_action_and_the_file_only_settings() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let auth = cli
            .get_arguments()
            .find(|a| a.get_long() == Some("auth-mode"))
            .unwrap();
        let help = auth.get_help().unwrap().to_string();
        for mode in AuthMode::value_variants() {
            let name = mode.to_possible_value().unwrap();
            assert!(help.contains(name.get_name()), "{help}");
        }
        let topology = cli.find_subcommand("topology").unwrap();
        let about = topology.get_about().unwrap().to_string();
        for action in topology.get_subcommands() {
            assert!(about.contains(action.get_name()), "{about}");
        }
        let long = cli.get_long_about().unwrap().to_string();
        for file_only in [
            "auth.token_cookie",
            "[auth.jwt]",
            "[auth.service]",
            "[tenants]",
            "[channel_options.",
            "warren-gateway.example.toml",
        ] {
            assert!(long.contains(file_only), "{file_only}: {long}");
        }
    }

    #[test]
    fn every_config_option_has_a_flag_documented_in_help() {
        use clap::CommandFactory;
        let table = toml::Value::try_from(Config::default()).unwrap();
        let flags: Vec<String> = Cli::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        let help = Cli::command().render_long_help().to_string();
        let mut keys: Vec<String> = table.as_table().unwrap().keys().cloned().collect();
        // `[http_api]` options are flags of their own: `--http-api-<option>` (the
        // `api_` of `api_keys` left out).
        let api = Config {
            http_api: HttpApiConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 4100))),
                ..HttpApiConfig::default()
            },
            ..Config::default()
        };
        let api = toml::Value::try_from(api.http_api).unwrap();
        keys.extend(
            api.as_table()
                .unwrap()
                .keys()
                .map(|k| format!("http_api_{}", k.strip_prefix("api_").unwrap_or(k))),
        );
        for key in keys {
            if key == "auth" || key == "channel_options" || key == "http_api" {
                continue;
            }
            let flag = key.replace('_', "-");
            assert!(flags.contains(&flag), "no --{flag} flag");
            assert!(
                help.contains(&format!("WARREN_{}", key.to_uppercase())),
                "{key}"
            );
        }
    }

    #[test]
    fn the_tenants_demo_config_is_valid_and_routes_two_tenants_with_two_types() {
        let c = Config::from_toml(
            include_str!("../warren-gateway.tenants-demo.toml"),
            "tenants demo",
        )
        .unwrap();
        c.validate().unwrap();
        let r = c.tenants.routing();
        assert_eq!(r.channels, ["scan"]);
        assert_eq!(r.tenants.len(), 2);
        assert!(r.tenants.iter().all(|t| t.types == ["delta", "full"]));
        assert!(!Config::default().tenants.enabled, "off by default");
    }

    #[test]
    fn tenant_mode_refuses_a_routed_channel_that_is_not_served_and_bad_names() {
        let mut c = Config::default();
        c.tenants.enabled = true;
        c.tenants.channels = vec!["scan".into()];
        assert!(c.validate().unwrap_err().to_string().contains("scan"));
        c.tenants.channels = vec!["chat".into()];
        c.tenants
            .tenant
            .insert("a.b".into(), TenantOptions::default());
        assert!(c.validate().is_err());
        c.tenants.tenant.clear();
        c.tenants.default = Some("x y".into());
        assert!(c.validate().is_err());
        c.tenants.default = Some("acme".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not one of the tenants"));
        c.tenants
            .tenant
            .insert("acme".into(), TenantOptions::default());
        c.validate().unwrap();
    }

    #[test]
    fn a_type_header_clients_may_not_send_is_refused() {
        let mut c = Config::default();
        c.tenants.enabled = true;
        c.tenants.default = Some("acme".into());
        c.tenants.channels = vec!["chat".into()];
        c.tenants.tenant.insert(
            "acme".into(),
            TenantOptions {
                types: vec!["pdf".into()],
            },
        );
        for ok in ["type", "doc-kind", "App.Type_2"] {
            c.tenants.type_header = ok.into();
            c.validate().unwrap();
        }
        for refused in [
            "x-type",
            "X-Kind",
            "priority",
            "content_type",
            "CC",
            "a b",
            "ty/pe",
        ] {
            c.tenants.type_header = refused.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("type_header") && e.contains(refused),
                "{refused}: {e}"
            );
        }
    }

    #[test]
    fn tenant_mode_with_auth_none_needs_a_default_tenant() {
        let mut c = Config::default();
        assert_eq!(c.auth.mode, AuthMode::None);
        c.tenants.enabled = true;
        c.tenants.channels = vec!["chat".into()];
        c.tenants
            .tenant
            .insert("acme".into(), TenantOptions::default());
        // Valid for `topology` commands; refused to serve.
        c.validate().unwrap();
        let e = c.check_to_serve().unwrap_err().to_string();
        assert!(
            e.contains("tenants.default") && e.contains("--tenants-default"),
            "{e}"
        );
        // Also with no routed channel: every write of a session without a tenant is
        // refused in tenant mode, not only the routed ones.
        c.tenants.channels.clear();
        assert!(c.check_to_serve().is_err());
        c.tenants.default = Some("acme".into());
        c.check_to_serve().unwrap();
        // In the other modes the tenant comes from the token.
        c.tenants.default = None;
        c.auth.mode = AuthMode::Jwt;
        c.auth.jwt.secret = Some("s".repeat(32));
        c.validate().unwrap();
        c.check_to_serve().unwrap();
        c.auth.mode = AuthMode::Service;
        c.check_to_serve().unwrap();
    }

    #[test]
    fn channel_pools_past_rabbitmqs_channels_per_connection_are_refused_naming_the_option() {
        let mut c = Config {
            publisher_channels: MAX_PUBLISHER_CHANNELS,
            ..Config::default()
        };
        c.validate().unwrap();
        c.publisher_channels = MAX_PUBLISHER_CHANNELS + 1;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("publisher_channels"));
        // Far past it, the pool's allocation panicked at start.
        c.publisher_channels = 1 << 60;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("publisher_channels"));

        let mut c = Config::default();
        c.max_stream_readers = MAX_CONSUMING_CHANNELS - c.consumer_channels;
        c.validate().unwrap();
        c.max_stream_readers += 1;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("max_stream_readers") && e.contains("consumer_channels"),
            "{e}"
        );
        c.max_stream_readers = usize::MAX;
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_jwt_leeway_past_a_day_is_refused() {
        let mut c = Config::default();
        c.auth.jwt.leeway_s = MAX_JWT_LEEWAY_S;
        c.validate().unwrap();
        // Past the epoch's seconds, jsonwebtoken's `now - leeway` wrapped: every
        // token was refused as expired.
        c.auth.jwt.leeway_s = 10_000_000_000;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("auth.jwt.leeway_s"));
    }

    #[test]
    fn two_listeners_on_one_address_are_refused_naming_both() {
        let ws = SocketAddr::from(([127, 0, 0, 1], 4000));
        let mut c = Config::default();
        assert_eq!(c.listen[0].bind, ws);
        c.admin_listen = Some(ws);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("admin_listen") && e.contains("listen"), "{e}");

        let mut c = Config::default();
        c.listen.push(ListenerConfig {
            bind: ws,
            channel: Some("voice".into()),
        });
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("127.0.0.1:4000"));

        let mut c = Config::default();
        c.http_api.enabled = true;
        c.http_api.api_keys = vec!["k-1".into()];
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 9090)));
        c.http_api.listen = c.admin_listen;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("http_api.listen") && e.contains("admin_listen"),
            "{e}"
        );

        // A wildcard address takes the port on every address.
        let mut c = Config::default();
        c.listen[0].bind = SocketAddr::from(([0, 0, 0, 0], 4000));
        c.admin_listen = Some(ws);
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("admin_listen"));
        c.admin_listen = Some("[::]:4000".parse().unwrap());
        assert!(c.validate().is_err());
        c.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 4001)));
        c.validate().unwrap();

        // Port 0 (any free port) may repeat: tests bind several that way.
        let mut c = Config::default();
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        c.listen[0].bind = any;
        c.admin_listen = Some(any);
        c.validate().unwrap();
    }

    #[test]
    fn a_request_timeout_over_its_maximum_is_refused_with_both_values() {
        let o = cli(&["--max-request-timeout-ms", "5000"]).overrides;
        let mut c = Config::default();
        c.apply(&o);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("10000") && e.contains("5000"), "{e}");
    }

    #[test]
    fn the_http_api_is_off_by_default_and_needs_a_key_and_a_place_when_on() {
        assert!(!Config::default().http_api.enabled);
        let mut c = Config::default();
        c.http_api.enabled = true;
        assert!(c.validate().unwrap_err().to_string().contains("api_keys"));
        c.http_api.api_keys = vec!["k-1".into()];
        c.validate().unwrap();
        c.http_api.accept_jwt = true;
        assert!(c.validate().unwrap_err().to_string().contains("jwt"));
        c.http_api.accept_jwt = false;
        c.listen[0].channel = Some("chat".into());
        assert!(c.validate().is_err(), "no listener serves all channels");
        c.http_api.listen = Some(SocketAddr::from(([127, 0, 0, 1], 4100)));
        c.validate().unwrap();
        let o = cli(&["--http-api-enabled", "true", "--http-api-keys", "a,b"]).overrides;
        let mut c = Config::default();
        c.apply(&o);
        assert!(c.http_api.enabled);
        assert_eq!(c.http_api.api_keys, ["a", "b"]);
    }

    #[test]
    fn max_stream_readers_defaults_to_256_and_zero_is_refused() {
        let at = |text: &str| Config::from_toml(text, "test").unwrap().validate();
        assert_eq!(Config::default().max_stream_readers, 256);
        at("max_stream_readers = 1").unwrap();
        let err = at("max_stream_readers = 0").unwrap_err().to_string();
        assert!(
            err.contains("max_stream_readers must be at least 1"),
            "{err}"
        );
        assert_eq!(Config::default().max_stream_readers_per_user, 32);
        at("max_stream_readers_per_user = 1").unwrap();
        let err = at("max_stream_readers_per_user = 0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_stream_readers_per_user must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn a_max_frame_bytes_that_would_overflow_and_a_broker_wait_shorter_than_a_round_trip_are_refused(
    ) {
        let at = |text: &str| Config::from_toml(text, "test").unwrap().validate();
        at(&format!("max_frame_bytes = {MAX_FRAME_BYTES_LIMIT}")).unwrap();
        for too_big in [MAX_FRAME_BYTES_LIMIT + 1, 1 << 40, i64::MAX as usize] {
            let err = at(&format!("max_frame_bytes = {too_big}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_frame_bytes must be at most"), "{err}");
        }
        at(&format!("max_delivery_bytes = {MAX_DELIVERY_BYTES_LIMIT}")).unwrap();
        at("max_delivery_bytes = 1024").unwrap();
        for bad in [0, 1023, MAX_DELIVERY_BYTES_LIMIT + 1] {
            let err = at(&format!("max_delivery_bytes = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_delivery_bytes must be 1024 to"), "{err}");
        }
        at("announce_interval_ms = 0").unwrap();
        at("announce_interval_ms = 100").unwrap();
        for short in [1, 5, 99] {
            let err = at(&format!("announce_interval_ms = {short}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("announce_interval_ms must be 0 (off) or at least 100"),
                "{err}"
            );
        }
        at("broker_wait_ms = 100").unwrap();
        for short in [0, 1, 99] {
            let err = at(&format!("broker_wait_ms = {short}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("broker_wait_ms must be at least 100"), "{err}");
        }
        at("amqp_connect_timeout_ms = 100").unwrap();
        for short in [0, 1, 99] {
            let err = at(&format!("amqp_connect_timeout_ms = {short}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("amqp_connect_timeout_ms must be at least 100"),
                "{err}"
            );
        }
    }

    #[test]
    fn max_subscriptions_of_zero_is_refused_since_no_subscription_could_be_held() {
        let at = |n: u32| {
            Config::from_toml(&format!("max_subscriptions = {n}"), "test")
                .unwrap()
                .validate()
        };
        at(1).unwrap();
        let err = at(0).unwrap_err().to_string();
        assert!(
            err.contains("max_subscriptions must be at least 1"),
            "{err}"
        );
    }

    #[test]
    fn a_token_cookie_needs_an_origin_list() {
        let mut c = Config::default();
        c.auth.token_cookie = Some("warren_token".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("auth.allowed_origins"), "{e}");
        c.auth.allowed_origins = vec!["https://app.example.com".into()];
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_toml_options_are_refused() {
        assert!(Config::from_toml("heartbeat = 3", "x.toml").is_err());
    }

    #[test]
    fn flags_override_the_file_and_listen_parses_a_pinned_channel() {
        let mut c = Config::from_toml("namespace = \"file\"\nheartbeat_ms = 500", "x").unwrap();
        let o = cli(&[
            "--namespace",
            "flag",
            "--listen",
            "127.0.0.1:4001=voice",
            "--listen",
            "127.0.0.1:0",
            "--channels",
            "chat,voice",
            "--queue-type",
            "classic",
        ])
        .overrides;
        c.apply(&o);
        assert_eq!(c.namespace, "flag");
        assert_eq!(c.heartbeat_ms, 500);
        assert_eq!(c.channels, ["chat", "voice"]);
        assert_eq!(c.queue_type, QueueType::Classic);
        assert_eq!(
            c.listen,
            vec![
                ListenerConfig {
                    bind: "127.0.0.1:4001".parse().unwrap(),
                    channel: Some("voice".into())
                },
                ListenerConfig {
                    bind: "127.0.0.1:0".parse().unwrap(),
                    channel: None
                },
            ]
        );
        c.validate().unwrap();
    }

    #[test]
    fn environment_overrides_the_file_and_flags_override_the_environment() {
        // Variables no other test looks at, so parallel tests are not disturbed.
        std::env::set_var("WARREN_HUB_BUFFER_MESSAGES", "77");
        std::env::set_var("WARREN_MAX_SUBSCRIPTIONS", "5");
        let o = cli(&["--max-subscriptions", "9"]).overrides;
        std::env::remove_var("WARREN_HUB_BUFFER_MESSAGES");
        std::env::remove_var("WARREN_MAX_SUBSCRIPTIONS");
        let mut c =
            Config::from_toml("hub_buffer_messages = 10\nmax_subscriptions = 3", "x").unwrap();
        c.apply(&o);
        assert_eq!(c.hub_buffer_messages, 77, "env beats the file");
        assert_eq!(c.max_subscriptions, 9, "the flag beats env");
    }

    #[test]
    fn a_jwt_secret_or_secret_file_given_by_flag_replaces_both_of_the_files() {
        let file = "[auth.jwt]\nsecret = \"from-the-file-0123456789abcdef01234\"";
        let mut c = Config::from_toml(file, "x").unwrap();
        c.apply(&cli(&["--auth-jwt-secret-file", "/run/secret"]).overrides);
        assert_eq!(c.auth.jwt.secret, None);
        assert_eq!(c.auth.jwt.secret_file, Some(PathBuf::from("/run/secret")));
        let file = "[auth.jwt]\nsecret_file = \"/etc/old\"";
        let mut c = Config::from_toml(file, "x").unwrap();
        c.apply(&cli(&["--auth-jwt-secret", "new"]).overrides);
        assert_eq!(c.auth.jwt.secret.as_deref(), Some("new"));
        assert_eq!(c.auth.jwt.secret_file, None);
        // Neither given: the file's stay.
        let mut c = Config::from_toml(file, "x").unwrap();
        c.apply(&cli(&[]).overrides);
        assert_eq!(c.auth.jwt.secret_file, Some(PathBuf::from("/etc/old")));
        // A secret from the environment and a file by flag: the flag's (a variable no
        // other test reads, so parallel tests are not disturbed).
        std::env::set_var("WARREN_AUTH_JWT_SECRET", "from-the-environment");
        let o = cli(&["--auth-jwt-secret-file", "/run/rotated"]).overrides;
        let mut c = Config::default();
        c.apply(&o);
        std::env::remove_var("WARREN_AUTH_JWT_SECRET");
        assert_eq!(c.auth.jwt.secret, None);
        assert_eq!(c.auth.jwt.secret_file, Some(PathBuf::from("/run/rotated")));
        // Both by flag: kept, and refused when the keys are loaded.
        let o = cli(&["--auth-jwt-secret", "s", "--auth-jwt-secret-file", "/f"]).overrides;
        let mut c = Config::default();
        c.apply(&o);
        assert!(c.auth.jwt.secret.is_some() && c.auth.jwt.secret_file.is_some());
    }

    #[test]
    fn settings_of_a_feature_that_is_off_are_named() {
        assert!(Config::default().unused_settings().is_empty());
        let o = cli(&["--tenants-default", "acme", "--http-api-keys", "k"]).overrides;
        let mut c = Config::default();
        c.apply(&o);
        c.auth.jwt.secret = Some("s".repeat(32));
        let unused = c.unused_settings();
        assert_eq!(unused.len(), 3, "{unused:?}");
        assert!(unused[0].contains("tenants.enabled"), "{unused:?}");
        assert!(unused[1].contains("http_api.enabled"), "{unused:?}");
        assert!(unused[2].contains("auth.mode is \"none\""), "{unused:?}");
        // Each in use: nothing named.
        c.tenants.enabled = true;
        c.http_api.enabled = true;
        c.auth.mode = AuthMode::Jwt;
        assert!(c.unused_settings().is_empty());
    }

    #[test]
    fn environment_variables_of_removed_options_are_refused_by_name() {
        let env = |pairs: &[(&str, &str)]| {
            refuse_removed_env(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
            )
        };
        for name in [
            "WARREN_SESSION_MAX_LENGTH",
            "WARREN_SESSION_TAKEOVER_MS",
            "WARREN_OVERFLOW_CHECK_MS",
            "WARREN_OVERFLOW_RECORD_MAX",
            "WARREN_OUTBOUND",
        ] {
            let e = env(&[("PATH", "/bin"), (name, "10")])
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{name}=10")), "{e}");
            assert!(e.contains("removed"), "{e}");
        }
        env(&[("WARREN_OUTBOUND", "stream"), ("WARREN_NAMESPACE", "x")]).unwrap();
        env(&[("SESSION_MAX_LENGTH", "1"), ("WARREN_HEARTBEAT_MS", "1")]).unwrap();
    }

    #[test]
    fn the_removed_queues_mode_is_refused_by_name_and_stream_is_accepted() {
        let e = Config::from_toml("outbound = \"queues\"\n", "gw.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gw.toml"), "{e}");
        assert!(e.contains("outbound"), "{e}");
        assert!(e.contains("removed"), "{e}");
        for key in [
            "session_max_length = 10",
            "session_takeover_ms = 1",
            "overflow_check_ms = 1",
            "overflow_record_max = 1",
            "outbound = \"other\"",
        ] {
            let e = Config::from_toml(key, "x").unwrap_err().to_string();
            assert!(e.contains(key.split(' ').next().unwrap()), "{e}");
            assert!(e.contains("removed"), "{e}");
        }
        let c = Config::from_toml("outbound = \"stream\"\nmax_subscriptions = 3\n", "x").unwrap();
        assert_eq!(c.max_subscriptions, 3);
        // Other errors keep their usual form.
        assert!(matches!(
            Config::from_toml("outbound = \"stream\"\nnope = 1\n", "x"),
            Err(GatewayError::ConfigParse { .. })
        ));
        let flag = Cli::try_parse_from(["warren-gateway", "--outbound", "queues"]);
        assert!(flag.is_err(), "the flag is gone");
    }

    #[test]
    fn topology_subcommands_accept_global_flags_after_them() {
        let c = cli(&["topology", "print", "--namespace", "x"]);
        assert!(matches!(
            c.command,
            Some(Command::Topology {
                action: TopologyAction::Print
            })
        ));
        assert_eq!(c.overrides.namespace.as_deref(), Some("x"));
        assert!(cli(&[]).command.is_none());
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = Config::default();
        c.listen[0].channel = Some("nope".into());
        assert!(c.validate().unwrap_err().to_string().contains("nope"));
        let mut c = Config::default();
        c.channels.push("chat".into());
        assert!(c.validate().is_err());
        let c = Config {
            channels: vec!["a.b".into()],
            ..Config::default()
        };
        assert!(c.validate().is_err());
        let c = Config {
            amqp_uri: vec!["http://nope".into()],
            ..Config::default()
        };
        assert!(c.validate().is_err());
        // Channels differing only in case would share IN_CHAT.
        let mut c = Config::default();
        c.channels.push("Chat".into());
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("share one queue"), "{err}");
        let mut c = Config::default();
        c.auth.mode = AuthMode::Service;
        c.auth.service.channel = "CHAT".into();
        assert!(
            c.validate().is_err(),
            "the auth queue would be a client channel's"
        );
        // A zero-byte outbound stream keeps nothing to resume from.
        let c = Config {
            stream_max_bytes: 0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("stream_max_bytes"));
        // Each part within its limit, the composed name past AMQP's 255 bytes.
        let long = "a".repeat(128);
        let c = Config {
            namespace: long.clone(),
            channels: vec![long.clone()],
            ..Config::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("AMQP allows at most 255"), "{err}");
    }

    #[test]
    fn a_channel_ttl_overrides_the_global_one_and_must_name_a_served_channel() {
        let c = Config::from_toml(
            "message_ttl_ms = 1000\n[channel_options.echo]\nmessage_ttl_ms = 300\n",
            "x",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.message_ttl_of("echo"), Some(300));
        assert_eq!(c.message_ttl_of("chat"), Some(1000));
        assert_eq!(Config::default().message_ttl_of("chat"), None);
        let c = Config::from_toml("[channel_options.nope]\nmessage_ttl_ms = 1\n", "x").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_channel_with_a_stream_setting_gets_a_stream_of_its_own() {
        let c = Config::from_toml(
            "stream_max_age = \"12h\"\n[channel_options.echo]\nstream_max_bytes = 1000\n",
            "x",
        )
        .unwrap();
        c.validate().unwrap();
        // What the channel does not set is the outbound stream's.
        assert_eq!(
            c.channel_streams(),
            [ChannelStream {
                channel: "echo".into(),
                max_age: "12h".into(),
                max_bytes: 1000,
            }]
        );
        let c = Config::from_toml("[channel_options.echo]\nmessage_ttl_ms = 5\n", "x").unwrap();
        assert!(c.channel_streams().is_empty(), "a TTL alone is no stream");
        let bad_age =
            Config::from_toml("[channel_options.echo]\nstream_max_age = \"7 days\"\n", "x")
                .unwrap();
        let err = bad_age.validate().unwrap_err().to_string();
        assert!(err.contains("channel_options.echo.stream_max_age"), "{err}");
        // RabbitMQ refuses a zero age (`invalid_max_age`).
        for age in ["0s", "00D"] {
            let zero = Config::from_toml(&format!("stream_max_age = \"{age}\"\n"), "x").unwrap();
            let err = zero.validate().unwrap_err().to_string();
            assert!(err.contains("positive number"), "{age}: {err}");
        }
        let ok = Config::from_toml("stream_max_age = \"10s\"\n", "x").unwrap();
        ok.validate().unwrap();
        let zero =
            Config::from_toml("[channel_options.echo]\nstream_max_bytes = 0\n", "x").unwrap();
        assert!(zero.validate().is_err());
    }

    #[test]
    fn at_most_max_positions_channels_have_a_stream_of_their_own() {
        let config = |n: usize| {
            let channels: Vec<String> = (0..n).map(|i| format!("\"c{i}\"")).collect();
            let options: String = (0..n)
                .map(|i| format!("[channel_options.c{i}]\nstream_max_bytes = 1000000\n"))
                .collect();
            Config::from_toml(
                &format!("channels = [{}]\n{options}", channels.join(",")),
                "x",
            )
            .unwrap()
        };
        let max = warren_protocol::positions::MAX_POSITIONS;
        config(max).validate().unwrap();
        let err = config(max + 1).validate().unwrap_err().to_string();
        assert!(
            err.contains("257 channels have a stream of their own"),
            "{err}"
        );
    }

    #[test]
    fn passwords_are_redacted_in_uris() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host"), "amqp://host");
    }
}
