//! Request signing: HMAC-SHA256 over the method, a timestamp, a nonce and the body digest.
//!
//! Every request to a Keyraft node carries four metadata entries:
//!
//! | entry | content |
//! |---|---|
//! | `x-keyraft-access-key-id` | who signs (an access key id, or `node:<id>` between nodes) |
//! | `x-keyraft-timestamp` | milliseconds since the Unix epoch when signed |
//! | `x-keyraft-nonce` | 16+ random characters, unique per request |
//! | `x-keyraft-signature` | hex HMAC-SHA256(secret, string to sign) |
//!
//! The string to sign is
//! `KEYRAFT-HMAC-SHA256\n<grpc method path>\n<timestamp>\n<nonce>\n<hex sha256(body)>`,
//! where the body is the protobuf encoding of the request message (maps are BTreeMaps,
//! so re-encoding a decoded message reproduces the bytes the client signed).
//!
//! A server refuses a signature older or newer than [`MAX_SKEW_MS`] (stale) and one whose
//! nonce it has already seen within that window (replayed). Between nodes the secret is
//! the cluster secret, so a stranger cannot append to the Raft log.

use hmac::{Hmac, Mac};
use keyraft_types::{ErrorCode, KmsError};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

/// Access key id metadata entry.
pub const ACCESS_KEY_HEADER: &str = "x-keyraft-access-key-id";
/// Timestamp metadata entry.
pub const TIMESTAMP_HEADER: &str = "x-keyraft-timestamp";
/// Nonce metadata entry.
pub const NONCE_HEADER: &str = "x-keyraft-nonce";
/// Signature metadata entry.
pub const SIGNATURE_HEADER: &str = "x-keyraft-signature";
/// How far a signature's timestamp may be from the server's clock.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// The signature fields read from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// Who signed.
    pub access_key_id: String,
    /// When, in ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The per-request nonce.
    pub nonce: String,
    /// Hex HMAC.
    pub signature: String,
}

/// SHA-256 of a request body.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The protobuf encoding's digest of a message.
pub fn message_digest<M: prost::Message>(msg: &M) -> [u8; 32] {
    body_digest(&msg.encode_to_vec())
}

fn string_to_sign(method: &str, timestamp_ms: u64, nonce: &str, digest: &[u8; 32]) -> String {
    format!(
        "KEYRAFT-HMAC-SHA256\n{method}\n{timestamp_ms}\n{nonce}\n{}",
        hex::encode(digest)
    )
}

/// Computes the hex signature.
pub fn sign(
    secret: &[u8],
    method: &str,
    timestamp_ms: u64,
    nonce: &str,
    digest: &[u8; 32],
) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(string_to_sign(method, timestamp_ms, nonce, digest).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a signature in constant time.
pub fn verify(secret: &[u8], method: &str, headers: &SignedHeaders, digest: &[u8; 32]) -> bool {
    let Ok(expected) = hex::decode(&headers.signature) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(string_to_sign(method, headers.timestamp_ms, &headers.nonce, digest).as_bytes());
    mac.verify_slice(&expected).is_ok()
}

/// The MAC of message `seq` (from 1) of the signed stream `stream_id`, over `body`.
///
/// A stream is signed once, when it opens, with its id as the body; each message then
/// carries this MAC. The id and the position bind a message to its stream and its place
/// in it, so a message cannot be replayed into another stream, dropped or reordered
/// without the receiver noticing.
pub fn stream_mac(secret: &[u8], stream_id: &str, seq: u64, body: &[u8]) -> Vec<u8> {
    stream_hmac(secret, stream_id, seq, body)
        .map_or_else(Vec::new, |mac| mac.finalize().into_bytes().to_vec())
}

/// Checks a [`stream_mac`] in constant time.
pub fn verify_stream_mac(
    secret: &[u8],
    stream_id: &str,
    seq: u64,
    body: &[u8],
    mac: &[u8],
) -> bool {
    stream_hmac(secret, stream_id, seq, body).is_some_and(|m| m.verify_slice(mac).is_ok())
}

fn stream_hmac(secret: &[u8], stream_id: &str, seq: u64, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(b"KEYRAFT-STREAM-HMAC-SHA256\n");
    mac.update(&(stream_id.len() as u64).to_be_bytes());
    mac.update(stream_id.as_bytes());
    mac.update(&seq.to_be_bytes());
    mac.update(body);
    Some(mac)
}

/// Writes the signature entries into a request's metadata.
pub fn attach(
    metadata: &mut MetadataMap,
    access_key_id: &str,
    secret: &[u8],
    method: &str,
    timestamp_ms: u64,
    nonce: &str,
    digest: &[u8; 32],
) -> Result<(), KmsError> {
    let signature = sign(secret, method, timestamp_ms, nonce, digest);
    let bad = |_| KmsError::validation("access key id and nonce must be printable ASCII");
    metadata.insert(ACCESS_KEY_HEADER, access_key_id.parse().map_err(bad)?);
    metadata.insert(
        TIMESTAMP_HEADER,
        timestamp_ms.to_string().parse().map_err(bad)?,
    );
    metadata.insert(NONCE_HEADER, nonce.parse().map_err(bad)?);
    metadata.insert(SIGNATURE_HEADER, signature.parse().map_err(bad)?);
    Ok(())
}

/// Reads the signature entries, or says which is missing.
pub fn read(metadata: &MetadataMap) -> Result<SignedHeaders, KmsError> {
    let get = |name: &str| -> Result<String, KmsError> {
        metadata
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                KmsError::new(
                    ErrorCode::InvalidSignature,
                    format!("the request is not signed: missing {name}"),
                )
            })
    };
    let access_key_id = get(ACCESS_KEY_HEADER)?;
    let timestamp_ms = get(TIMESTAMP_HEADER)?.parse().map_err(|_| {
        KmsError::new(
            ErrorCode::InvalidSignature,
            "the request timestamp is not a number",
        )
    })?;
    let nonce = get(NONCE_HEADER)?;
    if nonce.len() < 16 || nonce.len() > 128 {
        return Err(KmsError::new(
            ErrorCode::InvalidSignature,
            "the request nonce must be 16 to 128 characters",
        ));
    }
    Ok(SignedHeaders {
        access_key_id,
        timestamp_ms,
        nonce,
        signature: get(SIGNATURE_HEADER)?,
    })
}

/// Whether a timestamp is within [`MAX_SKEW_MS`] of `now_ms`.
pub fn is_fresh(timestamp_ms: u64, now_ms: u64) -> bool {
    timestamp_ms.abs_diff(now_ms) <= MAX_SKEW_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let d = body_digest(b"body");
        let mut md = MetadataMap::new();
        attach(
            &mut md,
            "AKID",
            b"secret",
            "/m",
            1000,
            "0123456789abcdef",
            &d,
        )
        .unwrap();
        let h = read(&md).unwrap();
        assert!(verify(b"secret", "/m", &h, &d));
        assert!(!verify(b"other", "/m", &h, &d));
        assert!(!verify(b"secret", "/n", &h, &d));
        assert!(!verify(b"secret", "/m", &h, &body_digest(b"body2")));
        let mut h2 = h.clone();
        h2.timestamp_ms += 1;
        assert!(!verify(b"secret", "/m", &h2, &d));
    }

    #[test]
    fn a_stream_message_verifies_only_in_its_stream_and_place() {
        let mac = stream_mac(b"secret", "s1", 3, b"body");
        assert!(verify_stream_mac(b"secret", "s1", 3, b"body", &mac));
        assert!(!verify_stream_mac(b"other", "s1", 3, b"body", &mac));
        assert!(!verify_stream_mac(b"secret", "s2", 3, b"body", &mac));
        assert!(!verify_stream_mac(b"secret", "s1", 4, b"body", &mac));
        assert!(!verify_stream_mac(b"secret", "s1", 3, b"body2", &mac));
        assert!(!verify_stream_mac(b"secret", "s1", 3, b"body", &[]));
        // The id's length is part of what is signed: no shifting bytes between the two.
        let shifted = stream_mac(b"secret", "s", 3, b"1body");
        assert_ne!(shifted, stream_mac(b"secret", "s1", 3, b"body"));
    }

    #[test]
    fn missing_entries_are_typed_errors() {
        let err = read(&MetadataMap::new()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidSignature);
    }

    #[test]
    fn freshness_window() {
        assert!(is_fresh(1_000_000, 1_000_000 + MAX_SKEW_MS));
        assert!(!is_fresh(1_000_000, 1_000_001 + MAX_SKEW_MS));
    }
}
