//! One PKCS#11 call of one request fails (`count = 1`): scenarios 1, 4, 7, 12 and 22. Keys live
//! on `p0` (token `signerd-0`) only, so the request and the fault meet on the same token, and
//! partitions have one worker each, so every request meets the same session. Each test signs
//! once before the fault, so the fault hits a session that already holds the key's handle and
//! the PKCS#11 calls of the recovery can be counted exactly.

use std::time::{Duration, Instant};

use bytes::Bytes;
use certnode_pkcs11_fault::Stats;
use signer_client::{SignOptions, Status};
use signerd::Scheme;

use crate::support::{random_digest, sign_ok, status_of, Daemon};
use crate::verify::verify;

const TIMEOUT: Duration = Duration::from_secs(5);

fn rule(name: &str, function: &str, rv: &str) -> String {
    format!(
        "[[rule]]\nname = \"{name}\"\nkind = \"error\"\nfunction = \"{function}\"\n\
         token = \"signerd-0\"\nrv = \"{rv}\"\ncount = 1\n"
    )
}

/// Scenario 1: `C_Sign` answers SESSION_HANDLE_INVALID once. The worker rebuilds its session,
/// finds the key again, retries once and signs; one rebuild, one audit record, p0 stays in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s01_session_handle_invalid_rebuilds_the_session_and_retries_once() {
    let d = Daemon::start_one_worker("s01").await;
    let (key, spki) = d.ec_key("s01", &["p0"]).await;
    let app = d.app(TIMEOUT).await;
    sign_ok(&app, &key, &spki, &random_digest()).await;
    d.faults(&rule("lost", "C_Sign", "CKR_SESSION_HANDLE_INVALID"))
        .await;
    let before = d.stats_now();

    let digest = random_digest();
    sign_ok(&app, &key, &spki, &digest).await;

    let s = d
        .stats_when("the fault fired", |s| s.injected("lost") == 1)
        .await;
    let delta = |f: &str| s.calls(f) - before.calls(f);
    // cryptoki signs with C_SignInit, then C_Sign twice (length query, then the signature);
    // the fault hits the first C_Sign of the first attempt.
    assert_eq!(delta("C_SignInit"), 2, "the failed attempt and one retry");
    assert_eq!(delta("C_Sign"), 3);
    assert_eq!(delta("C_CloseSession"), 1, "the lost session is closed");
    assert_eq!(delta("C_OpenSession"), 1, "one fresh session");
    assert_eq!(delta("C_CopyObject"), 1, "the key found again on it");
    assert_eq!(delta("C_Login"), 0);
    let m = d.metrics().await;
    assert_eq!(m.rebuilds("p0"), 1.0);
    assert_eq!(m.rebuilds("p1"), 0.0);
    assert_eq!(m.healthy("p0"), 1.0);
    assert_eq!(
        m.value("signer_breaker_state", &[("partition", "p0")]),
        0.0,
        "the breaker does not trip"
    );
    let records = d.audit_of(&digest);
    assert_eq!(records.len(), 1, "one audit record: {records:?}");
    let r = &records[0];
    assert_eq!(
        (&r["status"], &r["partition"], &r["key"]),
        (&"ok".into(), &"p0".into(), &key.as_str().into()),
        "{r}"
    );
    let log = d.log();
    assert!(
        log.contains("session lost") && log.contains("rebuilding"),
        "{log}"
    );

    // The fault is spent; the rebuilt session keeps signing, nothing else is rebuilt.
    for _ in 0..5 {
        sign_ok(&app, &key, &spki, &random_digest()).await;
    }
    assert_eq!(d.metrics().await.rebuilds("p0"), 1.0);
}

/// Scenario 4: `C_Sign` answers USER_NOT_LOGGED_IN once: the request is retried and signed,
/// without a session rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_user_not_logged_in_is_retried_and_signed() {
    let d = Daemon::start_one_worker("s04").await;
    let (key, spki) = d.ec_key("s04", &["p0"]).await;
    let app = d.app(TIMEOUT).await;
    sign_ok(&app, &key, &spki, &random_digest()).await;
    d.faults(&rule("logout", "C_Sign", "CKR_USER_NOT_LOGGED_IN"))
        .await;
    let before = d.stats_now();

    let digest = random_digest();
    sign_ok(&app, &key, &spki, &digest).await;

    let s = d
        .stats_when("the fault fired", |s| s.injected("logout") == 1)
        .await;
    assert_eq!(
        s.calls("C_SignInit") - before.calls("C_SignInit"),
        2,
        "one retry"
    );
    assert_eq!(s.calls("C_OpenSession"), before.calls("C_OpenSession"));
    let m = d.metrics().await;
    assert_eq!(m.rebuilds("p0"), 0.0);
    assert_eq!(m.healthy("p0"), 1.0);
    assert_eq!(d.audit_of(&digest).len(), 1, "one audit record");
    for _ in 0..3 {
        sign_ok(&app, &key, &spki, &random_digest()).await;
    }
}

/// Scenario 4, the re-login: after USER_NOT_LOGGED_IN the worker logs the token in again (one
/// serialized `C_Login`, "logging in again" in the log) before it retries.
///
/// The fault module answers USER_NOT_LOGGED_IN without logging SoftHSM2 out, so the session
/// still reports a user session: the worker must believe the token's answer, not the session
/// state (SoftHSM2 then answers the `C_Login` with USER_ALREADY_LOGGED_IN, which counts as
/// restored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_user_not_logged_in_logs_in_again_once() {
    let d = Daemon::start_one_worker("s04-login").await;
    let (key, spki) = d.ec_key("s04l", &["p0"]).await;
    let app = d.app(TIMEOUT).await;
    sign_ok(&app, &key, &spki, &random_digest()).await;
    d.faults(&rule("logout", "C_Sign", "CKR_USER_NOT_LOGGED_IN"))
        .await;
    let before = d.stats_now();

    sign_ok(&app, &key, &spki, &random_digest()).await;

    let s = d
        .stats_when("the fault fired", |s| s.injected("logout") == 1)
        .await;
    assert_one_relogin(&d, &before, &s);
}

/// Between the `before` and `after` stats: exactly one `C_Login`, and one "logging in again"
/// line in the daemon's log.
fn assert_one_relogin(d: &Daemon, before: &Stats, after: &Stats) {
    let log = d.log();
    assert_eq!(
        after.calls("C_Login") - before.calls("C_Login"),
        1,
        "one re-login; log:\n{log}"
    );
    assert_eq!(log.matches("logging in again").count(), 1, "{log}");
}

/// Scenario 4 with several workers on the partition: when every worker's call is answered
/// USER_NOT_LOGGED_IN at once, the partition logs in again once, not once per worker (the login
/// epoch read before each call makes the re-login single-flight), and every request is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s04_logged_out_answers_to_every_worker_cost_one_login() {
    const WORKERS: u64 = 4;
    const SLOW: Duration = Duration::from_secs(4);
    const LOGIN: Duration = Duration::from_secs(3);
    let mut d = Daemon::init("s04-many");
    d.edit_config(|cfg| {
        let provider = cfg["providers"]["softhsm"].as_table_mut().unwrap();
        provider.insert("workers_per_partition".into(), (WORKERS as i64).into());
        // The slow calls below must not count as hung.
        let engine = cfg["engine"].as_table_mut().unwrap();
        engine.insert("hang_timeout".into(), "1m".into());
    });
    d.serve().await;
    let (key, spki) = d.ec_key("s04m", &["p0"]).await;
    let app = d.app(Duration::from_secs(30)).await;
    let sign = || {
        let (app, key, spki) = (app.clone(), key.clone(), spki.clone());
        tokio::spawn(async move { sign_ok(&app, &key, &spki, &random_digest()).await })
    };
    // Concurrent requests go to idle workers: every session of p0 opens and finds the key.
    for t in (0..2 * WORKERS).map(|_| sign()).collect::<Vec<_>>() {
        t.await.expect("warm-up sign");
    }
    // The next WORKERS `C_SignInit` calls on p0 each take SLOW, and then each one's `C_Sign` is
    // told the token is logged out. The re-login's `C_Login` takes LOGIN, longer than the
    // calls' starts are spread: every worker is told before the first retry could take one of
    // the `count` firings meant for another worker's first call.
    d.faults(&format!(
        "[[rule]]\nname = \"slow\"\nkind = \"latency\"\nfunction = \"C_SignInit\"\n\
         token = \"signerd-0\"\nfixed_ms = {}\ncount = {WORKERS}\n\n\
         [[rule]]\nname = \"logout\"\nkind = \"error\"\nfunction = \"C_Sign\"\n\
         token = \"signerd-0\"\nrv = \"CKR_USER_NOT_LOGGED_IN\"\ncount = {WORKERS}\n\n\
         [[rule]]\nname = \"slow-login\"\nkind = \"latency\"\nfunction = \"C_Login\"\n\
         token = \"signerd-0\"\nfixed_ms = {}\ncount = 1\n",
        SLOW.as_millis(),
        LOGIN.as_millis()
    ))
    .await;
    let before = d.stats_now();

    // One request at a time until it is inside its slow call, so that the next one goes to an
    // idle worker.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 1..=WORKERS {
        tasks.push(sign());
        while d.stats_now().calls("C_SignInit") < before.calls("C_SignInit") + i {
            assert!(
                started.elapsed() < LOGIN,
                "request {i} never reached the HSM"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let spread = started.elapsed();
    assert!(
        spread < LOGIN,
        "the calls must start within {LOGIN:?} of each other, took {spread:?}"
    );
    for t in tasks {
        t.await.expect("sign task");
    }

    let s = d
        .stats_when("every worker was told it is logged out", |s| {
            s.injected("logout") == WORKERS
        })
        .await;
    assert_one_relogin(&d, &before, &s);
    assert_eq!(
        s.calls("C_SignInit") - before.calls("C_SignInit"),
        2 * WORKERS,
        "each request retried once"
    );
    let m = d.metrics().await;
    assert_eq!(m.healthy("p0"), 1.0);
    assert_eq!(m.rebuilds("p0"), 0.0);
}

/// Scenario 7: `C_Sign` rejects one request's input (DATA_LEN_RANGE): that request fails
/// INVALID_ARGUMENT (not retried), the partition stays in rotation, the next requests sign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s07_input_error_fails_only_that_request() {
    let d = Daemon::start_one_worker("s07").await;
    let (key, spki) = d.ec_key("s07", &["p0"]).await;
    let app = d.app(TIMEOUT).await;
    sign_ok(&app, &key, &spki, &random_digest()).await;
    d.faults(&rule("input", "C_Sign", "CKR_DATA_LEN_RANGE"))
        .await;
    let before = d.stats_now();

    let digest = random_digest();
    let err = app
        .sign(&key, Scheme::EcdsaSha256, digest.clone())
        .await
        .unwrap_err();
    let (status, retry_after) = status_of(&err);
    assert_eq!(status, Status::InvalidArgument, "{err}");
    assert_eq!(retry_after, None, "{err}");
    assert!(
        err.to_string().contains("HSM rejected the request"),
        "{err}"
    );

    let s = d
        .stats_when("the fault fired", |s| s.injected("input") == 1)
        .await;
    assert_eq!(
        s.calls("C_SignInit") - before.calls("C_SignInit"),
        1,
        "no retry"
    );
    let m = d.metrics().await;
    assert_eq!(m.healthy("p0"), 1.0, "the partition stays");
    assert_eq!(m.rebuilds("p0"), 0.0);
    assert_eq!(
        m.value(
            "signer_requests_total",
            &[("op", "sign"), ("status", "invalid_argument")]
        ),
        1.0
    );
    let (code, ready) = d.get("/readyz").await;
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("p0: ok"), "{ready}");
    let records = d.audit_of(&digest);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["status"], "invalid_argument", "{}", records[0]);

    for _ in 0..10 {
        sign_ok(&app, &key, &spki, &random_digest()).await;
    }
    assert_eq!(d.metrics().await.healthy("p0"), 1.0);
}

/// Scenario 12: a stale key handle (OBJECT_HANDLE_INVALID at `C_SignInit`): the worker drops
/// the handle, finds the key again by its id, retries once, and the signature is by that key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s12_stale_object_handle_finds_the_key_again_by_id() {
    let d = Daemon::start_one_worker("s12").await;
    // A second key on the same token, so that a wrong handle could name another key.
    let (other, _) = d.ec_key("s12-other", &["p0"]).await;
    let (key, spki) = d.ec_key("s12", &["p0"]).await;
    let app = d.app(TIMEOUT).await;
    sign_ok(&app, &key, &spki, &random_digest()).await;
    app.sign(&other, Scheme::EcdsaSha256, random_digest())
        .await
        .unwrap();
    d.faults(&rule("stale", "C_SignInit", "CKR_OBJECT_HANDLE_INVALID"))
        .await;
    let before = d.stats_now();

    let digest = random_digest();
    sign_ok(&app, &key, &spki, &digest).await;

    let s = d
        .stats_when("the fault fired", |s| s.injected("stale") == 1)
        .await;
    let delta = |f: &str| s.calls(f) - before.calls(f);
    assert_eq!(delta("C_SignInit"), 2, "the failed init and one retry");
    assert_eq!(
        delta("C_Sign"),
        2,
        "one signature (length query and signature)"
    );
    assert_eq!(delta("C_FindObjectsInit"), 1, "the key looked up again");
    assert_eq!(
        delta("C_CopyObject"),
        1,
        "and copied into the session again"
    );
    assert_eq!(delta("C_OpenSession"), 0, "on the same session");
    let m = d.metrics().await;
    assert_eq!(m.rebuilds("p0"), 0.0);
    assert_eq!(m.healthy("p0"), 1.0);
    assert_eq!(d.audit_of(&digest).len(), 1);
    let log = d.log();
    assert_eq!(log.matches("stale key handle").count(), 1, "{log}");
    for _ in 0..3 {
        sign_ok(&app, &key, &spki, &random_digest()).await;
    }
}

/// Scenario 22: a batch holds one request the HSM rejects: only that item fails; every other
/// item is signed, and each signature verifies against its own digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s22_one_poisoned_request_in_a_batch_fails_alone() {
    const N: usize = 32;
    let d = Daemon::start("s22").await;
    let (key, spki) = d.ec_key("s22", &["p0"]).await;
    let app = d.app(TIMEOUT).await;
    sign_ok(&app, &key, &spki, &random_digest()).await;
    d.faults(&rule("poison", "C_Sign", "CKR_DATA_LEN_RANGE"))
        .await;

    let digests: Vec<Vec<u8>> = (0..N).map(|_| random_digest()).collect();
    let results = app
        .sign_many(
            &key,
            Scheme::EcdsaSha256,
            digests.iter().cloned().map(Bytes::from),
            SignOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(results.len(), N);
    let mut failed = Vec::new();
    for (i, (digest, r)) in digests.iter().zip(&results).enumerate() {
        match r {
            Ok(sig) => {
                let sig = sig.plain().expect("a plain signature");
                verify(&spki, Scheme::EcdsaSha256, digest, sig)
                    .unwrap_or_else(|e| panic!("item {i} is not signed over its own digest: {e}"));
                // Not over any other item's digest either.
                for (j, other) in digests.iter().enumerate() {
                    if j != i {
                        assert!(verify(&spki, Scheme::EcdsaSha256, other, sig).is_err());
                    }
                }
            }
            Err(e) => {
                assert_eq!(status_of(e).0, Status::InvalidArgument, "item {i}: {e}");
                failed.push(i);
            }
        }
    }
    assert_eq!(failed.len(), 1, "exactly one item fails: {failed:?}");
    let s = d
        .stats_when("the fault fired", |s| s.injected("poison") == 1)
        .await;
    assert_eq!(s.injected("poison"), 1);
    // The audit log has one record per item, matched by digest, with that item's outcome.
    for (i, digest) in digests.iter().enumerate() {
        let records = d.audit_of(digest);
        assert_eq!(records.len(), 1, "item {i}: {records:?}");
        let want = if failed.contains(&i) {
            "invalid_argument"
        } else {
            "ok"
        };
        assert_eq!(records[0]["status"], want, "item {i}");
    }
    assert_eq!(d.metrics().await.healthy("p0"), 1.0);
}
