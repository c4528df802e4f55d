//! ON_DEMAND scaling (issue 17): the metadata leader splits a shard that sustains more than its
//! write capacity and merges cold neighbours, with hysteresis, through the ordinary reshard
//! machinery (per-key order kept by the seal). Pure: it sees each open shard's write rates and
//! the time, and answers at most one reshard per stream at a time.
//!
//! - **Split** a shard whose writes stay at or above [`HOT_SHARE`] of [`WRITE_RECORDS_PER_SEC`]
//!   or [`WRITE_BYTES_PER_SEC`] (Kinesis's per-shard write capacity) for `split_after`, at the
//!   middle of its hash key range, while the stream has fewer than its shard limit. (Not above
//!   the capacity itself: with `--shard-throttling` a shard's applied writes never exceed it.)
//! - **Merge** two adjacent shards that both stay below [`COLD_SHARE`] of that capacity for
//!   `merge_after` (much longer than `split_after`, so a burst does not flap), while the stream
//!   keeps at least its floor: [`ON_DEMAND_SHARDS_MIN`] and one shard per MiB/s of warm
//!   throughput.
//! - **Grow to the warm throughput** ([`grow_to_warm`]): a stream with fewer open shards than
//!   its warm throughput asks for (one per MiB/s) has its widest shard split in the middle at
//!   once, whatever the load.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A shard's write capacity (Kinesis): 1,000 records or 1 MiB a second.
pub use millrace_proto::limits::{
    SHARD_WRITE_BYTES_PER_SEC as WRITE_BYTES_PER_SEC,
    SHARD_WRITE_RECORDS_PER_SEC as WRITE_RECORDS_PER_SEC,
};
/// A shard at or above this share of its capacity (in records or bytes) is hot.
pub const HOT_SHARE: f64 = 0.9;
/// A shard below this share of its capacity (in records and bytes) is cold.
pub const COLD_SHARE: f64 = 0.1;
/// An ON_DEMAND stream keeps at least this many open shards (the count it starts with).
pub const ON_DEMAND_SHARDS_MIN: u32 = 4;
/// How long a shard must stay hot before it is split...
pub const SPLIT_AFTER: Duration = Duration::from_secs(30);
/// ...and two neighbours cold before they are merged.
pub const MERGE_AFTER: Duration = Duration::from_secs(600);

/// One open shard of a stream, with its recent write rates.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardLoad {
    pub shard_id: String,
    pub starting_hash_key: u128,
    pub ending_hash_key: u128,
    pub records_per_sec: f64,
    pub bytes_per_sec: f64,
}

impl ShardLoad {
    fn hot(&self) -> bool {
        self.records_per_sec >= HOT_SHARE * WRITE_RECORDS_PER_SEC
            || self.bytes_per_sec >= HOT_SHARE * WRITE_BYTES_PER_SEC
    }

    fn cold(&self) -> bool {
        self.records_per_sec < COLD_SHARE * WRITE_RECORDS_PER_SEC
            && self.bytes_per_sec < COLD_SHARE * WRITE_BYTES_PER_SEC
    }
}

/// A reshard the scaler asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Split { shard_id: String, at: u128 },
    Merge { shard_id: String, adjacent: String },
}

/// The scaler's memory: since when each shard has been hot or cold.
#[derive(Debug)]
pub struct Scaler {
    pub split_after: Duration,
    pub merge_after: Duration,
    hot_since: HashMap<String, Instant>,
    cold_since: HashMap<String, Instant>,
}

impl Scaler {
    pub fn new(split_after: Duration, merge_after: Duration) -> Scaler {
        Scaler {
            split_after,
            merge_after,
            hot_since: HashMap::new(),
            cold_since: HashMap::new(),
        }
    }

    /// Notes `open` (a stream's open shards, with rates) at `now` and answers the reshard it
    /// needs, if any. `shards_min` and `shards_max` bound the open shards.
    pub fn observe(
        &mut self,
        open: &[ShardLoad],
        now: Instant,
        shards_min: u32,
        shards_max: u32,
    ) -> Option<Decision> {
        for s in open {
            track(&mut self.hot_since, &s.shard_id, s.hot(), now);
            track(&mut self.cold_since, &s.shard_id, s.cold(), now);
        }
        let lasted = |since: &HashMap<String, Instant>, id: &str, after: Duration| {
            since
                .get(id)
                .is_some_and(|t| now.saturating_duration_since(*t) >= after)
        };
        let count = open.len() as u32;
        if count < shards_max {
            // The hottest shard that has been hot long enough (and has a range to split).
            let hottest = open
                .iter()
                .filter(|s| lasted(&self.hot_since, &s.shard_id, self.split_after))
                .filter(|s| s.ending_hash_key - s.starting_hash_key >= 3)
                .max_by(|a, b| a.records_per_sec.total_cmp(&b.records_per_sec));
            if let Some(s) = hottest {
                let at = s.starting_hash_key + (s.ending_hash_key - s.starting_hash_key) / 2 + 1;
                return Some(Decision::Split {
                    shard_id: s.shard_id.clone(),
                    at,
                });
            }
        }
        if count > shards_min {
            let mut by_range: Vec<&ShardLoad> = open.iter().collect();
            by_range.sort_by_key(|s| s.starting_hash_key);
            let cold_pair = by_range.windows(2).find(|w| {
                w[0].ending_hash_key.checked_add(1) == Some(w[1].starting_hash_key)
                    && w.iter()
                        .all(|s| lasted(&self.cold_since, &s.shard_id, self.merge_after))
            });
            if let Some(w) = cold_pair {
                return Some(Decision::Merge {
                    shard_id: w[0].shard_id.clone(),
                    adjacent: w[1].shard_id.clone(),
                });
            }
        }
        None
    }

    /// Forgets shards no longer open (closed by a reshard).
    pub fn retain(&mut self, open: &dyn Fn(&str) -> bool) {
        self.hot_since.retain(|id, _| open(id));
        self.cold_since.retain(|id, _| open(id));
    }
}

/// The split that brings a stream with fewer open shards than its warm throughput asks for
/// (`warm_shards`: one per MiB/s) toward it at once, whatever the load: its widest shard, in the
/// middle (the first of equals). `None` once there, or at the stream's shard limit.
pub fn grow_to_warm(open: &[ShardLoad], warm_shards: u32, shards_max: u32) -> Option<Decision> {
    if open.len() as u32 >= warm_shards.min(shards_max) {
        return None;
    }
    let widest = open
        .iter()
        .filter(|s| s.ending_hash_key - s.starting_hash_key >= 3)
        .max_by_key(|s| {
            (
                s.ending_hash_key - s.starting_hash_key,
                std::cmp::Reverse(s.starting_hash_key),
            )
        })?;
    Some(Decision::Split {
        shard_id: widest.shard_id.clone(),
        at: widest.starting_hash_key + (widest.ending_hash_key - widest.starting_hash_key) / 2 + 1,
    })
}

fn track(since: &mut HashMap<String, Instant>, id: &str, now_true: bool, now: Instant) {
    match now_true {
        true => {
            since.entry(id.to_string()).or_insert(now);
        }
        false => {
            since.remove(id);
        }
    }
}

/// A leader's counters at one report: (when, records, bytes).
type Sample = (Instant, u64, u64);

/// A shard's write rates from its leader's cumulative counters, over a sliding window.
#[derive(Debug, Default)]
pub struct Rates {
    /// Per group: the reporting leader and its samples, oldest first.
    samples: HashMap<u64, (u64, Vec<Sample>)>,
}

/// The span of samples rates are measured over.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);

impl Rates {
    /// Notes a leader's counters for `group`. A new leader (or counters that went back, a
    /// restart) starts the group's samples afresh.
    pub fn sample(&mut self, group: u64, leader: u64, now: Instant, records: u64, bytes: u64) {
        let (who, samples) = self.samples.entry(group).or_insert((leader, Vec::new()));
        if *who == leader && samples.last().is_some_and(|(t, _, _)| *t == now) {
            return; // the same report seen again
        }
        let went_back = samples
            .last()
            .is_some_and(|(_, r, b)| records < *r || bytes < *b);
        if *who != leader || went_back {
            *who = leader;
            samples.clear();
        }
        samples.push((now, records, bytes));
        let keep_from = samples
            .iter()
            .rposition(|(t, _, _)| now.saturating_duration_since(*t) >= RATE_WINDOW)
            .unwrap_or(0);
        samples.drain(..keep_from);
    }

    /// (records/s, bytes/s) of `group`, once samples span at least a second.
    pub fn of(&self, group: u64) -> Option<(f64, f64)> {
        let (_, samples) = self.samples.get(&group)?;
        let (first, last) = (samples.first()?, samples.last()?);
        let dt = last.0.saturating_duration_since(first.0).as_secs_f64();
        (dt >= 1.0).then(|| {
            (
                (last.1 - first.1) as f64 / dt,
                (last.2 - first.2) as f64 / dt,
            )
        })
    }

    /// Forgets groups not in `keep`.
    pub fn retain(&mut self, keep: &dyn Fn(u64) -> bool) {
        self.samples.retain(|g, _| keep(*g));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(id: &str, range: (u128, u128), records_per_sec: f64) -> ShardLoad {
        ShardLoad {
            shard_id: id.into(),
            starting_hash_key: range.0,
            ending_hash_key: range.1,
            records_per_sec,
            bytes_per_sec: records_per_sec * 100.0,
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_shard_hot_long_enough_splits_in_the_middle() {
        let mut scaler = Scaler::new(3 * S, 60 * S);
        let t0 = Instant::now();
        let open = [load("a", (0, 99), 5000.0), load("b", (100, 199), 500.0)];
        assert_eq!(scaler.observe(&open, t0, 1, 10), None);
        assert_eq!(scaler.observe(&open, t0 + 2 * S, 1, 10), None);
        assert_eq!(
            scaler.observe(&open, t0 + 3 * S, 1, 10),
            Some(Decision::Split {
                shard_id: "a".into(),
                at: 50
            })
        );
        // At the stream's shard limit: no split.
        assert_eq!(scaler.observe(&open, t0 + 4 * S, 1, 2), None);
    }

    #[test]
    fn a_stream_below_its_warm_throughput_splits_its_widest_shard_at_once() {
        // One idle shard over the whole range, warm throughput for 4: split at once, in the
        // middle.
        let one = [load("a", (0, 799), 0.0)];
        assert_eq!(
            grow_to_warm(&one, 4, 10),
            Some(Decision::Split {
                shard_id: "a".into(),
                at: 400
            })
        );
        // Then the widest of what is open (the first of equals), until there.
        let three = [
            load("b", (0, 399), 0.0),
            load("c", (400, 599), 0.0),
            load("d", (600, 799), 0.0),
        ];
        assert_eq!(
            grow_to_warm(&three, 4, 10),
            Some(Decision::Split {
                shard_id: "b".into(),
                at: 200
            })
        );
        let four = [
            load("e", (0, 199), 0.0),
            load("f", (200, 399), 0.0),
            load("c", (400, 599), 0.0),
            load("d", (600, 799), 0.0),
        ];
        assert_eq!(grow_to_warm(&four, 4, 10), None);
        // No warm throughput, or at the stream's shard limit: nothing.
        assert_eq!(grow_to_warm(&one, 0, 10), None);
        assert_eq!(grow_to_warm(&three, 4, 3), None);
    }

    #[test]
    fn a_throttled_shard_at_its_capacity_is_hot() {
        // With --shard-throttling, applied writes stop at 1,000 records/s: still hot.
        let mut scaler = Scaler::new(3 * S, 60 * S);
        let t0 = Instant::now();
        let capped = [load("a", (0, 99), 1000.0)];
        assert_eq!(scaler.observe(&capped, t0, 1, 10), None);
        assert!(scaler.observe(&capped, t0 + 3 * S, 1, 10).is_some());
        let busy = [load("b", (0, 99), 850.0)];
        assert_eq!(scaler.observe(&busy, t0 + 10 * S, 1, 10), None);
        assert_eq!(scaler.observe(&busy, t0 + 20 * S, 1, 10), None);
    }

    #[test]
    fn a_burst_shorter_than_the_hysteresis_does_nothing() {
        let mut scaler = Scaler::new(3 * S, 60 * S);
        let t0 = Instant::now();
        let hot = [load("a", (0, 99), 5000.0)];
        let calm = [load("a", (0, 99), 500.0)];
        assert_eq!(scaler.observe(&hot, t0, 1, 10), None);
        assert_eq!(scaler.observe(&calm, t0 + 2 * S, 1, 10), None);
        // Hot again: the clock starts over.
        assert_eq!(scaler.observe(&hot, t0 + 4 * S, 1, 10), None);
        assert_eq!(scaler.observe(&hot, t0 + 6 * S, 1, 10), None);
        assert!(scaler.observe(&hot, t0 + 7 * S, 1, 10).is_some());
    }

    #[test]
    fn cold_neighbours_merge_above_the_floor_only() {
        let mut scaler = Scaler::new(3 * S, 60 * S);
        let t0 = Instant::now();
        let open = [
            load("c", (200, 299), 1.0),
            load("a", (0, 99), 1.0),
            load("b", (100, 199), 1.0),
        ];
        assert_eq!(scaler.observe(&open, t0, 2, 10), None);
        assert_eq!(
            scaler.observe(&open, t0 + 60 * S, 2, 10),
            Some(Decision::Merge {
                shard_id: "a".into(),
                adjacent: "b".into()
            })
        );
        // At the floor: nothing to merge.
        assert_eq!(scaler.observe(&open, t0 + 61 * S, 3, 10), None);
    }

    #[test]
    fn rates_come_from_one_leaders_counters_over_the_window() {
        let mut rates = Rates::default();
        let t0 = Instant::now();
        rates.sample(7, 1, t0, 0, 0);
        assert_eq!(rates.of(7), None);
        rates.sample(7, 1, t0 + 2 * S, 4000, 400_000);
        assert_eq!(rates.of(7), Some((2000.0, 200_000.0)));
        // Another leader's counters start over.
        rates.sample(7, 2, t0 + 3 * S, 10, 10);
        assert_eq!(rates.of(7), None);
        rates.sample(7, 2, t0 + 4 * S, 1010, 10);
        assert_eq!(rates.of(7), Some((1000.0, 0.0)));
        // Old samples leave the window.
        for i in 5..20 {
            rates.sample(7, 2, t0 + i * S, 1010, 10);
        }
        assert_eq!(rates.of(7), Some((0.0, 0.0)));
    }
}
