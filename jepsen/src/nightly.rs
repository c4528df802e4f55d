//! The nightly tier's summary (issue 18): one row per run folder — its nemeses, rate, `ok`
//! operations, anomalies, and the longest unavailability after each kind of fault — and the
//! totals, as a Markdown table (`millrace-jepsen summarize DIR...`, run by
//! `jepsen/scripts/nightly.sh`).
//!
//! Unavailability after a fault is the longest gap between consecutive acknowledged sends
//! (over all keys) from the fault's start to [`WINDOW_S`] after it, counting from the last
//! acknowledged send before the start. A window with no acknowledged send counts in full.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::history::{self, Event, Kind, Op};

/// How long after a fault's start its unavailability is measured (seconds).
pub const WINDOW_S: f64 = 15.0;

/// One run folder, read back.
#[derive(Debug, Clone, Default)]
pub struct RunRow {
    pub dir: PathBuf,
    pub seed: String,
    pub nemeses: String,
    pub rate: String,
    pub ok_ops: u64,
    pub anomalies: Vec<String>,
    /// Why the run is not a valid one besides anomalies: vacuity, an undrained key, or a harness
    /// error (no summary written).
    pub problems: Vec<String>,
    /// Per fault kind, the longest unavailability after a fault of that kind (seconds).
    pub unavailable_s: BTreeMap<String, f64>,
}

/// The longest gap in `ok_sends` (seconds since the start, sorted) within `WINDOW_S` of `start`.
pub fn unavailability(ok_sends: &[f64], start: f64) -> f64 {
    let end = start + WINDOW_S;
    let after = ok_sends.partition_point(|t| *t <= start);
    let mut last = if after > 0 {
        ok_sends[after - 1]
    } else {
        start
    };
    let mut longest: f64 = 0.0;
    for &t in ok_sends[after..].iter().take_while(|t| **t <= end) {
        longest = longest.max(t - last);
        last = t;
    }
    // From the last acknowledged send in the window to the window's end.
    longest.max(end - last)
}

fn ok_send_times(events: &[Event]) -> Vec<f64> {
    let mut times: Vec<f64> = events
        .iter()
        .filter(|e| e.kind == Kind::Ok && matches!(e.op, Op::Send { .. }))
        .map(|e| e.time_ns as f64 / 1e9)
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// The report folder of a run: `dir` itself, or the one folder the harness made in it (when
/// `dir` was the run's `--results`).
fn report_folder(dir: &Path) -> PathBuf {
    if dir.join("summary.json").exists() || dir.join("history.jsonl").exists() {
        return dir.to_path_buf();
    }
    let inner: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    match inner.as_slice() {
        [only] => only.clone(),
        _ => dir.to_path_buf(),
    }
}

/// Reads one run: `summary.json` and `history.jsonl` of its report folder (`dir` or the one
/// folder in it); a run without a summary is one the harness could not finish (the last error
/// line of `harness.log` in `dir`, if any, says why).
pub fn read_run(dir: &Path) -> RunRow {
    let mut row = RunRow {
        dir: dir.to_path_buf(),
        ..RunRow::default()
    };
    let report = report_folder(dir);
    let summary: Option<Value> = std::fs::read_to_string(report.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let Some(summary) = summary else {
        let why = std::fs::read_to_string(dir.join("harness.log"))
            .ok()
            .and_then(|log| {
                log.lines()
                    .rev()
                    .find(|l| l.contains("error"))
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "no summary.json".into());
        row.problems.push(format!("harness error: {why}"));
        return row;
    };
    let config = &summary["config"];
    row.seed = config["seed"].to_string();
    row.rate = config["rate"].to_string();
    row.nemeses = config["nemesis"]
        .as_array()
        .map(|k| {
            k.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    row.ok_ops = ["send", "poll"]
        .iter()
        .map(|f| summary["ops"][f]["ok"].as_u64().unwrap_or(0))
        .sum();
    row.anomalies = summary["anomalies_found"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for v in summary["vacuous"].as_array().into_iter().flatten() {
        row.problems
            .push(format!("vacuous: {}", v.as_str().unwrap_or_default()));
    }
    if let Some(keys) = summary["drain_incomplete_keys"].as_array() {
        if !keys.is_empty() {
            row.problems
                .push(format!("{} keys not drained", keys.len()));
        }
    }
    let events = std::fs::read_to_string(report.join("history.jsonl"))
        .ok()
        .and_then(|t| history::parse(&t).ok())
        .unwrap_or_default();
    let sends = ok_send_times(&events);
    for f in summary["faults"].as_array().into_iter().flatten() {
        let (Some(kind), Some(start)) = (f["kind"].as_str(), f["start_s"].as_f64()) else {
            continue;
        };
        let gap = unavailability(&sends, start);
        let column = column_of(kind, f["action"].as_str().unwrap_or_default());
        let worst = row.unavailable_s.entry(column).or_insert(0.0);
        *worst = worst.max(gap);
    }
    row
}

/// The table's column for a fault: its kind, and for the faults that stop nodes, the shape of
/// their targets (`kill -9 n3 (shard-leader)` → `kill shard-leader`): a majority down stops
/// writes until the heal, a lost leader only until failover, and the two must not share a
/// column.
fn column_of(kind: &str, action: &str) -> String {
    let shape = action
        .strip_suffix(')')
        .and_then(|a| a.rsplit_once(" ("))
        .map(|(_, shape)| shape);
    match (kind, shape) {
        ("kill" | "pause" | "power-loss", Some(shape)) => format!("{kind} {shape}"),
        _ => kind.to_string(),
    }
}

/// The Markdown table of `rows`, then the totals.
pub fn table(rows: &[RunRow]) -> String {
    let kinds: Vec<String> = {
        let mut k: Vec<String> = rows
            .iter()
            .flat_map(|r| r.unavailable_s.keys().cloned())
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let gap = |v: Option<&f64>| v.map_or("—".to_string(), |s| format!("{s:.1}"));
    let mut out = String::new();
    out.push_str("| run | seed | nemeses | rate | ok ops | anomalies | problems |");
    for k in &kinds {
        out.push_str(&format!(" {k} (s) |"));
    }
    out.push_str("\n|---|---|---|---|---|---|---|");
    out.push_str(&"---|".repeat(kinds.len()));
    out.push('\n');
    for r in rows {
        let name = r.dir.file_name().unwrap_or_default().to_string_lossy();
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} |",
            r.seed,
            r.nemeses,
            r.rate,
            r.ok_ops,
            if r.anomalies.is_empty() {
                "none".into()
            } else {
                r.anomalies.join(", ")
            },
            if r.problems.is_empty() {
                "—".into()
            } else {
                r.problems.join("; ")
            },
        ));
        for k in &kinds {
            out.push_str(&format!(" {} |", gap(r.unavailable_s.get(k))));
        }
        out.push('\n');
    }
    let anomalies: usize = rows.iter().map(|r| r.anomalies.len()).sum();
    let troubled = rows.iter().filter(|r| !r.problems.is_empty()).count();
    out.push_str(&format!(
        "| **{} runs** | | | | **{}** | **{anomalies}** | **{troubled} runs** |",
        rows.len(),
        rows.iter().map(|r| r.ok_ops).sum::<u64>(),
    ));
    for k in &kinds {
        let worst = rows
            .iter()
            .filter_map(|r| r.unavailable_s.get(k))
            .copied()
            .reduce(f64::max);
        out.push_str(&format!(" **{}** |", gap(worst.as_ref())));
    }
    out.push('\n');
    out
}

/// True when every run is valid: no anomaly and no problem.
pub fn all_valid(rows: &[RunRow]) -> bool {
    rows.iter()
        .all(|r| r.anomalies.is_empty() && r.problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailability_is_the_longest_gap_in_acknowledged_sends_after_a_fault() {
        // Sends every 0.1 s until 10 s, nothing until 12.5 s, then every 0.1 s again.
        let mut t: Vec<f64> = (0..100).map(|i| i as f64 / 10.0).collect();
        t.extend((125..400).map(|i| i as f64 / 10.0));
        let gap = unavailability(&t, 10.05);
        assert!(
            (gap - 2.6).abs() < 1e-9,
            "from the last send before the fault: {gap}"
        );
        // A fault long after the gap sees only the regular spacing.
        assert!((unavailability(&t, 20.0) - 0.1).abs() < 1e-9);
        // No send at all after the fault: the whole window (from the last send before it).
        let stopped: Vec<f64> = (0..50).map(|i| i as f64 / 10.0).collect();
        assert!((unavailability(&stopped, 6.0) - (6.0 + WINDOW_S - 4.9)).abs() < 1e-9);
        // No send ever: the whole window.
        assert!((unavailability(&[], 3.0) - WINDOW_S).abs() < 1e-9);
    }

    #[test]
    fn the_table_has_a_row_per_run_and_totals_with_the_worst_gap_per_kind() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run-a");
        std::fs::create_dir(&run).unwrap();
        let summary = serde_json::json!({
            "config": {"seed": 7, "rate": 200.0, "nemesis": ["kill", "power-loss"]},
            "ops": {"send": {"ok": 3}, "poll": {"ok": 2}},
            "anomalies_found": [],
            "vacuous": [],
            "drain_incomplete_keys": [],
            "faults": [
                {"kind": "kill", "start_s": 1.0, "action": "kill -9 n1 (one)"},
                {"kind": "power-loss", "start_s": 2.0, "action": "power off n1,n2,n3 (all)"},
            ],
        });
        std::fs::write(run.join("summary.json"), summary.to_string()).unwrap();
        let sends = [0.5, 1.5, 4.0];
        let history: String = sends
            .iter()
            .map(|t| {
                format!(
                    "{{\"time_ns\":{},\"process\":1,\"type\":\"ok\",\"f\":\"send\",\"values\":[]}}\n",
                    (t * 1e9) as u64
                )
            })
            .collect();
        std::fs::write(run.join("history.jsonl"), history).unwrap();
        let broken = dir.path().join("run-b");
        std::fs::create_dir(&broken).unwrap();
        std::fs::write(
            broken.join("harness.log"),
            "started\nerror: healing the cluster before the final read: n1 did not answer\n",
        )
        .unwrap();

        let rows = vec![read_run(&run), read_run(&broken)];
        assert_eq!(rows[0].ok_ops, 5);
        assert!((rows[0].unavailable_s["kill one"] - (WINDOW_S + 1.0 - 4.0)).abs() < 1e-9);
        assert!((rows[0].unavailable_s["power-loss all"] - (WINDOW_S + 2.0 - 4.0)).abs() < 1e-9);
        assert!(
            rows[1].problems[0].contains("n1 did not answer"),
            "{:?}",
            rows[1]
        );
        assert!(!all_valid(&rows));
        assert_eq!(column_of("net", "net loss (22% loss) from n1"), "net");
        assert_eq!(
            column_of("pause", "SIGSTOP n2 (shard-leader)"),
            "pause shard-leader"
        );
        let t = table(&rows);
        assert!(
            t.contains("| run-a | 7 | kill,power-loss | 200.0 | 5 | none | — | 12.0 | 13.0 |"),
            "{t}"
        );
        assert!(
            t.contains("| **2 runs** | | | | **5** | **0** | **1 runs** | **12.0** | **13.0** |"),
            "{t}"
        );
    }
}
