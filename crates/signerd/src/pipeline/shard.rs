//! A shard: one worker's bounded lock-free queue and the wake-up handshake with its thread.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use crossbeam::sync::{Parker, Unparker};
use tokio::sync::oneshot;

use super::admission;
use crate::engine::registry::VersionEntry;
use crate::error::EngineError;
use signer_proto::keys::{Payload, Version};

/// A signature produced by a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    /// The signature in the scheme's standard encoding (ECDSA: ASN.1 DER).
    pub signature: Vec<u8>,
    /// The key version that signed.
    pub version: Version,
    /// Index of the partition that signed.
    pub partition: usize,
}

/// The answer to one sign request.
pub type Reply = Result<Signed, EngineError>;

/// One queued sign request.
#[derive(Debug)]
pub struct Job {
    /// The key version to sign with.
    pub version: Arc<VersionEntry>,
    /// What to sign (checked against its scheme).
    pub payload: Payload,
    /// Past this instant the HSM is not called.
    pub deadline: Instant,
    /// When the job was queued (queue-wait metric).
    pub enqueued: Instant,
    /// Who asked (the client identity, for the audit log).
    pub identity: Arc<str>,
    /// Set when the router sent this job to a half-open partition as a breaker probe: the
    /// ticket reports the call's outcome, or hands the slot back when dropped unreported.
    pub probe: Option<super::breakers::ProbeTicket>,
    /// Set once the job was re-queued after a busy answer (a job is retried at most once).
    pub retried: bool,
    /// The caller writes this job's audit record itself, together with its own records, before
    /// it releases anything to a client (the batcher: a tree's root with its leaves). The
    /// answer is then handed over without a record of its own.
    pub caller_records: bool,
    /// Where the answer goes; used exactly once.
    pub reply: oneshot::Sender<Reply>,
}

impl Job {
    /// Answers the request. A caller that stopped waiting is not an error.
    pub fn answer(self, reply: Reply) {
        let _ = self.reply.send(reply);
    }
}

/// A worker's queue. Producers push and wake the worker only when it sleeps.
#[derive(Debug)]
pub struct Shard {
    queue: ArrayQueue<Job>,
    in_hand: AtomicUsize,
    /// Exponentially weighted mean time per job on this worker, in nanoseconds.
    service_ns: AtomicU64,
    warmed: AtomicBool,
    sleeping: AtomicBool,
    /// The current worker's wake-up handle (replaced when a stuck worker is replaced).
    unparker: parking_lot::Mutex<Unparker>,
    partition: usize,
    /// Which worker owns this shard; bumped when the watchdog quarantines a stuck worker.
    generation: AtomicU64,
    /// When the current worker entered the HSM call (ns since [`epoch`]); 0 when not in one.
    busy_since: AtomicU64,
    /// Requests routed here (admitted or shed) in the current pressure window.
    arrived: AtomicU64,
    /// Of those, answered OVERLOADED instead of queued.
    shed: AtomicU64,
    /// Jobs the worker finished in the current pressure window.
    completed: AtomicU64,
    /// Start of the current pressure window (ns since [`epoch`]).
    window_start: AtomicU64,
    /// Whether the last window judged this queue in sustained overload (see
    /// [`super::admission::sustained_overload`]).
    overloaded: AtomicBool,
    /// Time the worker slept for want of work in the current pressure window (ns).
    idle_ns: AtomicU64,
    /// The worker's busy time per finished job over the last window (ns; 0 when that window
    /// says nothing), see [`admission::drain_per_job`].
    drain_ns: AtomicU64,
}

/// The process-wide origin of the shard timestamps.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn nanos_since_epoch(t: Instant) -> u64 {
    // Never 0, so that 0 can mean "not busy".
    nanos(t.saturating_duration_since(epoch())).max(1)
}

/// `d` in nanoseconds, saturating (u64 holds 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Shard {
    /// A shard holding at most `capacity` jobs, for a worker on `partition`. The worker keeps the
    /// returned parker.
    pub fn new(capacity: usize, partition: usize) -> (Shard, Parker) {
        let parker = Parker::new();
        let shard = Shard {
            queue: ArrayQueue::new(capacity.max(1)),
            in_hand: AtomicUsize::new(0),
            service_ns: AtomicU64::new(0),
            warmed: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            unparker: parking_lot::Mutex::new(parker.unparker().clone()),
            partition,
            generation: AtomicU64::new(0),
            busy_since: AtomicU64::new(0),
            arrived: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            window_start: AtomicU64::new(0),
            overloaded: AtomicBool::new(false),
            idle_ns: AtomicU64::new(0),
            drain_ns: AtomicU64::new(0),
        };
        (shard, parker)
    }

    /// The generation of the worker that owns this shard now.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Worker side: entering an HSM call at `now`. Returns the token for [`Shard::leave_call`].
    pub fn enter_call(&self, now: Instant) -> u64 {
        let since = nanos_since_epoch(now);
        self.busy_since.store(since, Ordering::Relaxed);
        since
    }

    /// Worker side: out of the HSM call. Returns false when the watchdog took the shard away
    /// meanwhile (then the watchdog, not the worker, gave back the call's HSM permit).
    pub fn leave_call(&self, token: u64) -> bool {
        self.busy_since
            .compare_exchange(token, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// How long the current worker has been inside one HSM call, if it is in one.
    pub fn stuck_for(&self, now: Instant) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_nanos(
                nanos_since_epoch(now).saturating_sub(since),
            )),
        }
    }

    /// Watchdog side: takes the shard away from its stuck worker (which exits when its call
    /// returns) and hands it to a new worker with `parker`. Returns the new generation, and
    /// whether the old worker was inside a call (its HSM permit is then the caller's to give back:
    /// exactly one of this and the worker's [`Shard::leave_call`] sees the call).
    pub fn replace_worker(&self, parker: &Parker) -> (u64, bool) {
        *self.unparker.lock() = parker.unparker().clone();
        let in_call = self.busy_since.swap(0, Ordering::AcqRel) != 0;
        self.in_hand.store(0, Ordering::Relaxed);
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake();
        (generation, in_call)
    }

    /// The partition this shard's worker signs on.
    pub fn partition(&self) -> usize {
        self.partition
    }

    /// Counts a request routed to this shard at `now` (before admission decides about it) and
    /// answers whether the shard is in sustained overload, judged at the end of each
    /// [`admission::PRESSURE_WINDOW`] from the window's arrivals, sheds and completions and from
    /// whether the queue is `standing` (its predicted wait above the sustained budget). Whoever
    /// first sees a window end closes it; the others read the last judgement.
    pub fn note_arrival(&self, now: Instant, standing: bool) -> bool {
        self.arrived.fetch_add(1, Ordering::Relaxed);
        // 500 ms in nanoseconds: far inside u64.
        const WINDOW_NS: u64 = admission::PRESSURE_WINDOW.as_nanos() as u64;
        let t = nanos_since_epoch(now);
        let start = self.window_start.load(Ordering::Relaxed);
        if t.saturating_sub(start) < WINDOW_NS
            || self
                .window_start
                .compare_exchange(start, t, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return self.overloaded.load(Ordering::Relaxed);
        }
        let window = admission::Window {
            arrived: self.arrived.swap(0, Ordering::Relaxed),
            shed: self.shed.swap(0, Ordering::Relaxed),
            completed: self.completed.swap(0, Ordering::Relaxed),
        };
        let idle = self.idle_ns.swap(0, Ordering::Relaxed);
        let busy = Duration::from_nanos(t.saturating_sub(start).saturating_sub(idle));
        let drain = admission::drain_per_job(window.completed, busy);
        self.drain_ns
            .store(drain.map_or(0, nanos), Ordering::Relaxed);
        let was = self.overloaded.load(Ordering::Relaxed);
        let now_overloaded = admission::sustained_overload(was, window, standing);
        if now_overloaded != was {
            self.overloaded.store(now_overloaded, Ordering::Relaxed);
            tracing::debug!(
                partition = self.partition,
                arrived = window.arrived,
                shed = window.shed,
                completed = window.completed,
                overloaded = now_overloaded,
                "queue pressure changed"
            );
        }
        now_overloaded
    }

    /// Whether the last closed pressure window judged this queue in sustained overload.
    pub fn overloaded(&self) -> bool {
        self.overloaded.load(Ordering::Relaxed)
    }

    /// Counts a request routed here by [`Shard::note_arrival`] that was then answered OVERLOADED
    /// because the queue was too long or full (not because of its own short deadline).
    pub fn note_shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Jobs queued plus jobs the worker holds: what the router balances on.
    pub fn load(&self) -> usize {
        self.queue.len() + self.in_hand.load(Ordering::Relaxed)
    }

    /// Records how long one job took on this shard's worker (EWMA, weight 1/8). The worker's
    /// first job is not counted: it pays one-time costs (finding the key, copying it into the
    /// session) that would make admission shed a burst right after start-up.
    pub fn record_service(&self, took: Duration) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if !self.warmed.swap(true, Ordering::Relaxed) {
            return;
        }
        let sample = nanos(took);
        let old = self.service_ns.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.service_ns.store(new, Ordering::Relaxed);
    }

    /// How long a job queued now would wait before its worker starts it (0 until measured).
    pub fn predicted_wait(&self) -> Duration {
        self.wait_at(self.service_ns.load(Ordering::Relaxed))
    }

    /// Worker side: it slept `slept` for want of work.
    pub fn note_idle(&self, slept: Duration) {
        self.idle_ns.fetch_add(nanos(slept), Ordering::Relaxed);
    }

    /// How long a job queued now would wait at the worker's busy time per job over the last
    /// pressure window (0 when that is unknown). Unlike [`Shard::predicted_wait`] it includes
    /// everything that slows the worker between HSM calls: answering, the adaptive limit, and the
    /// CPU it did not get while the machine was saturated.
    pub fn drained_wait(&self) -> Duration {
        self.wait_at(self.drain_ns.load(Ordering::Relaxed))
    }

    /// The wait behind the current load at `per_job_ns` per job.
    fn wait_at(&self, per_job_ns: u64) -> Duration {
        Duration::from_nanos(per_job_ns.saturating_mul(self.load() as u64))
    }

    /// Jobs waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Queues a job, or hands it back when the queue is full. Wakes the worker if it sleeps.
    // The job comes back by value when the queue is full (the caller answers it); boxing it
    // would cost an allocation per request on the hot path.
    #[allow(clippy::result_large_err)]
    pub fn push(&self, job: Job) -> Result<(), Job> {
        self.queue.push(job)?;
        // Pairs with the fence in `prepare_sleep`: either the worker sees the job, or we see it
        // sleeping and wake it.
        fence(Ordering::SeqCst);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.unparker.lock().unpark();
        }
        Ok(())
    }

    /// Takes one job.
    pub fn pop(&self) -> Option<Job> {
        self.queue.pop()
    }

    /// Moves up to `max` jobs into `batch` without waiting (natural batching).
    pub fn drain_into(&self, batch: &mut Vec<Job>, max: usize) {
        while batch.len() < max {
            match self.queue.pop() {
                Some(job) => batch.push(job),
                None => break,
            }
        }
    }

    /// Records how many jobs the worker holds outside the queue.
    pub fn set_in_hand(&self, n: usize) {
        self.in_hand.store(n, Ordering::Relaxed);
    }

    /// Worker side: announce sleep. Returns false (and stays awake) if work arrived meanwhile.
    pub fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.queue.is_empty() {
            true
        } else {
            self.sleeping.store(false, Ordering::SeqCst);
            false
        }
    }

    /// Worker side: awake again.
    pub fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    /// Wakes the worker unconditionally (shutdown).
    pub fn wake(&self) {
        self.unparker.lock().unpark();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use signer_proto::keys::{KeyName, KeyType, Scheme};

    #[test]
    fn pressure_follows_arrivals_against_completions_per_window() {
        let (shard, _parker) = Shard::new(256, 0);
        let t0 = Instant::now() + Duration::from_secs(1);
        let later = |ms| t0 + Duration::from_millis(ms);
        // The first arrival opens a window; nothing is judged from one request.
        assert!(!shard.note_arrival(t0, false));
        let mut answers = Vec::new();
        for _ in 0..99 {
            assert!(!shard.note_arrival(t0, false));
            let (j, rx) = job();
            shard.push(j).unwrap();
            answers.push(rx);
        }
        for _ in 0..40 {
            shard.record_service(Duration::from_millis(1));
        }
        // 100 arrivals against 40 completions once the window is over, and 99 jobs of ~1 ms
        // still queued (a standing queue): overloaded, for the whole next window.
        let standing = shard.predicted_wait() > Duration::from_millis(30);
        assert!(standing, "{:?}", shard.predicted_wait());
        assert!(shard.note_arrival(later(600), standing));
        assert!(shard.note_arrival(later(700), false));
        assert!(shard.overloaded());
        // The worker catches up: 50 finished against 2 arrivals (a trickle says nothing).
        while shard.pop().is_some() {}
        for _ in 0..50 {
            shard.record_service(Duration::from_millis(1));
        }
        assert!(!shard.note_arrival(later(1_200), false));
        assert!(!shard.overloaded());
        // Fed twice as fast as it drains but with the queue empty (a stall already drained):
        // not overloaded.
        for _ in 0..99 {
            shard.note_arrival(later(1_300), false);
        }
        for _ in 0..50 {
            shard.record_service(Duration::from_millis(1));
        }
        assert!(!shard.note_arrival(later(1_800), false));
        // Keeping pace, but 2% of arrivals had to be shed even so: overloaded...
        for i in 0..99 {
            shard.note_arrival(later(1_900), false);
            if i < 2 {
                shard.note_shed();
            }
            shard.record_service(Duration::from_millis(1));
        }
        assert!(shard.note_arrival(later(2_400), false));
        // ... until a window sheds nothing and keeps pace.
        for _ in 0..99 {
            shard.note_arrival(later(2_500), false);
            shard.record_service(Duration::from_millis(1));
        }
        assert!(!shard.note_arrival(later(3_000), false));
    }

    #[test]
    fn drained_wait_is_busy_time_per_finished_job_times_the_load() {
        let (shard, _parker) = Shard::new(256, 0);
        let t0 = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            shard.drained_wait(),
            Duration::ZERO,
            "unknown before a window closes"
        );
        shard.note_arrival(t0, false);
        let mut answers = Vec::new();
        for _ in 0..20 {
            let (j, rx) = job();
            shard.push(j).unwrap();
            answers.push(rx);
        }
        // 40 jobs finished in a 500 ms window of which the worker slept 100 ms: 10 ms each,
        // although each HSM call took 1 ms (the rest went elsewhere: a saturated machine).
        for _ in 0..40 {
            shard.record_service(Duration::from_millis(1));
        }
        shard.note_idle(Duration::from_millis(100));
        shard.note_arrival(t0 + Duration::from_millis(500), false);
        assert_eq!(shard.predicted_wait(), Duration::from_millis(20));
        assert_eq!(shard.drained_wait(), Duration::from_millis(200));
        // A window with too few jobs to tell says nothing.
        for _ in 0..3 {
            shard.record_service(Duration::from_millis(1));
        }
        shard.note_arrival(t0 + Duration::from_millis(1_000), false);
        assert_eq!(shard.drained_wait(), Duration::ZERO);
    }

    fn job() -> (Job, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        let version = Arc::new(VersionEntry::for_tests(
            KeyName::new("k").unwrap(),
            1,
            KeyType::EcP256,
            vec![0],
        ));
        let payload = Payload::new(Scheme::EcdsaSha256, vec![7u8; 32].into()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        let j = Job {
            version,
            payload,
            deadline,
            enqueued: Instant::now(),
            identity: Arc::from("test"),
            probe: None,
            retried: false,
            caller_records: false,
            reply: tx,
        };
        (j, rx)
    }

    #[test]
    fn bounded_and_fifo() {
        let (shard, _parker) = Shard::new(2, 0);
        let (a, _ra) = job();
        let (b, _rb) = job();
        let (c, _rc) = job();
        assert!(shard.push(a).is_ok());
        assert!(shard.push(b).is_ok());
        assert!(
            shard.push(c).is_err(),
            "third push into a queue of 2 must be refused"
        );
        assert_eq!(shard.load(), 2);
        let mut batch = Vec::new();
        shard.drain_into(&mut batch, 10);
        assert_eq!(batch.len(), 2);
        assert_eq!(shard.queued(), 0);
    }

    #[test]
    fn sleeping_worker_is_woken_by_push() {
        let (shard, parker) = Shard::new(4, 0);
        let shard = Arc::new(shard);
        assert!(shard.prepare_sleep());
        let s2 = Arc::clone(&shard);
        let t = std::thread::spawn(move || {
            let (j, rx) = job();
            s2.push(j).unwrap();
            rx
        });
        // Must return long before the timeout: the push unparks us.
        let start = Instant::now();
        parker.park_timeout(Duration::from_secs(10));
        shard.woke();
        assert!(start.elapsed() < Duration::from_secs(5));
        let _rx = t.join().unwrap();
        assert!(shard.pop().is_some());
    }

    #[test]
    fn no_sleep_when_work_is_queued() {
        let (shard, _parker) = Shard::new(4, 0);
        let (j, _rx) = job();
        shard.push(j).unwrap();
        assert!(!shard.prepare_sleep());
    }

    #[test]
    fn dropped_job_closes_reply() {
        let (j, mut rx) = job();
        drop(j);
        assert!(rx.try_recv().is_err());
        let (j, mut rx) = job();
        j.answer(Err(EngineError::DeadlineExceeded));
        assert_eq!(rx.try_recv().unwrap(), Err(EngineError::DeadlineExceeded));
    }
}
