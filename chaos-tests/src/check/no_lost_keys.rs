//! # No lost keys, no phantom keys
//!
//! A key management service that forgets a key it acknowledged loses every ciphertext
//! made under it; one that keeps a key it refused to create holds material nobody
//! knows about. After the run, with every fault healed, this checker compares what
//! each answering node holds with what the history says was created:
//!
//! - **no loss**: the key of every `ok` CreateKey is on every node (a key pending
//!   deletion is still there);
//! - **no phantom**: every key on a node is explained — it is the key of an `ok`
//!   CreateKey or a key the workload named, or its description is that of a CreateKey
//!   whose outcome is unknown (each such create explains at most one key), or it is one
//!   of the `keys_before` keys that existed before the history began. A key that can
//!   only be the result of a CreateKey that definitely failed is a violation;
//! - **counts**: `keys_before + ok ≤ keys ≤ keys_before + ok + unknown` on every node;
//! - **agreement**: all answering nodes hold the same keys, in the same states, with the
//!   same descriptions.
//!
//! `keys_before` counts the keys that existed before the first event of the history:
//! keys the workload created in its own preparation are operations of the history.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    answering, classify, describe_op, differing_keys, key_id_of, verdict, CheckResult, Class,
};
use crate::history::{FinalState, History, Op, Value};

/// The checker's name.
pub const NAME: &str = "no_lost_keys";

/// Checks the final key sets against the history.
pub fn check(history: &History, final_state: &FinalState) -> CheckResult {
    let ops = history.operations();
    let mut ok_creates: BTreeMap<&str, usize> = BTreeMap::new();
    let mut unknown_creates: Vec<&str> = Vec::new();
    let mut failed_creates: Vec<(&str, usize)> = Vec::new();
    let mut named: BTreeSet<&str> = BTreeSet::new();
    for (i, op) in ops.iter().enumerate() {
        if let Some(k) = op.op.key_id() {
            named.insert(key_id_of(k));
        }
        let Op::CreateKey { description, .. } = &op.op else {
            continue;
        };
        match classify(op) {
            Class::Ok(Value::Created { key_id }) => {
                ok_creates.insert(key_id_of(key_id), i);
            }
            Class::Ok(_) | Class::Unknown => unknown_creates.push(description),
            Class::Fail(_) => failed_creates.push((description, i)),
        }
    }
    let nodes: Vec<_> = answering(final_state).collect();
    if nodes.is_empty() {
        return verdict(NAME, vec![], vec!["no node answered the final read".into()]);
    }
    let mut violations = Vec::new();
    for node in &nodes {
        let n = node.id;
        for (&key, &i) in &ok_creates {
            if !node.keys.keys().any(|k| key_id_of(k) == key) {
                violations.push(format!(
                    "node {n} lost key {key}, created by {}",
                    describe_op(&ops[i])
                ));
            }
        }
        // Keys the history does not account for by id, matched to unknown creates by
        // description; what is left over may be keys from before the history.
        let mut unused: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &unknown_creates {
            *unused.entry(d).or_default() += 1;
        }
        let mut unexplained = Vec::new();
        for (key, held) in &node.keys {
            let id = key_id_of(key);
            if ok_creates.contains_key(id) || named.contains(id) {
                continue;
            }
            if let Some(left) = unused.get_mut(held.description.as_str()) {
                if *left > 0 {
                    *left -= 1;
                    continue;
                }
            }
            if let Some((_, i)) = failed_creates.iter().find(|(d, _)| *d == held.description) {
                violations.push(format!(
                    "node {n} holds key {id} ({:?}) of a CreateKey that definitely failed: {}",
                    held.description,
                    describe_op(&ops[*i])
                ));
                continue;
            }
            unexplained.push(format!("{id} ({:?})", held.description));
        }
        if unexplained.len() as u64 > final_state.keys_before {
            violations.push(format!(
                "node {n} holds {} keys no CreateKey explains (at most {} existed before the run): {}",
                unexplained.len(),
                final_state.keys_before,
                unexplained.join(", ")
            ));
        }
        let have = node.keys.len() as u64;
        let low = final_state.keys_before + ok_creates.len() as u64;
        let high = low + unknown_creates.len() as u64;
        if have < low || have > high {
            violations.push(format!(
                "node {n} holds {have} keys; the history allows {low} to {high} \
                 ({} before, {} created ok, {} unknown)",
                final_state.keys_before,
                ok_creates.len(),
                unknown_creates.len()
            ));
        }
    }
    if let Some((first, rest)) = nodes.split_first() {
        let show = |k: Option<&crate::history::FinalKey>| match k {
            Some(k) => format!("{} {:?}", k.state, k.description),
            None => "absent".to_string(),
        };
        for other in rest {
            for id in differing_keys(first, other) {
                violations.push(format!(
                    "nodes disagree on key {id}: node {} has {}, node {} has {}",
                    first.id,
                    show(first.keys.get(id)),
                    other.id,
                    show(other.keys.get(id))
                ));
            }
        }
    }
    verdict(NAME, violations, vec![])
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Verdict;
    use super::*;

    fn history() -> HistoryBuilder {
        let mut b = HistoryBuilder::new();
        b.ok(1, create("a"), 0, 10, created("ka"));
        b.ok(2, create("b"), 0, 10, created("kb"));
        b.ok(1, update_description("ka", "a2"), 20, 30, done());
        b
    }

    fn state(nodes: Vec<crate::history::NodeFinal>) -> FinalState {
        FinalState {
            nodes,
            ..FinalState::default()
        }
    }

    #[test]
    fn every_created_key_on_every_node_passes() {
        let keys = [("ka", "Enabled", "a2"), ("kb", "PendingDeletion", "b")];
        let f = state(vec![node(1, &keys), node(2, &keys), node(3, &keys)]);
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Pass);
    }

    #[test]
    fn acknowledged_key_missing_on_a_node_is_lost() {
        let keys = [("ka", "Enabled", "a2"), ("kb", "Enabled", "b")];
        let f = state(vec![node(1, &keys), node(2, &keys[..1])]);
        let r = check(&history().build(), &f);
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details.iter().any(|l| l.contains("node 2 lost key kb")));
    }

    #[test]
    fn key_of_a_failed_create_is_a_phantom() {
        let mut b = history();
        b.fail(3, create("c"), 0, 10, "LimitExceededException");
        let keys = [
            ("ka", "Enabled", "a2"),
            ("kb", "Enabled", "b"),
            ("kc", "Enabled", "c"),
        ];
        let r = check(&b.build(), &state(vec![node(1, &keys)]));
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r
            .details
            .iter()
            .any(|l| l.contains("kc") && l.contains("definitely failed")));
    }

    #[test]
    fn key_nobody_created_is_a_phantom() {
        let keys = [
            ("ka", "Enabled", "a2"),
            ("kb", "Enabled", "b"),
            ("kz", "Enabled", "?"),
        ];
        let r = check(&history().build(), &state(vec![node(1, &keys)]));
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details.iter().any(|l| l.contains("kz")));
    }

    #[test]
    fn keys_from_before_the_run_are_allowed() {
        let keys = [
            ("ka", "Enabled", "a2"),
            ("kb", "Enabled", "b"),
            ("k0", "Enabled", "?"),
        ];
        let mut f = state(vec![node(1, &keys)]);
        f.keys_before = 1;
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Pass);
    }

    #[test]
    fn unknown_create_may_or_may_not_leave_a_key() {
        let mut b = history();
        b.info(3, create("c"), 0, 10);
        // Retryable codes are unknown outcomes too.
        b.fail(4, create("d"), 0, 10, "DependencyTimeoutException");
        let with = [
            ("ka", "Enabled", "a2"),
            ("kb", "Enabled", "b"),
            ("kc", "Enabled", "c"),
            ("kd", "Enabled", "d"),
        ];
        assert_eq!(
            check(&b.build(), &state(vec![node(1, &with)])).verdict,
            Verdict::Pass
        );
        assert_eq!(
            check(&b.build(), &state(vec![node(1, &with[..2])])).verdict,
            Verdict::Pass
        );
        // But one unknown create explains one key, not two.
        let twice = [
            ("ka", "Enabled", "a2"),
            ("kb", "Enabled", "b"),
            ("kc", "Enabled", "c"),
            ("kc2", "Enabled", "c"),
        ];
        assert_eq!(
            check(&b.build(), &state(vec![node(1, &twice)])).verdict,
            Verdict::Violation
        );
    }

    #[test]
    fn nodes_that_disagree_are_a_violation() {
        let a = [("ka", "Enabled", "a2"), ("kb", "Enabled", "b")];
        let b = [("ka", "Disabled", "a2"), ("kb", "Enabled", "b")];
        let r = check(&history().build(), &state(vec![node(1, &a), node(2, &b)]));
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details.iter().any(|l| l.contains("disagree on key ka")));
    }

    #[test]
    fn nodes_that_did_not_answer_are_not_compared() {
        let keys = [("ka", "Enabled", "a2"), ("kb", "Enabled", "b")];
        let mut down = node(3, &[]);
        down.error = Some("connection refused".into());
        let f = state(vec![node(1, &keys), down]);
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Pass);
        let f = state(vec![crate::history::NodeFinal {
            error: Some("down".into()),
            ..node(1, &[])
        }]);
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Unknown);
    }
}
