//! The software HSM: AES-256-GCM under a domain key sealed on disk.
//!
//! The domain key lives in memory only (zeroized on drop) and on disk only sealed:
//!
//! ```text
//! domain-key.sealed = "KRSEAL1" | salt: 16 | nonce: 12 | AES-256-GCM(KEK, domain key)
//! KEK = HKDF-SHA256(ikm = sealing secret, salt)
//! ```
//!
//! The sealing secret comes from the node's configuration or environment, never from a
//! file next to the sealed key (the server refuses that outside development mode). The
//! KEK derivation is HKDF, not a password hash: the sealing secret must be high-entropy
//! (at least 16 bytes; `keyraft dev` uses 32 random bytes), not a memorable password.
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

use keyraft_types::{EncryptionContext, KeyId};

use crate::blob::{self, CiphertextBlob, NONCE_LEN, SALT_LEN};
use crate::context::encode_context;
use crate::{DomainKeyTransfer, Hsm, HsmError, ImportWrappingKey, JoinPublicKey, WrappedKey};

const SEAL_MAGIC: &[u8; 7] = b"KRSEAL1";
const SEALED_FILE: &str = "domain-key.sealed";
const KEY_LEN: usize = 32;

type Key = Zeroizing<[u8; KEY_LEN]>;

/// A software HSM whose domain key is sealed in `dir`.
pub struct SoftHsm {
    dir: PathBuf,
    sealing_secret: Zeroizing<Vec<u8>>,
    domain: RwLock<Option<Key>>,
    join: Mutex<Option<StaticSecret>>,
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
    /// Opens the HSM in `dir`, unsealing the domain key if one was sealed there.
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
        let path = dir.join(SEALED_FILE);
        if path.exists() {
            let sealed = fs::read(&path)?;
            let key = hsm.unseal(&sealed)?;
            *hsm.domain.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
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
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(SEALED_FILE))?;
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

    /// Raw key material, for tests that scan data directories for it.
    #[cfg(any(test, feature = "insecure-test-accessors"))]
    pub fn insecure_unwrap_for_tests(
        &self,
        key: &WrappedKey,
        key_id: &KeyId,
        version: u32,
    ) -> Result<Vec<u8>, HsmError> {
        Ok(self.unwrap_material(key, key_id, version)?.to_vec())
    }

    /// The raw domain key, for tests that scan data directories for it.
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
        if Self::fingerprint_of(&key) != expected_fingerprint {
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

    #[test]
    fn sealed_domain_key_reopens_only_with_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        let a = SoftHsm::open(dir.path(), SECRET).unwrap();
        assert!(!a.has_domain_key());
        a.generate_domain_key().unwrap();
        assert!(matches!(
            a.generate_domain_key(),
            Err(HsmError::DomainKeyExists)
        ));
        let fp = a.domain_key_fingerprint().unwrap();
        let raw = a.insecure_domain_key_for_tests().unwrap();
        drop(a);

        let b = SoftHsm::open(dir.path(), SECRET).unwrap();
        assert_eq!(b.domain_key_fingerprint().unwrap(), fp);
        assert!(matches!(
            SoftHsm::open(dir.path(), b"another-secret-of-32-bytes-long!"),
            Err(HsmError::WrongSealingSecret)
        ));
        assert!(matches!(
            SoftHsm::open(dir.path(), b"short"),
            Err(HsmError::InvalidInput(_))
        ));

        let sealed = fs::read(dir.path().join(SEALED_FILE)).unwrap();
        assert!(
            !sealed.windows(raw.len()).any(|w| w == raw.as_slice()),
            "raw domain key on disk"
        );

        fs::write(dir.path().join(SEALED_FILE), b"KRSEAL1 truncated").unwrap();
        assert!(matches!(
            SoftHsm::open(dir.path(), SECRET),
            Err(HsmError::SealedFileCorrupt)
        ));
    }
}
