//! # keyraft-chaos: faults that lose nothing and let nobody past a policy
//!
//! A fault-injection suite for Keyraft in the shape of Jepsen and etcd's robustness
//! tests: a cluster of real `keyraft server` processes ([`cluster`]) whose node-to-node
//! links run through userspace proxies ([`net`]); a nemesis that partitions, delays,
//! kills, pauses, fills disks and arms fail points ([`nemesis`], [`disk`]); concurrent SDK clients that record
//! every invoke and completion ([`workload`], [`history`]); and pure checkers over the
//! saved history ([`check`]). Experiments are TOML files ([`experiment`]); a run leaves
//! a directory with `history.jsonl`, `final.json`, `results.json`, node logs and a
//! `report.html` ([`report`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod attach;
pub mod check;
pub mod cluster;
pub mod disk;
pub mod experiment;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod results;
pub mod run;
pub mod workload;
