//! One request stream: read one frame (bounded in size and time), decode, authorize, run,
//! answer exactly once, finish.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};

use super::batcher::{BatchReply, Batcher};
use super::budget::{ByteBudget, Reservation};
use super::{authz, verify_pool, InflightGuard, State};
use crate::audit::AuditEntry;
use crate::config::batch::BatchMode;
use crate::engine::SignRequest;
use crate::error::{EngineError, Status};
use crate::pipeline::Reply;
use crate::telemetry::OverloadReason;
use signer_proto::keys::{KeyName, Payload, Scheme, Version};
use signer_proto::protocol::{
    self, BatchItem, Op, Request, RequestFrame, ResponseBody, ResponseFrame, SignatureForm,
};

/// Stream error code when the request could not be read (too large, too slow).
const STREAM_REFUSED: u32 = 1;
/// While draining, how long a stream waits for the peer to acknowledge its answer.
const DRAIN_DELIVERY: Duration = Duration::from_secs(1);
/// Retry hint while shutting down.
const DRAIN_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Retry hint for a request refused because the request byte budget is exhausted.
const MEMORY_RETRY_AFTER: Duration = Duration::from_millis(100);

pub(super) async fn stream(
    mut send: SendStream,
    mut recv: RecvStream,
    state: Arc<State>,
    identity: Arc<str>,
    source: IpAddr,
    budget: ByteBudget,
    _inflight: InflightGuard,
) {
    let received = Instant::now();
    let until = tokio::time::Instant::from_std(received + state.cfg.read_timeout);
    let read = tokio::time::timeout_at(until, read_request(&mut recv, &budget)).await;
    let refused = |e: EngineError| (Op::Sign, error_frame(&e));
    let (data, reservation) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            let (op, frame) = match e {
                ReadFailure::Stream(e) => {
                    tracing::debug!("request stream failed: {e}");
                    let _ = send.reset(VarInt::from_u32(STREAM_REFUSED));
                    return;
                }
                ReadFailure::TooLarge => refused(EngineError::InvalidArgument(format!(
                    "request frame larger than {} bytes",
                    protocol::MAX_FRAME
                ))),
                ReadFailure::Trailing => refused(EngineError::InvalidArgument(
                    "malformed request: the stream carries more bytes than its frame's length \
                     prefix says"
                        .into(),
                )),
                ReadFailure::NoBudget(len) => {
                    tracing::debug!(
                        bytes = len,
                        "request refused unread: the request byte budget is exhausted"
                    );
                    state
                        .engine
                        .metrics()
                        .overloaded(OverloadReason::RequestMemory);
                    refused(EngineError::Overloaded {
                        retry_after: MEMORY_RETRY_AFTER,
                    })
                }
            };
            let _ = recv.stop(VarInt::from_u32(STREAM_REFUSED));
            respond(&mut send, op, &frame, &state, None).await;
            return;
        }
        Err(_) => {
            let _ = recv.stop(VarInt::from_u32(STREAM_REFUSED));
            let frame = error_frame(&EngineError::InvalidArgument(
                "request not received within the read timeout".into(),
            ));
            respond(&mut send, Op::Sign, &frame, &state, None).await;
            return;
        }
    };
    let decoded = protocol::decode_request(&data);
    // The request's bytes are not kept while it is served (the decoded frame holds its own).
    drop(data);
    let (op, calls, frame) = match decoded {
        Ok(req) => {
            let op = req.request.op();
            let calls = Calls::of(&req);
            (
                op,
                calls,
                handle(req, &state, &identity, source, received).await,
            )
        }
        Err(e) => (
            Op::Sign,
            Calls::One(Op::Sign),
            error_frame(&EngineError::InvalidArgument(format!(
                "malformed request: {e}"
            ))),
        ),
    };
    // Served: the request is gone; the answer reserves its own bytes.
    drop(reservation);
    respond(&mut send, op, &frame, &state, Some(&budget)).await;
    calls.meter(state.engine.metrics(), &frame, received.elapsed());
    if state.is_draining() {
        // The endpoint closes (discarding unsent data) once no request is in flight: while
        // draining, a request counts as in flight until the peer has its answer.
        let _ = tokio::time::timeout(DRAIN_DELIVERY, send.stopped()).await;
    }
}

/// A stream over `server.max_open_streams`: answered OVERLOADED unread, by a task that holds
/// nothing but the answer (and at most for `server.write_timeout`).
pub(super) async fn refuse_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    state: Arc<State>,
    _inflight: InflightGuard,
) {
    let _ = recv.stop(VarInt::from_u32(STREAM_REFUSED));
    state
        .engine
        .metrics()
        .overloaded(OverloadReason::OpenStreams);
    let frame = error_frame(&EngineError::Overloaded {
        retry_after: MEMORY_RETRY_AFTER,
    });
    respond(&mut send, Op::Sign, &frame, &state, None).await;
}

/// Why a request could not be read.
enum ReadFailure {
    /// The stream failed (reset, connection lost).
    Stream(quinn::ReadError),
    /// The length prefix says more than [`protocol::MAX_FRAME`].
    TooLarge,
    /// More bytes follow the frame.
    Trailing,
    /// A frame of this many bytes does not fit in the request byte budget now.
    NoBudget(usize),
}

/// Reads one request frame: the length prefix first, then, once its bytes are reserved in the
/// connection's and the daemon's budgets, the body. A stream that ends early is returned as it
/// is (decoding says what is missing). The reservation lives as long as the caller keeps it.
async fn read_request(
    recv: &mut RecvStream,
    budget: &ByteBudget,
) -> Result<(Vec<u8>, Reservation), ReadFailure> {
    let mut prefix = [0u8; 4];
    let got = read_all(recv, &mut prefix).await?;
    let len = if got < prefix.len() {
        got
    } else {
        let len = protocol::frame_len(&prefix);
        if len > protocol::MAX_FRAME {
            return Err(ReadFailure::TooLarge);
        }
        len + prefix.len()
    };
    let reservation = budget.try_reserve(len).ok_or(ReadFailure::NoBudget(len))?;
    let mut data = vec![0u8; len];
    data[..got].copy_from_slice(&prefix[..got]);
    if got == prefix.len() {
        let body = read_all(recv, &mut data[got..]).await?;
        data.truncate(got + body);
        if data.len() == len
            && recv
                .read(&mut [0u8; 1])
                .await
                .map_err(ReadFailure::Stream)?
                .is_some()
        {
            return Err(ReadFailure::Trailing);
        }
    }
    Ok((data, reservation))
}

/// Fills `buf` from the stream, or as much of it as the stream holds before it ends; returns
/// how many bytes were read.
async fn read_all(recv: &mut RecvStream, buf: &mut [u8]) -> Result<usize, ReadFailure> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(buf.len()),
        Err(quinn::ReadExactError::FinishedEarly(n)) => Ok(n),
        Err(quinn::ReadExactError::ReadError(e)) => Err(ReadFailure::Stream(e)),
    }
}

/// The calls a request stands for, as the policy, the metrics and the audit log count them: one
/// call of its op, or, for a SignBatch with `COALESCED_CALLS`, one `sign` call per payload (the
/// client coalesced independent calls; docs/PROTOCOL.md §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Calls {
    One(Op),
    CoalescedSigns(usize),
}

impl Calls {
    fn of(req: &RequestFrame) -> Calls {
        match &req.request {
            Request::SignBatch { payloads, .. } if req.flags & protocol::COALESCED_CALLS != 0 => {
                Calls::CoalescedSigns(payloads.len())
            }
            r => Calls::One(r.op()),
        }
    }

    /// The op the access policy decides on.
    fn policy_op(self) -> Op {
        match self {
            Calls::One(op) => op,
            Calls::CoalescedSigns(_) => Op::Sign,
        }
    }

    /// How many calls: denials are counted and audited once per call.
    fn count(self) -> usize {
        match self {
            Calls::One(_) => 1,
            Calls::CoalescedSigns(n) => n,
        }
    }

    /// Counts the answer in `signer_requests_total` and the latency histogram: coalesced calls
    /// one `sign` each, with its own item's status (or the whole answer's, if it failed whole).
    fn meter(self, metrics: &crate::telemetry::Metrics, frame: &ResponseFrame, took: Duration) {
        match (self, &frame.body) {
            (Calls::One(op), _) => metrics.request(op, frame.status, took),
            (Calls::CoalescedSigns(n), Some(ResponseBody::Batch(items))) => {
                metrics.coalesced_calls(n);
                for item in items {
                    let status = match item {
                        BatchItem::Signed { .. } => Status::Ok,
                        BatchItem::Failed { status, .. } => *status,
                        _ => Status::Internal,
                    };
                    metrics.request(Op::Sign, status, took);
                }
            }
            (Calls::CoalescedSigns(n), _) => {
                metrics.coalesced_calls(n);
                for _ in 0..n {
                    metrics.request(Op::Sign, frame.status, took);
                }
            }
        }
    }
}

/// Encodes and writes the answer, then finishes the stream; a peer that does not take it
/// within `server.write_timeout` has the stream reset and the answer dropped. An answer to a
/// served request reserves its bytes in the connection's and the daemon's budgets while it is
/// handed over (`budget`); the refusal of a request that was not served (`None`: a few dozen
/// bytes, one per open stream, which `server.max_open_streams` bounds) is written at once,
/// without waiting for the budget it was refused for.
async fn respond(
    send: &mut SendStream,
    op: Op,
    frame: &ResponseFrame,
    state: &State,
    budget: Option<&ByteBudget>,
) {
    let mut buf = BytesMut::with_capacity(128);
    let frame = match protocol::encode_response(op, frame, &mut buf) {
        Ok(()) => buf.freeze(),
        Err(e) => {
            tracing::error!("encoding a response failed: {e}");
            let mut buf = BytesMut::new();
            let internal = error_frame(&EngineError::Internal("response encoding failed".into()));
            if protocol::encode_response(op, &internal, &mut buf).is_err() {
                let _ = send.reset(VarInt::from_u32(STREAM_REFUSED));
                return;
            }
            buf.freeze()
        }
    };
    let write = async {
        let _held = match budget {
            Some(b) => Some(b.reserve(frame.len()).await?),
            None => None,
        };
        // Handing over the encoded Bytes avoids a copy into a new buffer.
        send.write_chunk(frame).await.ok()?;
        send.finish().ok()
    };
    if tokio::time::timeout(state.cfg.write_timeout, write)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        tracing::debug!("answer not handed to the peer (write timeout or stream gone); reset");
        let _ = send.reset(VarInt::from_u32(STREAM_REFUSED));
    }
}

/// One decoded request: the pre-checks in order (docs/PROTOCOL.md §8, "Order of checks"), each
/// of which may answer it, then the handler of its op family.
async fn handle(
    req: RequestFrame,
    state: &Arc<State>,
    identity: &Arc<str>,
    source: IpAddr,
    received: Instant,
) -> ResponseFrame {
    let ctx = Ctx::new(state, identity, source, &req);
    // Each pre-check answers the request (`Some`) or lets it through.
    if let Some(refused) = ctx.refuse_while_draining() {
        return refused;
    }
    if let Some(refused) = ctx.refuse_while_throttled(received) {
        return refused;
    }
    if let Some(denied) = ctx.authorize(&req).await {
        return denied;
    }
    if let Some(denied) = ctx.protect_audit_key().await {
        return denied;
    }
    if let Some(refused) = ctx.require_audit_log() {
        return refused;
    }
    // Quotas apply to signing and verify requests, after authorization and before anything is
    // queued; the guard holds an in-flight slot until the answer.
    let _quota = match authz::admit(state, ctx.policy(), identity, &req.request) {
        Ok(guard) => guard,
        Err(e) => return error_frame(&e),
    };
    let approval = match ctx.two_admin_approval(&req.request).await {
        Ok(approval) => approval,
        Err(answered) => return *answered,
    };
    let deadline = ctx.deadline(req.deadline_ms, received);
    let accepts_batch = req.flags & protocol::ACCEPT_BATCH_SIGNATURE != 0;
    let result = match req.request {
        Request::Sign {
            key,
            version,
            scheme,
            payload,
        } => sign_family(
            &ctx,
            &key,
            version,
            scheme,
            vec![payload],
            accepts_batch,
            deadline,
        )
        .await
        .and_then(|mut items| items.pop().unwrap_or_else(|| Err(no_item())))
        .map(|(version, signature)| ResponseBody::Signed { version, signature }),
        Request::SignBatch {
            key,
            version,
            scheme,
            payloads,
        } => sign_family(
            &ctx,
            &key,
            version,
            scheme,
            payloads,
            accepts_batch,
            deadline,
        )
        .await
        .map(|items| ResponseBody::Batch(items.into_iter().map(batch_item).collect())),
        Request::Verify {
            key,
            version,
            scheme,
            payload,
            signature,
        } => verify(state, key, version, scheme, payload, signature).await,
        Request::GetPublicKey { key, version } => public_key(state, &key, version),
        Request::ListKeys => list_keys(state, ctx.policy.clone(), identity).await,
        admin => return ctx.admin(admin, approval).await,
    };
    match result {
        Ok(body) => ok_frame(body),
        Err(e) => error_frame(&e),
    }
}

/// What every pre-check of one request needs.
struct Ctx<'a> {
    state: &'a Arc<State>,
    identity: &'a Arc<str>,
    /// The peer's address (refusals are limited per identity and per source).
    source: IpAddr,
    calls: Calls,
    /// The op the policy decides on (a coalesced SignBatch: `sign`).
    op: Op,
    subject: Option<KeyName>,
    subject_version: Option<Version>,
    /// The one policy snapshot every decision about this request reads.
    policy: Option<Arc<crate::policy::Policy>>,
}

/// How a two-admin approval check let an admin op through: its audit op text and note.
struct Approval {
    op: &'static str,
    note: Option<String>,
}

impl<'a> Ctx<'a> {
    fn new(
        state: &'a Arc<State>,
        identity: &'a Arc<str>,
        source: IpAddr,
        req: &RequestFrame,
    ) -> Ctx<'a> {
        let calls = Calls::of(req);
        let (subject, subject_version) = subject(&req.request);
        Ctx {
            state,
            identity,
            source,
            calls,
            op: calls.policy_op(),
            subject,
            subject_version,
            policy: authz::snapshot(state),
        }
    }

    /// The request's policy snapshot.
    fn policy(&self) -> Option<&crate::policy::Policy> {
        self.policy.as_deref()
    }

    /// A draining daemon takes no new request.
    fn refuse_while_draining(&self) -> Option<ResponseFrame> {
        self.state.is_draining().then(|| {
            error_frame(&EngineError::Unavailable {
                reason: "signer is shutting down".into(),
                retry_after: DRAIN_RETRY_AFTER,
            })
        })
    }

    /// An identity whose requests keep being refused is answered OVERLOADED before
    /// authorization until its refusal bucket refills; counted in the audit
    /// log's summary records, not one record each (server/refusals.rs).
    fn refuse_while_throttled(&self, now: Instant) -> Option<ResponseFrame> {
        let retry_after = self.state.refusals.identity_throttled(self.identity, now)?;
        self.state
            .engine
            .metrics()
            .overloaded(OverloadReason::Refusals);
        let entry = audit_entry(
            self.identity,
            self.op.as_str(),
            self.subject.clone(),
            self.subject_version,
            Status::Overloaded,
            None,
        );
        self.state.refusals.throttled_request(entry, self.source);
        Some(error_frame(&EngineError::Overloaded { retry_after }))
    }

    /// The access policy, for the op the request stands for.
    async fn authorize(&self, req: &RequestFrame) -> Option<ResponseFrame> {
        let scheme = authz::scheme_of(&req.request);
        match authz::authorize(
            self.state,
            self.policy(),
            self.identity,
            self.op,
            self.subject.as_ref(),
            scheme,
        ) {
            Ok(()) => None,
            Err(denial) => Some(self.deny(denial.message, denial.detail).await),
        }
    }

    /// An audit key serves only its public key, whatever the policy says: the key marked as one
    /// in the tokens (whatever the config names, even with the audit log disabled), and the name
    /// the config reserves for it (so no client can create it first).
    async fn protect_audit_key(&self) -> Option<ResponseFrame> {
        let key = self.subject.as_ref()?;
        let reserved = self.state.extras.audit_key.as_ref() == Some(key)
            || self.state.engine.keys().is_audit_key(key);
        if !reserved || self.op == Op::GetPublicKey {
            return None;
        }
        tracing::warn!(identity = &**self.identity, op = self.op.as_str(), key = %key, "operation on the audit key denied");
        let reason =
            format!("key {key} is reserved for the audit log; only its public key can be read");
        Some(self.deny(reason.clone(), reason).await)
    }

    /// Ops that write audit records are refused while the log cannot be written: before the
    /// HSM, so a full disk costs no signatures that would be thrown away. (A sign whose record
    /// fails later, in the writer, is refused there.) Not audited: there is nowhere to write.
    fn require_audit_log(&self) -> Option<ResponseFrame> {
        let writes_records = self.op.is_admin() || matches!(self.op, Op::Sign | Op::SignBatch);
        match &self.state.extras.audit {
            Some(audit) if writes_records && !audit.healthy() => {
                Some(error_frame(&EngineError::Unavailable {
                    reason: "audit log cannot be written; signing and administrative operations \
                             are refused until it can"
                        .into(),
                    retry_after: DRAIN_RETRY_AFTER,
                }))
            }
            _ => None,
        }
    }

    /// Two-admin approval: a destroy_key may only be recorded as pending here.
    async fn two_admin_approval(&self, request: &Request) -> Result<Approval, Box<ResponseFrame>> {
        let mut approval = Approval {
            op: self.op.as_str(),
            note: None,
        };
        let Request::DestroyKey { key, version } = request else {
            return Ok(approval);
        };
        match authz::destroy_gate(self.state, self.policy(), key, *version, self.identity) {
            authz::DestroyGate::Proceed => Ok(approval),
            authz::DestroyGate::Approved { requester } => {
                approval.op = "destroy_key.approve";
                approval.note = Some(format!("approves the request of {requester:?}"));
                Ok(approval)
            }
            authz::DestroyGate::Pending { message } => Err(Box::new(
                pending(
                    self.state,
                    self.identity,
                    self.subject.clone(),
                    self.subject_version,
                    message,
                )
                .await,
            )),
            authz::DestroyGate::Refused(e) => Err(Box::new(error_frame(&e))),
            authz::DestroyGate::Denied(d) => Err(Box::new(self.deny(d.message, d.detail).await)),
        }
    }

    /// The request's deadline: its own budget, or the default, capped.
    fn deadline(&self, deadline_ms: u32, received: Instant) -> Instant {
        let budget = match deadline_ms {
            0 => self.state.cfg.default_deadline,
            ms => Duration::from_millis(u64::from(ms)).min(self.state.cfg.max_deadline),
        };
        received + budget
    }

    /// Answers PERMISSION_DENIED with `message`, after recording the denial (with `detail`)
    /// and counting it in `signer_authz_denied_total`, once per call the request stands for.
    /// Recorded through [`Refusals`](super::refusals::Refusals): the first of its kind in a
    /// second gets its own record, the rest are counted in a summary; never waits for the log.
    async fn deny(&self, message: String, detail: String) -> ResponseFrame {
        let (state, identity, op, key) = (self.state, self.identity, self.op, &self.subject);
        let calls = self.calls.count();
        state.engine.metrics().authz_denied(op, calls);
        let now = Instant::now();
        for _ in 0..calls {
            let entry = audit_entry(
                identity,
                op.as_str(),
                key.clone(),
                None,
                Status::PermissionDenied,
                Some(detail.clone()),
            );
            state.refusals.refused(
                super::refusals::Refusal {
                    entry,
                    source: self.source,
                    auth: false,
                },
                now,
            );
        }
        status_frame(Status::PermissionDenied, message)
    }

    /// The admin ops: an intent record first (durable before the HSM is touched: an op whose
    /// intent cannot be recorded is not run), then the op, off the runtime, then its outcome
    /// (an op that ran but whose outcome could not be audited is answered INTERNAL, saying so).
    /// A crash between the two leaves the intent without an outcome: the log shows that the op
    /// was attempted, and the tokens what it did.
    async fn admin(&self, request: Request, approval: Approval) -> ResponseFrame {
        if let Some(audit) = &self.state.extras.audit {
            let intent = AuditEntry::intent(approval.op, Arc::clone(self.identity))
                .key(self.subject.clone().map(|k| k.shared()))
                .version(self.subject_version);
            if let Err(e) = audit.append(intent).await {
                tracing::error!(
                    op = self.op.as_str(),
                    "administrative operation not run: its intent could not be audited: {e}"
                );
                return error_frame(&EngineError::Unavailable {
                    reason: format!(
                        "{} was not run: its audit record could not be written: {e}",
                        self.op.as_str()
                    ),
                    retry_after: DRAIN_RETRY_AFTER,
                });
            }
        }
        let result = admin_op(self.state, self.identity, request).await;
        let audited = audit_admin(
            self.state,
            self.identity,
            (approval.op, approval.note),
            self.subject.clone(),
            self.subject_version,
            &result,
        )
        .await;
        if let Err(e) = audited {
            tracing::error!(
                op = self.op.as_str(),
                "administrative operation done but not audited: {e}"
            );
            return error_frame(&EngineError::Internal(format!(
                "{} was carried out, but its audit record could not be written: {e}",
                self.op.as_str()
            )));
        }
        match result {
            Ok(body) => ok_frame(body),
            Err(e) => error_frame(&e),
        }
    }
}

/// Sign and SignBatch: every payload queued first (so they sign in parallel, or share one
/// tree), then the answers collected in order. Whether they go to the Merkle batcher or straight
/// to the engine is decided here, once, by [`Signer::for_key`].
async fn sign_family(
    ctx: &Ctx<'_>,
    key: &KeyName,
    version: Option<Version>,
    scheme: Scheme,
    payloads: Vec<Bytes>,
    accepts_batch: bool,
    deadline: Instant,
) -> Result<Vec<Result<(Version, SignatureForm), EngineError>>, EngineError> {
    let signer = Signer::for_key(ctx.state, key, accepts_batch)?;
    let pending: Vec<_> = payloads
        .into_iter()
        .map(|p| signer.submit(ctx.identity, key, version, scheme, p, deadline))
        .collect();
    Ok(await_all(ctx.state, pending, deadline).await)
}

fn batch_item(r: Result<(Version, SignatureForm), EngineError>) -> BatchItem {
    match r {
        Ok((version, signature)) => BatchItem::Signed { version, signature },
        Err(e) => BatchItem::Failed {
            status: e.status(),
            retry_after_ms: e.retry_after_ms(),
            message: e.to_string(),
        },
    }
}

fn no_item() -> EngineError {
    EngineError::Internal("a sign request produced no answer".into())
}

/// Verification needs only the version's public key, which the registry holds (read from the
/// token at start): it is done in software, sparing the HSM (a network HSM's calls are its
/// scarcest resource), on the verify threads, not here on the network runtime. A batch
/// signature's inclusion proof is hashing; its root signature is checked the same way.
async fn verify(
    state: &State,
    key: KeyName,
    version: Option<Version>,
    scheme: Scheme,
    payload: Bytes,
    signature: SignatureForm,
) -> Result<ResponseBody, EngineError> {
    let payload = Payload::new(scheme, payload)?;
    let pk = state.engine.keys().public_key(&key, version)?;
    let version = pk.version;
    state
        .verify
        .run(move || {
            signer_proto::merkle::verify(
                &pk.spki_der,
                scheme,
                &key,
                pk.version,
                payload.bytes(),
                &signature,
            )
            .is_ok()
        })
        .await
        .map(|valid| ResponseBody::Verified { version, valid })
        .map_err(|e| match e {
            verify_pool::PoolError::Full => EngineError::Overloaded {
                retry_after: verify_pool::RETRY_AFTER,
            },
            verify_pool::PoolError::Stopped => EngineError::Unavailable {
                reason: "signer is shutting down".into(),
                retry_after: DRAIN_RETRY_AFTER,
            },
            verify_pool::PoolError::Panicked => {
                EngineError::Internal("the verification failed unexpectedly".into())
            }
        })
}

fn public_key(
    state: &State,
    key: &KeyName,
    version: Option<Version>,
) -> Result<ResponseBody, EngineError> {
    state
        .engine
        .keys()
        .public_key(key, version)
        .map(|pk| ResponseBody::PublicKey {
            version: pk.version,
            key_type: pk.key_type,
            spki_der: Bytes::from(pk.spki_der),
        })
}

/// Every key the caller may see, filtered under the request's policy snapshot off the network
/// runtime (keys × rules glob matches; the listing is quota-counted too, see [`authz::admit`]).
async fn list_keys(
    state: &State,
    policy: Option<Arc<crate::policy::Policy>>,
    identity: &Arc<str>,
) -> Result<ResponseBody, EngineError> {
    let engine = state.engine.clone();
    let identity = Arc::clone(identity);
    blocking(move || {
        let keys = engine.keys().list();
        Ok(ResponseBody::Keys(
            keys.into_iter()
                .filter(|k| authz::may_list(policy.as_deref(), &identity, &k.name))
                .collect(),
        ))
    })
    .await
}

/// Runs one admin op off the network runtime (they call the HSM and may take seconds).
async fn admin_op(
    state: &State,
    identity: &Arc<str>,
    request: Request,
) -> Result<ResponseBody, EngineError> {
    let engine = state.engine.clone();
    let who = Arc::clone(identity);
    blocking(move || match request {
        Request::CreateKey {
            key,
            key_type,
            placement,
        } => {
            let placement = (!placement.is_empty()).then_some(placement);
            let v = engine
                .admin()
                .create_key(&key, key_type, placement.as_deref())?;
            tracing::info!(identity = %who, key = %key, %key_type, "key created");
            Ok(ResponseBody::KeyVersion(v))
        }
        Request::RotateKey { key } => {
            Ok(ResponseBody::KeyVersion(engine.admin().rotate_key(&key)?))
        }
        Request::RetireKey { key, version } => Ok(ResponseBody::KeyVersion(
            engine.admin().retire_key(&key, version)?,
        )),
        Request::DestroyKey { key, version } => engine
            .admin()
            .destroy_key(&key, version)
            .map(|()| ResponseBody::Destroyed),
        other => Err(EngineError::Internal(format!(
            "{} is not an administrative operation",
            other.op()
        ))),
    })
    .await
}

/// The key (and version) a request names, for authorization and the audit log.
fn subject(request: &Request) -> (Option<KeyName>, Option<Version>) {
    match request {
        Request::Sign { key, version, .. }
        | Request::SignBatch { key, version, .. }
        | Request::Verify { key, version, .. }
        | Request::GetPublicKey { key, version } => (Some(key.clone()), *version),
        Request::RetireKey { key, version } | Request::DestroyKey { key, version } => {
            (Some(key.clone()), Some(*version))
        }
        Request::CreateKey { key, .. } | Request::RotateKey { key } => (Some(key.clone()), None),
        Request::ListKeys => (None, None),
    }
}

/// An audit entry for a request answered here; `op` is the record's op text.
fn audit_entry(
    identity: &Arc<str>,
    op: &'static str,
    key: Option<KeyName>,
    version: Option<Version>,
    status: Status,
    detail: Option<String>,
) -> AuditEntry {
    AuditEntry::new(op, Arc::clone(identity), status)
        .key(key.map(|k| k.shared()))
        .version(version)
        .detail(detail)
}

/// Answers a destroy_key recorded as pending approval, after auditing it as
/// `destroy_key.request`. If the record cannot be written the pending entry stands but the
/// caller is told it failed (an approval needs the audit log healthy again anyway: admin ops are
/// refused while it is not).
async fn pending(
    state: &State,
    identity: &Arc<str>,
    key: Option<KeyName>,
    version: Option<Version>,
    message: String,
) -> ResponseFrame {
    tracing::info!(identity = &**identity, "{message}");
    if let Some(audit) = &state.extras.audit {
        let entry = audit_entry(
            identity,
            "destroy_key.request",
            key,
            version,
            authz::PENDING_STATUS,
            Some(message.clone()),
        );
        if let Err(e) = audit.append(entry).await {
            tracing::error!("destroy_key request not audited: {e}");
            return error_frame(&EngineError::Internal(format!(
                "destroy_key request could not be audited: {e}"
            )));
        }
    }
    status_frame(authz::PENDING_STATUS, message)
}

/// Records an administrative operation (done or failed) and waits until the record is durable.
/// `(op, note)`: the record's op text (e.g. `destroy_key.approve`) and a note kept as its
/// detail when the operation succeeded.
async fn audit_admin(
    state: &State,
    identity: &Arc<str>,
    (op, note): (&'static str, Option<String>),
    key: Option<KeyName>,
    version: Option<Version>,
    result: &Result<ResponseBody, EngineError>,
) -> Result<(), crate::audit::AuditError> {
    let Some(audit) = &state.extras.audit else {
        return Ok(());
    };
    let (status, detail, version) = match result {
        Ok(ResponseBody::KeyVersion(v)) => (Status::Ok, note, Some(v.version)),
        Ok(_) => (Status::Ok, note, version),
        Err(e) => (e.status(), Some(e.to_string()), version),
    };
    audit
        .append(audit_entry(identity, op, key, version, status, detail))
        .await
}

/// Records a connection refused for want of a usable client identity (or whose handshake was
/// refused), through [`Refusals`](super::refusals::Refusals): limited per source, summarized,
/// never waiting for the log.
pub(super) fn audit_auth_failure(state: &State, source: IpAddr, reason: &str) {
    state.refusals.refused(
        super::refusals::Refusal {
            entry: AuditEntry::auth_failure(reason),
            source,
            auth: true,
        },
        Instant::now(),
    );
}

/// Where the payloads of a sign request go: straight to the engine (a plain signature each),
/// or to the Merkle batcher (leaves of the next tree).
enum Signer<'a> {
    Plain(&'a crate::Engine),
    Batch(&'a Arc<Batcher>),
}

impl<'a> Signer<'a> {
    /// The batcher for a batch-enabled key and a client that accepts batch signatures, the
    /// engine for a plain signature, and an error for a key that requires batch signatures
    /// asked by a client that does not accept them. The one place plain-vs-batch is decided.
    fn for_key(state: &'a State, key: &KeyName, accepts_batch: bool) -> Result<Self, EngineError> {
        let Some(b) = &state.extras.batch else {
            return Ok(Signer::Plain(&state.engine));
        };
        match (b.mode(key), accepts_batch) {
            (BatchMode::Off, _) | (BatchMode::Allowed, false) => Ok(Signer::Plain(&state.engine)),
            (BatchMode::Allowed | BatchMode::Required, true) => Ok(Signer::Batch(b)),
            (BatchMode::Required, false) => Err(EngineError::FailedPrecondition(format!(
                "key {key} signs only in batches: send the request with ACCEPT_BATCH_SIGNATURE \
                 (docs/BATCH.md)"
            ))),
        }
    }

    /// Checks one payload against its scheme (once: the batcher and the engine take the
    /// checked [`Payload`]) and queues it. A payload that does not fit fails here, alone.
    fn submit(
        &self,
        identity: &Arc<str>,
        key: &KeyName,
        version: Option<Version>,
        scheme: Scheme,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<Pending, EngineError> {
        let payload = Payload::new(scheme, payload)?;
        match self {
            Signer::Batch(b) => b
                .submit(key, version, payload, deadline, identity)
                .map(Pending::Batch),
            Signer::Plain(engine) => {
                super::batcher::check_plain_payload(key, &payload)?;
                engine
                    .submit(SignRequest {
                        key: key.clone(),
                        version,
                        payload,
                        deadline,
                        identity: Arc::clone(identity),
                    })
                    .map(Pending::Plain)
            }
        }
    }
}

/// A queued sign: a plain engine job, or a leaf of the next batch tree.
enum Pending {
    Plain(tokio::sync::oneshot::Receiver<Reply>),
    Batch(tokio::sync::oneshot::Receiver<BatchReply>),
}

impl Pending {
    /// The answer, once the worker (or the batcher) gives it.
    async fn answer(&mut self) -> Result<(Version, SignatureForm), EngineError> {
        match self {
            Pending::Plain(rx) => rx.await.unwrap_or_else(|_| Err(dropped())).map(plain),
            Pending::Batch(rx) => rx.await.unwrap_or_else(|_| Err(dropped())).map(batch),
        }
    }

    /// The answer if it is already there.
    fn answer_now(self) -> Option<Result<(Version, SignatureForm), EngineError>> {
        use tokio::sync::oneshot::error::TryRecvError;
        fn now<T>(
            r: Result<Result<T, EngineError>, TryRecvError>,
        ) -> Option<Result<T, EngineError>> {
            match r {
                Ok(answer) => Some(answer),
                Err(TryRecvError::Closed) => Some(Err(dropped())),
                Err(TryRecvError::Empty) => None,
            }
        }
        match self {
            Pending::Plain(mut rx) => now(rx.try_recv()).map(|r| r.map(plain)),
            Pending::Batch(mut rx) => now(rx.try_recv()).map(|r| r.map(batch)),
        }
    }
}

fn plain(s: crate::pipeline::Signed) -> (Version, SignatureForm) {
    (s.version, SignatureForm::Plain(Bytes::from(s.signature)))
}

fn batch(
    (version, signature): (Version, signer_proto::merkle::BatchSignature),
) -> (Version, SignatureForm) {
    (version, SignatureForm::Batch(signature))
}

fn dropped() -> EngineError {
    EngineError::Internal("worker dropped the request".into())
}

/// Why the rest of a request's calls stop waiting.
#[derive(Clone, Copy)]
enum GaveUp {
    /// A little after the deadline, the HSM has not answered (a hung call).
    Late,
    /// The shutdown grace period ended.
    ShutDown,
}

impl GaveUp {
    fn error(self) -> EngineError {
        match self {
            GaveUp::Late => EngineError::DeadlineExceeded,
            GaveUp::ShutDown => EngineError::Unavailable {
                reason: "signer shut down before this request was signed".into(),
                retry_after: DRAIN_RETRY_AFTER,
            },
        }
    }
}

/// Waits for the answers of every call of one request, in order, under one timer and one
/// shutdown watch for the whole request (not one per call): DEADLINE_EXCEEDED a little after
/// the deadline for a call the HSM has not answered (a hung call), UNAVAILABLE when the
/// shutdown grace period ends. A call that could not be queued keeps its own error.
async fn await_all(
    state: &State,
    pending: Vec<Result<Pending, EngineError>>,
    deadline: Instant,
) -> Vec<Result<(Version, SignatureForm), EngineError>> {
    let mut expired = state.expired.subscribe();
    let late = tokio::time::sleep_until(tokio::time::Instant::from_std(
        crate::pipeline::gives_up_at(deadline),
    ));
    let mut late = std::pin::pin!(late);
    let mut gave_up: Option<GaveUp> = None;
    let mut items = Vec::with_capacity(pending.len());
    for p in pending {
        let mut p = match p {
            Ok(p) => p,
            Err(e) => {
                items.push(Err(e));
                continue;
            }
        };
        if let Some(why) = gave_up {
            items.push(p.answer_now().unwrap_or_else(|| Err(why.error())));
            continue;
        }
        let waited = tokio::select! {
            r = p.answer() => Ok(r),
            () = &mut late => Err(GaveUp::Late),
            _ = expired.wait_for(|e| *e) => Err(GaveUp::ShutDown),
        };
        items.push(match waited {
            Ok(r) => r,
            Err(why) => {
                gave_up = Some(why);
                p.answer_now().unwrap_or_else(|| Err(why.error()))
            }
        });
    }
    items
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(EngineError::Internal(format!("admin task failed: {e}"))))
}

fn ok_frame(body: ResponseBody) -> ResponseFrame {
    ResponseFrame {
        status: Status::Ok,
        retry_after_ms: 0,
        message: String::new(),
        body: Some(body),
    }
}

fn error_frame(e: &EngineError) -> ResponseFrame {
    ResponseFrame {
        status: e.status(),
        retry_after_ms: e.retry_after_ms(),
        message: e.to_string(),
        body: None,
    }
}

fn status_frame(status: Status, message: String) -> ResponseFrame {
    ResponseFrame {
        status,
        retry_after_ms: 0,
        message,
        body: None,
    }
}
