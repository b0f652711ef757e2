//! A worker thread: owns ONE PKCS#11 session on ONE partition, drains its shard in batches without
//! waiting, signs each job and answers it through its own oneshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::sync::Parker;
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState};

use super::classify::{self, Answer, Retry};
use super::completion::Completion;
use super::gate::{Gate, RetryBudget};
use super::router::Purpose;
use super::shard::{Job, Reply, Shard, Signed};
use crate::control::breaker::Outcome;
use crate::engine::registry::VersionEntry;
use crate::error::EngineError;
use crate::hsm::{mechanism, objects, ErrorClass, HsmError, Partition};
use crate::telemetry::Metrics;
use signer_proto::keys::KeyState;

/// Longest a worker sleeps before re-checking for work and shutdown (a safety net; pushes wake it).
const IDLE_PARK: Duration = Duration::from_millis(100);
/// Answers are handed back in groups of up to this many, or sooner when the oldest held answer
/// has waited [`ANSWER_HOLD`], and always at the end of a batch. Each answer may wake the
/// caller's runtime thread; on a machine with few cores those wake-ups preempt the signing
/// threads (measured on 2 cores: engine/raw ~76% answering one by one, ~87% in groups of 8,
/// ~88-90% in groups of 32; tuning/RESULTS.md). The hold only applies while a batch is being
/// worked through: at low load batches hold one request and it is answered at once; and only
/// while the next call would end within the hold (a 1 ms call holds an answer at most one more
/// call, a slower one not at all).
const ANSWER_GROUP: usize = 64;
/// Longest an answer is held back for grouping.
const ANSWER_HOLD: Duration = Duration::from_millis(2);
/// Retry hint when the HSM is busy or the partition failed.
const HSM_RETRY_AFTER: Duration = Duration::from_millis(250);
/// How long a worker waits for an HSM permit before looking again (only while the adaptive
/// limit is below the partition's workers; permit holders take its queued jobs meanwhile).
const PERMIT_WAIT: Duration = Duration::from_micros(500);
/// A busy answer is retried only if the job has at least this long left before its deadline.
const RETRY_MIN_REMAINING: Duration = Duration::from_millis(5);

/// What all workers of one engine share.
#[derive(Debug)]
pub struct Crew {
    /// Every shard, indexed by worker.
    pub shards: Arc<[Shard]>,
    /// Set at shutdown: finish the queue, then exit.
    pub stop: Arc<AtomicBool>,
    /// Most jobs taken per wake-up.
    pub max_drain: usize,
    /// Prometheus instruments (no-ops unless a recorder was installed before the engine opened).
    pub metrics: Metrics,
    /// One circuit breaker per partition; workers report every HSM call's outcome.
    pub breakers: Arc<super::breakers::Breakers>,
    /// Which shard serves a job: submit, retry, evacuation and probes all ask it.
    pub router: super::router::Router,
    /// Per partition (by index): permits for HSM calls, sized by the adaptive limiter.
    pub gates: Vec<Gate>,
    /// Engine-wide budget for retrying busy answers.
    pub retry_budget: RetryBudget,
    /// Where finished jobs go (fixed when the engine starts: [`super::Direct`], or the audit
    /// log).
    pub completion: Arc<dyn Completion>,
}

/// Everything a worker thread owns.
pub struct Worker {
    partition: Arc<Partition>,
    crew: Arc<Crew>,
    shards: Arc<[Shard]>,
    me: usize,
    siblings: Vec<usize>,
    max_drain: usize,
    stop: Arc<AtomicBool>,
    parker: Parker,
    /// The shard generation this worker owns; when the watchdog moves the shard on, it exits.
    generation: u64,
    session: Option<Session>,
    /// How long the last `C_Sign` took (for the breaker's slow-call rule).
    last_call: Duration,
    /// Calls in flight on the partition when the current call got its permit (itself included).
    entered_with: usize,
    /// The last job's HSM answer said it was not signed for a reason another attempt may not
    /// meet (busy/throttled, or the device failed).
    last_retry: Retry,
    /// The module generation `session` was opened in.
    session_generation: u64,
    /// Key version uid → handle usable in `session` (a session-object copy when configured).
    handles: HashMap<u64, ObjectHandle>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("partition", &self.partition.name())
            .field("shard", &self.me)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for shard `me` (owning its `generation`), with a session opened on its partition
    /// (or `None`: it opens one for its first job). `siblings` are the other shards of the same
    /// partition, from which an idle worker takes work.
    pub fn new(
        partition: Arc<Partition>,
        crew: Arc<Crew>,
        me: usize,
        siblings: Vec<usize>,
        parker: Parker,
        generation: u64,
        session: Option<Session>,
    ) -> Worker {
        let session_generation = partition.module().generation();
        Worker {
            partition,
            shards: Arc::clone(&crew.shards),
            max_drain: crew.max_drain,
            stop: Arc::clone(&crew.stop),
            crew,
            me,
            siblings,
            parker,
            generation,
            session,
            last_call: Duration::ZERO,
            entered_with: 1,
            last_retry: Retry::No,
            session_generation,
            handles: HashMap::new(),
        }
    }

    /// The thread body. Takes jobs one at a time (from its own queue, else from the busiest
    /// sibling), so that a worker stuck in a hung HSM call holds exactly one job: the watchdog
    /// hands the rest of the shard to a replacement. Returns when stopped and the shard is empty
    /// (then closes the session), or when the watchdog replaced it.
    pub fn run(mut self) {
        let mut done: Vec<(Job, Reply)> = Vec::with_capacity(ANSWER_GROUP);
        let mut oldest_held = Instant::now();
        loop {
            let mut taken = 0;
            let mut gated = false;
            // One clock read per job: each job starts when the previous one finished.
            let mut now = Instant::now();
            let crew = Arc::clone(&self.crew);
            let gate = &crew.gates[self.partition.index()];
            let max_drain = gate.drain_size(self.shards[self.me].queued(), self.max_drain);
            while taken < max_drain {
                let Some(inflight) = gate.try_enter() else {
                    gated = true;
                    break;
                };
                let Some(mut job) = self.next_job() else {
                    gate.leave();
                    break;
                };
                self.entered_with = inflight;
                taken += 1;
                let shard = &self.shards[self.me];
                let began = now;
                self.crew
                    .metrics
                    .queue_wait(began.saturating_duration_since(job.enqueued));
                shard.set_in_hand(1);
                let token = shard.enter_call(began);
                let reply = self.process(&mut job, began);
                now = Instant::now();
                let shard = &self.shards[self.me];
                if shard.generation() != self.generation {
                    // Quarantined during the call: the shard has a new worker. Answer (the
                    // caller has most likely been answered at its deadline already) and go.
                    done.push((job, reply));
                    self.complete(&mut done);
                    self.quarantined_exit();
                    return;
                }
                if shard.leave_call(token) {
                    gate.leave();
                }
                shard.set_in_hand(0);
                shard.record_service(now - began);
                // Not signed because the HSM was busy (scenario 6) or the device failed (2, 11):
                // retried once within the engine's retry budget, on another partition in
                // rotation holding the key (a busy answer may also be retried here; a device
                // failure only elsewhere). Otherwise the caller gets UNAVAILABLE.
                let retry = std::mem::replace(&mut self.last_retry, Retry::No);
                if retry != Retry::No
                    && !job.retried
                    && job.deadline.saturating_duration_since(now) >= RETRY_MIN_REMAINING
                {
                    let target = match (self.elsewhere(&job), retry) {
                        (Some(t), _) => Some(t),
                        (None, Retry::Busy) => Some(self.me),
                        (None, _) => None,
                    };
                    if let Some(target) = target {
                        if self.crew.retry_budget.try_spend() {
                            job.retried = true;
                            job.probe = None; // the breaker already heard this probe's answer
                            self.crew.metrics.hsm_retry(self.partition.index());
                            match self.crew.router.hand_over(job, target) {
                                Ok(()) => continue,
                                Err(back) => job = back,
                            }
                        }
                    }
                }
                // A breaker probe that found the partition still failing: the caller should not
                // pay for the probe. Hand the job to a healthy partition holding the key.
                if job.probe.take().is_some()
                    && matches!(reply, Err(EngineError::Unavailable { .. }))
                    && now < job.deadline
                {
                    if let Some(t) = self.elsewhere(&job) {
                        match self.crew.router.hand_over(job, t) {
                            Ok(()) => continue,
                            Err(back) => job = back,
                        }
                    }
                }
                if done.is_empty() {
                    oldest_held = now;
                }
                done.push((job, reply));
                // Held for grouping only while the next call (taken to last as long as this one)
                // would still end within the hold: with a slow HSM (a network HSM's
                // milliseconds, or worse) every answer goes at once instead of waiting for the
                // next job's call to finish.
                let call = now.saturating_duration_since(began);
                if done.len() >= ANSWER_GROUP
                    || now.saturating_duration_since(oldest_held) + call >= ANSWER_HOLD
                {
                    self.complete(&mut done);
                }
            }
            self.complete(&mut done);
            if taken > 0 {
                self.crew.metrics.batch(taken);
                continue;
            }
            if gated {
                // Every permit of the partition is taken: wait for one, without sleeping through
                // shutdown or a replacement.
                self.parker.park_timeout(PERMIT_WAIT);
                if self.shards[self.me].generation() != self.generation {
                    return;
                }
                if !self.stop.load(Ordering::SeqCst) || self.shards[self.me].queued() > 0 {
                    continue;
                }
            }
            let shard = &self.shards[self.me];
            if self.stop.load(Ordering::SeqCst) {
                if shard.queued() == 0 {
                    break;
                }
                continue;
            }
            if shard.prepare_sleep() {
                let slept_from = Instant::now();
                self.parker.park_timeout(IDLE_PARK);
                shard.note_idle(slept_from.elapsed());
            }
            shard.woke();
            if self.shards[self.me].generation() != self.generation {
                return; // replaced while idle (cannot normally happen; be safe)
            }
        }
        let module = Arc::clone(self.partition.module());
        let _calls = module.calls();
        self.discard_session();
    }

    /// Drops the session and its key handles: closed if it belongs to the module's current
    /// generation, else forgotten (after a module re-initialization its handle number may name
    /// another worker's new session, so it must never be used, not even to close it). Call with
    /// the module's call lock held.
    fn discard_session(&mut self) {
        self.handles.clear();
        if let Some(s) = self.session.take() {
            if self.session_generation == self.partition.module().generation() {
                if let Err(e) = s.close() {
                    tracing::debug!(partition = %self.partition.name(), "closing session: {e}");
                }
            } else {
                std::mem::forget(s);
            }
        }
    }

    fn complete(&self, done: &mut Vec<(Job, Reply)>) {
        self.crew.completion.complete(self.partition.index(), done);
    }

    /// Another partition's shard for a job this partition could not sign (the router's rule:
    /// in rotation, primary before secondary, least loaded).
    fn elsewhere(&self, job: &Job) -> Option<usize> {
        let pick = self.crew.router.pick(
            &job.version,
            Some(self.partition.index()),
            Purpose::Retry,
            Instant::now(),
        )?;
        Some(pick.shard)
    }

    /// The next job: from this worker's queue, else one from the busiest sibling shard on the
    /// same partition.
    fn next_job(&self) -> Option<Job> {
        if let Some(job) = self.shards[self.me].pop() {
            return Some(job);
        }
        self.siblings
            .iter()
            .copied()
            .filter(|s| self.shards[*s].queued() > 0)
            .max_by_key(|s| self.shards[*s].queued())
            .and_then(|s| self.shards[s].pop())
    }

    /// A quarantined worker whose hung call finally returned: drop the session (it may be in a
    /// bad state) and free the slot the watchdog counted.
    fn quarantined_exit(&mut self) {
        tracing::warn!(
            partition = %self.partition.name(),
            shard = self.me,
            "a quarantined worker's HSM call returned; the worker exits"
        );
        let module = Arc::clone(self.partition.module());
        let _calls = module.calls();
        self.discard_session();
        self.partition.stuck_returned();
    }

    fn process(&mut self, job: &mut Job, now: Instant) -> Reply {
        let p = self.partition.index();
        if job.reply.is_closed() {
            // Nobody waits for this answer any more: the caller was already answered (deadline,
            // or UNAVAILABLE at the end of a shutdown's grace period) and may retry. Signing now
            // would make a signature the caller was told was not made.
            return Err(EngineError::Unavailable {
                reason: "the caller stopped waiting; not signed".into(),
                retry_after: HSM_RETRY_AFTER,
            });
        }
        if now >= job.deadline {
            return Err(EngineError::DeadlineExceeded);
        }
        // No re-initialization of the module while this call runs; sessions from before the
        // last one are dead (and their handle numbers may have been reused): start afresh.
        let module = Arc::clone(self.partition.module());
        let calls = module.calls();
        if self.session.is_some() && self.session_generation != module.generation() {
            tracing::info!(partition = %self.partition.name(), shard = self.me, "the module was re-initialized; opening a new session");
            self.discard_session();
            self.partition.count_rebuild();
            self.crew.metrics.session_rebuild(self.partition.index());
        }
        let version = Arc::clone(&job.version);
        if version.state() != KeyState::Active {
            // Its session copy, if any, was destroyed by the retire (`KeyAdmin`), which found
            // every worker's copies: forget the handle, never use it again (not even to destroy
            // it: its number may name another object now).
            self.handles.remove(&version.uid);
            return Err(EngineError::FailedPrecondition(format!(
                "{} version {} is retired and cannot sign",
                version.name, version.version
            )));
        }
        let signed = self.sign_with_recovery(&version, job);
        drop(calls);
        let gate = &self.crew.gates[p];
        // The one classification of a failed call: retry, breaker outcome and answer.
        let handling = signed.as_ref().err().map(|e| classify::handling(e.class()));
        match handling {
            None => gate.on_sample(Instant::now(), self.last_call, self.entered_with),
            Some(h) => {
                self.last_retry = h.retry;
                if h.breaker == Outcome::Busy {
                    gate.on_busy(Instant::now());
                }
            }
        }
        if !job.retried {
            self.crew.retry_budget.deposit();
        }
        let outcome = handling.map_or(
            Outcome::Success {
                took: self.last_call,
            },
            |h| h.breaker,
        );
        // A probe ticket is only ever this partition's (the router drops it when a job moves).
        match job.probe.as_mut().filter(|t| t.partition() == p) {
            Some(ticket) => self
                .crew
                .breakers
                .record_probe(ticket, Instant::now(), outcome),
            None => self.crew.breakers.record(p, Instant::now(), outcome),
        }
        match signed {
            Ok(raw) => match mechanism::encode_signature(job.payload.scheme(), raw) {
                Ok(signature) => {
                    self.partition.count_signed();
                    Ok(Signed {
                        signature,
                        version: version.version,
                        partition: p,
                    })
                }
                Err(e) => Err(EngineError::Hsm(e.to_string())),
            },
            Err(e) => Err(self.to_engine_error(e)),
        }
    }

    /// Signs once; on session loss, lost login or a stale handle, repairs and retries once.
    fn sign_with_recovery(
        &mut self,
        version: &VersionEntry,
        job: &Job,
    ) -> Result<Vec<u8>, HsmError> {
        let mech = mechanism::mechanism(job.payload.scheme());
        let input = mechanism::sign_input(&job.payload);
        let mut repaired = false;
        loop {
            if self.session.is_none() {
                self.open_session()?;
            }
            let login_epoch = self.partition.login_epoch();
            let attempt = self
                .key_handle(version)
                .and_then(|h| {
                    self.partition.count_hsm_call();
                    let session = self.session.as_ref().ok_or_else(no_session)?;
                    let called = Instant::now();
                    let signed = session.sign(&mech, h, &input).map_err(HsmError::from);
                    let took = called.elapsed();
                    self.crew.metrics.hsm_call(self.partition.index(), took);
                    Ok((signed, took))
                })
                .and_then(|(signed, took)| {
                    self.last_call = took;
                    signed
                });
            let err = match attempt {
                Ok(raw) => return Ok(raw),
                Err(e) => e,
            };
            if repaired {
                return Err(err);
            }
            repaired = true;
            match err.class() {
                ErrorClass::SessionLost => self.rebuild_session(&err)?,
                ErrorClass::NotLoggedIn => {
                    // The token's answer wins over the session state, which may still say
                    // "logged in" (and then `ensure_logged_in` below would not log in). Logged
                    // by the partition, which knows whether this worker is the one logging in.
                    self.partition.relogin(login_epoch)?;
                    // Session objects made while logged in (key copies) may be gone with it.
                    self.handles.clear();
                }
                ErrorClass::StaleHandle => {
                    tracing::info!(partition = %self.partition.name(), "stale key handle; finding the key again by id");
                    self.handles.remove(&version.uid);
                }
                _ => return Err(err),
            }
            // Whatever was lost, the retry must not fail merely because the token forgot our
            // login (a closed last session or an HSM idle timeout logs the token out).
            self.ensure_logged_in()?;
        }
    }

    /// Logs the token in again (serialized, once for all workers) if this session is public.
    fn ensure_logged_in(&mut self) -> Result<(), HsmError> {
        let session = self.session.as_ref().ok_or_else(no_session)?;
        if is_public(session)? {
            tracing::warn!(partition = %self.partition.name(), "token is logged out; logging in again");
            self.partition.login()?;
            // Session objects made while logged in (key copies) may be gone with the login.
            self.handles.clear();
        }
        Ok(())
    }

    /// The handle to sign with: cached per session, else found by `CKA_ID` (and copied into a
    /// session object when configured).
    fn key_handle(&mut self, version: &VersionEntry) -> Result<ObjectHandle, HsmError> {
        if let Some(h) = self.handles.get(&version.uid) {
            return Ok(*h);
        }
        let session = self.session.as_ref().ok_or_else(no_session)?;
        // The login state is the token's, shared by every session of the process: another
        // worker may log in (after a module re-initialization, say) while this one searches.
        // Read it before and after, so a search made while logged out is never taken for a
        // missing key.
        let public_before = is_public(session)?;
        let Some(token_key) = objects::find_private(session, &version.id)? else {
            // Private objects are invisible while the token is logged out: say so, so that the
            // caller logs in again and retries, instead of reporting the key missing.
            if public_before || is_public(session)? {
                return Err(HsmError::Call {
                    function: cryptoki::context::Function::FindObjects,
                    rv: cryptoki::error::RvError::UserNotLoggedIn,
                    class: ErrorClass::NotLoggedIn,
                });
            }
            return Err(HsmError::Unexpected(format!(
                "key {} version {} (id {}) is not in partition {}",
                version.name,
                version.version,
                objects::hex(&version.id),
                self.partition.name()
            )));
        };
        let h = if self.partition.session_copies() {
            // SoftHSM2 can corrupt its object store when objects are created concurrently
            // (softhsm/SoftHSMv2#573): copies are made one at a time, like admin writes.
            let _serial = crate::engine::admin::ADMIN_LOCK.lock();
            if version.state() != KeyState::Active {
                // Retired while we waited for the lock: the retire has already destroyed the
                // copies; make none. The token object no longer signs (CKA_SIGN=false).
                return Ok(token_key);
            }
            match objects::session_copy(session, token_key) {
                Ok(copy) => copy,
                // A module that makes no such copies: the token object signs (one warning).
                Err(e) if self.partition.copy_refused(&e) => token_key,
                Err(e) => return Err(e),
            }
        } else {
            token_key
        };
        self.handles.insert(version.uid, h);
        Ok(h)
    }

    fn rebuild_session(&mut self, cause: &HsmError) -> Result<(), HsmError> {
        tracing::warn!(partition = %self.partition.name(), "session lost ({cause}); rebuilding");
        self.discard_session();
        self.partition.count_rebuild();
        self.crew.metrics.session_rebuild(self.partition.index());
        self.open_session()
    }

    /// Opens this worker's session (of the module's current generation).
    fn open_session(&mut self) -> Result<(), HsmError> {
        self.session_generation = self.partition.module().generation();
        self.session = Some(self.partition.open_session()?);
        Ok(())
    }

    /// The caller's answer for a failed call that is not retried ([`classify::handling`]).
    fn to_engine_error(&self, e: HsmError) -> EngineError {
        match classify::handling(e.class()).answer {
            Answer::Rejected => EngineError::HsmRequest(e.to_string()),
            Answer::Unavailable => EngineError::Unavailable {
                reason: format!("partition {}: {e}", self.partition.name()),
                retry_after: HSM_RETRY_AFTER,
            },
            Answer::Failed => EngineError::Hsm(format!("partition {}: {e}", self.partition.name())),
        }
    }
}

/// Whether the session is not logged in (public objects only).
fn is_public(session: &Session) -> Result<bool, HsmError> {
    let state = session.get_session_info()?.session_state();
    Ok(matches!(
        state,
        SessionState::RoPublic | SessionState::RwPublic
    ))
}

fn no_session() -> HsmError {
    HsmError::Unexpected("worker has no session (rebuild failed)".into())
}
