//! # The key quota holds under faults
//!
//! An account may hold at most `key_quota` keys. The state machine counts keys when it
//! applies a CreateKey (a key pending deletion still counts), so however requests race
//! and retry across failovers, the count never passes the quota:
//!
//! - `keys_before` plus the `ok` CreateKeys is at most the quota;
//! - every `ok` ListKeys counted at most the quota;
//! - every answering node holds at most the quota.
//!
//! The converse is checked where it is certain: a CreateKey refused with
//! `LimitExceededException` although, counting every CreateKey that could have been
//! applied before its response (`ok` or unknown, invoked before it completed), the
//! account was still below the quota, is a violation. No key is destroyed during a run
//! (the shortest waiting period is seven days), so that count is an upper bound.
//!
//! With no quota in force (`key_quota` 0) there is nothing to check.

use super::{answering, classify, describe_op, verdict, CheckResult, Class};
use crate::history::{FinalState, History, Op, Value};

/// The checker's name.
pub const NAME: &str = "quota";

/// Checks the quota against the history and the final state.
pub fn check(history: &History, final_state: &FinalState) -> CheckResult {
    let quota = final_state.key_quota;
    if quota == 0 {
        return verdict(NAME, vec![], vec![]);
    }
    let ops = history.operations();
    let mut violations = Vec::new();
    let before = final_state.keys_before;
    let ok_creates = ops
        .iter()
        .filter(|o| matches!(o.op, Op::CreateKey { .. }) && matches!(classify(o), Class::Ok(_)))
        .count() as u64;
    if before + ok_creates > quota {
        violations.push(format!(
            "{ok_creates} CreateKey succeeded with {before} keys before the run: {} keys, over the quota of {quota}",
            before + ok_creates
        ));
    }
    for op in &ops {
        match (&op.op, classify(op)) {
            (Op::ListKeys { .. }, Class::Ok(Value::Count { count })) if *count > quota => {
                violations.push(format!(
                    "listed {count} keys, over the quota of {quota}: {}",
                    describe_op(op)
                ));
            }
            (Op::CreateKey { .. }, Class::Fail("LimitExceededException")) => {
                let done = op.complete_ns.unwrap_or(u64::MAX);
                let could_exist = ops
                    .iter()
                    .filter(|o| {
                        matches!(o.op, Op::CreateKey { .. })
                            && !matches!(classify(o), Class::Fail(_))
                            && o.invoke_ns < done
                    })
                    .count() as u64;
                if before + could_exist < quota {
                    violations.push(format!(
                        "refused as over the quota of {quota} while at most {} keys could exist: {}",
                        before + could_exist,
                        describe_op(op)
                    ));
                }
            }
            _ => {}
        }
    }
    for node in answering(final_state) {
        let held = node.keys.len() as u64;
        if held > quota {
            violations.push(format!(
                "node {} holds {held} keys, over the quota of {quota}",
                node.id
            ));
        }
    }
    verdict(NAME, violations, vec![])
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Verdict;
    use super::*;

    fn state(quota: u64, before: u64, keys: &[(&str, &str, &str)]) -> FinalState {
        FinalState {
            nodes: vec![node(1, keys), node(2, keys)],
            key_quota: quota,
            keys_before: before,
            ..FinalState::default()
        }
    }

    fn history() -> HistoryBuilder {
        let mut b = HistoryBuilder::new();
        b.ok(1, create("a"), 0, 10, created("ka"));
        b.ok(2, create("b"), 0, 10, created("kb"));
        b.fail(3, create("c"), 20, 30, "LimitExceededException");
        b.ok(1, list(), 40, 50, count(3));
        b
    }

    const KEYS: &[(&str, &str, &str)] = &[
        ("k0", "Enabled", "x"),
        ("ka", "Enabled", "a"),
        ("kb", "PendingDeletion", "b"),
    ];

    #[test]
    fn at_the_quota_passes() {
        let r = check(&history().build(), &state(3, 1, KEYS));
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.details);
    }

    #[test]
    fn too_many_acknowledged_creates_is_a_violation() {
        let mut b = history();
        b.ok(4, create("d"), 60, 70, created("kd"));
        let r = check(&b.build(), &state(3, 1, KEYS));
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details[0].contains("over the quota of 3"));
    }

    #[test]
    fn listing_or_holding_more_than_the_quota_is_a_violation() {
        let mut b = HistoryBuilder::new();
        b.ok(1, list(), 40, 50, count(4));
        assert_eq!(
            check(&b.build(), &state(3, 3, &KEYS[..3])).verdict,
            Verdict::Violation
        );
        let four = [KEYS[0], KEYS[1], KEYS[2], ("kz", "Enabled", "z")];
        let r = check(&HistoryBuilder::new().build(), &state(3, 3, &four));
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details.iter().any(|l| l.contains("node 2 holds 4 keys")));
    }

    #[test]
    fn refusal_below_the_quota_is_a_violation() {
        let r = check(&history().build(), &state(4, 1, KEYS));
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details[0].contains("refused"));
        // An unknown create in flight might have taken the last slot.
        let mut b = history();
        b.info(5, create("u"), 5, 25);
        let r = check(&b.build(), &state(4, 1, KEYS));
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.details);
    }

    #[test]
    fn no_quota_passes() {
        let mut b = history();
        b.ok(1, list(), 40, 50, count(1000));
        assert_eq!(check(&b.build(), &state(0, 0, KEYS)).verdict, Verdict::Pass);
    }
}
