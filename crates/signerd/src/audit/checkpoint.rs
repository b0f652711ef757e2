//! The checkpoint thread: signs checkpoint digests with the audit key, off the writer thread,
//! because the HSM may be slow or hang. One request at a time; the writer decides when.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;

use crossbeam::channel::{Receiver, Sender};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

use super::record::{checkpoint_digest, SignedCheckpoint};
use super::CheckpointSigner;

/// Sign a checkpoint over (covers_seq, covers_hash).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub covers_seq: u64,
    pub covers_hash: [u8; 32],
    /// The final checkpoint of a clean close.
    pub fin: bool,
}

/// What the checkpoint thread hands back to the writer.
#[derive(Debug)]
pub(crate) enum Outcome {
    Signed(SignedCheckpoint),
    Failed(String),
}

/// The P-256 public key in a SubjectPublicKeyInfo (DER).
pub(crate) fn verifying_key(spki_der: &[u8]) -> Result<VerifyingKey, String> {
    VerifyingKey::from_public_key_der(spki_der)
        .map_err(|e| format!("not a P-256 SubjectPublicKeyInfo: {e}"))
}

/// Checks an ASN.1 DER ECDSA signature over a 32-byte digest.
pub(crate) fn check_signature(
    key: &VerifyingKey,
    digest: &[u8; 32],
    sig_der: &[u8],
) -> Result<(), String> {
    let sig =
        Signature::from_der(sig_der).map_err(|_| "not an ASN.1 DER ECDSA signature".to_string())?;
    key.verify_prehash(digest, &sig)
        .map_err(|_| "signature does not verify".to_string())
}

/// Starts the checkpoint thread. It ends when `requests` is closed or `outcomes` is dropped.
pub(crate) fn spawn(
    mut signer: Box<dyn CheckpointSigner>,
    key: VerifyingKey,
    requests: Receiver<Request>,
    outcomes: Sender<Outcome>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("audit-checkpoint".into())
        .spawn(move || {
            for req in requests.iter() {
                let digest = checkpoint_digest(req.covers_seq, &req.covers_hash, req.fin);
                let signed = catch_unwind(AssertUnwindSafe(|| signer.sign(&digest)))
                    .unwrap_or_else(|_| Err("checkpoint signer panicked".into()));
                let outcome = match signed {
                    Ok(sig_der) => match check_signature(&key, &digest, &sig_der) {
                        Ok(()) => Outcome::Signed(SignedCheckpoint {
                            covers_seq: req.covers_seq,
                            covers_hash: req.covers_hash,
                            fin: req.fin,
                            sig_der,
                        }),
                        Err(e) => {
                            Outcome::Failed(format!("audit key returned a bad signature: {e}"))
                        }
                    },
                    Err(e) => Outcome::Failed(e),
                };
                if outcomes.send(outcome).is_err() {
                    break;
                }
            }
        })
}
