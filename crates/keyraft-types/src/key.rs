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

/// What a key is made of.
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
    /// An ECDSA key pair on NIST P-256 (secp256r1).
    EccNistP256,
    /// A 2048-bit RSA key pair.
    Rsa2048,
    /// A 3072-bit RSA key pair.
    Rsa3072,
    /// A 4096-bit RSA key pair.
    Rsa4096,
}

impl KeySpec {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeySpec::SymmetricDefault => "SYMMETRIC_DEFAULT",
            KeySpec::Hmac256 => "HMAC_256",
            KeySpec::Hmac384 => "HMAC_384",
            KeySpec::Hmac512 => "HMAC_512",
            KeySpec::EccNistP256 => "ECC_NIST_P256",
            KeySpec::Rsa2048 => "RSA_2048",
            KeySpec::Rsa3072 => "RSA_3072",
            KeySpec::Rsa4096 => "RSA_4096",
        }
    }

    /// The length in bytes of symmetric (AES or HMAC) key material; `None` for key pairs.
    pub fn material_len(self) -> Option<usize> {
        match self {
            KeySpec::SymmetricDefault | KeySpec::Hmac256 => Some(32),
            KeySpec::Hmac384 => Some(48),
            KeySpec::Hmac512 => Some(64),
            _ => None,
        }
    }

    /// The modulus size of an RSA spec.
    pub fn rsa_bits(self) -> Option<usize> {
        match self {
            KeySpec::Rsa2048 => Some(2048),
            KeySpec::Rsa3072 => Some(3072),
            KeySpec::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// Whether keys of this spec are key pairs (with a public half).
    pub fn is_asymmetric(self) -> bool {
        matches!(
            self,
            KeySpec::EccNistP256 | KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096
        )
    }

    /// The MAC algorithm of an HMAC spec (`HMAC_SHA_256`, ...).
    pub fn mac_algorithm(self) -> Option<&'static str> {
        match self {
            KeySpec::Hmac256 => Some("HMAC_SHA_256"),
            KeySpec::Hmac384 => Some("HMAC_SHA_384"),
            KeySpec::Hmac512 => Some("HMAC_SHA_512"),
            _ => None,
        }
    }

    /// The usages a key of this spec may have, the first being what AWS would pick if
    /// it picked one (AWS requires an explicit usage for every spec but symmetric).
    pub fn usages(self) -> &'static [KeyUsage] {
        match self {
            KeySpec::SymmetricDefault => &[KeyUsage::EncryptDecrypt],
            KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512 => {
                &[KeyUsage::GenerateVerifyMac]
            }
            KeySpec::EccNistP256 => &[KeyUsage::SignVerify],
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => {
                &[KeyUsage::EncryptDecrypt, KeyUsage::SignVerify]
            }
        }
    }

    /// The signing algorithms a SIGN_VERIFY key of this spec supports.
    pub fn signing_algorithms(self) -> &'static [SigningAlgorithm] {
        use SigningAlgorithm::*;
        match self {
            KeySpec::EccNistP256 => &[EcdsaSha256],
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => &[
                RsassaPssSha256,
                RsassaPssSha384,
                RsassaPssSha512,
                RsassaPkcs1V15Sha256,
                RsassaPkcs1V15Sha384,
                RsassaPkcs1V15Sha512,
            ],
            _ => &[],
        }
    }

    /// The encryption algorithms an ENCRYPT_DECRYPT key of this spec supports.
    pub fn encryption_algorithms(self) -> &'static [EncryptionAlgorithm] {
        match self {
            KeySpec::SymmetricDefault => &[EncryptionAlgorithm::SymmetricDefault],
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => &[
                EncryptionAlgorithm::RsaesOaepSha1,
                EncryptionAlgorithm::RsaesOaepSha256,
            ],
            _ => &[],
        }
    }

    /// Parses an AWS key spec name; unknown or not yet supported specs are errors.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        match s {
            "" | "SYMMETRIC_DEFAULT" => Ok(KeySpec::SymmetricDefault),
            "HMAC_256" => Ok(KeySpec::Hmac256),
            "HMAC_384" => Ok(KeySpec::Hmac384),
            "HMAC_512" => Ok(KeySpec::Hmac512),
            "ECC_NIST_P256" => Ok(KeySpec::EccNistP256),
            "RSA_2048" => Ok(KeySpec::Rsa2048),
            "RSA_3072" => Ok(KeySpec::Rsa3072),
            "RSA_4096" => Ok(KeySpec::Rsa4096),
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
    /// Encrypt, Decrypt (and, for symmetric keys, GenerateDataKey*).
    EncryptDecrypt,
    /// GenerateMac, VerifyMac.
    GenerateVerifyMac,
    /// Sign, Verify.
    SignVerify,
}

impl KeyUsage {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsage::EncryptDecrypt => "ENCRYPT_DECRYPT",
            KeyUsage::GenerateVerifyMac => "GENERATE_VERIFY_MAC",
            KeyUsage::SignVerify => "SIGN_VERIFY",
        }
    }

    /// Parses an AWS key usage name.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        match s {
            "" | "ENCRYPT_DECRYPT" => Ok(KeyUsage::EncryptDecrypt),
            "GENERATE_VERIFY_MAC" => Ok(KeyUsage::GenerateVerifyMac),
            "SIGN_VERIFY" => Ok(KeyUsage::SignVerify),
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

/// The SHA-2 function a signing or encryption algorithm hashes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sha2 {
    /// SHA-1 (only inside RSAES_OAEP_SHA_1, never for signatures).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Sha2 {
    /// The digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Sha2::Sha1 => 20,
            Sha2::Sha256 => 32,
            Sha2::Sha384 => 48,
            Sha2::Sha512 => 64,
        }
    }
}

/// A signature algorithm, named as AWS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlgorithm {
    /// RSASSA-PSS with SHA-256 and a salt as long as the digest.
    RsassaPssSha256,
    /// RSASSA-PSS with SHA-384.
    RsassaPssSha384,
    /// RSASSA-PSS with SHA-512.
    RsassaPssSha512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsassaPkcs1V15Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RsassaPkcs1V15Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RsassaPkcs1V15Sha512,
    /// ECDSA with SHA-256; signatures are DER-encoded (r, s).
    EcdsaSha256,
}

impl SigningAlgorithm {
    /// Every algorithm, in AWS's order.
    pub const ALL: [SigningAlgorithm; 7] = [
        SigningAlgorithm::RsassaPssSha256,
        SigningAlgorithm::RsassaPssSha384,
        SigningAlgorithm::RsassaPssSha512,
        SigningAlgorithm::RsassaPkcs1V15Sha256,
        SigningAlgorithm::RsassaPkcs1V15Sha384,
        SigningAlgorithm::RsassaPkcs1V15Sha512,
        SigningAlgorithm::EcdsaSha256,
    ];

    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::RsassaPssSha256 => "RSASSA_PSS_SHA_256",
            SigningAlgorithm::RsassaPssSha384 => "RSASSA_PSS_SHA_384",
            SigningAlgorithm::RsassaPssSha512 => "RSASSA_PSS_SHA_512",
            SigningAlgorithm::RsassaPkcs1V15Sha256 => "RSASSA_PKCS1_V1_5_SHA_256",
            SigningAlgorithm::RsassaPkcs1V15Sha384 => "RSASSA_PKCS1_V1_5_SHA_384",
            SigningAlgorithm::RsassaPkcs1V15Sha512 => "RSASSA_PKCS1_V1_5_SHA_512",
            SigningAlgorithm::EcdsaSha256 => "ECDSA_SHA_256",
        }
    }

    /// The hash the algorithm signs.
    pub fn hash(self) -> Sha2 {
        match self {
            SigningAlgorithm::RsassaPssSha256
            | SigningAlgorithm::RsassaPkcs1V15Sha256
            | SigningAlgorithm::EcdsaSha256 => Sha2::Sha256,
            SigningAlgorithm::RsassaPssSha384 | SigningAlgorithm::RsassaPkcs1V15Sha384 => {
                Sha2::Sha384
            }
            SigningAlgorithm::RsassaPssSha512 | SigningAlgorithm::RsassaPkcs1V15Sha512 => {
                Sha2::Sha512
            }
        }
    }

    /// Parses an AWS signing algorithm name (ValidationException otherwise, as AWS).
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        SigningAlgorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                KmsError::validation(format!(
                    "Value '{}' at 'signingAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
                    crate::ids::truncate(s),
                    SigningAlgorithm::ALL.map(|a| a.as_str()).join(", ")
                ))
            })
    }
}

/// An encryption algorithm, named as AWS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EncryptionAlgorithm {
    /// AES-256-GCM under a symmetric key, with Keyraft's ciphertext blob.
    SymmetricDefault,
    /// RSAES-OAEP with SHA-1 (and MGF1 with SHA-1).
    RsaesOaepSha1,
    /// RSAES-OAEP with SHA-256 (and MGF1 with SHA-256).
    RsaesOaepSha256,
}

impl EncryptionAlgorithm {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            EncryptionAlgorithm::SymmetricDefault => "SYMMETRIC_DEFAULT",
            EncryptionAlgorithm::RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
            EncryptionAlgorithm::RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
        }
    }

    /// Parses an AWS encryption algorithm name; empty means SYMMETRIC_DEFAULT.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        match s {
            "" | "SYMMETRIC_DEFAULT" => Ok(EncryptionAlgorithm::SymmetricDefault),
            "RSAES_OAEP_SHA_1" => Ok(EncryptionAlgorithm::RsaesOaepSha1),
            "RSAES_OAEP_SHA_256" => Ok(EncryptionAlgorithm::RsaesOaepSha256),
            other => Err(KmsError::validation(format!(
                "Value '{}' at 'encryptionAlgorithm' failed to satisfy constraint: Member must satisfy enum value set: [SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1, RSAES_OAEP_SHA_256]",
                crate::ids::truncate(other)
            ))),
        }
    }

    /// The OAEP hash, for an RSA algorithm.
    pub fn oaep_hash(self) -> Option<Sha2> {
        match self {
            EncryptionAlgorithm::SymmetricDefault => None,
            EncryptionAlgorithm::RsaesOaepSha1 => Some(Sha2::Sha1),
            EncryptionAlgorithm::RsaesOaepSha256 => Some(Sha2::Sha256),
        }
    }

    /// The largest plaintext an RSA key of `bits` encrypts with this algorithm
    /// (k - 2·hLen - 2 bytes); 4096 for SYMMETRIC_DEFAULT.
    pub fn max_plaintext(self, rsa_bits: Option<usize>) -> usize {
        match (self.oaep_hash(), rsa_bits) {
            (Some(h), Some(bits)) => (bits / 8).saturating_sub(2 * h.digest_len() + 2),
            _ => 4096,
        }
    }
}

/// How Sign and Verify read their message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageType {
    /// The message itself (at most 4096 bytes); the service hashes it.
    Raw,
    /// The digest of the message, as long as the algorithm's hash.
    Digest,
}

impl MessageType {
    /// The AWS name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Raw => "RAW",
            MessageType::Digest => "DIGEST",
        }
    }

    /// Parses `RAW` (also empty) or `DIGEST`.
    pub fn parse(s: &str) -> Result<Self, KmsError> {
        match s {
            "" | "RAW" => Ok(MessageType::Raw),
            "DIGEST" => Ok(MessageType::Digest),
            other => Err(KmsError::validation(format!(
                "Value '{}' at 'messageType' failed to satisfy constraint: Member must satisfy enum value set: [RAW, DIGEST]",
                crate::ids::truncate(other)
            ))),
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
    /// Sign.
    Sign,
    /// Verify.
    Verify,
    /// GetPublicKey.
    GetPublicKey,
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
            CryptoOperation::Sign => "Sign",
            CryptoOperation::Verify => "Verify",
            CryptoOperation::GetPublicKey => "GetPublicKey",
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
        use CryptoOperation as Op;
        let allowed = match op {
            Op::Encrypt | Op::Decrypt => self.key_usage == KeyUsage::EncryptDecrypt,
            Op::GenerateDataKey | Op::GenerateDataKeyWithoutPlaintext => {
                self.key_usage == KeyUsage::EncryptDecrypt && !self.key_spec.is_asymmetric()
            }
            Op::GenerateMac | Op::VerifyMac => self.key_usage == KeyUsage::GenerateVerifyMac,
            Op::Sign | Op::Verify => self.key_usage == KeyUsage::SignVerify,
            Op::GetPublicKey if self.key_spec.is_asymmetric() => true,
            Op::GetPublicKey => {
                return Err(KmsError::new(
                    ErrorCode::UnsupportedOperation,
                    format!(
                        "{} is a {} key, which has no public key",
                        self.arn,
                        self.key_spec.as_str()
                    ),
                ))
            }
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
