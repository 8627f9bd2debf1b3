//! # Envelope encryption: data of any size under a Keyraft key
//!
//! Keyraft's `Encrypt` takes at most 4 KiB, and every byte of it crosses the network
//! and passes through the cluster. For anything larger, or for data that should not
//! leave the machine, the usual pattern is *envelope encryption*: ask Keyraft for a
//! fresh **data key** (`GenerateDataKey` returns it twice, in plaintext and encrypted
//! under the master key), encrypt the data locally with the plaintext copy, forget it,
//! and store the encrypted copy next to the data. To decrypt, only the small encrypted
//! data key goes to Keyraft (`Decrypt`), and the master key never leaves the cluster.
//!
//! This module packages that pattern as a self-describing **message**, in the spirit of
//! the AWS Encryption SDK's message format but smaller: one data key, one algorithm,
//! no signatures. [`encrypt`] and [`decrypt`] work on byte slices; [`encrypt_stream`] and
//! [`decrypt_stream`] on `tokio` readers and writers, one frame in memory at a time, so a
//! multi-gigabyte file costs the same memory as a small one.
//!
//! ```no_run
//! # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::envelope::EnvelopeError> {
//! use keyraft_client::envelope::{decrypt, encrypt};
//! use keyraft_client::EncryptionContext;
//!
//! let ctx = EncryptionContext::from([("bucket".into(), "invoices".into())]);
//! let message = encrypt(client, "alias/invoices", b"large document", &ctx).await?;
//! let (plaintext, info) = decrypt(client, &message, Some(&ctx)).await?;
//! assert_eq!(plaintext, b"large document");
//! assert_eq!(info.context, ctx);
//! # Ok(()) }
//! ```
//!
//! ## What is protected, and how
//!
//! - **A data key per message.** Each message gets its own data key from the
//!   [`DataKeyProvider`], unless a [`CachingProvider`] (opt-in, see below) reuses one.
//!   The content key that actually encrypts is derived with HKDF-SHA256 from the data
//!   key and a random 256-bit **message id**, so even a reused data key never encrypts
//!   two messages under the same key and nonce.
//! - **The header is authenticated first.** The header (format version, algorithm,
//!   message id, encryption context, encrypted data key, key id, frame length) ends with
//!   an AES-GCM tag over all its bytes. Decryption checks that tag right after Keyraft
//!   returns the data key and before touching any frame, so a changed header byte stops
//!   everything before a single byte of plaintext is released.
//! - **Frames.** The plaintext is cut into frames of a fixed length (64 KiB by default,
//!   [`EncryptOptions::with_frame_len`] to change), each encrypted with AES-256-GCM
//!   separately. A frame's nonce is its sequence number and its additional data binds
//!   the message id, the sequence number, whether it is the final frame and its length.
//!   So flipping a byte fails that frame's tag; swapping or dropping frames fails the
//!   sequence; moving a frame to another message fails the message id and key.
//! - **An explicit end.** The last frame is marked final (it may be empty: a 0-byte
//!   input, or one that is a whole number of frames, ends with an empty final frame).
//!   A stream that ends before a final frame is [`EnvelopeError::Truncated`]; bytes after
//!   it are [`EnvelopeError::TrailingData`].
//! - **The encryption context.** It is passed to Keyraft with the data key, which binds
//!   it as additional authenticated data, and stored in the header so decryption can
//!   send it back. It is *not secret*: it is in the clear in every message, and it may be
//!   logged. On decryption, an `expected_context` is checked the way the AWS SDK does:
//!   every expected pair must be in the message's context with the same value (the
//!   message may carry more pairs); otherwise [`EnvelopeError::ContextMismatch`], before
//!   Keyraft is called.
//!
//! Not provided: several recipients (one encrypted data key per message), signatures
//! (anyone allowed `GenerateDataKey` on the key can make valid messages), and key
//! commitment (GCM does not commit to its key, which matters only with several
//! recipients).
//!
//! ## Streaming and partial output
//!
//! [`decrypt_stream`] writes a frame only after its tag verified, so what reaches the
//! writer is always authentic. But it is written *as it goes*: truncation is only
//! visible at the end, after the earlier frames were written, and a tampered frame in
//! the middle stops the stream after the frames before it. Treat the output as
//! unusable unless the call returned `Ok`: write to a temporary file and rename it into
//! place on success, as the example on [`decrypt_stream`] does. [`decrypt`] returns
//! nothing on failure and needs no such care.
//!
//! ## Caching data keys
//!
//! Off by default. Wrapping a provider in a [`CachingProvider`] reuses data keys (on
//! encryption) and decrypted data keys (on decryption) within limits on age, messages
//! and bytes per key; its docs weigh the trade-off. Streams never use the cache,
//! because their size is not known up front.
//!
//! ## Message format, version 1
//!
//! All integers are big-endian; lengths count bytes. `C`, `E`, `K` are the lengths of
//! the context, encrypted data key and key id sections.
//!
//! | offset            | size | field                                                        |
//! |-------------------|------|--------------------------------------------------------------|
//! | 0                 | 4    | magic, ASCII `KRFE`                                          |
//! | 4                 | 1    | format version, `0x01`                                       |
//! | 5                 | 2    | algorithm id, `0x0001` (see below)                           |
//! | 7                 | 32   | message id, random                                           |
//! | 39                | 2    | `C`, length of the encryption context section                |
//! | 41                | `C`  | encryption context: pairs sorted by key bytes, keys unique, each `u16` key length, key (UTF-8), `u16` value length, value (UTF-8) |
//! | 41+C              | 2    | `E`, length of the encrypted data key, at least 1            |
//! | 43+C              | `E`  | encrypted data key, as Keyraft returned it (opaque)          |
//! | 43+C+E            | 2    | `K`, length of the key id, at least 1                        |
//! | 45+C+E            | `K`  | key id (UTF-8): the ARN `GenerateDataKey` reported           |
//! | 45+C+E+K          | 4    | frame length `F`, 64 ..= 16 MiB                              |
//! | 49+C+E+K          | 16   | header tag                                                   |
//!
//! Then the frames, numbered from 1:
//!
//! | frame   | bytes                                                                          |
//! |---------|--------------------------------------------------------------------------------|
//! | regular | `0x00`, `F` bytes of ciphertext, 16-byte tag                                   |
//! | final   | `0x01`, `u32` length `L` (`L <= F`), `L` bytes of ciphertext, 16-byte tag      |
//!
//! Every non-final frame holds exactly `F` plaintext bytes; exactly one final frame
//! ends the message, and nothing follows it. At most 2³² − 1 frames.
//!
//! Algorithm `0x0001`:
//!
//! - content key = HKDF-SHA256(salt = message id, input key = 32-byte data key,
//!   info = `"keyraft envelope v1 content key"` ‖ algorithm id as `u16`), 32 bytes;
//! - header tag = AES-256-GCM(content key, nonce = 12 zero bytes, additional data =
//!   header bytes from offset 0 up to the tag, empty plaintext);
//! - frame `n` = AES-256-GCM(content key, nonce = 8 zero bytes ‖ `n` as `u32`,
//!   additional data = message id ‖ `n` as `u32` ‖ frame type byte ‖ `L` as `u32`,
//!   where `L = F` for a regular frame).
//!
//! A reader rejects any other magic, version or algorithm, a non-canonical context
//! encoding, and a frame length out of range, before asking Keyraft for anything.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use zeroize::Zeroizing;

use crate::EncryptionContext;

mod cache;
mod format;
mod provider;
#[cfg(test)]
mod tests;

pub use cache::{CacheLimits, CachingProvider, Clock, SystemClock};
pub use format::{
    ALGORITHM_AES_256_GCM_HKDF_SHA256, DEFAULT_FRAME_LEN, FORMAT_VERSION, MAGIC, MAX_FRAME_LEN,
    MESSAGE_ID_LEN, MIN_FRAME_LEN, TAG_LEN,
};
pub use provider::{DataKey, DataKeyProvider, PlaintextKey};

use format::{ContentCipher, Header, FRAME_FINAL, FRAME_REGULAR};

/// What can go wrong encrypting or decrypting a message. Every message is written for
/// the person running the program; none contains key material or plaintext.
///
/// ```
/// use keyraft_client::envelope::EnvelopeError;
/// let e = EnvelopeError::Tampered { frame: Some(3) };
/// assert!(e.to_string().contains("frame 3"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Keyraft refused the request or could not be reached (for decryption this
    /// includes a data key that is not valid under the message's context).
    #[error("Keyraft: {0}")]
    Kms(#[from] crate::Error),
    /// The data key provider gave an unusable answer (for example a key that is not
    /// 32 bytes long).
    #[error("data key provider: {0}")]
    Provider(String),
    /// Reading the input or writing the output failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The caller's arguments cannot be used (frame length out of range, empty key id,
    /// an encryption context too large for the header).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The input is not a message in this format (bad magic bytes, a length field out
    /// of range, a non-canonical context encoding).
    #[error("not a valid Keyraft envelope message: {0}")]
    Malformed(String),
    /// The message is in a format version this library does not read.
    #[error("unsupported envelope format version {0}; this library reads version 1")]
    UnsupportedVersion(u8),
    /// The message uses an algorithm this library does not know.
    #[error("unsupported envelope algorithm 0x{0:04x}")]
    UnsupportedAlgorithm(u16),
    /// Authentication failed: in the header (`frame: None`) or in the numbered frame.
    /// The message was modified, corrupted, or its frames were reordered.
    #[error("{}", tampered_message(*.frame))]
    Tampered {
        /// The frame (numbered from 1) whose tag failed; `None` for the header.
        frame: Option<u32>,
    },
    /// The message ends before its final frame.
    #[error("the message is truncated: it ends before its final frame")]
    Truncated,
    /// There are bytes after the final frame.
    #[error("the message has unexpected bytes after its final frame")]
    TrailingData,
    /// A pair of the expected encryption context is not in the message's context.
    #[error(
        "the message's encryption context does not match: `{key}` is missing or has \
         another value"
    )]
    ContextMismatch {
        /// The expected context key that is missing or differs.
        key: String,
    },
    /// The header names another key than the one Keyraft used to decrypt the data key.
    #[error("the message header names key {header}, but its data key belongs to {actual}")]
    KeyIdMismatch {
        /// The key id in the header.
        header: String,
        /// The key id the provider reported.
        actual: String,
    },
}

fn tampered_message(frame: Option<u32>) -> String {
    match frame {
        None => "the message header failed authentication: it was modified or corrupted, \
                 or does not belong with its data key"
            .into(),
        Some(n) => format!(
            "frame {n} of the message failed authentication: the message was modified, \
             corrupted or reordered"
        ),
    }
}

/// Options for encryption.
///
/// ```
/// use keyraft_client::envelope::EncryptOptions;
/// let options = EncryptOptions::default().with_frame_len(1024 * 1024)?;
/// assert_eq!(options.frame_len(), 1 << 20);
/// # Ok::<(), keyraft_client::envelope::EnvelopeError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncryptOptions {
    frame_len: u32,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        EncryptOptions {
            frame_len: DEFAULT_FRAME_LEN,
        }
    }
}

impl EncryptOptions {
    /// The same options with plaintext frames of `frame_len` bytes, which must be in
    /// [`MIN_FRAME_LEN`]..=[`MAX_FRAME_LEN`]. Larger frames cost less overhead (22
    /// bytes each) and more memory on both sides.
    ///
    /// ```
    /// use keyraft_client::envelope::EncryptOptions;
    /// assert!(EncryptOptions::default().with_frame_len(4096).is_ok());
    /// assert!(EncryptOptions::default().with_frame_len(0).is_err());
    /// ```
    pub fn with_frame_len(self, frame_len: u32) -> Result<Self, EnvelopeError> {
        if !format::frame_len_ok(frame_len) {
            return Err(EnvelopeError::InvalidInput(format!(
                "frame length {frame_len} is outside {MIN_FRAME_LEN}..={MAX_FRAME_LEN}"
            )));
        }
        Ok(EncryptOptions { frame_len })
    }

    /// The plaintext frame length.
    ///
    /// ```
    /// use keyraft_client::envelope::{EncryptOptions, DEFAULT_FRAME_LEN};
    /// assert_eq!(EncryptOptions::default().frame_len(), DEFAULT_FRAME_LEN);
    /// ```
    pub fn frame_len(&self) -> u32 {
        self.frame_len
    }
}

/// What a message's header says, returned by every call. After a successful
/// decryption all of it is authenticated.
///
/// ```no_run
/// # async fn demo(client: &keyraft_client::Client, message: &[u8]) -> Result<(), keyraft_client::envelope::EnvelopeError> {
/// let (_, info) = keyraft_client::envelope::decrypt(client, message, None).await?;
/// println!("{} bytes under {}, context {:?}", info.plaintext_len, info.key_id, info.context);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// The format version ([`FORMAT_VERSION`]).
    pub version: u8,
    /// The algorithm id ([`ALGORITHM_AES_256_GCM_HKDF_SHA256`]).
    pub algorithm: u16,
    /// The random message id.
    pub message_id: [u8; MESSAGE_ID_LEN],
    /// The key that protects the data key (an ARN, as Keyraft reported it).
    pub key_id: String,
    /// The encryption context stored in the header.
    pub context: EncryptionContext,
    /// The encrypted data key stored in the header.
    pub encrypted_data_key: Vec<u8>,
    /// The plaintext frame length.
    pub frame_len: u32,
    /// The number of plaintext bytes in the message.
    pub plaintext_len: u64,
}

impl MessageInfo {
    fn new(header: Header, plaintext_len: u64) -> Self {
        MessageInfo {
            version: FORMAT_VERSION,
            algorithm: format::ALGORITHM_AES_256_GCM_HKDF_SHA256,
            message_id: header.message_id,
            key_id: header.key_id,
            context: header.context,
            encrypted_data_key: header.encrypted_key,
            frame_len: header.frame_len,
            plaintext_len,
        }
    }
}

/// Encrypts `plaintext` under `key_id` (a key id, ARN or alias) with `context`, in
/// frames of [`DEFAULT_FRAME_LEN`], and returns the whole message.
///
/// ```no_run
/// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::envelope::EnvelopeError> {
/// let ctx = keyraft_client::EncryptionContext::from([("user".into(), "alice".into())]);
/// let message = keyraft_client::envelope::encrypt(client, "alias/profiles", b"{}", &ctx).await?;
/// assert!(message.starts_with(b"KRFE"));
/// # Ok(()) }
/// ```
pub async fn encrypt<P: DataKeyProvider>(
    provider: &P,
    key_id: &str,
    plaintext: &[u8],
    context: &EncryptionContext,
) -> Result<Vec<u8>, EnvelopeError> {
    encrypt_with(
        provider,
        key_id,
        plaintext,
        context,
        &EncryptOptions::default(),
    )
    .await
}

/// [`encrypt`] with options.
///
/// ```no_run
/// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::envelope::EnvelopeError> {
/// use keyraft_client::envelope::{encrypt_with, EncryptOptions};
/// let options = EncryptOptions::default().with_frame_len(4096)?;
/// let message = encrypt_with(client, "alias/logs", b"line", &Default::default(), &options).await?;
/// # let _ = message;
/// # Ok(()) }
/// ```
pub async fn encrypt_with<P: DataKeyProvider>(
    provider: &P,
    key_id: &str,
    plaintext: &[u8],
    context: &EncryptionContext,
    options: &EncryptOptions,
) -> Result<Vec<u8>, EnvelopeError> {
    let size = Some(plaintext.len() as u64);
    let (head, cipher, header) =
        start_message(provider, key_id, context, options.frame_len, size).await?;
    let mut out = Vec::with_capacity(sealed_len(
        head.len(),
        plaintext.len(),
        header.frame_len as usize,
    ));
    out.extend_from_slice(&head);
    let mut reader = plaintext;
    seal_frames(&cipher, header.frame_len, &mut reader, &mut out, None).await?;
    Ok(out)
}

/// Decrypts a whole message. If `expected_context` is given, each of its pairs must be
/// in the message's context with the same value. Returns the plaintext and what the
/// header says; on any error, no plaintext.
///
/// ```no_run
/// # async fn demo(client: &keyraft_client::Client, message: &[u8]) -> Result<(), keyraft_client::envelope::EnvelopeError> {
/// use keyraft_client::envelope::{decrypt, EnvelopeError};
/// let expected = keyraft_client::EncryptionContext::from([("user".into(), "alice".into())]);
/// match decrypt(client, message, Some(&expected)).await {
///     Ok((plaintext, info)) => println!("{} bytes from {}", plaintext.len(), info.key_id),
///     Err(EnvelopeError::ContextMismatch { key }) => eprintln!("not alice's data ({key})"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
pub async fn decrypt<P: DataKeyProvider>(
    provider: &P,
    message: &[u8],
    expected_context: Option<&EncryptionContext>,
) -> Result<(Vec<u8>, MessageInfo), EnvelopeError> {
    let mut reader = message;
    let size = Some(message.len() as u64);
    let (header, cipher) = open_message(provider, &mut reader, expected_context, size).await?;
    let mut out = Vec::with_capacity(reader.len());
    let total = open_frames(&cipher, header.frame_len, &mut reader, &mut out, None).await?;
    Ok((out, MessageInfo::new(header, total)))
}

/// Encrypts everything `reader` yields into `writer`, one frame at a time (memory use
/// is about one frame, whatever the input size). `progress`, if given, is called after
/// each frame with the number of plaintext bytes encrypted so far. The writer is
/// flushed at the end, not shut down. A stream never uses a [`CachingProvider`]'s
/// cache, as its size is not known in advance.
///
/// If this fails, what was written is not a valid message.
///
/// ```no_run
/// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::envelope::EnvelopeError> {
/// use keyraft_client::envelope::{encrypt_stream, EncryptOptions};
/// use tokio::fs::File;
///
/// let ctx = keyraft_client::EncryptionContext::from([("purpose".into(), "backup".into())]);
/// let input = File::open("backup.tar").await?;
/// let mut output = File::create("backup.tar.krfe").await?;
/// let mut report = |done: u64| eprint!("\r{done} bytes encrypted");
/// let info = encrypt_stream(
///     client,
///     "alias/backups",
///     &ctx,
///     tokio::io::BufReader::new(input),
///     &mut output,
///     &EncryptOptions::default(),
///     Some(&mut report),
/// )
/// .await?;
/// output.sync_all().await?;
/// eprintln!("\n{} bytes under {}", info.plaintext_len, info.key_id);
/// # Ok(()) }
/// ```
pub async fn encrypt_stream<P, R, W>(
    provider: &P,
    key_id: &str,
    context: &EncryptionContext,
    mut reader: R,
    mut writer: W,
    options: &EncryptOptions,
    progress: Option<&mut (dyn FnMut(u64) + Send)>,
) -> Result<MessageInfo, EnvelopeError>
where
    P: DataKeyProvider,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (head, cipher, header) =
        start_message(provider, key_id, context, options.frame_len, None).await?;
    writer.write_all(&head).await?;
    let total = seal_frames(
        &cipher,
        header.frame_len,
        &mut reader,
        &mut writer,
        progress,
    )
    .await?;
    writer.flush().await?;
    Ok(MessageInfo::new(header, total))
}

/// Decrypts a message from `reader` into `writer`, one frame at a time. Each frame is
/// written only after its tag verified, and `progress`, if given, is called after each
/// with the number of plaintext bytes written so far. The writer is flushed at the
/// end, not shut down.
///
/// **On error, the writer may already hold the plaintext of the frames before the
/// failure** — a truncated message, in particular, is noticed only at its end. Write to
/// a temporary file and move it into place only when this returns `Ok`:
///
/// ```no_run
/// # async fn demo(client: &keyraft_client::Client) -> Result<(), keyraft_client::envelope::EnvelopeError> {
/// use keyraft_client::envelope::decrypt_stream;
/// use tokio::fs::{self, File};
///
/// let expected = keyraft_client::EncryptionContext::from([("purpose".into(), "backup".into())]);
/// let input = tokio::io::BufReader::new(File::open("backup.tar.krfe").await?);
/// let partial = "backup.tar.partial";
/// let mut output = File::create(partial).await?;
/// let mut report = |done: u64| eprint!("\r{done} bytes decrypted");
/// match decrypt_stream(client, input, &mut output, Some(&expected), Some(&mut report)).await {
///     Ok(_info) => {
///         output.sync_all().await?;
///         fs::rename(partial, "backup.tar").await?;
///     }
///     Err(e) => {
///         drop(output);
///         let _ = fs::remove_file(partial).await;
///         return Err(e);
///     }
/// }
/// # Ok(()) }
/// ```
pub async fn decrypt_stream<P, R, W>(
    provider: &P,
    mut reader: R,
    mut writer: W,
    expected_context: Option<&EncryptionContext>,
    progress: Option<&mut (dyn FnMut(u64) + Send)>,
) -> Result<MessageInfo, EnvelopeError>
where
    P: DataKeyProvider,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (header, cipher) = open_message(provider, &mut reader, expected_context, None).await?;
    let total = open_frames(
        &cipher,
        header.frame_len,
        &mut reader,
        &mut writer,
        progress,
    )
    .await?;
    writer.flush().await?;
    Ok(MessageInfo::new(header, total))
}

/// Gets a data key and builds the header: its bytes (tag included), the cipher for
/// the frames, and the parsed header.
async fn start_message<P: DataKeyProvider>(
    provider: &P,
    key_id: &str,
    context: &EncryptionContext,
    frame_len: u32,
    size: Option<u64>,
) -> Result<(Vec<u8>, ContentCipher, Header), EnvelopeError> {
    // Refuse what cannot be written before asking Keyraft for anything.
    if !format::frame_len_ok(frame_len) {
        return Err(EnvelopeError::InvalidInput(format!(
            "frame length {frame_len} is outside {MIN_FRAME_LEN}..={MAX_FRAME_LEN}"
        )));
    }
    format::check_key_id(key_id)?;
    format::encode_context(context, &mut Vec::new())?;

    let data_key = provider.generate_data_key(key_id, context, size).await?;
    let message_id: [u8; MESSAGE_ID_LEN] = rand::random();
    let header = Header {
        message_id,
        context: context.clone(),
        encrypted_key: data_key.encrypted,
        key_id: if data_key.key_id.is_empty() {
            key_id.to_string()
        } else {
            data_key.key_id
        },
        frame_len,
    };
    let mut bytes = header.encode()?;
    let cipher = ContentCipher::new(&data_key.plaintext, &message_id)?;
    let tag = cipher.header_tag(&bytes)?;
    bytes.extend_from_slice(&tag);
    Ok((bytes, cipher, header))
}

/// Reads the header, checks the expected context, has the provider decrypt the data
/// key, and verifies the header tag. Nothing after the header has been read.
async fn open_message<P, R>(
    provider: &P,
    reader: &mut R,
    expected_context: Option<&EncryptionContext>,
    size: Option<u64>,
) -> Result<(Header, ContentCipher), EnvelopeError>
where
    P: DataKeyProvider,
    R: AsyncRead + Unpin,
{
    let (header, raw, tag) = read_header(reader).await?;
    if let Some(expected) = expected_context {
        check_context(expected, &header.context)?;
    }
    let data_key = provider
        .decrypt_data_key(&header.encrypted_key, &header.context, size)
        .await?;
    let cipher = ContentCipher::new(&data_key.plaintext, &header.message_id)?;
    cipher
        .verify_header(&raw, &tag)
        .map_err(|_| EnvelopeError::Tampered { frame: None })?;
    if !data_key.key_id.is_empty() && data_key.key_id != header.key_id {
        return Err(EnvelopeError::KeyIdMismatch {
            header: header.key_id,
            actual: data_key.key_id,
        });
    }
    Ok((header, cipher))
}

/// AWS Encryption SDK semantics: every expected pair present with the same value.
fn check_context(
    expected: &EncryptionContext,
    actual: &EncryptionContext,
) -> Result<(), EnvelopeError> {
    match expected.iter().find(|(k, v)| actual.get(*k) != Some(*v)) {
        Some((key, _)) => Err(EnvelopeError::ContextMismatch { key: key.clone() }),
        None => Ok(()),
    }
}

/// Reads a header field by field (every length is checked before it is trusted) and
/// returns it with its raw bytes (for the tag) and the tag.
async fn read_header<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<(Header, Vec<u8>, [u8; TAG_LEN]), EnvelopeError> {
    let mut raw = vec![0u8; MAGIC.len()];
    let n = read_full(reader, &mut raw).await?;
    if raw[..n] != MAGIC[..n] {
        return Err(EnvelopeError::Malformed(
            "it does not start with the magic bytes \"KRFE\"".into(),
        ));
    }
    if n < MAGIC.len() {
        return Err(EnvelopeError::Truncated);
    }
    let at = read_more(reader, &mut raw, 3).await?;
    let version = raw[at];
    if version != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let algorithm = u16::from_be_bytes([raw[at + 1], raw[at + 2]]);
    if algorithm != format::ALGORITHM_AES_256_GCM_HKDF_SHA256 {
        return Err(EnvelopeError::UnsupportedAlgorithm(algorithm));
    }
    let at = read_more(reader, &mut raw, MESSAGE_ID_LEN).await?;
    let mut message_id = [0u8; MESSAGE_ID_LEN];
    message_id.copy_from_slice(&raw[at..]);

    let len = read_u16(reader, &mut raw).await?;
    let at = read_more(reader, &mut raw, len).await?;
    let context = format::decode_context(&raw[at..])?;

    let len = read_u16(reader, &mut raw).await?;
    if len == 0 {
        return Err(EnvelopeError::Malformed(
            "the encrypted data key is empty".into(),
        ));
    }
    let at = read_more(reader, &mut raw, len).await?;
    let encrypted_key = raw[at..].to_vec();

    let len = read_u16(reader, &mut raw).await?;
    if len == 0 {
        return Err(EnvelopeError::Malformed("the key id is empty".into()));
    }
    let at = read_more(reader, &mut raw, len).await?;
    let key_id = String::from_utf8(raw[at..].to_vec())
        .map_err(|_| EnvelopeError::Malformed("the key id is not UTF-8".into()))?;

    let at = read_more(reader, &mut raw, 4).await?;
    let frame_len = u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    if !format::frame_len_ok(frame_len) {
        return Err(EnvelopeError::Malformed(format!(
            "frame length {frame_len} is outside {MIN_FRAME_LEN}..={MAX_FRAME_LEN}"
        )));
    }
    let mut tag = [0u8; TAG_LEN];
    read_exact(reader, &mut tag).await?;
    let header = Header {
        message_id,
        context,
        encrypted_key,
        key_id,
        frame_len,
    };
    Ok((header, raw, tag))
}

/// Encrypts frames from `reader` to `writer` until the input ends; returns the number
/// of plaintext bytes.
async fn seal_frames<R, W>(
    cipher: &ContentCipher,
    frame_len: u32,
    reader: &mut R,
    writer: &mut W,
    mut progress: Option<&mut (dyn FnMut(u64) + Send)>,
) -> Result<u64, EnvelopeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // One buffer laid out as a final frame: type, length, data, tag. A regular frame
    // is written from offset 4 (its type byte) and has no length.
    const PREFIX: usize = 5;
    let f = frame_len as usize;
    let mut buf = Zeroizing::new(vec![0u8; PREFIX + f + TAG_LEN]);
    let mut total: u64 = 0;
    let mut seq: u32 = 1;
    loop {
        let n = read_full(reader, &mut buf[PREFIX..PREFIX + f]).await?;
        let last = n < f;
        if !last && seq == u32::MAX {
            return Err(EnvelopeError::InvalidInput(
                "the input needs more than 2^32 - 1 frames; use a larger frame length".into(),
            ));
        }
        let tag = cipher.seal(seq, last, &mut buf[PREFIX..PREFIX + n])?;
        buf[PREFIX + n..PREFIX + n + TAG_LEN].copy_from_slice(&tag);
        let start = if last {
            buf[0] = FRAME_FINAL;
            // n < f <= MAX_FRAME_LEN, so it fits.
            buf[1..PREFIX].copy_from_slice(&(n as u32).to_be_bytes());
            0
        } else {
            buf[PREFIX - 1] = FRAME_REGULAR;
            PREFIX - 1
        };
        writer.write_all(&buf[start..PREFIX + n + TAG_LEN]).await?;
        total += n as u64;
        if let Some(report) = progress.as_mut() {
            report(total);
        }
        if last {
            return Ok(total);
        }
        seq += 1;
    }
}

/// Verifies and decrypts frames from `reader` to `writer` up to and including the
/// final one, then insists the input ends; returns the number of plaintext bytes.
async fn open_frames<R, W>(
    cipher: &ContentCipher,
    frame_len: u32,
    reader: &mut R,
    writer: &mut W,
    mut progress: Option<&mut (dyn FnMut(u64) + Send)>,
) -> Result<u64, EnvelopeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let f = frame_len as usize;
    let mut buf = Zeroizing::new(vec![0u8; f + TAG_LEN]);
    let mut total: u64 = 0;
    let mut seq: u32 = 1;
    loop {
        let tampered = EnvelopeError::Tampered { frame: Some(seq) };
        let mut kind = [0u8; 1];
        read_exact(reader, &mut kind).await?;
        let (last, len) = match kind[0] {
            FRAME_REGULAR => (false, f),
            FRAME_FINAL => {
                let mut len = [0u8; 4];
                read_exact(reader, &mut len).await?;
                let len = u32::from_be_bytes(len);
                if len > frame_len {
                    return Err(tampered);
                }
                (true, len as usize)
            }
            _ => return Err(tampered),
        };
        if !last && seq == u32::MAX {
            return Err(tampered);
        }
        read_exact(reader, &mut buf[..len + TAG_LEN]).await?;
        let (data, tag) = buf[..len + TAG_LEN].split_at_mut(len);
        cipher.open(seq, last, data, tag).map_err(|_| tampered)?;
        writer.write_all(data).await?;
        total += len as u64;
        if let Some(report) = progress.as_mut() {
            report(total);
        }
        if last {
            let mut extra = [0u8; 1];
            if read_full(reader, &mut extra).await? != 0 {
                return Err(EnvelopeError::TrailingData);
            }
            return Ok(total);
        }
        seq += 1;
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
async fn read_full<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<usize, EnvelopeError> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]).await {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(EnvelopeError::Io(e)),
        }
    }
    Ok(n)
}

/// Fills `buf` exactly; an early end of input is [`EnvelopeError::Truncated`].
async fn read_exact<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut [u8],
) -> Result<(), EnvelopeError> {
    if read_full(reader, buf).await? < buf.len() {
        return Err(EnvelopeError::Truncated);
    }
    Ok(())
}

/// Appends exactly `len` bytes from `reader` to `raw`; returns where they start.
async fn read_more<R: AsyncRead + Unpin>(
    reader: &mut R,
    raw: &mut Vec<u8>,
    len: usize,
) -> Result<usize, EnvelopeError> {
    let at = raw.len();
    raw.resize(at + len, 0);
    read_exact(reader, &mut raw[at..]).await?;
    Ok(at)
}

/// Appends a big-endian `u16` length from `reader` to `raw` and returns it.
async fn read_u16<R: AsyncRead + Unpin>(
    reader: &mut R,
    raw: &mut Vec<u8>,
) -> Result<usize, EnvelopeError> {
    let at = read_more(reader, raw, 2).await?;
    Ok(u16::from_be_bytes([raw[at], raw[at + 1]]) as usize)
}

/// The length of a message with a `header_len`-byte header (tag included).
fn sealed_len(header_len: usize, plaintext_len: usize, frame_len: usize) -> usize {
    let frame_len = frame_len.max(1);
    let full = plaintext_len / frame_len;
    let rest = plaintext_len % frame_len;
    full.saturating_mul(1 + frame_len + TAG_LEN)
        .saturating_add(header_len + 1 + 4 + rest + TAG_LEN)
}
