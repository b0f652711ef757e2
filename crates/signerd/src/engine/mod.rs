//! The signing engine: everything between "a sign request exists" and "a signature comes back".
//!
//! ```text
//! Engine::sign ─▶ registry (key, version) ─▶ router (least-loaded healthy shard holding it)
//!   ─▶ shard queue (bounded, lock-free) ─▶ worker thread (own session) ─▶ oneshot ─▶ caller
//! ```
//! HSM calls never run on the async runtime: `sign` only queues and awaits. Admin operations
//! (create, rotate, retire, destroy) block on the HSM; call them from a blocking context.

pub(crate) mod admin;
mod audit_key;
mod health;
mod keys;
mod watchdog;

pub use admin::{hold_object_writes, KeyAdmin};
pub use audit_key::AuditKeySigner;
pub use health::Health;
pub use keys::Keys;
pub mod registry;
pub mod verify;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::sync::{Parker, Unparker};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::config::{Config, ProviderRole};
use crate::control::limiter::LimiterConfig;
use crate::error::EngineError;
use crate::hsm::der::pem_encode;
use crate::hsm::{objects, HsmError, Module, Partition, PartitionSpec};
use crate::pipeline::admission;
use crate::pipeline::breakers::Breakers;
use crate::pipeline::gate::{Gate, RetryBudget};
use crate::pipeline::router::{Pick, Purpose, Router};
use crate::pipeline::worker::{Crew, Worker};
use crate::pipeline::{Completion, Direct, Job, Reply, Shard};
use crate::secret::Pin;
use crate::telemetry::{Metrics, OverloadReason};
use cryptoki::session::Session;
use registry::{Registry, VersionEntry};
use signer_proto::keys::{KeyName, KeyType, Payload, Version};
use watchdog::{Watchdog, WorkerHandle};

/// Retry hint for a full queue.
const OVERLOADED_RETRY_AFTER: Duration = Duration::from_millis(50);

/// A request to sign.
#[derive(Clone, Debug)]
pub struct SignRequest {
    /// Key name.
    pub key: KeyName,
    /// A specific version (must be active); `None` for the key's signing version.
    pub version: Option<Version>,
    /// The digest or message, already checked against its scheme.
    pub payload: Payload,
    /// Past this instant the request is answered DEADLINE_EXCEEDED and never sent to the HSM.
    pub deadline: Instant,
    /// Who asks: the client identity (or a local name such as `local:selftest`); recorded in
    /// the audit log.
    pub identity: Arc<str>,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A PIN could not be loaded.
    #[error("partition {partition}: {source}")]
    Pin {
        /// Partition name.
        partition: String,
        /// Cause.
        source: crate::secret::PinError,
    },
    /// The HSM refused or failed.
    #[error("partition {partition}: {source}")]
    Hsm {
        /// Partition (or provider) name.
        partition: String,
        /// Cause.
        source: HsmError,
    },
    /// The config is inconsistent with itself or the tokens.
    #[error("{0}")]
    Invalid(String),
    /// The operating system refused a resource the engine needs (a thread): not the config's
    /// fault, and not the HSM's.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl OpenError {
    /// Whether the operator's config or secrets are at fault (a wrong PIN included): the
    /// binary's exit code 64 (EX_USAGE) for these, 69 for an unavailable HSM, 1 otherwise.
    pub fn is_config(&self) -> bool {
        match self {
            OpenError::Invalid(_) | OpenError::Pin { .. } => true,
            OpenError::Hsm { source, .. } => source.class() == crate::hsm::ErrorClass::PinIncorrect,
            OpenError::Thread { .. } => false,
        }
    }
}

/// Public information about a key and its versions: the protocol's own listing types (one
/// definition for the engine, the wire and the client).
pub use signer_proto::protocol::{KeyListing as KeyInfo, VersionListing as VersionInfo};

/// A public key export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// Key name.
    pub name: KeyName,
    /// Version exported.
    pub version: Version,
    /// Key type.
    pub key_type: KeyType,
    /// SubjectPublicKeyInfo, DER.
    pub spki_der: Vec<u8>,
}

impl PublicKey {
    /// SubjectPublicKeyInfo as PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki_der)
    }
}

/// The signing engine. Cheap to clone; all clones share one pipeline.
///
/// It is made of parts with one job each: routing (this type: [`Engine::sign`] and the queues),
/// the key registry ([`Engine::keys`]), key administration ([`Engine::admin`]) and partition
/// health ([`Engine::health`]). Built in two steps by [`EngineBuilder`]: open the HSMs and read
/// the keys, then start the workers with the completion that receives their results.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: Arc<Keys>,
    admin: KeyAdmin,
    health: Health,
    shards: Arc<[Shard]>,
    accepting: AtomicBool,
    submitting: AtomicUsize,
    stop: Arc<AtomicBool>,
    workers: Arc<Mutex<Vec<WorkerHandle>>>,
    /// Wakes the health probes and the watchdog (shutdown).
    wakers: Vec<Unparker>,
    /// The health probe and watchdog threads.
    service: Mutex<Vec<std::thread::JoinHandle<()>>>,
    crew: Arc<Crew>,
    /// Queue-wait budget of a queue in sustained overload.
    max_queue_wait: Duration,
    /// Queue-wait budget of a queue that keeps up (bursts).
    burst_queue_wait: Duration,
}

/// An engine whose HSMs are open and whose keys are read, with no worker running yet. Key
/// administration works (the daemon creates its audit key here, before the audit log that
/// receives the workers' results exists); [`EngineBuilder::start`] starts the workers with
/// their completion. Dropping it closes the sessions it opened.
pub struct EngineBuilder {
    keys: Arc<Keys>,
    admin: KeyAdmin,
    shards: Arc<[Shard]>,
    parkers: Vec<Parker>,
    sessions: Vec<Session>,
    metrics: Metrics,
    breakers: Arc<Breakers>,
    gates: Vec<Gate>,
    router: Router,
    stop: Arc<AtomicBool>,
    max_drain: usize,
    hang_timeout: Duration,
    max_queue_wait: Duration,
    burst_queue_wait: Duration,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("partitions", &self.keys.partitions.len())
            .field("workers", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// Loads the modules, logs in to every partition (once each), reads the keys from the tokens
    /// and opens one session per configured worker.
    pub fn open(cfg: &Config) -> Result<EngineBuilder, OpenError> {
        let total_partitions: usize = cfg.providers.values().map(|p| p.partitions.len()).sum();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut partitions = Vec::new();
        for (pname, p) in &cfg.providers {
            let module = Module::load(&p.module, &p.env).map_err(|source| OpenError::Hsm {
                partition: format!("provider {pname}"),
                source,
            })?;
            for part in &p.partitions {
                let workers = part
                    .workers
                    .or(p.workers_per_partition)
                    .unwrap_or_else(|| (cores / total_partitions).max(1));
                let spec = PartitionSpec {
                    name: part.name.clone(),
                    provider: pname.clone(),
                    selector: part.selector.clone(),
                    session_key_copy: p.session_key_copy,
                    tier: match p.role {
                        ProviderRole::Primary => 0,
                        ProviderRole::Secondary => 1,
                    },
                    replicate: p.replicate,
                    workers,
                    min_inflight: p.min_inflight.unwrap_or(1).clamp(1, workers),
                };
                let pin = Pin::load(&part.pin).map_err(|source| OpenError::Pin {
                    partition: part.name.clone(),
                    source,
                })?;
                let index = partitions.len();
                let partition =
                    Partition::open(Arc::clone(&module), spec, pin, index).map_err(|source| {
                        OpenError::Hsm {
                            partition: part.name.clone(),
                            source,
                        }
                    })?;
                partitions.push(Arc::new(partition));
            }
        }
        let registry = Registry::default();
        {
            let _no_half_made_keys = admin::ADMIN_LOCK.lock();
            load_keys(&partitions, &registry)?;
        }

        let mut shards = Vec::new();
        let mut parkers = Vec::new();
        let mut sessions = Vec::new();
        for p in &partitions {
            for _ in 0..p.spec().workers {
                let session = p.open_session().map_err(|source| OpenError::Hsm {
                    partition: p.name().to_owned(),
                    source,
                })?;
                let (shard, parker) = Shard::new(cfg.engine.queue_depth, p.index());
                shards.push(shard);
                parkers.push(parker);
                sessions.push(session);
            }
        }
        let shards: Arc<[Shard]> = shards.into();
        let names: Vec<&str> = partitions.iter().map(|p| p.name()).collect();
        let metrics = Metrics::new(&names, shards.len());
        let breakers =
            Arc::new(Breakers::new(&partitions, &cfg.breaker).map_err(OpenError::Invalid)?);
        let gates = partitions
            .iter()
            .map(|p| {
                let mut limits = LimiterConfig::for_sessions(p.spec().workers);
                limits.min_limit = p.spec().min_inflight.min(limits.max_limit);
                limits.max_drain = cfg.engine.max_drain;
                Gate::new(limits)
            })
            .collect();
        let router = Router::new(
            partitions.clone(),
            Arc::clone(&shards),
            Arc::clone(&breakers),
        );
        let keys = Arc::new(Keys::new(partitions, registry));
        Ok(EngineBuilder {
            admin: KeyAdmin {
                keys: Arc::clone(&keys),
            },
            keys,
            shards,
            parkers,
            sessions,
            metrics,
            breakers,
            gates,
            router,
            stop: Arc::new(AtomicBool::new(false)),
            max_drain: cfg.engine.max_drain,
            hang_timeout: cfg.engine.hang_timeout,
            max_queue_wait: cfg.engine.max_queue_wait,
            burst_queue_wait: cfg.engine.burst_queue_wait,
        })
    }

    /// The key registry (read side).
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Key administration, usable before the workers start.
    pub fn admin(&self) -> &KeyAdmin {
        &self.admin
    }

    /// Partition names, in index order.
    pub fn partition_names(&self) -> Vec<String> {
        health::names(&self.keys.partitions)
    }

    /// A cheap probe that says whether any worker holds or has queued a job (more answers are
    /// on their way). It does not keep the engine alive.
    pub fn busy_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        busy_probe(&self.shards)
    }

    /// Starts one worker thread per session, the health probes and the watchdog. Every finished
    /// job goes through `completion` ([`crate::pipeline::Direct`] answers at once).
    pub fn start(self, completion: Arc<dyn Completion>) -> Result<Engine, OpenError> {
        let EngineBuilder {
            keys,
            admin,
            shards,
            parkers,
            sessions,
            metrics,
            breakers,
            gates,
            router,
            stop,
            max_drain,
            hang_timeout,
            max_queue_wait,
            burst_queue_wait,
        } = self;
        let partitions = &keys.partitions;
        let crew = Arc::new(Crew {
            gates,
            retry_budget: RetryBudget::default(),
            breakers,
            router,
            metrics,
            shards: Arc::clone(&shards),
            stop: Arc::clone(&stop),
            max_drain,
            completion,
        });
        // From here on, the threads started so far are stopped and joined if a later one
        // cannot start (Inner's drop does it).
        let mut inner = Inner {
            health: Health {
                partitions: partitions.clone(),
                crew: Arc::clone(&crew),
            },
            keys: Arc::clone(&keys),
            admin,
            shards: Arc::clone(&shards),
            accepting: AtomicBool::new(true),
            submitting: AtomicUsize::new(0),
            stop: Arc::clone(&stop),
            workers: Arc::new(Mutex::new(Vec::new())),
            wakers: Vec::new(),
            service: Mutex::new(Vec::new()),
            crew: Arc::clone(&crew),
            max_queue_wait,
            burst_queue_wait,
        };
        for (me, (parker, session)) in parkers.into_iter().zip(sessions).enumerate() {
            let part = &partitions[shards[me].partition()];
            let siblings = crew.router.siblings(me);
            let worker = Worker::new(
                Arc::clone(part),
                Arc::clone(&crew),
                me,
                siblings,
                parker,
                0,
                Some(session),
            );
            let handle = std::thread::Builder::new()
                .name(format!("signer-{}-{me}", part.name()))
                .spawn(move || worker.run())
                .map_err(|source| OpenError::Thread {
                    what: format!("worker {me}"),
                    source,
                })?;
            inner.workers.lock().push((me, 0, handle));
        }
        let cannot = |what: &str, source: std::io::Error| OpenError::Thread {
            what: what.to_owned(),
            source,
        };
        let (wakers, service) = health::spawn_probes(partitions, &crew.breakers, &stop)
            .map_err(|e| cannot("health", e))?;
        inner.wakers = wakers;
        *inner.service.get_mut() = service;
        let watchdog = Watchdog {
            partitions: partitions.clone(),
            crew: Arc::clone(&crew),
            hang_timeout,
            workers: Arc::clone(&inner.workers),
            parker: Parker::new(),
        };
        inner.wakers.push(watchdog.unparker());
        let handle = std::thread::Builder::new()
            .name("signer-watchdog".into())
            .spawn(move || watchdog.run())
            .map_err(|e| cannot("watchdog", e))?;
        inner.service.get_mut().push(handle);
        tracing::info!(
            partitions = partitions.len(),
            workers = shards.len(),
            keys = keys.count(),
            "engine started"
        );
        Ok(Engine {
            inner: Arc::new(inner),
        })
    }
}

fn busy_probe(shards: &Arc<[Shard]>) -> impl Fn() -> bool + Send + Sync + 'static {
    let weak = Arc::downgrade(shards);
    move || {
        weak.upgrade()
            .is_some_and(|shards| shards.iter().any(|s| s.load() > 0))
    }
}

impl Engine {
    /// Opens the HSMs and starts the workers, answering every job at once
    /// ([`crate::pipeline::Direct`]: no audit log). The daemon uses [`EngineBuilder`] to put
    /// its audit log in between.
    pub fn open(cfg: &Config) -> Result<Engine, OpenError> {
        EngineBuilder::open(cfg)?.start(Arc::new(Direct))
    }

    /// The key registry (read side): keys, versions, public keys, verification.
    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Key administration: create, rotate, retire, destroy.
    pub fn admin(&self) -> &KeyAdmin {
        &self.inner.admin
    }

    /// Partition health, maintenance and the sampled gauges.
    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    /// Signs: queues the request and waits for its worker's answer. Never blocks the runtime.
    pub async fn sign(&self, req: SignRequest) -> Reply {
        let rx = self.submit(req)?;
        rx.await.unwrap_or_else(|_| {
            Err(EngineError::Internal(
                "worker dropped the request without answering".into(),
            ))
        })
    }

    /// Queues a request without waiting; the receiver gets exactly one answer. Fails at once
    /// (nothing queued) for unknown keys, bad arguments, a full queue, or during shutdown.
    pub fn submit(&self, req: SignRequest) -> Result<oneshot::Receiver<Reply>, EngineError> {
        self.submit_with(req, false)
    }

    /// Like [`Engine::submit`], for a caller that writes the job's audit record itself, in the
    /// same durable commit as its own records and before it releases anything to a client (the
    /// Merkle batcher: a tree's root signature together with its leaves). The engine's audit
    /// stage hands the answer over at once, without a record.
    pub fn submit_recorded_by_caller(
        &self,
        req: SignRequest,
    ) -> Result<oneshot::Receiver<Reply>, EngineError> {
        self.submit_with(req, true)
    }

    fn submit_with(
        &self,
        req: SignRequest,
        caller_records: bool,
    ) -> Result<oneshot::Receiver<Reply>, EngineError> {
        let inner = &*self.inner;
        inner.submitting.fetch_add(1, Ordering::SeqCst);
        let result = self.submit_inner(req, caller_records);
        inner.submitting.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn submit_inner(
        &self,
        req: SignRequest,
        caller_records: bool,
    ) -> Result<oneshot::Receiver<Reply>, EngineError> {
        let inner = &*self.inner;
        if !inner.accepting.load(Ordering::SeqCst) {
            return Err(EngineError::Unavailable {
                reason: "signer is shutting down".into(),
                retry_after: Duration::from_secs(1),
            });
        }
        let version =
            inner
                .keys
                .registry
                .for_signing(&req.key, req.version, req.payload.scheme())?;
        let now = Instant::now();
        let remaining = req.deadline.saturating_duration_since(now);
        if remaining.is_zero() {
            return Err(EngineError::DeadlineExceeded);
        }
        let Some(Pick { shard, probe }) =
            inner.crew.router.pick(&version, None, Purpose::Submit, now)
        else {
            return Err(EngineError::Unavailable {
                reason: format!("no healthy partition holds key {}", req.key),
                retry_after: inner.crew.breakers.retry_after(now),
            });
        };
        // The shard's measured wait assumes every worker of its partition may call the HSM; the
        // adaptive limit may allow fewer.
        let slowdown = inner.crew.gates[inner.shards[shard].partition()].slowdown();
        let per_call = inner.shards[shard]
            .predicted_wait()
            .saturating_mul(slowdown);
        let overloaded = inner.shards[shard].note_arrival(now, per_call > inner.max_queue_wait);
        // In sustained overload the queue's measured drain rate counts too: on a saturated
        // machine a job ahead costs more than its HSM call (admission::drain_per_job).
        let predicted = if overloaded {
            per_call.max(inner.shards[shard].drained_wait())
        } else {
            per_call
        };
        let budget = admission::budget(overloaded, inner.burst_queue_wait, inner.max_queue_wait);
        if let Err(retry_after) = admission::admit(predicted, remaining, budget) {
            let reason = if remaining < budget {
                OverloadReason::Deadline
            } else if overloaded {
                OverloadReason::QueueWait
            } else {
                OverloadReason::BurstWait
            };
            inner.crew.metrics.overloaded(reason);
            if reason != OverloadReason::Deadline {
                // A request that cannot wait even a short queue says nothing about overload.
                inner.shards[shard].note_shed();
            }
            // Dropping `probe` hands its slot back: the call is not made.
            return Err(EngineError::Overloaded { retry_after });
        }
        let (tx, rx) = oneshot::channel();
        let job = Job {
            version,
            payload: req.payload,
            deadline: req.deadline,
            enqueued: now,
            identity: req.identity,
            probe,
            retried: false,
            caller_records,
            reply: tx,
        };
        match inner.shards[shard].push(job) {
            Ok(()) => Ok(rx),
            Err(_job) => {
                // Dropping the job hands a probe slot back: the call is not made.
                inner.crew.metrics.overloaded(OverloadReason::QueueFull);
                inner.shards[shard].note_shed();
                Err(EngineError::Overloaded {
                    retry_after: OVERLOADED_RETRY_AFTER,
                })
            }
        }
    }

    /// Stops accepting and answers every request still waiting in a queue UNAVAILABLE (with
    /// retry-after): none of them has reached the HSM, so a retry elsewhere cannot double-sign.
    /// Requests already in a worker's hands finish normally. For the end of a drain.
    pub fn cancel_queued(&self) {
        let inner = &*self.inner;
        inner.accepting.store(false, Ordering::SeqCst);
        let mut n = 0usize;
        for s in inner.shards.iter() {
            while let Some(job) = s.pop() {
                // A probe job's ticket hands its slot back as the job is answered and dropped.
                job.answer(Err(EngineError::Unavailable {
                    reason: "signer is shutting down; not signed".into(),
                    retry_after: Duration::from_secs(1),
                }));
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(
                cancelled = n,
                "queued requests answered UNAVAILABLE (not signed)"
            );
        }
    }

    /// The engine's Prometheus instruments (shared with the server).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.crew.metrics
    }

    /// Worker threads (one session each) across all partitions.
    pub fn workers(&self) -> usize {
        self.inner.shards.len()
    }

    /// A cheap probe that says whether any worker holds or has queued a job (more answers are
    /// on their way). It does not keep the engine alive.
    pub fn busy_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        busy_probe(&self.inner.shards)
    }

    /// Jobs queued across all shards.
    pub fn queued(&self) -> usize {
        self.inner.shards.iter().map(Shard::queued).sum()
    }

    /// Stops accepting, lets the workers finish everything queued, closes their sessions and
    /// joins them. Idempotent; blocks. The modules are finalized when the last engine using them
    /// is dropped.
    pub fn shutdown(&self) {
        let inner = &*self.inner;
        inner.accepting.store(false, Ordering::SeqCst);
        while inner.submitting.load(Ordering::SeqCst) > 0 {
            std::thread::yield_now();
        }
        inner.stop.store(true, Ordering::SeqCst);
        for w in &inner.wakers {
            w.unpark();
        }
        for s in inner.shards.iter() {
            s.wake();
        }
        let handles: Vec<_> = inner.workers.lock().drain(..).collect();
        let n = handles.len();
        for (_, _, h) in handles {
            if h.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        // The probes and the watchdog hold the partitions (and so the modules): wait for them,
        // bounded, so that the modules are finalized once and nothing races process exit. A
        // probe stuck in a hung device is left behind.
        join_bounded(
            inner.service.lock().drain(..).collect(),
            Duration::from_secs(3),
        );
        // Workers exit only with empty queues; anything left means a worker died.
        for s in inner.shards.iter() {
            while let Some(job) = s.pop() {
                job.answer(Err(EngineError::Unavailable {
                    reason: "signer shut down".into(),
                    retry_after: Duration::from_secs(1),
                }));
            }
        }
        if n > 0 {
            tracing::info!(workers = n, "engine stopped");
        }
    }
}

/// Joins `handles`, waiting at most `limit` in total; threads still running then are left.
fn join_bounded(handles: Vec<std::thread::JoinHandle<()>>, limit: Duration) {
    let until = Instant::now() + limit;
    for h in handles {
        while !h.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
        if h.is_finished() {
            let _ = h.join();
        } else {
            tracing::warn!(thread = ?h.thread().name(), "a service thread did not stop (stuck in the HSM?)");
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            w.unpark();
        }
        for s in self.shards.iter() {
            s.wake();
        }
        let handles: Vec<_> = self.workers.lock().drain(..).collect();
        for (_, _, h) in handles {
            let _ = h.join();
        }
        join_bounded(
            self.service.get_mut().drain(..).collect(),
            Duration::from_secs(3),
        );
    }
}

/// Reads every partition's keys into the registry. A version present on several partitions must
/// have the same key type and public key everywhere; a copy that differs is left out (and
/// logged), never used. A version retired on any partition is retired.
fn load_keys(partitions: &[Arc<Partition>], registry: &Registry) -> Result<(), OpenError> {
    type Merged = (objects::FoundKey, Vec<usize>);
    let mut merged: BTreeMap<(KeyName, Version), Merged> = BTreeMap::new();
    for p in partitions {
        let hsm = |source| OpenError::Hsm {
            partition: p.name().to_owned(),
            source,
        };
        let session = p.open_session().map_err(hsm)?;
        let found = objects::scan(&session).map_err(hsm)?;
        drop(session);
        for k in found {
            let key = (k.name.clone(), k.version);
            match merged.get_mut(&key) {
                None => {
                    merged.insert(key, (k, vec![p.index()]));
                }
                Some((first, holders)) => {
                    if first.id == k.id
                        && first.spki == k.spki
                        && first.key_type == k.key_type
                        && first.role == k.role
                    {
                        first.can_sign &= k.can_sign;
                        holders.push(p.index());
                    } else {
                        tracing::error!(
                            key = %k.name, version = k.version, partition = %p.name(),
                            "copy differs from the one on another partition (id, public key or \
                             role); not using it"
                        );
                    }
                }
            }
        }
    }
    for ((_, _), (k, holders)) in merged {
        registry.insert(Arc::new(VersionEntry::new(k, holders)));
    }
    Ok(())
}
