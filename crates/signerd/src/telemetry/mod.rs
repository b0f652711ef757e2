//! Telemetry: metric names (every series is listed in docs/CONFIG.md), the Prometheus recorder, and the admin HTTP listener
//! (`/metrics`, `/livez`, `/readyz`).
//!
//! Three pieces, used together by `serve`:
//!
//! 1. [`install`] sets the process-wide `metrics` recorder (a Prometheus one whose histograms have
//!    explicit buckets) and returns the [`PrometheusHandle`] that renders the exposition.
//!    [`spawn_upkeep`] must then run for as long as the process does: it drains recorded histogram
//!    samples into their buckets (the exporter's own HTTP listener would do that; we do not use it).
//! 2. [`Metrics`] registers every series once, with every label value known at start (ops,
//!    statuses, partition names, shard count), and keeps the handles. The hot path then only
//!    increments atomics and pushes histogram samples: no label hashing, no allocation.
//! 3. [`serve_admin`] (or [`Admin`] for non-default limits) answers the admin HTTP port on a
//!    listener from [`bind_admin`]. `/readyz` asks a [`Readiness`] source that the caller supplies.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use signer_proto::{protocol::Op, Status};
//! use signerd::telemetry::{self, Metrics, ReadyReport};
//!
//! let handle = telemetry::install()?;
//! let _upkeep = telemetry::spawn_upkeep(handle.clone(), telemetry::UPKEEP_INTERVAL);
//! let metrics = Metrics::new(&["hsm-a", "hsm-b"], 4);
//! metrics.request(Op::Sign, Status::Ok, Duration::from_millis(3));
//!
//! let listener = telemetry::bind_admin("127.0.0.1:9464".parse()?).await?;
//! let ready = Arc::new(|| ReadyReport::default());
//! telemetry::serve_admin(listener, handle, ready, std::future::pending()).await;
//! # Ok(()) }
//! ```

mod admin;
mod health;
mod instruments;

use std::time::Duration;

pub use metrics_exporter_prometheus::PrometheusHandle;

pub use admin::{bind_admin, serve_admin, Admin, AdminLimits, DEFAULT_ADMIN_PORT};
pub use health::{PartitionHealth, Readiness, ReadyReport};
pub use instruments::{CloseReason, IncomingOutcome, Metrics, OverloadReason};

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Metric names, exactly as exposed (docs/CONFIG.md lists them: the audit, authz, overload and connection
/// series). Counters carry their `_total` suffix here; the exporter adds none.
pub mod names {
    /// Counter `{op, status}`: requests answered.
    pub const REQUESTS_TOTAL: &str = "signer_requests_total";
    /// Histogram `{op}`: end-to-end request latency, seconds.
    pub const REQUEST_DURATION_SECONDS: &str = "signer_request_duration_seconds";
    /// Histogram: time a job waited in its shard queue, seconds.
    pub const QUEUE_WAIT_SECONDS: &str = "signer_queue_wait_seconds";
    /// Histogram `{partition}`: time inside one HSM call, seconds.
    pub const HSM_DURATION_SECONDS: &str = "signer_hsm_duration_seconds";
    /// Histogram: jobs per batch a worker drained.
    pub const BATCH_SIZE: &str = "signer_batch_size";
    /// Gauge `{shard}`: jobs waiting in a shard queue.
    pub const QUEUE_DEPTH: &str = "signer_queue_depth";
    /// Gauge `{shard}`: 1 while a shard queue is in sustained overload (admission applies
    /// `engine.max_queue_wait` instead of the burst budget), else 0.
    pub const QUEUE_OVERLOADED: &str = "signer_queue_overloaded";
    /// Gauge `{partition}`: jobs handed to a partition's workers and not yet answered.
    pub const INFLIGHT: &str = "signer_inflight";
    /// Gauge `{partition}`: circuit breaker state, 0 closed, 1 half-open, 2 open.
    pub const BREAKER_STATE: &str = "signer_breaker_state";
    /// Counter `{partition}`: PKCS#11 sessions rebuilt after a session-lost error.
    pub const SESSION_REBUILDS_TOTAL: &str = "signer_session_rebuilds_total";
    /// Gauge `{version}` = 1.
    pub const BUILD_INFO: &str = "signer_build_info";
    /// Counter: audit records appended.
    pub const AUDIT_RECORDS_TOTAL: &str = "signer_audit_records_total";
    /// Counter: audit log fsyncs.
    pub const AUDIT_FSYNCS_TOTAL: &str = "signer_audit_fsyncs_total";
    /// Counter: audit writes (or fsyncs) that failed.
    pub const AUDIT_WRITE_FAILURES_TOTAL: &str = "signer_audit_write_failures_total";
    /// Gauge: 1 while the audit log accepts writes, else 0.
    pub const AUDIT_HEALTHY: &str = "signer_audit_healthy";
    /// Gauge: bytes free on the audit log's filesystem (for an unprivileged writer).
    pub const AUDIT_DISK_FREE_BYTES: &str = "signer_audit_disk_free_bytes";
    /// Gauge: 1 while the audit disk is below `[audit] min_free_mib` or cannot be measured.
    pub const AUDIT_DISK_LOW: &str = "signer_audit_disk_low";
    /// Counter: signed audit checkpoints written.
    pub const AUDIT_CHECKPOINTS_TOTAL: &str = "signer_audit_checkpoints_total";
    /// Sign calls that arrived coalesced (SignBatch with `COALESCED_CALLS`).
    pub const COALESCED_CALLS_TOTAL: &str = "signer_coalesced_calls_total";
    /// Counter `{op}`: requests refused by authorization.
    pub const AUTHZ_DENIED_TOTAL: &str = "signer_authz_denied_total";
    /// Counter `{kind}`: refusals (`denial`: refused requests; `auth`: refused handshakes and
    /// identities) counted in an audit summary record instead of a record of their own.
    pub const AUDIT_SUMMARIZED_TOTAL: &str = "signer_audit_summarized_total";
    /// Gauge `{partition}`: 1 healthy, 0 not.
    pub const PARTITION_HEALTHY: &str = "signer_partition_healthy";
    /// Counter `{reason}`: requests shed as OVERLOADED, by reason (see [`OVERLOAD_REASONS`]).
    ///
    /// [`OVERLOAD_REASONS`]: super::OVERLOAD_REASONS
    pub const OVERLOADED_TOTAL: &str = "signer_overloaded_total";
    /// Gauge: open client (QUIC) connections.
    pub const CONNECTIONS: &str = "signer_connections";
    /// Gauge `{partition}`: HSM calls allowed in flight at once (the adaptive limit).
    pub const INFLIGHT_LIMIT: &str = "signer_inflight_limit";
    /// Counter `{partition}`: requests left unsigned by this partition (busy/throttled, or a
    /// device failure) and tried again (within the retry budget).
    pub const HSM_RETRIES_TOTAL: &str = "signer_hsm_retries_total";
    /// Counter `{outcome}`: new QUIC connection attempts by admission outcome (see
    /// [`INCOMING_OUTCOMES`]).
    ///
    /// [`INCOMING_OUTCOMES`]: super::INCOMING_OUTCOMES
    pub const INCOMING_TOTAL: &str = "signer_incoming_total";
    /// Counter `{reason}`: open connections the server closed because their client certificate
    /// stopped being accepted (see [`CONNECTION_CLOSE_REASONS`]).
    ///
    /// [`CONNECTION_CLOSE_REASONS`]: super::CONNECTION_CLOSE_REASONS
    pub const CONNECTIONS_CLOSED_TOTAL: &str = "signer_connections_closed_total";
}

/// The Prometheus type of a series family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic counter (name ends in `_total`).
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram with explicit buckets (`_bucket{le}`, `_sum`, `_count`).
    Histogram,
}

/// Every series family [`Metrics`] registers: name, kind, label names. The dashboard test and the
/// exposition test check against this list.
pub const METRICS: &[(&str, MetricKind, &[&str])] = &[
    (
        names::REQUESTS_TOTAL,
        MetricKind::Counter,
        &["op", "status"],
    ),
    (
        names::REQUEST_DURATION_SECONDS,
        MetricKind::Histogram,
        &["op"],
    ),
    (names::QUEUE_WAIT_SECONDS, MetricKind::Histogram, &[]),
    (
        names::HSM_DURATION_SECONDS,
        MetricKind::Histogram,
        &["partition"],
    ),
    (names::BATCH_SIZE, MetricKind::Histogram, &[]),
    (names::QUEUE_DEPTH, MetricKind::Gauge, &["shard"]),
    (names::QUEUE_OVERLOADED, MetricKind::Gauge, &["shard"]),
    (names::INFLIGHT, MetricKind::Gauge, &["partition"]),
    (names::BREAKER_STATE, MetricKind::Gauge, &["partition"]),
    (
        names::SESSION_REBUILDS_TOTAL,
        MetricKind::Counter,
        &["partition"],
    ),
    (names::BUILD_INFO, MetricKind::Gauge, &["version"]),
    (names::AUDIT_RECORDS_TOTAL, MetricKind::Counter, &[]),
    (names::AUDIT_FSYNCS_TOTAL, MetricKind::Counter, &[]),
    (names::AUDIT_WRITE_FAILURES_TOTAL, MetricKind::Counter, &[]),
    (names::AUDIT_HEALTHY, MetricKind::Gauge, &[]),
    (names::AUDIT_DISK_FREE_BYTES, MetricKind::Gauge, &[]),
    (names::AUDIT_DISK_LOW, MetricKind::Gauge, &[]),
    (names::AUDIT_CHECKPOINTS_TOTAL, MetricKind::Counter, &[]),
    (names::COALESCED_CALLS_TOTAL, MetricKind::Counter, &[]),
    (names::AUTHZ_DENIED_TOTAL, MetricKind::Counter, &["op"]),
    (
        names::AUDIT_SUMMARIZED_TOTAL,
        MetricKind::Counter,
        &["kind"],
    ),
    (names::PARTITION_HEALTHY, MetricKind::Gauge, &["partition"]),
    (names::OVERLOADED_TOTAL, MetricKind::Counter, &["reason"]),
    (names::CONNECTIONS, MetricKind::Gauge, &[]),
    (names::INFLIGHT_LIMIT, MetricKind::Gauge, &["partition"]),
    (
        names::HSM_RETRIES_TOTAL,
        MetricKind::Counter,
        &["partition"],
    ),
    (names::INCOMING_TOTAL, MetricKind::Counter, &["outcome"]),
    (
        names::CONNECTIONS_CLOSED_TOTAL,
        MetricKind::Counter,
        &["reason"],
    ),
];

/// `reason` label values of `signer_overloaded_total`, in [`OverloadReason`] order.
pub const OVERLOAD_REASONS: &[&str] = &[
    "queue_full",
    "queue_wait",
    "deadline",
    "quota",
    "burst_wait",
    "request_memory",
    "open_streams",
    "refusals",
];

/// `outcome` label values of `signer_incoming_total`, in [`IncomingOutcome`] order: admitted,
/// asked to Retry (address validation), refused at a cap, or dropped because the handshake did
/// not complete within `handshake_timeout`.
pub const INCOMING_OUTCOMES: &[&str] = &[
    "accepted",
    "retry",
    "refused_max_connections",
    "refused_handshakes",
    "refused_per_ip",
    "handshake_timeout",
];

/// `reason` label values of `signer_connections_closed_total`, in [`CloseReason`] order: the
/// certificate of an open connection expired, or a reloaded CRL no longer accepts it.
pub const CONNECTION_CLOSE_REASONS: &[&str] = &["certificate_expired", "certificate_revoked"];

/// Bucket upper bounds, in seconds, of every latency histogram (request, queue wait, HSM call):
/// 0.1 ms to 10 s. The low end reaches below DESIGN's 0.5 ms because a SoftHSM2 ECDSA sign takes
/// about 0.1 ms; the 100 ms bound is the p95 target.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket upper bounds of `signer_batch_size`: powers of two, 1 to 1024.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// How often [`spawn_upkeep`] should drain histogram samples (see there).
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Errors of telemetry setup.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The Prometheus recorder could not be built or installed; in practice: another global
    /// `metrics` recorder was installed first (a daemon bug, not an operator's).
    #[error("installing the Prometheus metrics recorder: {0}")]
    Recorder(#[from] BuildError),
}

/// The exporter configuration: every histogram of [`METRICS`] gets explicit buckets, so each
/// renders as a Prometheus histogram (`_bucket{le=..}`), never as a summary.
///
/// [`install`] uses it; tests use it with `build_recorder()` and [`metrics::with_local_recorder`].
pub fn prometheus_builder() -> Result<PrometheusBuilder, TelemetryError> {
    let mut builder = PrometheusBuilder::new();
    for &(name, kind, _) in METRICS {
        if kind == MetricKind::Histogram {
            let buckets = if name == names::BATCH_SIZE {
                BATCH_SIZE_BUCKETS
            } else {
                LATENCY_BUCKETS
            };
            builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)?;
        }
    }
    Ok(builder)
}

/// Installs the Prometheus recorder as the process-wide `metrics` recorder and returns the handle
/// that renders `/metrics`. Idempotent: a second call returns the handle of the first. Fails if a
/// different recorder was installed before.
///
/// Construct [`Metrics`] after this: handles registered earlier belong to the no-op recorder.
pub fn install() -> Result<PrometheusHandle, TelemetryError> {
    static INSTALLED: parking_lot::Mutex<Option<PrometheusHandle>> = parking_lot::Mutex::new(None);
    let mut installed = INSTALLED.lock();
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = prometheus_builder()?.install_recorder()?;
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Spawns the task that calls [`PrometheusHandle::run_upkeep`] every `every` (use
/// [`UPKEEP_INTERVAL`]). Recorded histogram samples sit in a lock-free queue until upkeep or a
/// scrape folds them into the buckets, so without it memory grows with traffic between scrapes.
/// Abort the returned task on shutdown, or let the runtime drop it.
pub fn spawn_upkeep(handle: PrometheusHandle, every: Duration) -> tokio::task::JoinHandle<()> {
    spawn_sampler(every, move || handle.run_upkeep())
}

/// Spawns a task that calls `sample` every `every`, e.g. to refresh the sampled gauges (queue
/// depth, inflight, partition health) through the `Metrics::set_*` methods. `sample` runs on the
/// async runtime: it must be quick and must not block (no HSM calls). For gauges that only matter
/// when scraped, [`Admin::on_scrape`] is the cheaper place.
pub fn spawn_sampler<F>(every: Duration, mut sample: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate
        loop {
            ticks.tick().await;
            sample();
        }
    })
}

#[cfg(test)]
mod dashboard_tests;
#[cfg(test)]
mod tests;
