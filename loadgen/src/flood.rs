//! `loadgen flood`: a handshake flood from this host, for measuring what it does to other
//! clients (run `loadgen run` beside it). Opens new QUIC connections at a fixed rate, each from
//! its own endpoint's pool, with the client certificate of `--client`; each attempt is bounded by
//! a timeout, established connections are held for `--hold` and then closed. Counts attempts,
//! established connections, and failures (refused, Retry that did not complete, timeouts).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use signer_client::ClientOptions;
use tokio::time::Instant;

/// What a flood did.
#[derive(Debug, Default)]
pub struct FloodResult {
    /// Connection attempts started.
    pub attempts: u64,
    /// Handshakes completed.
    pub established: u64,
    /// Attempts refused, reset, or timed out.
    pub failed: u64,
}

/// Floods the first endpoint of `opts` with `rate` new connections per second for `duration`,
/// spread over `sockets` client UDP sockets.
pub async fn flood(
    opts: &ClientOptions,
    rate: f64,
    duration: Duration,
    hold: Duration,
    sockets: usize,
) -> Result<FloodResult, String> {
    let addr = *opts
        .endpoints()
        .first()
        .ok_or("the client config has no endpoint")?;
    let crypto = QuicClientConfig::try_from(opts.tls_config()).map_err(|e| e.to_string())?;
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let bind: std::net::SocketAddr = if addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    }
    .parse()
    .map_err(|e| format!("{e}"))?;
    let mut endpoints = Vec::new();
    for _ in 0..sockets.max(1) {
        let mut ep = quinn::Endpoint::client(bind).map_err(|e| e.to_string())?;
        ep.set_default_client_config(config.clone());
        endpoints.push(ep);
    }
    let (attempts, established, failed) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut tasks = Vec::new();
    let mut n: u64 = 0;
    while start.elapsed() < duration {
        let due = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(due).await;
        let ep = endpoints[(n as usize) % endpoints.len()].clone();
        let server_name = opts.server_name().to_owned();
        let (established, failed) = (Arc::clone(&established), Arc::clone(&failed));
        attempts.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let outcome = match ep.connect(addr, &server_name) {
                Ok(connecting) => tokio::time::timeout(Duration::from_secs(5), connecting).await,
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            match outcome {
                Ok(Ok(conn)) => {
                    established.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(hold).await;
                    conn.close(0u32.into(), b"flood over");
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        n += 1;
    }
    for t in tasks {
        let _ = t.await;
    }
    for ep in &endpoints {
        ep.close(0u32.into(), b"");
    }
    Ok(FloodResult {
        attempts: attempts.load(Ordering::Relaxed),
        established: established.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
    })
}
