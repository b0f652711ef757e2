//! Offline verification in software (RustCrypto): plain signatures, batch signatures, and either.

use bytes::Bytes;
use ed25519_dalek::pkcs8::DecodePublicKey;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::{Pkcs1v15Sign, Pss, RsaPublicKey};
use sha2::digest::const_oid::AssociatedOid;
use sha2::digest::{DynDigest, FixedOutputReset};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::{root_from_path, root_signing_input, BatchSignature, SignatureForm, TreeError};
use crate::keys::{KeyName, Payload, Scheme, Version};

/// Why a signature did not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The SubjectPublicKeyInfo is not a key this scheme can use.
    #[error("public key is not usable with {scheme}: {reason}")]
    PublicKey {
        /// The scheme asked for.
        scheme: Scheme,
        /// Why not.
        reason: String,
    },
    /// The payload is not valid for the scheme (a digest of the wrong length, or a message too
    /// long).
    #[error("invalid payload: {0}")]
    Payload(String),
    /// The signature bytes are not in the scheme's encoding.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The batch signature's tree position or path is malformed.
    #[error("malformed batch signature: {0}")]
    Tree(#[from] TreeError),
    /// Well-formed, but the signature does not verify.
    #[error("signature does not verify")]
    Invalid,
}

/// A public key parsed for one scheme.
enum SoftwareKey {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Rsa(RsaPublicKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl SoftwareKey {
    /// Parses a DER SubjectPublicKeyInfo as a key of a type that can use `scheme`.
    fn parse(spki_der: &[u8], scheme: Scheme) -> Result<SoftwareKey, VerifyError> {
        let unusable = |reason: String| VerifyError::PublicKey { scheme, reason };
        match scheme {
            Scheme::EcdsaSha256 | Scheme::EcdsaSha384 | Scheme::EcdsaSha512 => {
                match p256::ecdsa::VerifyingKey::from_public_key_der(spki_der) {
                    Ok(k) => Ok(SoftwareKey::P256(k)),
                    Err(_) => p384::ecdsa::VerifyingKey::from_public_key_der(spki_der)
                        .map(SoftwareKey::P384)
                        .map_err(|e| unusable(format!("not a P-256 or P-384 key ({e})"))),
                }
            }
            Scheme::Ed25519 => ed25519_dalek::VerifyingKey::from_public_key_der(spki_der)
                .map(SoftwareKey::Ed25519)
                .map_err(|e| unusable(format!("not an Ed25519 key ({e})"))),
            _ => RsaPublicKey::from_public_key_der(spki_der)
                .map(SoftwareKey::Rsa)
                .map_err(|e| unusable(format!("not an RSA key ({e})"))),
        }
    }

    /// Verifies `sig` over `payload` (a digest, or the Ed25519 message).
    fn verify(&self, scheme: Scheme, payload: &[u8], sig: &[u8]) -> Result<(), VerifyError> {
        let malformed = |e: &dyn std::fmt::Display| VerifyError::Malformed(e.to_string());
        let valid = match self {
            SoftwareKey::P256(k) => {
                let sig = p256::ecdsa::Signature::from_der(sig).map_err(|e| malformed(&e))?;
                k.verify_prehash(payload, &sig).is_ok()
            }
            SoftwareKey::P384(k) => {
                let sig = p384::ecdsa::Signature::from_der(sig).map_err(|e| malformed(&e))?;
                k.verify_prehash(payload, &sig).is_ok()
            }
            SoftwareKey::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|e| malformed(&e))?;
                k.verify_strict(payload, &sig).is_ok()
            }
            SoftwareKey::Rsa(k) => {
                let pss = matches!(
                    scheme,
                    Scheme::RsaPssSha256 | Scheme::RsaPssSha384 | Scheme::RsaPssSha512
                );
                match scheme.digest_len() {
                    Some(32) => rsa_verify::<Sha256>(k, pss, payload, sig),
                    Some(48) => rsa_verify::<Sha384>(k, pss, payload, sig),
                    _ => rsa_verify::<Sha512>(k, pss, payload, sig),
                }
            }
        };
        if valid {
            Ok(())
        } else {
            Err(VerifyError::Invalid)
        }
    }
}

/// RSASSA-PSS (MGF1 with the same hash, salt as long as the digest) or RSASSA-PKCS1-v1_5 with
/// hash `D` over the digest `payload`.
fn rsa_verify<D>(key: &RsaPublicKey, pss: bool, payload: &[u8], sig: &[u8]) -> bool
where
    D: Digest + AssociatedOid + DynDigest + FixedOutputReset + Send + Sync + 'static,
{
    if pss {
        let salt_len = <D as Digest>::output_size();
        key.verify(Pss::new_with_salt::<D>(salt_len), payload, sig)
            .is_ok()
    } else {
        key.verify(Pkcs1v15Sign::new::<D>(), payload, sig).is_ok()
    }
}

/// Checks the payload against the scheme (digest length, message size), as signerd does.
fn check_payload(scheme: Scheme, payload: &[u8]) -> Result<(), VerifyError> {
    Payload::new(scheme, Bytes::copy_from_slice(payload))
        .map(drop)
        .map_err(|e| VerifyError::Payload(e.to_string()))
}

/// Verifies a plain (form 1) signature over `payload` (a digest of the scheme's length, or the
/// Ed25519 message) with the public key in `spki_der` (DER SubjectPublicKeyInfo).
pub fn verify_plain(
    spki_der: &[u8],
    scheme: Scheme,
    payload: &[u8],
    signature: &[u8],
) -> Result<(), VerifyError> {
    check_payload(scheme, payload)?;
    SoftwareKey::parse(spki_der, scheme)?.verify(scheme, payload, signature)
}

/// Verifies a batch (form 2) signature over `payload`, made with version `version` of key `key`
/// under `scheme`: recomputes the root from the payload, blinding and path, rebuilds the root's
/// signing input, and verifies the root signature over it.
pub fn verify_batch(
    spki_der: &[u8],
    scheme: Scheme,
    key: &KeyName,
    version: Version,
    payload: &[u8],
    signature: &BatchSignature,
) -> Result<(), VerifyError> {
    check_payload(scheme, payload)?;
    let software_key = SoftwareKey::parse(spki_der, scheme)?;
    let root = root_from_path(
        signature.tree_size,
        signature.leaf_index,
        &signature.blinding,
        payload,
        &signature.path,
    )?;
    let input = root_signing_input(scheme, key, version, signature.tree_size, &root);
    software_key.verify(scheme, input.to_be_signed(), &signature.root_signature)
}

/// Verifies a signature in either form; see [`verify_plain`] and [`verify_batch`] (`key` and
/// `version` are only used by the batch form, whose root signature is bound to them).
pub fn verify(
    spki_der: &[u8],
    scheme: Scheme,
    key: &KeyName,
    version: Version,
    payload: &[u8],
    signature: &SignatureForm,
) -> Result<(), VerifyError> {
    match signature {
        SignatureForm::Plain(sig) => verify_plain(spki_der, scheme, payload, sig),
        SignatureForm::Batch(sig) => verify_batch(spki_der, scheme, key, version, payload, sig),
    }
}
