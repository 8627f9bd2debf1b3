//! Identifiers: key ids, accounts, regions and node ids, each validated once at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::KmsError;

/// A Raft node id. Ids are never reused within a cluster.
pub type NodeId = u64;

/// A KMS key id: a lowercase UUID, as AWS uses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(String);

impl KeyId {
    /// A fresh random key id. Called by the proposing node, never inside apply.
    pub fn random() -> Self {
        KeyId(uuid::Uuid::new_v4().to_string())
    }

    /// Validates a key id given by a caller or read from a ciphertext.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        match uuid::Uuid::parse_str(s) {
            Ok(u) if u.hyphenated().to_string() == s => Ok(KeyId(s.to_string())),
            _ => Err(KmsError::new(
                crate::ErrorCode::NotFound,
                format!("Invalid keyId '{}'", truncate(s)),
            )),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A 12-digit account id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountId(String);

impl AccountId {
    /// Validates a 12-digit account id.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(AccountId(s.to_string()))
        } else {
            Err(KmsError::validation(format!(
                "account id '{}' must be 12 digits",
                truncate(s)
            )))
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A region name such as `dev-1` or `eu-west-2`: lowercase letters, digits and dashes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Region(String);

impl Region {
    /// Validates a region name (1–32 characters of `[a-z0-9-]`, not starting with `-`).
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && !s.starts_with('-')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Region(s.to_string()))
        } else {
            Err(KmsError::validation(format!(
                "region '{}' must be 1-32 characters of [a-z0-9-]",
                truncate(s)
            )))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ARN of a key in this region: `arn:keyraft:<region>:<account>:key/<id>`.
    pub fn key_arn(&self, account: &AccountId, key: &KeyId) -> String {
        format!("arn:keyraft:{}:{}:key/{}", self.0, account, key)
    }

    /// Resolves a caller's key reference (a key id or a key ARN of this region) to a key
    /// id. Aliases arrive with the alias issue; until then `alias/...` is NotFound.
    pub fn resolve_key_ref(&self, key_ref: &str) -> Result<KeyId, KmsError> {
        if key_ref.is_empty() {
            return Err(KmsError::validation("KeyId must not be empty"));
        }
        if let Some(rest) = key_ref.strip_prefix("arn:") {
            // arn:keyraft:<region>:<account>:key/<id>
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            let [partition, region, account, resource] = match parts.as_slice() {
                [p, r, a, res] => [*p, *r, *a, *res],
                _ => {
                    return Err(KmsError::new(
                        crate::ErrorCode::InvalidArn,
                        format!("'{}' is not a valid key ARN", truncate(key_ref)),
                    ))
                }
            };
            if partition != "keyraft" || AccountId::parse(account).is_err() {
                return Err(KmsError::new(
                    crate::ErrorCode::InvalidArn,
                    format!("'{}' is not a valid key ARN", truncate(key_ref)),
                ));
            }
            if region != self.0 {
                return Err(KmsError::key_not_found(key_ref));
            }
            return match resource.strip_prefix("key/") {
                Some(id) => KeyId::parse(id).map_err(|_| KmsError::key_not_found(key_ref)),
                None => Err(KmsError::new(
                    crate::ErrorCode::InvalidArn,
                    format!("'{}' is not a key ARN", truncate(key_ref)),
                )),
            };
        }
        KeyId::parse(key_ref).map_err(|_| KmsError::key_not_found(key_ref))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shortens caller input before echoing it in an error message.
pub(crate) fn truncate(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(64).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn key_refs_resolve() {
        let region = Region::parse("dev-1").unwrap();
        let account = AccountId::parse("111122223333").unwrap();
        let id = KeyId::random();
        let arn = region.key_arn(&account, &id);
        assert_eq!(region.resolve_key_ref(id.as_str()).unwrap(), id);
        assert_eq!(region.resolve_key_ref(&arn).unwrap(), id);
        let other = arn.replace("dev-1", "dev-2");
        assert_eq!(
            region.resolve_key_ref(&other).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            region.resolve_key_ref("arn:aws:kms").unwrap_err().code,
            ErrorCode::InvalidArn
        );
        assert_eq!(
            region.resolve_key_ref("nope").unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            region.resolve_key_ref("").unwrap_err().code,
            ErrorCode::Validation
        );
    }

    #[test]
    fn ids_validate() {
        assert!(AccountId::parse("12345678901").is_err());
        assert!(AccountId::parse("12345678901a").is_err());
        assert!(Region::parse("Eu-West").is_err());
        assert!(Region::parse("-x").is_err());
        assert!(KeyId::parse("6F9619FF-8B86-D011-B42D-00CF4FC964FF").is_err());
    }
}
