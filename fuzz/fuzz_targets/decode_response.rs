//! Fuzzes `decode_response`: the first input byte picks the op, the rest is the frame (used both
//! as is and behind a correct length prefix). Decoding must never panic, and whatever decodes must
//! re-encode to a frame that decodes to the same value. (Not byte-identical: unknown status codes
//! decode as INTERNAL.)

#![no_main]

use bytes::BytesMut;
use signer_proto::protocol::{decode_response, encode_response, Op, MAX_FRAME};
use libfuzzer_sys::fuzz_target;

fn check(op: Op, frame: &[u8]) {
    if let Ok(response) = decode_response(op, frame) {
        let mut out = BytesMut::new();
        encode_response(op, &response, &mut out).expect("a decoded response re-encodes");
        let again = decode_response(op, &out).expect("a re-encoded response decodes");
        assert_eq!(again, response, "response round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let op = Op::ALL[selector as usize % Op::ALL.len()];
    check(op, frame);
    if frame.len() <= MAX_FRAME {
        let mut framed = (frame.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(frame);
        check(op, &framed);
    }
});
