//! The `certnode-sign/1` wire protocol: frames, ops, status codes, and their encoding.
//!
//! This module is the codec only (no I/O). `docs/PROTOCOL.md` is the contract; this code
//! implements it. One QUIC bidirectional stream carries one request frame (client → server) and
//! one response frame (server → client):
//!
//! ```text
//! frame    = u32 length (big-endian, of everything after it, ≤ MAX_FRAME) ‖ body
//! request  = u8 version ‖ u8 op ‖ u16 flags ‖ u32 deadline_ms ‖ op body
//! response = u8 version ‖ u8 status ‖ u16 flags ‖ u32 retry_after_ms ‖ str16 message
//!            ‖ result body (only when status is OK; its layout depends on the request's op)
//! ```
//!
//! Decoding is strict and total: every length is checked against its limit and against the bytes
//! that remain *before* anything is allocated, unknown codes and reserved bits are rejected, and no
//! input makes it panic. A [`DecodeError`] names the field and byte offset that failed.
//!
//! Numeric codes of the crate's own types ([`Status`], [`Scheme`], [`KeyType`], [`KeyState`]) are
//! defined here (`code()` / `from_code()`), next to the wire format they belong to.

mod codes;
mod error;
mod request;
mod response;
mod wire;

#[cfg(test)]
mod proptests;

use std::fmt;

use bytes::Bytes;

pub use error::{DecodeError, DecodeErrorKind, EncodeError};
pub use request::{decode_request, encode_request};

pub use crate::merkle::SignatureForm;
pub use response::{decode_response, encode_response};

use crate::keys::{KeyName, KeyState, KeyType, Scheme, Version};
use crate::Status;

/// ALPN protocol identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"certnode-sign/1";

/// Protocol version carried in the first body byte of every request and response.
pub const VERSION: u8 = 1;

/// Largest value of a frame's `u32` length prefix (the body, not counting the prefix): 1 MiB.
pub const MAX_FRAME: usize = 1024 * 1024;

/// Largest digest or message in one sign/verify payload (bytes).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Most payloads in one `SignBatch` request (and items in its response).
pub const MAX_BATCH: usize = 1024;

/// Largest signature accepted or returned (bytes).
pub const MAX_SIGNATURE: usize = 4096;

/// Most partition names in a `CreateKey` placement.
pub const MAX_PARTITIONS: usize = 64;

/// Longest human-readable status message (bytes of UTF-8). Encoders truncate longer messages on a
/// character boundary; decoders reject them.
pub const MAX_MESSAGE: usize = 1024;

/// Request flag bit 0: the client accepts a Merkle batch signature (signature form 2) in place of
/// a plain one. A server sends form 2 only in answer to a request with this bit.
pub const ACCEPT_BATCH_SIGNATURE: u16 = 0x0001;

/// Request flag bit 1, on `SignBatch` only: the payloads are independent sign calls that the
/// client coalesced into one request. The server treats each item exactly as a `Sign` of its
/// own: authorized as op `sign` (not `sign_batch`), quota-counted, metered and audited per item.
/// A server that predates this bit refuses the request as malformed (unknown flag bits); a
/// client then sends the calls one by one (docs/PROTOCOL.md §7).
pub const COALESCED_CALLS: u16 = 0x0002;

/// Every request flag bit this version knows. Any other bit set is a decode error.
pub const KNOWN_REQUEST_FLAGS: u16 = ACCEPT_BATCH_SIGNATURE | COALESCED_CALLS;

/// The request flag bits `op` may carry: [`COALESCED_CALLS`] only on `SignBatch`. Any other bit
/// set is a decode error ([`DecodeErrorKind::BadFlags`]).
pub fn request_flags_for(op: Op) -> u16 {
    match op {
        Op::SignBatch => KNOWN_REQUEST_FLAGS,
        _ => KNOWN_REQUEST_FLAGS & !COALESCED_CALLS,
    }
}

/// Signature form 1: a plain signature in the scheme's usual encoding.
pub const SIGNATURE_FORM_PLAIN: u8 = 1;

/// Signature form 2: a Merkle batch signature with an inclusion proof; its `signature` bytes are a
/// [`crate::merkle::BatchSignature`] encoding (`docs/BATCH.md` §5).
pub const SIGNATURE_FORM_MERKLE: u8 = 2;

/// Reads the frame length from a frame's 4-byte prefix: the number of body bytes that follow it.
///
/// Compare the result with [`MAX_FRAME`] before reading or allocating the body.
pub fn frame_len(prefix: &[u8; 4]) -> usize {
    u32::from_be_bytes(*prefix) as usize
}

/// An operation: what a request asks for. The response body's layout depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
// Not `#[non_exhaustive]`: the server's dispatch matches every op, and a new op must fail to
// compile there until it is handled. The crates of this workspace are versioned together.
pub enum Op {
    /// Sign one digest (or Ed25519 message).
    Sign = 0x01,
    /// Sign up to [`MAX_BATCH`] payloads with one key.
    SignBatch = 0x02,
    /// Verify a signature with a key's public half.
    Verify = 0x03,
    /// Export a key version's public key (SPKI DER).
    GetPublicKey = 0x04,
    /// List every key and its versions.
    ListKeys = 0x05,
    /// Admin: create a key (version 1).
    CreateKey = 0x10,
    /// Admin: add a new signing version; earlier versions become retired.
    RotateKey = 0x11,
    /// Admin: retire one version (verify and public-key export only).
    RetireKey = 0x12,
    /// Admin: destroy one version's key material.
    DestroyKey = 0x13,
}

impl Op {
    /// All ops, in code order.
    pub const ALL: [Op; 9] = [
        Op::Sign,
        Op::SignBatch,
        Op::Verify,
        Op::GetPublicKey,
        Op::ListKeys,
        Op::CreateKey,
        Op::RotateKey,
        Op::RetireKey,
        Op::DestroyKey,
    ];

    /// The op byte on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The position of this op in [`Op::ALL`], for tables indexed by op (metrics).
    pub fn index(self) -> usize {
        match self {
            Op::Sign => 0,
            Op::SignBatch => 1,
            Op::Verify => 2,
            Op::GetPublicKey => 3,
            Op::ListKeys => 4,
            Op::CreateKey => 5,
            Op::RotateKey => 6,
            Op::RetireKey => 7,
            Op::DestroyKey => 8,
        }
    }

    /// The op for a wire byte, or `None` if this version does not know it.
    pub fn from_code(code: u8) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.code() == code)
    }

    /// Whether this is an administrative op (codes `0x10..=0x1f`), which needs an admin identity.
    pub fn is_admin(self) -> bool {
        self.code() & 0xf0 == 0x10
    }

    /// Stable lower-case name, used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Sign => "sign",
            Op::SignBatch => "sign_batch",
            Op::Verify => "verify",
            Op::GetPublicKey => "get_public_key",
            Op::ListKeys => "list_keys",
            Op::CreateKey => "create_key",
            Op::RotateKey => "rotate_key",
            Op::RetireKey => "retire_key",
            Op::DestroyKey => "destroy_key",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request frame: header fields plus the op and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFrame {
    /// Flag bits; only [`KNOWN_REQUEST_FLAGS`] may be set.
    pub flags: u16,
    /// Time budget in milliseconds, counted from when the server receives the request;
    /// 0 means the server's default.
    pub deadline_ms: u32,
    /// The op and its arguments.
    pub request: Request,
}

/// An op with its arguments.
///
/// `version: None` means "the key's signing version" (for `Verify` and `GetPublicKey`: the
/// signing version, or the latest version if none signs); it travels as 0 on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
// Not `#[non_exhaustive]`, for the same reason as `Op`.
pub enum Request {
    /// Sign one payload.
    Sign {
        /// Key name.
        key: KeyName,
        /// A specific (active) version, or `None` for the signing version.
        version: Option<Version>,
        /// Signature scheme.
        scheme: Scheme,
        /// The digest, or the message for Ed25519 (at most [`MAX_PAYLOAD`] bytes).
        payload: Bytes,
    },
    /// Sign several payloads with the same key, version and scheme.
    SignBatch {
        /// Key name.
        key: KeyName,
        /// A specific (active) version, or `None` for the signing version.
        version: Option<Version>,
        /// Signature scheme.
        scheme: Scheme,
        /// 1 to [`MAX_BATCH`] payloads, each at most [`MAX_PAYLOAD`] bytes.
        payloads: Vec<Bytes>,
    },
    /// Verify a signature (plain or batch).
    Verify {
        /// Key name.
        key: KeyName,
        /// A specific version, or `None` for the signing version (else the latest).
        version: Option<Version>,
        /// Signature scheme.
        scheme: Scheme,
        /// The digest or message that was signed.
        payload: Bytes,
        /// The signature, plain or batch (its encoding at most [`MAX_SIGNATURE`] bytes).
        signature: SignatureForm,
    },
    /// Export a public key.
    GetPublicKey {
        /// Key name.
        key: KeyName,
        /// A specific version, or `None` for the signing version (else the latest).
        version: Option<Version>,
    },
    /// List all keys.
    ListKeys,
    /// Create a key.
    CreateKey {
        /// Name of the new key.
        key: KeyName,
        /// Key type.
        key_type: KeyType,
        /// Partitions to hold it (at most [`MAX_PARTITIONS`]); empty for every partition.
        placement: Vec<String>,
    },
    /// Rotate a key: create a new signing version.
    RotateKey {
        /// Key name.
        key: KeyName,
    },
    /// Retire one version.
    RetireKey {
        /// Key name.
        key: KeyName,
        /// Version to retire (≥ 1).
        version: Version,
    },
    /// Destroy one version.
    DestroyKey {
        /// Key name.
        key: KeyName,
        /// Version to destroy (≥ 1).
        version: Version,
    },
}

impl Request {
    /// The op of this request.
    pub fn op(&self) -> Op {
        match self {
            Request::Sign { .. } => Op::Sign,
            Request::SignBatch { .. } => Op::SignBatch,
            Request::Verify { .. } => Op::Verify,
            Request::GetPublicKey { .. } => Op::GetPublicKey,
            Request::ListKeys => Op::ListKeys,
            Request::CreateKey { .. } => Op::CreateKey,
            Request::RotateKey { .. } => Op::RotateKey,
            Request::RetireKey { .. } => Op::RetireKey,
            Request::DestroyKey { .. } => Op::DestroyKey,
        }
    }
}

/// A response frame.
///
/// Invariants (checked by the encoder, guaranteed by the decoder): `body` is `Some` iff
/// `status == Status::Ok`; an OK response has an empty `message` and `retry_after_ms == 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseFrame {
    /// Outcome. A decoder maps a status code it does not know to [`Status::Internal`].
    pub status: Status,
    /// Suggested delay before retrying, in milliseconds; 0 = none. Meaningful for
    /// `Overloaded` and `Unavailable`.
    pub retry_after_ms: u32,
    /// Human-readable error detail (empty when OK; at most [`MAX_MESSAGE`] bytes on the wire).
    pub message: String,
    /// The op's result, present iff `status` is OK.
    pub body: Option<ResponseBody>,
}

impl ResponseFrame {
    /// An OK response carrying `body`.
    pub fn ok(body: ResponseBody) -> Self {
        ResponseFrame {
            status: Status::Ok,
            retry_after_ms: 0,
            message: String::new(),
            body: Some(body),
        }
    }

    /// An error response (no body). Its layout is the same for every op.
    pub fn error(status: Status, retry_after_ms: u32, message: impl Into<String>) -> Self {
        ResponseFrame {
            status,
            retry_after_ms,
            message: message.into(),
            body: None,
        }
    }
}

/// The result of a successful op. Which variant is valid depends on the op (see
/// [`ResponseBody::matches`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseBody {
    /// `Sign`: the signature (form 2 only in answer to `ACCEPT_BATCH_SIGNATURE`).
    Signed {
        /// The version that signed.
        version: Version,
        /// The signature, plain or batch (its encoding at most [`MAX_SIGNATURE`] bytes).
        signature: SignatureForm,
    },
    /// `SignBatch`: one item per payload, in request order.
    Batch(Vec<BatchItem>),
    /// `Verify`: whether the signature is valid.
    Verified {
        /// The version used to verify.
        version: Version,
        /// True if the signature verified.
        valid: bool,
    },
    /// `GetPublicKey`: the public key.
    PublicKey {
        /// Version exported.
        version: Version,
        /// Key type.
        key_type: KeyType,
        /// SubjectPublicKeyInfo, DER (at most 65535 bytes).
        spki_der: Bytes,
    },
    /// `ListKeys`: every key.
    Keys(Vec<KeyListing>),
    /// `CreateKey`, `RotateKey`, `RetireKey`: the version created or changed.
    KeyVersion(VersionListing),
    /// `DestroyKey`: done; no data.
    Destroyed,
}

impl ResponseBody {
    /// Whether this body is the result type of `op`.
    pub fn matches(&self, op: Op) -> bool {
        matches!(
            (op, self),
            (Op::Sign, ResponseBody::Signed { .. })
                | (Op::SignBatch, ResponseBody::Batch(_))
                | (Op::Verify, ResponseBody::Verified { .. })
                | (Op::GetPublicKey, ResponseBody::PublicKey { .. })
                | (Op::ListKeys, ResponseBody::Keys(_))
                | (
                    Op::CreateKey | Op::RotateKey | Op::RetireKey,
                    ResponseBody::KeyVersion(_)
                )
                | (Op::DestroyKey, ResponseBody::Destroyed)
        )
    }
}

/// The outcome of one payload of a `SignBatch`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchItem {
    /// Signed.
    Signed {
        /// The version that signed.
        version: Version,
        /// The signature, plain or batch (its encoding at most [`MAX_SIGNATURE`] bytes).
        signature: SignatureForm,
    },
    /// This item failed; the others may have succeeded.
    Failed {
        /// Why (never `Ok`; unknown codes decode as `Internal`).
        status: Status,
        /// Suggested retry delay in milliseconds; 0 = none.
        retry_after_ms: u32,
        /// Error detail (at most [`MAX_MESSAGE`] bytes on the wire).
        message: String,
    },
}

/// One key in a `ListKeys` result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyListing {
    /// Name.
    pub name: KeyName,
    /// Type.
    pub key_type: KeyType,
    /// The version that signs, if any (0 on the wire = none).
    pub signing_version: Option<Version>,
    /// All versions (at most 65535).
    pub versions: Vec<VersionListing>,
}

/// One key version: its number, state and placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionListing {
    /// Version number (≥ 1).
    pub version: Version,
    /// Lifecycle state.
    pub state: KeyState,
    /// Partitions holding it (at most 255 non-empty names).
    pub partitions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_codes() {
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i);
            assert_eq!(Op::from_code(op.code()), Some(op));
            assert_eq!(op.is_admin(), op.code() >= 0x10);
        }
        assert_eq!(Op::from_code(0), None);
        assert_eq!(Op::from_code(0x06), None);
        assert_eq!(Op::from_code(0x14), None);
        assert_eq!(Op::SignBatch.as_str(), "sign_batch");
        assert_eq!(Op::GetPublicKey.to_string(), "get_public_key");
    }

    #[test]
    fn limits_agree_with_keys() {
        assert_eq!(MAX_PAYLOAD, crate::keys::MAX_MESSAGE_LEN);
        assert!(crate::keys::MAX_KEY_NAME_LEN <= u8::MAX as usize);
        assert_eq!(frame_len(&[0, 0x10, 0, 0]), MAX_FRAME);
    }

    #[test]
    fn bodies_match_ops() {
        let kv = ResponseBody::KeyVersion(VersionListing {
            version: 1,
            state: KeyState::Active,
            partitions: vec![],
        });
        assert!(kv.matches(Op::CreateKey) && kv.matches(Op::RetireKey));
        assert!(!kv.matches(Op::DestroyKey));
        assert!(ResponseBody::Destroyed.matches(Op::DestroyKey));
        assert!(!ResponseBody::Keys(vec![]).matches(Op::Sign));
    }
}
