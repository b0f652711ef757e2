//! The engine's circuit breakers (one per partition, `crate::breaker`), behind one lock, and
//! the glue that turns their transitions into routing state and log lines:
//! - a worker reports every HSM call's outcome; a breaker that opens takes its partition out of
//!   rotation (its queued work moves on, see the watchdog);
//! - while half-open, the router sends a few real requests there as probes; successful probes
//!   close the breaker and the partition returns;
//! - the partition's health probe forces the breaker open when the token is gone.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::breaker::{Admit, BreakerConfig, BreakerSet, Outcome, Probe, State};
use crate::hsm::{ErrorClass, Partition};

/// Breakers for every partition of an engine.
#[derive(Debug)]
pub struct Breakers {
    set: Mutex<BreakerSet>,
    /// Mirror of each breaker's state (`State::as_gauge`), readable without the lock.
    states: Vec<AtomicU8>,
    partitions: Vec<Arc<Partition>>,
}

impl Breakers {
    /// Closed breakers for `partitions`, with at most half of them open at once for rate trips.
    pub fn new(partitions: &[Arc<Partition>], cfg: &BreakerConfig) -> Result<Breakers, String> {
        let seed = rand::random::<u64>();
        let set = BreakerSet::new(
            cfg,
            partitions.len(),
            crate::breaker::DEFAULT_MAX_OPEN_SHARE,
            seed,
        )?;
        Ok(Breakers {
            set: Mutex::new(set),
            states: partitions.iter().map(|_| AtomicU8::new(0)).collect(),
            partitions: partitions.to_vec(),
        })
    }

    /// The breaker state of partition `p` (as last seen by a transition).
    pub fn state(&self, p: usize) -> State {
        match self.states.get(p).map(|s| s.load(Ordering::Relaxed)) {
            Some(1) => State::HalfOpen,
            Some(2) => State::Open,
            _ => State::Closed,
        }
    }

    /// Whether partition `p` takes new work (healthy, breaker closed).
    pub fn in_rotation(&self, p: usize) -> bool {
        self.partitions.get(p).is_some_and(|x| x.is_healthy()) && self.closed(p)
    }

    /// Whether partition `p`'s breaker is closed.
    pub fn closed(&self, p: usize) -> bool {
        self.state(p) == State::Closed
    }

    /// A probe ticket for a half-open partition, if it takes another probe now.
    pub fn probe(&self, p: usize, now: Instant) -> Option<Probe> {
        let mut set = self.set.lock();
        let admit = set.admit(p, now);
        self.apply(&mut set);
        match admit {
            Admit::Probe(t) => Some(t),
            Admit::Yes | Admit::No { .. } => None,
        }
    }

    /// Reports one HSM call's outcome on partition `p` (with its probe ticket, if it was one).
    pub fn record(&self, p: usize, now: Instant, probe: Option<Probe>, outcome: Outcome) {
        let mut set = self.set.lock();
        match probe {
            Some(t) => set.record_probe(p, now, t, outcome),
            None => set.record(p, now, outcome),
        }
        self.apply(&mut set);
    }

    /// A probe that never reached the HSM (expired in the queue, moved elsewhere).
    pub fn release(&self, p: usize, probe: Probe) {
        self.set.lock().release(p, probe);
    }

    /// Opens partition `p`'s breaker now (the token is gone).
    pub fn force_open(&self, p: usize, now: Instant, reason: &str) {
        let mut set = self.set.lock();
        if set.state(p, now) == State::Closed {
            set.force_open(p, now, reason);
        }
        self.apply(&mut set);
    }

    /// Time-based transitions (open → half-open); the health threads call this.
    pub fn tick(&self, now: Instant) {
        let mut set = self.set.lock();
        set.tick(now);
        self.apply(&mut set);
    }

    /// The soonest a request may be retried when every partition holding a key is out.
    pub fn retry_after(&self, now: Instant) -> Duration {
        let mut set = self.set.lock();
        let mut best = Duration::from_secs(1);
        for p in 0..set.len() {
            match set.admit(p, now) {
                Admit::No { retry_after } => best = best.min(retry_after),
                // Only asking: hand a probe slot straight back.
                Admit::Probe(t) => set.release(p, t),
                Admit::Yes => {}
            }
        }
        self.apply(&mut set);
        best.max(Duration::from_millis(10))
    }

    /// Logs each transition once and moves partitions in and out of rotation.
    fn apply(&self, set: &mut BreakerSet) {
        while let Some((p, t)) = set.transitions() {
            if let Some(s) = self.states.get(p) {
                s.store(t.to.as_gauge(), Ordering::Relaxed);
            }
            let Some(partition) = self.partitions.get(p) else {
                continue;
            };
            match t.to {
                State::Open => {
                    tracing::warn!(partition = %partition.name(), "{t}");
                    partition.note_trip(Instant::now());
                    partition.mark_unhealthy(&format!("circuit breaker open: {t}"));
                }
                State::HalfOpen => {
                    tracing::info!(partition = %partition.name(), "{t}");
                }
                State::Closed => {
                    tracing::info!(partition = %partition.name(), "{t}");
                    partition.mark_healthy();
                }
            }
        }
    }
}

/// How an HSM call's result counts for the breaker (tuning/CONTROL.md §1).
pub fn outcome(result: Result<Duration, ErrorClass>) -> Outcome {
    match result {
        Ok(took) => Outcome::Success { took },
        Err(ErrorClass::Request) => Outcome::RequestError,
        Err(ErrorClass::Busy) => Outcome::Busy,
        Err(ErrorClass::SessionLost | ErrorClass::NotLoggedIn | ErrorClass::StaleHandle) => {
            Outcome::SessionLost
        }
        Err(_) => Outcome::DeviceFailure,
    }
}
