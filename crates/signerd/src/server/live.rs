//! Open connections whose certificate stops being accepted: each connection is registered with
//! its peer's chain and watched until its certificate expires; a CRL reload (SIGHUP) re-checks
//! every registered chain once against the new verifier. A connection found expired or refused
//! is closed at once with [`CLOSE_CERTIFICATE_EXPIRED`] or [`CLOSE_CERTIFICATE_REVOKED`],
//! audited as an authentication failure and counted in `signer_connections_closed_total`.
//!
//! Nothing here runs per request: one timer per connection (its certificate's expiry), one
//! chain verification per distinct certificate per reload.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use quinn::VarInt;
use rustls::pki_types::CertificateDer;
use tokio::sync::oneshot;

use crate::telemetry::CloseReason;
use crate::tls::{ClientCheck, Refusal};

use super::{dispatch, State, CLOSE_CERTIFICATE_EXPIRED, CLOSE_CERTIFICATE_REVOKED};

/// How long after its certificate's notAfter an open connection is closed. One second, webpki's
/// resolution: a new handshake with the certificate is refused from the same moment. The timer
/// runs on the monotonic clock, armed from the wall clock when the connection is established.
pub const EXPIRY_CLOSE_BOUND: Duration = Duration::from_secs(1);

/// A client's certificate chain as it sent it, end-entity first.
pub(crate) type Chain = Arc<[CertificateDer<'static>]>;

/// The registered connections and the check of the TLS config in force.
#[derive(Debug)]
pub(crate) struct Live {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Bumped by every reload, after the new config is installed.
    generation: u64,
    check: ClientCheck,
    next_id: u64,
    conns: HashMap<u64, Watched>,
}

#[derive(Debug)]
struct Watched {
    chain: Chain,
    cut: oneshot::Sender<Refusal>,
}

/// A connection's place in [`Live`]; leaves it when dropped.
pub(crate) struct Registration {
    live: Arc<Live>,
    id: u64,
    /// Fires when a reload no longer accepts the certificate.
    cut: Option<oneshot::Receiver<Refusal>>,
}

impl Registration {
    /// Resolves when a reload no longer accepts the connection's certificate (cancel-safe).
    pub(crate) async fn refused(&mut self) -> Refusal {
        if let Some(rx) = self.cut.as_mut() {
            if let Ok(refusal) = rx.await {
                return refusal;
            }
            self.cut = None;
        }
        std::future::pending().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.inner.lock().conns.remove(&self.id);
    }
}

impl Live {
    /// No connection yet; `check` is the config's at bind.
    pub(crate) fn new(check: ClientCheck) -> Live {
        Live {
            inner: Mutex::new(Inner {
                generation: 0,
                check,
                next_id: 0,
                conns: HashMap::new(),
            }),
        }
    }

    /// The generation in force: read it before the handshake starts, pass it to
    /// [`Live::register`].
    pub(crate) fn generation(&self) -> u64 {
        self.inner.lock().generation
    }

    /// Registers a connection whose handshake began at `generation`. If a reload happened since
    /// (its handshake may have been verified under the previous CRL, and the reload's re-check
    /// may have missed it), its chain is checked against the config in force first.
    pub(crate) fn register(
        self: &Arc<Self>,
        chain: Chain,
        generation: u64,
    ) -> Result<Registration, Refusal> {
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            inner.check.check(&chain)?;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let (tx, rx) = oneshot::channel();
        inner.conns.insert(id, Watched { chain, cut: tx });
        Ok(Registration {
            live: Arc::clone(self),
            id,
            cut: Some(rx),
        })
    }

    /// Puts `check` in force (call it after the new config is installed for new handshakes),
    /// then checks every registered connection against it, off the runtime, one verification
    /// per distinct chain, and tells each refused connection to close. Returns (connections
    /// checked, connections told to close).
    pub(crate) async fn recheck(self: &Arc<Self>, check: ClientCheck) -> (usize, usize) {
        let snapshot: Vec<(u64, Chain)> = {
            let mut inner = self.inner.lock();
            inner.generation += 1;
            inner.check = check.clone();
            inner
                .conns
                .iter()
                .map(|(id, w)| (*id, Arc::clone(&w.chain)))
                .collect()
        };
        let checked = snapshot.len();
        let refused = tokio::task::spawn_blocking(move || {
            let mut verdicts: HashMap<Chain, Result<(), Refusal>> = HashMap::new();
            snapshot
                .into_iter()
                .filter_map(|(id, chain)| {
                    let verdict = verdicts
                        .entry(Arc::clone(&chain))
                        .or_insert_with(|| check.check(&chain));
                    verdict.clone().err().map(|r| (id, r))
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut inner = self.inner.lock();
        let mut closed = 0;
        for (id, refusal) in refused {
            // Removed here, so the connection cannot be told twice; its Registration's drop
            // then finds nothing to remove.
            if let Some(w) = inner.conns.remove(&id) {
                if w.cut.send(refusal).is_ok() {
                    closed += 1;
                }
            }
        }
        (checked, closed)
    }
}

/// Resolves when the wall clock reaches `at` (a certificate's expiry). Sleeps on the runtime's
/// monotonic clock and reads the wall clock again on waking, so a clock set back meanwhile
/// delays the close rather than advancing it.
pub(crate) async fn expiry(at: SystemTime) {
    while let Ok(left) = at.duration_since(SystemTime::now()) {
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left).await;
    }
}

/// Closes `conn` because its certificate is no longer accepted: at once (requests in flight on
/// it get the connection error, docs/PROTOCOL.md §8), audited as an authentication failure and
/// counted.
pub(crate) async fn cut(
    state: &State,
    conn: &quinn::Connection,
    peer: SocketAddr,
    identity: &str,
    refusal: Refusal,
) {
    let (code, reason, counted) = match refusal {
        Refusal::Expired => (
            CLOSE_CERTIFICATE_EXPIRED,
            "certificate expired".to_owned(),
            CloseReason::CertificateExpired,
        ),
        Refusal::Revoked => (
            CLOSE_CERTIFICATE_REVOKED,
            "certificate revoked".to_owned(),
            CloseReason::CertificateRevoked,
        ),
        Refusal::Other(e) => (
            CLOSE_CERTIFICATE_REVOKED,
            format!("certificate no longer accepted: {e}"),
            CloseReason::CertificateRevoked,
        ),
    };
    tracing::warn!(%peer, identity, "closing the connection: {reason}");
    conn.close(VarInt::from_u32(code), reason.as_bytes());
    state.engine.metrics().connection_cut(counted);
    dispatch::audit_auth_failure(
        state,
        peer.ip(),
        &format!("peer {peer}: identity {identity}: connection closed: {reason}"),
    );
}
