//! Scenario 25: the audit sink cannot write. The daemon's audit directory is a small tmpfs,
//! filled to its last page while a client signs: a real ENOSPC from the kernel, not a seam.
//! Mounting needs root (CI runs as root); elsewhere the test says it is skipped, unless
//! `SIGNERD_REQUIRE_TMPFS` is set (`.ci/run` sets it where a probe mount works).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use signerd::{Scheme, Status};

use crate::support::{random_digest, status_of, warm_up, Daemon};

/// A tmpfs mounted on a directory; unmounted (lazily, so a daemon still holding a file does not
/// stop it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .ok()?;
        out.status.success().then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the filesystem is full (to less than one 4 KiB page).
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s25_full_audit_disk_fails_closed_then_resumes_by_itself() {
    let mut d = Daemon::init("s25");
    let Some(_tmpfs) = Tmpfs::mount(&d.path("audit"), "32m") else {
        // .ci/run sets this where it could mount one: there, a skip would hide a failure.
        assert!(
            std::env::var_os("SIGNERD_REQUIRE_TMPFS").is_none(),
            "SIGNERD_REQUIRE_TMPFS is set but mounting a tmpfs failed"
        );
        eprintln!("s25 skipped: mounting a tmpfs for the audit log needs root (CI runs as root)");
        return;
    };
    d.serve().await;
    let (key, spki) = d.ec_key("s25", &[]).await;
    let app = d.app(Duration::from_secs(10)).await;
    warm_up(&app, &key, &spki, 3).await;

    fill(&d.path("audit/filler"));
    // The log's last page may still have room for a few records; then a write meets ENOSPC.
    let mut signed = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..500 {
        let digest = random_digest();
        match app.sign(&key, Scheme::EcdsaSha256, digest.clone()).await {
            Ok(sig) => {
                crate::verify::verify(&spki, Scheme::EcdsaSha256, &digest, &sig.signature)
                    .expect("a signature released on a full disk still verifies");
                signed.push(digest);
            }
            Err(e) => {
                let (status, retry_after) = status_of(&e);
                assert_eq!(status, Status::Unavailable, "{e}");
                assert!(retry_after.is_some(), "a retry hint: {e}");
                refused.push(digest);
                if refused.len() == 5 {
                    break;
                }
            }
        }
    }
    assert_eq!(refused.len(), 5, "signing fails closed on a full disk");
    let (code, body) = d.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("audit log cannot be written"), "{body}");
    let m = d.metrics().await;
    assert_eq!(m.value("signer_audit_healthy", &[]), 0.0);
    assert!(m.value("signer_audit_write_failures_total", &[]) >= 1.0);
    assert!(d.log().contains("the disk is full"), "{}", d.log());

    // Room again: the log resumes by itself, no restart.
    std::fs::remove_file(d.path("audit/filler")).unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = d.get("/readyz").await;
        if code == 200 {
            break;
        }
        assert!(Instant::now() < until, "the log did not resume: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(d.log().contains("audit log writable again"), "{}", d.log());
    for _ in 0..5 {
        let digest = random_digest();
        let sig = app
            .sign(&key, Scheme::EcdsaSha256, digest.clone())
            .await
            .expect("signing resumes");
        crate::verify::verify(&spki, Scheme::EcdsaSha256, &digest, &sig.signature).unwrap();
        signed.push(digest);
    }
    app.close();
    assert!(d.terminate().success(), "{}", d.log());

    // One chain across the gap: every released signature has its record, no refused one has.
    let (ok, report) = d.audit_verify();
    assert!(ok, "{report}");
    assert!(
        report.contains("1 restarts, 1 after an unclean end"),
        "the resume is one unclean restart: {report}"
    );
    for digest in &signed {
        assert_eq!(d.audit_of(digest).len(), 1, "one record per signature");
    }
    for digest in &refused {
        assert!(
            d.audit_of(digest).is_empty(),
            "no record of a refused request"
        );
    }
}
