//! The figures of every round, and the tables printed from them (Markdown, for the docs).

use std::fmt::Write;

use serde_json::json;

use crate::load::Load;
use crate::probe::Probe;

#[derive(Debug, Clone)]
pub struct CaseResult {
    pub system: &'static str,
    /// Millrace's shard count (0 for NATS).
    pub shards: u32,
    pub record_bytes: usize,
    pub in_flight: usize,
    pub records_per_second: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_seconds_per_10k: f64,
    pub read_records: u64,
    pub read_per_second: f64,
}

impl CaseResult {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        system: &'static str,
        shards: u32,
        record_bytes: usize,
        in_flight: usize,
        load: Load,
        cpu_seconds: f64,
        read_records: u64,
        read_seconds: f64,
    ) -> CaseResult {
        CaseResult {
            system,
            shards,
            record_bytes,
            in_flight,
            records_per_second: load.records_per_second(),
            errors: load.errors,
            first_error: load.first_error.clone(),
            p50_ms: load.percentile_ms(50.0),
            p99_ms: load.percentile_ms(99.0),
            cpu_seconds_per_10k: cpu_seconds * 10_000.0 / load.ok.max(1) as f64,
            read_records,
            read_per_second: read_records as f64 / read_seconds,
        }
    }

    fn label(&self) -> String {
        label(self.system, self.shards)
    }

    pub fn line(&self) -> String {
        format!(
            "{:<18} {:>5} B x{:<3}: {:>9.0} rec/s  p50 {:>6.2} ms  p99 {:>6.2} ms  cpu {:.2} s/10k  read {:.0}/s{}",
            self.label(),
            self.record_bytes,
            self.in_flight,
            self.records_per_second,
            self.p50_ms,
            self.p99_ms,
            self.cpu_seconds_per_10k,
            self.read_per_second,
            match (&self.first_error, self.errors) {
                (Some(e), n) => format!("  {n} errors, first: {e}"),
                (None, _) => String::new(),
            }
        )
    }
}

fn label(system: &str, shards: u32) -> String {
    match (system, shards) {
        ("nats", _) => "NATS R3".into(),
        (_, 1) => "Millrace 1 shard".into(),
        (_, n) => format!("Millrace {n} shards"),
    }
}

#[derive(Debug, Default)]
pub struct Round {
    pub index: usize,
    pub probe_before: Probe,
    pub probe_after: Probe,
    pub results: Vec<CaseResult>,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The (system, shards) columns and the (record bytes, in flight) rows, in first-seen order.
fn axes(rounds: &[Round]) -> (Vec<(&'static str, u32)>, Vec<(usize, usize)>) {
    let (mut systems, mut cases) = (Vec::new(), Vec::new());
    for r in rounds.iter().flat_map(|r| &r.results) {
        if !systems.contains(&(r.system, r.shards)) {
            systems.push((r.system, r.shards));
        }
        if !cases.contains(&(r.record_bytes, r.in_flight)) {
            cases.push((r.record_bytes, r.in_flight));
        }
    }
    systems.sort_by_key(|(s, n)| (*s != "nats", *n));
    cases.sort_by_key(|(b, f)| (std::cmp::Reverse(*b), *f));
    (systems, cases)
}

fn find<'a>(round: &'a Round, sys: (&str, u32), case: (usize, usize)) -> Option<&'a CaseResult> {
    round.results.iter().find(|r| {
        (r.system, r.shards) == sys && (r.record_bytes, r.in_flight) == case
    })
}

/// One figure of every round for a (system, case) cell.
fn per_round(
    rounds: &[Round],
    sys: (&str, u32),
    case: (usize, usize),
    f: impl Fn(&CaseResult) -> f64,
) -> Vec<f64> {
    rounds
        .iter()
        .filter_map(|r| find(r, sys, case).map(&f))
        .collect()
}

pub fn render(rounds: &[Round]) -> String {
    let (systems, cases) = axes(rounds);
    let nats = systems.iter().copied().find(|(s, _)| *s == "nats");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Produce, records/s (min / median / max over {} rounds; ratio to NATS per round, then its median)\n",
        rounds.len()
    );
    let mut header = String::from("| record | in flight |");
    let mut rule = String::from("|---|---|");
    for s in &systems {
        let _ = write!(header, " {} |", label(s.0, s.1));
        rule.push_str("---|");
        if s.0 != "nats" && nats.is_some() {
            let _ = write!(header, " ratio per round (median) |");
            rule.push_str("---|");
        }
    }
    let _ = writeln!(out, "{header}\n{rule}");
    for &case in &cases {
        let _ = write!(out, "| {} B | {} |", case.0, case.1);
        for &s in &systems {
            let mut v = per_round(rounds, s, case, |r| r.records_per_second);
            let med = median(&mut v);
            let (min, max) = (v.first().copied(), v.last().copied());
            let _ = write!(
                out,
                " {:.0} / **{:.0}** / {:.0} |",
                min.unwrap_or(f64::NAN),
                med,
                max.unwrap_or(f64::NAN)
            );
            if let (true, Some(n)) = (s.0 != "nats", nats) {
                let mut ratios: Vec<f64> = rounds
                    .iter()
                    .filter_map(|r| {
                        let m = find(r, s, case)?.records_per_second;
                        let b = find(r, n, case)?.records_per_second;
                        Some(m / b)
                    })
                    .collect();
                let shown: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
                let _ = write!(out, " {} (**{:.2}×**) |", shown.join(", "), median(&mut ratios));
            }
        }
        let _ = writeln!(out);
    }
    let cell_table = |out: &mut String, title: &str, f: &dyn Fn(&CaseResult) -> String| {
        let _ = writeln!(out, "\n### {title}\n");
        let mut header = String::from("| record | in flight |");
        let mut rule = String::from("|---|---|");
        for s in &systems {
            let _ = write!(header, " {} |", label(s.0, s.1));
            rule.push_str("---|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for &case in &cases {
            let _ = write!(out, "| {} B | {} |", case.0, case.1);
            for &s in &systems {
                let cells: Vec<String> = rounds
                    .iter()
                    .filter_map(|r| find(r, s, case).map(f))
                    .collect();
                let _ = write!(out, " {} |", cells.join(" · "));
            }
            let _ = writeln!(out);
        }
    };
    cell_table(
        &mut out,
        "Latency per request, p50 / p99 ms (each round)",
        &|r| format!("{:.2} / {:.2}", r.p50_ms, r.p99_ms),
    );
    cell_table(
        &mut out,
        "Server CPU-seconds per 10k records (all three servers; each round)",
        &|r| format!("{:.2}", r.cpu_seconds_per_10k),
    );
    cell_table(
        &mut out,
        "Read-back of everything the case wrote, records/s (each round)",
        &|r| format!("{:.0}", r.read_per_second),
    );
    let errors: Vec<String> = rounds
        .iter()
        .flat_map(|r| &r.results)
        .filter(|r| r.errors > 0)
        .map(|r| format!("- {}", r.line()))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(out, "\n### Cases with failed requests\n\n{}", errors.join("\n"));
    }
    let _ = writeln!(
        out,
        "\n### fsync probe (4 KiB write + fdatasync, per second: before / after the round)\n"
    );
    for r in rounds {
        let _ = writeln!(
            out,
            "- round {}: {:.0} / {:.0} per second ({:.2} / {:.2} ms each)",
            r.index,
            r.probe_before.per_second,
            r.probe_after.per_second,
            r.probe_before.mean_ms,
            r.probe_after.mean_ms
        );
    }
    out
}

pub fn json(rounds: &[Round]) -> serde_json::Value {
    json!(rounds
        .iter()
        .map(|r| json!({
            "round": r.index,
            "fsync_probe_before_per_s": r.probe_before.per_second,
            "fsync_probe_after_per_s": r.probe_after.per_second,
            "results": r.results.iter().map(|c| json!({
                "system": c.system,
                "shards": c.shards,
                "record_bytes": c.record_bytes,
                "in_flight": c.in_flight,
                "records_per_second": c.records_per_second,
                "errors": c.errors,
                "first_error": c.first_error,
                "p50_ms": c.p50_ms,
                "p99_ms": c.p99_ms,
                "cpu_seconds_per_10k": c.cpu_seconds_per_10k,
                "read_records": c.read_records,
                "read_per_second": c.read_per_second,
            })).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>())
}
