//! The signerd client library: QUIC with mutual TLS, one connection per endpoint shared by every
//! task, one stream per request, per-call timeouts sent as the request deadline, retries of
//! retryable answers within a budget, and reconnection after a connection loss. With
//! [`ClientOptionsBuilder::coalesce`] above 1, concurrent sign calls for the same key share one
//! SignBatch request (one stream) while each payload keeps its own signature and result.
//!
//! Connect with options from a client file (`signerd init --dev` writes them), sign, verify:
//!
//! ```no_run
//! # async fn demo() -> Result<(), signer_client::ClientError> {
//! use signer_client::{Client, ClientOptions, Scheme, SignOptions};
//!
//! let client = Client::connect(ClientOptions::from_file("dev/client-app.toml".as_ref())?).await?;
//! let digest = [0u8; 32]; // SHA-256 of your message
//! let sig = client.sign("payments", Scheme::EcdsaSha256, digest.to_vec()).await?;
//! println!("signed by version {}: {} bytes", sig.version, sig.signature.len());
//! let ok = client
//!     .verify("payments", Some(sig.version), Scheme::EcdsaSha256, digest.to_vec(), sig.signature)
//!     .await?;
//! assert!(ok);
//!
//! // Options: a given key version, a Merkle batch signature accepted; many payloads at once.
//! let any = client
//!     .sign_with("payments", Scheme::EcdsaSha256, digest.to_vec(), SignOptions::new().version(2))
//!     .await?;
//! assert!(any.plain().is_some(), "plain unless accept_batch is set");
//! let many = client
//!     .sign_many("payments", Scheme::EcdsaSha256, vec![digest.to_vec(); 8], SignOptions::new())
//!     .await?;
//! assert_eq!(many.len(), 8);
//! # Ok(()) }
//! ```
//!
//! Or build the options in code, with certificates and keys from files or from memory (PEM).
//! [`ClientOptionsBuilder::build`] checks everything, so a [`ClientOptions`] is always usable:
//!
//! ```
//! use std::time::Duration;
//! use signer_client::{ClientError, ClientOptions};
//!
//! # let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
//! # let (ca_pem, cert_pem) = (generated.cert.pem(), generated.cert.pem());
//! # let key_pem = generated.key_pair.serialize_pem();
//! // ca_pem, cert_pem, key_pem: PEM text, e.g. from a secret store.
//! let options = ClientOptions::builder()
//!     .endpoint("127.0.0.1:7443".parse().unwrap())
//!     .server_name("localhost")
//!     .ca_pem(ca_pem.as_bytes())
//!     .identity_pem(cert_pem.as_bytes(), key_pem) // the key is zeroized when dropped
//!     .timeout(Duration::from_secs(2))
//!     .build()?;
//! assert_eq!(options.max_retries(), ClientOptions::DEFAULT_MAX_RETRIES);
//! assert!(!format!("{options:?}").contains("PRIVATE KEY"));
//!
//! // What cannot work is refused with a message that says what to fix.
//! let err = ClientOptions::builder()
//!     .ca_pem(ca_pem.as_bytes())
//!     .identity_files("tls/client-app.pem", "tls/client-app.key")
//!     .build()
//!     .unwrap_err();
//! assert!(matches!(err, ClientError::Config(_)));
//! assert_eq!(
//!     err.to_string(),
//!     "config: no endpoints: add at least one server address (`endpoints` in a client file)"
//! );
//! # Ok::<(), ClientError>(())
//! ```

#![deny(missing_docs)]

mod coalesce;
#[cfg(test)]
mod fallback_tests;
mod options;
#[cfg(test)]
#[allow(clippy::expect_used)]
mod test_pki;
pub mod tls;
pub mod transport;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::time::Instant;

use coalesce::Lane;
pub use options::{ClientOptions, ClientOptionsBuilder};

use signer_proto::keys::KeyName;
pub use signer_proto::keys::{KeyType, Scheme, Version};
use signer_proto::protocol::{
    self, BatchItem, Request, RequestFrame, ResponseBody, ResponseFrame, ACCEPT_BATCH_SIGNATURE,
    COALESCED_CALLS,
};
pub use signer_proto::protocol::{
    DecodeError, DecodeErrorKind, KeyListing, Op, SignatureForm, VersionListing,
};
pub use signer_proto::{merkle, Status};

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
    /// The server broke the protocol: an answer that does not decode (`source` is the
    /// [`DecodeError`], with its kind, field and byte offset), or one that decodes but does not
    /// fit the request (`source` is `None`).
    #[error("protocol: {message}")]
    Protocol {
        /// What is wrong with the answer.
        message: String,
        /// Why the answer's bytes did not decode, if they did not.
        #[source]
        source: Option<DecodeError>,
    },
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
    /// A [`ClientError::Protocol`] for an answer that decodes but does not fit the request.
    pub(crate) fn protocol(message: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            message: message.into(),
            source: None,
        }
    }

    /// A [`ClientError::Protocol`] for an answer that does not decode.
    fn decode(e: DecodeError) -> ClientError {
        ClientError::Protocol {
            message: format!("cannot decode the answer: {e}"),
            source: Some(e),
        }
    }

    /// Why the server's answer did not decode, for a [`ClientError::Protocol`] that has one.
    pub fn decode_error(&self) -> Option<&DecodeError> {
        match self {
            ClientError::Protocol { source, .. } => source.as_ref(),
            _ => None,
        }
    }

    /// The server status, if the server answered.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether sending the same data-plane call (sign, verify, public key, list) again may
    /// succeed: [`ClientError::is_retryable_for`] for [`Op::Sign`].
    pub fn is_retryable(&self) -> bool {
        self.is_retryable_for(Op::Sign)
    }

    /// Whether sending the same `op` again may succeed. This is the one rule: the client's own
    /// retry loop applies it too (within its retry budget and the call's deadline).
    ///
    /// - A status answer: [`Status::is_retryable`] (OVERLOADED, UNAVAILABLE, DEADLINE_EXCEEDED).
    /// - No connection could be made: yes; nothing was sent.
    /// - The connection or stream broke mid-call, or the call timed out: yes for data-plane ops;
    ///   no for admin ops, which may have been carried out although no answer arrived.
    /// - Anything else (bad arguments, config, a protocol violation): no.
    pub fn is_retryable_for(&self, op: Op) -> bool {
        match self {
            ClientError::Status { status, .. } => status.is_retryable(),
            ClientError::Connect(_) => true,
            ClientError::Transport(_) | ClientError::Timeout => !op.is_admin(),
            _ => false,
        }
    }
}

/// A plain signature and the key version that made it: the result of [`Client::sign`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// The key version that signed.
    pub version: Version,
    /// The signature (ECDSA: ASN.1 DER; RSA: raw; Ed25519: 64 bytes).
    pub signature: Bytes,
}

/// A plain signature as a call that did not set `ACCEPT_BATCH_SIGNATURE` expects it: a batch
/// signature (form 2) in the answer is a protocol violation.
fn plain(version: Version, signature: SignatureForm) -> Result<Signature, ClientError> {
    match signature {
        SignatureForm::Plain(signature) => Ok(Signature { version, signature }),
        SignatureForm::Batch(_) => Err(batch_not_accepted()),
    }
}

fn batch_not_accepted() -> ClientError {
    ClientError::protocol(
        "the server sent a batch signature (form 2) without ACCEPT_BATCH_SIGNATURE",
    )
}

/// How [`Client::sign_with`] and [`Client::sign_many`] sign. The default is what
/// [`Client::sign`] does: the key's signing version, plain signatures only.
///
/// ```
/// use signer_client::SignOptions;
///
/// let opts = SignOptions::new().version(3).accept_batch(true);
/// assert_eq!((opts.version, opts.accept_batch), (Some(3), true));
/// assert_eq!(SignOptions::default(), SignOptions::new());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SignOptions {
    /// The key version to sign with (it must be active); `None`, the default: the key's signing
    /// version.
    pub version: Option<Version>,
    /// Whether a Merkle batch signature (form 2: one HSM signature over a tree root plus this
    /// payload's inclusion proof, docs/BATCH.md) is acceptable in place of a plain one. Sets the
    /// request flag `ACCEPT_BATCH_SIGNATURE`: for keys configured for batch signing the answer
    /// is then a batch signature (verify it with [`AnySignature::verify`]), for others it is
    /// plain. Default `false`: a batch signature in the answer is a
    /// [`ClientError::Protocol`] error.
    pub accept_batch: bool,
}

impl SignOptions {
    /// The defaults: the signing version, plain signatures only.
    pub fn new() -> SignOptions {
        SignOptions::default()
    }

    /// Signs with `version` (which must be active) instead of the signing version.
    pub fn version(mut self, version: Version) -> SignOptions {
        self.version = Some(version);
        self
    }

    /// Whether a Merkle batch signature is acceptable ([`SignOptions::accept_batch`]).
    pub fn accept_batch(mut self, accept: bool) -> SignOptions {
        self.accept_batch = accept;
        self
    }

    /// The request frame's flags.
    fn flags(&self) -> u16 {
        if self.accept_batch {
            ACCEPT_BATCH_SIGNATURE
        } else {
            0
        }
    }

    /// The signed result for `key`: a batch signature only if it was accepted.
    fn signed(
        &self,
        key: &KeyName,
        scheme: Scheme,
        version: Version,
        signature: SignatureForm,
    ) -> Result<AnySignature, ClientError> {
        if !self.accept_batch && matches!(signature, SignatureForm::Batch(_)) {
            return Err(batch_not_accepted());
        }
        Ok(AnySignature {
            key: key.clone(),
            version,
            scheme,
            signature,
        })
    }
}

/// A signature in either form, from [`Client::sign_with`] and [`Client::sign_many`]: plain, or
/// (only with [`SignOptions::accept_batch`]) a Merkle batch signature (one HSM signature over a
/// tree root plus this payload's inclusion proof, docs/BATCH.md).
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

    /// The plain signature (ECDSA: ASN.1 DER; RSA: raw; Ed25519: 64 bytes), or `None` for a
    /// batch signature.
    pub fn plain(&self) -> Option<&Bytes> {
        match &self.signature {
            SignatureForm::Plain(signature) => Some(signature),
            SignatureForm::Batch(_) => None,
        }
    }

    /// The batch signature, or `None` for a plain one.
    pub fn batch(&self) -> Option<&signer_proto::merkle::BatchSignature> {
        match &self.signature {
            SignatureForm::Batch(signature) => Some(signature),
            SignatureForm::Plain(_) => None,
        }
    }

    /// Checks it offline against the key's public key (SubjectPublicKeyInfo DER) and the payload
    /// that was signed (the digest; the message for Ed25519), whichever its form.
    pub fn verify(
        &self,
        spki_der: &[u8],
        payload: &[u8],
    ) -> Result<(), signer_proto::merkle::VerifyError> {
        signer_proto::merkle::verify(
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
    pub fn to_blob(&self) -> Option<signer_proto::merkle::BatchBlob> {
        match &self.signature {
            SignatureForm::Batch(sig) => Some(signer_proto::merkle::BatchBlob {
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
        _ => Err(ClientError::protocol("unknown batch item")),
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
        signer_proto::pem_encode("PUBLIC KEY", &self.spki_der)
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
    /// Set once a server refused `COALESCED_CALLS` (an older server): calls go one by one.
    no_coalescing: AtomicBool,
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
        if opts.endpoints().is_empty() {
            return Err(ClientError::Config("no endpoints".into()));
        }
        // A TLS config (and session cache) of this client's own, as when it was built here.
        let tls = opts.tls_config();
        let crypto = QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Config(format!("TLS config unusable for QUIC: {e}")))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(10)));
        transport.stream_receive_window(quinn::VarInt::from_u32(1 << 20));
        transport.receive_window(quinn::VarInt::from_u32(16 << 20));
        transport.send_window(16 << 20);
        transport.ack_frequency_config(Some(transport::ack_frequency()));
        config.transport_config(Arc::new(transport));
        let bind: SocketAddr = if opts.endpoints().iter().all(|e| e.is_ipv6()) {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(|e| ClientError::Config(format!("bind address: {e}")))?;
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| ClientError::Connect(format!("cannot open a UDP socket: {e}")))?;
        endpoint.set_default_client_config(config);
        let conns = opts.endpoints().iter().map(|_| Mutex::new(None)).collect();
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint,
                opts,
                conns,
                next: AtomicUsize::new(0),
                connect_lock: tokio::sync::Mutex::new(()),
                coalescer: coalesce::Coalescer::default(),
                no_coalescing: AtomicBool::new(false),
            }),
        })
    }

    /// Signs a digest (or, for Ed25519, a message) with the key's signing version; the answer
    /// is a plain signature. With [`ClientOptions::coalesce`] above 1, concurrent calls for
    /// the same key and scheme may share one SignBatch request.
    pub async fn sign(
        &self,
        key: &str,
        scheme: Scheme,
        payload: impl Into<Bytes>,
    ) -> Result<Signature, ClientError> {
        let lane = Lane {
            key: name(key)?,
            version: None,
            scheme,
            flags: 0,
        };
        let (version, signature) = self.sign_item(lane, payload.into()).await?;
        plain(version, signature)
    }

    /// Signs one payload like [`Client::sign`], as `options` say: a specific key version,
    /// and whether a Merkle batch signature is acceptable. Coalesced like `sign` (calls with
    /// equal options share requests).
    pub async fn sign_with(
        &self,
        key: &str,
        scheme: Scheme,
        payload: impl Into<Bytes>,
        options: SignOptions,
    ) -> Result<AnySignature, ClientError> {
        let key = name(key)?;
        let lane = Lane {
            key: key.clone(),
            version: options.version,
            scheme,
            flags: options.flags(),
        };
        let (version, signature) = self.sign_item(lane, payload.into()).await?;
        options.signed(&key, scheme, version, signature)
    }

    /// Signs many payloads in one SignBatch request (one stream; at most
    /// [`protocol::MAX_BATCH`]), as `options` say. One result per payload, in order: each
    /// payload is signed, or fails, on its own. The outer error is for the request as a whole
    /// (not sent, refused, or no answer).
    ///
    /// With [`SignOptions::accept_batch`], for a key configured for batch signing every payload
    /// becomes a leaf of a Merkle tree (shared with other callers' requests) and gets its own
    /// inclusion proof.
    pub async fn sign_many<P: Into<Bytes>>(
        &self,
        key: &str,
        scheme: Scheme,
        payloads: impl IntoIterator<Item = P>,
        options: SignOptions,
    ) -> Result<Vec<Result<AnySignature, ClientError>>, ClientError> {
        let key = name(key)?;
        let request = Request::SignBatch {
            key: key.clone(),
            version: options.version,
            scheme,
            payloads: payloads.into_iter().map(Into::into).collect(),
        };
        match self.call_flags(request, options.flags()).await? {
            ResponseBody::Batch(items) => Ok(batch_results(items, |version, signature| {
                options.signed(&key, scheme, version, signature)
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
        let deadline = Instant::now() + self.inner.opts.timeout();
        if self.inner.opts.coalesce() <= 1 || self.inner.no_coalescing.load(Ordering::Relaxed) {
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
            Err(e) => match retry_wait(&e, Op::Sign, 0, self.inner.opts.max_retries(), deadline) {
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
        let mut batches = coalesce::chunks(waiting, self.inner.opts.coalesce());
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
        let deadline = Instant::now() + self.inner.opts.timeout();
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
        // Kept for the fallback below (reference counts, no copies of the payloads).
        let resend = payloads.clone();
        let request = Request::SignBatch {
            key: lane.key.clone(),
            version: lane.version,
            scheme: lane.scheme,
            payloads,
        };
        // Independent calls, coalesced here: the server authorizes, counts and audits each as
        // a `sign` (docs/PROTOCOL.md §7).
        let flags = lane.flags | COALESCED_CALLS;
        let items = match self.call_until(request, flags, deadline, NO_RETRY).await {
            Ok(ResponseBody::Batch(items)) => Ok(items),
            Ok(other) => Err(unexpected(&other)),
            Err(e) if refuses_coalesced_calls(&e) => {
                // An older server: it signed nothing. Send these calls one by one, and every
                // later call too.
                self.inner.no_coalescing.store(true, Ordering::Relaxed);
                for (payload, tx) in resend.into_iter().zip(waiters) {
                    let (client, lane) = (self.clone(), lane.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(client.sign_alone(&lane, payload, deadline, 0).await);
                    });
                }
                return;
            }
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
        let deadline = Instant::now() + self.inner.opts.timeout();
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
                            .ok_or_else(|| ClientError::protocol("OK without a body"))
                    }
                    status => status_error(status, resp.retry_after_ms, resp.message),
                },
                Ok(Err(e)) => e,
            };
            let Some(wait) = retry_wait(&err, op, attempt, opts.max_retries(), deadline) else {
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
            Ok(bytes) => protocol::decode_response(op, &bytes).map_err(ClientError::decode),
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
            let addr = self.inner.opts.endpoints()[idx];
            let connecting = self
                .inner
                .endpoint
                .connect(addr, self.inner.opts.server_name())
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
    max_retries: u32,
    deadline: Instant,
) -> Option<Duration> {
    if !err.is_retryable_for(op) || attempt >= max_retries {
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

/// Whether `e` is an older server's refusal of the `COALESCED_CALLS` flag: the whole request
/// refused as malformed because of that flag bit (docs/PROTOCOL.md §7).
fn refuses_coalesced_calls(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Status { status: Status::InvalidArgument, message, .. }
            if message.contains(&format!("unknown flag bits 0x{COALESCED_CALLS:04x}"))
    )
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
    ClientError::protocol(format!("unexpected response body {body:?}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A real decode failure: a frame whose version byte is wrong.
    fn decode_error() -> DecodeError {
        let frame = [0, 0, 0, 2, 9, 0x01];
        protocol::decode_response(Op::Sign, &frame).unwrap_err()
    }

    fn batch_signature() -> signer_proto::merkle::BatchSignature {
        signer_proto::merkle::BatchSignature {
            root_signature: Bytes::from_static(b"root"),
            leaf_index: 0,
            tree_size: 1,
            blinding: [7; 32],
            path: Vec::new(),
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
        let o = 2;
        let later = Instant::now() + Duration::from_secs(5);
        let busy = status(Status::Overloaded, Some(Duration::from_millis(7)));
        // The server's retry-after is honoured; without one the wait grows per attempt.
        assert_eq!(
            retry_wait(&busy, Op::Sign, 0, o, later),
            Some(Duration::from_millis(7))
        );
        let gone = ClientError::Transport("reset".into());
        assert_eq!(
            retry_wait(&gone, Op::Sign, 1, o, later),
            Some(Duration::from_millis(40))
        );
        // Budget spent, one-attempt calls, and waits past the deadline are not retried.
        assert_eq!(retry_wait(&busy, Op::Sign, 2, o, later), None);
        assert_eq!(retry_wait(&busy, Op::Sign, NO_RETRY, o, later), None);
        let soon = Instant::now() + Duration::from_millis(3);
        assert_eq!(retry_wait(&busy, Op::Sign, 0, o, soon), None);
        // Errors that cannot succeed later are final; an admin op is not resent after a
        // transport error (it may have been carried out), but is after a refusal to connect.
        let bad = status(Status::InvalidArgument, None);
        assert_eq!(retry_wait(&bad, Op::Sign, 0, o, later), None);
        assert_eq!(retry_wait(&gone, Op::CreateKey, 0, o, later), None);
        let refused = ClientError::Connect("refused".into());
        assert!(retry_wait(&refused, Op::CreateKey, 0, o, later).is_some());
        assert_eq!(retry_wait(&busy, Op::Sign, 0, 0, later), None);
    }

    /// `is_retryable_for` and the retry loop are one rule: with budget and time left, the loop
    /// retries exactly what `is_retryable_for` calls retryable, for every op.
    #[tokio::test]
    async fn the_retry_loop_and_is_retryable_agree() {
        let o = 2;
        let later = Instant::now() + Duration::from_secs(60);
        let mut errors: Vec<ClientError> = Status::ALL
            .into_iter()
            .filter(|s| *s != Status::Ok)
            .map(|s| status(s, None))
            .collect();
        errors.extend([
            ClientError::Connect("refused".into()),
            ClientError::Transport("reset".into()),
            ClientError::Timeout,
            ClientError::protocol("garbage"),
            ClientError::decode(decode_error()),
            ClientError::Config("bad".into()),
            ClientError::InvalidArgument("bad".into()),
        ]);
        for err in &errors {
            for op in Op::ALL {
                assert_eq!(
                    retry_wait(err, op, 0, o, later).is_some(),
                    err.is_retryable_for(op),
                    "{err} for {op}"
                );
            }
            assert_eq!(err.is_retryable(), err.is_retryable_for(Op::Sign));
        }
        // DEADLINE_EXCEEDED is retryable, but never past the call's own deadline.
        let late = status(Status::DeadlineExceeded, None);
        assert!(late.is_retryable());
        let soon = Instant::now() + Duration::from_millis(5);
        assert_eq!(retry_wait(&late, Op::Sign, 0, o, soon), None);
    }

    #[test]
    fn a_decode_failure_keeps_its_decode_error_as_the_source() {
        let decode = decode_error();
        let e = ClientError::decode(decode);
        assert!(matches!(e, ClientError::Protocol { source: Some(d), .. } if d == decode));
        assert_eq!(e.decode_error(), Some(&decode));
        assert_eq!(
            e.to_string(),
            format!("protocol: cannot decode the answer: {decode}")
        );
        let source = std::error::Error::source(&e).expect("a source");
        let source = source.downcast_ref::<DecodeError>().expect("a DecodeError");
        assert_eq!(source.kind(), DecodeErrorKind::UnsupportedVersion(9));
        assert_eq!((source.field(), source.offset()), ("version", 4));
        // Not retryable, for any op.
        assert!(Op::ALL.into_iter().all(|op| !e.is_retryable_for(op)));
        // A protocol violation that decoded has no source.
        let e = ClientError::protocol("unexpected");
        assert!(std::error::Error::source(&e).is_none() && e.decode_error().is_none());
        assert_eq!(e.to_string(), "protocol: unexpected");
    }

    #[test]
    fn sign_options_default_to_a_plain_signature_by_the_signing_version() {
        let o = SignOptions::default();
        assert_eq!((o.version, o.accept_batch, o.flags()), (None, false, 0));
        assert_eq!(SignOptions::new(), o);
        let o = SignOptions::new().version(4).accept_batch(true);
        assert_eq!((o.version, o.accept_batch), (Some(4), true));
        assert_eq!(o.flags(), ACCEPT_BATCH_SIGNATURE);
        assert_eq!(o.accept_batch(false).flags(), 0);
        // The flag is part of the coalescing lane: options that differ never share a request.
        let mut fields = SignOptions::new();
        fields.version = Some(2);
        assert_eq!(fields, SignOptions::new().version(2));
    }

    #[test]
    fn a_batch_signature_is_returned_only_when_accepted() {
        let key = KeyName::new("k").unwrap();
        let sig = Bytes::from_static(b"sig");
        let plain = SignOptions::new()
            .signed(
                &key,
                Scheme::EcdsaSha256,
                3,
                SignatureForm::Plain(sig.clone()),
            )
            .unwrap();
        assert_eq!(plain.plain(), Some(&sig));
        assert!(!plain.is_batch() && plain.batch().is_none() && plain.to_blob().is_none());
        assert_eq!((plain.version, plain.scheme), (3, Scheme::EcdsaSha256));

        let batch = SignatureForm::Batch(batch_signature());
        let e = SignOptions::new()
            .signed(&key, Scheme::EcdsaSha256, 3, batch.clone())
            .unwrap_err();
        assert!(
            matches!(e, ClientError::Protocol { source: None, .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("without ACCEPT_BATCH_SIGNATURE"),
            "{e}"
        );
        let accepted = SignOptions::new()
            .accept_batch(true)
            .signed(&key, Scheme::EcdsaSha256, 3, batch)
            .unwrap();
        assert!(accepted.is_batch() && accepted.plain().is_none());
        assert_eq!(accepted.batch(), Some(&batch_signature()));
        assert!(accepted.to_blob().is_some());

        // `sign` (no options) refuses a batch signature the same way.
        let e = super::plain(3, SignatureForm::Batch(batch_signature())).unwrap_err();
        assert!(
            e.to_string().contains("without ACCEPT_BATCH_SIGNATURE"),
            "{e}"
        );
    }

    #[test]
    fn batch_answers_keep_their_order_and_failures_per_item() {
        let key = KeyName::new("k").unwrap();
        let opts = SignOptions::new();
        let items = vec![
            BatchItem::Signed {
                version: 1,
                signature: SignatureForm::Plain(Bytes::from_static(b"a")),
            },
            BatchItem::Failed {
                status: Status::Overloaded,
                retry_after_ms: 9,
                message: "busy".into(),
            },
            BatchItem::Signed {
                version: 1,
                signature: SignatureForm::Batch(batch_signature()),
            },
        ];
        let results = batch_results(items, |v, s| opts.signed(&key, Scheme::EcdsaSha256, v, s));
        assert_eq!(results.len(), 3);
        assert_eq!(
            results[0].as_ref().unwrap().plain(),
            Some(&Bytes::from_static(b"a"))
        );
        match &results[1] {
            Err(ClientError::Status {
                status: Status::Overloaded,
                retry_after: Some(d),
                ..
            }) => assert_eq!(*d, Duration::from_millis(9)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(&results[2], Err(ClientError::Protocol { .. })));
    }

    #[test]
    fn a_client_is_made_from_built_options() {
        let pki = crate::test_pki::pki();
        let opts = ClientOptions::builder()
            .endpoint("127.0.0.1:9".parse().unwrap())
            .ca_pem(pki.cert_pem.as_bytes())
            .identity_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(async { Client::new(opts) }).unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        runtime.block_on(async { client.close() });
    }
}
