//! Adaptive concurrency limit for one partition: how many HSM calls may be in flight on it at
//! once (workers above the limit wait). Sans-IO (docs/ARCHITECTURE.md, Invariants): the caller passes `now` and the
//! measured call times; no threads, clocks or I/O in here.
//!
//! The law is Netflix's Gradient2 (concurrency-limits `Gradient2Limit`), fed by windows of samples
//! (`WindowedLimit`), with two AIMD-style brakes added for explicit congestion signals:
//!
//! - every window (≥ `window_min` and ≥ `window_samples` samples, or `window_max`):
//!   `short` = mean call time in the window; `long` = EWMA of `short` with time constant
//!   `baseline_window` (plain mean for the first `warmup_windows`), pulled down ×0.95 when
//!   `long / short > 2` (the HSM got much faster);
//! - `gradient = clamp(tolerance · long / short, 0.5, 1)`;
//!   `limit ← (1 − smoothing) · limit + smoothing · (limit · gradient + √limit)`: additive growth of
//!   `smoothing · √limit` per window while latency stays within `tolerance` of the baseline, a
//!   smoothed decrease when it rises; no change while the partition is app-limited (fewer than
//!   `limit / 2` calls were in flight), no growth in a window that saw a busy answer;
//! - latency blow-up (`short ≥ blowup · long`): `limit ← limit · backoff` at once;
//! - busy/throttled answers: `limit ← limit · backoff`, at most once per
//!   `max(busy_cooldown, short)` (answers to calls already in flight are the same event);
//! - always within `[min_limit, max_limit]`; `max_limit` is the number of workers (sessions) on the
//!   partition.
//!
//! `tuning/CONTROL.md` explains the choice and every default.

use std::time::{Duration, Instant};

use super::breaker::MonoClock;

/// Limiter settings. The defaults are documented per field; `tuning/CONTROL.md` says why.
#[derive(Clone, Debug, PartialEq)]
pub struct LimiterConfig {
    /// Lowest limit (default 1).
    pub min_limit: usize,
    /// Highest limit: the number of workers (sessions) on the partition (default 8; see
    /// [`LimiterConfig::for_sessions`]).
    pub max_limit: usize,
    /// Limit at start (default 8 = `max_limit`: sessions are open and idle, start optimistic).
    pub initial_limit: usize,
    /// Latency up to `tolerance × baseline` is treated as no queueing (default 1.5, Gradient2).
    pub tolerance: f64,
    /// Weight of each new estimate (default 0.2, Gradient2).
    pub smoothing: f64,
    /// Time constant of the baseline EWMA (default 600 s: Gradient2's 600 windows of 1 s). In
    /// time rather than windows because windows last 100 ms under load and up to 1 s when idle.
    pub baseline_window: Duration,
    /// Windows averaged plainly before the EWMA starts (default 10, Gradient2's warm-up).
    pub warmup_windows: u32,
    /// Shortest sample window (default 100 ms).
    pub window_min: Duration,
    /// Longest sample window: closes with at least one sample (default 1 s).
    pub window_max: Duration,
    /// Samples needed to close a window before `window_max` (default 10, Gradient2).
    pub window_samples: u32,
    /// A window whose mean is at least `blowup × baseline` cuts the limit by `backoff`
    /// (default 3.0: where the gradient reaches its 0.5 floor).
    pub blowup: f64,
    /// Multiplicative decrease on busy answers and latency blow-up (default 0.7), in [0.1, 1).
    pub backoff: f64,
    /// Shortest time between two busy decreases (default 10 ms); the last window's mean call
    /// time is used when longer.
    pub busy_cooldown: Duration,
    /// Most jobs a worker drains per wake-up (default 64, `engine.max_drain`).
    pub max_drain: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig::for_sessions(8)
    }
}

/// Highest `max_limit` accepted (a partition's workers are capped at 256 by the config).
const MAX_LIMIT: usize = 4096;
/// Call times below this are raised to it (a zero sample must not divide by zero).
const MIN_RTT_SECS: f64 = 1e-7;
/// Gradient floor (Gradient2).
const MIN_GRADIENT: f64 = 0.5;
/// Baseline pulled down by this factor when it is more than twice the recent mean (Gradient2).
const BASELINE_DECAY: f64 = 0.95;

impl LimiterConfig {
    /// Defaults for a partition with `sessions` workers: limit in `[1, sessions]`, starting at
    /// `sessions`.
    pub fn for_sessions(sessions: usize) -> LimiterConfig {
        let n = sessions.clamp(1, MAX_LIMIT);
        LimiterConfig {
            min_limit: 1,
            max_limit: n,
            initial_limit: n,
            tolerance: 1.5,
            smoothing: 0.2,
            baseline_window: Duration::from_secs(600),
            warmup_windows: 10,
            window_min: Duration::from_millis(100),
            window_max: Duration::from_secs(1),
            window_samples: 10,
            blowup: 3.0,
            backoff: 0.7,
            busy_cooldown: Duration::from_millis(10),
            max_drain: 64,
        }
    }

    /// Checks every field; the message names the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        if !(1 <= c.min_limit && c.min_limit <= c.max_limit && c.max_limit <= MAX_LIMIT) {
            return Err(format!(
                "limiter: need 1 <= min_limit <= max_limit <= {MAX_LIMIT}"
            ));
        }
        if !(c.min_limit..=c.max_limit).contains(&c.initial_limit) {
            return Err("limiter.initial_limit must be within [min_limit, max_limit]".into());
        }
        if !(1.0..=10.0).contains(&c.tolerance) {
            return Err("limiter.tolerance must be in [1, 10]".into());
        }
        if !(c.smoothing > 0.0 && c.smoothing <= 1.0) {
            return Err("limiter.smoothing must be in (0, 1]".into());
        }
        if c.baseline_window < c.window_max || c.baseline_window > Duration::from_secs(86_400) {
            return Err("limiter.baseline_window must be between window_max and 1 day".into());
        }
        if c.window_min < Duration::from_millis(1) || c.window_min > c.window_max {
            return Err("limiter: need 1 ms <= window_min <= window_max".into());
        }
        if c.window_samples == 0 {
            return Err("limiter.window_samples must be >= 1".into());
        }
        if !(1.0..=1000.0).contains(&c.blowup) {
            return Err("limiter.blowup must be in [1, 1000]".into());
        }
        if !(0.1..1.0).contains(&c.backoff) {
            return Err("limiter.backoff must be in [0.1, 1)".into());
        }
        if c.max_drain == 0 {
            return Err("limiter.max_drain must be >= 1".into());
        }
        Ok(())
    }

    /// The nearest usable config: [`Limiter::new`] never panics, whatever it is given.
    fn sanitized(mut self) -> LimiterConfig {
        let d = LimiterConfig::default();
        self.max_limit = self.max_limit.clamp(1, MAX_LIMIT);
        self.min_limit = self.min_limit.clamp(1, self.max_limit);
        self.initial_limit = self.initial_limit.clamp(self.min_limit, self.max_limit);
        if !(1.0..=10.0).contains(&self.tolerance) {
            self.tolerance = d.tolerance;
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            self.smoothing = d.smoothing;
        }
        self.window_max = self.window_max.max(Duration::from_millis(1));
        self.window_min = self
            .window_min
            .clamp(Duration::from_millis(1), self.window_max);
        self.baseline_window = self
            .baseline_window
            .clamp(self.window_max, Duration::from_secs(86_400));
        self.window_samples = self.window_samples.max(1);
        if !(1.0..=1000.0).contains(&self.blowup) {
            self.blowup = d.blowup;
        }
        if !(0.1..1.0).contains(&self.backoff) {
            self.backoff = d.backoff;
        }
        self.max_drain = self.max_drain.max(1);
        self
    }
}

/// The concurrency limit of one partition.
#[derive(Clone, Debug)]
pub struct Limiter {
    cfg: LimiterConfig,
    clock: MonoClock,
    /// The limit before rounding down, within `[min_limit, max_limit]`.
    estimate: f64,
    /// Baseline call time (s), once the first window closed.
    long: Option<f64>,
    /// Mean call time of the last closed window (s).
    short: Option<f64>,
    /// Windows closed so far (saturating).
    windows: u32,
    acc: Acc,
    /// A busy answer arrived during the current window.
    busy_in_window: bool,
    /// When the last multiplicative decrease happened (on the limiter's time line).
    last_decrease: Option<Duration>,
}

/// The open sample window.
#[derive(Clone, Copy, Debug, Default)]
struct Acc {
    start: Option<Duration>,
    samples: u32,
    sum: f64,
    max_inflight: usize,
}

impl Limiter {
    /// A limiter at `initial_limit`. The config is not validated here (do that at config load);
    /// out-of-range values are clamped to the nearest usable ones so the limiter never panics.
    pub fn new(cfg: LimiterConfig) -> Limiter {
        let cfg = cfg.sanitized();
        Limiter {
            estimate: cfg.initial_limit as f64,
            cfg,
            clock: MonoClock::new(),
            long: None,
            short: None,
            windows: 0,
            acc: Acc::default(),
            busy_in_window: false,
            last_decrease: None,
        }
    }

    /// The config in use (after clamping).
    pub fn config(&self) -> &LimiterConfig {
        &self.cfg
    }

    /// Reports one completed HSM call: `rtt` is the time inside the call, `inflight` the calls in
    /// flight on the partition when it was started (itself included). Busy answers go to
    /// [`on_busy`](Self::on_busy) instead; device failures and request errors are not latency
    /// samples (their times say nothing about queueing).
    pub fn on_sample(&mut self, now: Instant, rtt: Duration, inflight: usize) {
        let t = self.clock.advance(now);
        let rtt = rtt.as_secs_f64().max(MIN_RTT_SECS);
        let acc = &mut self.acc;
        let start = *acc.start.get_or_insert(t);
        acc.samples = acc.samples.saturating_add(1);
        acc.sum += rtt;
        acc.max_inflight = acc.max_inflight.max(inflight);
        let open_for = t.saturating_sub(start);
        let full = open_for >= self.cfg.window_min && acc.samples >= self.cfg.window_samples;
        if full || open_for >= self.cfg.window_max {
            self.close_window(t);
        }
    }

    /// Reports a busy/throttled answer (`FUNCTION_FAILED` on network HSMs, `OPERATION_ACTIVE`):
    /// the limit is multiplied by `backoff`, at most once per cooldown, and the current window
    /// may not grow it.
    pub fn on_busy(&mut self, now: Instant) {
        let t = self.clock.advance(now);
        self.busy_in_window = true;
        let cooldown = self
            .cfg
            .busy_cooldown
            .max(self.rtt_recent().unwrap_or_default());
        let due = self
            .last_decrease
            .is_none_or(|d| t.saturating_sub(d) >= cooldown);
        if due {
            self.decrease(t);
        }
    }

    /// Calls that may be in flight on the partition now, within `[min_limit, max_limit]`.
    pub fn limit(&self) -> usize {
        // The estimate stays within [min, max] (both <= MAX_LIMIT), so the cast is exact.
        (self.estimate.floor() as usize).clamp(self.cfg.min_limit, self.cfg.max_limit)
    }

    /// Whether one more call may start with `inflight` calls already in flight.
    pub fn may_start(&self, inflight: usize) -> bool {
        inflight < self.limit()
    }

    /// How many jobs a worker should take per wake-up with `queued` jobs waiting on the partition:
    /// its share `ceil(queued / limit)`, within `[1, max_drain]`, so one worker does not hoard
    /// work that the other admitted workers could start on.
    pub fn drain_size(&self, queued: usize) -> usize {
        queued
            .div_ceil(self.limit().max(1))
            .clamp(1, self.cfg.max_drain)
    }

    /// The limit before rounding (for metrics and tests).
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// Baseline call time (long-term EWMA), once measured.
    pub fn rtt_baseline(&self) -> Option<Duration> {
        self.long.and_then(|s| Duration::try_from_secs_f64(s).ok())
    }

    /// Mean call time of the last closed window, once measured.
    pub fn rtt_recent(&self) -> Option<Duration> {
        self.short.and_then(|s| Duration::try_from_secs_f64(s).ok())
    }
}

// Private helpers.
impl Limiter {
    fn close_window(&mut self, t: Duration) {
        let acc = std::mem::take(&mut self.acc);
        let busy = std::mem::take(&mut self.busy_in_window);
        let short = (acc.sum / f64::from(acc.samples.max(1))).max(MIN_RTT_SECS);
        let lasted = t.saturating_sub(acc.start.unwrap_or(t)).as_secs_f64();
        let mut long = match self.long {
            None => short,
            Some(l) if self.windows < self.cfg.warmup_windows => {
                let n = f64::from(self.windows);
                (l * n + short) / (n + 1.0)
            }
            Some(l) => {
                let alpha = 1.0 - (-lasted / self.cfg.baseline_window.as_secs_f64()).exp();
                l + (short - l) * alpha
            }
        };
        if long / short > 2.0 {
            long *= BASELINE_DECAY;
        }
        let long = long.max(MIN_RTT_SECS);
        self.long = Some(long);
        self.short = Some(short);
        self.windows = self.windows.saturating_add(1);

        if short >= self.cfg.blowup * long {
            self.decrease(t);
            return;
        }
        let app_limited = (acc.max_inflight as f64) < self.estimate / 2.0;
        if app_limited {
            return;
        }
        let gradient = clampf(self.cfg.tolerance * long / short, MIN_GRADIENT, 1.0);
        let queue = self.estimate.sqrt().max(1.0);
        let mut next = self.estimate * gradient + queue;
        if busy {
            next = next.min(self.estimate);
        }
        let s = self.cfg.smoothing;
        self.set_estimate(self.estimate * (1.0 - s) + next * s);
    }

    fn decrease(&mut self, t: Duration) {
        self.set_estimate(self.estimate * self.cfg.backoff);
        self.last_decrease = Some(t);
    }

    fn set_estimate(&mut self, e: f64) {
        self.estimate = clampf(e, self.cfg.min_limit as f64, self.cfg.max_limit as f64);
    }
}

/// `x` within `[lo, hi]` (lo <= hi); NaN becomes `lo`. Unlike `f64::clamp`, never panics.
fn clampf(x: f64, lo: f64, hi: f64) -> f64 {
    x.max(lo).min(hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn origin() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    fn starting_at(initial: usize, max: usize) -> Limiter {
        Limiter::new(LimiterConfig {
            initial_limit: initial,
            ..LimiterConfig::for_sessions(max)
        })
    }

    /// Feeds one sample every `every` for `dur`, each call taking `rtt(limit)` with
    /// `inflight(limit)` calls in flight (the partition's load as a function of the limit).
    /// Returns the end time and the limit after each sample.
    fn feed(
        l: &mut Limiter,
        from: Instant,
        dur: Duration,
        every: Duration,
        rtt: impl Fn(usize) -> Duration,
        inflight: impl Fn(usize) -> usize,
    ) -> (Instant, Vec<usize>) {
        let mut now = from;
        let mut limits = Vec::new();
        while now < from + dur {
            let limit = l.limit();
            l.on_sample(now, rtt(limit), inflight(limit));
            limits.push(l.limit());
            now += every;
        }
        (now, limits)
    }

    /// Saturated load: every permit is used.
    fn saturated(limit: usize) -> usize {
        limit
    }

    #[test]
    fn defaults_are_valid() {
        let c = LimiterConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!((c.min_limit, c.max_limit, c.initial_limit), (1, 8, 8));
        assert_eq!(
            (c.tolerance, c.smoothing, c.blowup, c.backoff),
            (1.5, 0.2, 3.0, 0.7)
        );
        assert_eq!(c.baseline_window, Duration::from_secs(600));
        assert_eq!(
            (c.window_min, c.window_max),
            (100 * MS, Duration::from_secs(1))
        );
        assert_eq!((c.window_samples, c.warmup_windows), (10, 10));
        assert_eq!((c.busy_cooldown, c.max_drain), (10 * MS, 64));
        let one = LimiterConfig::for_sessions(0);
        assert_eq!((one.min_limit, one.max_limit, one.initial_limit), (1, 1, 1));
        assert_eq!(one.validate(), Ok(()));
        assert_eq!(Limiter::new(c).limit(), 8);
    }

    #[test]
    fn validate_names_the_bad_field() {
        type Edit = fn(&mut LimiterConfig);
        let bad: [(Edit, &str); 14] = [
            (|c| c.min_limit = 0, "min_limit"),
            (|c| c.min_limit = 9, "min_limit"),
            (|c| c.max_limit = 5000, "max_limit"),
            (|c| c.initial_limit = 9, "initial_limit"),
            (|c| c.tolerance = 0.9, "tolerance"),
            (|c| c.smoothing = 0.0, "smoothing"),
            (|c| c.smoothing = f64::NAN, "smoothing"),
            (|c| c.baseline_window = 100 * MS, "baseline_window"),
            (|c| c.window_min = Duration::ZERO, "window_min"),
            (|c| c.window_min = Duration::from_secs(2), "window_min"),
            (|c| c.window_samples = 0, "window_samples"),
            (|c| c.blowup = 0.5, "blowup"),
            (|c| c.backoff = 1.0, "backoff"),
            (|c| c.max_drain = 0, "max_drain"),
        ];
        for (edit, field) in bad {
            let mut cfg = LimiterConfig::default();
            edit(&mut cfg);
            let Err(e) = cfg.validate() else {
                panic!("{field}: accepted")
            };
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn invalid_config_is_clamped_not_panicking() {
        let cfg = LimiterConfig {
            min_limit: 50,
            max_limit: 0,
            initial_limit: 100,
            tolerance: f64::NAN,
            smoothing: -1.0,
            baseline_window: Duration::ZERO,
            warmup_windows: 0,
            window_min: Duration::MAX,
            window_max: Duration::ZERO,
            window_samples: 0,
            blowup: f64::INFINITY,
            backoff: 2.0,
            busy_cooldown: Duration::MAX,
            max_drain: 0,
        };
        let mut l = Limiter::new(cfg);
        assert_eq!(l.config().validate(), Ok(()));
        let t0 = origin();
        l.on_sample(t0, MS, 1);
        l.on_busy(t0);
        assert_eq!((l.limit(), l.drain_size(10)), (1, 1));
    }

    #[test]
    fn steady_latency_grows_the_limit_to_max() {
        let mut l = starting_at(1, 32);
        let (_, limits) = feed(
            &mut l,
            origin(),
            Duration::from_secs(60),
            MS,
            |_| 2 * MS,
            saturated,
        );
        assert!(limits.windows(2).all(|w| w[0] <= w[1]), "never shrinks");
        assert_eq!(l.limit(), 32);
        assert_eq!(l.rtt_baseline(), Some(2 * MS));
        // It took a while: growth is additive (about 0.2·√limit per window).
        let first_at_max = limits.iter().position(|&x| x == 32).unwrap_or(0);
        assert!(first_at_max > 2_000, "{first_at_max}");
    }

    #[test]
    fn an_app_limited_partition_does_not_grow() {
        let mut l = starting_at(4, 32);
        feed(
            &mut l,
            origin(),
            Duration::from_secs(30),
            MS,
            |_| 2 * MS,
            |_| 1,
        );
        assert_eq!(l.limit(), 4);
    }

    #[test]
    fn doubled_latency_shrinks_the_limit() {
        let mut l = starting_at(32, 32);
        let t0 = origin();
        let (t1, _) = feed(
            &mut l,
            t0,
            Duration::from_secs(30),
            MS,
            |_| 2 * MS,
            saturated,
        );
        assert_eq!(l.limit(), 32);
        let (_, limits) = feed(
            &mut l,
            t1,
            Duration::from_secs(30),
            MS,
            |_| 4 * MS,
            saturated,
        );
        // Open loop (the latency does not fall as the limit does) it heads for the point where
        // limit·(1 − gradient) = √limit: 16 with gradient 0.75. The baseline slowly learns the
        // new latency (time constant 10 min), which moves that point up again.
        let lowest = limits.iter().copied().min().unwrap_or(0);
        assert!((16..=20).contains(&lowest), "{lowest}");
        let took = limits.iter().position(|&x| x == lowest).unwrap_or(0);
        assert!(took < 20_000, "reached within 20 s: {took} ms");
        assert!(l.limit() <= 24, "{}", l.limit());
    }

    /// A closed loop: an HSM that runs 8 calls in parallel and queues the rest. The limit settles
    /// where latency is about 1.5× the unloaded one plus the √limit allowance: about 16.
    #[test]
    fn settles_near_the_hsm_parallelism() {
        let mut l = starting_at(32, 32);
        let hsm = |inflight: usize| (2 * MS).mul_f64((inflight as f64 / 8.0).max(1.0));
        // Unloaded baseline first (light load), then saturate.
        let (t1, _) = feed(
            &mut l,
            origin(),
            Duration::from_secs(5),
            MS,
            |_| 2 * MS,
            saturated,
        );
        let (_, limits) = feed(&mut l, t1, Duration::from_secs(120), MS, hsm, saturated);
        let last = l.limit();
        assert!((12..=20).contains(&last), "{last}");
        let tail = &limits[limits.len() - 10_000..];
        assert!(tail.iter().all(|x| (12..=20).contains(x)), "stable");
        assert!(
            hsm(last) <= 5 * MS,
            "latency bounded at ~2x the unloaded call"
        );
    }

    #[test]
    fn a_latency_blow_up_cuts_the_limit_at_once() {
        let mut l = starting_at(32, 32);
        let t0 = origin();
        let (t1, _) = feed(
            &mut l,
            t0,
            Duration::from_secs(10),
            MS,
            |_| 2 * MS,
            saturated,
        );
        assert_eq!(l.limit(), 32);
        // One window (100 ms, ≥10 samples) of calls at +200 ms.
        let (t2, _) = feed(&mut l, t1, 101 * MS, 10 * MS, |_| 202 * MS, saturated);
        assert_eq!(l.limit(), 22, "32 · 0.7");
        // It stays slow: the limit falls to the floor, window after window.
        feed(
            &mut l,
            t2,
            Duration::from_secs(3),
            10 * MS,
            |_| 202 * MS,
            saturated,
        );
        assert_eq!(l.limit(), 1);
    }

    #[test]
    fn a_busy_storm_cuts_multiplicatively_then_the_limit_recovers() {
        let mut l = starting_at(32, 32);
        let t0 = origin();
        let (t1, _) = feed(
            &mut l,
            t0,
            Duration::from_secs(10),
            MS,
            |_| 2 * MS,
            saturated,
        );
        // Answers to calls that were in flight together are one event: one cut.
        for _ in 0..20 {
            l.on_busy(t1);
        }
        assert_eq!(l.limit(), 22);
        l.on_busy(t1 + 9 * MS);
        assert_eq!(l.limit(), 22, "within the cooldown");
        l.on_busy(t1 + 10 * MS);
        assert_eq!(l.limit(), 15);
        // A storm of 1 s: down to the floor.
        let mut now = t1 + 10 * MS;
        while now < t1 + Duration::from_secs(1) {
            l.on_busy(now);
            now += MS;
        }
        assert_eq!(l.limit(), 1);
        // The storm is over: additive recovery back to max.
        let (_, limits) = feed(
            &mut l,
            now,
            Duration::from_secs(90),
            MS,
            |_| 2 * MS,
            saturated,
        );
        assert!(limits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(l.limit(), 32);
    }

    #[test]
    fn a_window_with_a_busy_answer_does_not_grow() {
        let t0 = origin();
        let mut calm = starting_at(8, 32);
        let mut busy = starting_at(8, 32);
        for l in [&mut calm, &mut busy] {
            feed(l, t0, Duration::from_secs(2), MS, |_| 2 * MS, saturated);
        }
        let t1 = t0 + Duration::from_secs(2);
        let before = busy.estimate();
        busy.on_busy(t1);
        let cut = busy.estimate();
        assert!((cut - before * 0.7).abs() < 1e-9);
        // One more window of good latency each.
        let calm_before = calm.estimate();
        for l in [&mut calm, &mut busy] {
            feed(l, t1, 101 * MS, MS, |_| 2 * MS, saturated);
        }
        assert!(calm.estimate() > calm_before, "grows without busy answers");
        assert_eq!(
            busy.estimate(),
            cut,
            "the window that saw the busy answer does not grow"
        );
        // The next window may grow again.
        feed(
            &mut busy,
            t1 + 101 * MS,
            101 * MS,
            MS,
            |_| 2 * MS,
            saturated,
        );
        assert!(busy.estimate() > cut);
    }

    #[test]
    fn the_baseline_follows_a_faster_hsm_quickly() {
        let mut l = starting_at(8, 8);
        let t0 = origin();
        let (t1, _) = feed(
            &mut l,
            t0,
            Duration::from_secs(5),
            MS,
            |_| 10 * MS,
            saturated,
        );
        assert_eq!(l.rtt_baseline(), Some(10 * MS));
        feed(
            &mut l,
            t1,
            Duration::from_secs(10),
            MS,
            |_| 2 * MS,
            saturated,
        );
        let base = l.rtt_baseline().unwrap_or_default();
        assert!(
            base < 4 * MS,
            "decayed ×0.95 per window while long/short > 2: {base:?}"
        );
        assert_eq!(l.rtt_recent(), Some(2 * MS));
        assert_eq!(l.limit(), 8);
    }

    #[test]
    fn zero_and_huge_call_times_are_harmless() {
        let mut l = starting_at(4, 8);
        let t0 = origin();
        for i in 0..100u32 {
            let rtt = match i % 3 {
                0 => Duration::ZERO,
                1 => Duration::MAX,
                _ => MS,
            };
            l.on_sample(t0 + i * 20 * MS, rtt, 8);
            assert!((1..=8).contains(&l.limit()));
            assert!(l.estimate().is_finite());
        }
        assert!(l.rtt_recent().is_some());
        // Only zero call times: no division by zero, latency "at baseline", growth.
        let mut z = starting_at(1, 8);
        feed(
            &mut z,
            t0,
            Duration::from_secs(30),
            MS,
            |_| Duration::ZERO,
            saturated,
        );
        assert_eq!(z.limit(), 8);
    }

    #[test]
    fn time_going_backwards_neither_panics_nor_freezes() {
        let mut l = starting_at(1, 8);
        let t0 = origin();
        // Stale readings mixed in: no time passes for them.
        let mut now = t0;
        for i in 0..5_000u32 {
            let stale = if i % 2 == 0 { now } else { now - 3 * MS };
            l.on_sample(stale, 2 * MS, l.limit());
            l.on_busy(t0 - Duration::from_secs(1800)); // far in the past: re-anchors
            now += MS;
        }
        assert!((1..=8).contains(&l.limit()));
        // A bogus far-future reading, then real ones: windows still close, the limit still moves.
        let mut m = starting_at(1, 8);
        m.on_sample(t0 + Duration::from_secs(3000), 2 * MS, 1);
        feed(
            &mut m,
            t0,
            Duration::from_secs(30),
            MS,
            |_| 2 * MS,
            saturated,
        );
        assert_eq!(m.limit(), 8);
    }

    #[test]
    fn same_inputs_same_limits() {
        let run = || {
            let mut l = starting_at(16, 32);
            let t0 = origin();
            let hsm = |n: usize| (2 * MS).mul_f64((n as f64 / 5.0).max(1.0));
            let (_, a) = feed(&mut l, t0, Duration::from_secs(20), MS, hsm, saturated);
            a
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn drain_size_shares_the_queue() {
        let l = starting_at(4, 8);
        let sizes: Vec<_> = [0, 1, 4, 5, 8, 9, 100, 1000]
            .map(|q| l.drain_size(q))
            .to_vec();
        assert_eq!(sizes, vec![1, 1, 1, 2, 2, 3, 25, 64]);
        let one = starting_at(1, 8);
        assert_eq!((one.drain_size(10), one.drain_size(10_000)), (10, 64));
        assert!(l.may_start(3));
        assert!(!l.may_start(4));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Sample(i64, u64, usize),
        Busy(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let rtt = prop_oneof![0u64..10_000_000, Just(0), Just(u64::MAX)];
        prop_oneof![
            4 => (-2_000i64..50, rtt, 0usize..100).prop_map(|(d, r, n)| Op::Sample(d, r, n)),
            1 => (-2_000i64..50).prop_map(Op::Busy),
        ]
    }

    proptest! {
        #[test]
        fn the_limit_stays_within_bounds(
            min in 1usize..8,
            extra in 0usize..40,
            ops in proptest::collection::vec(op(), 1..2_000),
        ) {
            let max = min + extra;
            let cfg = LimiterConfig { min_limit: min, ..LimiterConfig::for_sessions(max) };
            let mut l = Limiter::new(cfg);
            let t0 = origin();
            let mut off: i64 = 0;
            for op in ops {
                let step = match op { Op::Sample(d, ..) | Op::Busy(d) => d };
                off = (off + step).clamp(-3_000_000, 3_000_000);
                let now = if off >= 0 {
                    t0 + Duration::from_millis(off.unsigned_abs())
                } else {
                    t0 - Duration::from_millis(off.unsigned_abs())
                };
                match op {
                    Op::Sample(_, ns, n) => l.on_sample(now, Duration::from_nanos(ns), n),
                    Op::Busy(_) => l.on_busy(now),
                }
                prop_assert!((min..=max).contains(&l.limit()));
                prop_assert!(l.estimate().is_finite());
                prop_assert!((1..=64).contains(&l.drain_size(off.unsigned_abs() as usize)));
            }
        }
    }
}
