//! Opportunistic coalescing of concurrent sign calls ([`super::ClientOptions::coalesce`]).
//!
//! Sign calls for the same key, version, scheme and flags that are made while an earlier one is
//! still waiting to be sent join it, and go out together as one SignBatch request: one QUIC stream,
//! one request frame and one answer frame for all of them. Every payload still gets its own HSM
//! signature and its own result. No timer is involved: the first call of a lane schedules a flush
//! task, which yields once to the runtime (so that the calls already runnable in the same tick can
//! join) and then sends whatever has gathered, so a lone call waits for nothing but that one
//! yield. What it saves is the per-stream work on both sides (stream set-up, framing, the server's
//! per-request task and authorization), which is most of the per-request cost that is not the
//! signature itself.
//!
//! The lane's queue holds only what arrived between the first call and the flush, and a flush
//! sends it in requests of at most `max` payloads.

use std::collections::HashMap;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::ClientError;
use signer_proto::keys::{KeyName, Scheme, Version};
use signer_proto::protocol::{BatchItem, SignatureForm};

/// One payload's outcome: the version that signed and the signature, or why not.
pub(super) type ItemResult = Result<(Version, SignatureForm), ClientError>;

/// What must be equal for sign calls to share one SignBatch request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Lane {
    pub key: KeyName,
    pub version: Option<Version>,
    pub scheme: Scheme,
    pub flags: u16,
}

/// A call waiting in a lane.
pub(super) struct Waiter {
    pub payload: Bytes,
    pub tx: oneshot::Sender<ItemResult>,
}

/// The lanes with calls waiting for their flush.
#[derive(Default)]
pub(super) struct Coalescer {
    lanes: Mutex<HashMap<Lane, Vec<Waiter>>>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("lanes_waiting", &self.lanes.lock().len())
            .finish()
    }
}

impl Coalescer {
    /// Queues a call; `true` when it opened the lane, so the caller must schedule its flush.
    pub fn push(&self, lane: &Lane, waiter: Waiter) -> bool {
        let mut lanes = self.lanes.lock();
        match lanes.get_mut(lane) {
            Some(waiting) => {
                waiting.push(waiter);
                false
            }
            None => {
                lanes.insert(lane.clone(), vec![waiter]);
                true
            }
        }
    }

    /// Takes everything waiting in the lane and closes it (the next call opens it again).
    pub fn take(&self, lane: &Lane) -> Vec<Waiter> {
        self.lanes.lock().remove(lane).unwrap_or_default()
    }
}

/// Splits `waiting` into requests of at most `max` payloads, in arrival order.
pub(super) fn chunks(mut waiting: Vec<Waiter>, max: usize) -> Vec<Vec<Waiter>> {
    let max = max.max(1);
    let mut out = Vec::with_capacity(waiting.len().div_ceil(max));
    while waiting.len() > max {
        let rest = waiting.split_off(max);
        out.push(std::mem::replace(&mut waiting, rest));
    }
    if !waiting.is_empty() {
        out.push(waiting);
    }
    out
}

/// Hands each waiter its item of a SignBatch answer (or, if the answer does not fit the request,
/// the same error to all). Every waiter is answered exactly once; one whose caller has gone is
/// skipped.
pub(super) fn answer(
    waiters: Vec<oneshot::Sender<ItemResult>>,
    items: Result<Vec<BatchItem>, ClientError>,
    item_result: impl Fn(BatchItem) -> ItemResult,
) {
    let items = items.and_then(|items| {
        if items.len() == waiters.len() {
            Ok(items)
        } else {
            Err(ClientError::protocol(format!(
                "the server answered {} items to a batch of {}",
                items.len(),
                waiters.len()
            )))
        }
    });
    match items {
        Ok(items) => {
            for (tx, item) in waiters.into_iter().zip(items) {
                let _ = tx.send(item_result(item));
            }
        }
        Err(e) => {
            for tx in waiters {
                let _ = tx.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use signer_proto::Status;

    fn lane(key: &str, flags: u16) -> Lane {
        Lane {
            key: KeyName::new(key).expect("valid name"),
            version: None,
            scheme: Scheme::EcdsaSha256,
            flags,
        }
    }

    fn waiter(n: u8) -> (Waiter, oneshot::Receiver<ItemResult>) {
        let (tx, rx) = oneshot::channel();
        (
            Waiter {
                payload: Bytes::from(vec![n; 32]),
                tx,
            },
            rx,
        )
    }

    #[test]
    fn the_first_call_of_a_lane_opens_it_and_take_closes_it() {
        let c = Coalescer::default();
        let (a, b) = (lane("a", 0), lane("a", 1));
        assert!(c.push(&a, waiter(1).0));
        assert!(!c.push(&a, waiter(2).0));
        // Other flags are another lane.
        assert!(c.push(&b, waiter(3).0));
        let taken: Vec<u8> = c.take(&a).iter().map(|w| w.payload[0]).collect();
        assert_eq!(taken, [1, 2]);
        assert!(c.take(&a).is_empty());
        assert!(c.push(&a, waiter(4).0), "a taken lane opens again");
        assert_eq!(c.take(&b).len(), 1);
    }

    #[test]
    fn chunks_keep_order_and_respect_the_maximum() {
        let ws: Vec<Waiter> = (0..10).map(|n| waiter(n).0).collect();
        let sizes: Vec<Vec<u8>> = chunks(ws, 4)
            .iter()
            .map(|c| c.iter().map(|w| w.payload[0]).collect())
            .collect();
        assert_eq!(sizes, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]);
        assert!(chunks(Vec::new(), 4).is_empty());
        assert_eq!(chunks((0..3).map(|n| waiter(n).0).collect(), 0).len(), 3);
    }

    #[test]
    fn each_waiter_gets_its_own_item_or_the_shared_error() {
        let item = |i: BatchItem| -> ItemResult {
            match i {
                BatchItem::Signed { version, signature } => Ok((version, signature)),
                BatchItem::Failed { status, .. } => Err(ClientError::Status {
                    status,
                    message: String::new(),
                    retry_after: None,
                }),
                other => panic!("unexpected batch item {other:?}"),
            }
        };
        let (ws, mut rxs): (Vec<_>, Vec<_>) = (0..2)
            .map(|n| {
                let (w, rx) = waiter(n);
                (w.tx, rx)
            })
            .unzip();
        answer(
            ws,
            Ok(vec![
                BatchItem::Signed {
                    version: 3,
                    signature: SignatureForm::Plain(Bytes::from_static(b"sig")),
                },
                BatchItem::Failed {
                    status: Status::Overloaded,
                    retry_after_ms: 5,
                    message: "busy".into(),
                },
            ]),
            item,
        );
        let first = rxs[0].try_recv().expect("answered");
        assert_eq!(
            first.expect("signed"),
            (3, SignatureForm::Plain(Bytes::from_static(b"sig")))
        );
        let second = rxs[1].try_recv().expect("answered");
        assert_eq!(
            second.expect_err("failed").status(),
            Some(Status::Overloaded)
        );

        // An answer with the wrong number of items fails every waiter, none is left hanging.
        let (ws, rxs): (Vec<_>, Vec<_>) = (0..3)
            .map(|n| {
                let (w, rx) = waiter(n);
                (w.tx, rx)
            })
            .unzip();
        answer(ws, Ok(Vec::new()), item);
        for mut rx in rxs {
            let e = rx
                .try_recv()
                .expect("answered")
                .expect_err("protocol error");
            assert!(
                matches!(e, ClientError::Protocol { source: None, .. }),
                "{e}"
            );
        }
    }
}
