//! The behaviour every [`Hsm`] backend must show. A backend's test builds fresh
//! instances and calls [`run_all`]; a failure panics with what went wrong.

use keyraft_types::{EncryptionContext, KeyId};

use crate::{CiphertextBlob, Hsm, HsmError};

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn is_invalid(r: Result<zeroize::Zeroizing<Vec<u8>>, HsmError>) -> bool {
    matches!(r, Err(HsmError::InvalidCiphertext))
}

/// Runs every check. `make` returns a fresh HSM with no domain key each call.
pub fn run_all(make: &dyn Fn() -> Box<dyn Hsm>) {
    let hsm = make();
    check_no_domain_key(hsm.as_ref());
    hsm.generate_domain_key().expect("generate domain key");
    check_round_trips(hsm.as_ref());
    check_tampering(hsm.as_ref());
    check_contexts(hsm.as_ref());
    check_wrong_key(hsm.as_ref());
    check_data_keys(hsm.as_ref());
    check_secrets(hsm.as_ref());
    check_import(hsm.as_ref());
    check_mac(hsm.as_ref());
    check_transfer(make);
}

/// Before a domain key exists, nothing works and the error says so.
pub fn check_no_domain_key(hsm: &dyn Hsm) {
    assert!(!hsm.has_domain_key());
    let id = KeyId::random();
    assert!(matches!(
        hsm.generate_key_material(&id, 1),
        Err(HsmError::NoDomainKey)
    ));
    assert!(matches!(
        hsm.wrap_secret(b"s", b"p"),
        Err(HsmError::NoDomainKey)
    ));
    assert!(matches!(
        hsm.domain_key_fingerprint(),
        Err(HsmError::NoDomainKey)
    ));
}

/// Encrypt/decrypt round trips, and fresh randomness per encryption.
pub fn check_round_trips(hsm: &dyn Hsm) {
    let id = KeyId::random();
    let key = hsm.generate_key_material(&id, 1).expect("material");
    for (pt, c) in [
        (&b""[..], ctx(&[])),
        (&b"hello"[..], ctx(&[])),
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
    let id2 = KeyId::random();
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

/// Flipping any bit of a blob is detected.
pub fn check_tampering(hsm: &dyn Hsm) {
    let id = KeyId::random();
    let key = hsm.generate_key_material(&id, 1).expect("material");
    let blob = hsm
        .encrypt(&key, &id, 1, b"secret", &ctx(&[("a", "b")]))
        .expect("encrypt");
    for i in 0..blob.len() {
        let mut bad = blob.clone();
        bad[i] ^= 0x01;
        let outcome = CiphertextBlob::parse(&bad)
            .map_err(|_| HsmError::InvalidCiphertext)
            .and_then(|p| hsm.decrypt(&key, &p, &ctx(&[("a", "b")])));
        assert!(is_invalid(outcome), "tampered byte {i} was not detected");
    }
}

/// The encryption context must match exactly, and its encoding is unambiguous.
pub fn check_contexts(hsm: &dyn Hsm) {
    let id = KeyId::random();
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
    let ab = CiphertextBlob::parse(
        &hsm.encrypt(&key, &id, 1, b"pt", &ctx(&[("ab", "c")]))
            .expect("encrypt"),
    )
    .expect("parse");
    assert!(
        is_invalid(hsm.decrypt(&key, &ab, &ctx(&[("a", "bc")]))),
        "{{ab:c}} decrypted with {{a:bc}}"
    );
}

/// A blob only decrypts with the key (and version) it was made under, whatever key id
/// the blob claims.
pub fn check_wrong_key(hsm: &dyn Hsm) {
    let (ida, idb) = (KeyId::random(), KeyId::random());
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
    let start = 5;
    forged[start..start + 36].copy_from_slice(idb.as_str().as_bytes());
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

/// Data keys of every allowed size decrypt to what was returned.
pub fn check_data_keys(hsm: &dyn Hsm) {
    let id = KeyId::random();
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
    for len in [0usize, 1025] {
        assert!(matches!(
            hsm.generate_data_key(&key, &id, 1, len, &c),
            Err(HsmError::InvalidInput(_))
        ));
    }
    assert_eq!(hsm.generate_random(17).expect("random").len(), 17);
    assert!(hsm.generate_random(0).is_err());
}

/// Secrets round-trip and are bound to their purpose.
pub fn check_secrets(hsm: &dyn Hsm) {
    let w = hsm.wrap_secret(b"top secret", b"ak-1").expect("wrap");
    assert_eq!(
        hsm.unwrap_secret(&w, b"ak-1").expect("unwrap").as_slice(),
        b"top secret"
    );
    assert!(hsm.unwrap_secret(&w, b"ak-2").is_err(), "purpose not bound");
    assert!(
        !w.windows(10).any(|x| x == b"top secret"),
        "secret visible in wrapped form"
    );
}

/// The domain key moves HSM to HSM only to the intended, bound recipient.
pub fn check_transfer(make: &dyn Fn() -> Box<dyn Hsm>) {
    let a = make();
    a.generate_domain_key().expect("domain key");
    let fp = a.domain_key_fingerprint().expect("fingerprint");
    let id = KeyId::random();
    let key = a.generate_key_material(&id, 1).expect("material");
    let blob = a
        .encrypt(&key, &id, 1, b"before the join", &ctx(&[]))
        .expect("encrypt");

    let b = make();
    let pk = b.join_public_key().expect("join key");
    assert_eq!(
        b.join_public_key().expect("join key"),
        pk,
        "join key must be stable"
    );
    let t = a.export_domain_key(&pk, b"region:node-2").expect("export");

    let c = make();
    let _ = c.join_public_key().expect("join key");
    assert!(
        matches!(
            c.import_domain_key(&t, b"region:node-2", &fp),
            Err(HsmError::TransferRejected)
        ),
        "a third HSM imported another's transfer"
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
            b.import_domain_key(&t, b"region:node-2", &"0".repeat(64)),
            Err(HsmError::TransferRejected)
        ),
        "wrong fingerprint accepted"
    );
    b.import_domain_key(&t, b"region:node-2", &fp)
        .expect("import");
    assert_eq!(b.domain_key_fingerprint().expect("fingerprint"), fp);
    let parsed = CiphertextBlob::parse(&blob).expect("parse");
    assert_eq!(
        b.decrypt(&key, &parsed, &ctx(&[]))
            .expect("decrypt")
            .as_slice(),
        b"before the join"
    );
}

/// Imported key material: wrapped by the caller to the HSM's RSA public key with
/// RSAES-OAEP-SHA-256, usable after import, fingerprinted for re-import checks.
pub fn check_import(hsm: &dyn Hsm) {
    use rsa::pkcs8::DecodePublicKey;
    let id = KeyId::random();
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
        let id = KeyId::random();
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
    assert!(hsm.generate_mac_key(&KeyId::random(), 1, 16).is_err());
}
