//! Tests of request frames: every malformed-input case, limits, round trips of samples.

#![allow(clippy::unwrap_used)]

use super::super::{ACCEPT_BATCH_SIGNATURE, MAX_FRAME, MAX_SIGNATURE, SIGNATURE_FORM_PLAIN};
use super::*;
use crate::keys::{KeyName, KeyType, Scheme};
use crate::merkle::BatchSignature;
use crate::protocol::SignatureForm;

fn key(name: &str) -> KeyName {
    KeyName::new(name).unwrap()
}

fn sign() -> RequestFrame {
    RequestFrame {
        flags: 0,
        deadline_ms: 5000,
        request: Request::Sign {
            key: key("payments"),
            version: None,
            scheme: Scheme::EcdsaSha256,
            payload: Bytes::from((0u8..32).collect::<Vec<_>>()),
        },
    }
}

/// One valid frame of every op.
fn samples() -> Vec<RequestFrame> {
    let k = key("k1");
    let reqs = vec![
        sign().request,
        Request::SignBatch {
            key: k.clone(),
            version: Some(3),
            scheme: Scheme::Ed25519,
            payloads: vec![
                Bytes::from_static(b"a"),
                Bytes::new(),
                Bytes::from_static(b"xyz"),
            ],
        },
        Request::Verify {
            key: k.clone(),
            version: Some(2),
            scheme: Scheme::RsaPssSha256,
            payload: Bytes::from(vec![7; 32]),
            signature: SignatureForm::Plain(Bytes::from(vec![9; 256])),
        },
        Request::GetPublicKey {
            key: k.clone(),
            version: None,
        },
        Request::ListKeys,
        Request::CreateKey {
            key: k.clone(),
            key_type: KeyType::Rsa3072,
            placement: vec!["hsm-a".into(), "hsm-b".into()],
        },
        Request::RotateKey { key: k.clone() },
        Request::RetireKey {
            key: k.clone(),
            version: 1,
        },
        Request::DestroyKey { key: k, version: 7 },
    ];
    reqs.into_iter()
        .map(|request| RequestFrame {
            flags: 0,
            deadline_ms: 0,
            request,
        })
        .collect()
}

fn enc(frame: &RequestFrame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_request(frame, &mut out).unwrap();
    out.to_vec()
}

/// Prefixes `body` with its correct length.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn kind(frame: &[u8]) -> DecodeErrorKind {
    decode_request(frame).unwrap_err().kind()
}

/// The body of the sample Sign frame with `f` applied, re-framed.
fn patched(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut body = enc(&sign())[4..].to_vec();
    f(&mut body);
    framed(&body)
}

#[test]
fn samples_round_trip() {
    for frame in samples() {
        let bytes = enc(&frame);
        assert_eq!(decode_request(&bytes).unwrap(), frame);
    }
    let mut frame = sign();
    frame.flags = super::super::ACCEPT_BATCH_SIGNATURE;
    assert_eq!(decode_request(&enc(&frame)).unwrap(), frame);
}

#[test]
fn empty_input_is_truncated() {
    let e = decode_request(&[]).unwrap_err();
    assert_eq!(
        e.kind(),
        DecodeErrorKind::Truncated {
            needed: 4,
            remaining: 0
        }
    );
    assert_eq!(kind(&[0, 0, 0, 0]), truncated_at(0));
}

fn truncated_at(remaining: usize) -> DecodeErrorKind {
    DecodeErrorKind::Truncated {
        needed: 1,
        remaining,
    }
}

#[test]
fn truncated_at_every_position_fails() {
    for frame in samples() {
        let bytes = enc(&frame);
        for cut in 0..bytes.len() {
            // As received (prefix now too large) ...
            let e = decode_request(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    DecodeErrorKind::Truncated { .. } | DecodeErrorKind::BadLength { .. }
                ),
                "{:?} cut at {cut}: {e}",
                frame.request.op()
            );
            // ... and with a prefix that agrees with the shortened body.
            if cut >= 4 {
                let e = decode_request(&framed(&bytes[4..cut])).unwrap_err();
                assert!(
                    matches!(e.kind(), DecodeErrorKind::Truncated { .. }),
                    "{:?} body cut at {cut}: {e}",
                    frame.request.op()
                );
            }
        }
    }
}

#[test]
fn length_prefix_must_match_data() {
    let mut bytes = enc(&sign());
    bytes[3] += 1; // announces one byte more than follows
    assert_eq!(
        kind(&bytes),
        DecodeErrorKind::BadLength {
            declared: 59,
            actual: 58
        }
    );
    bytes[3] -= 2; // one byte fewer
    assert_eq!(
        kind(&bytes),
        DecodeErrorKind::BadLength {
            declared: 57,
            actual: 58
        }
    );
}

#[test]
fn frames_over_max_frame_are_rejected() {
    let too_long = MAX_FRAME + 1;
    let prefix = (too_long as u32).to_be_bytes();
    let e = decode_request(&prefix).unwrap_err();
    assert_eq!(
        e.kind(),
        DecodeErrorKind::TooLarge {
            len: too_long,
            max: MAX_FRAME
        }
    );
    assert_eq!((e.field(), e.offset()), ("length", 0));
    let mut big = prefix.to_vec();
    big.resize(4 + too_long, 0);
    assert!(matches!(kind(&big), DecodeErrorKind::TooLarge { .. }));
    assert!(matches!(
        kind(&[0xff, 0xff, 0xff, 0xff]),
        DecodeErrorKind::TooLarge { .. }
    ));
}

#[test]
fn unknown_version() {
    let bytes = patched(|b| b[0] = 2);
    let e = decode_request(&bytes).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::UnsupportedVersion(2));
    assert_eq!(e.offset(), 4);
    assert_eq!(
        kind(&patched(|b| b[0] = 0)),
        DecodeErrorKind::UnsupportedVersion(0)
    );
}

#[test]
fn unknown_op() {
    for op in [0x00, 0x06, 0x0f, 0x14, 0xff] {
        let e = decode_request(&patched(|b| b[1] = op)).unwrap_err();
        assert_eq!(e.kind(), DecodeErrorKind::UnknownOp(op));
        assert_eq!(e.offset(), 5);
        assert!(e.to_string().contains(&format!("0x{op:02x}")), "{e}");
    }
}

#[test]
fn bad_flags() {
    let e = decode_request(&patched(|b| b[3] = 0x03)).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::BadFlags(0x0002));
    assert_eq!((e.field(), e.offset()), ("flags", 6));
    assert_eq!(
        kind(&patched(|b| b[2] = 0x80)),
        DecodeErrorKind::BadFlags(0x8000)
    );
    let mut frame = sign();
    frame.flags = 0x0100;
    let mut out = BytesMut::new();
    assert_eq!(
        encode_request(&frame, &mut out),
        Err(EncodeError::BadFlags(0x0100))
    );
    assert!(out.is_empty());
}

/// `COALESCED_CALLS` is a SignBatch flag: it round-trips there and is refused on every other op,
/// by the encoder and the decoder alike.
#[test]
fn coalesced_calls_flag_only_on_sign_batch() {
    use super::super::COALESCED_CALLS;
    let batch = RequestFrame {
        flags: COALESCED_CALLS | ACCEPT_BATCH_SIGNATURE,
        deadline_ms: 100,
        request: Request::SignBatch {
            key: key("payments"),
            version: None,
            scheme: Scheme::EcdsaSha256,
            payloads: vec![vec![1u8; 32].into(), vec![2u8; 32].into()],
        },
    };
    assert_eq!(decode_request(&enc(&batch)).unwrap(), batch);
    let mut frame = sign();
    frame.flags = COALESCED_CALLS;
    let mut out = BytesMut::new();
    assert_eq!(
        encode_request(&frame, &mut out),
        Err(EncodeError::BadFlags(COALESCED_CALLS))
    );
    let e = decode_request(&patched(|b| b[3] = 0x02)).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::BadFlags(COALESCED_CALLS));
    assert!(e.to_string().contains("unknown flag bits 0x0002"), "{e}");
}

// Sample Sign body layout: [0..8) header, [8] key len, [9..17) "payments",
// [17..21) version, [21] scheme, [22..26) payload len, [26..58) payload.

#[test]
fn unknown_scheme() {
    for code in [0, 11, 0xff] {
        let e = decode_request(&patched(|b| b[21] = code)).unwrap_err();
        assert_eq!(e.kind(), DecodeErrorKind::UnknownScheme(code));
        assert_eq!((e.field(), e.offset()), ("scheme", 25));
    }
}

#[test]
fn unknown_key_type() {
    let frame = &samples()[5];
    let mut body = enc(frame)[4..].to_vec();
    let at = 8 + 1 + 2; // header, key len, "k1"
    assert_eq!(body[at], KeyType::Rsa3072.code());
    for code in [0, 7, 0xff] {
        body[at] = code;
        let e = decode_request(&framed(&body)).unwrap_err();
        assert_eq!(e.kind(), DecodeErrorKind::UnknownKeyType(code));
        assert_eq!(e.offset(), 4 + at);
    }
}

#[test]
fn invalid_key_names() {
    // Replace "payments" with other 8-byte names.
    for bad in [&b"-ayments"[..], b"pay ents", b"pay/ents", b"payment\0"] {
        let bytes = patched(|b| b[9..17].copy_from_slice(bad));
        let e = decode_request(&bytes).unwrap_err();
        assert_eq!(e.kind(), DecodeErrorKind::InvalidKeyName, "{bad:?}");
        assert_eq!((e.field(), e.offset()), ("key", 12));
    }
    // Empty name.
    let bytes = patched(|b| {
        b.drain(9..17);
        b[8] = 0;
    });
    assert_eq!(kind(&bytes), DecodeErrorKind::InvalidKeyName);
    // 65 bytes: valid characters, too long.
    let bytes = patched(|b| {
        b.splice(9..17, std::iter::repeat_n(b'a', 65));
        b[8] = 65;
    });
    assert_eq!(kind(&bytes), DecodeErrorKind::InvalidKeyName);
}

#[test]
fn invalid_utf8() {
    let bytes = patched(|b| b[10] = 0xff);
    let e = decode_request(&bytes).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::InvalidUtf8);
    assert_eq!(e.field(), "key");
    // In a partition name.
    let mut body = enc(&samples()[5])[4..].to_vec();
    let last = body.len() - 1;
    body[last] = 0xc3; // a lone lead byte
    let e = decode_request(&framed(&body)).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (DecodeErrorKind::InvalidUtf8, "partition")
    );
}

fn batch_body(count: u16, items: usize) -> Vec<u8> {
    let mut body = vec![1, Op::SignBatch.code(), 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(b"\x02k1\0\0\0\0\x0a");
    body.extend_from_slice(&count.to_be_bytes());
    for _ in 0..items {
        body.extend_from_slice(&[0, 0, 0, 1, 0xaa]);
    }
    body
}

#[test]
fn batch_counts() {
    assert!(decode_request(&framed(&batch_body(2, 2))).is_ok());
    let e = decode_request(&framed(&batch_body(0, 0))).unwrap_err();
    assert!(matches!(
        e.kind(),
        DecodeErrorKind::InvalidValue { value: 0, .. }
    ));
    assert_eq!(e.field(), "count");
    let max = MAX_BATCH as u16;
    assert!(decode_request(&framed(&batch_body(max, MAX_BATCH))).is_ok());
    let e = decode_request(&framed(&batch_body(max + 1, MAX_BATCH + 1))).unwrap_err();
    assert_eq!(
        e.kind(),
        DecodeErrorKind::TooLarge {
            len: MAX_BATCH + 1,
            max: MAX_BATCH
        }
    );
    // A count the remaining bytes cannot hold is Truncated before anything is allocated.
    let e = decode_request(&framed(&batch_body(1000, 0))).unwrap_err();
    assert_eq!(
        e.kind(),
        DecodeErrorKind::Truncated {
            needed: 4000,
            remaining: 0
        }
    );
    let batch = |payloads: Vec<Bytes>| RequestFrame {
        flags: 0,
        deadline_ms: 0,
        request: Request::SignBatch {
            key: key("k"),
            version: None,
            scheme: Scheme::Ed25519,
            payloads,
        },
    };
    let mut out = BytesMut::new();
    assert!(matches!(
        encode_request(&batch(vec![]), &mut out),
        Err(EncodeError::InvalidValue { .. })
    ));
    assert!(matches!(
        encode_request(&batch(vec![Bytes::new(); MAX_BATCH + 1]), &mut out),
        Err(EncodeError::TooLarge { field: "count", .. })
    ));
    // Many large payloads: each within MAX_PAYLOAD, together over MAX_FRAME.
    assert_eq!(
        encode_request(
            &batch(vec![Bytes::from(vec![0; MAX_PAYLOAD]); 17]),
            &mut out
        ),
        Err(EncodeError::FrameTooLarge { max: MAX_FRAME })
    );
    assert!(out.is_empty());
}

#[test]
fn payload_limits() {
    let mut frame = sign();
    let Request::Sign { payload, .. } = &mut frame.request else {
        unreachable!()
    };
    *payload = Bytes::from(vec![1; MAX_PAYLOAD]);
    assert_eq!(decode_request(&enc(&frame)).unwrap(), frame);
    let Request::Sign { payload, .. } = &mut frame.request else {
        unreachable!()
    };
    *payload = Bytes::from(vec![1; MAX_PAYLOAD + 1]);
    let mut out = BytesMut::new();
    assert!(matches!(
        encode_request(&frame, &mut out),
        Err(EncodeError::TooLarge {
            field: "payload",
            ..
        })
    ));
    // Hand-built: payload length MAX_PAYLOAD + 1 with the bytes present.
    let bytes = patched(|b| {
        b.truncate(22);
        b.extend_from_slice(&((MAX_PAYLOAD + 1) as u32).to_be_bytes());
        b.resize(26 + MAX_PAYLOAD + 1, 0);
    });
    let e = decode_request(&bytes).unwrap_err();
    assert_eq!(
        e.kind(),
        DecodeErrorKind::TooLarge {
            len: MAX_PAYLOAD + 1,
            max: MAX_PAYLOAD
        }
    );
    assert_eq!((e.field(), e.offset()), ("payload", 26));
    // A huge declared length with few bytes is TooLarge, never an allocation.
    let bytes = patched(|b| b[22..26].copy_from_slice(&[0xff; 4]));
    assert!(matches!(kind(&bytes), DecodeErrorKind::TooLarge { .. }));
}

#[test]
fn signature_limits_and_forms() {
    let frame = &samples()[2];
    let body = enc(frame)[4..].to_vec();
    let form_at = body.len() - 256 - 2 - 1;
    assert_eq!(body[form_at], SIGNATURE_FORM_PLAIN);
    for form in [0, 3, 255] {
        let mut b = body.clone();
        b[form_at] = form;
        let e = decode_request(&framed(&b)).unwrap_err();
        assert_eq!(e.kind(), DecodeErrorKind::UnsupportedSignatureForm(form));
        assert_eq!(e.field(), "signature_form");
    }
    // Form 2 with bytes that are not a batch signature: tree_size 0x09090909 is out of range.
    let mut b = body.clone();
    b[form_at] = 2;
    let e = decode_request(&framed(&b)).unwrap_err();
    let DecodeErrorKind::InvalidBatchSignature(inner) = e.kind() else {
        panic!("{e}");
    };
    assert_eq!(inner.field, "tree_size");
    assert_eq!((e.field(), e.offset()), ("signature", 4 + form_at + 1));
    assert!(e.to_string().contains("invalid batch signature"), "{e}");
    let mut b = body[..form_at + 1].to_vec();
    b.extend_from_slice(&((MAX_SIGNATURE + 1) as u16).to_be_bytes());
    b.resize(b.len() + MAX_SIGNATURE + 1, 0);
    assert_eq!(
        kind(&framed(&b)),
        DecodeErrorKind::TooLarge {
            len: MAX_SIGNATURE + 1,
            max: MAX_SIGNATURE
        }
    );
}

#[test]
fn batch_signatures_in_verify() {
    let sig = BatchSignature {
        root_signature: Bytes::from(vec![5; 256]),
        leaf_index: 4,
        tree_size: 5,
        blinding: [1; 32],
        path: vec![[2; 32], [3; 32], [4; 32]],
    };
    let frame = RequestFrame {
        flags: ACCEPT_BATCH_SIGNATURE,
        deadline_ms: 0,
        request: Request::Verify {
            key: key("payments"),
            version: Some(2),
            scheme: Scheme::RsaPssSha256,
            payload: Bytes::from(vec![7; 32]),
            signature: SignatureForm::Batch(sig.clone()),
        },
    };
    let bytes = enc(&frame);
    assert_eq!(decode_request(&bytes).unwrap(), frame);
    // The form-2 bytes are exactly the batch signature encoding.
    let inner = sig.encode().unwrap();
    assert!(bytes.ends_with(&inner));
    let len_at = bytes.len() - inner.len() - 2;
    assert_eq!(bytes[len_at - 1], 2);
    // A truncated inner encoding (outer lengths fixed up) is an invalid batch signature.
    let mut short = bytes[4..bytes.len() - 1].to_vec();
    let new_len = (inner.len() - 1) as u16;
    short[len_at - 4..len_at - 2].copy_from_slice(&new_len.to_be_bytes());
    assert!(matches!(
        kind(&framed(&short)),
        DecodeErrorKind::InvalidBatchSignature(_)
    ));
    // An encoder refuses a batch signature that breaks its rules.
    let mut bad = frame.clone();
    if let Request::Verify { signature, .. } = &mut bad.request {
        *signature = SignatureForm::Batch(BatchSignature {
            leaf_index: 5,
            ..sig
        });
    }
    let mut out = BytesMut::new();
    assert!(matches!(
        encode_request(&bad, &mut out),
        Err(EncodeError::BatchSignature { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn partitions() {
    let frame = &samples()[5];
    let body = enc(frame)[4..].to_vec();
    let n_at = 8 + 3 + 1;
    assert_eq!(body[n_at], 2);
    let mut b = body[..=n_at].to_vec();
    b[n_at] = (MAX_PARTITIONS + 1) as u8;
    for _ in 0..=MAX_PARTITIONS {
        b.extend_from_slice(b"\x01p");
    }
    assert!(matches!(
        kind(&framed(&b)),
        DecodeErrorKind::TooLarge { .. }
    ));
    let mut b = body[..=n_at].to_vec();
    b[n_at] = 1;
    b.extend_from_slice(&[0, 0]); // an empty name, then one byte
    assert!(matches!(
        kind(&framed(&b)),
        DecodeErrorKind::InvalidValue { value: 0, .. }
    ));
    let mut b = body[..=n_at].to_vec();
    b[n_at] = 0; // every partition
    let Request::CreateKey { placement, .. } = decode_request(&framed(&b)).unwrap().request else {
        unreachable!()
    };
    assert!(placement.is_empty());
}

#[test]
fn versions_must_be_positive_where_required() {
    for frame in &samples()[7..9] {
        let mut body = enc(frame)[4..].to_vec();
        let n = body.len();
        body[n - 4..].copy_from_slice(&[0; 4]);
        let e = decode_request(&framed(&body)).unwrap_err();
        assert!(matches!(
            e.kind(),
            DecodeErrorKind::InvalidValue { value: 0, .. }
        ));
        assert_eq!(e.field(), "version");
    }
    let mut frame = sign();
    if let Request::Sign { version, .. } = &mut frame.request {
        *version = Some(0);
    }
    assert!(matches!(
        encode_request(&frame, &mut BytesMut::new()),
        Err(EncodeError::InvalidValue {
            field: "version",
            ..
        })
    ));
}

#[test]
fn trailing_bytes() {
    for frame in samples() {
        let mut body = enc(&frame)[4..].to_vec();
        body.push(0);
        let e = decode_request(&framed(&body)).unwrap_err();
        assert_eq!(e.kind(), DecodeErrorKind::TrailingBytes(1));
        assert_eq!(e.offset(), 4 + body.len() - 1);
    }
}
