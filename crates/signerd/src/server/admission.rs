//! Admission of new QUIC connections, decided before quinn allocates any connection state
//! (quinn 0.11's [`quinn::Incoming`]: accept, `retry()`, `refuse()` or `ignore()`).
//!
//! Sans-IO: [`Admission`] sees a clock value, the source IP and whether the source address is
//! already validated, and answers a [`Decision`]; the accept loop carries it out. The rules, in
//! order (docs/FAULTS.md 14):
//!
//! 1. At `max_connections` open (or half-open) connections: **refuse**.
//! 2. At `max_handshakes` half-open handshakes (the hard cap): **refuse**.
//! 3. The source IP already holds `max_connections_per_ip` connections: **retry** if its address
//!    is not validated yet (a spoofed source must not be able to use up a real client's share),
//!    otherwise **refuse**.
//! 4. An unvalidated source while the new-connection token bucket is empty (more than
//!    `new_connections_per_second` on average, beyond a burst) or while half-open handshakes are
//!    at or above `handshake_retry_share` of `max_handshakes`: **retry** (the client must prove
//!    it can receive at its address, one extra round trip, before any state is kept).
//! 5. Otherwise **accept**. A validated source (it came back with a Retry token) is accepted
//!    without a token from the bucket: it has already paid the round trip, and asking it again
//!    would only loop.
//!
//! Every accepted connection is counted (total, half-open, per IP) until the accept loop tells
//! [`Admission::handshake_done`] and [`Admission::closed`]; [`Slot`] does both on drop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;

use crate::telemetry::IncomingOutcome;

/// Limits for [`Admission`], from `[server]` (see docs/CONFIG.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Most open connections, half-open included.
    pub max_connections: usize,
    /// Most connections from one source IP.
    pub max_per_ip: usize,
    /// Hard cap on half-open handshakes: beyond it, new connections are refused.
    pub max_handshakes: usize,
    /// Half-open handshakes at which unvalidated sources are asked to Retry.
    pub retry_handshakes: usize,
    /// New unvalidated connections admitted per second on average without Retry.
    pub rate_per_sec: f64,
    /// How many may come at once (token bucket depth).
    pub burst: f64,
}

/// What to do with one incoming connection attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start the handshake.
    Accept,
    /// Answer with a QUIC Retry: the client must echo a token from its address first.
    Retry,
    /// Answer with CONNECTION_REFUSED and keep no state.
    Refuse(RefuseReason),
}

/// Why a connection attempt was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// At `max_connections`.
    MaxConnections,
    /// At the half-open hard cap (`max_handshakes`).
    Handshakes,
    /// The (validated) source IP is at `max_connections_per_ip`.
    PerIp,
}

impl Decision {
    /// The `outcome` of `signer_incoming_total` this decision counts as.
    pub fn outcome(self) -> IncomingOutcome {
        match self {
            Decision::Accept => IncomingOutcome::Accepted,
            Decision::Retry => IncomingOutcome::Retry,
            Decision::Refuse(RefuseReason::MaxConnections) => {
                IncomingOutcome::RefusedMaxConnections
            }
            Decision::Refuse(RefuseReason::Handshakes) => IncomingOutcome::RefusedHandshakes,
            Decision::Refuse(RefuseReason::PerIp) => IncomingOutcome::RefusedPerIp,
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` stored. Starts full.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`. A `rate` or `burst` that is not positive and finite makes a
    /// bucket that never has a token.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let usable = |x: f64| x.is_finite() && x > 0.0;
        let (rate, burst) = if usable(rate) && usable(burst) {
            (rate, burst)
        } else {
            (0.0, 0.0)
        };
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Refills for the time since the last call, then takes one token if there is one. A clock
    /// value earlier than the last one adds nothing.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.available(now) >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens now stored (after the last refill).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// Refills for the time since the last call and returns the tokens stored, taking none.
    pub fn available(&mut self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        self.tokens
    }
}

/// The admission state: counts of open, half-open and per-IP connections, and the bucket.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    bucket: TokenBucket,
    open: usize,
    half_open: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    /// No connections yet; a full bucket at `now`.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Admission {
            bucket: TokenBucket::new(limits.rate_per_sec, limits.burst, now),
            limits,
            open: 0,
            half_open: 0,
            per_ip: HashMap::new(),
        }
    }

    /// Decides about one attempt from `ip` (`validated`: quinn's
    /// `Incoming::remote_address_validated`). On [`Decision::Accept`] the connection is counted
    /// (open, half-open, per IP): pair it with [`Admission::handshake_done`] and
    /// [`Admission::closed`].
    pub fn decide(&mut self, now: Instant, ip: IpAddr, validated: bool) -> Decision {
        let l = self.limits;
        if self.open >= l.max_connections {
            return Decision::Refuse(RefuseReason::MaxConnections);
        }
        if self.half_open >= l.max_handshakes {
            return Decision::Refuse(RefuseReason::Handshakes);
        }
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= l.max_per_ip {
            return if validated {
                Decision::Refuse(RefuseReason::PerIp)
            } else {
                Decision::Retry
            };
        }
        if !validated {
            // Take a token even when the half-open share already asks for Retry, so a flood
            // keeps the bucket empty for as long as it lasts.
            let token = self.bucket.try_take(now);
            if !token || self.half_open >= l.retry_handshakes {
                return Decision::Retry;
            }
        }
        self.open += 1;
        self.half_open += 1;
        *self.per_ip.entry(ip).or_insert(0) += 1;
        Decision::Accept
    }

    /// An accepted connection's handshake ended (completed, failed or timed out).
    pub fn handshake_done(&mut self) {
        self.half_open = self.half_open.saturating_sub(1);
    }

    /// An accepted connection from `ip` is gone.
    pub fn closed(&mut self, ip: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Open connections (half-open included).
    pub fn open(&self) -> usize {
        self.open
    }

    /// Half-open handshakes.
    pub fn half_open(&self) -> usize {
        self.half_open
    }

    /// Connections from `ip`.
    pub fn from_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// An accepted connection's place in [`Admission`]: on drop, the handshake (if not yet marked
/// done) and the connection are released.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Mutex<Admission>>,
    ip: IpAddr,
    handshaking: bool,
}

impl Slot {
    /// The slot of a connection [`Admission::decide`] just accepted.
    pub fn new(admission: Arc<Mutex<Admission>>, ip: IpAddr) -> Self {
        Slot {
            admission,
            ip,
            handshaking: true,
        }
    }

    /// The handshake ended; the connection stays counted until the slot drops.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.admission.lock().handshake_done();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = self.admission.lock();
        if self.handshaking {
            a.handshake_done();
        }
        a.closed(self.ip);
    }
}

/// The address a per-IP count is kept under: IPv4 (also when mapped into IPv6) as is, IPv6
/// by its /64 prefix (one host usually holds a whole /64, so counting single IPv6 addresses
/// would not cap anyone).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// The share of `max_handshakes` at which Retry starts, as a count (at least 1 when the share
/// is positive; 0 means "always Retry unvalidated sources").
pub fn retry_threshold(max_handshakes: usize, share: f64) -> usize {
    if share <= 0.0 || !share.is_finite() {
        return 0;
    }
    let n = (max_handshakes as f64 * share.min(1.0)).ceil() as usize;
    n.clamp(1, max_handshakes.max(1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 100,
            max_per_ip: 10,
            max_handshakes: 20,
            retry_handshakes: 5,
            rate_per_sec: 10.0,
            burst: 3.0,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn bucket_refills_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0), "burst used up");
        assert!(!b.try_take(t0 + Duration::from_millis(50)), "half a token");
        assert!(
            b.try_take(t0 + Duration::from_millis(100)),
            "one token after 100 ms"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
    }

    #[test]
    fn bucket_ignores_a_clock_going_back_and_bad_parameters() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1.0, 1.0, t0);
        assert!(b.try_take(t0));
        assert!(
            !b.try_take(t0 - Duration::from_secs(5)),
            "no refill backwards"
        );
        assert!(
            !b.try_take(t0 + Duration::from_millis(999)),
            "no credit from going back"
        );
        assert!(b.try_take(t0 + Duration::from_secs(1)));
        for (rate, burst) in [(f64::NAN, 5.0), (5.0, f64::INFINITY), (-1.0, -1.0)] {
            let mut b = TokenBucket::new(rate, burst, t0);
            assert!(!b.try_take(t0 + Duration::from_secs(100)), "{rate} {burst}");
        }
    }

    #[test]
    fn sustained_rate_matches_the_configured_one() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 10.0, t0);
        // 10 s of attempts every millisecond: burst + 100/s * 10 s tokens.
        let taken = (0..10_000)
            .filter(|ms| b.try_take(t0 + Duration::from_millis(*ms)))
            .count();
        assert!((1005..=1011).contains(&taken), "{taken}");
    }

    #[test]
    fn unvalidated_flood_is_asked_to_retry_once_the_bucket_is_empty() {
        let t0 = Instant::now();
        let mut a = Admission::new(limits(), t0);
        let mut accepted = 0;
        let mut retried = 0;
        for i in 0..50u8 {
            match a.decide(t0, ip(i), false) {
                Decision::Accept => {
                    accepted += 1;
                    a.handshake_done();
                }
                Decision::Retry => retried += 1,
                d => panic!("{d:?}"),
            }
        }
        assert_eq!((accepted, retried), (3, 47), "the burst, then Retry");
        // Validated sources (they came back with a token) are accepted.
        assert_eq!(a.decide(t0, ip(1), true), Decision::Accept);
        // The bucket refills.
        assert_eq!(
            a.decide(t0 + Duration::from_millis(100), ip(200), false),
            Decision::Accept
        );
    }

    #[test]
    fn half_open_share_asks_for_retry_and_the_hard_cap_refuses() {
        let t0 = Instant::now();
        let mut l = limits();
        l.burst = 1000.0;
        let mut a = Admission::new(l, t0);
        for i in 0..5u8 {
            assert_eq!(a.decide(t0, ip(i), false), Decision::Accept);
        }
        assert_eq!(a.half_open(), 5);
        assert_eq!(a.decide(t0, ip(9), false), Decision::Retry, "at the share");
        // Validated ones are accepted up to the hard cap ...
        for i in 0..15u8 {
            assert_eq!(a.decide(t0, ip(100 + i), true), Decision::Accept);
        }
        assert_eq!(a.half_open(), 20);
        // ... beyond which everyone is refused.
        for validated in [false, true] {
            assert_eq!(
                a.decide(t0, ip(250), validated),
                Decision::Refuse(RefuseReason::Handshakes)
            );
        }
        // Handshakes finishing free half-open slots; connections stay counted.
        for _ in 0..20 {
            a.handshake_done();
        }
        assert_eq!(a.half_open(), 0);
        assert_eq!(a.open(), 20);
        assert_eq!(a.decide(t0, ip(250), false), Decision::Accept);
    }

    #[test]
    fn per_ip_cap_retries_unvalidated_and_refuses_validated() {
        let t0 = Instant::now();
        let mut l = limits();
        l.burst = 1000.0;
        l.retry_handshakes = 1000;
        l.max_handshakes = 1000;
        let mut a = Admission::new(l, t0);
        for _ in 0..10 {
            assert_eq!(a.decide(t0, ip(1), false), Decision::Accept);
        }
        assert_eq!(a.from_ip(ip(1)), 10);
        assert_eq!(a.decide(t0, ip(1), false), Decision::Retry);
        assert_eq!(
            a.decide(t0, ip(1), true),
            Decision::Refuse(RefuseReason::PerIp)
        );
        assert_eq!(
            a.decide(t0, ip(2), true),
            Decision::Accept,
            "other IPs unaffected"
        );
        a.closed(ip(1));
        assert_eq!(a.decide(t0, ip(1), true), Decision::Accept);
        for _ in 0..10 {
            a.closed(ip(1));
        }
        assert_eq!(a.from_ip(ip(1)), 0);
        a.closed(ip(77));
        assert_eq!(a.from_ip(ip(77)), 0, "closing an unknown IP is harmless");
    }

    #[test]
    fn max_connections_refuses_everyone() {
        let t0 = Instant::now();
        let mut l = limits();
        l.max_connections = 3;
        l.burst = 1000.0;
        let mut a = Admission::new(l, t0);
        for i in 0..3u8 {
            assert_eq!(a.decide(t0, ip(i), true), Decision::Accept);
            a.handshake_done();
        }
        assert_eq!(
            a.decide(t0, ip(9), false),
            Decision::Refuse(RefuseReason::MaxConnections)
        );
        a.closed(ip(0));
        assert_eq!(a.decide(t0, ip(9), true), Decision::Accept);
    }

    #[test]
    fn slots_release_on_drop() {
        let t0 = Instant::now();
        let a = Arc::new(Mutex::new(Admission::new(limits(), t0)));
        let counts = || {
            let a = a.lock();
            (a.open(), a.half_open(), a.from_ip(ip(1)))
        };
        assert_eq!(a.lock().decide(t0, ip(1), true), Decision::Accept);
        let mut slot = Slot::new(Arc::clone(&a), ip(1));
        assert_eq!(a.lock().decide(t0, ip(1), true), Decision::Accept);
        let unfinished = Slot::new(Arc::clone(&a), ip(1));
        slot.handshake_done();
        slot.handshake_done();
        assert_eq!(counts(), (2, 1, 2));
        drop(unfinished);
        assert_eq!(counts(), (1, 0, 1));
        drop(slot);
        assert_eq!(counts(), (0, 0, 0));
    }

    #[test]
    fn source_keys() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source_key(v4), v4);
        assert_eq!(source_key("::ffff:192.0.2.7".parse().unwrap()), v4);
        assert_eq!(
            source_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            source_key("::1".parse().unwrap()),
            "::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn retry_threshold_from_share() {
        assert_eq!(retry_threshold(256, 0.25), 64);
        assert_eq!(retry_threshold(256, 1.0), 256);
        assert_eq!(retry_threshold(256, 7.0), 256);
        assert_eq!(retry_threshold(3, 0.01), 1);
        assert_eq!(retry_threshold(256, 0.0), 0);
        assert_eq!(retry_threshold(256, f64::NAN), 0);
    }

    #[test]
    fn labels() {
        assert_eq!(Decision::Accept.outcome().as_str(), "accepted");
        assert_eq!(Decision::Retry.outcome().as_str(), "retry");
        assert_eq!(
            Decision::Refuse(RefuseReason::PerIp).outcome().as_str(),
            "refused_per_ip"
        );
    }
}
