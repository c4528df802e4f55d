//! Optional per-shard throughput limits with the Kinesis figures (off by default):
//! writes 1 MiB/s or 1,000 records/s, reads 2 MiB/s and 5 GetRecords calls/s per shard
//! (Kinesis Data Streams quotas). Enforced at the shard's leader with token buckets whose burst
//! is one second's worth.

use std::time::Instant;

pub use millrace_proto::limits::{
    SHARD_READ_BYTES_PER_SEC as READ_BYTES_PER_SEC, SHARD_READ_CALLS_PER_SEC as READ_CALLS_PER_SEC,
    SHARD_WRITE_BYTES_PER_SEC as WRITE_BYTES_PER_SEC,
    SHARD_WRITE_RECORDS_PER_SEC as WRITE_RECORDS_PER_SEC,
};

/// A token bucket refilled continuously at `rate` per second up to `rate` (one second of burst).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Whether `amount` could be taken now (without taking it).
    pub fn has(&mut self, amount: f64, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= amount.min(self.rate)
    }

    /// Takes `amount` (the balance may go negative: a large read delays the next ones).
    pub fn take(&mut self, amount: f64, now: Instant) {
        self.refill(now);
        self.tokens -= amount;
    }
}

/// The four buckets of one shard.
#[derive(Debug, Clone)]
pub struct ShardThrottle {
    write_bytes: TokenBucket,
    write_records: TokenBucket,
    read_bytes: TokenBucket,
    read_calls: TokenBucket,
}

impl ShardThrottle {
    pub fn new(now: Instant) -> ShardThrottle {
        ShardThrottle {
            write_bytes: TokenBucket::new(WRITE_BYTES_PER_SEC, now),
            write_records: TokenBucket::new(WRITE_RECORDS_PER_SEC, now),
            read_bytes: TokenBucket::new(READ_BYTES_PER_SEC, now),
            read_calls: TokenBucket::new(READ_CALLS_PER_SEC, now),
        }
    }

    /// Admits a write of `records` records and `bytes` bytes, or says which limit it exceeds.
    pub fn admit_write(
        &mut self,
        records: usize,
        bytes: usize,
        now: Instant,
    ) -> Result<(), String> {
        if !self.write_records.has(records as f64, now) {
            return Err("the shard's write limit of 1,000 records per second is exceeded".into());
        }
        if !self.write_bytes.has(bytes as f64, now) {
            return Err("the shard's write limit of 1 MiB per second is exceeded".into());
        }
        self.write_records.take(records as f64, now);
        self.write_bytes.take(bytes as f64, now);
        Ok(())
    }

    /// Admits one GetRecords call (its bytes are charged afterwards with [`Self::charge_read`]).
    pub fn admit_read(&mut self, now: Instant) -> Result<(), String> {
        if !self.read_calls.has(1.0, now) {
            return Err("the shard's limit of 5 GetRecords calls per second is exceeded".into());
        }
        if !self.read_bytes.has(1.0, now) {
            return Err("the shard's read limit of 2 MiB per second is exceeded".into());
        }
        self.read_calls.take(1.0, now);
        Ok(())
    }

    pub fn charge_read(&mut self, bytes: usize, now: Instant) {
        self.read_bytes.take(bytes as f64, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn writes_are_limited_per_second_and_refill() {
        let t0 = Instant::now();
        let mut t = ShardThrottle::new(t0);
        assert!(t.admit_write(600, 1000, t0).is_ok());
        assert!(t
            .admit_write(600, 1000, t0)
            .unwrap_err()
            .contains("1,000 records"));
        assert!(t.admit_write(400, 1000, t0).is_ok());
        let later = t0 + Duration::from_millis(500);
        assert!(
            t.admit_write(500, 1000, later).is_ok(),
            "half a second refills half the bucket"
        );
        let mut t = ShardThrottle::new(t0);
        assert!(
            t.admit_write(1, 2 * 1024 * 1024, t0).is_ok(),
            "one big write fits a full bucket"
        );
        assert!(t.admit_write(1, 10, t0).unwrap_err().contains("1 MiB"));
    }

    #[test]
    fn reads_are_limited_to_five_calls_per_second() {
        let t0 = Instant::now();
        let mut t = ShardThrottle::new(t0);
        for _ in 0..5 {
            assert!(t.admit_read(t0).is_ok());
        }
        assert!(t.admit_read(t0).unwrap_err().contains("5 GetRecords"));
        assert!(t.admit_read(t0 + Duration::from_millis(250)).is_ok());
        t.charge_read(10 * 1024 * 1024, t0);
        assert!(t
            .admit_read(t0 + Duration::from_secs(1))
            .unwrap_err()
            .contains("2 MiB"));
    }
}
