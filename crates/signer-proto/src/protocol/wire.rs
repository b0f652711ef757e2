//! Primitive readers and writers: big-endian integers, length-prefixed strings and byte strings,
//! counts, and the shared field types (key names, versions, codes).
//!
//! The [`Reader`] checks every length against its limit and against the bytes that remain before
//! it hands out a slice, and every count against the minimum size of the items it announces
//! before the caller allocates a `Vec` for them. The [`Writer`] checks every limit and the frame
//! size, and leaves the output buffer untouched when encoding fails.

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, DecodeErrorKind, EncodeError};
use super::{
    frame_len, MAX_FRAME, MAX_MESSAGE, MAX_SIGNATURE, SIGNATURE_FORM_MERKLE, SIGNATURE_FORM_PLAIN,
};
use crate::keys::{KeyName, KeyState, KeyType, Scheme, Version};
use crate::merkle::{BatchSignature, SignatureForm};

/// Width of a length prefix or count.
#[derive(Clone, Copy, Debug)]
pub(super) enum Width {
    U8,
    U16,
    U32,
}

impl Width {
    fn size(self) -> usize {
        match self {
            Width::U8 => 1,
            Width::U16 => 2,
            Width::U32 => 4,
        }
    }

    fn max(self) -> usize {
        match self {
            Width::U8 => u8::MAX as usize,
            Width::U16 => u16::MAX as usize,
            Width::U32 => u32::MAX as usize,
        }
    }
}

/// A cursor over one whole frame (length prefix included, so offsets match the frame).
#[derive(Debug)]
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Checks the length prefix (≤ `MAX_FRAME`, equal to the bytes after it) and positions the
    /// cursor on the first body byte.
    pub(super) fn frame(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let Some(prefix) = frame.first_chunk::<4>() else {
            let kind = DecodeErrorKind::Truncated {
                needed: 4,
                remaining: frame.len(),
            };
            return Err(DecodeError::new(kind, "length", 0));
        };
        let declared = frame_len(prefix);
        if declared > MAX_FRAME {
            let kind = DecodeErrorKind::TooLarge {
                len: declared,
                max: MAX_FRAME,
            };
            return Err(DecodeError::new(kind, "length", 0));
        }
        let actual = frame.len() - 4;
        if declared != actual {
            let kind = DecodeErrorKind::BadLength { declared, actual };
            return Err(DecodeError::new(kind, "length", 0));
        }
        Ok(Reader { buf: frame, pos: 4 })
    }

    /// Current offset from the start of the frame.
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// An error of `kind` for `field` at `offset`.
    pub(super) fn error(kind: DecodeErrorKind, field: &'static str, offset: usize) -> DecodeError {
        DecodeError::new(kind, field, offset)
    }

    /// The next `n` bytes.
    pub(super) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let remaining = self.remaining();
        if n > remaining {
            let kind = DecodeErrorKind::Truncated {
                needed: n,
                remaining,
            };
            return Err(DecodeError::new(kind, field, self.pos));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn uint(&mut self, width: Width, field: &'static str) -> Result<usize, DecodeError> {
        Ok(match width {
            Width::U8 => self.u8(field)? as usize,
            Width::U16 => self.u16(field)? as usize,
            Width::U32 => self.u32(field)? as usize,
        })
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub(super) fn bytes(
        &mut self,
        width: Width,
        field: &'static str,
        max: usize,
    ) -> Result<&'a [u8], DecodeError> {
        let start = self.pos;
        let len = self.uint(width, field)?;
        if len > max {
            let kind = DecodeErrorKind::TooLarge { len, max };
            return Err(DecodeError::new(kind, field, start));
        }
        // Every error about a length-prefixed field names the offset of its length prefix
        // (docs/PROTOCOL.md §8), also when the data it announces is missing.
        self.take(len, field)
            .map_err(|e| DecodeError::new(e.kind(), field, start))
    }

    /// A length-prefixed UTF-8 string of at most `max` bytes.
    pub(super) fn str(
        &mut self,
        width: Width,
        field: &'static str,
        max: usize,
    ) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let raw = self.bytes(width, field, max)?;
        std::str::from_utf8(raw)
            .map_err(|_| DecodeError::new(DecodeErrorKind::InvalidUtf8, field, start))
    }

    /// A count of items, each at least `item_min` bytes: checks `min..=max`, then that the
    /// announced items can fit in what remains (so the caller may allocate `count` slots).
    pub(super) fn count(
        &mut self,
        width: Width,
        field: &'static str,
        min: usize,
        max: usize,
        item_min: usize,
    ) -> Result<usize, DecodeError> {
        let start = self.pos;
        let n = self.uint(width, field)?;
        if n < min {
            let kind = DecodeErrorKind::InvalidValue {
                value: n as u32,
                expected: "at least one item",
            };
            return Err(DecodeError::new(kind, field, start));
        }
        if n > max {
            let kind = DecodeErrorKind::TooLarge { len: n, max };
            return Err(DecodeError::new(kind, field, start));
        }
        let needed = n * item_min;
        let remaining = self.remaining();
        if needed > remaining {
            let kind = DecodeErrorKind::Truncated { needed, remaining };
            return Err(DecodeError::new(kind, field, start));
        }
        Ok(n)
    }

    /// A `str8` key name, validated.
    pub(super) fn key(&mut self, field: &'static str) -> Result<KeyName, DecodeError> {
        let start = self.pos;
        let name = self.str(Width::U8, field, u8::MAX as usize)?;
        KeyName::new(name)
            .map_err(|_| DecodeError::new(DecodeErrorKind::InvalidKeyName, field, start))
    }

    /// A `str8` partition name (non-empty).
    pub(super) fn partition(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let start = self.pos;
        let name = self.str(Width::U8, field, u8::MAX as usize)?;
        if name.is_empty() {
            let kind = DecodeErrorKind::InvalidValue {
                value: 0,
                expected: "a non-empty partition name",
            };
            return Err(DecodeError::new(kind, field, start));
        }
        Ok(name.to_owned())
    }

    /// A `u32` version that must be ≥ 1.
    pub(super) fn version(&mut self, field: &'static str) -> Result<Version, DecodeError> {
        let start = self.pos;
        match self.u32(field)? {
            0 => {
                let kind = DecodeErrorKind::InvalidValue {
                    value: 0,
                    expected: "a version >= 1",
                };
                Err(DecodeError::new(kind, field, start))
            }
            v => Ok(v),
        }
    }

    /// A `u32` version where 0 means "none / default".
    pub(super) fn opt_version(
        &mut self,
        field: &'static str,
    ) -> Result<Option<Version>, DecodeError> {
        Ok(Some(self.u32(field)?).filter(|&v| v != 0))
    }

    pub(super) fn scheme(&mut self, field: &'static str) -> Result<Scheme, DecodeError> {
        let start = self.pos;
        let code = self.u8(field)?;
        Scheme::from_code(code)
            .ok_or_else(|| DecodeError::new(DecodeErrorKind::UnknownScheme(code), field, start))
    }

    pub(super) fn key_type(&mut self, field: &'static str) -> Result<KeyType, DecodeError> {
        let start = self.pos;
        let code = self.u8(field)?;
        KeyType::from_code(code)
            .ok_or_else(|| DecodeError::new(DecodeErrorKind::UnknownKeyType(code), field, start))
    }

    pub(super) fn key_state(&mut self, field: &'static str) -> Result<KeyState, DecodeError> {
        let start = self.pos;
        let code = self.u8(field)?;
        KeyState::from_code(code)
            .ok_or_else(|| DecodeError::new(DecodeErrorKind::UnknownKeyState(code), field, start))
    }

    /// A `signature_form` u8 and a `signature` bytes16 (≤ `MAX_SIGNATURE`): form 1 carries a
    /// plain signature, form 2 a batch signature encoding, decoded strictly.
    pub(super) fn signature(&mut self) -> Result<SignatureForm, DecodeError> {
        let start = self.pos;
        let form = self.u8("signature_form")?;
        if form != SIGNATURE_FORM_PLAIN && form != SIGNATURE_FORM_MERKLE {
            let kind = DecodeErrorKind::UnsupportedSignatureForm(form);
            return Err(DecodeError::new(kind, "signature_form", start));
        }
        let data_at = self.pos;
        let raw = self.bytes(Width::U16, "signature", MAX_SIGNATURE)?;
        if form == SIGNATURE_FORM_PLAIN {
            return Ok(SignatureForm::Plain(bytes::Bytes::copy_from_slice(raw)));
        }
        BatchSignature::decode(raw)
            .map(SignatureForm::Batch)
            .map_err(|e| {
                let kind = DecodeErrorKind::InvalidBatchSignature(e);
                DecodeError::new(kind, "signature", data_at)
            })
    }

    /// Succeeds iff every byte was consumed; `after` names what the extra bytes would follow.
    pub(super) fn finish(self, after: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::new(
                DecodeErrorKind::TrailingBytes(n),
                after,
                self.pos,
            )),
        }
    }
}

/// Appends one frame to a buffer: a length placeholder, then fields; see [`encode_frame`].
#[derive(Debug)]
pub(super) struct Writer<'a> {
    out: &'a mut BytesMut,
    start: usize,
}

/// Writes one frame into `out` with `body`, then fills in the length prefix. On error, `out` is
/// restored to its previous length.
pub(super) fn encode_frame(
    out: &mut BytesMut,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.put_u32(0);
    let mut w = Writer { out, start };
    let result = body(&mut w).and_then(|()| w.check_room(0));
    match result {
        Ok(()) => {
            let len = (out.len() - start - 4) as u32; // ≤ MAX_FRAME, checked above
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

impl Writer<'_> {
    /// Fails if `extra` more bytes would push the body past `MAX_FRAME`.
    fn check_room(&self, extra: usize) -> Result<(), EncodeError> {
        let body = self.out.len() - self.start - 4;
        if body + extra > MAX_FRAME {
            return Err(EncodeError::FrameTooLarge { max: MAX_FRAME });
        }
        Ok(())
    }

    pub(super) fn u8(&mut self, v: u8) {
        self.out.put_u8(v);
    }

    pub(super) fn u16(&mut self, v: u16) {
        self.out.put_u16(v);
    }

    pub(super) fn u32(&mut self, v: u32) {
        self.out.put_u32(v);
    }

    fn uint(&mut self, width: Width, v: usize) {
        // Callers check `v <= width.max()` first.
        match width {
            Width::U8 => self.u8(v as u8),
            Width::U16 => self.u16(v as u16),
            Width::U32 => self.u32(v as u32),
        }
    }

    /// A length-prefixed byte string of at most `max` bytes (and at most what `width` can say).
    pub(super) fn bytes(
        &mut self,
        width: Width,
        field: &'static str,
        data: &[u8],
        max: usize,
    ) -> Result<(), EncodeError> {
        let max = max.min(width.max());
        if data.len() > max {
            return Err(EncodeError::TooLarge {
                field,
                len: data.len(),
                max,
            });
        }
        self.check_room(width.size() + data.len())?;
        self.uint(width, data.len());
        self.out.put_slice(data);
        Ok(())
    }

    /// A count of `n` items, `min..=max` (and at most what `width` can say).
    pub(super) fn count(
        &mut self,
        width: Width,
        field: &'static str,
        n: usize,
        min: usize,
        max: usize,
    ) -> Result<(), EncodeError> {
        if n < min {
            return Err(EncodeError::InvalidValue {
                field,
                reason: "needs at least one item",
            });
        }
        let max = max.min(width.max());
        if n > max {
            return Err(EncodeError::TooLarge { field, len: n, max });
        }
        self.uint(width, n);
        Ok(())
    }

    /// A status message: `str16`, truncated to `MAX_MESSAGE` bytes on a character boundary.
    pub(super) fn message(&mut self, field: &'static str, msg: &str) -> Result<(), EncodeError> {
        self.bytes(
            Width::U16,
            field,
            truncate_message(msg).as_bytes(),
            MAX_MESSAGE,
        )
    }

    /// A `signature_form` u8 and a `signature` bytes16 (form 2: the batch signature encoding).
    pub(super) fn signature(&mut self, signature: &SignatureForm) -> Result<(), EncodeError> {
        let field = "signature";
        match signature {
            SignatureForm::Plain(sig) => {
                self.u8(SIGNATURE_FORM_PLAIN);
                self.bytes(Width::U16, field, sig, MAX_SIGNATURE)
            }
            SignatureForm::Batch(sig) => {
                let encoded = sig
                    .encode()
                    .map_err(|source| EncodeError::BatchSignature { field, source })?;
                self.u8(SIGNATURE_FORM_MERKLE);
                self.bytes(Width::U16, field, &encoded, MAX_SIGNATURE)
            }
        }
    }

    /// A `str8` key name.
    pub(super) fn key(&mut self, field: &'static str, key: &KeyName) -> Result<(), EncodeError> {
        self.bytes(Width::U8, field, key.as_str().as_bytes(), u8::MAX as usize)
    }

    /// A `str8` partition name (non-empty).
    pub(super) fn partition(&mut self, field: &'static str, name: &str) -> Result<(), EncodeError> {
        if name.is_empty() {
            return Err(EncodeError::InvalidValue {
                field,
                reason: "partition names are non-empty",
            });
        }
        self.bytes(Width::U8, field, name.as_bytes(), u8::MAX as usize)
    }

    /// A version that must be ≥ 1.
    pub(super) fn version(&mut self, field: &'static str, v: Version) -> Result<(), EncodeError> {
        if v == 0 {
            return Err(EncodeError::InvalidValue {
                field,
                reason: "versions start at 1",
            });
        }
        self.u32(v);
        Ok(())
    }

    /// An optional version: `None` is written as 0; `Some(0)` is refused (it would read back as
    /// `None`).
    pub(super) fn opt_version(
        &mut self,
        field: &'static str,
        v: Option<Version>,
    ) -> Result<(), EncodeError> {
        match v {
            None => {
                self.u32(0);
                Ok(())
            }
            Some(v) => self.version(field, v),
        }
    }
}

/// `msg` cut to at most `MAX_MESSAGE` bytes, on a character boundary.
pub(super) fn truncate_message(msg: &str) -> &str {
    if msg.len() <= MAX_MESSAGE {
        return msg;
    }
    let mut end = MAX_MESSAGE;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn reads_primitives_and_reports_offsets() {
        let frame = framed(&[7, 0x01, 0x02, 0, 0, 0, 9, 2, b'h', b'i', 0, 3, 0xff, 0xfe]);
        let mut r = Reader::frame(&frame).unwrap();
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u16("b").unwrap(), 0x0102);
        assert_eq!(r.u32("c").unwrap(), 9);
        assert_eq!(r.str(Width::U8, "d", 10).unwrap(), "hi");
        let e = r.str(Width::U16, "e", 10).unwrap_err();
        assert_eq!(e.offset(), 14); // the length prefix of the field
        assert_eq!(
            e.kind(),
            DecodeErrorKind::Truncated {
                needed: 3,
                remaining: 2
            }
        );
    }

    #[test]
    fn lengths_over_limit_are_too_large_before_truncated() {
        let frame = framed(&[0, 200, 1, 2]);
        let mut r = Reader::frame(&frame).unwrap();
        let e = r.bytes(Width::U16, "sig", 100).unwrap_err();
        assert_eq!(e.kind(), DecodeErrorKind::TooLarge { len: 200, max: 100 });
        assert_eq!((e.field(), e.offset()), ("sig", 4));
    }

    #[test]
    fn counts_are_checked_against_remaining_bytes() {
        let frame = framed(&[0xff, 0xff, 1, 2, 3]);
        let mut r = Reader::frame(&frame).unwrap();
        let e = r.count(Width::U16, "n", 0, 65535, 4).unwrap_err();
        assert_eq!(
            e.kind(),
            DecodeErrorKind::Truncated {
                needed: 65535 * 4,
                remaining: 3
            }
        );
    }

    #[test]
    fn frame_prefix_checks() {
        let e = Reader::frame(&[0, 0, 1]).unwrap_err();
        assert!(matches!(e.kind(), DecodeErrorKind::Truncated { .. }));
        let e = Reader::frame(&[0, 0, 0, 2, 1]).unwrap_err();
        assert_eq!(
            e.kind(),
            DecodeErrorKind::BadLength {
                declared: 2,
                actual: 1
            }
        );
        let e = Reader::frame(&[0xff, 0, 0, 0]).unwrap_err();
        assert!(matches!(e.kind(), DecodeErrorKind::TooLarge { .. }));
    }

    #[test]
    fn writer_restores_buffer_on_error() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let err = encode_frame(&mut out, |w| {
            w.u32(5);
            w.bytes(Width::U8, "x", &[0; 300], 1000)
        })
        .unwrap_err();
        assert_eq!(
            err,
            EncodeError::TooLarge {
                field: "x",
                len: 300,
                max: 255
            }
        );
        assert_eq!(&out[..], b"keep");
        let err = encode_frame(&mut out, |w| {
            w.bytes(Width::U32, "a", &vec![0; MAX_FRAME - 4], usize::MAX)?;
            w.u8(1);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(err, EncodeError::FrameTooLarge { max: MAX_FRAME });
        assert_eq!(&out[..], b"keep");
        encode_frame(&mut out, |w| w.bytes(Width::U16, "b", b"ab", 2)).unwrap();
        assert_eq!(&out[..], b"keep\0\0\0\x04\0\x02ab");
    }

    #[test]
    fn messages_truncate_on_char_boundary() {
        let short = "x".repeat(MAX_MESSAGE);
        assert_eq!(truncate_message(&short), short);
        let long = format!("{}é", "x".repeat(MAX_MESSAGE - 1)); // é is 2 bytes, straddles the end
        assert_eq!(truncate_message(&long), "x".repeat(MAX_MESSAGE - 1));
        let wide = "€".repeat(MAX_MESSAGE); // 3 bytes each
        let cut = truncate_message(&wide);
        assert!(cut.len() <= MAX_MESSAGE && cut.len() > MAX_MESSAGE - 3);
        assert!(cut.chars().all(|c| c == '€'));
    }
}
