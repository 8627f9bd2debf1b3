//! # Every acknowledged ciphertext still decrypts
//!
//! An `ok` Encrypt or GenerateDataKey is a promise: the ciphertext it returned will
//! decrypt to the same plaintext for as long as its key exists and allows it. After the
//! run the harness decrypts every acknowledged ciphertext again (`final_state.redecrypt`,
//! by the tag of the operation that made it), and this checker holds it to that:
//!
//! - every acknowledged ciphertext has a re-decryption result;
//! - one that decrypted gives the plaintext hash the operation recorded (for
//!   GenerateDataKey, the hash of the data key it returned);
//! - one that was refused is explained by its key's state: `DisabledException` for a
//!   `Disabled` key, `KMSInvalidStateException` for a key `PendingDeletion` (or
//!   `PendingImport`); or by its key's policy: `AccessDeniedException` when the policy
//!   in force after the run may be a deny-crypto one (see [`may_end_denying`]). A
//!   refusal neither explains — including `NotFoundException`, since no key can reach
//!   the end of its waiting period during a run — is a violation, as is a refusal for a
//!   state no answering node holds the key in.
//!
//! During the run, every `ok` Decrypt must return the plaintext hash of the Encrypt or
//! GenerateDataKey whose ciphertext it decrypted.
//!
//! With no acknowledged ciphertext at all the checker has nothing to judge and says
//! `unknown`.

use std::collections::{BTreeMap, BTreeSet};

use super::{answering, classify, describe_op, key_id_of, verdict, CheckResult, Class};
use crate::history::{FinalState, History, Op, Operation, Redecrypt, Value};

/// The checker's name.
pub const NAME: &str = "decrypt_all";

/// Whether a re-decryption refused with `code` is explained by a key in `state`.
pub fn refusal_explained(code: &str, state: &str) -> bool {
    matches!(
        (code, state),
        ("DisabledException", "Disabled")
            | ("KMSInvalidStateException", "PendingDeletion")
            | ("KMSInvalidStateException", "PendingImport")
    )
}

/// Whether the policy in force on `key` after the run may deny cryptography, as far as
/// the history tells: one of the PutKeyPolicy calls that may have been the last to take
/// effect put the deny-crypto variant. Those are the `ok` puts no other `ok` put began
/// after, and every put whose outcome is unknown (it may take effect at any time). With
/// no `ok` put, the default policy (which allows) may still be in force too.
pub fn may_end_denying(ops: &[Operation], key: &str) -> bool {
    let puts: Vec<(&Operation, bool, bool)> = ops
        .iter()
        .filter_map(|op| match (&op.op, classify(op)) {
            (
                Op::PutKeyPolicy {
                    key_id,
                    deny_crypto,
                    ..
                },
                class,
            ) if key_id_of(key_id) == key => match class {
                Class::Ok(_) => Some((op, *deny_crypto, true)),
                Class::Unknown => Some((op, *deny_crypto, false)),
                Class::Fail(_) => None,
            },
            _ => None,
        })
        .collect();
    puts.iter().any(|&(op, deny, ok)| {
        deny && (!ok
            || !puts.iter().any(|&(later, _, later_ok)| {
                later_ok && op.complete_ns.is_some_and(|done| later.invoke_ns > done)
            }))
    })
}

/// Checks the re-decryptions and the run's decryptions.
pub fn check(history: &History, final_state: &FinalState) -> CheckResult {
    let ops = history.operations();
    let mut violations = Vec::new();
    // Tag -> (operation index, key, recorded plaintext hash).
    let mut sealed: BTreeMap<&str, (usize, &str, &str)> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        if let (
            Op::Encrypt { tag, key_id, .. } | Op::GenerateDataKey { tag, key_id },
            Class::Ok(Value::Ciphertext {
                plaintext_sha256, ..
            }),
        ) = (&op.op, classify(op))
        {
            sealed.insert(tag, (i, key_id_of(key_id), plaintext_sha256));
        }
    }
    // Key -> whether its policy may deny cryptography after the run (computed once).
    let mut denying: BTreeMap<&str, bool> = BTreeMap::new();
    for (tag, &(i, key, hash)) in &sealed {
        let what = || describe_op(&ops[i]);
        match final_state.redecrypt.get(*tag) {
            None => violations.push(format!("never decrypted again after the run: {}", what())),
            Some(Redecrypt::Plaintext { sha256 }) if sha256 != hash => violations.push(format!(
                "decrypted after the run to plaintext {sha256}, not {hash}: {}",
                what()
            )),
            Some(Redecrypt::Plaintext { .. }) => {}
            Some(Redecrypt::Refused { code, key_state }) => {
                let by_policy = code == "AccessDeniedException"
                    && *denying
                        .entry(key)
                        .or_insert_with(|| may_end_denying(&ops, key));
                if !by_policy && !refusal_explained(code, key_state) {
                    violations.push(format!(
                        "refused after the run with {code} while the key was {key_state:?}: {}",
                        what()
                    ));
                    continue;
                }
                let held: BTreeSet<&str> = answering(final_state)
                    .filter_map(|n| {
                        n.keys
                            .iter()
                            .find(|(k, _)| key_id_of(k) == key)
                            .map(|(_, v)| v.state.as_str())
                    })
                    .collect();
                if !held.is_empty() && !held.contains(key_state.as_str()) {
                    violations.push(format!(
                        "refused after the run with {code} for a {key_state} key, but the \
                         nodes hold key {key} as {}: {}",
                        held.into_iter().collect::<Vec<_>>().join("/"),
                        what()
                    ));
                }
            }
        }
    }
    for op in &ops {
        let (Op::Decrypt { of, .. }, Class::Ok(value)) = (&op.op, classify(op)) else {
            continue;
        };
        let got = match value {
            Value::Plaintext { plaintext_sha256 } => plaintext_sha256.as_str(),
            _ => continue,
        };
        match sealed.get(of.as_str()) {
            Some(&(_, _, want)) if want == got => {}
            Some(&(i, _, want)) => violations.push(format!(
                "decrypted to plaintext {got}, not {want} of {}: {}",
                describe_op(&ops[i]),
                describe_op(op)
            )),
            None => violations.push(format!(
                "decrypted a ciphertext no acknowledged operation tagged {of:?} made: {}",
                describe_op(op)
            )),
        }
    }
    let unknowns = if sealed.is_empty() && violations.is_empty() {
        vec!["no acknowledged Encrypt or GenerateDataKey to decrypt again".to_string()]
    } else {
        vec![]
    };
    verdict(NAME, violations, unknowns)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::Verdict;
    use super::*;

    fn history() -> HistoryBuilder {
        let mut b = HistoryBuilder::new();
        b.ok(1, encrypt("e1", "k1", "h1"), 0, 10, ciphertext("h1"));
        b.ok(2, generate("g1", "k2"), 0, 10, ciphertext("hg"));
        b.fail(3, encrypt("e2", "k1", "h2"), 0, 10, "DisabledException");
        b
    }

    fn state(e1: Redecrypt, g1: Redecrypt) -> FinalState {
        FinalState {
            nodes: vec![node(1, &[("k1", "Enabled", "a"), ("k2", "Disabled", "b")])],
            redecrypt: [("e1".to_string(), e1), ("g1".to_string(), g1)]
                .into_iter()
                .collect(),
            ..FinalState::default()
        }
    }

    fn pt(sha: &str) -> Redecrypt {
        Redecrypt::Plaintext {
            sha256: sha.to_string(),
        }
    }

    fn refused(code: &str, state: &str) -> Redecrypt {
        Redecrypt::Refused {
            code: code.to_string(),
            key_state: state.to_string(),
        }
    }

    #[test]
    fn matching_plaintexts_and_explained_refusals_pass() {
        let f = state(pt("h1"), refused("DisabledException", "Disabled"));
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Pass);
    }

    #[test]
    fn wrong_plaintext_is_a_violation() {
        let f = state(pt("other"), pt("hg"));
        let r = check(&history().build(), &f);
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details[0].contains("e1"));
    }

    #[test]
    fn missing_redecryption_is_a_violation() {
        let mut f = state(pt("h1"), pt("hg"));
        f.redecrypt.remove("g1");
        let r = check(&history().build(), &f);
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details[0].contains("g1"));
    }

    #[test]
    fn unexplained_refusals_are_violations() {
        for (code, key_state) in [
            ("DisabledException", "Enabled"),
            ("NotFoundException", ""),
            ("KMSInvalidStateException", "Disabled"),
        ] {
            let f = state(refused(code, key_state), pt("hg"));
            assert_eq!(
                check(&history().build(), &f).verdict,
                Verdict::Violation,
                "{code} {key_state}"
            );
        }
        // Explained by the state it names, but the nodes hold the key otherwise.
        let f = state(refused("DisabledException", "Disabled"), pt("hg"));
        assert_eq!(check(&history().build(), &f).verdict, Verdict::Violation);
    }

    #[test]
    fn decrypt_during_the_run_must_match_its_encrypt() {
        let f = state(pt("h1"), pt("hg"));
        let mut b = history();
        b.ok(4, decrypt("d1", "e1", "k1"), 20, 30, plaintext("h1"));
        b.ok(4, decrypt("d2", "g1", "k2"), 40, 50, plaintext("hg"));
        b.fail(4, decrypt("d3", "e1", "k1"), 60, 70, "DisabledException");
        assert_eq!(check(&b.build(), &f).verdict, Verdict::Pass);
        b.ok(4, decrypt("d4", "e1", "k1"), 80, 90, plaintext("hg"));
        let r = check(&b.build(), &f);
        assert_eq!(r.verdict, Verdict::Violation);
        assert!(r.details[0].contains("d4"));
    }

    #[test]
    fn access_denied_after_the_run_needs_a_deny_policy_that_may_be_last() {
        let denied = || state(refused("AccessDeniedException", "Enabled"), pt("hg"));
        // No policy was ever put: the default allows, the refusal is unexplained.
        assert_eq!(
            check(&history().build(), &denied()).verdict,
            Verdict::Violation
        );
        // The last put denies.
        let mut b = history();
        b.ok(5, put_policy("p1", "k1", false), 20, 30, done());
        b.ok(5, put_policy("p2", "k1", true), 40, 50, done());
        assert_eq!(check(&b.build(), &denied()).verdict, Verdict::Pass);
        // An open put began after the deny put completed: it is in force.
        b.ok(6, put_policy("p3", "k1", false), 60, 70, done());
        assert_eq!(check(&b.build(), &denied()).verdict, Verdict::Violation);
        // A deny put whose outcome is unknown may take effect after it.
        b.info(7, put_policy("p4", "k1", true), 20, 25);
        assert_eq!(check(&b.build(), &denied()).verdict, Verdict::Pass);
        // A deny put on another key explains nothing.
        let mut b = history();
        b.ok(5, put_policy("p5", "k2", true), 20, 30, done());
        assert_eq!(check(&b.build(), &denied()).verdict, Verdict::Violation);
    }

    #[test]
    fn nothing_to_decrypt_is_unknown() {
        let mut b = HistoryBuilder::new();
        b.fail(1, encrypt("e1", "k1", "h"), 0, 10, "DisabledException");
        let r = check(&b.build(), &FinalState::default());
        assert_eq!(r.verdict, Verdict::Unknown);
    }
}
