//! Shards: hash-key math, sequence numbers, the entry format, the leader's write coalescing,
//! the shard state machine and the read path.

pub mod dirty;
pub mod entry;
pub mod hashing;
pub mod machine;
pub mod proposer;
pub mod read;
pub mod read_ahead;
pub mod record_counts;
pub mod sequence;
pub mod throttle;
