//! The signerd client library: QUIC with mutual TLS, one connection per endpoint shared by every
//! task, one stream per request, per-call timeouts sent as the request deadline, retries of
//! retryable answers within a budget, and reconnection after a connection loss. With
//! [`ClientOptions::coalesce`] above 1, concurrent sign calls for the same key share one
//! SignBatch request (one stream) while each payload keeps its own signature and result.
//!
//! ```no_run
//! # async fn demo() -> Result<(), certnode_signer::client::ClientError> {
//! use certnode_signer::client::{Client, ClientOptions};
//! use certnode_signer::Scheme;
//!
//! let client = Client::connect(ClientOptions::from_file("dev/client-app.toml".as_ref())?).await?;
//! let digest = [0u8; 32]; // SHA-256 of your message
//! let sig = client.sign("payments", Scheme::EcdsaSha256, digest.to_vec()).await?;
//! println!("signed by version {}: {} bytes", sig.version, sig.signature.len());
//! let ok = client
//!     .verify("payments", Some(sig.version), Scheme::EcdsaSha256, digest.to_vec(), sig.signature)
//!     .await?;
//! assert!(ok);
//! # Ok(()) }
//! ```

mod coalesce;
mod options;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::time::Instant;

use coalesce::Lane;
pub use options::ClientOptions;

pub use crate::error::Status;
use crate::keys::{KeyName, KeyType, Scheme, Version};
use crate::protocol::{
    self, BatchItem, Op, Request, RequestFrame, ResponseBody, ResponseFrame, ACCEPT_BATCH_SIGNATURE,
};
pub use crate::protocol::{KeyListing, SignatureForm, VersionListing};

/// How long past a call's timeout the client waits for the server's own DEADLINE_EXCEEDED
/// answer before giving up with [`ClientError::Timeout`].
pub const SERVER_ANSWER_GRACE: Duration = Duration::from_millis(250);

/// What can go wrong in a call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{}: {message}", status.as_str())]
    Status {
        /// The status.
        status: Status,
        /// The server's explanation.
        message: String,
        /// When to retry (OVERLOADED, UNAVAILABLE).
        retry_after: Option<Duration>,
    },
    /// No endpoint could be reached or the TLS handshake failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection or stream failed mid-call.
    #[error("transport: {0}")]
    Transport(String),
    /// The server sent something this client cannot decode.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The call's timeout passed.
    #[error("timed out")]
    Timeout,
    /// The client configuration is unusable.
    #[error("config: {0}")]
    Config(String),
    /// The arguments were rejected before sending (e.g. an invalid key name).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// The server status, if the server answered.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => status.is_retryable(),
            ClientError::Connect(_) | ClientError::Transport(_) | ClientError::Timeout => true,
            _ => false,
        }
    }
}

/// A signature and the key version that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The key version that signed.
    pub version: Version,
    /// The signature (ECDSA: ASN.1 DER; RSA: raw; Ed25519: 64 bytes).
    pub signature: Bytes,
}

/// A signed result as this client expects it: it never sets `ACCEPT_BATCH_SIGNATURE`, so a batch
/// signature (form 2) in the answer is a protocol violation.
fn plain(version: Version, signature: SignatureForm) -> Result<Signature, ClientError> {
    match signature {
        SignatureForm::Plain(signature) => Ok(Signature { version, signature }),
        SignatureForm::Batch(_) => Err(ClientError::Protocol(
            "the server sent a batch signature (form 2) without ACCEPT_BATCH_SIGNATURE".into(),
        )),
    }
}

/// A signature in either form, from [`Client::sign_accepting_batch`]: plain, or a Merkle batch
/// signature (one HSM signature over a tree root plus this payload's inclusion proof,
/// docs/BATCH.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnySignature {
    /// The key's name.
    pub key: KeyName,
    /// The key version that signed.
    pub version: Version,
    /// The scheme.
    pub scheme: Scheme,
    /// The signature.
    pub signature: SignatureForm,
}

impl AnySignature {
    /// Whether it is a batch (form 2) signature.
    pub fn is_batch(&self) -> bool {
        matches!(self.signature, SignatureForm::Batch(_))
    }

    /// Checks it offline against the key's public key (SubjectPublicKeyInfo DER) and the payload
    /// that was signed (the digest; the message for Ed25519), whichever its form.
    pub fn verify(
        &self,
        spki_der: &[u8],
        payload: &[u8],
    ) -> Result<(), crate::merkle::VerifyError> {
        crate::merkle::verify(
            spki_der,
            self.scheme,
            &self.key,
            self.version,
            payload,
            &self.signature,
        )
    }

    /// A self-contained blob that a relying party verifies offline with only the public key and
    /// the message (`tools/verify_batch.py blob`, or `merkle::BatchBlob::verify_message`).
    /// `None` for a plain signature (which needs no blob).
    pub fn to_blob(&self) -> Option<crate::merkle::BatchBlob> {
        match &self.signature {
            SignatureForm::Batch(sig) => Some(crate::merkle::BatchBlob {
                scheme: self.scheme,
                key: self.key.clone(),
                version: self.version,
                signature: sig.clone(),
            }),
            SignatureForm::Plain(_) => None,
        }
    }
}

/// The items of a SignBatch answer, in order: `signed` for each signature, the item's status
/// for each failure.
fn batch_results<T>(
    items: Vec<BatchItem>,
    mut signed: impl FnMut(Version, SignatureForm) -> Result<T, ClientError>,
) -> Vec<Result<T, ClientError>> {
    items
        .into_iter()
        .map(|item| item_result(item).and_then(|(version, signature)| signed(version, signature)))
        .collect()
}

/// One item of a SignBatch answer: the version and signature, or the item's status.
fn item_result(item: BatchItem) -> coalesce::ItemResult {
    match item {
        BatchItem::Signed { version, signature } => Ok((version, signature)),
        BatchItem::Failed {
            status,
            retry_after_ms,
            message,
        } => Err(status_error(status, retry_after_ms, message)),
        #[allow(unreachable_patterns)]
        _ => Err(ClientError::Protocol("unknown batch item".into())),
    }
}

/// A public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeyInfo {
    /// Version exported.
    pub version: Version,
    /// Key type.
    pub key_type: KeyType,
    /// SubjectPublicKeyInfo, DER.
    pub spki_der: Bytes,
}

impl PublicKeyInfo {
    /// SubjectPublicKeyInfo as PEM.
    pub fn pem(&self) -> String {
        crate::hsm::der::pem_encode("PUBLIC KEY", &self.spki_der)
    }
}

/// A connected client. Cheap to clone; all clones share the connections.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoint: quinn::Endpoint,
    opts: ClientOptions,
    conns: Vec<Mutex<Option<quinn::Connection>>>,
    next: AtomicUsize,
    connect_lock: tokio::sync::Mutex<()>,
    coalescer: coalesce::Coalescer,
}

impl Client {
    /// Creates the client and connects to the first reachable endpoint.
    pub async fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        let client = Client::new(opts)?;
        client.connection().await?;
        Ok(client)
    }

    /// Creates the client without connecting (the first call connects).
    pub fn new(opts: ClientOptions) -> Result<Client, ClientError> {
        if opts.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints".into()));
        }
        let tls = crate::tls::client_config(&opts.ca, &opts.cert, &opts.key)
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Config(format!("TLS config unusable for QUIC: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(10)));
        transport.stream_receive_window(quinn::VarInt::from_u32(1 << 20));
        transport.receive_window(quinn::VarInt::from_u32(16 << 20));
        transport.send_window(16 << 20);
        transport.ack_frequency_config(Some(crate::server::ack_frequency()));
        config.transport_config(Arc::new(transport));
        let bind: SocketAddr = if opts.endpoints.iter().all(|e| e.is_ipv6()) {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(|e| ClientError::Config(format!("bind address: {e}")))?;
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| ClientError::Connect(format!("cannot open a UDP socket: {e}")))?;
        endpoint.set_default_client_config(config);
        let conns = opts.endpoints.iter().map(|_| Mutex::new(None)).collect();
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint,
                opts,
                conns,
                next: AtomicUsize::new(0),
                connect_lock: tokio::sync::Mutex::new(()),
                coalescer: coalesce::Coalescer::default(),
            }),
        })
    }

    /// Signs a digest (or, for Ed25519, a message) with the key's signing version.
    pub async fn sign(
        &self,
        key: &str,
        scheme: Scheme,
        payload: impl Into<Bytes>,
    ) -> Result<Signature, ClientError> {
        self.sign_version(key, None, scheme, payload).await
    }

    /// Signs with a specific (active) version, or the signing version when `None`.
    pub async fn sign_version(
        &self,
        key: &str,
        version: Option<Version>,
        scheme: Scheme,
        payload: impl Into<Bytes>,
    ) -> Result<Signature, ClientError> {
        let lane = Lane {
            key: name(key)?,
            version,
            scheme,
            flags: 0,
        };
        let (version, signature) = self.sign_item(lane, payload.into()).await?;
        plain(version, signature)
    }

    /// Signs like [`Client::sign`], but tells the server this client accepts a Merkle batch
    /// signature (`ACCEPT_BATCH_SIGNATURE`). For keys configured for batch signing the answer is
    /// then a batch signature (verify it with [`AnySignature::verify`]); otherwise it is plain.
    pub async fn sign_accepting_batch(
        &self,
        key: &str,
        scheme: Scheme,
        payload: impl Into<Bytes>,
    ) -> Result<AnySignature, ClientError> {
        let key = name(key)?;
        let lane = Lane {
            key: key.clone(),
            version: None,
            scheme,
            flags: ACCEPT_BATCH_SIGNATURE,
        };
        let (version, signature) = self.sign_item(lane, payload.into()).await?;
        Ok(AnySignature {
            key,
            version,
            scheme,
            signature,
        })
    }

    /// Signs many payloads in one request (one stream), accepting batch signatures: for a key
    /// configured for batch signing every payload becomes a leaf of a Merkle tree (shared with
    /// other callers' requests) and gets its own inclusion proof. One result per payload, in
    /// order.
    pub async fn sign_batch_accepting_batch(
        &self,
        key: &str,
        scheme: Scheme,
        payloads: Vec<Bytes>,
    ) -> Result<Vec<Result<AnySignature, ClientError>>, ClientError> {
        let key = name(key)?;
        let request = Request::SignBatch {
            key: key.clone(),
            version: None,
            scheme,
            payloads,
        };
        match self.call_flags(request, ACCEPT_BATCH_SIGNATURE).await? {
            ResponseBody::Batch(items) => Ok(batch_results(items, |version, signature| {
                Ok(AnySignature {
                    key: key.clone(),
                    version,
                    scheme,
                    signature,
                })
            })),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the server whether a signature of either form is valid for `payload`.
    pub async fn verify_any(
        &self,
        signature: &AnySignature,
        payload: impl Into<Bytes>,
    ) -> Result<bool, ClientError> {
        let request = Request::Verify {
            key: signature.key.clone(),
            version: Some(signature.version),
            scheme: signature.scheme,
            payload: payload.into(),
            signature: signature.signature.clone(),
        };
        match self.call(request).await? {
            ResponseBody::Verified { valid, .. } => Ok(valid),
            other => Err(unexpected(&other)),
        }
    }

    /// Signs many payloads in one request; one result per payload, in order.
    pub async fn sign_batch(
        &self,
        key: &str,
        scheme: Scheme,
        payloads: Vec<Bytes>,
    ) -> Result<Vec<Result<Signature, ClientError>>, ClientError> {
        let request = Request::SignBatch {
            key: name(key)?,
            version: None,
            scheme,
            payloads,
        };
        match self.call(request).await? {
            ResponseBody::Batch(items) => Ok(batch_results(items, plain)),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the server whether `signature` is valid for `payload` (checked against the key
    /// version's public key).
    pub async fn verify(
        &self,
        key: &str,
        version: Option<Version>,
        scheme: Scheme,
        payload: impl Into<Bytes>,
        signature: impl Into<Bytes>,
    ) -> Result<bool, ClientError> {
        let request = Request::Verify {
            key: name(key)?,
            version,
            scheme,
            payload: payload.into(),
            signature: SignatureForm::Plain(signature.into()),
        };
        match self.call(request).await? {
            ResponseBody::Verified { valid, .. } => Ok(valid),
            other => Err(unexpected(&other)),
        }
    }

    /// A key's public key (default: the signing version, else the latest).
    pub async fn public_key(
        &self,
        key: &str,
        version: Option<Version>,
    ) -> Result<PublicKeyInfo, ClientError> {
        let request = Request::GetPublicKey {
            key: name(key)?,
            version,
        };
        match self.call(request).await? {
            ResponseBody::PublicKey {
                version,
                key_type,
                spki_der,
            } => Ok(PublicKeyInfo {
                version,
                key_type,
                spki_der,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// All keys with versions, states and placement.
    pub async fn list_keys(&self) -> Result<Vec<KeyListing>, ClientError> {
        match self.call(Request::ListKeys).await? {
            ResponseBody::Keys(keys) => Ok(keys),
            other => Err(unexpected(&other)),
        }
    }

    /// Admin: creates a key (on `placement` partitions, or all when empty).
    pub async fn create_key(
        &self,
        key: &str,
        key_type: KeyType,
        placement: Vec<String>,
    ) -> Result<VersionListing, ClientError> {
        let request = Request::CreateKey {
            key: name(key)?,
            key_type,
            placement,
        };
        self.version_call(request).await
    }

    /// Admin: makes a new version the signing version; older versions retire.
    pub async fn rotate_key(&self, key: &str) -> Result<VersionListing, ClientError> {
        self.version_call(Request::RotateKey { key: name(key)? })
            .await
    }

    /// Admin: stops a version from signing.
    pub async fn retire_key(
        &self,
        key: &str,
        version: Version,
    ) -> Result<VersionListing, ClientError> {
        self.version_call(Request::RetireKey {
            key: name(key)?,
            version,
        })
        .await
    }

    /// Admin: destroys a retired version in every HSM.
    pub async fn destroy_key(&self, key: &str, version: Version) -> Result<(), ClientError> {
        match self
            .call(Request::DestroyKey {
                key: name(key)?,
                version,
            })
            .await?
        {
            ResponseBody::Destroyed => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Closes all connections.
    pub fn close(&self) {
        self.inner
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"client closed");
    }

    async fn version_call(&self, request: Request) -> Result<VersionListing, ClientError> {
        match self.call(request).await? {
            ResponseBody::KeyVersion(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// Signs one payload of a lane: in a request of its own, or (with `coalesce` > 1) in one
    /// SignBatch request with the concurrent calls of the same lane. Retries like any call.
    async fn sign_item(&self, lane: Lane, payload: Bytes) -> coalesce::ItemResult {
        let deadline = Instant::now() + self.inner.opts.timeout;
        if self.inner.opts.coalesce <= 1 {
            return self.sign_alone(&lane, payload, deadline, 0).await;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiter = coalesce::Waiter {
            payload: payload.clone(),
            tx,
        };
        if self.inner.coalescer.push(&lane, waiter) {
            let client = self.clone();
            let lane = lane.clone();
            tokio::spawn(async move { client.flush(lane).await });
        }
        // The shared request ends by its own deadline (it starts when the request is sent, one
        // yield after this call); this call's own timeout holds even if the flush is starved.
        let first = match tokio::time::timeout_at(deadline + SERVER_ANSWER_GRACE, rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Transport(
                "the coalesced request was dropped before it was answered".into(),
            )),
        };
        // The shared request was sent once, without retries; a retryable failure of this item
        // is retried on its own, within this call's timeout and retry budget.
        match first {
            Err(e) => match retry_wait(&e, Op::Sign, 0, &self.inner.opts, deadline) {
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    self.sign_alone(&lane, payload, deadline, 1).await
                }
                None => Err(e),
            },
            ok => ok,
        }
    }

    /// Sends what has gathered in the lane since its first call, after one yield that lets the
    /// calls already runnable join, in SignBatch requests of at most `coalesce` payloads.
    async fn flush(self, lane: Lane) {
        tokio::task::yield_now().await;
        let waiting = self.inner.coalescer.take(&lane);
        let mut batches = coalesce::chunks(waiting, self.inner.opts.coalesce);
        let last = batches.pop();
        for batch in batches {
            let (client, lane) = (self.clone(), lane.clone());
            tokio::spawn(async move { client.send_coalesced(&lane, batch).await });
        }
        if let Some(batch) = last {
            self.send_coalesced(&lane, batch).await;
        }
    }

    /// One coalesced request, sent once (each waiter retries its own item if it may).
    async fn send_coalesced(&self, lane: &Lane, batch: Vec<coalesce::Waiter>) {
        let deadline = Instant::now() + self.inner.opts.timeout;
        let (payloads, waiters): (Vec<Bytes>, Vec<_>) =
            batch.into_iter().map(|w| (w.payload, w.tx)).unzip();
        if let ([payload], [_]) = (&payloads[..], &waiters[..]) {
            let result = self
                .sign_alone(lane, payload.clone(), deadline, NO_RETRY)
                .await;
            if let Some(tx) = waiters.into_iter().next() {
                let _ = tx.send(result);
            }
            return;
        }
        let request = Request::SignBatch {
            key: lane.key.clone(),
            version: lane.version,
            scheme: lane.scheme,
            payloads,
        };
        let items = match self
            .call_until(request, lane.flags, deadline, NO_RETRY)
            .await
        {
            Ok(ResponseBody::Batch(items)) => Ok(items),
            Ok(other) => Err(unexpected(&other)),
            Err(e) => Err(e),
        };
        coalesce::answer(waiters, items, item_result);
    }

    /// One Sign request for one payload, from retry attempt `attempt` on.
    async fn sign_alone(
        &self,
        lane: &Lane,
        payload: Bytes,
        deadline: Instant,
        attempt: u32,
    ) -> coalesce::ItemResult {
        let request = Request::Sign {
            key: lane.key.clone(),
            version: lane.version,
            scheme: lane.scheme,
            payload,
        };
        match self
            .call_until(request, lane.flags, deadline, attempt)
            .await?
        {
            ResponseBody::Signed { version, signature } => Ok((version, signature)),
            other => Err(unexpected(&other)),
        }
    }

    /// One call: send, retry retryable answers within the retry budget and the timeout.
    /// Returns at most [`SERVER_ANSWER_GRACE`] after the timeout.
    async fn call(&self, request: Request) -> Result<ResponseBody, ClientError> {
        self.call_flags(request, 0).await
    }

    async fn call_flags(&self, request: Request, flags: u16) -> Result<ResponseBody, ClientError> {
        let deadline = Instant::now() + self.inner.opts.timeout;
        self.call_until(request, flags, deadline, 0).await
    }

    /// A call that ends by `deadline` (plus the grace for the server's own answer), from retry
    /// attempt `attempt` on ([`NO_RETRY`]: one attempt only).
    async fn call_until(
        &self,
        request: Request,
        flags: u16,
        deadline: Instant,
        mut attempt: u32,
    ) -> Result<ResponseBody, ClientError> {
        let opts = &self.inner.opts;
        let op = request.op();
        let mut frame = RequestFrame {
            flags,
            deadline_ms: 0,
            request,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout);
            }
            frame.deadline_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
            // The server answers DEADLINE_EXCEEDED itself just after the deadline (also when the
            // HSM hangs); wait a little longer than the deadline for that explicit answer.
            let outcome =
                tokio::time::timeout_at(deadline + SERVER_ANSWER_GRACE, self.roundtrip(op, &frame))
                    .await;
            let err = match outcome {
                Err(_) => return Err(ClientError::Timeout),
                Ok(Ok(resp)) => match resp.status {
                    Status::Ok => {
                        return resp
                            .body
                            .ok_or_else(|| ClientError::Protocol("OK without a body".into()))
                    }
                    status => status_error(status, resp.retry_after_ms, resp.message),
                },
                Ok(Err(e)) => e,
            };
            let Some(wait) = retry_wait(&err, op, attempt, opts, deadline) else {
                return Err(err);
            };
            attempt += 1;
            tokio::time::sleep(wait).await;
        }
    }

    async fn roundtrip(&self, op: Op, frame: &RequestFrame) -> Result<ResponseFrame, ClientError> {
        let mut buf = BytesMut::with_capacity(128);
        protocol::encode_request(frame, &mut buf)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let (idx, conn) = self.connection().await?;
        let result = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(transport)?;
            send.write_all(&buf).await.map_err(transport)?;
            send.finish().map_err(transport)?;
            recv.read_to_end(protocol::MAX_FRAME + 4)
                .await
                .map_err(transport)
        }
        .await;
        match result {
            Ok(bytes) => protocol::decode_response(op, &bytes)
                .map_err(|e| ClientError::Protocol(e.to_string())),
            Err(e) => {
                if conn.close_reason().is_some() {
                    self.forget(idx, &conn);
                }
                Err(e)
            }
        }
    }

    /// A live connection: a cached one, else a new one to the next reachable endpoint.
    async fn connection(&self) -> Result<(usize, quinn::Connection), ClientError> {
        let n = self.inner.conns.len();
        let start = self.inner.next.load(Ordering::Relaxed);
        for i in 0..n {
            let idx = (start + i) % n;
            if let Some(c) = self.inner.conns[idx].lock().as_ref() {
                if c.close_reason().is_none() {
                    return Ok((idx, c.clone()));
                }
            }
        }
        let _one_at_a_time = self.inner.connect_lock.lock().await;
        let mut last = String::from("no endpoint tried");
        for i in 0..n {
            let idx = (start + i) % n;
            if let Some(c) = self.inner.conns[idx].lock().as_ref() {
                if c.close_reason().is_none() {
                    return Ok((idx, c.clone()));
                }
            }
            let addr = self.inner.opts.endpoints[idx];
            let connecting = self
                .inner
                .endpoint
                .connect(addr, &self.inner.opts.server_name)
                .map_err(|e| ClientError::Connect(format!("{addr}: {e}")));
            let result = match connecting {
                Ok(c) => c
                    .await
                    .map_err(|e| ClientError::Connect(format!("{addr}: {e}"))),
                Err(e) => Err(e),
            };
            match result {
                Ok(conn) => {
                    *self.inner.conns[idx].lock() = Some(conn.clone());
                    self.inner.next.store(idx, Ordering::Relaxed);
                    return Ok((idx, conn));
                }
                Err(e) => last = e.to_string(),
            }
        }
        self.inner.next.store((start + 1) % n, Ordering::Relaxed);
        Err(ClientError::Connect(last))
    }

    fn forget(&self, idx: usize, conn: &quinn::Connection) {
        let mut slot = self.inner.conns[idx].lock();
        if slot
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            *slot = None;
        }
    }
}

/// `attempt` for a call that must not be retried.
const NO_RETRY: u32 = u32::MAX;

/// How long to wait before retrying a call that failed with `err` after `attempt` retries, or
/// `None` if it is not retried: not retryable, the retry budget spent, or the wait would end past
/// the deadline. Admin operations are retried only when the server said it did nothing.
fn retry_wait(
    err: &ClientError,
    op: Op,
    attempt: u32,
    opts: &ClientOptions,
    deadline: Instant,
) -> Option<Duration> {
    let retryable = match err {
        ClientError::Status { status, .. } => {
            matches!(status, Status::Overloaded | Status::Unavailable)
        }
        ClientError::Connect(_) => true,
        ClientError::Transport(_) => !op.is_admin(),
        _ => false,
    };
    if !retryable || attempt >= opts.max_retries {
        return None;
    }
    let wait = match err {
        ClientError::Status {
            retry_after: Some(d),
            ..
        } => *d,
        _ => Duration::from_millis(20 * u64::from(attempt + 1)),
    };
    (Instant::now() + wait < deadline).then_some(wait)
}

fn name(key: &str) -> Result<KeyName, ClientError> {
    KeyName::new(key).map_err(|e| ClientError::InvalidArgument(e.to_string()))
}

fn transport(e: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(e.to_string())
}

fn status_error(status: Status, retry_after_ms: u32, message: String) -> ClientError {
    ClientError::Status {
        status,
        message,
        retry_after: (retry_after_ms > 0).then(|| Duration::from_millis(u64::from(retry_after_ms))),
    }
}

fn unexpected(body: &ResponseBody) -> ClientError {
    ClientError::Protocol(format!("unexpected response body {body:?}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn opts(max_retries: u32) -> ClientOptions {
        ClientOptions {
            endpoints: vec![],
            server_name: "localhost".into(),
            ca: "ca.pem".into(),
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            timeout: Duration::from_secs(5),
            max_retries,
            coalesce: 1,
        }
    }

    fn status(status: Status, retry_after: Option<Duration>) -> ClientError {
        ClientError::Status {
            status,
            message: String::new(),
            retry_after,
        }
    }

    #[tokio::test]
    async fn retries_follow_the_status_the_budget_and_the_deadline() {
        let o = opts(2);
        let later = Instant::now() + Duration::from_secs(5);
        let busy = status(Status::Overloaded, Some(Duration::from_millis(7)));
        // The server's retry-after is honoured; without one the wait grows per attempt.
        assert_eq!(
            retry_wait(&busy, Op::Sign, 0, &o, later),
            Some(Duration::from_millis(7))
        );
        let gone = ClientError::Transport("reset".into());
        assert_eq!(
            retry_wait(&gone, Op::Sign, 1, &o, later),
            Some(Duration::from_millis(40))
        );
        // Budget spent, one-attempt calls, and waits past the deadline are not retried.
        assert_eq!(retry_wait(&busy, Op::Sign, 2, &o, later), None);
        assert_eq!(retry_wait(&busy, Op::Sign, NO_RETRY, &o, later), None);
        let soon = Instant::now() + Duration::from_millis(3);
        assert_eq!(retry_wait(&busy, Op::Sign, 0, &o, soon), None);
        // Errors that cannot succeed later are final; an admin op is not resent after a
        // transport error (it may have been carried out), but is after a refusal to connect.
        let bad = status(Status::InvalidArgument, None);
        assert_eq!(retry_wait(&bad, Op::Sign, 0, &o, later), None);
        assert_eq!(retry_wait(&gone, Op::CreateKey, 0, &o, later), None);
        let refused = ClientError::Connect("refused".into());
        assert!(retry_wait(&refused, Op::CreateKey, 0, &o, later).is_some());
        assert_eq!(retry_wait(&busy, Op::Sign, 0, &opts(0), later), None);
    }
}
