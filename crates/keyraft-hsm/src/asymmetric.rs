//! Key pairs: ECDSA on NIST P-256 and RSA, for Sign/Verify and RSAES-OAEP.
//!
//! # What runs where
//!
//! Operations with the private half — making the pair, signing, RSA decryption — run
//! inside an HSM ([`crate::Hsm::generate_key_pair`], [`crate::Hsm::sign`],
//! [`crate::Hsm::decrypt_asymmetric`]); the private half leaves it only as PKCS#8 DER
//! wrapped under the domain key, exactly like symmetric key material. Operations with
//! the public half — [`verify`] and [`encrypt`] — need no secret, so they are plain
//! functions here that any node (or a caller holding the public key from GetPublicKey)
//! can run. The service still runs them for Verify and asymmetric Encrypt, as AWS does,
//! so that they are authorised and audited like every other use of a key.
//!
//! # Formats (those AWS KMS uses, so that OpenSSL and the AWS SDKs interoperate)
//! - Public keys: DER SubjectPublicKeyInfo.
//! - ECDSA signatures: DER `SEQUENCE { r INTEGER, s INTEGER }`.
//! - RSASSA-PSS: MGF1 with the signing hash, salt as long as the digest.
//! - RSASSA-PKCS1-v1_5: EMSA-PKCS1-v1_5 with the hash's DigestInfo.
//! - RSAES-OAEP: MGF1 with the same hash as the label hash, empty label.
//!
//! Signing always takes a *digest*: for a RAW message the caller of these functions
//! hashes it first with [`digest`] (hashing needs no secret), which is also what a
//! PKCS#11 module expects for CKM_ECDSA and the PSS mechanisms.

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use rand::rngs::OsRng;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use sha2::Digest;
use zeroize::Zeroizing;

use keyraft_types::{EncryptionAlgorithm, KeySpec, Sha2, SigningAlgorithm};

use crate::HsmError;

/// The hash of `message` with `hash`.
pub fn digest(hash: Sha2, message: &[u8]) -> Vec<u8> {
    match hash {
        Sha2::Sha1 => sha1::Sha1::digest(message).to_vec(),
        Sha2::Sha256 => sha2::Sha256::digest(message).to_vec(),
        Sha2::Sha384 => sha2::Sha384::digest(message).to_vec(),
        Sha2::Sha512 => sha2::Sha512::digest(message).to_vec(),
    }
}

fn invalid(what: &str) -> HsmError {
    HsmError::InvalidInput(what.to_string())
}

fn check_signing(
    spec: KeySpec,
    algorithm: SigningAlgorithm,
    digest: &[u8],
) -> Result<(), HsmError> {
    if !spec.signing_algorithms().contains(&algorithm) {
        return Err(HsmError::InvalidInput(format!(
            "{} is not a signing algorithm of {} keys",
            algorithm.as_str(),
            spec.as_str()
        )));
    }
    if digest.len() != algorithm.hash().digest_len() {
        return Err(HsmError::InvalidInput(format!(
            "a {} digest is {} bytes, not {}",
            algorithm.as_str(),
            algorithm.hash().digest_len(),
            digest.len()
        )));
    }
    Ok(())
}

fn pss(hash: Sha2) -> rsa::Pss {
    match hash {
        Sha2::Sha384 => rsa::Pss::new::<sha2::Sha384>(),
        Sha2::Sha512 => rsa::Pss::new::<sha2::Sha512>(),
        _ => rsa::Pss::new::<sha2::Sha256>(),
    }
}

fn pkcs1v15(hash: Sha2) -> rsa::Pkcs1v15Sign {
    match hash {
        Sha2::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
        Sha2::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
        _ => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
    }
}

fn oaep(algorithm: EncryptionAlgorithm) -> Result<rsa::Oaep, HsmError> {
    match algorithm {
        EncryptionAlgorithm::RsaesOaepSha1 => Ok(rsa::Oaep::new::<sha1::Sha1>()),
        EncryptionAlgorithm::RsaesOaepSha256 => Ok(rsa::Oaep::new::<sha2::Sha256>()),
        EncryptionAlgorithm::SymmetricDefault => {
            Err(invalid("SYMMETRIC_DEFAULT is not an RSA algorithm"))
        }
    }
}

fn is_pss(algorithm: SigningAlgorithm) -> bool {
    matches!(
        algorithm,
        SigningAlgorithm::RsassaPssSha256
            | SigningAlgorithm::RsassaPssSha384
            | SigningAlgorithm::RsassaPssSha512
    )
}

/// Makes a key pair of `spec`: (PKCS#8 DER of the private half, DER SPKI of the public).
pub(crate) fn generate(spec: KeySpec) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), HsmError> {
    let encoding = |e: &dyn std::fmt::Display| HsmError::InvalidInput(format!("key encoding: {e}"));
    if spec == KeySpec::EccNistP256 {
        let private = p256::ecdsa::SigningKey::random(&mut OsRng);
        let der = private.to_pkcs8_der().map_err(|e| encoding(&e))?;
        let public = p256::ecdsa::VerifyingKey::from(&private)
            .to_public_key_der()
            .map_err(|e| encoding(&e))?;
        return Ok((Zeroizing::new(der.as_bytes().to_vec()), public.into_vec()));
    }
    let bits = spec.rsa_bits().ok_or_else(|| {
        HsmError::InvalidInput(format!("{} is not a key pair spec", spec.as_str()))
    })?;
    let private = rsa::RsaPrivateKey::new(&mut OsRng, bits)
        .map_err(|e| HsmError::InvalidInput(format!("RSA key generation failed: {e}")))?;
    let der = private.to_pkcs8_der().map_err(|e| encoding(&e))?;
    let public = private
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| encoding(&e))?;
    Ok((Zeroizing::new(der.as_bytes().to_vec()), public.into_vec()))
}

fn rsa_private(spec: KeySpec, pkcs8: &[u8]) -> Result<rsa::RsaPrivateKey, HsmError> {
    let key = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8).map_err(|_| HsmError::UnwrapFailed)?;
    if Some(key.size() * 8) != spec.rsa_bits() {
        return Err(HsmError::UnwrapFailed);
    }
    Ok(key)
}

/// Signs `digest` with the private half (PKCS#8 DER) of a `spec` key.
pub(crate) fn sign(
    spec: KeySpec,
    pkcs8: &[u8],
    algorithm: SigningAlgorithm,
    digest: &[u8],
) -> Result<Vec<u8>, HsmError> {
    check_signing(spec, algorithm, digest)?;
    if spec == KeySpec::EccNistP256 {
        let key =
            p256::ecdsa::SigningKey::from_pkcs8_der(pkcs8).map_err(|_| HsmError::UnwrapFailed)?;
        let signature: p256::ecdsa::Signature = key
            .sign_prehash(digest)
            .map_err(|_| invalid("ECDSA signing failed"))?;
        return Ok(signature.to_der().as_bytes().to_vec());
    }
    let key = rsa_private(spec, pkcs8)?;
    let hash = algorithm.hash();
    let signature = if is_pss(algorithm) {
        key.sign_with_rng(&mut OsRng, pss(hash), digest)
    } else {
        key.sign(pkcs1v15(hash), digest)
    };
    signature.map_err(|e| HsmError::InvalidInput(format!("RSA signing failed: {e}")))
}

/// Decrypts an RSAES-OAEP ciphertext with the private half of an RSA key.
pub(crate) fn decrypt(
    spec: KeySpec,
    pkcs8: &[u8],
    algorithm: EncryptionAlgorithm,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let padding = oaep(algorithm)?;
    let key = rsa_private(spec, pkcs8)?;
    key.decrypt(padding, ciphertext)
        .map(Zeroizing::new)
        .map_err(|_| HsmError::InvalidCiphertext)
}

/// Whether `signature` is a valid `algorithm` signature of `digest` under the public key
/// `public_der` (DER SPKI) of a `spec` key. A malformed signature is simply not valid.
pub fn verify(
    spec: KeySpec,
    public_der: &[u8],
    algorithm: SigningAlgorithm,
    digest: &[u8],
    signature: &[u8],
) -> Result<bool, HsmError> {
    check_signing(spec, algorithm, digest)?;
    let bad_key = || invalid("the stored public key does not parse");
    if spec == KeySpec::EccNistP256 {
        let key =
            p256::ecdsa::VerifyingKey::from_public_key_der(public_der).map_err(|_| bad_key())?;
        let Ok(signature) = p256::ecdsa::Signature::from_der(signature) else {
            return Ok(false);
        };
        return Ok(key.verify_prehash(digest, &signature).is_ok());
    }
    let key = rsa::RsaPublicKey::from_public_key_der(public_der).map_err(|_| bad_key())?;
    let hash = algorithm.hash();
    let result = if is_pss(algorithm) {
        key.verify(pss(hash), digest, signature)
    } else {
        key.verify(pkcs1v15(hash), digest, signature)
    };
    Ok(result.is_ok())
}

/// Encrypts `plaintext` with RSAES-OAEP under the public key `public_der` (DER SPKI).
/// The plaintext must fit the key: at most k − 2·hLen − 2 bytes.
pub fn encrypt(
    public_der: &[u8],
    algorithm: EncryptionAlgorithm,
    plaintext: &[u8],
) -> Result<Vec<u8>, HsmError> {
    let padding = oaep(algorithm)?;
    let key = rsa::RsaPublicKey::from_public_key_der(public_der)
        .map_err(|_| invalid("the stored public key does not parse"))?;
    let max = algorithm.max_plaintext(Some(key.size() * 8));
    if plaintext.is_empty() || plaintext.len() > max {
        return Err(HsmError::InvalidInput(format!(
            "plaintext must be 1 to {max} bytes for {} with this key, not {}",
            algorithm.as_str(),
            plaintext.len()
        )));
    }
    key.encrypt(&mut OsRng, padding, plaintext)
        .map_err(|e| HsmError::InvalidInput(format!("RSA encryption failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_signs_and_verifies_with_every_algorithm() {
        for spec in [KeySpec::EccNistP256, KeySpec::Rsa2048] {
            let (private, public) = generate(spec).unwrap();
            for &alg in spec.signing_algorithms() {
                let d = digest(alg.hash(), b"message");
                let sig = sign(spec, &private, alg, &d).unwrap();
                assert!(verify(spec, &public, alg, &d, &sig).unwrap(), "{alg:?}");
                let other = digest(alg.hash(), b"messagE");
                assert!(!verify(spec, &public, alg, &other, &sig).unwrap());
                let mut bad = sig.clone();
                let last = bad.len() - 1;
                bad[last] ^= 1;
                assert!(!verify(spec, &public, alg, &d, &bad).unwrap());
                assert!(!verify(spec, &public, alg, &d, b"junk").unwrap());
            }
        }
    }

    #[test]
    fn a_digest_of_the_wrong_length_or_a_foreign_algorithm_is_refused() {
        let (private, _) = generate(KeySpec::EccNistP256).unwrap();
        let short = [0u8; 31];
        assert!(matches!(
            sign(
                KeySpec::EccNistP256,
                &private,
                SigningAlgorithm::EcdsaSha256,
                &short
            ),
            Err(HsmError::InvalidInput(_))
        ));
        let d = digest(Sha2::Sha256, b"m");
        assert!(matches!(
            sign(
                KeySpec::EccNistP256,
                &private,
                SigningAlgorithm::RsassaPssSha256,
                &d
            ),
            Err(HsmError::InvalidInput(_))
        ));
    }

    #[test]
    fn oaep_round_trips_and_refuses_what_does_not_fit() {
        let (private, public) = generate(KeySpec::Rsa2048).unwrap();
        for alg in [
            EncryptionAlgorithm::RsaesOaepSha1,
            EncryptionAlgorithm::RsaesOaepSha256,
        ] {
            let max = alg.max_plaintext(Some(2048));
            let pt = vec![7u8; max];
            let ct = encrypt(&public, alg, &pt).unwrap();
            assert_eq!(ct.len(), 256);
            assert_eq!(*decrypt(KeySpec::Rsa2048, &private, alg, &ct).unwrap(), pt);
            assert!(encrypt(&public, alg, &vec![7u8; max + 1]).is_err());
            assert!(encrypt(&public, alg, &[]).is_err());
        }
        assert_eq!(
            EncryptionAlgorithm::RsaesOaepSha256.max_plaintext(Some(2048)),
            190
        );
        assert_eq!(
            EncryptionAlgorithm::RsaesOaepSha1.max_plaintext(Some(2048)),
            214
        );
        let ct = encrypt(&public, EncryptionAlgorithm::RsaesOaepSha256, b"x").unwrap();
        // The other OAEP hash does not decrypt it.
        assert!(matches!(
            decrypt(
                KeySpec::Rsa2048,
                &private,
                EncryptionAlgorithm::RsaesOaepSha1,
                &ct
            ),
            Err(HsmError::InvalidCiphertext)
        ));
    }

    #[test]
    fn a_private_key_of_another_size_is_not_accepted_for_the_spec() {
        let (private, _) = generate(KeySpec::Rsa2048).unwrap();
        let d = digest(Sha2::Sha256, b"m");
        assert!(matches!(
            sign(
                KeySpec::Rsa3072,
                &private,
                SigningAlgorithm::RsassaPssSha256,
                &d
            ),
            Err(HsmError::UnwrapFailed)
        ));
    }
}
