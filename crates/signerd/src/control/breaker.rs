//! Circuit breaker for one HSM partition. Sans-IO (docs/ARCHITECTURE.md, Invariants): the caller passes `now`, reports
//! outcomes and polls [`Breaker::transitions`]; no threads, clocks or I/O in here.
//!
//! ```text
//! Closed   ──(N failures in a row | failure rate ≥ R over the window | force_open)──▶ Open
//! Open     ──(open period over)──▶ HalfOpen: at most `half_open_probes` probes in flight
//! HalfOpen ──(`probes_to_close` probe successes)──▶ Closed
//! HalfOpen ──(a probe fails, is slow or times out | force_open)──▶ Open, period doubled
//! ```
//!
//! What counts (docs/ARCHITECTURE.md, HSM error classes): device/token errors and calls slower than `slow_call` are failures;
//! request errors prove the device answered, so they end a failure streak (and count as a probe
//! success) but stay out of the failure-rate window; busy/throttled answers and lost sessions
//! count as nothing (the limiter handles the first, the worker rebuilds the session for the
//! second). The rules and defaults are explained in `tuning/CONTROL.md`.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::duration;

/// Breaker settings, and the config's `[breaker]` table as it is read (docs/CONFIG.md): every key
/// optional, defaulting to [`BreakerConfig::default`]; times are durations with their unit
/// (`slow_call = "1s"`). The defaults are documented per field; `tuning/CONTROL.md` says why.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Open after this many failures in a row, with no success or request error between them
    /// (default 5). `u32::MAX` turns streak trips off.
    pub consecutive_failures: u32,
    /// Open when at least this share of the calls in the window failed (default 0.5), in (0, 1].
    pub failure_rate: f64,
    /// Length of the sliding failure-rate window (default 10 s), kept in 10 buckets.
    #[serde(deserialize_with = "duration::deserialize")]
    pub window: Duration,
    /// No failure rate is computed below this many counted calls in the window (default 20).
    /// `u32::MAX` turns rate trips off.
    pub min_calls: u32,
    /// A successful call at least this slow counts as a failure (default 1 s). Raise it for HSMs
    /// whose normal calls are slow (RSA-4096, a distant network HSM).
    #[serde(deserialize_with = "duration::deserialize")]
    pub slow_call: Duration,
    /// First open period (default 500 ms); it doubles after each failed probe...
    #[serde(deserialize_with = "duration::deserialize")]
    pub open_base: Duration,
    /// ...up to this: the longest open period, a hard ceiling also after jitter (default 30 s).
    #[serde(deserialize_with = "duration::deserialize")]
    pub open_max: Duration,
    /// Each open period is multiplied by a factor drawn uniformly from `1 ± jitter`
    /// (default 0.2), in [0, 0.9].
    pub jitter: f64,
    /// Most probes in flight at once while half-open (default 3), in 1..=64.
    pub half_open_probes: u32,
    /// Probe successes that close the breaker (default 3). A failed probe reopens it first.
    pub probes_to_close: u32,
    /// A probe not reported within this time counts as failed (default 2 s, at least
    /// `slow_call`): a hung call must not keep the breaker half-open for ever.
    #[serde(deserialize_with = "duration::deserialize")]
    pub probe_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            slow_call: Duration::from_secs(1),
            open_base: Duration::from_millis(500),
            open_max: Duration::from_secs(30),
            jitter: 0.2,
            half_open_probes: 3,
            probes_to_close: 3,
            probe_timeout: Duration::from_secs(2),
        }
    }
}

/// Longest window, open period and probe timeout accepted by [`BreakerConfig::validate`].
const MAX_PERIOD: Duration = Duration::from_secs(3600);
/// Shortest slow call and open period accepted by [`BreakerConfig::validate`].
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// Most probes in flight at once.
const MAX_PROBES: u32 = 64;
/// Buckets of the failure-rate window.
const BUCKETS: usize = 10;
/// Transitions kept for [`Breaker::transitions`]; beyond it the oldest are dropped.
const MAX_PENDING: usize = 32;
/// Shortest retry hint handed out.
const MIN_RETRY_AFTER: Duration = Duration::from_millis(1);

impl BreakerConfig {
    /// Checks every field; the message names the first bad one as the config file spells it
    /// (`breaker.slow_call`), which is where users set them.
    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        if c.consecutive_failures == 0 {
            return Err("breaker.consecutive_failures must be >= 1".into());
        }
        if !(c.failure_rate > 0.0 && c.failure_rate <= 1.0) {
            return Err("breaker.failure_rate must be in (0, 1]".into());
        }
        if c.window < Duration::from_millis(10) || c.window > MAX_PERIOD {
            return Err("breaker.window must be between 10ms and 1h".into());
        }
        if c.min_calls == 0 {
            return Err("breaker.min_calls must be >= 1".into());
        }
        if c.slow_call < MIN_PERIOD || c.slow_call > MAX_PERIOD {
            return Err("breaker.slow_call must be between 1ms and 1h".into());
        }
        if c.open_base < MIN_PERIOD || c.open_base > c.open_max || c.open_max > MAX_PERIOD {
            return Err("breaker: need 1ms <= breaker.open_base <= breaker.open_max <= 1h".into());
        }
        if !(0.0..=0.9).contains(&c.jitter) {
            return Err("breaker.jitter must be in [0, 0.9]".into());
        }
        if !(1..=MAX_PROBES).contains(&c.half_open_probes) {
            return Err(format!(
                "breaker.half_open_probes must be in 1..={MAX_PROBES}"
            ));
        }
        if c.probes_to_close == 0 {
            return Err("breaker.probes_to_close must be >= 1".into());
        }
        if c.probe_timeout < c.slow_call || c.probe_timeout > MAX_PERIOD {
            return Err("breaker.probe_timeout must be between breaker.slow_call and 1h".into());
        }
        Ok(())
    }

    /// The nearest usable config: [`Breaker::new`] never panics, whatever it is given.
    fn sanitized(mut self) -> BreakerConfig {
        let d = BreakerConfig::default();
        self.consecutive_failures = self.consecutive_failures.max(1);
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            self.failure_rate = d.failure_rate;
        }
        self.window = self.window.clamp(Duration::from_millis(10), MAX_PERIOD);
        self.min_calls = self.min_calls.max(1);
        self.slow_call = self.slow_call.clamp(MIN_PERIOD, MAX_PERIOD);
        self.open_max = self.open_max.clamp(MIN_PERIOD, MAX_PERIOD);
        self.open_base = self.open_base.clamp(MIN_PERIOD, self.open_max);
        if !(0.0..=0.9).contains(&self.jitter) {
            self.jitter = d.jitter;
        }
        self.half_open_probes = self.half_open_probes.clamp(1, MAX_PROBES);
        self.probes_to_close = self.probes_to_close.max(1);
        self.probe_timeout = self.probe_timeout.clamp(self.slow_call, MAX_PERIOD);
        self
    }
}

/// How one admitted call ended, in the classes of docs/ARCHITECTURE.md (HSM error classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The HSM answered with a result. At or above `slow_call` it counts as a failure.
    Success {
        /// Time inside the HSM call.
        took: Duration,
    },
    /// Device or token error (`DEVICE_REMOVED`, `DEVICE_ERROR`, `TOKEN_NOT_PRESENT`, repeated
    /// `GENERAL_ERROR`, or a session rebuild that failed with one of those): a failure.
    DeviceFailure,
    /// Busy or throttled (`FUNCTION_FAILED` on network HSMs, `OPERATION_ACTIVE`): not counted;
    /// the limiter backs off instead.
    Busy,
    /// The request's input was refused (`DATA_LEN_RANGE`, `MECHANISM_INVALID`, ...): the device
    /// answered, so it ends a failure streak and counts as a probe success; it is kept out of the
    /// failure-rate window, so bad requests can neither dilute nor inflate the rate.
    RequestError,
    /// The session was lost (`SESSION_HANDLE_INVALID`, `SESSION_CLOSED`, `USER_NOT_LOGGED_IN`):
    /// not counted; the worker rebuilds the session and retries.
    SessionLost,
}

/// Breaker state as routers and dashboards see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Normal operation: every call is admitted.
    Closed,
    /// Testing: only probes are admitted.
    HalfOpen,
    /// Out of rotation: nothing is admitted until the open period ends.
    Open,
}

impl State {
    /// Value of the `signer_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> u8 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }

    /// Lower-case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half-open",
            State::Open => "open",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A ticket for one half-open probe. Report it with [`Breaker::record_probe`], or hand it back
/// with [`Breaker::release`] if the call was not made. Tickets of an earlier half-open period are
/// ignored, so a late answer cannot sway a later verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    epoch: u64,
    slot: usize,
}

/// Whether a call may go to the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go ahead; report the outcome with [`Breaker::record`].
    Yes,
    /// Half-open: go ahead as a probe; report with [`Breaker::record_probe`].
    Probe(Probe),
    /// Not now: route elsewhere, or answer UNAVAILABLE with this retry hint.
    No {
        /// When asking again may succeed (at least 1 ms).
        retry_after: Duration,
    },
}

/// Why the state changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// This many failures in a row.
    ConsecutiveFailures {
        /// Length of the streak.
        count: u32,
    },
    /// The failure rate over the window reached the threshold.
    FailureRate {
        /// Failed calls in the window.
        failures: u32,
        /// Counted calls in the window.
        calls: u32,
    },
    /// The open period is over; probes may go.
    OpenElapsed,
    /// Enough probes succeeded.
    ProbesSucceeded {
        /// Probe successes.
        count: u32,
    },
    /// A probe failed (device error, or slower than `slow_call`).
    ProbeFailed,
    /// A probe was not reported within `probe_timeout`.
    ProbeTimedOut,
    /// [`Breaker::force_open`] (e.g. the health probe saw `TOKEN_NOT_PRESENT`).
    Forced {
        /// The caller's reason.
        reason: String,
    },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::ConsecutiveFailures { count } => write!(f, "{count} consecutive failures"),
            Cause::FailureRate { failures, calls } => {
                write!(f, "{failures} of {calls} calls in the window failed")
            }
            Cause::OpenElapsed => f.write_str("open period over, probing"),
            Cause::ProbesSucceeded { count } => write!(f, "{count} probes succeeded"),
            Cause::ProbeFailed => f.write_str("a probe failed"),
            Cause::ProbeTimedOut => f.write_str("a probe did not answer in time"),
            Cause::Forced { reason } => write!(f, "forced: {reason}"),
        }
    }
}

/// One state change, to be logged once and mirrored in the gauge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Why.
    pub cause: Cause,
    /// The open period just started (only when `to` is [`State::Open`]).
    pub open_for: Option<Duration>,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "breaker {} -> {}", self.from, self.to)?;
        if let Some(d) = self.open_for {
            write!(f, " for {d:?}")?;
        }
        write!(f, ": {}", self.cause)
    }
}

/// A point-in-time view for metrics, logs and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The state as of the last call that took `now` (no time-based extrapolation).
    pub state: State,
    /// Counted calls in the failure-rate window.
    pub calls: u32,
    /// Failed calls in the window.
    pub failures: u32,
    /// Current failure streak.
    pub streak: u32,
    /// Probes in flight.
    pub probes: usize,
    /// Doublings of the open period (0: `open_base`).
    pub level: u32,
    /// Rate trips deferred by the share cap (see [`may_open`]) since the breaker was made.
    pub deferred: u64,
}

/// Circuit breaker of one partition.
#[derive(Clone, Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    clock: MonoClock,
    rng: u64,
    phase: Phase,
    window: Window,
    streak: u32,
    /// Doublings of the open period: +1 per failed half-open and per re-trip within one
    /// `window` of closing; back to 0 on a trip after a full window closed.
    level: u32,
    last_closed: Option<Duration>,
    /// Half-open period number; probe tickets carry it.
    epoch: u64,
    /// Per probe slot: when it was admitted (on the breaker's time line).
    slots: Vec<Option<Duration>>,
    successes: u32,
    deferred: u64,
    pending: VecDeque<Transition>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Duration },
    HalfOpen,
}

impl Breaker {
    /// A closed breaker. `seed` drives the jitter (give each partition its own). The config is
    /// not validated here (do that at config load); out-of-range values are clamped to the
    /// nearest usable ones so the breaker never panics.
    pub fn new(cfg: BreakerConfig, seed: u64) -> Breaker {
        let cfg = cfg.sanitized();
        Breaker {
            window: Window::new(cfg.window),
            slots: vec![None; cfg.half_open_probes as usize],
            cfg,
            clock: MonoClock::new(),
            rng: seed,
            phase: Phase::Closed,
            streak: 0,
            level: 0,
            last_closed: None,
            epoch: 0,
            successes: 0,
            deferred: 0,
            pending: VecDeque::new(),
        }
    }

    /// The config in use (after clamping).
    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// Asks to make one call. Open: `No` until the open period ends. Then half-open: a `Probe`
    /// while fewer than `half_open_probes` are in flight, else `No`. Closed: `Yes`.
    pub fn admit(&mut self, now: Instant) -> Admit {
        let t = self.advance(now);
        match self.phase {
            Phase::Closed => Admit::Yes,
            Phase::Open { until } => Admit::No {
                retry_after: until.saturating_sub(t).max(MIN_RETRY_AFTER),
            },
            Phase::HalfOpen => match self.slots.iter().position(Option::is_none) {
                Some(slot) => {
                    self.slots[slot] = Some(t);
                    Admit::Probe(Probe {
                        epoch: self.epoch,
                        slot,
                    })
                }
                None => Admit::No {
                    retry_after: self.probe_retry_after(t),
                },
            },
        }
    }

    /// Reports a call admitted with [`Admit::Yes`]. Reports that arrive after the breaker left
    /// `Closed` (calls that were already in flight) are ignored.
    pub fn record(&mut self, now: Instant, outcome: Outcome) {
        self.record_capped(now, outcome, true);
    }

    /// [`record`](Self::record) under the share cap: with `rate_trip_allowed` false a failure-rate
    /// trip is deferred (the breaker stays closed and checks again on the next failure); a
    /// failure streak still opens it. [`BreakerSet`] computes the flag with [`may_open`].
    pub fn record_capped(&mut self, now: Instant, outcome: Outcome, rate_trip_allowed: bool) {
        let t = self.advance(now);
        if self.phase != Phase::Closed {
            return;
        }
        match self.verdict(outcome) {
            Verdict::Healthy => {
                self.streak = 0;
                self.window.add(t, false);
            }
            Verdict::Answered => self.streak = 0,
            Verdict::Neutral => {}
            Verdict::Failed => {
                self.streak = self.streak.saturating_add(1);
                self.window.add(t, true);
                let (calls, failures) = self.window.totals(t);
                if self.streak >= self.cfg.consecutive_failures {
                    let count = self.streak;
                    self.trip(t, Cause::ConsecutiveFailures { count });
                } else if calls >= self.cfg.min_calls
                    && f64::from(failures) >= self.cfg.failure_rate * f64::from(calls)
                {
                    if rate_trip_allowed {
                        self.trip(t, Cause::FailureRate { failures, calls });
                    } else {
                        self.deferred = self.deferred.saturating_add(1);
                    }
                }
            }
        }
    }

    /// Reports a probe. A failure (or a slow success) reopens the breaker with a doubled open
    /// period; `probes_to_close` successes close it; busy and session-lost answers only free the
    /// slot. Stale tickets (an earlier half-open period) and repeated reports are ignored.
    pub fn record_probe(&mut self, now: Instant, probe: Probe, outcome: Outcome) {
        let t = self.advance(now);
        if !self.take_slot(probe) {
            return;
        }
        match self.verdict(outcome) {
            Verdict::Healthy | Verdict::Answered => {
                self.successes = self.successes.saturating_add(1);
                if self.successes >= self.cfg.probes_to_close {
                    let count = self.successes;
                    self.close(t, count);
                }
            }
            Verdict::Failed => self.reopen(t, Cause::ProbeFailed),
            Verdict::Neutral => {}
        }
    }

    /// Hands back a probe ticket whose call was never made (deadline passed, shutdown).
    pub fn release(&mut self, probe: Probe) {
        self.take_slot(probe);
    }

    /// Opens the breaker now, whatever its state (an external signal such as a health probe that
    /// saw `TOKEN_NOT_PRESENT`). Already open: the open period is extended if the new one ends
    /// later, without a transition.
    pub fn force_open(&mut self, now: Instant, reason: impl Into<String>) {
        let t = self.advance(now);
        let cause = Cause::Forced {
            reason: reason.into(),
        };
        match self.phase {
            Phase::Closed => self.trip(t, cause),
            Phase::HalfOpen => self.reopen(t, cause),
            Phase::Open { until } => {
                let until = until.max(t.saturating_add(self.open_period()));
                self.phase = Phase::Open { until };
            }
        }
    }

    /// Applies time-based changes (open period over, probe timed out) without a call, so
    /// [`transitions`](Self::transitions) reports them on an idle partition too.
    pub fn tick(&mut self, now: Instant) {
        self.advance(now);
    }

    /// The state at `now`, including time-based changes not applied yet (an open period that is
    /// over reads as half-open; a timed-out probe as open). Does not change the breaker.
    pub fn state(&self, now: Instant) -> State {
        let t = self.clock.peek(now);
        match self.phase {
            Phase::Closed => State::Closed,
            Phase::Open { until } if t >= until => State::HalfOpen,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen if self.probe_timed_out(t) => State::Open,
            Phase::HalfOpen => State::HalfOpen,
        }
    }

    /// The next state change not yet taken, oldest first. Call until `None` after
    /// `admit`/`record`/`record_probe`/`force_open`/`tick` to log each change exactly once.
    pub fn transitions(&mut self) -> Option<Transition> {
        self.pending.pop_front()
    }

    /// Counters for metrics and tests, with the window evaluated at `now`.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let t = self.clock.peek(now);
        let (calls, failures) = self.window.totals(t);
        Snapshot {
            state: self.phase.state(),
            calls,
            failures,
            streak: self.streak,
            probes: self.slots.iter().filter(|s| s.is_some()).count(),
            level: self.level,
            deferred: self.deferred,
        }
    }
}

// Private helpers.
impl Breaker {
    /// Moves the time line to `now` and applies time-based transitions.
    fn advance(&mut self, now: Instant) -> Duration {
        let t = self.clock.advance(now);
        if let Phase::Open { until } = self.phase {
            if t >= until {
                self.phase = Phase::HalfOpen;
                self.epoch = self.epoch.wrapping_add(1);
                self.slots.iter_mut().for_each(|s| *s = None);
                self.successes = 0;
                self.emit(State::Open, State::HalfOpen, Cause::OpenElapsed, None);
            }
        }
        if self.phase == Phase::HalfOpen && self.probe_timed_out(t) {
            self.reopen(t, Cause::ProbeTimedOut);
        }
        t
    }

    fn verdict(&self, outcome: Outcome) -> Verdict {
        match outcome {
            Outcome::Success { took } if took >= self.cfg.slow_call => Verdict::Failed,
            Outcome::Success { .. } => Verdict::Healthy,
            Outcome::DeviceFailure => Verdict::Failed,
            Outcome::RequestError => Verdict::Answered,
            Outcome::Busy | Outcome::SessionLost => Verdict::Neutral,
        }
    }

    /// Frees the probe's slot; false if the ticket is stale or was already reported.
    fn take_slot(&mut self, probe: Probe) -> bool {
        if self.phase != Phase::HalfOpen || probe.epoch != self.epoch {
            return false;
        }
        match self.slots.get_mut(probe.slot) {
            Some(slot @ Some(_)) => {
                *slot = None;
                true
            }
            _ => false,
        }
    }

    fn probe_timed_out(&self, t: Duration) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|&at| t.saturating_sub(at) >= self.cfg.probe_timeout)
    }

    /// All probe slots busy: a short hint, the verdict comes within about one call.
    fn probe_retry_after(&self, t: Duration) -> Duration {
        let oldest = self.slots.iter().flatten().min().copied().unwrap_or(t);
        let left = (oldest.saturating_add(self.cfg.probe_timeout)).saturating_sub(t);
        left.min(self.cfg.open_base).max(MIN_RETRY_AFTER)
    }

    /// Closed → Open.
    fn trip(&mut self, t: Duration, cause: Cause) {
        let flapping = self
            .last_closed
            .is_some_and(|c| t.saturating_sub(c) < self.cfg.window);
        self.level = if flapping { self.bumped_level() } else { 0 };
        self.open(t, State::Closed, cause);
    }

    /// HalfOpen → Open, with a doubled open period.
    fn reopen(&mut self, t: Duration, cause: Cause) {
        self.level = self.bumped_level();
        self.open(t, State::HalfOpen, cause);
    }

    fn bumped_level(&self) -> u32 {
        self.level.saturating_add(1).min(31)
    }

    fn open(&mut self, t: Duration, from: State, cause: Cause) {
        let period = self.open_period();
        self.phase = Phase::Open {
            until: t.saturating_add(period),
        };
        self.streak = 0;
        self.window.clear();
        self.slots.iter_mut().for_each(|s| *s = None);
        self.emit(from, State::Open, cause, Some(period));
    }

    /// HalfOpen → Closed.
    fn close(&mut self, t: Duration, count: u32) {
        self.phase = Phase::Closed;
        self.last_closed = Some(t);
        self.streak = 0;
        self.window.clear();
        self.slots.iter_mut().for_each(|s| *s = None);
        let cause = Cause::ProbesSucceeded { count };
        self.emit(State::HalfOpen, State::Closed, cause, None);
    }

    /// `open_base · 2^level`, capped at `open_max`, times a factor in `1 ± jitter`, capped again
    /// (so `open_max` is a hard ceiling; at the ceiling the jitter only shortens).
    fn open_period(&mut self) -> Duration {
        let cap = self.cfg.open_max;
        let raw = self
            .cfg
            .open_base
            .saturating_mul(1u32 << self.level.min(31))
            .min(cap);
        let factor = 1.0 + self.cfg.jitter * (2.0 * unit(splitmix64(&mut self.rng)) - 1.0);
        Duration::try_from_secs_f64(raw.as_secs_f64() * factor)
            .unwrap_or(raw)
            .min(cap)
    }

    fn emit(&mut self, from: State, to: State, cause: Cause, open_for: Option<Duration>) {
        if self.pending.len() == MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Transition {
            from,
            to,
            cause,
            open_for,
        });
    }
}

impl Phase {
    fn state(self) -> State {
        match self {
            Phase::Closed => State::Closed,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen => State::HalfOpen,
        }
    }
}

/// What an outcome means for the breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// A timely success: ends a streak, counted as a success in the window.
    Healthy,
    /// The device answered (request error): ends a streak, not in the window.
    Answered,
    /// Device failure or slow call.
    Failed,
    /// Busy or session lost: not counted.
    Neutral,
}

/// Whether one more partition may open on a failure-rate trip, given `open_now` partitions out of
/// rotation (open or half-open) of `total`: only while the count after opening stays within
/// `floor(max_share · total)`. So one partition alone never rate-trips (nowhere to move its
/// load), and `max_share = 1.0` removes the cap. Hard evidence (a failure streak,
/// [`Breaker::force_open`]) is not subject to this cap; see `tuning/CONTROL.md`.
pub fn may_open(open_now: usize, total: usize, max_share: f64) -> bool {
    if open_now >= total || !max_share.is_finite() {
        return false;
    }
    // The epsilon absorbs products like 0.7 * 10 = 6.9999...; the cast saturates.
    let allowed = (max_share.clamp(0.0, 1.0) * total as f64 + 1e-9).floor() as usize;
    open_now < allowed
}

/// Default share of a provider's partitions that rate trips may take out at once.
pub const DEFAULT_MAX_OPEN_SHARE: f64 = 0.5;

/// The breakers of a group of partitions that can stand in for each other (one provider), with
/// the share cap applied: a failure-rate trip that would take more than `max_share` of them out
/// of rotation is deferred. Partition indices are `0..len()`; an index out of range panics (a
/// wiring bug, not input).
#[derive(Clone, Debug)]
pub struct BreakerSet {
    breakers: Vec<Breaker>,
    max_share: f64,
}

impl BreakerSet {
    /// `partitions` closed breakers; breaker `i` is seeded from `seed` and `i`.
    pub fn new(
        cfg: &BreakerConfig,
        partitions: usize,
        max_share: f64,
        seed: u64,
    ) -> Result<BreakerSet, String> {
        cfg.validate()?;
        if !(max_share > 0.0 && max_share <= 1.0) {
            return Err("breaker.max_open_share must be in (0, 1]".into());
        }
        let breakers = (0..partitions)
            .map(|i| {
                let mut s = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                Breaker::new(cfg.clone(), splitmix64(&mut s))
            })
            .collect();
        Ok(BreakerSet {
            breakers,
            max_share,
        })
    }

    /// Number of partitions.
    pub fn len(&self) -> usize {
        self.breakers.len()
    }

    /// True when there are no partitions.
    pub fn is_empty(&self) -> bool {
        self.breakers.is_empty()
    }

    /// One partition's breaker.
    pub fn breaker(&self, i: usize) -> &Breaker {
        &self.breakers[i]
    }

    /// [`Breaker::admit`] for partition `i`.
    pub fn admit(&mut self, i: usize, now: Instant) -> Admit {
        self.breakers[i].admit(now)
    }

    /// [`Breaker::record`] for partition `i`, with rate trips capped by [`may_open`].
    pub fn record(&mut self, i: usize, now: Instant, outcome: Outcome) {
        let others_out = self
            .breakers
            .iter()
            .enumerate()
            .filter(|&(j, b)| j != i && b.state(now) != State::Closed)
            .count();
        let allowed = may_open(others_out, self.breakers.len(), self.max_share);
        self.breakers[i].record_capped(now, outcome, allowed);
    }

    /// [`Breaker::record_probe`] for partition `i`.
    pub fn record_probe(&mut self, i: usize, now: Instant, probe: Probe, outcome: Outcome) {
        self.breakers[i].record_probe(now, probe, outcome);
    }

    /// [`Breaker::release`] for partition `i`.
    pub fn release(&mut self, i: usize, probe: Probe) {
        self.breakers[i].release(probe);
    }

    /// [`Breaker::force_open`] for partition `i` (not capped: hard evidence).
    pub fn force_open(&mut self, i: usize, now: Instant, reason: impl Into<String>) {
        self.breakers[i].force_open(now, reason);
    }

    /// [`Breaker::tick`] for every partition.
    pub fn tick(&mut self, now: Instant) {
        self.breakers.iter_mut().for_each(|b| b.tick(now));
    }

    /// [`Breaker::state`] of partition `i`.
    pub fn state(&self, i: usize, now: Instant) -> State {
        self.breakers[i].state(now)
    }

    /// Partitions out of rotation (open or half-open) at `now`.
    pub fn out_of_rotation(&self, now: Instant) -> usize {
        let out = |b: &&Breaker| b.state(now) != State::Closed;
        self.breakers.iter().filter(out).count()
    }

    /// The next pending transition of any partition, lowest index first.
    pub fn transitions(&mut self) -> Option<(usize, Transition)> {
        self.breakers
            .iter_mut()
            .enumerate()
            .find_map(|(i, b)| b.transitions().map(|t| (i, t)))
    }
}

/// Turns the caller's `Instant`s into a private time line that never runs backwards (scenario 24).
/// A `now` earlier than the last one by up to [`MonoClock::REANCHOR`] (threads that read the clock
/// before taking a lock) counts as no time passing; a larger step back re-anchors on it, so a
/// bogus far-future `now` cannot freeze the time line for longer than that. Also used by the
/// limiter.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MonoClock {
    anchor: Option<Instant>,
    elapsed: Duration,
}

impl MonoClock {
    /// Steps back beyond this re-anchor instead of waiting for the clock to catch up.
    pub(crate) const REANCHOR: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> MonoClock {
        MonoClock::default()
    }

    /// Moves to `now`; returns the position on the time line (0 at the first call).
    pub(crate) fn advance(&mut self, now: Instant) -> Duration {
        match self.anchor {
            Some(a) if now >= a => {
                self.elapsed = self
                    .elapsed
                    .saturating_add(now.saturating_duration_since(a));
                self.anchor = Some(now);
            }
            Some(a) if a.saturating_duration_since(now) <= Self::REANCHOR => {}
            _ => self.anchor = Some(now),
        }
        self.elapsed
    }

    /// Where [`advance`](Self::advance) would move, without moving.
    pub(crate) fn peek(&self, now: Instant) -> Duration {
        match self.anchor {
            Some(a) => self
                .elapsed
                .saturating_add(now.saturating_duration_since(a)),
            None => self.elapsed,
        }
    }
}

/// The failure-rate window: `BUCKETS` buckets of `window / BUCKETS` each (Hystrix-style), so
/// the effective window is between 9/10 and 10/10 of `window`.
#[derive(Clone, Debug)]
struct Window {
    width_ns: u128,
    buckets: [Bucket; BUCKETS],
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    index: u64,
    calls: u32,
    failures: u32,
}

impl Window {
    fn new(window: Duration) -> Window {
        Window {
            width_ns: (window.as_nanos() / BUCKETS as u128).max(1),
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn index(&self, t: Duration) -> u64 {
        u64::try_from(t.as_nanos() / self.width_ns).unwrap_or(u64::MAX)
    }

    fn add(&mut self, t: Duration, failed: bool) {
        let i = self.index(t);
        let b = &mut self.buckets[(i % BUCKETS as u64) as usize];
        if b.index != i {
            *b = Bucket {
                index: i,
                ..Bucket::default()
            };
        }
        b.calls = b.calls.saturating_add(1);
        b.failures = b.failures.saturating_add(u32::from(failed));
    }

    /// (calls, failures) in the buckets that are still inside the window at `t`.
    fn totals(&self, t: Duration) -> (u32, u32) {
        let i = self.index(t);
        self.buckets
            .iter()
            .filter(|b| b.index <= i && i - b.index < BUCKETS as u64)
            .fold((0u32, 0u32), |(c, f), b| {
                (c.saturating_add(b.calls), f.saturating_add(b.failures))
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

/// splitmix64 (Steele, Lea, Flood 2014): a tiny, seedable, good-enough generator for jitter.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from the top 53 bits.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);
    const OK: Outcome = Outcome::Success { took: MS };

    /// A fixed origin far enough from the process start that tests can step back in time.
    fn origin() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn no_jitter() -> BreakerConfig {
        BreakerConfig {
            jitter: 0.0,
            ..BreakerConfig::default()
        }
    }

    fn drain(b: &mut Breaker) -> Vec<Transition> {
        std::iter::from_fn(|| b.transitions()).collect()
    }

    fn probe(a: Admit) -> Probe {
        match a {
            Admit::Probe(p) => p,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    /// Trips a closed breaker with a failure streak at `now`; returns the open period.
    fn trip(b: &mut Breaker, now: Instant) -> Duration {
        for _ in 0..b.config().consecutive_failures {
            assert_eq!(b.admit(now), Admit::Yes);
            b.record(now, Outcome::DeviceFailure);
        }
        let t = drain(b);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!((t[0].from, t[0].to), (State::Closed, State::Open));
        t[0].open_for.unwrap_or_default()
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = BreakerConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.consecutive_failures, 5);
        assert_eq!(c.failure_rate, 0.5);
        assert_eq!(c.window, Duration::from_secs(10));
        assert_eq!(c.min_calls, 20);
        assert_eq!(c.slow_call, Duration::from_secs(1));
        assert_eq!(c.open_base, 500 * MS);
        assert_eq!(c.open_max, Duration::from_secs(30));
        assert_eq!(c.jitter, 0.2);
        assert_eq!((c.half_open_probes, c.probes_to_close), (3, 3));
        assert_eq!(c.probe_timeout, Duration::from_secs(2));
    }

    #[test]
    fn validate_names_the_bad_field() {
        type Edit = fn(&mut BreakerConfig);
        let bad: [(Edit, &str); 16] = [
            (|c| c.consecutive_failures = 0, "consecutive_failures"),
            (|c| c.failure_rate = 0.0, "failure_rate"),
            (|c| c.failure_rate = 1.5, "failure_rate"),
            (|c| c.failure_rate = f64::NAN, "failure_rate"),
            (|c| c.window = MS, "window"),
            (|c| c.min_calls = 0, "min_calls"),
            (|c| c.slow_call = Duration::ZERO, "slow_call"),
            (|c| c.open_base = Duration::ZERO, "open_base"),
            (|c| c.open_base = Duration::from_secs(60), "open_base"),
            (|c| c.open_max = Duration::from_secs(7200), "open_max"),
            (|c| c.jitter = -0.1, "jitter"),
            (|c| c.jitter = 1.0, "jitter"),
            (|c| c.half_open_probes = 0, "half_open_probes"),
            (|c| c.half_open_probes = 65, "half_open_probes"),
            (|c| c.probes_to_close = 0, "probes_to_close"),
            (|c| c.probe_timeout = 10 * MS, "probe_timeout"),
        ];
        for (edit, field) in bad {
            let mut cfg = BreakerConfig::default();
            edit(&mut cfg);
            let Err(e) = cfg.validate() else {
                panic!("{field}: accepted")
            };
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn invalid_config_is_clamped_not_panicking() {
        let cfg = BreakerConfig {
            consecutive_failures: 0,
            failure_rate: f64::NAN,
            window: Duration::ZERO,
            min_calls: 0,
            slow_call: Duration::ZERO,
            open_base: Duration::MAX,
            open_max: Duration::ZERO,
            jitter: f64::INFINITY,
            half_open_probes: 0,
            probes_to_close: 0,
            probe_timeout: Duration::ZERO,
        };
        let mut b = Breaker::new(cfg, 1);
        assert_eq!(b.config().validate(), Ok(()));
        let t0 = origin();
        b.record(t0, Outcome::DeviceFailure);
        assert_eq!(b.state(t0), State::Open);
        let p = probe(b.admit(t0 + Duration::from_secs(1)));
        // slow_call was clamped to 1 ms and the probe took 1 s, so only a request error passes
        // as a probe success.
        b.record_probe(t0 + Duration::from_secs(1), p, Outcome::RequestError);
        assert_eq!(b.state(t0 + Duration::from_secs(1)), State::Closed);
    }

    #[test]
    fn gauge_values() {
        assert_eq!(State::Closed.as_gauge(), 0);
        assert_eq!(State::HalfOpen.as_gauge(), 1);
        assert_eq!(State::Open.as_gauge(), 2);
        assert_eq!(State::HalfOpen.to_string(), "half-open");
    }

    #[test]
    fn closed_admits_and_successes_keep_it_closed() {
        let mut b = Breaker::new(BreakerConfig::default(), 1);
        let t0 = origin();
        for i in 0..1000 {
            let now = t0 + i * MS;
            assert_eq!(b.admit(now), Admit::Yes);
            b.record(now, OK);
        }
        assert_eq!(b.state(t0), State::Closed);
        assert!(drain(&mut b).is_empty());
    }

    #[test]
    fn consecutive_failures_trip() {
        let mut b = Breaker::new(no_jitter(), 1);
        let t0 = origin();
        for _ in 0..4 {
            b.record(t0, Outcome::DeviceFailure);
        }
        assert_eq!(b.state(t0), State::Closed);
        assert_eq!(b.snapshot(t0).streak, 4);
        b.record(t0, Outcome::DeviceFailure);
        assert_eq!(b.state(t0), State::Open);
        let t = drain(&mut b);
        assert_eq!(
            t,
            vec![Transition {
                from: State::Closed,
                to: State::Open,
                cause: Cause::ConsecutiveFailures { count: 5 },
                open_for: Some(500 * MS),
            }]
        );
        assert_eq!(
            t[0].to_string(),
            "breaker closed -> open for 500ms: 5 consecutive failures"
        );
        assert_eq!(
            b.admit(t0 + 100 * MS),
            Admit::No {
                retry_after: 400 * MS
            }
        );
    }

    #[test]
    fn a_success_or_request_error_ends_the_streak() {
        // Rate trips off, so only the streak can open it.
        let cfg = BreakerConfig {
            min_calls: u32::MAX,
            ..BreakerConfig::default()
        };
        for breaker in [OK, Outcome::RequestError] {
            let mut b = Breaker::new(cfg.clone(), 1);
            let t0 = origin();
            for _ in 0..10 {
                for _ in 0..4 {
                    b.record(t0, Outcome::DeviceFailure);
                }
                assert_eq!(b.snapshot(t0).streak, 4);
                b.record(t0, breaker);
                assert_eq!(b.snapshot(t0).streak, 0, "{breaker:?}");
            }
            assert_eq!(b.state(t0), State::Closed, "{breaker:?}");
            assert!(drain(&mut b).is_empty());
        }
    }

    #[test]
    fn slow_calls_are_failures() {
        let mut b = Breaker::new(BreakerConfig::default(), 1);
        let t0 = origin();
        let just_fast = Outcome::Success {
            took: Duration::from_secs(1) - MS,
        };
        for _ in 0..100 {
            b.record(t0, just_fast);
        }
        assert_eq!(b.state(t0), State::Closed);
        for _ in 0..5 {
            b.record(
                t0,
                Outcome::Success {
                    took: Duration::from_secs(1),
                },
            );
        }
        assert_eq!(b.state(t0), State::Open);
    }

    #[test]
    fn failure_rate_trips_at_the_threshold_with_enough_calls() {
        let mut b = Breaker::new(BreakerConfig::default(), 1);
        let t0 = origin();
        // S F S F ...: no streak; 9 failures in 19 calls, then the 20th (a failure) makes 10/20.
        for i in 0..19 {
            let now = t0 + i * 10 * MS;
            b.record(
                now,
                if i % 2 == 0 {
                    OK
                } else {
                    Outcome::DeviceFailure
                },
            );
        }
        assert_eq!(b.snapshot(t0 + 190 * MS).calls, 19);
        assert_eq!(b.state(t0 + 190 * MS), State::Closed);
        b.record(t0 + 190 * MS, Outcome::DeviceFailure);
        let t = drain(&mut b);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t[0].cause,
            Cause::FailureRate {
                failures: 10,
                calls: 20
            }
        );
    }

    #[test]
    fn failure_rate_below_threshold_or_min_calls_does_not_trip() {
        let mut b = Breaker::new(BreakerConfig::default(), 1);
        let t0 = origin();
        // 19 of 19 failing would be 100 %, but below min_calls (and streaks broken by request
        // errors, which stay out of the window).
        for _ in 0..19 {
            b.record(t0, Outcome::DeviceFailure);
            b.record(t0, Outcome::RequestError);
        }
        assert_eq!(b.snapshot(t0).calls, 19);
        assert_eq!(b.state(t0), State::Closed);
        // 19 failures of 40 calls: 47.5 %.
        for _ in 0..21 {
            b.record(t0, OK);
        }
        assert_eq!(b.state(t0), State::Closed);
        let s = b.snapshot(t0);
        assert_eq!((s.calls, s.failures), (40, 19));
    }

    #[test]
    fn busy_and_session_lost_never_trip_nor_end_a_streak() {
        let mut b = Breaker::new(BreakerConfig::default(), 1);
        let t0 = origin();
        for i in 0..10_000 {
            let now = t0 + i * MS;
            assert_eq!(b.admit(now), Admit::Yes);
            b.record(
                now,
                if i % 2 == 0 {
                    Outcome::Busy
                } else {
                    Outcome::SessionLost
                },
            );
        }
        assert_eq!(b.state(t0 + Duration::from_secs(10)), State::Closed);
        assert_eq!(b.snapshot(t0 + Duration::from_secs(10)).calls, 0);
        let now = t0 + Duration::from_secs(11);
        for _ in 0..4 {
            b.record(now, Outcome::DeviceFailure);
            b.record(now, Outcome::Busy);
            b.record(now, Outcome::SessionLost);
        }
        assert_eq!(b.snapshot(now).streak, 4);
        b.record(now, Outcome::DeviceFailure);
        assert_eq!(b.state(now), State::Open);
    }

    #[test]
    fn request_errors_never_trip() {
        let mut b = Breaker::new(BreakerConfig::default(), 1);
        let t0 = origin();
        for _ in 0..10_000 {
            b.record(t0, Outcome::RequestError);
        }
        assert_eq!(b.state(t0), State::Closed);
        assert_eq!(b.snapshot(t0).calls, 0);
    }

    #[test]
    fn the_window_forgets_old_calls() {
        let mut b = Breaker::new(BreakerConfig::default(), 1);
        let t0 = origin();
        for _ in 0..9 {
            b.record(t0, Outcome::DeviceFailure);
            b.record(t0, OK);
        }
        assert_eq!(b.snapshot(t0).calls, 18);
        assert_eq!(b.snapshot(t0 + Duration::from_secs(9)).calls, 18);
        // The bucket of t0 has left the window once a full window has passed.
        assert_eq!(b.snapshot(t0 + Duration::from_secs(11)).calls, 0);
        let later = t0 + Duration::from_secs(11);
        for _ in 0..2 {
            b.record(later, Outcome::DeviceFailure);
            b.record(later, OK);
        }
        assert_eq!(b.state(later), State::Closed, "old failures were evicted");
        let s = b.snapshot(later);
        assert_eq!((s.calls, s.failures), (4, 2));
        // Without the gap the same calls would have tripped (control).
        let mut c = Breaker::new(BreakerConfig::default(), 1);
        for _ in 0..11 {
            c.record(t0, Outcome::DeviceFailure);
            c.record(t0, OK);
        }
        assert_eq!(c.state(t0), State::Open);
    }

    #[test]
    fn open_becomes_half_open_when_the_period_ends_without_a_call() {
        let mut b = Breaker::new(no_jitter(), 1);
        let t0 = origin();
        assert_eq!(trip(&mut b, t0), 500 * MS);
        assert_eq!(b.state(t0 + 499 * MS), State::Open);
        assert_eq!(b.admit(t0 + 499 * MS), Admit::No { retry_after: MS });
        assert_eq!(b.state(t0 + 500 * MS), State::HalfOpen);
        assert!(
            drain(&mut b).is_empty(),
            "state() does not change the breaker"
        );
        b.tick(t0 + 500 * MS);
        let t = drain(&mut b);
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].from, t[0].to, &t[0].cause),
            (State::Open, State::HalfOpen, &Cause::OpenElapsed)
        );
        assert_eq!(b.snapshot(t0 + 500 * MS).state, State::HalfOpen);
    }

    #[test]
    fn half_open_admits_exactly_the_configured_probes() {
        let mut b = Breaker::new(no_jitter(), 1);
        let t0 = origin();
        trip(&mut b, t0);
        let now = t0 + 500 * MS;
        let probes: Vec<_> = (0..3).map(|_| probe(b.admit(now))).collect();
        for _ in 0..100 {
            assert!(matches!(b.admit(now), Admit::No { .. }));
        }
        assert_eq!(b.snapshot(now).probes, 3);
        b.release(probes[1]);
        b.release(probes[1]); // twice: no effect
        assert_eq!(b.snapshot(now).probes, 2);
        let again = probe(b.admit(now));
        assert!(matches!(b.admit(now), Admit::No { .. }));
        // Calls admitted with Yes before the trip report late: ignored.
        b.record(now, OK);
        b.record(now, Outcome::DeviceFailure);
        assert_eq!(b.state(now), State::HalfOpen);
        assert_eq!(b.snapshot(now).probes, 3);
        b.release(again);
    }

    #[test]
    fn half_open_closes_after_probe_successes() {
        let mut b = Breaker::new(no_jitter(), 1);
        let t0 = origin();
        trip(&mut b, t0);
        let now = t0 + 600 * MS;
        let p: Vec<_> = (0..3).map(|_| probe(b.admit(now))).collect();
        b.record_probe(now, p[0], OK);
        b.record_probe(now, p[0], OK); // repeated report: ignored
        b.record_probe(now, p[1], Outcome::RequestError); // the device answered
        assert_eq!(b.state(now), State::HalfOpen);
        b.record_probe(now, p[2], OK);
        assert_eq!(b.state(now), State::Closed);
        let t = drain(&mut b);
        let steps: Vec<_> = t.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            steps,
            vec![
                (State::Open, State::HalfOpen),
                (State::HalfOpen, State::Closed)
            ]
        );
        assert_eq!(t[1].cause, Cause::ProbesSucceeded { count: 3 });
        assert_eq!(b.admit(now), Admit::Yes);
        assert_eq!(b.snapshot(now).streak, 0);
    }

    #[test]
    fn probe_slots_are_reused_until_enough_successes() {
        let cfg = BreakerConfig {
            half_open_probes: 1,
            probes_to_close: 3,
            ..no_jitter()
        };
        let mut b = Breaker::new(cfg, 1);
        let t0 = origin();
        trip(&mut b, t0);
        let now = t0 + Duration::from_secs(1);
        for i in 0..3 {
            assert_eq!(b.state(now), State::HalfOpen, "round {i}");
            let p = probe(b.admit(now));
            assert!(matches!(b.admit(now), Admit::No { .. }));
            b.record_probe(now, p, OK);
        }
        assert_eq!(b.state(now), State::Closed);
    }

    #[test]
    fn busy_or_session_lost_probes_only_free_the_slot() {
        let mut b = Breaker::new(no_jitter(), 1);
        let t0 = origin();
        trip(&mut b, t0);
        let now = t0 + Duration::from_secs(1);
        for _ in 0..50 {
            let p = probe(b.admit(now));
            b.record_probe(now, p, Outcome::Busy);
            let p = probe(b.admit(now));
            b.record_probe(now, p, Outcome::SessionLost);
        }
        assert_eq!(b.state(now), State::HalfOpen);
        assert_eq!(b.snapshot(now).probes, 0);
    }

    #[test]
    fn a_failed_probe_reopens_with_a_doubled_period_up_to_the_cap() {
        let mut b = Breaker::new(no_jitter(), 1);
        let mut now = origin();
        let mut periods = vec![trip(&mut b, now)];
        for _ in 0..9 {
            now += *periods.last().unwrap_or(&Duration::ZERO);
            let p = probe(b.admit(now));
            b.record_probe(now, p, Outcome::DeviceFailure);
            let t = drain(&mut b);
            assert_eq!(t.len(), 2, "{t:?}");
            assert_eq!(
                (t[1].from, t[1].to, &t[1].cause),
                (State::HalfOpen, State::Open, &Cause::ProbeFailed)
            );
            periods.push(t[1].open_for.unwrap_or_default());
        }
        let ms: Vec<_> = periods.iter().map(|d| d.as_millis()).collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
        // A slow probe is a failed probe too.
        now += Duration::from_secs(30);
        let p = probe(b.admit(now));
        b.record_probe(
            now,
            p,
            Outcome::Success {
                took: Duration::from_secs(2),
            },
        );
        assert_eq!(b.state(now), State::Open);
    }

    #[test]
    fn jitter_is_bounded_reproducible_and_seed_dependent() {
        let periods = |seed: u64, level: u32| -> Vec<Duration> {
            let mut b = Breaker::new(BreakerConfig::default(), seed);
            b.level = level;
            (0..200).map(|_| b.open_period()).collect()
        };
        for level in [0, 3, 6, 10] {
            let raw = (500 * MS)
                .saturating_mul(1 << level)
                .min(Duration::from_secs(30));
            let a = periods(7, level);
            assert_eq!(a, periods(7, level), "same seed, same periods");
            assert_ne!(a, periods(8, level), "another seed, other periods");
            for d in &a {
                assert!(
                    *d >= raw.mul_f64(0.8) && *d <= raw.mul_f64(1.2),
                    "{d:?} vs {raw:?}"
                );
                assert!(*d <= Duration::from_secs(30), "open_max is a ceiling");
            }
            let min = a.iter().min().copied().unwrap_or_default();
            let max = a.iter().max().copied().unwrap_or_default();
            // Spread over more than half of the possible range (not a constant).
            let cap = Duration::from_secs(30);
            let range = raw.mul_f64(1.2).min(cap) - raw.mul_f64(0.8);
            assert!(max - min > range / 2, "{min:?}..{max:?} of {range:?}");
        }
    }

    #[test]
    fn a_probe_that_never_answers_reopens_and_its_late_report_is_ignored() {
        let mut b = Breaker::new(no_jitter(), 1);
        let t0 = origin();
        trip(&mut b, t0);
        let h1 = t0 + 500 * MS;
        let stuck = probe(b.admit(h1));
        let quick = probe(b.admit(h1));
        b.record_probe(h1, quick, OK);
        assert_eq!(b.state(h1 + Duration::from_secs(2) - MS), State::HalfOpen);
        assert_eq!(
            b.state(h1 + Duration::from_secs(2)),
            State::Open,
            "state() sees the timeout"
        );
        b.tick(h1 + Duration::from_secs(2));
        let t = drain(&mut b);
        assert_eq!(t.last().map(|t| &t.cause), Some(&Cause::ProbeTimedOut));
        assert_eq!(
            t.last().and_then(|t| t.open_for),
            Some(Duration::from_secs(1))
        );
        // Next half-open: the stuck probe of the previous one answers, and must not count.
        let h2 = h1 + Duration::from_secs(3);
        let p = probe(b.admit(h2));
        b.record_probe(h2, stuck, OK);
        b.record_probe(h2, stuck, Outcome::DeviceFailure);
        b.release(stuck);
        let s = b.snapshot(h2);
        assert_eq!((s.state, s.probes), (State::HalfOpen, 1));
        b.record_probe(h2, p, OK);
        assert_eq!(b.state(h2), State::HalfOpen, "1 success of 3");
    }

    #[test]
    fn force_open_from_every_state() {
        let mut b = Breaker::new(no_jitter(), 1);
        let t0 = origin();
        b.force_open(t0, "TOKEN_NOT_PRESENT");
        let t = drain(&mut b);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t[0].cause,
            Cause::Forced {
                reason: "TOKEN_NOT_PRESENT".into()
            }
        );
        assert_eq!(
            t[0].to_string(),
            "breaker closed -> open for 500ms: forced: TOKEN_NOT_PRESENT"
        );
        // Open: extended, no new transition.
        b.force_open(t0 + 400 * MS, "again");
        assert!(drain(&mut b).is_empty());
        assert_eq!(b.state(t0 + 800 * MS), State::Open);
        assert_eq!(b.state(t0 + 900 * MS), State::HalfOpen);
        // Half-open: reopen with a doubled period; probes of that period go stale.
        let p = probe(b.admit(t0 + 900 * MS));
        b.force_open(t0 + 900 * MS, "health probe");
        let t = drain(&mut b);
        let last = t.last().cloned();
        assert_eq!(
            last.as_ref().map(|t| (t.from, t.to)),
            Some((State::HalfOpen, State::Open))
        );
        assert_eq!(last.and_then(|t| t.open_for), Some(Duration::from_secs(1)));
        b.record_probe(t0 + 900 * MS, p, OK);
        assert_eq!(b.snapshot(t0 + 900 * MS).probes, 0);
        assert_eq!(b.state(t0 + 900 * MS), State::Open);
    }

    #[test]
    fn retripping_soon_after_closing_keeps_escalating() {
        let mut b = Breaker::new(no_jitter(), 1);
        let mut now = origin();
        let close = |b: &mut Breaker, now: Instant| {
            for _ in 0..3 {
                let p = probe(b.admit(now));
                b.record_probe(now, p, OK);
            }
            assert_eq!(b.state(now), State::Closed);
            drain(b);
        };
        assert_eq!(trip(&mut b, now), 500 * MS);
        now += 500 * MS;
        close(&mut b, now);
        now += Duration::from_secs(1);
        assert_eq!(
            trip(&mut b, now),
            Duration::from_secs(1),
            "flapping: doubled"
        );
        now += Duration::from_secs(1);
        close(&mut b, now);
        now += Duration::from_secs(11);
        assert_eq!(
            trip(&mut b, now),
            500 * MS,
            "closed for a full window: from the base again"
        );
    }

    /// Scenario 23: a partition failing half its calls. Half-open admits only its probes, the
    /// breaker never admits a normal call while open or half-open, and reopening is jittered.
    #[test]
    fn flapping_under_half_failures() {
        let mut b = Breaker::new(BreakerConfig::default(), 42);
        let mut rng = 9u64;
        let mut device = move || splitmix64(&mut rng).is_multiple_of(2);
        let t0 = origin();
        let mut reopen_periods = Vec::new();
        let mut opens = 0;
        for step in 0..60_000u32 {
            let now = t0 + step * 10 * MS;
            // Five callers arrive at once; probes are answered after all five asked.
            let mut probes = Vec::new();
            for _ in 0..5 {
                let before = b.state(now);
                match b.admit(now) {
                    Admit::Yes => {
                        assert_eq!(before, State::Closed);
                        let o = if device() { OK } else { Outcome::DeviceFailure };
                        b.record(now, o);
                    }
                    Admit::Probe(p) => {
                        assert_ne!(before, State::Closed);
                        probes.push(p);
                        assert!(probes.len() <= 3, "at most 3 probes in flight");
                    }
                    Admit::No { retry_after } => assert!(retry_after >= MS),
                }
            }
            for p in probes {
                let o = if device() { OK } else { Outcome::DeviceFailure };
                b.record_probe(now, p, o);
            }
            for t in std::iter::from_fn(|| b.transitions()) {
                if t.to == State::Open {
                    opens += 1;
                }
                if t.from == State::HalfOpen && t.to == State::Open {
                    reopen_periods.push(t.open_for.unwrap_or_default());
                }
            }
        }
        assert!(opens > 10, "it does trip: {opens}");
        assert!(reopen_periods.len() > 10);
        let distinct: std::collections::HashSet<_> = reopen_periods.iter().collect();
        assert!(
            distinct.len() > reopen_periods.len() / 2,
            "reopen periods are jittered"
        );
        assert!(reopen_periods
            .iter()
            .all(|d| *d <= Duration::from_secs(30) && *d >= 800 * MS));
    }

    /// Scenario 24: `now` going backwards (stale readings, or a bogus one) neither panics nor
    /// freezes the breaker open.
    #[test]
    fn time_going_backwards() {
        let mut b = Breaker::new(no_jitter(), 1);
        let t0 = origin();
        trip(&mut b, t0);
        // Slightly stale readings: no time passes.
        assert!(matches!(b.admit(t0 - 5 * MS), Admit::No { .. }));
        b.record(t0 - 5 * MS, Outcome::DeviceFailure);
        assert_eq!(b.state(t0 + 499 * MS), State::Open);
        assert_eq!(b.state(t0 + 500 * MS), State::HalfOpen);
        // A huge step back (10 min): re-anchored, the open period still ends 500 ms after t0
        // on the breaker's own time line.
        assert!(matches!(
            b.admit(t0 - Duration::from_secs(600)),
            Admit::No { .. }
        ));
        let back = t0 - Duration::from_secs(600);
        assert_eq!(b.state(back + 499 * MS), State::Open);
        assert!(matches!(b.admit(back + 500 * MS), Admit::Probe(_)));
        // A bogus far-future reading followed by real ones: no freeze.
        let mut c = Breaker::new(no_jitter(), 1);
        c.tick(t0);
        c.tick(t0 + Duration::from_secs(3000));
        trip(&mut c, t0 + MS);
        assert!(matches!(c.admit(t0 + 501 * MS), Admit::Probe(_)));
        // Window eviction across a step back.
        let mut d = Breaker::new(no_jitter(), 1);
        for _ in 0..4 {
            d.record(t0, Outcome::DeviceFailure);
            d.record(t0, OK);
        }
        d.record(t0 - Duration::from_secs(100), Outcome::DeviceFailure);
        assert_eq!(d.snapshot(t0 - Duration::from_secs(100)).calls, 9);
    }

    #[test]
    fn retry_after_is_never_zero() {
        let mut b = Breaker::new(no_jitter(), 1);
        let t0 = origin();
        trip(&mut b, t0);
        assert_eq!(
            b.admit(t0 + 499 * MS + Duration::from_micros(999)),
            Admit::No { retry_after: MS }
        );
        let now = t0 + 500 * MS;
        for _ in 0..3 {
            probe(b.admit(now));
        }
        // All probe slots taken: at most open_base, at least 1 ms.
        match b.admit(now) {
            Admit::No { retry_after } => assert_eq!(retry_after, 500 * MS),
            other => panic!("{other:?}"),
        }
        match b.admit(now + Duration::from_secs(2) - Duration::from_micros(1)) {
            Admit::No { retry_after } => assert_eq!(retry_after, MS),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn may_open_share_rule() {
        let cases = [
            (0, 1, 0.5, false), // one partition alone never rate-trips
            (0, 1, 1.0, true),
            (1, 1, 1.0, false),
            (0, 2, 0.5, true),
            (1, 2, 0.5, false),
            (0, 3, 0.5, true),
            (1, 3, 0.5, false),
            (4, 10, 0.5, true),
            (5, 10, 0.5, false),
            (6, 10, 0.7, true),
            (7, 10, 0.7, false),
            (0, 0, 0.5, false),
            (0, 4, 0.1, false),
            (3, 4, f64::NAN, false),
            (0, 4, f64::INFINITY, false),
            (9, 4, 1.0, false),
        ];
        for (open, total, share, want) in cases {
            assert_eq!(
                may_open(open, total, share),
                want,
                "{open}/{total} at {share}"
            );
        }
    }

    #[test]
    fn breaker_set_caps_rate_trips_but_not_hard_evidence() {
        assert!(BreakerSet::new(&BreakerConfig::default(), 2, 0.0, 1).is_err());
        let mut set = BreakerSet::new(&no_jitter(), 2, DEFAULT_MAX_OPEN_SHARE, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let t0 = origin();
        let rate_trip = |set: &mut BreakerSet, i: usize| {
            for _ in 0..10 {
                set.record(i, t0, OK);
                set.record(i, t0, Outcome::DeviceFailure);
            }
        };
        rate_trip(&mut set, 0);
        assert_eq!(set.state(0, t0), State::Open);
        rate_trip(&mut set, 1);
        assert_eq!(set.state(1, t0), State::Closed, "50 % cap: deferred");
        assert!(set.breaker(1).snapshot(t0).deferred > 0);
        assert_eq!(set.out_of_rotation(t0), 1);
        // A failure streak opens it regardless.
        for _ in 0..5 {
            set.record(1, t0, Outcome::DeviceFailure);
        }
        assert_eq!(set.state(1, t0), State::Open);
        let t: Vec<_> = std::iter::from_fn(|| set.transitions()).collect();
        assert_eq!(t.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1]);
        assert!(matches!(t[1].1.cause, Cause::ConsecutiveFailures { .. }));
        // Scenario 10: every partition failing hard is out, fast.
        assert_eq!(set.out_of_rotation(t0), 2);
        assert!(matches!(set.admit(0, t0), Admit::No { .. }));
        assert!(matches!(set.admit(1, t0), Admit::No { .. }));
    }

    #[test]
    fn breaker_set_single_partition_and_recovery() {
        let mut set = BreakerSet::new(&no_jitter(), 1, DEFAULT_MAX_OPEN_SHARE, 3)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((set.len(), set.is_empty()), (1, false));
        let t0 = origin();
        for _ in 0..50 {
            set.record(0, t0, Outcome::DeviceFailure);
            set.record(0, t0, OK);
        }
        assert_eq!(set.state(0, t0), State::Closed, "nowhere to move the load");
        set.force_open(0, t0, "TOKEN_NOT_PRESENT");
        assert_eq!(set.state(0, t0), State::Open);
        set.tick(t0 + 500 * MS);
        let now = t0 + 500 * MS;
        for _ in 0..3 {
            let p = probe(set.admit(0, now));
            set.record_probe(0, now, p, OK);
        }
        let p = set.admit(0, now);
        assert_eq!(p, Admit::Yes);
        let steps: Vec<_> = std::iter::from_fn(|| set.transitions())
            .map(|(_, t)| t.to)
            .collect();
        assert_eq!(steps, vec![State::Open, State::HalfOpen, State::Closed]);
        set.release(0, Probe { epoch: 0, slot: 0 });
    }

    #[derive(Clone, Debug)]
    enum Op {
        Step(i64),
        Admit,
        Record(u8, u64),
        Answer(usize, u8, u64),
        Release(usize),
        Force,
        Tick,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (-3000i64..5000).prop_map(Op::Step),
            Just(Op::Admit),
            Just(Op::Admit),
            (0u8..5, 0u64..2000).prop_map(|(o, ms)| Op::Record(o, ms)),
            (any::<usize>(), 0u8..5, 0u64..2000).prop_map(|(i, o, ms)| Op::Answer(i, o, ms)),
            any::<usize>().prop_map(Op::Release),
            Just(Op::Force),
            Just(Op::Tick),
        ]
    }

    fn outcome(o: u8, ms: u64) -> Outcome {
        match o {
            0 => Outcome::Success {
                took: Duration::from_millis(ms),
            },
            1 => Outcome::DeviceFailure,
            2 => Outcome::Busy,
            3 => Outcome::RequestError,
            _ => Outcome::SessionLost,
        }
    }

    proptest! {
        #[test]
        fn random_sequences_keep_the_invariants(
            seed in any::<u64>(),
            probes in 1u32..5,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let cfg = BreakerConfig {
                half_open_probes: probes,
                min_calls: 5,
                open_base: 50 * MS,
                open_max: Duration::from_secs(2),
                ..BreakerConfig::default()
            };
            let mut b = Breaker::new(cfg, seed);
            let t0 = origin();
            let mut off: i64 = 0;
            let mut held: Vec<Probe> = Vec::new();
            let mut last_to: Option<State> = None;
            for op in ops {
                let now = if off >= 0 {
                    t0 + Duration::from_millis(off.unsigned_abs())
                } else {
                    t0 - Duration::from_millis(off.unsigned_abs())
                };
                match op {
                    Op::Step(ms) => off = (off + ms).clamp(-3_000_000, 3_000_000),
                    Op::Admit => {
                        let before = b.state(now);
                        match b.admit(now) {
                            Admit::Yes => prop_assert_eq!(before, State::Closed),
                            Admit::Probe(p) => {
                                prop_assert_ne!(before, State::Closed);
                                prop_assert_eq!(b.snapshot(now).state, State::HalfOpen);
                                held.push(p);
                            }
                            Admit::No { retry_after } => {
                                prop_assert_ne!(before, State::Closed);
                                prop_assert!(retry_after >= MS);
                            }
                        }
                    }
                    Op::Record(o, ms) => b.record(now, outcome(o, ms)),
                    Op::Answer(i, o, ms) if !held.is_empty() => {
                        let p = held.swap_remove(i % held.len());
                        b.record_probe(now, p, outcome(o, ms));
                    }
                    Op::Release(i) if !held.is_empty() => {
                        let p = held.swap_remove(i % held.len());
                        b.release(p);
                    }
                    Op::Answer(..) | Op::Release(_) => {}
                    Op::Force => b.force_open(now, "test"),
                    Op::Tick => b.tick(now),
                }
                prop_assert!(b.state(now).as_gauge() <= 2);
                let s = b.snapshot(now);
                prop_assert!(s.probes <= probes as usize);
                prop_assert!(s.failures <= s.calls);
                // The transition log is a chain that ends in the current state.
                while let Some(t) = b.transitions() {
                    prop_assert_ne!(t.from, t.to);
                    prop_assert_eq!(last_to.unwrap_or(State::Closed), t.from);
                    prop_assert_eq!(t.open_for.is_some(), t.to == State::Open);
                    if let Some(d) = t.open_for {
                        prop_assert!(d <= Duration::from_secs(2));
                        prop_assert!(d >= Duration::from_millis(40));
                    }
                    last_to = Some(t.to);
                }
                prop_assert_eq!(last_to.unwrap_or(State::Closed), s.state);
            }
        }
    }
}
