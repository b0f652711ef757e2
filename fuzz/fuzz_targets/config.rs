//! Fuzzes the config reader from text: TOML parsing, unknown-key rejection, path resolution and
//! validation (`Config::parse`). It must never panic, whatever the text; a config it accepts must
//! be accepted again when parsed a second time (validation is deterministic).

#![no_main]

use std::path::Path;

use signerd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = Path::new("/etc/signerd");
    if Config::parse(text, base).is_ok() {
        assert!(
            Config::parse(text, base).is_ok(),
            "accepted once, refused the second time"
        );
    }
});
