//! Sequence numbers: derived from `(raft log index, position in batch)`, so they are stable once
//! the entry commits and need no translation table (DESIGN decision 2).
//!
//! `sequence_number = log_index * 2^20 + position`, written as a decimal string. A batch holds
//! at most 2^20 records, far above the PutRecords limit of 500.

use std::fmt;

/// Bits of the sequence number that hold the position within a batch.
pub const POSITION_BITS: u32 = 20;
/// Records one Raft entry may hold.
pub const BATCH_RECORDS_MAX: usize = 1 << POSITION_BITS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SequenceNumber {
    pub log_index: u64,
    pub position: u32,
}

impl SequenceNumber {
    pub fn new(log_index: u64, position: u32) -> SequenceNumber {
        debug_assert!((position as usize) < BATCH_RECORDS_MAX);
        SequenceNumber {
            log_index,
            position,
        }
    }

    pub fn as_u128(self) -> u128 {
        ((self.log_index as u128) << POSITION_BITS) | self.position as u128
    }

    pub fn from_u128(v: u128) -> Option<SequenceNumber> {
        let log_index = u64::try_from(v >> POSITION_BITS).ok()?;
        let position = (v & ((1u128 << POSITION_BITS) - 1)) as u32;
        Some(SequenceNumber {
            log_index,
            position,
        })
    }

    /// Parses a decimal sequence number, naming the field in the error.
    pub fn parse(field: &str, text: &str) -> Result<SequenceNumber, String> {
        let invalid = || format!("{field} {text:?} is not a valid sequence number");
        if text.is_empty() || text.len() > 39 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let v: u128 = text.parse().map_err(|_| invalid())?;
        SequenceNumber::from_u128(v).ok_or_else(invalid)
    }

    /// The position just after this record.
    pub fn next(self) -> SequenceNumber {
        SequenceNumber::new(self.log_index, self.position + 1)
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_u128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders() {
        let a = SequenceNumber::new(5, 0);
        let b = SequenceNumber::new(5, 499);
        let c = SequenceNumber::new(6, 0);
        assert!(a.as_u128() < b.as_u128() && b.as_u128() < c.as_u128());
        for s in [a, b, c, SequenceNumber::new(u64::MAX, (1 << 20) - 1)] {
            assert_eq!(SequenceNumber::parse("x", &s.to_string()), Ok(s));
        }
        assert!(SequenceNumber::parse("StartingSequenceNumber", "abc")
            .unwrap_err()
            .contains("StartingSequenceNumber"));
        assert!(SequenceNumber::parse("x", &u128::MAX.to_string()).is_err());
    }
}
