//! The behaviour every [`Hsm`] backend must show.
//!
//! # Why a conformance suite
//!
//! The rest of Keyraft trusts the [`Hsm`] trait blindly: the server never looks inside
//! a blob beyond its header, never sees key material, and maps errors by variant. A
//! backend that, say, accepted a ciphertext under a slightly different encryption
//! context, or reported a tampered blob as an internal error, would silently weaken
//! the service or leak which check failed. Writing those expectations down once, as
//! executable checks, means a new backend (PKCS#11, a cloud HSM) is correct when it
//! passes the same suite as the soft HSM — not when its author believes it is.
//!
//! The suite is compiled into the library (not hidden under `cfg(test)`) so that a
//! backend living in another crate can run it from its own tests.
//!
//! # How to run it
//!
//! A backend's test builds fresh instances and calls [`run_all`]; each instance must
//! start without a domain key, and instances must not share one (the domain-key
//! transfer checks need independent HSMs). A failure panics with what went wrong. The
//! individual `check_*` functions can also be called on their own; all but
//! [`check_no_domain_key`] and [`check_transfer`] expect an HSM that already holds a
//! domain key.

use keyraft_types::{EncryptionContext, KeyId};

use crate::blob::{self, MAGIC, NONCE_LEN, SALT_LEN, TAG_LEN};
use crate::{CiphertextBlob, Hsm, HsmError, JoinPublicKey, WrappedKey};

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn is_invalid(r: Result<zeroize::Zeroizing<Vec<u8>>, HsmError>) -> bool {
    matches!(r, Err(HsmError::InvalidCiphertext))
}

/// Key pairs: signatures verify with the public half only for their digest; RSA
/// decrypts what the public half encrypted; the wrapped private half is bound to its key
/// id and version and holds no plaintext PKCS#8.
pub fn check_key_pairs(hsm: &dyn Hsm) {
    use crate::asymmetric;
    use keyraft_types::{EncryptionAlgorithm, KeySpec, SigningAlgorithm};
    for spec in [KeySpec::EccNistP256, KeySpec::Rsa2048] {
        let id = KeyId::generate();
        let (key, public) = hsm.generate_key_pair(&id, 1, spec).expect("key pair");
        if spec != KeySpec::EccNistP256 {
            // A plaintext PKCS#8 RSA key repeats the modulus, which ends the SPKI but for
            // the exponent: no 32 bytes of it may appear in the wrapped private half.
            let modulus_tail = &public[public.len() - 37..public.len() - 5];
            assert!(
                !key.0.windows(32).any(|w| w == modulus_tail),
                "the wrapped private half holds the modulus in plaintext"
            );
        }
        for &alg in spec.signing_algorithms() {
            let digest = asymmetric::digest(alg.hash(), b"message");
            let sig = hsm.sign(&key, &id, 1, spec, alg, &digest).expect("sign");
            assert!(asymmetric::verify(spec, &public, alg, &digest, &sig).expect("verify"));
            let other = asymmetric::digest(alg.hash(), b"messagf");
            assert!(!asymmetric::verify(spec, &public, alg, &other, &sig).expect("verify"));
        }
        let digest = asymmetric::digest(keyraft_types::Sha2::Sha256, b"m");
        let alg = spec.signing_algorithms()[0];
        assert!(matches!(
            hsm.sign(&key, &KeyId::generate(), 1, spec, alg, &digest),
            Err(HsmError::UnwrapFailed)
        ));
        assert!(matches!(
            hsm.sign(&key, &id, 2, spec, alg, &digest),
            Err(HsmError::UnwrapFailed)
        ));
        assert!(hsm
            .sign(
                &key,
                &id,
                1,
                spec,
                SigningAlgorithm::EcdsaSha256,
                &digest[..31]
            )
            .is_err());
    }
    let id = KeyId::generate();
    let (key, public) = hsm
        .generate_key_pair(&id, 1, KeySpec::Rsa2048)
        .expect("key pair");
    let alg = EncryptionAlgorithm::RsaesOaepSha256;
    let ct = asymmetric::encrypt(&public, alg, b"secret").expect("encrypt");
    let pt = hsm
        .decrypt_asymmetric(&key, &id, 1, KeySpec::Rsa2048, alg, &ct)
        .expect("decrypt");
    assert_eq!(&pt[..], b"secret");
    let mut bad = ct.clone();
    bad[10] ^= 1;
    assert!(matches!(
        hsm.decrypt_asymmetric(&key, &id, 1, KeySpec::Rsa2048, alg, &bad),
        Err(HsmError::InvalidCiphertext)
    ));
    assert!(hsm
        .generate_key_pair(&id, 1, KeySpec::SymmetricDefault)
        .is_err());
}

/// Decrypts raw blob bytes as the server does: parse, then decrypt.
fn open_bytes(
    hsm: &dyn Hsm,
    key: &WrappedKey,
    bytes: &[u8],
    context: &EncryptionContext,
) -> Result<zeroize::Zeroizing<Vec<u8>>, HsmError> {
    CiphertextBlob::parse(bytes).and_then(|blob| hsm.decrypt(key, &blob, context))
}

/// Runs every check. `make` returns a fresh HSM with no domain key each call.
pub fn run_all(make: &dyn Fn() -> Box<dyn Hsm>) {
    let hsm = make();
    check_no_domain_key(hsm.as_ref());
    check_generate_domain_key(hsm.as_ref());
    check_round_trips(hsm.as_ref());
    check_tampering(hsm.as_ref());
    check_contexts(hsm.as_ref());
    check_wrong_key(hsm.as_ref());
    check_material_binding(hsm.as_ref());
    check_data_keys(hsm.as_ref());
    check_secrets(hsm.as_ref());
    check_import(hsm.as_ref());
    check_mac(hsm.as_ref());
    check_key_pairs(hsm.as_ref());
    check_transfer(make);
}

/// Before a domain key exists, nothing that needs it works and the error says so.
pub fn check_no_domain_key(hsm: &dyn Hsm) {
    assert!(
        !hsm.has_domain_key(),
        "a fresh HSM must not hold a domain key"
    );
    let id = KeyId::generate();
    let no_key = |what: &str, r: Result<(), HsmError>| {
        assert!(
            matches!(r, Err(HsmError::NoDomainKey)),
            "{what} without a domain key: expected NoDomainKey, got {r:?}"
        );
    };
    no_key(
        "domain_key_fingerprint",
        hsm.domain_key_fingerprint().map(drop),
    );
    no_key(
        "generate_key_material",
        hsm.generate_key_material(&id, 1).map(drop),
    );
    no_key("wrap_secret", hsm.wrap_secret(b"s", b"p").map(drop));
    no_key(
        "unwrap_secret",
        hsm.unwrap_secret(&[0u8; 64], b"p").map(drop),
    );
    // Wrapped material from elsewhere cannot even be looked at.
    let foreign = WrappedKey(vec![0u8; 60]);
    no_key(
        "encrypt",
        hsm.encrypt(&foreign, &id, 1, b"pt", &ctx(&[])).map(drop),
    );
    let mut bytes = blob::header(&id, 1, &[0; SALT_LEN], &[0; NONCE_LEN]);
    bytes.extend_from_slice(&[0; TAG_LEN]);
    let parsed = CiphertextBlob::parse(&bytes).expect("parse a well-formed header");
    no_key(
        "decrypt",
        hsm.decrypt(&foreign, &parsed, &ctx(&[])).map(drop),
    );
    no_key(
        "generate_data_key",
        hsm.generate_data_key(&foreign, &id, 1, 32, &ctx(&[]))
            .map(drop),
    );
    let peer = hsm
        .join_public_key()
        .expect("join key without a domain key");
    no_key(
        "export_domain_key",
        hsm.export_domain_key(&peer, b"binding").map(drop),
    );
}

/// Generating the domain key works once; its fingerprint is 64 hex characters.
pub fn check_generate_domain_key(hsm: &dyn Hsm) {
    hsm.generate_domain_key().expect("generate domain key");
    assert!(hsm.has_domain_key());
    let fp = hsm.domain_key_fingerprint().expect("fingerprint");
    assert_eq!(fp.len(), 64, "fingerprint {fp:?} is not 64 characters");
    assert!(
        fp.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "fingerprint {fp:?} is not lowercase hex"
    );
    assert!(
        hsm.generate_domain_key().is_err(),
        "a second domain key replaced the first"
    );
    assert_eq!(
        hsm.domain_key_fingerprint().expect("fingerprint"),
        fp,
        "the domain key changed"
    );
}

/// Encrypt/decrypt round trips, and fresh randomness per encryption.
pub fn check_round_trips(hsm: &dyn Hsm) {
    let id = KeyId::generate();
    let key = hsm.generate_key_material(&id, 1).expect("material");
    for (pt, c) in [
        (&b""[..], ctx(&[])),
        (&b""[..], ctx(&[("k", "v")])),
        (&b"hello"[..], ctx(&[])),
        (&b"hello"[..], ctx(&[("", "")])),
        (
            &[7u8; 4096][..],
            ctx(&[("tenant", "a"), ("purpose", "test")]),
        ),
    ] {
        let blob = hsm.encrypt(&key, &id, 1, pt, &c).expect("encrypt");
        let parsed = CiphertextBlob::parse(&blob).expect("parse");
        assert_eq!(parsed.key_id, id);
        assert_eq!(parsed.version, 1);
        assert_eq!(
            hsm.decrypt(&key, &parsed, &c).expect("decrypt").as_slice(),
            pt
        );
    }
    let a = hsm
        .encrypt(&key, &id, 1, b"same", &ctx(&[]))
        .expect("encrypt");
    let b = hsm
        .encrypt(&key, &id, 1, b"same", &ctx(&[]))
        .expect("encrypt");
    assert_ne!(a, b, "two encryptions of one plaintext must differ");

    // ReEncrypt moves a ciphertext to another key and context.
    let id2 = KeyId::generate();
    let key2 = hsm.generate_key_material(&id2, 1).expect("material");
    let (c1, c2) = (ctx(&[("from", "a")]), ctx(&[("to", "b")]));
    let blob = CiphertextBlob::parse(&hsm.encrypt(&key, &id, 1, b"moved", &c1).expect("encrypt"))
        .expect("parse");
    let moved = hsm
        .reencrypt(&key, &blob, &c1, &key2, &id2, 1, &c2)
        .expect("reencrypt");
    let moved = CiphertextBlob::parse(&moved).expect("parse");
    assert_eq!(moved.key_id, id2);
    assert_eq!(
        hsm.decrypt(&key2, &moved, &c2).expect("decrypt").as_slice(),
        b"moved"
    );
    assert!(
        is_invalid(
            hsm.reencrypt(&key, &blob, &c2, &key2, &id2, 1, &c2)
                .map(zeroize::Zeroizing::new)
        ),
        "wrong source context accepted"
    );
}

/// Flipping any bit of a blob, truncating it or extending it is detected, and always
/// as `InvalidCiphertext`.
pub fn check_tampering(hsm: &dyn Hsm) {
    let id = KeyId::generate();
    let key = hsm.generate_key_material(&id, 1).expect("material");
    let c = ctx(&[("a", "b")]);
    for pt in [&b"secret"[..], b""] {
        let blob = hsm.encrypt(&key, &id, 1, pt, &c).expect("encrypt");
        assert_eq!(
            open_bytes(hsm, &key, &blob, &c)
                .expect("untampered")
                .as_slice(),
            pt
        );
        for i in 0..blob.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = blob.clone();
                bad[i] ^= bit;
                assert!(
                    is_invalid(open_bytes(hsm, &key, &bad, &c)),
                    "flipping bit {bit:#04x} of byte {i} of {} was not detected as InvalidCiphertext",
                    blob.len()
                );
            }
        }
        for cut in 0..blob.len() {
            assert!(
                is_invalid(open_bytes(hsm, &key, &blob[..cut], &c)),
                "blob truncated to {cut} bytes was not InvalidCiphertext"
            );
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(
            is_invalid(open_bytes(hsm, &key, &longer, &c)),
            "blob with a byte appended was not InvalidCiphertext"
        );
    }
}

/// The encryption context must match exactly, and its encoding is unambiguous.
pub fn check_contexts(hsm: &dyn Hsm) {
    let id = KeyId::generate();
    let key = hsm.generate_key_material(&id, 1).expect("material");
    let good = ctx(&[("dept", "hr"), ("user", "x")]);
    let blob = CiphertextBlob::parse(&hsm.encrypt(&key, &id, 1, b"pt", &good).expect("encrypt"))
        .expect("parse");
    for wrong in [
        ctx(&[]),
        ctx(&[("dept", "hr")]),
        ctx(&[("dept", "hr"), ("user", "y")]),
        ctx(&[("dept", "hr"), ("user", "x"), ("extra", "1")]),
        ctx(&[("Dept", "hr"), ("user", "x")]),
    ] {
        assert!(
            is_invalid(hsm.decrypt(&key, &blob, &wrong)),
            "context {wrong:?} accepted"
        );
    }
    assert_eq!(
        hsm.decrypt(&key, &blob, &good).expect("decrypt").as_slice(),
        b"pt"
    );

    // Length-prefixed encoding: moving bytes between key and value is a different
    // context, in both directions.
    let (ab_c, a_bc) = (ctx(&[("ab", "c")]), ctx(&[("a", "bc")]));
    assert_ne!(
        crate::context::encode_context(&ab_c),
        crate::context::encode_context(&a_bc)
    );
    for (made, tried) in [(&ab_c, &a_bc), (&a_bc, &ab_c)] {
        let blob = hsm.encrypt(&key, &id, 1, b"pt", made).expect("encrypt");
        assert!(
            is_invalid(open_bytes(hsm, &key, &blob, tried)),
            "{made:?} decrypted with {tried:?}"
        );
        assert_eq!(
            open_bytes(hsm, &key, &blob, made)
                .expect("decrypt")
                .as_slice(),
            b"pt"
        );
    }
    // An entry with empty key and value is still an entry.
    let blob = hsm
        .encrypt(&key, &id, 1, b"pt", &ctx(&[("", "")]))
        .expect("encrypt");
    assert!(
        is_invalid(open_bytes(hsm, &key, &blob, &ctx(&[]))),
        "{{\"\":\"\"}} decrypted with an empty context"
    );
}

/// A blob only decrypts with the key (and version) it was made under, whatever key id
/// the blob claims.
pub fn check_wrong_key(hsm: &dyn Hsm) {
    let (ida, idb) = (KeyId::generate(), KeyId::generate());
    let a = hsm.generate_key_material(&ida, 1).expect("material");
    let b = hsm.generate_key_material(&idb, 1).expect("material");
    let blob = CiphertextBlob::parse(&hsm.encrypt(&a, &ida, 1, b"pt", &ctx(&[])).expect("encrypt"))
        .expect("parse");
    assert!(
        is_invalid(hsm.decrypt(&b, &blob, &ctx(&[]))),
        "decrypted with another key"
    );
    // Forge the blob's key id to B's: B's material still does not open it.
    let forged_bytes = hsm.encrypt(&a, &ida, 1, b"pt", &ctx(&[])).expect("encrypt");
    let mut forged = forged_bytes.clone();
    let start = MAGIC.len() + 1;
    let id_len = forged[MAGIC.len()] as usize;
    assert_eq!(id_len, idb.as_str().len(), "key ids of one length");
    forged[start..start + id_len].copy_from_slice(idb.as_str().as_bytes());
    let parsed = CiphertextBlob::parse(&forged).expect("parse forged");
    assert!(
        is_invalid(hsm.decrypt(&b, &parsed, &ctx(&[]))),
        "forged key id accepted"
    );
    // Material of version 1 does not open a blob claiming version 2.
    let v2 = hsm.generate_key_material(&ida, 2).expect("material");
    assert!(
        is_invalid(hsm.decrypt(&v2, &blob, &ctx(&[]))),
        "wrong version accepted"
    );
}

/// Wrapped material is bound to its key id and version: it cannot be used as the
/// material of another key or version.
pub fn check_material_binding(hsm: &dyn Hsm) {
    let (ida, idb) = (KeyId::generate(), KeyId::generate());
    let a = hsm.generate_key_material(&ida, 1).expect("material");
    assert!(
        hsm.encrypt(&a, &idb, 1, b"pt", &ctx(&[])).is_err(),
        "key A's material encrypted as key B"
    );
    assert!(
        hsm.encrypt(&a, &ida, 2, b"pt", &ctx(&[])).is_err(),
        "version 1's material encrypted as version 2"
    );
    assert!(
        hsm.generate_data_key(&a, &idb, 1, 32, &ctx(&[])).is_err(),
        "key A's material made a data key as key B"
    );
    let mut tampered = a.clone();
    let last = tampered.0.len() - 1;
    tampered.0[last] ^= 1;
    assert!(
        hsm.encrypt(&tampered, &ida, 1, b"pt", &ctx(&[])).is_err(),
        "tampered wrapped material accepted"
    );
    // A blob whose header claims B, decrypted with A's material: the material does not
    // unwrap as B's, and that is reported as an invalid ciphertext.
    let blob = hsm.encrypt(&a, &ida, 1, b"pt", &ctx(&[])).expect("encrypt");
    let mut claims_b = blob.clone();
    let start = MAGIC.len() + 1;
    claims_b[start..start + idb.as_str().len()].copy_from_slice(idb.as_str().as_bytes());
    assert!(
        is_invalid(open_bytes(hsm, &a, &claims_b, &ctx(&[]))),
        "material unwrapped under a forged key id"
    );
    // Fresh material each time, even for the same key and version.
    let a2 = hsm.generate_key_material(&ida, 1).expect("material");
    assert_ne!(a, a2);
    assert!(
        is_invalid(open_bytes(hsm, &a2, &blob, &ctx(&[]))),
        "two generations of material are the same key"
    );
}

/// Data keys of every allowed size decrypt to what was returned.
pub fn check_data_keys(hsm: &dyn Hsm) {
    let id = KeyId::generate();
    let key = hsm.generate_key_material(&id, 1).expect("material");
    let c = ctx(&[("k", "v")]);
    for len in [1usize, 16, 32, 1024] {
        let (pt, blob) = hsm
            .generate_data_key(&key, &id, 1, len, &c)
            .expect("data key");
        assert_eq!(pt.len(), len);
        let parsed = CiphertextBlob::parse(&blob).expect("parse");
        assert_eq!(
            hsm.decrypt(&key, &parsed, &c).expect("decrypt").as_slice(),
            pt.as_slice()
        );
    }
    let (a, _) = hsm
        .generate_data_key(&key, &id, 1, 32, &c)
        .expect("data key");
    let (b, _) = hsm
        .generate_data_key(&key, &id, 1, 32, &c)
        .expect("data key");
    assert_ne!(a.as_slice(), b.as_slice(), "two data keys are the same");
    for len in [0usize, 1025] {
        assert!(
            matches!(
                hsm.generate_data_key(&key, &id, 1, len, &c),
                Err(HsmError::InvalidInput(_))
            ),
            "a data key of {len} bytes was not InvalidInput"
        );
    }
    for len in [1usize, 17, 1024] {
        assert_eq!(hsm.generate_random(len).expect("random").len(), len);
    }
    assert_ne!(
        hsm.generate_random(32).expect("random"),
        hsm.generate_random(32).expect("random"),
        "the generator repeats itself"
    );
    for len in [0usize, 1025] {
        assert!(
            matches!(hsm.generate_random(len), Err(HsmError::InvalidInput(_))),
            "{len} random bytes was not InvalidInput"
        );
    }
}

/// Secrets round-trip and are bound to their purpose.
pub fn check_secrets(hsm: &dyn Hsm) {
    let w = hsm.wrap_secret(b"top secret", b"ak-1").expect("wrap");
    assert_eq!(
        hsm.unwrap_secret(&w, b"ak-1").expect("unwrap").as_slice(),
        b"top secret"
    );
    assert!(hsm.unwrap_secret(&w, b"ak-2").is_err(), "purpose not bound");
    assert!(hsm.unwrap_secret(&w, b"").is_err(), "purpose not bound");
    assert!(
        !w.windows(10).any(|x| x == b"top secret"),
        "secret visible in wrapped form"
    );
    assert_ne!(
        hsm.wrap_secret(b"top secret", b"ak-1").expect("wrap"),
        w,
        "wrapping is not randomized"
    );
    for i in 0..w.len() {
        let mut bad = w.clone();
        bad[i] ^= 1;
        assert!(
            hsm.unwrap_secret(&bad, b"ak-1").is_err(),
            "tampered byte {i} of a wrapped secret accepted"
        );
    }
    assert!(hsm.unwrap_secret(&w[..w.len() - 1], b"ak-1").is_err());
    assert!(hsm.unwrap_secret(&[], b"ak-1").is_err());
    let empty = hsm.wrap_secret(b"", b"p").expect("wrap empty");
    assert!(hsm.unwrap_secret(&empty, b"p").expect("unwrap").is_empty());
}

/// The domain key moves HSM to HSM only to the intended, bound recipient, and only
/// when it is the domain key the recipient expects.
pub fn check_transfer(make: &dyn Fn() -> Box<dyn Hsm>) {
    let a = make();
    a.generate_domain_key().expect("domain key");
    let fp = a.domain_key_fingerprint().expect("fingerprint");
    let id = KeyId::generate();
    let key = a.generate_key_material(&id, 1).expect("material");
    let c0 = ctx(&[("joined", "later")]);
    let blob = a
        .encrypt(&key, &id, 1, b"before the join", &c0)
        .expect("encrypt");

    let b = make();
    assert!(!b.has_domain_key());
    assert!(
        matches!(
            open_bytes(b.as_ref(), &key, &blob, &c0),
            Err(HsmError::NoDomainKey)
        ),
        "an HSM without the domain key must say NoDomainKey, not InvalidCiphertext"
    );
    let pk = b.join_public_key().expect("join key");
    assert_eq!(
        b.join_public_key().expect("join key"),
        pk,
        "join key must be stable until the import"
    );
    let t = a.export_domain_key(&pk, b"region:node-2").expect("export");

    // A third HSM, waiting for its own transfer, cannot use B's.
    let c = make();
    let _ = c.join_public_key().expect("join key");
    assert!(
        matches!(
            c.import_domain_key(&t, b"region:node-2", &fp),
            Err(HsmError::TransferRejected)
        ),
        "a third HSM imported another's transfer"
    );
    assert!(!c.has_domain_key());
    // Nor can an HSM that never offered a join key.
    let d = make();
    assert!(
        matches!(
            d.import_domain_key(&t, b"region:node-2", &fp),
            Err(HsmError::TransferRejected)
        ),
        "an HSM with no join key imported a transfer"
    );

    assert!(
        matches!(
            b.import_domain_key(&t, b"region:node-3", &fp),
            Err(HsmError::TransferRejected)
        ),
        "wrong binding accepted"
    );
    assert!(
        matches!(
            b.import_domain_key(&t, b"", &fp),
            Err(HsmError::TransferRejected)
        ),
        "empty binding accepted"
    );
    assert!(
        matches!(
            b.import_domain_key(&t, b"region:node-2", &"0".repeat(64)),
            Err(HsmError::TransferRejected)
        ),
        "wrong fingerprint accepted"
    );
    assert!(
        matches!(
            b.import_domain_key(&t, b"region:node-2", ""),
            Err(HsmError::TransferRejected)
        ),
        "empty fingerprint accepted"
    );
    let mut tampered = t.clone();
    tampered.ciphertext[0] ^= 1;
    assert!(
        matches!(
            b.import_domain_key(&tampered, b"region:node-2", &fp),
            Err(HsmError::TransferRejected)
        ),
        "tampered transfer accepted"
    );
    let mut other_sender = t.clone();
    other_sender.sender_public = a
        .export_domain_key(&pk, b"region:node-2")
        .expect("export")
        .sender_public;
    assert!(
        matches!(
            b.import_domain_key(&other_sender, b"region:node-2", &fp),
            Err(HsmError::TransferRejected)
        ),
        "transfer with a swapped sender key accepted"
    );
    // A different region's domain key, correctly wrapped to B, is refused by its
    // fingerprint.
    let stranger = make();
    stranger.generate_domain_key().expect("domain key");
    let foreign = stranger
        .export_domain_key(&pk, b"region:node-2")
        .expect("export");
    assert!(
        matches!(
            b.import_domain_key(&foreign, b"region:node-2", &fp),
            Err(HsmError::TransferRejected)
        ),
        "another region's domain key accepted"
    );
    assert!(!b.has_domain_key(), "a rejected transfer left a domain key");
    assert_eq!(
        b.join_public_key().expect("join key"),
        pk,
        "a rejected transfer must keep the join key so a good one can follow"
    );

    b.import_domain_key(&t, b"region:node-2", &fp)
        .expect("import");
    assert!(b.has_domain_key());
    assert_eq!(b.domain_key_fingerprint().expect("fingerprint"), fp);
    assert_eq!(
        open_bytes(b.as_ref(), &key, &blob, &c0)
            .expect("B decrypts A's ciphertext")
            .as_slice(),
        b"before the join"
    );
    let back = b.encrypt(&key, &id, 1, b"after", &c0).expect("encrypt");
    assert_eq!(
        open_bytes(a.as_ref(), &key, &back, &c0)
            .expect("A decrypts B's ciphertext")
            .as_slice(),
        b"after"
    );
    assert!(
        b.import_domain_key(&t, b"region:node-2", &fp).is_err(),
        "a transfer was imported twice"
    );
    let bad_pk = JoinPublicKey([0u8; 32]);
    assert!(
        a.export_domain_key(&bad_pk, b"region:node-2").is_err(),
        "exported to a degenerate public key"
    );
}

/// Imported key material: wrapped by the caller to the HSM's RSA public key with
/// RSAES-OAEP-SHA-256, usable after import, fingerprinted for re-import checks.
pub fn check_import(hsm: &dyn Hsm) {
    use rsa::pkcs8::DecodePublicKey;
    let id = KeyId::generate();
    let wrapping = hsm
        .generate_import_wrapping_key(2048, b"token-1")
        .expect("wrapping key");
    let public =
        rsa::RsaPublicKey::from_public_key_der(&wrapping.public_key_der).expect("SPKI DER");
    let material = [0x42u8; 32];
    let mut rng = rand::rngs::OsRng;
    let encrypted = public
        .encrypt(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), &material)
        .expect("encrypt to the wrapping key");
    let (key, fp) = hsm
        .import_key_material(&wrapping, b"token-1", &encrypted, &id, 1)
        .expect("import");
    let blob = CiphertextBlob::parse(
        &hsm.encrypt(&key, &id, 1, b"byok", &ctx(&[]))
            .expect("encrypt"),
    )
    .expect("parse");
    assert_eq!(
        hsm.decrypt(&key, &blob, &ctx(&[]))
            .expect("decrypt")
            .as_slice(),
        b"byok"
    );
    let again = public
        .encrypt(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), &material)
        .expect("encrypt");
    let (_, fp2) = hsm
        .import_key_material(&wrapping, b"token-1", &again, &id, 1)
        .expect("re-import");
    assert_eq!(fp, fp2, "the same material has the same fingerprint");
    let other = public
        .encrypt(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), &[0x43u8; 32])
        .expect("encrypt");
    let (_, fp3) = hsm
        .import_key_material(&wrapping, b"token-1", &other, &id, 1)
        .expect("import other");
    assert_ne!(fp, fp3, "other material has another fingerprint");
    assert!(
        hsm.import_key_material(&wrapping, b"token-2", &encrypted, &id, 1)
            .is_err(),
        "token not bound"
    );
    let short = public
        .encrypt(&mut rng, rsa::Oaep::new::<sha2::Sha256>(), &[1u8; 16])
        .expect("encrypt");
    assert!(matches!(
        hsm.import_key_material(&wrapping, b"token-1", &short, &id, 1),
        Err(HsmError::InvalidInput(_))
    ));
    let mut bad = encrypted.clone();
    bad[10] ^= 1;
    assert!(matches!(
        hsm.import_key_material(&wrapping, b"token-1", &bad, &id, 1),
        Err(HsmError::InvalidCiphertext)
    ));
    assert!(hsm.generate_import_wrapping_key(1024, b"t").is_err());
}

/// HMAC keys: a MAC verifies for its message and key only.
pub fn check_mac(hsm: &dyn Hsm) {
    for (len, bits) in [(32usize, 256usize), (48, 384), (64, 512)] {
        let id = KeyId::generate();
        let key = hsm.generate_mac_key(&id, 1, len).expect("mac key");
        let mac = hsm.mac(&key, &id, 1, bits, b"message").expect("mac");
        assert_eq!(mac.len(), bits / 8);
        assert!(hsm
            .verify_mac(&key, &id, 1, bits, b"message", &mac)
            .expect("verify"));
        assert!(!hsm
            .verify_mac(&key, &id, 1, bits, b"messagf", &mac)
            .expect("verify"));
        let mut bad = mac.clone();
        bad[0] ^= 1;
        assert!(!hsm
            .verify_mac(&key, &id, 1, bits, b"message", &bad)
            .expect("verify"));
        let other = hsm.generate_mac_key(&id, 1, len).expect("mac key");
        assert_ne!(hsm.mac(&other, &id, 1, bits, b"message").expect("mac"), mac);
    }
    assert!(hsm.generate_mac_key(&KeyId::generate(), 1, 16).is_err());
}
