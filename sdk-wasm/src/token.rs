//! Reads a token's expiry, to renew it ahead of time: the `exp` and `iat` claims of a
//! JSON Web Token (`header.payload.signature`, the payload base64url JSON). No
//! signature check (the gateway verifies tokens; the SDK only schedules), no JSON
//! parser: the payload is scanned for the key (`"exp"`) followed by `:` and a number.
//! The native codec uses it; the browser codec asks the browser's `atob` and `JSON`
//! instead (smaller wasm).

/// The `exp` claim (seconds since the epoch) of `token`, or `None` when it is not a JWT
/// with a numeric `exp` (e.g. a plain user id with the gateway's `auth.mode = "none"`).
pub fn expiry_s(token: &str) -> Option<u64> {
    claim_s(token, b"\"exp\"")
}

/// When `token` expires on the clock of a client that got it at `now` (ms), else its
/// `exp`; `None` without a numeric `exp`. With `iat`: `now` plus its lifetime
/// `exp − iat` (a client clock that is off does not matter), but no later than its
/// `exp` when this clock says it is still valid: a token provider may hand out a cached
/// token issued long ago. (A clock so far ahead of the issuer's that the token looks
/// expired keeps the whole lifetime.)
pub fn expiry_ms(token: &str, now: u64) -> Option<u64> {
    let exp = expiry_s(token)?;
    let exp_ms = exp.saturating_mul(1000);
    Some(match claim_s(token, b"\"iat\"") {
        Some(iat) => {
            let by_lifetime = now.saturating_add(exp.saturating_sub(iat).saturating_mul(1000));
            if exp_ms > now {
                by_lifetime.min(exp_ms)
            } else {
                by_lifetime
            }
        }
        None => exp_ms,
    })
}

/// The numeric claim `key` (quoted, 5 bytes: `"exp"`) of a JWT, in seconds.
/// (Plain index loops: iterator adapters and `str::split` cost kilobytes of wasm here.)
fn claim_s(token: &str, key: &[u8; 5]) -> Option<u64> {
    let t = token.as_bytes();
    let start = t.iter().position(|&c| c == b'.')? + 1;
    let len = t[start..].iter().position(|&c| c == b'.')?;
    let p = base64url(&t[start..start + len])?;
    let mut i = 0;
    while i + 5 < p.len() {
        if &p[i..i + 5] == key {
            let mut j = skip_space(&p, i + 5);
            if p[j] == b':' {
                j = skip_space(&p, j + 1);
                let (mut n, mut digits) = (0u64, 0);
                while let Some(&d @ b'0'..=b'9') = p.get(j) {
                    if digits < 16 {
                        n = n * 10 + u64::from(d - b'0');
                    }
                    digits += 1;
                    j += 1;
                }
                // The integer part of `123` or `123.45`; an exponent (`1.7e9`) is not read.
                while matches!(p.get(j), Some(b'0'..=b'9' | b'.')) {
                    j += 1;
                }
                let exponent = matches!(p.get(j), Some(b'e' | b'E'));
                return (digits > 0 && digits <= 15 && !exponent).then_some(n);
            }
        }
        i += 1;
    }
    None
}

/// The index of the first byte at or after `i` that is not white space (at most the
/// last index: the payload never ends right after a key).
fn skip_space(p: &[u8], mut i: usize) -> usize {
    while i + 1 < p.len() && p[i].is_ascii_whitespace() {
        i += 1;
    }
    i.min(p.len() - 1)
}

/// Decodes unpadded (or padded) base64url; `None` on any other character.
fn base64url(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in text {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// A JWT with this payload (header `{"alg":"HS256"}`, a dummy signature), for tests.
#[cfg(test)]
pub(crate) fn test_jwt(payload: &str) -> String {
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut b64 = String::new();
    for chunk in payload.as_bytes().chunks(3) {
        let n = chunk.iter().fold(0u32, |a, &b| (a << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            b64.push(char::from(table[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    ["eyJhbGciOiJIUzI1NiJ9", &b64, "sig"].join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        test_jwt(payload)
    }

    /// PROTOCOL.md's example token: `{"sub":"ada","exp":1767225600,...}`.
    const EXAMPLE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZGEiLCJleHAiOjE3NjcyMjU2MDAsImdyb3VwcyI6WyJyb29tLTEiXSwidG9waWNzIjpbIm9yZGVycy4qIl0sImNoYW5uZWxzIjp7ImNoYXQiOlsicHVibGlzaCIsInN1YnNjcmliZSJdLCJ0aWNrZXRzIjpbInJlcXVlc3QiXX19.06yFbj1ehtDT6rDakONIjHl7uP92Ct7ifaQ3vZsgT5M";

    #[test]
    fn the_exp_of_the_protocol_example_token_is_read() {
        assert_eq!(expiry_s(EXAMPLE), Some(1_767_225_600));
    }

    #[test]
    fn exp_is_found_after_other_claims_that_mention_exp_as_a_value() {
        assert_eq!(expiry_s(&jwt(r#"{"sub":"exp","x":{"exp" : 5}}"#)), Some(5));
        assert_eq!(expiry_s(&jwt(r#"{ "exp":  42 , "sub": "a"}"#)), Some(42));
        assert_eq!(
            expiry_s(&jwt(r#"{"exp":1767225600.5}"#)),
            Some(1_767_225_600)
        );
    }

    #[test]
    fn with_iat_a_token_expires_its_lifetime_after_it_was_got_whatever_the_clock_says() {
        let token = jwt(r#"{"sub":"ada","iat":100,"exp":160}"#);
        assert_eq!(expiry_ms(&token, 5_000_000), Some(5_060_000));
        let no_iat = jwt(r#"{"sub":"ada","exp":160}"#);
        assert_eq!(expiry_ms(&no_iat, 5_000_000), Some(160_000));
        assert_eq!(expiry_ms(&jwt(r#"{"iat":100}"#), 5_000_000), None);
    }

    #[test]
    fn a_cached_token_expires_at_its_exp_when_the_clock_says_it_is_still_valid() {
        // Issued at 100 s for 60 s, got from a cache at 130 s: 30 s left, not 60.
        let token = jwt(r#"{"sub":"ada","iat":100,"exp":160}"#);
        assert_eq!(expiry_ms(&token, 130_000), Some(160_000));
        // Just issued: the lifetime, as before.
        assert_eq!(expiry_ms(&token, 100_000), Some(160_000));
        // A clock behind the issuer's: the lifetime, the shorter of the two.
        assert_eq!(expiry_ms(&token, 90_000), Some(150_000));
        // A clock past `exp`: the lifetime from now.
        assert_eq!(expiry_ms(&token, 160_000), Some(220_000));
    }

    #[test]
    fn a_token_that_is_no_jwt_or_has_no_numeric_exp_has_no_expiry() {
        for token in [
            "ada".to_string(),
            "a.b".to_string(),
            "x.$$$.y".to_string(),
            jwt(r#"{"sub":"ada"}"#),
            jwt(r#"{"exp":"soon"}"#),
            jwt(r#"{"exp":-5}"#),
            jwt(r#"{"exp":1.7e9}"#),
        ] {
            assert_eq!(expiry_s(&token), None, "{token}");
        }
    }
}
