//! A latency histogram that hot paths can record into without a lock: fixed buckets of atomic
//! counters. Exported by the node's `/metrics` (see `docs/metrics.md`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (from 100 µs, the fastest fsync here, to 10 s).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_SECONDS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// What a histogram held at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// (upper bound in seconds, observations in this bucket alone); the last bound is
    /// `f64::MAX` (+Inf).
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let i = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let bounds = LATENCY_BUCKETS_SECONDS.iter().copied().chain([f64::MAX]);
        HistogramSnapshot {
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
            buckets: bounds
                .zip(&self.buckets)
                .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(100)); // on the first bound: first bucket
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert!((s.sum_seconds - 60.003201).abs() < 1e-9);
        let count_at = |bound: f64| s.buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(count_at(0.0001), 1);
        assert_eq!(count_at(0.00025), 1);
        assert_eq!(count_at(0.005), 1);
        assert_eq!(count_at(f64::MAX), 1);
        assert_eq!(s.buckets.iter().map(|(_, n)| n).sum::<u64>(), 4);
    }
}
