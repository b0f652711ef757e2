//! Scenario 6: a busy/throttled HSM. The fault module's capacity model makes partition `p1`
//! behave like a network HSM that takes one call at a time and answers `CKR_FUNCTION_FAILED` to
//! any call that arrives while it is busy (CloudHSM's throttling answer).

use std::time::{Duration, Instant};

use signer_client::Status;
use signerd::Scheme;

use crate::support::{random_digest, status_of, warm_up, Daemon};
use crate::verify::verify;

/// Workers (sessions) per partition in this test: the adaptive limit starts here.
const WORKERS: i64 = 4;

/// Concurrency toward the throttled partition shrinks (the adaptive limit falls below its
/// workers), busy answers are retried within the budget (at most ~20% extra calls), latency
/// stays bounded, nearly everything is signed, and the breaker never trips on throttling alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s06_throttling_shrinks_concurrency_without_tripping_the_breaker() {
    const TASKS: usize = 16;
    const PER_TASK: usize = 40;
    let mut d = Daemon::init("s06");
    d.edit_config(|cfg| {
        let provider = cfg["providers"]["softhsm"].as_table_mut().unwrap();
        provider.insert("workers_per_partition".into(), WORKERS.into());
    });
    d.serve().await;
    let (key, spki) = d.ec_key("s06", &[]).await;
    let app = d.app(Duration::from_secs(10)).await;
    warm_up(&app, &key, &spki, 2 * WORKERS as usize).await;
    let m0 = d.metrics().await;
    let limit = |m: &crate::support::Metrics, p: &str| {
        m.value("signer_inflight_limit", &[("partition", p)])
    };
    assert_eq!(
        limit(&m0, "p1"),
        WORKERS as f64,
        "the limit starts at the workers"
    );
    d.faults(
        "[[rule]]\nname = \"throttle\"\nkind = \"capacity\"\ntoken = \"signerd-1\"\n\
         function = \"C_Sign\"\nmax_concurrent = 1\ncall_ms = 3\nmax_waiting = 0\n\
         rv = \"CKR_FUNCTION_FAILED\"\n",
    )
    .await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (app, key) = (app.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(PER_TASK);
            for _ in 0..PER_TASK {
                let digest = random_digest();
                let t = Instant::now();
                let r = app.sign(&key, Scheme::EcdsaSha256, digest.clone()).await;
                out.push((digest, r, t.elapsed()));
            }
            out
        }));
    }
    // The breaker state of p1, sampled while the load runs.
    let mut worst_breaker = 0.0f64;
    let mut lowest_limit = f64::MAX;
    while !tasks.iter().all(|t| t.is_finished()) {
        let m = d.metrics().await;
        worst_breaker = worst_breaker.max(m.value("signer_breaker_state", &[("partition", "p1")]));
        lowest_limit = lowest_limit.min(limit(&m, "p1"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ok = 0usize;
    let mut unavailable = 0usize;
    let mut slowest = Duration::ZERO;
    for t in tasks {
        for (digest, r, took) in t.await.unwrap() {
            slowest = slowest.max(took);
            match r {
                Ok(sig) => {
                    verify(&spki, Scheme::EcdsaSha256, &digest, &sig.signature).unwrap();
                    ok += 1;
                }
                Err(e) => {
                    let (status, retry_after) = status_of(&e);
                    assert_eq!(status, Status::Unavailable, "busy answers only: {e}");
                    assert!(retry_after.is_some(), "{e}");
                    unavailable += 1;
                }
            }
        }
    }
    let n = TASKS * PER_TASK;
    let m = d.metrics().await;
    let retries = m.value("signer_hsm_retries_total", &[("partition", "p0")])
        + m.value("signer_hsm_retries_total", &[("partition", "p1")]);
    let stats = d.stats_now();
    let busy = stats.rule("throttle").map_or(0, |r| r.busy);
    eprintln!(
        "s06: {n} requests in {:?}: {ok} signed, {unavailable} unavailable; {busy} busy answers, \
         {retries} retried; lowest p1 limit {lowest_limit}; slowest {slowest:?}",
        started.elapsed()
    );
    assert_eq!(ok + unavailable, n, "every request answered");
    assert!(busy > 0, "the capacity model throttled p1");
    assert!(
        lowest_limit < WORKERS as f64,
        "busy answers shrink p1's in-flight limit (lowest seen {lowest_limit})"
    );
    assert!(retries > 0.0, "busy answers are retried");
    assert!(
        retries <= 0.2 * n as f64 + 20.0,
        "retries stay within the budget: {retries} for {n} requests"
    );
    assert!(
        ok as f64 >= 0.95 * n as f64,
        "throttling costs at most a few requests: {ok} of {n} signed"
    );
    assert_eq!(
        worst_breaker, 0.0,
        "throttling alone never trips the breaker"
    );
    assert!(!d.log().contains("breaker closed -> open"), "{}", d.log());
    assert!(
        slowest < Duration::from_secs(2),
        "latency stays bounded: slowest {slowest:?}"
    );
    assert_eq!(m.healthy("p1"), 1.0, "p1 stays in rotation");
}
