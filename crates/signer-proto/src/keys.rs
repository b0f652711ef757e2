//! Key names, versions, types, signature schemes and lifecycle states.
//!
//! Everything here is parsed once at the edge ("parse, don't validate"): a [`KeyName`] is always
//! valid, a [`Payload`] always has the right length for its [`Scheme`].

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

/// A key name, key type, scheme or payload that is not valid where it was given. The message
/// says what is wrong and what is accepted; the server answers it as `INVALID_ARGUMENT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgumentError(pub String);

/// Longest key name accepted (bytes). Labels on real HSMs are limited (often 32-64 bytes for
/// CKA_LABEL in token-info UIs, more for objects); 64 leaves room for the `signerd:` prefix.
pub const MAX_KEY_NAME_LEN: usize = 64;

/// Largest message accepted for schemes that sign the message itself (Ed25519).
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// A key's name: 1-64 bytes of `[A-Za-z0-9._-]`, starting with an alphanumeric. Cloning is a
/// reference-count increment (names travel with every request).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyName(std::sync::Arc<str>);

impl KeyName {
    /// Parses and validates a key name.
    pub fn new(name: &str) -> Result<Self, ArgumentError> {
        let ok_len = !name.is_empty() && name.len() <= MAX_KEY_NAME_LEN;
        let ok_first = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok_len && ok_first && ok_chars {
            Ok(KeyName(name.into()))
        } else {
            Err(ArgumentError(format!(
                "invalid key name {name:?}: use 1-{MAX_KEY_NAME_LEN} characters of [A-Za-z0-9._-], \
                 starting with a letter or digit"
            )))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string (no copy).
    pub fn shared(&self) -> std::sync::Arc<str> {
        std::sync::Arc::clone(&self.0)
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key version number; versions start at 1 and only grow.
pub type Version = u32;

/// The kind of key pair a named key holds (all versions of a key have the same type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// RSA with a 2048-bit modulus.
    Rsa2048,
    /// RSA with a 3072-bit modulus.
    Rsa3072,
    /// RSA with a 4096-bit modulus.
    Rsa4096,
    /// Ed25519 (pure EdDSA).
    Ed25519,
}

impl KeyType {
    /// All key types, in display order.
    pub const ALL: [KeyType; 6] = [
        KeyType::EcP256,
        KeyType::EcP384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
        KeyType::Ed25519,
    ];

    /// The stable name used in the CLI, configs and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcP256 => "ec-p256",
            KeyType::EcP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
            KeyType::Ed25519 => "ed25519",
        }
    }

    /// RSA modulus size in bits, or `None` for non-RSA keys.
    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            KeyType::Rsa2048 => Some(2048),
            KeyType::Rsa3072 => Some(3072),
            KeyType::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    /// Whether `scheme` can be used with a key of this type.
    pub fn supports(self, scheme: Scheme) -> bool {
        match self {
            KeyType::EcP256 | KeyType::EcP384 => matches!(
                scheme,
                Scheme::EcdsaSha256 | Scheme::EcdsaSha384 | Scheme::EcdsaSha512
            ),
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => matches!(
                scheme,
                Scheme::RsaPkcs1Sha256
                    | Scheme::RsaPkcs1Sha384
                    | Scheme::RsaPkcs1Sha512
                    | Scheme::RsaPssSha256
                    | Scheme::RsaPssSha384
                    | Scheme::RsaPssSha512
            ),
            KeyType::Ed25519 => scheme == Scheme::Ed25519,
        }
    }

    /// The scheme used when a request names none.
    pub fn default_scheme(self) -> Scheme {
        match self {
            KeyType::EcP256 => Scheme::EcdsaSha256,
            KeyType::EcP384 => Scheme::EcdsaSha384,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => Scheme::RsaPssSha256,
            KeyType::Ed25519 => Scheme::Ed25519,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = ArgumentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = KeyType::ALL.iter().map(|t| t.as_str()).collect();
                ArgumentError(format!(
                    "unknown key type {s:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// A signature scheme: algorithm, hash and padding.
///
/// ECDSA and RSA schemes sign a digest computed by the client; Ed25519 signs the message itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// ECDSA over a SHA-256 digest; signature is ASN.1 DER.
    EcdsaSha256,
    /// ECDSA over a SHA-384 digest; signature is ASN.1 DER.
    EcdsaSha384,
    /// ECDSA over a SHA-512 digest; signature is ASN.1 DER.
    EcdsaSha512,
    /// RSASSA-PKCS1-v1_5 over a SHA-256 digest.
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 over a SHA-384 digest.
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 over a SHA-512 digest.
    RsaPkcs1Sha512,
    /// RSASSA-PSS, SHA-256, MGF1-SHA-256, salt length 32.
    RsaPssSha256,
    /// RSASSA-PSS, SHA-384, MGF1-SHA-384, salt length 48.
    RsaPssSha384,
    /// RSASSA-PSS, SHA-512, MGF1-SHA-512, salt length 64.
    RsaPssSha512,
    /// Pure Ed25519 (RFC 8032) over the message.
    Ed25519,
}

impl Scheme {
    /// All schemes.
    pub const ALL: [Scheme; 10] = [
        Scheme::EcdsaSha256,
        Scheme::EcdsaSha384,
        Scheme::EcdsaSha512,
        Scheme::RsaPkcs1Sha256,
        Scheme::RsaPkcs1Sha384,
        Scheme::RsaPkcs1Sha512,
        Scheme::RsaPssSha256,
        Scheme::RsaPssSha384,
        Scheme::RsaPssSha512,
        Scheme::Ed25519,
    ];

    /// The stable name used in the CLI, configs and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::EcdsaSha256 => "ecdsa-sha256",
            Scheme::EcdsaSha384 => "ecdsa-sha384",
            Scheme::EcdsaSha512 => "ecdsa-sha512",
            Scheme::RsaPkcs1Sha256 => "rsa-pkcs1-sha256",
            Scheme::RsaPkcs1Sha384 => "rsa-pkcs1-sha384",
            Scheme::RsaPkcs1Sha512 => "rsa-pkcs1-sha512",
            Scheme::RsaPssSha256 => "rsa-pss-sha256",
            Scheme::RsaPssSha384 => "rsa-pss-sha384",
            Scheme::RsaPssSha512 => "rsa-pss-sha512",
            Scheme::Ed25519 => "ed25519",
        }
    }

    /// The digest length this scheme signs, or `None` when it signs the message (Ed25519).
    pub fn digest_len(self) -> Option<usize> {
        match self {
            Scheme::EcdsaSha256 | Scheme::RsaPkcs1Sha256 | Scheme::RsaPssSha256 => Some(32),
            Scheme::EcdsaSha384 | Scheme::RsaPkcs1Sha384 | Scheme::RsaPssSha384 => Some(48),
            Scheme::EcdsaSha512 | Scheme::RsaPkcs1Sha512 | Scheme::RsaPssSha512 => Some(64),
            Scheme::Ed25519 => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scheme {
    type Err = ArgumentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scheme::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scheme::ALL.iter().map(|t| t.as_str()).collect();
                ArgumentError(format!(
                    "unknown scheme {s:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

/// What is signed: a digest of the scheme's exact length, or (Ed25519) a bounded message.
///
/// Only [`Payload::new`] builds one, so a payload of the wrong length for its scheme cannot exist.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload {
    scheme: Scheme,
    bytes: Bytes,
}

impl Payload {
    /// Checks `bytes` against `scheme`: a digest must have exactly the hash length; a message
    /// must be at most [`MAX_MESSAGE_LEN`] bytes.
    pub fn new(scheme: Scheme, bytes: Bytes) -> Result<Self, ArgumentError> {
        match scheme.digest_len() {
            Some(len) if bytes.len() != len => Err(ArgumentError(format!(
                "digest for {scheme} must be {len} bytes, got {}",
                bytes.len()
            ))),
            None if bytes.len() > MAX_MESSAGE_LEN => Err(ArgumentError(format!(
                "message for {scheme} is {} bytes; the limit is {MAX_MESSAGE_LEN}",
                bytes.len()
            ))),
            _ => Ok(Payload { scheme, bytes }),
        }
    }

    /// The scheme this payload was checked against.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The digest or message bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("scheme", &self.scheme)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Lifecycle state of one key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// May sign. The highest active version is the key's signing version.
    Active,
    /// Superseded by a rotation or retired explicitly: verify and public-key export only.
    /// Enforced in the HSM too (`CKA_SIGN=false` on the private key).
    Retired,
}

impl KeyState {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Retired => "retired",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        assert!(KeyName::new("payments-2024.v1_a").is_ok());
        for bad in ["", "-x", "a b", "ä", "a/b", &"x".repeat(65)] {
            assert!(KeyName::new(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(KeyName::new(&"x".repeat(64)).is_ok());
    }

    #[test]
    fn names_round_trip() {
        for t in KeyType::ALL {
            assert_eq!(t.as_str().parse::<KeyType>().unwrap(), t);
            assert!(t.supports(t.default_scheme()));
        }
        for s in Scheme::ALL {
            assert_eq!(s.as_str().parse::<Scheme>().unwrap(), s);
        }
        assert!("ecdsa".parse::<Scheme>().is_err());
    }

    #[test]
    fn payload_lengths() {
        let d32 = Bytes::from(vec![0u8; 32]);
        assert!(Payload::new(Scheme::EcdsaSha256, d32.clone()).is_ok());
        assert!(Payload::new(Scheme::EcdsaSha384, d32.clone()).is_err());
        assert!(Payload::new(Scheme::RsaPssSha512, d32.clone()).is_err());
        assert!(Payload::new(Scheme::Ed25519, d32).is_ok());
        let big = Bytes::from(vec![0u8; MAX_MESSAGE_LEN + 1]);
        assert!(Payload::new(Scheme::Ed25519, big).is_err());
    }

    #[test]
    fn scheme_compatibility() {
        assert!(KeyType::EcP384.supports(Scheme::EcdsaSha256));
        assert!(!KeyType::EcP256.supports(Scheme::RsaPssSha256));
        assert!(!KeyType::Rsa2048.supports(Scheme::Ed25519));
        assert!(!KeyType::Ed25519.supports(Scheme::EcdsaSha256));
    }
}
