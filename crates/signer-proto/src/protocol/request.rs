//! Request frames: encoding (client) and decoding (server).

use bytes::{Bytes, BytesMut};

use super::error::{DecodeError, DecodeErrorKind, EncodeError};
use super::wire::{encode_frame, Reader, Width, Writer};
use super::{
    request_flags_for, Op, Request, RequestFrame, MAX_BATCH, MAX_PARTITIONS, MAX_PAYLOAD, VERSION,
};

/// Appends `frame` to `out` as one length-prefixed request frame.
///
/// Fails, leaving `out` unchanged, when a field is over its limit (payload, signature, batch
/// count, placement), a version is `Some(0)`, unknown flag bits are set, or the frame would
/// exceed [`super::MAX_FRAME`].
pub fn encode_request(frame: &RequestFrame, out: &mut BytesMut) -> Result<(), EncodeError> {
    let unknown = frame.flags & !request_flags_for(frame.request.op());
    if unknown != 0 {
        return Err(EncodeError::BadFlags(unknown));
    }
    encode_frame(out, |w| {
        w.u8(VERSION);
        w.u8(frame.request.op().code());
        w.u16(frame.flags);
        w.u32(frame.deadline_ms);
        encode_op(&frame.request, w)
    })
}

/// Decodes one whole request frame (including its 4-byte length prefix).
///
/// Strict: the prefix must equal the bytes after it, every field must be within its limit, codes
/// and flags must be known, key names valid, and nothing may follow the op body.
pub fn decode_request(frame: &[u8]) -> Result<RequestFrame, DecodeError> {
    let mut r = Reader::frame(frame)?;
    let at = r.pos();
    let version = r.u8("version")?;
    if version != VERSION {
        let kind = DecodeErrorKind::UnsupportedVersion(version);
        return Err(Reader::error(kind, "version", at));
    }
    let at = r.pos();
    let code = r.u8("op")?;
    let op = Op::from_code(code)
        .ok_or_else(|| Reader::error(DecodeErrorKind::UnknownOp(code), "op", at))?;
    let at = r.pos();
    let flags = r.u16("flags")?;
    let unknown = flags & !request_flags_for(op);
    if unknown != 0 {
        return Err(Reader::error(
            DecodeErrorKind::BadFlags(unknown),
            "flags",
            at,
        ));
    }
    let deadline_ms = r.u32("deadline_ms")?;
    let request = decode_op(op, &mut r)?;
    r.finish("the op body")?;
    Ok(RequestFrame {
        flags,
        deadline_ms,
        request,
    })
}

fn encode_op(request: &Request, w: &mut Writer<'_>) -> Result<(), EncodeError> {
    match request {
        Request::Sign {
            key,
            version,
            scheme,
            payload,
        } => {
            w.key("key", key)?;
            w.opt_version("version", *version)?;
            w.u8(scheme.code());
            w.bytes(Width::U32, "payload", payload, MAX_PAYLOAD)
        }
        Request::SignBatch {
            key,
            version,
            scheme,
            payloads,
        } => {
            w.key("key", key)?;
            w.opt_version("version", *version)?;
            w.u8(scheme.code());
            w.count(Width::U16, "count", payloads.len(), 1, MAX_BATCH)?;
            payloads
                .iter()
                .try_for_each(|p| w.bytes(Width::U32, "payload", p, MAX_PAYLOAD))
        }
        Request::Verify {
            key,
            version,
            scheme,
            payload,
            signature,
        } => {
            w.key("key", key)?;
            w.opt_version("version", *version)?;
            w.u8(scheme.code());
            w.bytes(Width::U32, "payload", payload, MAX_PAYLOAD)?;
            w.signature(signature)
        }
        Request::GetPublicKey { key, version } => {
            w.key("key", key)?;
            w.opt_version("version", *version)
        }
        Request::ListKeys => Ok(()),
        Request::CreateKey {
            key,
            key_type,
            placement,
        } => {
            w.key("key", key)?;
            w.u8(key_type.code());
            w.count(
                Width::U8,
                "partition count",
                placement.len(),
                0,
                MAX_PARTITIONS,
            )?;
            placement
                .iter()
                .try_for_each(|p| w.partition("partition", p))
        }
        Request::RotateKey { key } => w.key("key", key),
        Request::RetireKey { key, version } | Request::DestroyKey { key, version } => {
            w.key("key", key)?;
            w.version("version", *version)
        }
    }
}

fn decode_op(op: Op, r: &mut Reader<'_>) -> Result<Request, DecodeError> {
    Ok(match op {
        Op::Sign => Request::Sign {
            key: r.key("key")?,
            version: r.opt_version("version")?,
            scheme: r.scheme("scheme")?,
            payload: payload(r)?,
        },
        Op::SignBatch => {
            let key = r.key("key")?;
            let version = r.opt_version("version")?;
            let scheme = r.scheme("scheme")?;
            // Each payload is at least its 4-byte length.
            let n = r.count(Width::U16, "count", 1, MAX_BATCH, 4)?;
            let mut payloads = Vec::with_capacity(n);
            for _ in 0..n {
                payloads.push(payload(r)?);
            }
            Request::SignBatch {
                key,
                version,
                scheme,
                payloads,
            }
        }
        Op::Verify => {
            let key = r.key("key")?;
            let version = r.opt_version("version")?;
            let scheme = r.scheme("scheme")?;
            let payload = payload(r)?;
            let signature = r.signature()?;
            Request::Verify {
                key,
                version,
                scheme,
                payload,
                signature,
            }
        }
        Op::GetPublicKey => Request::GetPublicKey {
            key: r.key("key")?,
            version: r.opt_version("version")?,
        },
        Op::ListKeys => Request::ListKeys,
        Op::CreateKey => {
            let key = r.key("key")?;
            let key_type = r.key_type("key_type")?;
            // Each name is at least 2 bytes (length + one byte).
            let n = r.count(Width::U8, "partition count", 0, MAX_PARTITIONS, 2)?;
            let mut placement = Vec::with_capacity(n);
            for _ in 0..n {
                placement.push(r.partition("partition")?);
            }
            Request::CreateKey {
                key,
                key_type,
                placement,
            }
        }
        Op::RotateKey => Request::RotateKey { key: r.key("key")? },
        Op::RetireKey => Request::RetireKey {
            key: r.key("key")?,
            version: r.version("version")?,
        },
        Op::DestroyKey => Request::DestroyKey {
            key: r.key("key")?,
            version: r.version("version")?,
        },
    })
}

fn payload(r: &mut Reader<'_>) -> Result<Bytes, DecodeError> {
    let raw = r.bytes(Width::U32, "payload", MAX_PAYLOAD)?;
    Ok(Bytes::copy_from_slice(raw))
}

#[cfg(test)]
mod tests;
