//! Retention (DESIGN decision 4): drop expired records without big snapshots.
//!
//! 1. A shard's leader picks the boundary R — the last entry before the first batch that
//!    arrived within the retention period — and appends a `RetentionMark{R}` entry, so every
//!    replica agrees on R.
//! 2. Every replica that has applied a mark above its purge point sets its snapshot point to
//!    the log id at R, triggers a snapshot (built at exactly R: the membership as of R and the
//!    seal if at or before R, persisted in sled), waits for it, then purges the log up to R and
//!    waits for that; whole segment files at or below R are deleted.
//! 3. A replica that needs entries at or below R later gets the snapshot at R and then R+1…
//!    as ordinary entries.

use std::sync::Arc;
use std::time::Duration;

use millrace_proto::storage::{shard_command, RetentionMark};
use millrace_raft::codec::decode_log_id;
use millrace_raft::group::GroupHandle;
use millrace_raft::Request;
use openraft::async_runtime::WatchReceiver;

use super::node::Node;
use super::now_ms;
use crate::shard::machine::ShardShared;
use crate::shard::read::find_index_at_timestamp;

/// How long one snapshot or purge step may take before the next round retries it.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn retention_loop(node: Arc<Node>) {
    let interval = Duration::from_millis(node.config.retention_check_interval_ms);
    loop {
        tokio::time::sleep(interval).await;
        let groups: Vec<(u64, i64)> = node.meta.read(|s| {
            s.shards_on(node.id)
                .map(|(st, sh)| {
                    let retention_ms = match node.config.test_retention_seconds {
                        Some(secs) => secs as i64 * 1000,
                        None => i64::from(st.retention_period_hours) * 3_600_000,
                    };
                    (sh.group_id, retention_ms)
                })
                .collect()
        });
        for (group_id, retention_ms) in groups {
            let (Some(h), Some(shared)) = (node.groups.get(group_id), node.shard_shared(group_id))
            else {
                continue;
            };
            if h.raft.is_leader() {
                if let Err(e) = propose_mark(&h, &shared, now_ms() - retention_ms).await {
                    tracing::warn!(group_id, error = %e, "cannot propose a retention mark");
                }
            }
            if let Err(e) = apply_mark(&h, &shared).await {
                tracing::warn!(group_id, error = %e, "retention step failed; retrying next round");
            }
        }
    }
}

/// On the leader: marks everything before the first batch that arrived at or after `cutoff_ms`.
async fn propose_mark(h: &GroupHandle, shared: &ShardShared, cutoff_ms: i64) -> Result<(), String> {
    let Some(applied) = shared.applied_index() else {
        return Ok(());
    };
    let (Some(first), _) = h.log.bounds() else {
        return Ok(());
    };
    let start = shared.scan_start_for(cutoff_ms).max(first);
    let keep_from = find_index_at_timestamp(&h.log, applied, start, cutoff_ms)?;
    let Some(upto) = keep_from.checked_sub(1) else {
        return Ok(());
    };
    let done = shared
        .retention_mark()
        .unwrap_or(0)
        .max(first.saturating_sub(1));
    if upto <= done || upto < first {
        return Ok(());
    }
    let mark =
        crate::shard::entry::encode_command(shard_command::Command::RetentionMark(RetentionMark {
            upto_index: upto,
        }));
    h.raft
        .client_write(Request(mark.into()))
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(group_id = h.group_id, upto, "retention mark appended");
    let _ = h.raft.trigger().heartbeat().await;
    Ok(())
}

/// On every replica: snapshot at the applied mark R, then purge the log up to R.
async fn apply_mark(h: &GroupHandle, shared: &ShardShared) -> Result<(), String> {
    let Some(mark) = shared.retention_mark() else {
        return Ok(());
    };
    let purged = h.raft.metrics().borrow_watched().purged.map(|l| l.index);
    if purged.is_some_and(|p| p >= mark) {
        return Ok(());
    }
    let snapshot = h.raft.metrics().borrow_watched().snapshot;
    if snapshot.is_none_or(|s| s.index < mark) {
        let raw = h
            .log
            .read_raw(mark, mark + 1, usize::MAX)
            .map_err(|e| e.to_string())?;
        let Some((_, bytes)) = raw.first() else {
            // Already gone from the local log (a snapshot at or past R was installed).
            return Ok(());
        };
        let at = decode_log_id(mark, bytes)?;
        h.sm.set_snapshot_point(at);
        h.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| e.to_string())?;
        h.raft
            .wait(Some(STEP_TIMEOUT))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= mark),
                "retention snapshot",
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    h.raft
        .trigger()
        .purge_log(mark)
        .await
        .map_err(|e| e.to_string())?;
    h.raft
        .wait(Some(STEP_TIMEOUT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= mark),
            "retention purge",
        )
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(group_id = h.group_id, upto = mark, "expired records purged");
    Ok(())
}
