//! AMQP short strings built from data the library does not control — message ids,
//! correlation ids, consumer tags, `reply_to`, `app_id`, header names, routing keys,
//! exchange and queue names — without the panic of `ShortString::from` on more than
//! 255 bytes. Every short string the library builds from such data goes through
//! [`fitted`] (may be shortened) or [`exact`] (must arrive as it is, else an error).

use lapin::types::ShortString;

use crate::error::{Result, ServiceError};

/// Longest AMQP short string, in bytes.
pub const MAX_SHORT_STRING: usize = 255;

/// Hex digits of the hash that ends a shortened string.
const HASH_HEX: usize = 32;

/// Separates the kept prefix from the hash in a shortened string.
const HASH_SEPARATOR: char = '~';

/// `value` as a short string: as it is when it fits in 255 bytes; otherwise its
/// longest prefix (cut on a character boundary) that leaves room for `~` and 32 hex
/// digits of a 128-bit hash of the whole `value`.
///
/// Deterministic: the same `value` always gives the same short string — on every run,
/// build and machine — so an id derived from a redelivered message's id is the same
/// id again and receivers still drop the copy; two values differing anywhere (also
/// past the cut) give different strings, but for a hash collision.
///
/// For names the receiver only compares (message ids, consumer tags, `app_id`, header
/// names), not for names that must arrive as given (routing keys, queue names,
/// correlation ids): those use [`exact`].
pub fn fitted(value: &str) -> ShortString {
    if value.len() <= MAX_SHORT_STRING {
        return ShortString::from(value);
    }
    let mut cut = MAX_SHORT_STRING - HASH_HEX - HASH_SEPARATOR.len_utf8();
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    let short = format!(
        "{}{HASH_SEPARATOR}{:0width$x}",
        &value[..cut],
        hash_128(value.as_bytes()),
        width = HASH_HEX
    );
    ShortString::from(short)
}

/// `value` as a short string, unchanged.
///
/// # Errors
/// [`ServiceError::TooLongForAmqp`] naming `what` when `value` is longer than 255
/// bytes.
pub fn exact(what: &'static str, value: &str) -> Result<ShortString> {
    ShortString::try_new(value).map_err(|_| ServiceError::TooLongForAmqp {
        what,
        len: value.len(),
    })
}

/// The first 128 bits of the SHA-256 of `bytes` (sha2, already the gateway's): stable
/// across builds and machines (unlike the standard library's hasher), and not open to
/// someone crafting two ids that shorten to the same one.
fn hash_128(bytes: &[u8]) -> u128 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_that_fits_is_kept_as_it_is() {
        for value in ["", "alice:1", &"a".repeat(255)] {
            assert_eq!(fitted(value).as_str(), value);
        }
    }

    #[test]
    fn a_longer_string_becomes_a_prefix_and_a_hash_of_the_whole_within_255_bytes() {
        let long = format!("alice:{}:created", "x".repeat(245));
        let short = fitted(&long);
        assert_eq!(short.as_str().len(), MAX_SHORT_STRING);
        let (prefix, hash) = short.as_str().rsplit_once('~').unwrap();
        assert!(long.starts_with(prefix));
        assert_eq!(hash.len(), 32);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn the_same_long_string_always_gives_the_same_short_one() {
        let long = "r".repeat(300);
        assert_eq!(fitted(&long), fitted(&long.clone()));
        // Pinned: the hash must not change between builds, or an id derived before a
        // restart would differ from the same id derived after it.
        assert_eq!(
            fitted(&long).as_str().rsplit_once('~').unwrap().1,
            format!("{:032x}", hash_128(long.as_bytes()))
        );
        // SHA-256("a") begins ca978112ca1bbdcafac231b39a23dc4d.
        assert_eq!(
            format!("{:032x}", hash_128(b"a")),
            "ca978112ca1bbdcafac231b39a23dc4d"
        );
    }

    #[test]
    fn long_strings_differing_only_past_the_cut_stay_different() {
        let base = "p".repeat(300);
        let a = format!("{base}:created");
        let b = format!("{base}:closed");
        assert_ne!(fitted(&a), fitted(&b));
        assert_ne!(fitted(&a), fitted(&format!("{base}:relay")));
    }

    #[test]
    fn a_multibyte_character_is_never_cut_in_half() {
        for pad in 0..4 {
            let long = format!("{}{}", "a".repeat(pad), "é€😀".repeat(40));
            let short = fitted(&long);
            assert!(short.as_str().len() <= MAX_SHORT_STRING, "{pad}");
            let prefix = short.as_str().rsplit_once('~').unwrap().0;
            assert!(long.starts_with(prefix), "{pad}");
        }
    }

    #[test]
    fn exact_keeps_a_string_that_fits_and_refuses_a_longer_one() {
        assert_eq!(
            exact("routing key", "chat.all").unwrap().as_str(),
            "chat.all"
        );
        assert!(exact("routing key", &"k".repeat(255)).is_ok());
        let err = exact("correlation id", &"c".repeat(256)).unwrap_err();
        assert!(matches!(
            err,
            ServiceError::TooLongForAmqp {
                what: "correlation id",
                len: 256
            }
        ));
        assert!(err.to_string().contains("correlation id"), "{err}");
    }
}
