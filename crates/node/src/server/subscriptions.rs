//! SubscribeToShard's rule that one consumer holds one subscription per shard: as in Kinesis,
//! a second call for the same consumer and shard within 5 seconds of a successful one is
//! refused (`ResourceInUseException`). Kept per node: a client that calls another node within
//! the 5 seconds is not refused (`docs/kinesis-api.md`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long after a successful SubscribeToShard the same consumer and shard are refused.
pub const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(5);

/// Subscriptions remembered at most (the oldest are forgotten first; each is forgotten
/// anyway [`RESUBSCRIBE_AFTER`] after it started).
pub const REMEMBERED_MAX: usize = 100_000;

/// Successful subscriptions of the last [`RESUBSCRIBE_AFTER`], by (consumer ARN, shard id).
#[derive(Debug, Default)]
pub struct RecentSubscriptions {
    started: HashMap<(String, String), Instant>,
}

impl RecentSubscriptions {
    /// Notes a subscription of `consumer` to `shard` starting at `now`, or refuses it with the
    /// time until it may, when one started less than [`RESUBSCRIBE_AFTER`] ago.
    pub fn start(&mut self, consumer: &str, shard: &str, now: Instant) -> Result<(), Duration> {
        let key = (consumer.to_string(), shard.to_string());
        if let Some(at) = self.started.get(&key) {
            let since = now.saturating_duration_since(*at);
            if since < RESUBSCRIBE_AFTER {
                return Err(RESUBSCRIBE_AFTER - since);
            }
        }
        if self.started.len() >= REMEMBERED_MAX {
            self.started
                .retain(|_, at| now.saturating_duration_since(*at) < RESUBSCRIBE_AFTER);
        }
        if self.started.len() >= REMEMBERED_MAX {
            // Every one is recent: forget the oldest.
            if let Some(oldest) = self
                .started
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(k, _)| k.clone())
            {
                self.started.remove(&oldest);
            }
        }
        self.started.insert(key, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_subscription_within_5_seconds_is_refused() {
        let mut s = RecentSubscriptions::default();
        let t0 = Instant::now();
        assert_eq!(s.start("arn:c1", "shardId-000000000000", t0), Ok(()));
        // Another shard, another consumer: their own.
        assert_eq!(s.start("arn:c1", "shardId-000000000001", t0), Ok(()));
        assert_eq!(s.start("arn:c2", "shardId-000000000000", t0), Ok(()));
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            s.start("arn:c1", "shardId-000000000000", later),
            Err(Duration::from_secs(3))
        );
        let after = t0 + RESUBSCRIBE_AFTER;
        assert_eq!(s.start("arn:c1", "shardId-000000000000", after), Ok(()));
    }

    #[test]
    fn memory_is_bounded() {
        let mut s = RecentSubscriptions::default();
        let t0 = Instant::now();
        for i in 0..REMEMBERED_MAX + 10 {
            assert!(s.start("arn:c", &i.to_string(), t0).is_ok());
        }
        assert_eq!(s.started.len(), REMEMBERED_MAX);
    }
}
