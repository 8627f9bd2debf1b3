//! KMS keys as the replicated state records them and as callers see them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, KmsError};
use crate::ids::{AccountId, KeyId};

/// An encryption context: a non-secret map bound to a ciphertext as additional
/// authenticated data. A `BTreeMap` so that every encoding of it is canonical.
pub type EncryptionContext = BTreeMap<String, String>;

/// The life-cycle state of a key, named as AWS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// Usable for cryptography.
    Enabled,
    /// Kept, but refused for cryptography.
    Disabled,
    /// Scheduled for deletion.
    PendingDeletion,
    /// Waiting for imported key material.
    PendingImport,
    /// Not usable on this node (for example a disconnected key store).
    Unavailable,
}

impl KeyState {
    /// The AWS name, e.g. `Enabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
            KeyState::Unavailable => "Unavailable",
        }
    }
}

/// What a key is made of. Only the symmetric spec exists so far; asymmetric and HMAC
/// specs arrive with their own issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeySpec {
    /// AES-256-GCM.
    SymmetricDefault,
    /// HMAC with SHA-256 (a 256-bit key).
    Hmac256,
    /// HMAC with SHA-384 (a 384-bit key).
    Hmac384,
    /// HMAC with SHA-512 (a 512-bit key).
    Hmac512,
}

impl KeySpec {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySpec::SymmetricDefault => "SYMMETRIC_DEFAULT",
            KeySpec::Hmac256 => "HMAC_256",
            KeySpec::Hmac384 => "HMAC_384",
            KeySpec::Hmac512 => "HMAC_512",
        }
    }

    /// The key material's length in bytes.
    pub fn material_len(self) -> usize {
        match self {
            KeySpec::SymmetricDefault | KeySpec::Hmac256 => 32,
            KeySpec::Hmac384 => 48,
            KeySpec::Hmac512 => 64,
        }
    }

    /// The MAC algorithm of an HMAC spec (`HMAC_SHA_256`, ...).
    pub fn mac_algorithm(self) -> Option<&'static str> {
        match self {
            KeySpec::SymmetricDefault => None,
            KeySpec::Hmac256 => Some("HMAC_SHA_256"),
            KeySpec::Hmac384 => Some("HMAC_SHA_384"),
            KeySpec::Hmac512 => Some("HMAC_SHA_512"),
        }
    }

    /// The usage a key of this spec must have.
    pub fn usage(self) -> KeyUsage {
        match self {
            KeySpec::SymmetricDefault => KeyUsage::EncryptDecrypt,
            _ => KeyUsage::GenerateVerifyMac,
        }
    }

    /// Parses an AWS key spec name; unknown or not yet supported specs are errors.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        match s {
            "" | "SYMMETRIC_DEFAULT" => Ok(KeySpec::SymmetricDefault),
            "HMAC_256" => Ok(KeySpec::Hmac256),
            "HMAC_384" => Ok(KeySpec::Hmac384),
            "HMAC_512" => Ok(KeySpec::Hmac512),
            other => Err(KmsError::new(
                ErrorCode::UnsupportedOperation,
                format!("KeySpec '{}' is not supported", crate::ids::truncate(other)),
            )),
        }
    }
}

/// What a key may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyUsage {
    /// Encrypt, Decrypt, GenerateDataKey*.
    EncryptDecrypt,
    /// GenerateMac, VerifyMac.
    GenerateVerifyMac,
}

impl KeyUsage {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsage::EncryptDecrypt => "ENCRYPT_DECRYPT",
            KeyUsage::GenerateVerifyMac => "GENERATE_VERIFY_MAC",
        }
    }

    /// Parses an AWS key usage name.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        match s {
            "" | "ENCRYPT_DECRYPT" => Ok(KeyUsage::EncryptDecrypt),
            "GENERATE_VERIFY_MAC" => Ok(KeyUsage::GenerateVerifyMac),
            other => Err(KmsError::new(
                ErrorCode::UnsupportedOperation,
                format!(
                    "KeyUsage '{}' is not supported",
                    crate::ids::truncate(other)
                ),
            )),
        }
    }
}

/// Where the key material came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Generated inside Keyraft's HSMs (AWS: `AWS_KMS`).
    Kms,
    /// Imported by the customer (AWS: `EXTERNAL`).
    External,
}

impl Origin {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Kms => "AWS_KMS",
            Origin::External => "EXTERNAL",
        }
    }

    /// Parses `AWS_KMS` (also `KEYRAFT`, or empty) and `EXTERNAL`.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        match s {
            "" | "AWS_KMS" | "KEYRAFT" => Ok(Origin::Kms),
            "EXTERNAL" => Ok(Origin::External),
            other => Err(KmsError::new(
                ErrorCode::UnsupportedOperation,
                format!("Origin '{}' is not supported", crate::ids::truncate(other)),
            )),
        }
    }
}

/// Who manages the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyManager {
    /// The account's own key.
    Customer,
    /// A key the service manages on behalf of an integrated service (AWS: `AWS`): it
    /// cannot be disabled, deleted, re-tagged or have its rotation changed by the
    /// account, rotates every year, and does not count against quotas.
    Service,
}

impl KeyManager {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyManager::Customer => "CUSTOMER",
            KeyManager::Service => "AWS",
        }
    }
}

/// A cryptographic operation, as recorded in audit checks and used for permission checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CryptoOperation {
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// GenerateDataKey.
    GenerateDataKey,
    /// GenerateDataKeyWithoutPlaintext.
    GenerateDataKeyWithoutPlaintext,
    /// GenerateMac.
    GenerateMac,
    /// VerifyMac.
    VerifyMac,
}

impl CryptoOperation {
    /// The AWS operation name.
    pub fn as_str(self) -> &'static str {
        match self {
            CryptoOperation::Encrypt => "Encrypt",
            CryptoOperation::Decrypt => "Decrypt",
            CryptoOperation::GenerateDataKey => "GenerateDataKey",
            CryptoOperation::GenerateDataKeyWithoutPlaintext => "GenerateDataKeyWithoutPlaintext",
            CryptoOperation::GenerateMac => "GenerateMac",
            CryptoOperation::VerifyMac => "VerifyMac",
        }
    }
}

/// The size of a data key from GenerateDataKey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataKeySpec {
    /// 16 bytes.
    Aes128,
    /// 32 bytes.
    Aes256,
}

impl DataKeySpec {
    /// Parses `AES_128` / `AES_256`.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        match s {
            "AES_128" => Ok(DataKeySpec::Aes128),
            "AES_256" => Ok(DataKeySpec::Aes256),
            other => Err(KmsError::validation(format!(
                "Value '{}' at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]",
                crate::ids::truncate(other)
            ))),
        }
    }

    /// The key length in bytes.
    pub fn byte_len(self) -> usize {
        match self {
            DataKeySpec::Aes128 => 16,
            DataKeySpec::Aes256 => 32,
        }
    }

    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            DataKeySpec::Aes128 => "AES_128",
            DataKeySpec::Aes256 => "AES_256",
        }
    }
}

/// A key's metadata, replicated through Raft. Never holds key material: that lives in the
/// state machine only wrapped under the domain key, beside this record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMetadata {
    /// The key id.
    pub key_id: KeyId,
    /// The key ARN.
    pub arn: String,
    /// The owning account.
    pub account: AccountId,
    /// Free text given by the creator.
    pub description: String,
    /// Life-cycle state.
    pub key_state: KeyState,
    /// What the key is made of.
    pub key_spec: KeySpec,
    /// What it may be used for.
    pub key_usage: KeyUsage,
    /// Where the material came from.
    pub origin: Origin,
    /// Who manages it.
    pub key_manager: KeyManager,
    /// Creation time, milliseconds since the Unix epoch (the proposer's clock).
    pub creation_date_ms: u64,
    /// Bumped by every change of metadata that can affect an authorization decision; a
    /// cryptographic request names the epoch it was decided under and apply re-checks it.
    pub epoch: u64,
    /// The backing-key version new encryptions use.
    pub current_version: u32,
    /// When a key pending deletion will be destroyed (ms since the Unix epoch).
    pub deletion_date_ms: Option<u64>,
    /// Automatic rotation period in days, if automatic rotation is enabled.
    pub rotation_period_days: Option<u32>,
    /// When the next automatic rotation is due (ms since the Unix epoch).
    pub next_rotation_ms: Option<u64>,
    /// When imported key material expires (ms since the Unix epoch); `None`: never.
    pub valid_to_ms: Option<u64>,
}

impl KeyMetadata {
    /// Whether `op` may run against this key now, and if not, the error AWS would give.
    pub fn check_usable(&self, op: CryptoOperation) -> Result<(), KmsError> {
        match self.key_state {
            KeyState::Enabled => {}
            KeyState::Disabled => {
                return Err(KmsError::new(
                    ErrorCode::Disabled,
                    format!("{} is disabled.", self.arn),
                ))
            }
            other => {
                return Err(KmsError::new(
                    ErrorCode::InvalidState,
                    format!("{} is {}", self.arn, other.as_str()),
                ))
            }
        }
        let allowed = match self.key_usage {
            KeyUsage::EncryptDecrypt => !matches!(
                op,
                CryptoOperation::GenerateMac | CryptoOperation::VerifyMac
            ),
            KeyUsage::GenerateVerifyMac => matches!(
                op,
                CryptoOperation::GenerateMac | CryptoOperation::VerifyMac
            ),
        };
        if allowed {
            Ok(())
        } else {
            Err(KmsError::new(
                ErrorCode::InvalidKeyUsage,
                format!(
                    "{} key usage is {}, which does not allow {}",
                    self.arn,
                    self.key_usage.as_str(),
                    op.as_str()
                ),
            ))
        }
    }
}
