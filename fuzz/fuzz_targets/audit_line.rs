//! Fuzzes the audit record reader on one line: `parse_line` must never panic, and the
//! verifier's cheap first-pass peek must agree with the full parser on every well-formed
//! checkpoint (otherwise pass 2 would lack the hash a checkpoint covers).

#![no_main]

use signerd::audit::fuzzing::{parse_record_line, peek_covers_seq};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let peek = peek_covers_seq(data);
    if let Ok((_seq, Some(covers))) = parse_record_line(data) {
        assert_eq!(peek, Some(covers), "first-pass peek disagrees with the parser");
    }
});
