//! Who a connection is and what it may do: a `hello` (or `refresh`) token verified into
//! an [`Identity`] by the configured [`AuthMode`], and the permission checks every frame
//! that names a target goes through. Pure: no IO after start-up (key files are read
//! once by [`Verifier::from_config`]), so every rule is unit-tested here.
//!
//! - `none` (development): the token, if any, is the user id, and that user may do
//!   everything. The gateway warns loudly when it runs like this on a non-loopback
//!   address.
//! - `jwt`: the token is a JSON Web Token signed by the app's backend (HS256/384/512
//!   with a shared secret, RS*/PS*/ES256/ES384/EdDSA with public keys from PEM files or
//!   a JWKS file). `exp` is required; `nbf`, `iss` and `aud` are checked when present or
//!   configured, with a leeway. `alg: none` and algorithm confusion (an HMAC token
//!   checked against a public key) are refused. The claims (PROTOCOL.md, "Tokens"):
//!
//! ```json
//! { "sub": "ada", "exp": 1767225600,
//!   "groups": ["room-1"], "topics": ["orders.*"],
//!   "channels": { "chat": ["publish", "subscribe"], "tickets": ["request"] },
//!   "tenant": "acme" }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use warren_protocol::amqp::validate_segment;

use crate::config::{AuthConfig, AuthMode, JwtConfig};
use crate::error::GatewayError;

/// What a session may do on one channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rights {
    /// `publish` (the SDK's `write`).
    pub publish: bool,
    /// `request` (the SDK's `writeAndWait`).
    pub request: bool,
    /// `subscribe` (broadcast, granted groups, own direct messages, granted topics).
    pub subscribe: bool,
}

impl Rights {
    /// Every right.
    pub const ALL: Rights = Rights {
        publish: true,
        request: true,
        subscribe: true,
    };
}

/// Something a frame asks to do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `publish` or a POC publish packet.
    Publish,
    /// `request`.
    Request,
    /// `subscribe` or a POC consume packet.
    Subscribe,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Request => "request",
            Action::Subscribe => "subscribe",
        }
    }
}

/// A verified identity: who the session's user is and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (`sub`); direct messages to this user reach this session.
    pub user: String,
    /// Groups the user may subscribe to and address; `*` grants every group.
    pub groups: Vec<String>,
    /// Per-channel rights; `None` grants every right on every channel. A `*` key
    /// applies to channels not named.
    pub channels: Option<BTreeMap<String, Rights>>,
    /// Topic patterns the user may subscribe within (AMQP topic syntax).
    pub topics: Vec<String>,
    /// The tenant the user belongs to, if the token names one.
    pub tenant: Option<String>,
    /// When the token stops being valid (seconds since the epoch); `None` never.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// Development mode (`auth.mode = "none"`): `user` may do everything.
    pub fn unrestricted(user: impl Into<String>) -> Identity {
        Identity {
            user: user.into(),
            groups: vec!["*".into()],
            channels: None,
            topics: vec!["#".into()],
            tenant: None,
            expires_at: None,
        }
    }

    /// Whether this identity may do `action` on `channel`.
    pub fn may(&self, action: Action, channel: &str) -> bool {
        let Some(map) = &self.channels else {
            return true;
        };
        let rights = map.get(channel).or_else(|| map.get("*"));
        rights.is_some_and(|r| match action {
            Action::Publish => r.publish,
            Action::Request => r.request,
            Action::Subscribe => r.subscribe,
        })
    }

    /// Whether this identity may subscribe to or address `group`.
    pub fn may_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == "*" || g == group)
    }

    /// Whether every routing key `pattern` can match is matched by one granted topic
    /// pattern: `orders.*` may subscribe `orders.created` and `orders.*`, not
    /// `orders.#` or `#`.
    pub fn may_topic(&self, pattern: &str) -> bool {
        let wanted: Vec<&str> = pattern.split('.').collect();
        self.topics.iter().any(|granted| {
            let granted: Vec<&str> = granted.split('.').collect();
            covers(&granted, &wanted)
        })
    }

    /// The refusal message for `action` on `channel`.
    pub fn refusal(&self, action: Action, channel: &str) -> String {
        format!(
            "user `{}` may not {} on channel `{channel}`",
            self.user,
            action.as_str()
        )
    }
}

/// Whether topic pattern `granted` matches every key that pattern `wanted` matches.
/// `*` is one word, `#` zero or more; a wildcard in `wanted` stands for any word(s),
/// so only an equal or wider wildcard in `granted` covers it.
///
/// A table of every pair of suffixes, filled from the ends: time and memory
/// |granted| × |wanted|. (Trying each split of a `#` recursively took time exponential
/// in the number of `#`s: a grant of ten `#`s against a client's 64-word pattern would
/// have held a worker thread for hours.)
fn covers(granted: &[&str], wanted: &[&str]) -> bool {
    let (g, w) = (granted.len(), wanted.len());
    // at[i][j]: granted[i..] covers wanted[j..].
    let mut at = vec![vec![false; w + 1]; g + 1];
    at[g][w] = true;
    for i in (0..g).rev() {
        for j in (0..=w).rev() {
            let next = j < w && at[i + 1][j + 1];
            at[i][j] = match granted[i] {
                "#" => at[i + 1][j] || (j < w && at[i][j + 1]),
                "*" => next && wanted[j] != "#",
                word => next && wanted[j] == word,
            };
        }
    }
    at[0][0]
}

/// Why a token was refused (sent to the client as `unauthorized`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token came with `hello` (nor in the upgrade's `Authorization` header or
    /// cookie).
    #[error("a token is required")]
    Missing,
    /// The token is past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// The token's `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The token names a key this gateway does not know.
    #[error("the token's key id `{0}` is not known")]
    UnknownKey(String),
    /// The token's algorithm is not one the gateway accepts.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// Anything else: bad signature, wrong `iss`/`aud`, bad claims, not a JWT.
    #[error("the token is invalid: {0}")]
    Invalid(String),
    /// The auth service refused the token (`auth.mode = "service"`).
    #[error("the auth service refused the token: {0}")]
    Denied(String),
    /// The auth service did not answer in time, or none is running: retry later.
    #[error("the auth service is unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// With a fraction too (RFC 7519's NumericDate), taken down to its second.
    #[serde(deserialize_with = "warren_protocol::auth::numeric_date")]
    exp: u64,
    #[serde(default)]
    groups: Vec<String>,
    /// Absent: every right; `null` is refused, not taken for absent (an issuer
    /// writing it means no rights).
    #[serde(default, deserialize_with = "warren_protocol::auth::present")]
    channels: Option<BTreeMap<String, Vec<ClaimRight>>>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ClaimRight {
    Publish,
    Request,
    Subscribe,
}

/// One verification key.
struct Key {
    kid: Option<String>,
    key: DecodingKey,
    /// The algorithms this key may verify (its family ∩ the configured ones).
    algorithms: Vec<Algorithm>,
}

/// Keys from `auth.jwt.jwks_url`, fetched again on an unknown `kid` and when older
/// than `max_age` (both rate-limited).
struct RemoteJwks {
    url: String,
    allowed: Vec<Algorithm>,
    min_interval: std::time::Duration,
    /// Past this age the keys held are fetched again (in the background): a key the
    /// issuer removed stops verifying. Only an unknown `kid` fetched before, and a
    /// leaked key withdrawn from the document kept verifying until a restart.
    max_age: std::time::Duration,
    keys: std::sync::RwLock<Arc<Vec<Key>>>,
    last_fetch: std::sync::Mutex<Option<std::time::Instant>>,
    /// When the keys held were fetched (the last fetch that succeeded).
    fetched_at: std::sync::Mutex<Option<std::time::Instant>>,
    fetches: std::sync::atomic::AtomicU64,
    /// The last fetch failed (the issuer unreachable, or its answer unreadable): a
    /// key id not held may be one it would have given.
    failing: std::sync::atomic::AtomicBool,
    /// Held through a fetch, by the fetch itself (not by the token that started it,
    /// whose request may be dropped meanwhile): a token naming the new key that arrives
    /// while a fetch is on its way waits for that fetch and is verified against its
    /// keys, instead of finding the interval taken and being refused for good.
    fetch_turn: Arc<tokio::sync::Mutex<()>>,
}

/// Turns tokens into identities, as configured.
pub struct Verifier {
    mode: AuthMode,
    keys: Vec<Key>,
    remote: Option<Arc<RemoteJwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway_s: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("mode", &self.mode)
            .field("keys", &self.keys.len())
            .finish()
    }
}

const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
const ED: &[Algorithm] = &[Algorithm::EdDSA];

impl Verifier {
    /// Reads the keys the configuration names (once, at start-up).
    ///
    /// # Errors
    /// [`GatewayError::Config`] when `jwt` mode has no usable key, a key file cannot be
    /// read or parsed, or an algorithm name is unknown.
    pub fn from_config(config: &AuthConfig) -> Result<Verifier, GatewayError> {
        let mut v = Verifier {
            mode: config.mode,
            keys: Vec::new(),
            remote: None,
            issuer: config.jwt.issuer.clone(),
            audience: config.jwt.audience.clone(),
            leeway_s: config.jwt.leeway_s,
        };
        if config.mode == AuthMode::Jwt {
            v.keys = load_keys(&config.jwt)?;
            if let Some(url) = &config.jwt.jwks_url {
                check_jwks_url(url, config.jwt.jwks_allow_http)?;
                v.remote = Some(Arc::new(RemoteJwks {
                    url: url.clone(),
                    allowed: allowed_algorithms(&config.jwt)?,
                    min_interval: std::time::Duration::from_secs(config.jwt.jwks_refresh_min_s),
                    max_age: std::time::Duration::from_secs(config.jwt.jwks_max_age_s),
                    keys: std::sync::RwLock::default(),
                    last_fetch: std::sync::Mutex::default(),
                    fetched_at: std::sync::Mutex::default(),
                    fetches: std::sync::atomic::AtomicU64::new(0),
                    failing: std::sync::atomic::AtomicBool::new(false),
                    fetch_turn: Arc::default(),
                }));
            }
        }
        Ok(v)
    }

    /// Fetches `auth.jwt.jwks_url` now (at start), if configured; a failure is logged
    /// and the keys are fetched again when a token needs them.
    pub async fn fetch_remote_keys(&self) {
        if let Some(remote) = &self.remote {
            let turn = remote.fetch_turn.clone().lock_owned().await;
            *remote.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(std::time::Instant::now());
            if let Err(e) = remote.fetch(turn).await {
                tracing::warn!(url = %remote.url, error = %e, "cannot fetch the JWKS document");
            }
        }
    }

    /// How often `jwks_url` was fetched (for tests and metrics).
    pub fn remote_fetches(&self) -> u64 {
        self.remote
            .as_ref()
            .map_or(0, |r| r.fetches.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// As [`Verifier::verify`], but a token naming a key id that no key has makes the
    /// gateway fetch `jwks_url` again (at most once per `jwks_refresh_min_s`) and try
    /// once more: keys rotate without a restart. Keys held longer than
    /// `jwks_max_age_s` are fetched again in the background (same limit) while they
    /// still verify this token: a key the issuer removed stops verifying once that
    /// fetch is in.
    ///
    /// # Errors
    /// As [`Verifier::verify`]; [`AuthError::Unavailable`] (retryable, not a refused
    /// token) for a key id not held while `jwks_url` cannot be fetched: at a start
    /// with the issuer unreachable, every client would otherwise be told its token is
    /// refused for good (`4501`) until the next fetch.
    pub async fn verify_fetching(
        &self,
        token: Option<&str>,
        anonymous: &str,
    ) -> Result<Identity, AuthError> {
        if let Some(remote) = &self.remote {
            remote.refresh_if_stale();
        }
        match self.verify(token, anonymous) {
            Err(AuthError::UnknownKey(kid)) => {
                let Some(remote) = &self.remote else {
                    return Err(AuthError::UnknownKey(kid));
                };
                let unavailable = |why: &str| {
                    AuthError::Unavailable(format!(
                        "the token's key id `{kid}` is not known and the issuer's JWKS \
                         document {why}; try again later"
                    ))
                };
                // One fetch at a time. After waiting for one, the keys it brought may
                // verify this token: at a rotation, every client reconnecting with the
                // new key's tokens arrives within the first fetch's time, and all but
                // the first were refused (`4501`, do not reconnect) for the interval.
                let before = remote.fetches.load(std::sync::atomic::Ordering::Relaxed);
                let turn = remote.fetch_turn.clone().lock_owned().await;
                match self.verify(token, anonymous) {
                    Err(AuthError::UnknownKey(_)) => {}
                    other => return other,
                }
                // A fetch ran while this token waited: its answer is this token's
                // too. Another fetch per waiter would make the tenth wait for ten
                // fetches of up to 5 s each with the issuer hanging.
                let waited_for_one =
                    remote.fetches.load(std::sync::atomic::Ordering::Relaxed) != before;
                if waited_for_one || !remote.may_fetch() {
                    return Err(if remote.failing() {
                        unavailable("could not be fetched at the last try")
                    } else {
                        AuthError::UnknownKey(kid)
                    });
                }
                if let Err(e) = remote.fetch(turn).await {
                    tracing::warn!(url = %remote.url, error = %e, "cannot fetch the JWKS document");
                    return Err(unavailable("cannot be fetched"));
                }
                self.verify(token, anonymous)
            }
            other => other,
        }
    }

    /// The mode in force.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Verifies `token` into an identity. In `none` mode the token (or, without one,
    /// `anonymous`) is the user id.
    ///
    /// # Errors
    /// [`AuthError`] saying why the token was refused.
    pub fn verify(&self, token: Option<&str>, anonymous: &str) -> Result<Identity, AuthError> {
        match self.mode {
            AuthMode::None => {
                let user = token.unwrap_or(anonymous);
                validate_segment("token", user).map_err(|e| AuthError::Invalid(e.to_string()))?;
                // Reserved as in the other modes ([`identity_of`]): its message ids
                // (`http-api:<id>`) would meet the HTTP API's in services' duplicate
                // windows.
                if user == crate::http_api::API_USER {
                    return Err(AuthError::Invalid(format!(
                        "`{user}` is the HTTP API keys' user"
                    )));
                }
                Ok(Identity::unrestricted(user))
            }
            AuthMode::Jwt => self.verify_jwt(token.ok_or(AuthError::Missing)?),
            // Asked over RabbitMQ by `auth_service::AuthClient`, not here.
            AuthMode::Service => Err(AuthError::Unavailable(
                "service mode is answered by the auth client".into(),
            )),
        }
    }

    fn verify_jwt(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > 16 * 1024 {
            return Err(AuthError::Invalid("longer than 16 KiB".into()));
        }
        // Refuses `alg: none` (not an Algorithm) and malformed headers.
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let remote = self
            .remote
            .as_ref()
            .map(|r| r.keys.read().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        let unknown =
            || AuthError::UnknownKey(short_kid(header.kid.as_deref().unwrap_or_default()));
        // The token names a kid no held key has. Keys without a kid (the secret, the
        // PEM files) are still tried, but if none of them verifies the signature the
        // answer is `UnknownKey`, so that `verify_fetching` fetches `jwks_url` again:
        // with a kid-less key configured beside it, a key the issuer rotated in was
        // otherwise refused ("signature does not verify") until a restart.
        let kid_unheld = header.kid.as_ref().is_some_and(|want| {
            !self
                .keys
                .iter()
                .chain(remote.iter())
                .any(|k| k.kid.as_ref() == Some(want))
        });
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .chain(remote.iter())
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => true,
                (None, _) => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(unknown());
        }
        // Only keys whose family matches the header's algorithm: an HS256 token is
        // never checked against an RSA public key used as an HMAC secret.
        let usable: Vec<&Key> = candidates
            .into_iter()
            .filter(|k| k.algorithms.contains(&header.alg))
            .collect();
        if usable.is_empty() {
            return Err(if kid_unheld {
                unknown()
            } else {
                AuthError::Algorithm
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = self.leeway_s;
        validation.validate_nbf = true;
        // jsonwebtoken checks `iss` and `aud` only when a token names them: a token
        // naming neither (minted for another app by the same issuer key) must not pass
        // for one that names this gateway's.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let mut last = AuthError::Invalid("no key verified the signature".into());
        // Whether every key tried refused the signature (none got as far as the claims).
        let mut only_signatures_failed = true;
        for key in usable {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return identity_of(data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => return Err(AuthError::Expired),
                        K::ImmatureSignature => return Err(AuthError::NotYetValid),
                        K::InvalidSignature => {
                            AuthError::Invalid("the signature does not verify".into())
                        }
                        _ => {
                            only_signatures_failed = false;
                            AuthError::Invalid(e.to_string())
                        }
                    };
                }
            }
        }
        if kid_unheld && only_signatures_failed {
            return Err(unknown());
        }
        Err(last)
    }
}

/// The identity an auth service's reply grants.
///
/// # Errors
/// [`AuthError::Denied`] for a refusal; [`AuthError::Unavailable`] for a reply that
/// accepts without a user or names an unknown right: the auth service failing (a
/// broken or newer release), not the token refused, so the client tries again later
/// instead of stopping for good (`unauthorized` and 4501 before). A user, groups or
/// tenant the gateway does not accept (a reserved user, a name with characters it
/// refuses) stay [`AuthError::Invalid`], a refusal, as in a token.
pub fn identity_of_reply(reply: warren_protocol::auth::AuthReply) -> Result<Identity, AuthError> {
    if !reply.allow {
        return Err(AuthError::Denied(
            reply.reason.unwrap_or_else(|| "no reason given".into()),
        ));
    }
    let unusable =
        |why: String| AuthError::Unavailable(format!("its answer cannot be used: {why}"));
    let user = reply
        .user
        .ok_or_else(|| unusable("it accepted without a user".into()))?;
    let channels = match reply.channels {
        None => None,
        Some(map) => {
            let mut out = BTreeMap::new();
            for (channel, rights) in map {
                let rights = rights
                    .iter()
                    .map(|r| serde_json::from_value(serde_json::Value::String(r.clone())))
                    .collect::<Result<Vec<ClaimRight>, _>>()
                    .map_err(|e| unusable(format!("channels.{channel}: {e}")))?;
                out.insert(channel, rights);
            }
            Some(out)
        }
    };
    identity_of(Claims {
        sub: user,
        exp: reply.expires_at.unwrap_or(0),
        groups: reply.groups,
        channels,
        topics: reply.topics,
        tenant: reply.tenant,
    })
    .map(|mut identity| {
        identity.expires_at = reply.expires_at;
        identity
    })
}

fn identity_of(c: Claims) -> Result<Identity, AuthError> {
    let bad = |what: &str, e: String| AuthError::Invalid(format!("claim `{what}`: {e}"));
    validate_segment("sub", &c.sub).map_err(|e| bad("sub", e.to_string()))?;
    // The HTTP API keys' user: a token naming it would pass for a backend to services
    // (`x-warren-user`) and share its message ids (`http-api:<id>`).
    if c.sub == crate::http_api::API_USER {
        return Err(bad(
            "sub",
            format!("`{}` is the HTTP API keys' user", c.sub),
        ));
    }
    for g in &c.groups {
        if g != "*" {
            validate_segment("group", g).map_err(|e| bad("groups", e.to_string()))?;
        }
    }
    for t in &c.topics {
        warren_protocol::amqp::validate_dotted("topic", t, true)
            .map_err(|e| bad("topics", e.to_string()))?;
    }
    if let Some(t) = &c.tenant {
        validate_segment("tenant", t).map_err(|e| bad("tenant", e.to_string()))?;
    }
    let channels = c.channels.map(|map| {
        map.into_iter()
            .map(|(channel, rights)| {
                let mut r = Rights::default();
                for right in rights {
                    match right {
                        ClaimRight::Publish => r.publish = true,
                        ClaimRight::Request => r.request = true,
                        ClaimRight::Subscribe => r.subscribe = true,
                    }
                }
                (channel, r)
            })
            .collect()
    });
    Ok(Identity {
        user: c.sub,
        groups: c.groups,
        channels,
        topics: c.topics,
        tenant: c.tenant,
        expires_at: Some(c.exp),
    })
}

fn parse_algorithm(name: &str) -> Result<Algorithm, GatewayError> {
    name.parse::<Algorithm>().map_err(|_| {
        GatewayError::Config(format!("auth.jwt.algorithms: unknown algorithm `{name}`"))
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, GatewayError> {
    std::fs::read(path)
        .map_err(|e| GatewayError::Config(format!("auth.jwt.{what} `{}`: {e}", path.display())))
}

fn allowed_algorithms(c: &JwtConfig) -> Result<Vec<Algorithm>, GatewayError> {
    c.algorithms.iter().map(|a| parse_algorithm(a)).collect()
}

/// The algorithms of `family` that are also `allowed`.
fn within(family: &[Algorithm], allowed: &[Algorithm]) -> Vec<Algorithm> {
    family
        .iter()
        .copied()
        .filter(|a| allowed.contains(a))
        .collect()
}

/// The keys of a JWKS document, each with the algorithms its type allows.
///
/// A key the gateway cannot use (a key type or curve jsonwebtoken does not model, such
/// as an X25519 encryption key, or a malformed one) is skipped with a warning: one such
/// key beside the signing keys must not discard them all.
fn jwks_keys(text: &[u8], allowed: &[Algorithm]) -> Result<Vec<Key>, String> {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let document: Document = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let listed = document.keys.len();
    let mut keys = Vec::new();
    for (index, value) in document.keys.into_iter().enumerate() {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(short_kid);
        let parsed = serde_json::from_value::<Jwk>(value)
            .map_err(|e| e.to_string())
            .and_then(|jwk| {
                DecodingKey::from_jwk(&jwk)
                    .map(|key| (jwk, key))
                    .map_err(|e| e.to_string())
            });
        let (jwk, key) = match parsed {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(index, ?kid, error = %e, "a JWKS key the gateway cannot use is skipped");
                continue;
            }
        };
        let jwk = &jwk;
        let family = match &jwk.algorithm {
            P::RSA(_) => RSA,
            P::EllipticCurve(_) => EC,
            P::OctetKeyPair(_) => ED,
            P::OctetKey(_) => HMAC,
        };
        let algorithms = within(family, allowed);
        if algorithms.is_empty() {
            tracing::debug!(
                index,
                kid = ?jwk.common.key_id,
                ?allowed,
                "a JWKS key verifies none of auth.jwt.algorithms"
            );
        }
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            key,
            algorithms,
        });
    }
    // Keys listed but none usable (a key served broken for a moment): a failed
    // fetch, so the keys held are kept, not replaced by none.
    if keys.is_empty() && listed > 0 {
        return Err(format!("none of its {listed} keys is usable"));
    }
    // The issuer's keys are RSA and the default HS256 is all that is allowed, say.
    if !keys.is_empty() && keys.iter().all(|k| k.algorithms.is_empty()) {
        tracing::warn!(
            keys = keys.len(),
            ?allowed,
            "no key of the JWKS verifies any of auth.jwt.algorithms: every token signed \
             with them is refused (list the issuer's algorithms, e.g. RS256)"
        );
    }
    Ok(keys)
}

/// Refuses a `jwks_url` that is not `https://`, unless its host is loopback
/// (`127.0.0.1`, `::1`, `localhost`) or `allow_http` (`auth.jwt.jwks_allow_http`, with
/// a warning): over plain HTTP anyone on the path could serve the keys, and so sign
/// tokens the gateway accepts.
fn check_jwks_url(url: &str, allow_http: bool) -> Result<(), GatewayError> {
    let bad = |why: &str| GatewayError::Config(format!("auth.jwt.jwks_url `{url}` {why}"));
    let uri: axum::http::Uri = url
        .parse()
        .map_err(|e| bad(&format!("is not a URL: {e}")))?;
    let host = uri
        .host()
        .ok_or_else(|| bad("names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") => Ok(()),
        Some("http")
            if host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback()) =>
        {
            Ok(())
        }
        Some("http") if allow_http => {
            tracing::warn!(url, "auth.jwt.jwks_url is plain http:// (jwks_allow_http): anyone on the path to it could replace the issuer's keys and sign tokens this gateway accepts");
            Ok(())
        }
        Some("http") => Err(bad(
            "must be https:// (plain http:// only to a loopback host: 127.0.0.1, ::1, \
             localhost, or with auth.jwt.jwks_allow_http = true): over http anyone on the \
             path could replace the issuer's keys",
        )),
        _ => Err(bad("must be an https:// URL")),
    }
}

/// At most 64 characters of a key id, for an error or a log line.
fn short_kid(kid: &str) -> String {
    kid.chars().take(64).collect()
}

impl RemoteJwks {
    /// Whether the last fetch failed.
    fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a fetch may start now (none within `min_interval`); records it if so.
    fn may_fetch(&self) -> bool {
        let mut last = self.last_fetch.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.min_interval) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Starts a fetch in the background if the keys held are older than `max_age`, no
    /// fetch is on its way and the rate limit allows one. The keys held verify until
    /// the fetch replaces them; a failed fetch keeps them.
    fn refresh_if_stale(self: &Arc<Self>) {
        let fetched_at = *self.fetched_at.lock().unwrap_or_else(|e| e.into_inner());
        if fetched_at.is_some_and(|t| t.elapsed() < self.max_age) {
            return;
        }
        let Ok(turn) = self.fetch_turn.clone().try_lock_owned() else {
            return; // a fetch is on its way
        };
        if !self.may_fetch() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.fetch(turn).await {
                tracing::warn!(url = %me.url, error = %e, "cannot fetch the JWKS document again; the keys held are kept");
            }
        });
    }

    /// Fetches the document on a blocking thread, which holds `turn` until the keys
    /// are stored: a caller whose future is dropped meanwhile (an HTTP client that
    /// hung up) neither loses the fetch's keys nor frees the turn early, which let the
    /// next waiter find the interval taken and refuse its token for good.
    async fn fetch(self: &Arc<Self>, turn: tokio::sync::OwnedMutexGuard<()>) -> Result<(), String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            // Failing until it succeeds: a fetch that panics leaves the tokens that
            // waited for it told to try again (auth_unavailable), not refused.
            me.failing.store(true, std::sync::atomic::Ordering::Relaxed);
            let fetched = me.fetch_keys();
            me.failing
                .store(fetched.is_err(), std::sync::atomic::Ordering::Relaxed);
            fetched
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn fetch_keys(&self) -> Result<(), String> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Redirects stay on https (a redirect to http:// fails); from a loopback
        // http:// URL none is followed: the key set is not fetched over plain HTTP
        // from anywhere else.
        let https = self
            .url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .https_only(https)
            .max_redirects(if https { 10 } else { 0 })
            .build()
            .into();
        let mut response = agent.get(&self.url).call().map_err(|e| e.to_string())?;
        if response.status().is_redirection() {
            return Err(format!(
                "answered {} (a redirect; none is followed from an http:// jwks_url)",
                response.status()
            ));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(1024 * 1024)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        let keys = jwks_keys(&body, &self.allowed)?;
        // An issuer answering `{"keys": []}` for a moment (a deploy, a broken cache)
        // refused every client until the next fetch: a failed fetch, the keys held kept.
        if keys.is_empty() {
            return Err("the document lists no keys".into());
        }
        tracing::info!(url = %self.url, keys = keys.len(), "JWKS document fetched");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        *self.fetched_at.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now());
        Ok(())
    }
}

/// The keys of `jwt` mode: the secret, the PEM files and the JWKS file.
fn load_keys(c: &JwtConfig) -> Result<Vec<Key>, GatewayError> {
    let allowed = allowed_algorithms(c)?;
    let within = |family: &[Algorithm]| within(family, &allowed);
    let config_err = |m: String| GatewayError::Config(m);
    let mut keys = Vec::new();
    let secret = match (&c.secret, &c.secret_file) {
        (Some(_), Some(_)) => {
            return Err(config_err(
                "auth.jwt.secret and auth.jwt.secret_file are both set (in the \
                 configuration file, or by --auth-jwt-secret and --auth-jwt-secret-file / \
                 WARREN_AUTH_JWT_SECRET and WARREN_AUTH_JWT_SECRET_FILE); keep one"
                    .into(),
            ))
        }
        (Some(s), None) => Some(s.as_bytes().to_vec()),
        (None, Some(path)) => {
            let mut bytes = read(path, "secret_file")?;
            while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                bytes.pop();
            }
            Some(bytes)
        }
        (None, None) => None,
    };
    if let Some(secret) = secret {
        if secret.len() < 32 {
            return Err(config_err(
                "auth.jwt.secret must be at least 32 bytes (256 bits)".into(),
            ));
        }
        keys.push(Key {
            kid: None,
            key: DecodingKey::from_secret(&secret),
            algorithms: within(HMAC),
        });
    }
    for path in &c.public_key_files {
        let pem = read(path, "public_key_files")?;
        let text = String::from_utf8_lossy(&pem);
        let attempt = if text.contains("BEGIN RSA PUBLIC KEY") {
            DecodingKey::from_rsa_pem(&pem).map(|k| (k, within(RSA)))
        } else {
            DecodingKey::from_rsa_pem(&pem)
                .map(|k| (k, within(RSA)))
                .or_else(|_| DecodingKey::from_ec_pem(&pem).map(|k| (k, within(EC))))
                .or_else(|_| DecodingKey::from_ed_pem(&pem).map(|k| (k, within(ED))))
        };
        let (key, algorithms) = attempt.map_err(|e| {
            config_err(format!(
                "auth.jwt.public_key_files `{}`: not an RSA, EC or Ed25519 public key in PEM: {e}",
                path.display()
            ))
        })?;
        keys.push(Key {
            kid: None,
            key,
            algorithms,
        });
    }
    if let Some(path) = &c.jwks_file {
        let text = read(path, "jwks_file")?;
        let found = jwks_keys(&text, &allowed)
            .map_err(|e| config_err(format!("auth.jwt.jwks_file `{}`: {e}", path.display())))?;
        keys.extend(found);
    }
    if keys.is_empty() && c.jwks_url.is_some() {
        return Ok(keys); // all from the URL, fetched at start, on unknown kids and when old
    }
    if keys.is_empty() {
        return Err(config_err(
            "auth.mode = \"jwt\" needs a key: auth.jwt.secret (or secret_file), \
             public_key_files, jwks_file or jwks_url"
                .into(),
        ));
    }
    if keys.iter().all(|k| k.algorithms.is_empty()) {
        return Err(config_err(format!(
            "auth.jwt.algorithms {:?} fit none of the configured keys",
            c.algorithms
        )));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "a-development-secret-of-32-bytes!!";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn jwt_config() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Jwt,
            jwt: JwtConfig {
                secret: Some(SECRET.into()),
                issuer: Some("warren-tests".into()),
                audience: Some("warren".into()),
                ..JwtConfig::default()
            },
            ..AuthConfig::default()
        }
    }

    fn sign(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn good(extra: serde_json::Value) -> serde_json::Value {
        let mut c =
            json!({"sub": "ada", "exp": now() + 600, "iss": "warren-tests", "aud": "warren"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn a_secret_and_a_secret_file_both_set_are_refused() {
        let mut c = jwt_config();
        c.jwt.secret_file = Some("/run/secret".into());
        let e = Verifier::from_config(&c).expect_err("refused");
        assert!(e.to_string().contains("both set"), "{e}");
    }

    #[test]
    fn a_signed_token_becomes_its_claims() {
        let v = Verifier::from_config(&jwt_config()).unwrap();
        let token = sign(good(json!({
            "groups": ["room-1"],
            "topics": ["orders.*"],
            "channels": {"chat": ["publish", "subscribe"], "tickets": ["request"]},
            "tenant": "acme"
        })));
        let id = v.verify(Some(&token), "anon").unwrap();
        assert_eq!(id.user, "ada");
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert!(id.may(Action::Publish, "chat"));
        assert!(id.may(Action::Subscribe, "chat"));
        assert!(!id.may(Action::Request, "chat"));
        assert!(id.may(Action::Request, "tickets"));
        assert!(!id.may(Action::Publish, "voice"), "unnamed channel");
        assert!(id.may_group("room-1"));
        assert!(!id.may_group("room-2"));
        assert!(id.expires_at.is_some());
    }

    #[test]
    fn channels_null_is_refused_not_taken_for_every_right() {
        let v = Verifier::from_config(&jwt_config()).unwrap();
        let everything = sign(good(json!({})));
        assert!(v
            .verify(Some(&everything), "x")
            .unwrap()
            .may(Action::Request, "admin"));
        let nothing = sign(good(json!({"channels": {}})));
        assert!(!v
            .verify(Some(&nothing), "x")
            .unwrap()
            .may(Action::Request, "admin"));
        let null = sign(good(json!({"channels": null})));
        let verified = v.verify(Some(&null), "x");
        assert!(
            matches!(verified, Err(AuthError::Invalid(_))),
            "channels: null gave {verified:?}"
        );
    }

    #[test]
    fn tokens_that_must_not_pass_are_refused_with_their_reason() {
        let v = Verifier::from_config(&jwt_config()).unwrap();
        let expired = sign(good(json!({"exp": now() - 3600})));
        assert_eq!(v.verify(Some(&expired), "x"), Err(AuthError::Expired));
        let early = sign(good(json!({"nbf": now() + 3600})));
        assert_eq!(v.verify(Some(&early), "x"), Err(AuthError::NotYetValid));
        let wrong_aud = sign(good(json!({"aud": "someone-else"})));
        assert!(matches!(
            v.verify(Some(&wrong_aud), "x"),
            Err(AuthError::Invalid(_))
        ));
        let wrong_iss = sign(good(json!({"iss": "mallory"})));
        assert!(matches!(
            v.verify(Some(&wrong_iss), "x"),
            Err(AuthError::Invalid(_))
        ));
        // With an issuer and an audience configured, a token that leaves either out
        // is not one for this gateway (jsonwebtoken checks them only when present).
        for claim in ["iss", "aud"] {
            let mut claims = good(json!({}));
            claims.as_object_mut().unwrap().remove(claim);
            assert!(
                matches!(
                    v.verify(Some(&sign(claims)), "x"),
                    Err(AuthError::Invalid(_))
                ),
                "a token without `{claim}` passed"
            );
        }
        // The HTTP API keys' user is no token's.
        let backend = sign(good(json!({"sub": "http-api"})));
        assert!(matches!(
            v.verify(Some(&backend), "x"),
            Err(AuthError::Invalid(m)) if m.contains("HTTP API")
        ));
        let no_exp = sign(json!({"sub": "ada", "iss": "warren-tests", "aud": "warren"}));
        assert!(matches!(
            v.verify(Some(&no_exp), "x"),
            Err(AuthError::Invalid(_))
        ));
        // Tampered: the payload of one token with the signature of another.
        let a = sign(good(json!({})));
        let b = sign(good(json!({"sub": "bob"})));
        let parts_a: Vec<&str> = a.split('.').collect();
        let parts_b: Vec<&str> = b.split('.').collect();
        let tampered = format!("{}.{}.{}", parts_a[0], parts_b[1], parts_a[2]);
        assert!(matches!(
            v.verify(Some(&tampered), "x"),
            Err(AuthError::Invalid(_))
        ));
        // Signed with another secret.
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &good(json!({})),
            &EncodingKey::from_secret(b"another-secret-that-is-32-bytes-long"),
        )
        .unwrap();
        assert!(matches!(
            v.verify(Some(&forged), "x"),
            Err(AuthError::Invalid(_))
        ));
        // `alg: none`.
        let b64 = |s: &str| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
        };
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(&good(json!({})).to_string())
        );
        assert!(matches!(
            v.verify(Some(&none), "x"),
            Err(AuthError::Invalid(_))
        ));
        // An algorithm the gateway does not accept (HS512 with HS256 configured).
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &good(json!({})),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(v.verify(Some(&hs512), "x"), Err(AuthError::Algorithm));
        assert_eq!(v.verify(None, "x"), Err(AuthError::Missing));
        assert!(matches!(
            v.verify(Some("not-a-jwt"), "x"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn a_jwks_key_the_gateway_cannot_use_is_skipped_and_the_others_kept() {
        let oct = json!({"kty": "oct", "kid": "k1", "alg": "HS256", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"});
        let document = json!({"keys": [
            {"kty": "nonsense", "kid": "x"},
            {"kty": "RSA", "kid": "no-modulus", "e": "AQAB"},
            oct,
        ]});
        let keys = jwks_keys(document.to_string().as_bytes(), &[Algorithm::HS256]).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("k1")]);
        // Not a JWKS document at all: an error (the fetch failed).
        assert!(jwks_keys(b"<html>", &[Algorithm::HS256]).is_err());
        // Keys listed but none usable: an error too, so the keys held are kept.
        let broken = json!({"keys": [{"kty": "RSA", "kid": "k1", "e": "AQAB"}]});
        assert!(jwks_keys(broken.to_string().as_bytes(), &[Algorithm::RS256]).is_err());
        let empty = jwks_keys(br#"{"keys": []}"#, &[Algorithm::RS256]).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn a_jwks_key_is_chosen_by_kid_and_an_unknown_kid_is_refused() {
        let dir = std::env::temp_dir().join(format!("warren-jwks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        use base64::Engine;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        std::fs::write(
            &path,
            json!({"keys": [{"kty": "oct", "kid": "k1", "k": k, "alg": "HS256"}]}).to_string(),
        )
        .unwrap();
        let mut config = jwt_config();
        config.jwt.secret = None;
        config.jwt.jwks_file = Some(path);
        let v = Verifier::from_config(&config).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = encode(&header, &good(json!({})), &key).unwrap();
        assert_eq!(v.verify(Some(&token), "x").unwrap().user, "ada");
        header.kid = Some("k2".into());
        let token = encode(&header, &good(json!({})), &key).unwrap();
        assert_eq!(
            v.verify(Some(&token), "x"),
            Err(AuthError::UnknownKey("k2".into()))
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Serves `body` as the JWKS document on loopback with `status` (`200 OK`), each
    /// answer `delay` late.
    async fn slow_issuer(status: &'static str, body: String, delay: std::time::Duration) -> String {
        issuer(status, Arc::new(std::sync::Mutex::new(body)), delay).await
    }

    /// As [`slow_issuer`], serving whatever `body` holds at each request.
    async fn issuer(
        status: &'static str,
        body: Arc<std::sync::Mutex<String>>,
        delay: std::time::Duration,
    ) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let body = body.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    tokio::time::sleep(delay).await;
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/jwks.json")
    }

    #[tokio::test]
    async fn a_fetch_whose_token_gave_up_still_brings_its_keys_to_the_tokens_waiting() {
        // A token naming a new kid starts a fetch over the HTTP API, and its client
        // hangs up (its future is dropped) while the issuer answers. The next token
        // with that kid waits for that fetch and passes; before, the fetch's keys were
        // lost with the future and the next token found the interval taken: refused
        // for good.
        use base64::Engine;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        let body = json!({"keys": [{"kty": "oct", "kid": "k2", "k": k, "alg": "HS256"}]});
        let delay = std::time::Duration::from_millis(400);
        let mut config = jwt_config();
        config.jwt.secret = None;
        config.jwt.jwks_url = Some(slow_issuer("200 OK", body.to_string(), delay).await);
        let v = Verifier::from_config(&config).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k2".into());
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = encode(&header, &good(json!({})), &key).unwrap();
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            v.verify_fetching(Some(&token), "x"),
        )
        .await;
        assert!(
            gave_up.is_err(),
            "the first caller gave up during the fetch"
        );
        assert_eq!(
            v.verify_fetching(Some(&token), "x").await.unwrap().user,
            "ada"
        );
        assert_eq!(v.remote_fetches(), 1, "one fetch");
    }

    /// A JWKS document of HMAC keys (all with the test secret), one per kid.
    fn hmac_jwks(kids: &[&str]) -> String {
        use base64::Engine;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        let keys: Vec<_> = kids
            .iter()
            .map(|kid| json!({"kty": "oct", "kid": kid, "k": k, "alg": "HS256"}))
            .collect();
        json!({ "keys": keys }).to_string()
    }

    fn token_with_kid(kid: &str) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.into());
        encode(
            &header,
            &good(json!({})),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_key_removed_from_the_jwks_stops_verifying_once_the_keys_are_older_than_their_max_age(
    ) {
        // The issuer publishes {k1, k2}; k2 leaks and is removed. Clients keep using
        // k1, so no unknown kid makes the gateway fetch again: before, k2's tokens
        // verified until a restart.
        let body = Arc::new(std::sync::Mutex::new(hmac_jwks(&["k1", "k2"])));
        let mut config = jwt_config();
        config.jwt.secret = None;
        config.jwt.jwks_refresh_min_s = 1;
        config.jwt.jwks_max_age_s = 1;
        config.jwt.jwks_url = Some(issuer("200 OK", body.clone(), std::time::Duration::ZERO).await);
        let v = Verifier::from_config(&config).unwrap();
        v.fetch_remote_keys().await;
        let (k1, k2) = (token_with_kid("k1"), token_with_kid("k2"));
        assert_eq!(v.verify_fetching(Some(&k2), "x").await.unwrap().user, "ada");
        *body.lock().unwrap() = hmac_jwks(&["k1"]);
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        // The keys held are past their age: the next token starts a fetch in the
        // background; k2 is refused once it is in.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let refused = loop {
            match v.verify_fetching(Some(&k2), "x").await {
                Ok(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => break other,
            }
        };
        assert_eq!(refused, Err(AuthError::UnknownKey("k2".into())));
        assert_eq!(v.verify_fetching(Some(&k1), "x").await.unwrap().user, "ada");
        assert_eq!(v.remote_fetches(), 2, "one fetch at start, one when old");
    }

    #[tokio::test]
    async fn a_jwks_document_listing_no_keys_is_a_failed_fetch_and_the_keys_held_are_kept() {
        // An issuer answering {"keys": []} for a moment wiped every key: every client
        // refused until the next fetch.
        let body = Arc::new(std::sync::Mutex::new(hmac_jwks(&["k1"])));
        let mut config = jwt_config();
        config.jwt.secret = None;
        config.jwt.jwks_refresh_min_s = 1;
        config.jwt.jwks_url = Some(issuer("200 OK", body.clone(), std::time::Duration::ZERO).await);
        let v = Verifier::from_config(&config).unwrap();
        v.fetch_remote_keys().await;
        let k1 = token_with_kid("k1");
        assert_eq!(v.verify_fetching(Some(&k1), "x").await.unwrap().user, "ada");
        *body.lock().unwrap() = r#"{"keys": []}"#.into();
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        // An unknown kid fetches the (empty) document again: a failed fetch, so that
        // token is told to try again later, and k1 still verifies.
        let unknown = v.verify_fetching(Some(&token_with_kid("k9")), "x").await;
        assert_eq!(v.remote_fetches(), 2);
        assert_eq!(v.verify_fetching(Some(&k1), "x").await.unwrap().user, "ada");
        assert!(
            matches!(unknown, Err(AuthError::Unavailable(_))),
            "{unknown:?}"
        );
    }

    #[tokio::test]
    async fn tokens_that_waited_for_a_failed_fetch_are_answered_by_it_not_by_fetches_of_their_own()
    {
        // The issuer fails slowly (1.5 s), longer than the interval (1 s). Three tokens
        // with a new kid at once: one fetch, and all three told the issuer cannot be
        // reached. Before, each waiter found the interval passed when its turn came and
        // fetched again: the k-th waited k fetches.
        let delay = std::time::Duration::from_millis(1_500);
        let mut config = jwt_config();
        config.jwt.secret = None;
        config.jwt.jwks_refresh_min_s = 1;
        config.jwt.jwks_url = Some(slow_issuer("503 Busy", "{}".into(), delay).await);
        let v = Verifier::from_config(&config).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k2".into());
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let token = encode(&header, &good(json!({})), &key).unwrap();
        let started = std::time::Instant::now();
        let answers =
            futures_util::future::join_all((0..3).map(|_| v.verify_fetching(Some(&token), "x")))
                .await;
        for a in answers {
            assert!(matches!(a, Err(AuthError::Unavailable(_))), "{a:?}");
        }
        assert_eq!(v.remote_fetches(), 1, "one fetch for the three");
        assert!(started.elapsed() < delay * 2, "{:?}", started.elapsed());
    }

    #[test]
    fn a_kid_no_key_has_is_unknown_even_beside_a_key_without_a_kid() {
        // The secret has no kid; k1 comes from a JWKS file. A token naming k2 that the
        // secret does not verify is `UnknownKey` (which makes `verify_fetching` fetch
        // `jwks_url` again), not a bad signature or a refused algorithm.
        let dir = std::env::temp_dir().join(format!("warren-jwks-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwks.json");
        use base64::Engine;
        let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let k1_secret = b"the-k1-secret-of-at-least-32-bytes!!";
        std::fs::write(
            &path,
            json!({"keys": [{"kty": "oct", "kid": "k1", "k": b64(k1_secret), "alg": "HS256"}]})
                .to_string(),
        )
        .unwrap();
        let mut config = jwt_config();
        config.jwt.jwks_file = Some(path);
        config.jwt.algorithms = vec!["HS256".into(), "ES256".into()];
        let v = Verifier::from_config(&config).unwrap();
        let with_kid = |kid: &str, secret: &[u8], claims: serde_json::Value| {
            let mut header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.into());
            encode(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
        };
        let k1 = with_kid("k1", k1_secret, good(json!({})));
        assert_eq!(v.verify(Some(&k1), "x").unwrap().user, "ada");
        let k2 = with_kid(
            "k2",
            b"the-k2-secret-of-at-least-32-bytes!!",
            good(json!({})),
        );
        assert_eq!(
            v.verify(Some(&k2), "x"),
            Err(AuthError::UnknownKey("k2".into()))
        );
        // An allowed algorithm that only a key not yet held could verify (ES256; the
        // signature is not looked at).
        let es256 = format!(
            "{}.{}.c2ln",
            b64(br#"{"alg":"ES256","typ":"JWT","kid":"k3"}"#),
            b64(good(json!({})).to_string().as_bytes())
        );
        assert_eq!(
            v.verify(Some(&es256), "x"),
            Err(AuthError::UnknownKey("k3".into()))
        );
        // The kid-less secret is still tried: it verifies a token naming any kid, and
        // what it then finds wrong with the claims is the answer.
        let by_secret = with_kid("k9", SECRET.as_bytes(), good(json!({})));
        assert_eq!(v.verify(Some(&by_secret), "x").unwrap().user, "ada");
        let expired = with_kid("k9", SECRET.as_bytes(), good(json!({"exp": now() - 3600})));
        assert_eq!(v.verify(Some(&expired), "x"), Err(AuthError::Expired));
        let wrong_iss = with_kid("k9", SECRET.as_bytes(), good(json!({"iss": "mallory"})));
        assert!(matches!(
            v.verify(Some(&wrong_iss), "x"),
            Err(AuthError::Invalid(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_jwks_url_must_be_https_unless_its_host_is_loopback() {
        let at = |url: &str| {
            let mut config = jwt_config();
            config.jwt.jwks_url = Some(url.into());
            Verifier::from_config(&config)
        };
        for (url, why) in [
            (
                "http://issuer.example/.well-known/jwks.json",
                "must be https://",
            ),
            ("http://10.0.0.1/jwks.json", "must be https://"),
            (
                "http://localhost.evil.example/jwks.json",
                "must be https://",
            ),
            (
                "http://127.0.0.1.evil.example/jwks.json",
                "must be https://",
            ),
            ("ftp://issuer.example/jwks.json", "must be an https:// URL"),
            ("issuer.example/jwks.json", "auth.jwt.jwks_url"),
        ] {
            let e = at(url).expect_err(url).to_string();
            assert!(
                e.contains(why) && e.contains("auth.jwt.jwks_url"),
                "{url}: {e}"
            );
        }
        for url in [
            "https://issuer.example/.well-known/jwks.json",
            "HTTPS://issuer.example/jwks.json",
            "http://127.0.0.1:8080/jwks.json",
            "http://127.0.0.2/jwks.json",
            "http://localhost/jwks.json",
            "http://LOCALHOST:9000/jwks.json",
            "http://[::1]:8080/jwks.json",
        ] {
            at(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        // Allowed on purpose (an issuer on a private network without TLS): plain http
        // anywhere, but still only http or https.
        let allowed = |url: &str| {
            let mut config = jwt_config();
            config.jwt.jwks_url = Some(url.into());
            config.jwt.jwks_allow_http = true;
            Verifier::from_config(&config)
        };
        allowed("http://keycloak.internal:8080/certs").expect("allowed by jwks_allow_http");
        let e = allowed("ftp://issuer.example/jwks.json").expect_err("ftp");
        assert!(e.to_string().contains("must be an https:// URL"), "{e}");
    }

    #[test]
    fn the_http_api_keys_user_is_nobodys_token_in_none_mode_either() {
        let v = Verifier::from_config(&AuthConfig::default()).unwrap();
        assert_eq!(v.verify(Some("ada"), "x").unwrap().user, "ada");
        let e = v.verify(Some(crate::http_api::API_USER), "x").unwrap_err();
        assert!(matches!(e, AuthError::Invalid(_)), "{e:?}");
    }

    #[tokio::test]
    async fn a_redirect_from_an_http_jwks_url_is_not_followed() {
        // The loopback issuer redirects to a document with the token's key: over
        // plain HTTP the keys would come from wherever the redirect points.
        let elsewhere = issuer(
            "200 OK",
            Arc::new(std::sync::Mutex::new(hmac_jwks(&["k1"]))),
            std::time::Duration::ZERO,
        )
        .await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nlocation: {elsewhere}\r\n\
                     content-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let mut config = jwt_config();
        config.jwt.secret = None;
        config.jwt.jwks_url = Some(format!("http://{addr}/jwks.json"));
        let v = Verifier::from_config(&config).unwrap();
        v.fetch_remote_keys().await;
        assert_eq!(v.remote_fetches(), 1);
        let answer = v.verify(Some(&token_with_kid("k1")), "x");
        assert_eq!(answer, Err(AuthError::UnknownKey("k1".into())));
    }

    #[test]
    fn jwt_mode_without_a_key_or_with_a_short_secret_does_not_start() {
        let mut c = jwt_config();
        c.jwt.secret = None;
        assert!(Verifier::from_config(&c).is_err());
        c.jwt.secret = Some("short".into());
        assert!(Verifier::from_config(&c).is_err());
        c.jwt.secret = Some(SECRET.into());
        c.jwt.algorithms = vec!["HS999".into()];
        assert!(Verifier::from_config(&c).is_err());
    }

    #[test]
    fn none_mode_trusts_the_token_as_the_user_and_grants_everything() {
        let v = Verifier::from_config(&AuthConfig::default()).unwrap();
        let id = v.verify(Some("bob"), "s1").unwrap();
        assert_eq!(id.user, "bob");
        assert!(id.may(Action::Request, "anything"));
        assert!(id.may_group("room-9"));
        assert!(id.may_topic("#"));
        assert_eq!(v.verify(None, "s1").unwrap().user, "s1");
        assert!(v.verify(Some("a b"), "s1").is_err());
    }

    #[test]
    fn a_topic_pattern_is_allowed_only_within_a_granted_one() {
        let id = Identity {
            topics: vec!["orders.*".into(), "audit.#".into(), "a.*.c".into()],
            ..Identity::unrestricted("u")
        };
        for ok in [
            "orders.created",
            "orders.*",
            "audit",
            "audit.x.y",
            "audit.#",
            "audit.*.z",
            "a.b.c",
            "a.*.c",
        ] {
            assert!(id.may_topic(ok), "{ok}");
        }
        for no in [
            "#",
            "orders.#",
            "orders",
            "orders.a.b",
            "*.created",
            "a.#.c",
            "b.c",
            "audits",
        ] {
            assert!(!id.may_topic(no), "{no}");
        }
    }

    /// The definition `covers` computes, recursively (exponential in `#`s).
    fn covers_by_definition(granted: &[&str], wanted: &[&str]) -> bool {
        match (granted.first(), wanted.first()) {
            (None, None) => true,
            (Some(&"#"), _) => {
                covers_by_definition(&granted[1..], wanted)
                    || (!wanted.is_empty() && covers_by_definition(granted, &wanted[1..]))
            }
            (None, Some(_)) | (Some(_), None) => false,
            (Some(&"*"), Some(w)) => *w != "#" && covers_by_definition(&granted[1..], &wanted[1..]),
            (Some(g), Some(w)) => g == w && covers_by_definition(&granted[1..], &wanted[1..]),
        }
    }

    #[test]
    fn covering_agrees_with_the_definition_for_every_short_pattern_and_scales() {
        // Every pattern of up to 4 words over a, b, * and #: 341 × 341 pairs.
        let mut patterns: Vec<Vec<&str>> = vec![vec![]];
        for len in 1..=4 {
            let mut next = Vec::new();
            for p in patterns.iter().filter(|p| p.len() == len - 1) {
                for word in ["a", "b", "*", "#"] {
                    let mut q = p.clone();
                    q.push(word);
                    next.push(q);
                }
            }
            patterns.extend(next);
        }
        assert_eq!(patterns.len(), 341);
        for g in &patterns {
            for w in &patterns {
                assert_eq!(covers(g, w), covers_by_definition(g, w), "{g:?} {w:?}");
            }
        }
        // Ten `#`s against 64 words: the recursion would not finish; the table does.
        let mut granted = vec!["#"; 10];
        granted.push("z");
        let wanted = vec!["a"; 64];
        assert!(!covers(&granted, &wanted));
        assert!(covers(&["#"; 10], &wanted));
    }

    #[test]
    fn a_star_channel_entry_applies_to_channels_not_named() {
        let mut map = BTreeMap::new();
        map.insert(
            "*".to_string(),
            Rights {
                subscribe: true,
                ..Rights::default()
            },
        );
        map.insert("chat".to_string(), Rights::ALL);
        let id = Identity {
            channels: Some(map),
            ..Identity::unrestricted("u")
        };
        assert!(id.may(Action::Publish, "chat"));
        assert!(id.may(Action::Subscribe, "voice"));
        assert!(!id.may(Action::Publish, "voice"));
    }
}
