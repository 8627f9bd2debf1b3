//! Tests of the message format and the cache, against an in-memory provider that wraps
//! data keys with real AES-GCM under a master key, binding the encryption context the
//! way Keyraft does.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncRead, ReadBuf};

use super::*;
use crate::{Error, ErrorCode, KmsError};

const ARN: &str = "arn:keyraft:kms:test:000000000000:key/test-key";

/// Keyraft in miniature: one master key, known as `test-key`, `alias/test` or its ARN.
struct MemoryProvider {
    master: Aes256Gcm,
    generated: AtomicUsize,
    decrypted: AtomicUsize,
}

impl MemoryProvider {
    fn new() -> Self {
        MemoryProvider {
            master: Aes256Gcm::new_from_slice(&[0x42; 32]).unwrap(),
            generated: AtomicUsize::new(0),
            decrypted: AtomicUsize::new(0),
        }
    }

    fn generated(&self) -> usize {
        self.generated.load(Ordering::SeqCst)
    }

    fn decrypted(&self) -> usize {
        self.decrypted.load(Ordering::SeqCst)
    }

    fn aad(context: &EncryptionContext) -> Vec<u8> {
        let mut aad = ARN.as_bytes().to_vec();
        format::encode_context(context, &mut aad).unwrap();
        aad
    }
}

impl DataKeyProvider for MemoryProvider {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
        _size: Option<u64>,
    ) -> Result<DataKey, EnvelopeError> {
        if !["test-key", "alias/test", ARN].contains(&key_id) {
            return Err(Error::Service(KmsError::key_not_found(key_id)).into());
        }
        self.generated.fetch_add(1, Ordering::SeqCst);
        let plaintext = PlaintextKey::random();
        let nonce: [u8; 12] = rand::random();
        let aad = Self::aad(context);
        let sealed = self
            .master
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap();
        let mut encrypted = nonce.to_vec();
        encrypted.extend_from_slice(&sealed);
        Ok(DataKey {
            plaintext,
            encrypted,
            key_id: ARN.into(),
        })
    }

    async fn decrypt_data_key(
        &self,
        encrypted: &[u8],
        context: &EncryptionContext,
        _size: Option<u64>,
    ) -> Result<DataKey, EnvelopeError> {
        self.decrypted.fetch_add(1, Ordering::SeqCst);
        let invalid = || {
            EnvelopeError::Kms(Error::Service(KmsError::new(
                ErrorCode::InvalidCiphertext,
                "invalid ciphertext",
            )))
        };
        if encrypted.len() < 12 {
            return Err(invalid());
        }
        let (nonce, sealed) = encrypted.split_at(12);
        let aad = Self::aad(context);
        let plain = self
            .master
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| invalid())?;
        Ok(DataKey {
            plaintext: PlaintextKey::from_bytes(&plain)?,
            encrypted: encrypted.to_vec(),
            key_id: ARN.into(),
        })
    }
}

/// Reports another key id on decryption than the one in the header.
struct LyingProvider(MemoryProvider);

impl DataKeyProvider for LyingProvider {
    async fn generate_data_key(
        &self,
        key_id: &str,
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> Result<DataKey, EnvelopeError> {
        self.0.generate_data_key(key_id, context, size).await
    }

    async fn decrypt_data_key(
        &self,
        encrypted: &[u8],
        context: &EncryptionContext,
        size: Option<u64>,
    ) -> Result<DataKey, EnvelopeError> {
        let mut key = self.0.decrypt_data_key(encrypted, context, size).await?;
        key.key_id = "arn:keyraft:kms:test:000000000000:key/other".into();
        Ok(key)
    }
}

/// A clock the test moves by hand.
#[derive(Clone)]
struct TestClock(Arc<Mutex<Instant>>);

impl TestClock {
    fn new() -> Self {
        TestClock(Arc::new(Mutex::new(Instant::now())))
    }

    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
}

/// Yields at most `chunk` bytes per read, to exercise partial reads.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn small_frames() -> EncryptOptions {
    EncryptOptions::default().with_frame_len(64).unwrap()
}

/// The header length (tag included) of a message described by `info`.
fn header_len(info: &MessageInfo) -> usize {
    let mut context = Vec::new();
    format::encode_context(&info.context, &mut context).unwrap();
    format::FIXED_PREFIX_LEN
        + context.len()
        + 2
        + info.encrypted_data_key.len()
        + 2
        + info.key_id.len()
        + 4
        + TAG_LEN
}

/// The offsets at which each frame starts, and the end of the message.
fn frame_starts(message: &[u8], info: &MessageInfo) -> Vec<usize> {
    let f = info.frame_len as usize;
    let mut at = header_len(info);
    let mut starts = vec![at];
    loop {
        if message[at] == FRAME_FINAL {
            let len = u32::from_be_bytes(message[at + 1..at + 5].try_into().unwrap()) as usize;
            at += 5 + len + TAG_LEN;
            starts.push(at);
            return starts;
        }
        at += 1 + f + TAG_LEN;
        starts.push(at);
    }
}

/// A message of `len` bytes in 64-byte frames, its plaintext and what it says.
async fn small_message(p: &MemoryProvider, len: usize) -> (Vec<u8>, Vec<u8>, MessageInfo) {
    let plaintext = data(len, len as u64);
    let context = ctx(&[("tenant", "42"), ("purpose", "test")]);
    let message = encrypt_with(p, "test-key", &plaintext, &context, &small_frames())
        .await
        .unwrap();
    let (_, info) = decrypt(p, &message, None).await.unwrap();
    (message, plaintext, info)
}

// ---------------------------------------------------------------------------------
// Round trips

#[tokio::test]
async fn round_trips_at_every_frame_boundary_in_memory() {
    let p = MemoryProvider::new();
    let context = ctx(&[("a", "1")]);
    for frame_len in [64usize, DEFAULT_FRAME_LEN as usize] {
        let options = EncryptOptions::default()
            .with_frame_len(frame_len as u32)
            .unwrap();
        for len in [
            0,
            1,
            frame_len - 1,
            frame_len,
            frame_len + 1,
            3 * frame_len,
            3 * frame_len + 5,
        ] {
            let plaintext = data(len, 7);
            let message = encrypt_with(&p, "alias/test", &plaintext, &context, &options)
                .await
                .unwrap();
            let (got, info) = decrypt(&p, &message, Some(&context)).await.unwrap();
            assert_eq!(got, plaintext, "frame {frame_len}, len {len}");
            assert_eq!(info.plaintext_len, len as u64);
            assert_eq!(info.key_id, ARN);
            assert_eq!(info.context, context);
            assert_eq!(info.frame_len, frame_len as u32);
            assert_eq!(message.len(), sealed_len(header_len(&info), len, frame_len));
        }
    }
}

#[tokio::test]
async fn round_trips_megabytes_in_memory_and_streaming() {
    let p = MemoryProvider::new();
    let context = ctx(&[("file", "big.bin")]);
    let plaintext = data(3 * 1024 * 1024 + 17, 1);

    let message = encrypt(&p, "test-key", &plaintext, &context).await.unwrap();
    let (got, _) = decrypt(&p, &message, Some(&context)).await.unwrap();
    assert!(got == plaintext);

    let mut streamed = Vec::new();
    let options = EncryptOptions::default();
    let info = encrypt_stream(
        &p,
        "test-key",
        &context,
        &plaintext[..],
        &mut streamed,
        &options,
        None,
    )
    .await
    .unwrap();
    assert_eq!(info.plaintext_len, plaintext.len() as u64);
    assert_eq!(streamed.len(), message.len());
    let mut out = Vec::new();
    decrypt_stream(&p, &streamed[..], &mut out, Some(&context), None)
        .await
        .unwrap();
    assert!(out == plaintext);
}

#[tokio::test]
async fn streams_round_trip_with_partial_reads_and_report_progress() {
    let p = MemoryProvider::new();
    let context = ctx(&[("k", "v")]);
    for len in [0usize, 1, 63, 64, 65, 200, 640] {
        let plaintext = data(len, 3);
        let mut message = Vec::new();
        let mut seen = Vec::new();
        let mut report = |n: u64| seen.push(n);
        let reader = Chunked {
            data: &plaintext,
            chunk: 7,
        };
        let info = encrypt_stream(
            &p,
            "test-key",
            &context,
            reader,
            &mut message,
            &small_frames(),
            Some(&mut report),
        )
        .await
        .unwrap();
        assert_eq!(info.plaintext_len, len as u64);
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(seen.last(), Some(&(len as u64)));
        assert_eq!(seen.len(), len / 64 + 1, "one report per frame");

        // Streamed messages are ordinary messages, and the other way round.
        let (got, _) = decrypt(&p, &message, Some(&context)).await.unwrap();
        assert_eq!(got, plaintext);
        let message = encrypt_with(&p, "test-key", &plaintext, &context, &small_frames())
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let mut report = |n: u64| seen.push(n);
        let reader = Chunked {
            data: &message,
            chunk: 5,
        };
        let info = decrypt_stream(&p, reader, &mut out, Some(&context), Some(&mut report))
            .await
            .unwrap();
        assert_eq!(out, plaintext);
        assert_eq!(info.plaintext_len, len as u64);
        assert_eq!(seen.last(), Some(&(len as u64)));
    }
}

#[tokio::test]
async fn header_layout_matches_the_documentation() {
    let p = MemoryProvider::new();
    let context = ctx(&[("zeta", "last"), ("alpha", "first")]);
    let plaintext = data(100, 9);
    let message = encrypt_with(&p, "alias/test", &plaintext, &context, &small_frames())
        .await
        .unwrap();
    let (_, info) = decrypt(&p, &message, None).await.unwrap();
    assert_eq!(&message[0..4], b"KRFE");
    assert_eq!(message[4], 1);
    assert_eq!(&message[5..7], &[0, 1]);
    assert_eq!(&message[7..39], &info.message_id);
    let c = u16::from_be_bytes([message[39], message[40]]) as usize;
    let mut expected = Vec::new();
    for s in ["alpha", "first", "zeta", "last"] {
        expected.extend_from_slice(&(s.len() as u16).to_be_bytes());
        expected.extend_from_slice(s.as_bytes());
    }
    assert_eq!(
        &message[41..41 + c],
        &expected[..],
        "sorted, length-prefixed"
    );
    let e = u16::from_be_bytes([message[41 + c], message[42 + c]]) as usize;
    assert_eq!(&message[43 + c..43 + c + e], &info.encrypted_data_key[..]);
    let k = u16::from_be_bytes([message[43 + c + e], message[44 + c + e]]) as usize;
    assert_eq!(&message[45 + c + e..45 + c + e + k], ARN.as_bytes());
    let f = &message[45 + c + e + k..49 + c + e + k];
    assert_eq!(f, &64u32.to_be_bytes());
    let body = 49 + c + e + k + TAG_LEN;
    assert_eq!(body, header_len(&info));
    // 100 bytes in 64-byte frames: one regular frame, then a final one of 36 bytes.
    assert_eq!(message[body], FRAME_REGULAR);
    let fin = body + 1 + 64 + TAG_LEN;
    assert_eq!(message[fin], FRAME_FINAL);
    assert_eq!(&message[fin + 1..fin + 5], &36u32.to_be_bytes());
    assert_eq!(message.len(), fin + 5 + 36 + TAG_LEN);
}

// ---------------------------------------------------------------------------------
// Tampering

#[tokio::test]
async fn every_flipped_bit_pattern_in_every_byte_is_detected() {
    let p = MemoryProvider::new();
    let (message, _, info) = small_message(&p, 150).await;
    assert!(
        message.len() > header_len(&info) + 3 * 64,
        "header and 3 frames"
    );
    for i in 0..message.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = message.clone();
            bad[i] ^= mask;
            let result = decrypt(&p, &bad, None).await;
            assert!(result.is_err(), "flip {mask:#x} at byte {i} went unnoticed");
        }
    }
}

#[tokio::test]
async fn header_changes_are_caught_before_any_frame() {
    let p = MemoryProvider::new();
    let (message, _, info) = small_message(&p, 150).await;
    // The message id and frame length are only protected by the header tag.
    for i in (7..39).chain(header_len(&info) - TAG_LEN - 4..header_len(&info)) {
        let mut bad = message.clone();
        bad[i] ^= 0x01;
        let err = decrypt(&p, &bad, None).await.unwrap_err();
        assert!(
            matches!(
                err,
                EnvelopeError::Tampered { frame: None } | EnvelopeError::Malformed(_)
            ),
            "byte {i}: {err}"
        );
    }
    // The context is also bound by Keyraft: a changed value fails there.
    let at = message.windows(4).position(|w| w == b"test").unwrap();
    let mut bad = message.clone();
    bad[at] = b'b';
    let err = decrypt(&p, &bad, None).await.unwrap_err();
    assert!(matches!(err, EnvelopeError::Kms(_)), "{err}");
}

#[tokio::test]
async fn truncation_anywhere_is_detected() {
    let p = MemoryProvider::new();
    for len in [0usize, 64, 150] {
        let (message, _, info) = small_message(&p, len).await;
        for cut in 0..message.len() {
            assert!(
                decrypt(&p, &message[..cut], None).await.is_err(),
                "len {len}: prefix of {cut} bytes accepted"
            );
        }
        // At a frame boundary it is named as such.
        let starts = frame_starts(&message, &info);
        for &cut in &starts[..starts.len() - 1] {
            let err = decrypt(&p, &message[..cut], None).await.unwrap_err();
            assert!(matches!(err, EnvelopeError::Truncated), "cut {cut}: {err}");
        }
    }
}

#[tokio::test]
async fn reordered_dropped_or_repeated_frames_are_detected() {
    let p = MemoryProvider::new();
    let (message, _, info) = small_message(&p, 64 * 4 + 10).await;
    let s = frame_starts(&message, &info);
    assert_eq!(s.len(), 6, "four regular frames and a final one");
    let frame = |i: usize| &message[s[i]..s[i + 1]];
    let rebuild = |order: &[usize]| {
        let mut m = message[..s[0]].to_vec();
        for &i in order {
            m.extend_from_slice(frame(i));
        }
        m
    };
    let cases: [(&[usize], u32); 4] = [
        (&[1, 0, 2, 3, 4], 1),    // swapped
        (&[0, 2, 1, 3, 4], 2),    // swapped
        (&[0, 2, 3, 4], 2),       // dropped
        (&[0, 0, 1, 2, 3, 4], 2), // repeated
    ];
    for (order, frame) in cases {
        let err = decrypt(&p, &rebuild(order), None).await.unwrap_err();
        assert!(
            matches!(err, EnvelopeError::Tampered { frame: Some(f) } if f == frame),
            "{order:?}: {err}"
        );
    }
    // Moving the final frame forward fails at once too.
    let err = decrypt(&p, &rebuild(&[0, 4]), None).await.unwrap_err();
    assert!(
        matches!(err, EnvelopeError::Tampered { frame: Some(2) }),
        "{err}"
    );
    assert_eq!(
        decrypt(&p, &rebuild(&[0, 1, 2, 3, 4]), None)
            .await
            .unwrap()
            .0
            .len(),
        266
    );
}

#[tokio::test]
async fn frames_do_not_move_between_messages_even_with_the_same_data_key() {
    let p = CachingProvider::new(MemoryProvider::new(), CacheLimits::default());
    let context = ctx(&[]);
    let a = encrypt_with(&p, "test-key", &data(150, 1), &context, &small_frames())
        .await
        .unwrap();
    let b = encrypt_with(&p, "test-key", &data(150, 2), &context, &small_frames())
        .await
        .unwrap();
    assert_eq!(p.inner().generated(), 1, "one cached data key for both");
    let (_, info) = decrypt(&p, &a, None).await.unwrap();
    let sa = frame_starts(&a, &info);
    let (_, info_b) = decrypt(&p, &b, None).await.unwrap();
    assert_eq!(info.encrypted_data_key, info_b.encrypted_data_key);
    let sb = frame_starts(&b, &info_b);
    let mut mixed = a[..sa[1]].to_vec();
    mixed.extend_from_slice(&b[sb[1]..sb[2]]);
    mixed.extend_from_slice(&a[sa[2]..]);
    let err = decrypt(&p, &mixed, None).await.unwrap_err();
    assert!(
        matches!(err, EnvelopeError::Tampered { frame: Some(2) }),
        "{err}"
    );
}

#[tokio::test]
async fn bytes_after_the_final_frame_are_refused() {
    let p = MemoryProvider::new();
    let (message, _, info) = small_message(&p, 150).await;
    let s = frame_starts(&message, &info);
    let last = &message[s[s.len() - 2]..];
    for extra in [&[0u8][..], last, &message[..]] {
        let mut bad = message.clone();
        bad.extend_from_slice(extra);
        let err = decrypt(&p, &bad, None).await.unwrap_err();
        assert!(matches!(err, EnvelopeError::TrailingData), "{err}");
        let mut out = Vec::new();
        let err = decrypt_stream(&p, &bad[..], &mut out, None, None)
            .await
            .unwrap_err();
        assert!(matches!(err, EnvelopeError::TrailingData), "{err}");
    }
}

#[tokio::test]
async fn streaming_decryption_writes_only_verified_frames() {
    let p = MemoryProvider::new();
    let (message, plaintext, info) = small_message(&p, 64 * 4 + 10).await;
    let s = frame_starts(&message, &info);

    // A byte of frame 3's ciphertext flipped: frames 1 and 2 out, nothing of frame 3.
    let mut bad = message.clone();
    bad[s[2] + 10] ^= 0x01;
    let mut out = Vec::new();
    let err = decrypt_stream(&p, &bad[..], &mut out, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnvelopeError::Tampered { frame: Some(3) }),
        "{err}"
    );
    assert_eq!(out, plaintext[..128]);

    // Cut inside frame 4: frames 1 to 3 out, then Truncated.
    let mut out = Vec::new();
    let err = decrypt_stream(&p, &message[..s[3] + 20], &mut out, None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, EnvelopeError::Truncated), "{err}");
    assert_eq!(out, plaintext[..192]);

    // A changed header: nothing at all.
    let mut bad = message.clone();
    bad[20] ^= 0x01;
    let mut out = Vec::new();
    let err = decrypt_stream(&p, &bad[..], &mut out, None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnvelopeError::Tampered { frame: None }),
        "{err}"
    );
    assert!(out.is_empty());
}

#[tokio::test]
async fn foreign_and_unsupported_inputs_are_named() {
    let p = MemoryProvider::new();
    let (message, _, _) = small_message(&p, 10).await;
    let with = |i: usize, b: u8| {
        let mut m = message.clone();
        m[i] = b;
        m
    };
    let err = decrypt(&p, &with(4, 2), None).await.unwrap_err();
    assert!(matches!(err, EnvelopeError::UnsupportedVersion(2)), "{err}");
    let err = decrypt(&p, &with(6, 2), None).await.unwrap_err();
    assert!(
        matches!(err, EnvelopeError::UnsupportedAlgorithm(2)),
        "{err}"
    );
    let err = decrypt(&p, &with(0, b'X'), None).await.unwrap_err();
    assert!(matches!(err, EnvelopeError::Malformed(_)), "{err}");
    let err = decrypt(&p, b"PK\x03\x04 a zip file", None)
        .await
        .unwrap_err();
    assert!(matches!(err, EnvelopeError::Malformed(_)), "{err}");
    for short in [&b""[..], b"K", b"KRF"] {
        let err = decrypt(&p, short, None).await.unwrap_err();
        assert!(matches!(err, EnvelopeError::Truncated), "{err}");
    }
    assert_eq!(p.decrypted(), 1, "none of these reached the provider");
}

#[tokio::test]
async fn a_non_canonical_context_encoding_is_refused() {
    let p = MemoryProvider::new();
    let (message, _, _) = small_message(&p, 10).await;
    // The context is "purpose=test, tenant=42"; swap the two pairs in place.
    let c = u16::from_be_bytes([message[39], message[40]]) as usize;
    let first = 2 + 7 + 2 + 4;
    let mut swapped = message[..41].to_vec();
    swapped.extend_from_slice(&message[41 + first..41 + c]);
    swapped.extend_from_slice(&message[41..41 + first]);
    swapped.extend_from_slice(&message[41 + c..]);
    assert_eq!(swapped.len(), message.len());
    let err = decrypt(&p, &swapped, None).await.unwrap_err();
    assert!(matches!(err, EnvelopeError::Malformed(_)), "{err}");
}

// ---------------------------------------------------------------------------------
// Encryption context, keys and inputs

#[tokio::test]
async fn the_expected_context_must_be_contained_in_the_message() {
    let p = MemoryProvider::new();
    let context = ctx(&[("a", "1"), ("b", "2")]);
    let message = encrypt(&p, "test-key", b"secret", &context).await.unwrap();
    for good in [ctx(&[]), ctx(&[("a", "1")]), ctx(&[("b", "2"), ("a", "1")])] {
        let (plaintext, info) = decrypt(&p, &message, Some(&good)).await.unwrap();
        assert_eq!(plaintext, b"secret");
        assert_eq!(info.context, context);
    }
    let calls = p.decrypted();
    for (bad, key) in [
        (ctx(&[("a", "2")]), "a"),
        (ctx(&[("c", "3")]), "c"),
        (ctx(&[("a", "1"), ("b", "")]), "b"),
        (ctx(&[("a", "1"), ("b", "2"), ("c", "3")]), "c"),
    ] {
        let err = decrypt(&p, &message, Some(&bad)).await.unwrap_err();
        assert!(
            matches!(&err, EnvelopeError::ContextMismatch { key: k } if k == key),
            "{err}"
        );
        let mut out = Vec::new();
        let err = decrypt_stream(&p, &message[..], &mut out, Some(&bad), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, EnvelopeError::ContextMismatch { .. }),
            "{err}"
        );
        assert!(out.is_empty());
    }
    assert_eq!(p.decrypted(), calls, "refused before asking Keyraft");
}

#[tokio::test]
async fn a_header_key_id_that_is_not_the_decrypting_key_is_refused() {
    let p = LyingProvider(MemoryProvider::new());
    let message = encrypt(&p, "test-key", b"x", &ctx(&[])).await.unwrap();
    let err = decrypt(&p, &message, None).await.unwrap_err();
    assert!(matches!(err, EnvelopeError::KeyIdMismatch { .. }), "{err}");
}

#[tokio::test]
async fn bad_arguments_are_refused_before_keyraft_is_asked() {
    let p = MemoryProvider::new();
    for len in [0, MIN_FRAME_LEN - 1, MAX_FRAME_LEN + 1] {
        let err = EncryptOptions::default().with_frame_len(len).unwrap_err();
        assert!(matches!(err, EnvelopeError::InvalidInput(_)), "{err}");
    }
    let err = encrypt(&p, "", b"x", &ctx(&[])).await.unwrap_err();
    assert!(matches!(err, EnvelopeError::InvalidInput(_)), "{err}");
    let huge = "v".repeat(70_000);
    let err = encrypt(&p, "test-key", b"x", &ctx(&[("k", &huge)]))
        .await
        .unwrap_err();
    assert!(matches!(err, EnvelopeError::InvalidInput(_)), "{err}");
    let many: EncryptionContext = (0..20_000)
        .map(|i| (format!("{i:05}"), String::new()))
        .collect();
    let err = encrypt(&p, "test-key", b"x", &many).await.unwrap_err();
    assert!(matches!(err, EnvelopeError::InvalidInput(_)), "{err}");
    assert_eq!(p.generated(), 0);

    let err = encrypt(&p, "no-such-key", b"x", &ctx(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EnvelopeError::Kms(e) if e.code() == Some(ErrorCode::NotFound)),
        "{err}"
    );
}

#[test]
fn errors_read_well() {
    let cases = [
        (EnvelopeError::Truncated, "truncated"),
        (EnvelopeError::TrailingData, "after its final frame"),
        (
            EnvelopeError::Tampered { frame: None },
            "header failed authentication",
        ),
        (EnvelopeError::Tampered { frame: Some(7) }, "frame 7"),
        (EnvelopeError::UnsupportedVersion(9), "version 9"),
        (EnvelopeError::UnsupportedAlgorithm(0x0102), "0x0102"),
        (
            EnvelopeError::ContextMismatch {
                key: "tenant".into(),
            },
            "`tenant` is missing",
        ),
    ];
    for (err, text) in cases {
        assert!(err.to_string().contains(text), "{err}");
    }
}

// ---------------------------------------------------------------------------------
// The cache

fn limits(max_age: u64, max_messages: u64, max_bytes: u64, capacity: usize) -> CacheLimits {
    CacheLimits {
        max_age: Duration::from_secs(max_age),
        max_messages,
        max_bytes,
        capacity,
    }
}

/// The encrypted data key of `message`.
async fn edk(message: &[u8]) -> Vec<u8> {
    let mut reader = message;
    read_header(&mut reader).await.unwrap().0.encrypted_key
}

#[tokio::test]
async fn without_a_cache_every_message_gets_its_own_key() {
    let p = MemoryProvider::new();
    let a = encrypt(&p, "test-key", b"a", &ctx(&[])).await.unwrap();
    let b = encrypt(&p, "test-key", b"b", &ctx(&[])).await.unwrap();
    assert_ne!(edk(&a).await, edk(&b).await);
    assert_eq!(p.generated(), 2);
}

#[tokio::test]
async fn a_cached_key_serves_at_most_max_messages() {
    let p = CachingProvider::new(MemoryProvider::new(), limits(60, 3, 1 << 20, 10));
    let mut keys = Vec::new();
    for _ in 0..7 {
        let m = encrypt(&p, "test-key", b"hello", &ctx(&[])).await.unwrap();
        keys.push(edk(&m).await);
    }
    assert_eq!(p.inner().generated(), 3);
    assert!(keys[0] == keys[1] && keys[1] == keys[2]);
    assert!(keys[3] != keys[2] && keys[3] == keys[4] && keys[4] == keys[5]);
    assert!(keys[6] != keys[5]);
}

#[tokio::test]
async fn a_cached_key_expires_at_max_age() {
    let clock = TestClock::new();
    let p = CachingProvider::with_clock(
        MemoryProvider::new(),
        limits(10, 100, 1 << 20, 10),
        clock.clone(),
    );
    let first = edk(&encrypt(&p, "test-key", b"x", &ctx(&[])).await.unwrap()).await;
    clock.advance(Duration::from_millis(9_999));
    let second = edk(&encrypt(&p, "test-key", b"x", &ctx(&[])).await.unwrap()).await;
    assert_eq!(first, second);
    clock.advance(Duration::from_millis(1));
    let third = edk(&encrypt(&p, "test-key", b"x", &ctx(&[])).await.unwrap()).await;
    assert_ne!(second, third);
    assert_eq!(p.inner().generated(), 2);

    // The same on the decrypt side.
    let message = encrypt(&MemoryProvider::new(), "test-key", b"y", &ctx(&[]))
        .await
        .unwrap();
    let before = p.inner().decrypted();
    decrypt(&p, &message, None).await.unwrap();
    clock.advance(Duration::from_millis(9_999));
    decrypt(&p, &message, None).await.unwrap();
    assert_eq!(p.inner().decrypted(), before + 1);
    clock.advance(Duration::from_millis(1));
    decrypt(&p, &message, None).await.unwrap();
    assert_eq!(p.inner().decrypted(), before + 2);
}

#[tokio::test]
async fn a_cached_key_protects_at_most_max_bytes() {
    let p = CachingProvider::new(MemoryProvider::new(), limits(60, 100, 100, 10));
    let c = ctx(&[]);
    let k1 = edk(&encrypt(&p, "test-key", &[0; 40], &c).await.unwrap()).await;
    let k2 = edk(&encrypt(&p, "test-key", &[0; 40], &c).await.unwrap()).await;
    assert_eq!(k1, k2, "80 bytes so far");
    let k3 = edk(&encrypt(&p, "test-key", &[0; 40], &c).await.unwrap()).await;
    assert_ne!(k2, k3, "120 would exceed 100");
    // Too large to ever fit: a fresh key, not cached, and the cached one is untouched.
    let big = edk(&encrypt(&p, "test-key", &[0; 101], &c).await.unwrap()).await;
    assert!(big != k3 && big != k1);
    let k4 = edk(&encrypt(&p, "test-key", &[0; 60], &c).await.unwrap()).await;
    assert_eq!(k3, k4, "40 + 60 = 100 fits exactly");
    let k5 = edk(&encrypt(&p, "test-key", &[], &c).await.unwrap()).await;
    assert_ne!(k4, k5, "a key that reached its limit is gone");
    assert_eq!(p.inner().generated(), 4);
}

#[tokio::test]
async fn the_cache_evicts_the_least_recently_used_key_at_capacity() {
    let p = CachingProvider::new(MemoryProvider::new(), limits(60, 100, 1 << 20, 2));
    let (a, b, c) = (ctx(&[("t", "a")]), ctx(&[("t", "b")]), ctx(&[("t", "c")]));
    for context in [&a, &b, &a, &c, &a] {
        encrypt(&p, "test-key", b"x", context).await.unwrap();
    }
    assert_eq!(p.inner().generated(), 3, "a, b, c; a twice from the cache");
    assert_eq!(p.len(), 2);
    encrypt(&p, "test-key", b"x", &b).await.unwrap();
    assert_eq!(p.inner().generated(), 4, "b was evicted for c");
    encrypt(&p, "test-key", b"x", &a).await.unwrap();
    assert_eq!(p.inner().generated(), 4, "a was used recently, so c went");
    p.clear();
    assert!(p.is_empty());
}

#[tokio::test]
async fn keys_are_cached_per_key_id_and_context() {
    let p = CachingProvider::new(MemoryProvider::new(), CacheLimits::default());
    let one = edk(&encrypt(&p, "test-key", b"x", &ctx(&[("t", "1")]))
        .await
        .unwrap())
    .await;
    let two = edk(&encrypt(&p, "test-key", b"x", &ctx(&[("t", "2")]))
        .await
        .unwrap())
    .await;
    let alias = edk(&encrypt(&p, "alias/test", b"x", &ctx(&[("t", "1")]))
        .await
        .unwrap())
    .await;
    assert!(one != two && one != alias && two != alias);
    let again = edk(&encrypt(&p, "test-key", b"x", &ctx(&[("t", "1")]))
        .await
        .unwrap())
    .await;
    assert_eq!(one, again);
}

#[tokio::test]
async fn decrypted_keys_are_cached_within_limits() {
    let p = CachingProvider::new(MemoryProvider::new(), limits(60, 2, 1 << 20, 10));
    let message = encrypt(
        &MemoryProvider::new(),
        "test-key",
        b"m",
        &ctx(&[("a", "b")]),
    )
    .await
    .unwrap();
    for _ in 0..5 {
        let (plaintext, _) = decrypt(&p, &message, Some(&ctx(&[("a", "b")])))
            .await
            .unwrap();
        assert_eq!(plaintext, b"m");
    }
    assert_eq!(p.inner().decrypted(), 3, "miss, hit, miss, hit, miss");

    // The bytes counted on this side are the message's.
    let p = CachingProvider::new(
        MemoryProvider::new(),
        limits(60, 100, message.len() as u64 * 2, 10),
    );
    for _ in 0..3 {
        decrypt(&p, &message, None).await.unwrap();
    }
    assert_eq!(p.inner().decrypted(), 2);
}

#[tokio::test]
async fn streams_and_disabled_limits_bypass_the_cache() {
    let p = CachingProvider::new(MemoryProvider::new(), CacheLimits::default());
    let c = ctx(&[]);
    let mut messages = Vec::new();
    for _ in 0..2 {
        let mut m = Vec::new();
        encrypt_stream(
            &p,
            "test-key",
            &c,
            &b"abc"[..],
            &mut m,
            &EncryptOptions::default(),
            None,
        )
        .await
        .unwrap();
        messages.push(m);
    }
    assert_eq!(p.inner().generated(), 2);
    for m in &messages {
        decrypt_stream(&p, &m[..], Vec::new(), None, None)
            .await
            .unwrap();
        decrypt_stream(&p, &m[..], Vec::new(), None, None)
            .await
            .unwrap();
    }
    assert_eq!(p.inner().decrypted(), 4);
    assert!(p.is_empty());

    for off in [
        limits(60, 100, 100, 0),
        limits(60, 0, 100, 10),
        limits(0, 100, 100, 10),
    ] {
        let p = CachingProvider::new(MemoryProvider::new(), off);
        for _ in 0..3 {
            let m = encrypt(&p, "test-key", b"x", &c).await.unwrap();
            decrypt(&p, &m, None).await.unwrap();
        }
        assert_eq!(p.inner().generated(), 3, "{off:?}");
        assert_eq!(p.inner().decrypted(), 3, "{off:?}");
        assert!(p.is_empty());
    }
}

/// A random workload, checked from the outside: no data key is ever used for more
/// messages or bytes, or longer, than the limits allow.
#[tokio::test]
async fn the_cache_never_serves_a_key_beyond_its_limits() {
    #[derive(Default)]
    struct Use {
        first: Option<Instant>,
        messages: u64,
        bytes: u64,
    }
    let clock = TestClock::new();
    let max = limits(10, 5, 1000, 2);
    let p = CachingProvider::with_clock(MemoryProvider::new(), max, clock.clone());
    let contexts = [ctx(&[("t", "1")]), ctx(&[("t", "2")]), ctx(&[("t", "3")])];
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    let mut uses: HashMap<Vec<u8>, Use> = HashMap::new();
    let mut decrypt_uses: BTreeMap<Vec<u8>, Use> = BTreeMap::new();
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let generated_before = p.inner().generated();
    let rounds = 1500;
    let (mut served, mut served_decrypt) = (0, 0);
    for _ in 0..rounds {
        clock.advance(Duration::from_millis(rng.gen_range(0..1500)));
        let now = clock.now();
        let context = &contexts[rng.gen_range(0..contexts.len())];
        let len = rng.gen_range(0..300);
        let generated = p.inner().generated();
        let message = encrypt(&p, "test-key", &vec![1u8; len], context)
            .await
            .unwrap();
        let key = edk(&message).await;
        let u = uses.entry(key).or_default();
        if p.inner().generated() > generated {
            assert!(u.first.is_none(), "a fresh key is new");
            *u = Use {
                first: Some(now),
                messages: 1,
                bytes: len as u64,
            };
        } else {
            u.messages += 1;
            u.bytes += len as u64;
            assert!(u.messages <= max.max_messages);
            assert!(u.bytes <= max.max_bytes);
            assert!(now - u.first.unwrap() < max.max_age);
            served += 1;
        }
        sent.push(message);

        // Decrypt one of the last few messages, too (recent ones share data keys).
        let message = &sent[rng.gen_range(sent.len().saturating_sub(4)..sent.len())];
        let decrypted = p.inner().decrypted();
        decrypt(&p, message, None).await.unwrap();
        let u = decrypt_uses.entry(edk(message).await).or_default();
        if p.inner().decrypted() > decrypted {
            *u = Use {
                first: Some(now),
                messages: 1,
                bytes: message.len() as u64,
            };
        } else {
            u.messages += 1;
            u.bytes += message.len() as u64;
            assert!(u.messages <= max.max_messages);
            assert!(u.bytes <= max.max_bytes);
            assert!(now - u.first.unwrap() < max.max_age);
            served_decrypt += 1;
        }
        assert!(p.len() <= 2 * max.capacity);
    }
    let generated = p.inner().generated() - generated_before;
    assert!(served > rounds / 4, "the cache was used ({served} hits)");
    assert!(
        served_decrypt > rounds / 10,
        "on both sides ({served_decrypt} hits)"
    );
    assert!(
        generated > rounds / 5,
        "and its limits bit ({generated} keys)"
    );
}

/// The futures are `Send`, so callers can `tokio::spawn` them (checked at compile time).
#[test]
fn futures_can_be_spawned() {
    fn is_send<T: Send>(_: &T) {}
    #[allow(dead_code)]
    async fn all(client: crate::Client, file: tokio::fs::File) {
        let cached = CachingProvider::new(client, CacheLimits::default());
        let c = EncryptionContext::new();
        let options = EncryptOptions::default();
        is_send(&encrypt(&cached, "k", b"x", &c));
        is_send(&decrypt(&cached, b"x", Some(&c)));
        let mut report = |_: u64| {};
        let (r, w) = tokio::io::split(file);
        is_send(&encrypt_stream(
            &cached,
            "k",
            &c,
            r,
            w,
            &options,
            Some(&mut report),
        ));
        is_send(&decrypt_stream(
            cached.inner(),
            &b""[..],
            Vec::new(),
            None,
            None,
        ));
    }
}
