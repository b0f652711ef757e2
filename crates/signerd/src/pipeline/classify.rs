//! The one error classification of the request path: what the pipeline does about an HSM call
//! that failed with a given [`ErrorClass`] (docs/ARCHITECTURE.md, HSM error classes). The
//! worker asks [`handling`] once per failed call and acts on all three answers: whether the job
//! may be tried again, what the partition's breaker hears, and what the caller is told if no
//! retry happens.

use crate::control::breaker::Outcome;
use crate::hsm::ErrorClass;

/// Whether a job the HSM did not sign may be tried again (within the retry budget).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// No: the answer stands.
    No,
    /// Busy or throttled: on another partition holding the key, or here.
    Busy,
    /// The device failed: only on another partition.
    Device,
}

/// What the caller is told when the job is not retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The HSM refused this request's input: INVALID_ARGUMENT; the partition is fine.
    Rejected,
    /// A transient condition of the partition: UNAVAILABLE with a retry-after.
    Unavailable,
    /// Anything else: INTERNAL.
    Failed,
}

/// The three decisions for one failed call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handling {
    /// Whether to try again.
    pub retry: Retry,
    /// What the partition's circuit breaker hears.
    pub breaker: Outcome,
    /// What the caller hears if there is no retry.
    pub answer: Answer,
}

/// The handling of a failed call of class `class`: the whole table, in one place.
pub fn handling(class: ErrorClass) -> Handling {
    let (retry, breaker, answer) = match class {
        ErrorClass::Busy => (Retry::Busy, Outcome::Busy, Answer::Unavailable),
        ErrorClass::DeviceLost => (Retry::Device, Outcome::DeviceFailure, Answer::Unavailable),
        ErrorClass::SessionLost | ErrorClass::NotLoggedIn => {
            (Retry::No, Outcome::SessionLost, Answer::Unavailable)
        }
        ErrorClass::StaleHandle => (Retry::No, Outcome::SessionLost, Answer::Failed),
        ErrorClass::Request => (Retry::No, Outcome::RequestError, Answer::Rejected),
        ErrorClass::PinIncorrect | ErrorClass::PinLocked | ErrorClass::Other => {
            (Retry::No, Outcome::DeviceFailure, Answer::Failed)
        }
    };
    Handling {
        retry,
        breaker,
        answer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table, row by row: a change to any decision is a change to this test.
    #[test]
    fn every_class_has_one_handling() {
        use Answer::*;
        use ErrorClass as C;
        let rows = [
            (C::Busy, Retry::Busy, Outcome::Busy, Unavailable),
            (
                C::DeviceLost,
                Retry::Device,
                Outcome::DeviceFailure,
                Unavailable,
            ),
            (C::SessionLost, Retry::No, Outcome::SessionLost, Unavailable),
            (C::NotLoggedIn, Retry::No, Outcome::SessionLost, Unavailable),
            (C::StaleHandle, Retry::No, Outcome::SessionLost, Failed),
            (C::Request, Retry::No, Outcome::RequestError, Rejected),
            (C::PinIncorrect, Retry::No, Outcome::DeviceFailure, Failed),
            (C::PinLocked, Retry::No, Outcome::DeviceFailure, Failed),
            (C::Other, Retry::No, Outcome::DeviceFailure, Failed),
        ];
        for (class, retry, breaker, answer) in rows {
            assert_eq!(
                handling(class),
                Handling {
                    retry,
                    breaker,
                    answer
                },
                "{class:?}"
            );
        }
    }
}
