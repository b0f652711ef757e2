//! Scenario 8: `C_Sign` hangs on one partition. Requests caught in the hung calls are answered
//! at their deadline; the stuck workers are quarantined and replaced; the partition leaves
//! rotation; everything else is signed on the other partition without a stall; when the hang
//! ends the partition comes back by itself. Scenario 9: +200 ms per call on one partition moves
//! the load away from it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use signer_client::Status;
use signerd::Scheme;

use crate::support::{random_digest, sign_ok, status_of, warm_up, Daemon};
use crate::verify::verify;

const REQUESTS: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s08_hung_sign_is_quarantined_and_never_stalls_the_daemon() {
    let mut d = Daemon::init("s08");
    d.edit_config(|cfg| {
        let engine = cfg.get_mut("engine").unwrap().as_table_mut().unwrap();
        engine.insert("hang_timeout".into(), "300ms".into());
    });
    d.serve().await;
    let (key, spki) = d.ec_key("s08", &[]).await;
    let app = d.app(Duration::from_secs(2)).await;
    for _ in 0..8 {
        sign_ok(&app, &key, &spki, &random_digest()).await;
    }
    d.faults(
        "[[rule]]\nname = \"hang-1\"\nkind = \"hang\"\nfunction = \"C_Sign\"\ntoken = \"signerd-1\"\n",
    )
    .await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..REQUESTS {
        let (app, key, spki) = (app.clone(), key.clone(), spki.clone());
        tasks.push(tokio::spawn(async move {
            // Spread over ~1.2 s, so that most arrive after the quarantine.
            tokio::time::sleep(Duration::from_millis(10 * i as u64)).await;
            let digest = Bytes::from(random_digest());
            let sent = Instant::now();
            let r = app.sign(&key, Scheme::EcdsaSha256, digest.clone()).await;
            let took = sent.elapsed();
            match r {
                Ok(sig) => {
                    verify(&spki, Scheme::EcdsaSha256, &digest, &sig.signature).unwrap();
                    (true, took)
                }
                Err(e) => {
                    let (status, _) = status_of(&e);
                    assert!(
                        matches!(status, Status::DeadlineExceeded | Status::Unavailable),
                        "{e}"
                    );
                    (false, took)
                }
            }
        }));
    }
    let (mut signed, mut failed, mut slowest_ok) = (0, 0, Duration::ZERO);
    for t in tasks {
        let (ok, took) = t.await.unwrap();
        if ok {
            signed += 1;
            slowest_ok = slowest_ok.max(took);
        } else {
            failed += 1;
        }
    }
    eprintln!(
        "hang: {signed} signed, {failed} answered at their deadline, slowest signed {slowest_ok:?}, \
         all answered after {:?}",
        started.elapsed()
    );
    assert_eq!(signed + failed, REQUESTS, "every request answered");
    // Only requests already inside a hung call (at most a few per stuck worker) fail.
    assert!(failed <= 8, "{failed} failed");
    assert!(
        slowest_ok < Duration::from_millis(1500),
        "no stall: {slowest_ok:?}"
    );
    let log = d.log();
    assert!(log.contains("quarantined and replaced"), "{log}");
    let m = d.metrics().await;
    assert_eq!(m.healthy("p1"), 0.0, "p1 is out while calls hang");
    assert_eq!(m.healthy("p0"), 1.0);
    let (code, body) = d.get("/readyz").await;
    assert_eq!(code, 200, "p0 still serves: {body}");

    // The hang ends: the stuck calls return, their workers exit, p1 comes back.
    d.faults("").await;
    let back = Instant::now();
    loop {
        if d.metrics().await.healthy("p1") == 1.0 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "p1 did not come back: {}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(d.log().contains("quarantined worker's HSM call returned"));
    let before = d.metrics().await.hsm_calls("p1");
    for _ in 0..40 {
        sign_ok(&app, &key, &spki, &random_digest()).await;
    }
    assert!(d.metrics().await.hsm_calls("p1") > before, "p1 signs again");
    assert!(d.terminate().success(), "clean exit after a hang");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_slow_partition_gets_less_work() {
    let d = Daemon::start("s09").await;
    let (key, spki) = d.ec_key("s09", &[]).await;
    let app = d.app(Duration::from_secs(5)).await;
    for _ in 0..8 {
        sign_ok(&app, &key, &spki, &random_digest()).await;
    }
    d.faults(
        "[[rule]]\nname = \"slow-1\"\nkind = \"latency\"\nfunction = \"C_Sign\"\ntoken = \"signerd-1\"\nfixed_ms = 200\n",
    )
    .await;
    // One request per call (coalesce 1), then the default (coalescing): 8 concurrent streams
    // of 25 calls each time. The router weighs load (jobs queued and in hand): a coalesced
    // request queues its calls at once, so a burst spreads more evenly than calls that arrive
    // one by one, and the slow partition gets a larger share (measured: 6-11% of the calls one
    // by one, 22-28% coalesced). Known limit, docs/ARCHITECTURE.md: the router does not weigh
    // speed, and a coalesced answer waits for its slowest item.
    for (coalesce, most) in [(1, 5.0), (16, 2.0)] {
        let opts = d
            .builder("client-app.toml")
            .max_retries(0)
            .timeout(Duration::from_secs(5))
            .coalesce(coalesce)
            .build()
            .unwrap();
        let app = signer_client::Client::connect(opts).await.unwrap();
        let m0 = d.metrics().await;
        let (p0_before, p1_before) = (m0.hsm_calls("p0"), m0.hsm_calls("p1"));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (app, key, spki) = (app.clone(), key.clone(), spki.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..25 {
                    sign_ok(&app, &key, &spki, &random_digest()).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let m = d.metrics().await;
        let (p0, p1) = (m.hsm_calls("p0") - p0_before, m.hsm_calls("p1") - p1_before);
        eprintln!("slow p1, coalesce {coalesce}: p0 signed {p0}, p1 signed {p1}");
        assert!(
            p1 * most < p0,
            "coalesce {coalesce}: the router sends a slow partition less work (p0 {p0}, p1 {p1})"
        );
    }
}

/// `[breaker] slow_call` reaches the breakers: with it at 100 ms, a partition whose every
/// `C_Sign` takes 250 ms is opened as failing (calls under the 1 s default would not count),
/// and the other partition takes the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_slow_call_opens_the_breaker_of_a_slow_partition() {
    let mut d = Daemon::init("slowcall");
    d.edit_config(|cfg| {
        let mut breaker = toml::Table::new();
        breaker.insert("slow_call".into(), "100ms".into());
        cfg.insert("breaker".into(), breaker.into());
    });
    d.serve().await;
    let (key, spki) = d.ec_key("slowcall", &[]).await;
    let app = d.app(Duration::from_secs(5)).await;
    warm_up(&app, &key, &spki, 4).await;
    let m = d.metrics().await;
    assert_eq!(m.value("signer_breaker_state", &[("partition", "p1")]), 0.0);
    d.faults(
        "[[rule]]\nname = \"slow-1\"\nkind = \"latency\"\nfunction = \"C_Sign\"\ntoken = \"signerd-1\"\nfixed_ms = 250\n",
    )
    .await;
    // Sequential requests: the router spreads them, so p1 gets some of them until its
    // breaker opens after 5 slow calls in a row.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        sign_ok(&app, &key, &spki, &random_digest()).await;
        if d.log().contains("breaker closed -> open") {
            break;
        }
        assert!(
            Instant::now() < until,
            "p1's breaker never opened:\n{}",
            d.log()
        );
    }
    let m = d.metrics().await;
    assert_ne!(
        m.value("signer_breaker_state", &[("partition", "p1")]),
        0.0,
        "p1's breaker is not closed"
    );
    assert_eq!(m.value("signer_breaker_state", &[("partition", "p0")]), 0.0);
    // Meanwhile every request is still signed, by p0.
    for _ in 0..10 {
        sign_ok(&app, &key, &spki, &random_digest()).await;
    }
    assert!(d.terminate().success(), "{}", d.log());
}
