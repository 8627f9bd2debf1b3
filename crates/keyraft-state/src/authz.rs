//! Authorization: the one decision that the serving node makes and apply repeats.
//!
//! A request is decided twice over the same pure evaluator
//! ([`keyraft_types::policy::evaluate`]): first by the node that receives it, on its
//! replica, and again inside apply *if* a policy it read has changed in between — the
//! key's epoch (PutKeyPolicy, enable/disable...) or the principal's epoch (its inline
//! policies, its being disabled). The node records what it read in an
//! [`AuthzCheck`]; apply compares epochs and, when one moved, decides again from the
//! state at that point of the log, with the time and encryption context the node saw.
//! Only apply's verdict is released, so a permission revoked before a request commits is
//! never used after the revocation, on any node.
//!
//! Inputs are the caller, the principal that holds the policies (the user, or the role
//! of an assumed-role session), the key (its policy, or the default key policy of its
//! account), the action, and the condition values. Nothing here reads a clock.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use keyraft_types::policy::{
    evaluate, AllowedBy, AuthzPrincipal, AuthzRequest, GrantOperation, GrantRequest, ANY_RESOURCE,
};
use keyraft_types::{
    AccountId, AuthzCheck, EncryptionContext, ErrorCode, KmsError, PolicyDocument, PolicyKind,
};

use crate::command::{GrantRecord, KeyRecord, PrincipalRecord};

/// The ARN the evaluator sees for a caller: the account root ARN for a root user, else
/// the authenticated ARN.
pub fn caller_arn(authenticated_arn: &str, holder: &PrincipalRecord) -> String {
    if holder.root {
        root_arn(&holder.account)
    } else {
        authenticated_arn.to_string()
    }
}

/// `arn:keyraft:iam::<account>:root`.
pub fn root_arn(account: &AccountId) -> String {
    format!("arn:keyraft:iam::{account}:root")
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    /// The caller as the evaluator sees it ([`caller_arn`]).
    pub caller_arn: &'a str,
    /// The principal whose policies apply; `None` if it no longer exists.
    pub holder: Option<&'a PrincipalRecord>,
    /// The key, for a key's action.
    pub key: Option<&'a KeyRecord>,
    /// The action, e.g. `kms:Encrypt`.
    pub action: &'a str,
    /// The resource when there is no key (`*` or a principal ARN).
    pub resource: &'a str,
    /// The encryption context of the request, for `kms:EncryptionContext:` conditions.
    pub encryption_context: Option<&'a EncryptionContext>,
    /// The request's time (ms since the Unix epoch, the serving node's clock).
    pub time_ms: u64,
    /// The key's grants.
    pub grants: &'a [GrantRecord],
    /// For CreateGrant: the grant to be created (a grant with CreateGrant may only pass
    /// on what it has).
    pub new_grant: Option<&'a keyraft_types::Grant>,
}

fn denied(message: String) -> KmsError {
    KmsError::new(ErrorCode::AccessDenied, message)
}

/// Where a parsed policy came from.
#[derive(PartialEq, Eq, Hash)]
enum Source {
    /// A stored document of a kind, by its text.
    Stored(PolicyKind, String),
    /// The default key policy of an account.
    DefaultKey(AccountId),
}

/// The most policies [`PARSED`] holds; past it, it starts again empty.
const PARSED_MAX: usize = 1024;
/// The most bytes of policy text [`PARSED`] holds; past it, it starts again empty.
const PARSED_MAX_BYTES: usize = 4 << 20;

/// Policies parsed lately. A document is a pure function of its text and kind (and the
/// default key policy of its account), so a remembered one is what parsing again would
/// give: a policy changed by PutKeyPolicy or PutPrincipalPolicy has a new text, and is
/// parsed anew. Every request is decided at least once, by its node, and nearly always
/// over the same few policies; parsing the JSON each time was the largest part of a
/// decision.
static PARSED: LazyLock<Mutex<Parsed>> = LazyLock::new(Mutex::default);

#[derive(Default)]
struct Parsed {
    documents: HashMap<Source, Arc<PolicyDocument>>,
    bytes: usize,
}

/// The policy `source` gives, parsed by `parse` unless it was lately.
fn parsed(
    source: Source,
    parse: impl FnOnce() -> Result<PolicyDocument, KmsError>,
) -> Result<Arc<PolicyDocument>, KmsError> {
    let lock = || PARSED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(document) = lock().documents.get(&source) {
        return Ok(document.clone());
    }
    let document = Arc::new(parse()?);
    let size = match &source {
        Source::Stored(_, text) => text.len(),
        Source::DefaultKey(_) => document.text().len(),
    };
    let mut cache = lock();
    if cache.documents.len() >= PARSED_MAX || cache.bytes + size > PARSED_MAX_BYTES {
        cache.documents.clear();
        cache.bytes = 0;
    }
    if cache.documents.insert(source, document.clone()).is_none() {
        cache.bytes += size;
    }
    Ok(document)
}

fn stored(text: &str, kind: PolicyKind) -> Result<Arc<PolicyDocument>, KmsError> {
    parsed(Source::Stored(kind, text.to_string()), || {
        // Documents are validated before they are proposed; one that no longer parses
        // (a stricter parser after an upgrade) denies rather than allows.
        PolicyDocument::parse(text, kind).map_err(|e| {
            denied(format!(
                "a stored {} does not parse: {}",
                kind.aws_term(),
                e.message
            ))
        })
    })
}

fn default_key_policy(account: &AccountId) -> Result<Arc<PolicyDocument>, KmsError> {
    parsed(Source::DefaultKey(account.clone()), || {
        Ok(PolicyDocument::default_key_policy(account))
    })
}

/// A principal's inline policies, parsed; one that no longer parses is a refusal.
pub fn principal_policies(holder: &PrincipalRecord) -> Result<Vec<Arc<PolicyDocument>>, KmsError> {
    holder
        .policies
        .values()
        .map(|text| stored(text, PolicyKind::Principal))
        .collect()
}

/// Decides a question: what allowed it, or `AccessDeniedException` in AWS's words.
pub fn decide(q: &Question<'_>) -> Result<AllowedBy, KmsError> {
    let Some(holder) = q.holder.filter(|h| h.enabled) else {
        return Err(denied(format!(
            "User: {} is not authorized to perform: {} because the principal is disabled or deleted",
            q.caller_arn, q.action
        )));
    };
    let caller = AuthzPrincipal::parse(q.caller_arn)?;
    let principal_policies = principal_policies(holder)?;
    let refs: Vec<&PolicyDocument> = principal_policies.iter().map(|p| &**p).collect();
    let mut req = AuthzRequest::new(
        caller,
        q.action,
        if q.key.is_some() {
            ANY_RESOURCE
        } else {
            q.resource
        },
    )
    .with_time_ms(q.time_ms);
    if let Some(ctx) = q.encryption_context {
        req = req.with_encryption_context(ctx);
    }
    let key_policy = match q.key {
        Some(key) => {
            req = req.with_key(&key.metadata);
            Some(match &key.policy {
                Some(text) => stored(text, PolicyKind::Key)?,
                None => default_key_policy(&key.metadata.account)?,
            })
        }
        None => None,
    };
    let grant_allows = q.key.is_some() && {
        let operation = q
            .action
            .strip_prefix("kms:")
            .and_then(|op| GrantOperation::parse(op).ok());
        let empty = EncryptionContext::new();
        operation.is_some_and(|operation| {
            let asked = GrantRequest {
                principal: &req.principal,
                operation,
                encryption_context: q.encryption_context.unwrap_or(&empty),
                new_grant: q.new_grant,
            };
            q.grants.iter().any(|g| g.grant.allows(&asked))
        })
    };
    evaluate(key_policy.as_deref(), &refs, grant_allows, &req).into_result(&req)
}

/// The record a node keeps of a decision it made, for apply to repeat.
pub fn check_of(q: &Question<'_>) -> AuthzCheck {
    AuthzCheck {
        caller_arn: q.caller_arn.to_string(),
        holder_arn: q.holder.map(|h| h.arn.clone()).unwrap_or_default(),
        holder_epoch: q.holder.map_or(0, |h| h.epoch),
        action: q.action.to_string(),
        key: q.key.map(|k| (k.metadata.key_id.clone(), k.metadata.epoch)),
        resource: q.resource.to_string(),
        encryption_context: q.encryption_context.cloned(),
    }
}

/// Whether a recorded decision still stands given the holder and key as they are now:
/// unchanged epochs keep the node's decision; a changed one decides again.
pub fn recheck(
    check: &AuthzCheck,
    holder: Option<&PrincipalRecord>,
    key: Option<&KeyRecord>,
    grants: &[GrantRecord],
    time_ms: u64,
) -> Result<(), KmsError> {
    let holder_same = holder.is_some_and(|h| h.epoch == check.holder_epoch);
    let key_same = match (&check.key, key) {
        (None, None) => true,
        (Some((_, epoch)), Some(k)) => k.metadata.epoch == *epoch,
        (Some((id, _)), None) => return Err(KmsError::key_not_found(id.as_str())),
        (None, Some(_)) => false,
    };
    if holder_same && key_same {
        return Ok(());
    }
    decide(&Question {
        caller_arn: &check.caller_arn,
        holder,
        key,
        action: &check.action,
        resource: &check.resource,
        encryption_context: check.encryption_context.as_ref(),
        time_ms,
        grants,
        // A CreateGrant allowed by a grant is not re-decided on the child grant: the
        // epoch moved only if a grant was removed, which the decision below sees.
        new_grant: None,
    })
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(action: &str) -> String {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":"{action}","Resource":"*"}}]}}"#
        )
    }

    #[test]
    fn a_policy_is_parsed_once_per_text_and_a_new_text_is_parsed_anew() {
        let encrypt = policy("kms:Encrypt");
        let first = stored(&encrypt, PolicyKind::Principal).unwrap();
        let again = stored(&encrypt, PolicyKind::Principal).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let decrypt = stored(&policy("kms:Decrypt"), PolicyKind::Principal).unwrap();
        assert_eq!(decrypt.text(), policy("kms:Decrypt"));
        assert_eq!(first.text(), encrypt);
        // A key policy must name principals: the same text is a different document
        // there, and this one does not parse as a key policy.
        let err = stored(&encrypt, PolicyKind::Key).unwrap_err();
        assert_eq!(err.code, ErrorCode::AccessDenied);
        assert!(stored(&encrypt, PolicyKind::Key).is_err());
    }
}
