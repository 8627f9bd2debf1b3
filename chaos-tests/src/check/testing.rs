//! A small builder of synthetic histories and final states for the checkers' tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::history::{
    AuditEntry, Event, EventKind, FinalAudit, FinalKey, History, NodeFinal, Op, Phase, Value,
};

static NEXT_TAG: AtomicU64 = AtomicU64::new(1);

/// A fresh tag, unique in the test binary.
pub(crate) fn tag() -> String {
    format!("t{}", NEXT_TAG.fetch_add(1, Ordering::Relaxed))
}

/// Builds a history from whole operations given with their invoke and completion
/// times; `build` orders the events by time (ties keep the order they were added in).
#[derive(Default)]
pub(crate) struct HistoryBuilder {
    events: Vec<(u64, EventKind)>,
}

impl HistoryBuilder {
    pub(crate) fn new() -> HistoryBuilder {
        HistoryBuilder::default()
    }

    fn invoke(&mut self, process: u64, op: Op, at: u64) {
        self.events.push((
            at,
            EventKind::Invoke {
                process,
                node: 0,
                op,
            },
        ));
    }

    /// An operation that completed `ok` with `value`.
    pub(crate) fn ok(&mut self, process: u64, op: Op, start: u64, end: u64, value: Value) {
        self.invoke(process, op, start);
        self.events.push((end, EventKind::Ok { process, value }));
    }

    /// An operation that failed with `code`.
    pub(crate) fn fail(&mut self, process: u64, op: Op, start: u64, end: u64, code: &str) {
        self.invoke(process, op, start);
        self.events.push((
            end,
            EventKind::Fail {
                process,
                code: code.to_string(),
                message: format!("{code}: refused"),
            },
        ));
    }

    /// An operation whose outcome is unknown (`info` at `end`).
    pub(crate) fn info(&mut self, process: u64, op: Op, start: u64, end: u64) {
        self.invoke(process, op, start);
        self.events.push((
            end,
            EventKind::Info {
                process,
                error: "timeout".to_string(),
            },
        ));
    }

    /// A fault window event.
    pub(crate) fn nemesis(&mut self, at: u64, phase: Phase, fault: &str) {
        self.events.push((
            at,
            EventKind::Nemesis {
                phase,
                fault: fault.to_string(),
                nodes: vec![1],
                detail: String::new(),
            },
        ));
    }

    pub(crate) fn build(&self) -> History {
        let mut events = self.events.clone();
        events.sort_by_key(|(t, _)| *t);
        History {
            events: events
                .into_iter()
                .enumerate()
                .map(|(i, (time_ns, kind))| Event {
                    index: i as u64,
                    time_ns,
                    kind,
                })
                .collect(),
        }
    }
}

pub(crate) fn create_tagged(tag: &str, description: &str) -> Op {
    Op::CreateKey {
        tag: tag.to_string(),
        description: description.to_string(),
    }
}

pub(crate) fn create(description: &str) -> Op {
    create_tagged(&tag(), description)
}

pub(crate) fn describe(key: &str) -> Op {
    Op::DescribeKey {
        tag: tag(),
        key_id: key.to_string(),
    }
}

pub(crate) fn enable(key: &str) -> Op {
    Op::EnableKey {
        tag: tag(),
        key_id: key.to_string(),
    }
}

pub(crate) fn disable(key: &str) -> Op {
    Op::DisableKey {
        tag: tag(),
        key_id: key.to_string(),
    }
}

pub(crate) fn update_description(key: &str, description: &str) -> Op {
    Op::UpdateDescription {
        tag: description.to_string(),
        key_id: key.to_string(),
    }
}

pub(crate) fn schedule(key: &str) -> Op {
    Op::ScheduleDeletion {
        tag: tag(),
        key_id: key.to_string(),
    }
}

pub(crate) fn cancel(key: &str) -> Op {
    Op::CancelDeletion {
        tag: tag(),
        key_id: key.to_string(),
    }
}

pub(crate) fn encrypt(tag: &str, key: &str, sha: &str) -> Op {
    Op::Encrypt {
        tag: tag.to_string(),
        key_id: key.to_string(),
        plaintext_sha256: sha.to_string(),
    }
}

pub(crate) fn generate(tag: &str, key: &str) -> Op {
    Op::GenerateDataKey {
        tag: tag.to_string(),
        key_id: key.to_string(),
    }
}

pub(crate) fn decrypt(tag: &str, of: &str, key: &str) -> Op {
    Op::Decrypt {
        tag: tag.to_string(),
        of: of.to_string(),
        key_id: key.to_string(),
    }
}

pub(crate) fn list() -> Op {
    Op::ListKeys { tag: tag() }
}

/// A PutKeyPolicy tagged `tag`: the deny-crypto variant when `deny_crypto`.
pub(crate) fn put_policy(tag: &str, key: &str, deny_crypto: bool) -> Op {
    Op::PutKeyPolicy {
        tag: tag.to_string(),
        key_id: key.to_string(),
        deny_crypto,
    }
}

pub(crate) fn get_policy(key: &str) -> Op {
    Op::GetKeyPolicy {
        tag: tag(),
        key_id: key.to_string(),
    }
}

/// What a GetKeyPolicy saw: the policy the put tagged `tag` wrote (`None`: the default).
pub(crate) fn policy(tag: Option<&str>, deny_crypto: bool) -> Value {
    Value::Policy {
        tag: tag.map(str::to_string),
        deny_crypto,
    }
}

pub(crate) fn created(key: &str) -> Value {
    Value::Created {
        key_id: key.to_string(),
    }
}

pub(crate) fn key(state: &str, description: &str) -> Value {
    Value::Key {
        state: state.to_string(),
        description: description.to_string(),
    }
}

pub(crate) fn done() -> Value {
    Value::Done
}

pub(crate) fn ciphertext(sha: &str) -> Value {
    Value::Ciphertext {
        ciphertext: "Y3Q=".to_string(),
        plaintext_sha256: sha.to_string(),
    }
}

pub(crate) fn plaintext(sha: &str) -> Value {
    Value::Plaintext {
        plaintext_sha256: sha.to_string(),
    }
}

pub(crate) fn count(n: u64) -> Value {
    Value::Count { count: n }
}

/// A node that answered, led by node 1, holding `keys` as (id, state, description).
pub(crate) fn node(id: u64, keys: &[(&str, &str, &str)]) -> NodeFinal {
    NodeFinal {
        id,
        error: None,
        leader: 1,
        applied_index: 100,
        keys: keys
            .iter()
            .map(|(k, state, description)| {
                (
                    k.to_string(),
                    FinalKey {
                        state: state.to_string(),
                        description: description.to_string(),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        audit: FinalAudit {
            chain_ok: true,
            first_bad_sequence: 0,
            head_sequence: 0,
            head_hash: "genesis".to_string(),
            events: Vec::new(),
        },
    }
}

/// An audit log of `events` (numbered from 1), verified, with a head derived from them.
pub(crate) fn audit_log(events: &[AuditEntry]) -> FinalAudit {
    let events: Vec<AuditEntry> = events
        .iter()
        .enumerate()
        .map(|(i, e)| AuditEntry {
            sequence: i as u64 + 1,
            ..e.clone()
        })
        .collect();
    FinalAudit {
        chain_ok: true,
        first_bad_sequence: 0,
        head_sequence: events.len() as u64,
        head_hash: format!("hash-{}", events.len()),
        events,
    }
}

/// An audit event: a success when `error_code` is empty.
pub(crate) fn event(name: &str, key: &str, error_code: &str, tag: Option<&str>) -> AuditEntry {
    AuditEntry {
        sequence: 0,
        event_name: name.to_string(),
        key_id: key.to_string(),
        error_code: error_code.to_string(),
        tag: tag.map(str::to_string),
    }
}
