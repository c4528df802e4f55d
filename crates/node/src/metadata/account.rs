//! Account settings (Kinesis DescribeAccountSettings / UpdateAccountSettings): the minimum
//! throughput billing commitment. Millrace bills nothing, so the setting is stored and reported
//! with Kinesis's rules for its life: once enabled it runs for at least
//! [`COMMITMENT_MINIMUM_MS`]; disabling it before then leaves it
//! `ENABLED_UNTIL_EARLIEST_ALLOWED_END`, after which it reads `DISABLED`.
//!
//! Pure: the time of a change is the proposer's clock, carried in the command, so every
//! replica applies the same state.

use serde::{Deserialize, Serialize};

/// How long a commitment runs at least, once enabled (24 hours).
pub const COMMITMENT_MINIMUM_MS: i64 = 24 * 3_600_000;

/// The commitment's life, as stored in the metadata (`MetaState::account`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSettings {
    /// When the current (or last) commitment started; `None`: never enabled.
    pub started_ms: Option<i64>,
    /// When it ends (or ended), once disabling was asked for.
    pub ends_ms: Option<i64>,
}

/// What DescribeAccountSettings reports at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitmentView {
    pub status: &'static str,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub earliest_allowed_end_ms: Option<i64>,
}

impl AccountSettings {
    /// UpdateAccountSettings at `now_ms`: `enable` starts a commitment (or cancels a pending
    /// end); disabling ends it now, or at its earliest allowed end if that is still to come.
    pub fn set_commitment(&mut self, enable: bool, now_ms: i64) {
        let active = self.started_ms.is_some() && self.ends_ms.is_none_or(|end| end > now_ms);
        match (enable, active) {
            (true, true) => self.ends_ms = None,
            (true, false) => {
                self.started_ms = Some(now_ms);
                self.ends_ms = None;
            }
            (false, true) => {
                let earliest = self.earliest_end().unwrap_or(now_ms);
                self.ends_ms = Some(earliest.max(now_ms));
            }
            (false, false) => {}
        }
    }

    fn earliest_end(&self) -> Option<i64> {
        self.started_ms.map(|s| s + COMMITMENT_MINIMUM_MS)
    }

    /// The commitment as of `now_ms`.
    pub fn view(&self, now_ms: i64) -> CommitmentView {
        let status = match (self.started_ms, self.ends_ms) {
            (None, _) => "DISABLED",
            (Some(_), None) => "ENABLED",
            (Some(_), Some(end)) if end > now_ms => "ENABLED_UNTIL_EARLIEST_ALLOWED_END",
            (Some(_), Some(_)) => "DISABLED",
        };
        CommitmentView {
            status,
            started_ms: self.started_ms,
            ended_ms: self.ends_ms.filter(|end| *end <= now_ms),
            earliest_allowed_end_ms: self.earliest_end().filter(|_| status != "DISABLED"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn a_commitment_runs_at_least_its_minimum() {
        let mut a = AccountSettings::default();
        assert_eq!(a.view(0).status, "DISABLED");
        a.set_commitment(true, 10 * H);
        let v = a.view(11 * H);
        assert_eq!(
            (v.status, v.started_ms, v.earliest_allowed_end_ms),
            ("ENABLED", Some(10 * H), Some(34 * H))
        );
        // Disabled early: it runs on until its earliest allowed end.
        a.set_commitment(false, 12 * H);
        assert_eq!(a.view(13 * H).status, "ENABLED_UNTIL_EARLIEST_ALLOWED_END");
        let after = a.view(34 * H);
        assert_eq!((after.status, after.ended_ms), ("DISABLED", Some(34 * H)));
        // Enabled again before then: the pending end is cancelled.
        let mut b = a.clone();
        b.set_commitment(true, 20 * H);
        assert_eq!(b.view(40 * H).status, "ENABLED");
        assert_eq!(b.view(40 * H).started_ms, Some(10 * H));
        // After it ended, enabling starts a new commitment.
        a.set_commitment(true, 50 * H);
        assert_eq!(a.view(51 * H).started_ms, Some(50 * H));
        // Disabling after the minimum ends it at once.
        a.set_commitment(false, 80 * H);
        assert_eq!(a.view(80 * H).status, "DISABLED");
        assert_eq!(a.view(80 * H).ended_ms, Some(80 * H));
    }
}
