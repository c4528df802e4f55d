//! How many records each applied entry of a shard added, as a running count: what a consumer
//! group's lag in records is measured with (`millrace_consumer_group_lag_records`).
//!
//! One `u32` per retained entry: the records applied through that entry, modulo 2^32
//! (differences use wrapping arithmetic, exact for any lag under 2^32 records). The segment log
//! already keeps 8 bytes per entry in memory (its frame offsets); this adds half of that.
//! Entries purged by retention are forgotten with them. Counts live in memory only: a replica
//! rebuilds them as it applies its log after a restart, which starts them afresh.

use std::collections::VecDeque;

use super::machine::Span;

/// Running record counts of the entries `base..base + through.len()`.
#[derive(Debug, Default)]
pub struct RecordCounts {
    /// Log index of `through[0]`.
    base: u64,
    /// The running count before `base`.
    before: u32,
    /// `through[i]`: the running count through entry `base + i`.
    through: VecDeque<u32>,
}

/// Where a consumer stands behind a shard's applied entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    /// Records applied after the checkpoint.
    pub records: u64,
    /// The log index of the first of them (to read its arrival time), if any.
    pub first_index: Option<u64>,
}

impl RecordCounts {
    /// Notes that the entry at `index` added `records` (0 for commands, batches refused after
    /// a seal and idempotent producers' retries). An index that does not follow the last one
    /// (the first after a restart or a snapshot install) starts the counts afresh.
    pub fn push(&mut self, index: u64, records: u64) {
        if self.base + self.through.len() as u64 != index {
            self.base = index;
            self.before = 0;
            self.through.clear();
        }
        let last = self.through.back().copied().unwrap_or(self.before);
        self.through.push_back(last.wrapping_add(records as u32));
    }

    /// Forgets the entries up to and including `index` (purged by retention).
    pub fn forget_upto(&mut self, index: u64) {
        while self.base <= index {
            let Some(front) = self.through.pop_front() else {
                break;
            };
            self.before = front;
            self.base += 1;
        }
    }

    /// Entries counted.
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.through.len()
    }

    /// The running count through `index` (`before` for anything before `base`).
    fn through(&self, index: u64) -> u32 {
        match index.checked_sub(self.base) {
            Some(i) => self.through[i as usize],
            None => self.before,
        }
    }

    /// Records the entry at `index` added, if it is counted.
    fn records_of(&self, index: u64) -> Option<u32> {
        let i = index.checked_sub(self.base)? as usize;
        let now = *self.through.get(i)?;
        let previous = match i {
            0 => self.before,
            i => self.through[i - 1],
        };
        Some(now.wrapping_sub(previous))
    }

    /// How far a consumer whose checkpoint is the record at `(index, position)` is behind
    /// the counted entries. `duplicates` are the positions of `index`'s entry that repeat an
    /// earlier request (not records of the shard). A checkpoint before the counted entries
    /// (or none) is behind all of them.
    pub fn behind(&self, checkpoint: Option<(u64, u32)>, duplicates: &[Span]) -> Behind {
        let nothing = Behind {
            records: 0,
            first_index: None,
        };
        let Some(last) = self
            .through
            .len()
            .checked_sub(1)
            .map(|n| self.base + n as u64)
        else {
            return nothing;
        };
        // The running count the checkpoint stands at, the records left in its own entry, and
        // the first entry after it.
        let (done, in_entry, next) = match checkpoint {
            Some((index, _)) if index > last => return nothing,
            Some((index, position)) if index >= self.base => {
                let records = self.records_of(index).unwrap_or(0);
                let in_entry = later_in_entry(records, position, duplicates);
                (self.through(index), in_entry, index + 1)
            }
            _ => (self.before, 0, self.base),
        };
        let after = self.through(last).wrapping_sub(done);
        let first_index = match (in_entry, checkpoint) {
            (1.., Some((index, _))) => Some(index),
            _ => (next..=last).find(|i| self.records_of(*i).is_some_and(|n| n > 0)),
        };
        Behind {
            records: u64::from(after) + u64::from(in_entry),
            first_index,
        }
    }
}

/// Records of an entry that added `records` at positions after `position`, skipping the
/// `duplicates` spans (positions that repeat an earlier request and are not records).
fn later_in_entry(records: u32, position: u32, duplicates: &[Span]) -> u32 {
    if records == 0 {
        return 0;
    }
    let repeated: u32 = duplicates
        .iter()
        .map(|(from, to)| to.saturating_sub(*from))
        .sum();
    let positions = records.saturating_add(repeated);
    let later = position.saturating_add(1)..positions;
    let repeated_later: u32 = duplicates
        .iter()
        .map(|(from, to)| {
            let (a, b) = ((*from).max(later.start), (*to).min(later.end));
            b.saturating_sub(a)
        })
        .sum();
    (later.end.saturating_sub(later.start)).saturating_sub(repeated_later)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(entries: &[(u64, u64)]) -> RecordCounts {
        let mut c = RecordCounts::default();
        for (index, records) in entries {
            c.push(*index, *records);
        }
        c
    }

    #[test]
    fn behind_counts_the_records_after_the_checkpoint() {
        // Entries 1..=4: 3 records, a command, 2 records, 5 records.
        let c = counts(&[(1, 3), (2, 0), (3, 2), (4, 5)]);
        let behind = |checkpoint| c.behind(checkpoint, &[]);
        assert_eq!(
            behind(None),
            Behind {
                records: 10,
                first_index: Some(1)
            }
        );
        // The last record of entry 1 processed: entries 3 and 4 remain (the command holds none).
        assert_eq!(
            behind(Some((1, 2))),
            Behind {
                records: 7,
                first_index: Some(3)
            }
        );
        // Mid-entry: two records of entry 1 remain.
        assert_eq!(
            behind(Some((1, 0))),
            Behind {
                records: 9,
                first_index: Some(1)
            }
        );
        assert_eq!(behind(Some((4, 4))).records, 0);
        assert_eq!(behind(Some((4, 4))).first_index, None);
        assert_eq!(behind(Some((9, 0))).records, 0);
    }

    #[test]
    fn retention_and_restarts_start_the_counts_afresh() {
        let mut c = counts(&[(1, 3), (2, 2), (3, 4)]);
        c.forget_upto(1);
        assert_eq!(c.entries(), 2);
        // A checkpoint in the purged prefix is behind everything retained.
        assert_eq!(c.behind(Some((1, 2)), &[]).records, 6);
        assert_eq!(c.behind(Some((2, 1)), &[]).records, 4);
        c.forget_upto(3);
        assert_eq!(c.entries(), 0);
        c.push(4, 7);
        assert_eq!(c.behind(Some((3, 3)), &[]).records, 7);
        // A gap (a snapshot installed past the counted entries) starts afresh.
        c.push(10, 1);
        assert_eq!(c.entries(), 1);
        assert_eq!(c.behind(None, &[]).records, 1);
    }

    #[test]
    fn counts_wrap_without_losing_a_difference() {
        let mut c = RecordCounts::default();
        c.push(1, u64::from(u32::MAX) - 1);
        c.push(2, 5);
        assert_eq!(c.behind(Some((1, u32::MAX - 2)), &[]).records, 5);
    }

    #[test]
    fn an_idempotent_retry_in_the_checkpoint_entry_is_not_behind() {
        // Entry 1 holds positions 0..6, of which 2..4 repeat an earlier request: 4 records.
        let c = counts(&[(1, 4)]);
        assert_eq!(c.behind(Some((1, 1)), &[(2, 4)]).records, 2);
        assert_eq!(c.behind(Some((1, 3)), &[(2, 4)]).records, 2);
        assert_eq!(c.behind(Some((1, 4)), &[(2, 4)]).records, 1);
        assert_eq!(later_in_entry(0, 0, &[(0, u32::MAX)]), 0);
    }
}
