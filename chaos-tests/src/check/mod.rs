//! # The checkers
//!
//! Each checker is a pure function of a saved [`History`] and the [`FinalState`] read
//! after healing, so `keyraft-chaos check DIR` re-runs exactly what the run decided.
//! Each gives a [`Verdict`]: `pass`, `violation` (with the evidence), or `unknown` when
//! the run cannot support a verdict (too few operations, a fault that never fired, a
//! search that ran out of its budget).
//!
//! [`run`] runs the checkers an experiment names. The checkers share one reading of an
//! operation's outcome ([`Class`]): `ok` happened; `fail` with a definite code did not
//! happen; `info`, an operation still open at the end, and a `fail` whose code the SDK
//! may return after an earlier attempt of the same call reached the cluster
//! ([`outcome_unknown_after`]) may or may not have happened. Treating those codes as
//! unknown can only make a checker more permissive, never make it report a violation
//! that did not occur.

use keyraft_types::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::history::{FinalState, History, NodeFinal, Op, Operation, Outcome, Value};

pub mod audit;
pub mod coverage;
pub mod decrypt_all;
pub mod linearizable;
pub mod liveness;
pub mod no_lost_keys;
pub mod quota;

#[cfg(test)]
pub(crate) mod testing;

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

/// The most detail lines a checker reports; the rest are summarised in one line.
pub const MAX_DETAILS: usize = 40;

/// Whether an operation that ended `fail` with `code` still has an unknown outcome: the
/// SDK retries on these codes ([`ErrorCode::is_retryable`]), so an earlier attempt of
/// the same call may have reached the cluster and taken effect (or left an audit event)
/// before the one whose error the application saw.
pub fn outcome_unknown_after(code: &str) -> bool {
    ErrorCode::parse(code).is_some_and(ErrorCode::is_retryable)
}

/// How a checker reads an operation's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Class<'a> {
    /// It happened, with this result.
    Ok(&'a Value),
    /// It definitely did not happen; the service refused it with this code.
    Fail(&'a str),
    /// It may or may not have happened (and may take effect any time after its invoke).
    Unknown,
}

/// Classifies an operation's outcome (see the module docs).
pub fn classify(op: &Operation) -> Class<'_> {
    match &op.outcome {
        Outcome::Ok(v) => Class::Ok(v),
        Outcome::Fail { code, .. } if outcome_unknown_after(code) => Class::Unknown,
        Outcome::Fail { code, .. } => Class::Fail(code),
        Outcome::Unknown { .. } => Class::Unknown,
    }
}

/// A key id as the checkers compare it: the id itself, also when given as a key ARN
/// (`arn:...:key/<id>`).
pub fn key_id_of(key_ref: &str) -> &str {
    key_ref.rsplit('/').next().unwrap_or(key_ref)
}

/// The nodes that answered the final read (those without an `error`).
pub fn answering(final_state: &FinalState) -> impl Iterator<Item = &NodeFinal> {
    final_state.nodes.iter().filter(|n| n.error.is_none())
}

/// The key ids two nodes' final reads disagree on: held by one only, or held with a
/// different state or description.
pub fn differing_keys<'a>(a: &'a NodeFinal, b: &'a NodeFinal) -> Vec<&'a str> {
    let ids: std::collections::BTreeSet<&String> = a.keys.keys().chain(b.keys.keys()).collect();
    ids.into_iter()
        .filter(|id| a.keys.get(*id) != b.keys.get(*id))
        .map(String::as_str)
        .collect()
}

/// One line describing an operation, for evidence: process, call, interval, outcome.
pub fn describe_op(op: &Operation) -> String {
    let target = op
        .op
        .key_id()
        .map(|k| format!(" {}", key_id_of(k)))
        .unwrap_or_default();
    let outcome = match &op.outcome {
        Outcome::Ok(v) => format!("ok {}", describe_value(v)),
        Outcome::Fail { code, .. } => format!("fail {code}"),
        Outcome::Unknown { error } => format!("info ({error})"),
    };
    let complete = match (&op.outcome, op.complete_ns) {
        (Outcome::Unknown { .. }, _) | (_, None) => "?".to_string(),
        (_, Some(t)) => fmt_ns(t),
    };
    let variant = match &op.op {
        Op::PutKeyPolicy { deny_crypto, .. } => policy_variant(*deny_crypto),
        _ => "",
    };
    format!(
        "p{} {}{}{} [{}] invoked {} completed {}: {}",
        op.process,
        op.op.event_name(),
        variant,
        target,
        op.op.tag(),
        fmt_ns(op.invoke_ns),
        complete,
        outcome
    )
}

fn describe_value(v: &Value) -> String {
    match v {
        Value::Done => String::new(),
        Value::Created { key_id } => key_id.clone(),
        Value::Key { state, description } => format!("{state} {description:?}"),
        Value::Ciphertext {
            plaintext_sha256, ..
        } => format!("plaintext {}", short(plaintext_sha256)),
        Value::Plaintext { plaintext_sha256 } => format!("plaintext {}", short(plaintext_sha256)),
        Value::Count { count } => format!("count {count}"),
        Value::Policy { tag, deny_crypto } => format!(
            "policy {}{}",
            tag.as_deref().unwrap_or("(default)"),
            policy_variant(*deny_crypto)
        ),
    }
}

/// How evidence names a key policy's variant.
fn policy_variant(deny_crypto: bool) -> &'static str {
    if deny_crypto {
        " (deny-crypto)"
    } else {
        " (open)"
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// Nanoseconds as seconds with millisecond precision (`12.345s`).
pub fn fmt_ns(ns: u64) -> String {
    format!("{}.{:03}s", ns / 1_000_000_000, (ns / 1_000_000) % 1000)
}

/// Builds a result: `Violation` with the violations if there are any, else `Unknown`
/// with the unknowns if there are any, else `Pass`; details capped at [`MAX_DETAILS`]
/// lines.
pub fn verdict(checker: &str, violations: Vec<String>, unknowns: Vec<String>) -> CheckResult {
    let (verdict, details) = if !violations.is_empty() {
        (Verdict::Violation, violations)
    } else if !unknowns.is_empty() {
        (Verdict::Unknown, unknowns)
    } else {
        (Verdict::Pass, Vec::new())
    };
    CheckResult {
        checker: checker.to_string(),
        verdict,
        details: cap(details),
    }
}

/// Caps a list of detail lines at [`MAX_DETAILS`], saying how many were left out.
fn cap(mut details: Vec<String>) -> Vec<String> {
    if details.len() > MAX_DETAILS {
        let more = details.len() - (MAX_DETAILS - 1);
        details.truncate(MAX_DETAILS - 1);
        details.push(format!("... and {more} more"));
    }
    details
}

/// Runs the named checkers, in the order given. A name that is not in [`CHECKERS`]
/// gives an `unknown` result that says so.
pub fn run(
    names: &[String],
    history: &History,
    final_state: &FinalState,
    coverage: &Coverage,
) -> Vec<CheckResult> {
    names
        .iter()
        .map(|name| match name.as_str() {
            "linearizable" => linearizable::check(history),
            "no_lost_keys" => no_lost_keys::check(history, final_state),
            "decrypt_all" => decrypt_all::check(history, final_state),
            "audit" => audit::check(history, final_state),
            "quota" => quota::check(history, final_state),
            "liveness" => liveness::check(final_state),
            "coverage" => coverage::check(history, coverage),
            other => verdict(
                other,
                Vec::new(),
                vec![format!(
                    "no checker is named {other:?}; the checkers are {}",
                    CHECKERS.join(", ")
                )],
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn unknown_checker_name_is_unknown() {
        let h = HistoryBuilder::new().build();
        let results = run(
            &["nope".to_string()],
            &h,
            &FinalState::default(),
            &Coverage::default(),
        );
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].checker, "nope");
        assert_eq!(results[0].verdict, Verdict::Unknown);
        assert!(results[0].details[0].contains("nope"));
    }

    #[test]
    fn every_named_checker_runs() {
        let names: Vec<String> = CHECKERS.iter().map(|s| s.to_string()).collect();
        let h = HistoryBuilder::new().build();
        let results = run(&names, &h, &FinalState::default(), &Coverage::default());
        let got: Vec<&str> = results.iter().map(|r| r.checker.as_str()).collect();
        assert_eq!(got, CHECKERS);
    }

    #[test]
    fn retryable_fail_codes_are_unknown_outcomes() {
        let mut b = HistoryBuilder::new();
        b.fail(1, enable("k1"), 0, 10, "ThrottlingException");
        b.fail(2, enable("k1"), 0, 10, "DisabledException");
        let ops = b.build().operations();
        assert_eq!(classify(&ops[0]), Class::Unknown);
        assert_eq!(classify(&ops[1]), Class::Fail("DisabledException"));
    }

    #[test]
    fn details_are_capped() {
        let r = verdict("x", (0..100).map(|i| i.to_string()).collect(), vec![]);
        assert_eq!(r.verdict, Verdict::Violation);
        assert_eq!(r.details.len(), MAX_DETAILS);
        assert!(r.details[MAX_DETAILS - 1].contains("61 more"));
    }
}
