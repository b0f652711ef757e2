//! Admission: shed a request at once (OVERLOADED, with retry-after) when the queue it would join
//! is predicted to hold it longer than it can wait. Sans-IO: the caller measures, this decides.

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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

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
