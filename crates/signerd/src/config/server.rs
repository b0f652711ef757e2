//! `[server]`: the QUIC front end. Transport limits are chosen for this workload (small requests,
//! thousands in flight per connection); see docs/CONFIG.md for the reasoning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;
use crate::tls::IdentitySource;

/// `[server]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// UDP address to listen on (QUIC).
    pub listen: SocketAddr,
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM, mode 0600). Env override: `SIGNERD_TLS_KEY_FILE`.
    pub key: PathBuf,
    /// CA bundle (PEM) that client certificates must chain to.
    pub client_ca: PathBuf,
    /// Which certificate field names the caller: `san-uri`, `san-dns` or `common-name`.
    #[serde(default = "default_identity")]
    pub identity: IdentitySource,
    /// Identities allowed to run admin operations (create, rotate, retire, destroy) when no
    /// `policy` is configured. With a policy, the policy decides admin ops too and this list is
    /// not consulted.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Access policy file (TOML, see docs/CONFIG.md): who may use which key for which op,
    /// quotas, two-admin approval. Relative to the config file. Reloaded on SIGHUP. Without it,
    /// every authenticated client may use every key (non-admin ops) and `admins` run admin ops.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// Most concurrent client connections; more are refused. Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most concurrent connections from one source IP address. Default 64. An unvalidated
    /// source over the cap is asked to Retry (its address might be spoofed), a validated one is
    /// refused.
    #[serde(default = "default_max_per_ip")]
    pub max_connections_per_ip: usize,
    /// New connections per second (average) admitted without address validation; beyond it,
    /// unvalidated sources are asked to Retry (one extra round trip, no state kept until the
    /// client echoes the token). Default 200.
    #[serde(default = "default_new_rate")]
    pub new_connections_per_second: u32,
    /// How many new connections may arrive at once before the rate applies. Default 400.
    #[serde(default = "default_new_burst")]
    pub new_connections_burst: u32,
    /// Refused requests (authorization denials, requests on the audit key) and refused
    /// handshakes or identities, per second, that one identity and one source address may cause
    /// (average, after `refusals_burst`). Beyond it, that identity's (or address's) requests are
    /// answered OVERLOADED before authorization, and new connections from that address are
    /// refused, until the bucket refills. Default 50.
    #[serde(default = "default_refusal_rate")]
    pub refusals_per_second: u32,
    /// How many refusals one identity or source may cause at once before the rate applies.
    /// Default 100.
    #[serde(default = "default_refusal_burst")]
    pub refusals_burst: u32,
    /// Hard cap on half-open (handshaking) connections: beyond it, new connections are refused.
    /// Default 256.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
    /// Share of `max_handshakes` (0.0 to 1.0) at which unvalidated sources are asked to Retry.
    /// Default 0.25 (64 of 256). 0 asks every unvalidated source to Retry.
    #[serde(default = "default_retry_share")]
    pub handshake_retry_share: f64,
    /// A handshake must complete this long after the connection was admitted, or the
    /// connection is dropped. Default 10 s.
    #[serde(
        default = "default_handshake_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub handshake_timeout: Duration,
    /// Optional certificate revocation lists (PEM, one or more `X509 CRL` blocks). When set,
    /// every client certificate's revocation status must be known from these CRLs (one per CA
    /// that issues client certificates), and an expired CRL refuses all its CA's clients.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Most concurrent request streams per connection (quinn's default is 100). Default 4096:
    /// one connection carries 10k req/s at ~50 ms each (~500 in flight) with ample headroom.
    #[serde(default = "default_max_streams")]
    pub max_streams_per_connection: u32,
    /// Per-stream receive window in bytes. Default 1 MiB (one maximum-size frame).
    #[serde(default = "default_stream_window")]
    pub stream_receive_window: u32,
    /// Per-connection receive window in bytes: what quinn buffers for a connection before the
    /// daemon reads it. Default 2 MiB (docs/CONFIG.md: the memory bound).
    #[serde(default = "default_conn_window")]
    pub connection_receive_window: u32,
    /// Bytes of requests and answers that one connection's streams may hold at once in the
    /// daemon (reserved from the length prefix before a request body is read, and from the
    /// encoded size before an answer is written). A request that does not fit is answered
    /// OVERLOADED without being read. Default 16 MiB; at least one maximum-size frame.
    #[serde(default = "default_connection_request_budget")]
    pub connection_request_budget: u64,
    /// The same budget for all connections together. Default 256 MiB.
    #[serde(default = "default_request_budget")]
    pub request_budget: u64,
    /// Request streams open at once across all connections; one more is answered OVERLOADED
    /// at once. Default 65,536.
    #[serde(default = "default_max_open_streams")]
    pub max_open_streams: usize,
    /// Longest the daemon waits to hand an answer to a peer that does not read it (its receive
    /// window stays full); then the stream is reset and the answer dropped. Default 10 s.
    #[serde(
        default = "default_write_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub write_timeout: Duration,
    /// Close connections idle this long. Default 30 s.
    #[serde(
        default = "default_idle_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub idle_timeout: Duration,
    /// A request must arrive completely within this time after its stream opens. Default 5 s.
    #[serde(
        default = "default_read_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub read_timeout: Duration,
    /// Deadline for requests that carry none. Default 5 s.
    #[serde(
        default = "default_default_deadline",
        deserialize_with = "duration::deserialize"
    )]
    pub default_deadline: Duration,
    /// Longest deadline a client may ask for (at most [`MAX_DEADLINE`], what a request can carry).
    /// Default 60 s.
    #[serde(
        default = "default_max_deadline",
        deserialize_with = "duration::deserialize"
    )]
    pub max_deadline: Duration,
    /// Async runtime threads for the network side (QUIC, TLS, framing). HSM work has its own
    /// worker threads. Default: half the CPU cores, at least 1 (tuning/RESULTS.md).
    #[serde(default)]
    pub runtime_threads: Option<usize>,
    /// Threads that check `Verify` requests in software, off the network runtime (a full queue,
    /// 256 jobs per thread, answers OVERLOADED). Default: half the CPU cores, at least 1.
    #[serde(default)]
    pub verify_threads: Option<usize>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take before they are answered
    /// UNAVAILABLE. Default 10 s.
    #[serde(
        default = "default_shutdown_grace",
        deserialize_with = "duration::deserialize"
    )]
    pub shutdown_grace: Duration,
}

/// The longest `max_deadline`: a request's deadline is a 32-bit count of milliseconds.
pub const MAX_DEADLINE: Duration = Duration::from_millis(u32::MAX as u64);

/// The default of the thread counts that share the cores with the HSM workers: half the CPU
/// cores, at least 1.
fn half_the_cores() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores / 2).max(1)
}

impl ServerConfig {
    /// Runtime threads to start.
    pub fn runtime_threads(&self) -> usize {
        self.runtime_threads.unwrap_or_else(half_the_cores)
    }

    /// Verify threads to start.
    pub fn verify_threads(&self) -> usize {
        self.verify_threads.unwrap_or_else(half_the_cores)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.max_connections_per_ip == 0 {
            return Err("server.max_connections_per_ip must be at least 1".into());
        }
        if self.new_connections_per_second == 0 || self.new_connections_burst == 0 {
            return Err(
                "server.new_connections_per_second and new_connections_burst must be at least 1"
                    .into(),
            );
        }
        if self.max_handshakes == 0 {
            return Err("server.max_handshakes must be at least 1".into());
        }
        if self.refusals_per_second == 0 || self.refusals_burst == 0 {
            return Err("server.refusals_per_second and refusals_burst must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.handshake_retry_share) {
            return Err("server.handshake_retry_share must be between 0.0 and 1.0".into());
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(600))
            .contains(&self.handshake_timeout)
        {
            return Err("server.handshake_timeout must be between 100ms and 10m".into());
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return Err("server.max_connections must be between 1 and 1000000".into());
        }
        if !(1..=1_000_000).contains(&self.max_streams_per_connection) {
            return Err("server.max_streams_per_connection must be between 1 and 1000000".into());
        }
        if self.stream_receive_window < 64 * 1024 {
            return Err("server.stream_receive_window must be at least 65536".into());
        }
        if self.connection_receive_window < self.stream_receive_window {
            return Err("server.connection_receive_window must be >= stream_receive_window".into());
        }
        let one_frame = (signer_proto::protocol::MAX_FRAME + 4) as u64;
        if self.connection_request_budget < one_frame {
            return Err(format!(
                "server.connection_request_budget must be at least {one_frame} (one maximum-size \
                 request frame)"
            ));
        }
        if self.request_budget < self.connection_request_budget {
            return Err("server.request_budget must be >= server.connection_request_budget".into());
        }
        if self.max_open_streams == 0 {
            return Err("server.max_open_streams must be at least 1".into());
        }
        if self.write_timeout < Duration::from_millis(10) {
            return Err("server.write_timeout must be at least 10ms".into());
        }
        if self.idle_timeout < Duration::from_secs(1) {
            return Err("server.idle_timeout must be at least 1s".into());
        }
        if self.read_timeout < Duration::from_millis(10) {
            return Err("server.read_timeout must be at least 10ms".into());
        }
        if matches!(self.runtime_threads, Some(0) | Some(257..)) {
            return Err("server.runtime_threads must be between 1 and 256".into());
        }
        if matches!(self.verify_threads, Some(0) | Some(257..)) {
            return Err("server.verify_threads must be between 1 and 256".into());
        }
        if self.max_deadline > MAX_DEADLINE {
            return Err(
                "server.max_deadline must be at most 4294967295ms (~49.7 days: a \
                        request's deadline is a 32-bit count of milliseconds)"
                    .into(),
            );
        }
        if self.default_deadline < Duration::from_millis(1)
            || self.default_deadline > self.max_deadline
        {
            return Err(
                "server.default_deadline must be between 1ms and server.max_deadline".into(),
            );
        }
        Ok(())
    }
}

fn default_identity() -> IdentitySource {
    IdentitySource::SanUri
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_per_ip() -> usize {
    64
}
fn default_refusal_rate() -> u32 {
    50
}
fn default_refusal_burst() -> u32 {
    100
}
fn default_new_rate() -> u32 {
    200
}
fn default_new_burst() -> u32 {
    400
}
fn default_max_handshakes() -> usize {
    256
}
fn default_retry_share() -> f64 {
    0.25
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_streams() -> u32 {
    4096
}
fn default_stream_window() -> u32 {
    1 << 20
}
fn default_conn_window() -> u32 {
    2 << 20
}
fn default_connection_request_budget() -> u64 {
    16 << 20
}
fn default_request_budget() -> u64 {
    256 << 20
}
fn default_max_open_streams() -> usize {
    65_536
}
fn default_write_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_read_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_default_deadline() -> Duration {
    Duration::from_secs(5)
}
fn default_max_deadline() -> Duration {
    Duration::from_secs(60)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
