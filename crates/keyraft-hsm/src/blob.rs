//! The ciphertext blob: self-describing, versioned, authenticated.
//!
//! ```text
//! offset  size  field
//! 0       4     magic and format version: "KRC1"
//! 4       1     key id length n (a key id is a 36-character UUID today)
//! 5       n     key id (ASCII, the canonical hyphenated lowercase UUID)
//! 5+n     4     backing-key version, u32 big-endian
//! 9+n     16    salt (random per message)
//! 25+n    12    nonce (random per message)
//! 37+n    ..    AES-256-GCM ciphertext || tag (16)
//! ```
//!
//! # Why self-describing
//!
//! Like AWS KMS, Decrypt does not ask the caller which key was used: the blob says so.
//! [`CiphertextBlob::parse`] reads the key id and backing version from the header
//! without any key material, so the server can look the key up, check permissions and
//! load the right wrapped version before the HSM is involved. The magic doubles as the
//! format version: a future layout gets a new magic and old blobs keep decrypting.
//!
//! # Why a derived key per message
//!
//! The AES key of one message is derived from the backing key:
//! `HKDF-SHA256(ikm = backing key, salt, info = "keyraft-ciphertext-v1" || key id ||
//! version BE)`. AES-GCM with random 96-bit nonces is only safe for about 2^32
//! messages under one key (beyond that a nonce collision, which reveals the XOR of
//! plaintexts and the authentication key, becomes too likely). A popular KMS key can
//! exceed that; with a fresh 128-bit salt per message each message effectively has its
//! own key, so nonce collisions under one AES key stop mattering.
//!
//! # What is authenticated
//!
//! The AAD is the whole header (everything before the GCM output) followed by the
//! canonical encryption context ([`crate::context::encode_context`]), so neither the
//! key id, the version, the salt, the nonce nor the context can be changed without
//! detection. Every failure — malformed, truncated, tampered, wrong key, wrong context
//! — is the one error [`HsmError::InvalidCiphertext`], so a caller learns nothing about
//! which check failed.

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
    /// Parses a blob without any key material; anything malformed (wrong magic,
    /// truncated, too short to hold a tag, a key id that is not a valid [`KeyId`]) is
    /// [`HsmError::InvalidCiphertext`]. Authenticity is only checked by
    /// [`crate::Hsm::decrypt`].
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

    /// The whole blob, as parsed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Builds the header of a new blob (for HSM backends; the GCM output follows it).
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
        let id = KeyId::generate();
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
        // Not the canonical lowercase form of the UUID.
        let mut upper = blob.clone();
        upper[5..5 + 36].make_ascii_uppercase();
        assert!(matches!(
            CiphertextBlob::parse(&upper),
            Err(HsmError::InvalidCiphertext)
        ));
        let mut magic = blob.clone();
        magic[3] = b'2';
        assert!(CiphertextBlob::parse(&magic).is_err());
        // A length byte that points past the end, or at an empty id.
        for len in [0u8, 35, 37, 255] {
            let mut b = blob.clone();
            b[4] = len;
            assert!(CiphertextBlob::parse(&b).is_err(), "id length {len}");
        }
    }

    #[test]
    fn the_layout_is_as_documented() {
        let id = KeyId::generate();
        let salt = [0x11; SALT_LEN];
        let nonce = [0x22; NONCE_LEN];
        let mut blob = header(&id, 0x0102_0304, &salt, &nonce);
        assert_eq!(blob.len(), 37 + 36);
        blob.extend_from_slice(&[0x33; TAG_LEN + 5]);
        assert_eq!(&blob[..4], b"KRC1");
        assert_eq!(blob[4], 36);
        assert_eq!(&blob[5..41], id.as_str().as_bytes());
        assert_eq!(&blob[41..45], &[1, 2, 3, 4]);
        let parsed = CiphertextBlob::parse(&blob).unwrap();
        assert_eq!(parsed.version, 0x0102_0304);
        assert_eq!(parsed.salt, salt);
        assert_eq!(parsed.nonce, nonce);
        assert_eq!(parsed.header(), &blob[..73]);
        assert_eq!(parsed.sealed(), &[0x33; TAG_LEN + 5]);
        assert_eq!(parsed.as_bytes(), blob.as_slice());
    }
}
