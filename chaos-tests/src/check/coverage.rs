//! # Did the run test what it meant to?
//!
//! A pass means little if the faults never fired or the workload hardly ran. This
//! checker never finds a violation; it says `unknown` when the run cannot support the
//! other checkers' verdicts:
//!
//! - every fault the experiment asked for has a `start` and a `stop` nemesis event;
//! - completed (`ok` or `fail`) operations per second, over the span from the first
//!   invocation to the last completion, reach `min_ops_per_sec`;
//! - some operation succeeded before the first fault started, and some operation
//!   invoked after the last fault event succeeded — the cluster worked before the
//!   faults and again after them.

use std::collections::BTreeSet;

use super::{fmt_ns, verdict, CheckResult, Coverage};
use crate::history::{EventKind, History, Outcome, Phase};

/// The checker's name.
pub const NAME: &str = "coverage";

/// Checks what the run covered.
pub fn check(history: &History, coverage: &Coverage) -> CheckResult {
    let mut unknowns = Vec::new();
    let mut started = BTreeSet::new();
    let mut stopped = BTreeSet::new();
    let (mut first_fault, mut last_fault) = (None::<u64>, None::<u64>);
    for e in &history.events {
        if let EventKind::Nemesis { phase, fault, .. } = &e.kind {
            match phase {
                Phase::Start => started.insert(fault.as_str()),
                Phase::Stop => stopped.insert(fault.as_str()),
            };
            first_fault = Some(first_fault.map_or(e.time_ns, |t| t.min(e.time_ns)));
            last_fault = Some(last_fault.map_or(e.time_ns, |t| t.max(e.time_ns)));
        }
    }
    for fault in &coverage.faults {
        let missing: Vec<&str> = [
            (!started.contains(fault.as_str())).then_some("start"),
            (!stopped.contains(fault.as_str())).then_some("stop"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !missing.is_empty() {
            unknowns.push(format!(
                "fault {fault:?} has no {} event",
                missing.join(" and no ")
            ));
        }
    }

    let ops = history.operations();
    let first_invoke = ops.iter().map(|o| o.invoke_ns).min();
    let last_completion = history
        .events
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Ok { .. } | EventKind::Fail { .. } | EventKind::Info { .. }
            )
        })
        .map(|e| e.time_ns)
        .max();
    let completed = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok(_) | Outcome::Fail { .. }))
        .count();
    match (first_invoke, last_completion) {
        (Some(a), Some(b)) if b > a => {
            let rate = completed as f64 / ((b - a) as f64 / 1e9);
            if rate < coverage.min_ops_per_sec {
                unknowns.push(format!(
                    "{completed} operations completed in {}: {rate:.1}/s, below the {:.1}/s asked for",
                    fmt_ns(b - a),
                    coverage.min_ops_per_sec
                ));
            }
        }
        _ => unknowns.push(format!(
            "{completed} operations completed: too few to measure a rate"
        )),
    }

    if let (Some(first), Some(last)) = (first_fault, last_fault) {
        let ok = |o: &&crate::history::Operation| matches!(o.outcome, Outcome::Ok(_));
        if !ops
            .iter()
            .filter(ok)
            .any(|o| o.complete_ns.is_some_and(|t| t < first))
        {
            unknowns.push(format!(
                "no operation succeeded before the first fault ({})",
                fmt_ns(first)
            ));
        }
        if !ops.iter().filter(ok).any(|o| o.invoke_ns > last) {
            unknowns.push(format!(
                "no operation invoked after the last fault event ({}) succeeded",
                fmt_ns(last)
            ));
        }
    }
    verdict(NAME, vec![], unknowns)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Verdict;
    use super::*;

    const S: u64 = 1_000_000_000;

    /// Ten ops a second for ten seconds, a partition from 3 s to 6 s.
    fn run() -> HistoryBuilder {
        let mut b = HistoryBuilder::new();
        for i in 0..100 {
            b.ok(
                i % 4,
                describe("k1"),
                i * S / 10,
                i * S / 10 + 1000,
                key("Enabled", ""),
            );
        }
        b.nemesis(3 * S, Phase::Start, "partition");
        b.nemesis(6 * S, Phase::Stop, "partition");
        b
    }

    fn asked(faults: &[&str], rate: f64) -> Coverage {
        Coverage {
            faults: faults.iter().map(|s| s.to_string()).collect(),
            min_ops_per_sec: rate,
        }
    }

    #[test]
    fn covered_run_passes() {
        let r = check(&run().build(), &asked(&["partition"], 5.0));
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.details);
    }

    #[test]
    fn fault_that_never_fired_is_unknown() {
        let r = check(&run().build(), &asked(&["partition", "kill"], 5.0));
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.details.iter().any(|l| l.contains("\"kill\"")));
        assert!(!r.details.iter().any(|l| l.contains("\"partition\"")));
    }

    #[test]
    fn fault_that_never_stopped_is_unknown() {
        let mut b = run();
        b.nemesis(7 * S, Phase::Start, "kill");
        let r = check(&b.build(), &asked(&["kill"], 5.0));
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.details[0].contains("no stop"));
    }

    #[test]
    fn slow_run_is_unknown() {
        let r = check(&run().build(), &asked(&["partition"], 50.0));
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.details[0].contains("below"));
    }

    #[test]
    fn run_with_no_success_after_the_faults_is_unknown() {
        let mut b = run();
        b.nemesis(9_950_000_000, Phase::Stop, "kill");
        let r = check(&b.build(), &asked(&["partition"], 1.0));
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.details[0].contains("after the last fault"));
    }

    #[test]
    fn run_with_no_success_before_the_faults_is_unknown() {
        let mut b = run();
        b.nemesis(0, Phase::Start, "kill");
        let r = check(&b.build(), &asked(&["partition"], 1.0));
        assert_eq!(r.verdict, Verdict::Unknown);
        assert!(r.details[0].contains("before the first fault"));
    }

    #[test]
    fn empty_history_is_unknown() {
        let r = check(&HistoryBuilder::new().build(), &asked(&[], 0.0));
        assert_eq!(r.verdict, Verdict::Unknown);
    }
}
