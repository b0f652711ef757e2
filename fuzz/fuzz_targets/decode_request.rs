//! Fuzzes `decode_request`: it must never panic, and whatever it accepts must re-encode to exactly
//! the same bytes (the encoding is canonical).

#![no_main]

use bytes::BytesMut;
use signer_proto::protocol::{decode_request, encode_request};
use libfuzzer_sys::fuzz_target;

fn check(frame: &[u8]) {
    if let Ok(request) = decode_request(frame) {
        let mut out = BytesMut::new();
        encode_request(&request, &mut out).expect("a decoded request re-encodes");
        assert_eq!(&out[..], frame, "request encoding is canonical");
    }
}

fuzz_target!(|data: &[u8]| {
    // As a whole frame (exercises the length prefix) ...
    check(data);
    // ... and as a body behind a correct prefix (reaches the fields quickly).
    if data.len() <= signer_proto::protocol::MAX_FRAME {
        let mut framed = (data.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(data);
        check(&framed);
    }
});
