//! `millrace-jepsen`: fault injection and history checking for Millrace, black-box, after
//! Jepsen's Kafka/queue workload (see `shared/jepsen-checker.md` and `jepsen/README.md`).
//!
//! * [`net`]: one network namespace per node on a bridge of the run's own; partitions with
//!   iptables.
//! * [`cluster`]: real `millrace serve` processes in those namespaces (libfaketime for clocks).
//! * [`nemesis`]: kill, pause, partition, clock, reshard, power-loss, net and corrupt faults on a
//!   schedule, with evidence ([`corrupt`]: the damage done to stopped nodes' files); [`lazyfs`]: the FUSE filesystem that makes a power cut lose
//!   what was not synced.
//! * [`api`] and [`workload`]: the `log` workload through the native client or the Kinesis
//!   HTTP API, recorded as a [`history`].
//! * [`checker`]: every anomaly of the queue workload, a fixture per anomaly; [`replicas`]:
//!   replica divergence, from the stopped nodes' logs.
//! * [`run`] and [`report`]: one test run end to end, and its report with plots; [`nightly`]:
//!   the summary table of many runs.

pub mod api;
pub mod checker;
pub mod cluster;
pub mod corrupt;
pub mod history;
pub mod lazyfs;
pub mod nemesis;
pub mod net;
pub mod nightly;
pub mod replicas;
pub mod report;
pub mod run;
pub mod workload;
