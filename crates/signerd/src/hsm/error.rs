//! PKCS#11 errors and the classes that decide what the engine does about them (docs/ARCHITECTURE.md, HSM error classes).

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};

/// What a failed PKCS#11 call means for the session, the partition and the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The session is gone (`SESSION_HANDLE_INVALID`, `SESSION_CLOSED`): rebuild it, retry once.
    SessionLost,
    /// The token forgot our login (`USER_NOT_LOGGED_IN`): log in again (serialized), retry once.
    NotLoggedIn,
    /// An object handle no longer names our object: find the key again by `CKA_ID`, retry once.
    StaleHandle,
    /// The device or token is gone or broken: the partition is unhealthy.
    DeviceLost,
    /// The HSM is busy or throttling: back off, do not count as a device failure.
    Busy,
    /// The request's input was rejected: the request fails, the partition is fine.
    Request,
    /// Wrong PIN: fail once, never retry (real tokens lock after a few attempts).
    PinIncorrect,
    /// The PIN is locked: an operator must act.
    PinLocked,
    /// Anything else: a failure of the HSM or the daemon that is not known to be transient.
    Other,
}

/// The PKCS#11 name of a function (`C_Sign`, `C_GetAttributeValue`): the binding names its
/// variants after the specification's functions without the `C_` prefix.
pub fn pkcs11_name(function: Function) -> String {
    format!("C_{function:?}")
}

/// A failed PKCS#11 call: which function, which return value, what class.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// A PKCS#11 function returned an error code. Shown with the function's PKCS#11 name
    /// (`C_Sign: ...`), not the binding's `Function::Sign`.
    #[error("{}: {rv}", pkcs11_name(*function))]
    Call {
        /// The PKCS#11 function that failed.
        function: Function,
        /// The return value.
        rv: RvError,
        /// What it means for us.
        class: ErrorClass,
    },
    /// The module could not be loaded.
    #[error("cannot load PKCS#11 module {path}: {reason}")]
    Load {
        /// Module path from the config.
        path: String,
        /// Loader message.
        reason: String,
    },
    /// A non-PKCS#11 failure inside the binding (conversion, unsupported feature).
    #[error("PKCS#11 binding: {0}")]
    Binding(String),
    /// Login refused because of the PIN (wrong, expired or locked). Never retried.
    #[error("{0}")]
    Login(String),
    /// The token does not hold what we expected (missing KEK, malformed attribute, ...).
    #[error("{0}")]
    Unexpected(String),
}

impl HsmError {
    /// The class that decides the engine's reaction.
    pub fn class(&self) -> ErrorClass {
        match self {
            HsmError::Call { class, .. } => *class,
            HsmError::Login(_) => ErrorClass::PinIncorrect,
            HsmError::Load { .. } | HsmError::Binding(_) | HsmError::Unexpected(_) => {
                ErrorClass::Other
            }
        }
    }

    /// The PKCS#11 return value, if this came from a call.
    pub fn rv(&self) -> Option<RvError> {
        match self {
            HsmError::Call { rv, .. } => Some(*rv),
            _ => None,
        }
    }
}

impl From<CkError> for HsmError {
    fn from(e: CkError) -> Self {
        match e {
            CkError::Pkcs11(rv, function) => HsmError::Call {
                function,
                rv,
                class: classify(rv),
            },
            CkError::LibraryLoading(e) => HsmError::Load {
                path: String::new(),
                reason: e.to_string(),
            },
            other => HsmError::Binding(other.to_string()),
        }
    }
}

/// Maps a PKCS#11 return value to its class (docs/ARCHITECTURE.md, HSM error classes).
pub fn classify(rv: RvError) -> ErrorClass {
    use RvError as R;
    match rv {
        R::SessionHandleInvalid | R::SessionClosed => ErrorClass::SessionLost,
        R::UserNotLoggedIn => ErrorClass::NotLoggedIn,
        R::ObjectHandleInvalid | R::KeyHandleInvalid => ErrorClass::StaleHandle,
        R::DeviceRemoved
        | R::DeviceError
        | R::DeviceMemory
        | R::TokenNotPresent
        | R::TokenNotRecognized
        | R::GeneralError
        | R::CryptokiNotInitialized => ErrorClass::DeviceLost,
        R::FunctionFailed | R::OperationActive | R::SessionCount | R::HostMemory => {
            ErrorClass::Busy
        }
        R::DataInvalid
        | R::DataLenRange
        | R::MechanismInvalid
        | R::MechanismParamInvalid
        | R::KeyTypeInconsistent
        | R::KeyFunctionNotPermitted
        | R::KeySizeRange
        | R::ArgumentsBad
        | R::FunctionRejected => ErrorClass::Request,
        R::PinIncorrect | R::PinInvalid | R::PinLenRange | R::PinExpired => {
            ErrorClass::PinIncorrect
        }
        R::PinLocked => ErrorClass::PinLocked,
        _ => ErrorClass::Other,
    }
}

/// Result alias for the HSM layer.
pub type HsmResult<T> = Result<T, HsmError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_design() {
        assert_eq!(
            classify(RvError::SessionHandleInvalid),
            ErrorClass::SessionLost
        );
        assert_eq!(classify(RvError::SessionClosed), ErrorClass::SessionLost);
        assert_eq!(classify(RvError::UserNotLoggedIn), ErrorClass::NotLoggedIn);
        assert_eq!(
            classify(RvError::ObjectHandleInvalid),
            ErrorClass::StaleHandle
        );
        assert_eq!(classify(RvError::DeviceRemoved), ErrorClass::DeviceLost);
        assert_eq!(classify(RvError::TokenNotPresent), ErrorClass::DeviceLost);
        assert_eq!(classify(RvError::FunctionFailed), ErrorClass::Busy);
        assert_eq!(classify(RvError::DataLenRange), ErrorClass::Request);
        assert_eq!(classify(RvError::PinIncorrect), ErrorClass::PinIncorrect);
        assert_eq!(classify(RvError::PinLocked), ErrorClass::PinLocked);
        assert_eq!(classify(RvError::AttributeSensitive), ErrorClass::Other);
    }

    #[test]
    fn conversion_keeps_function_and_class() {
        let e = HsmError::from(CkError::Pkcs11(RvError::SessionClosed, Function::Sign));
        assert_eq!(e.class(), ErrorClass::SessionLost);
        assert_eq!(e.rv(), Some(RvError::SessionClosed));
        // The specification's name, not the binding's `Function::Sign`.
        assert!(e.to_string().starts_with("C_Sign: "), "{e}");
        assert!(!e.to_string().contains("Function::"), "{e}");
        assert_eq!(
            pkcs11_name(Function::GetAttributeValue),
            "C_GetAttributeValue"
        );
    }
}
