//! Shard iterators: opaque, expiring cursors. Format v1 is base64url of a small JSON object;
//! a keyed MAC against tampering comes with the streams issue (docs/limits.md notes it).

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::error::ApiError;

/// Iterators expire five minutes after they are issued (as in Kinesis).
pub const ITERATOR_TTL_MS: i64 = 5 * 60 * 1000;

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
}

impl IteratorToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("iterator serialises");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(text: &str, now_ms: i64) -> Result<IteratorToken, ApiError> {
        let invalid =
            || ApiError::InvalidArgument("ShardIterator is not a valid shard iterator".into());
        if text.is_empty() || text.len() > 1024 {
            return Err(invalid());
        }
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| invalid())?;
        let token: IteratorToken = serde_json::from_slice(&raw).map_err(|_| invalid())?;
        if token.version != 1 {
            return Err(invalid());
        }
        if token.expires_ms < now_ms {
            return Err(ApiError::ExpiredIterator(format!(
                "Iterator expired {} ms ago; iterators are valid for 5 minutes",
                now_ms - token.expires_ms
            )));
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_expiry() {
        let t = IteratorToken {
            version: 1,
            stream: "s".into(),
            shard_id: "shardId-000000000000".into(),
            group_id: 3,
            index: 10,
            position: 2,
            expires_ms: 1000,
        };
        assert_eq!(IteratorToken::decode(&t.encode(), 999).unwrap(), t);
        assert!(matches!(
            IteratorToken::decode(&t.encode(), 1001),
            Err(ApiError::ExpiredIterator(_))
        ));
        assert!(matches!(
            IteratorToken::decode("garbage!", 0),
            Err(ApiError::InvalidArgument(_))
        ));
    }
}
