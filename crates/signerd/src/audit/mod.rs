//! Tamper-evident audit log: every sign, admin op and authorization failure becomes a record in
//! a SHA-256 hash chain of JSON lines; checkpoints over the chain head are signed with a
//! dedicated audit key in the HSM; a signature is released only after its record is durable.
//!
//! - [`AuditLog`] is the handle: [`AuditLog::commit`] (group commit from worker threads),
//!   [`AuditLog::append`] (async, one record), [`AuditLog::close`] (final checkpoint + seal).
//! - [`verify`] checks a log (all its segments) and names the first bad record.
//! - [`archive`] moves older rotated segments to an archive directory; [`verify_with`] checks
//!   the archive and the live log that continues from it.
//! - [`DiskSpace`] watches the free space where the log lives.
//!
//! docs/AUDIT.md specifies the file format for independent verifiers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{self, Sender, TrySendError};
use parking_lot::Mutex;

mod archive;
mod checkpoint;
mod entries;
mod error;
mod parse;
mod record;
mod recover;
mod segments;
mod space;
mod verify;
mod writer;

#[cfg(test)]
pub(crate) mod tests;

pub use archive::{archive, ArchiveReport};
pub use error::{AuditError, BadRecord, VerifyFailure};
pub use record::{sha256, CHECKPOINT_DOMAIN, FORMAT};
pub use space::{available_bytes, DiskSpace};
pub use verify::{verify, verify_with, Anchor, KeyReport, VerifyOptions, VerifyReport};

/// Entry points into the log reader for the fuzz targets in `fuzz/`. Not a supported API: the
/// names and shapes may change with the fuzz targets.
#[doc(hidden)]
pub mod fuzzing {
    use std::path::Path;

    /// Parses one record line (without its newline). `Ok((seq, covers_seq))`, where
    /// `covers_seq` is `Some` for a checkpoint record.
    pub fn parse_record_line(line: &[u8]) -> Result<(u64, Option<u64>), String> {
        let parsed = super::parse::parse_line(line)?;
        let covers = match &parsed.body {
            super::parse::Body::Checkpoint(c) => Some(c.covers_seq),
            _ => None,
        };
        Ok((parsed.seq, covers))
    }

    /// The verifier's cheap first-pass look at a line: a checkpoint's `covers_seq`.
    pub fn peek_covers_seq(line: &[u8]) -> Option<u64> {
        super::parse::covers_seq_of(line)
    }

    /// Tail recovery as done when the log is opened: reads the end of the active file at
    /// `active` (and its segments), cuts a torn last line, and finds the chain head. May
    /// truncate the file.
    pub fn recover_active(active: &Path) -> Result<(), String> {
        super::recover::recover(active)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

use record::{to_hex, Chain, KeyFields};
use writer::{Msg, Writer};

/// How long [`AuditLog::close`] waits for the final checkpoint and seal.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One record, as callers hand it in. Cheap to build: the strings are shared.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    /// When the operation happened.
    pub time: SystemTime,
    /// Who asked (the client certificate identity, or "-" when unauthenticated).
    pub identity: Arc<str>,
    /// "sign", "verify", "public_key", "list_keys", "create_key", "rotate_key", "retire_key",
    /// "destroy_key", "auth", ...
    pub op: &'static str,
    /// Key name, if the op names one.
    pub key: Option<Arc<str>>,
    /// Key version, if known.
    pub version: Option<u32>,
    /// SHA-256 of the signed digest or message (see [`sha256`]).
    pub payload_sha256: Option<[u8; 32]>,
    /// Outcome: "OK", "PERMISSION_DENIED", ...
    pub status: &'static str,
    /// The partition that served it, if any.
    pub partition: Option<Arc<str>>,
    /// Short optional detail (e.g. an error reason). Never secrets.
    pub detail: Option<String>,
}

/// The key that signs checkpoints (a dedicated audit key, not one that serves clients).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointKey {
    /// Key name.
    pub name: String,
    /// Key version.
    pub version: u32,
    /// Its public key as a DER SubjectPublicKeyInfo (ECDSA P-256).
    pub spki_der: Vec<u8>,
}

/// Signs checkpoint digests with the audit key. Called from the audit checkpoint thread only;
/// it may be slow or hang (an HSM) without slowing down the writer.
pub trait CheckpointSigner: Send + 'static {
    /// Signs the 32-byte checkpoint digest; returns an ECDSA P-256 signature, ASN.1 DER.
    fn sign(&mut self, digest: &[u8; 32]) -> Result<Vec<u8>, String>;
    /// Identifies the key: name, version, and its SubjectPublicKeyInfo DER.
    fn key(&self) -> CheckpointKey;
}

/// Default [`AuditConfig::commit_interval`].
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(4);

/// Where the log lives, how often it rotates and checkpoints, and how commits are paced.
#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The active file, e.g. /var/lib/signerd/audit.log. Rotated segments live beside it.
    pub path: PathBuf,
    /// Rotate when the active file reaches this size (default 256 MiB).
    pub rotate_bytes: u64,
    /// Checkpoint at least every this many records (default 10 000)...
    pub checkpoint_records: u64,
    /// ...and at least this often while records arrive (default 1 s).
    pub checkpoint_interval: Duration,
    /// Bounded number of pending batches; `commit` blocks when it is full (default 4096).
    pub queue: usize,
    /// Group-commit pacing: a commit starts at least this long after the previous one started
    /// (default 4 ms), so under load records gather into fewer, larger `fdatasync`s (each costs
    /// a block-device round trip and, in a VM, exits). An idle log commits at once.
    pub commit_interval: Duration,
    /// After a write failed because the disk was full, how often the writer tries to resume
    /// (default 5 s). Other failures are final until restart.
    pub resume_interval: Duration,
}

impl AuditConfig {
    /// The defaults, for the active file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> AuditConfig {
        AuditConfig {
            path: path.into(),
            rotate_bytes: 256 << 20,
            checkpoint_records: 10_000,
            checkpoint_interval: Duration::from_secs(1),
            queue: 4096,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            resume_interval: Duration::from_secs(5),
        }
    }

    fn validate(&self) -> Result<(), AuditError> {
        let bad = |m: &str| Err(AuditError::Config(m.to_string()));
        if segments::file_name(&self.path).is_none() {
            return bad("audit path must end in a UTF-8 file name");
        }
        if self.rotate_bytes < 4096 {
            return bad("rotate_bytes must be at least 4096");
        }
        if self.checkpoint_records == 0 {
            return bad("checkpoint_records must be at least 1");
        }
        if self.checkpoint_interval.is_zero() {
            return bad("checkpoint_interval must be positive");
        }
        if self.queue == 0 {
            return bad("queue must be at least 1");
        }
        if self.resume_interval.is_zero() {
            return bad("resume_interval must be positive");
        }
        Ok(())
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig::new("/var/lib/signerd/audit.log")
    }
}

/// Counters since `open` (all monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Caller entries made durable.
    pub records: u64,
    /// Batches written, each with one `sync_data` (= fsyncs).
    pub batches: u64,
    /// Checkpoint records written.
    pub checkpoints: u64,
    /// Failed writes or syncs (each makes the log unhealthy; see [`AuditLog::healthy`]).
    pub write_failures: u64,
    /// Times the log resumed after a full disk.
    pub resumes: u64,
    /// Checkpoints that could not be signed (retried at the next interval).
    pub checkpoint_failures: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Rotations done.
    pub rotations: u64,
}

/// The `done` callback of [`AuditLog::commit`].
pub type DoneFn = Box<dyn FnOnce(Result<(), AuditError>) + Send>;

/// A cheap, cloneable handle to an open audit log (`Send + Sync`).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The checkpoint thread owns the audit key's HSM session: it must be gone before the
    /// process exits (or the HSM module is finalized), never racing the module's teardown.
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

/// Says whether more records are on their way (e.g. signatures in progress), like
/// PostgreSQL's `commit_siblings`: commit pacing waits only then, so a lone request is never
/// held back for company that is not coming.
pub(crate) struct MoreComing(Box<dyn Fn() -> bool + Send + Sync>);

impl MoreComing {
    pub(crate) fn now(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for MoreComing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MoreComing")
    }
}

/// State shared by the handles and the writer thread.
#[derive(Debug)]
pub(crate) struct Shared {
    healthy: AtomicBool,
    closed: AtomicBool,
    records: AtomicU64,
    batches: AtomicU64,
    checkpoints: AtomicU64,
    write_failures: AtomicU64,
    resumes: AtomicU64,
    checkpoint_failures: AtomicU64,
    bytes: AtomicU64,
    rotations: AtomicU64,
    head: Mutex<Chain>,
    /// Commit pacing waits only while this says more records are on their way.
    more_coming: std::sync::OnceLock<MoreComing>,
    #[cfg(test)]
    fail_writes: AtomicBool,
    #[cfg(test)]
    disk_full: AtomicBool,
    #[cfg(test)]
    hold_writes: AtomicBool,
}

impl AuditLog {
    /// Opens the log at `cfg.path` (creating it, or continuing an existing chain: a torn last
    /// line is cut and noted in the new `start` record; worse corruption is refused), writes
    /// this run's `start` record, and starts the writer and checkpoint threads.
    pub fn open(
        cfg: AuditConfig,
        signer: Box<dyn CheckpointSigner>,
    ) -> Result<AuditLog, AuditError> {
        use base64::Engine as _;
        cfg.validate()?;
        let key = signer.key();
        let vk = checkpoint::verifying_key(&key.spki_der)
            .map_err(|e| AuditError::Config(format!("checkpoint key {}: {e}", key.name)))?;
        let dir = segments::parent(&cfg.path);
        std::fs::create_dir_all(&dir).map_err(|e| AuditError::io(&dir, e))?;
        let guard = OpenGuard::acquire(&cfg.path)?;
        let rec = recover::recover(&cfg.path)?;
        let shared = Arc::new(Shared {
            healthy: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            records: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            write_failures: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
            checkpoint_failures: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            head: Mutex::new(rec.chain.clone()),
            more_coming: std::sync::OnceLock::new(),
            #[cfg(test)]
            fail_writes: AtomicBool::new(false),
            #[cfg(test)]
            disk_full: AtomicBool::new(false),
            #[cfg(test)]
            hold_writes: AtomicBool::new(false),
        });
        let (tx, rx) = channel::bounded(cfg.queue);
        let (cp_req_tx, cp_req_rx) = channel::bounded(1);
        let (cp_out_tx, cp_out_rx) = channel::bounded(1);
        let path = cfg.path.clone();
        let key_fields = KeyFields {
            name: key.name.clone(),
            version: key.version,
            spki_b64: base64::engine::general_purpose::STANDARD.encode(&key.spki_der),
        };
        let writer = Writer::start(
            cfg,
            guard,
            rec,
            key_fields,
            Arc::clone(&shared),
            rx,
            cp_req_tx,
            cp_out_rx,
        )?;
        let spawn_err = |e| AuditError::Config(format!("cannot start audit thread: {e}"));
        let checkpointer =
            checkpoint::spawn(signer, vk, cp_req_rx, cp_out_tx).map_err(spawn_err)?;
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run())
            .map_err(spawn_err)?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx,
                shared,
                writer: Mutex::new(Some(handle)),
                checkpointer: Mutex::new(Some(checkpointer)),
                path,
            }),
        })
    }

    /// Group commit from a plain OS thread: queues `entries` and calls `done` exactly once,
    /// after they are durable (`Ok`) or when they could not be written (`Err`). No I/O happens
    /// on the caller's thread; it blocks only while the bounded queue is full (backpressure).
    ///
    /// `done` normally runs on the audit writer thread and must be quick (send on a channel);
    /// when the log is already closed or unhealthy it runs at once on the caller's thread.
    pub fn commit(
        &self,
        entries: Vec<AuditEntry>,
        done: Box<dyn FnOnce(Result<(), AuditError>) + Send>,
    ) {
        let done = Completion(Some(done));
        if let Some(e) = self.refusal() {
            done.finish(Err(e));
            return;
        }
        // A send error hands the message back; dropping it completes `done` with `Closed`.
        let _ = self.inner.tx.send(Msg::Batch(entries, done));
    }

    /// Queues `entries` if the bounded queue has room now, without waiting; false if it is
    /// full, closed, or the log is unhealthy (nothing queued). For records that must never
    /// hold up others (refusals, server/refusals.rs): the caller counts what was not queued.
    /// A write failure after queueing is logged (the log then refuses everything anyway).
    pub fn try_commit(&self, entries: Vec<AuditEntry>) -> bool {
        if self.refusal().is_some() {
            return false;
        }
        let done = Completion(Some(Box::new(|r: Result<(), AuditError>| {
            if let Err(e) = r {
                tracing::warn!("refusal records not written: {e}");
            }
        })));
        match self.inner.tx.try_send(Msg::Batch(entries, done)) {
            Ok(()) => true,
            Err(
                TrySendError::Full(Msg::Batch(_, done))
                | TrySendError::Disconnected(Msg::Batch(_, done)),
            ) => {
                done.disarm();
                false
            }
            Err(_) => false,
        }
    }

    /// Async convenience for single records (admin ops, auth failures): resolves when the
    /// record is durable. Never blocks the runtime: waits asynchronously while the queue is full.
    pub async fn append(&self, entry: AuditEntry) -> Result<(), AuditError> {
        self.append_all(vec![entry]).await
    }

    /// [`append`](Self::append) for several records, made durable by one group commit (the
    /// denial of a request that carries several coalesced calls: one record per call).
    pub async fn append_all(&self, entries: Vec<AuditEntry>) -> Result<(), AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = Completion(Some(Box::new(move |r: Result<(), AuditError>| {
            let _ = tx.send(r);
        })));
        if let Some(e) = self.refusal() {
            done.finish(Err(e));
        } else {
            let mut msg = Msg::Batch(entries, done);
            loop {
                match self.inner.tx.try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Full(m)) => {
                        msg = m;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(TrySendError::Disconnected(_)) => break,
                }
            }
        }
        rx.await.unwrap_or(Err(AuditError::Closed))
    }

    /// False while the log cannot be written, and after [`close`](Self::close). A write that
    /// found the disk full (ENOSPC, EDQUOT) is cut back off the file, and the writer tries
    /// again every [`AuditConfig::resume_interval`]: once there is room it writes a `start`
    /// record (`restart`, prior `unclean`) that marks the gap, and the log is healthy again.
    /// Any other failure, a failed fsync above all (the page cache cannot be trusted after
    /// one), fails closed until the daemon restarts.
    pub fn healthy(&self) -> bool {
        let s = &self.inner.shared;
        s.healthy.load(Ordering::SeqCst) && !s.closed.load(Ordering::SeqCst)
    }

    /// Tells commit pacing ([`AuditConfig::commit_interval`]) whether more records are on
    /// their way; it then waits for them, else commits at once. Without a hint, pacing always
    /// applies. Set once; later calls are ignored.
    pub fn set_more_coming(&self, hint: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self
            .inner
            .shared
            .more_coming
            .set(MoreComing(Box::new(hint)));
    }

    /// Counters since open.
    pub fn stats(&self) -> AuditStats {
        let s = &self.inner.shared;
        AuditStats {
            records: s.records.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            checkpoints: s.checkpoints.load(Ordering::Relaxed),
            write_failures: s.write_failures.load(Ordering::Relaxed),
            resumes: s.resumes.load(Ordering::Relaxed),
            checkpoint_failures: s.checkpoint_failures.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            rotations: s.rotations.load(Ordering::Relaxed),
        }
    }

    /// The durable head: seq and hex hash of the last record written. Export it (logs,
    /// metrics, another system) to anchor the log against truncation by someone who can also
    /// rewrite the file (see docs/AUDIT.md, trust).
    pub fn head(&self) -> Option<(u64, String)> {
        let c = self.inner.shared.head.lock();
        c.last_seq().map(|s| (s, to_hex(&c.head)))
    }

    /// Flushes everything queued, writes a final signed checkpoint and a seal, and stops the
    /// threads; waits at most [`CLOSE_TIMEOUT`]. If the audit key does not sign in time the
    /// log is left unsealed (and `verify` will say so). Later commits get `Closed`.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Makes the next writes fail, as a full or broken disk would.
    #[cfg(test)]
    pub(crate) fn inject_write_failure(&self) {
        self.inner.shared.fail_writes.store(true, Ordering::SeqCst);
    }

    /// While set, writes fail with ENOSPC before writing anything, as on a full disk.
    #[cfg(test)]
    pub(crate) fn inject_disk_full(&self, full: bool) {
        self.inner.shared.disk_full.store(full, Ordering::SeqCst);
    }

    /// While set, the writer waits before each write (as behind a slow disk), so batches queue.
    #[cfg(test)]
    pub(crate) fn hold_writes(&self, hold: bool) {
        self.inner.shared.hold_writes.store(hold, Ordering::SeqCst);
    }

    fn refusal(&self) -> Option<AuditError> {
        let s = &self.inner.shared;
        if s.closed.load(Ordering::SeqCst) {
            Some(AuditError::Closed)
        } else if !s.healthy.load(Ordering::SeqCst) {
            Some(AuditError::Unhealthy)
        } else {
            None
        }
    }
}

impl Inner {
    fn close(&self) {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        let (reply_tx, reply_rx) = channel::bounded(1);
        let msg = Msg::Close {
            deadline,
            reply: reply_tx,
        };
        let on_writer = self
            .writer
            .lock()
            .as_ref()
            .is_some_and(|h| h.thread().id() == std::thread::current().id());
        if on_writer {
            // Closed from a `done` callback: the writer cannot wait for itself. It seals when
            // it gets to this message.
            let _ = self.tx.try_send(msg);
            return;
        }
        let replied = self.tx.send_deadline(msg, deadline).is_ok()
            && reply_rx
                .recv_deadline(deadline + Duration::from_millis(500))
                .is_ok();
        if replied {
            if let Some(h) = self.writer.lock().take() {
                let _ = h.join();
            }
            // The writer is gone, so the checkpoint thread's request channel is closed: it
            // finishes its current signature (if any), drops the audit key's session and ends.
            // Wait for that, bounded (a hung HSM call is left behind).
            if let Some(h) = self.checkpointer.lock().take() {
                let until = std::time::Instant::now() + CLOSE_TIMEOUT;
                while !h.is_finished() && std::time::Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if h.is_finished() {
                    let _ = h.join();
                } else {
                    tracing::error!("the audit checkpoint thread is stuck in the HSM; leaving it");
                }
            }
        } else {
            tracing::error!(
                path = %self.path.display(),
                "audit writer did not finish closing in time"
            );
        }
    }
}

/// Dropping the last handle closes the log like [`AuditLog::close`] (and may block as long).
impl Drop for Inner {
    fn drop(&mut self) {
        self.close();
    }
}

/// Active files open in this process. Two writers on one file would break the chain; this
/// stops a second `open` in the same process, and the lock file (see [`OpenGuard`]) stops a
/// second process.
static OPEN_LOGS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Registration of an open active file, and an exclusive lock on `<active>.lock` (which holds
/// the owner's pid, for operators); both are released when the writer thread ends, or by the
/// kernel if the process dies.
#[derive(Debug)]
pub(crate) struct OpenGuard {
    key: PathBuf,
    /// Held only for its `flock`, which closing the file releases.
    _lock: std::fs::File,
}

impl OpenGuard {
    fn acquire(active: &std::path::Path) -> Result<OpenGuard, AuditError> {
        use std::io::{Seek, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let dir = segments::parent(active);
        let dir = std::fs::canonicalize(&dir).map_err(|e| AuditError::io(&dir, e))?;
        let key = dir.join(active.file_name().unwrap_or_default());
        let mut open = OPEN_LOGS.lock();
        if open.contains(&key) {
            return Err(AuditError::Config(format!(
                "audit log {} is already open in this process",
                key.display()
            )));
        }
        let mut lock_path = key.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .open(&lock_path)
            .map_err(|e| AuditError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let owner = std::fs::read_to_string(&lock_path).unwrap_or_default();
                let owner = owner.trim();
                return Err(AuditError::InUse {
                    lock: lock_path,
                    holder: if owner.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {owner})")
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(AuditError::io(&lock_path, e)),
        }
        // The pid is a courtesy for the message above; failing to write it changes nothing.
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()));
        open.push(key.clone());
        Ok(OpenGuard { key, _lock: lock })
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        OPEN_LOGS.lock().retain(|p| *p != self.key);
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("healthy", &self.healthy())
            .field("stats", &self.stats())
            .finish()
    }
}

/// A `done` callback that runs exactly once: explicitly, or with `Closed` when dropped unrun
/// (e.g. a batch still queued when the writer stopped).
pub(crate) struct Completion(Option<DoneFn>);

impl Completion {
    /// Forgets the callback without calling it (the records were never queued).
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }

    pub(crate) fn finish(mut self, r: Result<(), AuditError>) {
        if let Some(f) = self.0.take() {
            // A panicking callback must not take the writer thread down with it.
            if catch_unwind(AssertUnwindSafe(|| f(r))).is_err() {
                tracing::error!("audit commit callback panicked");
            }
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            let _ = catch_unwind(AssertUnwindSafe(|| f(Err(AuditError::Closed))));
        }
    }
}
