//! The evaluator: one pure function from policies and a request to a decision.
//!
//! The order of the steps is in the module docs of [`crate::policy`]. Two details
//! matter for reading the code:
//!
//! - Every statement is weighed for its *reach* over the caller: it names the caller
//!   itself (or everyone), it names only the caller's account, or it does not concern the
//!   caller. A `Deny` acts on either kind of reach. An `Allow` in a key policy allows by
//!   itself only when it names the caller; naming the account delegates to the account's
//!   principal policies. Statements of principal policies always reach the caller they
//!   are attached to.
//! - The evaluator never stops at the first allow before it has looked for a deny: deny
//!   is checked across every policy first, so the order of statements never changes an
//!   answer.

use serde::{Deserialize, Serialize};

use super::condition::ConditionContext;
use super::document::{Effect, PolicyDocument, PolicyKind, PrincipalElement, Statement};
use super::principal::{AuthzPrincipal, PrincipalId};
use super::time::format_rfc3339;
use crate::error::{ErrorCode, KmsError};
use crate::key::{EncryptionContext, KeyMetadata};

/// The resource of a request that concerns no key (CreateKey, ListKeys, ...): only a
/// `Resource` of `*` (or a pattern that matches the text `*`) covers it.
pub const ANY_RESOURCE: &str = "*";

/// Everything the evaluator knows about a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzRequest {
    /// Who is asking.
    pub principal: AuthzPrincipal,
    /// The action, with its service prefix: `kms:Encrypt`.
    pub action: String,
    /// The key's ARN, or [`ANY_RESOURCE`] for an action that concerns no key.
    pub resource: String,
    /// The condition key values. [`AuthzRequest::new`] fills the ones that follow from
    /// the principal; the service adds the rest.
    pub context: ConditionContext,
}

impl AuthzRequest {
    /// A request by `principal`, with the principal's condition keys filled:
    /// `aws:PrincipalArn` (a session's role ARN), `aws:PrincipalAccount`,
    /// `aws:PrincipalType`, `kms:CallerAccount`, and `aws:username` for users.
    pub fn new(
        principal: AuthzPrincipal,
        action: impl Into<String>,
        resource: impl Into<String>,
    ) -> AuthzRequest {
        let mut context = ConditionContext::new();
        context.insert("aws:PrincipalArn", [principal.principal_arn()]);
        context.insert("aws:PrincipalAccount", [principal.account().as_str()]);
        context.insert("aws:PrincipalType", [principal.principal_type().as_str()]);
        context.insert("kms:CallerAccount", [principal.account().as_str()]);
        if let PrincipalId::User { name, .. } = principal.id() {
            context.insert("aws:username", [name.as_str()]);
        }
        AuthzRequest {
            principal,
            action: action.into(),
            resource: resource.into(),
            context,
        }
    }

    /// Sets a condition key's values (an empty list removes it).
    pub fn with_value<I, S>(mut self, key: &str, values: I) -> AuthzRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.context.insert(key, values);
        self
    }

    /// Sets `kms:EncryptionContext:<key>` and `kms:EncryptionContextKeys`.
    pub fn with_encryption_context(mut self, context: &EncryptionContext) -> AuthzRequest {
        self.context.insert_encryption_context(context);
        self
    }

    /// Sets `aws:CurrentTime` and `aws:EpochTime` from the request's time (milliseconds
    /// since the Unix epoch, taken by the node that received it).
    pub fn with_time_ms(mut self, unix_ms: u64) -> AuthzRequest {
        let secs = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX);
        self.context
            .insert("aws:CurrentTime", [format_rfc3339(secs)]);
        self.context.insert("aws:EpochTime", [secs.to_string()]);
        self
    }

    /// Makes the key the resource and sets `kms:KeySpec`, `kms:KeyUsage` and
    /// `kms:KeyOrigin` from its metadata.
    pub fn with_key(mut self, key: &KeyMetadata) -> AuthzRequest {
        self.resource = key.arn.clone();
        self.context.insert("kms:KeySpec", [key.key_spec.as_str()]);
        self.context
            .insert("kms:KeyUsage", [key.key_usage.as_str()]);
        self.context.insert("kms:KeyOrigin", [key.origin.as_str()]);
        self
    }
}

/// What allowed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AllowedBy {
    /// A key policy statement that names the caller (or everyone).
    KeyPolicy,
    /// A principal policy, enabled by a key policy statement naming the caller's account
    /// (or, for an action without a key, on its own).
    PrincipalPolicy,
    /// A grant.
    Grant,
    /// The account's root user, for an action without a key.
    AccountRoot,
}

/// Which statement denied a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatementRef {
    /// The key policy or a principal policy.
    pub kind: PolicyKind,
    /// For a principal policy, its index in the slice given to [`evaluate`]; 0 for the
    /// key policy.
    pub policy: usize,
    /// The statement's index in its document.
    pub statement: usize,
    /// The statement's `Sid`, if it has one.
    pub sid: Option<String>,
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// Allowed, and by what.
    Allow(AllowedBy),
    /// A `Deny` statement matched.
    ExplicitDeny(StatementRef),
    /// Nothing allowed the request.
    ImplicitDeny {
        /// The kind of policy that would have had to allow it: the key policy, or (when
        /// the key policy delegates to the account, or there is no key) a principal
        /// policy.
        missing: PolicyKind,
    },
}

impl Decision {
    /// Whether the request may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// For a denial, the AccessDeniedException message in AWS's words:
    /// `User: <arn> is not authorized to perform: kms:Encrypt on resource: <arn> because
    /// no resource-based policy allows the kms:Encrypt action`.
    pub fn denial_message(&self, req: &AuthzRequest) -> Option<String> {
        let head = format!(
            "User: {} is not authorized to perform: {} on resource: {}",
            req.principal.arn(),
            req.action,
            req.resource
        );
        match self {
            Decision::Allow(_) => None,
            Decision::ExplicitDeny(by) => {
                let article = match by.kind {
                    PolicyKind::Key => "a",
                    PolicyKind::Principal => "an",
                };
                Some(format!(
                    "{head} with an explicit deny in {article} {} policy",
                    by.kind.aws_term()
                ))
            }
            Decision::ImplicitDeny { missing } => Some(format!(
                "{head} because no {} policy allows the {} action",
                missing.aws_term(),
                req.action
            )),
        }
    }

    /// `Ok` with what allowed the request, or the AccessDeniedException to return.
    pub fn into_result(self, req: &AuthzRequest) -> Result<AllowedBy, KmsError> {
        match self {
            Decision::Allow(by) => Ok(by),
            denied => Err(KmsError::new(
                ErrorCode::AccessDenied,
                denied.denial_message(req).unwrap_or_default(),
            )),
        }
    }
}

/// Decides a request, with AWS KMS's semantics (see [`crate::policy`]).
///
/// `key_policy` is the key's policy, or `None` for an action that concerns no key;
/// `principal_policies` are the policies attached to the caller (for a role session, the
/// role's); `grant_allows` is whether one of the key's grants allows the request (see
/// [`super::Grant::allows`]), and counts only when there is a key.
pub fn evaluate(
    key_policy: Option<&PolicyDocument>,
    principal_policies: &[&PolicyDocument],
    grant_allows: bool,
    req: &AuthzRequest,
) -> Decision {
    // 1. An explicit deny anywhere wins.
    let key_statements = key_policy
        .into_iter()
        .flat_map(|doc| matching(doc, req).map(move |(i, s)| (PolicyKind::Key, 0, i, s)));
    let principal_statements = principal_policies.iter().enumerate().flat_map(|(p, doc)| {
        matching(doc, req).map(move |(i, s)| (PolicyKind::Principal, p, i, s))
    });
    let deny = key_statements
        .chain(principal_statements)
        .find(|(_, _, _, s)| s.effect() == Effect::Deny && reach(s, &req.principal) != Reach::None);
    if let Some((kind, policy, statement, s)) = deny {
        return Decision::ExplicitDeny(StatementRef {
            kind,
            policy,
            statement,
            sid: s.sid().map(str::to_string),
        });
    }
    let principal_allows = || {
        principal_policies
            .iter()
            .flat_map(|doc| matching(doc, req))
            .any(|(_, s)| s.effect() == Effect::Allow)
    };
    let Some(key_policy) = key_policy else {
        // No key: principal policies decide, and the root user is the account.
        if principal_allows() {
            return Decision::Allow(AllowedBy::PrincipalPolicy);
        }
        if req.principal.is_account_root() {
            return Decision::Allow(AllowedBy::AccountRoot);
        }
        return Decision::ImplicitDeny {
            missing: PolicyKind::Principal,
        };
    };
    // 2. and 3. The key policy allows, or delegates to the account's principal policies.
    let mut delegated = false;
    for (_, s) in matching(key_policy, req).filter(|(_, s)| s.effect() == Effect::Allow) {
        match reach(s, &req.principal) {
            Reach::Caller => return Decision::Allow(AllowedBy::KeyPolicy),
            Reach::Account => delegated = true,
            Reach::None => {}
        }
    }
    if delegated && principal_allows() {
        return Decision::Allow(AllowedBy::PrincipalPolicy);
    }
    // 4. Grants.
    if grant_allows {
        return Decision::Allow(AllowedBy::Grant);
    }
    // 5. Default deny.
    Decision::ImplicitDeny {
        missing: if delegated {
            PolicyKind::Principal
        } else {
            PolicyKind::Key
        },
    }
}

/// How far a statement's principal element reaches the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// It names the caller (or everyone), or is a principal policy's statement.
    Caller,
    /// It names the caller's account but not the caller.
    Account,
    /// It does not concern the caller.
    None,
}

fn reach(statement: &Statement, caller: &AuthzPrincipal) -> Reach {
    match statement.principal() {
        None => Reach::Caller,
        Some(PrincipalElement::Principal(p)) => {
            if p.lists_caller(caller) {
                Reach::Caller
            } else if p.lists_account(caller) {
                Reach::Account
            } else {
                Reach::None
            }
        }
        // The caller escapes a NotPrincipal only if it and its account are both listed.
        Some(PrincipalElement::NotPrincipal(p)) => {
            if p.lists_caller(caller) && p.lists_account(caller) {
                Reach::None
            } else {
                Reach::Caller
            }
        }
    }
}

/// The statements of `doc` that cover the request's action, resource and conditions.
fn matching<'a>(
    doc: &'a PolicyDocument,
    req: &'a AuthzRequest,
) -> impl Iterator<Item = (usize, &'a Statement)> + 'a {
    doc.statements()
        .iter()
        .enumerate()
        .filter(move |(_, s)| s.matches(&req.action, &req.resource, &req.context, doc.version()))
}
