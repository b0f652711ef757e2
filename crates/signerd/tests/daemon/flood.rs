//! Security finding 2: a flood of refused requests and of failed handshakes, while an allowed
//! client signs at 2,000/s. Its latency and error rate stay within a margin of a quiet phase
//! measured in the same run, the audit log grows by a bounded number of refusal records (the
//! rest are counted in summary records), and the log verifies.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use signer_proto::protocol::{self, Request, RequestFrame};
use signerd::{KeyName, Scheme};

use crate::daemon::{audit_verify, ec_key, metric, random_bytes, Daemon};

const ADMIN: &str = "signerd://dev/admin";
const APP: &str = "signerd://dev/app";
/// The allowed client's rate, and how long each phase lasts.
const RATE: u64 = 2000;
const PHASE: Duration = Duration::from_secs(4);

/// Signs at `RATE` for `PHASE`; returns (latencies of the successes, failures).
async fn sign_at_rate(client: &signer_client::Client, key: &str) -> (Vec<Duration>, usize) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = RATE * PHASE.as_millis() as u64 / 1000;
    let mut sent = 0;
    while sent < total {
        tick.tick().await;
        // Catch up to where the schedule says we should be.
        let due = (started.elapsed().as_micros() as u64 * RATE / 1_000_000).min(total);
        while sent < due {
            let c = client.clone();
            let key = key.to_owned();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = c.sign(&key, Scheme::EcdsaSha256, random_bytes(32)).await;
                (t.elapsed(), r.is_ok())
            }));
            sent += 1;
        }
    }
    let mut ok = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (took, good) = t.await.unwrap();
        if good {
            ok.push(took);
        } else {
            failed += 1;
        }
    }
    ok.sort();
    (ok, failed)
}

fn p95(l: &[Duration]) -> Duration {
    l.get(l.len() * 95 / 100).copied().unwrap_or_default()
}

/// A request the policy refuses, on its own stream; loops until `stop`.
async fn denied_flood(
    conn: quinn::Connection,
    key: String,
    stop: Arc<AtomicBool>,
    n: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let frame = RequestFrame {
            flags: 0,
            deadline_ms: 5000,
            request: Request::Sign {
                key: KeyName::new(&key).unwrap(),
                version: None,
                scheme: Scheme::EcdsaSha256,
                payload: Bytes::from(random_bytes(32)),
            },
        };
        let mut buf = BytesMut::new();
        protocol::encode_request(&frame, &mut buf).unwrap();
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            return;
        };
        if send.write_all(&buf).await.is_err() || send.finish().is_err() {
            return;
        }
        if recv.read_to_end(protocol::MAX_FRAME + 4).await.is_err() {
            return;
        }
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// Handshakes with a certificate no CA vouches for, from 127.0.0.2, until `stop`.
async fn handshake_flood(
    d_addr: std::net::SocketAddr,
    dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    n: Arc<AtomicU64>,
) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI("signerd://rogue".try_into().unwrap())];
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join("rogue.pem"), dir.join("rogue.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let tls = signerd::tls::client_config(&dir.join("tls/ca.pem"), &cert_path, &key_path).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    while !stop.load(Ordering::Relaxed) {
        let Ok(connecting) = ep.connect(d_addr, "localhost") else {
            return;
        };
        // The server's alert may arrive only with the first stream.
        if let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(2), connecting).await {
            if let Ok((mut send, mut recv)) = conn.open_bi().await {
                let _ = send.write_all(b"\0\0\0\0").await;
                let _ = tokio::time::timeout(Duration::from_secs(2), recv.read_to_end(64)).await;
            }
        }
        n.fetch_add(1, Ordering::Relaxed);
    }
}

fn refusal_records(d: &Daemon) -> (usize, u64) {
    let text = std::fs::read_to_string(d.path("audit/audit.log")).unwrap();
    let mut records = 0;
    let mut summarized = 0;
    for line in text.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if r["kind"] != "entry" || (r["identity"] != APP && r["identity"] != "-") {
            continue;
        }
        records += 1;
        if r["op"].as_str().unwrap_or("").ends_with(".summary") {
            let detail = r["detail"].as_str().unwrap();
            summarized += detail
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap();
        }
    }
    (records, summarized)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_and_handshakes_cannot_flood_the_audit_log_or_stall_signing() {
    let _heavy = crate::daemon::heavy().await;
    let policy = format!(
        "[[rule]]\nname = \"admin-all\"\neffect = \"allow\"\nidentities = [\"{ADMIN}\"]\n\
         keys = [\"*\"]\nops = [\"*\"]\n"
    );
    let mut d = Daemon::start_with_files(
        "refusal-flood",
        "policy = \"policy.toml\"",
        &[("policy.toml", &policy)],
    )
    .await;
    let admin = d.admin().await;
    let key = ec_key(&admin, "flood").await;
    admin
        .sign(&key, Scheme::EcdsaSha256, random_bytes(32))
        .await
        .unwrap();

    // Quiet phase.
    let (quiet, quiet_failed) = sign_at_rate(&admin, &key).await;
    let (records_before, _) = refusal_records(&d);

    // Flood phase: 16 streams of refused requests, two handshake loops, and the same signing.
    let stop = Arc::new(AtomicBool::new(false));
    let denied = Arc::new(AtomicU64::new(0));
    let handshakes = Arc::new(AtomicU64::new(0));
    let (_ep, conn) = d.raw_connect().await;
    let mut flooders = Vec::new();
    for _ in 0..16 {
        flooders.push(tokio::spawn(denied_flood(
            conn.clone(),
            key.clone(),
            Arc::clone(&stop),
            Arc::clone(&denied),
        )));
    }
    for _ in 0..2 {
        flooders.push(tokio::spawn(handshake_flood(
            d.addr(),
            d.dir.clone(),
            Arc::clone(&stop),
            Arc::clone(&handshakes),
        )));
    }
    let flood_started = Instant::now();
    let (flooded, flood_failed) = sign_at_rate(&admin, &key).await;
    stop.store(true, Ordering::Relaxed);
    let flood_secs = flood_started.elapsed().as_secs_f64();
    for f in flooders {
        let _ = tokio::time::timeout(Duration::from_secs(5), f).await;
    }
    // Summaries are written when their one-second window ends.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (records_after, summarized) = refusal_records(&d);
    let denied = denied.load(Ordering::Relaxed);
    let handshakes = handshakes.load(Ordering::Relaxed);
    let refusal_growth = records_after - records_before;
    let counted = metric(&d, "signer_audit_summarized_total", &[("kind", "denial")])
        + metric(&d, "signer_audit_summarized_total", &[("kind", "auth")]);
    eprintln!(
        "quiet: p95 {:?}, {quiet_failed} failed of {}; flood ({denied} refused requests, \
         {handshakes} refused handshakes in {flood_secs:.1} s): p95 {:?}, {flood_failed} failed \
         of {}; {refusal_growth} refusal records, {summarized} refusals in summaries, \
         signer_audit_summarized_total {counted}",
        p95(&quiet),
        quiet.len() + quiet_failed,
        p95(&flooded),
        flooded.len() + flood_failed,
    );
    assert!(
        denied > 2_000,
        "the flood was too weak to show anything: {denied}"
    );
    assert!(
        handshakes > 20,
        "the handshake flood was too weak: {handshakes}"
    );
    // The allowed client: at most 1% failures, and p95 within 5x the quiet phase's or 100 ms
    // over it (the p95 objective's budget: the flood's TLS handshakes take CPU from a 2-core
    // host, and other tests may run beside this one).
    assert_eq!(quiet_failed, 0);
    assert!(
        flood_failed * 100 <= flooded.len() + flood_failed,
        "over 1% of the allowed signs failed during the flood: {flood_failed}"
    );
    let margin = (p95(&quiet) * 5).max(p95(&quiet) + Duration::from_millis(100));
    assert!(
        p95(&flooded) <= margin,
        "p95 {:?} during the flood, quiet {:?} (margin {margin:?})",
        p95(&flooded),
        p95(&quiet)
    );
    // The log: per second at most 4 records + 1 summary per (identity, op, status): the
    // refused requests (permission_denied), the throttled ones (overloaded) and the refused
    // handshakes (auth). Everything else is counted, and the counts add up.
    let bound = 3 * 5 * (flood_secs.ceil() as usize + 3);
    assert!(
        refusal_growth <= bound,
        "{refusal_growth} refusal records for {denied} refused requests (bound {bound})"
    );
    assert!(
        summarized as f64 >= counted - 1e-9 && counted > 0.0,
        "{summarized} vs {counted}"
    );
    assert!(
        summarized + (refusal_growth as u64) >= denied,
        "refused requests went uncounted"
    );

    conn.close(0u32.into(), b"done");
    admin.close();
    assert!(d.terminate().success(), "{}", d.log());
    audit_verify(&d);
}
