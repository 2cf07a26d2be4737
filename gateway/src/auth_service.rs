//! `auth.mode = "service"`: the gateway asks an auth service on RabbitMQ (the source
//! system's auth worker) whether a token is good, as a `client.auth` request, and waits
//! for the answer — bounded by `auth.service.timeout_ms`, after which the client is told
//! `auth_unavailable` (retry later), never left hanging.
//!
//! Requests go to `warren.in` with key `<channel>.client.auth`, `mandatory` (with no
//! auth service ever started, nothing is bound and the answer is `auth_unavailable` at
//! once), `expiration` = the timeout (an unanswered request does not linger), and
//! `reply_to` = RabbitMQ's direct reply-to pseudo-queue `amq.rabbitmq.reply-to`, so no
//! queue is declared for the answers. Accepted answers are cached until their
//! `expires_at`, by everything the service was asked except the gateway's name and the
//! client's port: token, session, Origin and client IP. A refusal the service bases
//! on any of them therefore holds for a cached token too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::BasicProperties;
use warren_protocol::amqp::{keys, Names};
use warren_protocol::auth::{AuthReply, AuthRequest, AUTH_SUBJECT};

use crate::auth::{identity_of_reply, AuthError, Identity};
use crate::broker::Broker;
use crate::config::AuthServiceConfig;
use crate::direct_reply::{DirectReply, DIRECT_REPLY_TO};
use crate::inbound::Outcome;
use crate::server::normal_origin;

/// The link to the auth service: requests and their answers over direct reply-to.
pub struct AuthClient {
    exchange: String,
    key: String,
    timeout: Duration,
    cache_entries: usize,
    replies: DirectReply,
    cache: Mutex<HashMap<CacheKey, Identity>>,
}

impl std::fmt::Debug for AuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthClient")
            .field("key", &self.key)
            .finish()
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What an answer is cached by: the request without the gateway's name and the
/// client's port (a reconnect comes from a new port), so that the service's decision
/// on Origin, address or session is not reused for another. The Origin as the gateway
/// compares it ([`normal_origin`]): variants of one origin (`https://APP.example.com//`)
/// made an entry each, as many as an attacker with one valid token cared to send.
fn cache_key(request: &AuthRequest) -> CacheKey {
    let ip = request.remote_addr.as_deref().map(|a| {
        a.parse::<std::net::SocketAddr>()
            .map_or_else(|_| a.to_string(), |s| s.ip().to_string())
    });
    (
        request.token.clone(),
        request.session.clone(),
        ip,
        request.origin.as_deref().map(normal_origin),
    )
}

/// Token, session, client IP and Origin.
type CacheKey = (String, Option<String>, Option<String>, Option<String>);

impl AuthClient {
    /// A client for the auth service configured in `config`.
    pub fn new(broker: Arc<Broker>, names: &Names, config: &AuthServiceConfig) -> AuthClient {
        AuthClient {
            exchange: names.inbound_exchange(),
            key: keys::inbound(&config.channel, Some(AUTH_SUBJECT)),
            timeout: Duration::from_millis(config.timeout_ms),
            cache_entries: config.cache_entries,
            replies: DirectReply::new(broker),
            cache: Mutex::default(),
        }
    }

    /// Asks the auth service about `request.token` (or answers from the cache).
    ///
    /// # Errors
    /// [`AuthError::Denied`] when the service refuses, [`AuthError::Unavailable`] when
    /// it does not answer within the timeout, none is running, or its answer cannot
    /// be used ([`identity_of_reply`]).
    pub async fn ask(&self, request: AuthRequest) -> Result<Identity, AuthError> {
        let key = cache_key(&request);
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        let reply = tokio::time::timeout(self.timeout, self.round_trip(request))
            .await
            .map_err(|_| {
                AuthError::Unavailable(format!("no answer within {} ms", self.timeout.as_millis()))
            })??;
        let identity = identity_of_reply(reply)?;
        if identity.expires_at.is_some_and(|e| e <= now_s()) {
            return Err(AuthError::Expired);
        }
        self.remember(key, &identity);
        Ok(identity)
    }

    fn cached(&self, key: &CacheKey) -> Option<Identity> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let hit = cache.get(key)?.clone();
        if hit.expires_at.is_some_and(|e| e > now_s()) {
            return Some(hit);
        }
        cache.remove(key);
        None
    }

    fn remember(&self, key: CacheKey, identity: &Identity) {
        if identity.expires_at.is_none() || self.cache_entries == 0 {
            return; // without an expiry an answer is not reused
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.cache_entries {
            let now = now_s();
            cache.retain(|_, id| id.expires_at.is_some_and(|e| e > now));
            if cache.len() >= self.cache_entries {
                cache.clear();
            }
        }
        cache.insert(key, identity.clone());
    }

    async fn round_trip(&self, request: AuthRequest) -> Result<AuthReply, AuthError> {
        let unavailable = |e: String| AuthError::Unavailable(e);
        let id = uuid::Uuid::new_v4().simple().to_string();
        let call = self.replies.begin(id).await.map_err(unavailable)?;
        let body = serde_json::to_vec(&request).map_err(|e| unavailable(e.to_string()))?;
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_app_id("warren-gateway".into())
            .with_message_id(ShortString::from(format!("auth:{}", call.id)))
            .with_correlation_id(ShortString::from(call.id.as_str()))
            .with_reply_to(ShortString::from(DIRECT_REPLY_TO))
            .with_expiration(ShortString::from(self.timeout.as_millis().to_string()));
        let confirm = call
            .channel
            .publish(
                ShortString::from(self.exchange.as_str()),
                ShortString::from(self.key.as_str()),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                props,
            )
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match confirm.await {
            Outcome::Acked => {}
            Outcome::Returned => return Err(unavailable("no auth service is running".into())),
            Outcome::Nacked => {
                self.replies
                    .retire(call.channel.channel(), self.timeout)
                    .await;
                return Err(unavailable("the broker refused the request".into()));
            }
            Outcome::Failed(e) => return Err(unavailable(e)),
            // Not produced by a confirm; the call's own timeout bounds the wait.
            Outcome::Unconfirmed => return Err(unavailable("no confirm in time".into())),
        }
        let answer = call.answer().await.map_err(unavailable)?;
        // An answer that is not one is the auth service failing, not the token
        // refused: the client tries again later (refused, it stopped for good).
        serde_json::from_slice::<AuthReply>(&answer.data)
            .map_err(|e| unavailable(format!("the auth service's answer is not valid: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: &str, remote_addr: &str) -> AuthRequest {
        AuthRequest {
            token: "t".into(),
            session: None,
            remote_addr: Some(remote_addr.into()),
            origin: Some(origin.into()),
            node: "gw-1".into(),
        }
    }

    #[test]
    fn origins_differing_only_by_trailing_slashes_or_case_share_one_cache_entry() {
        let one = cache_key(&request("https://app.example.com", "203.0.113.7:1"));
        for variant in [
            "https://app.example.com/",
            "https://app.example.com////",
            "HTTPS://App.Example.COM",
            "https://APP.example.com//",
        ] {
            assert_eq!(
                cache_key(&request(variant, "203.0.113.7:2")),
                one,
                "{variant}"
            );
        }
        assert_ne!(
            cache_key(&request("https://other.example.com", "203.0.113.7:1")),
            one
        );
    }
}
