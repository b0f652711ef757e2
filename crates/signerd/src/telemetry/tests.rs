//! End-to-end tests of the telemetry module: a real admin listener on loopback scraped with a real
//! HTTP client and parsed as Prometheus exposition, and the global install.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_parse::{Sample, Scrape, Value};

use signer_proto::protocol::Op;
use signer_proto::Status;

use super::*;

const PARTITIONS: &[&str] = &["hsm-a", "hsm-b"];
const SHARDS: usize = 3;

/// A readiness source the test flips.
fn readiness() -> (Arc<Mutex<ReadyReport>>, Arc<dyn Readiness>) {
    let report = Arc::new(Mutex::new(ReadyReport {
        keys_loaded: true,
        partitions: vec![
            PartitionHealth::unhealthy("hsm-a", "CKR_DEVICE_REMOVED"),
            PartitionHealth::unhealthy("hsm-b", "breaker open"),
        ],
        draining: false,
        blocked: None,
        warnings: Vec::new(),
    }));
    let r = Arc::clone(&report);
    (report, Arc::new(move || r.lock().clone()))
}

/// GET (or `method`) `url`: status, body, and the `Allow` header if any. Blocking; call from
/// `spawn_blocking`.
fn fetch(method: &str, url: &str) -> (u16, String, Option<String>) {
    try_fetch(method, url).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

fn try_fetch(method: &str, url: &str) -> Result<(u16, String, Option<String>), String> {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    let resp = match agent.request(method, url).call() {
        Ok(resp) => resp,
        Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let allow = resp.header("allow").map(str::to_owned);
    let body = resp.into_string().map_err(|e| e.to_string())?;
    Ok((status, body, allow))
}

async fn get(method: &'static str, url: String) -> (u16, String, Option<String>) {
    tokio::task::spawn_blocking(move || fetch(method, &url))
        .await
        .unwrap()
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn find<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

fn counter(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(scrape, name, labels).map(|s| &s.value) {
        Some(Value::Counter(v)) => *v,
        other => panic!("{name} {labels:?}: not a counter: {other:?}"),
    }
}

fn gauge(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(scrape, name, labels).map(|s| &s.value) {
        Some(Value::Gauge(v)) => *v,
        other => panic!("{name} {labels:?}: not a gauge: {other:?}"),
    }
}

/// `(le, cumulative count)` of a histogram series.
fn buckets(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    match find(scrape, name, labels).map(|s| &s.value) {
        Some(Value::Histogram(b)) => b.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("{name} {labels:?}: not a histogram: {other:?}"),
    }
}

/// The cumulative count of the bucket with upper bound `le`.
fn bucket(b: &[(f64, f64)], le: f64) -> f64 {
    b.iter()
        .find(|(l, _)| *l == le || (*l - le).abs() < 1e-12)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("no bucket le={le} in {b:?}"))
}

fn untyped(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(scrape, name, labels).map(|s| &s.value) {
        Some(Value::Untyped(v)) => *v,
        other => panic!("{name} {labels:?}: no such sample: {other:?}"),
    }
}

/// Every series family exists with the right type, and every label set known at start is there.
fn assert_all_series(text: &str, scrape: &Scrape) {
    for &(name, kind, labels) in METRICS {
        let ty = match kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        assert!(
            text.contains(&format!("# TYPE {name} {ty}\n")),
            "{name} is not exposed as a {ty}"
        );
        let samples: Vec<&Sample> = scrape.samples.iter().filter(|s| s.metric == name).collect();
        assert!(!samples.is_empty(), "{name}: no samples");
        for s in &samples {
            let mut got: Vec<&str> = s.labels.keys().map(String::as_str).collect();
            got.sort_unstable();
            let mut want = labels.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "{name}: labels");
        }
    }
    assert!(
        !text.contains("quantile="),
        "a histogram rendered as a summary"
    );
    assert!(
        !scrape
            .samples
            .iter()
            .any(|s| matches!(s.value, Value::Summary(_))),
        "a summary in the exposition"
    );
    for op in Op::ALL.map(Op::as_str) {
        for status in Status::ALL.map(Status::as_str) {
            let labels = [("op", op), ("status", status)];
            find(scrape, names::REQUESTS_TOTAL, &labels)
                .unwrap_or_else(|| panic!("missing requests_total {labels:?}"));
        }
        find(scrape, names::AUTHZ_DENIED_TOTAL, &[("op", op)]).unwrap();
        let b = buckets(scrape, names::REQUEST_DURATION_SECONDS, &[("op", op)]);
        assert_eq!(b.len(), LATENCY_BUCKETS.len() + 1, "buckets and +Inf");
    }
    for p in PARTITIONS {
        for name in [
            names::INFLIGHT,
            names::BREAKER_STATE,
            names::PARTITION_HEALTHY,
        ] {
            gauge(scrape, name, &[("partition", p)]);
        }
        counter(scrape, names::SESSION_REBUILDS_TOTAL, &[("partition", p)]);
        buckets(scrape, names::HSM_DURATION_SECONDS, &[("partition", p)]);
    }
    for shard in 0..SHARDS {
        gauge(scrape, names::QUEUE_DEPTH, &[("shard", &shard.to_string())]);
        gauge(
            scrape,
            names::QUEUE_OVERLOADED,
            &[("shard", &shard.to_string())],
        );
    }
    for r in OVERLOAD_REASONS {
        counter(scrape, names::OVERLOADED_TOTAL, &[("reason", r)]);
    }
    assert_eq!(
        buckets(scrape, names::BATCH_SIZE, &[]).len(),
        BATCH_SIZE_BUCKETS.len() + 1
    );
    assert_eq!(
        gauge(
            scrape,
            names::BUILD_INFO,
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_serves_metrics_and_health() {
    // A local recorder: no global state, so this test cannot collide with others.
    let recorder = prometheus_builder().unwrap().build_recorder();
    let handle = recorder.handle();
    let m = metrics::with_local_recorder(&recorder, || Metrics::new(PARTITIONS, SHARDS));

    let (report, ready) = readiness();
    let listener = bind_admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_admin(listener, handle.clone(), ready, async move {
        let _ = stop_rx.await;
    }));

    // Before any traffic: every series is present, counters at 0.
    let (code, text, _) = get("GET", format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    let scrape = parse(&text);
    assert_all_series(&text, &scrape);
    for s in &scrape.samples {
        if let Value::Counter(v) = s.value {
            assert_eq!(v, 0.0, "{} {:?}", s.metric, s.labels);
        }
    }
    assert_eq!(
        untyped(
            &scrape,
            "signer_request_duration_seconds_count",
            &[("op", "sign")]
        ),
        0.0
    );

    // Traffic.
    for _ in 0..5 {
        m.request(Op::Sign, Status::Ok, Duration::from_micros(2_500));
    }
    m.request(Op::Sign, Status::Overloaded, Duration::from_millis(200));
    m.request(Op::Sign, Status::Overloaded, Duration::from_millis(200));
    m.request(
        Op::CreateKey,
        Status::PermissionDenied,
        Duration::from_secs(20),
    );
    m.queue_wait(Duration::from_micros(50));
    m.queue_wait(Duration::from_millis(4));
    m.hsm_call(1, Duration::from_micros(900));
    m.hsm_call(1, Duration::from_micros(900));
    m.hsm_call(1, Duration::from_micros(900));
    m.batch(1);
    m.batch(8);
    m.batch(5000);
    m.session_rebuild(0);
    m.authz_denied(Op::CreateKey, 1);
    m.overloaded(OverloadReason::QueueFull);
    m.overloaded(OverloadReason::QueueFull);
    m.overloaded(OverloadReason::Deadline);
    m.set_audit_totals(7, 2, 1, 1);
    m.set_audit_healthy(true);
    m.set_audit_disk(3 << 30, true);
    m.set_queue_depth(2, 17);
    m.set_queue_overloaded(1, true);
    m.set_inflight(0, 4);
    m.set_inflight(1, 1);
    m.set_breaker_state(1, crate::control::breaker::State::Open);
    m.set_breaker_state(0, crate::control::breaker::State::HalfOpen);
    m.set_partition_healthy(0, true);
    m.connection_opened();
    m.connection_opened();
    m.connection_closed();
    handle.run_upkeep(); // what spawn_upkeep does every few seconds

    let (code, text, _) = get("GET", format!("{base}/metrics")).await;
    assert_eq!(code, 200);
    let s = parse(&text);
    assert_all_series(&text, &s);
    let req = |op, status| counter(&s, names::REQUESTS_TOTAL, &[("op", op), ("status", status)]);
    assert_eq!(req("sign", "ok"), 5.0);
    assert_eq!(req("sign", "overloaded"), 2.0);
    assert_eq!(req("create_key", "permission_denied"), 1.0);
    assert_eq!(req("verify", "ok"), 0.0);

    let sign = buckets(&s, names::REQUEST_DURATION_SECONDS, &[("op", "sign")]);
    assert_eq!(bucket(&sign, 0.002), 0.0);
    assert_eq!(bucket(&sign, 0.003), 5.0);
    assert_eq!(bucket(&sign, 0.1), 5.0);
    assert_eq!(bucket(&sign, 0.25), 7.0);
    assert_eq!(bucket(&sign, f64::INFINITY), 7.0);
    let labels = [("op", "sign")];
    assert_eq!(
        untyped(&s, "signer_request_duration_seconds_count", &labels),
        7.0
    );
    let sum = untyped(&s, "signer_request_duration_seconds_sum", &labels);
    assert!((sum - 0.4125).abs() < 1e-9, "{sum}");
    let create = buckets(&s, names::REQUEST_DURATION_SECONDS, &[("op", "create_key")]);
    assert_eq!(bucket(&create, 10.0), 0.0, "20 s is past the last bound");
    assert_eq!(bucket(&create, f64::INFINITY), 1.0);

    let qw = buckets(&s, names::QUEUE_WAIT_SECONDS, &[]);
    assert_eq!(bucket(&qw, 0.0001), 1.0);
    assert_eq!(bucket(&qw, 0.005), 2.0);
    let hsm_b = buckets(&s, names::HSM_DURATION_SECONDS, &[("partition", "hsm-b")]);
    assert_eq!(bucket(&hsm_b, 0.001), 3.0);
    assert_eq!(bucket(&hsm_b, 0.0005), 0.0);
    let hsm_a = buckets(&s, names::HSM_DURATION_SECONDS, &[("partition", "hsm-a")]);
    assert_eq!(bucket(&hsm_a, f64::INFINITY), 0.0);
    let batch = buckets(&s, names::BATCH_SIZE, &[]);
    assert_eq!(bucket(&batch, 1.0), 1.0);
    assert_eq!(bucket(&batch, 8.0), 2.0);
    assert_eq!(bucket(&batch, 1024.0), 2.0);
    assert_eq!(bucket(&batch, f64::INFINITY), 3.0);

    let part = |p| [("partition", p)];
    assert_eq!(
        counter(&s, names::SESSION_REBUILDS_TOTAL, &part("hsm-a")),
        1.0
    );
    assert_eq!(
        counter(&s, names::SESSION_REBUILDS_TOTAL, &part("hsm-b")),
        0.0
    );
    assert_eq!(
        counter(&s, names::AUTHZ_DENIED_TOTAL, &[("op", "create_key")]),
        1.0
    );
    assert_eq!(
        counter(&s, names::AUTHZ_DENIED_TOTAL, &[("op", "sign")]),
        0.0
    );
    let ov = |r| counter(&s, names::OVERLOADED_TOTAL, &[("reason", r)]);
    assert_eq!(
        (ov("queue_full"), ov("queue_wait"), ov("deadline")),
        (2.0, 0.0, 1.0)
    );
    assert_eq!(counter(&s, names::AUDIT_RECORDS_TOTAL, &[]), 7.0);
    assert_eq!(counter(&s, names::AUDIT_FSYNCS_TOTAL, &[]), 2.0);
    assert_eq!(counter(&s, names::AUDIT_WRITE_FAILURES_TOTAL, &[]), 1.0);
    assert_eq!(counter(&s, names::AUDIT_CHECKPOINTS_TOTAL, &[]), 1.0);
    assert_eq!(gauge(&s, names::AUDIT_HEALTHY, &[]), 1.0);
    assert_eq!(
        gauge(&s, names::AUDIT_DISK_FREE_BYTES, &[]),
        3.0 * f64::from(1u32 << 30)
    );
    assert_eq!(gauge(&s, names::AUDIT_DISK_LOW, &[]), 1.0);
    assert_eq!(gauge(&s, names::QUEUE_DEPTH, &[("shard", "2")]), 17.0);
    assert_eq!(gauge(&s, names::QUEUE_DEPTH, &[("shard", "0")]), 0.0);
    assert_eq!(gauge(&s, names::QUEUE_OVERLOADED, &[("shard", "1")]), 1.0);
    assert_eq!(gauge(&s, names::QUEUE_OVERLOADED, &[("shard", "0")]), 0.0);
    assert_eq!(gauge(&s, names::INFLIGHT, &part("hsm-a")), 4.0);
    assert_eq!(gauge(&s, names::INFLIGHT, &part("hsm-b")), 1.0);
    assert_eq!(gauge(&s, names::BREAKER_STATE, &part("hsm-a")), 1.0);
    assert_eq!(gauge(&s, names::BREAKER_STATE, &part("hsm-b")), 2.0);
    assert_eq!(gauge(&s, names::PARTITION_HEALTHY, &part("hsm-a")), 1.0);
    assert_eq!(gauge(&s, names::PARTITION_HEALTHY, &part("hsm-b")), 0.0);
    assert_eq!(gauge(&s, names::CONNECTIONS, &[]), 1.0);

    // Health.
    let (code, body, _) = get("GET", format!("{base}/livez")).await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body, _) = get("GET", format!("{base}/readyz")).await;
    assert_eq!(code, 503);
    assert_eq!(
        body,
        "not ready: no healthy partition\n\
         hsm-a: unhealthy: CKR_DEVICE_REMOVED\n\
         hsm-b: unhealthy: breaker open\n"
    );
    report.lock().partitions[1] = PartitionHealth::healthy("hsm-b");
    let (code, body, _) = get("GET", format!("{base}/readyz")).await;
    assert_eq!(code, 200);
    assert_eq!(
        body,
        "ready\nhsm-a: unhealthy: CKR_DEVICE_REMOVED\nhsm-b: ok\n"
    );
    report.lock().draining = true;
    let (code, body, _) = get("GET", format!("{base}/readyz?verbose=1")).await;
    assert_eq!(code, 503);
    assert!(body.starts_with("draining\n"), "{body}");

    // Routing over the wire.
    let (code, _, _) = get("GET", format!("{base}/nope")).await;
    assert_eq!(code, 404);
    let (code, _, allow) = get("POST", format!("{base}/metrics")).await;
    assert_eq!((code, allow.as_deref()), (405, Some("GET, HEAD")));
    let (code, _, _) = get("DELETE", format!("{base}/livez")).await;
    assert_eq!(code, 405);
    let (code, body, _) = get("HEAD", format!("{base}/metrics")).await;
    assert_eq!((code, body.as_str()), (200, ""));

    // Shutdown returns promptly.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("serve_admin returns after shutdown")
        .unwrap();
}

/// True if the peer closes (or resets) the connection within `within`.
fn closed_by_peer(stream: &mut std::net::TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true, // reset
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_caps_connections_and_times_out_headers() {
    let recorder = prometheus_builder().unwrap().build_recorder();
    let (_report, ready) = readiness();
    let listener = bind_admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let limits = AdminLimits {
        max_connections: 1,
        header_read_timeout: Duration::from_millis(300),
        ..AdminLimits::default()
    };
    let server = tokio::spawn(Admin::new(recorder.handle(), ready).limits(limits).serve(
        listener,
        async move {
            let _ = stop_rx.await;
        },
    ));

    let checks = tokio::task::spawn_blocking(move || {
        // A silent client takes the only slot...
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(100)); // let the server accept it
                                                        // ...so the next connection is closed without an answer.
        let mut second = std::net::TcpStream::connect(addr).unwrap();
        let _ = second.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut answer = Vec::new();
        let _ = second
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map(|()| second.read_to_end(&mut answer));
        assert!(answer.is_empty(), "over the cap but answered");
        // The silent one is closed once the header timeout passes.
        assert!(
            closed_by_peer(&mut silent, Duration::from_secs(5)),
            "idle connection not closed"
        );
        // The slot is free again.
        let mut ok = false;
        for _ in 0..50 {
            let got = try_fetch("GET", &format!("http://{addr}/livez"));
            if matches!(got, Ok((200, ref body, _)) if body == "ok\n") {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ok
    });
    let ok = tokio::time::timeout(Duration::from_secs(20), checks)
        .await
        .unwrap()
        .unwrap();
    assert!(ok, "no answer after the slot was freed");

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bind_admin_names_the_address_when_the_port_is_taken() {
    let first = bind_admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = first.local_addr().unwrap();
    let err = bind_admin(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// The only test that touches the global recorder.
#[test]
fn install_is_idempotent_and_exposes_registered_series() {
    let h1 = install().unwrap();
    let h2 = install().unwrap();
    let _m = Metrics::new(&["p"], 1);
    let (a, b) = (h1.render(), h2.render());
    assert!(
        a.contains("signer_requests_total{op=\"sign\",status=\"ok\"} 0"),
        "{a}"
    );
    assert!(b.contains("# TYPE signer_batch_size histogram"), "{b}");
}
