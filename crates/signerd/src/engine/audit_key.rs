//! The audit log's own HSM key: an ECDSA P-256 key that signs audit checkpoints and nothing
//! else. It is an ordinary key in the tokens (so it replicates and survives restarts like any
//! other), but the server refuses every client operation on it except reading its public key.
//!
//! Checkpoints are signed on a session of their own, outside the worker pipeline: the audit log
//! sits behind the workers (a signature is released once its record is durable), so signing a
//! checkpoint through them could wait on itself.

use std::sync::Arc;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;

use super::admin::KeyAdmin;
use super::registry::VersionEntry;
use crate::error::EngineError;
use crate::hsm::objects::KeyRole;
use crate::hsm::{mechanism, objects, HsmError, Partition};
use signer_proto::keys::{KeyName, KeyType, Scheme, Version};

/// Signs 32-byte checkpoint digests with the audit key, failing over between the partitions
/// that hold it. Owned by one thread (it keeps one PKCS#11 session).
pub struct AuditKeySigner {
    partitions: Vec<Arc<Partition>>,
    version: Arc<VersionEntry>,
    /// Which of `version.partitions` to try first.
    current: usize,
    /// The session and key handle there, and the module generation they belong to.
    open: Option<Open>,
}

struct Open {
    session: Session,
    key: ObjectHandle,
    partition: usize,
    generation: u64,
}

impl std::fmt::Debug for AuditKeySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKeySigner")
            .field("key", &self.version.name)
            .field("version", &self.version.version)
            .finish_non_exhaustive()
    }
}

impl AuditKeySigner {
    /// Key name.
    pub fn name(&self) -> &KeyName {
        &self.version.name
    }

    /// Key version.
    pub fn version(&self) -> Version {
        self.version.version
    }

    /// SubjectPublicKeyInfo (DER) of the key.
    pub fn spki_der(&self) -> &[u8] {
        &self.version.spki
    }

    /// ECDSA P-256 signature (ASN.1 DER) over `digest`, made in the HSM. Tries each partition
    /// holding the key once.
    pub fn sign_digest(&mut self, digest: &[u8; 32]) -> Result<Vec<u8>, String> {
        let n = self.version.partitions.len();
        let mut last = String::from("the audit key is on no partition");
        for _ in 0..n {
            match self.try_sign(digest) {
                Ok(sig) => return Ok(sig),
                Err(e) => {
                    let p = self.version.partitions[self.current % n];
                    last = format!("partition {}: {e}", self.partitions[p].name());
                    tracing::warn!("audit checkpoint signing failed on {last}; trying the next");
                    self.close();
                    self.current = (self.current + 1) % n;
                }
            }
        }
        Err(last)
    }

    fn try_sign(&mut self, digest: &[u8; 32]) -> Result<Vec<u8>, HsmError> {
        let p = self.version.partitions[self.current % self.version.partitions.len()];
        let partition = Arc::clone(&self.partitions[p]);
        let module = Arc::clone(partition.module());
        // One unit of HSM work, like a worker's call: no re-initialization while it runs, and
        // a session from before the last one is forgotten (its handle number may now name
        // another thread's session), never used or closed.
        let _calls = module.calls();
        // And never beside an admin op's object writes (or a worker's key copy): SoftHSM2 fails
        // a C_GenerateKeyPair that runs while another thread opens, finds and signs with token
        // objects (CKR_GENERAL_ERROR, softhsm/SoftHSMv2#573; seen three times in the daemon
        // tests, on the first key created after start, beside the first checkpoint). This is
        // the checkpoint thread: waiting for an admin op delays a checkpoint, never a record.
        let _serial = super::admin::ADMIN_LOCK.lock();
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.partition != p || o.generation != module.generation())
        {
            self.close_or_forget();
        }
        if self.open.is_none() {
            let generation = module.generation();
            let session = partition.open_session()?;
            let key = objects::find_private(&session, &self.version.id)?.ok_or_else(|| {
                HsmError::Unexpected(format!(
                    "audit key {} v{} is not in partition {}",
                    self.version.name,
                    self.version.version,
                    partition.name()
                ))
            })?;
            self.open = Some(Open {
                session,
                key,
                partition: p,
                generation,
            });
        }
        let open = self
            .open
            .as_ref()
            .ok_or_else(|| HsmError::Unexpected("audit session missing".into()))?;
        let raw = open.session.sign(&Mechanism::Ecdsa, open.key, digest)?;
        mechanism::encode_signature(Scheme::EcdsaSha256, raw)
    }

    /// Drops the session: closed if it belongs to its module's current generation, else
    /// forgotten. Call with that module's call lock held.
    fn close_or_forget(&mut self) {
        if let Some(open) = self.open.take() {
            if open.generation == self.partitions[open.partition].module().generation() {
                let _ = open.session.close();
            } else {
                std::mem::forget(open.session);
            }
        }
    }

    fn close(&mut self) {
        let Some(p) = self.open.as_ref().map(|o| o.partition) else {
            return;
        };
        let module = Arc::clone(self.partitions[p].module());
        let _calls = module.calls();
        self.close_or_forget();
    }
}

impl Drop for AuditKeySigner {
    fn drop(&mut self) {
        self.close();
    }
}

impl KeyAdmin {
    /// The signer for the audit key `name`, creating the key (ECDSA P-256, on every partition
    /// when replication is on, labelled as an audit key in the token) if it does not exist yet.
    /// Refuses a key of another type, and never adopts a key that is not marked as an audit key
    /// in the token: clients may have signed with it.
    pub fn audit_key_signer(&self, name: &KeyName) -> Result<AuditKeySigner, EngineError> {
        {
            let _work = self.work();
            if self.keys.registry.key(name).is_none() {
                let v = self.create_with_role(name, KeyType::EcP256, None, KeyRole::Audit)?;
                tracing::info!(key = %name, version = v.version, partitions = ?v.partitions, "created the audit key");
            }
        }
        let entry = self
            .keys
            .registry
            .key(name)
            .ok_or_else(|| EngineError::NotFound(format!("audit key {name}")))?;
        if entry.role() != KeyRole::Audit {
            return Err(EngineError::FailedPrecondition(format!(
                "key {name} exists but is not marked as an audit key in the token (its labels \
                 start with {:?}, not {:?}); clients may have signed with it, so it is never \
                 adopted. Set [audit] key to a name that is not in use; signerd creates it",
                objects::LABEL_PREFIX,
                objects::AUDIT_LABEL_PREFIX
            )));
        }
        if entry.key_type != KeyType::EcP256 {
            return Err(EngineError::FailedPrecondition(format!(
                "audit key {name} is a {} key; it must be ec-p256",
                entry.key_type
            )));
        }
        let version = self
            .keys
            .registry
            .for_signing(name, None, Scheme::EcdsaSha256)?;
        Ok(AuditKeySigner {
            partitions: self.keys.partitions.clone(),
            version,
            current: 0,
            open: None,
        })
    }
}

impl crate::audit::CheckpointSigner for AuditKeySigner {
    fn sign(&mut self, digest: &[u8; 32]) -> Result<Vec<u8>, String> {
        self.sign_digest(digest)
    }

    fn key(&self) -> crate::audit::CheckpointKey {
        crate::audit::CheckpointKey {
            name: self.version.name.to_string(),
            version: self.version.version,
            spki_der: self.version.spki.clone(),
        }
    }
}
