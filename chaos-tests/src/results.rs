//! `results.json`: what a run concluded, written next to its history.

use serde::{Deserialize, Serialize};

use crate::check::{CheckResult, Verdict};

/// What a run concluded (`results.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    /// The experiment's name.
    pub experiment: String,
    /// The seed the run used (a rerun with it makes the same fault schedule).
    pub seed: u64,
    /// How many nodes the cluster had.
    pub nodes: u64,
    /// When the run started, ms since the Unix epoch.
    pub started_unix_ms: u64,
    /// How long the run took, ms.
    pub duration_ms: u64,
    /// The overall verdict: the worst of the checkers' (an abort makes it `unknown`).
    pub verdict: Verdict,
    /// Why the run was aborted, if it was (an abort condition fired, a node crash-looped).
    pub aborted: Option<String>,
    /// Each checker's result.
    pub checks: Vec<CheckResult>,
}

impl RunResults {
    /// Reads a run directory's `results.json`.
    pub fn read(dir: &std::path::Path) -> Result<RunResults, String> {
        let path = dir.join("results.json");
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The process exit code for this verdict: 0 pass, 1 violation, 2 unknown or aborted.
    pub fn exit_code(&self) -> i32 {
        if self.aborted.is_some() {
            return 2;
        }
        match self.verdict {
            Verdict::Pass => 0,
            Verdict::Violation => 1,
            Verdict::Unknown => 2,
        }
    }

    /// Every checker's verdict and evidence, one line each, after the abort reason if
    /// any: what a failed test or script shows.
    pub fn evidence(&self) -> String {
        let mut lines: Vec<String> = self
            .aborted
            .iter()
            .map(|a| format!("aborted: {a}"))
            .collect();
        lines.extend(
            self.checks
                .iter()
                .map(|c| format!("{} {:?}: {}", c.checker, c.verdict, c.details.join(" | "))),
        );
        lines.join("\n")
    }
}
