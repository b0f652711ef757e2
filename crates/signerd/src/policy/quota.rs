//! Per-identity quotas: a token bucket (signatures per second with a burst) and a cap on
//! requests in flight. Sans-IO: every call takes `now`.
//!
//! [`QuotaTable`] keeps one entry per identity that has a quota, bounded by
//! [`MAX_TRACKED`]: when full, entries that are idle (nothing in flight, bucket full again) are
//! evicted, which loses nothing because a new entry starts with a full bucket. If every entry is
//! busy, a new identity is refused (OVERLOADED) rather than letting the table grow.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most identities tracked at once.
pub const MAX_TRACKED: usize = 10_000;
/// Largest `rate` or `burst` accepted.
const MAX_RATE: f64 = 1e9;
/// Retry hint when the table is full of busy identities.
const TABLE_FULL_RETRY: Duration = Duration::from_secs(1);

/// One identity's limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuotaLimit {
    /// Signatures per second, refilled continuously; `None`: no rate limit.
    pub rate: Option<f64>,
    /// Bucket size: most signatures at once after an idle period.
    pub burst: u32,
    /// Most sign/sign_batch requests in flight at once; `None`: no cap.
    pub max_inflight: Option<u32>,
}

impl QuotaLimit {
    /// Validates a `[[quota]]` entry's values. `burst` defaults to the rate (at least 1).
    pub fn new(
        rate: Option<f64>,
        burst: Option<u32>,
        max_inflight: Option<u32>,
    ) -> Result<QuotaLimit, String> {
        if let Some(r) = rate {
            if !(r.is_finite() && r > 0.0 && r <= MAX_RATE) {
                return Err(format!("rate must be > 0 and <= {MAX_RATE} (got {r})"));
            }
        }
        if rate.is_none() && burst.is_some() {
            return Err("burst needs a rate".into());
        }
        if rate.is_none() && max_inflight.is_none() {
            return Err("set rate, max_inflight or both".into());
        }
        if burst == Some(0) || max_inflight == Some(0) {
            return Err("burst and max_inflight must be at least 1".into());
        }
        let burst = burst.unwrap_or_else(|| rate.map_or(1, |r| r.ceil().max(1.0) as u32));
        Ok(QuotaLimit {
            rate,
            burst,
            max_inflight,
        })
    }
}

/// Why a request was refused by its quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaRefusal {
    /// The bucket lacks the tokens; they will be there after `retry_after`.
    Rate {
        /// When enough tokens will have accumulated.
        retry_after: Duration,
    },
    /// A batch asks for more signatures than the bucket holds when full: it can never pass.
    TooLarge {
        /// Signatures asked for.
        asked: u32,
        /// The bucket size.
        burst: u32,
    },
    /// `max_inflight` requests are already in flight.
    Inflight {
        /// The cap.
        max: u32,
        /// Suggested delay.
        retry_after: Duration,
    },
    /// The table tracks [`MAX_TRACKED`] busy identities already.
    TableFull {
        /// Suggested delay.
        retry_after: Duration,
    },
}

impl std::fmt::Display for QuotaRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaRefusal::Rate { retry_after } => {
                write!(f, "rate quota exceeded; retry after {retry_after:?}")
            }
            QuotaRefusal::TooLarge { asked, burst } => write!(
                f,
                "a batch of {asked} signatures exceeds this identity's quota burst of {burst}"
            ),
            QuotaRefusal::Inflight { max, .. } => {
                write!(f, "{max} requests of this identity are already in flight")
            }
            QuotaRefusal::TableFull { .. } => write!(f, "too many identities are busy"),
        }
    }
}

/// A token bucket: `tokens` refill at `rate` per second up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(limit: &QuotaLimit, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    /// Takes `n` tokens if there are that many (after refilling up to `now`); otherwise takes
    /// none and says how long until there will be. A time earlier than the last one refills
    /// nothing (monotonic clocks only move forward, but the caller's `now` values may race).
    pub fn try_take(&mut self, limit: &QuotaLimit, n: u32, now: Instant) -> Result<(), Duration> {
        let Some(rate) = limit.rate else {
            return Ok(());
        };
        self.refill(limit, rate, now);
        let n = f64::from(n);
        if self.tokens >= n {
            self.tokens -= n;
            return Ok(());
        }
        let secs = (n - self.tokens) / rate;
        // Round up to the next millisecond so a retry at exactly `retry_after` passes.
        let ms = (secs * 1000.0).ceil().max(1.0);
        Err(Duration::from_millis(ms.min(u64::MAX as f64) as u64))
    }

    /// Whether the bucket has refilled completely by `now` (so forgetting it loses nothing).
    pub fn is_full(&self, limit: &QuotaLimit, now: Instant) -> bool {
        let Some(rate) = limit.rate else {
            return true;
        };
        let mut b = *self;
        b.refill(limit, rate, now);
        b.tokens >= f64::from(limit.burst)
    }

    /// Tokens available now (after refilling).
    pub fn available(&self, limit: &QuotaLimit, now: Instant) -> f64 {
        let Some(rate) = limit.rate else {
            return f64::INFINITY;
        };
        let mut b = *self;
        b.refill(limit, rate, now);
        b.tokens
    }

    fn refill(&mut self, limit: &QuotaLimit, rate: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(limit.burst));
        if now > self.last {
            self.last = now;
        }
    }
}

#[derive(Debug)]
struct Entry {
    bucket: TokenBucket,
    inflight: u32,
    /// The limit last applied (a reload may change it; eviction checks against it).
    limit: QuotaLimit,
}

/// Quota state of every identity with a quota. Wrap it in `Arc<Mutex<_>>` and use
/// [`QuotaTable::admit`], which hands back the in-flight slot as a guard.
#[derive(Debug)]
pub struct QuotaTable {
    entries: HashMap<Arc<str>, Entry>,
    max: usize,
}

impl Default for QuotaTable {
    fn default() -> Self {
        QuotaTable::with_capacity(MAX_TRACKED)
    }
}

impl QuotaTable {
    /// A table tracking at most `max` identities.
    pub fn with_capacity(max: usize) -> QuotaTable {
        QuotaTable {
            entries: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Identities tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no identity is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Requests of `identity` in flight.
    pub fn inflight(&self, identity: &str) -> u32 {
        self.entries.get(identity).map_or(0, |e| e.inflight)
    }

    /// Checks `identity`'s quota for a request of `signatures` signatures and, if it passes,
    /// takes the tokens and one in-flight slot. Nothing is taken when it is refused.
    pub fn try_acquire(
        &mut self,
        identity: &Arc<str>,
        limit: QuotaLimit,
        signatures: u32,
        now: Instant,
    ) -> Result<(), QuotaRefusal> {
        if limit.rate.is_some() && signatures > limit.burst {
            return Err(QuotaRefusal::TooLarge {
                asked: signatures,
                burst: limit.burst,
            });
        }
        if !self.entries.contains_key(identity) && self.entries.len() >= self.max {
            self.evict_idle(now);
            if self.entries.len() >= self.max {
                return Err(QuotaRefusal::TableFull {
                    retry_after: TABLE_FULL_RETRY,
                });
            }
        }
        let entry = self
            .entries
            .entry(Arc::clone(identity))
            .or_insert_with(|| Entry {
                bucket: TokenBucket::full(&limit, now),
                inflight: 0,
                limit,
            });
        entry.limit = limit;
        if let Some(max) = limit.max_inflight {
            if entry.inflight >= max {
                // A slot frees when a request finishes; one request's time is unknown here.
                let retry_after = limit
                    .rate
                    .map_or(Duration::from_millis(10), |r| {
                        Duration::from_secs_f64((1.0 / r).min(1.0))
                    })
                    .max(Duration::from_millis(1));
                return Err(QuotaRefusal::Inflight { max, retry_after });
            }
        }
        entry
            .bucket
            .try_take(&limit, signatures, now)
            .map_err(|retry_after| QuotaRefusal::Rate { retry_after })?;
        entry.inflight += 1;
        Ok(())
    }

    /// Gives back one in-flight slot of `identity`.
    pub fn release(&mut self, identity: &str) {
        if let Some(e) = self.entries.get_mut(identity) {
            e.inflight = e.inflight.saturating_sub(1);
        }
    }

    /// Forgets identities with nothing in flight and a full bucket.
    pub fn evict_idle(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| e.inflight > 0 || !e.bucket.is_full(&e.limit, now));
    }

    /// [`QuotaTable::try_acquire`] on a shared table, returning a guard that releases the
    /// in-flight slot exactly once, when dropped.
    pub fn admit(
        table: &Arc<Mutex<QuotaTable>>,
        identity: &Arc<str>,
        limit: QuotaLimit,
        signatures: u32,
        now: Instant,
    ) -> Result<QuotaGuard, QuotaRefusal> {
        table.lock().try_acquire(identity, limit, signatures, now)?;
        Ok(QuotaGuard {
            table: Arc::clone(table),
            identity: Arc::clone(identity),
        })
    }
}

/// Holds one in-flight slot of an identity; dropping it gives the slot back.
#[derive(Debug)]
#[must_use = "the in-flight slot is released when the guard is dropped"]
pub struct QuotaGuard {
    table: Arc<Mutex<QuotaTable>>,
    identity: Arc<str>,
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        self.table.lock().release(&self.identity);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn limit(rate: f64, burst: u32, inflight: Option<u32>) -> QuotaLimit {
        QuotaLimit::new(Some(rate), Some(burst), inflight).unwrap()
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let l = limit(10.0, 5, None);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(&l, t0);
        for _ in 0..5 {
            b.try_take(&l, 1, t0).unwrap();
        }
        // Empty: one token takes 100 ms at 10/s.
        assert_eq!(b.try_take(&l, 1, t0), Err(Duration::from_millis(100)));
        assert_eq!(
            b.try_take(&l, 1, t0 + Duration::from_millis(50)),
            Err(Duration::from_millis(50))
        );
        b.try_take(&l, 1, t0 + Duration::from_millis(100)).unwrap();
        // Refill caps at burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.available(&l, later), 5.0);
        assert!(b.is_full(&l, later));
        b.try_take(&l, 5, later).unwrap();
        assert_eq!(b.try_take(&l, 3, later), Err(Duration::from_millis(300)));
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let l = limit(1.0, 1, None);
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::full(&l, t0);
        b.try_take(&l, 1, t0).unwrap();
        assert!(b.try_take(&l, 1, t0 - Duration::from_secs(5)).is_err());
        assert!(b.try_take(&l, 1, t0 + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn retry_after_is_exact_enough_to_pass() {
        let l = limit(3.0, 1, None);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(&l, t0);
        b.try_take(&l, 1, t0).unwrap();
        let wait = b.try_take(&l, 1, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(334));
        b.try_take(&l, 1, t0 + wait).unwrap();
    }

    #[test]
    fn limits_validate() {
        assert!(QuotaLimit::new(None, None, None).is_err());
        assert!(QuotaLimit::new(Some(0.0), None, None).is_err());
        assert!(QuotaLimit::new(Some(f64::NAN), None, None).is_err());
        assert!(QuotaLimit::new(None, Some(3), Some(1)).is_err());
        assert!(QuotaLimit::new(Some(1.0), Some(0), None).is_err());
        assert!(QuotaLimit::new(None, None, Some(0)).is_err());
        assert_eq!(QuotaLimit::new(Some(2.5), None, None).unwrap().burst, 3);
        assert_eq!(QuotaLimit::new(Some(0.1), None, None).unwrap().burst, 1);
        let l = QuotaLimit::new(None, None, Some(4)).unwrap();
        assert_eq!(l.rate, None);
    }

    #[test]
    fn batches_take_count_tokens_and_oversized_batches_are_refused() {
        let l = limit(100.0, 10, None);
        let id: Arc<str> = Arc::from("a");
        let t0 = Instant::now();
        let mut t = QuotaTable::default();
        t.try_acquire(&id, l, 8, t0).unwrap();
        t.release(&id);
        assert_eq!(
            t.try_acquire(&id, l, 3, t0),
            Err(QuotaRefusal::Rate {
                retry_after: Duration::from_millis(10)
            })
        );
        assert_eq!(
            t.try_acquire(&id, l, 11, t0),
            Err(QuotaRefusal::TooLarge {
                asked: 11,
                burst: 10
            })
        );
        t.try_acquire(&id, l, 2, t0).unwrap();
    }

    #[test]
    fn inflight_cap_and_guard_release_exactly_once() {
        let l = limit(1000.0, 1000, Some(2));
        let id: Arc<str> = Arc::from("a");
        let other: Arc<str> = Arc::from("b");
        let t0 = Instant::now();
        let table = Arc::new(Mutex::new(QuotaTable::default()));
        let g1 = QuotaTable::admit(&table, &id, l, 1, t0).unwrap();
        let g2 = QuotaTable::admit(&table, &id, l, 1, t0).unwrap();
        assert!(matches!(
            QuotaTable::admit(&table, &id, l, 1, t0),
            Err(QuotaRefusal::Inflight { max: 2, .. })
        ));
        // Other identities are unaffected.
        let g3 = QuotaTable::admit(&table, &other, l, 1, t0).unwrap();
        assert_eq!(table.lock().inflight("a"), 2);
        drop(g1);
        assert_eq!(table.lock().inflight("a"), 1);
        let g4 = QuotaTable::admit(&table, &id, l, 1, t0).unwrap();
        drop((g2, g3, g4));
        assert_eq!(table.lock().inflight("a"), 0);
        assert_eq!(table.lock().inflight("b"), 0);
        // A refused request took no tokens and no slot.
        let tight = limit(1.0, 1, Some(5));
        let c: Arc<str> = Arc::from("c");
        let g = QuotaTable::admit(&table, &c, tight, 1, t0).unwrap();
        assert!(QuotaTable::admit(&table, &c, tight, 1, t0).is_err());
        assert_eq!(table.lock().inflight("c"), 1);
        drop(g);
        assert_eq!(table.lock().inflight("c"), 0);
    }

    #[test]
    fn verifications_hold_a_slot_but_take_no_tokens() {
        let l = limit(1.0, 1, Some(2));
        let id: Arc<str> = Arc::from("v");
        let t0 = Instant::now();
        let table = Arc::new(Mutex::new(QuotaTable::default()));
        let sign = QuotaTable::admit(&table, &id, l, 1, t0).unwrap();
        assert!(matches!(
            QuotaTable::admit(&table, &id, l, 1, t0),
            Err(QuotaRefusal::Rate { .. })
        ));
        let verify = QuotaTable::admit(&table, &id, l, 0, t0).unwrap(); // no tokens needed
        assert_eq!(table.lock().inflight("v"), 2);
        assert!(matches!(
            QuotaTable::admit(&table, &id, l, 0, t0),
            Err(QuotaRefusal::Inflight { max: 2, .. })
        ));
        drop((sign, verify));
        assert_eq!(table.lock().inflight("v"), 0);
    }

    #[test]
    fn table_is_bounded_and_evicts_idle_entries() {
        let l = limit(10.0, 1, None);
        let t0 = Instant::now();
        let mut t = QuotaTable::with_capacity(2);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        t.try_acquire(&a, l, 1, t0).unwrap();
        t.try_acquire(&b, l, 1, t0).unwrap();
        // Both busy (in flight, empty buckets): a third identity is refused.
        assert!(matches!(
            t.try_acquire(&c, l, 1, t0),
            Err(QuotaRefusal::TableFull { .. })
        ));
        t.release(&a);
        // `a` is idle but its bucket is not full yet: still kept.
        assert!(t.try_acquire(&c, l, 1, t0).is_err());
        // 100 ms later its bucket is full: evicted to make room.
        let t1 = t0 + Duration::from_millis(100);
        t.try_acquire(&c, l, 1, t1).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.inflight("a"), 0);
        assert_eq!(t.inflight("b"), 1);
    }

    #[test]
    fn identities_have_their_own_buckets() {
        let l = limit(1.0, 1, None);
        let t0 = Instant::now();
        let mut t = QuotaTable::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        t.try_acquire(&a, l, 1, t0).unwrap();
        assert!(t.try_acquire(&a, l, 1, t0).is_err());
        t.try_acquire(&b, l, 1, t0).unwrap();
    }
}
