//! # The cluster recovers
//!
//! Safety is not enough: once every fault is healed, the cluster must come back as one.
//! After the run every node must answer, know the same leader (not none), have applied
//! the same log index, and hold the same keys in the same states; and a write made
//! after healing (`write_after_heal`) must have succeeded.

use super::{answering, differing_keys, verdict, CheckResult};
use crate::history::FinalState;

/// The checker's name.
pub const NAME: &str = "liveness";

/// Checks that the cluster converged after healing.
pub fn check(final_state: &FinalState) -> CheckResult {
    let mut violations = Vec::new();
    if final_state.nodes.is_empty() {
        return verdict(NAME, vec![], vec!["the final state lists no nodes".into()]);
    }
    for node in &final_state.nodes {
        if let Some(e) = &node.error {
            violations.push(format!(
                "node {} did not answer after healing: {e}",
                node.id
            ));
        }
    }
    let nodes: Vec<_> = answering(final_state).collect();
    let list = |f: &dyn Fn(&crate::history::NodeFinal) -> String| {
        nodes
            .iter()
            .map(|n| format!("node {}: {}", n.id, f(n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if nodes.iter().any(|n| n.leader == 0) {
        violations.push(format!(
            "a node knows no leader ({})",
            list(&|n| n.leader.to_string())
        ));
    } else if nodes.windows(2).any(|w| w[0].leader != w[1].leader) {
        violations.push(format!(
            "the nodes know different leaders ({})",
            list(&|n| n.leader.to_string())
        ));
    }
    if nodes
        .windows(2)
        .any(|w| w[0].applied_index != w[1].applied_index)
    {
        violations.push(format!(
            "the nodes applied different indexes ({})",
            list(&|n| n.applied_index.to_string())
        ));
    }
    if let Some((first, rest)) = nodes.split_first() {
        for other in rest.iter().filter(|n| n.keys != first.keys) {
            let differing = differing_keys(first, other).len();
            violations.push(format!(
                "node {} and node {} hold different keys ({differing} differ)",
                first.id, other.id
            ));
        }
    }
    match &final_state.write_after_heal {
        None => violations.push("no write was made after healing".into()),
        Some(w) if !w.ok => violations.push(format!(
            "the write after healing failed after {} ms: {}",
            w.millis,
            w.error.as_deref().unwrap_or("no error given")
        )),
        Some(_) => {}
    }
    verdict(NAME, violations, vec![])
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Verdict;
    use super::*;
    use crate::history::WriteAfterHeal;

    fn healthy() -> FinalState {
        let keys = [("ka", "Enabled", "a")];
        FinalState {
            nodes: vec![node(1, &keys), node(2, &keys), node(3, &keys)],
            write_after_heal: Some(WriteAfterHeal {
                ok: true,
                millis: 120,
                error: None,
            }),
            ..FinalState::default()
        }
    }

    #[test]
    fn converged_cluster_passes() {
        assert_eq!(check(&healthy()).verdict, Verdict::Pass);
    }

    #[test]
    fn each_divergence_is_a_violation() {
        type Breaker = fn(&mut FinalState);
        let cases: &[(&str, Breaker)] = &[
            ("did not answer", |f| {
                f.nodes[1].error = Some("refused".into())
            }),
            ("no leader", |f| f.nodes[0].leader = 0),
            ("different leaders", |f| f.nodes[2].leader = 2),
            ("different indexes", |f| f.nodes[2].applied_index = 99),
            ("different keys", |f| {
                f.nodes[1].keys.clear();
            }),
            ("no write", |f| f.write_after_heal = None),
            ("failed", |f| {
                f.write_after_heal = Some(WriteAfterHeal {
                    ok: false,
                    millis: 30_000,
                    error: Some("no quorum".into()),
                })
            }),
        ];
        for (what, breaker) in cases {
            let mut f = healthy();
            breaker(&mut f);
            let r = check(&f);
            assert_eq!(r.verdict, Verdict::Violation, "{what}");
            assert!(
                r.details.iter().any(|l| l.contains(what)),
                "{what}: {:?}",
                r.details
            );
        }
    }

    #[test]
    fn no_nodes_is_unknown() {
        assert_eq!(check(&FinalState::default()).verdict, Verdict::Unknown);
    }
}
