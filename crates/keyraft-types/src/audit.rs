//! Audit events: one per request, allowed or refused, hash-chained by the state machine.
//!
//! A node builds an [`AuditRecord`] from what it knows when it handles a request (who,
//! what, from where, which key at which epoch). The record travels through Raft; apply
//! decides the final outcome (re-checking the key epoch where the record asks for it),
//! assigns the sequence number and links the event into the chain, producing an
//! [`AuditEvent`]. Nothing secret — plaintext, key material, credentials — ever enters
//! either type.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ErrorCode;
use crate::ids::{KeyId, NodeId};
use crate::key::{CryptoOperation, EncryptionContext};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UserIdentity {
    /// `IAMUser`, `AssumedRole`, `Anonymous` (failed authentication) or `Service`.
    pub identity_type: String,
    /// The principal's ARN, if authenticated.
    pub principal_arn: String,
    /// The account, if known.
    pub account_id: String,
    /// The access key id the request was signed with (also for failures).
    pub access_key_id: String,
}

/// The request's parameters, as CloudTrail records them: never data, never secrets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RequestParameters {
    /// The key the request named (or resolved from a ciphertext).
    pub key_id: Option<String>,
    /// The encryption context, which is not secret and is logged in clear.
    pub encryption_context: Option<EncryptionContext>,
    /// The encryption algorithm.
    pub encryption_algorithm: Option<String>,
    /// Key spec for CreateKey or data-key spec for GenerateDataKey.
    pub key_spec: Option<String>,
    /// NumberOfBytes for GenerateDataKey.
    pub number_of_bytes: Option<u32>,
    /// A node id for membership changes.
    pub node_id: Option<NodeId>,
    /// The alias a request named or changed.
    pub alias_name: Option<String>,
    /// The key an alias points (or is pointed) to.
    pub target_key_id: Option<String>,
    /// ReEncrypt's destination key.
    pub destination_key_id: Option<String>,
    /// ReEncrypt's destination encryption context.
    pub destination_encryption_context: Option<EncryptionContext>,
    /// Tag keys a request set or removed (tag values are not logged).
    pub tag_keys: Option<Vec<String>>,
    /// A key description that was set.
    pub description: Option<String>,
    /// Sign/Verify: the signing algorithm.
    pub signing_algorithm: Option<String>,
    /// Sign/Verify: RAW or DIGEST.
    pub message_type: Option<String>,
}

/// Whether an event is a caller's API call or something the service did by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    /// A request by a caller.
    AwsApiCall,
    /// Rotation, deletion and other time-driven work.
    AwsServiceEvent,
}

/// A check that apply must repeat before the event's outcome is final: the key must
/// still be at `epoch`, or, if it moved on, still allow `operation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCheck {
    /// The key used.
    pub key_id: KeyId,
    /// The key's metadata epoch the serving node decided under.
    pub epoch: u64,
    /// What was done with it.
    pub operation: CryptoOperation,
}

/// What a node knows about a request when it hands it to Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unique id of this event (a UUID drawn by the serving node).
    pub event_id: String,
    /// When the serving node received the request, ms since the Unix epoch.
    pub event_time_ms: u64,
    /// The API operation, e.g. `Encrypt`.
    pub event_name: String,
    /// The request id (the caller's idempotency id for mutations).
    pub request_id: String,
    /// API call or service event.
    pub event_type: EventType,
    /// Whether the operation only reads.
    pub read_only: bool,
    /// Who.
    pub user_identity: UserIdentity,
    /// The caller's address as the node saw it.
    pub source_ip: String,
    /// The caller's user agent.
    pub user_agent: String,
    /// The node that served the request.
    pub node_id: NodeId,
    /// Parameters (no data, no secrets).
    pub request_parameters: RequestParameters,
    /// ARNs of the resources involved.
    pub resources: Vec<String>,
    /// An outcome already decided by the node (authentication failure, validation error,
    /// key not usable). `None` means success so far.
    pub error: Option<(ErrorCode, String)>,
    /// Checks apply repeats before confirming success (ReEncrypt has two: the source and
    /// the destination key).
    pub key_checks: Vec<KeyCheck>,
    /// Authorization decisions the serving node made, which apply repeats if a policy
    /// they read has changed since (ReEncrypt has two).
    pub authz_checks: Vec<AuthzCheck>,
}

/// An authorization decision as the serving node made it: apply decides again, on the
/// state as of that point of the log, if the key's or the principal's epoch has moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzCheck {
    /// The caller as the evaluator sees it (the account root ARN for a root user).
    pub caller_arn: String,
    /// The principal whose policies apply (the user, or the role of a session).
    pub holder_arn: String,
    /// That principal's epoch when the node decided.
    pub holder_epoch: u64,
    /// The action, e.g. `kms:Encrypt`.
    pub action: String,
    /// The key whose policy applied, with its epoch then; `None` for an action that
    /// concerns no key.
    pub key: Option<(KeyId, u64)>,
    /// The resource, for actions without a key (`*`, or a principal's ARN).
    pub resource: String,
    /// The encryption context the conditions saw (ReEncrypt's destination differs from
    /// its source).
    pub encryption_context: Option<EncryptionContext>,
}

/// One link of the audit chain, as stored identically on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the chain, from 1.
    pub sequence: u64,
    /// The request as the serving node recorded it.
    pub record: AuditRecord,
    /// The final error code, if the request failed (decided in apply).
    pub error_code: Option<String>,
    /// The final error message, if the request failed.
    pub error_message: Option<String>,
    /// Hex SHA-256 of the previous event (64 zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over `prev_hash`, `sequence` and the canonical encoding of the rest.
    pub hash: String,
}

/// The hash that precedes the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditEvent {
    /// Links `record` with outcome `error` after an event whose hash is `prev_hash`.
    pub fn link(
        sequence: u64,
        prev_hash: &str,
        record: AuditRecord,
        error: Option<(ErrorCode, String)>,
    ) -> AuditEvent {
        let (error_code, error_message) = match error {
            Some((code, msg)) => (Some(code.as_str().to_string()), Some(msg)),
            None => (None, None),
        };
        let mut event = AuditEvent {
            sequence,
            record,
            error_code,
            error_message,
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        event.hash = event.compute_hash();
        event
    }

    /// Recomputes this event's hash from its content; `verify` compares it.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"keyraft-audit-v1\0");
        h.update(self.prev_hash.as_bytes());
        h.update(self.sequence.to_be_bytes());
        // serde_json writes struct fields in declaration order and maps sorted (BTreeMap),
        // so this encoding is canonical for a given event.
        let body = serde_json::to_vec(&(&self.record, &self.error_code, &self.error_message))
            .unwrap_or_default();
        h.update((body.len() as u64).to_be_bytes());
        h.update(&body);
        hex::encode(h.finalize())
    }

    /// Whether the event's hash matches its content and follows `prev_hash`.
    pub fn verify(&self, prev_hash: &str) -> bool {
        self.prev_hash == prev_hash && self.hash == self.compute_hash()
    }

    /// Whether the request succeeded.
    pub fn succeeded(&self) -> bool {
        self.error_code.is_none()
    }
}
