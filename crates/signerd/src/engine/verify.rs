//! Verification inside the HSM (`C_Verify` with the version's public key object). Blocks; call it
//! from a blocking context. Works for retired versions too.

use cryptoki::error::{Error as CkError, RvError};

use super::keys::Keys;
use crate::error::EngineError;
use crate::hsm::der::ecdsa_der_to_raw;
use crate::hsm::{mechanism, objects};
use signer_proto::keys::{KeyName, KeyType, Payload, Scheme, Version};

impl Keys {
    /// Whether `signature` (in the scheme's standard encoding) is valid for `payload` under
    /// `name`'s `version` (default: the signing version, else the latest). Returns the version
    /// checked and the verdict.
    pub fn verify_blocking(
        &self,
        name: &KeyName,
        version: Option<Version>,
        payload: &Payload,
        signature: &[u8],
    ) -> Result<(Version, bool), EngineError> {
        let v = self.registry.for_reading(name, version)?;
        let scheme = payload.scheme();
        if !v.key_type.supports(scheme) {
            return Err(EngineError::InvalidArgument(format!(
                "scheme {scheme} cannot be used with {} key {name}",
                v.key_type
            )));
        }
        let raw_sig = match scheme {
            Scheme::EcdsaSha256 | Scheme::EcdsaSha384 | Scheme::EcdsaSha512 => {
                let half = if v.key_type == KeyType::EcP384 {
                    48
                } else {
                    32
                };
                match ecdsa_der_to_raw(signature, half) {
                    Ok(raw) => raw,
                    Err(_) => return Ok((v.version, false)),
                }
            }
            _ => signature.to_vec(),
        };
        let p = v
            .partitions
            .iter()
            .map(|i| &self.partitions[*i])
            .find(|p| p.is_healthy())
            .ok_or_else(|| EngineError::Unavailable {
                reason: format!("no healthy partition holds {name} v{}", v.version),
                retry_after: std::time::Duration::from_secs(1),
            })?;
        let hsm = |e| EngineError::Hsm(format!("partition {}: {e}", p.name()));
        let session = p.open_session().map_err(hsm)?;
        let public = objects::find_public(&session, &v.id)
            .map_err(hsm)?
            .ok_or_else(|| EngineError::Hsm(format!("public key missing in {}", p.name())))?;
        let mech = mechanism::mechanism(scheme);
        let input = mechanism::sign_input(payload);
        match session.verify(&mech, public, &input, &raw_sig) {
            Ok(()) => Ok((v.version, true)),
            Err(CkError::Pkcs11(RvError::SignatureInvalid | RvError::SignatureLenRange, _)) => {
                Ok((v.version, false))
            }
            Err(e) => Err(hsm(e.into())),
        }
    }
}
