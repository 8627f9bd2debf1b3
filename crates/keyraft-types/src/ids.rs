//! Identifiers: key ids, accounts, regions and node ids, each validated once at the edge.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::KmsError;

/// A Raft node id. Ids are never reused within a cluster.
pub type NodeId = u64;

/// A fresh unique id in the form of a lowercase UUID, for key ids and request ids.
///
/// It is a version 7 UUID: the first 48 bits are the time in milliseconds, the other 74
/// bits (besides version and variant) random: fewer than a version 4 UUID's 122, but
/// still far beyond guessing, and the ids sort by when they were made. That matters because the state tree is a B-tree keyed by
/// them: a new key's record and a request's deduplication record are looked up (to
/// prove them new) and inserted on every replica, and with random ids each lookup and
/// insert went to a different leaf, mostly not in the page cache once the tree outgrew
/// it. Time-ordered ids all land on the tree's newest leaves. What the id reveals is when
/// it was made, to the millisecond, which for a key is its `CreationDate` anyway.
///
/// The random bits come from the thread's CSPRNG (`rand::thread_rng`, seeded from the
/// operating system), not from a system call per id: a node makes several ids per
/// request, and `getrandom` for each was about 1% of a node's CPU.
///
/// Called by the proposing node, never inside apply.
pub fn new_id() -> String {
    use rand::RngCore;
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut random = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut random);
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

/// A KMS key id: a lowercase UUID, as AWS uses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(String);

impl KeyId {
    /// A fresh key id (see [`new_id`]). Called by the proposing node, never inside apply.
    pub fn generate() -> Self {
        KeyId(new_id())
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

    /// The ARN of an alias in this region: `arn:keyraft:<region>:<account>:alias/<name>`.
    pub fn alias_arn(&self, account: &AccountId, alias: &AliasName) -> String {
        format!("arn:keyraft:{}:{}:{}", self.0, account, alias)
    }

    /// Parses a caller's key reference: a key id, a key ARN, an alias name or an alias
    /// ARN of this region. Aliases still have to be looked up in the state.
    pub fn parse_key_ref(&self, key_ref: &str) -> Result<KeyRef, KmsError> {
        if key_ref.is_empty() {
            return Err(KmsError::validation("KeyId must not be empty"));
        }
        if key_ref.starts_with("alias/") {
            return Ok(KeyRef::Alias {
                account: None,
                name: AliasName::parse(key_ref).map_err(|_| KmsError::key_not_found(key_ref))?,
            });
        }
        let Some(rest) = key_ref.strip_prefix("arn:") else {
            return KeyId::parse(key_ref)
                .map(KeyRef::Key)
                .map_err(|_| KmsError::key_not_found(key_ref));
        };
        // arn:keyraft:<region>:<account>:key/<id> or ...:alias/<name>
        let invalid = || {
            KmsError::new(
                crate::ErrorCode::InvalidArn,
                format!("'{}' is not a valid key or alias ARN", truncate(key_ref)),
            )
        };
        let parts: Vec<&str> = rest.splitn(4, ':').collect();
        let [partition, region, account, resource] = parts.as_slice() else {
            return Err(invalid());
        };
        if *partition != "keyraft" {
            return Err(invalid());
        }
        let account = AccountId::parse(account).map_err(|_| invalid())?;
        if *region != self.0 {
            return Err(KmsError::key_not_found(key_ref));
        }
        if let Some(id) = resource.strip_prefix("key/") {
            return KeyId::parse(id)
                .map(KeyRef::Key)
                .map_err(|_| KmsError::key_not_found(key_ref));
        }
        if resource.starts_with("alias/") {
            let name = AliasName::parse(resource).map_err(|_| KmsError::key_not_found(key_ref))?;
            return Ok(KeyRef::Alias {
                account: Some(account),
                name,
            });
        }
        Err(invalid())
    }
}

/// What a caller's key reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    /// A key, by id or key ARN.
    Key(KeyId),
    /// An alias, by name (the caller's account) or alias ARN (its account).
    Alias {
        /// The account of an alias ARN; `None` for a bare alias name.
        account: Option<AccountId>,
        /// The alias.
        name: AliasName,
    },
}

/// An alias name: `alias/` followed by 1–250 characters of `[a-zA-Z0-9:/_-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AliasName(String);

/// Alias prefixes reserved for the service (AWS-managed and Keyraft-managed keys).
pub const RESERVED_ALIAS_PREFIXES: [&str; 2] = ["alias/aws/", "alias/keyraft/"];

impl AliasName {
    /// Validates an alias name (AWS's rules).
    pub fn parse(s: &str) -> Result<AliasName, KmsError> {
        let invalid = |why: &str| {
            KmsError::new(
                crate::ErrorCode::InvalidAliasName,
                format!("Alias '{}' {why}", truncate(s)),
            )
        };
        let Some(rest) = s.strip_prefix("alias/") else {
            return Err(invalid("must begin with 'alias/'"));
        };
        if rest.is_empty() || s.len() > 256 {
            return Err(invalid("must be 7 to 256 characters long"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'/' | b'_' | b'-'))
        {
            return Err(invalid(
                "may contain only a-z, A-Z, 0-9, ':', '/', '_' and '-'",
            ));
        }
        Ok(AliasName(s.to_string()))
    }

    /// Like [`AliasName::parse`], and refuses the reserved prefixes: what a customer may
    /// create, point elsewhere or delete.
    pub fn parse_customer(s: &str) -> Result<AliasName, KmsError> {
        let name = AliasName::parse(s)?;
        if RESERVED_ALIAS_PREFIXES.iter().any(|p| s.starts_with(p)) {
            return Err(KmsError::new(
                crate::ErrorCode::InvalidAliasName,
                format!(
                    "Alias '{}' uses a reserved prefix (alias/aws/, alias/keyraft/)",
                    truncate(s)
                ),
            ));
        }
        Ok(name)
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AliasName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    fn new_ids_are_valid_key_ids_and_sort_by_time() {
        let first = new_id();
        // The first 12 hex digits are the millisecond; take the first id of a later one.
        let second = loop {
            let id = new_id();
            if id[..13] != first[..13] {
                break id;
            }
        };
        assert!(first < second, "{first} then {second}");
        assert_eq!(KeyId::parse(&second).unwrap().as_str(), second);
        assert_eq!(uuid::Uuid::parse_str(&second).unwrap().get_version_num(), 7);
        // Made in the same millisecond, ids still differ in their random bits.
        let many: std::collections::BTreeSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(many.len(), 1000);
    }

    #[test]
    fn key_refs_resolve() {
        let region = Region::parse("dev-1").unwrap();
        let account = AccountId::parse("111122223333").unwrap();
        let id = KeyId::generate();
        let arn = region.key_arn(&account, &id);
        let key = |r: &str| region.parse_key_ref(r);
        assert_eq!(key(id.as_str()).unwrap(), KeyRef::Key(id.clone()));
        assert_eq!(key(&arn).unwrap(), KeyRef::Key(id));
        let other = arn.replace("dev-1", "dev-2");
        assert_eq!(key(&other).unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(key("arn:aws:kms").unwrap_err().code, ErrorCode::InvalidArn);
        assert_eq!(key("nope").unwrap_err().code, ErrorCode::NotFound);
        assert_eq!(key("").unwrap_err().code, ErrorCode::Validation);
        let alias = AliasName::parse("alias/orders").unwrap();
        assert_eq!(
            key("alias/orders").unwrap(),
            KeyRef::Alias {
                account: None,
                name: alias.clone()
            }
        );
        let alias_arn = region.alias_arn(&account, &alias);
        assert_eq!(alias_arn, "arn:keyraft:dev-1:111122223333:alias/orders");
        assert_eq!(
            key(&alias_arn).unwrap(),
            KeyRef::Alias {
                account: Some(account),
                name: alias
            }
        );
        assert_eq!(key("alias/bad name").unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn alias_rules() {
        assert!(AliasName::parse("alias/a-b_c:d/e").is_ok());
        for bad in ["alias/", "orders", "alias/has space", "alias/é"] {
            assert_eq!(
                AliasName::parse(bad).unwrap_err().code,
                ErrorCode::InvalidAliasName,
                "{bad}"
            );
        }
        assert!(AliasName::parse(&format!("alias/{}", "x".repeat(251))).is_err());
        assert!(AliasName::parse(&format!("alias/{}", "x".repeat(250))).is_ok());
        assert!(AliasName::parse_customer("alias/aws/s3").is_err());
        assert!(AliasName::parse_customer("alias/keyraft/svc").is_err());
        assert!(AliasName::parse("alias/aws/s3").is_ok());
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
