//! The demo authenticator (the source system's auth worker): answers the gateways'
//! `client.auth` requests (`auth.mode = "service"`). Development only: it trusts tokens
//! of the form `user:<name>`, grants the groups `room-1` and `room-2` and topics
//! `ticket.*` for ten minutes, refuses `user:blocked` and anything else.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use warren_protocol::amqp::validate_segment;
use warren_protocol::auth::{AuthReply, AuthRequest};

/// How long an accepted demo token holds.
pub const LIFETIME: Duration = Duration::from_secs(600);

/// Decides one `client.auth` request.
pub async fn authenticate(request: AuthRequest) -> AuthReply {
    let Some(user) = request.token.strip_prefix("user:") else {
        return AuthReply::deny("unknown token (the demo accepts `user:<name>`)");
    };
    if validate_segment("user", user).is_err() {
        return AuthReply::deny("not a valid user name");
    }
    if user == "blocked" {
        return AuthReply::deny("user `blocked` is blocked");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    AuthReply {
        groups: vec!["room-1".into(), "room-2".into()],
        topics: vec!["ticket.*".into()],
        expires_at: Some(now + LIFETIME.as_secs()),
        ..AuthReply::allow(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(token: &str) -> AuthRequest {
        AuthRequest {
            token: token.into(),
            session: None,
            remote_addr: None,
            origin: None,
            node: "gw".into(),
        }
    }

    #[tokio::test]
    async fn the_demo_authenticator_allows_user_tokens_and_refuses_the_rest() {
        let ok = authenticate(ask("user:ada")).await;
        assert!(ok.allow);
        assert_eq!(ok.user.as_deref(), Some("ada"));
        assert!(ok.expires_at.is_some());
        for bad in ["user:blocked", "ada", "user:a b", ""] {
            let no = authenticate(ask(bad)).await;
            assert!(!no.allow, "{bad}");
            assert!(no.reason.is_some());
        }
    }
}
