//! TLS for the QUIC front end: mutual TLS 1.3 configs for server and client, the caller's
//! identity from its certificate, and a development PKI for `signerd init --dev`.
//!
//! Every config is built with rustls's *ring* provider (never the process default, which might be
//! unset or aws-lc), TLS 1.3 only, ALPN [`ALPN`], and without 0-RTT (sign requests are not
//! idempotent, DESIGN.md §6). The server requires a client certificate that chains to the
//! configured client CA bundle; expiry and the `clientAuth` extended key usage are enforced by
//! rustls's webpki verifier.
//!
//! Files are PEM. Private key files must not be accessible by group or others on unix (the same
//! rule as PIN files, see [`crate::secret::read_private_file`]).

mod dev_pki;
mod identity;
mod pem;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};

use crate::error::Status;

pub use dev_pki::{generate_dev_pki, generate_foreign_client, DevPki};
pub use identity::identity_of;

/// The ALPN protocol id of the signing protocol, version 1 (DESIGN.md §6).
///
/// Both [`server_config`] and [`client_config`] set it. It is the same value as the wire
/// protocol's constant; if both exist, one should re-export the other.
pub const ALPN: &[u8] = b"certnode-sign/1";

/// Why a TLS config could not be built, an identity could not be read from a certificate, or the
/// dev PKI could not be written.
///
/// Who failed: [`TlsError::Identity`] is the peer's fault (its certificate lacks the field that
/// names it; answered with [`Status::Unauthenticated`]). Every other variant is a local
/// configuration or file-system problem for the operator to fix, found at start-up or by
/// `init --dev`. No variant is helped by retrying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read (missing, not a regular file, no permission, ...).
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A file could not be written or a directory could not be created.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// A file holds no PEM `CERTIFICATE`.
    #[error("{0}: no PEM certificate found")]
    NoCertificate(PathBuf),
    /// A file holds no PEM private key (PKCS#8, SEC1 or PKCS#1).
    #[error("{0}: no PEM private key found")]
    NoPrivateKey(PathBuf),
    /// A file is not valid PEM, or a certificate in it is not a valid trust anchor.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A private key file is accessible by group or others (unix only).
    #[error(
        "private key file {path} has mode {mode:o}: it must not be accessible by group or others \
         (chmod 600 {path})"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// rustls refused the configuration (e.g. the private key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// The peer's certificate cannot be parsed or lacks the field that names the caller.
    #[error("client identity: {0}")]
    Identity(String),
    /// Generating keys or certificates failed, or existing dev PKI files are inconsistent.
    #[error("dev PKI: {0}")]
    Generate(String),
}

impl TlsError {
    /// The wire status for this error when it concerns a request's peer.
    ///
    /// [`TlsError::Identity`] → [`Status::Unauthenticated`]; everything else is the daemon's
    /// own configuration → [`Status::Internal`].
    pub fn status(&self) -> Status {
        match self {
            TlsError::Identity(_) => Status::Unauthenticated,
            _ => Status::Internal,
        }
    }
}

/// Which certificate field names the caller.
///
/// In config files: `"san-uri"`, `"san-dns"` or `"common-name"`. The mapping is explicit: a
/// certificate without the chosen field has no identity (no fallback to another field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySource {
    /// The first URI in the subjectAltName extension (e.g. `signerd://dev/app`).
    SanUri,
    /// The first DNS name in the subjectAltName extension.
    SanDns,
    /// The subject's commonName (exactly one must be present).
    CommonName,
}

/// Server config: TLS 1.3 only, ALPN [`ALPN`], client certificates required and verified against
/// the CA bundle at `client_ca` (expiry and `clientAuth` usage enforced), no 0-RTT
/// (`max_early_data_size = 0`) and no half-RTT data.
///
/// `cert_chain` is the server's PEM chain (end-entity first); `private_key` its PEM key, which
/// must not be accessible by group or others. Same as [`server_config_with_crl`] without CRLs.
pub fn server_config(
    cert_chain: &Path,
    private_key: &Path,
    client_ca: &Path,
) -> Result<ServerConfig, TlsError> {
    server_config_with_crl(cert_chain, private_key, client_ca, None)
}

/// Like [`server_config`], and with `crl` (a PEM file of one or more `X509 CRL`s) client
/// certificates are also checked for revocation: the end-entity certificate's status must be
/// known from the CRLs (a certificate whose issuer has no CRL in the file is refused), and an
/// expired CRL (past its `nextUpdate`) refuses the clients of its CA until it is replaced.
pub fn server_config_with_crl(
    cert_chain: &Path,
    private_key: &Path,
    client_ca: &Path,
    crl: Option<&Path>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let roots = pem::load_roots(client_ca)?;
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if let Some(crl) = crl {
        builder = builder
            .with_crls(pem::load_crls(crl)?)
            .only_check_end_entity_revocation()
            .enforce_revocation_expiration();
    }
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Rustls(format!("client verifier ({}): {e}", client_ca.display())))?;
    let chain = pem::load_certs(cert_chain)?;
    let key = pem::load_private_key(private_key)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            TlsError::Rustls(format!(
                "{} with {}: {e}",
                cert_chain.display(),
                private_key.display()
            ))
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_early_data_size = 0;
    config.send_half_rtt_data = false;
    tracing::debug!(
        cert = %cert_chain.display(),
        client_ca = %client_ca.display(),
        crl = ?crl.map(Path::display),
        "TLS server config built"
    );
    Ok(config)
}

/// Client config: TLS 1.3 only, ALPN [`ALPN`], the server verified against the CA bundle at
/// `ca`, and the client certificate chain + key at `cert_chain`/`private_key` presented for
/// mutual TLS. Early data is disabled.
pub fn client_config(
    ca: &Path,
    cert_chain: &Path,
    private_key: &Path,
) -> Result<ClientConfig, TlsError> {
    let roots = pem::load_roots(ca)?;
    let chain = pem::load_certs(cert_chain)?;
    let key = pem::load_private_key(private_key)?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            TlsError::Rustls(format!(
                "{} with {}: {e}",
                cert_chain.display(),
                private_key.display()
            ))
        })?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// The one crypto provider used for every config: ring.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn rustls_err(e: rustls::Error) -> TlsError {
    TlsError::Rustls(e.to_string())
}
