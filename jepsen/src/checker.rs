//! The log-workload checker (`shared/jepsen-checker.md`): finds every listed anomaly in a
//! history. Each anomaly has a fixture in the tests below that proves it is caught.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::{json, Value};

use crate::history::{Event, Kind, Op, Read, Sent};

/// Checker settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The idempotent producer was on: any duplicate is an anomaly. Without it, duplicates of
    /// values whose send ended `info` (and so may have been retried) are allowed and counted.
    pub idempotent: bool,
}

/// The verdict on a history.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub valid: bool,
    /// Anomaly name → examples (each a JSON object naming key, value, offsets, processes).
    pub anomalies: BTreeMap<&'static str, Vec<Value>>,
    /// Allowed phenomena, counted (int-send-skip; duplicates allowed without idempotence).
    pub allowed: BTreeMap<&'static str, usize>,
    pub stats: Stats,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub sends: Counts,
    pub polls: Counts,
    pub values_sent_ok: usize,
    pub values_read: usize,
    pub nemesis_events: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

impl Counts {
    fn add(&mut self, kind: Kind) {
        match kind {
            Kind::Ok => self.ok += 1,
            Kind::Fail => self.fail += 1,
            Kind::Info => self.info += 1,
            Kind::Invoke => {}
        }
    }
}

/// A completed (or never completed: `info`) send.
struct SendOp {
    process: u64,
    outcome: Kind,
    /// As invoked.
    values: Vec<Sent>,
    /// Offsets from the `ok` completion.
    landed: Vec<Sent>,
}

/// A completed operation in history order: (process, completion kind, op at invocation, op at
/// completion). An invocation never completed counts as `info`.
fn pair(history: &[Event]) -> Vec<(u64, Kind, Op, Option<Op>)> {
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut out: Vec<(u64, Kind, Op, Option<Op>)> = Vec::new();
    for e in history {
        if matches!(e.op, Op::Nemesis { .. }) {
            continue;
        }
        match e.kind {
            Kind::Invoke => {
                open.insert(e.process, out.len());
                out.push((e.process, Kind::Info, e.op.clone(), None));
            }
            kind => {
                if let Some(i) = open.remove(&e.process) {
                    out[i].1 = kind;
                    out[i].3 = Some(e.op.clone());
                }
            }
        }
    }
    out
}

/// Checks a history.
pub fn check(history: &[Event], options: Options) -> Report {
    let mut anomalies: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    let mut allowed: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut stats = Stats {
        nemesis_events: history
            .iter()
            .filter(|e| matches!(e.op, Op::Nemesis { .. }))
            .count(),
        ..Stats::default()
    };
    let ops = pair(history);

    // Sends and polls, in completion order.
    let mut sends: Vec<SendOp> = Vec::new();
    // (process, reads of an ok poll), and assigns as (process, keys), interleaved in order.
    enum Step {
        Poll(u64, Vec<Read>),
        Assign(u64, Vec<String>),
        Send(usize),
    }
    let mut steps: Vec<Step> = Vec::new();
    for (process, kind, invoked, completed) in ops {
        match (invoked, completed) {
            (Op::Send { values }, completed) => {
                stats.sends.add(kind);
                let landed = match (kind, completed) {
                    (Kind::Ok, Some(Op::Send { values })) => values,
                    _ => Vec::new(),
                };
                sends.push(SendOp {
                    process,
                    outcome: kind,
                    values,
                    landed,
                });
                steps.push(Step::Send(sends.len() - 1));
            }
            (Op::Poll { .. }, completed) => {
                stats.polls.add(kind);
                if let (Kind::Ok, Some(Op::Poll { reads })) = (kind, completed) {
                    steps.push(Step::Poll(process, reads));
                }
            }
            (Op::Assign { keys }, _) => steps.push(Step::Assign(process, keys)),
            (Op::Nemesis { .. }, _) => {}
        }
    }

    // Who wrote each (key, value), and how it ended.
    // A send that landed on another key than it named (a reshard moved the hash key to a child
    // shard) is the writer under both keys; `by_value` finds the writer of a value read under
    // a key its (ambiguous) send never named.
    let mut writer: BTreeMap<(String, u64), usize> = BTreeMap::new();
    let mut by_value: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, s) in sends.iter().enumerate() {
        for v in s.values.iter().chain(&s.landed) {
            writer.insert((v.key.clone(), v.value), i);
            by_value.insert(v.value, i);
        }
    }
    let reads: Vec<&Read> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Poll(_, r) => Some(r),
            _ => None,
        })
        .flatten()
        .collect();
    let read_values: BTreeSet<(String, u64)> =
        reads.iter().map(|r| (r.key.clone(), r.value)).collect();
    stats.values_read = read_values.len();
    let must_have_committed = |i: usize| {
        let s = &sends[i];
        s.outcome == Kind::Ok
            || (s.outcome == Kind::Info
                && s.values
                    .iter()
                    .any(|v| read_values.contains(&(v.key.clone(), v.value))))
    };

    // Version order: key → offset → values (ok sends' offsets and every read).
    let mut versions: BTreeMap<String, BTreeMap<u128, BTreeSet<u64>>> = BTreeMap::new();
    for (i, s) in sends.iter().enumerate() {
        if s.outcome == Kind::Ok && must_have_committed(i) {
            for v in &s.landed {
                if let Some(offset) = v.offset {
                    versions
                        .entry(v.key.clone())
                        .or_default()
                        .entry(offset)
                        .or_default()
                        .insert(v.value);
                }
            }
        }
        if s.outcome == Kind::Ok {
            stats.values_sent_ok += s.values.len();
        }
    }
    for r in &reads {
        versions
            .entry(r.key.clone())
            .or_default()
            .entry(r.offset)
            .or_default()
            .insert(r.value);
    }

    // inconsistent-offsets, and dense indexes.
    // index[key][offset] = dense position; indexes_of[key][value] = positions it appears at.
    let mut index: BTreeMap<String, BTreeMap<u128, usize>> = BTreeMap::new();
    let mut indexes_of: BTreeMap<String, BTreeMap<u64, Vec<usize>>> = BTreeMap::new();
    for (key, offsets) in &versions {
        let idx = index.entry(key.clone()).or_default();
        let of = indexes_of.entry(key.clone()).or_default();
        for (i, (offset, values)) in offsets.iter().enumerate() {
            idx.insert(*offset, i);
            if values.len() > 1 {
                anomalies
                    .entry("inconsistent-offsets")
                    .or_default()
                    .push(json!({"key": key, "offset": offset.to_string(), "values": values}));
            }
            for v in values {
                of.entry(*v).or_default().push(i);
            }
        }
    }

    // duplicate
    for (key, values) in &indexes_of {
        for (value, at) in values {
            if at.len() > 1 {
                let info_send = writer
                    .get(&(key.clone(), *value))
                    .is_some_and(|i| sends[*i].outcome == Kind::Info);
                if !options.idempotent && info_send {
                    *allowed.entry("duplicate-of-info-send").or_default() += 1;
                } else {
                    anomalies
                        .entry("duplicate")
                        .or_default()
                        .push(json!({"key": key, "value": value, "indexes": at}));
                }
            }
        }
    }

    // aborted read (G1a) and phantom
    for r in &reads {
        let w = writer
            .get(&(r.key.clone(), r.value))
            .or_else(|| by_value.get(&r.value));
        match w {
            None => anomalies
                .entry("phantom")
                .or_default()
                .push(json!({"key": r.key, "value": r.value, "offset": r.offset.to_string()})),
            Some(i) if sends[*i].outcome == Kind::Fail => anomalies
                .entry("aborted-read")
                .or_default()
                .push(json!({"key": r.key, "value": r.value, "offset": r.offset.to_string()})),
            Some(_) => {}
        }
    }

    // lost-write: values that sit at or before the furthest point a poll proves readable, from
    // a writer that must have committed, yet never read.
    for (key, values) in &indexes_of {
        let max_read_first = values
            .iter()
            .filter(|(v, _)| read_values.contains(&(key.clone(), **v)))
            .filter_map(|(_, at)| at.iter().min())
            .max();
        let Some(bound) = max_read_first else {
            continue;
        };
        for (value, at) in values {
            let last = at.iter().max().copied().unwrap_or(0);
            let committed = writer
                .get(&(key.clone(), *value))
                .is_some_and(|i| must_have_committed(*i));
            if last <= *bound && committed && !read_values.contains(&(key.clone(), *value)) {
                anomalies
                    .entry("lost-write")
                    .or_default()
                    .push(json!({"key": key, "value": value, "index": last}));
            }
        }
    }

    // unseen: acknowledged values never read (after the final drain).
    for s in sends.iter().filter(|s| s.outcome == Kind::Ok) {
        let acknowledged = if s.landed.is_empty() {
            &s.values
        } else {
            &s.landed
        };
        for v in acknowledged {
            if !read_values.contains(&(v.key.clone(), v.value)) {
                let lost = anomalies.get("lost-write").is_some_and(|l| {
                    l.iter()
                        .any(|x| x["key"] == v.key.as_str() && x["value"] == v.value)
                });
                if !lost {
                    anomalies
                        .entry("unseen")
                        .or_default()
                        .push(json!({"key": v.key, "value": v.value}));
                }
            }
        }
    }

    // Per-process order of polls and sends.
    let mut last_poll: BTreeMap<(u64, String), usize> = BTreeMap::new();
    let mut last_send: BTreeMap<(u64, String), usize> = BTreeMap::new();
    for step in &steps {
        match step {
            Step::Assign(process, keys) => {
                for k in keys {
                    last_poll.remove(&(*process, k.clone()));
                }
            }
            Step::Poll(process, poll) => {
                let mut inside: BTreeMap<&str, usize> = BTreeMap::new();
                for r in poll {
                    let Some(i) = index.get(&r.key).and_then(|m| m.get(&r.offset)).copied() else {
                        continue;
                    };
                    match inside.get(r.key.as_str()) {
                        Some(prev) if i <= *prev => anomalies
                            .entry("int-nonmonotonic-poll")
                            .or_default()
                            .push(json!({"process": process, "key": r.key, "from": prev, "to": i})),
                        Some(prev) if i > prev + 1 => anomalies
                            .entry("int-poll-skip")
                            .or_default()
                            .push(json!({"process": process, "key": r.key, "from": prev, "to": i})),
                        Some(_) => {}
                        None => match last_poll.get(&(*process, r.key.clone())) {
                            Some(prev) if i <= *prev => anomalies
                                .entry("nonmonotonic-poll")
                                .or_default()
                                .push(json!({"process": process, "key": r.key, "from": prev, "to": i})),
                            Some(prev) if i > prev + 1 => anomalies
                                .entry("poll-skip")
                                .or_default()
                                .push(json!({"process": process, "key": r.key, "from": prev, "to": i})),
                            _ => {}
                        },
                    }
                    inside.insert(r.key.as_str(), i);
                }
                for (k, i) in inside {
                    last_poll.insert((*process, k.to_string()), i);
                }
            }
            Step::Send(n) => {
                let s = &sends[*n];
                let mut inside: BTreeMap<&str, usize> = BTreeMap::new();
                for v in &s.landed {
                    let Some(i) = v
                        .offset
                        .and_then(|o| index.get(&v.key).and_then(|m| m.get(&o)))
                        .copied()
                    else {
                        continue;
                    };
                    match inside.get(v.key.as_str()) {
                        Some(prev) if i <= *prev => {
                            anomalies.entry("int-nonmonotonic-send").or_default().push(
                                json!({"process": s.process, "key": v.key, "from": prev, "to": i}),
                            )
                        }
                        Some(prev) if i > prev + 1 => {
                            *allowed.entry("int-send-skip").or_default() += 1;
                        }
                        Some(_) => {}
                        None => {
                            if let Some(prev) = last_send.get(&(s.process, v.key.clone())) {
                                if i <= *prev {
                                    anomalies.entry("nonmonotonic-send").or_default().push(
                                        json!({"process": s.process, "key": v.key, "from": prev, "to": i}),
                                    );
                                }
                            }
                        }
                    }
                    inside.insert(v.key.as_str(), i);
                }
                for (k, i) in inside {
                    last_send.insert((s.process, k.to_string()), i);
                }
            }
        }
    }

    Report {
        valid: anomalies.is_empty(),
        anomalies,
        allowed,
        stats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny history builder: events get increasing times.
    #[derive(Default)]
    struct H(Vec<Event>);

    impl H {
        fn ev(&mut self, process: u64, kind: Kind, op: Op) -> &mut Self {
            let time_ns = self.0.len() as u64;
            self.0.push(Event {
                time_ns,
                process,
                kind,
                op,
                error: None,
            });
            self
        }
        /// An ok send of `values` (key, value, offset).
        fn send(&mut self, p: u64, values: &[(&str, u64, u128)]) -> &mut Self {
            self.send_as(p, Kind::Ok, values)
        }
        fn send_as(&mut self, p: u64, kind: Kind, values: &[(&str, u64, u128)]) -> &mut Self {
            let invoked = values
                .iter()
                .map(|(k, v, _)| Sent {
                    key: k.to_string(),
                    value: *v,
                    offset: None,
                })
                .collect();
            let landed = values
                .iter()
                .map(|(k, v, o)| Sent {
                    key: k.to_string(),
                    value: *v,
                    offset: Some(*o),
                })
                .collect();
            self.ev(p, Kind::Invoke, Op::Send { values: invoked });
            let done = if kind == Kind::Ok { landed } else { Vec::new() };
            self.ev(p, kind, Op::Send { values: done })
        }
        /// An ok poll reading (key, offset, value).
        fn poll(&mut self, p: u64, reads: &[(&str, u128, u64)]) -> &mut Self {
            let reads = reads
                .iter()
                .map(|(k, o, v)| Read {
                    key: k.to_string(),
                    offset: *o,
                    value: *v,
                })
                .collect();
            self.ev(p, Kind::Invoke, Op::Poll { reads: Vec::new() });
            self.ev(p, Kind::Ok, Op::Poll { reads })
        }
        fn assign(&mut self, p: u64, keys: &[&str]) -> &mut Self {
            let op = Op::Assign {
                keys: keys.iter().map(|k| k.to_string()).collect(),
            };
            self.ev(p, Kind::Invoke, op.clone());
            self.ev(p, Kind::Ok, op)
        }
        fn check(&self) -> Report {
            check(&self.0, Options::default())
        }
    }

    fn only(report: &Report, anomaly: &str) {
        assert!(
            report.anomalies.contains_key(anomaly),
            "{anomaly} not found: {:?}",
            report.anomalies
        );
        assert!(!report.valid);
    }

    #[test]
    fn a_clean_history_is_valid() {
        let mut h = H::default();
        h.send(1, &[("k", 1, 10), ("k", 2, 11)])
            .send(2, &[("k", 3, 12)])
            .poll(3, &[("k", 10, 1), ("k", 11, 2)])
            .poll(3, &[("k", 12, 3)]);
        let r = h.check();
        assert!(r.valid, "{:?}", r.anomalies);
        assert_eq!(r.stats.sends.ok, 2);
        assert_eq!(r.stats.values_read, 3);
    }

    #[test]
    fn inconsistent_offsets() {
        let mut h = H::default();
        h.send(1, &[("k", 1, 10)])
            .send(2, &[("k", 2, 10)])
            .poll(3, &[("k", 10, 1)]);
        only(&h.check(), "inconsistent-offsets");
    }

    #[test]
    fn duplicate() {
        let mut h = H::default();
        h.send(1, &[("k", 1, 10)])
            .poll(3, &[("k", 10, 1), ("k", 11, 1)]);
        only(&h.check(), "duplicate");
    }

    #[test]
    fn duplicates_of_info_sends_are_allowed_only_without_idempotence() {
        let mut h = H::default();
        h.send_as(1, Kind::Info, &[("k", 1, 0)])
            .poll(3, &[("k", 10, 1), ("k", 11, 1)]);
        let r = h.check();
        assert!(r.valid, "{:?}", r.anomalies);
        assert_eq!(r.allowed.get("duplicate-of-info-send"), Some(&1));
        let strict = check(&h.0, Options { idempotent: true });
        assert!(strict.anomalies.contains_key("duplicate"));
    }

    #[test]
    fn lost_write() {
        // Value 1 was acknowledged at offset 10; a poll read offset 11, proving 10 readable,
        // yet nobody ever read 1.
        let mut h = H::default();
        h.send(1, &[("k", 1, 10)])
            .send(1, &[("k", 2, 11)])
            .poll(3, &[("k", 11, 2)]);
        only(&h.check(), "lost-write");
    }

    #[test]
    fn unseen() {
        let mut h = H::default();
        h.send(1, &[("k", 1, 10)])
            .send(1, &[("k", 2, 11)])
            .poll(3, &[("k", 10, 1)]);
        let r = h.check();
        only(&r, "unseen");
        assert!(!r.anomalies.contains_key("lost-write"));
    }

    #[test]
    fn aborted_read() {
        let mut h = H::default();
        h.send_as(1, Kind::Fail, &[("k", 1, 0)])
            .poll(3, &[("k", 10, 1)]);
        only(&h.check(), "aborted-read");
    }

    /// A send naming key `named` that landed on `landed` (`ok`) or is in doubt (`info`).
    fn moved(h: &mut H, p: u64, kind: Kind, named: &str, landed: &str, value: u64, offset: u128) {
        let sent = |key: &str, offset| Sent {
            key: key.into(),
            value,
            offset,
        };
        h.ev(
            p,
            Kind::Invoke,
            Op::Send {
                values: vec![sent(named, None)],
            },
        );
        let done = if kind == Kind::Ok {
            vec![sent(landed, Some(offset))]
        } else {
            Vec::new()
        };
        h.ev(p, kind, Op::Send { values: done });
    }

    #[test]
    fn a_send_moved_to_a_child_shard_is_read_there() {
        // A reshard moved the hash key from shard "parent" to "child": acknowledged there, and
        // an in-doubt send read there too. Neither is a phantom nor unseen.
        let mut h = H::default();
        moved(&mut h, 1, Kind::Ok, "parent", "child", 1, 10);
        moved(&mut h, 2, Kind::Info, "parent", "child", 2, 0);
        h.poll(3, &[("child", 10, 1), ("child", 11, 2)]);
        let r = h.check();
        assert!(r.valid, "{:?}", r.anomalies);
    }

    #[test]
    fn a_value_acknowledged_on_one_key_but_read_on_another_is_unseen() {
        let mut h = H::default();
        h.send(1, &[("a", 1, 10)]).poll(3, &[("b", 10, 1)]);
        only(&h.check(), "unseen");
    }

    #[test]
    fn phantom() {
        let mut h = H::default();
        h.send(1, &[("k", 1, 10)])
            .poll(3, &[("k", 10, 1), ("k", 11, 99)]);
        only(&h.check(), "phantom");
    }

    #[test]
    fn poll_skip_and_nonmonotonic_poll() {
        let mut h = H::default();
        h.send(1, &[("k", 1, 10), ("k", 2, 11), ("k", 3, 12)])
            .poll(2, &[("k", 11, 2), ("k", 12, 3)])
            .poll(3, &[("k", 10, 1)])
            .poll(3, &[("k", 12, 3)]);
        only(&h.check(), "poll-skip");
        let mut h = H::default();
        h.send(1, &[("k", 1, 10), ("k", 2, 11)])
            .poll(3, &[("k", 10, 1), ("k", 11, 2)])
            .poll(3, &[("k", 10, 1)]);
        only(&h.check(), "nonmonotonic-poll");
        // After a re-assign, starting over is fine.
        let mut h = H::default();
        h.send(1, &[("k", 1, 10), ("k", 2, 11)])
            .poll(3, &[("k", 10, 1), ("k", 11, 2)])
            .assign(3, &["k"])
            .poll(3, &[("k", 10, 1), ("k", 11, 2)]);
        assert!(h.check().valid, "{:?}", h.check().anomalies);
    }

    #[test]
    fn int_poll_skip_and_int_nonmonotonic_poll() {
        let mut h = H::default();
        h.send(1, &[("k", 1, 10), ("k", 2, 11), ("k", 3, 12)])
            .poll(2, &[("k", 11, 2)])
            .poll(3, &[("k", 10, 1), ("k", 12, 3)]);
        only(&h.check(), "int-poll-skip");
        let mut h = H::default();
        h.send(1, &[("k", 1, 10), ("k", 2, 11)])
            .poll(3, &[("k", 11, 2), ("k", 10, 1)]);
        only(&h.check(), "int-nonmonotonic-poll");
    }

    #[test]
    fn nonmonotonic_sends() {
        let mut h = H::default();
        h.send(1, &[("k", 2, 11)])
            .send(1, &[("k", 1, 10)])
            .poll(3, &[("k", 10, 1), ("k", 11, 2)]);
        only(&h.check(), "nonmonotonic-send");
        let mut h = H::default();
        h.send(1, &[("k", 2, 11), ("k", 1, 10)])
            .poll(3, &[("k", 10, 1), ("k", 11, 2)]);
        only(&h.check(), "int-nonmonotonic-send");
    }

    #[test]
    fn another_writer_between_one_sends_values_is_allowed() {
        let mut h = H::default();
        h.send(1, &[("k", 1, 10), ("k", 3, 12)])
            .send(2, &[("k", 2, 11)])
            .poll(3, &[("k", 10, 1), ("k", 11, 2), ("k", 12, 3)]);
        let r = h.check();
        assert!(r.valid, "{:?}", r.anomalies);
        assert_eq!(r.allowed.get("int-send-skip"), Some(&1));
    }

    #[test]
    fn histories_round_trip_as_json_lines() {
        let mut h = H::default();
        h.send(1, &[("k", 1, 10)]).poll(3, &[("k", 10, 1)]).ev(
            0,
            Kind::Info,
            Op::Nemesis {
                action: "kill n1".into(),
                evidence: json!({"pid": 42, "exited": true}),
            },
        );
        let text = crate::history::to_jsonl(&h.0);
        let back = crate::history::parse(&text).unwrap();
        assert_eq!(back, h.0);
        assert_eq!(check(&back, Options::default()).stats.nemesis_events, 1);
    }
}
