//! # Policies: who may do what to which key
//!
//! Keyraft decides access the way AWS KMS does, so that a policy written for AWS reads
//! the same here. Three things can allow a request: the key's own **key policy** (a
//! resource-based policy, required for every key), the **principal policies**
//! (identity-based policies attached to the caller) and **grants**. Anything can deny it:
//! an explicit `Deny` in the key policy or in any principal policy wins over every
//! allow, and a request that nothing allows is denied by default.
//!
//! This module is the pure half of that decision: the policy document model, its parser
//! and the evaluator. It reads no clock, touches no store and draws no randomness — the
//! time, the caller and every condition key arrive in the [`AuthzRequest`] — so the
//! server, the state machine (which re-checks decisions in apply) and the tests all reach
//! exactly the same answer from the same inputs.
//!
//! ## The shape of a decision
//!
//! [`evaluate`] follows AWS KMS's order:
//!
//! 1. An explicit `Deny` that matches the request, in the key policy or in any principal
//!    policy, denies ([`Decision::ExplicitDeny`]).
//! 2. An `Allow` in the key policy that names the caller (or `*`) allows.
//! 3. An `Allow` in the key policy whose principal is the caller's *account*
//!    (`arn:keyraft:iam::<account>:root` or the bare account id) does not allow by itself:
//!    it *delegates* to the account's principal policies, as AWS's default key policy
//!    ("Enable IAM User Permissions") does. A matching `Allow` in one of the caller's
//!    principal policies then allows. A principal policy of an account the key policy does
//!    not name counts for nothing; this is how cross-account access needs both sides.
//! 4. A grant that allows the operation allows ([`Grant::allows`] decides; the evaluator
//!    takes its answer as a flag).
//! 5. Otherwise the request is denied implicitly ([`Decision::ImplicitDeny`]).
//!
//! The account's root user matches a statement that names its account directly; it is
//! the account. Requests that concern no key (CreateKey, ListKeys, GenerateRandom...)
//! have no key policy: principal policies alone decide, and the root user is allowed
//! unless explicitly denied.
//!
//! ## Documents
//!
//! [`PolicyDocument::parse`] accepts the AWS IAM grammar (Version, Id, Statement; Sid,
//! Effect, Principal/NotPrincipal, Action/NotAction, Resource/NotResource, Condition) and
//! refuses anything else with a `MalformedPolicyDocumentException` whose message points at
//! the fault (`Statement[1].Condition.StringEquals: expected an object`). It is strict
//! where leniency would hide a mistake: unknown or duplicated fields, misspelt operators,
//! principals that are not principal ARNs, numbers and dates that do not parse. The
//! original text is kept verbatim, because GetKeyPolicy returns what was put.
//!
//! Conditions follow AWS to the letter, including the parts that surprise people: a
//! negated operator (`StringNotEquals`) is true when the key is missing, `ForAllValues`
//! is true for an empty set, condition key names are case-insensitive while values are
//! not. [`condition`] documents each rule.
//!
//! ## Where AWS is ambiguous
//!
//! Each choice is written down where it is made; the main ones:
//! - `NotPrincipal` excludes a caller only if both the caller (or, for a role session,
//!   its role) and the caller's account are listed, as AWS documents — a request is made
//!   by the principal *and* its account.
//! - A principal entry for an account matches every principal of that account in a
//!   `Deny` (fail closed), but in an `Allow` of a key policy only delegates (step 3).
//! - A role ARN matches every session of that role, compared by account and role name.
//! - ARN patterns are compared colon-separated component by component; the last
//!   component of the pattern takes the rest of the value, colons included.
//! - Policy variables (`${aws:username}`) are expanded in `Resource` and string or ARN
//!   condition values of `2012-10-17` documents; a variable without a value makes that
//!   pattern match nothing.

pub mod condition;
mod document;
mod eval;
mod grant;
mod json;
mod pattern;
mod principal;
mod time;

pub use condition::{BaseOperator, Condition, ConditionContext, ConditionOperator, SetQualifier};
pub use document::{
    ActionElement, Effect, PolicyDocument, PolicyKind, PolicyVersion, PrincipalElement,
    ResourceElement, Statement, MAX_POLICY_BYTES,
};
pub use eval::{evaluate, AllowedBy, AuthzRequest, Decision, StatementRef, ANY_RESOURCE};
pub use grant::{Grant, GrantConstraints, GrantOperation, GrantRequest};
pub use principal::{AuthzPrincipal, PrincipalId, PrincipalType, Principals};

#[cfg(test)]
mod tests;
