//! Admission: shed a request at once (OVERLOADED, with retry-after) when the queue it would join
//! is predicted to hold it longer than it can wait. Sans-IO: the caller measures, this decides.
//!
//! How long is too long depends on why the queue is long. A burst (a stall of the machine, a
//! client's spike) leaves a queue that the workers drain by themselves: admitting into it costs
//! the burst's requests some latency and sheds nothing. A sustained overload (requests arriving
//! faster than the workers finish them) grows the queue without end: every request admitted late
//! only makes the next one later, and the time requests spend before admission (socket, runtime)
//! grows too. So each queue has two budgets: `burst` while jobs do not arrive faster than they
//! are finished, and the tighter `sustained` once they arrive faster and a standing queue has
//! formed, or the burst budget itself had to shed ([`sustained_overload`], judged per queue over
//! windows of [`PRESSURE_WINDOW`]).

use std::time::Duration;

/// Shortest retry hint given with OVERLOADED.
pub const MIN_RETRY_AFTER: Duration = Duration::from_millis(10);

/// Decides whether a request may be queued.
///
/// `predicted_wait` is the chosen queue's expected wait (jobs ahead x mean service time),
/// `remaining` the request's time to its deadline, `budget` the most queue wait the daemon accepts
/// for any request (the latency objective's share for queueing). Admitted when the predicted wait
/// fits both; otherwise the error carries a retry-after of about the predicted wait.
pub fn admit(
    predicted_wait: Duration,
    remaining: Duration,
    budget: Duration,
) -> Result<(), Duration> {
    let limit = remaining.min(budget);
    if predicted_wait <= limit {
        Ok(())
    } else {
        Err(predicted_wait.max(MIN_RETRY_AFTER))
    }
}

/// How often a queue's arrivals and completions are compared.
pub const PRESSURE_WINDOW: Duration = Duration::from_millis(500);
/// Arrivals per completion over a window above which a queue that is also standing counts as
/// overloaded...
const ENTER_RATIO: f64 = 1.1;
/// ... and at or below which (with nothing shed) it counts as keeping up again.
const LEAVE_RATIO: f64 = 1.05;
/// Fewer arrivals in a window than this say nothing about overload.
const MIN_ARRIVALS: u64 = 32;

/// What one queue saw during one pressure window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Requests routed to the queue, admitted or shed.
    pub arrived: u64,
    /// Of those, answered OVERLOADED because the queue was too long or full (not for their own
    /// short deadline).
    pub shed: u64,
    /// Jobs the queue's worker finished.
    pub completed: u64,
}

/// Whether a queue is in sustained overload after `window`, given whether it was before and
/// whether it is `standing` now (its predicted wait is above the sustained budget).
///
/// It enters when it had to shed at least 1% of the window's arrivals even with the burst
/// budget, or when requests arrived faster than they were finished (more than [`ENTER_RATIO`]
/// arrivals per completion) and left a standing queue behind. It leaves only after a window in
/// which it shed nothing and arrivals fell to [`LEAVE_RATIO`] per completion or below: under
/// overload, shedding at the sustained budget keeps the queue short, and when the network side is
/// saturated as well only part of the excess reaches the queue (arrivals may then barely outpace
/// completions), so neither the queue nor the ratio alone can tell that the overload is over.
pub fn sustained_overload(was: bool, window: Window, standing: bool) -> bool {
    if window.arrived < MIN_ARRIVALS {
        return false;
    }
    let ratio = window.arrived as f64 / window.completed.max(1) as f64;
    if was {
        window.shed > 0 || ratio > LEAVE_RATIO
    } else {
        window.shed.saturating_mul(100) >= window.arrived || (standing && ratio > ENTER_RATIO)
    }
}

/// Fewest completions in a window from which a drain rate is taken.
const MIN_DRAINED: u64 = 16;

/// The time per job at which a queue's worker got through its jobs over a window: the time it
/// was not idle (`busy`: the window's length less the time it slept for want of work) over the
/// jobs it finished, when it finished enough to tell.
///
/// This is what a job ahead in the queue really costs: the HSM call and everything between two
/// calls (answering, waiting for the adaptive limit, CPU the worker did not get). On a saturated
/// machine that can be twice the call time alone, which is what the per-call estimate measures;
/// admission in sustained overload uses the larger of the two, so that the sustained budget
/// bounds the real wait and not an estimate of it.
pub fn drain_per_job(completed: u64, busy: Duration) -> Option<Duration> {
    if completed < MIN_DRAINED {
        return None;
    }
    let per_job = busy.as_nanos() / u128::from(completed);
    Some(Duration::from_nanos(
        u64::try_from(per_job).unwrap_or(u64::MAX),
    ))
}

/// The queue-wait budget for a queue: `sustained` while it is overloaded, `burst` otherwise.
pub fn budget(overloaded: bool, burst: Duration, sustained: Duration) -> Duration {
    if overloaded {
        sustained
    } else {
        burst.max(sustained)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn w(arrived: u64, shed: u64, completed: u64) -> Window {
        Window {
            arrived,
            shed,
            completed,
        }
    }

    #[test]
    fn a_queue_fed_faster_than_it_drains_is_overloaded_until_it_keeps_up() {
        // Keeping up (completions lag arrivals a little at the window's edges): not overloaded,
        // standing queue or not.
        assert!(!sustained_overload(false, w(5_000, 0, 4_900), true));
        assert!(!sustained_overload(false, w(5_000, 0, 4_600), true));
        // Fed 20% faster than it drains, with a standing queue: overloaded.
        assert!(sustained_overload(false, w(6_000, 0, 5_000), true));
        // Fed faster, but the queue is short (a stall it has already drained): not overloaded.
        assert!(!sustained_overload(false, w(10_000, 0, 5_000), false));
        // Shedding 1% of arrivals even at the burst budget: overloaded.
        assert!(sustained_overload(false, w(5_000, 50, 5_000), false));
        assert!(!sustained_overload(false, w(5_000, 49, 5_000), false));
        // Once overloaded, any shedding or 1.1 arrivals per completion keep it so...
        assert!(sustained_overload(true, w(5_500, 0, 5_000), false));
        assert!(sustained_overload(true, w(5_000, 1, 5_000), false));
        // ... and a window that sheds nothing and drains ends it.
        assert!(!sustained_overload(true, w(4_000, 0, 5_000), true));
        assert!(!sustained_overload(true, w(5_200, 0, 5_000), true));
    }

    #[test]
    fn a_stuck_worker_is_overloaded_and_a_trickle_never_is() {
        assert!(sustained_overload(false, w(100, 0, 0), true));
        assert!(!sustained_overload(false, w(MIN_ARRIVALS - 1, 10, 0), true));
        assert!(!sustained_overload(true, w(3, 3, 0), true));
    }

    #[test]
    fn the_drain_rate_is_busy_time_per_finished_job() {
        let half = Duration::from_millis(500);
        // 5,000 finished in a window the worker never idled in: 100 us per job.
        assert_eq!(drain_per_job(5_000, half), Some(Duration::from_micros(100)));
        // Too few jobs to tell (a trickle, or a worker stuck in one call).
        assert_eq!(drain_per_job(MIN_DRAINED - 1, half), None);
        assert_eq!(
            drain_per_job(MIN_DRAINED, half),
            Some(half / MIN_DRAINED as u32)
        );
        assert_eq!(drain_per_job(1_000, Duration::ZERO), Some(Duration::ZERO));
    }

    #[test]
    fn the_sustained_budget_applies_only_under_overload() {
        assert_eq!(budget(false, 100 * MS, 30 * MS), 100 * MS);
        assert_eq!(budget(true, 100 * MS, 30 * MS), 30 * MS);
        // A burst budget below the sustained one is raised to it.
        assert_eq!(budget(false, 10 * MS, 30 * MS), 30 * MS);
    }

    #[test]
    fn admits_when_the_wait_fits_deadline_and_budget() {
        assert_eq!(admit(10 * MS, 100 * MS, 50 * MS), Ok(()));
        assert_eq!(admit(Duration::ZERO, MS, 50 * MS), Ok(()));
        assert_eq!(admit(50 * MS, 100 * MS, 50 * MS), Ok(()));
    }

    #[test]
    fn sheds_when_the_budget_or_deadline_is_too_short() {
        assert_eq!(admit(60 * MS, 1000 * MS, 50 * MS), Err(60 * MS));
        assert_eq!(admit(30 * MS, 20 * MS, 50 * MS), Err(30 * MS));
        assert_eq!(admit(MS * 2, MS, 50 * MS), Err(MIN_RETRY_AFTER));
    }
}
