//! **Deliberately broken behaviour**, for calibrating the fault-injection harness (`jepsen/`)
//! and nothing else. A harness that never fails proves nothing; switching one of these bugs on
//! must make it report an anomaly, and `tests/jepsen.rs` checks that it does.
//!
//! The switch exists only in debug builds, or in release builds compiled with the
//! `calibration-bugs` feature. Elsewhere [`inject`] refuses and [`injected`] is always `None`.
//! A node started with a bug says so in a warning at start-up.

use std::str::FromStr;
use std::sync::OnceLock;

/// True when this build can inject a calibration bug.
pub const AVAILABLE: bool = cfg!(any(debug_assertions, feature = "calibration-bugs"));

/// A known bug to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedBug {
    /// The log store reports appends durable before they are fsynced, and syncs them lazily
    /// about a second later (what NATS JetStream's default did). A `kill -9` keeps the page
    /// cache, so to show the effect a power cut would have, a restarted replica also drops
    /// every entry it had not yet synced.
    AckBeforeFsync,
    /// The read path skips one record whenever it cuts a page short: a reader never sees it.
    SkipSequenceNumber,
    /// Any node hosting a replica serves reads from it without asking the leader, and adds
    /// at the end the writes still in flight at this node, before they commit.
    UncommittedReads,
    /// The node drops every TransferLeader message it receives, as if lost on the way: a
    /// leader handing it a leadership waits for an election that never comes, unless it hands
    /// the leadership on (`tests/operations.rs` checks that it does; not a jepsen calibration).
    IgnoreTransferLeader,
    /// The flush coordinator never syncs: appends are acknowledged as durable while they sit in
    /// the page cache. A `kill -9` keeps the page cache, so only a power cut (the harness's
    /// `power-loss` nemesis) shows it.
    SkipFsync,
    /// Frames whose payload fails its checksum are read as if sound: recovery keeps them and
    /// reads serve them. The harness's `corrupt` nemesis must catch it (a replica left holding
    /// a damaged frame after the run).
    IgnoreCrc,
}

impl InjectedBug {
    pub const ALL: [InjectedBug; 6] = [
        InjectedBug::AckBeforeFsync,
        InjectedBug::SkipSequenceNumber,
        InjectedBug::UncommittedReads,
        InjectedBug::IgnoreTransferLeader,
        InjectedBug::SkipFsync,
        InjectedBug::IgnoreCrc,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InjectedBug::AckBeforeFsync => "ack-before-fsync",
            InjectedBug::SkipSequenceNumber => "skip-sequence-number",
            InjectedBug::UncommittedReads => "uncommitted-reads",
            InjectedBug::IgnoreTransferLeader => "ignore-transfer-leader",
            InjectedBug::SkipFsync => "skip-fsync",
            InjectedBug::IgnoreCrc => "ignore-crc",
        }
    }
}

impl FromStr for InjectedBug {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        InjectedBug::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = InjectedBug::ALL.iter().map(|b| b.name()).collect();
                format!("unknown calibration bug {s:?}; one of {}", names.join(", "))
            })
    }
}

static BUG: OnceLock<InjectedBug> = OnceLock::new();

/// Switches `bug` on for the rest of the process's life.
pub fn inject(bug: InjectedBug) -> Result<(), String> {
    if !AVAILABLE {
        return Err(format!(
            "this build cannot inject the calibration bug {:?}: only debug builds and builds \
             with the `calibration-bugs` feature can",
            bug.name()
        ));
    }
    BUG.set(bug).or_else(|_| match BUG.get() {
        Some(b) if *b == bug => Ok(()),
        _ => Err("a different calibration bug is already injected".to_string()),
    })
}

/// The injected bug, if any.
pub fn injected() -> Option<InjectedBug> {
    if AVAILABLE {
        BUG.get().copied()
    } else {
        None
    }
}

/// True when `bug` is injected.
pub fn is(bug: InjectedBug) -> bool {
    injected() == Some(bug)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for b in InjectedBug::ALL {
            assert_eq!(b.name().parse::<InjectedBug>(), Ok(b));
        }
        let err = "ack-late".parse::<InjectedBug>().unwrap_err();
        assert!(err.contains("ack-before-fsync"), "{err}");
    }
}
