//! Tests of response frames: every malformed-input case, limits, round trips of samples.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::keys::{KeyName, KeyState, KeyType};
use crate::merkle::BatchSignature;

const SIG: &[u8] = b"\x30\x06\x02\x01\x2a\x02\x01\x07";

fn listing(version: u32, state: KeyState, partitions: &[&str]) -> VersionListing {
    VersionListing {
        version,
        state,
        partitions: partitions.iter().map(|p| p.to_string()).collect(),
    }
}

/// One OK response for every op.
fn samples() -> Vec<(Op, ResponseFrame)> {
    let bodies = vec![
        (
            Op::Sign,
            ResponseBody::Signed {
                version: 1,
                signature: SignatureForm::Plain(Bytes::from_static(SIG)),
            },
        ),
        (
            Op::SignBatch,
            ResponseBody::Batch(vec![
                BatchItem::Signed {
                    version: 2,
                    signature: SignatureForm::Plain(Bytes::from_static(SIG)),
                },
                BatchItem::Failed {
                    status: Status::Overloaded,
                    retry_after_ms: 50,
                    message: "queue full".into(),
                },
                BatchItem::Failed {
                    status: Status::DeadlineExceeded,
                    retry_after_ms: 0,
                    message: String::new(),
                },
                BatchItem::Signed {
                    version: 2,
                    signature: SignatureForm::Batch(BatchSignature {
                        root_signature: Bytes::from_static(SIG),
                        leaf_index: 1,
                        tree_size: 3,
                        blinding: [0xbb; 32],
                        path: vec![[0xcc; 32], [0xdd; 32]],
                    }),
                },
            ]),
        ),
        (
            Op::Verify,
            ResponseBody::Verified {
                version: 3,
                valid: true,
            },
        ),
        (
            Op::GetPublicKey,
            ResponseBody::PublicKey {
                version: 1,
                key_type: KeyType::Ed25519,
                spki_der: Bytes::from(vec![0x30; 44]),
            },
        ),
        (
            Op::ListKeys,
            ResponseBody::Keys(vec![
                KeyListing {
                    name: KeyName::new("a").unwrap(),
                    key_type: KeyType::EcP256,
                    signing_version: Some(2),
                    versions: vec![
                        listing(1, KeyState::Retired, &["p1"]),
                        listing(2, KeyState::Active, &["p1", "p2"]),
                    ],
                },
                KeyListing {
                    name: KeyName::new("b").unwrap(),
                    key_type: KeyType::Rsa2048,
                    signing_version: None,
                    versions: vec![],
                },
            ]),
        ),
        (
            Op::CreateKey,
            ResponseBody::KeyVersion(listing(1, KeyState::Active, &["hsm-a"])),
        ),
        (
            Op::RotateKey,
            ResponseBody::KeyVersion(listing(2, KeyState::Active, &[])),
        ),
        (
            Op::RetireKey,
            ResponseBody::KeyVersion(listing(1, KeyState::Retired, &["x"])),
        ),
        (Op::DestroyKey, ResponseBody::Destroyed),
    ];
    bodies
        .into_iter()
        .map(|(op, body)| (op, ResponseFrame::ok(body)))
        .collect()
}

fn enc(op: Op, frame: &ResponseFrame) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_response(op, frame, &mut out).unwrap();
    out.to_vec()
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

fn kind(op: Op, frame: &[u8]) -> DecodeErrorKind {
    decode_response(op, frame).unwrap_err().kind()
}

fn not_found() -> ResponseFrame {
    ResponseFrame::error(Status::NotFound, 0, "key payments not found")
}

#[test]
fn samples_round_trip() {
    for (op, frame) in samples() {
        assert_eq!(
            decode_response(op, &enc(op, &frame)).unwrap(),
            frame,
            "{op}"
        );
        let err = ResponseFrame::error(Status::Unavailable, 250, "no healthy partition");
        assert_eq!(decode_response(op, &enc(op, &err)).unwrap(), err);
    }
}

#[test]
fn error_frames_are_the_same_for_every_op() {
    let bytes = enc(Op::Sign, &not_found());
    for op in Op::ALL {
        assert_eq!(enc(op, &not_found()), bytes);
        assert_eq!(decode_response(op, &bytes).unwrap(), not_found());
    }
}

#[test]
fn empty_and_truncated_at_every_position_fail() {
    assert!(matches!(
        kind(Op::Sign, &[]),
        DecodeErrorKind::Truncated { .. }
    ));
    let mut all = samples();
    all.push((Op::Sign, not_found()));
    for (op, frame) in all {
        let bytes = enc(op, &frame);
        for cut in 0..bytes.len() {
            let e = decode_response(op, &bytes[..cut]).unwrap_err();
            assert!(
                matches!(
                    e.kind(),
                    DecodeErrorKind::Truncated { .. } | DecodeErrorKind::BadLength { .. }
                ),
                "{op} cut at {cut}: {e}"
            );
            if cut >= 4 {
                let e = decode_response(op, &framed(&bytes[4..cut])).unwrap_err();
                assert!(
                    matches!(e.kind(), DecodeErrorKind::Truncated { .. }),
                    "{op} body cut at {cut}: {e}"
                );
            }
        }
    }
}

#[test]
fn length_prefix_and_frame_size() {
    let mut bytes = enc(Op::Sign, &not_found());
    bytes[3] += 1;
    assert!(matches!(
        kind(Op::Sign, &bytes),
        DecodeErrorKind::BadLength { .. }
    ));
    bytes[3] -= 2;
    assert!(matches!(
        kind(Op::Sign, &bytes),
        DecodeErrorKind::BadLength { .. }
    ));
    let over = (super::super::MAX_FRAME as u32 + 1).to_be_bytes();
    assert!(matches!(
        kind(Op::Sign, &over),
        DecodeErrorKind::TooLarge { .. }
    ));
}

#[test]
fn header_checks() {
    let body = enc(Op::Sign, &not_found())[4..].to_vec();
    let patch = |at: usize, v: u8| {
        let mut b = body.clone();
        b[at] = v;
        framed(&b)
    };
    assert_eq!(
        kind(Op::Sign, &patch(0, 2)),
        DecodeErrorKind::UnsupportedVersion(2)
    );
    let e = decode_response(Op::Sign, &patch(3, 1)).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::BadFlags(1));
    assert_eq!((e.field(), e.offset()), ("flags", 6));
    let mut b = body.clone();
    b[11] = 0xff; // inside the message
    let e = decode_response(Op::Sign, &framed(&b)).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (DecodeErrorKind::InvalidUtf8, "message")
    );
}

#[test]
fn unknown_status_decodes_as_internal() {
    let mut body = enc(Op::Sign, &not_found())[4..].to_vec();
    for code in [9, 0x42, 0xff] {
        body[1] = code;
        let frame = decode_response(Op::Sign, &framed(&body)).unwrap();
        assert_eq!(frame.status, Status::Internal);
        assert_eq!(frame.message, "key payments not found");
        assert_eq!(frame.body, None);
    }
}

#[test]
fn non_ok_response_with_a_body_is_rejected() {
    let (op, ok) = &samples()[0];
    let mut body = enc(*op, ok)[4..].to_vec();
    body[1] = Status::NotFound.code();
    let e = decode_response(*op, &framed(&body)).unwrap_err();
    assert_eq!(
        e.kind(),
        DecodeErrorKind::TrailingBytes(4 + 1 + 2 + SIG.len())
    );
    assert!(
        e.to_string().contains("non-OK response has no result body"),
        "{e}"
    );
    let mut bad = not_found();
    bad.body = Some(ok.body.clone().unwrap());
    assert!(matches!(
        encode_response(*op, &bad, &mut BytesMut::new()),
        Err(EncodeError::InvalidValue { field: "body", .. })
    ));
}

#[test]
fn ok_response_rules() {
    let ok_without_body = ResponseFrame {
        body: None,
        ..ResponseFrame::ok(ResponseBody::Destroyed)
    };
    let mut out = BytesMut::new();
    assert!(encode_response(Op::DestroyKey, &ok_without_body, &mut out).is_err());
    let mut chatty = ResponseFrame::ok(ResponseBody::Destroyed);
    chatty.message = "fine".into();
    assert!(encode_response(Op::DestroyKey, &chatty, &mut out).is_err());
    chatty.message.clear();
    chatty.retry_after_ms = 1;
    assert!(encode_response(Op::DestroyKey, &chatty, &mut out).is_err());
    assert!(out.is_empty());
    // Decoder: hand-built OK headers with a message or a retry delay.
    let hdr = |retry: u8, msg: &[u8]| {
        let mut b = vec![1, 0, 0, 0, 0, 0, 0, retry, 0, msg.len() as u8];
        b.extend_from_slice(msg);
        framed(&b)
    };
    assert!(decode_response(Op::DestroyKey, &hdr(0, b"")).is_ok());
    let e = decode_response(Op::DestroyKey, &hdr(0, b"hi")).unwrap_err();
    assert_eq!(e.field(), "message");
    let e = decode_response(Op::DestroyKey, &hdr(5, b"")).unwrap_err();
    assert_eq!(
        e.kind(),
        DecodeErrorKind::InvalidValue {
            value: 5,
            expected: "0 in an OK response"
        }
    );
}

#[test]
fn body_must_match_op_when_encoding() {
    for (op, frame) in samples() {
        for other in Op::ALL {
            let body = frame.body.as_ref().unwrap();
            let result = encode_response(other, &frame, &mut BytesMut::new());
            if body.matches(other) {
                assert!(result.is_ok());
            } else {
                assert_eq!(
                    result,
                    Err(EncodeError::BodyMismatch(other)),
                    "{op} as {other}"
                );
            }
        }
    }
}

/// The response does not repeat the op, so decoding with the wrong op is caught by the
/// layout: every mismatch below fails, except where two results share a layout (all
/// `KeyVersion` ops; and a Sign result whose signature-form byte reads as key type 1).
#[test]
fn decoding_with_the_wrong_op_fails() {
    for (op, frame) in samples() {
        let bytes = enc(op, &frame);
        for other in Op::ALL {
            let body = frame.body.as_ref().unwrap();
            let result = decode_response(other, &bytes);
            let shared_layout =
                body.matches(other) || (op == Op::Sign && other == Op::GetPublicKey);
            assert_eq!(result.is_ok(), shared_layout, "{op} decoded as {other}");
        }
    }
    let e = decode_response(Op::Verify, &enc(Op::Sign, &samples()[0].1)).unwrap_err();
    assert!(matches!(e.kind(), DecodeErrorKind::TrailingBytes(_)), "{e}");
    let e = decode_response(Op::Sign, &enc(Op::Verify, &samples()[2].1)).unwrap_err();
    assert!(matches!(e.kind(), DecodeErrorKind::Truncated { .. }), "{e}");
}

#[test]
fn messages_are_bounded() {
    let long = ResponseFrame::error(Status::Internal, 0, "é".repeat(MAX_MESSAGE));
    let frame = decode_response(Op::Sign, &enc(Op::Sign, &long)).unwrap();
    assert_eq!(frame.message, "é".repeat(MAX_MESSAGE / 2));
    let mut b = vec![1, 8, 0, 0, 0, 0, 0, 0];
    b.extend_from_slice(&((MAX_MESSAGE + 1) as u16).to_be_bytes());
    b.resize(b.len() + MAX_MESSAGE + 1, b'x');
    let e = decode_response(Op::Sign, &framed(&b)).unwrap_err();
    assert_eq!(
        e.kind(),
        DecodeErrorKind::TooLarge {
            len: MAX_MESSAGE + 1,
            max: MAX_MESSAGE
        }
    );
    assert_eq!((e.field(), e.offset()), ("message", 12));
}

/// Body bytes of an OK response to `op`, re-framed after `f` edits them.
fn ok_body(op: Op, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let frame = samples().into_iter().find(|(o, _)| *o == op).unwrap().1;
    let mut body = enc(op, &frame)[4..].to_vec();
    f(&mut body);
    framed(&body)
}

// OK header is 10 bytes (empty message); result bodies start at body offset 10.

#[test]
fn result_field_checks() {
    let e = decode_response(Op::Sign, &ok_body(Op::Sign, |b| b[14] = 3)).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::UnsupportedSignatureForm(3));
    // Form 2 with a plain DER signature's bytes: too short to be a batch signature.
    let e = decode_response(Op::Sign, &ok_body(Op::Sign, |b| b[14] = 2)).unwrap_err();
    assert!(matches!(
        e.kind(),
        DecodeErrorKind::InvalidBatchSignature(_)
    ));
    assert_eq!((e.field(), e.offset()), ("signature", 4 + 15));
    let e = decode_response(Op::Sign, &ok_body(Op::Sign, |b| b[13] = 0)).unwrap_err();
    assert!(matches!(
        e.kind(),
        DecodeErrorKind::InvalidValue { value: 0, .. }
    ));
    assert_eq!((e.field(), e.offset()), ("version", 14));
    let e = decode_response(Op::Verify, &ok_body(Op::Verify, |b| b[14] = 2)).unwrap_err();
    assert_eq!(
        e.kind(),
        DecodeErrorKind::InvalidValue {
            value: 2,
            expected: "0 or 1"
        }
    );
    let e =
        decode_response(Op::GetPublicKey, &ok_body(Op::GetPublicKey, |b| b[14] = 9)).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::UnknownKeyType(9));
    let e = decode_response(Op::CreateKey, &ok_body(Op::CreateKey, |b| b[14] = 3)).unwrap_err();
    assert_eq!(e.kind(), DecodeErrorKind::UnknownKeyState(3));
    let e = decode_response(Op::ListKeys, &ok_body(Op::ListKeys, |b| b[13] = b'-')).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (DecodeErrorKind::InvalidKeyName, "name")
    );
}

#[test]
fn counts_are_checked_before_allocating() {
    let bytes = ok_body(Op::ListKeys, |b| b[10..12].copy_from_slice(&[0xff, 0xff]));
    let e = decode_response(Op::ListKeys, &bytes).unwrap_err();
    assert!(matches!(e.kind(), DecodeErrorKind::Truncated { needed, .. } if needed == 65535 * 9));
    let bytes = ok_body(Op::SignBatch, |b| b[10..12].copy_from_slice(&[0x04, 0x00]));
    let e = decode_response(Op::SignBatch, &bytes).unwrap_err();
    assert!(matches!(e.kind(), DecodeErrorKind::Truncated { .. }), "{e}");
    let bytes = ok_body(Op::SignBatch, |b| b[10..12].copy_from_slice(&[0x04, 0x01]));
    let e = decode_response(Op::SignBatch, &bytes).unwrap_err();
    assert!(matches!(e.kind(), DecodeErrorKind::TooLarge { .. }), "{e}");
    let bytes = framed(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let e = decode_response(Op::SignBatch, &bytes).unwrap_err();
    assert!(matches!(
        e.kind(),
        DecodeErrorKind::InvalidValue { value: 0, .. }
    ));
}

#[test]
fn batch_items() {
    // Item 2's status byte (Overloaded) → an unknown code decodes as Internal.
    let at = 10 + 2 + (1 + 4 + 1 + 2 + SIG.len());
    let bytes = ok_body(Op::SignBatch, |b| {
        assert_eq!(b[at], Status::Overloaded.code());
        b[at] = 77;
    });
    let frame = decode_response(Op::SignBatch, &bytes).unwrap();
    let Some(ResponseBody::Batch(items)) = frame.body else {
        unreachable!()
    };
    assert!(matches!(
        &items[1],
        BatchItem::Failed { status: Status::Internal, retry_after_ms: 50, message } if message == "queue full"
    ));
    let bad = ResponseFrame::ok(ResponseBody::Batch(vec![BatchItem::Failed {
        status: Status::Ok,
        retry_after_ms: 0,
        message: String::new(),
    }]));
    assert!(encode_response(Op::SignBatch, &bad, &mut BytesMut::new()).is_err());
    let empty = ResponseFrame::ok(ResponseBody::Batch(vec![]));
    assert!(encode_response(Op::SignBatch, &empty, &mut BytesMut::new()).is_err());
}

#[test]
fn trailing_bytes_after_result() {
    for (op, frame) in samples() {
        let mut body = enc(op, &frame)[4..].to_vec();
        body.extend_from_slice(&[0, 0]);
        assert_eq!(
            kind(op, &framed(&body)),
            DecodeErrorKind::TrailingBytes(2),
            "{op}"
        );
    }
}
