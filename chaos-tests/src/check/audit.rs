//! # The audit trail records what happened, once
//!
//! Keyraft audits every request through its API — reads and refusals included — by
//! committing the event through Raft: a mutation's event is part of its own log entry,
//! everything else goes in an `AuditBatch` entry, and the caller gets an answer only
//! once its event committed. So after the run, with every node caught up:
//!
//! - every answering node's hash chain verifies, and all of them have the same head
//!   (sequence and hash): one log, one chain;
//! - an operation that completed `ok` left a success event (no error code) on every
//!   node, exactly once; one that definitely failed left none; one whose outcome is
//!   unknown left at most one.
//!
//! Events are matched to operations by the workload's tag where the request carries one
//! (the request id of CreateKey and PutKeyPolicy, the `chaos-op` encryption context of
//! Encrypt and GenerateDataKey, the new description of UpdateKeyDescription). A Decrypt
//! carries the context of the ciphertext it decrypts, so its events are matched by the
//! tag of that Encrypt. Operations that carry no tag (EnableKey, DisableKey,
//! ScheduleKeyDeletion, CancelKeyDeletion, DescribeKey, GetKeyPolicy, ListKeys) are
//! counted per event name and key: with `#ok` and `#unknown` such operations, a node
//! must hold between `#ok` and `#ok + #unknown` success events. Mutations carry one
//! request id for all the SDK's attempts and the state machine answers a repeated id
//! from its first result, so a retried mutation (PutKeyPolicy included) is audited once.
//!
//! A refusal is audited with its error code and never counts as a success: an Encrypt
//! a deny-crypto key policy refused (`AccessDeniedException`, whether the serving node
//! refused it or apply decided again on a policy changed since) is a definite failure
//! and must leave no success event.
//!
//! Some events are not the workload's: the harness reads every node's keys after the
//! run and decrypts every acknowledged ciphertext once more. So reads (DescribeKey,
//! GetKeyPolicy, ListKeys — which also audits each page) are held to the lower bound
//! only, and a Decrypt tag with a re-decryption result may have one event more.

use std::collections::BTreeMap;

use super::{answering, classify, key_id_of, verdict, CheckResult, Class};
use crate::history::{AuditEntry, FinalState, History, Op};

/// The checker's name.
pub const NAME: &str = "audit";

/// Event names whose events carry the workload's tag.
const TAGGED: &[&str] = &[
    "CreateKey",
    "Encrypt",
    "GenerateDataKey",
    "Decrypt",
    "UpdateKeyDescription",
    "PutKeyPolicy",
];

/// Event names of reads (only the lower bound is checked).
const READS: &[&str] = &["DescribeKey", "GetKeyPolicy", "ListKeys"];

/// What a node's success events for one (event name, tag or key) must number.
#[derive(Debug, Default, Clone, Copy)]
struct Expect {
    ok: u64,
    unknown: u64,
    failed: u64,
}

/// The (event name, tag or key id) an operation's events are found under.
fn group_of(op: &Op) -> (&'static str, String) {
    let name = op.event_name();
    let id = match op {
        Op::Decrypt { of, .. } => of.clone(),
        _ if TAGGED.contains(&name) => op.tag().to_string(),
        other => other
            .key_id()
            .map(key_id_of)
            .unwrap_or_default()
            .to_string(),
    };
    (name, id)
}

/// The group a node's event belongs to.
fn group_of_event(e: &AuditEntry) -> (&str, &str) {
    match (&e.tag, TAGGED.contains(&e.event_name.as_str())) {
        (Some(tag), true) => (e.event_name.as_str(), tag.as_str()),
        _ => (e.event_name.as_str(), key_id_of(&e.key_id)),
    }
}

/// Checks every node's audit chain and the events of the history's operations.
pub fn check(history: &History, final_state: &FinalState) -> CheckResult {
    let mut expected: BTreeMap<(&'static str, String), Expect> = BTreeMap::new();
    for op in history.operations() {
        let e = expected.entry(group_of(&op.op)).or_default();
        match classify(&op) {
            Class::Ok(_) => e.ok += 1,
            Class::Unknown => e.unknown += 1,
            Class::Fail(_) => e.failed += 1,
        }
    }
    let nodes: Vec<_> = answering(final_state).collect();
    if nodes.is_empty() {
        return verdict(NAME, vec![], vec!["no node answered the final read".into()]);
    }
    let mut violations = Vec::new();
    for node in &nodes {
        if !node.audit.chain_ok {
            violations.push(format!(
                "node {}: the audit chain does not verify (first bad event {})",
                node.id, node.audit.first_bad_sequence
            ));
        }
    }
    let heads: Vec<(u64, u64, &str)> = nodes
        .iter()
        .map(|n| (n.id, n.audit.head_sequence, n.audit.head_hash.as_str()))
        .collect();
    if heads
        .windows(2)
        .any(|w| (w[0].1, w[0].2) != (w[1].1, w[1].2))
    {
        violations.push(format!(
            "the nodes' audit heads differ: {}",
            heads
                .iter()
                .map(|(id, seq, hash)| format!("node {id} at {seq} {hash}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for node in &nodes {
        let mut seen: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for e in node.audit.events.iter().filter(|e| e.error_code.is_empty()) {
            *seen.entry(group_of_event(e)).or_default() += 1;
        }
        for ((name, id), e) in &expected {
            let got = seen.get(&(*name, id.as_str())).copied().unwrap_or(0);
            let what = if id.is_empty() {
                name.to_string()
            } else if TAGGED.contains(name) {
                format!("{name} tagged {id}")
            } else {
                format!("{name} of key {id}")
            };
            // The harness decrypts each acknowledged ciphertext once more after the run.
            let extra =
                u64::from(*name == "Decrypt" && final_state.redecrypt.contains_key(id.as_str()));
            let high = e.ok + e.unknown + extra;
            if got < e.ok {
                violations.push(format!(
                    "node {}: {got} success events for {what}, but {} operations completed ok",
                    node.id, e.ok
                ));
            } else if got > high && !READS.contains(name) {
                let why = if e.ok + e.unknown == 0 {
                    format!("{} operations definitely failed and none other", e.failed)
                } else {
                    format!("{} ok and {} unknown", e.ok, e.unknown)
                };
                violations.push(format!(
                    "node {}: {got} success events for {what}, at most {high} expected ({why})",
                    node.id
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
    use crate::history::{FinalAudit, NodeFinal};

    fn history() -> HistoryBuilder {
        let mut b = HistoryBuilder::new();
        b.ok(1, create_tagged("c1", "a"), 0, 10, created("k1"));
        b.ok(1, encrypt("e1", "k1", "h"), 20, 30, ciphertext("h"));
        b.fail(2, encrypt("e2", "k1", "h"), 20, 30, "DisabledException");
        b.info(3, encrypt("e3", "k1", "h"), 20, 30);
        b.ok(1, disable("k1"), 40, 50, done());
        b.ok(1, describe("k1"), 60, 70, key("Disabled", "a"));
        b
    }

    fn events() -> Vec<crate::history::AuditEntry> {
        vec![
            event("CreateKey", "k1", "", Some("c1")),
            event("Encrypt", "k1", "", Some("e1")),
            event("Encrypt", "k1", "DisabledException", Some("e2")),
            event("DisableKey", "k1", "", None),
            event("DescribeKey", "k1", "", None),
        ]
    }

    fn nodes(log: FinalAudit, count: u64) -> FinalState {
        FinalState {
            nodes: (1..=count)
                .map(|id| NodeFinal {
                    audit: log.clone(),
                    ..node(id, &[])
                })
                .collect(),
            ..FinalState::default()
        }
    }

    #[test]
    fn complete_and_identical_logs_pass() {
        let f = nodes(audit_log(&events()), 3);
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Pass);
    }

    #[test]
    fn unknown_operation_may_appear_once() {
        let mut ev = events();
        ev.push(event("Encrypt", "k1", "", Some("e3")));
        let f = nodes(audit_log(&ev), 3);
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Pass);
        ev.push(event("Encrypt", "k1", "", Some("e3")));
        let f = nodes(audit_log(&ev), 3);
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Violation);
    }

    #[test]
    fn broken_chain_is_a_violation() {
        let mut f = nodes(audit_log(&events()), 3);
        f.nodes[1].audit.chain_ok = false;
        f.nodes[1].audit.first_bad_sequence = 2;
        let r = check(&history().build(), &f);
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r
            .details
            .iter()
            .any(|l| l.contains("node 2") && l.contains("verify")));
    }

    #[test]
    fn different_heads_are_a_violation() {
        let mut f = nodes(audit_log(&events()), 3);
        f.nodes[2].audit.head_hash = "forked".into();
        let r = check(&history().build(), &f);
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details.iter().any(|l| l.contains("heads differ")));
    }

    #[test]
    fn duplicated_event_is_a_violation() {
        let mut ev = events();
        ev.push(event("Encrypt", "k1", "", Some("e1")));
        let f = nodes(audit_log(&ev), 2);
        let r = check(&history().build(), &f);
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details.iter().any(|l| l.contains("Encrypt tagged e1")));

        // Untagged operations: one ok DisableKey, two success events.
        let mut ev = events();
        ev.push(event("DisableKey", "k1", "", None));
        let r = check(&history().build(), &nodes(audit_log(&ev), 1));
        assert_eq!(r.verdict, Verdict::Violation);
    }

    #[test]
    fn missing_event_is_a_violation() {
        let ev: Vec<_> = events()
            .into_iter()
            .filter(|e| e.event_name != "DescribeKey")
            .collect();
        let r = check(&history().build(), &nodes(audit_log(&ev), 1));
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details[0].contains("DescribeKey of key k1"));
    }

    #[test]
    fn failed_operation_recorded_as_success_is_a_violation() {
        let mut ev = events();
        ev.push(event("Encrypt", "k1", "", Some("e2")));
        let r = check(&history().build(), &nodes(audit_log(&ev), 1));
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details[0].contains("definitely failed"));
    }

    #[test]
    fn events_that_are_not_the_workloads_are_ignored() {
        let mut ev = events();
        // The harness's own reads and a re-decryption after the run.
        ev.push(event("DescribeKey", "k1", "", None));
        ev.push(event("ListKeys", "", "", None));
        ev.push(event("CreateKey", "k9", "", Some("setup")));
        ev.push(event("Decrypt", "k1", "", Some("e1")));
        let mut f = nodes(audit_log(&ev), 2);
        f.redecrypt.insert(
            "e1".into(),
            crate::history::Redecrypt::Plaintext { sha256: "h".into() },
        );
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Pass);
    }

    #[test]
    fn policy_puts_are_matched_by_tag_and_policy_reads_are_a_lower_bound() {
        let mut b = history();
        b.ok(1, put_policy("p1", "k1", true), 80, 90, done());
        b.info(2, put_policy("p2", "k1", false), 80, 90);
        b.fail(
            3,
            put_policy("p3", "k1", false),
            80,
            90,
            "MalformedPolicyDocumentException",
        );
        b.ok(1, get_policy("k1"), 100, 110, policy(Some("p1"), true));
        // A crypto call the policy refused: audited, but as a refusal.
        b.fail(
            1,
            encrypt("e4", "k1", "h"),
            120,
            130,
            "AccessDeniedException",
        );
        let mut ev = events();
        ev.push(event("PutKeyPolicy", "k1", "", Some("p1")));
        ev.push(event(
            "PutKeyPolicy",
            "k1",
            "MalformedPolicyDocumentException",
            None,
        ));
        ev.push(event("GetKeyPolicy", "k1", "", None));
        ev.push(event("Encrypt", "k1", "AccessDeniedException", Some("e4")));
        let pass =
            |ev: &[crate::history::AuditEntry]| check(&b.build(), &nodes(audit_log(ev), 2)).verdict;
        assert_eq!(pass(&ev), Verdict::Pass);

        // The unknown put may have been audited once; the harness may read more.
        let mut more = ev.clone();
        more.push(event("PutKeyPolicy", "k1", "", Some("p2")));
        more.push(event("GetKeyPolicy", "k1", "", None));
        assert_eq!(pass(&more), Verdict::Pass);

        // An acknowledged put audited twice (a retry applied again), or not at all.
        let mut twice = ev.clone();
        twice.push(event("PutKeyPolicy", "k1", "", Some("p1")));
        assert_eq!(pass(&twice), Verdict::Violation);
        let missing: Vec<_> = ev
            .iter()
            .filter(|e| e.event_name != "PutKeyPolicy")
            .cloned()
            .collect();
        assert_eq!(pass(&missing), Verdict::Violation);

        // A refused put, or a refused Encrypt, recorded as a success.
        let mut refused_put = ev.clone();
        refused_put.push(event("PutKeyPolicy", "k1", "", Some("p3")));
        assert_eq!(pass(&refused_put), Verdict::Violation);
        let mut let_past = ev.clone();
        let_past.push(event("Encrypt", "k1", "", Some("e4")));
        assert_eq!(pass(&let_past), Verdict::Violation);

        // A policy read that completed ok must be audited.
        let no_read: Vec<_> = ev
            .iter()
            .filter(|e| e.event_name != "GetKeyPolicy")
            .cloned()
            .collect();
        assert_eq!(pass(&no_read), Verdict::Violation);
    }

    #[test]
    fn key_arns_match_key_ids() {
        let mut ev = events();
        ev[3].key_id = "arn:keyraft:dev-1:111122223333:key/k1".into();
        let f = nodes(audit_log(&ev), 1);
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Pass);
    }
}
