//! The watchdog: quarantines workers stuck in a hung HSM call and hands their shard to a fresh
//! worker, and moves queued work off partitions that are out of rotation (to healthy
//! partitions holding the same key, or answers it UNAVAILABLE). It only reads atomics and
//! spawns threads, so nothing an HSM does can stall it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::sync::{Parker, Unparker};
use parking_lot::Mutex;

use crate::error::EngineError;
use crate::hsm::Partition;
use crate::pipeline::router::Purpose;
use crate::pipeline::worker::{Crew, Worker};

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(100);
/// Most workers per partition left stuck in hung calls; beyond this a stuck worker is not
/// replaced (the partition stays out of rotation and its queue is moved elsewhere).
const MAX_STUCK_PER_PARTITION: usize = 4;
/// Retry hint for work that no healthy partition can take.
const NO_PARTITION_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A worker thread: the shard it serves, the shard generation it owns, its handle.
pub(super) type WorkerHandle = (usize, u64, JoinHandle<()>);

pub(super) struct Watchdog {
    pub(super) partitions: Vec<Arc<Partition>>,
    pub(super) crew: Arc<Crew>,
    pub(super) hang_timeout: Duration,
    pub(super) workers: Arc<Mutex<Vec<WorkerHandle>>>,
    pub(super) parker: Parker,
}

impl Watchdog {
    /// Wakes the thread early (shutdown).
    pub(super) fn unparker(&self) -> Unparker {
        self.parker.unparker().clone()
    }

    pub(super) fn run(self) {
        let has_secondary = self.partitions.iter().any(|p| p.spec().tier > 0);
        let mut primary_was_up = true;
        while !self.crew.stop.load(Ordering::SeqCst) {
            if has_secondary {
                let up = self
                    .partitions
                    .iter()
                    .any(|p| p.spec().tier == 0 && p.is_healthy());
                if up != primary_was_up {
                    if up {
                        tracing::info!("a primary partition is back: keys are served by the primary provider again");
                    } else {
                        tracing::warn!("every primary partition is out: keys that the secondary provider holds (same public key) are served there; others get UNAVAILABLE");
                    }
                    primary_was_up = up;
                }
            }
            let now = Instant::now();
            for (i, shard) in self.crew.shards.iter().enumerate() {
                if let Some(stuck) = shard.stuck_for(now) {
                    if stuck >= self.hang_timeout {
                        self.quarantine(i, stuck);
                    }
                }
            }
            for p in &self.partitions {
                if !p.is_healthy() {
                    self.evacuate(p.index());
                }
            }
            self.parker.park_timeout(TICK);
        }
    }

    /// Takes shard `me` away from its stuck worker and starts a new worker for it (with a
    /// fresh session, opened by the new thread itself). The partition goes out of rotation
    /// until every hung call has returned.
    fn quarantine(&self, me: usize, stuck: Duration) {
        let shard = &self.crew.shards[me];
        let partition = &self.partitions[shard.partition()];
        partition.mark_unhealthy(&format!(
            "an HSM call has hung for {} ms",
            stuck.as_millis()
        ));
        if partition.stuck() >= MAX_STUCK_PER_PARTITION {
            return; // keep the shard with its worker; the queue is moved off meanwhile
        }
        partition.add_stuck();
        let parker = Parker::new();
        let old = shard.generation();
        let (generation, in_call) = shard.replace_worker(&parker);
        if in_call {
            // The hung call's permit: the stuck worker will not give it back (it exits when its
            // call returns), and the partition must not lose a session's worth of concurrency.
            if let Some(gate) = self.crew.gates.get(partition.index()) {
                gate.leave();
            }
        }
        let siblings = self.crew.router.siblings(me);
        let worker = Worker::new(
            Arc::clone(partition),
            Arc::clone(&self.crew),
            me,
            siblings,
            parker,
            generation,
            None,
        );
        tracing::warn!(
            partition = %partition.name(),
            shard = me,
            stuck_ms = u64::try_from(stuck.as_millis()).unwrap_or(u64::MAX),
            "worker stuck in an HSM call: quarantined and replaced"
        );
        let mut workers = self.workers.lock();
        // The stuck thread is never joined (its call may never return): forget its handle.
        workers.retain(|(s, g, _)| !(*s == me && *g == old));
        match std::thread::Builder::new()
            .name(format!("signer-{}-{me}.{generation}", partition.name()))
            .spawn(move || worker.run())
        {
            Ok(handle) => workers.push((me, generation, handle)),
            Err(e) => tracing::error!("cannot start a replacement worker: {e}"),
        }
    }

    /// Moves every job queued on partition `p` to the least-loaded shard of a healthy partition
    /// holding the same key version, or answers it UNAVAILABLE.
    fn evacuate(&self, p: usize) {
        let shards = &self.crew.shards;
        let router = &self.crew.router;
        for s in router.shards_of(p) {
            while let Some(job) = shards[*s].pop() {
                let unavailable = |what: &str| EngineError::Unavailable {
                    reason: format!(
                        "partition {} is out of rotation and {what}",
                        self.partitions[p].name()
                    ),
                    retry_after: NO_PARTITION_RETRY_AFTER,
                };
                match router.pick(&job.version, Some(p), Purpose::Evacuate, Instant::now()) {
                    // A probe job leaves its ticket behind (handed back to p's breaker).
                    Some(pick) => {
                        if let Err(job) = router.hand_over(job, pick.shard) {
                            job.answer(Err(unavailable("the healthy partitions are full")));
                        }
                    }
                    None => {
                        let why = format!("no healthy partition holds key {}", job.version.name);
                        job.answer(Err(unavailable(&why)));
                    }
                }
            }
        }
    }
}
