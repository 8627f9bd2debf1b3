//! Grants, the pure part: which operations a grant allows, to whom, under which
//! encryption context.
//!
//! A grant gives one grantee principal a fixed set of operations on one key, optionally
//! constrained by the request's encryption context:
//!
//! - `EncryptionContextEquals`: the request's context must be exactly the given one.
//! - `EncryptionContextSubset`: every given pair must be in the request's context, which
//!   may have more. (Both constraints may be given; both must then hold.)
//!
//! Constraints only make sense for operations that take an encryption context, so a
//! grant with constraints may list only those, plus `CreateGrant` and `RetireGrant`, as
//! in AWS; anything else is a `ValidationException` when the grant is built.
//!
//! `CreateGrant` through a grant is delegation, and may not widen it: the new grant may
//! list only operations the parent grant lists, and must be constrained at least as
//! tightly (every context the new grant admits, the parent admits). Deciding that needs
//! the new grant, so a [`GrantRequest`] for `CreateGrant` without one is refused.
//! `RetireGrant` and operations without an encryption context are not tested against the
//! constraints.
//!
//! The grantee is matched like a statement's principal: a role grantee covers its
//! sessions, an account grantee only the account's root user.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::principal::{AuthzPrincipal, PrincipalId};
use crate::error::KmsError;
use crate::ids::truncate;
use crate::key::EncryptionContext;

/// An operation a grant can allow, named as AWS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GrantOperation {
    /// Decrypt.
    Decrypt,
    /// Encrypt.
    Encrypt,
    /// GenerateDataKey.
    GenerateDataKey,
    /// GenerateDataKeyWithoutPlaintext.
    GenerateDataKeyWithoutPlaintext,
    /// ReEncrypt, with this key as the source.
    ReEncryptFrom,
    /// ReEncrypt, with this key as the destination.
    ReEncryptTo,
    /// Sign.
    Sign,
    /// Verify.
    Verify,
    /// GetPublicKey.
    GetPublicKey,
    /// CreateGrant: delegate (part of) this grant.
    CreateGrant,
    /// RetireGrant.
    RetireGrant,
    /// DescribeKey.
    DescribeKey,
    /// GenerateDataKeyPair.
    GenerateDataKeyPair,
    /// GenerateDataKeyPairWithoutPlaintext.
    GenerateDataKeyPairWithoutPlaintext,
    /// GenerateMac.
    GenerateMac,
    /// VerifyMac.
    VerifyMac,
}

impl GrantOperation {
    /// Every operation.
    pub const ALL: [GrantOperation; 16] = [
        GrantOperation::Decrypt,
        GrantOperation::Encrypt,
        GrantOperation::GenerateDataKey,
        GrantOperation::GenerateDataKeyWithoutPlaintext,
        GrantOperation::ReEncryptFrom,
        GrantOperation::ReEncryptTo,
        GrantOperation::Sign,
        GrantOperation::Verify,
        GrantOperation::GetPublicKey,
        GrantOperation::CreateGrant,
        GrantOperation::RetireGrant,
        GrantOperation::DescribeKey,
        GrantOperation::GenerateDataKeyPair,
        GrantOperation::GenerateDataKeyPairWithoutPlaintext,
        GrantOperation::GenerateMac,
        GrantOperation::VerifyMac,
    ];

    /// The AWS name, e.g. `GenerateDataKey`.
    pub fn as_str(self) -> &'static str {
        use GrantOperation::*;
        match self {
            Decrypt => "Decrypt",
            Encrypt => "Encrypt",
            GenerateDataKey => "GenerateDataKey",
            GenerateDataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
            ReEncryptFrom => "ReEncryptFrom",
            ReEncryptTo => "ReEncryptTo",
            Sign => "Sign",
            Verify => "Verify",
            GetPublicKey => "GetPublicKey",
            CreateGrant => "CreateGrant",
            RetireGrant => "RetireGrant",
            DescribeKey => "DescribeKey",
            GenerateDataKeyPair => "GenerateDataKeyPair",
            GenerateDataKeyPairWithoutPlaintext => "GenerateDataKeyPairWithoutPlaintext",
            GenerateMac => "GenerateMac",
            VerifyMac => "VerifyMac",
        }
    }

    /// Parses an AWS operation name (case-sensitive).
    pub fn parse(s: &str) -> Result<GrantOperation, KmsError> {
        GrantOperation::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| {
                KmsError::validation(format!(
                    "Value '{}' at 'operations' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                    truncate(s),
                    GrantOperation::ALL.map(GrantOperation::as_str).join(", ")
                ))
            })
    }

    /// The policy action of the operation: `kms:Decrypt`.
    pub fn action(self) -> String {
        format!("kms:{}", self.as_str())
    }

    /// Whether requests for this operation carry an encryption context.
    pub fn takes_encryption_context(self) -> bool {
        use GrantOperation::*;
        matches!(
            self,
            Decrypt
                | Encrypt
                | GenerateDataKey
                | GenerateDataKeyWithoutPlaintext
                | ReEncryptFrom
                | ReEncryptTo
                | GenerateDataKeyPair
                | GenerateDataKeyPairWithoutPlaintext
        )
    }

    /// Whether a grant with encryption-context constraints may list this operation.
    pub fn allows_constraints(self) -> bool {
        self.takes_encryption_context()
            || matches!(
                self,
                GrantOperation::CreateGrant | GrantOperation::RetireGrant
            )
    }
}

impl fmt::Display for GrantOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A grant's encryption-context constraints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantConstraints {
    /// The request's context must equal this one exactly.
    pub encryption_context_equals: Option<EncryptionContext>,
    /// The request's context must contain every pair of this one.
    pub encryption_context_subset: Option<EncryptionContext>,
}

impl GrantConstraints {
    /// Whether no constraint is set.
    pub fn is_empty(&self) -> bool {
        self.encryption_context_equals.is_none() && self.encryption_context_subset.is_none()
    }

    /// Whether a request with this encryption context satisfies the constraints.
    pub fn admits(&self, context: &EncryptionContext) -> bool {
        self.encryption_context_equals
            .as_ref()
            .is_none_or(|eq| eq == context)
            && self
                .encryption_context_subset
                .as_ref()
                .is_none_or(|sub| is_subset(sub, context))
    }

    /// Whether every context that `child` admits, these constraints admit too: `child`
    /// is at least as strict.
    pub fn covers(&self, child: &GrantConstraints) -> bool {
        if self.is_empty() {
            return true;
        }
        match (
            &child.encryption_context_equals,
            &child.encryption_context_subset,
        ) {
            // The child admits at most one context.
            (Some(eq), subset) => {
                let child_admits_it = subset.as_ref().is_none_or(|s| is_subset(s, eq));
                !child_admits_it || self.admits(eq)
            }
            // The child admits every superset of `sub`: only a subset rule no wider than
            // `sub` can admit them all.
            (None, Some(sub)) => {
                self.encryption_context_equals.is_none()
                    && self
                        .encryption_context_subset
                        .as_ref()
                        .is_none_or(|mine| is_subset(mine, sub))
            }
            (None, None) => false,
        }
    }
}

/// A grant, as far as deciding a request goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    grantee_principal: String,
    grantee: PrincipalId,
    operations: BTreeSet<GrantOperation>,
    constraints: Option<GrantConstraints>,
}

impl Grant {
    /// Validates a grant: the grantee is a principal ARN or account id, there is at
    /// least one operation, and constraints come only with operations that allow them.
    /// Empty constraints are the same as none.
    pub fn new(
        grantee_principal: &str,
        operations: &[GrantOperation],
        constraints: Option<GrantConstraints>,
    ) -> Result<Grant, KmsError> {
        let grantee = PrincipalId::parse_reason(grantee_principal)
            .map_err(|why| KmsError::validation(format!("GranteePrincipal is not valid: {why}")))?;
        if matches!(grantee, PrincipalId::Service(_)) {
            return Err(KmsError::validation(
                "GranteePrincipal must be an account, user, role or assumed-role ARN",
            ));
        }
        if operations.is_empty() {
            return Err(KmsError::validation(
                "Operations must list at least one operation",
            ));
        }
        let constraints = constraints.filter(|c| !c.is_empty());
        if constraints.is_some() {
            let refused: Vec<&str> = operations
                .iter()
                .filter(|op| !op.allows_constraints())
                .map(|op| op.as_str())
                .collect();
            if !refused.is_empty() {
                return Err(KmsError::validation(format!(
                    "Grant constraints (EncryptionContextEquals, EncryptionContextSubset) are not allowed with operations that take no encryption context: {}",
                    refused.join(", ")
                )));
            }
        }
        Ok(Grant {
            grantee_principal: grantee_principal.to_string(),
            grantee,
            operations: operations.iter().copied().collect(),
            constraints,
        })
    }

    /// The grantee principal, as given.
    pub fn grantee_principal(&self) -> &str {
        &self.grantee_principal
    }

    /// The operations the grant allows.
    pub fn operations(&self) -> &BTreeSet<GrantOperation> {
        &self.operations
    }

    /// The constraints, if any.
    pub fn constraints(&self) -> Option<&GrantConstraints> {
        self.constraints.as_ref()
    }

    /// Whether the grant allows the request (the caller has already resolved that the
    /// grant belongs to the request's key).
    pub fn allows(&self, req: &GrantRequest<'_>) -> bool {
        if !self.grantee.names(req.principal.id()) || !self.operations.contains(&req.operation) {
            return false;
        }
        let constraints = self.constraints.as_ref();
        match req.operation {
            GrantOperation::CreateGrant => req.new_grant.is_some_and(|child| {
                child.operations.is_subset(&self.operations)
                    && constraints.is_none_or(|mine| {
                        mine.covers(
                            child
                                .constraints
                                .as_ref()
                                .unwrap_or(&GrantConstraints::default()),
                        )
                    })
            }),
            op if op.takes_encryption_context() => {
                constraints.is_none_or(|c| c.admits(req.encryption_context))
            }
            _ => true,
        }
    }
}

/// A request, as a grant sees it.
#[derive(Debug, Clone, Copy)]
pub struct GrantRequest<'a> {
    /// Who is asking.
    pub principal: &'a AuthzPrincipal,
    /// The operation asked for.
    pub operation: GrantOperation,
    /// The request's encryption context (empty if it has none).
    pub encryption_context: &'a EncryptionContext,
    /// For `CreateGrant`: the grant that would be created.
    pub new_grant: Option<&'a Grant>,
}

fn is_subset(small: &EncryptionContext, big: &EncryptionContext) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}
