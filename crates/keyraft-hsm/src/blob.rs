//! The ciphertext blob: self-describing, versioned, authenticated.
//!
//! ```text
//! "KRC1" | key id length: u8 | key id (ASCII) | backing version: u32 BE
//!        | salt: 16 bytes | nonce: 12 bytes | AES-256-GCM ciphertext || tag (16)
//! ```
//!
//! The AES key of one message is derived from the backing key:
//! `HKDF-SHA256(ikm = backing key, salt, info = "keyraft-ciphertext-v1" || key id ||
//! version)`. With a fresh random salt per message, a key can encrypt far more than the
//! 2^32 messages that random 96-bit GCM nonces allow under one key. The AAD is the whole
//! header (everything before the GCM output) followed by the canonical encryption
//! context, so neither the header nor the context can be changed without detection.
//!
//! Decrypt needs no key id from the caller: [`CiphertextBlob::parse`] reads it from the
//! header without any key material.

use keyraft_types::KeyId;

use crate::HsmError;

/// Magic and format version.
pub const MAGIC: &[u8; 4] = b"KRC1";
/// Salt length.
pub const SALT_LEN: usize = 16;
/// Nonce length.
pub const NONCE_LEN: usize = 12;
/// GCM tag length.
pub const TAG_LEN: usize = 16;

/// A parsed ciphertext blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiphertextBlob {
    /// The key it was made under.
    pub key_id: KeyId,
    /// The backing-key version.
    pub version: u32,
    /// Per-message key-derivation salt.
    pub salt: [u8; SALT_LEN],
    /// GCM nonce.
    pub nonce: [u8; NONCE_LEN],
    header_len: usize,
    bytes: Vec<u8>,
}

impl CiphertextBlob {
    /// Parses a blob; anything malformed is `InvalidCiphertext`.
    pub fn parse(bytes: &[u8]) -> Result<CiphertextBlob, HsmError> {
        let bad = || HsmError::InvalidCiphertext;
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or_else(bad)?;
        let (&id_len, rest) = rest.split_first().ok_or_else(bad)?;
        let id_len = id_len as usize;
        if rest.len() < id_len + 4 + SALT_LEN + NONCE_LEN + TAG_LEN {
            return Err(bad());
        }
        let (id, rest) = rest.split_at(id_len);
        let key_id = std::str::from_utf8(id)
            .ok()
            .and_then(|s| KeyId::parse(s).ok())
            .ok_or_else(bad)?;
        let (version, rest) = rest.split_at(4);
        let (salt, rest) = rest.split_at(SALT_LEN);
        let (nonce, _) = rest.split_at(NONCE_LEN);
        let mut v = [0u8; 4];
        v.copy_from_slice(version);
        let mut s = [0u8; SALT_LEN];
        s.copy_from_slice(salt);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        Ok(CiphertextBlob {
            key_id,
            version: u32::from_be_bytes(v),
            salt: s,
            nonce: n,
            header_len: MAGIC.len() + 1 + id_len + 4 + SALT_LEN + NONCE_LEN,
            bytes: bytes.to_vec(),
        })
    }

    /// The header bytes (bound as AAD).
    pub fn header(&self) -> &[u8] {
        &self.bytes[..self.header_len]
    }

    /// The GCM output (ciphertext and tag).
    pub fn sealed(&self) -> &[u8] {
        &self.bytes[self.header_len..]
    }
}

/// Builds the header of a new blob.
pub fn header(
    key_id: &KeyId,
    version: u32,
    salt: &[u8; SALT_LEN],
    nonce: &[u8; NONCE_LEN],
) -> Vec<u8> {
    let id = key_id.as_str().as_bytes();
    let mut h = Vec::with_capacity(MAGIC.len() + 1 + id.len() + 4 + SALT_LEN + NONCE_LEN);
    h.extend_from_slice(MAGIC);
    h.push(id.len() as u8);
    h.extend_from_slice(id);
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(salt);
    h.extend_from_slice(nonce);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_blobs_are_invalid_ciphertext() {
        let id = KeyId::random();
        let mut blob = header(&id, 7, &[1; SALT_LEN], &[2; NONCE_LEN]);
        blob.extend_from_slice(&[0; TAG_LEN]);
        let parsed = CiphertextBlob::parse(&blob).unwrap();
        assert_eq!(parsed.key_id, id);
        assert_eq!(parsed.version, 7);
        for cut in 0..blob.len() {
            assert!(matches!(
                CiphertextBlob::parse(&blob[..cut]),
                Err(HsmError::InvalidCiphertext)
            ));
        }
        let mut bad_id = blob.clone();
        bad_id[6] = b'!';
        assert!(CiphertextBlob::parse(&bad_id).is_err());
    }
}
