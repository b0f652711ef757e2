//! Wire codes of the crate's shared types. These numbers are part of the protocol contract
//! (docs/PROTOCOL.md §5); never renumber, only add.

use crate::keys::{KeyState, KeyType, Scheme};
use crate::Status;

impl Status {
    /// The status byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::InvalidArgument => 1,
            Status::Unauthenticated => 2,
            Status::PermissionDenied => 3,
            Status::NotFound => 4,
            Status::Overloaded => 5,
            Status::Unavailable => 6,
            Status::DeadlineExceeded => 7,
            Status::Internal => 8,
        }
    }

    /// The status for a wire byte, or `None` for a code this version does not know.
    ///
    /// Decoders map unknown codes to [`Status::Internal`] (forward compatibility: a newer server
    /// may add error codes; an older client still sees an error, just a less specific one).
    pub fn from_code(code: u8) -> Option<Status> {
        Some(match code {
            0 => Status::Ok,
            1 => Status::InvalidArgument,
            2 => Status::Unauthenticated,
            3 => Status::PermissionDenied,
            4 => Status::NotFound,
            5 => Status::Overloaded,
            6 => Status::Unavailable,
            7 => Status::DeadlineExceeded,
            8 => Status::Internal,
            _ => return None,
        })
    }
}

impl Scheme {
    /// The scheme byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Scheme::EcdsaSha256 => 1,
            Scheme::EcdsaSha384 => 2,
            Scheme::EcdsaSha512 => 3,
            Scheme::RsaPkcs1Sha256 => 4,
            Scheme::RsaPkcs1Sha384 => 5,
            Scheme::RsaPkcs1Sha512 => 6,
            Scheme::RsaPssSha256 => 7,
            Scheme::RsaPssSha384 => 8,
            Scheme::RsaPssSha512 => 9,
            Scheme::Ed25519 => 10,
        }
    }

    /// The scheme for a wire byte, or `None` if unknown (a decode error).
    pub fn from_code(code: u8) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|s| s.code() == code)
    }
}

impl KeyType {
    /// The key-type byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            KeyType::EcP256 => 1,
            KeyType::EcP384 => 2,
            KeyType::Rsa2048 => 3,
            KeyType::Rsa3072 => 4,
            KeyType::Rsa4096 => 5,
            KeyType::Ed25519 => 6,
        }
    }

    /// The key type for a wire byte, or `None` if unknown (a decode error).
    pub fn from_code(code: u8) -> Option<KeyType> {
        KeyType::ALL.into_iter().find(|t| t.code() == code)
    }
}

impl KeyState {
    /// The state byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            KeyState::Active => 1,
            KeyState::Retired => 2,
        }
    }

    /// The state for a wire byte, or `None` if unknown (a decode error).
    pub fn from_code(code: u8) -> Option<KeyState> {
        match code {
            1 => Some(KeyState::Active),
            2 => Some(KeyState::Retired),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_round_trip() {
        for code in 0..=8 {
            let status = Status::from_code(code);
            assert_eq!(status.map(Status::code), Some(code));
        }
        assert_eq!(Status::from_code(9), None);
        assert_eq!(Status::from_code(255), None);
        assert_eq!(Status::NotFound.code(), 4);
    }

    #[test]
    fn scheme_codes_round_trip() {
        let codes: Vec<u8> = Scheme::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, (1..=10).collect::<Vec<u8>>());
        for s in Scheme::ALL {
            assert_eq!(Scheme::from_code(s.code()), Some(s));
        }
        assert_eq!(Scheme::from_code(0), None);
        assert_eq!(Scheme::from_code(11), None);
    }

    #[test]
    fn key_type_and_state_codes_round_trip() {
        let codes: Vec<u8> = KeyType::ALL.iter().map(|t| t.code()).collect();
        assert_eq!(codes, (1..=6).collect::<Vec<u8>>());
        for t in KeyType::ALL {
            assert_eq!(KeyType::from_code(t.code()), Some(t));
        }
        assert_eq!(KeyType::from_code(0), None);
        assert_eq!(KeyType::from_code(7), None);
        for s in [KeyState::Active, KeyState::Retired] {
            assert_eq!(KeyState::from_code(s.code()), Some(s));
        }
        assert_eq!(KeyState::from_code(0), None);
        assert_eq!(KeyState::from_code(3), None);
    }
}
