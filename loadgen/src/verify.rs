//! Independent software verification (RustCrypto), sharing no code with the signer. Used by
//! `loadgen --verify` and, through `#[path]`, by the signer's own test suites.

use ed25519_dalek::pkcs8::DecodePublicKey as _;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::{Pkcs1v15Sign, Pss, RsaPublicKey};
use sha2::{Sha256, Sha384, Sha512};
use signer_proto::Scheme;

/// Verifies `sig` over `payload` (a digest, or the message for Ed25519) against the
/// SubjectPublicKeyInfo `spki`.
pub fn verify(spki: &[u8], scheme: Scheme, payload: &[u8], sig: &[u8]) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    match scheme {
        Scheme::EcdsaSha256 | Scheme::EcdsaSha384 | Scheme::EcdsaSha512 => {
            if let Ok(pk) = p256::PublicKey::from_public_key_der(spki) {
                let vk = p256::ecdsa::VerifyingKey::from(pk);
                let sig = p256::ecdsa::Signature::from_der(sig).map_err(|x| e(&x))?;
                vk.verify_prehash(payload, &sig).map_err(|x| e(&x))
            } else {
                let pk = p384::PublicKey::from_public_key_der(spki).map_err(|x| e(&x))?;
                let vk = p384::ecdsa::VerifyingKey::from(pk);
                let sig = p384::ecdsa::Signature::from_der(sig).map_err(|x| e(&x))?;
                vk.verify_prehash(payload, &sig).map_err(|x| e(&x))
            }
        }
        Scheme::Ed25519 => {
            let vk = ed25519_dalek::VerifyingKey::from_public_key_der(spki).map_err(|x| e(&x))?;
            let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|x| e(&x))?;
            vk.verify_strict(payload, &sig).map_err(|x| e(&x))
        }
        rsa_scheme => {
            let pk = RsaPublicKey::from_public_key_der(spki).map_err(|x| e(&x))?;
            let padding_result = match rsa_scheme {
                Scheme::RsaPkcs1Sha256 => pk.verify(Pkcs1v15Sign::new::<Sha256>(), payload, sig),
                Scheme::RsaPkcs1Sha384 => pk.verify(Pkcs1v15Sign::new::<Sha384>(), payload, sig),
                Scheme::RsaPkcs1Sha512 => pk.verify(Pkcs1v15Sign::new::<Sha512>(), payload, sig),
                Scheme::RsaPssSha256 => pk.verify(Pss::new_with_salt::<Sha256>(32), payload, sig),
                Scheme::RsaPssSha384 => pk.verify(Pss::new_with_salt::<Sha384>(48), payload, sig),
                Scheme::RsaPssSha512 => pk.verify(Pss::new_with_salt::<Sha512>(64), payload, sig),
                other => return Err(format!("no verifier for {other}")),
            };
            padding_result.map_err(|x| e(&x))
        }
    }
}
