//! Strings built by hand, without `core::fmt`: the formatting machinery (`format!`,
//! `Display` of integers) weighs several kilobytes in the wasm, and the SDK only ever
//! needs to glue a few pieces and print a decimal number.

/// The pieces one after another (`format!("{a}{b}{c}")` without `core::fmt`).
pub fn concat(parts: &[&str]) -> String {
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.push_str(part);
    }
    out
}

/// `n` in decimal (`n.to_string()` without `core::fmt`).
pub fn decimal(mut n: u64) -> String {
    let mut reversed = Vec::new();
    loop {
        reversed.push(b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    reversed.iter().rev().map(|&d| char::from(d)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_prints_like_to_string() {
        for n in [0, 7, 10, 99, 1_000, 4_999, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(decimal(n), n.to_string());
        }
    }

    #[test]
    fn concat_joins_the_pieces_in_order() {
        assert_eq!(concat(&["a", "", "bc", "d"]), "abcd");
        assert_eq!(concat(&[]), "");
    }
}
