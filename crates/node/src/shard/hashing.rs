//! Hash-key math: partition key → 128-bit hash key, and the even split of the key space.

use md5::{Digest, Md5};

/// The hash key of a partition key: MD5 of its UTF-8 bytes read as an unsigned 128-bit
/// big-endian integer (as Kinesis does).
pub fn partition_key_hash(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// Parses an explicit hash key: a decimal in `[0, 2^128 - 1]`.
pub fn parse_explicit_hash_key(text: &str) -> Result<u128, String> {
    if text.is_empty() || text.len() > 39 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "ExplicitHashKey {text:?} must be a decimal integer in [0, 2^128-1]"
        ));
    }
    text.parse::<u128>()
        .map_err(|_| format!("ExplicitHashKey {text:?} must be a decimal integer in [0, 2^128-1]"))
}

/// Splits the whole hash-key space into `n` contiguous inclusive ranges of near-equal size;
/// the last range ends at `2^128 - 1`.
pub fn even_ranges(n: u32) -> Vec<(u128, u128)> {
    assert!(n > 0, "at least one shard");
    if n == 1 {
        return vec![(0, u128::MAX)];
    }
    let n = n as u128;
    // 2^128 = n * q + rem + 1, so each shard gets `base` keys and the first `extra` one more.
    let (q, rem) = (u128::MAX / n, u128::MAX % n);
    let base = q + (rem + 1) / n;
    let extra = (rem + 1) % n;
    let start = |i: u128| i * base + i.min(extra);
    (0..n)
        .map(|i| {
            let end = if i + 1 == n {
                u128::MAX
            } else {
                start(i + 1) - 1
            };
            (start(i), end)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_kinesis_convention() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(partition_key_hash(""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    #[test]
    fn ranges_cover_the_space_without_gaps() {
        for n in [1u32, 2, 3, 4, 7, 100, 1000] {
            let r = even_ranges(n);
            assert_eq!(r.len(), n as usize);
            assert_eq!(r[0].0, 0);
            assert_eq!(r.last().unwrap().1, u128::MAX);
            for w in r.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0);
                assert!(w[0].0 <= w[0].1);
            }
            let sizes: Vec<u128> = r.iter().map(|(a, b)| b - a).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "n={n}: uneven split");
        }
        assert_eq!(even_ranges(2)[1].0, 1u128 << 127);
    }

    #[test]
    fn explicit_hash_keys_are_validated() {
        assert_eq!(parse_explicit_hash_key("0"), Ok(0));
        assert_eq!(
            parse_explicit_hash_key("340282366920938463463374607431768211455"),
            Ok(u128::MAX)
        );
        assert!(parse_explicit_hash_key("340282366920938463463374607431768211456").is_err());
        assert!(parse_explicit_hash_key("-1").is_err());
        assert!(parse_explicit_hash_key("").is_err());
        assert!(parse_explicit_hash_key("12a").is_err());
    }
}
