//! Engine errors and the status codes they map to.
//!
//! Every error knows who failed (the caller, the daemon, the HSM) and whether a retry can help;
//! the wire status (docs/PROTOCOL.md) follows from that.

use std::time::Duration;

pub use signer_proto::Status;

/// Why the engine could not complete a request.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// The request is malformed, or does not fit the key (wrong digest length, wrong scheme).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No such key, or no such version of it.
    #[error("not found: {0}")]
    NotFound(String),
    /// The key exists but cannot do this in its current state (e.g. a retired version).
    #[error("invalid argument: {0}")]
    FailedPrecondition(String),
    /// The chosen queue is full; nothing was queued.
    #[error("overloaded: retry after {} ms", whole_ms(*retry_after))]
    Overloaded {
        /// Suggested delay before retrying.
        retry_after: Duration,
    },
    /// No healthy partition holds the key, or the engine is shutting down.
    #[error("unavailable: {reason}")]
    Unavailable {
        /// What is unavailable.
        reason: String,
        /// Suggested delay before retrying.
        retry_after: Duration,
    },
    /// The deadline passed before the HSM was called; the HSM was not called.
    #[error("deadline exceeded before signing")]
    DeadlineExceeded,
    /// The HSM rejected the request's input (e.g. DATA_LEN_RANGE); the partition is fine.
    #[error("invalid argument: the HSM rejected the request: {0}")]
    HsmRequest(String),
    /// The HSM failed in a way that is not the request's fault.
    #[error("internal error: HSM failure: {0}")]
    Hsm(String),
    /// A bug or broken invariant in the daemon.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<signer_proto::ArgumentError> for EngineError {
    fn from(e: signer_proto::ArgumentError) -> Self {
        EngineError::InvalidArgument(e.0)
    }
}

impl EngineError {
    /// The wire status for this error.
    pub fn status(&self) -> Status {
        match self {
            EngineError::InvalidArgument(_)
            | EngineError::FailedPrecondition(_)
            | EngineError::HsmRequest(_) => Status::InvalidArgument,
            EngineError::NotFound(_) => Status::NotFound,
            EngineError::Overloaded { .. } => Status::Overloaded,
            EngineError::Unavailable { .. } => Status::Unavailable,
            EngineError::DeadlineExceeded => Status::DeadlineExceeded,
            EngineError::Hsm(_) | EngineError::Internal(_) => Status::Internal,
        }
    }

    /// The suggested retry delay in whole milliseconds, as sent on the wire (`retry_after_ms`)
    /// and shown in the message: rounded up, so a client that waits this long has waited at
    /// least the delay; 0 when the error carries none.
    pub fn retry_after_ms(&self) -> u32 {
        self.retry_after().map_or(0, whole_ms)
    }

    /// Suggested retry delay for retryable errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EngineError::Overloaded { retry_after } => Some(*retry_after),
            EngineError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// `d` in whole milliseconds, rounded up (so 30.000123 ms is 31 ms, never a Debug duration).
fn whole_ms(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message starts with the name of the status it is answered with (docs/PROTOCOL.md
    /// §4), never with a category the status table does not have, and shows durations in whole
    /// milliseconds (no `Debug` output).
    #[test]
    fn messages_name_their_status_and_round_durations() {
        let retry_after = Duration::from_nanos(30_000_123);
        let errors = [
            EngineError::InvalidArgument("x".into()),
            EngineError::NotFound("x".into()),
            EngineError::FailedPrecondition("x".into()),
            EngineError::Overloaded { retry_after },
            EngineError::Unavailable {
                reason: "x".into(),
                retry_after,
            },
            EngineError::DeadlineExceeded,
            EngineError::HsmRequest("x".into()),
            EngineError::Hsm("x".into()),
            EngineError::Internal("x".into()),
        ];
        for e in &errors {
            let name = match e.status() {
                Status::Internal => "internal error".to_owned(),
                s => s.as_str().replace('_', " "),
            };
            let text = e.to_string();
            assert!(
                text.starts_with(&name),
                "{text:?} does not start with {name:?}"
            );
            assert!(!text.contains("Some(") && !text.contains("ms)"), "{text}");
        }
        let e = EngineError::Overloaded { retry_after };
        assert_eq!(e.to_string(), "overloaded: retry after 31 ms");
        assert_eq!(e.retry_after_ms(), 31);
        let e = EngineError::Overloaded {
            retry_after: Duration::from_millis(7),
        };
        assert_eq!(
            (e.to_string().as_str(), e.retry_after_ms()),
            ("overloaded: retry after 7 ms", 7)
        );
        assert_eq!(EngineError::DeadlineExceeded.retry_after_ms(), 0);
    }
}
