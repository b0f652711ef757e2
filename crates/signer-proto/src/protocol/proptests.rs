//! Property tests (round trips, no panics on any input) and the worked examples of
//! docs/PROTOCOL.md.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use super::*;

fn key_name() -> impl Strategy<Value = KeyName> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,63}".prop_map(|s| KeyName::new(&s).unwrap())
}

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn scheme() -> impl Strategy<Value = Scheme> {
    select(Scheme::ALL.to_vec())
}

fn key_type() -> impl Strategy<Value = KeyType> {
    select(KeyType::ALL.to_vec())
}

fn key_state() -> impl Strategy<Value = KeyState> {
    prop_oneof![Just(KeyState::Active), Just(KeyState::Retired)]
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![1..=4u32, 1..=u32::MAX]
}

fn opt_version() -> impl Strategy<Value = Option<Version>> {
    proptest::option::of(version())
}

/// Non-empty, any Unicode (≤ 16 chars, so ≤ 64 bytes).
fn partition() -> impl Strategy<Value = String> {
    "\\PC{1,16}"
}

fn partitions(max: usize) -> impl Strategy<Value = Vec<String>> {
    vec(partition(), 0..=max)
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (key_name(), opt_version(), scheme(), bytes(100)).prop_map(
            |(key, version, scheme, payload)| Request::Sign {
                key,
                version,
                scheme,
                payload
            }
        ),
        (key_name(), opt_version(), scheme(), vec(bytes(40), 1..10)).prop_map(
            |(key, version, scheme, payloads)| Request::SignBatch {
                key,
                version,
                scheme,
                payloads
            }
        ),
        (key_name(), opt_version(), scheme(), bytes(100), signature()).prop_map(
            |(key, version, scheme, payload, signature)| Request::Verify {
                key,
                version,
                scheme,
                payload,
                signature
            }
        ),
        (key_name(), opt_version())
            .prop_map(|(key, version)| Request::GetPublicKey { key, version }),
        Just(Request::ListKeys),
        (key_name(), key_type(), partitions(MAX_PARTITIONS)).prop_map(
            |(key, key_type, placement)| Request::CreateKey {
                key,
                key_type,
                placement
            }
        ),
        key_name().prop_map(|key| Request::RotateKey { key }),
        (key_name(), version()).prop_map(|(key, version)| Request::RetireKey { key, version }),
        (key_name(), version()).prop_map(|(key, version)| Request::DestroyKey { key, version }),
    ]
}

fn request_frame() -> impl Strategy<Value = RequestFrame> {
    (
        prop_oneof![Just(0), Just(ACCEPT_BATCH_SIGNATURE)],
        any::<u32>(),
        request(),
    )
        .prop_map(|(flags, deadline_ms, request)| RequestFrame {
            flags,
            deadline_ms,
            request,
        })
}

fn error_status() -> impl Strategy<Value = Status> {
    select(
        (1..=8)
            .filter_map(Status::from_code)
            .collect::<Vec<Status>>(),
    )
}

fn message() -> impl Strategy<Value = String> {
    prop_oneof!["", "\\PC{0,300}"]
}

/// A well-formed batch signature (form 2) of any tree size and position.
fn batch_signature() -> impl Strategy<Value = crate::merkle::BatchSignature> {
    use crate::merkle::{depth, BatchSignature, MAX_ROOT_SIGNATURE, MAX_TREE};
    (
        1..=MAX_TREE as u32,
        any::<proptest::sample::Index>(),
        any::<[u8; 32]>(),
        any::<u8>(),
        vec(any::<u8>(), 1..=MAX_ROOT_SIGNATURE),
    )
        .prop_map(|(tree_size, pick, blinding, seed, sig)| BatchSignature {
            root_signature: Bytes::from(sig),
            leaf_index: pick.index(tree_size as usize) as u32,
            tree_size,
            blinding,
            path: (0..depth(tree_size as usize))
                .map(|k| [seed ^ k as u8; 32])
                .collect(),
        })
}

/// A signature in either form.
fn signature() -> impl Strategy<Value = SignatureForm> {
    prop_oneof![
        bytes(600).prop_map(SignatureForm::Plain),
        batch_signature().prop_map(SignatureForm::Batch),
    ]
}

fn batch_item() -> impl Strategy<Value = BatchItem> {
    prop_oneof![
        (version(), signature())
            .prop_map(|(version, signature)| BatchItem::Signed { version, signature }),
        (error_status(), any::<u32>(), message()).prop_map(|(status, retry_after_ms, message)| {
            BatchItem::Failed {
                status,
                retry_after_ms,
                message,
            }
        }),
    ]
}

fn version_listing() -> impl Strategy<Value = VersionListing> {
    (version(), key_state(), partitions(6)).prop_map(|(version, state, partitions)| {
        VersionListing {
            version,
            state,
            partitions,
        }
    })
}

fn key_listing() -> impl Strategy<Value = KeyListing> {
    (
        key_name(),
        key_type(),
        opt_version(),
        vec(version_listing(), 0..5),
    )
        .prop_map(|(name, key_type, signing_version, versions)| KeyListing {
            name,
            key_type,
            signing_version,
            versions,
        })
}

fn body_for(op: Op) -> BoxedStrategy<ResponseBody> {
    match op {
        Op::Sign => (version(), signature())
            .prop_map(|(version, signature)| ResponseBody::Signed { version, signature })
            .boxed(),
        Op::SignBatch => vec(batch_item(), 1..20)
            .prop_map(ResponseBody::Batch)
            .boxed(),
        Op::Verify => (version(), any::<bool>())
            .prop_map(|(version, valid)| ResponseBody::Verified { version, valid })
            .boxed(),
        Op::GetPublicKey => (version(), key_type(), bytes(600))
            .prop_map(|(version, key_type, spki_der)| ResponseBody::PublicKey {
                version,
                key_type,
                spki_der,
            })
            .boxed(),
        Op::ListKeys => vec(key_listing(), 0..6)
            .prop_map(ResponseBody::Keys)
            .boxed(),
        Op::CreateKey | Op::RotateKey | Op::RetireKey => {
            version_listing().prop_map(ResponseBody::KeyVersion).boxed()
        }
        Op::DestroyKey => Just(ResponseBody::Destroyed).boxed(),
    }
}

fn op_and_response() -> impl Strategy<Value = (Op, ResponseFrame)> {
    select(Op::ALL.to_vec()).prop_flat_map(|op| {
        let ok = body_for(op).prop_map(ResponseFrame::ok);
        let err = (error_status(), any::<u32>(), message())
            .prop_map(|(status, retry, msg)| ResponseFrame::error(status, retry, msg));
        (Just(op), prop_oneof![3 => ok, 1 => err])
    })
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

proptest! {
    #[test]
    fn request_round_trip(frame in request_frame()) {
        let mut out = BytesMut::new();
        encode_request(&frame, &mut out).unwrap();
        prop_assert_eq!(frame_len(out[..4].try_into().unwrap()), out.len() - 4);
        prop_assert_eq!(decode_request(&out).unwrap(), frame);
    }

    #[test]
    fn response_round_trip((op, frame) in op_and_response()) {
        let mut out = BytesMut::new();
        encode_response(op, &frame, &mut out).unwrap();
        prop_assert_eq!(decode_response(op, &out).unwrap(), frame);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..300), op in 0..Op::ALL.len()) {
        let op = Op::ALL[op];
        let _ = decode_request(&data);
        let _ = decode_response(op, &data);
        // With a correct prefix the decoders get past the framing check.
        let _ = decode_request(&framed(&data));
        let _ = decode_response(op, &framed(&data));
    }

    /// Valid frames with one byte changed: no panic, and whatever still decodes is canonical
    /// (re-encoding gives back exactly the same bytes).
    #[test]
    fn mutated_requests_never_panic(frame in request_frame(), at in any::<usize>(), byte in any::<u8>()) {
        let mut out = BytesMut::new();
        encode_request(&frame, &mut out).unwrap();
        let mut bytes = out.to_vec();
        let at = 4 + at % (bytes.len() - 4);
        bytes[at] = byte;
        if let Ok(decoded) = decode_request(&bytes) {
            let mut again = BytesMut::new();
            encode_request(&decoded, &mut again).unwrap();
            prop_assert_eq!(&again[..], &bytes[..]);
        }
    }

    #[test]
    fn mutated_responses_never_panic((op, frame) in op_and_response(), at in any::<usize>(), byte in any::<u8>()) {
        let mut out = BytesMut::new();
        encode_response(op, &frame, &mut out).unwrap();
        let mut bytes = out.to_vec();
        let at = 4 + at % (bytes.len() - 4);
        bytes[at] = byte;
        if let Ok(decoded) = decode_response(op, &bytes) {
            let mut again = BytesMut::new();
            encode_response(op, &decoded, &mut again).unwrap();
            prop_assert_eq!(decode_response(op, &again).unwrap(), decoded);
        }
    }
}

// ---- Worked examples (docs/PROTOCOL.md §11) ----

const DOC: &str = include_str!("../../../../docs/PROTOCOL.md");

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `frame` encodes to `expected` and that the doc shows exactly that hex.
fn check_example(encoded: &[u8], expected: &str) {
    assert_eq!(hex(encoded), expected);
    assert!(
        DOC.contains(expected),
        "docs/PROTOCOL.md must show the example frame {expected}"
    );
}

#[test]
fn worked_example_sign_request() {
    let frame = RequestFrame {
        flags: 0,
        deadline_ms: 5000,
        request: Request::Sign {
            key: KeyName::new("payments").unwrap(),
            version: None,
            scheme: Scheme::EcdsaSha256,
            payload: Bytes::from((0u8..32).collect::<Vec<u8>>()),
        },
    };
    let mut out = BytesMut::new();
    encode_request(&frame, &mut out).unwrap();
    check_example(
        &out,
        "0000003a0101000000001388087061796d656e7473000000000100000020\
         000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    );
    assert_eq!(decode_request(&out).unwrap(), frame);
}

#[test]
fn worked_example_sign_response() {
    let frame = ResponseFrame::ok(ResponseBody::Signed {
        version: 1,
        signature: SignatureForm::Plain(Bytes::from_static(b"\x30\x06\x02\x01\x2a\x02\x01\x07")),
    });
    let mut out = BytesMut::new();
    encode_response(Op::Sign, &frame, &mut out).unwrap();
    check_example(
        &out,
        "000000190100000000000000000000000001010008300602012a020107",
    );
    assert_eq!(decode_response(Op::Sign, &out).unwrap(), frame);
}

#[test]
fn worked_example_error_responses() {
    let frame = ResponseFrame::error(Status::NotFound, 0, "key payments not found");
    let mut out = BytesMut::new();
    encode_response(Op::Sign, &frame, &mut out).unwrap();
    check_example(
        &out,
        "00000020010400000000000000166b6579207061796d656e7473206e6f7420666f756e64",
    );
    assert_eq!(decode_response(Op::Sign, &out).unwrap(), frame);

    let frame = ResponseFrame::error(Status::Overloaded, 50, "queue full");
    out.clear();
    encode_response(Op::Sign, &frame, &mut out).unwrap();
    check_example(&out, "000000140105000000000032000a71756575652066756c6c");
    assert_eq!(decode_response(Op::Sign, &out).unwrap(), frame);
}

#[test]
fn worked_example_batch_sign_response() {
    // Leaf 1 of a 2-leaf tree: blinding 0x11 × 32, path [0x22 × 32], the made-up DER signature
    // of the plain example as root signature.
    let frame = ResponseFrame::ok(ResponseBody::Signed {
        version: 1,
        signature: SignatureForm::Batch(crate::merkle::BatchSignature {
            root_signature: Bytes::from_static(b"\x30\x06\x02\x01\x2a\x02\x01\x07"),
            leaf_index: 1,
            tree_size: 2,
            blinding: [0x11; 32],
            path: vec![[0x22; 32]],
        }),
    });
    let mut out = BytesMut::new();
    encode_response(Op::Sign, &frame, &mut out).unwrap();
    check_example(
        &out,
        "0000006401000000000000000000000000010200530000000200000001111111111111111111111111111111\
         1111111111111111111111111111111111012222222222222222222222222222222222222222222222222222\
         2222222222220008300602012a020107",
    );
    assert_eq!(decode_response(Op::Sign, &out).unwrap(), frame);
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// §8's decode-error examples: each frame is in the doc, fails to decode with exactly the
/// message the doc shows, at the offset of the failing field's length prefix; and the server's
/// answer to the first is the frame the doc shows.
#[test]
fn worked_examples_of_decode_errors() {
    let cases = [
        (
            "0000001f0101000000001388087061796d656e74730000000001000000200001020304",
            "truncated frame: `payload` at byte 26 needs 32 bytes, 5 remain",
        ),
        (
            "0000001a0101000000001388087061796d656e7473000000000100010001",
            "`payload` at byte 26 is too large: 65537 > limit 65536",
        ),
        (
            "000000180102000000001388087061796d656e7473000000000103e8",
            "truncated frame: `count` at byte 26 needs 4000 bytes, 0 remain",
        ),
    ];
    for (frame, message) in cases {
        assert!(DOC.contains(frame), "docs/PROTOCOL.md must show {frame}");
        assert!(
            DOC.contains(message),
            "docs/PROTOCOL.md must show {message}"
        );
        let e = decode_request(&unhex(frame)).unwrap_err();
        assert_eq!(e.to_string(), message);
        assert_eq!(e.offset(), 26, "{e}");
    }
    // The server prefixes "invalid argument: malformed request: " (server::dispatch).
    let answer = ResponseFrame::error(
        Status::InvalidArgument,
        0,
        "invalid argument: malformed request: truncated frame: `payload` at byte 26 needs 32 \
         bytes, 5 remain",
    );
    let mut out = BytesMut::new();
    encode_response(Op::Sign, &answer, &mut out).unwrap();
    check_example(
        &out,
        "0000006d01010000000000000063696e76616c696420617267756d656e743a206d616c666f726d656420726571\
         756573743a207472756e6361746564206672616d653a20607061796c6f6164602061742062797465203236206e\
         656564732033322062797465732c20352072656d61696e",
    );
}
