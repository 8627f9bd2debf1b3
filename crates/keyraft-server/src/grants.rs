//! Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.
//!
//! A grant is committed through Raft before CreateGrant answers, and a refusal is only
//! given after a read barrier, so a grant is usable at once on every node; the grant
//! token it returns is needed only to retire it by token. Retiring or revoking bumps the
//! key's epoch, so a request the grant allowed that has not committed yet is refused.

use std::sync::Arc;

use rand::RngCore;

use keyraft_proto::v1::*;
use keyraft_state::{GrantRecord, Op, Reply};
use keyraft_types::policy::{AuthzPrincipal, GrantOperation, PrincipalId};
use keyraft_types::{ErrorCode, Grant, KeyId, KmsError};

use crate::core::{Call, NodeCore};
use crate::kms::internal;

const TOKEN_PREFIX: &str = "KRGT1";

fn token_of(key_id: &KeyId, grant_id: &str) -> String {
    format!("{TOKEN_PREFIX}.{key_id}.{grant_id}")
}

fn parse_token(token: &str) -> Result<(KeyId, String), KmsError> {
    let bad = || {
        KmsError::new(
            ErrorCode::InvalidGrantToken,
            "The grant token is not valid.",
        )
    };
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(TOKEN_PREFIX), Some(key), Some(grant), None) => {
            Ok((KeyId::parse(key).map_err(|_| bad())?, grant.to_string()))
        }
        _ => Err(bad()),
    }
}

fn constraints_of(c: Option<GrantConstraints>) -> Option<keyraft_types::GrantConstraints> {
    c.map(|c| keyraft_types::GrantConstraints {
        encryption_context_equals: (!c.encryption_context_equals.is_empty())
            .then(|| c.encryption_context_equals.into_iter().collect()),
        encryption_context_subset: (!c.encryption_context_subset.is_empty())
            .then(|| c.encryption_context_subset.into_iter().collect()),
    })
}

fn entry(g: &GrantRecord, key_arn: &str) -> GrantListEntry {
    let c = g.grant.constraints();
    GrantListEntry {
        key_id: key_arn.to_string(),
        grant_id: g.grant_id.clone(),
        name: g.name.clone(),
        creation_date: g.creation_ms,
        grantee_principal: g.grant.grantee_principal().to_string(),
        retiring_principal: g.retiring_principal.clone().unwrap_or_default(),
        issuing_account: format!("arn:keyraft:iam::{}:root", g.issuing_account),
        operations: g
            .grant
            .operations()
            .iter()
            .map(|o| o.as_str().to_string())
            .collect(),
        constraints: c.map(|c| GrantConstraints {
            encryption_context_equals: c
                .encryption_context_equals
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            encryption_context_subset: c
                .encryption_context_subset
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }),
    }
}

pub(crate) async fn create_grant(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: CreateGrantRequest,
) -> Result<CreateGrantResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    let operations = req
        .operations
        .iter()
        .map(|o| GrantOperation::parse(o))
        .collect::<Result<Vec<_>, _>>()?;
    let grant = Grant::new(
        &req.grantee_principal,
        &operations,
        constraints_of(req.constraints),
    )?;
    if !req.retiring_principal.is_empty() {
        PrincipalId::parse(&req.retiring_principal)?;
    }
    if req.name.len() > 256 {
        return Err(KmsError::validation("name must be at most 256 characters"));
    }
    let key = core.load_key(call, &req.key_id).await?;
    core.authorize_key_with(call, &key, Some(&grant)).await?;
    call.record.resources.push(key.metadata.arn.clone());
    let mut id = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    let grant_id = hex::encode(id);
    let record = GrantRecord {
        token: token_of(&key.metadata.key_id, &grant_id),
        grant_id,
        key_id: key.metadata.key_id.clone(),
        name: req.name,
        grant,
        retiring_principal: (!req.retiring_principal.is_empty()).then_some(req.retiring_principal),
        issuing_account: call.principal.account.clone(),
        creation_ms: core.clock.now_ms(),
    };
    match core
        .mutate(call, req.request_id, |audit| Op::CreateGrant {
            grant: Box::new(record),
            audit,
        })
        .await?
    {
        Reply::Grant { grant_id, token } => Ok(CreateGrantResponse {
            grant_id,
            grant_token: token,
        }),
        other => {
            tracing::error!(?other, "unexpected reply to CreateGrant");
            Err(KmsError::internal())
        }
    }
}

pub(crate) async fn list_grants(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: ListGrantsRequest,
) -> Result<ListGrantsResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    core.read_barrier().await?;
    let key = core.owned_key(call, &req.key_id).await?;
    call.record.resources.push(key.metadata.arn.clone());
    let grants = core.state.grants_of(&key).map_err(internal)?;
    Ok(ListGrantsResponse {
        grants: grants
            .iter()
            .filter(|g| req.grant_id.is_empty() || g.grant_id == req.grant_id)
            .filter(|g| {
                req.grantee_principal.is_empty()
                    || g.grant.grantee_principal() == req.grantee_principal
            })
            .map(|g| entry(g, &key.metadata.arn))
            .collect(),
        truncated: false,
    })
}

pub(crate) async fn list_retirable_grants(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: ListRetirableGrantsRequest,
) -> Result<ListGrantsResponse, KmsError> {
    let principal = PrincipalId::parse(&req.retiring_principal)?;
    if principal.account() != Some(&call.principal.account) {
        return Err(KmsError::new(
            ErrorCode::AccessDenied,
            "only principals of the caller's account can be listed",
        ));
    }
    core.authorize_action(call, "kms:ListRetirableGrants", &req.retiring_principal)
        .await?;
    core.read_barrier().await?;
    let grants = core
        .state
        .retirable_grants(&req.retiring_principal)
        .map_err(internal)?;
    let mut out = Vec::new();
    for g in &grants {
        let arn = core
            .state
            .key(&g.key_id)
            .map_err(internal)?
            .map(|k| k.metadata.arn)
            .unwrap_or_default();
        out.push(entry(g, &arn));
    }
    Ok(ListGrantsResponse {
        grants: out,
        truncated: false,
    })
}

/// Removes a grant once the request has named it and been authorized.
async fn remove(
    core: &NodeCore,
    call: &mut Call,
    key_id: KeyId,
    grant_id: String,
    request_id: String,
) -> Result<(), KmsError> {
    core.mutate(call, request_id, |audit| Op::RemoveGrant {
        key_id,
        grant_id,
        audit,
    })
    .await
    .map(|_| ())
}

pub(crate) async fn retire_grant(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: RetireGrantRequest,
) -> Result<RetireGrantResponse, KmsError> {
    let (key_id, grant_id) = if !req.grant_token.is_empty() {
        parse_token(&req.grant_token)?
    } else if !req.key_id.is_empty() && !req.grant_id.is_empty() {
        (
            core.resolve_key(call, &req.key_id).await?,
            req.grant_id.clone(),
        )
    } else {
        return Err(KmsError::validation(
            "give a grant token, or a key id and a grant id",
        ));
    };
    call.record.request_parameters.key_id = Some(key_id.to_string());
    core.read_barrier().await?;
    let grant = core
        .state
        .grant(&grant_id)
        .map_err(internal)?
        .filter(|g| g.key_id == key_id)
        .ok_or_else(|| {
            KmsError::new(
                ErrorCode::InvalidGrantId,
                format!("Grant {grant_id} is not a grant of key {key_id}"),
            )
        })?;
    // Who may retire a grant, as AWS has it: its retiring principal, its grantee if the
    // grant includes RetireGrant, and the account that created it.
    let caller = AuthzPrincipal::parse(&call.principal.caller_arn)?;
    let names = |arn: &str| PrincipalId::parse(arn).is_ok_and(|p| p.names(caller.id()));
    let allowed = grant.retiring_principal.as_deref().is_some_and(names)
        || (grant
            .grant
            .operations()
            .contains(&GrantOperation::RetireGrant)
            && names(grant.grant.grantee_principal()))
        || (caller.is_account_root() && caller.account() == &grant.issuing_account);
    if !allowed {
        return Err(KmsError::new(
            ErrorCode::AccessDenied,
            format!(
                "User: {} is not authorized to retire grant {grant_id}",
                call.principal.arn
            ),
        ));
    }
    remove(&core, call, key_id, grant_id, req.request_id).await?;
    Ok(RetireGrantResponse {})
}

pub(crate) async fn revoke_grant(
    core: Arc<NodeCore>,
    call: &mut Call,
    req: RevokeGrantRequest,
) -> Result<RevokeGrantResponse, KmsError> {
    call.record.request_parameters.key_id = Some(req.key_id.clone());
    let key = core.owned_key(call, &req.key_id).await?;
    call.record.resources.push(key.metadata.arn.clone());
    remove(
        &core,
        call,
        key.metadata.key_id,
        req.grant_id,
        req.request_id,
    )
    .await?;
    Ok(RevokeGrantResponse {})
}
