//! Signature schemes to PKCS#11 mechanisms, input preparation and output encoding.

use std::borrow::Cow;

use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};

use super::der::{digest_info_prefix, ecdsa_raw_to_der, DigestAlg};
use super::error::{HsmError, HsmResult};
use signer_proto::keys::{Payload, Scheme};

/// The mechanism for `scheme`.
pub fn mechanism(scheme: Scheme) -> Mechanism<'static> {
    let pss = |hash_alg, mgf, s_len: u64| {
        Mechanism::RsaPkcsPss(PkcsPssParams {
            hash_alg,
            mgf,
            s_len: s_len.into(),
        })
    };
    match scheme {
        Scheme::EcdsaSha256 | Scheme::EcdsaSha384 | Scheme::EcdsaSha512 => Mechanism::Ecdsa,
        Scheme::RsaPkcs1Sha256 | Scheme::RsaPkcs1Sha384 | Scheme::RsaPkcs1Sha512 => {
            Mechanism::RsaPkcs
        }
        Scheme::RsaPssSha256 => pss(MechanismType::SHA256, PkcsMgfType::MGF1_SHA256, 32),
        Scheme::RsaPssSha384 => pss(MechanismType::SHA384, PkcsMgfType::MGF1_SHA384, 48),
        Scheme::RsaPssSha512 => pss(MechanismType::SHA512, PkcsMgfType::MGF1_SHA512, 64),
        Scheme::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
    }
}

/// The bytes handed to `C_Sign`: the digest, the message, or (PKCS#1 v1.5) DigestInfo || digest.
pub fn sign_input(payload: &Payload) -> Cow<'_, [u8]> {
    let alg = match payload.scheme() {
        Scheme::RsaPkcs1Sha256 => DigestAlg::Sha256,
        Scheme::RsaPkcs1Sha384 => DigestAlg::Sha384,
        Scheme::RsaPkcs1Sha512 => DigestAlg::Sha512,
        _ => return Cow::Borrowed(payload.bytes()),
    };
    let prefix = digest_info_prefix(alg);
    let mut v = Vec::with_capacity(prefix.len() + payload.bytes().len());
    v.extend_from_slice(prefix);
    v.extend_from_slice(payload.bytes());
    Cow::Owned(v)
}

/// Turns `C_Sign` output into the scheme's standard encoding (ECDSA: ASN.1 DER).
pub fn encode_signature(scheme: Scheme, raw: Vec<u8>) -> HsmResult<Vec<u8>> {
    match scheme {
        Scheme::EcdsaSha256 | Scheme::EcdsaSha384 | Scheme::EcdsaSha512 => ecdsa_raw_to_der(&raw)
            .map_err(|e| HsmError::Unexpected(format!("HSM returned a bad ECDSA signature: {e}"))),
        _ => Ok(raw),
    }
}
