//! Property tests: the verifier never panics on garbage, and no single-byte change of a sealed
//! log goes unnoticed.

use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;

/// One sealed log, written once and copied by each case.
fn sealed_bytes() -> &'static Vec<u8> {
    static LOG: OnceLock<Vec<u8>> = OnceLock::new();
    LOG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = sealed_log(dir.path(), 25);
        std::fs::read(path).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_is_an_error_not_a_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, &data).unwrap();
        prop_assert!(verify(&path, None, false).is_err());
        prop_assert!(verify(&path, None, true).is_err() || data.is_empty());
    }

    #[test]
    fn garbage_lines_after_a_valid_prefix_are_errors(
        keep in 0usize..20,
        tail in proptest::collection::vec(any::<u8>(), 1..512),
    ) {
        let log = sealed_bytes();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut data: Vec<u8> = log
            .split_inclusive(|&b| b == b'\n')
            .take(keep)
            .flatten()
            .copied()
            .collect();
        data.extend_from_slice(&tail);
        std::fs::write(&path, &data).unwrap();
        prop_assert!(verify(&path, None, false).is_err());
    }

    #[test]
    fn any_single_byte_change_of_a_sealed_log_is_detected(at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut data = sealed_bytes().clone();
        let i = at.index(data.len());
        data[i] ^= xor;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, &data).unwrap();
        prop_assert!(verify(&path, None, false).is_err(), "byte {} ^ {:#x} went unnoticed", i, xor);
    }
}

#[test]
fn the_shared_sealed_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::fs::write(&path, sealed_bytes()).unwrap();
    assert!(verify(&path, None, false).unwrap().sealed);
}
