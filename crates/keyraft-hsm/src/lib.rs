//! # Keyraft's HSM seam
//!
//! All cryptography with key material happens behind the [`Hsm`] trait, so the rest of
//! Keyraft only ever handles key material *wrapped* under the region's domain key
//! ([`WrappedKey`]), ciphertext blobs, and — for GenerateDataKey and Decrypt — the
//! plaintext the caller asked for. Backends plug in behind the trait the way rustls's
//! crypto providers do: a software HSM ([`soft::SoftHsm`]) today, PKCS#11 later, and
//! every backend must pass the same [`conformance`] suite.
//!
//! - [`blob`]: the self-describing ciphertext format (parsing needs no HSM).
//! - [`context`]: the canonical, length-prefixed encoding of encryption contexts.
//! - [`soft`]: the software HSM, with its domain key sealed on disk.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod asymmetric;
pub mod blob;
pub mod conformance;
pub mod context;
pub mod soft;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use keyraft_types::{
    EncryptionAlgorithm, EncryptionContext, ErrorCode, KeyId, KeySpec, KmsError, SigningAlgorithm,
};

pub use blob::CiphertextBlob;
pub use soft::SoftHsm;

/// Key material wrapped under the region's domain key. Safe to store and replicate.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey(pub Vec<u8>);

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WrappedKey({} bytes)", self.0.len())
    }
}

/// The public half of the ephemeral key a joining node's HSM offers to receive the
/// domain key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinPublicKey(pub [u8; 32]);

/// The domain key wrapped to a joining node's ephemeral public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainKeyTransfer {
    /// The sender's ephemeral X25519 public key.
    pub sender_public: [u8; 32],
    /// AES-GCM nonce.
    pub nonce: [u8; 12],
    /// The wrapped domain key (AES-256-GCM output).
    pub ciphertext: Vec<u8>,
}

/// An RSA key pair for importing key material: the public half for the caller, the
/// private half only wrapped under the domain key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportWrappingKey {
    /// DER SubjectPublicKeyInfo of the RSA public key.
    pub public_key_der: Vec<u8>,
    /// The PKCS#8 private key, wrapped under the domain key (bound to the import token).
    pub wrapped_private_key: Vec<u8>,
}

impl std::fmt::Debug for ImportWrappingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ImportWrappingKey({} byte public key)",
            self.public_key_der.len()
        )
    }
}

/// What an HSM operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The HSM holds no domain key yet (a joining node before the transfer).
    #[error("the HSM holds no domain key")]
    NoDomainKey,
    /// The HSM already holds a domain key.
    #[error("the HSM already holds a domain key")]
    DomainKeyExists,
    /// The ciphertext is malformed, tampered with, under another key, or the encryption
    /// context differs. Deliberately one error: callers learn nothing about which.
    #[error("invalid ciphertext")]
    InvalidCiphertext,
    /// Wrapped key material or a wrapped secret does not unwrap under this domain key.
    #[error("wrapped material does not unwrap under this HSM's domain key")]
    UnwrapFailed,
    /// The sealed domain key does not open with this sealing secret.
    #[error("the sealing secret does not open the sealed domain key")]
    WrongSealingSecret,
    /// The sealed domain-key file is malformed.
    #[error("the sealed domain-key file is corrupt")]
    SealedFileCorrupt,
    /// A domain-key transfer was refused (wrong binding, wrong key, wrong fingerprint).
    #[error("domain key transfer rejected")]
    TransferRejected,
    /// A parameter is out of range.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The HSM's storage failed.
    #[error("hsm storage: {0}")]
    Io(#[from] std::io::Error),
}

impl From<HsmError> for KmsError {
    fn from(e: HsmError) -> KmsError {
        match e {
            HsmError::InvalidCiphertext => KmsError::new(
                ErrorCode::InvalidCiphertext,
                "The ciphertext is invalid, was not made by this region, or was made with a different encryption context.",
            ),
            HsmError::NoDomainKey => KmsError::new(
                ErrorCode::KeyUnavailable,
                "This node's HSM does not hold the region's domain key yet; retry on another node.",
            ),
            HsmError::InvalidInput(m) => KmsError::validation(m),
            other => {
                // The detail stays in this node's log.
                tracing::error!(error = %other, "hsm operation failed");
                KmsError::internal()
            }
        }
    }
}

/// A hardware (or software) security module holding the region's domain key.
///
/// Key material is generated inside and leaves only wrapped under the domain key.
pub trait Hsm: Send + Sync + 'static {
    /// Whether the HSM holds the region's domain key.
    fn has_domain_key(&self) -> bool;

    /// Hex HMAC-SHA256(domain key, "keyraft domain key fingerprint v1"): replicated so
    /// every node can check it holds the same domain key as the region.
    fn domain_key_fingerprint(&self) -> Result<String, HsmError>;

    /// Generates a fresh domain key (bootstrap of a new region) and seals it to disk.
    fn generate_domain_key(&self) -> Result<(), HsmError>;

    /// Generates AES-256 material for `version` of `key_id`, wrapped under the domain key
    /// with the key id and version bound as AAD.
    fn generate_key_material(&self, key_id: &KeyId, version: u32) -> Result<WrappedKey, HsmError>;

    /// Encrypts `plaintext` under the wrapped key; returns a ciphertext blob.
    fn encrypt(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, HsmError>;

    /// Decrypts a parsed blob with the wrapped key of the version it names.
    fn decrypt(
        &self,
        key: &WrappedKey,
        blob: &CiphertextBlob,
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError>;

    /// Generates a data key of `len` (1..=1024) bytes: its plaintext and its blob.
    fn generate_data_key(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        len: usize,
        context: &EncryptionContext,
    ) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), HsmError>;

    /// Decrypts `blob` with `source` and encrypts the plaintext under `destination`,
    /// without the plaintext ever leaving the HSM boundary (the default runs both steps
    /// here and zeroizes the plaintext; a hardware backend can do it in one call).
    #[allow(clippy::too_many_arguments)]
    fn reencrypt(
        &self,
        source: &WrappedKey,
        blob: &CiphertextBlob,
        source_context: &EncryptionContext,
        destination: &WrappedKey,
        destination_key_id: &KeyId,
        destination_version: u32,
        destination_context: &EncryptionContext,
    ) -> Result<Vec<u8>, HsmError> {
        let plaintext = self.decrypt(source, blob, source_context)?;
        self.encrypt(
            destination,
            destination_key_id,
            destination_version,
            &plaintext,
            destination_context,
        )
    }

    /// Makes an RSA key pair (2048, 3072 or 4096 bits) for importing key material under
    /// `token`; the private half leaves only wrapped under the domain key.
    fn generate_import_wrapping_key(
        &self,
        bits: usize,
        token: &[u8],
    ) -> Result<ImportWrappingKey, HsmError>;

    /// Unwraps key material the caller encrypted (RSAES-OAEP with SHA-256) to an import
    /// wrapping key, and returns it wrapped under the domain key for `version` of
    /// `key_id`, with a fingerprint that lets a later re-import be checked for being the
    /// same material. Material must be 32 bytes (an AES-256 key).
    fn import_key_material(
        &self,
        wrapping: &ImportWrappingKey,
        token: &[u8],
        encrypted_material: &[u8],
        key_id: &KeyId,
        version: u32,
    ) -> Result<(WrappedKey, String), HsmError>;

    /// Generates `len` bytes (32, 48 or 64) of HMAC key material for `version` of
    /// `key_id`, wrapped under the domain key like any key material.
    fn generate_mac_key(
        &self,
        key_id: &KeyId,
        version: u32,
        len: usize,
    ) -> Result<WrappedKey, HsmError>;

    /// HMAC of `message` under the wrapped key, with SHA-256, -384 or -512 (`bits`).
    fn mac(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        bits: usize,
        message: &[u8],
    ) -> Result<Vec<u8>, HsmError>;

    /// Whether `mac` is the HMAC of `message` (compared in constant time).
    #[allow(clippy::too_many_arguments)]
    fn verify_mac(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        bits: usize,
        message: &[u8],
        mac: &[u8],
    ) -> Result<bool, HsmError>;

    /// Makes a key pair of `spec` (ECC_NIST_P256 or RSA_*) for `version` of `key_id`:
    /// the private half (PKCS#8) leaves only wrapped under the domain key like any key
    /// material, the public half as DER SubjectPublicKeyInfo.
    fn generate_key_pair(
        &self,
        key_id: &KeyId,
        version: u32,
        spec: KeySpec,
    ) -> Result<(WrappedKey, Vec<u8>), HsmError>;

    /// Signs `digest` (already hashed with the algorithm's hash) with the private half
    /// of a key pair of `spec`; see [`asymmetric`] for the signature formats.
    #[allow(clippy::too_many_arguments)]
    fn sign(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        spec: KeySpec,
        algorithm: SigningAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, HsmError>;

    /// Decrypts an RSAES-OAEP ciphertext with the private half of an RSA key pair; a
    /// ciphertext that does not decrypt is [`HsmError::InvalidCiphertext`].
    fn decrypt_asymmetric(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        spec: KeySpec,
        algorithm: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError>;

    /// Random bytes (1..=1024) from the HSM's generator.
    fn generate_random(&self, len: usize) -> Result<Vec<u8>, HsmError>;

    /// Wraps a small secret under the domain key, `purpose` bound as AAD.
    fn wrap_secret(&self, secret: &[u8], purpose: &[u8]) -> Result<Vec<u8>, HsmError>;

    /// Unwraps a secret wrapped with the same purpose.
    fn unwrap_secret(&self, wrapped: &[u8], purpose: &[u8])
        -> Result<Zeroizing<Vec<u8>>, HsmError>;

    /// Joining side: the public half of the HSM's ephemeral join key (stable until the
    /// domain key is imported).
    fn join_public_key(&self) -> Result<JoinPublicKey, HsmError>;

    /// Member side: wraps the domain key to `recipient`, bound to `binding`.
    fn export_domain_key(
        &self,
        recipient: &JoinPublicKey,
        binding: &[u8],
    ) -> Result<DomainKeyTransfer, HsmError>;

    /// Joining side: unwraps a transfer, checks its fingerprint, seals the domain key.
    fn import_domain_key(
        &self,
        transfer: &DomainKeyTransfer,
        binding: &[u8],
        expected_fingerprint: &str,
    ) -> Result<(), HsmError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsm_errors_map_to_stable_codes_without_detail() {
        let code = |e: HsmError| KmsError::from(e).code;
        assert_eq!(
            code(HsmError::InvalidCiphertext),
            ErrorCode::InvalidCiphertext
        );
        assert_eq!(code(HsmError::NoDomainKey), ErrorCode::KeyUnavailable);
        assert_eq!(
            code(HsmError::InvalidInput("len".into())),
            ErrorCode::Validation
        );
        for internal in [
            HsmError::DomainKeyExists,
            HsmError::UnwrapFailed,
            HsmError::WrongSealingSecret,
            HsmError::SealedFileCorrupt,
            HsmError::TransferRejected,
            HsmError::Io(std::io::Error::other("/secret/path/domain-key.sealed")),
        ] {
            let e = KmsError::from(internal);
            assert_eq!(e, KmsError::internal());
            assert!(!e.message.contains("/secret/path"));
        }
    }

    #[test]
    fn the_trait_is_object_safe_and_shareable() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<std::sync::Arc<dyn Hsm>>();
        let dir = tempfile::tempdir().unwrap();
        let hsm: std::sync::Arc<dyn Hsm> =
            std::sync::Arc::new(SoftHsm::open(dir.path(), &[7u8; 32]).unwrap());
        assert!(!hsm.has_domain_key());
    }

    #[test]
    fn public_types_debug_without_secrets() {
        assert_eq!(
            format!("{:?}", WrappedKey(vec![1, 2, 3])),
            "WrappedKey(3 bytes)"
        );
        let w = ImportWrappingKey {
            public_key_der: vec![0; 10],
            wrapped_private_key: vec![9; 100],
        };
        assert!(!format!("{w:?}").contains('9'));
    }
}
