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
    /// that long and closes the session then unless the client sends `refresh`. A
    /// number with a fraction is taken down to its second ([`numeric_date`]).
    #[serde(
        default,
        deserialize_with = "optional_numeric_date",
        skip_serializing_if = "Option::is_none"
    )]
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

/// Deserializes a NumericDate (RFC 7519, section 2: seconds since the epoch, where
/// "non-integer values can be represented"), as an issuer writing `time.time() + 600`
/// or `Date.now() / 1000 + 600` sends it: an integer, or a finite number ≥ 0 taken down
/// to its second (an expiry never later than the issuer's).
///
/// # Errors
/// When the value is not a number, is negative, or is past `u64::MAX`.
pub fn numeric_date<'de, D>(d: D) -> Result<u64, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Seconds;
    impl serde::de::Visitor<'_> for Seconds {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a NumericDate (seconds since 1970, a number ≥ 0)")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a NumericDate before 1970"))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            // `as` takes a finite number ≥ 0 down to its whole part.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
                Ok(v as u64)
            } else {
                Err(E::custom("a NumericDate out of range"))
            }
        }
    }
    d.deserialize_any(Seconds)
}

/// [`numeric_date`] for an optional field (`null` or absent: `None`).
///
/// # Errors
/// As [`numeric_date`].
pub fn optional_numeric_date<'de, D>(d: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Date(#[serde(deserialize_with = "numeric_date")] u64);
    Ok(Option::<Date>::deserialize(d)?.map(|Date(s)| s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_with_a_fraction_is_taken_down_to_its_second() {
        let reply = |exp: &str| {
            serde_json::from_str::<AuthReply>(&format!(
                r#"{{"allow":true,"user":"ada","expires_at":{exp}}}"#
            ))
            .map(|r| r.expires_at)
        };
        assert_eq!(reply("1767225600").unwrap(), Some(1_767_225_600));
        assert_eq!(reply("1767225600.9").unwrap(), Some(1_767_225_600));
        assert_eq!(reply("1767225600.0").unwrap(), Some(1_767_225_600));
        assert_eq!(reply("1.7672256e9").unwrap(), Some(1_767_225_600));
        assert_eq!(reply("null").unwrap(), None);
        for bad in ["-1", "-0.5", "1e30", "\"soon\"", "true"] {
            assert!(reply(bad).is_err(), "{bad} accepted");
        }
        let absent: AuthReply = serde_json::from_str(r#"{"allow":true,"user":"ada"}"#).unwrap();
        assert_eq!(absent.expires_at, None);
    }

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
