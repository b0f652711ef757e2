//! One request stream: read one frame (bounded in size and time), decode, authorize, run,
//! answer exactly once, finish.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};

use super::batcher::{BatchReply, Batcher};
use super::{authz, verify_pool, InflightGuard, State};
use crate::audit::AuditEntry;
use crate::config::batch::BatchMode;
use crate::engine::{KeyInfo, SignRequest, VersionInfo};
use crate::error::{EngineError, Status};
use crate::keys::{KeyName, Payload, Scheme, Version};
use crate::pipeline::Reply;
use crate::protocol::{
    self, BatchItem, KeyListing, Op, Request, RequestFrame, ResponseBody, ResponseFrame,
    SignatureForm, VersionListing,
};

/// Stream error code when the request could not be read (too large, too slow).
const STREAM_REFUSED: u32 = 1;
/// While draining, how long a stream waits for the peer to acknowledge its answer.
const DRAIN_DELIVERY: Duration = Duration::from_secs(1);
/// Retry hint while shutting down.
const DRAIN_RETRY_AFTER: Duration = Duration::from_secs(1);

pub(super) async fn stream(
    mut send: SendStream,
    mut recv: RecvStream,
    state: Arc<State>,
    identity: Arc<str>,
    _inflight: InflightGuard,
) {
    let received = Instant::now();
    let read = tokio::time::timeout(
        state.cfg.read_timeout(),
        recv.read_to_end(protocol::MAX_FRAME + 4),
    )
    .await;
    let data = match read {
        Ok(Ok(data)) => data,
        Ok(Err(quinn::ReadToEndError::TooLong)) => {
            let _ = recv.stop(VarInt::from_u32(STREAM_REFUSED));
            let frame = error_frame(&EngineError::InvalidArgument(format!(
                "request frame larger than {} bytes",
                protocol::MAX_FRAME
            )));
            respond(&mut send, Op::Sign, &frame).await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!("request stream failed: {e}");
            let _ = send.reset(VarInt::from_u32(STREAM_REFUSED));
            return;
        }
        Err(_) => {
            let _ = recv.stop(VarInt::from_u32(STREAM_REFUSED));
            let frame = error_frame(&EngineError::InvalidArgument(
                "request not received within the read timeout".into(),
            ));
            respond(&mut send, Op::Sign, &frame).await;
            return;
        }
    };
    let (op, frame) = match protocol::decode_request(&data) {
        Ok(req) => {
            let op = req.request.op();
            (op, handle(req, &state, &identity, received).await)
        }
        Err(e) => (
            Op::Sign,
            error_frame(&EngineError::InvalidArgument(format!(
                "malformed request: {e}"
            ))),
        ),
    };
    respond(&mut send, op, &frame).await;
    state
        .engine
        .metrics()
        .request(op.into(), frame.status.into(), received.elapsed());
    if state.is_draining() {
        // The endpoint closes (discarding unsent data) once no request is in flight: while
        // draining, a request counts as in flight until the peer has its answer.
        let _ = tokio::time::timeout(DRAIN_DELIVERY, send.stopped()).await;
    }
}

async fn respond(send: &mut SendStream, op: Op, frame: &ResponseFrame) {
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
    // Handing over the encoded Bytes avoids a copy into a new buffer.
    if send.write_chunk(frame).await.is_ok() {
        let _ = send.finish();
    }
}

async fn handle(
    req: RequestFrame,
    state: &Arc<State>,
    identity: &Arc<str>,
    received: Instant,
) -> ResponseFrame {
    if state.is_draining() {
        return error_frame(&EngineError::Unavailable {
            reason: "signer is shutting down".into(),
            retry_after: DRAIN_RETRY_AFTER,
        });
    }
    let op = req.request.op();
    let (subject, subject_version) = subject(&req.request);
    let scheme = authz::scheme_of(&req.request);
    if let Err(denial) = authz::authorize(state, identity, op, subject.as_ref(), scheme) {
        return deny_with(state, identity, op, subject, denial.message, denial.detail).await;
    }
    if let (Some(reserved), Some(key)) = (&state.extras.audit_key, &subject) {
        if reserved == key && op != Op::GetPublicKey {
            tracing::warn!(identity = &**identity, op = op.as_str(), key = %key, "operation on the audit key denied");
            let reason =
                format!("key {key} is reserved for the audit log; only its public key can be read");
            return deny(state, identity, op, subject, reason).await;
        }
    }
    // Ops that write audit records are refused while the log cannot be written: before the
    // HSM, so a full disk costs no signatures that would be thrown away. (A sign whose record
    // fails later, in the writer, is refused there.) Not audited: there is nowhere to write.
    if op.is_admin() || matches!(op, Op::Sign | Op::SignBatch) {
        if let Some(audit) = &state.extras.audit {
            if !audit.healthy() {
                return error_frame(&EngineError::Unavailable {
                    reason: "audit log cannot be written; signing and administrative operations \
                             are refused until it can"
                        .into(),
                    retry_after: DRAIN_RETRY_AFTER,
                });
            }
        }
    }
    // Quotas apply to signing and verify requests, after authorization and before anything is
    // queued.
    let _quota = match authz::admit(state, identity, &req.request) {
        Ok(guard) => guard,
        Err(e) => return error_frame(&e),
    };
    // Two-admin approval: a destroy_key may only be recorded as pending here.
    let mut admin_op = op.as_str();
    let mut admin_note = None;
    if let Request::DestroyKey { key, version } = &req.request {
        match authz::destroy_gate(state, key, *version, identity) {
            authz::DestroyGate::Proceed => {}
            authz::DestroyGate::Approved { requester } => {
                admin_op = "destroy_key.approve";
                admin_note = Some(format!("approves the request of {requester:?}"));
            }
            authz::DestroyGate::Pending { message } => {
                return pending(state, identity, subject, subject_version, message).await;
            }
            authz::DestroyGate::Refused(e) => return error_frame(&e),
        }
    }
    let budget = match req.deadline_ms {
        0 => state.cfg.default_deadline_ms,
        ms => ms.min(state.cfg.max_deadline_ms),
    };
    let deadline = received + Duration::from_millis(u64::from(budget));
    let engine = &state.engine;
    let accepts_batch = req.flags & protocol::ACCEPT_BATCH_SIGNATURE != 0;
    let result: Result<ResponseBody, EngineError> = match req.request {
        Request::Sign {
            key,
            version,
            scheme,
            payload,
        } => match route(state, &key, accepts_batch) {
            Err(e) => Err(e),
            Ok(batcher) => sign_one(
                state, batcher, identity, &key, version, scheme, payload, deadline,
            )
            .await
            .map(|(version, signature)| ResponseBody::Signed { version, signature }),
        },
        Request::SignBatch {
            key,
            version,
            scheme,
            payloads,
        } => {
            let batcher = match route(state, &key, accepts_batch) {
                Ok(b) => b,
                Err(e) => return error_frame(&e),
            };
            let mut pending = Vec::with_capacity(payloads.len());
            // Queue every item first so they sign in parallel (or share one tree), then collect
            // the answers.
            for p in payloads {
                pending.push(match &batcher {
                    Some(b) => b
                        .submit(&key, version, scheme, p, deadline, identity)
                        .map(Pending::Batch),
                    None => submit(engine, identity, &key, version, scheme, p, deadline)
                        .map(Pending::Plain),
                });
            }
            let mut items = Vec::with_capacity(pending.len());
            for p in pending {
                let r = match p {
                    Ok(p) => p.wait(state, deadline).await,
                    Err(e) => Err(e),
                };
                items.push(match r {
                    Ok((version, signature)) => BatchItem::Signed { version, signature },
                    Err(e) => BatchItem::Failed {
                        status: e.status(),
                        retry_after_ms: retry_ms(&e),
                        message: e.to_string(),
                    },
                });
            }
            Ok(ResponseBody::Batch(items))
        }
        Request::Verify {
            key,
            version,
            scheme,
            payload,
            signature,
        } => match Payload::new(scheme, payload)
            .and_then(|payload| engine.public_key(&key, version).map(|pk| (payload, pk)))
        {
            // Verification needs only the version's public key, which the registry holds (read
            // from the token at start): it is done in software, sparing the HSM (a network
            // HSM's calls are its scarcest resource), on the verify threads, not here on the
            // network runtime. A batch signature's inclusion proof is hashing; its root
            // signature is checked the same way.
            Ok((payload, pk)) => {
                let version = pk.version;
                state
                    .verify
                    .run(move || {
                        crate::merkle::verify(
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
            Err(e) => Err(e),
        },
        Request::GetPublicKey { key, version } => {
            engine
                .public_key(&key, version)
                .map(|pk| ResponseBody::PublicKey {
                    version: pk.version,
                    key_type: pk.key_type,
                    spki_der: Bytes::from(pk.spki_der),
                })
        }
        Request::ListKeys => Ok(ResponseBody::Keys(
            engine
                .list()
                .into_iter()
                .filter(|k| authz::may_list(state, identity, &k.name))
                .map(listing)
                .collect(),
        )),
        Request::CreateKey {
            key,
            key_type,
            placement,
        } => {
            let engine = engine.clone();
            let who = Arc::clone(identity);
            blocking(move || {
                let placement = (!placement.is_empty()).then_some(placement);
                let v = engine.create_key(&key, key_type, placement.as_deref())?;
                tracing::info!(identity = %who, key = %key, %key_type, "key created");
                Ok(ResponseBody::KeyVersion(version_listing(v)))
            })
            .await
        }
        Request::RotateKey { key } => {
            let engine = engine.clone();
            blocking(move || {
                Ok(ResponseBody::KeyVersion(version_listing(
                    engine.rotate_key(&key)?,
                )))
            })
            .await
        }
        Request::RetireKey { key, version } => {
            let engine = engine.clone();
            blocking(move || {
                Ok(ResponseBody::KeyVersion(version_listing(
                    engine.retire_key(&key, version)?,
                )))
            })
            .await
        }
        Request::DestroyKey { key, version } => {
            let engine = engine.clone();
            blocking(move || {
                engine
                    .destroy_key(&key, version)
                    .map(|()| ResponseBody::Destroyed)
            })
            .await
        }
    };
    if op.is_admin() {
        let audited = audit_admin(
            state,
            identity,
            (admin_op, admin_note),
            subject,
            subject_version,
            &result,
        )
        .await;
        if let Err(e) = audited {
            tracing::error!(
                op = op.as_str(),
                "administrative operation done but not audited: {e}"
            );
            return error_frame(&EngineError::Internal(format!(
                "{} was carried out, but its audit record could not be written: {e}",
                op.as_str()
            )));
        }
    }
    match result {
        Ok(body) => ResponseFrame {
            status: Status::Ok,
            retry_after_ms: 0,
            message: String::new(),
            body: Some(body),
        },
        Err(e) => error_frame(&e),
    }
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
    AuditEntry {
        time: SystemTime::now(),
        identity: Arc::clone(identity),
        op,
        key: key.map(|k| k.shared()),
        version,
        payload_sha256: None,
        status: status.as_str(),
        partition: None,
        detail,
    }
}

/// Answers PERMISSION_DENIED, after recording the denial in the audit log.
async fn deny(
    state: &State,
    identity: &Arc<str>,
    op: Op,
    key: Option<KeyName>,
    reason: String,
) -> ResponseFrame {
    let detail = reason.clone();
    deny_with(state, identity, op, key, reason, detail).await
}

/// Answers PERMISSION_DENIED with `message`, after recording the denial (with `detail`) in the
/// audit log and counting it in `signer_authz_denied_total`.
async fn deny_with(
    state: &State,
    identity: &Arc<str>,
    op: Op,
    key: Option<KeyName>,
    message: String,
    detail: String,
) -> ResponseFrame {
    state.engine.metrics().authz_denied(op.into());
    if let Some(audit) = &state.extras.audit {
        let entry = audit_entry(
            identity,
            op.as_str(),
            key,
            None,
            Status::PermissionDenied,
            Some(detail),
        );
        if let Err(e) = audit.append(entry).await {
            tracing::error!("authorization failure not audited: {e}");
        }
    }
    status_frame(Status::PermissionDenied, message)
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

/// Records a connection refused for want of a usable client identity.
pub(super) async fn audit_auth_failure(state: &State, reason: &str) {
    if let Some(audit) = &state.extras.audit {
        let entry = AuditEntry {
            time: SystemTime::now(),
            identity: Arc::from("-"),
            op: "auth",
            key: None,
            version: None,
            payload_sha256: None,
            status: Status::Unauthenticated.as_str(),
            partition: None,
            detail: Some(reason.to_owned()),
        };
        if let Err(e) = audit.append(entry).await {
            tracing::error!("authentication failure not audited: {e}");
        }
    }
}

/// Checks one payload against its scheme and queues it in the engine.
fn submit(
    engine: &crate::Engine,
    identity: &Arc<str>,
    key: &KeyName,
    version: Option<Version>,
    scheme: Scheme,
    payload: Bytes,
    deadline: Instant,
) -> Result<tokio::sync::oneshot::Receiver<Reply>, EngineError> {
    let payload = Payload::new(scheme, payload)?;
    engine.submit(SignRequest {
        key: key.clone(),
        version,
        payload,
        deadline,
        identity: Arc::clone(identity),
    })
}

/// Whether a sign request for `key` goes through the batcher: `Ok(Some)` for a batch-enabled key
/// and a client that accepts batch signatures, `Ok(None)` for a plain signature, and an error for
/// a key that requires batch signatures asked by a client that does not accept them.
fn route<'a>(
    state: &'a State,
    key: &KeyName,
    accepts_batch: bool,
) -> Result<Option<&'a Arc<Batcher>>, EngineError> {
    let Some(b) = &state.extras.batch else {
        return Ok(None);
    };
    match (b.mode(key), accepts_batch) {
        (BatchMode::Off, _) | (BatchMode::Allowed, false) => Ok(None),
        (BatchMode::Allowed | BatchMode::Required, true) => Ok(Some(b)),
        (BatchMode::Required, false) => Err(EngineError::FailedPrecondition(format!(
            "key {key} signs only in batches: send the request with ACCEPT_BATCH_SIGNATURE \
             (docs/BATCH.md)"
        ))),
    }
}

/// A queued sign: a plain engine job, or a leaf of the next batch tree.
enum Pending {
    Plain(tokio::sync::oneshot::Receiver<Reply>),
    Batch(tokio::sync::oneshot::Receiver<BatchReply>),
}

impl Pending {
    async fn wait(
        self,
        state: &State,
        deadline: Instant,
    ) -> Result<(Version, SignatureForm), EngineError> {
        match self {
            Pending::Plain(rx) => await_reply(state, rx, deadline)
                .await
                .map(|s| (s.version, SignatureForm::Plain(Bytes::from(s.signature)))),
            Pending::Batch(rx) => await_reply(state, rx, deadline)
                .await
                .map(|(v, sig)| (v, SignatureForm::Batch(sig))),
        }
    }
}

/// Signs one payload, plainly or in a batch tree.
#[allow(clippy::too_many_arguments)]
async fn sign_one(
    state: &State,
    batcher: Option<&Arc<Batcher>>,
    identity: &Arc<str>,
    key: &KeyName,
    version: Option<Version>,
    scheme: Scheme,
    payload: Bytes,
    deadline: Instant,
) -> Result<(Version, SignatureForm), EngineError> {
    let pending = match batcher {
        Some(b) => b
            .submit(key, version, scheme, payload, deadline, identity)
            .map(Pending::Batch)?,
        None => submit(
            &state.engine,
            identity,
            key,
            version,
            scheme,
            payload,
            deadline,
        )
        .map(Pending::Plain)?,
    };
    pending.wait(state, deadline).await
}

/// Waits for the worker's answer; answers DEADLINE_EXCEEDED a little after the deadline if the
/// HSM has not answered (a hung call), and UNAVAILABLE when the shutdown grace period ends.
async fn await_reply<T>(
    state: &State,
    rx: tokio::sync::oneshot::Receiver<Result<T, EngineError>>,
    deadline: Instant,
) -> Result<T, EngineError> {
    let mut expired = state.expired.subscribe();
    let late = tokio::time::Instant::from_std(deadline + Duration::from_millis(50));
    tokio::select! {
        r = rx => r.unwrap_or_else(|_| Err(EngineError::Internal("worker dropped the request".into()))),
        () = tokio::time::sleep_until(late) => Err(EngineError::DeadlineExceeded),
        _ = expired.wait_for(|e| *e) => Err(EngineError::Unavailable {
            reason: "signer shut down before this request was signed".into(),
            retry_after: DRAIN_RETRY_AFTER,
        }),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(EngineError::Internal(format!("admin task failed: {e}"))))
}

fn retry_ms(e: &EngineError) -> u32 {
    e.retry_after()
        .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
}

fn error_frame(e: &EngineError) -> ResponseFrame {
    ResponseFrame {
        status: e.status(),
        retry_after_ms: retry_ms(e),
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

fn listing(k: KeyInfo) -> KeyListing {
    KeyListing {
        name: k.name,
        key_type: k.key_type,
        signing_version: k.signing_version,
        versions: k.versions.into_iter().map(version_listing).collect(),
    }
}

fn version_listing(v: VersionInfo) -> VersionListing {
    VersionListing {
        version: v.version,
        state: v.state,
        partitions: v.partitions,
    }
}
