//! More requests than the daemon can hold (scenario 21) and SIGTERM with requests in flight
//! (scenario 13), with the HSM slowed down by the fault module so that queues fill up.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signer_client::{Client, Status};
use signerd::Scheme;

use crate::support::{random_digest, sha256_hex, status_of, warm_up, Daemon, WORKERS};
use crate::verify::verify;

const QUEUE_DEPTH: i64 = 4;

/// Scenario 21: `queue_depth = 4` per worker, every signature 120 ms slower, 200 requests at
/// once: whatever does not fit is answered OVERLOADED at once (with a retry hint), every request
/// is answered, queues never exceed their depth, and the daemon signs normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s21_full_queues_answer_overloaded_at_once() {
    const N: usize = 200;
    let mut d = Daemon::init("s21");
    d.edit_config(|cfg| {
        cfg["engine"]
            .as_table_mut()
            .unwrap()
            .insert("queue_depth".into(), QUEUE_DEPTH.into());
    });
    d.serve().await;
    let (key, spki) = d.ec_key("s21", &[]).await;
    // One request per call (no coalescing): this is about how fast each request is shed; a
    // coalesced call's answer waits for its request's slowest item.
    let opts = d
        .builder("client-app.toml")
        .max_retries(0)
        .timeout(Duration::from_secs(20))
        .coalesce(1)
        .build()
        .unwrap();
    let app = Client::connect(opts).await.unwrap();
    // Warm up (sessions, key copies, the connection) before measuring memory.
    warm_up(&app, &key, &spki, 20).await;
    let (rss_before, _) = d.memory_kb();
    let fast = |m: &crate::support::Metrics| {
        m.at_most("signer_request_duration_seconds", &[("op", "sign")], 0.1)
    };
    let fast_before = fast(&d.metrics().await);
    d.faults(
        "[[rule]]\nname = \"slow\"\nkind = \"latency\"\nfunction = \"C_Sign\"\nfixed_ms = 120\n",
    )
    .await;

    let mut tasks = Vec::new();
    for _ in 0..N {
        let (app, key) = (app.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let digest = random_digest();
            let started = Instant::now();
            let r = app.sign(&key, Scheme::EcdsaSha256, digest.clone()).await;
            (digest, r, started.elapsed())
        }));
    }
    // Sample the queue gauges while the burst is being worked through.
    let mut deepest = 0.0f64;
    for _ in 0..5 {
        let m = d.metrics().await;
        deepest = m
            .all("signer_queue_depth")
            .into_iter()
            .fold(deepest, f64::max);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut signed = 0usize;
    let mut overloaded_took = Vec::new();
    for t in tasks {
        let (digest, r, took) = t.await.unwrap();
        match r {
            Ok(sig) => {
                verify(&spki, Scheme::EcdsaSha256, &digest, &sig.signature).unwrap();
                signed += 1;
            }
            Err(e) => {
                let (status, retry_after) = status_of(&e);
                assert_eq!(status, Status::Overloaded, "{e}");
                assert!(retry_after.is_some_and(|r| r > Duration::ZERO), "{e}");
                overloaded_took.push(took);
            }
        }
    }
    overloaded_took.sort();
    let overloaded = overloaded_took.len();
    let median = overloaded_took
        .get(overloaded / 2)
        .copied()
        .unwrap_or_default();
    let slowest = overloaded_took.last().copied().unwrap_or_default();
    eprintln!(
        "burst of {N}: {signed} signed, {overloaded} overloaded (median {median:?}, slowest \
         {slowest:?}), deepest queue seen {deepest}"
    );
    assert_eq!(signed + overloaded, N, "every request answered");
    assert!(signed >= 8, "the workers kept signing: {signed}");
    assert!(
        overloaded >= N / 2,
        "most of the burst was shed: {overloaded}"
    );
    // Shed at once, without waiting for the HSM. Every signature took over 100 ms (its C_Sign
    // is delayed 120 ms; the size query before it is not charged), so the requests the daemon answered within 100 ms (server-side: stream
    // accepted to answer written) must be exactly the OVERLOADED ones. Observed: almost all
    // within 10 ms; the odd one up to ~75 ms when the 2 cores are busy with the other tests
    // (that time includes reading the request frame while the client is still sending the
    // burst). Client-side times also hold the client getting the whole burst out.
    let m = d.metrics().await;
    assert_eq!(
        fast(&m) - fast_before,
        overloaded as f64,
        "OVERLOADED answers are immediate"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "OVERLOADED answers are immediate: slowest {slowest:?} (client-side)"
    );
    assert!(
        deepest <= QUEUE_DEPTH as f64,
        "queues stay bounded: {deepest}"
    );
    assert_eq!(
        m.value("signer_overloaded_total", &[("reason", "queue_full")]),
        overloaded as f64
    );
    assert_eq!(
        m.value(
            "signer_requests_total",
            &[("op", "sign"), ("status", "overloaded")]
        ),
        overloaded as f64
    );
    assert_eq!(m.all("signer_queue_depth").iter().sum::<f64>(), 0.0);
    let (rss_after, _) = d.memory_kb();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory stays bounded: {rss_before} kB -> {rss_after} kB"
    );
    // No stall: with the fault lifted, sequential requests sign at once.
    d.faults("").await;
    for _ in 0..10 {
        let digest = random_digest();
        let started = Instant::now();
        let sig = app
            .sign(&key, Scheme::EcdsaSha256, digest.clone())
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        verify(&spki, Scheme::EcdsaSha256, &digest, &sig.signature).unwrap();
    }
}

/// Requests sent before SIGTERM, the HSM 20 ms slower per call (40 ms per signature: 4
/// workers need about 2 s for all of them).
const IN_FLIGHT: usize = 200;
/// SIGTERM goes out once this many signatures are back.
const FIRST_SIGNED: usize = 5;

struct Drained {
    d: Daemon,
    exit: std::process::ExitStatus,
    /// Digests we received a (verified) signature for.
    signed: HashSet<String>,
    /// Digests answered UNAVAILABLE.
    unavailable: HashSet<String>,
}

/// Starts a daemon with a 300 ms shutdown grace period and `C_Sign` +20 ms, puts IN_FLIGHT
/// requests in flight, sends SIGTERM once FIRST_SIGNED are signed, and collects every answer.
async fn sigterm_with_requests_in_flight(name: &str) -> Drained {
    let mut d = Daemon::init(name);
    d.edit_config(|cfg| {
        cfg["server"]
            .as_table_mut()
            .unwrap()
            .insert("shutdown_grace".into(), "300ms".into());
    });
    d.serve().await;
    let (key, spki) = d.ec_key(name, &[]).await;
    let app = d.app(Duration::from_secs(30)).await;
    warm_up(&app, &key, &spki, WORKERS).await;
    d.faults(
        "[[rule]]\nname = \"slow\"\nkind = \"latency\"\nfunction = \"C_Sign\"\nfixed_ms = 40\n",
    )
    .await;
    let answered_ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (app, key, ok) = (app.clone(), key.clone(), Arc::clone(&answered_ok));
        tasks.push(tokio::spawn(async move {
            let digest = random_digest();
            let r = app.sign(&key, Scheme::EcdsaSha256, digest.clone()).await;
            if r.is_ok() {
                ok.fetch_add(1, Ordering::SeqCst);
            }
            (digest, r)
        }));
    }
    // SIGTERM once the first signatures are back: the rest (about 2 s of HSM work) is in flight.
    let started = Instant::now();
    while answered_ok.load(Ordering::SeqCst) < FIRST_SIGNED {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing signed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let exit = tokio::task::block_in_place(|| d.terminate());
    let mut signed = HashSet::new();
    let mut unavailable = HashSet::new();
    for t in tasks {
        let (digest, r) = t.await.unwrap();
        match r {
            Ok(sig) => {
                verify(&spki, Scheme::EcdsaSha256, &digest, &sig.signature).unwrap();
                signed.insert(sha256_hex(&digest));
            }
            Err(e) => {
                let (status, retry_after) = status_of(&e);
                assert_eq!(status, Status::Unavailable, "{e}");
                assert!(retry_after.is_some_and(|r| r > Duration::ZERO), "{e}");
                unavailable.insert(sha256_hex(&digest));
            }
        }
    }
    eprintln!(
        "SIGTERM: {} signed, {} UNAVAILABLE",
        signed.len(),
        unavailable.len()
    );
    assert_eq!(signed.len() + unavailable.len(), IN_FLIGHT);
    Drained {
        d,
        exit,
        signed,
        unavailable,
    }
}

/// Scenario 13: every request in flight is answered (signed, or UNAVAILABLE with a retry hint),
/// the daemon stops by itself, never finalizes the module twice, and the sealed audit log
/// verifies and holds a record for every signature we received. (Exit status 0 and exactly one
/// `C_Finalize`: s13_every_clean_shutdown_exits_0_and_finalizes_once, ignored: not reliable yet.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_sigterm_answers_everything_in_flight_and_seals_the_audit_log() {
    let Drained {
        d,
        exit,
        signed,
        unavailable,
    } = sigterm_with_requests_in_flight("s13").await;
    eprintln!("s13: daemon exit status {exit}");
    assert!(signed.len() >= FIRST_SIGNED, "some requests were signed");
    assert!(!unavailable.is_empty(), "the rest was answered UNAVAILABLE");
    let (ok, report) = d.audit_verify();
    assert!(ok && report.starts_with("OK"), "audit verify: {report}");
    // The module writes its stats at C_Finalize, before the process exits.
    assert!(d.stats_now().finalizes <= 1, "finalized at most once");
    let log = d.log();
    assert!(log.contains("audit log closed"), "{log}");
    let ok_records: HashSet<String> = d
        .audit_entries()
        .into_iter()
        .filter(|r| r["op"] == "sign" && r["status"] == "ok")
        .map(|r| r["payload_sha256"].as_str().unwrap().to_owned())
        .collect();
    for h in &signed {
        assert!(
            ok_records.contains(h),
            "signature without an audit record: {h}"
        );
    }
}

/// Scenario 13, the requests answered UNAVAILABLE: the client was told its request was not
/// signed, so the daemon must not go on to sign it after all (an HSM signature nobody receives,
/// recorded in the audit log as a successful signature).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_requests_answered_unavailable_at_shutdown_are_not_signed() {
    let Drained { d, unavailable, .. } = sigterm_with_requests_in_flight("s13-unsigned").await;
    let ok_after_unavailable: Vec<_> = d
        .audit_entries()
        .into_iter()
        .filter(|r| r["op"] == "sign" && r["status"] == "ok")
        .filter(|r| unavailable.contains(r["payload_sha256"].as_str().unwrap()))
        .collect();
    assert!(
        ok_after_unavailable.is_empty(),
        "{} of {} requests answered UNAVAILABLE were signed and audited as ok, e.g. {}",
        ok_after_unavailable.len(),
        unavailable.len(),
        ok_after_unavailable[0]
    );
}

/// Scenario 13, a clean exit: every SIGTERM shutdown exits 0 and calls `C_Finalize` exactly once
/// (the module counts it and writes its stats file during the call). Several start, sign,
/// SIGTERM cycles on one set-up, because both failures are intermittent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s13_every_clean_shutdown_exits_0_and_finalizes_once() {
    const CYCLES: usize = 12;
    let mut d = Daemon::init("s13-exit");
    let mut outcomes = Vec::new();
    let mut key = None;
    for _ in 0..CYCLES {
        let _ = std::fs::remove_file(d.path("stats.json"));
        d.serve().await;
        let (name, spki) = match &key {
            Some(k) => k,
            None => key.insert(d.ec_key("s13-exit", &[]).await),
        };
        let app = d.app(Duration::from_secs(5)).await;
        warm_up(&app, name, spki, WORKERS).await;
        app.close();
        let exit = tokio::task::block_in_place(|| d.terminate());
        outcomes.push((exit.code(), d.stats_now().finalizes));
    }
    assert!(
        outcomes.iter().all(|o| *o == (Some(0), 1)),
        "(exit code, C_Finalize calls) per shutdown: {outcomes:?}"
    );
}
