//! The engine's circuit breakers (one per partition, `control::breaker`), behind one lock, and
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

use crate::control::breaker::{Admit, BreakerConfig, BreakerSet, Outcome, Probe, State};
use crate::hsm::Partition;

/// Breakers for every partition of an engine.
#[derive(Debug)]
pub struct Breakers {
    set: Arc<Mutex<BreakerSet>>,
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
            crate::control::breaker::DEFAULT_MAX_OPEN_SHARE,
            seed,
        )?;
        Ok(Breakers {
            set: Arc::new(Mutex::new(set)),
            states: partitions.iter().map(|_| AtomicU8::new(0)).collect(),
            partitions: partitions.to_vec(),
        })
    }

    /// The breaker state of partition `p` (as last seen by a transition).
    /// Breakers for `n` partitions that exist only as indices (unit tests of routing and
    /// probe tickets: no transition moves a partition in or out of rotation).
    #[cfg(test)]
    pub fn without_partitions(n: usize, cfg: &BreakerConfig) -> Result<Breakers, String> {
        let set = BreakerSet::new(cfg, n, crate::control::breaker::DEFAULT_MAX_OPEN_SHARE, 7)?;
        Ok(Breakers {
            set: Arc::new(Mutex::new(set)),
            states: (0..n).map(|_| AtomicU8::new(0)).collect(),
            partitions: Vec::new(),
        })
    }

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
    /// A half-open probe slot of partition `p`, as a ticket that hands itself back when dropped
    /// unreported (the call was not made there): `None` unless `p` is half-open with a free slot.
    pub fn probe(&self, p: usize, now: Instant) -> Option<ProbeTicket> {
        let mut set = self.set.lock();
        let admit = set.admit(p, now);
        self.apply(&mut set);
        match admit {
            Admit::Probe(t) => Some(ProbeTicket {
                set: Arc::clone(&self.set),
                partition: p,
                probe: Some(t),
            }),
            Admit::Yes | Admit::No { .. } => None,
        }
    }

    /// Reports an ordinary (non-probe) call's outcome on partition `p`.
    pub fn record(&self, p: usize, now: Instant, outcome: Outcome) {
        let mut set = self.set.lock();
        set.record(p, now, outcome);
        self.apply(&mut set);
    }

    /// Reports a probed call's outcome through its ticket (see [`ProbeTicket::record`]).
    pub fn record_probe(&self, ticket: &mut ProbeTicket, now: Instant, outcome: Outcome) {
        let Some(t) = ticket.probe.take() else {
            return;
        };
        let mut set = self.set.lock();
        set.record_probe(ticket.partition, now, t, outcome);
        self.apply(&mut set);
    }

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
    /// The shortest wait until some partition takes calls again (at least 10 ms, at most 1 s).
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

/// One half-open probe slot of one partition's breaker, held by the job sent there as a probe.
///
/// It is tied to its partition: reported with [`Breakers::record_probe`] by the worker of that
/// partition once the call was made, or handed back when dropped unreported (the job was shed,
/// answered without an HSM call, or moved to another partition: see
/// [`super::router::Router::hand_over`]). A probe slot is therefore never left to time out,
/// which the breaker would count as a failed probe and answer by reopening with a doubled open
/// period.
#[derive(Debug)]
pub struct ProbeTicket {
    set: Arc<Mutex<BreakerSet>>,
    partition: usize,
    /// `None` once reported.
    probe: Option<Probe>,
}

impl ProbeTicket {
    /// The partition whose probe slot this is.
    pub fn partition(&self) -> usize {
        self.partition
    }

    /// Whether the outcome was reported already.
    pub fn reported(&self) -> bool {
        self.probe.is_none()
    }
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        if let Some(t) = self.probe.take() {
            self.set.lock().release(self.partition, t);
        }
    }
}
