//! Signed test tokens (HS256 unless a test names another algorithm) and the clock
//! their claims are set from.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::Value;

/// The HMAC secret the JWT tests configure their gateways with (at least 32 bytes,
/// as the gateway requires).
pub const SECRET: &str = "warren-tests-secret-of-at-least-32-bytes";

/// Seconds since the Unix epoch: what `exp`, `iat` and `nbf` are counted in.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// `claims` signed with HS256 and `secret`.
pub fn sign(claims: &Value, secret: &[u8]) -> String {
    sign_header(Header::new(Algorithm::HS256), claims, secret)
}

/// `claims` signed with `secret` under `header` (another algorithm, a `kid`).
pub fn sign_header(header: Header, claims: &Value, secret: &[u8]) -> String {
    encode(&header, claims, &EncodingKey::from_secret(secret)).expect("HMAC signing cannot fail")
}
