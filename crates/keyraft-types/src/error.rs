//! The one error type that crosses every boundary of Keyraft.
//!
//! Codes are named as AWS KMS names them, so that a caller who knows AWS knows Keyraft.
//! Each code has exactly one wire mapping (see `keyraft-proto`), and the client maps it
//! back; nobody ever classifies an error by its message text. Messages are written for
//! the caller and never contain key material, secrets or internal paths.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable error code. The string form (`as_str`) is what travels on the wire and what
/// the CLI prints; it never changes once released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The named key (or other resource) does not exist in this region and account.
    NotFound,
    /// The key is disabled; cryptographic operations are refused until it is enabled.
    Disabled,
    /// The key's state does not allow the operation (for example PendingDeletion).
    InvalidState,
    /// The ciphertext is malformed, was tampered with, or the encryption context differs.
    InvalidCiphertext,
    /// Decrypt named a key, but the ciphertext was made under another key.
    IncorrectKey,
    /// A quota (keys per account, ...) would be exceeded.
    LimitExceeded,
    /// The caller is authenticated but not allowed to do this.
    AccessDenied,
    /// The resource already exists.
    AlreadyExists,
    /// A parameter is missing, malformed or out of range.
    Validation,
    /// The paging marker is not one this service issued.
    InvalidMarker,
    /// The key's usage does not allow this operation.
    InvalidKeyUsage,
    /// The operation is not supported for this key or in this deployment.
    UnsupportedOperation,
    /// The ARN is malformed or names another region.
    InvalidArn,
    /// The alias name breaks the naming rules or uses a reserved prefix.
    InvalidAliasName,
    /// A tag key or value breaks the tagging rules, or too many tags.
    Tag,
    /// Re-imported key material is not the material the key had.
    IncorrectKeyMaterial,
    /// The import token has expired.
    ExpiredImportToken,
    /// The import token is not one issued for this key.
    InvalidImportToken,
    /// VerifyMac: the MAC does not match the message.
    InvalidMac,
    /// Verify: the signature does not match the message and key.
    KmsInvalidSignature,
    /// A key or principal policy is not valid JSON, breaks the policy grammar or is too
    /// large; the message points at the fault.
    MalformedPolicyDocument,
    /// A grant token is malformed, unknown or does not name the key it is used with.
    InvalidGrantToken,
    /// A grant id is malformed or names no grant of the key.
    InvalidGrantId,
    /// Temporary credentials (from AssumeRole) have expired.
    ExpiredToken,
    /// The access key id is unknown (or disabled).
    UnrecognizedClient,
    /// The request signature is wrong, stale or replayed.
    InvalidSignature,
    /// The request rate is too high.
    Throttling,
    /// A concurrent change conflicts with this one.
    Conflict,
    /// This node is not the leader; the message or metadata carries the leader hint.
    NotLeader,
    /// The cluster could not commit the request in time (no quorum); the outcome of a
    /// mutation is unknown and it may be retried with the same request id.
    DependencyTimeout,
    /// The key's material is not available on this node (its HSM lacks the domain key).
    KeyUnavailable,
    /// An internal fault. Details are logged on the node, never sent to the caller.
    Internal,
}

impl ErrorCode {
    /// Every code, for exhaustive tests of the wire tables.
    pub const ALL: [ErrorCode; 32] = [
        ErrorCode::NotFound,
        ErrorCode::Disabled,
        ErrorCode::InvalidState,
        ErrorCode::InvalidCiphertext,
        ErrorCode::IncorrectKey,
        ErrorCode::LimitExceeded,
        ErrorCode::AccessDenied,
        ErrorCode::AlreadyExists,
        ErrorCode::Validation,
        ErrorCode::InvalidMarker,
        ErrorCode::InvalidKeyUsage,
        ErrorCode::UnsupportedOperation,
        ErrorCode::InvalidArn,
        ErrorCode::InvalidAliasName,
        ErrorCode::Tag,
        ErrorCode::IncorrectKeyMaterial,
        ErrorCode::ExpiredImportToken,
        ErrorCode::InvalidImportToken,
        ErrorCode::InvalidMac,
        ErrorCode::KmsInvalidSignature,
        ErrorCode::MalformedPolicyDocument,
        ErrorCode::InvalidGrantToken,
        ErrorCode::InvalidGrantId,
        ErrorCode::ExpiredToken,
        ErrorCode::UnrecognizedClient,
        ErrorCode::InvalidSignature,
        ErrorCode::Throttling,
        ErrorCode::Conflict,
        ErrorCode::NotLeader,
        ErrorCode::DependencyTimeout,
        ErrorCode::KeyUnavailable,
        ErrorCode::Internal,
    ];

    /// The AWS-style name of the code, e.g. `NotFoundException`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "NotFoundException",
            ErrorCode::Disabled => "DisabledException",
            ErrorCode::InvalidState => "KMSInvalidStateException",
            ErrorCode::InvalidCiphertext => "InvalidCiphertextException",
            ErrorCode::IncorrectKey => "IncorrectKeyException",
            ErrorCode::LimitExceeded => "LimitExceededException",
            ErrorCode::AccessDenied => "AccessDeniedException",
            ErrorCode::AlreadyExists => "AlreadyExistsException",
            ErrorCode::Validation => "ValidationException",
            ErrorCode::InvalidMarker => "InvalidMarkerException",
            ErrorCode::InvalidKeyUsage => "InvalidKeyUsageException",
            ErrorCode::UnsupportedOperation => "UnsupportedOperationException",
            ErrorCode::InvalidArn => "InvalidArnException",
            ErrorCode::InvalidAliasName => "InvalidAliasNameException",
            ErrorCode::Tag => "TagException",
            ErrorCode::IncorrectKeyMaterial => "IncorrectKeyMaterialException",
            ErrorCode::ExpiredImportToken => "ExpiredImportTokenException",
            ErrorCode::InvalidImportToken => "InvalidImportTokenException",
            ErrorCode::InvalidMac => "KMSInvalidMacException",
            ErrorCode::KmsInvalidSignature => "KMSInvalidSignatureException",
            ErrorCode::MalformedPolicyDocument => "MalformedPolicyDocumentException",
            ErrorCode::InvalidGrantToken => "InvalidGrantTokenException",
            ErrorCode::InvalidGrantId => "InvalidGrantIdException",
            ErrorCode::ExpiredToken => "ExpiredTokenException",
            ErrorCode::UnrecognizedClient => "UnrecognizedClientException",
            ErrorCode::InvalidSignature => "InvalidSignatureException",
            ErrorCode::Throttling => "ThrottlingException",
            ErrorCode::Conflict => "ConflictException",
            ErrorCode::NotLeader => "NotLeaderException",
            ErrorCode::DependencyTimeout => "DependencyTimeoutException",
            ErrorCode::KeyUnavailable => "KeyUnavailableException",
            ErrorCode::Internal => "KMSInternalException",
        }
    }

    /// Parses the AWS-style name back into a code.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Whether a caller may retry the same request (with the same request id) and expect
    /// a different outcome without changing anything first.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::DependencyTimeout
                | ErrorCode::Throttling
                | ErrorCode::KeyUnavailable
                | ErrorCode::Internal
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as a caller sees it: a stable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsError {
    /// The stable code.
    pub code: ErrorCode,
    /// A message for people; never parsed by programs.
    pub message: String,
}

/// A result whose error is a [`KmsError`].
pub type KmsResult<T> = Result<T, KmsError>;

impl KmsError {
    /// Builds an error from a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        KmsError {
            code,
            message: message.into(),
        }
    }

    /// `NotFoundException` for a key id or ARN.
    pub fn key_not_found(key: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("Key '{key}' does not exist"))
    }

    /// `ValidationException` with the AWS phrasing.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::Validation,
            format!("1 validation error detected: {}", message.into()),
        )
    }

    /// `KMSInternalException`; the detail stays in the node's log.
    pub fn internal() -> Self {
        Self::new(
            ErrorCode::Internal,
            "The request was rejected because an internal exception occurred. Retry the request.",
        )
    }
}

impl fmt::Display for KmsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for KmsError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("NoSuchThing"), None);
    }
}
