//! Completion through the audit log: a worker's finished jobs become audit records, and their
//! answers are released by the audit writer once the records are durable (group commit). If
//! the records cannot be written, the callers get UNAVAILABLE instead of their signatures:
//! signing fails closed.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::completion::Completion;
use super::shard::{Job, Reply};
use crate::audit::{sha256, AuditEntry, AuditLog};
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
        let time = SystemTime::now();
        let part = self.partitions.get(partition).cloned();
        let entries: Vec<AuditEntry> = done
            .iter()
            .map(|(job, reply)| sign_entry(job, reply, time, part.clone()))
            .collect();
        let jobs: Vec<(Job, Reply)> = std::mem::replace(done, Vec::with_capacity(jobs_capacity(done.len())));
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
        Ok(_) => (crate::error::Status::Ok, None),
        Err(e) => (e.status(), Some(e.to_string())),
    };
    AuditEntry {
        time,
        identity: Arc::clone(&job.identity),
        op: "sign",
        key: Some(job.version.name.shared()),
        version: Some(job.version.version),
        payload_sha256: Some(sha256(job.payload.bytes())),
        status: status.as_str(),
        partition,
        detail,
    }
}

/// Capacity for the worker's next group: about as large as this one, so it does not regrow.
fn jobs_capacity(last: usize) -> usize {
    last.clamp(8, 256)
}
