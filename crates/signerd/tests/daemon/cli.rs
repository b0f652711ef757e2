//! Command-line contract: bad configs exit 64 and say what is wrong.

use std::process::Command;

#[test]
fn bad_config_exits_64_and_names_the_problem() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", "bogus"),
        (
            "[engine]\nqueue_depth = 0\n[providers.x]\nmodule = \"m\"\npartitions = []\n",
            "queue_depth",
        ),
        ("this is not toml", "config"),
        // Durations have their unit; the old millisecond keys name their replacement.
        (
            "[engine]\nmax_queue_wait_ms = 30\n",
            "`engine.max_queue_wait_ms` is now `engine.max_queue_wait = \"30ms\"` (a duration \
             with its unit)",
        ),
        (
            "[server]\nshutdown_grace = \"10 fortnights\"\n",
            "shutdown_grace = \"10 fortnights\"",
        ),
        ("[engine]\nhang_timeout = 2000\n", "2000 has no unit"),
    ];
    for (text, needle) in cases {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{text:?}: expected {needle:?} in {stderr}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
        .args(["serve", "--config"])
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
