//! Engine errors and the status codes they map to.
//!
//! Every error knows who failed (the caller, the daemon, the HSM) and whether a retry can help;
//! the wire status (docs/PROTOCOL.md) follows from that.

use std::time::Duration;

/// Status codes shared by the engine, the wire protocol and the client library.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// Success.
    Ok,
    /// The request is malformed or not valid for the key (caller's fault; do not retry).
    InvalidArgument,
    /// The caller could not be authenticated.
    Unauthenticated,
    /// The caller is not allowed to do this.
    PermissionDenied,
    /// The key or version does not exist.
    NotFound,
    /// The daemon is at capacity; retry after the given delay.
    Overloaded,
    /// No healthy HSM partition can serve this now, or the daemon is shutting down; retry later.
    Unavailable,
    /// The request's deadline passed before it could be signed.
    DeadlineExceeded,
    /// A daemon or HSM failure that is not the caller's fault and not known to be transient.
    Internal,
}

impl Status {
    /// Stable lower-case name, used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::InvalidArgument => "invalid_argument",
            Status::Unauthenticated => "unauthenticated",
            Status::PermissionDenied => "permission_denied",
            Status::NotFound => "not_found",
            Status::Overloaded => "overloaded",
            Status::Unavailable => "unavailable",
            Status::DeadlineExceeded => "deadline_exceeded",
            Status::Internal => "internal",
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Status::Overloaded | Status::Unavailable | Status::DeadlineExceeded
        )
    }
}

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
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The chosen queue is full; nothing was queued.
    #[error("overloaded: retry after {retry_after:?}")]
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
    #[error("HSM rejected the request: {0}")]
    HsmRequest(String),
    /// The HSM failed in a way that is not the request's fault.
    #[error("HSM failure: {0}")]
    Hsm(String),
    /// A bug or broken invariant in the daemon.
    #[error("internal error: {0}")]
    Internal(String),
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

    /// Suggested retry delay for retryable errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            EngineError::Overloaded { retry_after } => Some(*retry_after),
            EngineError::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
