//! Principals: who a statement names, and who is asking.
//!
//! A policy names principals by ARN (or by bare account id, meaning the account's root);
//! a request comes from one authenticated principal. Both sides are parsed into the same
//! [`PrincipalId`] so that matching compares structure, not strings:
//!
//! | ARN                                                     | id                          |
//! |---------------------------------------------------------|-----------------------------|
//! | `arn:keyraft:iam::<account>:root` or `<account>`        | [`PrincipalId::Root`]       |
//! | `arn:keyraft:iam::<account>:user/[<path>/]<name>`       | [`PrincipalId::User`]       |
//! | `arn:keyraft:iam::<account>:role/[<path>/]<name>`       | [`PrincipalId::Role`]       |
//! | `arn:keyraft:sts::<account>:assumed-role/<role>/<sess>` | [`PrincipalId::AssumedRole`]|
//!
//! Users and roles are compared by account and name, without the path: names are unique
//! within an account, and a session ARN does not carry its role's path. A role entry
//! matches every session of the role, as in AWS. Wildcards are not allowed inside a
//! principal ARN (AWS refuses them too); `"*"` alone means everyone, and finer patterns
//! belong in a condition on `aws:PrincipalArn`.
//!
//! A request is made by a principal *and* by its account. [`Principals`] answers the two
//! questions evaluation asks of a statement: is the caller itself listed (its own ARN,
//! or for a session its role), and is its account listed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::KmsError;
use crate::ids::{truncate, AccountId};

/// A principal, parsed from an ARN or an account id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrincipalId {
    /// An account, or its root user (`arn:keyraft:iam::<account>:root`).
    Root(AccountId),
    /// An IAM-style user.
    User {
        /// The owning account.
        account: AccountId,
        /// The user name (the last segment; any path is dropped).
        name: String,
    },
    /// A role. As a statement's principal it matches the role's sessions.
    Role {
        /// The owning account.
        account: AccountId,
        /// The role name (the last segment; any path is dropped).
        name: String,
    },
    /// A session of an assumed role.
    AssumedRole {
        /// The owning account.
        account: AccountId,
        /// The role's name.
        role: String,
        /// The session name.
        session: String,
    },
    /// A service principal such as `logs.keyraft.internal`. Keyraft has no service
    /// callers yet, so such an entry matches nobody; it parses so that policies that name
    /// one can be stored.
    Service(String),
}

impl PrincipalId {
    /// Parses a principal as a policy or a grant names it: a principal ARN or a 12-digit
    /// account id. Refused: `ValidationException` saying what is wrong.
    pub fn parse(s: &str) -> Result<PrincipalId, KmsError> {
        PrincipalId::parse_reason(s).map_err(KmsError::validation)
    }

    /// [`PrincipalId::parse`], with the reason as text for a caller that reports it
    /// under its own error code (the policy parser).
    pub(crate) fn parse_reason(s: &str) -> Result<PrincipalId, String> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            return AccountId::parse(s)
                .map(PrincipalId::Root)
                .map_err(|e| e.message);
        }
        if s.contains(['*', '?']) {
            return Err(format!(
                "\"{}\": wildcards are not allowed in principals; use \"*\" alone or a condition on aws:PrincipalArn",
                truncate(s)
            ));
        }
        let bad = |why: &str| format!("\"{}\" is not a valid principal ARN: {why}", truncate(s));
        let Some(rest) = s.strip_prefix("arn:keyraft:") else {
            return Err(bad(
                "expected an account id or arn:keyraft:iam::<account>:...",
            ));
        };
        let parts: Vec<&str> = rest.splitn(4, ':').collect();
        let [service, region, account, resource] = parts.as_slice() else {
            return Err(bad("expected arn:keyraft:<iam|sts>::<account>:<resource>"));
        };
        if !region.is_empty() {
            return Err(bad("principal ARNs have no region"));
        }
        let account =
            AccountId::parse(account).map_err(|_| bad("the account must be 12 digits"))?;
        match *service {
            "iam" => {
                if *resource == "root" {
                    return Ok(PrincipalId::Root(account));
                }
                if let Some(path) = resource.strip_prefix("user/") {
                    let name = last_name(path).ok_or_else(|| bad("bad user name"))?;
                    return Ok(PrincipalId::User { account, name });
                }
                if let Some(path) = resource.strip_prefix("role/") {
                    let name = last_name(path).ok_or_else(|| bad("bad role name"))?;
                    return Ok(PrincipalId::Role { account, name });
                }
                Err(bad("expected root, user/<name> or role/<name>"))
            }
            "sts" => {
                let session = resource
                    .strip_prefix("assumed-role/")
                    .and_then(|r| r.split_once('/'))
                    .filter(|(role, session)| is_name(role) && is_name(session));
                match session {
                    Some((role, session)) => Ok(PrincipalId::AssumedRole {
                        account,
                        role: role.to_string(),
                        session: session.to_string(),
                    }),
                    None => Err(bad("expected assumed-role/<role>/<session>")),
                }
            }
            _ => Err(bad("the service must be iam or sts")),
        }
    }

    /// The principal's account, if it has one (service principals do not).
    pub fn account(&self) -> Option<&AccountId> {
        match self {
            PrincipalId::Root(account)
            | PrincipalId::User { account, .. }
            | PrincipalId::Role { account, .. }
            | PrincipalId::AssumedRole { account, .. } => Some(account),
            PrincipalId::Service(_) => None,
        }
    }

    /// Whether this entry, listed in a statement, names `caller` itself: the same root,
    /// user or session, or the role a session belongs to.
    pub fn names(&self, caller: &PrincipalId) -> bool {
        match (self, caller) {
            (
                PrincipalId::Role { account, name },
                PrincipalId::AssumedRole {
                    account: a, role, ..
                },
            ) => account == a && name == role,
            (listed, caller) => listed == caller,
        }
    }
}

impl fmt::Display for PrincipalId {
    /// The canonical ARN (paths are not kept).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrincipalId::Root(a) => write!(f, "arn:keyraft:iam::{a}:root"),
            PrincipalId::User { account, name } => {
                write!(f, "arn:keyraft:iam::{account}:user/{name}")
            }
            PrincipalId::Role { account, name } => {
                write!(f, "arn:keyraft:iam::{account}:role/{name}")
            }
            PrincipalId::AssumedRole {
                account,
                role,
                session,
            } => write!(
                f,
                "arn:keyraft:sts::{account}:assumed-role/{role}/{session}"
            ),
            PrincipalId::Service(name) => f.write_str(name),
        }
    }
}

/// The principals a statement lists in its `Principal` or `NotPrincipal` element.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principals {
    /// `"*"` or `{"AWS": "*"}`: everyone.
    Any,
    /// The listed principals (never empty).
    Listed(Vec<PrincipalId>),
}

impl Principals {
    /// Whether the caller itself is listed: its own id, or for a session its role. The
    /// root user is its account, so an account entry lists it.
    pub fn lists_caller(&self, caller: &AuthzPrincipal) -> bool {
        match self {
            Principals::Any => true,
            Principals::Listed(ids) => ids.iter().any(|id| id.names(&caller.id)),
        }
    }

    /// Whether the caller's account is listed (as a bare account id or its root ARN).
    pub fn lists_account(&self, caller: &AuthzPrincipal) -> bool {
        match self {
            Principals::Any => true,
            Principals::Listed(ids) => ids
                .iter()
                .any(|id| matches!(id, PrincipalId::Root(a) if *a == caller.account)),
        }
    }
}

/// What kind of principal made a request, as `aws:PrincipalType` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PrincipalType {
    /// The account's root user.
    Account,
    /// A user.
    User,
    /// A session of an assumed role.
    AssumedRole,
}

impl PrincipalType {
    /// The `aws:PrincipalType` value: `Account`, `User` or `AssumedRole`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalType::Account => "Account",
            PrincipalType::User => "User",
            PrincipalType::AssumedRole => "AssumedRole",
        }
    }
}

/// The authenticated principal a request comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzPrincipal {
    arn: String,
    account: AccountId,
    id: PrincipalId,
}

impl AuthzPrincipal {
    /// Parses the ARN of a caller: a root, user or assumed-role session ARN. Roles do not
    /// make requests (their sessions do), so a role ARN is refused here.
    pub fn parse(arn: &str) -> Result<AuthzPrincipal, KmsError> {
        let id = PrincipalId::parse(arn)?;
        let account = match &id {
            PrincipalId::Root(a)
            | PrincipalId::User { account: a, .. }
            | PrincipalId::AssumedRole { account: a, .. } => a.clone(),
            PrincipalId::Role { .. } | PrincipalId::Service(_) => {
                return Err(KmsError::validation(format!(
                    "principal '{}' cannot make requests; use a user or an assumed-role session",
                    truncate(arn)
                )))
            }
        };
        // A bare account id names the root; the caller's ARN is always the full form.
        let arn = if arn.starts_with("arn:") {
            arn.to_string()
        } else {
            id.to_string()
        };
        Ok(AuthzPrincipal { arn, account, id })
    }

    /// The caller's ARN, as authenticated.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// The caller's account.
    pub fn account(&self) -> &AccountId {
        &self.account
    }

    /// The caller, parsed.
    pub fn id(&self) -> &PrincipalId {
        &self.id
    }

    /// The kind of principal, for `aws:PrincipalType`.
    pub fn principal_type(&self) -> PrincipalType {
        match self.id {
            PrincipalId::User { .. } => PrincipalType::User,
            PrincipalId::AssumedRole { .. } => PrincipalType::AssumedRole,
            _ => PrincipalType::Account,
        }
    }

    /// Whether the caller is its account's root user.
    pub fn is_account_root(&self) -> bool {
        matches!(self.id, PrincipalId::Root(_))
    }

    /// The value of `aws:PrincipalArn`: the caller's ARN, except that for a role session
    /// it is the role's ARN, as in AWS.
    pub fn principal_arn(&self) -> String {
        match &self.id {
            PrincipalId::AssumedRole { account, role, .. } => PrincipalId::Role {
                account: account.clone(),
                name: role.clone(),
            }
            .to_string(),
            PrincipalId::Root(_) => self.id.to_string(),
            _ => self.arn.clone(),
        }
    }
}

/// The last `/`-separated segment of a user or role path, if every segment is a name.
fn last_name(path: &str) -> Option<String> {
    let mut last = None;
    for seg in path.split('/') {
        if !is_name(seg) {
            return None;
        }
        last = Some(seg);
    }
    last.map(str::to_string)
}

/// IAM's name rule: 1–64 characters of `[A-Za-z0-9+=,.@_-]`.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(s: &str) -> AccountId {
        AccountId::parse(s).unwrap()
    }

    #[test]
    fn parses_principal_forms() {
        let a = acct("111122223333");
        assert_eq!(
            PrincipalId::parse("111122223333"),
            Ok(PrincipalId::Root(a.clone()))
        );
        assert_eq!(
            PrincipalId::parse("arn:keyraft:iam::111122223333:root"),
            Ok(PrincipalId::Root(a.clone()))
        );
        assert_eq!(
            PrincipalId::parse("arn:keyraft:iam::111122223333:user/ops/bob"),
            Ok(PrincipalId::User {
                account: a.clone(),
                name: "bob".into()
            })
        );
        assert_eq!(
            PrincipalId::parse("arn:keyraft:sts::111122223333:assumed-role/admin/s-1"),
            Ok(PrincipalId::AssumedRole {
                account: a.clone(),
                role: "admin".into(),
                session: "s-1".into()
            })
        );
        for bad in [
            "11112222333",
            "arn:keyraft:iam::111122223333:user/*",
            "arn:aws:iam::111122223333:root",
            "arn:keyraft:iam:dev-1:111122223333:root",
            "arn:keyraft:iam::1111:root",
            "arn:keyraft:iam::111122223333:group/x",
            "arn:keyraft:iam::111122223333:user/",
            "arn:keyraft:iam::111122223333:user/a b",
            "arn:keyraft:sts::111122223333:assumed-role/admin",
            "arn:keyraft:s3::111122223333:root",
            "arn:keyraft:iam",
        ] {
            assert!(PrincipalId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_name_their_sessions() {
        let role = PrincipalId::parse("arn:keyraft:iam::111122223333:role/path/admin").unwrap();
        let session =
            PrincipalId::parse("arn:keyraft:sts::111122223333:assumed-role/admin/x").unwrap();
        let other =
            PrincipalId::parse("arn:keyraft:sts::444455556666:assumed-role/admin/x").unwrap();
        assert!(role.names(&session));
        assert!(!role.names(&other));
        assert!(!session.names(&role));
    }

    #[test]
    fn callers() {
        let p =
            AuthzPrincipal::parse("arn:keyraft:sts::111122223333:assumed-role/admin/x").unwrap();
        assert_eq!(p.principal_type(), PrincipalType::AssumedRole);
        assert_eq!(
            p.principal_arn(),
            "arn:keyraft:iam::111122223333:role/admin"
        );
        assert_eq!(p.account().as_str(), "111122223333");
        let root = AuthzPrincipal::parse("111122223333").unwrap();
        assert!(root.is_account_root());
        assert_eq!(root.arn(), "arn:keyraft:iam::111122223333:root");
        assert_eq!(root.principal_type().as_str(), "Account");
        let err = AuthzPrincipal::parse("arn:keyraft:iam::111122223333:role/admin").unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::Validation);
    }
}
