//! Shards: hash-key math, sequence numbers, the shard state machine and the read path.

pub mod dirty;
pub mod hashing;
pub mod machine;
pub mod read;
pub mod sequence;
pub mod throttle;
