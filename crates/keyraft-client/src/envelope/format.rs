//! The bytes of a message: the header codec and the per-message cipher.
//!
//! Everything here is synchronous and free of I/O, so that the layout documented in the
//! parent module lives in one place and can be tested byte by byte. The async reading
//! and writing around it is in the parent module.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{EnvelopeError, PlaintextKey};
use crate::EncryptionContext;

/// The four bytes every message starts with: ASCII `KRFE` ("Keyraft envelope").
///
/// ```
/// assert_eq!(&keyraft_client::envelope::MAGIC, b"KRFE");
/// ```
pub const MAGIC: [u8; 4] = *b"KRFE";

/// The message format version this library writes, and the only one it reads.
///
/// ```
/// assert_eq!(keyraft_client::envelope::FORMAT_VERSION, 1);
/// ```
pub const FORMAT_VERSION: u8 = 1;

/// Algorithm id `0x0001`: AES-256-GCM content encryption in frames, under a content key
/// derived with HKDF-SHA256 from a 256-bit data key and the message id.
///
/// ```
/// assert_eq!(keyraft_client::envelope::ALGORITHM_AES_256_GCM_HKDF_SHA256, 0x0001);
/// ```
pub const ALGORITHM_AES_256_GCM_HKDF_SHA256: u16 = 0x0001;

/// Length of the random message id in the header, in bytes.
///
/// ```
/// assert_eq!(keyraft_client::envelope::MESSAGE_ID_LEN, 32);
/// ```
pub const MESSAGE_ID_LEN: usize = 32;

/// Length of every authentication tag (the header's and each frame's), in bytes.
///
/// ```
/// assert_eq!(keyraft_client::envelope::TAG_LEN, 16);
/// ```
pub const TAG_LEN: usize = 16;

/// The plaintext frame length used unless [`EncryptOptions`](super::EncryptOptions)
/// says otherwise: 64 KiB.
///
/// ```
/// assert_eq!(keyraft_client::envelope::DEFAULT_FRAME_LEN, 65_536);
/// ```
pub const DEFAULT_FRAME_LEN: u32 = 64 * 1024;

/// The smallest frame length a message may declare: 64 bytes.
///
/// ```
/// use keyraft_client::envelope::{EncryptOptions, MIN_FRAME_LEN};
/// assert!(EncryptOptions::default().with_frame_len(MIN_FRAME_LEN).is_ok());
/// assert!(EncryptOptions::default().with_frame_len(MIN_FRAME_LEN - 1).is_err());
/// ```
pub const MIN_FRAME_LEN: u32 = 64;

/// The largest frame length a message may declare: 16 MiB. A decryptor holds one frame
/// in memory, so this bounds what a hostile header can make it allocate.
///
/// ```
/// use keyraft_client::envelope::{EncryptOptions, MAX_FRAME_LEN};
/// assert!(EncryptOptions::default().with_frame_len(MAX_FRAME_LEN).is_ok());
/// assert!(EncryptOptions::default().with_frame_len(MAX_FRAME_LEN + 1).is_err());
/// ```
pub const MAX_FRAME_LEN: u32 = 16 * 1024 * 1024;

/// Frame type byte of a regular (full, not last) frame.
pub(super) const FRAME_REGULAR: u8 = 0x00;
/// Frame type byte of the final frame.
pub(super) const FRAME_FINAL: u8 = 0x01;

/// Bytes before the context section: magic, version, algorithm id, message id.
pub(super) const FIXED_PREFIX_LEN: usize = 4 + 1 + 2 + MESSAGE_ID_LEN;

/// HKDF `info` for the content key (the algorithm id is appended).
const CONTENT_KEY_INFO: &[u8] = b"keyraft envelope v1 content key";

/// The parsed (or to-be-written) header, without its tag.
#[derive(Clone)]
pub(super) struct Header {
    pub message_id: [u8; MESSAGE_ID_LEN],
    pub context: EncryptionContext,
    pub encrypted_key: Vec<u8>,
    pub key_id: String,
    pub frame_len: u32,
}

impl Header {
    /// The header bytes the tag covers (everything but the tag itself).
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::with_capacity(
            FIXED_PREFIX_LEN + 64 + self.encrypted_key.len() + self.key_id.len(),
        );
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&ALGORITHM_AES_256_GCM_HKDF_SHA256.to_be_bytes());
        out.extend_from_slice(&self.message_id);
        encode_context(&self.context, &mut out)?;
        if self.encrypted_key.is_empty() {
            return Err(EnvelopeError::Provider(
                "the encrypted data key is empty".into(),
            ));
        }
        put_len16(&mut out, self.encrypted_key.len(), || {
            EnvelopeError::Provider(format!(
                "the encrypted data key is {} bytes; the format holds at most 65535",
                self.encrypted_key.len()
            ))
        })?;
        out.extend_from_slice(&self.encrypted_key);
        check_key_id(&self.key_id)?;
        put_len16(&mut out, self.key_id.len(), || {
            EnvelopeError::InvalidInput("key id too long".into())
        })?;
        out.extend_from_slice(self.key_id.as_bytes());
        out.extend_from_slice(&self.frame_len.to_be_bytes());
        Ok(out)
    }
}

/// Checks a key id can be written into a header.
pub(super) fn check_key_id(key_id: &str) -> Result<(), EnvelopeError> {
    if key_id.is_empty() {
        return Err(EnvelopeError::InvalidInput("the key id is empty".into()));
    }
    if key_id.len() > u16::MAX as usize {
        return Err(EnvelopeError::InvalidInput(format!(
            "the key id is {} bytes; at most 65535 are allowed",
            key_id.len()
        )));
    }
    Ok(())
}

/// Checks a frame length is within [`MIN_FRAME_LEN`]..=[`MAX_FRAME_LEN`].
pub(super) fn frame_len_ok(frame_len: u32) -> bool {
    (MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame_len)
}

/// Appends the context section (2-byte length, then the sorted pairs).
pub(super) fn encode_context(
    context: &EncryptionContext,
    out: &mut Vec<u8>,
) -> Result<(), EnvelopeError> {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    // A BTreeMap<String, _> iterates in byte order of the keys: the canonical order.
    for (k, v) in context {
        for s in [k, v] {
            put_len16(out, s.len(), || {
                EnvelopeError::InvalidInput(format!(
                    "an encryption context entry is {} bytes; at most 65535 are allowed",
                    s.len()
                ))
            })?;
            out.extend_from_slice(s.as_bytes());
        }
    }
    let len = out.len() - start - 2;
    let len = u16::try_from(len).map_err(|_| {
        EnvelopeError::InvalidInput(format!(
            "the encryption context encodes to {len} bytes; at most 65535 are allowed"
        ))
    })?;
    out[start..start + 2].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Parses the pairs of a context section (without its length prefix), insisting on the
/// canonical encoding: keys strictly ascending, valid UTF-8, nothing left over.
pub(super) fn decode_context(mut bytes: &[u8]) -> Result<EncryptionContext, EnvelopeError> {
    let mut context = EncryptionContext::new();
    let mut last: Option<String> = None;
    while !bytes.is_empty() {
        let key = take_str16(&mut bytes)?;
        let value = take_str16(&mut bytes)?;
        if last
            .as_ref()
            .is_some_and(|prev| key.as_str() <= prev.as_str())
        {
            return Err(EnvelopeError::Malformed(
                "the encryption context in the header is not in canonical order".into(),
            ));
        }
        last = Some(key.clone());
        context.insert(key, value);
    }
    Ok(context)
}

fn take_str16(bytes: &mut &[u8]) -> Result<String, EnvelopeError> {
    let cut =
        || EnvelopeError::Malformed("the encryption context in the header is cut short".into());
    let (len, rest) = bytes.split_first_chunk::<2>().ok_or_else(cut)?;
    let len = u16::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(cut());
    }
    let (s, rest) = rest.split_at(len);
    *bytes = rest;
    String::from_utf8(s.to_vec()).map_err(|_| {
        EnvelopeError::Malformed("the encryption context in the header is not UTF-8".into())
    })
}

fn put_len16(
    out: &mut Vec<u8>,
    len: usize,
    too_long: impl FnOnce() -> EnvelopeError,
) -> Result<(), EnvelopeError> {
    let len = u16::try_from(len).map_err(|_| too_long())?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// The authenticated cipher of one message: AES-256-GCM under the content key derived
/// from the data key and the message id.
pub(super) struct ContentCipher {
    aead: Aes256Gcm,
    message_id: [u8; MESSAGE_ID_LEN],
}

/// Marker for "a tag did not verify"; the caller knows where.
pub(super) struct BadTag;

impl ContentCipher {
    /// HKDF-SHA256(salt = message id, ikm = data key, info = label || algorithm id).
    pub fn new(
        data_key: &PlaintextKey,
        message_id: &[u8; MESSAGE_ID_LEN],
    ) -> Result<Self, EnvelopeError> {
        let hkdf = Hkdf::<Sha256>::new(Some(message_id), data_key.as_bytes());
        let mut info = CONTENT_KEY_INFO.to_vec();
        info.extend_from_slice(&ALGORITHM_AES_256_GCM_HKDF_SHA256.to_be_bytes());
        let mut content_key = Zeroizing::new([0u8; 32]);
        hkdf.expand(&info, content_key.as_mut())
            .map_err(|_| EnvelopeError::Provider("content key derivation failed".into()))?;
        let aead = Aes256Gcm::new_from_slice(content_key.as_ref())
            .map_err(|_| EnvelopeError::Provider("content key has the wrong length".into()))?;
        Ok(ContentCipher {
            aead,
            message_id: *message_id,
        })
    }

    /// The header tag: GCM with nonce 0 over the header bytes, empty plaintext.
    pub fn header_tag(&self, header: &[u8]) -> Result<[u8; TAG_LEN], EnvelopeError> {
        let tag = self
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&nonce(0)), header, &mut [])
            .map_err(|_| EnvelopeError::Provider("header authentication failed".into()))?;
        Ok(tag.into())
    }

    /// Verifies the header tag.
    pub fn verify_header(&self, header: &[u8], tag: &[u8; TAG_LEN]) -> Result<(), BadTag> {
        self.aead
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce(0)),
                header,
                &mut [],
                Tag::from_slice(tag),
            )
            .map_err(|_| BadTag)
    }

    /// Encrypts frame `seq` in place and returns its tag.
    pub fn seal(
        &self,
        seq: u32,
        last: bool,
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], EnvelopeError> {
        let aad = self.frame_aad(seq, last, data.len());
        let tag = self
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&nonce(seq)), &aad, data)
            .map_err(|_| EnvelopeError::InvalidInput("a frame could not be encrypted".into()))?;
        Ok(tag.into())
    }

    /// Verifies and decrypts frame `seq` in place.
    pub fn open(&self, seq: u32, last: bool, data: &mut [u8], tag: &[u8]) -> Result<(), BadTag> {
        if tag.len() != TAG_LEN {
            return Err(BadTag);
        }
        let aad = self.frame_aad(seq, last, data.len());
        self.aead
            .decrypt_in_place_detached(
                Nonce::from_slice(&nonce(seq)),
                &aad,
                data,
                Tag::from_slice(tag),
            )
            .map_err(|_| BadTag)
    }

    /// message id || seq (u32 BE) || frame type || content length (u32 BE).
    fn frame_aad(&self, seq: u32, last: bool, len: usize) -> [u8; MESSAGE_ID_LEN + 9] {
        let mut aad = [0u8; MESSAGE_ID_LEN + 9];
        aad[..MESSAGE_ID_LEN].copy_from_slice(&self.message_id);
        aad[MESSAGE_ID_LEN..MESSAGE_ID_LEN + 4].copy_from_slice(&seq.to_be_bytes());
        aad[MESSAGE_ID_LEN + 4] = if last { FRAME_FINAL } else { FRAME_REGULAR };
        // Frames are at most MAX_FRAME_LEN (< 2^32) long; saturate rather than wrap.
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        aad[MESSAGE_ID_LEN + 5..].copy_from_slice(&len.to_be_bytes());
        aad
    }
}

/// 96-bit nonce: eight zero bytes, then the sequence number (0 for the header).
fn nonce(seq: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&seq.to_be_bytes());
    n
}
