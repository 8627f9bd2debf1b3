//! The software HSM: AES-256-GCM under a domain key sealed on disk.
//!
//! # Why a software HSM at all
//!
//! Keyraft's cryptography sits behind the [`Hsm`] trait so that a hardware module can
//! take over later without the rest of the service noticing. Until then the soft HSM
//! gives the same *shape* of guarantees a hardware module would: key material is only
//! ever handed out wrapped under the region's domain key, the domain key itself never
//! leaves this type except wrapped to another node's HSM during a join, and every
//! operation unwraps what it needs into zeroizing buffers that are wiped when the
//! operation returns.
//!
//! # The sealed domain key
//!
//! The domain key lives in memory only (zeroized on drop) and on disk only sealed:
//!
//! ```text
//! domain-key.sealed = "KRSEAL1" | salt: 16 | nonce: 12 | AES-256-GCM(KEK, domain key)
//!                     (AAD = "KRSEAL1")
//! KEK = HKDF-SHA256(ikm = sealing secret, salt, info = "keyraft-seal-v1")
//! ```
//!
//! The sealing secret comes from the node's configuration or environment, never from a
//! file next to the sealed key (the server refuses that outside development mode). The
//! KEK derivation is HKDF, not a password hash: the sealing secret must be high-entropy
//! (at least 16 bytes; `keyraft dev` uses 32 random bytes), not a memorable password.
//! A GCM failure means the secret is wrong ([`HsmError::WrongSealingSecret`]); a file
//! of the wrong shape is [`HsmError::SealedFileCorrupt`]. The two are kept apart so an
//! operator knows whether to fix the configuration or restore the file.
//!
//! The file is written atomically — a temporary file in the same directory, `fsync`,
//! `rename`, `fsync` of the directory — so a crash leaves either no sealed key or a
//! complete one, never a torn file that would lose the region's domain key. On unix it
//! is created with mode 0600.
//!
//! # Wrapped key material
//!
//! ```text
//! WrappedKey = nonce: 12 | AES-256-GCM(domain key, material,
//!                                       AAD = "keyraft-wrap-v1" | id len: u8 | key id | version: u32 BE)
//! ```
//!
//! Binding the key id and version as AAD means wrapped material cannot be moved to
//! another key or version in the replicated state: it simply fails to unwrap there.
//! Secrets from [`Hsm::wrap_secret`] use the same construction with the AAD
//! `"keyraft-secret-v1:" || purpose`.
//!
//! Key material is unwrapped per operation into zeroizing buffers; nothing but wrapped
//! material, blobs and requested plaintexts ever leaves this type.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use x25519_dalek::{EphemeralSecret, PublicKey, StaticSecret};
use zeroize::Zeroizing;

use keyraft_types::{EncryptionAlgorithm, EncryptionContext, KeyId, KeySpec, SigningAlgorithm};

use crate::blob::{self, CiphertextBlob, NONCE_LEN, SALT_LEN};
use crate::context::encode_context;
use crate::{DomainKeyTransfer, Hsm, HsmError, ImportWrappingKey, JoinPublicKey, WrappedKey};

const SEAL_MAGIC: &[u8; 7] = b"KRSEAL1";
const SEALED_FILE: &str = "domain-key.sealed";
const KEY_LEN: usize = 32;

type Key = Zeroizing<[u8; KEY_LEN]>;

/// A software HSM whose domain key is sealed in `dir`.
///
/// Cheap to share behind an `Arc<dyn Hsm>`: all state sits behind locks, and a poisoned
/// lock is recovered rather than propagated (the protected values are replaced whole,
/// never left half-written).
pub struct SoftHsm {
    dir: PathBuf,
    sealing_secret: Zeroizing<Vec<u8>>,
    domain: RwLock<Option<Key>>,
    join: Mutex<Option<StaticSecret>>,
}

impl std::fmt::Debug for SoftHsm {
    /// Prints where the HSM lives and whether it holds a domain key; never key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftHsm")
            .field("dir", &self.dir)
            .field("has_domain_key", &self.has_domain_key())
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

fn derive(ikm: &[u8], salt: &[u8], info: &[&[u8]]) -> Key {
    let hk = Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    // A 32-byte output is always within HKDF-SHA256's limit.
    let _ = hk.expand_multi_info(info, out.as_mut());
    out
}

fn seal_with(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    msg: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let cipher = Aes256Gcm::new_from_slice(key)
        .map_err(|_| HsmError::InvalidInput("bad key length".into()))?;
    cipher
        .encrypt(Nonce::from_slice(nonce), Payload { msg, aad })
        .map_err(|_| HsmError::InvalidInput("encryption failed".into()))
}

fn open_with(
    key: &[u8; KEY_LEN],
    nonce: &[u8],
    sealed: &[u8],
    aad: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    if nonce.len() != NONCE_LEN {
        return None;
    }
    let cipher = Aes256Gcm::new_from_slice(key).ok()?;
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad })
        .ok()
        .map(Zeroizing::new)
}

fn key_aad(key_id: &KeyId, version: u32) -> Vec<u8> {
    let mut aad = b"keyraft-wrap-v1".to_vec();
    aad.push(key_id.as_str().len() as u8);
    aad.extend_from_slice(key_id.as_str().as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn hmac_of(key: &[u8], bits: usize, message: &[u8]) -> Result<Vec<u8>, HsmError> {
    macro_rules! hmac_with {
        ($digest:ty) => {{
            let mut mac = <Hmac<$digest> as Mac>::new_from_slice(key)
                .map_err(|_| HsmError::InvalidInput("bad HMAC key".into()))?;
            mac.update(message);
            Ok(mac.finalize().into_bytes().to_vec())
        }};
    }
    match bits {
        256 => hmac_with!(Sha256),
        384 => hmac_with!(sha2::Sha384),
        512 => hmac_with!(sha2::Sha512),
        other => Err(HsmError::InvalidInput(format!(
            "HMAC with SHA-{other} is not supported"
        ))),
    }
}

fn import_purpose(token: &[u8]) -> Vec<u8> {
    [b"keyraft-import-wrapping-key:".as_slice(), token].concat()
}

fn secret_aad(purpose: &[u8]) -> Vec<u8> {
    [b"keyraft-secret-v1:".as_slice(), purpose].concat()
}

impl SoftHsm {
    /// Opens the HSM in `dir` (created if missing), unsealing the domain key if one was
    /// sealed there.
    ///
    /// Errors: [`HsmError::InvalidInput`] if `sealing_secret` is shorter than 16 bytes,
    /// [`HsmError::WrongSealingSecret`] if the sealed key does not open with it,
    /// [`HsmError::SealedFileCorrupt`] if the sealed file is malformed, and
    /// [`HsmError::Io`] if the directory or file cannot be read.
    pub fn open(dir: &Path, sealing_secret: &[u8]) -> Result<SoftHsm, HsmError> {
        if sealing_secret.len() < 16 {
            return Err(HsmError::InvalidInput(
                "the sealing secret must be at least 16 bytes".into(),
            ));
        }
        fs::create_dir_all(dir)?;
        let hsm = SoftHsm {
            dir: dir.to_path_buf(),
            sealing_secret: Zeroizing::new(sealing_secret.to_vec()),
            domain: RwLock::new(None),
            join: Mutex::new(None),
        };
        match fs::read(dir.join(SEALED_FILE)) {
            Ok(sealed) => {
                let key = hsm.unseal(&sealed)?;
                *hsm.domain.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(hsm)
    }

    fn unseal(&self, sealed: &[u8]) -> Result<Key, HsmError> {
        let body = sealed
            .strip_prefix(SEAL_MAGIC.as_slice())
            .ok_or(HsmError::SealedFileCorrupt)?;
        if body.len() != SALT_LEN + NONCE_LEN + KEY_LEN + 16 {
            return Err(HsmError::SealedFileCorrupt);
        }
        let (salt, rest) = body.split_at(SALT_LEN);
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let kek = derive(&self.sealing_secret, salt, &[b"keyraft-seal-v1"]);
        let plain = open_with(&kek, nonce, ct, SEAL_MAGIC).ok_or(HsmError::WrongSealingSecret)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&plain);
        Ok(key)
    }

    fn seal_to_disk(&self, key: &[u8; KEY_LEN]) -> Result<(), HsmError> {
        let salt: [u8; SALT_LEN] = random();
        let nonce: [u8; NONCE_LEN] = random();
        let kek = derive(&self.sealing_secret, &salt, &[b"keyraft-seal-v1"]);
        let ct = seal_with(&kek, &nonce, key, SEAL_MAGIC)?;
        let mut bytes = SEAL_MAGIC.to_vec();
        bytes.extend_from_slice(&salt);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ct);
        let tmp = self.dir.join(format!("{SEALED_FILE}.tmp"));
        // A temporary file left by a crash may carry other permissions; start afresh so
        // the file is created (with mode 0600) rather than reused.
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut f = options.open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(SEALED_FILE))?;
        // Make the rename itself durable. Directories cannot be opened for syncing on
        // every platform; on unix they can and must be.
        #[cfg(unix)]
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(())
    }

    fn domain_key(&self) -> Result<Key, HsmError> {
        self.domain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(HsmError::NoDomainKey)
    }

    fn unwrap_material(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
    ) -> Result<Key, HsmError> {
        let domain = self.domain_key()?;
        if key.0.len() < NONCE_LEN {
            return Err(HsmError::UnwrapFailed);
        }
        let (nonce, ct) = key.0.split_at(NONCE_LEN);
        let plain = open_with(&domain, nonce, ct, &key_aad(key_id, version))
            .ok_or(HsmError::UnwrapFailed)?;
        if plain.len() != KEY_LEN {
            return Err(HsmError::UnwrapFailed);
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(&plain);
        Ok(k)
    }

    /// Unwraps key material of any length (HMAC keys are 32, 48 or 64 bytes).
    fn unwrap_any(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let domain = self.domain_key()?;
        if key.0.len() < NONCE_LEN {
            return Err(HsmError::UnwrapFailed);
        }
        let (nonce, ct) = key.0.split_at(NONCE_LEN);
        open_with(&domain, nonce, ct, &key_aad(key_id, version)).ok_or(HsmError::UnwrapFailed)
    }

    fn message_key(material: &[u8; KEY_LEN], key_id: &KeyId, version: u32, salt: &[u8]) -> Key {
        derive(
            material,
            salt,
            &[
                b"keyraft-ciphertext-v1",
                key_id.as_str().as_bytes(),
                &version.to_be_bytes(),
            ],
        )
    }

    fn fingerprint_of(key: &[u8; KEY_LEN]) -> String {
        let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(b"keyraft domain key fingerprint v1");
        let out = mac.finalize().into_bytes();
        out.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// **INSECURE — TESTS ONLY.** Returns the raw key material inside `key`.
    ///
    /// Exists so end-to-end tests can scan data directories and prove that no raw key
    /// material was ever written there. It defeats the whole purpose of an HSM: it is
    /// compiled only under `cfg(test)` or with the `insecure-test-accessors` cargo
    /// feature, and **production builds must never enable that feature**.
    #[cfg(any(test, feature = "insecure-test-accessors"))]
    pub fn insecure_unwrap_for_tests(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
    ) -> Result<Vec<u8>, HsmError> {
        Ok(self.unwrap_any(key, key_id, version)?.to_vec())
    }

    /// **INSECURE — TESTS ONLY.** Returns the raw domain key.
    ///
    /// Same purpose and same rules as [`SoftHsm::insecure_unwrap_for_tests`]: only under
    /// `cfg(test)` or the `insecure-test-accessors` feature, **never in production**.
    #[cfg(any(test, feature = "insecure-test-accessors"))]
    pub fn insecure_domain_key_for_tests(&self) -> Result<Vec<u8>, HsmError> {
        Ok(self.domain_key()?.to_vec())
    }
}

impl Hsm for SoftHsm {
    fn has_domain_key(&self) -> bool {
        self.domain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn domain_key_fingerprint(&self) -> Result<String, HsmError> {
        Ok(Self::fingerprint_of(&*self.domain_key()?))
    }

    fn generate_domain_key(&self) -> Result<(), HsmError> {
        let mut slot = self.domain.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(HsmError::DomainKeyExists);
        }
        let key: Key = Zeroizing::new(random());
        self.seal_to_disk(&key)?;
        *slot = Some(key);
        Ok(())
    }

    fn generate_key_material(&self, key_id: &KeyId, version: u32) -> Result<WrappedKey, HsmError> {
        let domain = self.domain_key()?;
        let material: Key = Zeroizing::new(random());
        let nonce: [u8; NONCE_LEN] = random();
        let ct = seal_with(
            &domain,
            &nonce,
            material.as_ref(),
            &key_aad(key_id, version),
        )?;
        Ok(WrappedKey([nonce.as_slice(), &ct].concat()))
    }

    fn encrypt(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<Vec<u8>, HsmError> {
        let material = self.unwrap_material(key, key_id, version)?;
        let salt: [u8; SALT_LEN] = random();
        let nonce: [u8; NONCE_LEN] = random();
        let mkey = Self::message_key(&material, key_id, version, &salt);
        let mut out = blob::header(key_id, version, &salt, &nonce);
        let aad = [out.as_slice(), &encode_context(context)].concat();
        let ct = seal_with(&mkey, &nonce, plaintext, &aad)?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    fn decrypt(
        &self,
        key: &WrappedKey,
        blob: &CiphertextBlob,
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let material = match self.unwrap_material(key, &blob.key_id, blob.version) {
            Ok(m) => m,
            Err(HsmError::NoDomainKey) => return Err(HsmError::NoDomainKey),
            Err(_) => return Err(HsmError::InvalidCiphertext),
        };
        let mkey = Self::message_key(&material, &blob.key_id, blob.version, &blob.salt);
        let aad = [blob.header(), &encode_context(context)].concat();
        open_with(&mkey, &blob.nonce, blob.sealed(), &aad).ok_or(HsmError::InvalidCiphertext)
    }

    fn generate_data_key(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        len: usize,
        context: &EncryptionContext,
    ) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), HsmError> {
        if !(1..=1024).contains(&len) {
            return Err(HsmError::InvalidInput(format!(
                "a data key is 1 to 1024 bytes, not {len}"
            )));
        }
        let mut plain = Zeroizing::new(vec![0u8; len]);
        OsRng.fill_bytes(&mut plain);
        let blob = self.encrypt(key, key_id, version, &plain, context)?;
        Ok((plain, blob))
    }

    fn generate_import_wrapping_key(
        &self,
        bits: usize,
        token: &[u8],
    ) -> Result<ImportWrappingKey, HsmError> {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
        if ![2048, 3072, 4096].contains(&bits) {
            return Err(HsmError::InvalidInput(format!(
                "RSA_{bits} is not a wrapping key spec"
            )));
        }
        let private = rsa::RsaPrivateKey::new(&mut OsRng, bits)
            .map_err(|e| HsmError::InvalidInput(format!("RSA key generation failed: {e}")))?;
        let public_key_der = private
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| HsmError::InvalidInput(format!("public key encoding failed: {e}")))?
            .into_vec();
        let der = private
            .to_pkcs8_der()
            .map_err(|e| HsmError::InvalidInput(format!("private key encoding failed: {e}")))?;
        let wrapped_private_key = self.wrap_secret(der.as_bytes(), &import_purpose(token))?;
        Ok(ImportWrappingKey {
            public_key_der,
            wrapped_private_key,
        })
    }

    fn import_key_material(
        &self,
        wrapping: &ImportWrappingKey,
        token: &[u8],
        encrypted_material: &[u8],
        key_id: &KeyId,
        version: u32,
    ) -> Result<(WrappedKey, String), HsmError> {
        use rsa::pkcs8::DecodePrivateKey;
        let der = self.unwrap_secret(&wrapping.wrapped_private_key, &import_purpose(token))?;
        let private =
            rsa::RsaPrivateKey::from_pkcs8_der(&der).map_err(|_| HsmError::UnwrapFailed)?;
        let material = Zeroizing::new(
            private
                .decrypt(rsa::Oaep::new::<Sha256>(), encrypted_material)
                .map_err(|_| HsmError::InvalidCiphertext)?,
        );
        if material.len() != KEY_LEN {
            return Err(HsmError::InvalidInput(format!(
                "imported key material must be {KEY_LEN} bytes, not {}",
                material.len()
            )));
        }
        let domain = self.domain_key()?;
        let nonce: [u8; NONCE_LEN] = random();
        let ct = seal_with(&domain, &nonce, &material, &key_aad(key_id, version))?;
        let fingerprint = {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(domain.as_ref())
                .map_err(|_| HsmError::InvalidInput("bad domain key".into()))?;
            mac.update(b"keyraft imported material v1");
            mac.update(key_id.as_str().as_bytes());
            mac.update(&material);
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        Ok((WrappedKey([nonce.as_slice(), &ct].concat()), fingerprint))
    }

    fn generate_mac_key(
        &self,
        key_id: &KeyId,
        version: u32,
        len: usize,
    ) -> Result<WrappedKey, HsmError> {
        if ![32, 48, 64].contains(&len) {
            return Err(HsmError::InvalidInput(format!(
                "an HMAC key is 32, 48 or 64 bytes, not {len}"
            )));
        }
        let domain = self.domain_key()?;
        let mut material = Zeroizing::new(vec![0u8; len]);
        OsRng.fill_bytes(&mut material);
        let nonce: [u8; NONCE_LEN] = random();
        let ct = seal_with(&domain, &nonce, &material, &key_aad(key_id, version))?;
        Ok(WrappedKey([nonce.as_slice(), &ct].concat()))
    }

    fn mac(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        bits: usize,
        message: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let material = self.unwrap_any(key, key_id, version)?;
        hmac_of(&material, bits, message)
    }

    fn verify_mac(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        bits: usize,
        message: &[u8],
        mac: &[u8],
    ) -> Result<bool, HsmError> {
        let expected = self.mac(key, key_id, version, bits, message)?;
        // Constant time: every byte is compared whatever the first difference.
        let same = expected.len() == mac.len()
            && expected
                .iter()
                .zip(mac)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        Ok(same)
    }

    fn generate_key_pair(
        &self,
        key_id: &KeyId,
        version: u32,
        spec: KeySpec,
    ) -> Result<(WrappedKey, Vec<u8>), HsmError> {
        let domain = self.domain_key()?;
        let (private, public) = crate::asymmetric::generate(spec)?;
        let nonce: [u8; NONCE_LEN] = random();
        let ct = seal_with(&domain, &nonce, &private, &key_aad(key_id, version))?;
        Ok((WrappedKey([nonce.as_slice(), &ct].concat()), public))
    }

    fn sign(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        spec: KeySpec,
        algorithm: SigningAlgorithm,
        digest: &[u8],
    ) -> Result<Vec<u8>, HsmError> {
        let private = self.unwrap_any(key, key_id, version)?;
        crate::asymmetric::sign(spec, &private, algorithm, digest)
    }

    fn decrypt_asymmetric(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
        spec: KeySpec,
        algorithm: EncryptionAlgorithm,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let private = self.unwrap_any(key, key_id, version)?;
        crate::asymmetric::decrypt(spec, &private, algorithm, ciphertext)
    }

    fn generate_random(&self, len: usize) -> Result<Vec<u8>, HsmError> {
        if !(1..=1024).contains(&len) {
            return Err(HsmError::InvalidInput(format!(
                "1 to 1024 random bytes, not {len}"
            )));
        }
        let mut out = vec![0u8; len];
        OsRng.fill_bytes(&mut out);
        Ok(out)
    }

    fn wrap_secret(&self, secret: &[u8], purpose: &[u8]) -> Result<Vec<u8>, HsmError> {
        let domain = self.domain_key()?;
        let nonce: [u8; NONCE_LEN] = random();
        let ct = seal_with(&domain, &nonce, secret, &secret_aad(purpose))?;
        Ok([nonce.as_slice(), &ct].concat())
    }

    fn unwrap_secret(
        &self,
        wrapped: &[u8],
        purpose: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let domain = self.domain_key()?;
        if wrapped.len() < NONCE_LEN {
            return Err(HsmError::UnwrapFailed);
        }
        let (nonce, ct) = wrapped.split_at(NONCE_LEN);
        open_with(&domain, nonce, ct, &secret_aad(purpose)).ok_or(HsmError::UnwrapFailed)
    }

    fn join_public_key(&self) -> Result<JoinPublicKey, HsmError> {
        let mut slot = self.join.lock().unwrap_or_else(|p| p.into_inner());
        let secret = slot.get_or_insert_with(|| StaticSecret::random_from_rng(OsRng));
        Ok(JoinPublicKey(PublicKey::from(&*secret).to_bytes()))
    }

    fn export_domain_key(
        &self,
        recipient: &JoinPublicKey,
        binding: &[u8],
    ) -> Result<DomainKeyTransfer, HsmError> {
        let domain = self.domain_key()?;
        let ephemeral = EphemeralSecret::random_from_rng(OsRng);
        let sender_public = PublicKey::from(&ephemeral).to_bytes();
        let shared = ephemeral.diffie_hellman(&PublicKey::from(recipient.0));
        if !shared.was_contributory() {
            return Err(HsmError::InvalidInput(
                "degenerate recipient public key".into(),
            ));
        }
        let salt = [sender_public.as_slice(), &recipient.0].concat();
        let kek = derive(
            shared.as_bytes(),
            &salt,
            &[b"keyraft domain-key transfer v1", binding],
        );
        let nonce: [u8; NONCE_LEN] = random();
        let ciphertext = seal_with(&kek, &nonce, domain.as_ref(), binding)?;
        Ok(DomainKeyTransfer {
            sender_public,
            nonce,
            ciphertext,
        })
    }

    fn import_domain_key(
        &self,
        transfer: &DomainKeyTransfer,
        binding: &[u8],
        expected_fingerprint: &str,
    ) -> Result<(), HsmError> {
        let mut join = self.join.lock().unwrap_or_else(|p| p.into_inner());
        let secret = join.as_ref().ok_or(HsmError::TransferRejected)?;
        let own_public = PublicKey::from(secret).to_bytes();
        let shared = secret.diffie_hellman(&PublicKey::from(transfer.sender_public));
        if !shared.was_contributory() {
            // A low-order sender key makes the "shared" secret public knowledge.
            return Err(HsmError::TransferRejected);
        }
        let salt = [transfer.sender_public.as_slice(), &own_public].concat();
        let kek = derive(
            shared.as_bytes(),
            &salt,
            &[b"keyraft domain-key transfer v1", binding],
        );
        let plain = open_with(&kek, &transfer.nonce, &transfer.ciphertext, binding)
            .ok_or(HsmError::TransferRejected)?;
        if plain.len() != KEY_LEN {
            return Err(HsmError::TransferRejected);
        }
        let mut key: Key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&plain);
        let fingerprint = Self::fingerprint_of(&key);
        if fingerprint.is_empty() || fingerprint != expected_fingerprint {
            return Err(HsmError::TransferRejected);
        }
        let mut slot = self.domain.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(HsmError::DomainKeyExists);
        }
        self.seal_to_disk(&key)?;
        *slot = Some(key);
        *join = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sealed_hsm() -> (tempfile::TempDir, SoftHsm) {
        let dir = tempfile::tempdir().unwrap();
        let hsm = SoftHsm::open(dir.path(), SECRET).unwrap();
        hsm.generate_domain_key().unwrap();
        (dir, hsm)
    }

    #[test]
    fn reopening_with_the_right_secret_gives_the_same_domain_key() {
        let (dir, a) = sealed_hsm();
        assert!(matches!(
            a.generate_domain_key(),
            Err(HsmError::DomainKeyExists)
        ));
        let fp = a.domain_key_fingerprint().unwrap();
        assert_eq!(fp.len(), 64);
        assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
        let id = KeyId::generate();
        let key = a.generate_key_material(&id, 1).unwrap();
        let blob = a
            .encrypt(&key, &id, 1, b"survives", &EncryptionContext::new())
            .unwrap();
        drop(a);

        let b = SoftHsm::open(dir.path(), SECRET).unwrap();
        assert!(b.has_domain_key());
        assert_eq!(b.domain_key_fingerprint().unwrap(), fp);
        let parsed = CiphertextBlob::parse(&blob).unwrap();
        assert_eq!(
            b.decrypt(&key, &parsed, &EncryptionContext::new())
                .unwrap()
                .as_slice(),
            b"survives"
        );
    }

    #[test]
    fn a_wrong_secret_is_refused() {
        let (dir, _a) = sealed_hsm();
        assert!(matches!(
            SoftHsm::open(dir.path(), b"another-secret-of-32-bytes-long!"),
            Err(HsmError::WrongSealingSecret)
        ));
        // Exactly 16 bytes is long enough to be tried (and is wrong here).
        assert!(matches!(
            SoftHsm::open(dir.path(), b"sixteen-bytes!!!"),
            Err(HsmError::WrongSealingSecret)
        ));
    }

    #[test]
    fn a_short_secret_is_invalid_input() {
        let dir = tempfile::tempdir().unwrap();
        for short in [&b""[..], b"short", b"fifteen-bytes!!"] {
            assert!(matches!(
                SoftHsm::open(dir.path(), short),
                Err(HsmError::InvalidInput(_))
            ));
        }
        assert!(!dir.path().join(SEALED_FILE).exists());
    }

    #[test]
    fn a_corrupt_sealed_file_is_reported_as_such() {
        let (dir, _a) = sealed_hsm();
        let path = dir.path().join(SEALED_FILE);
        let good = fs::read(&path).unwrap();

        let mut truncated = good.clone();
        truncated.pop();
        let mut longer = good.clone();
        longer.push(0);
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 1;
        for corrupt in [
            Vec::new(),
            b"KRSEAL1".to_vec(),
            b"KRSEAL1 truncated".to_vec(),
            truncated,
            longer,
            bad_magic,
        ] {
            fs::write(&path, &corrupt).unwrap();
            assert!(
                matches!(
                    SoftHsm::open(dir.path(), SECRET),
                    Err(HsmError::SealedFileCorrupt)
                ),
                "{corrupt:?}"
            );
        }

        // A well-formed file whose ciphertext was altered cannot be told apart from a
        // wrong secret: GCM only says "does not open".
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert!(matches!(
            SoftHsm::open(dir.path(), SECRET),
            Err(HsmError::WrongSealingSecret)
        ));

        fs::write(&path, &good).unwrap();
        assert!(SoftHsm::open(dir.path(), SECRET).unwrap().has_domain_key());
    }

    #[test]
    fn the_sealed_file_holds_no_raw_key_and_is_private() {
        let (dir, a) = sealed_hsm();
        let raw = a.insecure_domain_key_for_tests().unwrap();
        assert_eq!(raw.len(), KEY_LEN);
        let sealed = fs::read(dir.path().join(SEALED_FILE)).unwrap();
        assert!(sealed.starts_with(SEAL_MAGIC));
        assert_eq!(
            sealed.len(),
            SEAL_MAGIC.len() + SALT_LEN + NONCE_LEN + KEY_LEN + 16
        );
        assert!(
            !sealed.windows(raw.len()).any(|w| w == raw.as_slice()),
            "raw domain key on disk"
        );
        // Only the sealed file is left behind: no temporary file.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SEALED_FILE)]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(SEALED_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_stale_temporary_file_does_not_leak_its_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(format!("{SEALED_FILE}.tmp"));
        fs::write(&tmp, b"left over by a crash").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let hsm = SoftHsm::open(dir.path(), SECRET).unwrap();
        hsm.generate_domain_key().unwrap();
        assert!(!tmp.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(SEALED_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(SoftHsm::open(dir.path(), SECRET).unwrap().has_domain_key());
    }

    #[test]
    fn imported_domain_key_is_sealed_too() {
        let (_da, a) = sealed_hsm();
        let db = tempfile::tempdir().unwrap();
        let b = SoftHsm::open(db.path(), SECRET).unwrap();
        let t = a
            .export_domain_key(&b.join_public_key().unwrap(), b"bind")
            .unwrap();
        let fp = a.domain_key_fingerprint().unwrap();
        b.import_domain_key(&t, b"bind", &fp).unwrap();
        drop(b);
        let b = SoftHsm::open(db.path(), SECRET).unwrap();
        assert_eq!(b.domain_key_fingerprint().unwrap(), fp);
    }

    #[test]
    fn a_low_order_sender_key_is_rejected() {
        let (_da, a) = sealed_hsm();
        let db = tempfile::tempdir().unwrap();
        let b = SoftHsm::open(db.path(), SECRET).unwrap();
        let mut t = a
            .export_domain_key(&b.join_public_key().unwrap(), b"bind")
            .unwrap();
        // The identity point: every "shared secret" with it is all zeros.
        t.sender_public = [0; 32];
        assert!(matches!(
            b.import_domain_key(&t, b"bind", &a.domain_key_fingerprint().unwrap()),
            Err(HsmError::TransferRejected)
        ));
        // And a member refuses to export to such a key.
        assert!(a
            .export_domain_key(&JoinPublicKey([0; 32]), b"bind")
            .is_err());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let (_dir, a) = sealed_hsm();
        let raw = a.insecure_domain_key_for_tests().unwrap();
        let shown = format!("{a:?}");
        assert!(shown.contains("has_domain_key: true"), "{shown}");
        assert!(!shown.contains(&format!("{:?}", raw.as_slice())));
        let w = a.generate_key_material(&KeyId::generate(), 1).unwrap();
        assert_eq!(format!("{w:?}"), format!("WrappedKey({} bytes)", w.0.len()));
    }

    #[test]
    fn the_insecure_accessor_returns_the_material() {
        let (_dir, a) = sealed_hsm();
        let id = KeyId::generate();
        let w = a.generate_key_material(&id, 3).unwrap();
        let raw = a.insecure_unwrap_for_tests(&w, &id, 3).unwrap();
        assert_eq!(raw.len(), KEY_LEN);
        assert!(!w.0.windows(KEY_LEN).any(|x| x == raw.as_slice()));
        assert!(a.insecure_unwrap_for_tests(&w, &id, 4).is_err());
        let mac = a.generate_mac_key(&id, 4, 64).unwrap();
        assert_eq!(a.insecure_unwrap_for_tests(&mac, &id, 4).unwrap().len(), 64);
    }
}
