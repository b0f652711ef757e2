//! The QUIC front end: a quinn endpoint with mutual TLS, one task per connection and per request
//! stream, and a graceful drain on shutdown. HSM work never runs here: requests are queued into
//! the engine and awaited; admin operations run on the blocking pool.

pub mod admission;
mod authz;
pub mod batcher;
mod budget;
mod dispatch;
mod live;
mod refusals;
mod verify_pool;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{IdleTimeout, TransportConfig, VarInt};
use tokio::sync::{watch, Notify};

use crate::audit::AuditLog;
use crate::config::ServerConfig;
use crate::policy::LivePolicy;
use crate::telemetry::IncomingOutcome;
use crate::tls;
use crate::Engine;
use signer_proto::keys::KeyName;

use admission::{Admission, Decision, Limits, Slot};
use budget::ByteBudget;

/// QUIC application error code sent when the server closes a connection for shutdown.
pub const CLOSE_SHUTDOWN: u32 = 0;
/// QUIC application error code for a connection whose certificate names no usable identity.
pub const CLOSE_NO_IDENTITY: u32 = 1;
/// QUIC application error code for connections over the limit.
pub const CLOSE_TOO_MANY: u32 = 2;
/// QUIC application error code for an open connection whose certificate a reloaded CRL revokes
/// (reason `certificate revoked`), or whose revocation status it no longer knows (reason
/// `certificate no longer accepted: …`).
pub const CLOSE_CERTIFICATE_REVOKED: u32 = 3;
/// QUIC application error code for an open connection whose certificate expired (reason
/// `certificate expired`).
pub const CLOSE_CERTIFICATE_EXPIRED: u32 = 4;

/// Most connection attempts quinn holds for the accept loop's decision, per allowed handshake
/// (quinn's default is 65536 in all). Attempts beyond it are refused by quinn itself.
const INCOMING_PER_HANDSHAKE: usize = 4;
/// Bytes quinn buffers for one connection attempt awaiting a decision (quinn's default: 10 MiB).
/// A client's first flight (the ClientHello with a certificate-less key share) fits easily.
const INCOMING_BUFFER: u64 = 64 * 1024;
/// Bytes quinn buffers for all attempts awaiting a decision (quinn's default: 100 MiB).
const INCOMING_BUFFER_TOTAL: u64 = 16 << 20;
/// Buffer for TLS handshake data per connection (quinn's default, set explicitly).
const CRYPTO_BUFFER: usize = 16 * 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// The endpoint could not be created (address in use, ...).
    #[error("cannot listen on {addr}: {reason}")]
    Bind {
        /// Address from the config.
        addr: SocketAddr,
        /// OS error.
        reason: String,
    },
    /// The config is unusable for serving.
    #[error("{0}")]
    Config(String),
}

/// A running server: its bound address and the handle that stops it.
#[derive(Debug)]
pub struct Server {
    endpoint: quinn::Endpoint,
    state: Arc<State>,
    local: SocketAddr,
}

/// Reloads `[server] crl` into a running server (on SIGHUP): see [`Server::crl_reloader`].
#[derive(Clone, Debug)]
pub struct CrlReloader {
    state: Arc<State>,
    endpoint: quinn::Endpoint,
    path: PathBuf,
}

/// What one CRL reload did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrlReloaded {
    /// CRLs in the file.
    pub crls: usize,
    /// Serials they revoke, all together.
    pub revoked: usize,
    /// Open connections re-checked.
    pub checked: usize,
    /// Open connections closed because the new CRLs no longer accept their certificate.
    pub closed: usize,
}

impl CrlReloader {
    /// The CRL file (`[server] crl`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and parses the CRL file and builds the verifier from it; if any of that fails, the
    /// error is returned and the CRLs in force stay. Otherwise installs it for new handshakes,
    /// then re-checks every open connection against it (one chain verification per distinct
    /// certificate, off the runtime) and closes at once those it no longer accepts, with
    /// [`CLOSE_CERTIFICATE_REVOKED`] (or [`CLOSE_CERTIFICATE_EXPIRED`]). Refused while shutting
    /// down.
    pub async fn reload(&self) -> Result<CrlReloaded, ServeError> {
        let path = self.path.clone();
        let tls = self.state.tls.clone();
        let built = tokio::task::spawn_blocking(move || {
            let crls = tls::Crls::load(&path)?;
            let (config, check) = tls.build(Some(&crls))?;
            Ok::<_, tls::TlsError>((crls, config, check))
        })
        .await
        .map_err(|e| ServeError::Config(format!("CRL reload: {e}")))?;
        let (crls, config, check) = built?;
        let crypto = QuicServerConfig::try_from(config)
            .map_err(|e| ServeError::Config(format!("TLS config unusable for QUIC: {e}")))?;
        {
            let mut serving = self.state.serving.lock();
            let Some(quic) = serving.as_mut() else {
                return Err(ServeError::Config("shutting down".into()));
            };
            quic.crypto = Arc::new(crypto);
            self.endpoint.set_server_config(Some(quic.clone()));
        }
        let (checked, closed) = self.state.live.recheck(check).await;
        Ok(CrlReloaded {
            crls: crls.count(),
            revoked: crls.revoked(),
            checked,
            closed,
        })
    }
}

/// What the daemon adds around the QUIC server: the audit log and the key reserved for it.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// Admin operations and authorization failures are recorded here (signs are recorded by
    /// the engine's workers). `None` runs without an audit log.
    pub audit: Option<AuditLog>,
    /// The audit log's own key: clients may read its public key and nothing else.
    pub audit_key: Option<KeyName>,
    /// The access policy (`[server] policy`), shared with whoever reloads it (SIGHUP). `None`
    /// keeps the built-in rules: every authenticated client may use the non-admin ops, and
    /// admin ops need an identity in `[server] admins`.
    pub policy: Option<Arc<LivePolicy>>,
    /// Merkle batch signing (`[batch]`); `None` signs every request plainly.
    pub batch: Option<Arc<batcher::Batcher>>,
}

/// State shared by all connection and stream tasks.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) engine: Engine,
    pub(crate) cfg: ServerConfig,
    pub(crate) extras: Extras,
    /// True once shutdown started: new requests are answered UNAVAILABLE.
    pub(crate) draining: watch::Sender<bool>,
    /// True once the grace period is over: waiting requests are answered UNAVAILABLE.
    pub(crate) expired: watch::Sender<bool>,
    inflight: AtomicUsize,
    idle: Notify,
    /// Connection admission (rates, caps); see [`admission`].
    admission: Arc<Mutex<Admission>>,
    /// Where `Verify` requests are checked (off the network runtime).
    pub(crate) verify: verify_pool::VerifyPool,
    /// Refused requests and handshakes: limited per identity and source, summarized in the
    /// audit log (see [`refusals`]).
    pub(crate) refusals: Arc<refusals::Refusals>,
    /// The request byte budget of all connections together (`server.request_budget`).
    request_budget: Arc<tokio::sync::Semaphore>,
    /// What new TLS server configs are built from (after a CRL reload).
    tls: tls::ServerTls,
    /// The QUIC config new handshakes get; `None` once shutdown started (a reload then installs
    /// nothing).
    serving: Mutex<Option<quinn::ServerConfig>>,
    /// Open connections and the certificate check in force, for re-checks on CRL reload.
    live: Arc<live::Live>,
}

impl State {
    pub(crate) fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}

/// Counts a request in flight until dropped.
pub(crate) struct InflightGuard(Arc<State>);

impl InflightGuard {
    pub(crate) fn new(state: &Arc<State>) -> Self {
        state.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(Arc::clone(state))
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Server {
    /// Binds the endpoint. Must be called inside a tokio runtime.
    pub fn bind(engine: Engine, cfg: ServerConfig) -> Result<Server, ServeError> {
        Server::bind_with(engine, cfg, Extras::default())
    }

    /// Like [`Server::bind`], with the audit log and reserved key. When `cfg.policy` names a
    /// policy file and `extras.policy` is `None`, the file is loaded here (a configured policy is
    /// always enforced); pass a [`LivePolicy`] in `extras` to keep a handle for reloading it.
    pub fn bind_with(
        engine: Engine,
        cfg: ServerConfig,
        mut extras: Extras,
    ) -> Result<Server, ServeError> {
        if let (None, Some(path)) = (&extras.policy, &cfg.policy) {
            let live = LivePolicy::load(path).map_err(|e| ServeError::Config(e.to_string()))?;
            extras.policy = Some(Arc::new(live));
        }
        let server_tls = tls::ServerTls::load(&cfg.cert, &cfg.key, &cfg.client_ca)?;
        let crls = cfg.crl.as_deref().map(tls::Crls::load).transpose()?;
        let (rustls_cfg, check) = server_tls.build(crls.as_ref())?;
        let crypto = QuicServerConfig::try_from(rustls_cfg)
            .map_err(|e| ServeError::Config(format!("TLS config unusable for QUIC: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(Arc::new(transport(&cfg)?));
        let limits = limits(&cfg);
        server_config
            .max_incoming(limits.max_handshakes.saturating_mul(INCOMING_PER_HANDSHAKE))
            .incoming_buffer_size(INCOMING_BUFFER)
            .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
        let endpoint = quinn::Endpoint::server(server_config.clone(), cfg.listen).map_err(|e| {
            ServeError::Bind {
                addr: cfg.listen,
                reason: e.to_string(),
            }
        })?;
        let local = endpoint.local_addr().map_err(|e| ServeError::Bind {
            addr: cfg.listen,
            reason: e.to_string(),
        })?;
        let verify_threads = cfg.verify_threads();
        let request_budget = budget::global(cfg.request_budget);
        let refusals = Arc::new(refusals::Refusals::new(
            cfg.refusals_per_second,
            cfg.refusals_burst,
            extras.audit.clone(),
            engine.metrics().clone(),
        ));
        tokio::spawn(Arc::clone(&refusals).run());
        let state = Arc::new(State {
            refusals,
            engine,
            cfg,
            extras,
            draining: watch::Sender::new(false),
            expired: watch::Sender::new(false),
            inflight: AtomicUsize::new(0),
            request_budget,
            idle: Notify::new(),
            admission: Arc::new(Mutex::new(Admission::new(limits, Instant::now()))),
            verify: verify_pool::VerifyPool::start(verify_threads)
                .map_err(|e| ServeError::Config(format!("starting the verify threads: {e}")))?,
            tls: server_tls,
            serving: Mutex::new(Some(server_config)),
            live: Arc::new(live::Live::new(check)),
        });
        Ok(Server {
            endpoint,
            state,
            local,
        })
    }

    /// Turns true when the server starts draining (for `/readyz`).
    pub fn draining(&self) -> watch::Receiver<bool> {
        self.state.draining.subscribe()
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The handle that reloads `[server] crl` while the server runs; `None` without a CRL.
    pub fn crl_reloader(&self) -> Option<CrlReloader> {
        let path = self.state.cfg.crl.clone()?;
        Some(CrlReloader {
            state: Arc::clone(&self.state),
            endpoint: self.endpoint.clone(),
            path,
        })
    }

    /// Serves until `shutdown` resolves, then drains: no new connections; requests already
    /// accepted get until the grace period to finish, then a retryable UNAVAILABLE; requests
    /// arriving meanwhile get UNAVAILABLE at once. Stops the engine before returning.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Server {
            endpoint, state, ..
        } = self;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => admit(&state, incoming),
                    None => break,
                },
            }
        }
        tracing::info!("shutting down: draining in-flight requests");
        {
            // Under the lock a CRL reload installs with, so that none re-opens the endpoint.
            let mut serving = state.serving.lock();
            *serving = None;
            endpoint.set_server_config(None);
        }
        state.draining.send_replace(true);
        let grace = state.cfg.shutdown_grace;
        if !wait_idle(&state, grace).await {
            let left = state.inflight.load(Ordering::SeqCst);
            tracing::warn!(
                left,
                "grace period over; answering the queued rest UNAVAILABLE"
            );
            // Only requests no worker has started are cancelled (answered UNAVAILABLE, i.e. not
            // signed, so a retry elsewhere is safe); those already in an HSM call finish and
            // get their real answer.
            let engine = state.engine.clone();
            let _ = tokio::task::spawn_blocking(move || engine.cancel_queued()).await;
            if !wait_idle(&state, Duration::from_secs(2)).await {
                // Stuck in the HSM: answer UNAVAILABLE after all (their calls may still
                // complete; the audit log says so if they do).
                state.expired.send_replace(true);
                wait_idle(&state, Duration::from_secs(2)).await;
            }
        }
        let engine = state.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        tracing::info!("stopped");
    }
}

/// Waits until no request is in flight, at most `limit`. True when idle.
async fn wait_idle(state: &State, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = state.idle.notified();
        if state.inflight.load(Ordering::SeqCst) == 0 {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return state.inflight.load(Ordering::SeqCst) == 0;
        }
    }
}

/// The admission limits from `[server]`; caps larger than `max_connections` are cut to it.
fn limits(cfg: &ServerConfig) -> Limits {
    let max_handshakes = cfg.max_handshakes.min(cfg.max_connections);
    Limits {
        max_connections: cfg.max_connections,
        max_per_ip: cfg.max_connections_per_ip.min(cfg.max_connections),
        max_handshakes,
        retry_handshakes: admission::retry_threshold(max_handshakes, cfg.handshake_retry_share),
        rate_per_sec: f64::from(cfg.new_connections_per_second),
        burst: f64::from(cfg.new_connections_burst),
    }
}

/// Every per-connection bound quinn has, set explicitly (quinn's defaults are for general use:
/// 100 streams, a 1.25 MB stream window, no connection window, 1.25 MB of datagram buffer).
/// Peers may open `max_streams_per_connection` request streams (no unidirectional ones),
/// buffer at most `stream_receive_window` per stream and `connection_receive_window` per
/// connection, send no datagrams, and are closed after `idle_timeout` without traffic.
/// The server sends no keep-alives (idle clients are reclaimed). How long one request may take to
/// arrive is `read_timeout`, enforced per stream by the dispatcher.
fn transport(cfg: &ServerConfig) -> Result<TransportConfig, ServeError> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(cfg.max_streams_per_connection));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(cfg.stream_receive_window));
    t.receive_window(VarInt::from_u32(cfg.connection_receive_window));
    t.send_window(u64::from(cfg.connection_receive_window));
    t.datagram_receive_buffer_size(None);
    t.crypto_buffer_size(CRYPTO_BUFFER);
    t.keep_alive_interval(None);
    let idle = IdleTimeout::try_from(cfg.idle_timeout)
        .map_err(|e| ServeError::Config(format!("server.idle_timeout: {e}")))?;
    t.max_idle_timeout(Some(idle));
    t.ack_frequency_config(Some(ack_frequency()));
    Ok(t)
}

/// Decides about one connection attempt before quinn keeps any state for it, and carries the
/// decision out: start the handshake (in its own task), ask for a Retry, or refuse.
fn admit(state: &Arc<State>, incoming: quinn::Incoming) {
    let peer = incoming.remote_address();
    let validated = incoming.remote_address_validated();
    let source = admission::source_key(peer.ip());
    let decision = state
        .admission
        .lock()
        .decide(Instant::now(), source, validated);
    let metrics = state.engine.metrics();
    if validated
        && matches!(decision, Decision::Accept)
        && state
            .refusals
            .source_throttled(peer.ip(), Instant::now())
            .is_some()
    {
        // A (validated) address whose handshakes or requests keep being refused waits until
        // its refusal bucket refills; nothing is kept for it meanwhile.
        tracing::debug!(%peer, "connection refused: too many refusals from this address");
        metrics.overloaded(crate::telemetry::OverloadReason::Refusals);
        incoming.refuse();
        return;
    }
    metrics.incoming(decision.outcome());
    match decision {
        Decision::Accept => {
            let slot = Slot::new(Arc::clone(&state.admission), source);
            metrics.connection_opened();
            let guard = ConnGuard(Arc::clone(state));
            tokio::spawn(connection(incoming, Arc::clone(state), guard, slot));
        }
        Decision::Retry => {
            tracing::trace!(%peer, "asking for address validation (Retry)");
            if let Err(e) = incoming.retry() {
                // Only an already validated address cannot be asked again; admission never
                // asks one, but refusing is the safe answer if it did.
                e.into_incoming().refuse();
            }
        }
        Decision::Refuse(reason) => {
            tracing::debug!(%peer, ?reason, "connection refused");
            incoming.refuse();
        }
    }
}

pub use live::EXPIRY_CLOSE_BOUND;
pub use signer_client::transport::ack_frequency;

/// Counts a connection in `signer_connections` while it lives.
struct ConnGuard(Arc<State>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.engine.metrics().connection_closed();
    }
}

async fn connection(
    incoming: quinn::Incoming,
    state: Arc<State>,
    _guard: ConnGuard,
    mut slot: Slot,
) {
    let peer = incoming.remote_address();
    // Read before the handshake picks its TLS config (see `Live::register`).
    let generation = state.live.generation();
    // Dropping the handshake future on timeout closes the connection.
    let handshake = tokio::time::timeout(state.cfg.handshake_timeout, incoming).await;
    slot.handshake_done();
    let conn = match handshake {
        Err(_) => {
            tracing::debug!(%peer, "handshake not completed in time; dropped");
            state
                .engine
                .metrics()
                .incoming(IncomingOutcome::HandshakeTimeout);
            return;
        }
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "handshake failed: {e}");
            // A TLS alert (no client certificate, an unknown CA, ...) is an authentication
            // failure and is audited; timeouts and resets are not.
            if matches!(e, quinn::ConnectionError::TransportError(_)) {
                dispatch::audit_auth_failure(
                    &state,
                    peer.ip(),
                    &format!("peer {peer}: handshake refused: {e}"),
                );
            }
            return;
        }
    };
    let (identity, chain, expires) = match peer_identity(&conn, &state) {
        Ok((id, chain, expires)) => (Arc::<str>::from(id), chain, expires),
        Err(e) => {
            tracing::warn!(%peer, "refusing connection: {e}");
            conn.close(VarInt::from_u32(CLOSE_NO_IDENTITY), b"no usable identity");
            dispatch::audit_auth_failure(&state, peer.ip(), &format!("peer {peer}: {e}"));
            return;
        }
    };
    let mut registration = match state.live.register(chain, generation) {
        Ok(r) => r,
        Err(refusal) => {
            live::cut(&state, &conn, peer, &identity, refusal).await;
            return;
        }
    };
    tracing::debug!(%peer, identity = %identity, "connection established");
    let budget = ByteBudget::new(state.cfg.connection_request_budget, &state.request_budget);
    let expiry = live::expiry(expires);
    tokio::pin!(expiry);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut expiry => {
                live::cut(&state, &conn, peer, &identity, tls::Refusal::Expired).await;
                return;
            }
            refusal = registration.refused() => {
                live::cut(&state, &conn, peer, &identity, refusal).await;
                return;
            }
            accepted = conn.accept_bi() => accepted,
        };
        match accepted {
            Ok((send, recv)) => {
                let guard = InflightGuard::new(&state);
                if state.inflight.load(Ordering::SeqCst) > state.cfg.max_open_streams {
                    tokio::spawn(dispatch::refuse_stream(
                        send,
                        recv,
                        Arc::clone(&state),
                        guard,
                    ));
                    continue;
                }
                tokio::spawn(dispatch::stream(
                    send,
                    recv,
                    Arc::clone(&state),
                    Arc::clone(&identity),
                    peer.ip(),
                    budget.clone(),
                    guard,
                ));
            }
            Err(e) => {
                tracing::debug!(%peer, "connection ended: {e}");
                return;
            }
        }
    }
}

/// The peer's identity, its certificate chain (end-entity first) and when its certificate
/// expires.
fn peer_identity(
    conn: &quinn::Connection,
    state: &State,
) -> Result<(String, live::Chain, std::time::SystemTime), String> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or("no client certificate")?;
    let leaf = certs.first().ok_or("empty client certificate chain")?;
    let identity =
        tls::identity_of(leaf.as_ref(), state.cfg.identity).map_err(|e| e.to_string())?;
    let expires = tls::not_after(leaf.as_ref())
        .map_err(|e| e.to_string())?
        .checked_add(live::EXPIRY_CLOSE_BOUND)
        .ok_or("client certificate notAfter out of range")?;
    Ok((identity, live::Chain::from(*certs), expires))
}
