//! `IamService`: users and roles, their inline policies and access keys, AssumeRole.
//!
//! Every change is one Raft command (`Op::Iam`) and is authorized like any request:
//! the caller's principal policies must allow the IAM action (`iam:CreateUser`,
//! `iam:PutRolePolicy`, `sts:AssumeRole`...) on the target principal's ARN; the account's
//! root user may do everything in its account. Principals are per account: nobody
//! manages another account's principals.
//!
//! Secrets are made here, returned once, and stored only wrapped under the domain key.
//! A CreateAccessKey or AssumeRole retried with the same request id returns the key the
//! first attempt made (its secret unwrapped again), never a second key.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use keyraft_proto::v1::iam_service_server::IamService;
use keyraft_proto::v1::*;
use keyraft_state::{AccessKeyRecord, IamChange, Op, PrincipalKind, PrincipalRecord, Reply};
use keyraft_types::policy::{evaluate, AuthzPrincipal, AuthzRequest};
use keyraft_types::{AccountId, ErrorCode, KmsError, PolicyDocument, PolicyKind};

use crate::authn::secret_purpose;
use crate::core::{handler, Call, NodeCore};
use crate::kms::internal;

/// The client API's identity operations.
pub(crate) struct IamApi {
    core: Arc<NodeCore>,
}

impl IamApi {
    pub(crate) fn new(core: Arc<NodeCore>) -> IamApi {
        IamApi { core }
    }
}

macro_rules! method {
    ($name:literal) => {
        concat!("/keyraft.v1.IamService/", $name)
    };
}

/// AssumeRole's session duration bounds (seconds), as AWS.
const SESSION_SECONDS: std::ops::RangeInclusive<u32> = 900..=43_200;
const DEFAULT_SESSION_SECONDS: u32 = 3600;

fn kind_of(s: &str) -> Result<PrincipalKind, KmsError> {
    match s {
        "user" => Ok(PrincipalKind::User),
        "role" => Ok(PrincipalKind::Role),
        other => Err(KmsError::validation(format!(
            "kind must be user or role, not '{}'",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

/// IAM's name rule: 1–64 of letters, digits and `+=,.@_-`.
fn check_name(what: &str, name: &str, max: usize) -> Result<(), KmsError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(KmsError::validation(format!(
            "{what} must be 1 to {max} characters of letters, digits and +=,.@_-"
        )))
    }
}

/// A principal of the caller's account, named by ARN or as `user/NAME` / `role/NAME`,
/// parsed into (kind, name, full ARN).
fn own_principal(call: &Call, arn: &str) -> Result<(PrincipalKind, String, String), KmsError> {
    let prefix = format!("arn:keyraft:iam::{}:", call.principal.account);
    let full = if arn.starts_with("user/") || arn.starts_with("role/") {
        format!("{prefix}{arn}")
    } else {
        arn.to_string()
    };
    let rest = full.strip_prefix(&prefix).ok_or_else(|| {
        KmsError::new(
            ErrorCode::InvalidArn,
            format!(
                "'{}' is not a user or role ARN of account {}",
                arn.chars().take(256).collect::<String>(),
                call.principal.account
            ),
        )
    })?;
    let (kind, name) = rest
        .split_once('/')
        .ok_or_else(|| KmsError::new(ErrorCode::InvalidArn, "expected user/NAME or role/NAME"))?;
    let kind = kind_of(kind).map_err(|e| KmsError::new(ErrorCode::InvalidArn, e.message))?;
    check_name("name", name, 64)?;
    Ok((kind, name.to_string(), full.clone()))
}

fn iam_action(kind: PrincipalKind, user: &str, role: &str) -> String {
    format!(
        "iam:{}",
        match kind {
            PrincipalKind::User => user,
            PrincipalKind::Role => role,
        }
    )
}

fn to_proto(p: &PrincipalRecord) -> Principal {
    Principal {
        arn: p.arn.clone(),
        kind: p.kind.as_str().to_string(),
        name: p.name.clone(),
        account: p.account.to_string(),
        enabled: p.enabled,
        root: p.root,
        create_date: p.created_ms,
        policies: p.policies.clone().into_iter().collect(),
        trust_policy: p.trust_policy.clone().unwrap_or_default(),
        access_key_ids: p.access_keys.clone(),
    }
}

fn key_to_proto(k: &AccessKeyRecord, secret: String) -> AccessKey {
    AccessKey {
        access_key_id: k.access_key_id.clone(),
        secret_access_key: secret,
        principal_arn: k.principal_arn.clone(),
        status: if k.enabled { "Active" } else { "Inactive" }.to_string(),
        create_date: k.created_ms,
        expiration: k.expires_ms.unwrap_or(0),
    }
}

/// The trust policy a role gets when none is given: its account may assume it (the
/// root user directly, other principals if their own policies allow sts:AssumeRole).
fn default_trust_policy(account: &AccountId) -> String {
    format!(
        r#"{{
  "Version": "2012-10-17",
  "Statement": [
    {{
      "Sid": "Allow the account to assume the role",
      "Effect": "Allow",
      "Principal": {{"AWS": "arn:keyraft:iam::{account}:root"}},
      "Action": "sts:AssumeRole"
    }}
  ]
}}"#
    )
}

fn principal_reply(reply: Result<Reply, KmsError>) -> Result<PrincipalResponse, KmsError> {
    match reply? {
        Reply::Principal(p) => Ok(PrincipalResponse {
            principal: Some(to_proto(&p)),
        }),
        other => {
            tracing::error!(?other, "unexpected reply");
            Err(KmsError::internal())
        }
    }
}

impl NodeCore {
    /// Loads a principal of the caller's account and authorizes `action` on it.
    async fn target_principal(
        &self,
        call: &mut Call,
        arn: &str,
        user_action: &str,
        role_action: &str,
    ) -> Result<PrincipalRecord, KmsError> {
        let (kind, _, arn) = own_principal(call, arn)?;
        let arn = arn.as_str();
        self.authorize_action(call, &iam_action(kind, user_action, role_action), arn)
            .await?;
        call.record.resources.push(arn.to_string());
        self.read_barrier().await?;
        self.state.principal(arn).map_err(internal)?.ok_or_else(|| {
            KmsError::new(
                ErrorCode::NotFound,
                format!("The principal {arn} cannot be found."),
            )
        })
    }

    /// Authorizes an IAM action on a principal of the caller's account and commits the
    /// change `f` makes for it; answers with the principal after the change.
    async fn change_principal(
        &self,
        call: &mut Call,
        arn: &str,
        (user_action, role_action): (&str, &str),
        request_id: String,
        f: impl FnOnce(String) -> IamChange,
    ) -> Result<PrincipalResponse, KmsError> {
        let p = self
            .target_principal(call, arn, user_action, role_action)
            .await?;
        principal_reply(self.iam_change(call, request_id, f(p.arn)).await)
    }

    async fn iam_change(
        &self,
        call: &mut Call,
        request_id: String,
        change: IamChange,
    ) -> Result<Reply, KmsError> {
        self.mutate(call, request_id, |audit| Op::Iam { change, audit })
            .await
    }

    /// Makes an access key (or session credentials), commits it, and returns it with its
    /// secret — or, for a retry of a request that already made one, that one.
    async fn issue_key(
        &self,
        call: &mut Call,
        request_id: String,
        mut record: AccessKeyRecord,
        session: bool,
    ) -> Result<AccessKey, KmsError> {
        let (mut id, secret) = crate::join::generate_access_key();
        if session {
            id.replace_range(0..2, "KS");
        }
        record.wrapped_secret = self
            .hsm
            .wrap_secret(secret.as_bytes(), &secret_purpose(&id))?;
        record.access_key_id = id.clone();
        let reply = self
            .iam_change(
                call,
                request_id,
                IamChange::CreateAccessKey(Box::new(record.clone())),
            )
            .await?;
        let Reply::AccessKey(made) = reply else {
            tracing::error!(?reply, "unexpected reply");
            return Err(KmsError::internal());
        };
        if made == id {
            return Ok(key_to_proto(&record, secret));
        }
        // A retry: the first attempt's key, with its secret unwrapped again.
        self.read_barrier().await?;
        let first = self
            .state
            .access_key(&made)
            .map_err(internal)?
            .ok_or_else(KmsError::internal)?;
        let secret = self
            .hsm
            .unwrap_secret(&first.wrapped_secret, &secret_purpose(&made))?;
        let secret = String::from_utf8(secret.to_vec()).map_err(|_| KmsError::internal())?;
        Ok(key_to_proto(&first, secret))
    }
}

async fn create_principal(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: CreatePrincipalRequest,
) -> Result<PrincipalResponse, KmsError> {
    let kind = kind_of(&req.kind)?;
    check_name("name", &req.name, 64)?;
    let account = call.principal.account.clone();
    let arn = format!("arn:keyraft:iam::{account}:{}/{}", kind.as_str(), req.name);
    call.record.resources.push(arn.clone());
    core.authorize_action(call, &iam_action(kind, "CreateUser", "CreateRole"), &arn)
        .await?;
    let trust_policy = match kind {
        PrincipalKind::User if !req.trust_policy.is_empty() => {
            return Err(KmsError::validation("only roles have a trust policy"))
        }
        PrincipalKind::User => None,
        PrincipalKind::Role if req.trust_policy.is_empty() => Some(default_trust_policy(&account)),
        PrincipalKind::Role => {
            // A trust policy is a resource policy: it must name principals.
            Some(
                PolicyDocument::parse(&req.trust_policy, PolicyKind::Key)?
                    .text()
                    .to_string(),
            )
        }
    };
    let record = PrincipalRecord {
        arn,
        account,
        kind,
        name: req.name,
        created_ms: core.clock.now_ms(),
        enabled: true,
        root: false,
        policies: BTreeMap::new(),
        trust_policy,
        access_keys: Vec::new(),
        epoch: 0,
    };
    principal_reply(
        core.iam_change(
            call,
            req.request_id,
            IamChange::CreatePrincipal(Box::new(record)),
        )
        .await,
    )
}

async fn assume_role(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: AssumeRoleRequest,
) -> Result<AssumeRoleResponse, KmsError> {
    check_name("role_session_name", &req.role_session_name, 64)?;
    let seconds = match req.duration_seconds {
        0 => DEFAULT_SESSION_SECONDS,
        s if SESSION_SECONDS.contains(&s) => s,
        s => {
            return Err(KmsError::validation(format!(
                "Value '{s}' at 'durationSeconds' failed to satisfy constraint: Member must have value between 900 and 43200"
            )))
        }
    };
    call.record.resources.push(req.role_arn.clone());
    let (kind, role_name, role_arn) = own_principal(call, &req.role_arn)?;
    let denied = || {
        KmsError::new(
            ErrorCode::AccessDenied,
            format!(
                "User: {} is not authorized to perform: sts:AssumeRole on resource: {}",
                call.principal.arn, req.role_arn
            ),
        )
    };
    if kind != PrincipalKind::Role {
        return Err(denied());
    }
    core.read_barrier().await?;
    let role = core
        .state
        .principal(&role_arn)
        .map_err(internal)?
        .filter(|r| r.enabled)
        .ok_or_else(denied)?;
    // The trust policy is the role's resource policy: it allows the caller directly, or
    // delegates to the caller's account, whose principal policies then decide.
    let trust = PolicyDocument::parse(
        role.trust_policy.as_deref().unwrap_or_default(),
        PolicyKind::Key,
    )
    .map_err(|_| denied())?;
    // A stored policy that no longer parses denies, as in every other decision.
    let own = keyraft_state::authz::principal_policies(&call.principal.holder)?;
    let refs: Vec<&PolicyDocument> = own.iter().map(|p| &**p).collect();
    let caller = AuthzPrincipal::parse(&call.principal.caller_arn)?;
    let question = AuthzRequest::new(caller, "sts:AssumeRole", role_arn.clone())
        .with_time_ms(call.record.event_time_ms);
    evaluate(Some(&trust), &refs, false, &question).into_result(&question)?;
    let account = call.principal.account.clone();
    let session_arn = format!(
        "arn:keyraft:sts::{account}:assumed-role/{role_name}/{}",
        req.role_session_name
    );
    let now = core.clock.now_ms();
    let record = AccessKeyRecord {
        access_key_id: String::new(),
        principal_arn: session_arn.clone(),
        account,
        wrapped_secret: Vec::new(),
        enabled: true,
        created_ms: now,
        expires_ms: Some(now + u64::from(seconds) * 1000),
        role_arn: Some(role_arn),
    };
    let credentials = core.issue_key(call, req.request_id, record, true).await?;
    Ok(AssumeRoleResponse {
        assumed_role_arn: credentials.principal_arn.clone(),
        credentials: Some(credentials),
    })
}

#[tonic::async_trait]
impl IamService for IamApi {
    async fn create_principal(
        &self,
        request: Request<CreatePrincipalRequest>,
    ) -> Result<Response<PrincipalResponse>, Status> {
        self.core
            .run(
                request,
                "CreatePrincipal",
                method!("CreatePrincipal"),
                false,
                handler!(|core, call, req| { create_principal(core, call, req).await }),
            )
            .await
    }

    async fn delete_principal(
        &self,
        request: Request<DeletePrincipalRequest>,
    ) -> Result<Response<DeletePrincipalResponse>, Status> {
        self.core
            .run(
                request,
                "DeletePrincipal",
                method!("DeletePrincipal"),
                false,
                handler!(|core, call, req| {
                    let p = core
                        .target_principal(call, &req.arn, "DeleteUser", "DeleteRole")
                        .await?;
                    core.iam_change(
                        call,
                        req.request_id,
                        IamChange::DeletePrincipal { arn: p.arn.clone() },
                    )
                    .await?;
                    for id in &p.access_keys {
                        core.authn.forget(id);
                    }
                    Ok(DeletePrincipalResponse {})
                }),
            )
            .await
    }

    async fn set_principal_enabled(
        &self,
        request: Request<SetPrincipalEnabledRequest>,
    ) -> Result<Response<PrincipalResponse>, Status> {
        self.core
            .run(
                request,
                "SetPrincipalEnabled",
                method!("SetPrincipalEnabled"),
                false,
                handler!(|core, call, req| {
                    let enabled = req.enabled;
                    core.change_principal(
                        call,
                        &req.arn,
                        ("UpdateUser", "UpdateRole"),
                        req.request_id,
                        |arn| IamChange::SetPrincipalEnabled { arn, enabled },
                    )
                    .await
                }),
            )
            .await
    }

    async fn get_principal(
        &self,
        request: Request<GetPrincipalRequest>,
    ) -> Result<Response<PrincipalResponse>, Status> {
        self.core
            .run(
                request,
                "GetPrincipal",
                method!("GetPrincipal"),
                true,
                handler!(|core, call, req| {
                    let p = core
                        .target_principal(call, &req.arn, "GetUser", "GetRole")
                        .await?;
                    Ok(PrincipalResponse {
                        principal: Some(to_proto(&p)),
                    })
                }),
            )
            .await
    }

    async fn list_principals(
        &self,
        request: Request<ListPrincipalsRequest>,
    ) -> Result<Response<ListPrincipalsResponse>, Status> {
        self.core
            .run(
                request,
                "ListPrincipals",
                method!("ListPrincipals"),
                true,
                handler!(|core, call, req| {
                    let kind = kind_of(&req.kind)?;
                    core.authorize_action(call, &iam_action(kind, "ListUsers", "ListRoles"), "*")
                        .await?;
                    core.read_barrier().await?;
                    let list = core
                        .state
                        .principals(&call.principal.account, kind)
                        .map_err(internal)?;
                    Ok(ListPrincipalsResponse {
                        principals: list.iter().map(to_proto).collect(),
                    })
                }),
            )
            .await
    }

    async fn put_principal_policy(
        &self,
        request: Request<PutPrincipalPolicyRequest>,
    ) -> Result<Response<PrincipalResponse>, Status> {
        self.core
            .run(
                request,
                "PutPrincipalPolicy",
                method!("PutPrincipalPolicy"),
                false,
                handler!(|core, call, req| {
                    check_name("policy_name", &req.policy_name, 128)?;
                    let document = PolicyDocument::parse(&req.policy, PolicyKind::Principal)?;
                    let name = req.policy_name;
                    let document = document.text().to_string();
                    core.change_principal(
                        call,
                        &req.arn,
                        ("PutUserPolicy", "PutRolePolicy"),
                        req.request_id,
                        |arn| IamChange::PutPolicy {
                            arn,
                            name,
                            document,
                        },
                    )
                    .await
                }),
            )
            .await
    }

    async fn delete_principal_policy(
        &self,
        request: Request<DeletePrincipalPolicyRequest>,
    ) -> Result<Response<PrincipalResponse>, Status> {
        self.core
            .run(
                request,
                "DeletePrincipalPolicy",
                method!("DeletePrincipalPolicy"),
                false,
                handler!(|core, call, req| {
                    let name = req.policy_name;
                    core.change_principal(
                        call,
                        &req.arn,
                        ("DeleteUserPolicy", "DeleteRolePolicy"),
                        req.request_id,
                        |arn| IamChange::DeletePolicy { arn, name },
                    )
                    .await
                }),
            )
            .await
    }

    async fn create_access_key(
        &self,
        request: Request<CreateAccessKeyRequest>,
    ) -> Result<Response<CreateAccessKeyResponse>, Status> {
        self.core
            .run(
                request,
                "CreateAccessKey",
                method!("CreateAccessKey"),
                false,
                handler!(|core, call, req| {
                    let arn = if req.arn.is_empty() {
                        call.principal.arn.clone()
                    } else {
                        req.arn.clone()
                    };
                    let p = core
                        .target_principal(call, &arn, "CreateAccessKey", "CreateAccessKey")
                        .await?;
                    let record = AccessKeyRecord {
                        access_key_id: String::new(),
                        principal_arn: p.arn,
                        account: p.account,
                        wrapped_secret: Vec::new(),
                        enabled: true,
                        created_ms: core.clock.now_ms(),
                        expires_ms: None,
                        role_arn: None,
                    };
                    let key = core.issue_key(call, req.request_id, record, false).await?;
                    Ok(CreateAccessKeyResponse {
                        access_key: Some(key),
                    })
                }),
            )
            .await
    }

    async fn delete_access_key(
        &self,
        request: Request<DeleteAccessKeyRequest>,
    ) -> Result<Response<DeleteAccessKeyResponse>, Status> {
        self.core
            .run(
                request,
                "DeleteAccessKey",
                method!("DeleteAccessKey"),
                false,
                handler!(|core, call, req| {
                    let owner = access_key_owner(&core, call, &req.access_key_id).await?;
                    core.target_principal(call, &owner, "DeleteAccessKey", "DeleteAccessKey")
                        .await?;
                    core.iam_change(
                        call,
                        req.request_id,
                        IamChange::DeleteAccessKey {
                            access_key_id: req.access_key_id.clone(),
                        },
                    )
                    .await?;
                    core.authn.forget(&req.access_key_id);
                    Ok(DeleteAccessKeyResponse {})
                }),
            )
            .await
    }

    async fn set_access_key_enabled(
        &self,
        request: Request<SetAccessKeyEnabledRequest>,
    ) -> Result<Response<SetAccessKeyEnabledResponse>, Status> {
        self.core
            .run(
                request,
                "SetAccessKeyEnabled",
                method!("SetAccessKeyEnabled"),
                false,
                handler!(|core, call, req| {
                    let owner = access_key_owner(&core, call, &req.access_key_id).await?;
                    core.target_principal(call, &owner, "UpdateAccessKey", "UpdateAccessKey")
                        .await?;
                    core.iam_change(
                        call,
                        req.request_id,
                        IamChange::SetAccessKeyEnabled {
                            access_key_id: req.access_key_id,
                            enabled: req.enabled,
                        },
                    )
                    .await?;
                    Ok(SetAccessKeyEnabledResponse {})
                }),
            )
            .await
    }

    async fn list_access_keys(
        &self,
        request: Request<ListAccessKeysRequest>,
    ) -> Result<Response<ListAccessKeysResponse>, Status> {
        self.core
            .run(
                request,
                "ListAccessKeys",
                method!("ListAccessKeys"),
                true,
                handler!(|core, call, req| {
                    let arn = if req.arn.is_empty() {
                        call.principal.arn.clone()
                    } else {
                        req.arn.clone()
                    };
                    let p = core
                        .target_principal(call, &arn, "ListAccessKeys", "ListAccessKeys")
                        .await?;
                    let mut keys = Vec::new();
                    for id in &p.access_keys {
                        if let Some(k) = core.state.access_key(id).map_err(internal)? {
                            keys.push(key_to_proto(&k, String::new()));
                        }
                    }
                    Ok(ListAccessKeysResponse { access_keys: keys })
                }),
            )
            .await
    }

    async fn assume_role(
        &self,
        request: Request<AssumeRoleRequest>,
    ) -> Result<Response<AssumeRoleResponse>, Status> {
        self.core
            .run(
                request,
                "AssumeRole",
                method!("AssumeRole"),
                false,
                handler!(|core, call, req| { assume_role(core, call, req).await }),
            )
            .await
    }
}

/// The user an access key of the caller's account belongs to.
async fn access_key_owner(
    core: &NodeCore,
    call: &mut Call,
    access_key_id: &str,
) -> Result<String, KmsError> {
    let not_found = || {
        KmsError::new(
            ErrorCode::NotFound,
            format!(
                "The access key {} cannot be found.",
                access_key_id.chars().take(128).collect::<String>()
            ),
        )
    };
    core.read_barrier().await?;
    let key = core
        .state
        .access_key(access_key_id)
        .map_err(internal)?
        .filter(|k| k.account == call.principal.account && k.role_arn.is_none())
        .ok_or_else(not_found)?;
    Ok(key.principal_arn)
}
