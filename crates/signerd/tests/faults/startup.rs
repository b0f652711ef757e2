//! Scenario 5: a wrong PIN at start fails once, clearly, without a retry loop.

use std::time::Duration;

use crate::support::Daemon;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s05_wrong_pin_at_start_fails_once_with_a_clear_message() {
    let d = Daemon::init("s05");
    std::fs::write(d.path("pins/p0.pin"), "not-the-pin-0000\n").unwrap();
    // A rule that injects nothing (no delay) and only counts C_Login calls on signerd-0.
    d.write_faults(
        "[[rule]]\nname = \"login-p0\"\nkind = \"latency\"\nfunction = \"C_Login\"\n\
         token = \"signerd-0\"\nfixed_ms = 0\n",
    );

    let (status, stderr) =
        tokio::task::block_in_place(|| d.serve_expecting_exit(Duration::from_secs(20)));
    assert_eq!(status.code(), Some(64), "EX_USAGE; stderr:\n{stderr}");
    assert!(
        stderr.contains("partition p0") && stderr.contains("PIN"),
        "the message names the partition and the PIN:\n{stderr}"
    );
    assert!(stderr.contains("signerd-0"), "and the token:\n{stderr}");
    // The module writes its stats at C_Finalize, which the daemon calls on its way out.
    let s = d
        .stats_when("the daemon's C_Finalize", |s| s.finalizes == 1)
        .await;
    let login = s.rule("login-p0").expect("the counting rule");
    assert_eq!(login.matched, 1, "exactly one C_Login on signerd-0: {s:#?}");
    assert_eq!(s.calls("C_Login"), 1, "and none anywhere else: {s:#?}");
    assert_eq!(s.calls("C_Initialize"), 1);
}
