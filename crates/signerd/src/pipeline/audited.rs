//! Completion through the audit log: a worker's finished jobs become audit records, and their
//! answers are released by the audit writer once the records are durable (group commit). If
//! the records cannot be written, the callers get UNAVAILABLE instead of their signatures:
//! signing fails closed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::completion::Completion;
use super::shard::{Job, Reply};
use crate::audit::{AuditEntry, AuditLog};
use crate::error::EngineError;

/// Retry hint when the audit log cannot be written.
const AUDIT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Answers jobs only after their audit records are durable.
#[derive(Clone)]
pub struct Audited {
    log: AuditLog,
    partitions: Arc<[Arc<str>]>,
}

impl std::fmt::Debug for Audited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audited")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Audited {
    /// Records through `log`; `partitions` are the partition names in engine index order.
    pub fn new(log: AuditLog, partitions: Vec<String>) -> Audited {
        Audited {
            log,
            partitions: partitions.into_iter().map(Arc::from).collect(),
        }
    }
}

impl Completion for Audited {
    fn complete(&self, partition: usize, done: &mut Vec<(Job, Reply)>) {
        if done.is_empty() {
            return;
        }
        // Jobs whose caller records them (with its own records, before releasing anything to a
        // client) are handed over now.
        if done.iter().any(|(job, _)| job.caller_records) {
            let mut i = 0;
            while i < done.len() {
                if done[i].0.caller_records {
                    let (job, reply) = done.swap_remove(i);
                    job.answer(reply);
                } else {
                    i += 1;
                }
            }
            if done.is_empty() {
                return;
            }
        }
        let time = SystemTime::now();
        let part = self.partitions.get(partition).cloned();
        let entries: Vec<AuditEntry> = done
            .iter()
            .map(|(job, reply)| sign_entry(job, reply, time, part.clone()))
            .collect();
        let jobs: Vec<(Job, Reply)> =
            std::mem::replace(done, Vec::with_capacity(jobs_capacity(done.len())));
        self.log.commit(
            entries,
            Box::new(move |written| match written {
                Ok(()) => {
                    for (job, reply) in jobs {
                        job.answer(reply);
                    }
                }
                Err(e) => {
                    for (job, _unreleased) in jobs {
                        job.answer(Err(EngineError::Unavailable {
                            reason: format!("audit log cannot be written ({e}); not signing"),
                            retry_after: AUDIT_RETRY_AFTER,
                        }));
                    }
                }
            }),
        );
    }
}

/// The audit record of one finished sign job.
pub fn sign_entry(
    job: &Job,
    reply: &Reply,
    time: SystemTime,
    partition: Option<Arc<str>>,
) -> AuditEntry {
    let (status, detail) = match reply {
        Ok(_) => (signer_proto::Status::Ok, None),
        Err(e) => (e.status(), Some(e.to_string())),
    };
    AuditEntry::new("sign", Arc::clone(&job.identity), status)
        .at(time)
        .key(Some(job.version.name.shared()))
        .version(Some(job.version.version))
        .payload(job.payload.bytes())
        .partition(partition)
        .detail(detail)
}

/// Capacity for the worker's next group: about as large as this one, so it does not regrow.
fn jobs_capacity(last: usize) -> usize {
    last.clamp(8, 256)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Instant;

    use crate::audit::sha256;

    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::ecdsa::{Signature, SigningKey};
    use p256::pkcs8::EncodePublicKey;
    use tokio::sync::oneshot;

    use super::*;
    use crate::audit::{AuditConfig, CheckpointKey, CheckpointSigner};
    use crate::engine::registry::VersionEntry;
    use crate::pipeline::Signed;
    use signer_proto::keys::{KeyName, KeyType, Payload, Scheme};

    struct Soft(SigningKey);

    impl CheckpointSigner for Soft {
        fn sign(&mut self, digest: &[u8; 32]) -> Result<Vec<u8>, String> {
            let sig: Signature = self.0.sign_prehash(digest).map_err(|e| e.to_string())?;
            Ok(sig.to_der().as_bytes().to_vec())
        }
        fn key(&self) -> CheckpointKey {
            let spki = self.0.verifying_key().to_public_key_der().unwrap();
            CheckpointKey {
                name: "audit".into(),
                version: 1,
                spki_der: spki.as_bytes().to_vec(),
            }
        }
    }

    fn job(digest: u8) -> (Job, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        let version = Arc::new(VersionEntry::for_tests(
            KeyName::new("k").unwrap(),
            3,
            KeyType::EcP256,
            vec![1],
        ));
        let job = Job {
            version,
            payload: Payload::new(Scheme::EcdsaSha256, vec![digest; 32].into()).unwrap(),
            deadline: Instant::now() + Duration::from_secs(5),
            enqueued: Instant::now(),
            identity: Arc::from("spiffe://test/app"),
            probe: None,
            retried: false,
            caller_records: false,
            reply: tx,
        };
        (job, rx)
    }

    fn signed() -> Reply {
        Ok(Signed {
            signature: vec![0x30, 0x00],
            version: 3,
            partition: 0,
        })
    }

    #[test]
    fn answers_after_the_record_is_durable_and_fails_closed_when_it_cannot_be() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let log = AuditLog::open(AuditConfig::new(&path), Box::new(Soft(key))).unwrap();
        let audited = Audited::new(log.clone(), vec!["p0".into()]);

        let (a, ra) = job(0xaa);
        let (b, rb) = job(0xbb);
        let mut done = vec![(a, signed()), (b, Err(EngineError::DeadlineExceeded))];
        audited.complete(0, &mut done);
        assert!(done.is_empty(), "every job was handed over");
        assert_eq!(ra.blocking_recv().unwrap(), signed());
        assert_eq!(
            rb.blocking_recv().unwrap(),
            Err(EngineError::DeadlineExceeded)
        );
        // Both answers were released only after their records reached the file, which only
        // its owner can write (and its group read).
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640, "audit file mode {mode:o}");
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &serde_json::Value| r["kind"] == "entry")
            .collect();
        assert_eq!(records.len(), 2);
        let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(records[0]["payload_sha256"], hex(sha256(&[0xaa; 32])));
        assert_eq!(records[0]["status"], "ok");
        assert_eq!(records[0]["identity"], "spiffe://test/app");
        assert_eq!(records[0]["key"], "k");
        assert_eq!(records[0]["version"], 3);
        assert_eq!(records[0]["partition"], "p0");
        assert_eq!(records[1]["status"], "deadline_exceeded");

        // The disk fails: the signature is withheld, the caller gets a retryable UNAVAILABLE.
        log.inject_write_failure();
        let (c, rc) = job(0xcc);
        audited.complete(0, &mut vec![(c, signed())]);
        match rc.blocking_recv().unwrap() {
            Err(EngineError::Unavailable { reason, .. }) => {
                assert!(reason.contains("audit log"), "{reason}")
            }
            other => panic!("a signature was released without its record: {other:?}"),
        }
        assert!(!log.healthy());
        // And so is every later one, without touching the disk again.
        let (d, rd) = job(0xdd);
        audited.complete(0, &mut vec![(d, signed())]);
        assert!(matches!(
            rd.blocking_recv().unwrap(),
            Err(EngineError::Unavailable { .. })
        ));
        assert!(!std::fs::read_to_string(&path)
            .unwrap()
            .contains(&hex(sha256(&[0xcc; 32]))));
        log.close();
    }
}
