//! Codec errors: [`DecodeError`] for bytes that are not a valid frame, [`EncodeError`] for values
//! that cannot be encoded (a field over its limit: a caller bug or unchecked input).

use std::fmt;

use super::Op;

/// Why a frame could not be decoded, and where: the field and the byte offset from the start of
/// the frame (the length prefix is bytes 0-3).
///
/// A server answers a request that fails to decode with `INVALID_ARGUMENT` and this error's
/// text as the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    field: &'static str,
    offset: usize,
}

/// The kind of a [`DecodeError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The field needs more bytes than remain in the frame.
    Truncated {
        /// Bytes the field (or the items a count announces, at their minimum size) needs.
        needed: usize,
        /// Bytes left in the frame at that point.
        remaining: usize,
    },
    /// A length, count or frame size is over its limit.
    TooLarge {
        /// The value found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes are left after the last field.
    TrailingBytes(usize),
    /// The length prefix disagrees with the number of bytes after it.
    BadLength {
        /// Body length the prefix announces.
        declared: usize,
        /// Body bytes actually present.
        actual: usize,
    },
    /// The version byte is not [`super::VERSION`].
    UnsupportedVersion(u8),
    /// The op byte names no known op.
    UnknownOp(u8),
    /// The scheme byte names no known scheme.
    UnknownScheme(u8),
    /// The key-type byte names no known key type.
    UnknownKeyType(u8),
    /// The key-state byte names no known state.
    UnknownKeyState(u8),
    /// A signature form other than 1 (plain) or 2 (Merkle batch).
    UnsupportedSignatureForm(u8),
    /// A form-2 signature whose bytes are not a valid batch signature encoding (the error's
    /// offset is the signature's length prefix, like every length-prefixed field's; the inner
    /// error's position counts from the first byte after that prefix).
    InvalidBatchSignature(crate::merkle::EncodingError),
    /// Flag bits this version does not define are set (the value holds just those bits).
    BadFlags(u16),
    /// A key name is not a valid [`crate::keys::KeyName`].
    InvalidKeyName,
    /// A string is not valid UTF-8.
    InvalidUtf8,
    /// A field holds a value outside its allowed set.
    InvalidValue {
        /// The value found (a length, for string fields).
        value: u32,
        /// What was allowed.
        expected: &'static str,
    },
}

impl DecodeError {
    pub(super) fn new(kind: DecodeErrorKind, field: &'static str, offset: usize) -> Self {
        DecodeError {
            kind,
            field,
            offset,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }

    /// The field being decoded (for `TrailingBytes`: what the extra bytes follow).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Byte offset of the field from the start of the frame (including the 4-byte prefix).
    pub fn offset(&self) -> usize {
        self.offset
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (field, at) = (self.field, self.offset);
        match self.kind {
            DecodeErrorKind::Truncated { needed, remaining } => write!(
                f,
                "truncated frame: `{field}` at byte {at} needs {needed} bytes, {remaining} remain"
            ),
            DecodeErrorKind::TooLarge { len, max } => {
                write!(
                    f,
                    "`{field}` at byte {at} is too large: {len} > limit {max}"
                )
            }
            DecodeErrorKind::TrailingBytes(n) => {
                write!(
                    f,
                    "{n} unexpected trailing bytes at byte {at}, after {field}"
                )
            }
            DecodeErrorKind::BadLength { declared, actual } => write!(
                f,
                "length prefix announces {declared} bytes but {actual} follow it"
            ),
            DecodeErrorKind::UnsupportedVersion(v) => write!(
                f,
                "unsupported protocol version {v} at byte {at} (this peer speaks version {})",
                super::VERSION
            ),
            DecodeErrorKind::UnknownOp(op) => write!(f, "unknown op 0x{op:02x} at byte {at}"),
            DecodeErrorKind::UnknownScheme(c) => {
                write!(f, "unknown scheme code {c} in `{field}` at byte {at}")
            }
            DecodeErrorKind::UnknownKeyType(c) => {
                write!(f, "unknown key type code {c} in `{field}` at byte {at}")
            }
            DecodeErrorKind::UnknownKeyState(c) => {
                write!(f, "unknown key state code {c} in `{field}` at byte {at}")
            }
            DecodeErrorKind::UnsupportedSignatureForm(form) => write!(
                f,
                "unsupported signature form {form} in `{field}` at byte {at} \
                 (1 = plain, 2 = Merkle batch)"
            ),
            DecodeErrorKind::InvalidBatchSignature(inner) => write!(
                f,
                "invalid batch signature in `{field}` at byte {at}: {inner}"
            ),
            DecodeErrorKind::BadFlags(bits) => {
                write!(
                    f,
                    "unknown flag bits 0x{bits:04x} in `{field}` at byte {at}"
                )
            }
            DecodeErrorKind::InvalidKeyName => write!(
                f,
                "invalid key name in `{field}` at byte {at}: use 1-{} characters of \
                 [A-Za-z0-9._-], starting with a letter or digit",
                crate::keys::MAX_KEY_NAME_LEN
            ),
            DecodeErrorKind::InvalidUtf8 => write!(f, "`{field}` at byte {at} is not UTF-8"),
            DecodeErrorKind::InvalidValue { value, expected } => write!(
                f,
                "invalid value {value} in `{field}` at byte {at}: expected {expected}"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a frame could not be encoded. These are caller bugs or unchecked input; nothing is
/// written to the output buffer when encoding fails.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field (length or count) is over its limit.
    #[error("`{field}` is {len}; the limit is {max}")]
    TooLarge {
        /// Field name.
        field: &'static str,
        /// Its length or count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The whole frame would exceed [`super::MAX_FRAME`].
    #[error("the frame body would exceed MAX_FRAME ({max} bytes)")]
    FrameTooLarge {
        /// The limit.
        max: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("`{field}`: {reason}")]
    InvalidValue {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// Request flag bits that this version does not define.
    #[error("unknown request flag bits 0x{0:04x}")]
    BadFlags(u16),
    /// A batch signature breaks its encoding's rules.
    #[error("`{field}`: {source}")]
    BatchSignature {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        source: crate::merkle::EncodingError,
    },
    /// The response body is not the result type of the op.
    #[error("the response body does not match op {0}")]
    BodyMismatch(Op),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_field_and_offset() {
        let e = DecodeError::new(
            DecodeErrorKind::Truncated {
                needed: 32,
                remaining: 5,
            },
            "payload",
            30,
        );
        assert_eq!(
            e.to_string(),
            "truncated frame: `payload` at byte 30 needs 32 bytes, 5 remain"
        );
        assert_eq!((e.field(), e.offset()), ("payload", 30));
        let e = DecodeError::new(DecodeErrorKind::UnknownOp(0x42), "op", 5);
        assert_eq!(e.to_string(), "unknown op 0x42 at byte 5");
        let e = EncodeError::TooLarge {
            field: "payload",
            len: 70_000,
            max: 65_536,
        };
        assert_eq!(e.to_string(), "`payload` is 70000; the limit is 65536");
    }
}
