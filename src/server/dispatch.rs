//! One request stream: read one frame (bounded in size and time), decode, authorize, run,
//! answer exactly once, finish.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream, VarInt};

use super::{InflightGuard, State};
use crate::engine::{KeyInfo, SignRequest, VersionInfo};
use crate::error::{EngineError, Status};
use crate::keys::{KeyName, Payload, Scheme, Version};
use crate::pipeline::Reply;
use crate::protocol::{
    self, BatchItem, KeyListing, Op, Request, RequestFrame, ResponseBody, ResponseFrame,
    VersionListing,
};

/// Stream error code when the request could not be read (too large, too slow).
const STREAM_REFUSED: u32 = 1;
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
    if send.write_all(&frame).await.is_ok() {
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
    if op.is_admin() && !state.cfg.admins.iter().any(|a| **a == **identity) {
        tracing::warn!(
            identity = &**identity,
            op = op.as_str(),
            "admin operation denied"
        );
        return status_frame(
            Status::PermissionDenied,
            format!("identity {identity:?} may not run {}", op.as_str()),
        );
    }
    let budget = match req.deadline_ms {
        0 => state.cfg.default_deadline_ms,
        ms => ms.min(state.cfg.max_deadline_ms),
    };
    let deadline = received + Duration::from_millis(u64::from(budget));
    let engine = &state.engine;
    let result: Result<ResponseBody, EngineError> = match req.request {
        Request::Sign {
            key,
            version,
            scheme,
            payload,
        } => match submit(engine, identity, &key, version, scheme, payload, deadline) {
            Ok(rx) => await_reply(state, rx, deadline)
                .await
                .map(|s| ResponseBody::Signed {
                    version: s.version,
                    signature: Bytes::from(s.signature),
                }),
            Err(e) => Err(e),
        },
        Request::SignBatch {
            key,
            version,
            scheme,
            payloads,
        } => {
            let mut pending = Vec::with_capacity(payloads.len());
            // Queue every item first so they sign in parallel, then collect the answers.
            for p in payloads {
                pending.push(submit(engine, identity, &key, version, scheme, p, deadline));
            }
            let mut items = Vec::with_capacity(pending.len());
            for p in pending {
                let r = match p {
                    Ok(rx) => await_reply(state, rx, deadline).await,
                    Err(e) => Err(e),
                };
                items.push(match r {
                    Ok(s) => BatchItem::Signed {
                        version: s.version,
                        signature: Bytes::from(s.signature),
                    },
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
        } => match Payload::new(scheme, payload) {
            Ok(payload) => {
                let engine = engine.clone();
                blocking(move || {
                    engine
                        .verify_blocking(&key, version, &payload, &signature)
                        .map(|(version, valid)| ResponseBody::Verified { version, valid })
                })
                .await
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
            engine.list().into_iter().map(listing).collect(),
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

/// Waits for the worker's answer; answers DEADLINE_EXCEEDED a little after the deadline if the
/// HSM has not answered (a hung call), and UNAVAILABLE when the shutdown grace period ends.
async fn await_reply(
    state: &State,
    rx: tokio::sync::oneshot::Receiver<Reply>,
    deadline: Instant,
) -> Reply {
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
