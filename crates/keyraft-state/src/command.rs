//! Commands (what goes into the Raft log) and responses (what apply answers).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use keyraft_types::{
    AccountId, AliasName, AuditRecord, KeyId, KeyMetadata, KmsError, NodeId, Region,
};

/// One Raft log entry's application payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The caller's idempotency id for a mutation ("" for none). A second command with
    /// the same id is answered with the first one's response and changes nothing.
    pub request_id: String,
    /// The proposer's clock, ms since the Unix epoch: the only time apply ever sees.
    pub time_ms: u64,
    /// What to do.
    pub op: Op,
}

/// The operations of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Initialises the region once: its name, the default account, the domain key's
    /// fingerprint, the first administrator credential and the initial members.
    Bootstrap(Box<Bootstrap>),
    /// Creates a key whose first backing version the proposer's HSM generated.
    CreateKey {
        /// The new key's metadata (state Enabled, epoch 1, version 1).
        key: Box<KeyMetadata>,
        /// Version 1's key material, wrapped under the domain key.
        material: Vec<u8>,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Creates the service-managed key of a service for an account, with its alias
    /// (`alias/keyraft/<service>`) and yearly rotation; if the alias exists already, the
    /// existing key is the answer.
    CreateServiceKey {
        /// The key's metadata (KeyManager::Service, rotation on).
        key: Box<KeyMetadata>,
        /// Version 1's key material, wrapped under the domain key.
        material: Vec<u8>,
        /// The service's alias.
        alias: AliasName,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Enables or disables a key.
    SetKeyEnabled {
        /// The key.
        key_id: KeyId,
        /// Enable (true) or disable (false).
        enabled: bool,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Audit records of requests that changed nothing in the state (cryptography,
    /// reads, refusals), many per entry. Each gets its own verdict.
    AuditBatch {
        /// The records, in the order their verdicts are returned.
        records: Vec<AuditRecord>,
    },
    /// Authorises node `node_id` to receive the domain key, wrapped to `public_key`.
    AuthorizeJoin {
        /// The joining node.
        node: NodeRecord,
        /// The public half of the joining HSM's ephemeral key.
        public_key: Vec<u8>,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Creates an alias of `account` pointing to `key_id`.
    CreateAlias {
        /// The caller's account (the alias's and the key's).
        account: AccountId,
        /// The alias.
        name: AliasName,
        /// The key it points to.
        key_id: KeyId,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Points an existing alias to another key.
    UpdateAlias {
        /// The caller's account.
        account: AccountId,
        /// The alias.
        name: AliasName,
        /// The new target.
        key_id: KeyId,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Deletes an alias (never the key).
    DeleteAlias {
        /// The caller's account.
        account: AccountId,
        /// The alias.
        name: AliasName,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Replaces a key's description.
    UpdateKeyDescription {
        /// The key.
        key_id: KeyId,
        /// The new description.
        description: String,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Adds or overwrites tags of a key.
    TagResource {
        /// The key.
        key_id: KeyId,
        /// Tag key -> value.
        tags: BTreeMap<String, String>,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Removes tags of a key (absent ones are ignored, as AWS does).
    UntagResource {
        /// The key.
        key_id: KeyId,
        /// Tag keys to remove.
        tag_keys: Vec<String>,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Schedules a key's destruction after a waiting period (7–30 days, checked by the
    /// node): the key becomes PendingDeletion and refuses cryptography meanwhile.
    ScheduleKeyDeletion {
        /// The key.
        key_id: KeyId,
        /// The waiting period in days.
        pending_window_days: u32,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Cancels a scheduled deletion; the key returns as Disabled.
    CancelKeyDeletion {
        /// The key.
        key_id: KeyId,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Sets an account's quotas (`None` leaves a limit unchanged).
    SetQuota {
        /// The account.
        account: AccountId,
        /// Keys per account in this region.
        keys: Option<u64>,
        /// Aliases per account in this region.
        aliases: Option<u64>,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Stores the parameters of one import (an RSA wrapping key whose private half is
    /// wrapped under the domain key), valid until `expires_ms`, under `token`.
    StoreImportParameters {
        /// The key (origin EXTERNAL).
        key_id: KeyId,
        /// The import token handed to the caller.
        token: String,
        /// The wrapping key's public half (DER SubjectPublicKeyInfo).
        public_key_der: Vec<u8>,
        /// Its private half, wrapped under the domain key.
        wrapped_private_key: Vec<u8>,
        /// When the token expires.
        expires_ms: u64,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Installs imported key material (unwrapped and re-wrapped by the proposer's HSM).
    ImportKeyMaterial {
        /// The key.
        key_id: KeyId,
        /// The import token used.
        token: String,
        /// The material, wrapped under the domain key for the key's current version.
        material: Vec<u8>,
        /// Fingerprint of the material: a re-import must match it.
        fingerprint: String,
        /// When the material expires, if it does.
        valid_to_ms: Option<u64>,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Deletes imported key material; the key returns to PendingImport.
    DeleteImportedKeyMaterial {
        /// The key.
        key_id: KeyId,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Turns automatic rotation on (with a period in days) or off (`None`).
    SetKeyRotation {
        /// The key.
        key_id: KeyId,
        /// The rotation period in days, or `None` to disable.
        period_days: Option<u32>,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Adds a backing version made by the proposer's HSM (RotateKeyOnDemand).
    RotateKey {
        /// The new version.
        rotation: PreparedRotation,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Time-driven work, proposed by the leader with its clock: destroys keys whose
    /// waiting period ended by `Command::time_ms`, and performs the automatic rotations
    /// the leader prepared (apply cannot call an HSM). Apply uses only this command.
    Tick {
        /// The proposing node (named in the service events it causes).
        node_id: NodeId,
        /// New backing versions for keys whose automatic rotation is due.
        rotations: Vec<PreparedRotation>,
    },
    /// Marks a node id as retired after its removal: it can never be used again.
    RetireNode {
        /// The node.
        node_id: NodeId,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
}

impl Op {
    /// The audit record a mutation carries, if any.
    pub fn audit_record(&self) -> Option<&AuditRecord> {
        match self {
            Op::CreateKey { audit, .. }
            | Op::CreateServiceKey { audit, .. }
            | Op::SetKeyEnabled { audit, .. }
            | Op::CreateAlias { audit, .. }
            | Op::UpdateAlias { audit, .. }
            | Op::DeleteAlias { audit, .. }
            | Op::UpdateKeyDescription { audit, .. }
            | Op::TagResource { audit, .. }
            | Op::UntagResource { audit, .. }
            | Op::ScheduleKeyDeletion { audit, .. }
            | Op::CancelKeyDeletion { audit, .. }
            | Op::SetQuota { audit, .. }
            | Op::SetKeyRotation { audit, .. }
            | Op::StoreImportParameters { audit, .. }
            | Op::ImportKeyMaterial { audit, .. }
            | Op::DeleteImportedKeyMaterial { audit, .. }
            | Op::RotateKey { audit, .. }
            | Op::AuthorizeJoin { audit, .. }
            | Op::RetireNode { audit, .. } => Some(audit),
            Op::Bootstrap(_) | Op::AuditBatch { .. } | Op::Tick { .. } => None,
        }
    }
}

/// The one-time initialisation of a region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// The region, fixed for the cluster's life.
    pub region: Region,
    /// The default account, owning the administrator.
    pub account: AccountId,
    /// Fingerprint of the domain key every member must hold.
    pub domain_key_fingerprint: String,
    /// The first administrator credential.
    pub admin: AccessKeyRecord,
    /// The initial members (registered so their ids are never reused).
    pub members: Vec<NodeRecord>,
    /// Key quota per account (0: [`crate::DEFAULT_KEY_QUOTA`]).
    pub key_quota: u64,
}

/// A credential: the secret is stored only wrapped under the domain key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyRecord {
    /// The public access key id.
    pub access_key_id: String,
    /// The principal the key belongs to.
    pub principal_arn: String,
    /// The account of the principal.
    pub account: AccountId,
    /// The secret, wrapped by the HSM (purpose = the access key id).
    pub wrapped_secret: Vec<u8>,
    /// Whether the key may be used.
    pub enabled: bool,
}

/// A node as the cluster registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The node id (never reused).
    pub node_id: NodeId,
    /// Client API URL.
    pub api_endpoint: String,
    /// Node-to-node address.
    pub raft_addr: String,
    /// Removed from the cluster; the id is retired.
    pub retired: bool,
}

/// An authorised join: the member HSMs wrap the domain key only to this public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAuthorization {
    /// The node.
    pub node_id: NodeId,
    /// The ephemeral public key to wrap to.
    pub public_key: Vec<u8>,
}

/// The parameters of one pending import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportParameters {
    /// The key they were issued for.
    pub key_id: KeyId,
    /// The wrapping key's public half (DER SubjectPublicKeyInfo).
    pub public_key_der: Vec<u8>,
    /// Its private half, wrapped under the domain key.
    pub wrapped_private_key: Vec<u8>,
    /// When the token expires.
    pub expires_ms: u64,
}

/// A new backing version, generated and wrapped by the proposer's HSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedRotation {
    /// The key.
    pub key_id: KeyId,
    /// The version the material was made for (wrapped with it as AAD); apply accepts it
    /// only as the key's next version.
    pub version: u32,
    /// The material, wrapped under the domain key.
    pub material: Vec<u8>,
}

/// One rotation of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The version it introduced.
    pub version: u32,
    /// When (ms, the proposer's clock).
    pub date_ms: u64,
    /// On demand (true) or automatic.
    pub on_demand: bool,
}

/// Quotas set for one account; unset limits fall back to the region's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountQuota {
    /// Keys per account.
    pub keys: Option<u64>,
    /// Aliases per account.
    pub aliases: Option<u64>,
}

/// An account's limits in force and what it uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaUsage {
    /// Key limit.
    pub keys_limit: u64,
    /// Keys that count (all states of customer keys).
    pub keys_used: u64,
    /// Alias limit.
    pub aliases_limit: u64,
    /// Aliases in use.
    pub aliases_used: u64,
}

/// An alias: a friendly name of a key, per account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    /// The alias.
    pub name: AliasName,
    /// Its account.
    pub account: AccountId,
    /// The key it points to.
    pub target_key_id: KeyId,
    /// When it was created (ms, proposer's clock).
    pub creation_ms: u64,
    /// When it was last pointed elsewhere.
    pub last_updated_ms: u64,
}

/// Cluster-wide configuration written by `Bootstrap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// The region.
    pub region: Region,
    /// The default account.
    pub account: AccountId,
    /// Fingerprint of the domain key.
    pub domain_key_fingerprint: String,
    /// Key quota per account.
    pub key_quota: u64,
    /// When the region was bootstrapped.
    pub bootstrapped_ms: u64,
}

/// A key with its wrapped backing versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Metadata.
    pub metadata: KeyMetadata,
    /// Backing versions: version -> material wrapped under the domain key.
    pub versions: BTreeMap<u32, Vec<u8>>,
    /// Tags (key -> value).
    pub tags: BTreeMap<String, String>,
    /// Rotations, oldest first.
    pub rotations: Vec<Rotation>,
    /// For imported material: its fingerprint (kept after the material is deleted, so a
    /// re-import must bring the same material).
    pub imported_fingerprint: Option<String>,
}

/// What apply answers for one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing to report.
    Unit,
    /// The key after the change.
    Key(Box<KeyMetadata>),
    /// The alias after the change.
    Alias(Box<AliasRecord>),
    /// Per-record verdicts of an audit batch: `None` = confirmed.
    Audit(Vec<Option<KmsError>>),
    /// The keys a tick destroyed.
    Deleted(Vec<KeyId>),
    /// An account's quotas after a change.
    Quota(QuotaUsage),
}

/// The response to a command: deterministic errors are values.
pub type Response = Result<Reply, KmsError>;

/// One entry handed to [`crate::StateMachine::apply`].
#[derive(Debug, Clone)]
pub struct ApplyEntry {
    /// The command, or `None` for a blank or membership entry.
    pub command: Option<Command>,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.op {
            Op::Bootstrap(_) => "Bootstrap".to_string(),
            Op::CreateKey { key, .. } => format!("CreateKey({})", key.key_id),
            Op::CreateServiceKey { alias, .. } => format!("CreateServiceKey({alias})"),
            Op::SetKeyEnabled {
                key_id, enabled, ..
            } => {
                format!("SetKeyEnabled({key_id}, {enabled})")
            }
            Op::AuditBatch { records } => format!("AuditBatch({})", records.len()),
            Op::CreateAlias { name, key_id, .. } => format!("CreateAlias({name} -> {key_id})"),
            Op::UpdateAlias { name, key_id, .. } => format!("UpdateAlias({name} -> {key_id})"),
            Op::DeleteAlias { name, .. } => format!("DeleteAlias({name})"),
            Op::UpdateKeyDescription { key_id, .. } => format!("UpdateKeyDescription({key_id})"),
            Op::TagResource { key_id, tags, .. } => {
                format!("TagResource({key_id}, {})", tags.len())
            }
            Op::UntagResource {
                key_id, tag_keys, ..
            } => {
                format!("UntagResource({key_id}, {})", tag_keys.len())
            }
            Op::ScheduleKeyDeletion {
                key_id,
                pending_window_days,
                ..
            } => {
                format!("ScheduleKeyDeletion({key_id}, {pending_window_days}d)")
            }
            Op::CancelKeyDeletion { key_id, .. } => format!("CancelKeyDeletion({key_id})"),
            Op::StoreImportParameters { key_id, .. } => format!("StoreImportParameters({key_id})"),
            Op::ImportKeyMaterial { key_id, .. } => format!("ImportKeyMaterial({key_id})"),
            Op::DeleteImportedKeyMaterial { key_id, .. } => {
                format!("DeleteImportedKeyMaterial({key_id})")
            }
            Op::Tick { node_id, rotations } => {
                format!("Tick(node {node_id}, {} rotations)", rotations.len())
            }
            Op::SetKeyRotation {
                key_id,
                period_days,
                ..
            } => {
                format!("SetKeyRotation({key_id}, {period_days:?})")
            }
            Op::RotateKey { rotation, .. } => {
                format!("RotateKey({} v{})", rotation.key_id, rotation.version)
            }
            Op::SetQuota { account, .. } => format!("SetQuota({account})"),
            Op::AuthorizeJoin { node, .. } => format!("AuthorizeJoin({})", node.node_id),
            Op::RetireNode { node_id, .. } => format!("RetireNode({node_id})"),
        };
        write!(
            f,
            "{name} request_id={:?} t={}",
            self.request_id, self.time_ms
        )
    }
}
