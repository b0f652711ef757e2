//! Per-partition admission to the HSM: the adaptive in-flight limit ([`Limiter`]) made usable by
//! worker threads, and the engine-wide retry budget for busy answers.
//!
//! A worker takes a permit ([`Gate::try_enter`]) before it takes a job, and gives it back after
//! the call ([`Gate::leave`]); each finished call feeds the limiter (latency sample, or a busy
//! answer). The limiter itself stays sans-IO; this is the thin locked shell around it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::control::limiter::{Limiter, LimiterConfig};

/// Permits for HSM calls on one partition.
#[derive(Debug)]
pub struct Gate {
    /// Calls in flight (permits held).
    inflight: AtomicUsize,
    /// The limiter's current limit, readable without the lock.
    limit: AtomicUsize,
    /// The limiter's bounds (fixed).
    min: usize,
    max: usize,
    limiter: Mutex<Limiter>,
}

impl Gate {
    /// A gate starting at the config's initial limit.
    pub fn new(cfg: LimiterConfig) -> Gate {
        let limiter = Limiter::new(cfg);
        Gate {
            inflight: AtomicUsize::new(0),
            limit: AtomicUsize::new(limiter.limit()),
            min: limiter.config().min_limit,
            max: limiter.config().max_limit,
            limiter: Mutex::new(limiter),
        }
    }

    /// Takes a permit if fewer than the limit are in flight. Returns the calls in flight
    /// including this one (the limiter's `inflight` for the sample).
    pub fn try_enter(&self) -> Option<usize> {
        let limit = self.limit.load(Ordering::Relaxed);
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|n| n + 1)
    }

    /// Gives a permit back (exactly once per successful [`Gate::try_enter`]).
    pub fn leave(&self) {
        let _ = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// A call that answered (successfully, or with an error that is not about load) after `rtt`,
    /// started with `inflight` calls in flight.
    pub fn on_sample(&self, now: Instant, rtt: Duration, inflight: usize) {
        if self.pinned() {
            return; // nothing to learn, and no lock on the hot path
        }
        let mut l = self.limiter.lock();
        l.on_sample(now, rtt, inflight);
        self.limit.store(l.limit(), Ordering::Relaxed);
    }

    /// A busy/throttled answer: the limit shrinks.
    pub fn on_busy(&self, now: Instant) {
        if self.pinned() {
            return;
        }
        let mut l = self.limiter.lock();
        l.on_busy(now);
        self.limit.store(l.limit(), Ordering::Relaxed);
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Permits held now (the tests' view; the engine reports the load of its shards).
    #[cfg(test)]
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether the limit cannot move (`min_limit == max_limit`, e.g. one worker).
    pub fn pinned(&self) -> bool {
        self.min == self.max
    }

    /// Jobs a worker takes per wake-up with `queued` jobs in its queue: its share of them
    /// under the current limit (`Limiter::drain_size`), or `max_drain` when the limit is pinned.
    pub fn drain_size(&self, queued: usize, max_drain: usize) -> usize {
        if self.pinned() {
            return max_drain.max(1);
        }
        queued
            .div_ceil(self.limit().max(1))
            .clamp(1, max_drain.max(1))
    }

    /// How much longer than at full concurrency a queue wait is expected to take at the current
    /// limit: `max_limit / limit` (1 when the limit is at its maximum).
    pub fn slowdown(&self) -> u32 {
        u32::try_from(self.max.div_ceil(self.limit().max(1))).unwrap_or(u32::MAX)
    }
}

/// Retries of busy answers allowed per first attempt, in thousandths (0.2: at most ~20% extra
/// load on a throttled HSM, Finagle's and gRPC's default retry budget).
const RETRY_RATIO_MILLI: u64 = 200;
/// Retries saved up at most (and at start), so a burst of busy answers after a quiet period can
/// still be retried a little.
const RETRY_RESERVE: u64 = 20;

/// The engine-wide budget for retrying busy answers: every first attempt deposits 0.2 retries,
/// every retry spends one. Lock-free; counts in thousandths of a retry.
#[derive(Debug)]
pub struct RetryBudget {
    milli: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            milli: AtomicU64::new(RETRY_RESERVE * 1000),
        }
    }
}

impl RetryBudget {
    /// A first attempt was made.
    pub fn deposit(&self) {
        let cap = RETRY_RESERVE * 1000;
        if self.milli.load(Ordering::Relaxed) >= cap {
            return; // full: skip the write (the common case on a healthy HSM)
        }
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some((m + RETRY_RATIO_MILLI).min(cap))
            });
    }

    /// Spends one retry if the budget has one.
    pub fn try_spend(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                m.checked_sub(1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max: usize) -> Gate {
        Gate::new(LimiterConfig::for_sessions(max))
    }

    #[test]
    fn permits_are_capped_by_the_limit_and_returned() {
        let g = gate(3);
        assert_eq!(g.try_enter(), Some(1));
        assert_eq!(g.try_enter(), Some(2));
        assert_eq!(g.try_enter(), Some(3));
        assert_eq!(g.try_enter(), None);
        g.leave();
        assert_eq!(g.inflight(), 2);
        assert_eq!(g.try_enter(), Some(3));
        for _ in 0..5 {
            g.leave(); // extra leaves never underflow
        }
        assert_eq!(g.inflight(), 0);
    }

    #[test]
    fn busy_answers_shrink_the_permits() {
        let g = gate(8);
        let t0 = Instant::now();
        assert_eq!(g.limit(), 8);
        for i in 0..10u32 {
            g.on_busy(t0 + Duration::from_millis(20) * i);
        }
        assert!(g.limit() < 4, "limit {}", g.limit());
        let permits = std::iter::from_fn(|| g.try_enter()).take(8).count();
        assert_eq!(permits, g.limit());
    }

    #[test]
    fn retry_budget_is_a_fifth_of_first_attempts_plus_a_reserve() {
        let b = RetryBudget::default();
        let reserve = (0..100).take_while(|_| b.try_spend()).count();
        assert_eq!(reserve as u64, RETRY_RESERVE);
        assert!(!b.try_spend());
        for _ in 0..50 {
            b.deposit();
        }
        let earned = (0..100).take_while(|_| b.try_spend()).count();
        assert_eq!(earned, 10, "50 first attempts earn 10 retries");
        for _ in 0..10_000 {
            b.deposit();
        }
        let capped = (0..1000).take_while(|_| b.try_spend()).count();
        assert_eq!(capped as u64, RETRY_RESERVE, "savings are capped");
    }
}
