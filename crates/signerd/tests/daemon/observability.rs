//! Operators' view of a running daemon: `/metrics` scraped with a real HTTP client and parsed
//! with a Prometheus exposition parser, `/livez` and `/readyz`, and the audit log, which must
//! hold one record per signature (matching the digest we sent) and verify with `signerd audit
//! verify` after a clean shutdown.

use std::collections::HashMap;
use std::process::Command;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use signerd::Scheme;

use crate::daemon::{ec_key, metric, random_bytes, Daemon};
use crate::verify::verify;

const SIGNS: usize = 200;

fn get(port: u16, path: &str) -> (u16, String) {
    match ureq::get(&format!("http://127.0.0.1:{port}{path}")).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// Value of the sample `name{labels}` (labels must match exactly the given subset).
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref b) => b.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => panic!("{name} rendered as a summary"),
        })
}

fn histogram_count(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(b) => {
                assert!(b.len() > 5, "{name} has explicit buckets");
                let inf = b.iter().find(|b| b.less_than.is_infinite()).unwrap();
                inf.count
            }
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_audit_of_a_running_daemon() {
    let mut d = Daemon::start("obs").await;
    let port = d.admin_port;

    // Before traffic: counters exist at 0, health endpoints answer.
    let (code, text) = tokio::task::spawn_blocking(move || get(port, "/metrics"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert_eq!(
        value(
            &s,
            "signer_requests_total",
            &[("op", "sign"), ("status", "ok")]
        ),
        Some(0.0),
        "counters are present at 0 from the start"
    );
    let (code, body) = tokio::task::spawn_blocking(move || get(port, "/livez"))
        .await
        .unwrap();
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = tokio::task::spawn_blocking(move || get(port, "/readyz"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("p0: ok") && body.contains("p1: ok"), "{body}");
    // The audit disk was measured at start against the default floor of 4096 MiB (the warning
    // itself has its own test below).
    let free = value(&s, "signer_audit_disk_free_bytes", &[]).unwrap();
    assert!(free > 0.0, "the audit disk was measured at start");
    let low = free < 4096.0 * 1024.0 * 1024.0;
    assert_eq!(
        value(&s, "signer_audit_disk_low", &[]),
        Some(f64::from(u8::from(low)))
    );
    assert_eq!(body.contains("warning: audit disk low"), low, "{body}");

    // Traffic: SIGNS signatures, one admin op, one denied admin op.
    let admin = d.admin().await;
    let app = d.app().await;
    let name = ec_key(&admin, "obs").await;
    let spki = app.public_key(&name, None).await.unwrap().spki_der;
    let mut sent = HashMap::new();
    let mut tasks = Vec::new();
    for _ in 0..SIGNS {
        let (c, n) = (app.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let digest = Bytes::from(random_bytes(32));
            let sig = c
                .sign(&n, Scheme::EcdsaSha256, digest.clone())
                .await
                .unwrap();
            (digest, sig)
        }));
    }
    for t in tasks {
        let (digest, sig) = t.await.unwrap();
        verify(&spki, Scheme::EcdsaSha256, &digest, &sig.signature).unwrap();
        sent.insert(hex(&Sha256::digest(&digest)), sig.version);
    }
    assert!(app.rotate_key(&name).await.is_err(), "app is no admin");

    let (code, text) = tokio::task::spawn_blocking(move || get(port, "/metrics"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let ok = |op| value(&s, "signer_requests_total", &[("op", op), ("status", "ok")]);
    assert_eq!(ok("sign"), Some(SIGNS as f64));
    assert_eq!(ok("create_key"), Some(1.0));
    assert_eq!(
        value(
            &s,
            "signer_requests_total",
            &[("op", "rotate_key"), ("status", "permission_denied")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "signer_authz_denied_total", &[("op", "rotate_key")]),
        Some(1.0)
    );
    assert_eq!(
        histogram_count(&s, "signer_request_duration_seconds", &[("op", "sign")]),
        SIGNS as f64
    );
    assert_eq!(
        histogram_count(&s, "signer_queue_wait_seconds", &[]),
        SIGNS as f64
    );
    // Time inside the HSM is its own histogram, per partition; both partitions signed.
    let hsm: f64 = ["p0", "p1"]
        .iter()
        .map(|p| histogram_count(&s, "signer_hsm_duration_seconds", &[("partition", p)]))
        .sum();
    assert_eq!(hsm, SIGNS as f64);
    assert!(histogram_count(&s, "signer_batch_size", &[]) >= 1.0);
    for p in ["p0", "p1"] {
        assert_eq!(
            value(&s, "signer_partition_healthy", &[("partition", p)]),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "signer_breaker_state", &[("partition", p)]),
            Some(0.0)
        );
        assert_eq!(
            value(&s, "signer_session_rebuilds_total", &[("partition", p)]),
            Some(0.0)
        );
    }
    assert_eq!(
        value(
            &s,
            "signer_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "signer_audit_healthy", &[]), Some(1.0));
    // SIGNS signs + create + denial (and whatever the daemon itself recorded).
    assert!(value(&s, "signer_audit_records_total", &[]).unwrap() >= (SIGNS + 2) as f64);
    assert!(value(&s, "signer_audit_fsyncs_total", &[]).unwrap() >= 1.0);
    assert_eq!(value(&s, "signer_connections", &[]), Some(2.0));
    assert!(
        !text.contains("quantile="),
        "histograms must not render as summaries"
    );
    app.close();
    admin.close();

    // Clean shutdown seals the log; it verifies, and holds every signature we got.
    assert!(d.terminate().success(), "{}", d.log());
    let log = d.path("audit/audit.log");
    let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "audit verify failed: {report}");
    assert!(report.starts_with("OK"), "{report}");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut seen = 0;
    let mut denied = 0;
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if r["kind"] != "entry" {
            continue;
        }
        if r["op"] == "sign" && r["key"] == name.as_str() {
            let h = r["payload_sha256"].as_str().unwrap();
            assert_eq!(r["identity"], "signerd://dev/app");
            assert_eq!(r["status"], "ok");
            assert!(r["partition"] == "p0" || r["partition"] == "p1", "{r}");
            assert_eq!(
                Some(r["version"].as_u64().unwrap() as u32),
                sent.get(h).copied(),
                "a signature we never received: {r}"
            );
            seen += 1;
        }
        if r["op"] == "rotate_key" && r["status"] == "permission_denied" {
            denied += 1;
        }
    }
    assert_eq!(seen, SIGNS, "one audit record per signature");
    assert_eq!(denied, 1, "the denied admin op is audited");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An audit disk below `[audit] min_free_mib` is a warning (log line, `/readyz` body, gauge),
/// not an outage: `/readyz` stays 200 and signing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_audit_disk_warns_but_keeps_signing() {
    let mut d = Daemon::start("disk-low").await;
    d.terminate();
    let cfg = d.path("signerd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains("min_free_mib = 4096\n"),
        "init --dev writes the default"
    );
    // 1 PiB, the largest floor the config accepts: more than this disk has free.
    let text = text.replace("min_free_mib = 4096\n", "min_free_mib = 1073741824\n");
    std::fs::write(&cfg, text).unwrap();
    d.spawn_serve().await;

    let port = d.admin_port;
    let (code, body) = tokio::task::spawn_blocking(move || get(port, "/readyz"))
        .await
        .unwrap();
    assert_eq!(
        code, 200,
        "a low disk does not make the daemon unready: {body}"
    );
    let warning = body
        .lines()
        .find(|l| l.starts_with("warning: audit disk low: "))
        .unwrap_or_else(|| panic!("no disk warning in /readyz: {body}"));
    assert!(warning.contains("min_free_mib = 1073741824"), "{warning}");
    assert!(
        warning.contains(&d.path("audit").display().to_string()),
        "{warning}"
    );
    let d_ref = &d;
    let (low, free) = tokio::task::block_in_place(|| {
        (
            metric(d_ref, "signer_audit_disk_low", &[]),
            metric(d_ref, "signer_audit_disk_free_bytes", &[]),
        )
    });
    assert_eq!(low, 1.0);
    assert!(free > 0.0);
    assert!(
        d.log().contains("audit disk low"),
        "the warning is logged at start: {}",
        d.log()
    );

    let admin = d.admin().await;
    let app = d.app().await;
    let name = ec_key(&admin, "disk-low").await;
    let spki = app.public_key(&name, None).await.unwrap().spki_der;
    let digest = Bytes::from(random_bytes(32));
    let sig = app
        .sign(&name, Scheme::EcdsaSha256, digest.clone())
        .await
        .expect("signing goes on while the disk is low");
    verify(&spki, Scheme::EcdsaSha256, &digest, &sig.signature).unwrap();
    app.close();
    admin.close();
    assert!(d.terminate().success(), "{}", d.log());
}
