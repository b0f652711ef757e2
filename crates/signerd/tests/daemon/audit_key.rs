//! The audit key is protected by a mark in the token, not by its configured name (security
//! review, finding 3): clients reach only its public key even when the audit log is disabled,
//! and a key that clients could use is never adopted as the audit key.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use signer_client::{ClientError, Status};
use signerd::Scheme;

use crate::daemon::{ec_key, random_bytes, Daemon};

const AUDIT_KEY: &str = "signerd-audit";

fn edit_config(d: &Daemon, from: &str, to: &str) {
    let path = d.path("signerd.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from:?} in\n{text}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

fn denied<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r.unwrap_err() {
        ClientError::Status {
            status, message, ..
        } => {
            assert_eq!(status, Status::PermissionDenied, "{message}");
            message
        }
        other => panic!("no status: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_key_serves_only_its_public_key_even_with_the_audit_log_disabled() {
    let mut d = Daemon::start("audit-mark").await;
    let admin = d.admin().await;
    let spki = admin.public_key(AUDIT_KEY, None).await.unwrap().spki_der;
    assert!(!spki.is_empty());
    admin.close();
    assert!(d.terminate().success());

    // The config no longer names it; the token's mark still protects it.
    edit_config(&d, "[audit]\n", "[audit]\ndisabled = true\n");
    d.spawn_serve().await;
    let app = d.app().await;
    let admin = d.admin().await;
    let message = denied(
        app.sign(AUDIT_KEY, Scheme::EcdsaSha256, random_bytes(32))
            .await,
    );
    assert!(message.contains("audit"), "{message}");
    denied(
        admin
            .sign(AUDIT_KEY, Scheme::EcdsaSha256, random_bytes(32))
            .await,
    );
    denied(admin.rotate_key(AUDIT_KEY).await);
    denied(admin.retire_key(AUDIT_KEY, 1).await);
    assert_eq!(
        admin.public_key(AUDIT_KEY, None).await.unwrap().spki_der,
        spki,
        "its public key stays readable"
    );
    app.close();
    admin.close();
    d.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_clients_could_sign_with_is_never_adopted_as_the_audit_key() {
    let mut d = Daemon::start("audit-adopt").await;
    let admin = d.admin().await;
    let name = ec_key(&admin, "ordinary").await;
    admin
        .sign(&name, Scheme::EcdsaSha256, random_bytes(32))
        .await
        .unwrap();
    admin.close();
    assert!(d.terminate().success());

    edit_config(
        &d,
        &format!("key = \"{AUDIT_KEY}\""),
        &format!("key = \"{name}\""),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_signerd"))
        .args(["serve", "--config"])
        .arg(d.path("signerd.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("signerd serve adopted {name} as its audit key and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(69), "EX_UNAVAILABLE; stderr:\n{stderr}");
    assert!(
        stderr.contains(&name) && stderr.contains("not marked as an audit key"),
        "{stderr}"
    );
}
