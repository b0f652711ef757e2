//! The status codes of the wire protocol, shared by the server and the client library.

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
    /// Every status, in wire-code order (`Status::ALL[s.index()] == s`).
    pub const ALL: [Status; 9] = [
        Status::Ok,
        Status::InvalidArgument,
        Status::Unauthenticated,
        Status::PermissionDenied,
        Status::NotFound,
        Status::Overloaded,
        Status::Unavailable,
        Status::DeadlineExceeded,
        Status::Internal,
    ];

    /// The position of this status in [`Status::ALL`], for tables indexed by status (metrics).
    pub fn index(self) -> usize {
        // Wire codes are 0..=8 in `ALL` order (tested).
        usize::from(self.code())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_complete() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(Status::from_code(s.code()), Some(*s));
        }
        assert_eq!(Status::from_code(Status::ALL.len() as u8), None);
    }
}
