//! Shard iterators: opaque, tamper-evident, expiring cursors (format v1).
//!
//! `base64url(JSON payload) "." base64url(HMAC-SHA256(cluster secret, payload)[..16])`.
//! The cluster secret is created once by the metadata leader and replicated in the metadata, so
//! an iterator issued by any node is accepted by every node. Iterators expire five minutes after
//! they are issued, as in Kinesis (`ServeConfig::iterator_ttl_ms`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::error::ApiError;

const MAC_BYTES: usize = 16;
/// Longest iterator accepted (Kinesis allows 512 characters; ours stay well below).
pub const ITERATOR_CHARS_MAX: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IteratorToken {
    #[serde(rename = "v")]
    pub version: u8,
    #[serde(rename = "s")]
    pub stream: String,
    #[serde(rename = "h")]
    pub shard_id: String,
    #[serde(rename = "g")]
    pub group_id: u64,
    #[serde(rename = "i")]
    pub index: u64,
    #[serde(rename = "p")]
    pub position: u32,
    #[serde(rename = "e")]
    pub expires_ms: i64,
    /// An AT_TIMESTAMP iterator made before its time: records that arrived before this are
    /// skipped, until the first record at or after it is read (added to format v1: older
    /// iterators have none).
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
}

fn mac(secret: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(payload);
    m.finalize().into_bytes()[..MAC_BYTES].to_vec()
}

impl IteratorToken {
    pub fn encode(&self, secret: &[u8]) -> String {
        let payload = serde_json::to_vec(self).expect("iterator serialises");
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(mac(secret, &payload))
        )
    }

    /// Decodes and verifies an iterator: a bad MAC or shape is INVALID_ARGUMENT, an old one
    /// EXPIRED_ITERATOR (iterators live `ttl_ms`, which the message names).
    pub fn decode(
        text: &str,
        secret: &[u8],
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<IteratorToken, ApiError> {
        let invalid = || ApiError::InvalidArgument("Invalid ShardIterator.".into());
        if text.is_empty() || text.len() > ITERATOR_CHARS_MAX {
            return Err(invalid());
        }
        let (payload, tag) = text.split_once('.').ok_or_else(invalid)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| invalid())?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| invalid())?;
        let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        m.update(&payload);
        m.verify_truncated_left(&tag).map_err(|_| invalid())?;
        if tag.len() != MAC_BYTES {
            return Err(invalid());
        }
        let token: IteratorToken = serde_json::from_slice(&payload).map_err(|_| invalid())?;
        if token.version != 1 {
            return Err(invalid());
        }
        if token.expires_ms < now_ms {
            let created_ms = token.expires_ms - ttl_ms;
            return Err(ApiError::ExpiredIterator(
                crate::messages::iterator_expired(created_ms, now_ms, ttl_ms),
            ));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> IteratorToken {
        IteratorToken {
            version: 1,
            stream: "s".into(),
            shard_id: "shardId-000000000000".into(),
            group_id: 3,
            index: 10,
            position: 2,
            expires_ms: 1000,
            not_before_ms: None,
        }
    }

    #[test]
    fn round_trip_and_expiry() {
        let t = token();
        assert_eq!(
            IteratorToken::decode(&t.encode(b"k"), b"k", 999, 300_000).unwrap(),
            t
        );
        assert!(matches!(
            IteratorToken::decode(&t.encode(b"k"), b"k", 1001, 300_000),
            Err(ApiError::ExpiredIterator(_))
        ));
    }

    #[test]
    fn tampering_is_rejected() {
        let t = token();
        let text = t.encode(b"secret");
        // Another cluster's secret.
        assert!(matches!(
            IteratorToken::decode(&text, b"other", 0, 300_000),
            Err(ApiError::InvalidArgument(_))
        ));
        // A payload changed to point elsewhere, keeping the old MAC.
        let forged = IteratorToken {
            index: 0,
            ..t.clone()
        };
        let (_, tag) = text.split_once('.').unwrap();
        let (payload, _) = forged
            .encode(b"secret")
            .split_once('.')
            .map(|(p, _)| (p.to_string(), ()))
            .unwrap();
        assert!(IteratorToken::decode(&format!("{payload}.{tag}"), b"secret", 0, 300_000).is_err());
        // Any single changed character is caught.
        for i in 0..text.len() {
            let mut bytes = text.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let changed = String::from_utf8(bytes).unwrap();
            if changed != text {
                assert!(
                    IteratorToken::decode(&changed, b"secret", 0, 300_000).is_err(),
                    "flip at {i}"
                );
            }
        }
        assert!(IteratorToken::decode("garbage", b"secret", 0, 300_000).is_err());
    }
}
