//! `millrace-jepsen`: fault injection and history checking for Millrace, black-box, after
//! Jepsen's Kafka/queue workload (see `shared/jepsen-checker.md` and `jepsen/README.md`).
//!
//! Built so far: the history format ([`history`]) and the checker ([`checker`]) with a fixture
//! per anomaly. The cluster runner (network namespaces, nemeses, workloads, report) is the
//! next step.

pub mod checker;
pub mod history;
