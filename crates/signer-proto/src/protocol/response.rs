//! Response frames: encoding (server) and decoding (client).
//!
//! The result body's layout depends on the request's op, which the response does not repeat: the
//! client knows it (one request per stream) and passes it to [`decode_response`].

use bytes::{Bytes, BytesMut};

use super::error::{DecodeError, DecodeErrorKind, EncodeError};
use super::wire::{encode_frame, Reader, Width, Writer};
use super::{
    BatchItem, KeyListing, Op, ResponseBody, ResponseFrame, SignatureForm, VersionListing,
    MAX_BATCH, MAX_MESSAGE, VERSION,
};
use crate::Status;

/// Appends `frame`, the response to an `op` request, to `out` as one length-prefixed frame.
///
/// Messages longer than [`MAX_MESSAGE`] bytes are truncated on a character boundary. Fails,
/// leaving `out` unchanged, when the body is missing for OK, present for an error, or not the
/// result type of `op`; when an OK frame has a message or retry delay; when a field is over its
/// limit; or when the frame would exceed [`super::MAX_FRAME`]. An error frame (no body) encodes
/// the same for every op.
pub fn encode_response(
    op: Op,
    frame: &ResponseFrame,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    match (&frame.body, frame.status == Status::Ok) {
        (Some(body), true) if !body.matches(op) => return Err(EncodeError::BodyMismatch(op)),
        (Some(_), true) | (None, false) => {}
        (None, true) | (Some(_), false) => {
            return Err(EncodeError::InvalidValue {
                field: "body",
                reason: "a body must be present iff the status is OK",
            })
        }
    }
    if frame.status == Status::Ok && (!frame.message.is_empty() || frame.retry_after_ms != 0) {
        return Err(EncodeError::InvalidValue {
            field: "message",
            reason: "an OK response has an empty message and no retry delay",
        });
    }
    encode_frame(out, |w| {
        w.u8(VERSION);
        w.u8(frame.status.code());
        w.u16(0);
        w.u32(frame.retry_after_ms);
        w.message("message", &frame.message)?;
        match &frame.body {
            Some(body) => encode_body(body, w),
            None => Ok(()),
        }
    })
}

/// Decodes one whole response frame (including its 4-byte length prefix) to a request of `op`.
///
/// An unknown status code decodes as [`Status::Internal`] (forward compatibility). A non-OK
/// response must end after its message; an OK response must carry exactly `op`'s result body.
pub fn decode_response(op: Op, frame: &[u8]) -> Result<ResponseFrame, DecodeError> {
    let mut r = Reader::frame(frame)?;
    let at = r.pos();
    let version = r.u8("version")?;
    if version != VERSION {
        let kind = DecodeErrorKind::UnsupportedVersion(version);
        return Err(Reader::error(kind, "version", at));
    }
    let status = status(r.u8("status")?);
    let at = r.pos();
    let flags = r.u16("flags")?;
    if flags != 0 {
        return Err(Reader::error(DecodeErrorKind::BadFlags(flags), "flags", at));
    }
    let at = r.pos();
    let retry_after_ms = r.u32("retry_after_ms")?;
    let message = message(&mut r, "message")?;
    if status != Status::Ok {
        r.finish("the message (a non-OK response has no result body)")?;
        return Ok(ResponseFrame {
            status,
            retry_after_ms,
            message,
            body: None,
        });
    }
    if retry_after_ms != 0 {
        let kind = DecodeErrorKind::InvalidValue {
            value: retry_after_ms,
            expected: "0 in an OK response",
        };
        return Err(Reader::error(kind, "retry_after_ms", at));
    }
    if !message.is_empty() {
        let kind = DecodeErrorKind::InvalidValue {
            value: message.len() as u32,
            expected: "an empty message in an OK response",
        };
        return Err(Reader::error(kind, "message", at + 4));
    }
    let body = decode_body(op, &mut r)?;
    r.finish("the result body")?;
    Ok(ResponseFrame::ok(body))
}

/// Unknown codes are errors of unknown kind: [`Status::Internal`].
fn status(code: u8) -> Status {
    Status::from_code(code).unwrap_or(Status::Internal)
}

fn message(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    Ok(r.str(Width::U16, field, MAX_MESSAGE)?.to_owned())
}

fn encode_body(body: &ResponseBody, w: &mut Writer<'_>) -> Result<(), EncodeError> {
    match body {
        ResponseBody::Signed { version, signature } => signed(w, *version, signature),
        ResponseBody::Batch(items) => {
            w.count(Width::U16, "count", items.len(), 1, MAX_BATCH)?;
            items.iter().try_for_each(|item| match item {
                BatchItem::Signed { version, signature } => {
                    w.u8(Status::Ok.code());
                    signed(w, *version, signature)
                }
                BatchItem::Failed {
                    status,
                    retry_after_ms,
                    message,
                } => {
                    if *status == Status::Ok {
                        return Err(EncodeError::InvalidValue {
                            field: "item status",
                            reason: "a failed item cannot have status OK",
                        });
                    }
                    w.u8(status.code());
                    w.u32(*retry_after_ms);
                    w.message("item message", message)
                }
            })
        }
        ResponseBody::Verified { version, valid } => {
            w.version("version", *version)?;
            w.u8(u8::from(*valid));
            Ok(())
        }
        ResponseBody::PublicKey {
            version,
            key_type,
            spki_der,
        } => {
            w.version("version", *version)?;
            w.u8(key_type.code());
            w.bytes(Width::U16, "spki_der", spki_der, u16::MAX as usize)
        }
        ResponseBody::Keys(keys) => {
            w.count(Width::U16, "key count", keys.len(), 0, u16::MAX as usize)?;
            keys.iter().try_for_each(|k| {
                w.key("name", &k.name)?;
                w.u8(k.key_type.code());
                w.opt_version("signing_version", k.signing_version)?;
                let n = k.versions.len();
                w.count(Width::U16, "version count", n, 0, u16::MAX as usize)?;
                k.versions.iter().try_for_each(|v| version_listing(w, v))
            })
        }
        ResponseBody::KeyVersion(v) => version_listing(w, v),
        ResponseBody::Destroyed => Ok(()),
    }
}

fn signed(w: &mut Writer<'_>, version: u32, signature: &SignatureForm) -> Result<(), EncodeError> {
    w.version("version", version)?;
    w.signature(signature)
}

fn version_listing(w: &mut Writer<'_>, v: &VersionListing) -> Result<(), EncodeError> {
    w.version("version", v.version)?;
    w.u8(v.state.code());
    let n = v.partitions.len();
    w.count(Width::U8, "partition count", n, 0, u8::MAX as usize)?;
    v.partitions
        .iter()
        .try_for_each(|p| w.partition("partition", p))
}

fn decode_body(op: Op, r: &mut Reader<'_>) -> Result<ResponseBody, DecodeError> {
    Ok(match op {
        Op::Sign => {
            let (version, signature) = decode_signed(r)?;
            ResponseBody::Signed { version, signature }
        }
        Op::SignBatch => {
            // Smallest item: a failed one with an empty message (1 + 4 + 2 bytes).
            let n = r.count(Width::U16, "count", 1, MAX_BATCH, 7)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let code = r.u8("item status")?;
                items.push(if code == Status::Ok.code() {
                    let (version, signature) = decode_signed(r)?;
                    BatchItem::Signed { version, signature }
                } else {
                    BatchItem::Failed {
                        status: status(code),
                        retry_after_ms: r.u32("item retry_after_ms")?,
                        message: message(r, "item message")?,
                    }
                });
            }
            ResponseBody::Batch(items)
        }
        Op::Verify => {
            let version = r.version("version")?;
            let at = r.pos();
            let valid = match r.u8("valid")? {
                0 => false,
                1 => true,
                v => {
                    let kind = DecodeErrorKind::InvalidValue {
                        value: v.into(),
                        expected: "0 or 1",
                    };
                    return Err(Reader::error(kind, "valid", at));
                }
            };
            ResponseBody::Verified { version, valid }
        }
        Op::GetPublicKey => ResponseBody::PublicKey {
            version: r.version("version")?,
            key_type: r.key_type("key_type")?,
            spki_der: Bytes::copy_from_slice(r.bytes(Width::U16, "spki_der", u16::MAX as usize)?),
        },
        Op::ListKeys => {
            // Smallest key: name (1 + 1) + type 1 + signing_version 4 + version count 2.
            let n = r.count(Width::U16, "key count", 0, u16::MAX as usize, 9)?;
            let mut keys = Vec::with_capacity(n);
            for _ in 0..n {
                let name = r.key("name")?;
                let key_type = r.key_type("key_type")?;
                let signing_version = r.opt_version("signing_version")?;
                // Smallest version: 4 + 1 + 1.
                let nv = r.count(Width::U16, "version count", 0, u16::MAX as usize, 6)?;
                let mut versions = Vec::with_capacity(nv);
                for _ in 0..nv {
                    versions.push(decode_version_listing(r)?);
                }
                keys.push(KeyListing {
                    name,
                    key_type,
                    signing_version,
                    versions,
                });
            }
            ResponseBody::Keys(keys)
        }
        Op::CreateKey | Op::RotateKey | Op::RetireKey => {
            ResponseBody::KeyVersion(decode_version_listing(r)?)
        }
        Op::DestroyKey => ResponseBody::Destroyed,
    })
}

fn decode_signed(r: &mut Reader<'_>) -> Result<(u32, SignatureForm), DecodeError> {
    let version = r.version("version")?;
    Ok((version, r.signature()?))
}

fn decode_version_listing(r: &mut Reader<'_>) -> Result<VersionListing, DecodeError> {
    let version = r.version("version")?;
    let state = r.key_state("state")?;
    // Smallest name: 2 bytes.
    let n = r.count(Width::U8, "partition count", 0, u8::MAX as usize, 2)?;
    let mut partitions = Vec::with_capacity(n);
    for _ in 0..n {
        partitions.push(r.partition("partition")?);
    }
    Ok(VersionListing {
        version,
        state,
        partitions,
    })
}

#[cfg(test)]
mod tests;
