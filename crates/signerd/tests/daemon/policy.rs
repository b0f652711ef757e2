//! The access policy on a real daemon: denials answered before the HSM and audited, filtered
//! key listings, reload on SIGHUP without dropping connections, quotas, two-admin destroy.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use signer_client::{Client, ClientError, SignOptions, Status};
use signer_proto::protocol::{self, Request, RequestFrame, ResponseFrame};
use signerd::{KeyName, KeyType, Scheme};

use crate::daemon::{ec_key, metric, random_bytes, unique, Daemon};

const ADMIN: &str = "signerd://dev/admin";
const APP: &str = "signerd://dev/app";

/// Admin may do everything; `extra` adds rules and tables.
fn policy(extra: &str) -> String {
    format!(
        "[[rule]]\nname = \"admin-all\"\neffect = \"allow\"\nidentities = [\"{ADMIN}\"]\n\
         keys = [\"*\"]\nops = [\"*\"]\n\n{extra}"
    )
}

async fn start(name: &str, policy_text: &str) -> Daemon {
    Daemon::start_with_files(
        name,
        "policy = \"policy.toml\"",
        &[("policy.toml", policy_text)],
    )
    .await
}

fn no_retries(d: &Daemon, file: &str) -> signer_client::ClientOptions {
    d.builder(file).max_retries(0).build().unwrap()
}

/// Every audit entry so far, as JSON.
fn audit_entries(d: &Daemon) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(d.path("audit/audit.log")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "entry")
        .collect()
}

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (Status, String) {
    match r.unwrap_err() {
        ClientError::Status {
            status, message, ..
        } => (status, message),
        other => panic!("no status: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_answered_before_the_hsm_audited_counted_and_lists_are_filtered() {
    let d = start(
        "policy-deny",
        &policy(&format!(
            "[[rule]]\nname = \"app-use\"\neffect = \"allow\"\nidentities = [\"{APP}\"]\n\
             keys = [\"app-*\"]\nops = [\"sign\", \"sign_batch\", \"verify\", \"public_key\", \"list\"]\n\n\
             [[rule]]\nname = \"app-not-secret\"\neffect = \"deny\"\nidentities = [\"{APP}\"]\n\
             keys = [\"app-secret*\"]\nops = [\"*\"]\n"
        )),
    )
    .await;
    let admin = d.admin().await;
    let app = d.app().await;
    let ok = unique("app-ok");
    let secret = unique("app-secret");
    let other = unique("other");
    for k in [&ok, &secret, &other] {
        admin.create_key(k, KeyType::EcP256, vec![]).await.unwrap();
    }
    app.sign(&ok, Scheme::EcdsaSha256, random_bytes(32))
        .await
        .unwrap();

    let (status, message) = status_of(
        app.sign(&other, Scheme::EcdsaSha256, random_bytes(32))
            .await,
    );
    assert_eq!(status, Status::PermissionDenied);
    assert!(
        message.contains("not allowed by the access policy"),
        "{message}"
    );
    let (status, secret_message) = status_of(
        app.sign(&secret, Scheme::EcdsaSha256, random_bytes(32))
            .await,
    );
    assert_eq!(status, Status::PermissionDenied);
    // The client is not told which rule refused (or whether a rule names the key): a default
    // deny and a deny rule read the same; the audit record has the rule (below).
    assert!(
        !secret_message.contains("app-not-secret"),
        "{secret_message}"
    );
    assert_eq!(
        secret_message.replace(&secret, "KEY"),
        message.replace(&other, "KEY")
    );
    let (status, _) = status_of(
        app.create_key(&unique("app-new"), KeyType::EcP256, vec![])
            .await,
    );
    assert_eq!(status, Status::PermissionDenied);

    // The app sees only what it may use; the admin sees everything.
    let names = |l: Vec<signer_proto::protocol::KeyListing>| -> Vec<String> {
        l.into_iter().map(|k| k.name.as_str().to_owned()).collect()
    };
    assert_eq!(
        names(app.list_keys().await.unwrap()),
        std::slice::from_ref(&ok)
    );
    let all = names(admin.list_keys().await.unwrap());
    for k in [&ok, &secret, &other] {
        assert!(all.contains(k), "{all:?}");
    }

    assert_eq!(
        metric(&d, "signer_authz_denied_total", &[("op", "sign")]),
        2.0
    );
    assert_eq!(
        metric(&d, "signer_authz_denied_total", &[("op", "create_key")]),
        1.0
    );
    // Audited, with the policy's explanation, and never sent to a partition.
    let denied: Vec<_> = audit_entries(&d)
        .into_iter()
        .filter(|r| r["op"] == "sign" && r["status"] == "permission_denied")
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    for r in &denied {
        assert_eq!(r["identity"], APP);
        assert!(r["partition"].is_null(), "{r}");
    }
    assert!(denied.iter().any(|r| r["key"] == other.as_str()
        && r["detail"]
            .as_str()
            .unwrap()
            .contains("no rule matched: default deny")));
    assert!(denied.iter().any(|r| r["key"] == secret.as_str()
        && r["detail"].as_str().unwrap().contains("\"app-not-secret\"")));
}

async fn raw_sign(conn: &quinn::Connection, key: &str) -> ResponseFrame {
    let request = Request::Sign {
        key: KeyName::new(key).unwrap(),
        version: None,
        scheme: Scheme::EcdsaSha256,
        payload: Bytes::from(random_bytes(32)),
    };
    raw_call(conn, 0, request).await
}

/// One request with `flags` on its own stream of a raw connection, and its answer.
async fn raw_call(conn: &quinn::Connection, flags: u16, request: Request) -> ResponseFrame {
    let op = request.op();
    let frame = RequestFrame {
        flags,
        deadline_ms: 5000,
        request,
    };
    let mut buf = BytesMut::new();
    protocol::encode_request(&frame, &mut buf).unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&buf).await.unwrap();
    send.finish().unwrap();
    let data = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 21))
        .await
        .unwrap()
        .unwrap();
    protocol::decode_response(op, &data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy_without_dropping_connections() {
    let d = start("policy-reload", &policy("")).await;
    let admin = d.admin().await;
    let key = ec_key(&admin, "reload").await;
    let (_ep, conn) = d.raw_connect().await;
    assert_eq!(raw_sign(&conn, &key).await.status, Status::PermissionDenied);

    let allow = policy(&format!(
        "[[rule]]\neffect = \"allow\"\nidentities = [\"{APP}\"]\nkeys = [\"{key}\"]\nops = [\"sign\"]\n"
    ));
    std::fs::write(d.path("policy.toml"), allow).unwrap();
    d.hangup();
    d.wait_log("access policy reloaded", 1).await;
    let resp = raw_sign(&conn, &key).await;
    assert_eq!(resp.status, Status::Ok, "{}", resp.message);

    // An invalid policy is rejected; the previous one stays in force.
    std::fs::write(d.path("policy.toml"), "[[rule]]\neffect = \"perhaps\"\n").unwrap();
    d.hangup();
    d.wait_log("policy reload rejected", 1).await;
    assert!(d.log().contains("previous policy stays in force"));
    assert_eq!(raw_sign(&conn, &key).await.status, Status::Ok);
    assert!(conn.close_reason().is_none(), "the connection was dropped");
    conn.close(0u32.into(), b"done");
}

/// A SIGHUP that arrives while the daemon starts (here: once it has loaded its policy, while it
/// opens the tokens) is never fatal: it is taken over before anything slow, and the reload it
/// asks for runs once the daemon is up. (The handler was installed only after the engine was
/// open: SIGHUP's default action ended the daemon.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_while_starting_does_not_end_the_daemon() {
    let mut d = start("policy-early-hup", &policy("")).await;
    assert!(d.terminate().success());
    let log_path = d.path("early.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_signerd"))
        .args(["serve", "--config"])
        .arg(d.path("signerd.toml"))
        .env("SIGNERD_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let read = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let started = std::time::Instant::now();
    let mut sent = 0;
    while !read().contains("signerd started") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not started:\n{}",
            read()
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the daemon ended ({status}) after {sent} SIGHUPs while starting:\n{}",
                read()
            );
        }
        if read().contains("access policy loaded") {
            let st = std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap();
            assert!(st.success());
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(sent > 0, "no SIGHUP was sent while the daemon started");
    let reload = std::time::Instant::now();
    while !read().contains("access policy reloaded") {
        assert!(reload.elapsed() < Duration::from_secs(10), "{}", read());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(child.try_wait().unwrap().is_none(), "{}", read());
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exceeded_is_overloaded_with_retry_after_and_spares_others() {
    let d = start(
        "policy-quota",
        &policy(&format!(
            "[[rule]]\neffect = \"allow\"\nidentities = [\"{APP}\"]\nkeys = [\"*\"]\n\
             ops = [\"sign\", \"sign_batch\", \"verify\"]\n\n\
             [[quota]]\nidentities = [\"{APP}\"]\nrate = 1\nburst = 2\n"
        )),
    )
    .await;
    let admin = d.admin().await;
    let key = ec_key(&admin, "quota").await;
    let app = Client::connect(no_retries(&d, "client-app.toml"))
        .await
        .unwrap();
    let digest = random_bytes(32);
    let first = app
        .sign(&key, Scheme::EcdsaSha256, digest.clone())
        .await
        .unwrap();
    app.sign(&key, Scheme::EcdsaSha256, random_bytes(32))
        .await
        .unwrap();
    let err = app
        .sign(&key, Scheme::EcdsaSha256, random_bytes(32))
        .await
        .unwrap_err();
    match &err {
        ClientError::Status {
            status: Status::Overloaded,
            retry_after: Some(after),
            ..
        } => assert!(
            *after > Duration::ZERO && *after <= Duration::from_secs(1),
            "{after:?}"
        ),
        other => panic!("expected OVERLOADED with retry-after, got {other:?}"),
    }
    // A listing costs one signature from the rate (it was free: a flood of them ran keys x
    // rules matches unmetered): refused with the bucket empty.
    let (status, _) = status_of(app.list_keys().await);
    assert_eq!(status, Status::Overloaded);
    // A verification takes no signatures from the rate: it passes with the bucket empty.
    assert!(app
        .verify(&key, None, Scheme::EcdsaSha256, digest, first.signature)
        .await
        .expect("verify is not refused by the signature rate"));
    // A batch larger than the burst can never pass: a plain error, not OVERLOADED.
    let (status, message) = status_of(
        app.sign_many(
            &key,
            Scheme::EcdsaSha256,
            (0..3).map(|_| Bytes::from(random_bytes(32))),
            SignOptions::default(),
        )
        .await,
    );
    assert_eq!(status, Status::InvalidArgument, "{message}");
    // Other identities are unaffected.
    for _ in 0..5 {
        admin
            .sign(&key, Scheme::EcdsaSha256, random_bytes(32))
            .await
            .unwrap();
    }
    assert!(metric(&d, "signer_overloaded_total", &[("reason", "quota")]) >= 1.0);
    // After the advertised wait, the app signs again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.sign(&key, Scheme::EcdsaSha256, random_bytes(32))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_key_needs_two_different_admins() {
    let d = start(
        "policy-approval",
        &policy(&format!(
            "[[rule]]\nname = \"second-admin\"\neffect = \"allow\"\nidentities = [\"{APP}\"]\n\
             keys = [\"*\"]\nops = [\"*\"]\n\n[approval]\ndestroy_key = true\nwindow = \"10m\"\n"
        )),
    )
    .await;
    let first = d.admin().await;
    let second = d.app().await;
    let key = unique("approve");
    first
        .create_key(&key, KeyType::EcP256, vec![])
        .await
        .unwrap();
    assert_eq!(first.rotate_key(&key).await.unwrap().version, 2);

    let (status, message) = status_of(first.destroy_key(&key, 1).await);
    assert_eq!(status, Status::PermissionDenied);
    assert!(message.starts_with("approval pending"), "{message}");
    // The same admin again approves nothing.
    let (status, message) = status_of(first.destroy_key(&key, 1).await);
    assert_eq!(status, Status::PermissionDenied);
    assert!(message.contains("different admin"), "{message}");
    let versions = |l: Vec<signer_proto::protocol::KeyListing>| -> Vec<u32> {
        l.into_iter()
            .find(|k| k.name.as_str() == key)
            .unwrap()
            .versions
            .iter()
            .map(|v| v.version)
            .collect()
    };
    assert_eq!(versions(first.list_keys().await.unwrap()), [1, 2]);
    // A different version is a different request.
    let (status, _) = status_of(second.destroy_key(&key, 2).await);
    assert_eq!(status, Status::PermissionDenied);

    // A second admin approves: carried out.
    second.destroy_key(&key, 1).await.unwrap();
    assert_eq!(versions(first.list_keys().await.unwrap()), [2]);

    let entries = audit_entries(&d);
    let of = |op: &str| -> Vec<&serde_json::Value> {
        entries
            .iter()
            .filter(|r| r["op"] == op && r["key"] == key.as_str())
            .collect()
    };
    let requests = of("destroy_key.request");
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(
        requests.iter().filter(|r| r["identity"] == ADMIN).count(),
        2
    );
    // The approval's intent is recorded (durably) before the destroy runs, then its outcome.
    let approvals = of("destroy_key.approve");
    assert_eq!(approvals.len(), 2, "{approvals:?}");
    assert_eq!(approvals[0]["status"], "started");
    assert_eq!(approvals[0]["version"], 1);
    assert_eq!(approvals[1]["identity"], APP);
    assert_eq!(approvals[1]["status"], "ok");
    assert_eq!(approvals[1]["version"], 1);
    assert!(approvals[1]["detail"].as_str().unwrap().contains(ADMIN));
    // Every admin op: intent, then outcome.
    for op in ["create_key", "rotate_key"] {
        let records = of(op);
        let statuses: Vec<_> = records
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["started", "ok"], "{op}: {records:?}");
    }
}

/// The requester of a pending destroy is authorized again when the approval arrives: an admin
/// whose destroy right a reload took away cannot have the destroy carried out by a second
/// admin's approval. (The approval alone was checked: the old code destroyed the version.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_re_authorizes_the_requester() {
    let approver = format!(
        "[[rule]]\nname = \"second-admin\"\neffect = \"allow\"\nidentities = [\"{APP}\"]\n\
         keys = [\"*\"]\nops = [\"*\"]\n\n[approval]\ndestroy_key = true\nwindow = \"10m\"\n"
    );
    let d = start("policy-reauthorize", &policy(&approver)).await;
    let first = d.admin().await;
    let second = d.app().await;
    let key = unique("reauth");
    first
        .create_key(&key, KeyType::EcP256, vec![])
        .await
        .unwrap();
    first.rotate_key(&key).await.unwrap();
    let (status, message) = status_of(first.destroy_key(&key, 1).await);
    assert_eq!(status, Status::PermissionDenied);
    assert!(message.starts_with("approval pending"), "{message}");

    // The requester loses destroy_key (it keeps the other admin ops).
    let reduced = format!(
        "[[rule]]\nname = \"admin-no-destroy\"\neffect = \"allow\"\nidentities = [\"{ADMIN}\"]\n\
         keys = [\"*\"]\nops = [\"create_key\", \"rotate_key\", \"retire_key\", \"list\", \"public_key\"]\n\n{approver}"
    );
    std::fs::write(d.path("policy.toml"), reduced).unwrap();
    d.hangup();
    d.wait_log("access policy reloaded", 1).await;

    let (status, message) = status_of(second.destroy_key(&key, 1).await);
    assert_eq!(status, Status::PermissionDenied, "{message}");
    assert!(message.contains("may no longer run it"), "{message}");
    let listed = first.list_keys().await.unwrap();
    let versions: Vec<u32> = listed
        .iter()
        .find(|k| k.name.as_str() == key)
        .unwrap()
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(versions, [1, 2], "nothing was destroyed");
    let denied: Vec<_> = audit_entries(&d)
        .into_iter()
        .filter(|r| {
            r["key"] == key.as_str() && r["status"] == "permission_denied" && r["identity"] == APP
        })
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(
        denied[0]["detail"]
            .as_str()
            .unwrap()
            .contains("re-authorized"),
        "{denied:?}"
    );
}

#[test]
fn policy_check_cli_prints_the_rule_and_exits_by_decision() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("policy-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("policy.toml");
    std::fs::write(
        &file,
        policy(&format!(
            "[[rule]]\nname = \"app-sign\"\neffect = \"allow\"\nidentities = [\"{APP}\"]\n\
             keys = [\"pay-*\"]\nops = [\"sign\"]\n\n[[rule]]\nname = \"no-old\"\n\
             effect = \"deny\"\nidentities = [\"*\"]\nkeys = [\"pay-old\"]\nops = [\"*\"]\n"
        )),
    )
    .unwrap();
    let run = |identity: &str, key: &str, op: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_signerd"))
            .args(["policy", "check", "--policy"])
            .arg(&file)
            .args(["--identity", identity, "--key", key, "--op", op])
            .args(["--scheme", "ecdsa-sha256"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = run(APP, "pay-1", "sign");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("allow rule \"app-sign\""), "{out}");
    let (code, out) = run(APP, "pay-old", "sign");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("deny rule \"no-old\""), "{out}");
    let (code, out) = run("signerd://dev/nobody", "pay-1", "sign");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("default deny"), "{out}");
    let (code, out) = run(APP, "pay-1", "sing");
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("unknown op"), "{out}");
    std::fs::write(&file, "[[rule]]\n").unwrap();
    let (code, _) = run(APP, "pay-1", "sign");
    assert_eq!(code, Some(2));
}

/// A SignBatch of `n` random digests over a raw connection, with `flags`.
async fn raw_sign_batch(
    conn: &quinn::Connection,
    key: &str,
    n: usize,
    flags: u16,
) -> ResponseFrame {
    let request = Request::SignBatch {
        key: KeyName::new(key).unwrap(),
        version: None,
        scheme: Scheme::EcdsaSha256,
        payloads: (0..n).map(|_| Bytes::from(random_bytes(32))).collect(),
    };
    raw_call(conn, flags, request).await
}

/// `COALESCED_CALLS`: a SignBatch that carries independent calls is authorized, counted and
/// audited as that many `sign` calls. An identity allowed only `sign` gets them signed (a plain
/// SignBatch stays denied); denials and answers count per call, as `sign`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_calls_are_authorized_counted_and_audited_as_signs() {
    let d = start("policy-coalesced", &policy("")).await;
    let admin = d.admin().await;
    let key = ec_key(&admin, "coal").await;
    let denied_key = ec_key(&admin, "coal-no").await;
    let allow = policy(&format!(
        "[[rule]]\nname = \"app-sign\"\neffect = \"allow\"\nidentities = [\"{APP}\"]\n\
         keys = [\"{key}\"]\nops = [\"sign\"]\n"
    ));
    std::fs::write(d.path("policy.toml"), allow).unwrap();
    d.hangup();
    d.wait_log("access policy reloaded", 1).await;
    let (_ep, conn) = d.raw_connect().await;
    let sign_ok = |d: &Daemon| {
        metric(
            d,
            "signer_requests_total",
            &[("op", "sign"), ("status", "ok")],
        )
    };
    let sign_denied = |d: &Daemon| metric(d, "signer_authz_denied_total", &[("op", "sign")]);
    let (ok_before, denied_before) = (sign_ok(&d), sign_denied(&d));
    let records_before = audit_entries(&d).len();

    // Plain SignBatch: sign_batch is not granted.
    let resp = raw_sign_batch(&conn, &key, 3, 0).await;
    assert_eq!(resp.status, Status::PermissionDenied, "{}", resp.message);
    // Coalesced: five sign calls, each signed and verified.
    let resp = raw_sign_batch(&conn, &key, 5, protocol::COALESCED_CALLS).await;
    assert_eq!(resp.status, Status::Ok, "{}", resp.message);
    let Some(protocol::ResponseBody::Batch(items)) = resp.body else {
        panic!("not a batch answer: {resp:?}");
    };
    assert_eq!(items.len(), 5);
    assert!(
        items
            .iter()
            .all(|i| matches!(i, protocol::BatchItem::Signed { .. })),
        "{items:?}"
    );
    // Coalesced calls on a key the identity may not sign: denied, once per call.
    let resp = raw_sign_batch(&conn, &denied_key, 4, protocol::COALESCED_CALLS).await;
    assert_eq!(resp.status, Status::PermissionDenied, "{}", resp.message);

    assert_eq!(sign_ok(&d) - ok_before, 5.0, "five sign calls answered OK");
    assert_eq!(
        sign_denied(&d) - denied_before,
        4.0,
        "four sign calls denied"
    );
    let new: Vec<_> = audit_entries(&d).split_off(records_before);
    let signed = new
        .iter()
        .filter(|r| r["op"] == "sign" && r["status"] == "ok" && r["key"] == key.as_str())
        .count();
    let denied = new
        .iter()
        .filter(|r| {
            r["op"] == "sign"
                && r["status"] == "permission_denied"
                && r["key"] == denied_key.as_str()
        })
        .count();
    assert_eq!((signed, denied), (5, 4), "{new:#?}");
    conn.close(0u32.into(), b"done");
}
