//! The writer thread: group commit (everything queued → one write → one `sync_data` → every
//! `done` of the batch), checkpoint scheduling, rotation and the sealing close.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{self, Receiver, Sender};

use super::checkpoint::{Outcome, Request};
use super::record::{
    checkpoint_fields, entry_fields, seal_fields, start_fields, Chain, KeyFields, SignedCheckpoint,
    StartInfo, StartReason,
};
use super::recover::Recovered;
use super::segments::{file_name, parent, segment_path, sync_dir};
use super::{AuditConfig, AuditEntry, AuditError, Completion, OpenGuard, Shared};

/// Stop draining the queue into one batch past this many bytes.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Free space needed before a log that found its disk full resumes: room for several full
/// batches, so that it does not flap between writable and full.
const RESUME_HEADROOM: u64 = 4 * MAX_BATCH_BYTES as u64;

/// A failed commit. `full`: `write` found the disk full (ENOSPC, EDQUOT), so nothing of this
/// batch was acknowledged by `fsync`, and cutting the file back restores a known state. A
/// failed `fsync` is never `full`: after one the page cache cannot be trusted.
struct CommitError {
    err: std::io::Error,
    full: bool,
}

impl CommitError {
    fn at_write(err: std::io::Error) -> Self {
        let full = matches!(
            err.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        );
        CommitError { err, full }
    }

    fn at_sync(err: std::io::Error) -> Self {
        CommitError { err, full: false }
    }
}

/// Messages from the handles to the writer.
pub(crate) enum Msg {
    Batch(Vec<AuditEntry>, Completion),
    Close {
        deadline: Instant,
        reply: Sender<()>,
    },
}

pub(crate) struct Writer {
    cfg: AuditConfig,
    /// Held for the writer's life: this active file is open in this process.
    _guard: OpenGuard,
    dir: PathBuf,
    file: File,
    active_len: u64,
    active_first_seq: u64,
    /// Durable head.
    chain: Chain,
    /// Head including the records serialised into `buf`.
    pending: Chain,
    buf: Vec<u8>,
    completions: Vec<Completion>,
    pending_entries: u64,
    pending_checkpoints: u64,
    pending_covered: Option<u64>,
    pending_last_plain: Option<u64>,
    key: KeyFields,
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
    cp_tx: Sender<Request>,
    cp_rx: Receiver<Outcome>,
    cp_alive: bool,
    cp_in_flight: bool,
    /// covers_seq of the last checkpoint written.
    covered: Option<u64>,
    /// covers_seq of the last checkpoint requested (in flight or written).
    requested: Option<u64>,
    /// Seq of the last durable record that is not a checkpoint (what needs covering).
    last_plain: Option<u64>,
    entries_since_request: u64,
    last_request_at: Instant,
    /// When the last `write` + `sync_data` started (commit pacing).
    last_commit_at: Instant,
    failed: bool,
    /// Failed on a full disk: when to try to resume.
    resume_at: Option<Instant>,
    /// A resume attempt is writing (its failure is not news).
    resuming: bool,
}

impl Writer {
    /// Writes this run's `start` record (synchronously, on the caller's thread) and returns the
    /// writer, ready to run.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: AuditConfig,
        guard: OpenGuard,
        rec: Recovered,
        key: KeyFields,
        shared: Arc<Shared>,
        rx: Receiver<Msg>,
        cp_tx: Sender<Request>,
        cp_rx: Receiver<Outcome>,
    ) -> Result<Writer, AuditError> {
        let first_seq = rec.active_first_seq.unwrap_or(rec.chain.next_seq);
        let mut w = Writer {
            dir: parent(&cfg.path),
            cfg,
            _guard: guard,
            file: rec.file,
            active_len: rec.active_len,
            active_first_seq: first_seq,
            pending: rec.chain.clone(),
            chain: rec.chain,
            buf: Vec::with_capacity(64 * 1024),
            completions: Vec::new(),
            pending_entries: 0,
            pending_checkpoints: 0,
            pending_covered: None,
            pending_last_plain: None,
            key,
            shared,
            rx,
            cp_tx,
            cp_rx,
            cp_alive: true,
            cp_in_flight: false,
            covered: None,
            requested: None,
            last_plain: None,
            entries_since_request: 0,
            last_request_at: Instant::now(),
            last_commit_at: Instant::now(),
            failed: false,
            resume_at: None,
            resuming: false,
        };
        let start = rec.start;
        let seq = w
            .pending
            .push(&mut w.buf, |f| start_fields(f, &start, SystemTime::now()));
        w.pending_last_plain = Some(seq);
        w.flush();
        if w.failed {
            return Err(AuditError::Write(format!(
                "cannot write the start record to {}",
                w.cfg.path.display()
            )));
        }
        sync_dir(&w.dir).map_err(|e| AuditError::io(&w.dir, e))?;
        Ok(w)
    }

    /// The thread body. Returns after a close (or when every handle is gone).
    pub fn run(mut self) {
        let never = channel::never();
        loop {
            let cp_rx = if self.cp_alive { &self.cp_rx } else { &never };
            let mut close = None;
            crossbeam::select! {
                recv(self.rx) -> m => match m {
                    Ok(m) => self.take(m, &mut close),
                    Err(_) => close = Some(self.implicit_close()),
                },
                recv(cp_rx) -> r => match r {
                    Ok(r) => self.on_checkpoint(r),
                    Err(_) => self.checkpoint_thread_gone(),
                },
                default(self.idle_timeout()) => {}
            }
            self.gather(&close);
            while close.is_none() && self.buf.len() < MAX_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(m) => self.take(m, &mut close),
                    Err(channel::TryRecvError::Empty) => break,
                    Err(channel::TryRecvError::Disconnected) => {
                        close = Some(self.implicit_close());
                    }
                }
            }
            if self.cp_alive {
                if let Ok(r) = self.cp_rx.try_recv() {
                    self.on_checkpoint(r);
                }
            }
            self.flush();
            if let Some((deadline, reply)) = close {
                self.close(deadline);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                return;
            }
            self.maybe_resume(Instant::now());
            self.maybe_rotate();
            self.maybe_checkpoint(Instant::now());
        }
    }

    /// Commit pacing: while the previous commit started less than `commit_interval` ago and
    /// more records are on their way, wait for the rest of the interval before committing, so
    /// a loaded log makes at most one `sync_data` per interval. Nothing waits when the log was
    /// idle, when nothing else is coming, or once a close has arrived.
    fn gather(&self, close: &Option<(Instant, Option<Sender<()>>)>) {
        if self.completions.is_empty() && self.buf.is_empty() {
            return;
        }
        if let Some(hint) = self.shared.more_coming.get() {
            if !hint.now() {
                return;
            }
        }
        // Sleep until the interval is over, then take everything that arrived (the caller
        // drains the queue): no wake-up per arriving batch. The queue is bounded, and handles
        // block when it is full, so nothing is lost while the writer sleeps.
        let until = self.last_commit_at + self.cfg.commit_interval;
        let now = Instant::now();
        if now < until && close.is_none() {
            std::thread::sleep(until - now);
        }
    }

    fn implicit_close(&self) -> (Instant, Option<Sender<()>>) {
        (Instant::now() + super::CLOSE_TIMEOUT, None)
    }

    fn take(&mut self, m: Msg, close: &mut Option<(Instant, Option<Sender<()>>)>) {
        match m {
            Msg::Batch(entries, done) => {
                if self.failed {
                    done.finish(Err(AuditError::Unhealthy));
                    return;
                }
                for e in &entries {
                    let seq = self.pending.push(&mut self.buf, |f| entry_fields(f, e));
                    self.pending_last_plain = Some(seq);
                }
                self.pending_entries += entries.len() as u64;
                self.completions.push(done);
            }
            Msg::Close { deadline, reply } => *close = Some((deadline, Some(reply))),
        }
    }

    fn on_checkpoint(&mut self, r: Outcome) {
        self.cp_in_flight = false;
        match r {
            Outcome::Signed(cp) => {
                if !self.failed {
                    self.push_checkpoint(&cp);
                }
            }
            Outcome::Failed(reason) => {
                self.shared
                    .checkpoint_failures
                    .fetch_add(1, Ordering::Relaxed);
                self.requested = self.covered;
                tracing::warn!(%reason, "audit checkpoint signing failed; retrying at the next interval");
            }
        }
    }

    fn checkpoint_thread_gone(&mut self) {
        self.cp_alive = false;
        self.cp_in_flight = false;
        self.shared
            .checkpoint_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!("audit checkpoint thread ended; no more checkpoints until restart");
    }

    fn push_checkpoint(&mut self, cp: &SignedCheckpoint) {
        let key = &self.key;
        self.pending.push(&mut self.buf, |f| {
            checkpoint_fields(f, cp, key, SystemTime::now())
        });
        self.pending_checkpoints += 1;
        self.pending_covered = Some(cp.covers_seq);
    }

    /// Writes and syncs everything serialised so far, then completes the batch.
    fn flush(&mut self) {
        if self.buf.is_empty() {
            for done in self.completions.drain(..) {
                done.finish(Ok(()));
            }
            return;
        }
        self.last_commit_at = Instant::now();
        let result = self.write_and_sync();
        let s = &self.shared;
        match result {
            Ok(()) => {
                let n = self.buf.len() as u64;
                self.active_len += n;
                self.chain = self.pending.clone();
                *s.head.lock() = self.chain.clone();
                s.bytes.fetch_add(n, Ordering::Relaxed);
                s.batches.fetch_add(1, Ordering::Relaxed);
                s.records.fetch_add(self.pending_entries, Ordering::Relaxed);
                s.checkpoints
                    .fetch_add(self.pending_checkpoints, Ordering::Relaxed);
                self.entries_since_request += self.pending_entries;
                if let Some(c) = self.pending_covered.take() {
                    self.covered = Some(c);
                }
                if let Some(p) = self.pending_last_plain.take() {
                    self.last_plain = Some(p);
                }
                for done in self.completions.drain(..) {
                    done.finish(Ok(()));
                }
            }
            Err(e) => {
                let reason = format!("{}: {}", self.cfg.path.display(), e.err);
                // Cut what may have reached the file, so records whose callers were told
                // "failed" do not show up later. Resuming needs this to have worked.
                let cut = self.file.set_len(self.active_len).is_ok();
                self.fail(&reason, e.full && cut);
                for done in self.completions.drain(..) {
                    done.finish(Err(AuditError::Write(reason.clone())));
                }
            }
        }
        self.buf.clear();
        self.pending_entries = 0;
        self.pending_checkpoints = 0;
        self.pending_covered = None;
        self.pending_last_plain = None;
    }

    fn write_and_sync(&mut self) -> Result<(), CommitError> {
        #[cfg(test)]
        while self.shared.hold_writes.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        #[cfg(test)]
        if self.shared.fail_writes.load(Ordering::Relaxed) {
            return Err(CommitError::at_write(std::io::Error::other(
                "injected write failure",
            )));
        }
        #[cfg(test)]
        if self.shared.disk_full.load(Ordering::Relaxed) {
            return Err(CommitError::at_write(rustix::io::Errno::NOSPC.into()));
        }
        self.file
            .write_all(&self.buf)
            .map_err(CommitError::at_write)?;
        self.file.sync_data().map_err(CommitError::at_sync)
    }

    /// Fail closed: every batch gets an error from now on. Until the process restarts, unless
    /// `resumable` (a full disk, cut back cleanly): then [`Writer::maybe_resume`] tries again.
    fn fail(&mut self, reason: &str, resumable: bool) {
        self.failed = true;
        self.pending = self.chain.clone();
        self.shared.healthy.store(false, Ordering::SeqCst);
        self.shared.write_failures.fetch_add(1, Ordering::Relaxed);
        self.resume_at = resumable.then(|| Instant::now() + self.cfg.resume_interval);
        if self.resuming && resumable {
            tracing::debug!(%reason, "audit log: the disk is still full");
        } else if resumable {
            tracing::error!(
                %reason,
                retry_s = self.cfg.resume_interval.as_secs_f64(),
                "audit log write failed: the disk is full; signing fails closed until there is \
                 room (free space, archive rotated segments), then resumes by itself"
            );
        } else {
            tracing::error!(%reason, "audit log write failed; signing fails closed until restart");
        }
    }

    /// After a full disk: once `resume_interval` has passed and the disk has room again,
    /// writes a `start` record (`restart`, prior unclean) that marks the gap and makes the log
    /// healthy again. Every caller of the gap was answered with an error; none of their records
    /// is in the log.
    fn maybe_resume(&mut self, now: Instant) {
        match self.resume_at {
            Some(at) if self.failed && now >= at => {}
            _ => return,
        }
        let room = super::space::available_bytes(&self.dir).is_ok_and(|b| b >= RESUME_HEADROOM);
        if !room {
            self.resume_at = Some(now + self.cfg.resume_interval);
            return;
        }
        let start = StartInfo {
            reason: StartReason::Restart,
            prev_file: None,
            prior_sealed: Some(false),
            dropped: None,
        };
        let seq = self.pending.push(&mut self.buf, |f| {
            start_fields(f, &start, SystemTime::now())
        });
        self.pending_last_plain = Some(seq);
        self.failed = false;
        self.resume_at = None;
        self.resuming = true;
        self.flush();
        self.resuming = false;
        if !self.failed {
            self.shared.healthy.store(true, Ordering::SeqCst);
            self.shared.resumes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                path = %self.cfg.path.display(),
                seq,
                "audit log writable again: resumed with a restart record; signing resumes"
            );
        }
    }

    fn maybe_rotate(&mut self) {
        if self.failed || self.active_len < self.cfg.rotate_bytes {
            return;
        }
        if let Err(e) = self.rotate() {
            let reason = format!("rotating {}: {e}", self.cfg.path.display());
            self.fail(&reason, false);
        }
    }

    /// Renames the active file to its segment name and starts a new active file whose `start`
    /// record continues the chain and names the segment.
    fn rotate(&mut self) -> std::io::Result<()> {
        let seg = segment_path(&self.cfg.path, self.active_first_seq);
        if seg.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} already exists", seg.display()),
            ));
        }
        std::fs::rename(&self.cfg.path, &seg)?;
        sync_dir(&self.dir)?;
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(super::recover::FILE_MODE)
            .open(&self.cfg.path)?;
        let start = StartInfo {
            reason: StartReason::Rotate,
            prev_file: file_name(&seg).map(str::to_owned),
            prior_sealed: None,
            dropped: None,
        };
        let mut buf = Vec::new();
        let mut chain = self.chain.clone();
        let seq = chain.push(&mut buf, |f| start_fields(f, &start, SystemTime::now()));
        file.write_all(&buf)?;
        file.sync_data()?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.chain = chain.clone();
        self.pending = chain;
        *self.shared.head.lock() = self.chain.clone();
        self.active_first_seq = seq;
        self.active_len = buf.len() as u64;
        self.last_plain = Some(seq);
        let s = &self.shared;
        s.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.rotations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How long to wait for work before looking at the checkpoint schedule again.
    fn idle_timeout(&self) -> Duration {
        let now = Instant::now();
        let checkpoint = if self.needs_checkpoint() && !self.cp_in_flight {
            (self.last_request_at + self.cfg.checkpoint_interval).saturating_duration_since(now)
        } else {
            self.cfg.checkpoint_interval
        };
        match self.resume_at {
            Some(at) => checkpoint.min(at.saturating_duration_since(now)),
            None => checkpoint,
        }
    }

    fn needs_checkpoint(&self) -> bool {
        match (self.last_plain, self.requested) {
            (Some(p), Some(r)) => p > r,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn maybe_checkpoint(&mut self, now: Instant) {
        if self.failed || !self.cp_alive || self.cp_in_flight || !self.needs_checkpoint() {
            return;
        }
        let due = self.entries_since_request >= self.cfg.checkpoint_records
            || now >= self.last_request_at + self.cfg.checkpoint_interval;
        if due {
            self.request_checkpoint(false, now);
        }
    }

    fn request_checkpoint(&mut self, fin: bool, now: Instant) -> bool {
        let Some(covers_seq) = self.chain.last_seq() else {
            return false;
        };
        let req = Request {
            covers_seq,
            covers_hash: self.chain.head,
            fin,
        };
        match self.cp_tx.try_send(req) {
            Ok(()) => {
                self.cp_in_flight = true;
                self.requested = Some(covers_seq);
                self.entries_since_request = 0;
                self.last_request_at = now;
                true
            }
            Err(_) => false,
        }
    }

    /// Clean close: everything queued before the close is written, then (within `deadline`) a
    /// final checkpoint over the head and a seal. Whatever arrives later fails with `Closed`.
    fn close(&mut self, deadline: Instant) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let sealed = !self.failed && self.cp_alive && self.seal(deadline);
        if !sealed && !self.failed {
            tracing::error!(
                "audit log closed WITHOUT a final checkpoint and seal (checkpoint signer failed or \
                 did not answer in time); `audit verify` will report the log as open"
            );
        }
        while let Ok(m) = self.rx.try_recv() {
            match m {
                Msg::Batch(_, done) => done.finish(Err(AuditError::Closed)),
                Msg::Close { reply, .. } => {
                    let _ = reply.send(());
                }
            }
        }
    }

    fn seal(&mut self, deadline: Instant) -> bool {
        if self.cp_in_flight {
            match self.cp_rx.recv_deadline(deadline) {
                Ok(r) => self.on_checkpoint(r),
                Err(_) => return false,
            }
            self.flush();
            if self.failed {
                return false;
            }
        }
        if !self.request_checkpoint(true, Instant::now()) {
            return false;
        }
        match self.cp_rx.recv_deadline(deadline) {
            Ok(Outcome::Signed(cp)) => {
                self.cp_in_flight = false;
                self.push_checkpoint(&cp);
                self.pending.push(&mut self.buf, seal_fields);
                self.flush();
                !self.failed
            }
            Ok(r @ Outcome::Failed(_)) => {
                self.on_checkpoint(r);
                false
            }
            Err(_) => false,
        }
    }
}
