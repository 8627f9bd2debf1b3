//! The key layout of the state tree. Every record lives in one sled tree so that one
//! atomic batch can change any of them together.

use keyraft_types::{AccountId, AliasName, KeyId, NodeId};

pub(crate) const LAST_APPLIED: &[u8] = b"meta/last_applied";
pub(crate) const MEMBERSHIP: &[u8] = b"meta/membership";
pub(crate) const META_PREFIX: &[u8] = b"meta/";
pub(crate) const CLUSTER: &[u8] = b"cluster";
pub(crate) const AUDIT_HEAD: &[u8] = b"audit_head";
/// The newest event a full export has written out (`u64`).
pub(crate) const AUDIT_EXPORTED: &[u8] = b"audit_exported";
/// The checkpoint that replaces pruned events ([`crate::AuditCheckpoint`]).
pub(crate) const AUDIT_CHECKPOINT: &[u8] = b"audit_checkpoint";
/// The layout version of the state tree (`u32`; absent = 1, see
/// `StateMachine::upgrade`).
pub(crate) const FORMAT: &[u8] = b"format";
pub(crate) const KEY_PREFIX: &[u8] = b"key/";
/// Audit events, in chunks: [`audit`]`(s)` holds consecutive events from sequence `s` on.
pub(crate) const AUDIT_PREFIX: &[u8] = b"audit/";
/// The first key after every audit event's (`/` + 1 = `0`).
pub(crate) const AUDIT_PREFIX_END: &[u8] = b"audit0";
pub(crate) const REQUEST_TIME_PREFIX: &[u8] = b"reqt/";
pub(crate) const NODE_PREFIX: &[u8] = b"node/";

pub(crate) fn key(id: &KeyId) -> Vec<u8> {
    [KEY_PREFIX, id.as_str().as_bytes()].concat()
}

pub(crate) fn key_count(account: &AccountId) -> Vec<u8> {
    format!("acct/{account}/keycount").into_bytes()
}

pub(crate) fn access_key(id: &str) -> Vec<u8> {
    format!("akey/{id}").into_bytes()
}

pub(crate) const PRINCIPAL_PREFIX: &[u8] = b"principal/";

/// A principal, by ARN (so an account's principals sort together).
pub(crate) fn principal(arn: &str) -> Vec<u8> {
    [PRINCIPAL_PREFIX, arn.as_bytes()].concat()
}

pub(crate) const GRANT_PREFIX: &[u8] = b"grant/";

/// A grant, by id.
pub(crate) fn grant(id: &str) -> Vec<u8> {
    [GRANT_PREFIX, id.as_bytes()].concat()
}

pub(crate) fn node(id: NodeId) -> Vec<u8> {
    [NODE_PREFIX, &id.to_be_bytes()[..]].concat()
}

pub(crate) fn join(id: NodeId) -> Vec<u8> {
    [b"join/".as_slice(), &id.to_be_bytes()[..]].concat()
}

pub(crate) fn request(id: &str) -> Vec<u8> {
    format!("req/{id}").into_bytes()
}

/// Index of remembered request ids, oldest first.
pub(crate) fn request_time(time_ms: u64, id: &str) -> Vec<u8> {
    [
        REQUEST_TIME_PREFIX,
        &time_ms.to_be_bytes()[..],
        id.as_bytes(),
    ]
    .concat()
}

/// The time and request id of a [`request_time`] key; `None` if it is malformed.
pub(crate) fn parse_request_time(k: &[u8]) -> Option<(u64, String)> {
    let at = REQUEST_TIME_PREFIX.len();
    let time: [u8; 8] = k.get(at..at + 8)?.try_into().ok()?;
    let id = std::str::from_utf8(k.get(at + 8..)?).ok()?;
    Some((u64::from_be_bytes(time), id.to_string()))
}

/// The key of the audit chunk whose first event has sequence `seq`.
pub(crate) fn audit(seq: u64) -> Vec<u8> {
    [AUDIT_PREFIX, &seq.to_be_bytes()[..]].concat()
}

/// The first sequence of an [`audit`] key; `None` if it is malformed.
pub(crate) fn parse_audit(k: &[u8]) -> Option<u64> {
    let seq: [u8; 8] = k.strip_prefix(AUDIT_PREFIX)?.try_into().ok()?;
    Some(u64::from_be_bytes(seq))
}

pub(crate) fn alias(account: &AccountId, name: &AliasName) -> Vec<u8> {
    format!("alias/{account}/{name}").into_bytes()
}

pub(crate) fn alias_prefix(account: &AccountId) -> Vec<u8> {
    format!("alias/{account}/").into_bytes()
}

pub(crate) const DELETION_PREFIX: &[u8] = b"deletion/";

/// Index of scheduled deletions, in due order.
pub(crate) fn deletion(due_ms: u64, key: &KeyId) -> Vec<u8> {
    [
        DELETION_PREFIX,
        &due_ms.to_be_bytes()[..],
        key.as_str().as_bytes(),
    ]
    .concat()
}

pub(crate) fn alias_count(account: &AccountId) -> Vec<u8> {
    format!("acct/{account}/aliascount").into_bytes()
}

pub(crate) fn quota(account: &AccountId) -> Vec<u8> {
    format!("quota/{account}").into_bytes()
}

pub(crate) const ROTATION_PREFIX: &[u8] = b"rotation/";

/// Index of automatic rotations, in due order.
pub(crate) fn rotation(due_ms: u64, key: &KeyId) -> Vec<u8> {
    [
        ROTATION_PREFIX,
        &due_ms.to_be_bytes()[..],
        key.as_str().as_bytes(),
    ]
    .concat()
}

pub(crate) fn import(token: &str) -> Vec<u8> {
    format!("import/{token}").into_bytes()
}

pub(crate) const EXPIRY_PREFIX: &[u8] = b"expiry/";

/// Index of imported material expiries, in due order.
pub(crate) fn expiry(due_ms: u64, key: &KeyId) -> Vec<u8> {
    [
        EXPIRY_PREFIX,
        &due_ms.to_be_bytes()[..],
        key.as_str().as_bytes(),
    ]
    .concat()
}

/// One entry of a due-time index (`prefix` + due time as 8 big-endian bytes + key id):
/// the raw index key, the due time and the key.
pub(crate) struct DueEntry {
    pub(crate) index_key: Vec<u8>,
    pub(crate) due_ms: u64,
    pub(crate) key_id: KeyId,
}

/// Parses one key of the due-time index under `prefix`; `None` if it is malformed.
pub(crate) fn parse_due(prefix: &[u8], k: &[u8]) -> Option<DueEntry> {
    let at = prefix.len();
    let time: [u8; 8] = k.get(at..at + 8)?.try_into().ok()?;
    let key_id = KeyId::parse(std::str::from_utf8(k.get(at + 8..)?).ok()?).ok()?;
    Some(DueEntry {
        index_key: k.to_vec(),
        due_ms: u64::from_be_bytes(time),
        key_id,
    })
}
