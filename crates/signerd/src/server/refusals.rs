//! Refusals at any rate without flooding the audit log or stalling signing.
//!
//! Every refused request (authorization denial, an op on the audit key) and every refused
//! handshake or identity goes through [`Refusals`]:
//!
//! - **Rate limit before authorization.** Each identity and each source address has a token
//!   bucket of refusals (`[server] refusals_per_second`, `refusals_burst`): refused requests
//!   charge their identity's, refused handshakes and identities their source address's. While
//!   an identity's bucket is empty, its requests are answered OVERLOADED before they are
//!   authorized; while a (validated) source's is empty, its new connections are refused
//!   (`signer_overloaded_total{reason="refusals"}`). A caller that is never refused is never
//!   limited, and one identity's refusals never limit another identity at the same address.
//! - **Summaries.** The first [`RECORDED_PER_WINDOW`] refusals of each (identity, op, status) in
//!   a one-second window get their own audit record, with their detail; the others, and the throttled requests, are counted,
//!   and a summary record (`op` `NAME.summary`, same status, `detail` saying how many, over
//!   which interval, from how many sources) is written when the window ends. So the log stays
//!   complete in counts, and grows by at most five records per second per (identity, op,
//!   status), whatever the rate of the attack. The table holds at most [`MAX_TALLIES`] keys;
//!   beyond that, refusals are counted under the identity `*`.
//! - **Never blocking.** Refusal records are offered to the audit queue without waiting
//!   ([`AuditLog::try_commit`]); when it is full, the refusal is counted in the summary instead,
//!   and a summary that cannot be queued stays in the table for the next window. Signing
//!   completions, which do wait for room in the queue, therefore never wait behind refusals.
//!   Counted refusals are in `signer_audit_summarized_total{kind}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::admission::TokenBucket;
use crate::audit::{AuditEntry, AuditLog};
use crate::telemetry::Metrics;

/// Most (identity, op, status) keys counted at once; beyond, refusals are counted under `*`.
pub const MAX_TALLIES: usize = 1024;
/// Most identities and sources with a refusal bucket; beyond, the fullest are forgotten first.
pub const MAX_BUCKETS: usize = 4096;
/// The summary window.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Refusals of one (identity, op, status) per window that get their own record, with their
/// detail; the rest are counted in the window's summary.
pub const RECORDED_PER_WINDOW: u32 = 4;

/// Who a bucket limits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Subject {
    Identity(Arc<str>),
    Source(IpAddr),
}

/// One summary key: who, which op text, which status.
type TallyKey = (Arc<str>, &'static str, &'static str);

#[derive(Debug)]
struct Tally {
    /// How many of this window's refusals got their own record (at most
    /// [`RECORDED_PER_WINDOW`]).
    recorded: u32,
    /// Refusals counted (not individually recorded) since the last summary.
    counted: u64,
    /// Of those, how many were throttled (OVERLOADED before authorization).
    throttled: u64,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
    sources: Vec<IpAddr>,
}

/// Most distinct sources named in one summary.
const MAX_SOURCES: usize = 8;

#[derive(Debug, Default)]
struct Inner {
    buckets: HashMap<Subject, TokenBucket>,
    tallies: HashMap<TallyKey, Tally>,
}

/// The refusal limiter and summarizer of one server.
#[derive(Debug)]
pub(crate) struct Refusals {
    rate: f64,
    burst: f64,
    audit: Option<AuditLog>,
    metrics: Metrics,
    inner: Mutex<Inner>,
}

/// A refusal to record.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The audit record it would get on its own.
    pub entry: AuditEntry,
    /// Where it came from.
    pub source: IpAddr,
    /// A refused handshake or identity (`auth`), not a refused request.
    pub auth: bool,
}

impl Refusals {
    /// A limiter of `rate` refusals per second (after `burst`) per identity and per source.
    pub(crate) fn new(rate: u32, burst: u32, audit: Option<AuditLog>, metrics: Metrics) -> Self {
        Refusals {
            rate: f64::from(rate),
            burst: f64::from(burst),
            audit,
            metrics,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// How long requests of `identity` must wait while its refusal bucket is empty; `None`:
    /// not limited. (Requests are limited per identity only, so that one identity's refusals
    /// never hold up another's behind the same address.)
    pub(crate) fn identity_throttled(&self, identity: &Arc<str>, now: Instant) -> Option<Duration> {
        self.throttled(&Subject::Identity(Arc::clone(identity)), now)
    }

    /// How long new connections from `source` must wait while its refusal bucket (charged by
    /// refused handshakes and identities) is empty; `None`: not limited.
    pub(crate) fn source_throttled(&self, source: IpAddr, now: Instant) -> Option<Duration> {
        self.throttled(&Subject::Source(source), now)
    }

    fn throttled(&self, subject: &Subject, now: Instant) -> Option<Duration> {
        let mut inner = self.inner.lock();
        if inner.buckets.is_empty() {
            // Nobody has been refused lately: the common case costs one uncontended lock.
            return None;
        }
        let tokens = inner.buckets.get_mut(subject)?.available(now);
        (tokens < 1.0)
            .then(|| Duration::from_secs_f64(((1.0 - tokens) / self.rate).clamp(0.001, 60.0)))
    }

    /// Records a refusal: charges the bucket of its identity (a refused request) or of its
    /// source (a refused handshake or identity), then writes its own audit record if it is
    /// among the first [`RECORDED_PER_WINDOW`] of its kind in this window and the audit queue
    /// has room, else counts it for the window's summary. Never waits.
    pub(crate) fn refused(&self, r: Refusal, now: Instant) {
        let identity = Arc::clone(&r.entry.identity);
        let kind = (r.entry.op, r.entry.status);
        let mut inner = self.inner.lock();
        let subject = if r.auth {
            Subject::Source(r.source)
        } else {
            Subject::Identity(Arc::clone(&identity))
        };
        self.charge(&mut inner, subject, now);
        let first = {
            let t = tally_of(&mut inner, &identity, kind);
            let first = t.recorded < RECORDED_PER_WINDOW;
            t.recorded += u32::from(first);
            first
        };
        drop(inner);
        if first && self.offer(vec![r.entry]) {
            return;
        }
        let mut inner = self.inner.lock();
        count(tally_of(&mut inner, &identity, kind), r.source, false);
        drop(inner);
        self.metrics.audit_summarized(r.auth, 1);
    }

    /// Counts a request refused because its identity or source was [`throttled`](Self::throttled)
    /// (no record of its own).
    pub(crate) fn throttled_request(&self, entry: AuditEntry, source: IpAddr) {
        let mut inner = self.inner.lock();
        let identity = Arc::clone(&entry.identity);
        count(
            tally_of(&mut inner, &identity, (entry.op, entry.status)),
            source,
            true,
        );
        drop(inner);
        self.metrics.audit_summarized(false, 1);
    }

    /// Ends the window: writes a summary record for every key with counted refusals (one that
    /// cannot be queued stays for the next window) and starts a new window for every key.
    pub(crate) fn flush(&self, now: Instant) {
        let mut inner = self.inner.lock();
        let mut summaries = Vec::new();
        let mut sent_keys = Vec::new();
        for (key, t) in inner.tallies.iter_mut() {
            t.recorded = 0;
            if t.counted > 0 {
                summaries.push(summary(key, t));
                sent_keys.push(key.clone());
            }
        }
        let sent = summaries.is_empty() || self.offer(summaries);
        if sent {
            for key in &sent_keys {
                if let Some(t) = inner.tallies.get_mut(key) {
                    t.counted = 0;
                    t.throttled = 0;
                    t.first = None;
                    t.last = None;
                    t.sources.clear();
                }
            }
        }
        // Idle keys are forgotten; full buckets cost nothing to forget.
        inner.tallies.retain(|_, t| t.counted > 0);
        let burst = self.burst;
        inner.buckets.retain(|_, b| !is_full(b, burst, now));
    }

    /// Runs [`flush`](Self::flush) every [`WINDOW`] until the task is dropped.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.flush(Instant::now());
        }
    }

    fn charge(&self, inner: &mut Inner, s: Subject, now: Instant) {
        if !inner.buckets.contains_key(&s) && inner.buckets.len() >= MAX_BUCKETS {
            let burst = self.burst;
            inner.buckets.retain(|_, b| !is_full(b, burst, now));
            if inner.buckets.len() >= MAX_BUCKETS {
                // Every tracked caller is being refused: this one is not limited yet.
                return;
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let _ = inner
            .buckets
            .entry(s)
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .try_take(now);
    }

    /// Offers records to the audit queue without waiting; true if queued (or no log).
    fn offer(&self, entries: Vec<AuditEntry>) -> bool {
        match &self.audit {
            None => true,
            Some(log) => log.try_commit(entries),
        }
    }
}

/// Whether a bucket has refilled (forgetting it loses nothing).
fn is_full(b: &TokenBucket, burst: f64, now: Instant) -> bool {
    b.clone().available(now) >= burst
}

fn tally_of<'a>(
    inner: &'a mut Inner,
    identity: &Arc<str>,
    (op, status): (&'static str, &'static str),
) -> &'a mut Tally {
    let mut key: TallyKey = (Arc::clone(identity), op, status);
    if !inner.tallies.contains_key(&key) && inner.tallies.len() >= MAX_TALLIES {
        key = (Arc::from("*"), op, status);
    }
    inner.tallies.entry(key).or_insert_with(|| Tally {
        recorded: 0,
        counted: 0,
        throttled: 0,
        first: None,
        last: None,
        sources: Vec::new(),
    })
}

fn count(t: &mut Tally, source: IpAddr, throttled: bool) {
    let now = SystemTime::now();
    t.counted += 1;
    t.throttled += u64::from(throttled);
    t.first.get_or_insert(now);
    t.last = Some(now);
    if t.sources.len() < MAX_SOURCES && !t.sources.contains(&source) {
        t.sources.push(source);
    }
}

/// The summary record of one key's counted refusals.
fn summary((identity, op, status): &TallyKey, t: &Tally) -> AuditEntry {
    let span = match (t.first, t.last) {
        (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let sources: Vec<String> = t.sources.iter().map(IpAddr::to_string).collect();
    let more = if t.sources.len() >= MAX_SOURCES {
        " and more"
    } else {
        ""
    };
    let detail = format!(
        "{} more refusals like those recorded before ({} of them throttled before \
         authorization) within {} ms, from {}{more}",
        t.counted,
        t.throttled,
        span.as_millis(),
        sources.join(", ")
    );
    AuditEntry::summary(op, Arc::clone(identity), status, t.first, detail)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use signer_proto::Status;

    fn refusal(identity: &str, source: [u8; 4]) -> Refusal {
        Refusal {
            entry: AuditEntry::new("sign", Arc::from(identity), Status::PermissionDenied),
            source: IpAddr::from(source),
            auth: false,
        }
    }

    fn refusals(rate: u32, burst: u32) -> Refusals {
        Refusals::new(rate, burst, None, Metrics::new(&["p0"], 1))
    }

    #[test]
    fn only_refused_callers_are_limited_and_they_recover() {
        let r = refusals(10, 5);
        let t0 = Instant::now();
        let bad: Arc<str> = Arc::from("bad");
        let good: Arc<str> = Arc::from("good");
        let here = IpAddr::from([10, 0, 0, 1]);
        for _ in 0..5 {
            assert_eq!(r.identity_throttled(&bad, t0), None);
            r.refused(refusal("bad", [10, 0, 0, 1]), t0);
        }
        let wait = r.identity_throttled(&bad, t0).unwrap();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another identity, even at the same address, is not limited; nor is the address.
        assert_eq!(r.identity_throttled(&good, t0), None);
        assert_eq!(r.source_throttled(here, t0), None);
        // A tenth of a second later (rate 10/s): one more.
        let t1 = t0 + Duration::from_millis(101);
        assert_eq!(r.identity_throttled(&bad, t1), None);
        // Refused handshakes charge their source.
        for _ in 0..5 {
            let mut h = refusal("-", [10, 0, 0, 9]);
            h.auth = true;
            r.refused(h, t0);
        }
        assert!(r
            .source_throttled(IpAddr::from([10, 0, 0, 9]), t0)
            .is_some());
        assert_eq!(r.source_throttled(here, t0), None);
    }

    #[test]
    fn one_record_then_a_count_per_window() {
        let r = refusals(1000, 1000);
        let t0 = Instant::now();
        for i in 0..100u8 {
            r.refused(refusal("bad", [10, 0, 0, i % 3]), t0);
        }
        {
            let inner = r.inner.lock();
            let t = inner.tallies.values().next().unwrap();
            assert_eq!(t.recorded, RECORDED_PER_WINDOW);
            assert_eq!(t.counted, 100 - u64::from(RECORDED_PER_WINDOW));
            assert_eq!(t.sources.len(), 3);
            let s = summary(inner.tallies.keys().next().unwrap(), t);
            assert_eq!(s.op, "sign.summary");
            assert!(
                s.detail.as_deref().unwrap().starts_with("96 more refusals"),
                "{s:?}"
            );
        }
        r.flush(t0);
        // The next window starts again with a record of its own; the counted ones are gone.
        r.refused(refusal("bad", [10, 0, 0, 1]), t0);
        let inner = r.inner.lock();
        let t = inner.tallies.values().next().unwrap();
        assert_eq!(t.recorded, 1);
        assert_eq!(t.counted, 0);
    }

    #[test]
    fn the_tables_are_bounded() {
        let r = refusals(1, 1);
        let t0 = Instant::now();
        for i in 0..(MAX_TALLIES + 50) {
            let id = format!("id-{i}");
            let b = (i as u32).to_be_bytes();
            r.refused(refusal(&id, b), t0);
        }
        let inner = r.inner.lock();
        assert!(inner.tallies.len() <= MAX_TALLIES + 1);
        assert!(inner.tallies.keys().any(|(id, _, _)| &**id == "*"));
        assert!(inner.buckets.len() <= MAX_BUCKETS);
    }
}
