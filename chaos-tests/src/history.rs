//! # The history of a run
//!
//! A run records every operation twice, the way Jepsen does: an `invoke` when a client
//! process starts it and a completion when it ends, which is `ok` (it happened), `fail`
//! (it definitely did not happen: the service refused it with a definite error) or
//! `info` (the outcome is unknown: a timeout or a lost connection; it may or may not
//! have happened, and may still happen later). Fault windows are in the same stream as
//! `nemesis` events. The stream is written as JSON Lines (`history.jsonl`), one
//! [`Event`] a line, in the order the harness observed them.
//!
//! A client process runs one operation at a time. After an `info` it is retired and a
//! new process id takes its place, because its earlier operation may still be in
//! flight: that is what lets the checkers treat each process as sequential.
//!
//! After the run the harness heals every fault, waits for the cluster to converge and
//! reads what every node holds into a [`FinalState`] (`final.json`). The checkers in
//! [`crate::check`] are pure functions of a history and a final state.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of `history.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history, from 0.
    pub index: u64,
    /// Nanoseconds since the run started, from a monotonic clock.
    pub time_ns: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What an [`Event`] records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A client process started an operation.
    Invoke {
        /// The client process (sequential: at most one operation in flight).
        process: u64,
        /// The node the call went to first (0: the SDK chose).
        node: u64,
        /// The operation.
        op: Op,
    },
    /// The operation happened, with this result.
    Ok {
        /// The client process.
        process: u64,
        /// What the service answered.
        value: Value,
    },
    /// The operation definitely did not happen.
    Fail {
        /// The client process.
        process: u64,
        /// The AWS-style error code (e.g. `DisabledException`).
        code: String,
        /// The error message.
        message: String,
    },
    /// The outcome is unknown; the process is retired afterwards.
    Info {
        /// The client process.
        process: u64,
        /// Why the outcome is unknown.
        error: String,
    },
    /// A fault started or stopped.
    Nemesis {
        /// Start or stop.
        phase: Phase,
        /// The fault's name (e.g. `kill`, `partition`, `failpoint`).
        fault: String,
        /// The nodes it acts on.
        nodes: Vec<u64>,
        /// Details a person reads (the partition's shape, the fail point's name, ...).
        detail: String,
    },
}

/// Whether a fault window opens or closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The fault is now in effect.
    Start,
    /// The fault is healed.
    Stop,
}

/// An operation a client process invokes.
///
/// Every operation carries a `tag` unique in the run. Where the request can carry it,
/// it is placed where the service's audit record shows it (the request id of CreateKey
/// and PutKeyPolicy, the encryption context of Encrypt and GenerateDataKey, the
/// description of UpdateKeyDescription); the other operations' events are counted per
/// event name and key (see `check::audit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// CreateKey (symmetric, in the run's account).
    CreateKey {
        /// Unique tag (also the request id).
        tag: String,
        /// The description the key is created with.
        description: String,
    },
    /// DescribeKey: a read of the key's state and description.
    DescribeKey {
        /// Unique tag.
        tag: String,
        /// The key.
        key_id: String,
    },
    /// EnableKey.
    EnableKey {
        /// Unique tag.
        tag: String,
        /// The key.
        key_id: String,
    },
    /// DisableKey.
    DisableKey {
        /// Unique tag.
        tag: String,
        /// The key.
        key_id: String,
    },
    /// UpdateKeyDescription with a description unique in the run.
    UpdateDescription {
        /// Unique tag (also the new description).
        tag: String,
        /// The key.
        key_id: String,
    },
    /// ScheduleKeyDeletion (7 days).
    ScheduleDeletion {
        /// Unique tag.
        tag: String,
        /// The key.
        key_id: String,
    },
    /// CancelKeyDeletion (the key returns Disabled).
    CancelDeletion {
        /// Unique tag.
        tag: String,
        /// The key.
        key_id: String,
    },
    /// Encrypt a plaintext under `{"chaos-op": tag}`.
    Encrypt {
        /// Unique tag (also the encryption context's `chaos-op` value).
        tag: String,
        /// The key.
        key_id: String,
        /// SHA-256 of the plaintext, hex.
        plaintext_sha256: String,
    },
    /// Decrypt a ciphertext an earlier `Encrypt` returned (under that Encrypt's context).
    Decrypt {
        /// Unique tag of this call.
        tag: String,
        /// The tag of the `Encrypt` whose ciphertext this decrypts.
        of: String,
        /// The key the ciphertext was made under.
        key_id: String,
    },
    /// GenerateDataKey (AES-256) under `{"chaos-op": tag}`.
    GenerateDataKey {
        /// Unique tag (also the encryption context's `chaos-op` value).
        tag: String,
        /// The key.
        key_id: String,
    },
    /// ListKeys through every page: a read of how many keys the account has.
    ListKeys {
        /// Unique tag.
        tag: String,
    },
    /// PutKeyPolicy: replaces the key's policy with a document whose top-level `Id` is
    /// the tag. Both variants let the account administer the key; the `deny_crypto` one
    /// also denies everyone `kms:Encrypt`, `kms:Decrypt` and `kms:GenerateDataKey`.
    PutKeyPolicy {
        /// Unique tag (also the request id and the document's `Id`).
        tag: String,
        /// The key.
        key_id: String,
        /// Whether the new policy denies cryptography on the key.
        #[serde(default)]
        deny_crypto: bool,
    },
    /// GetKeyPolicy: a read of which policy is in force.
    GetKeyPolicy {
        /// Unique tag.
        tag: String,
        /// The key.
        key_id: String,
    },
}

impl Op {
    /// The operation's unique tag.
    pub fn tag(&self) -> &str {
        match self {
            Op::CreateKey { tag, .. }
            | Op::DescribeKey { tag, .. }
            | Op::EnableKey { tag, .. }
            | Op::DisableKey { tag, .. }
            | Op::UpdateDescription { tag, .. }
            | Op::ScheduleDeletion { tag, .. }
            | Op::CancelDeletion { tag, .. }
            | Op::Encrypt { tag, .. }
            | Op::Decrypt { tag, .. }
            | Op::GenerateDataKey { tag, .. }
            | Op::PutKeyPolicy { tag, .. }
            | Op::GetKeyPolicy { tag, .. }
            | Op::ListKeys { tag } => tag,
        }
    }

    /// The key the operation acts on (none for CreateKey, whose key is in its result,
    /// and ListKeys).
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Op::CreateKey { .. } | Op::ListKeys { .. } => None,
            Op::DescribeKey { key_id, .. }
            | Op::EnableKey { key_id, .. }
            | Op::DisableKey { key_id, .. }
            | Op::UpdateDescription { key_id, .. }
            | Op::ScheduleDeletion { key_id, .. }
            | Op::CancelDeletion { key_id, .. }
            | Op::Encrypt { key_id, .. }
            | Op::Decrypt { key_id, .. }
            | Op::GenerateDataKey { key_id, .. }
            | Op::PutKeyPolicy { key_id, .. }
            | Op::GetKeyPolicy { key_id, .. } => Some(key_id),
        }
    }

    /// The operation's name as the audit log spells it (`CreateKey`, `Encrypt`, ...).
    pub fn event_name(&self) -> &'static str {
        match self {
            Op::CreateKey { .. } => "CreateKey",
            Op::DescribeKey { .. } => "DescribeKey",
            Op::EnableKey { .. } => "EnableKey",
            Op::DisableKey { .. } => "DisableKey",
            Op::UpdateDescription { .. } => "UpdateKeyDescription",
            Op::ScheduleDeletion { .. } => "ScheduleKeyDeletion",
            Op::CancelDeletion { .. } => "CancelKeyDeletion",
            Op::Encrypt { .. } => "Encrypt",
            Op::Decrypt { .. } => "Decrypt",
            Op::GenerateDataKey { .. } => "GenerateDataKey",
            Op::ListKeys { .. } => "ListKeys",
            Op::PutKeyPolicy { .. } => "PutKeyPolicy",
            Op::GetKeyPolicy { .. } => "GetKeyPolicy",
        }
    }
}

/// The result of an operation that completed `ok`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "v", rename_all = "snake_case")]
pub enum Value {
    /// Nothing beyond success (Enable, Disable, UpdateDescription, CancelDeletion, ...).
    Done,
    /// CreateKey: the new key.
    Created {
        /// The new key's id.
        key_id: String,
    },
    /// DescribeKey: what the key looked like.
    Key {
        /// The key state as AWS spells it: `Enabled`, `Disabled`, `PendingDeletion`, ...
        state: String,
        /// The description.
        description: String,
    },
    /// Encrypt or GenerateDataKey: the ciphertext, base64.
    Ciphertext {
        /// The ciphertext blob, base64.
        ciphertext: String,
        /// SHA-256 of the plaintext (for GenerateDataKey: of the returned data key), hex.
        plaintext_sha256: String,
    },
    /// Decrypt: what came back.
    Plaintext {
        /// SHA-256 of the plaintext, hex.
        plaintext_sha256: String,
    },
    /// ListKeys: how many keys the account had.
    Count {
        /// The number of keys listed.
        count: u64,
    },
    /// GetKeyPolicy: which policy was in force.
    Policy {
        /// The tag of the PutKeyPolicy that wrote it (the document's `Id`); `None` for
        /// the default policy CreateKey installs. A document the workload could not read
        /// is recorded with a tag no operation has, which the checkers report.
        #[serde(default)]
        tag: Option<String>,
        /// Whether it denies cryptography on the key.
        #[serde(default)]
        deny_crypto: bool,
    },
}

/// A whole history in memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The events in the order they were recorded.
    pub events: Vec<Event>,
}

/// What went wrong reading or writing a history file.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A line is not an event.
    #[error("{path}:{line}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The 1-based line number.
        line: usize,
        /// The error.
        source: serde_json::Error,
    },
}

impl History {
    /// Reads `history.jsonl`.
    pub fn read(path: &Path) -> Result<History, HistoryError> {
        let io = |source| HistoryError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut events = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io)?;
            if line.trim().is_empty() {
                continue;
            }
            let event = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                path: path.display().to_string(),
                line: n + 1,
                source,
            })?;
            events.push(event);
        }
        Ok(History { events })
    }

    /// Writes the history as JSON Lines (and fsyncs it).
    pub fn write(&self, path: &Path) -> Result<(), HistoryError> {
        let io = |source| HistoryError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut out = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
        for e in &self.events {
            let line = serde_json::to_string(e).map_err(|e| io(std::io::Error::other(e)))?;
            writeln!(out, "{line}").map_err(io)?;
        }
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)
    }

    /// Every operation paired with its completion (`None` while still open at the end
    /// of the history, which the checkers treat like `info`).
    pub fn operations(&self) -> Vec<Operation> {
        let mut open: BTreeMap<u64, usize> = BTreeMap::new();
        let mut ops: Vec<Operation> = Vec::new();
        for e in &self.events {
            match &e.kind {
                EventKind::Invoke { process, node, op } => {
                    open.insert(*process, ops.len());
                    ops.push(Operation {
                        process: *process,
                        node: *node,
                        op: op.clone(),
                        invoke_ns: e.time_ns,
                        complete_ns: None,
                        outcome: Outcome::Unknown {
                            error: "never completed".into(),
                        },
                    });
                }
                EventKind::Ok { process, value } => {
                    if let Some(i) = open.remove(process) {
                        ops[i].complete_ns = Some(e.time_ns);
                        ops[i].outcome = Outcome::Ok(value.clone());
                    }
                }
                EventKind::Fail {
                    process,
                    code,
                    message,
                } => {
                    if let Some(i) = open.remove(process) {
                        ops[i].complete_ns = Some(e.time_ns);
                        ops[i].outcome = Outcome::Fail {
                            code: code.clone(),
                            message: message.clone(),
                        };
                    }
                }
                EventKind::Info { process, error } => {
                    if let Some(i) = open.remove(process) {
                        ops[i].complete_ns = Some(e.time_ns);
                        ops[i].outcome = Outcome::Unknown {
                            error: error.clone(),
                        };
                    }
                }
                EventKind::Nemesis { .. } => {}
            }
        }
        ops
    }
}

/// An invocation and its completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    /// The client process.
    pub process: u64,
    /// The node the call went to first (0: the SDK chose).
    pub node: u64,
    /// The operation.
    pub op: Op,
    /// When it was invoked (ns since the run started).
    pub invoke_ns: u64,
    /// When it completed; `None` only for an operation still open at the end of the
    /// history. Set for `info` too, where it bounds nothing (the operation may take
    /// effect any time after `invoke_ns`).
    pub complete_ns: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It happened.
    Ok(Value),
    /// It definitely did not happen.
    Fail {
        /// The error code.
        code: String,
        /// The message.
        message: String,
    },
    /// It may or may not have happened.
    Unknown {
        /// Why the outcome is unknown.
        error: String,
    },
}

/// What every node holds after the run, healed and converged (`final.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    /// One entry per node that was asked (a node that did not answer has `error` set).
    pub nodes: Vec<NodeFinal>,
    /// The per-account key quota that was in force during the run (0: unlimited).
    pub key_quota: u64,
    /// How many keys existed in the run's account before the workload started.
    pub keys_before: u64,
    /// The result of re-decrypting every acknowledged ciphertext after the run, by the
    /// tag of the operation that produced it.
    pub redecrypt: BTreeMap<String, Redecrypt>,
    /// Whether a write after healing succeeded (and how long it took to).
    pub write_after_heal: Option<WriteAfterHeal>,
}

/// One node's view after the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFinal {
    /// The node id.
    pub id: u64,
    /// Why the node could not be read, if it could not.
    pub error: Option<String>,
    /// The leader this node knows (0: none).
    pub leader: u64,
    /// The last log index this node has applied.
    pub applied_index: u64,
    /// Every key of the run's account, by key id.
    pub keys: BTreeMap<String, FinalKey>,
    /// The node's audit log.
    pub audit: FinalAudit,
}

/// A key as a node holds it after the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalKey {
    /// The key state as AWS spells it.
    pub state: String,
    /// The description.
    pub description: String,
}

/// A node's audit log after the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalAudit {
    /// Whether the node's own chain verification passed.
    pub chain_ok: bool,
    /// The first event that did not verify (0 if none).
    pub first_bad_sequence: u64,
    /// The head of the chain.
    pub head_sequence: u64,
    /// The hash of the head event.
    pub head_hash: String,
    /// Every event, oldest first.
    pub events: Vec<AuditEntry>,
}

/// The parts of one audit event the checkers use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The event's position in the chain.
    pub sequence: u64,
    /// `CreateKey`, `Encrypt`, ...
    pub event_name: String,
    /// The key it concerns (empty if none).
    pub key_id: String,
    /// The error code, if the request was refused (empty on success).
    pub error_code: String,
    /// The workload's tag, where the request carried one (a request id of the run, as
    /// CreateKey and PutKeyPolicy carry; the `chaos-op` context value; or the
    /// description of UpdateKeyDescription).
    pub tag: Option<String>,
}

/// The outcome of decrypting one acknowledged ciphertext after the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Redecrypt {
    /// It decrypted to this plaintext hash.
    Plaintext {
        /// SHA-256 of the plaintext, hex.
        sha256: String,
    },
    /// It was refused with this code (e.g. `DisabledException`, or `NotFoundException`
    /// when the key was deleted).
    Refused {
        /// The error code.
        code: String,
        /// The key's state when it was tried.
        key_state: String,
    },
}

/// A write made after every fault was healed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteAfterHeal {
    /// Whether it succeeded.
    pub ok: bool,
    /// How long after healing it succeeded (or the error).
    pub millis: u64,
    /// The error, if it failed.
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_without_policy_operations_still_parse() {
        let old = [
            r#"{"index":0,"time_ns":5,"type":"invoke","process":1,"node":0,"op":{"f":"encrypt","tag":"r-1","key_id":"k1","plaintext_sha256":"ab"}}"#,
            r#"{"index":1,"time_ns":9,"type":"ok","process":1,"value":{"v":"ciphertext","ciphertext":"Y3Q=","plaintext_sha256":"ab"}}"#,
        ];
        for line in old {
            serde_json::from_str::<Event>(line).unwrap();
        }
    }

    #[test]
    fn policy_operations_and_results_round_trip() {
        let events = [
            EventKind::Invoke {
                process: 1,
                node: 0,
                op: Op::PutKeyPolicy {
                    tag: "r-2".into(),
                    key_id: "k1".into(),
                    deny_crypto: true,
                },
            },
            EventKind::Invoke {
                process: 1,
                node: 0,
                op: Op::GetKeyPolicy {
                    tag: "r-3".into(),
                    key_id: "k1".into(),
                },
            },
            EventKind::Ok {
                process: 1,
                value: Value::Policy {
                    tag: Some("r-2".into()),
                    deny_crypto: true,
                },
            },
            EventKind::Ok {
                process: 1,
                value: Value::Policy {
                    tag: None,
                    deny_crypto: false,
                },
            },
        ];
        for kind in events {
            let e = Event {
                index: 0,
                time_ns: 1,
                kind,
            };
            let text = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e, "{text}");
        }
        let op = Op::PutKeyPolicy {
            tag: "r-2".into(),
            key_id: "k1".into(),
            deny_crypto: false,
        };
        assert_eq!(op.event_name(), "PutKeyPolicy");
        assert_eq!(op.key_id(), Some("k1"));
        assert_eq!(op.tag(), "r-2");
    }
}
