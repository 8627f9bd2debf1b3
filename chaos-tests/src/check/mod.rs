//! # The checkers
//!
//! Each checker is a pure function of a saved [`History`] and the [`FinalState`] read
//! after healing, so `keyraft-chaos check DIR` re-runs exactly what the run decided.
//! Each gives a [`Verdict`]: `pass`, `violation` (with the evidence), or `unknown` when
//! the run cannot support a verdict (too few operations, a fault that never fired, a
//! search that ran out of its budget).

use serde::{Deserialize, Serialize};

use crate::history::{FinalState, History};

/// What a checker concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The property holds on this run.
    Pass,
    /// The run cannot support a verdict.
    Unknown,
    /// The property is violated; the details say where.
    Violation,
}

/// One checker's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The checker's name (as experiment files list it).
    pub checker: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Evidence (for a violation) or the reason (for unknown), one line each; at most
    /// a few dozen lines.
    pub details: Vec<String>,
}

/// What the run was asked to cover (for the coverage checker).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// The faults the experiment asked for, by name (`kill`, `partition`, ...); each must
    /// have a `start` and a `stop` nemesis event in the history.
    pub faults: Vec<String>,
    /// The minimum rate of completed (ok or fail) operations per second over the run.
    pub min_ops_per_sec: f64,
}

/// The checkers an experiment can ask for, by name.
pub const CHECKERS: &[&str] = &[
    "linearizable",
    "no_lost_keys",
    "decrypt_all",
    "audit",
    "quota",
    "liveness",
    "coverage",
];
