//! Building audit entries: the one place that decides how a request becomes a record (its op
//! text, status name, payload hash, time). Every producer (the workers' completion, the front
//! end's denials and admin ops, the Merkle batcher, the connection handshake) starts from
//! [`AuditEntry::new`] or one of the named constructors below.

use std::sync::Arc;
use std::time::SystemTime;

use signer_proto::{Status, Version};

use super::{sha256, AuditEntry};

/// The status of an intent record ([`AuditEntry::intent`]): not an answer, so not a [`Status`].
pub const STARTED: &str = "started";

impl AuditEntry {
    /// A record of `op` by `identity`, answered `status`, stamped now; the builder methods below
    /// add what the op names.
    pub fn new(op: &'static str, identity: Arc<str>, status: Status) -> AuditEntry {
        AuditEntry {
            time: SystemTime::now(),
            identity,
            op,
            key: None,
            version: None,
            payload_sha256: None,
            status: status.as_str(),
            partition: None,
            detail: None,
        }
    }

    /// The intent to run the administrative op `op` (status `started`), written and made
    /// durable before the op touches the HSM; its outcome is a second record of the same op.
    pub fn intent(op: &'static str, identity: Arc<str>) -> AuditEntry {
        let mut entry = AuditEntry::new(op, identity, Status::Ok);
        entry.status = STARTED;
        entry
    }

    /// A summary of refusals of `op` with `status` by `identity`, counted instead of written one
    /// by one (server/refusals.rs): op `OP.summary`, stamped when the first of them happened.
    pub fn summary(
        op: &'static str,
        identity: Arc<str>,
        status: &'static str,
        first: Option<SystemTime>,
        detail: String,
    ) -> AuditEntry {
        let summary_op = match op {
            "sign" => "sign.summary",
            "sign_batch" => "sign_batch.summary",
            "verify" => "verify.summary",
            "public_key" => "public_key.summary",
            "list_keys" => "list_keys.summary",
            "create_key" => "create_key.summary",
            "rotate_key" => "rotate_key.summary",
            "retire_key" => "retire_key.summary",
            "destroy_key" => "destroy_key.summary",
            "auth" => "auth.summary",
            _ => "refusal.summary",
        };
        let mut entry = AuditEntry::new(summary_op, identity, Status::Ok).detail(Some(detail));
        entry.status = status;
        if let Some(t) = first {
            entry.time = t;
        }
        entry
    }

    /// A connection refused for want of a usable client identity (no identity: `-`).
    pub fn auth_failure(reason: &str) -> AuditEntry {
        AuditEntry::new("auth", Arc::from("-"), Status::Unauthenticated)
            .detail(Some(reason.to_owned()))
    }

    /// The root signature of a Merkle batch tree of `leaves` leaves, signed for the batcher's
    /// `identity` over the root input whose SHA-256 is `root_hash`.
    pub fn batch_root(
        identity: Arc<str>,
        key: Arc<str>,
        version: Version,
        root_hash: [u8; 32],
        leaves: usize,
    ) -> AuditEntry {
        let mut entry = AuditEntry::new("sign", identity, Status::Ok)
            .key(Some(key))
            .version(Some(version))
            .detail(Some(format!("batch root of {leaves} leaves")));
        entry.payload_sha256 = Some(root_hash);
        entry
    }

    /// Sets the time (a group of records written together shares one).
    pub fn at(mut self, time: SystemTime) -> AuditEntry {
        self.time = time;
        self
    }

    /// The key the op names.
    pub fn key(mut self, key: Option<Arc<str>>) -> AuditEntry {
        self.key = key;
        self
    }

    /// The key version, if known.
    pub fn version(mut self, version: Option<Version>) -> AuditEntry {
        self.version = version;
        self
    }

    /// The signed digest or message: recorded as its SHA-256, never itself.
    pub fn payload(mut self, payload: &[u8]) -> AuditEntry {
        self.payload_sha256 = Some(sha256(payload));
        self
    }

    /// The partition that served it.
    pub fn partition(mut self, partition: Option<Arc<str>>) -> AuditEntry {
        self.partition = partition;
        self
    }

    /// A short detail (an error's message, a note). Never secrets.
    pub fn detail(mut self, detail: Option<String>) -> AuditEntry {
        self.detail = detail;
        self
    }
}
