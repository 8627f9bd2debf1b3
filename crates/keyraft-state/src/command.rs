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
        /// Version 1's key material (a key pair's private half), wrapped under the
        /// domain key.
        material: Vec<u8>,
        /// A key pair's public half (DER SubjectPublicKeyInfo).
        public_key: Option<Vec<u8>>,
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
    /// Changes a principal, its policies or its access keys.
    Iam {
        /// The change.
        change: IamChange,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Replaces a key's policy (named `default`); bumps the key's epoch so that every
    /// decision made under the old policy is re-checked in apply.
    PutKeyPolicy {
        /// The key.
        key_id: KeyId,
        /// The document, already validated by the proposer.
        policy: String,
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
        /// Grants per key.
        grants_per_key: Option<u64>,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Records that a full export has written every event up to `through` (never moves
    /// back).
    AuditExported {
        /// The newest exported event.
        through: u64,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Deletes the oldest events up to `checkpoint.through`, which must have been
    /// exported and be older than `retention_ms`, and leaves the signed checkpoint in
    /// their place so the rest of the chain still verifies.
    PruneAudit {
        /// The checkpoint, signed by the proposer's HSM.
        checkpoint: AuditCheckpoint,
        /// Only events at least this old (by the command's time) may go.
        retention_ms: u64,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Adds a grant to a key (or, if the same grant exists under the same name, answers
    /// with it, as AWS does).
    CreateGrant {
        /// The grant as the proposer made it (id and token drawn there).
        grant: Box<GrantRecord>,
        /// The request's audit record.
        audit: Box<AuditRecord>,
    },
    /// Removes a grant (RetireGrant or RevokeGrant); bumps the key's epoch so that a
    /// request allowed only by the grant and not yet committed is refused.
    RemoveGrant {
        /// The key.
        key_id: KeyId,
        /// The grant.
        grant_id: String,
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
    /// Commands committed as one entry, applied in order, each with its own request id
    /// and its own response ([`Reply::Group`]). The leader groups the audit batch of its
    /// own requests with the batches other nodes forwarded to it, so the cluster commits
    /// one audit entry at a time however many nodes take requests. A group never holds a
    /// group: apply refuses the inner one.
    Group {
        /// The commands.
        commands: Vec<Command>,
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
            | Op::Iam { audit, .. }
            | Op::CreateGrant { audit, .. }
            | Op::AuditExported { audit, .. }
            | Op::PruneAudit { audit, .. }
            | Op::RemoveGrant { audit, .. }
            | Op::PutKeyPolicy { audit, .. }
            | Op::SetKeyRotation { audit, .. }
            | Op::StoreImportParameters { audit, .. }
            | Op::ImportKeyMaterial { audit, .. }
            | Op::DeleteImportedKeyMaterial { audit, .. }
            | Op::RotateKey { audit, .. }
            | Op::AuthorizeJoin { audit, .. }
            | Op::RetireNode { audit, .. } => Some(audit),
            Op::Bootstrap(_) | Op::AuditBatch { .. } | Op::Tick { .. } | Op::Group { .. } => None,
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
    /// When it was made (ms, the proposer's clock).
    pub created_ms: u64,
    /// Temporary credentials (AssumeRole): when they stop working (ms since the Unix
    /// epoch). `None` for a user's long-term key.
    pub expires_ms: Option<u64>,
    /// Temporary credentials: the role whose policies apply (`principal_arn` is then the
    /// assumed-role session ARN).
    pub role_arn: Option<String>,
}

/// A user or a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrincipalKind {
    /// A user: holds up to two long-term access keys.
    User,
    /// A role: no keys of its own; assumed for temporary credentials.
    Role,
}

impl PrincipalKind {
    /// `user` or `role`, as in the ARN.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Role => "role",
        }
    }
}

/// A principal of an account, with its identity-based (inline) policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    /// `arn:keyraft:iam::<account>:user/<name>` or `.../role/<name>`.
    pub arn: String,
    /// The account.
    pub account: AccountId,
    /// User or role.
    pub kind: PrincipalKind,
    /// The name (unique per account and kind).
    pub name: String,
    /// When it was made (ms, the proposer's clock).
    pub created_ms: u64,
    /// Whether it may authenticate (a disabled user's keys and a disabled role's sessions
    /// are refused).
    pub enabled: bool,
    /// The account's root user: allowed everything its account's key policies delegate
    /// to the account, and never deletable.
    pub root: bool,
    /// Inline policies: name -> document text (validated when put).
    pub policies: BTreeMap<String, String>,
    /// A role's trust policy: who may assume it (document text).
    pub trust_policy: Option<String>,
    /// Its access key ids (users).
    pub access_keys: Vec<String>,
    /// Bumped by every change that can affect an authorization decision.
    pub epoch: u64,
}

impl IamChange {
    /// A short name for logs (no secrets).
    pub fn name(&self) -> String {
        match self {
            IamChange::CreatePrincipal(p) => format!("CreatePrincipal {}", p.arn),
            IamChange::DeletePrincipal { arn } => format!("DeletePrincipal {arn}"),
            IamChange::SetPrincipalEnabled { arn, enabled } => {
                format!("SetPrincipalEnabled {arn} {enabled}")
            }
            IamChange::PutPolicy { arn, name, .. } => format!("PutPolicy {arn} {name}"),
            IamChange::DeletePolicy { arn, name } => format!("DeletePolicy {arn} {name}"),
            IamChange::CreateAccessKey(k) => format!("CreateAccessKey {}", k.access_key_id),
            IamChange::DeleteAccessKey { access_key_id } => {
                format!("DeleteAccessKey {access_key_id}")
            }
            IamChange::SetAccessKeyEnabled {
                access_key_id,
                enabled,
            } => format!("SetAccessKeyEnabled {access_key_id} {enabled}"),
        }
    }
}

/// The identity changes of `Op::Iam`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IamChange {
    /// Creates a user or role (the record as the proposer made it).
    CreatePrincipal(Box<PrincipalRecord>),
    /// Deletes a principal with its access keys and policies (never a root user).
    DeletePrincipal {
        /// The principal.
        arn: String,
    },
    /// Enables or disables a principal.
    SetPrincipalEnabled {
        /// The principal.
        arn: String,
        /// Enable or disable.
        enabled: bool,
    },
    /// Puts (creates or replaces) an inline policy.
    PutPolicy {
        /// The principal.
        arn: String,
        /// The policy's name.
        name: String,
        /// The document, already validated by the proposer.
        document: String,
    },
    /// Deletes an inline policy.
    DeletePolicy {
        /// The principal.
        arn: String,
        /// The policy's name.
        name: String,
    },
    /// Adds an access key: a user's long-term key (at most two), or temporary
    /// credentials of an assumed role.
    CreateAccessKey(Box<AccessKeyRecord>),
    /// Deletes an access key.
    DeleteAccessKey {
        /// The access key id.
        access_key_id: String,
    },
    /// Enables or disables an access key.
    SetAccessKeyEnabled {
        /// The access key id.
        access_key_id: String,
        /// Enable or disable.
        enabled: bool,
    },
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
    /// Grants per key.
    pub grants_per_key: Option<u64>,
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
    /// Grant limit per key.
    pub grants_per_key_limit: u64,
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
    /// A key pair's public half (DER SubjectPublicKeyInfo); key pairs never rotate, so
    /// there is one.
    pub public_key: Option<Vec<u8>>,
    /// The key policy (`default`); `None` is the default key policy of the key's
    /// account, which delegates to the account's principal policies.
    pub policy: Option<String>,
    /// Ids of the key's grants (the grants themselves are stored beside the key).
    pub grants: Vec<String>,
}

/// What stands in for pruned audit events: the last pruned event's sequence and hash,
/// signed so that nobody without the region's HSM can make one up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// The newest pruned event.
    pub through: u64,
    /// Its hash: the `prevHash` of the first event kept.
    pub hash: String,
    /// When it was pruned (ms, the proposer's clock).
    pub pruned_ms: u64,
    /// The HSM's seal over `through` and `hash` (see `AuditCheckpoint::signed_bytes`).
    pub signature: Vec<u8>,
}

impl AuditCheckpoint {
    /// The bytes the signature covers.
    pub fn signed_bytes(through: u64, hash: &str) -> Vec<u8> {
        format!("keyraft-audit-checkpoint-v1:{through}:{hash}").into_bytes()
    }
}

/// A grant on a key: the grantee may do the grant's operations, within its constraints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// The grant id (64 hex characters, drawn by the proposer).
    pub grant_id: String,
    /// The key.
    pub key_id: KeyId,
    /// An optional name; creating a grant with the same name and content returns it.
    pub name: String,
    /// Grantee, operations and constraints.
    pub grant: keyraft_types::Grant,
    /// Who may retire it, besides the account and (with RetireGrant) the grantee.
    pub retiring_principal: Option<String>,
    /// The account that created it.
    pub issuing_account: AccountId,
    /// When (ms, the proposer's clock).
    pub creation_ms: u64,
    /// The grant token, returned by CreateGrant and accepted by RetireGrant.
    pub token: String,
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
    /// The principal after the change.
    Principal(Box<PrincipalRecord>),
    /// A grant's id and token.
    Grant {
        /// The grant id.
        grant_id: String,
        /// The grant token.
        token: String,
    },
    /// The access key a CreateAccessKey made (a retry with the same request id gets the
    /// first one's id, so the serving node can return that key, not a new one).
    AccessKey(String),
    /// The responses to the commands of an [`Op::Group`], in order.
    Group(Vec<Response>),
}

/// The response to a command: deterministic errors are values.
pub type Response = Result<Reply, KmsError>;

/// One entry handed to [`crate::StateMachine::apply`].
#[derive(Debug, Clone)]
pub struct ApplyEntry {
    /// The command, or `None` for a blank or membership entry.
    pub command: Option<std::sync::Arc<Command>>,
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
            Op::Iam { change, .. } => format!("Iam({})", change.name()),
            Op::PutKeyPolicy { key_id, .. } => format!("PutKeyPolicy({key_id})"),
            Op::CreateGrant { grant, .. } => format!("CreateGrant({})", grant.key_id),
            Op::AuditExported { through, .. } => format!("AuditExported({through})"),
            Op::PruneAudit { checkpoint, .. } => format!("PruneAudit({})", checkpoint.through),
            Op::RemoveGrant {
                key_id, grant_id, ..
            } => format!("RemoveGrant({key_id}, {grant_id})"),
            Op::AuthorizeJoin { node, .. } => format!("AuthorizeJoin({})", node.node_id),
            Op::RetireNode { node_id, .. } => format!("RetireNode({node_id})"),
            Op::Group { commands } => format!("Group({})", commands.len()),
        };
        write!(
            f,
            "{name} request_id={:?} t={}",
            self.request_id, self.time_ms
        )
    }
}
