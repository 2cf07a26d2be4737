//! The auth worker's messages (gateway `auth.mode = "service"`): a gateway asks
//! `client.auth` with an [`AuthRequest`] and an auth service answers with an
//! [`AuthReply`]. The request travels like a client request: published to `warren.in`
//! with key `<auth channel>.client.auth` (queue `IN_AUTH` by default), JSON body,
//! `correlation_id` and `reply_to` set, `expiration` = the gateway's timeout; the reply
//! goes to `reply_to` through the default exchange with the same `correlation_id`.
//! Any AMQP client can be the auth service (PROTOCOL.md, "The auth service").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The subject of an auth request: the routing key is `<channel>.client.auth`.
pub const AUTH_SUBJECT: &str = "client.auth";

/// What a gateway asks the auth service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthRequest {
    /// The token the client presented (in `hello` or `refresh`, or with the upgrade).
    pub token: String,
    /// The session being opened or resumed, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The client's address as the gateway sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_addr: Option<String>,
    /// The `Origin` of the WebSocket upgrade, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The gateway node asking.
    pub node: String,
}

/// The auth service's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthReply {
    /// Whether the token is accepted.
    pub allow: bool,
    /// The user id (required when `allow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Groups the user may subscribe to and address (`*` for all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Topic patterns the user may subscribe within.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Per-channel rights (`publish`, `request`, `subscribe`); absent: every right.
    /// `null` is not absent: an answer with `"channels": null` is not valid
    /// ([`present`]), as a service meaning "no rights" may write it.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub channels: Option<BTreeMap<String, Vec<String>>>,
    /// The user's tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Until when the answer holds (seconds since the epoch): the gateway caches it
    /// that long and closes the session then unless the client sends `refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Why the token was refused, for the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AuthReply {
    /// An acceptance of `user`, with no groups, topics or expiry yet.
    pub fn allow(user: impl Into<String>) -> AuthReply {
        AuthReply {
            allow: true,
            user: Some(user.into()),
            ..AuthReply::default()
        }
    }

    /// A refusal saying why.
    pub fn deny(reason: impl Into<String>) -> AuthReply {
        AuthReply {
            allow: false,
            reason: Some(reason.into()),
            ..AuthReply::default()
        }
    }
}

/// Deserializes a field whose absence means something (it is `None` then, with
/// `#[serde(default)]`) as present: `null` is refused, not taken for absent. For
/// rights, where absent means every right and an issuer writing `null` means none.
///
/// # Errors
/// When the value is `null` or not a `T`.
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_null_is_not_every_right() {
        let absent: AuthReply = serde_json::from_str(r#"{"allow":true,"user":"ada"}"#).unwrap();
        assert_eq!(absent.channels, None);
        let none: AuthReply =
            serde_json::from_str(r#"{"allow":true,"user":"ada","channels":{}}"#).unwrap();
        assert_eq!(none.channels, Some(BTreeMap::new()));
        let null =
            serde_json::from_str::<AuthReply>(r#"{"allow":true,"user":"ada","channels":null}"#);
        assert!(null.is_err(), "null taken for absent: {null:?}");
    }
}
