//! Apply of identity changes: principals, their inline policies and access keys.
//!
//! The proposer validates names and policy documents and makes ids and wrapped secrets;
//! apply decides only what depends on the state (does it exist, how many keys, is it the
//! root user), so every replica reaches the same answer.

use keyraft_types::{ErrorCode, KmsError};

use super::{not_bootstrapped, StateError, Txn};
use crate::command::{
    AccessKeyRecord, ClusterConfig, IamChange, PrincipalKind, PrincipalRecord, Reply, Response,
};
use crate::keys;

/// Long-term access keys a user may hold at once (as AWS IAM): two, so that a key can be
/// rotated without downtime.
pub const MAX_ACCESS_KEYS: usize = 2;

/// Inline policies per principal.
pub const MAX_INLINE_POLICIES: usize = 10;

fn no_such_principal(arn: &str) -> KmsError {
    KmsError::new(
        ErrorCode::NotFound,
        format!("The principal {arn} cannot be found."),
    )
}

fn no_such_access_key(id: &str) -> KmsError {
    KmsError::new(
        ErrorCode::NotFound,
        format!("The access key {id} cannot be found."),
    )
}

fn refuse_root(p: &PrincipalRecord, what: &str) -> Option<KmsError> {
    p.root.then(|| {
        KmsError::new(
            ErrorCode::Validation,
            format!("{} is the account's root user: it cannot be {what}", p.arn),
        )
    })
}

/// The principal after `change`, saved with its epoch bumped.
fn save(txn: &mut Txn<'_>, mut p: PrincipalRecord) -> Result<Response, StateError> {
    p.epoch += 1;
    txn.put(keys::principal(&p.arn), &p)?;
    Ok(Ok(Reply::Principal(Box::new(p))))
}

pub(super) fn apply(txn: &mut Txn<'_>, change: &IamChange) -> Result<Response, StateError> {
    if txn.get::<ClusterConfig>(keys::CLUSTER)?.is_none() {
        return Ok(Err(not_bootstrapped()));
    }
    let load = |txn: &Txn<'_>, arn: &str| txn.get::<PrincipalRecord>(&keys::principal(arn));
    match change {
        IamChange::CreatePrincipal(p) => {
            if load(txn, &p.arn)?.is_some() {
                return Ok(Err(KmsError::new(
                    ErrorCode::AlreadyExists,
                    format!("{} already exists.", p.arn),
                )));
            }
            let mut p = (**p).clone();
            p.access_keys.clear();
            p.epoch = 0;
            save(txn, p)
        }
        IamChange::DeletePrincipal { arn } => {
            let Some(p) = load(txn, arn)? else {
                return Ok(Err(no_such_principal(arn)));
            };
            if let Some(e) = refuse_root(&p, "deleted") {
                return Ok(Err(e));
            }
            for id in &p.access_keys {
                txn.delete(keys::access_key(id));
            }
            txn.delete(keys::principal(arn));
            Ok(Ok(Reply::Unit))
        }
        IamChange::SetPrincipalEnabled { arn, enabled } => {
            let Some(mut p) = load(txn, arn)? else {
                return Ok(Err(no_such_principal(arn)));
            };
            if !enabled {
                if let Some(e) = refuse_root(&p, "disabled") {
                    return Ok(Err(e));
                }
            }
            p.enabled = *enabled;
            save(txn, p)
        }
        IamChange::PutPolicy {
            arn,
            name,
            document,
        } => {
            let Some(mut p) = load(txn, arn)? else {
                return Ok(Err(no_such_principal(arn)));
            };
            if !p.policies.contains_key(name) && p.policies.len() >= MAX_INLINE_POLICIES {
                return Ok(Err(KmsError::new(
                    ErrorCode::LimitExceeded,
                    format!("{arn} already has {MAX_INLINE_POLICIES} inline policies"),
                )));
            }
            p.policies.insert(name.clone(), document.clone());
            save(txn, p)
        }
        IamChange::DeletePolicy { arn, name } => {
            let Some(mut p) = load(txn, arn)? else {
                return Ok(Err(no_such_principal(arn)));
            };
            if p.policies.remove(name).is_none() {
                return Ok(Err(KmsError::new(
                    ErrorCode::NotFound,
                    format!("{arn} has no policy named {name}."),
                )));
            }
            save(txn, p)
        }
        IamChange::CreateAccessKey(key) => create_access_key(txn, key),
        IamChange::DeleteAccessKey { access_key_id } => {
            let Some(key) = txn.get::<AccessKeyRecord>(&keys::access_key(access_key_id))? else {
                return Ok(Err(no_such_access_key(access_key_id)));
            };
            txn.delete(keys::access_key(access_key_id));
            if let Some(mut p) = load(txn, &key.principal_arn)? {
                p.access_keys.retain(|id| id != access_key_id);
                return save(txn, p);
            }
            Ok(Ok(Reply::Unit))
        }
        IamChange::SetAccessKeyEnabled {
            access_key_id,
            enabled,
        } => {
            let Some(mut key) = txn.get::<AccessKeyRecord>(&keys::access_key(access_key_id))?
            else {
                return Ok(Err(no_such_access_key(access_key_id)));
            };
            key.enabled = *enabled;
            txn.put(keys::access_key(access_key_id), &key)?;
            Ok(Ok(Reply::Unit))
        }
    }
}

fn create_access_key(txn: &mut Txn<'_>, key: &AccessKeyRecord) -> Result<Response, StateError> {
    if txn
        .get::<AccessKeyRecord>(&keys::access_key(&key.access_key_id))?
        .is_some()
    {
        return Ok(Err(KmsError::new(
            ErrorCode::AlreadyExists,
            format!("access key {} already exists", key.access_key_id),
        )));
    }
    // Temporary credentials belong to a session of a role; long-term keys to a user.
    let (owner, kind) = match &key.role_arn {
        Some(role) => (role.as_str(), PrincipalKind::Role),
        None => (key.principal_arn.as_str(), PrincipalKind::User),
    };
    let Some(mut p) = txn.get::<PrincipalRecord>(&keys::principal(owner))? else {
        return Ok(Err(no_such_principal(owner)));
    };
    if p.kind != kind || (kind == PrincipalKind::Role) != key.expires_ms.is_some() {
        return Ok(Err(KmsError::validation(format!(
            "{owner} is a {}: {}",
            p.kind.as_str(),
            if p.kind == PrincipalKind::Role {
                "it has only temporary credentials, from AssumeRole"
            } else {
                "its access keys are long-term"
            }
        ))));
    }
    if !p.enabled {
        return Ok(Err(KmsError::new(
            ErrorCode::Validation,
            format!("{owner} is disabled"),
        )));
    }
    // Every refusal comes before the first write: a refused command changes nothing.
    if kind == PrincipalKind::User {
        if p.access_keys.len() >= MAX_ACCESS_KEYS {
            return Ok(Err(KmsError::new(
                ErrorCode::LimitExceeded,
                format!("Cannot exceed quota for AccessKeysPerUser: {MAX_ACCESS_KEYS}"),
            )));
        }
        p.access_keys.push(key.access_key_id.clone());
        txn.put(keys::principal(owner), &p)?;
    }
    txn.put(keys::access_key(&key.access_key_id), key)?;
    Ok(Ok(Reply::AccessKey(key.access_key_id.clone())))
}
