//! Partition health: one thread per partition probes it about once a second and moves it in
//! and out of rotation. One thread each, so that a hung device stalls only its own probe.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::sync::{Parker, Unparker};

use crate::control::breaker::{Outcome, State};
use crate::error::EngineError;
use crate::hsm::{ErrorClass, Partition, PartitionStats};
use crate::pipeline::breakers::Breakers;
use crate::pipeline::worker::Crew;

/// How often each partition is probed.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Breaker trips within [`REINIT_WINDOW`], while the token itself answers, after which the
/// module is re-initialized (scenario 3: the token is back but the module keeps failing).
const REINIT_TRIPS: usize = 3;
const REINIT_WINDOW: Duration = Duration::from_secs(60);

/// Starts the probe threads; they exit when woken after `stop`. Returns their wake-up handles
/// and join handles (joined with a bounded wait: a probe stuck in a hung device is left).
pub(super) fn spawn_probes(
    partitions: &[Arc<Partition>],
    breakers: &Arc<Breakers>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<(Vec<Unparker>, Vec<JoinHandle<()>>)> {
    let mut wakers = Vec::new();
    let mut handles = Vec::new();
    let all: Arc<[Arc<Partition>]> = partitions.into();
    for p in partitions {
        let parker = Parker::new();
        wakers.push(parker.unparker().clone());
        let (p, stop, breakers) = (Arc::clone(p), Arc::clone(stop), Arc::clone(breakers));
        let all = Arc::clone(&all);
        handles.push(
            std::thread::Builder::new()
                .name(format!("signer-health-{}", p.name()))
                .spawn(move || probe_loop(&p, &all, &breakers, &stop, &parker))?,
        );
    }
    Ok((wakers, handles))
}

/// Probes one partition until `stop`. Workers take a partition out at once on device errors
/// (and the watchdog on a hung call); only a successful probe brings it back.
fn probe_loop(
    p: &Partition,
    all: &[Arc<Partition>],
    breakers: &Breakers,
    stop: &AtomicBool,
    parker: &Parker,
) {
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        breakers.tick(now);
        let probed = {
            let _calls = p.module().calls();
            p.probe()
        };
        if probed.is_ok() && !breakers.closed(p.index()) {
            maybe_reinitialize(p, all, now);
        }
        p.set_device_lost(matches!(&probed, Err(e) if e.class() == ErrorClass::DeviceLost));
        match probed {
            Ok(()) if breakers.closed(p.index()) => p.mark_healthy(),
            // Half-open: a successful probe counts as one breaker probe, next to the real
            // requests the router sends there. Without this, a partition (or all of them) with
            // no traffic would never come back, and /readyz would keep traffic away for good.
            // If signing still fails, the next requests reopen it with a longer backoff.
            Ok(()) => {
                if breakers.state(p.index()) == State::HalfOpen {
                    if let Some(mut ticket) = breakers.probe(p.index(), now) {
                        let took = now.elapsed();
                        breakers.record_probe(
                            &mut ticket,
                            Instant::now(),
                            Outcome::Success { took },
                        );
                    }
                }
            }
            Err(e) if e.class() == ErrorClass::Busy => {}
            Err(e) => {
                let why = format!("health probe failed: {e}");
                if e.class() == ErrorClass::DeviceLost {
                    breakers.force_open(p.index(), now, &why);
                }
                p.mark_unhealthy(&why);
            }
        }
        // Look again soon while out of rotation, so recovery is quick.
        let next = if p.is_healthy() {
            HEALTH_INTERVAL
        } else {
            HEALTH_INTERVAL / 4
        };
        parker.park_timeout(next);
    }
}

/// Scenario 3: the token answers (the probe succeeded) but signing keeps failing: the breaker
/// opened [`REINIT_TRIPS`] times within [`REINIT_WINDOW`]. Then the module is finalized and
/// initialized again, once (single flight, with a cooldown, in `Module::reinitialize`); every
/// partition of the module forgets its sessions, and workers open new ones on their next job.
/// Not while a call hangs in the module (it could not be finalized safely).
fn maybe_reinitialize(p: &Partition, all: &[Arc<Partition>], now: Instant) {
    let trips = p.recent_trips(now, REINIT_WINDOW);
    if trips < REINIT_TRIPS {
        return;
    }
    let module = p.module();
    let siblings = || all.iter().filter(move |q| Arc::ptr_eq(q.module(), module));
    if siblings().any(|q| q.stuck() > 0) {
        return;
    }
    let why = format!(
        "partition {}: circuit breaker opened {trips} times within {} s while the token answers",
        p.name(),
        REINIT_WINDOW.as_secs()
    );
    match module.reinitialize(&why, || siblings().for_each(|q| q.forget_sessions())) {
        Ok(true) => {
            for q in siblings() {
                if let Err(e) = q.login() {
                    tracing::warn!(partition = %q.name(), "login after re-initialization: {e}");
                }
            }
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(module = %module.path().display(), "re-initializing the module failed: {e}")
        }
    }
}

/// The engine's health part: partitions in and out of rotation, per-partition counters, and
/// the sampled gauges of queues, limits and breakers.
#[derive(Debug)]
pub struct Health {
    pub(super) partitions: Vec<Arc<Partition>>,
    pub(super) crew: Arc<Crew>,
}

impl Health {
    /// The engine's partition names, by index.
    pub fn partition_name(&self, index: usize) -> Option<&str> {
        self.partitions.get(index).map(|p| p.name())
    }

    /// Partition names, in index order.
    pub fn partition_names(&self) -> Vec<String> {
        self.partitions
            .iter()
            .map(|p| p.name().to_owned())
            .collect()
    }

    /// Per-partition counters.
    pub fn stats(&self) -> Vec<PartitionStats> {
        self.partitions.iter().map(|p| p.stats()).collect()
    }

    /// What each partition's token can do, as probed at start (`signerd check`).
    pub fn capabilities(&self) -> Vec<crate::hsm::capabilities::CapabilityReport> {
        self.partitions
            .iter()
            .map(|p| p.capabilities().report(p.name()))
            .collect()
    }

    /// Every partition's health: name, in rotation, and why not.
    pub fn partitions(&self) -> Vec<(String, bool, String)> {
        self.partitions
            .iter()
            .map(|p| (p.name().to_owned(), p.is_healthy(), p.health_reason()))
            .collect()
    }

    /// Takes partition `name` out of rotation for maintenance (`out = true`; its queued work
    /// moves to other partitions holding the same keys) or puts it back. Health probes do not
    /// override it.
    pub fn set_maintenance(&self, name: &str, out: bool) -> Result<(), EngineError> {
        let p = self
            .partitions
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| EngineError::NotFound(format!("no partition named {name}")))?;
        p.set_maintenance(out);
        Ok(())
    }

    /// Refreshes the sampled gauges: queue depth per shard, work in hand per partition,
    /// partition health and the breaker state it implies. Cheap; called on each scrape.
    pub fn sample_metrics(&self) {
        let crew = &*self.crew;
        let m = &crew.metrics;
        for (i, s) in crew.shards.iter().enumerate() {
            m.set_queue_depth(i, s.queued());
            m.set_queue_overloaded(i, s.overloaded());
        }
        for p in &self.partitions {
            let load: usize = crew
                .router
                .shards_of(p.index())
                .iter()
                .map(|s| crew.shards[*s].load())
                .sum();
            m.set_inflight(p.index(), load);
            m.set_inflight_limit(p.index(), crew.gates[p.index()].limit());
            m.set_partition_healthy(p.index(), p.is_healthy());
            m.set_breaker_state(p.index(), crew.breakers.state(p.index()));
        }
    }
}

/// The names of `partitions`, in order.
pub(super) fn names(partitions: &[Arc<Partition>]) -> Vec<String> {
    partitions.iter().map(|p| p.name().to_owned()).collect()
}
