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
        fnv1a_128(value.as_bytes()),
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

/// FNV-1a, 128 bits: stable across Rust versions and machines (unlike the standard
/// library's hasher, whose algorithm may change), and without a dependency. It is not
/// collision-resistant against someone crafting ids; the prefix kept in front of it
/// (a gateway's message ids start with the sender's user) confines a crafted
/// collision to the crafter's own messages.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes.iter().fold(OFFSET, |hash, &b| {
        (hash ^ u128::from(b)).wrapping_mul(PRIME)
    })
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
            format!("{:032x}", fnv1a_128(long.as_bytes()))
        );
        assert_eq!(
            format!("{:032x}", fnv1a_128(b"a")),
            "d228cb696f1a8caf78912b704e4a8964"
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
