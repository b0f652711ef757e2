//! [`Metrics`]: every series registered once, at start, with the label values known then; the hot
//! path indexes into arrays of handles.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, Unit};
use metrics::{Counter, Gauge, Histogram};

use signer_proto::protocol::Op;
use signer_proto::Status;

use super::{names, CONNECTION_CLOSE_REASONS, INCOMING_OUTCOMES, OVERLOAD_REASONS};

/// The `reason` label of `signer_overloaded_total`. `OverloadReason as usize` indexes
/// [`OVERLOAD_REASONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OverloadReason {
    /// `queue_full`: every eligible shard queue was full.
    QueueFull,
    /// `queue_wait`: the expected queue wait exceeded the budget of a queue in sustained
    /// overload (`engine.max_queue_wait`).
    QueueWait,
    /// `deadline`: the request could not be served before its deadline.
    Deadline,
    /// `quota`: the caller's policy quota (rate or in-flight cap) was exceeded.
    Quota,
    /// `burst_wait`: the expected queue wait exceeded the budget of a queue that keeps up
    /// (`engine.burst_queue_wait`): a burst too large to absorb.
    BurstWait,
    /// `request_memory`: the request did not fit in its connection's or the daemon's request
    /// byte budget (`server.connection_request_budget`, `server.request_budget`); not read.
    RequestMemory,
    /// `open_streams`: `server.max_open_streams` request streams were open.
    OpenStreams,
    /// `refusals`: the caller's identity or source address had too many requests refused
    /// (`server.refusals_per_second`); refused before authorization.
    Refusals,
}

impl OverloadReason {
    /// Every reason, in label order.
    pub const ALL: [OverloadReason; 8] = [
        OverloadReason::QueueFull,
        OverloadReason::QueueWait,
        OverloadReason::Deadline,
        OverloadReason::Quota,
        OverloadReason::BurstWait,
        OverloadReason::RequestMemory,
        OverloadReason::OpenStreams,
        OverloadReason::Refusals,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        OVERLOAD_REASONS[self as usize]
    }
}

/// What became of a new QUIC connection attempt (`signer_incoming_total{outcome}`).
/// `IncomingOutcome as usize` indexes [`INCOMING_OUTCOMES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IncomingOutcome {
    /// `accepted`: the handshake started.
    Accepted,
    /// `retry`: asked to validate its address (QUIC Retry).
    Retry,
    /// `refused_max_connections`: at `max_connections`.
    RefusedMaxConnections,
    /// `refused_handshakes`: at the half-open cap `max_handshakes`.
    RefusedHandshakes,
    /// `refused_per_ip`: its (validated) address is at `max_connections_per_ip`.
    RefusedPerIp,
    /// `handshake_timeout`: admitted, but the handshake did not complete in time.
    HandshakeTimeout,
}

impl IncomingOutcome {
    /// Every outcome, in label order.
    pub const ALL: [IncomingOutcome; 6] = [
        IncomingOutcome::Accepted,
        IncomingOutcome::Retry,
        IncomingOutcome::RefusedMaxConnections,
        IncomingOutcome::RefusedHandshakes,
        IncomingOutcome::RefusedPerIp,
        IncomingOutcome::HandshakeTimeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        INCOMING_OUTCOMES[self as usize]
    }
}

/// Why the server closed an open connection (`signer_connections_closed_total{reason}`).
/// `CloseReason as usize` indexes [`CONNECTION_CLOSE_REASONS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CloseReason {
    /// `certificate_expired`: its client certificate passed its notAfter.
    CertificateExpired,
    /// `certificate_revoked`: a reloaded CRL revokes its certificate (or no longer knows its
    /// status).
    CertificateRevoked,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 2] = [
        CloseReason::CertificateExpired,
        CloseReason::CertificateRevoked,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        CONNECTION_CLOSE_REASONS[self as usize]
    }
}

/// Pre-registered metric handles. Cheap to clone (one `Arc`); share one per process.
///
/// Every method takes label positions (enums, partition and shard indices as given to
/// [`Metrics::new`]) instead of strings, so recording hashes and allocates nothing. An index out of
/// range is ignored (no panic, nothing recorded).
///
/// Construct it after [`install`](super::install): handles bind to whichever recorder is current
/// when they are registered (the global one, a [`metrics::with_local_recorder`] one in tests, or
/// the no-op recorder when none is installed, in which case every method does nothing).
///
/// Initial values: counters 0 (every op × status pair, every partition, every reason), gauges 0,
/// which means "closed" for the breaker and "not healthy" for partitions and the audit log until
/// the caller says otherwise.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    partitions: Vec<String>,
    /// Indexed `op.index() * Status::ALL.len() + status.index()`.
    requests: Vec<Counter>,
    request_duration: Vec<Histogram>,
    queue_wait: Histogram,
    hsm_duration: Vec<Histogram>,
    batch_size: Histogram,
    queue_depth: Vec<Gauge>,
    queue_overloaded: Vec<Gauge>,
    inflight: Vec<Gauge>,
    breaker_state: Vec<Gauge>,
    session_rebuilds: Vec<Counter>,
    partition_healthy: Vec<Gauge>,
    audit_records: Counter,
    audit_fsyncs: Counter,
    audit_write_failures: Counter,
    audit_healthy: Gauge,
    audit_disk_free: Gauge,
    audit_disk_low: Gauge,
    audit_checkpoints: Counter,
    coalesced_calls: Counter,
    authz_denied: Vec<Counter>,
    /// `[denial, auth]`.
    audit_summarized: [Counter; 2],
    overloaded: Vec<Counter>,
    connections: Gauge,
    inflight_limit: Vec<Gauge>,
    hsm_retries: Vec<Counter>,
    incoming: Vec<Counter>,
    connections_closed: Vec<Counter>,
}

impl Metrics {
    /// Registers every series for these partitions (by name, in the order the caller indexes them)
    /// and `shards` shard queues, with `signer_build_info{version=<crate version>}` = 1.
    pub fn new<S: AsRef<str>>(partitions: &[S], shards: usize) -> Metrics {
        describe();
        let partitions: Vec<String> = partitions.iter().map(|p| p.as_ref().to_owned()).collect();
        let mut requests = Vec::with_capacity(Op::ALL.len() * Status::ALL.len());
        for op in Op::ALL {
            for status in Status::ALL {
                requests.push(counter!(
                    names::REQUESTS_TOTAL,
                    "op" => op.as_str(),
                    "status" => status.as_str()
                ));
            }
        }
        let request_duration = Op::ALL
            .iter()
            .map(|op| metrics::histogram!(names::REQUEST_DURATION_SECONDS, "op" => op.as_str()))
            .collect();
        let hsm_duration = partitions
            .iter()
            .map(|p| metrics::histogram!(names::HSM_DURATION_SECONDS, "partition" => p.clone()))
            .collect();
        let inflight = partitions
            .iter()
            .map(|p| metrics::gauge!(names::INFLIGHT, "partition" => p.clone()))
            .collect();
        let breaker_state = partitions
            .iter()
            .map(|p| metrics::gauge!(names::BREAKER_STATE, "partition" => p.clone()))
            .collect();
        let session_rebuilds = partitions
            .iter()
            .map(|p| counter!(names::SESSION_REBUILDS_TOTAL, "partition" => p.clone()))
            .collect();
        let partition_healthy = partitions
            .iter()
            .map(|p| metrics::gauge!(names::PARTITION_HEALTHY, "partition" => p.clone()))
            .collect();
        let queue_depth = (0..shards)
            .map(|s| metrics::gauge!(names::QUEUE_DEPTH, "shard" => s.to_string()))
            .collect();
        let queue_overloaded = (0..shards)
            .map(|s| metrics::gauge!(names::QUEUE_OVERLOADED, "shard" => s.to_string()))
            .collect();
        metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);

        let inner = Inner {
            requests,
            request_duration,
            queue_wait: metrics::histogram!(names::QUEUE_WAIT_SECONDS),
            hsm_duration,
            batch_size: metrics::histogram!(names::BATCH_SIZE),
            queue_depth,
            queue_overloaded,
            inflight,
            breaker_state,
            session_rebuilds,
            partition_healthy,
            audit_records: counter!(names::AUDIT_RECORDS_TOTAL),
            audit_fsyncs: counter!(names::AUDIT_FSYNCS_TOTAL),
            audit_write_failures: counter!(names::AUDIT_WRITE_FAILURES_TOTAL),
            audit_healthy: metrics::gauge!(names::AUDIT_HEALTHY),
            audit_disk_free: metrics::gauge!(names::AUDIT_DISK_FREE_BYTES),
            audit_disk_low: metrics::gauge!(names::AUDIT_DISK_LOW),
            audit_checkpoints: counter!(names::AUDIT_CHECKPOINTS_TOTAL),
            coalesced_calls: counter!(names::COALESCED_CALLS_TOTAL),
            authz_denied: Op::ALL
                .iter()
                .map(|op| counter!(names::AUTHZ_DENIED_TOTAL, "op" => op.as_str()))
                .collect(),
            audit_summarized: ["denial", "auth"]
                .map(|kind| counter!(names::AUDIT_SUMMARIZED_TOTAL, "kind" => kind)),
            overloaded: OVERLOAD_REASONS
                .iter()
                .map(|r| counter!(names::OVERLOADED_TOTAL, "reason" => *r))
                .collect(),
            connections: metrics::gauge!(names::CONNECTIONS),
            inflight_limit: partitions
                .iter()
                .map(|p| metrics::gauge!(names::INFLIGHT_LIMIT, "partition" => p.clone()))
                .collect(),
            hsm_retries: partitions
                .iter()
                .map(|p| counter!(names::HSM_RETRIES_TOTAL, "partition" => p.clone()))
                .collect(),
            incoming: INCOMING_OUTCOMES
                .iter()
                .map(|o| counter!(names::INCOMING_TOTAL, "outcome" => *o))
                .collect(),
            connections_closed: CONNECTION_CLOSE_REASONS
                .iter()
                .map(|r| counter!(names::CONNECTIONS_CLOSED_TOTAL, "reason" => *r))
                .collect(),
            partitions,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }

    /// Partition names, in index order.
    pub fn partitions(&self) -> &[String] {
        &self.inner.partitions
    }

    /// Number of shard queues.
    pub fn shards(&self) -> usize {
        self.inner.queue_depth.len()
    }

    // ---- hot path: counters and histograms ----

    /// One answered request: `signer_requests_total{op,status}` += 1 and its end-to-end time into
    /// `signer_request_duration_seconds{op}`.
    #[inline]
    pub fn request(&self, op: Op, status: Status, elapsed: Duration) {
        let i = op.index() * Status::ALL.len() + status.index();
        if let Some(c) = self.inner.requests.get(i) {
            c.increment(1);
        }
        if let Some(h) = self.inner.request_duration.get(op.index()) {
            h.record(elapsed.as_secs_f64());
        }
    }

    /// Time a job waited in its shard queue (`signer_queue_wait_seconds`).
    #[inline]
    pub fn queue_wait(&self, waited: Duration) {
        self.inner.queue_wait.record(waited.as_secs_f64());
    }

    /// Time one HSM call took on `partition` (`signer_hsm_duration_seconds{partition}`).
    #[inline]
    pub fn hsm_call(&self, partition: usize, took: Duration) {
        if let Some(h) = self.inner.hsm_duration.get(partition) {
            h.record(took.as_secs_f64());
        }
    }

    /// Jobs in one batch a worker drained (`signer_batch_size`).
    #[inline]
    pub fn batch(&self, size: usize) {
        self.inner.batch_size.record(size as f64);
    }

    /// A PKCS#11 session of `partition` was rebuilt (`signer_session_rebuilds_total`).
    pub fn session_rebuild(&self, partition: usize) {
        if let Some(c) = self.inner.session_rebuilds.get(partition) {
            c.increment(1);
        }
    }

    /// A request left unsigned by `partition` (busy, device failure) was tried again
    /// (`signer_hsm_retries_total{partition}`).
    /// `n` sign calls arrived in one coalesced request (`signer_coalesced_calls_total`).
    pub fn coalesced_calls(&self, n: usize) {
        self.inner.coalesced_calls.increment(n as u64);
    }

    /// A job left unsigned by `partition` was retried (`signer_hsm_retries_total{partition}`).
    pub fn hsm_retry(&self, partition: usize) {
        if let Some(c) = self.inner.hsm_retries.get(partition) {
            c.increment(1);
        }
    }

    /// Authorization refused an `op` (`signer_authz_denied_total{op}`).
    pub fn authz_denied(&self, op: Op, calls: usize) {
        if let Some(c) = self.inner.authz_denied.get(op.index()) {
            c.increment(calls as u64);
        }
    }

    /// `n` refusals counted in an audit summary record instead of records of their own
    /// (`signer_audit_summarized_total{kind}`: `auth` for handshakes and identities, else
    /// `denial`).
    pub fn audit_summarized(&self, auth: bool, n: u64) {
        self.inner.audit_summarized[usize::from(auth)].increment(n);
    }

    /// A request was shed as OVERLOADED (`signer_overloaded_total{reason}`).
    #[inline]
    pub fn overloaded(&self, reason: OverloadReason) {
        if let Some(c) = self.inner.overloaded.get(reason as usize) {
            c.increment(1);
        }
    }

    /// Sets the audit counters to the audit log's own totals (sampled on scrape; the log counts
    /// them itself): records, fsyncs, write failures, checkpoints.
    pub fn set_audit_totals(
        &self,
        records: u64,
        fsyncs: u64,
        write_failures: u64,
        checkpoints: u64,
    ) {
        self.inner.audit_records.absolute(records);
        self.inner.audit_fsyncs.absolute(fsyncs);
        self.inner.audit_write_failures.absolute(write_failures);
        self.inner.audit_checkpoints.absolute(checkpoints);
    }

    // ---- gauges: set directly, or from a sampler / scrape hook ----

    /// Jobs waiting in shard `shard` (`signer_queue_depth{shard}`).
    pub fn set_queue_depth(&self, shard: usize, depth: usize) {
        if let Some(g) = self.inner.queue_depth.get(shard) {
            g.set(depth as f64);
        }
    }

    /// Whether shard `shard` is in sustained overload (`signer_queue_overloaded{shard}`).
    pub fn set_queue_overloaded(&self, shard: usize, overloaded: bool) {
        if let Some(g) = self.inner.queue_overloaded.get(shard) {
            g.set(if overloaded { 1.0 } else { 0.0 });
        }
    }

    /// Jobs in flight on `partition` (`signer_inflight{partition}`).
    pub fn set_inflight(&self, partition: usize, n: usize) {
        if let Some(g) = self.inner.inflight.get(partition) {
            g.set(n as f64);
        }
    }

    /// The adaptive in-flight limit of `partition` (`signer_inflight_limit{partition}`).
    pub fn set_inflight_limit(&self, partition: usize, limit: usize) {
        if let Some(g) = self.inner.inflight_limit.get(partition) {
            g.set(limit as f64);
        }
    }

    /// Breaker state of `partition` (`signer_breaker_state{partition}`), with the breaker's own
    /// gauge mapping ([`crate::control::breaker::State::as_gauge`]: 0 closed, 1 half-open,
    /// 2 open).
    pub fn set_breaker_state(&self, partition: usize, state: crate::control::breaker::State) {
        if let Some(g) = self.inner.breaker_state.get(partition) {
            g.set(f64::from(state.as_gauge()));
        }
    }

    /// Health of `partition` (`signer_partition_healthy{partition}`: 1 or 0).
    pub fn set_partition_healthy(&self, partition: usize, healthy: bool) {
        if let Some(g) = self.inner.partition_healthy.get(partition) {
            g.set(f64::from(u8::from(healthy)));
        }
    }

    /// Health of the audit log (`signer_audit_healthy`: 1 or 0).
    pub fn set_audit_healthy(&self, healthy: bool) {
        self.inner.audit_healthy.set(f64::from(u8::from(healthy)));
    }

    /// The audit disk (`signer_audit_disk_free_bytes`, `signer_audit_disk_low`: 1 or 0).
    pub fn set_audit_disk(&self, free_bytes: u64, low: bool) {
        // f64 holds byte counts exactly up to 8 PiB.
        self.inner.audit_disk_free.set(free_bytes as f64);
        self.inner.audit_disk_low.set(f64::from(u8::from(low)));
    }

    /// `signer_connections` += 1 (pair with [`Metrics::connection_closed`]).
    pub fn connection_opened(&self) {
        self.inner.connections.increment(1.0);
    }

    /// `signer_connections` -= 1.
    pub fn connection_closed(&self) {
        self.inner.connections.decrement(1.0);
    }

    /// The server closed an open connection for `reason`
    /// (`signer_connections_closed_total{reason}`).
    pub fn connection_cut(&self, reason: CloseReason) {
        if let Some(c) = self.inner.connections_closed.get(reason as usize) {
            c.increment(1);
        }
    }

    /// A new connection attempt ended as `outcome` (`signer_incoming_total{outcome}`).
    pub fn incoming(&self, outcome: IncomingOutcome) {
        if let Some(c) = self.inner.incoming.get(outcome as usize) {
            c.increment(1);
        }
    }
}

/// HELP lines. Descriptions are per recorder, so this runs with every [`Metrics::new`]; it is
/// cheap and idempotent.
fn describe() {
    use names::*;
    describe_counter!(REQUESTS_TOTAL, "Requests answered, by op and wire status.");
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "End-to-end request latency (stream accepted to response written), by op."
    );
    describe_histogram!(
        QUEUE_WAIT_SECONDS,
        Unit::Seconds,
        "Time a job waited in its shard queue before a worker took it."
    );
    describe_histogram!(
        HSM_DURATION_SECONDS,
        Unit::Seconds,
        "Time inside one HSM (PKCS#11) call, by partition."
    );
    describe_histogram!(
        BATCH_SIZE,
        "Jobs per batch a worker drained from its queue."
    );
    describe_gauge!(QUEUE_DEPTH, "Jobs waiting in a shard queue.");
    describe_gauge!(
        QUEUE_OVERLOADED,
        "1 while a shard queue is in sustained overload (the tighter queue-wait budget applies)."
    );
    describe_gauge!(
        INFLIGHT,
        "Jobs handed to a partition's workers and not yet answered."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state per partition: 0 closed, 1 half-open, 2 open."
    );
    describe_counter!(
        SESSION_REBUILDS_TOTAL,
        "PKCS#11 sessions rebuilt after a session-lost error, by partition."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the build.");
    describe_counter!(AUDIT_RECORDS_TOTAL, "Audit records appended.");
    describe_counter!(AUDIT_FSYNCS_TOTAL, "Audit log fsyncs.");
    describe_counter!(
        AUDIT_WRITE_FAILURES_TOTAL,
        "Audit log writes or fsyncs that failed."
    );
    describe_gauge!(
        AUDIT_HEALTHY,
        "1 while the audit log accepts writes, else 0."
    );
    describe_counter!(AUDIT_CHECKPOINTS_TOTAL, "Signed audit checkpoints written.");
    describe_counter!(
        COALESCED_CALLS_TOTAL,
        "Sign calls that clients sent coalesced in SignBatch requests (COALESCED_CALLS)."
    );
    describe_counter!(
        AUTHZ_DENIED_TOTAL,
        "Requests refused by authorization, by op."
    );
    describe_counter!(
        AUDIT_SUMMARIZED_TOTAL,
        "Refusals counted in an audit summary record instead of one record each, by kind \
         (denial: refused requests; auth: refused handshakes and identities)."
    );
    describe_gauge!(PARTITION_HEALTHY, "1 if the partition is healthy, else 0.");
    describe_counter!(
        OVERLOADED_TOTAL,
        "Requests shed as OVERLOADED, by reason (queue_full, queue_wait, deadline, quota, \
         burst_wait, request_memory, open_streams, refusals)."
    );
    describe_gauge!(CONNECTIONS, "Open client connections.");
    describe_gauge!(
        INFLIGHT_LIMIT,
        "HSM calls allowed in flight on a partition (adaptive limit)."
    );
    describe_counter!(
        HSM_RETRIES_TOTAL,
        "Requests left unsigned by a partition (busy, device failure) and retried within the retry budget."
    );
    describe_counter!(
        INCOMING_TOTAL,
        "New QUIC connection attempts by admission outcome (accepted, retry, refused_*, \
         handshake_timeout)."
    );
    describe_counter!(
        CONNECTIONS_CLOSED_TOTAL,
        "Open connections closed because their client certificate expired or a reloaded CRL \
         revokes it, by reason."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_match_label_lists() {
        assert_eq!(OverloadReason::ALL.len(), OVERLOAD_REASONS.len());
        for (i, r) in OverloadReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(r.as_str(), OVERLOAD_REASONS[i]);
        }
        assert_eq!(IncomingOutcome::ALL.len(), INCOMING_OUTCOMES.len());
        for (i, o) in IncomingOutcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
            assert_eq!(o.as_str(), INCOMING_OUTCOMES[i]);
        }
        assert_eq!(CloseReason::ALL.len(), CONNECTION_CLOSE_REASONS.len());
        for (i, r) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            assert_eq!(r.as_str(), CONNECTION_CLOSE_REASONS[i]);
        }
    }

    #[test]
    fn works_without_a_recorder_and_ignores_bad_indices() {
        // No recorder installed in this scope's thread-local; globally maybe, which is fine too.
        let m = Metrics::new(&["a"], 1);
        assert_eq!(m.partitions(), ["a".to_string()]);
        assert_eq!(m.shards(), 1);
        m.request(Op::Sign, Status::Ok, Duration::from_millis(1));
        m.hsm_call(7, Duration::from_millis(1));
        m.set_queue_depth(9, 3);
        m.set_queue_overloaded(9, true);
        m.set_inflight(9, 3);
        m.set_breaker_state(9, crate::control::breaker::State::Open);
        m.set_partition_healthy(9, true);
        m.session_rebuild(9);
    }
}
