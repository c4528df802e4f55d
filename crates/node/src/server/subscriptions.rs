//! SubscribeToShard's rule that one consumer holds one subscription per shard, as in Kinesis:
//! a second call for the same consumer and shard within 5 seconds of a successful one is
//! refused (`ResourceInUseException`), and a later one takes the subscription over (the earlier
//! one ends with `ResourceInUseException`). Kept per node: a client that calls another node is
//! neither refused nor does it end a subscription served elsewhere (`docs/kinesis-api.md`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long after a successful SubscribeToShard the same consumer and shard are refused.
pub const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(5);

/// Subscriptions remembered at most for the 5-second rule (the oldest are forgotten first;
/// each is forgotten anyway [`RESUBSCRIBE_AFTER`] after it started).
pub const REMEMBERED_MAX: usize = 100_000;

type Key = (String, String);

/// Successful subscriptions of the last [`RESUBSCRIBE_AFTER`], and those under way, by
/// (consumer ARN, shard id).
#[derive(Debug, Default)]
pub struct RecentSubscriptions {
    started: HashMap<Key, Instant>,
    /// The subscription under way per key: its number, and the sender whose drop ends it.
    active: HashMap<Key, (u64, watch::Sender<()>)>,
    numbered: u64,
    /// `active`'s size at which entries whose subscription is gone (dropped without
    /// [`RecentSubscriptions::finish`]) are swept; doubles with what is left.
    sweep_at: usize,
}

/// The least `sweep_at`.
const SWEEP_AT_MIN: usize = 1024;

/// One subscription under way: [`Subscribed::taken_over`] says when a later one replaced it.
#[derive(Debug)]
pub struct Subscribed {
    key: Key,
    number: u64,
    replaced: watch::Receiver<()>,
}

impl Subscribed {
    /// Whether a later subscription of the same consumer and shard took this one over.
    pub fn taken_over(&self) -> bool {
        self.replaced.has_changed().is_err()
    }

    /// Waits until a later subscription takes this one over.
    pub async fn wait_taken_over(&mut self) {
        while self.replaced.changed().await.is_ok() {}
    }
}

impl RecentSubscriptions {
    /// Starts a subscription of `consumer` to `shard` at `now`, taking over one under way; or
    /// refuses it with the time until it may, when one started less than [`RESUBSCRIBE_AFTER`]
    /// ago.
    pub fn start(
        &mut self,
        consumer: &str,
        shard: &str,
        now: Instant,
    ) -> Result<Subscribed, Duration> {
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
        self.started.insert(key.clone(), now);
        if self.active.len() >= self.sweep_at.max(SWEEP_AT_MIN) {
            self.active.retain(|_, (_, replace)| !replace.is_closed());
            self.sweep_at = 2 * self.active.len();
        }
        self.numbered += 1;
        let (replace, replaced) = watch::channel(());
        // Dropping the earlier one's sender ends it.
        self.active.insert(key.clone(), (self.numbered, replace));
        Ok(Subscribed {
            key,
            number: self.numbered,
            replaced,
        })
    }

    /// A subscription ended: forgets it, unless a later one took its place.
    pub fn finish(&mut self, sub: &Subscribed) {
        if self
            .active
            .get(&sub.key)
            .is_some_and(|(n, _)| *n == sub.number)
        {
            self.active.remove(&sub.key);
        }
    }

    /// Subscriptions under way.
    pub fn active(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_subscription_within_5_seconds_is_refused() {
        let mut s = RecentSubscriptions::default();
        let t0 = Instant::now();
        let first = s.start("arn:c1", "shardId-000000000000", t0).unwrap();
        // Another shard, another consumer: their own.
        let other_shard = s.start("arn:c1", "shardId-000000000001", t0).unwrap();
        let other_consumer = s.start("arn:c2", "shardId-000000000000", t0).unwrap();
        let later = t0 + Duration::from_secs(2);
        assert_eq!(
            s.start("arn:c1", "shardId-000000000000", later)
                .unwrap_err(),
            Duration::from_secs(3)
        );
        assert!(!first.taken_over(), "a refused call takes nothing over");
        let after = t0 + RESUBSCRIBE_AFTER;
        let second = s.start("arn:c1", "shardId-000000000000", after).unwrap();
        // The later subscription takes the earlier one over, and only that one.
        assert!(first.taken_over());
        assert!(!second.taken_over() && !other_shard.taken_over() && !other_consumer.taken_over());
        assert_eq!(s.active(), 3);
        // The ended one's finish leaves its successor in place; the successor's removes it.
        s.finish(&first);
        assert_eq!(s.active(), 3);
        s.finish(&second);
        assert_eq!(s.active(), 2);
        assert!(!other_shard.taken_over());
    }

    #[tokio::test]
    async fn a_subscription_taken_over_wakes_its_waiter() {
        let mut s = RecentSubscriptions::default();
        let t0 = Instant::now();
        let mut first = s.start("arn:c", "shard", t0).unwrap();
        let waiter = tokio::spawn(async move {
            first.wait_taken_over().await;
            first.taken_over()
        });
        let _second = s.start("arn:c", "shard", t0 + RESUBSCRIBE_AFTER).unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken within 5 s");
        assert!(woke.unwrap());
    }

    #[test]
    fn memory_is_bounded() {
        let mut s = RecentSubscriptions::default();
        let t0 = Instant::now();
        for i in 0..REMEMBERED_MAX + 10 {
            assert!(s.start("arn:c", &i.to_string(), t0).is_ok());
        }
        assert_eq!(s.started.len(), REMEMBERED_MAX);
        // Those subscriptions were dropped without a finish: their entries are swept.
        assert!(s.active() <= SWEEP_AT_MIN, "{}", s.active());
    }
}
