//! Client options: built with [`ClientOptions::builder`], or read from a TOML file
//! ([`ClientOptions::from_file`]; `signerd init --dev` writes `client.toml` for the admin identity
//! and `client-app.toml` for an ordinary one). Either way every value is checked once, in
//! [`ClientOptionsBuilder::build`], which also reads and parses the certificates and the key and
//! builds the TLS configuration: a [`ClientOptions`] is always usable.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;
use signer_proto::protocol::MAX_BATCH;
use zeroize::Zeroizing;

use super::ClientError;
use crate::tls::{self, pem, TlsError};

/// Where and how to connect: validated, with the TLS configuration built.
///
/// Made by [`ClientOptions::builder`] or [`ClientOptions::from_file`] (to change values read
/// from a file, start from [`ClientOptionsBuilder::from_file`]). Cheap to clone. Its `Debug`
/// output names the endpoints, the settings and where the certificates came from, never the
/// private key.
#[derive(Clone)]
pub struct ClientOptions {
    endpoints: Vec<SocketAddr>,
    server_name: String,
    tls: Arc<ClientConfig>,
    timeout: Duration,
    max_retries: u32,
    coalesce: usize,
    /// Where the CA bundle and the identity came from, for `Debug`.
    ca: Origin,
    cert: Origin,
    key: Origin,
}

impl ClientOptions {
    /// The default name the server certificate must carry: `localhost`.
    pub const DEFAULT_SERVER_NAME: &'static str = "localhost";
    /// The default per-call timeout: 5 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The longest timeout: the request deadline is a 32-bit count of milliseconds (~49.7 days).
    pub const MAX_TIMEOUT: Duration = Duration::from_millis(u32::MAX as u64);
    /// The default number of retries of a retryable failure per call: 2.
    pub const DEFAULT_MAX_RETRIES: u32 = 2;
    /// The default for [`ClientOptionsBuilder::coalesce`]: 16 concurrent sign calls at most
    /// share one request (chosen by measurement: tuning/RESULTS.md, "Coalescing by default").
    /// Each call is still authorized, counted and audited by the server as a `sign` of its own
    /// (`COALESCED_CALLS`); 1 sends every call as a request of its own.
    pub const DEFAULT_COALESCE: usize = 16;

    /// A builder with the defaults: no endpoint, server name [`Self::DEFAULT_SERVER_NAME`],
    /// timeout [`Self::DEFAULT_TIMEOUT`], [`Self::DEFAULT_MAX_RETRIES`] retries, coalescing
    /// [`Self::DEFAULT_COALESCE`], and no CA or identity (both are required).
    pub fn builder() -> ClientOptionsBuilder {
        ClientOptionsBuilder::default()
    }

    /// Reads a client TOML file (keys: `endpoints`, `server_name`, `ca`, `cert`, `key`,
    /// `timeout` (a duration with its unit, `"5s"`), `max_retries`, `coalesce`; docs/CONFIG.md)
    /// and builds it: the same checks
    /// as [`ClientOptionsBuilder::build`], with the file's name in the error. Relative paths
    /// are relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<ClientOptions, ClientError> {
        ClientOptionsBuilder::from_file(path)?
            .build()
            .map_err(|e| match e {
                ClientError::Config(m) => ClientError::Config(format!("{}: {m}", path.display())),
                e => e,
            })
    }

    /// Server addresses; the client uses one at a time and moves on when it fails. Never empty.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// The name the server certificate must carry.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The per-call timeout, also sent as the request deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Retries of retryable failures per call (within the timeout).
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    /// Most sign calls sent together as one SignBatch request (1: no coalescing).
    pub fn coalesce(&self) -> usize {
        self.coalesce
    }

    /// The TLS configuration a [`crate::Client`] uses (TLS 1.3, ALPN [`tls::ALPN`], the
    /// server checked against the CA bundle, the client certificate presented), with a session
    /// cache of its own: for tools that open QUIC connections without the client's protocol
    /// layer.
    pub fn tls_config(&self) -> ClientConfig {
        let mut config = ClientConfig::clone(&self.tls);
        config.resumption = rustls::client::Resumption::default();
        config
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("endpoints", &self.endpoints)
            .field("server_name", &self.server_name)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("coalesce", &self.coalesce)
            .finish_non_exhaustive()
    }
}

/// Where some TLS material came from (for `Debug`; never the material itself).
#[derive(Clone)]
enum Origin {
    File(PathBuf),
    Memory,
}

impl Origin {
    /// The file's path, or `memory` for data given in memory (in error messages).
    fn name(&self, memory: &str) -> String {
        match self {
            Origin::File(p) => p.display().to_string(),
            Origin::Memory => memory.to_owned(),
        }
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => fmt::Debug::fmt(p, f),
            Origin::Memory => f.write_str("<in-memory PEM>"),
        }
    }
}

/// Certificates (PEM) from a file or from memory.
#[derive(Clone)]
enum Certs {
    File(PathBuf),
    Pem(Vec<u8>),
}

/// A private key (PEM) from a file or from memory; the bytes are zeroized when dropped.
#[derive(Clone)]
enum Key {
    File(PathBuf),
    Pem(Zeroizing<Vec<u8>>),
}

/// Builds [`ClientOptions`]; every check happens in [`ClientOptionsBuilder::build`].
///
/// Required: at least one [`endpoint`](Self::endpoint), the CA bundle
/// ([`ca_file`](Self::ca_file) or [`ca_pem`](Self::ca_pem)) and the client identity
/// ([`identity_files`](Self::identity_files) or [`identity_pem`](Self::identity_pem)). For each
/// of the last two, the later call wins. Everything else has the default documented on
/// [`ClientOptions`]'s constants. A private key given in memory is zeroized when the builder is
/// dropped and never appears in its `Debug` output.
///
/// ```
/// use std::time::Duration;
/// use signer_client::{ClientError, ClientOptions};
///
/// // No endpoint: refused by build(), before any file is read.
/// let err = ClientOptions::builder()
///     .ca_file("tls/ca.pem")
///     .identity_files("tls/client-app.pem", "tls/client-app.key")
///     .timeout(Duration::from_secs(2))
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, ClientError::Config(_)));
/// assert!(err.to_string().contains("no endpoints"), "{err}");
/// ```
#[derive(Clone)]
pub struct ClientOptionsBuilder {
    endpoints: Vec<SocketAddr>,
    server_name: String,
    ca: Option<Certs>,
    identity: Option<(Certs, Key)>,
    timeout: Duration,
    max_retries: u32,
    coalesce: usize,
}

impl Default for ClientOptionsBuilder {
    fn default() -> Self {
        ClientOptionsBuilder {
            endpoints: Vec::new(),
            server_name: ClientOptions::DEFAULT_SERVER_NAME.into(),
            ca: None,
            identity: None,
            timeout: ClientOptions::DEFAULT_TIMEOUT,
            max_retries: ClientOptions::DEFAULT_MAX_RETRIES,
            coalesce: ClientOptions::DEFAULT_COALESCE,
        }
    }
}

impl fmt::Debug for ClientOptionsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let certs = |c: &Option<&Certs>| match c {
            Some(Certs::File(p)) => Some(Origin::File(p.clone())),
            Some(Certs::Pem(_)) => Some(Origin::Memory),
            None => None,
        };
        let key = self.identity.as_ref().map(|(_, k)| match k {
            Key::File(p) => Origin::File(p.clone()),
            Key::Pem(_) => Origin::Memory,
        });
        f.debug_struct("ClientOptionsBuilder")
            .field("endpoints", &self.endpoints)
            .field("server_name", &self.server_name)
            .field("ca", &certs(&self.ca.as_ref()))
            .field("cert", &certs(&self.identity.as_ref().map(|(c, _)| c)))
            .field("key", &key)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("coalesce", &self.coalesce)
            .finish()
    }
}

/// The client TOML file (docs/CONFIG.md, "Client files").
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    endpoints: Vec<SocketAddr>,
    server_name: Option<String>,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default, deserialize_with = "duration::deserialize")]
    timeout: Option<Duration>,
    max_retries: Option<u32>,
    coalesce: Option<usize>,
}

/// Durations in a client file: a string with its unit (`"5s"`, `"750ms"`, `"1m"`), parsed by
/// `humantime`, as in the daemon's config. A bare number is refused: its unit would be a guess.
mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    /// What a duration looks like, for error messages.
    pub(super) const EXAMPLE: &str = "a duration with its unit, e.g. \"5s\" or \"750ms\"";

    /// `#[serde(deserialize_with = "...")]` for an optional duration.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(DurationVisitor).map(Some)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXAMPLE)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v)
                .map_err(|e| E::custom(format!("{v:?} is not {EXAMPLE}: {e}")))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "{v} has no unit: write {EXAMPLE} (\"{v}ms\" for {v} milliseconds)"
            )))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "{v} has no unit: write {EXAMPLE} (\"{v}ms\" for {v} milliseconds)"
            )))
        }
    }

    /// Refuses `timeout_ms`, the key `timeout` replaced, naming the replacement with the value it
    /// stands for.
    pub(super) fn refuse_renamed(doc: &toml::Table) -> Result<(), String> {
        let Some(old) = doc.get("timeout_ms") else {
            return Ok(());
        };
        match old.as_integer().and_then(|n| u64::try_from(n).ok()) {
            Some(ms) => Err(format!(
                "`timeout_ms` is now `timeout = \"{}\"` (a duration with its unit)",
                humantime::format_duration(Duration::from_millis(ms))
            )),
            None => Err(format!("`timeout_ms` is now `timeout` ({EXAMPLE})")),
        }
    }
}

impl ClientOptionsBuilder {
    /// A builder holding a client TOML file's values (the keys of [`ClientOptions::from_file`];
    /// a key the file leaves out keeps its default), to change some before
    /// [`build`](Self::build). Only the TOML is read here; relative paths are resolved against
    /// the file's directory, and the files they name are read by `build`.
    pub fn from_file(path: &Path) -> Result<ClientOptionsBuilder, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", path.display())))?;
        let in_file =
            |e: &dyn fmt::Display| ClientError::Config(format!("{}: {e}", path.display()));
        // The key renamed when durations got their units is refused by name, with its
        // replacement, before serde would call it unknown.
        if let Ok(doc) = toml::from_str::<toml::Table>(&text) {
            duration::refuse_renamed(&doc).map_err(|e| in_file(&e))?;
        }
        let f: File = toml::from_str(&text).map_err(|e| in_file(&e))?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_else(|| PathBuf::from("."));
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let mut b = ClientOptions::builder()
            .endpoints(f.endpoints)
            .ca_file(abs(f.ca))
            .identity_files(abs(f.cert), abs(f.key));
        if let Some(name) = f.server_name {
            b = b.server_name(name);
        }
        if let Some(timeout) = f.timeout {
            b = b.timeout(timeout);
        }
        if let Some(n) = f.max_retries {
            b = b.max_retries(n);
        }
        if let Some(n) = f.coalesce {
            b = b.coalesce(n);
        }
        Ok(b)
    }

    /// Adds a server address. The client uses one endpoint at a time, in the order added, and
    /// moves on to the next when it cannot connect.
    pub fn endpoint(mut self, addr: SocketAddr) -> Self {
        self.endpoints.push(addr);
        self
    }

    /// Adds several server addresses ([`endpoint`](Self::endpoint) for each).
    pub fn endpoints(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.endpoints.extend(addrs);
        self
    }

    /// The name the server certificate must carry (a DNS name or an IP address). Default
    /// [`ClientOptions::DEFAULT_SERVER_NAME`].
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// The CA bundle (PEM file) the server certificate must chain to; every certificate in it
    /// is a trust anchor.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca = Some(Certs::File(path.into()));
        self
    }

    /// The CA bundle as PEM bytes in memory ([`ca_file`](Self::ca_file)).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Certs::Pem(pem.into()));
        self
    }

    /// The client identity from PEM files: the certificate chain (leaf first) and its private
    /// key (PKCS#8, SEC1 or PKCS#1). On unix the key file must not be accessible by group or
    /// others (mode 0600 or stricter); `build` refuses it otherwise.
    pub fn identity_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((Certs::File(cert.into()), Key::File(key.into())));
        self
    }

    /// The client identity as PEM bytes in memory: the certificate chain (leaf first) and its
    /// private key. The key's bytes are taken over (a `Vec` is moved, not copied) and zeroized
    /// when the builder is dropped, like the DER that `build` decodes from them; the options
    /// keep only the TLS configuration (rustls's signing key). They never appear in `Debug`
    /// output or in an error message.
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        let key = Zeroizing::new(key.into());
        self.identity = Some((Certs::Pem(cert.into()), Key::Pem(key)));
        self
    }

    /// The per-call timeout, also sent as the request deadline: more than zero, at most
    /// [`ClientOptions::MAX_TIMEOUT`]. Default [`ClientOptions::DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Retries of retryable failures per call, within its timeout
    /// ([`ClientError::is_retryable_for`]; the server's retry-after is honoured). Default
    /// [`ClientOptions::DEFAULT_MAX_RETRIES`]; 0 sends every call once.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Most sign calls sent together as one SignBatch request, 1 to
    /// [`MAX_BATCH`](signer_proto::protocol::MAX_BATCH). Default
    /// [`ClientOptions::DEFAULT_COALESCE`].
    ///
    /// 1 sends every call as a request of its own. Above 1, calls for the same key, version,
    /// scheme and [`SignOptions`](crate::SignOptions) that are made while an earlier one waits
    /// to be sent share a request (no timer: a call waits at most one yield to the runtime);
    /// each payload still gets its own signature and result. It cuts the per-request CPU of
    /// both sides under concurrent load. The identity needs the `sign_batch` op where a policy
    /// is configured.
    pub fn coalesce(mut self, max: usize) -> Self {
        self.coalesce = max;
        self
    }

    /// Checks every value, reads and parses the CA bundle, the certificate chain and the key
    /// (checking the key file's mode), and builds the TLS configuration. Any problem is a
    /// [`ClientError::Config`] that says what to fix.
    pub fn build(self) -> Result<ClientOptions, ClientError> {
        let config = |m: String| ClientError::Config(m);
        if self.endpoints.is_empty() {
            return Err(config(
                "no endpoints: add at least one server address (`endpoints` in a client file)"
                    .into(),
            ));
        }
        if ServerName::try_from(self.server_name.as_str()).is_err() {
            return Err(config(format!(
                "server_name {:?} is not a DNS name or an IP address",
                self.server_name
            )));
        }
        if self.timeout.is_zero() || self.timeout > ClientOptions::MAX_TIMEOUT {
            return Err(config(format!(
                "timeout must be more than 0 and at most {} ms, got {} ms",
                ClientOptions::MAX_TIMEOUT.as_millis(),
                self.timeout.as_millis()
            )));
        }
        if !(1..=MAX_BATCH).contains(&self.coalesce) {
            return Err(config(format!(
                "coalesce must be 1 to {MAX_BATCH} (1: no coalescing), got {}",
                self.coalesce
            )));
        }
        let ca = self.ca.ok_or_else(|| {
            config("no CA certificates: set them with ca_file or ca_pem (`ca` in a file)".into())
        })?;
        let (cert, key) = self.identity.ok_or_else(|| {
            config(
                "no client identity: set it with identity_files or identity_pem (`cert` and \
                 `key` in a file)"
                    .into(),
            )
        })?;
        let tls_err = |e: TlsError| config(e.to_string());
        let (roots, ca) = roots(&ca).map_err(tls_err)?;
        let (chain, cert) = chain(&cert).map_err(tls_err)?;
        let (private_key, key) = private_key(&key).map_err(tls_err)?;
        let tls = tls::client_config_with(roots, chain, &private_key, || {
            format!(
                "{} with {}",
                cert.name(tls::CERT_PEM),
                key.name(tls::KEY_PEM)
            )
        })
        .map_err(tls_err)?;
        let tls = Arc::new(tls);
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::clone(&tls))
            .map_err(|e| config(format!("TLS config unusable for QUIC: {e}")))?;
        Ok(ClientOptions {
            endpoints: self.endpoints,
            server_name: self.server_name,
            tls,
            timeout: self.timeout,
            max_retries: self.max_retries,
            coalesce: self.coalesce,
            ca,
            cert,
            key,
        })
    }
}

fn roots(certs: &Certs) -> Result<(RootCertStore, Origin), TlsError> {
    match certs {
        Certs::File(p) => Ok((pem::load_roots(p)?, Origin::File(p.clone()))),
        Certs::Pem(b) => Ok((pem::parse_roots(b, tls::CA_PEM)?, Origin::Memory)),
    }
}

fn chain(certs: &Certs) -> Result<(Vec<CertificateDer<'static>>, Origin), TlsError> {
    match certs {
        Certs::File(p) => Ok((pem::load_certs(p)?, Origin::File(p.clone()))),
        Certs::Pem(b) => Ok((pem::parse_certs(b, tls::CERT_PEM)?, Origin::Memory)),
    }
}

fn private_key(key: &Key) -> Result<(Zeroizing<PrivateKeyDer<'static>>, Origin), TlsError> {
    match key {
        Key::File(p) => Ok((pem::load_private_key_zeroizing(p)?, Origin::File(p.clone()))),
        Key::Pem(b) => Ok((pem::parse_private_key(b, tls::KEY_PEM)?, Origin::Memory)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
