//! Data-driven tests: scenario files in `testdata/` hold commands and the expected
//! output after `----`. Run with `UPDATE_GOLDEN=1` to rewrite the expectations after a
//! deliberate change, then review the diff.
//!
//! Commands (key names like `k1` stand for fixed key ids; `t=` sets the command time):
//!
//! ```text
//! bootstrap [quota=N]                  create <key> [account=A] [request=R] [t=T]
//! enable <key> [request=R]             disable <key> [request=R]
//! crypto <key> epoch=E op=Encrypt      refused code=AccessDeniedException
//! describe <key>                       list [account=A] [after=<key>] [limit=N]
//! authorize node=N                     retire node=N
//! audit                                verify        tamper seq=N
//! ```

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use keyraft_types::{
    AccountId, AliasName, AuditEvent, AuditRecord, CryptoOperation, ErrorCode, EventType, KeyCheck,
    KeyId, KeyManager, KeyMetadata, KeySpec, KeyState, KeyUsage, Origin, Region, RequestParameters,
    UserIdentity,
};

use crate::command::{
    AccessKeyRecord, ApplyEntry, Bootstrap, Command, IamChange, NodeRecord, Op, PreparedRotation,
    PrincipalKind, PrincipalRecord, Reply, Response,
};
use crate::{keys, Durable, StateError, StateMachine, StateView};

const ACCOUNT: &str = "111122223333";

fn key_id(name: &str) -> KeyId {
    let n: u64 = name.trim_start_matches('k').parse().unwrap_or(999);
    KeyId::parse(&format!("00000000-0000-4000-8000-{n:012}")).unwrap()
}

fn key_name(id: &KeyId) -> String {
    let n: u64 = id.as_str()[24..].parse().unwrap_or(0);
    format!("k{n}")
}

fn record(name: &str) -> AuditRecord {
    AuditRecord {
        event_id: format!("event-{name}"),
        event_time_ms: 0,
        event_name: name.to_string(),
        request_id: String::new(),
        event_type: EventType::AwsApiCall,
        read_only: false,
        user_identity: UserIdentity::default(),
        source_ip: "127.0.0.1".into(),
        user_agent: "test".into(),
        node_id: 1,
        request_parameters: RequestParameters::default(),
        resources: vec![],
        error: None,
        key_checks: Vec::new(),
        authz_checks: Vec::new(),
    }
}

struct Runner {
    _dir: tempfile::TempDir,
    sm: StateMachine,
    index: u64,
    /// Every command applied, each in a batch of its own, and its response.
    log: Vec<(Command, Response)>,
    /// The tree was changed behind apply's back (`tamper` and the like), so a replay
    /// of `log` cannot reach the same state.
    tampered: bool,
}

impl Runner {
    fn new() -> Runner {
        let dir = tempfile::tempdir().unwrap();
        let durable = Durable::open(dir.path()).unwrap();
        let sm = StateMachine::open(&durable).unwrap();
        Runner {
            _dir: dir,
            sm,
            index: 0,
            log: Vec::new(),
            tampered: false,
        }
    }

    fn apply(&mut self, request_id: &str, time_ms: u64, op: Op) -> String {
        self.index += 1;
        let cmd = Command {
            request_id: request_id.to_string(),
            time_ms,
            op,
        };
        let out = self
            .sm
            .apply(
                &[ApplyEntry {
                    command: Some(cmd.clone().into()),
                }],
                self.index.to_be_bytes().to_vec(),
                None,
            )
            .unwrap();
        self.log.push((cmd, out[0].clone()));
        match &out[0] {
            Ok(Reply::Unit) => "ok".into(),
            Ok(Reply::Alias(a)) => format!(
                "ok: {} -> {} created={} updated={}",
                a.name,
                key_name(&a.target_key_id),
                a.creation_ms,
                a.last_updated_ms
            ),
            Ok(Reply::Key(k)) => format!(
                "ok: {} {} epoch={}",
                key_name(&k.key_id),
                k.key_state.as_str(),
                k.epoch
            ),
            Ok(Reply::Quota(q)) => format!(
                "quota: keys {}/{} aliases {}/{} grants/key {}",
                q.keys_used, q.keys_limit, q.aliases_used, q.aliases_limit, q.grants_per_key_limit
            ),
            Ok(Reply::Deleted(v)) => format!(
                "deleted: [{}]",
                v.iter().map(key_name).collect::<Vec<_>>().join(", ")
            ),
            Ok(Reply::Audit(v)) => format!(
                "audit: [{}]",
                v.iter()
                    .map(|e| e
                        .as_ref()
                        .map_or("ok".to_string(), |e| e.code.as_str().to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ok(Reply::Principal(p)) => format!("ok: {}", describe_principal(p)),
            Ok(Reply::AccessKey(id)) => format!("ok: {id}"),
            Ok(Reply::Grant { grant_id, .. }) => format!("ok: grant {grant_id}"),
            Ok(Reply::Group(v)) => format!("group of {}", v.len()),
            Err(e) => format!("error: {}: {}", e.code, e.message),
        }
    }

    /// The authorization decision a node made, from `as=user/NAME holder-epoch=N
    /// key-epoch=N [ctx=k:v]` (none without `as=`).
    fn authz_check(
        &self,
        args: &BTreeMap<String, String>,
        key: &str,
        action: &str,
    ) -> Option<keyraft_types::AuthzCheck> {
        let who = args.get("as")?;
        let arn = format!("arn:keyraft:iam::{ACCOUNT}:{who}");
        let num = |k: &str| args.get(k).map_or(1, |v| v.parse().unwrap());
        let ctx = args.get("ctx").map(|kv| {
            let (k, v) = kv.split_once(':').unwrap();
            BTreeMap::from([(k.to_string(), v.to_string())])
        });
        Some(keyraft_types::AuthzCheck {
            caller_arn: arn.clone(),
            holder_arn: arn,
            holder_epoch: num("holder-epoch"),
            action: format!("kms:{action}"),
            key: Some((key_id(key), num("key-epoch"))),
            resource: "*".into(),
            encryption_context: ctx,
        })
    }

    fn run(&mut self, line: &str) -> String {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        let mut positional = Vec::new();
        let mut args = BTreeMap::new();
        for w in words {
            match w.split_once('=') {
                Some((k, v)) => {
                    args.insert(k.to_string(), v.to_string());
                }
                None => positional.push(w.to_string()),
            }
        }
        let arg = |k: &str, d: &str| args.get(k).cloned().unwrap_or_else(|| d.to_string());
        let t: u64 = arg("t", "1000").parse().unwrap();
        let request = arg("request", "");
        let region = Region::parse("dev-1").unwrap();
        match cmd {
            "bootstrap" => self.apply(
                "",
                t,
                Op::Bootstrap(Box::new(Bootstrap {
                    region,
                    account: AccountId::parse(ACCOUNT).unwrap(),
                    domain_key_fingerprint: "fp".into(),
                    admin: AccessKeyRecord {
                        access_key_id: "KRADMIN".into(),
                        principal_arn: format!("arn:keyraft:iam::{ACCOUNT}:user/admin"),
                        account: AccountId::parse(ACCOUNT).unwrap(),
                        wrapped_secret: vec![1, 2, 3],
                        enabled: true,
                        created_ms: t,
                        expires_ms: None,
                        role_arn: None,
                    },
                    members: vec![NodeRecord {
                        node_id: 1,
                        api_endpoint: "http://127.0.0.1:1".into(),
                        raft_addr: "127.0.0.1:2".into(),
                        retired: false,
                    }],
                    key_quota: arg("quota", "0").parse().unwrap(),
                })),
            ),
            "create" => {
                let id = key_id(&positional[0]);
                let spec = KeySpec::parse(&arg("spec", "")).unwrap();
                // `public=yes|no` overrides whether a public key comes with the command.
                let public_key = match arg("public", "").as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => spec.is_asymmetric(),
                }
                .then(|| vec![0x30; 91]);
                let account = AccountId::parse(&arg("account", ACCOUNT)).unwrap();
                let key = KeyMetadata {
                    arn: region.key_arn(&account, &id),
                    key_id: id,
                    account,
                    description: String::new(),
                    key_state: KeyState::Enabled,
                    key_spec: spec,
                    key_usage: spec.usages()[0],
                    origin: if arg("origin", "") == "EXTERNAL" {
                        Origin::External
                    } else {
                        Origin::Kms
                    },
                    key_manager: KeyManager::Customer,
                    creation_date_ms: t,
                    epoch: 1,
                    current_version: 1,
                    deletion_date_ms: None,
                    rotation_period_days: None,
                    next_rotation_ms: None,
                    valid_to_ms: None,
                };
                self.apply(
                    &request,
                    t,
                    Op::CreateKey {
                        key: Box::new(key),
                        material: vec![0xAB; 60],
                        public_key,
                        audit: Box::new(record("CreateKey")),
                    },
                )
            }
            "service" => {
                let id = key_id(&positional[0]);
                let account = AccountId::parse(&arg("account", ACCOUNT)).unwrap();
                let key = KeyMetadata {
                    arn: region.key_arn(&account, &id),
                    key_id: id,
                    account,
                    description: "service key".into(),
                    key_state: KeyState::Enabled,
                    key_spec: KeySpec::SymmetricDefault,
                    key_usage: KeyUsage::EncryptDecrypt,
                    origin: Origin::Kms,
                    key_manager: KeyManager::Service,
                    creation_date_ms: t,
                    epoch: 1,
                    current_version: 1,
                    deletion_date_ms: None,
                    rotation_period_days: None,
                    next_rotation_ms: None,
                    valid_to_ms: None,
                };
                self.apply(
                    &request,
                    t,
                    Op::CreateServiceKey {
                        key: Box::new(key),
                        material: vec![0x5E; 60],
                        alias: AliasName::parse(&arg("alias", "alias/keyraft/s3")).unwrap(),
                        audit: Box::new(record("CreateServiceKey")),
                    },
                )
            }
            "importparams" => self.apply(
                &request,
                t,
                Op::StoreImportParameters {
                    key_id: key_id(&positional[0]),
                    token: arg("token", "t1"),
                    public_key_der: vec![1; 10],
                    wrapped_private_key: vec![2; 10],
                    expires_ms: arg("expires", "86400000").parse().unwrap(),
                    audit: Box::new(record("GetParametersForImport")),
                },
            ),
            "import" => self.apply(
                &request,
                t,
                Op::ImportKeyMaterial {
                    key_id: key_id(&positional[0]),
                    token: arg("token", "t1"),
                    material: vec![0x1A; 60],
                    fingerprint: arg("fp", "A"),
                    valid_to_ms: args.get("validto").map(|v| v.parse().unwrap()),
                    audit: Box::new(record("ImportKeyMaterial")),
                },
            ),
            "deleteimported" => self.apply(
                &request,
                t,
                Op::DeleteImportedKeyMaterial {
                    key_id: key_id(&positional[0]),
                    audit: Box::new(record("DeleteImportedKeyMaterial")),
                },
            ),
            "enable" | "disable" => {
                let action = if cmd == "enable" {
                    "EnableKey"
                } else {
                    "DisableKey"
                };
                let mut r = record(action);
                if let Some(check) = self.authz_check(&args, &positional[0], action) {
                    r.authz_checks.push(check);
                }
                self.apply(
                    &request,
                    t,
                    Op::SetKeyEnabled {
                        key_id: key_id(&positional[0]),
                        enabled: cmd == "enable",
                        audit: Box::new(r),
                    },
                )
            }
            "crypto" => {
                let mut r = record("Encrypt");
                // `ak=ID`: the request was signed with that access key.
                r.user_identity.access_key_id = arg("ak", "");
                r.key_checks.push(KeyCheck {
                    key_id: key_id(&positional[0]),
                    epoch: arg("epoch", "1").parse().unwrap(),
                    operation: match arg("op", "Encrypt").as_str() {
                        "Decrypt" => CryptoOperation::Decrypt,
                        _ => CryptoOperation::Encrypt,
                    },
                });
                if let Some(check) = self.authz_check(&args, &positional[0], &arg("op", "Encrypt"))
                {
                    r.authz_checks.push(check);
                }
                self.apply(&request, t, Op::AuditBatch { records: vec![r] })
            }
            "refused" => {
                let mut r = record("Encrypt");
                let code = ErrorCode::parse(&arg("code", "AccessDeniedException")).unwrap();
                r.error = Some((code, "refused by the node".into()));
                self.apply(&request, t, Op::AuditBatch { records: vec![r] })
            }
            "user" | "role" => {
                let kind = if cmd == "user" {
                    PrincipalKind::User
                } else {
                    PrincipalKind::Role
                };
                let account = AccountId::parse(&arg("account", ACCOUNT)).unwrap();
                let name = positional[0].to_string();
                let p = PrincipalRecord {
                    arn: format!("arn:keyraft:iam::{account}:{}/{name}", kind.as_str()),
                    account,
                    kind,
                    name,
                    created_ms: t,
                    enabled: true,
                    root: false,
                    policies: BTreeMap::new(),
                    trust_policy: None,
                    access_keys: Vec::new(),
                    epoch: 0,
                };
                let change = IamChange::CreatePrincipal(Box::new(p));
                self.apply(
                    &request,
                    t,
                    Op::Iam {
                        change,
                        audit: Box::new(record("CreatePrincipal")),
                    },
                )
            }
            "iam" => {
                let arn =
                    |who: &String| format!("arn:keyraft:iam::{}:{who}", arg("account", ACCOUNT));
                let change = match positional[0].as_str() {
                    "delete" => IamChange::DeletePrincipal {
                        arn: arn(&positional[1]),
                    },
                    "enable" | "disable" => IamChange::SetPrincipalEnabled {
                        arn: arn(&positional[1]),
                        enabled: positional[0] == "enable",
                    },
                    "put-policy" => IamChange::PutPolicy {
                        arn: arn(&positional[1]),
                        name: positional[2].to_string(),
                        document: policy_text(&arg("doc", "allow-kms")),
                    },
                    "delete-policy" => IamChange::DeletePolicy {
                        arn: arn(&positional[1]),
                        name: positional[2].to_string(),
                    },
                    "create-key" | "session" => {
                        let session = positional[0] == "session";
                        IamChange::CreateAccessKey(Box::new(AccessKeyRecord {
                            access_key_id: positional[2].to_string(),
                            principal_arn: if session {
                                format!("arn:keyraft:sts::{ACCOUNT}:assumed-role/x/s")
                            } else {
                                arn(&positional[1])
                            },
                            account: AccountId::parse(ACCOUNT).unwrap(),
                            wrapped_secret: vec![9],
                            enabled: true,
                            created_ms: t,
                            expires_ms: session.then_some(t + 3_600_000),
                            role_arn: session.then(|| arn(&positional[1])),
                        }))
                    }
                    "delete-key" => IamChange::DeleteAccessKey {
                        access_key_id: positional[1].to_string(),
                    },
                    "disable-key" => IamChange::SetAccessKeyEnabled {
                        access_key_id: positional[1].to_string(),
                        enabled: false,
                    },
                    other => panic!("unknown iam change {other}"),
                };
                self.apply(
                    &request,
                    t,
                    Op::Iam {
                        change,
                        audit: Box::new(record("Iam")),
                    },
                )
            }
            "principal" => {
                let arn = format!(
                    "arn:keyraft:iam::{}:{}",
                    arg("account", ACCOUNT),
                    positional[0]
                );
                match self.sm.principal(&arn).unwrap() {
                    Some(p) => describe_principal(&p),
                    None => "not found".into(),
                }
            }
            "access-key" => match self.sm.access_key(&positional[0]).unwrap() {
                Some(k) => format!(
                    "{} of {} enabled={} expires={:?} role={:?}",
                    k.access_key_id, k.principal_arn, k.enabled, k.expires_ms, k.role_arn
                ),
                None => "not found".into(),
            },
            "key-policy" => {
                let policy = policy_text(&arg("doc", "default"));
                self.apply(
                    &request,
                    t,
                    Op::PutKeyPolicy {
                        key_id: key_id(&positional[0]),
                        policy,
                        audit: Box::new(record("PutKeyPolicy")),
                    },
                )
            }
            "describe" => match self.sm.key(&key_id(&positional[0])).unwrap() {
                Some(k) => format!(
                    "{}{} {} epoch={} versions={:?} description={:?} tags={:?}{}{}",
                    key_name(&k.metadata.key_id),
                    match (k.metadata.key_spec, &k.public_key) {
                        (KeySpec::SymmetricDefault, _) => String::new(),
                        (spec, Some(p)) => format!(
                            " {}/{} public={}B",
                            spec.as_str(),
                            k.metadata.key_usage.as_str(),
                            p.len()
                        ),
                        (spec, None) =>
                            format!(" {}/{}", spec.as_str(), k.metadata.key_usage.as_str()),
                    },
                    k.metadata.key_state.as_str(),
                    k.metadata.epoch,
                    k.versions.keys().collect::<Vec<_>>(),
                    k.metadata.description,
                    k.tags,
                    k.metadata
                        .deletion_date_ms
                        .map(|d| format!(" deletion={d}"))
                        .unwrap_or_default(),
                    match (k.metadata.rotation_period_days, k.metadata.next_rotation_ms) {
                        (Some(p), Some(n)) => format!(
                            " rotation={p}d next={n} rotations={:?}",
                            k.rotations
                                .iter()
                                .map(|r| (r.version, r.on_demand))
                                .collect::<Vec<_>>()
                        ),
                        _ if !k.rotations.is_empty() => format!(
                            " rotations={:?}",
                            k.rotations
                                .iter()
                                .map(|r| (r.version, r.on_demand))
                                .collect::<Vec<_>>()
                        ),
                        _ => String::new(),
                    }
                ),
                None => "not found".into(),
            },
            "alias" => {
                let account = AccountId::parse(&arg("account", ACCOUNT)).unwrap();
                let name = AliasName::parse(&positional[1]).unwrap();
                let audit = Box::new(record("Alias"));
                let op = match positional[0].as_str() {
                    "create" => Op::CreateAlias {
                        account,
                        name,
                        key_id: key_id(&positional[2]),
                        audit,
                    },
                    "update" => Op::UpdateAlias {
                        account,
                        name,
                        key_id: key_id(&positional[2]),
                        audit,
                    },
                    _ => Op::DeleteAlias {
                        account,
                        name,
                        audit,
                    },
                };
                self.apply(&request, t, op)
            }
            "aliases" => {
                let account = AccountId::parse(&arg("account", ACCOUNT)).unwrap();
                let key = args.get("key").map(|k| key_id(k));
                let (aliases, more) = self
                    .sm
                    .list_aliases(
                        &account,
                        key.as_ref(),
                        None,
                        arg("limit", "100").parse().unwrap(),
                    )
                    .unwrap();
                let names: Vec<String> = aliases
                    .iter()
                    .map(|a| format!("{}->{}", a.name, key_name(&a.target_key_id)))
                    .collect();
                format!("[{}] truncated={more}", names.join(", "))
            }
            "description" => self.apply(
                &request,
                t,
                Op::UpdateKeyDescription {
                    key_id: key_id(&positional[0]),
                    description: positional[1..].join(" "),
                    audit: Box::new(record("UpdateKeyDescription")),
                },
            ),
            "tag" => {
                let tags = arg("tags", "")
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once(':').unwrap_or((p, ""));
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                self.apply(
                    &request,
                    t,
                    Op::TagResource {
                        key_id: key_id(&positional[0]),
                        tags,
                        audit: Box::new(record("TagResource")),
                    },
                )
            }
            "untag" => self.apply(
                &request,
                t,
                Op::UntagResource {
                    key_id: key_id(&positional[0]),
                    tag_keys: arg("keys", "").split(',').map(str::to_string).collect(),
                    audit: Box::new(record("UntagResource")),
                },
            ),
            "schedule" => self.apply(
                &request,
                t,
                Op::ScheduleKeyDeletion {
                    key_id: key_id(&positional[0]),
                    pending_window_days: arg("days", "30").parse().unwrap(),
                    audit: Box::new(record("ScheduleKeyDeletion")),
                },
            ),
            "cancel" => self.apply(
                &request,
                t,
                Op::CancelKeyDeletion {
                    key_id: key_id(&positional[0]),
                    audit: Box::new(record("CancelKeyDeletion")),
                },
            ),
            "tick" => {
                // The leader's part: prepare the next version of every key due to rotate.
                let rotations = self
                    .sm
                    .due_rotations(t, 100)
                    .unwrap()
                    .into_iter()
                    .filter_map(|id| self.sm.key(&id).unwrap())
                    .map(|k| PreparedRotation {
                        version: k.metadata.current_version + 1,
                        key_id: k.metadata.key_id,
                        material: vec![0xCD; 60],
                    })
                    .collect();
                self.apply(
                    &format!("tick-{t}"),
                    t,
                    Op::Tick {
                        node_id: 1,
                        rotations,
                    },
                )
            }
            "rotation" => {
                let key = key_id(&positional[1]);
                let period_days =
                    (positional[0] == "enable").then(|| arg("days", "365").parse().unwrap());
                self.apply(
                    &request,
                    t,
                    Op::SetKeyRotation {
                        key_id: key,
                        period_days,
                        audit: Box::new(record("SetKeyRotation")),
                    },
                )
            }
            "rotate" => {
                let key = key_id(&positional[0]);
                let version = match args.get("version") {
                    Some(v) => v.parse().unwrap(),
                    None => self
                        .sm
                        .key(&key)
                        .unwrap()
                        .map_or(2, |k| k.metadata.current_version + 1),
                };
                self.apply(
                    &request,
                    t,
                    Op::RotateKey {
                        rotation: PreparedRotation {
                            key_id: key,
                            version,
                            material: vec![0xEF; 60],
                        },
                        audit: Box::new(record("RotateKeyOnDemand")),
                    },
                )
            }
            "quota" => {
                let account = AccountId::parse(&arg("account", ACCOUNT)).unwrap();
                if positional.first().map(String::as_str) == Some("set") {
                    self.apply(
                        &request,
                        t,
                        Op::SetQuota {
                            account,
                            keys: args.get("keys").map(|v| v.parse().unwrap()),
                            aliases: args.get("aliases").map(|v| v.parse().unwrap()),
                            grants_per_key: args.get("grants").map(|v| v.parse().unwrap()),
                            audit: Box::new(record("SetQuota")),
                        },
                    )
                } else {
                    let q = self.sm.quota(&account).unwrap();
                    format!(
                        "keys {}/{} aliases {}/{}",
                        q.keys_used, q.keys_limit, q.aliases_used, q.aliases_limit
                    )
                }
            }
            "grant" => {
                // grant k1 g1 to=user/bob ops=Encrypt,Decrypt [name=N] [equals=k:v]
                let ops: Vec<keyraft_types::GrantOperation> = arg("ops", "Encrypt")
                    .split(',')
                    .map(|o| keyraft_types::GrantOperation::parse(o).unwrap())
                    .collect();
                let constraints = args.get("equals").map(|kv| {
                    let (k, v) = kv.split_once(':').unwrap();
                    keyraft_types::GrantConstraints {
                        encryption_context_equals: Some(BTreeMap::from([(
                            k.to_string(),
                            v.to_string(),
                        )])),
                        encryption_context_subset: None,
                    }
                });
                let grantee = format!("arn:keyraft:iam::{ACCOUNT}:{}", arg("to", "user/bob"));
                let g = crate::GrantRecord {
                    grant_id: positional[1].to_string(),
                    key_id: key_id(&positional[0]),
                    name: arg("name", ""),
                    grant: keyraft_types::Grant::new(&grantee, &ops, constraints).unwrap(),
                    retiring_principal: None,
                    issuing_account: AccountId::parse(ACCOUNT).unwrap(),
                    creation_ms: t,
                    token: format!("token-{}", positional[1]),
                };
                self.apply(
                    &request,
                    t,
                    Op::CreateGrant {
                        grant: Box::new(g),
                        audit: Box::new(record("CreateGrant")),
                    },
                )
            }
            "remove-grant" => self.apply(
                &request,
                t,
                Op::RemoveGrant {
                    key_id: key_id(&positional[0]),
                    grant_id: positional[1].to_string(),
                    audit: Box::new(record("RevokeGrant")),
                },
            ),
            "due" => format!("{:?}", self.sm.next_deletion_due().unwrap()),
            "reencrypt" => {
                let mut r = record("ReEncrypt");
                for (name, epoch) in [(&positional[0], "epoch"), (&positional[1], "epoch2")] {
                    r.key_checks.push(KeyCheck {
                        key_id: key_id(name),
                        epoch: arg(epoch, "1").parse().unwrap(),
                        operation: CryptoOperation::Encrypt,
                    });
                }
                self.apply(&request, t, Op::AuditBatch { records: vec![r] })
            }
            "list" => {
                let account = AccountId::parse(&arg("account", ACCOUNT)).unwrap();
                let after = args.get("after").map(|a| key_id(a));
                let (keys, more) = self
                    .sm
                    .list_keys(
                        &account,
                        after.as_ref(),
                        arg("limit", "100").parse().unwrap(),
                    )
                    .unwrap();
                let names: Vec<String> = keys.iter().map(|k| key_name(&k.key_id)).collect();
                format!("[{}] truncated={more}", names.join(", "))
            }
            "authorize" => self.apply(
                &request,
                t,
                Op::AuthorizeJoin {
                    node: NodeRecord {
                        node_id: arg("node", "2").parse().unwrap(),
                        api_endpoint: "http://127.0.0.1:3".into(),
                        raft_addr: "127.0.0.1:4".into(),
                        retired: false,
                    },
                    public_key: vec![7; 32],
                    audit: Box::new(record("AuthorizeJoin")),
                },
            ),
            "retire" => self.apply(
                &request,
                t,
                Op::RetireNode {
                    node_id: arg("node", "2").parse().unwrap(),
                    audit: Box::new(record("RetireNode")),
                },
            ),
            "audit" => {
                let mut out = String::new();
                for e in self.sm.audit_events(1, 1000).unwrap() {
                    let _ = writeln!(
                        out,
                        "{} {} {} links={}",
                        e.sequence,
                        e.record.event_name,
                        e.error_code.as_deref().unwrap_or("ok"),
                        e.hash == e.compute_hash()
                    );
                }
                out.trim_end().to_string()
            }
            "verify" => match self.sm.verify_audit_chain().unwrap().verdict {
                Ok((seq, _)) => format!("chain ok, head {seq}"),
                Err(seq) => format!("chain broken at {seq}"),
            },
            "tamper" => {
                self.tampered = true;
                let seq: u64 = arg("seq", "1").parse().unwrap();
                rewrite_audit(&self.sm, |events| {
                    for (at, e) in events.iter_mut() {
                        if *at == seq {
                            e.record.source_ip = "10.6.6.6".into();
                        }
                    }
                });
                "tampered".into()
            }
            "delete-event" => {
                self.tampered = true;
                let seq: u64 = arg("seq", "1").parse().unwrap();
                rewrite_audit(&self.sm, |events| events.retain(|(at, _)| *at != seq));
                "deleted".into()
            }
            "swap-events" => {
                self.tampered = true;
                // Two events exchange places (each keeps its own sequence field).
                let (a, b): (u64, u64) = (
                    arg("a", "1").parse().unwrap(),
                    arg("b", "2").parse().unwrap(),
                );
                rewrite_audit(&self.sm, |events| {
                    let ia = events.iter().position(|(at, _)| *at == a).unwrap();
                    let ib = events.iter().position(|(at, _)| *at == b).unwrap();
                    let event_a = events[ia].1.clone();
                    events[ia].1 = events[ib].1.clone();
                    events[ib].1 = event_a;
                });
                "swapped".into()
            }
            "exported" => self.apply(
                &request,
                t,
                Op::AuditExported {
                    through: arg("through", "0").parse().unwrap(),
                    audit: Box::new(record("AuditExported")),
                },
            ),
            "prune" => {
                let through: u64 = arg("through", "1").parse().unwrap();
                let hash = match args.get("hash") {
                    Some(h) => h.clone(),
                    None => self.sm.audit_hash_at(through).unwrap().unwrap_or_default(),
                };
                self.apply(
                    &request,
                    t,
                    Op::PruneAudit {
                        checkpoint: crate::AuditCheckpoint {
                            through,
                            hash,
                            pruned_ms: t,
                            signature: vec![7],
                        },
                        retention_ms: arg("retention", "0").parse().unwrap(),
                        audit: Box::new(record("PruneAudit")),
                    },
                )
            }
            other => panic!("unknown command {other}"),
        }
    }
}

/// Rewrites the stored audit trail behind apply's back (tampering tests): `f` gets every
/// event with the sequence its place in the trail stands for, may change, drop or move
/// them, and each is written back at its place as a chunk of one.
fn rewrite_audit(sm: &StateMachine, f: impl FnOnce(&mut Vec<(u64, AuditEvent)>)) {
    sm.flush().unwrap();
    let mut events = Vec::new();
    for item in sm.tree().scan_prefix(keys::AUDIT_PREFIX) {
        let (k, v) = item.unwrap();
        let start = keys::parse_audit(&k).unwrap();
        let chunk: Vec<AuditEvent> = bincode::deserialize(&v).unwrap();
        events.extend((start..).zip(chunk));
        sm.tree().remove(k).unwrap();
    }
    f(&mut events);
    for (at, e) in events {
        sm.tree()
            .insert(keys::audit(at), bincode::serialize(&vec![e]).unwrap())
            .unwrap();
    }
}

fn run_file(name: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut runner = Runner::new();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    let mut mismatches = Vec::new();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        // A command, "----", then the expected output up to a blank line.
        out.push_str(line);
        out.push('\n');
        let got = runner.run(line);
        let mut expected = Vec::new();
        if lines.peek() == Some(&"----") {
            lines.next();
            while let Some(l) = lines.peek() {
                if l.trim().is_empty() {
                    break;
                }
                expected.push(lines.next().unwrap_or_default().to_string());
            }
        }
        if expected.join("\n") != got {
            mismatches.push(format!(
                "{line}\n  expected: {}\n  got:      {got}",
                expected.join(" / ")
            ));
        }
        out.push_str("----\n");
        out.push_str(&got);
        out.push('\n');
    }
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, out).unwrap();
        return;
    }
    assert!(mismatches.is_empty(), "{name}:\n{}", mismatches.join("\n"));
    if !runner.tampered {
        assert_batching_changes_nothing(name, &runner);
    }
}

/// Replays a scenario's commands in batches of other sizes and checks that every
/// response and the final state are the ones of one command per batch.
///
/// Replicas batch differently (a leader applies what committed together, a follower what
/// arrived together, a restarted node what it replays), so apply must not depend on
/// where a batch ends: a read that missed an earlier command of the same batch would let
/// replicas drift apart.
fn assert_batching_changes_nothing(name: &str, runner: &Runner) {
    let (expected_state, _) = runner.sm.export().unwrap();
    for size in [2, 3, 7, usize::MAX] {
        let replay = Runner::new();
        let mut responses = Vec::new();
        for (i, chunk) in runner.log.chunks(size).enumerate() {
            let entries: Vec<ApplyEntry> = chunk
                .iter()
                .map(|(cmd, _)| ApplyEntry {
                    command: Some(cmd.clone().into()),
                })
                .collect();
            responses.extend(
                replay
                    .sm
                    .apply(&entries, i.to_be_bytes().to_vec(), None)
                    .unwrap(),
            );
            // Batches of 2 go to sled after each one, so later batches read from the
            // tree what the others read from the writes still in memory.
            if size == 2 {
                replay.sm.flush().unwrap();
            }
        }
        for ((cmd, expected), got) in runner.log.iter().zip(&responses) {
            assert_eq!(
                got, expected,
                "{name}, batches of {size}: the response to {cmd:?} differs"
            );
        }
        let (state, _) = replay.sm.export().unwrap();
        let differing: Vec<String> = differing_records(&expected_state.records, &state.records);
        assert!(
            differing.is_empty(),
            "{name}, batches of {size}: the state differs at {differing:?}"
        );
    }
}

/// Checks that two state machines export the same records.
fn assert_same_state(expected: &StateMachine, got: &StateMachine) {
    let (expected, _) = expected.export().unwrap();
    let (got, _) = got.export().unwrap();
    let differing = differing_records(&expected.records, &got.records);
    assert!(differing.is_empty(), "the state differs at {differing:?}");
}

/// The keys whose records differ between two exports (present in one only, or with other
/// bytes).
fn differing_records(a: &[(Vec<u8>, Vec<u8>)], b: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    let a: BTreeMap<_, _> = a.iter().cloned().collect();
    let b: BTreeMap<_, _> = b.iter().cloned().collect();
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

#[test]
fn key_lifecycle() {
    run_file("key_lifecycle.test");
}

#[test]
fn audit_chain() {
    run_file("audit_chain.test");
}

#[test]
fn epoch_recheck() {
    run_file("epoch_recheck.test");
}

#[test]
fn idempotency_and_quota() {
    run_file("idempotency_quota.test");
}

#[test]
fn aliases_descriptions_and_tags() {
    run_file("aliases_tags.test");
}

#[test]
fn state_operation_matrix() {
    run_file("state_matrix.test");
}

#[test]
fn imported_key_material() {
    run_file("import.test");
}

#[test]
fn service_keys() {
    run_file("service_keys.test");
}

#[test]
fn rotation() {
    run_file("rotation.test");
}

#[test]
fn quotas() {
    run_file("quotas.test");
}

#[test]
fn deletion_and_ticks() {
    run_file("deletion.test");
}

#[test]
fn nodes_and_joins() {
    run_file("nodes.test");
}

/// Policy documents the scenarios name (`doc=NAME`), each valid for its kind.
fn policy_text(name: &str) -> String {
    let root = format!("arn:keyraft:iam::{ACCOUNT}:root");
    let alice = format!("arn:keyraft:iam::{ACCOUNT}:user/alice");
    let doc =
        |statements: &str| format!(r#"{{"Version":"2012-10-17","Statement":[{statements}]}}"#);
    match name {
        "allow-kms" => doc(r#"{"Effect":"Allow","Action":"kms:*","Resource":"*"}"#),
        "deny-encrypt" => doc(r#"{"Effect":"Deny","Action":"kms:Encrypt","Resource":"*"}"#),
        "encrypt-for-orders" => doc(
            r#"{"Effect":"Allow","Action":"kms:Encrypt","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:app":"orders"}}}"#,
        ),
        "default" => doc(&format!(
            r#"{{"Effect":"Allow","Principal":{{"AWS":"{root}"}},"Action":"kms:*","Resource":"*"}}"#
        )),
        "deny-alice" => doc(&format!(
            r#"{{"Effect":"Allow","Principal":{{"AWS":"{root}"}},"Action":"kms:*","Resource":"*"}},{{"Effect":"Deny","Principal":{{"AWS":"{alice}"}},"Action":"kms:*","Resource":"*"}}"#
        )),
        "no-delegation" => doc(&format!(
            r#"{{"Effect":"Allow","Principal":{{"AWS":"{ACCOUNT}"}},"Action":"kms:DescribeKey","Resource":"*"}}"#
        )),
        other => panic!("no policy named {other}"),
    }
}

fn describe_principal(p: &PrincipalRecord) -> String {
    format!(
        "{} {}{}{} keys={:?} policies={:?} epoch={}",
        p.arn,
        if p.enabled { "enabled" } else { "disabled" },
        if p.root { " root" } else { "" },
        if p.trust_policy.is_some() {
            " trust"
        } else {
            ""
        },
        p.access_keys,
        p.policies.keys().collect::<Vec<_>>(),
        p.epoch
    )
}

#[test]
fn authorization_is_decided_again_in_apply_when_a_policy_changed() {
    run_file("authz_recheck.test");
}

#[test]
fn audit_retention_and_tampering() {
    run_file("audit_retention.test");
}

#[test]
fn a_reordered_audit_event_is_detected() {
    run_file("audit_reorder.test");
}

#[test]
fn a_deleted_audit_event_is_detected() {
    run_file("audit_delete.test");
}

#[test]
fn grants_allow_use_within_constraints_and_quota() {
    run_file("grants.test");
}

#[test]
fn principals_and_access_keys() {
    run_file("iam.test");
}

#[test]
fn key_pairs() {
    run_file("key_pairs.test");
}

#[test]
fn state_survives_reopen_and_snapshot_round_trip() {
    let mut a = Runner::new();
    a.run("bootstrap");
    a.run("create k1");
    a.run("disable k1");
    let (snap, meta) = a.sm.export().unwrap();
    let b = Runner::new();
    b.sm.install(
        snap.records.into_iter().map(Ok),
        meta.last_applied.clone().unwrap(),
        meta.membership.clone().unwrap_or_default(),
    )
    .unwrap();
    assert_eq!(
        b.sm.key(&key_id("k1")).unwrap(),
        a.sm.key(&key_id("k1")).unwrap()
    );
    assert_eq!(b.sm.audit_head().unwrap(), a.sm.audit_head().unwrap());
    assert_eq!(b.sm.applied_meta().unwrap().last_applied, meta.last_applied);
    assert!(b.sm.verify_audit_chain().unwrap().is_ok());
}

/// A crash loses what apply had not yet written to sled; the state is then as of an
/// earlier applied log id, and applying the entries after it again reaches the same
/// state with the same responses.
#[test]
fn a_crash_before_the_flush_loses_nothing_the_log_cannot_replay() {
    let mut r = Runner::new();
    for line in [
        "bootstrap",
        "create k1",
        "create k2",
        "disable k1",
        "alias create alias/a k2",
        "schedule k2 days=7",
    ] {
        r.run(line);
    }
    let dir = tempfile::tempdir().unwrap();
    let durable = Durable::open(dir.path()).unwrap();
    let half = r.log.len() / 2;
    let sm = StateMachine::open(&durable).unwrap();
    for i in 0..half {
        apply(&sm, &r.log, i);
    }
    sm.flush().unwrap();
    for i in half..r.log.len() {
        apply(&sm, &r.log, i);
    }
    sm.lose_unflushed();
    drop(sm);

    let sm = StateMachine::open(&durable).unwrap();
    assert_eq!(
        sm.applied_meta().unwrap().last_applied,
        Some((half as u64).to_be_bytes().to_vec()),
        "the state is as of the last flush"
    );
    // The replay gives the same responses (`apply` checks each) and the same state.
    for i in half..r.log.len() {
        apply(&sm, &r.log, i);
    }
    assert_same_state(&r.sm, &sm);
}

/// A fresh replica in its own directory, with `log[..upto]` (a runner's log) applied,
/// one entry per batch.
fn replica(log: &[(Command, Response)], upto: usize) -> (tempfile::TempDir, StateMachine) {
    let dir = tempfile::tempdir().unwrap();
    let durable = Durable::open(dir.path()).unwrap();
    let sm = StateMachine::open(&durable).unwrap();
    for i in 0..upto {
        apply(&sm, log, i);
    }
    (dir, sm)
}

/// That `view` holds the state, and the applied meta, of a replica that applied the
/// first `upto` entries of `log`.
fn assert_view_is_replica_at(view: &StateView, log: &[(Command, Response)], upto: usize) {
    let (_dir, expected) = replica(log, upto);
    assert_eq!(view.meta(), &expected.applied_meta().unwrap());
    let (expected, _) = expected.export().unwrap();
    let seen: Vec<_> = view.records().map(Result::unwrap).collect();
    assert_eq!(seen, expected.records);
}

/// A runner that created `keys` keys and ran a crypto call under each, and its log.
fn keys_and_calls(keys: usize) -> (Runner, Vec<(Command, Response)>) {
    let mut r = Runner::new();
    r.run("bootstrap");
    for i in 0..keys {
        r.run(&format!("create k{i}"));
        r.run(&format!("crypto k{i}"));
    }
    let log = r.log.clone();
    (r, log)
}

/// Applies `log[i]` (a runner's log) as entry i + 1 and checks its response.
fn apply(sm: &StateMachine, log: &[(Command, Response)], i: usize) {
    let (cmd, expected) = &log[i];
    let entry = ApplyEntry {
        command: Some(cmd.clone().into()),
    };
    let got = sm
        .apply(&[entry], (i as u64 + 1).to_be_bytes().to_vec(), None)
        .unwrap();
    assert_eq!(&got[0], expected, "the response to {cmd:?}");
}

/// Flushes run beside apply: while one writes a layer to sled, apply goes on into a new
/// one, and every read sees all that was applied, whichever layer holds it.
#[test]
fn reads_see_every_apply_while_a_flush_runs_beside_it() {
    let mut r = Runner::new();
    r.run("bootstrap");
    for i in 0..20 {
        r.run(&format!("create k{i}"));
        if i % 3 == 0 {
            r.run(&format!("disable k{i}"));
        }
    }
    let log = r.log.clone();
    let half = log.len() / 2;
    let (_dir, sm) = replica(&log, half);
    /// Checks that reads see every key `log[..upto]` created, and entry `upto` applied.
    fn created(sm: &StateMachine, log: &[(Command, Response)], upto: usize) {
        for (cmd, _) in &log[..upto] {
            if let Op::CreateKey { key, .. } = &cmd.op {
                assert!(sm.key(&key.key_id).unwrap().is_some(), "{}", key.key_id);
            }
        }
        assert_eq!(
            sm.applied_meta().unwrap().last_applied,
            Some((upto as u64).to_be_bytes().to_vec())
        );
    }
    let ran = Arc::new(AtomicBool::new(false));
    let hook_ran = ran.clone();
    let hook_log = log.clone();
    *sm.mid_flush.lock().unwrap() = Some(Box::new(move |sm: &StateMachine| {
        // The first half is in the layer being flushed, not yet in the tree.
        assert!(sm.tree().get(keys::LAST_APPLIED).unwrap().is_none());
        for i in half..hook_log.len() {
            apply(sm, &hook_log, i);
            created(sm, &hook_log, i + 1);
        }
        hook_ran.store(true, Ordering::Relaxed);
    }));
    sm.flush().unwrap();
    assert!(ran.load(Ordering::Relaxed), "the flush took no layer");
    created(&sm, &log, log.len());
    sm.flush().unwrap();
    created(&sm, &log, log.len());
    assert!(sm.verify_audit_chain().unwrap().is_ok());
    assert_same_state(&r.sm, &sm);
}

/// While a view holds flushes off, apply goes on sealing layers, and the flush after
/// it writes them one batch each, oldest first: no batch is the whole backlog (a sled
/// batch stops every read of the tree while it is written), and since each layer ends
/// where an apply ends and holds its applied log id, the tree is as of one applied
/// entry after every batch.
#[test]
fn a_backlog_is_flushed_one_sealed_layer_at_a_time() {
    let (r, log) = keys_and_calls(8);
    let half = log.len() / 2;
    let (_dir, sm) = replica(&log, half);
    sm.flush().unwrap();
    sm.seal_every_apply();
    {
        let _export = sm.hold_flushes();
        for i in half..log.len() {
            apply(&sm, &log, i);
        }
        let applied: Vec<_> = (half..log.len())
            .map(|i| Some((i as u64 + 1).to_be_bytes().to_vec()))
            .collect();
        assert_eq!(sm.sealed_applied_ids(), applied);
    }
    let hook_log = log.clone();
    *sm.mid_flush.lock().unwrap() = Some(Box::new(move |sm: &StateMachine| {
        // Reads see every sealed layer before any is written.
        assert_eq!(
            sm.tree().get(keys::LAST_APPLIED).unwrap().as_deref(),
            Some(&(half as u64).to_be_bytes()[..])
        );
        for (cmd, _) in &hook_log {
            if let Op::CreateKey { key, .. } = &cmd.op {
                assert!(sm.key(&key.key_id).unwrap().is_some(), "{}", key.key_id);
            }
        }
    }));
    sm.flush().unwrap();
    assert!(
        sm.mid_flush.lock().unwrap().is_none(),
        "the flush sealed nothing"
    );
    assert!(sm.sealed_applied_ids().is_empty());
    assert_eq!(
        sm.tree().get(keys::LAST_APPLIED).unwrap().as_deref(),
        Some(&(log.len() as u64).to_be_bytes()[..])
    );
    assert_same_state(&r.sm, &sm);
}

/// An export and a verify of the audit chain read the state through a view
/// ([`StateMachine::pin`]). Apply, which runs on the Raft task, never waits for their
/// walk of the whole state, and what it applies meanwhile is not in what they read.
#[test]
fn export_and_verify_let_apply_go_on() {
    let (r, log) = keys_and_calls(12);
    let half = log.len() / 2;
    let (_dir, sm) = replica(&log, half);
    let sm = Arc::new(sm);
    // Neither takes apply's lock: both finish while something else holds it.
    {
        let _apply = sm.lock();
        let (done, finished) = std::sync::mpsc::channel();
        let walker = sm.clone();
        std::thread::spawn(move || {
            let exported = walker.export().map(|(_, meta)| meta);
            let verified = walker.verify_audit_chain();
            let _ = done.send((exported, verified));
        });
        let (exported, verified) = finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the export or the verify waited for apply's lock");
        assert_eq!(
            exported.unwrap().last_applied,
            Some((half as u64).to_be_bytes().to_vec())
        );
        assert_eq!(verified.unwrap().verdict, Ok(sm.audit_head().unwrap()));
    }
    // What is applied while a view is held is not in it, and no flush writes it to the
    // tree under the view.
    apply(&sm, &log, half);
    let view = sm.pin().unwrap();
    for i in half + 1..log.len() {
        apply(&sm, &log, i);
    }
    assert_view_is_replica_at(&view, &log, half + 1);
    drop(view);
    sm.flush().unwrap();
    assert!(sm.verify_audit_chain().unwrap().is_ok());
    assert_same_state(&r.sm, &sm);
}

/// A view taken while a flush writes a backlog waits for one sled batch, not the whole
/// backlog: the flush stops for it and leaves the rest to the next flush. The view is
/// the state as applied, whatever the flush had written, and stays so as apply goes on.
#[test]
fn a_flush_under_way_stops_for_a_view() {
    let (r, log) = keys_and_calls(8);
    let half = log.len() / 2;
    let three_quarters = log.len() * 3 / 4;
    let (_dir, sm) = replica(&log, half);
    let sm = Arc::new(sm);
    sm.flush().unwrap();
    sm.seal_every_apply();
    {
        let _held = sm.hold_flushes();
        for i in half..three_quarters {
            apply(&sm, &log, i);
        }
    }
    let backlog = sm.sealed_applied_ids().len();
    assert!(backlog > 2, "{backlog} layers");
    let (send, views) = std::sync::mpsc::channel();
    let pinner = sm.clone();
    *sm.mid_flush.lock().unwrap() = Some(Box::new(move |sm: &StateMachine| {
        std::thread::spawn(move || {
            let _ = send.send(pinner.pin());
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !sm.hold_wanted() {
            assert!(std::time::Instant::now() < deadline, "the view never asked");
            std::thread::yield_now();
        }
    }));
    sm.flush().unwrap();
    let view = views
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the view waited for the whole flush")
        .unwrap();
    let left = sm.sealed_applied_ids().len();
    assert!(
        left > 0 && left < backlog,
        "{left} of {backlog} layers left"
    );
    for i in three_quarters..log.len() {
        apply(&sm, &log, i);
    }
    assert_view_is_replica_at(&view, &log, three_quarters);
    drop(view);
    sm.flush().unwrap();
    assert_same_state(&r.sm, &sm);
}

/// A durable view is the state as written to sled and synced, as of an applied entry:
/// what is applied after it is lost in a crash, what is in it is not.
#[test]
fn a_durable_view_is_what_a_crash_keeps() {
    let mut r = Runner::new();
    r.run("bootstrap");
    for i in 0..4 {
        r.run(&format!("create k{i}"));
    }
    let log = r.log.clone();
    let half = log.len() / 2;
    let (_dir, sm) = replica(&log, half);
    let durable = sm.durable_view().unwrap();
    let at = durable.meta().clone();
    drop(durable);
    for i in half..log.len() {
        apply(&sm, &log, i);
    }
    sm.lose_unflushed();
    assert_eq!(sm.applied_meta().unwrap(), at);
    let (_replica_dir, expected) = replica(&log, half);
    assert_same_state(&expected, &sm);
}

/// An install writes the new state into a tree of its own, in batches, and switches to
/// it in one synced write: until then the old state stands (a failed install drops the
/// partial tree, and after a crash the next open does); after, the new one does, reopen
/// included.
#[test]
fn an_install_switches_to_the_new_state_whole() {
    let (r, log) = keys_and_calls(6);
    let half = log.len() / 2;
    let (snapshot, meta) = r.sm.export().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let durable = Durable::open(dir.path()).unwrap();
    let sm = StateMachine::open(&durable).unwrap();
    for i in 0..half {
        apply(&sm, &log, i);
    }
    let (_replica_dir, at_half) = replica(&log, half);
    let trees = |durable: &Durable| -> Vec<String> {
        let mut names: Vec<_> = durable
            .db()
            .tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .filter(|n| n.starts_with("state"))
            .collect();
        names.sort();
        names
    };
    let applied = meta.last_applied.clone().unwrap();
    let membership = meta.membership.clone().unwrap_or_default();

    let cut = snapshot
        .records
        .iter()
        .take(3)
        .cloned()
        .map(Ok)
        .chain([Err(StateError::Io(std::io::Error::other("transfer cut")))]);
    assert!(sm
        .install(cut, applied.clone(), membership.clone())
        .is_err());
    assert_same_state(&at_half, &sm);
    assert_eq!(trees(&durable), ["state"], "the partial tree is dropped");

    // A crash in the middle of a transfer leaves its partial tree to the next open.
    let mut incoming = sm.receive().unwrap();
    incoming
        .write(snapshot.records.iter().take(3).cloned())
        .unwrap();
    std::mem::forget(incoming);
    assert_same_state(&at_half, &sm);
    assert_eq!(trees(&durable), ["state", "state-b"], "the partial tree");
    drop(sm);
    let sm = StateMachine::open(&durable).unwrap();
    assert_eq!(trees(&durable), ["state"]);
    assert_same_state(&at_half, &sm);

    let records = snapshot.records.clone().into_iter().map(Ok);
    sm.install(records, applied.clone(), membership.clone())
        .unwrap();
    assert_same_state(&r.sm, &sm);
    assert_eq!(
        sm.applied_meta().unwrap().last_applied,
        Some(applied.clone())
    );
    assert_eq!(trees(&durable), ["state-b"]);
    drop(sm);
    let sm = StateMachine::open(&durable).unwrap();
    assert_same_state(&r.sm, &sm);
    // The next install goes back to the first name.
    let records = snapshot.records.into_iter().map(Ok);
    sm.install(records, applied, membership).unwrap();
    assert_eq!(trees(&durable), ["state"]);
    assert_same_state(&r.sm, &sm);
}

/// One transfer at a time writes the second tree: a newer one takes it over, the older
/// one can neither write nor install any more, and letting go of it leaves the newer
/// one's records alone.
#[test]
fn a_newer_snapshot_transfer_takes_over_from_an_older_one() {
    let (r, _log) = keys_and_calls(3);
    let (snapshot, meta) = r.sm.export().unwrap();
    let applied = meta.last_applied.clone().unwrap();
    let membership = meta.membership.clone().unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let durable = Durable::open(dir.path()).unwrap();
    let sm = StateMachine::open(&durable).unwrap();

    let mut older = sm.receive().unwrap();
    older
        .write([(b"stale".to_vec(), b"record".to_vec())])
        .unwrap();
    let mut newer = sm.receive().unwrap();
    newer.write(snapshot.records.iter().cloned()).unwrap();
    assert!(matches!(
        sm.install_received(older, applied.clone(), membership.clone()),
        Err(StateError::Superseded)
    ));
    sm.install_received(newer, applied.clone(), membership)
        .unwrap();
    // A superseded transfer cannot be sealed either.
    let mut older = sm.receive().unwrap();
    let _newer = sm.receive().unwrap();
    assert!(matches!(older.seal(), Err(StateError::Superseded)));
    drop((older, _newer));
    assert_same_state(&r.sm, &sm);
    assert_eq!(
        sm.applied_meta().unwrap().last_applied,
        Some(applied.clone())
    );

    // A transfer that has all its records is not taken over while it waits to be
    // installed.
    let mut whole = sm.receive().unwrap();
    whole.write(snapshot.records.iter().cloned()).unwrap();
    whole.seal().unwrap();
    assert!(matches!(sm.receive(), Err(StateError::InstallPending)));
    sm.install_received(whole, applied, meta.membership.unwrap_or_default())
        .unwrap();
    assert_same_state(&r.sm, &sm);

    // A transfer given up drops its tree; the next one starts empty.
    let mut given_up = sm.receive().unwrap();
    given_up
        .write([(b"stale".to_vec(), b"record".to_vec())])
        .unwrap();
    given_up.abandon().unwrap();
    assert_eq!(durable.db().tree_names().len(), 2, "default and the state");
    assert_same_state(&r.sm, &sm);
}

/// A customer's CreateKey of a symmetric key named `name`.
fn create_key_op(name: &str) -> Op {
    let id = key_id(name);
    let account = AccountId::parse(ACCOUNT).unwrap();
    Op::CreateKey {
        key: Box::new(KeyMetadata {
            arn: Region::parse("dev-1").unwrap().key_arn(&account, &id),
            key_id: id,
            account,
            description: String::new(),
            key_state: KeyState::Enabled,
            key_spec: KeySpec::SymmetricDefault,
            key_usage: KeyUsage::EncryptDecrypt,
            origin: Origin::Kms,
            key_manager: KeyManager::Customer,
            creation_date_ms: 1,
            epoch: 1,
            current_version: 1,
            deletion_date_ms: None,
            rotation_period_days: None,
            next_rotation_ms: None,
            valid_to_ms: None,
        }),
        material: vec![1; 60],
        public_key: None,
        audit: Box::new(record("CreateKey")),
    }
}

#[test]
fn batch_is_one_atomic_apply() {
    let mut r = Runner::new();
    r.run("bootstrap");
    // Two creates and a disable in one batch: later entries see earlier ones.
    let entries: Vec<ApplyEntry> = [
        create_key_op("k1"),
        create_key_op("k2"),
        Op::SetKeyEnabled {
            key_id: key_id("k1"),
            enabled: false,
            audit: Box::new(record("DisableKey")),
        },
    ]
    .into_iter()
    .enumerate()
    .map(|(i, op)| ApplyEntry {
        command: Some(
            Command {
                request_id: format!("r{i}"),
                time_ms: 5,
                op,
            }
            .into(),
        ),
    })
    .collect();
    let out = r.sm.apply(&entries, vec![9], None).unwrap();
    assert!(out.iter().all(|o| o.is_ok()), "{out:?}");
    assert_eq!(
        r.sm.key(&key_id("k1")).unwrap().unwrap().metadata.key_state,
        KeyState::Disabled
    );
    assert_eq!(r.sm.audit_head().unwrap().0, 3);
    assert!(r.sm.verify_audit_chain().unwrap().is_ok());
}

/// An export taken while audit batches keep being applied holds exactly the events up
/// to its own applied point, in key order, although apply went on while it copied them.
#[test]
fn an_export_during_apply_describes_one_point_of_the_log() {
    const PER_BATCH: u64 = 50;
    const BATCHES: u64 = 200;
    let runner = Runner::new();
    let sm = &runner.sm;
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for i in 1..=BATCHES {
                let records = (0..PER_BATCH)
                    .map(|j| record(&format!("e{i}-{j}")))
                    .collect();
                let cmd = Command {
                    request_id: String::new(),
                    time_ms: i,
                    op: Op::AuditBatch { records },
                };
                sm.apply(
                    &[ApplyEntry {
                        command: Some(cmd.into()),
                    }],
                    i.to_be_bytes().to_vec(),
                    None,
                )
                .unwrap();
            }
        });
        let mut exports = 0;
        while !writer.is_finished() || exports == 0 {
            let (snapshot, meta) = sm.export().unwrap();
            let applied = meta
                .last_applied
                .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap()));
            let events: u64 = snapshot
                .records
                .iter()
                .filter(|(k, _)| k.starts_with(keys::AUDIT_PREFIX))
                .map(|(_, v)| bincode::deserialize::<Vec<AuditEvent>>(v).unwrap().len() as u64)
                .sum();
            assert_eq!(events, applied * PER_BATCH, "export {exports}");
            assert!(snapshot.records.windows(2).all(|w| w[0].0 < w[1].0));
            exports += 1;
        }
    });
}

/// A group applies its commands in order, each with its own request id: a batch
/// forwarded again after an unknown outcome (alone, or inside another group) gets its
/// first response and adds no event; a group inside a group is refused.
#[test]
fn a_group_applies_each_command_once() {
    let mut r = Runner::new();
    r.run("bootstrap");
    let batch = |id: &str, names: &[&str]| Command {
        request_id: id.to_string(),
        time_ms: 5,
        op: Op::AuditBatch {
            records: names.iter().map(|n| record(n)).collect(),
        },
    };
    let group = |commands: Vec<Command>| Command {
        request_id: String::new(),
        time_ms: 6,
        op: Op::Group { commands },
    };
    let apply = |r: &Runner, cmd: Command, at: u8| {
        let mut out =
            r.sm.apply(
                &[ApplyEntry {
                    command: Some(cmd.into()),
                }],
                vec![at],
                None,
            )
            .unwrap();
        out.pop().unwrap()
    };
    let head = |r: &Runner| r.sm.audit_head().unwrap().0;
    let start = head(&r);

    let first = apply(
        &r,
        group(vec![
            batch("own", &["Encrypt", "Decrypt"]),
            batch("fwd", &["Sign"]),
        ]),
        10,
    );
    let Ok(Reply::Group(responses)) = &first else {
        panic!("{first:?}");
    };
    assert_eq!(
        responses,
        &vec![
            Ok(Reply::Audit(vec![None, None])),
            Ok(Reply::Audit(vec![None]))
        ]
    );
    assert_eq!(head(&r), start + 3);
    let names: Vec<String> =
        r.sm.audit_tail(3)
            .unwrap()
            .into_iter()
            .map(|e| e.record.event_name)
            .collect();
    assert_eq!(names, ["Encrypt", "Decrypt", "Sign"]);

    // The forwarded batch again, alone and inside a new group: its first response, no
    // new event; the new batch next to it is applied.
    assert_eq!(
        apply(&r, batch("fwd", &["Sign"]), 11),
        Ok(Reply::Audit(vec![None]))
    );
    let again = apply(
        &r,
        group(vec![batch("fwd", &["Sign"]), batch("new", &["Verify"])]),
        12,
    );
    assert_eq!(
        again,
        Ok(Reply::Group(vec![
            Ok(Reply::Audit(vec![None])),
            Ok(Reply::Audit(vec![None]))
        ]))
    );
    assert_eq!(head(&r), start + 4);

    let nested = apply(
        &r,
        group(vec![group(vec![batch("inner", &["Encrypt"])])]),
        13,
    );
    let Ok(Reply::Group(responses)) = nested else {
        panic!("{nested:?}");
    };
    assert!(matches!(&responses[..], [Err(e)] if e.code == ErrorCode::Validation));
    assert_eq!(head(&r), start + 4);
    assert!(r.sm.verify_audit_chain().unwrap().is_ok());
}

/// Callers' mutations grouped into one entry are each decided on their own, in order:
/// the quota counts the creates before them in the group, a repeated request id gets
/// its first response and creates nothing, a refusal leaves the others applied, and
/// each audited mutation leaves one event.
#[test]
fn a_group_of_mutations_decides_each_on_its_own() {
    let mut r = Runner::new();
    r.run("bootstrap");
    assert_eq!(
        r.run("quota set keys=2"),
        "quota: keys 0/2 aliases 0/1000 grants/key 1000"
    );
    let start = r.sm.audit_head().unwrap().0;
    let cmd = |id: &str, op: Op| Command {
        request_id: id.to_string(),
        time_ms: 7,
        op,
    };
    let group = Command {
        request_id: String::new(),
        time_ms: 7,
        op: Op::Group {
            commands: vec![
                cmd("a", create_key_op("k1")),
                cmd("a", create_key_op("k1")),
                cmd("b", create_key_op("k2")),
                cmd("c", create_key_op("k3")),
                cmd(
                    "d",
                    Op::SetKeyEnabled {
                        key_id: key_id("k1"),
                        enabled: false,
                        audit: Box::new(record("DisableKey")),
                    },
                ),
            ],
        },
    };
    let mut out =
        r.sm.apply(
            &[ApplyEntry {
                command: Some(group.into()),
            }],
            vec![50],
            None,
        )
        .unwrap();
    let Some(Ok(Reply::Group(responses))) = out.pop() else {
        panic!("not a group's response");
    };
    let key = |name: &str| r.sm.key(&key_id(name)).unwrap().map(|k| k.metadata);
    let (k1, k2) = (key("k1").unwrap(), key("k2").unwrap());
    assert!(matches!(&responses[0], Ok(Reply::Key(k)) if k.key_id == k1.key_id));
    assert_eq!(
        responses[1], responses[0],
        "a repeated request id is answered once"
    );
    assert!(matches!(&responses[2], Ok(Reply::Key(k)) if k.key_id == k2.key_id));
    assert!(
        matches!(&responses[3], Err(e) if e.code == ErrorCode::LimitExceeded),
        "{:?}",
        responses[3]
    );
    assert!(matches!(&responses[4], Ok(Reply::Key(k)) if k.key_state == KeyState::Disabled));
    assert!(key("k3").is_none());
    assert_eq!(k1.key_state, KeyState::Disabled);
    assert_eq!(r.run("quota"), "keys 2/2 aliases 0/1000");
    // Two creates, the refused one and the disable; the repeat adds nothing.
    assert_eq!(r.sm.audit_head().unwrap().0, start + 4);
    assert!(r.sm.verify_audit_chain().unwrap().is_ok());
}

/// The events of one entry share a stored chunk; a prune that ends inside a chunk keeps
/// the rest of it, which reads, hashes and verifies as before.
#[test]
fn a_prune_inside_a_chunk_keeps_its_later_events() {
    let mut r = Runner::new();
    r.run("bootstrap");
    let before = r.sm.audit_head().unwrap().0;
    let chunks = |r: &Runner| {
        r.sm.flush().unwrap();
        r.sm.tree().scan_prefix(keys::AUDIT_PREFIX).count()
    };
    let chunks_before = chunks(&r);
    let names = ["A", "B", "C", "D", "E"];
    let records = names.iter().map(|n| record(n)).collect();
    r.apply("", 10, Op::AuditBatch { records });
    assert_eq!(r.sm.audit_head().unwrap().0, before + 5);
    assert_eq!(chunks(&r), chunks_before + 1);

    let through = before + 3; // C
    let hash_d = r.sm.audit_hash_at(through + 1).unwrap().unwrap();
    r.run(&format!("exported through={through}"));
    assert_eq!(r.run(&format!("prune through={through}")), "ok");
    let left: Vec<(u64, String)> =
        r.sm.audit_events(0, 10)
            .unwrap()
            .into_iter()
            .map(|e| (e.sequence, e.record.event_name))
            .collect();
    let head = r.sm.audit_head().unwrap().0;
    assert_eq!(
        left[..2],
        [(through + 1, "D".into()), (through + 2, "E".into())]
    );
    // D, E and the events of the exported and prune commands, each in a chunk of its own.
    assert_eq!(left.len() as u64, head - through);
    assert_eq!(chunks(&r), 3);
    assert_eq!(r.sm.audit_hash_at(through + 1).unwrap(), Some(hash_d));
    assert_eq!(r.sm.audit_hash_at(through).unwrap(), None);
    assert_eq!(
        r.sm.audit_events(through + 2, 1).unwrap()[0]
            .record
            .event_name,
        "E"
    );
    // The walk starts at the checkpoint that stands for A, B and C.
    let check = r.sm.verify_audit_chain().unwrap();
    assert_eq!(check.verdict, Ok(r.sm.audit_head().unwrap()));
    assert_eq!(check.checkpoint.map(|c| c.through), Some(through));
}

/// A state tree of the first layout (one record per audit event) is brought to chunks
/// when it is opened, and reads and verifies as before.
#[test]
fn a_state_with_one_record_per_event_is_upgraded_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let durable = Durable::open(dir.path()).unwrap();
    let (events, head) = {
        let sm = StateMachine::open(&durable).unwrap();
        let records = ["A", "B", "C"].iter().map(|n| record(n)).collect();
        let cmd = Command {
            request_id: String::new(),
            time_ms: 1,
            op: Op::AuditBatch { records },
        };
        sm.apply(
            &[ApplyEntry {
                command: Some(cmd.into()),
            }],
            vec![1],
            None,
        )
        .unwrap();
        let events = sm.audit_events(1, 10).unwrap();
        sm.flush().unwrap();
        // Back to the first layout: one record per event, no format record.
        for item in sm.tree().scan_prefix(keys::AUDIT_PREFIX) {
            sm.tree().remove(item.unwrap().0).unwrap();
        }
        for e in &events {
            sm.tree()
                .insert(keys::audit(e.sequence), bincode::serialize(e).unwrap())
                .unwrap();
        }
        sm.tree().remove(keys::FORMAT).unwrap();
        (events, sm.audit_head().unwrap())
    };
    let sm = StateMachine::open(&durable).unwrap();
    assert_eq!(sm.audit_events(1, 10).unwrap(), events);
    assert_eq!(sm.verify_audit_chain().unwrap().verdict, Ok(head));
    assert_eq!(sm.tree().scan_prefix(keys::AUDIT_PREFIX).count(), 3);
}
