//! TLS for the client side of the QUIC connection, and the PEM file loading that the server
//! shares: TLS 1.3 only, the *ring* provider (never the process default, which might be unset or
//! aws-lc), ALPN [`ALPN`], no 0-RTT (sign requests are not idempotent).
//!
//! The material comes from PEM files ([`client_config`]) or from PEM bytes in memory
//! ([`client_config_from_pem`]). Private key files must not be accessible by group or others on
//! unix; [`pem`] enforces it on the opened file. The private key's bytes that this crate holds
//! (in-memory PEM text and the DER decoded from it) are zeroized when dropped, and so is the
//! copy of the DER that rustls parses into its signing key.

pub mod pem;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use signer_proto::Status;

pub use signer_proto::protocol::ALPN;

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
    /// PEM data given in memory (not read from a file) holds no certificate or private key, is
    /// not valid PEM, or a certificate in it is not a valid trust anchor. The message never
    /// quotes the data.
    #[error("{what}: {reason}")]
    InvalidPem {
        /// Which data (e.g. "client private key (in-memory PEM)").
        what: &'static str,
        /// What is wrong with it.
        reason: String,
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

/// Client config: TLS 1.3 only, ALPN [`ALPN`], the server verified against the CA bundle at
/// `ca`, and the client certificate chain + key at `cert_chain`/`private_key` presented for
/// mutual TLS. Early data is disabled. The key file must not be accessible by group or others
/// (unix).
pub fn client_config(
    ca: &Path,
    cert_chain: &Path,
    private_key: &Path,
) -> Result<ClientConfig, TlsError> {
    let roots = pem::load_roots(ca)?;
    let chain = pem::load_certs(cert_chain)?;
    let key = pem::load_private_key_zeroizing(private_key)?;
    client_config_with(roots, chain, &key, || {
        format!("{} with {}", cert_chain.display(), private_key.display())
    })
}

/// [`client_config`] from PEM bytes in memory: the CA bundle `ca_pem`, the client certificate
/// chain `cert_chain_pem` and its private key `private_key_pem` (PKCS#8, SEC1 or PKCS#1; the
/// first key in the data is used). The DER decoded from the key is zeroized when dropped.
///
/// Errors are [`TlsError::InvalidPem`] for data that does not parse and [`TlsError::Rustls`]
/// for a key that does not match the certificate or that rustls cannot use.
pub fn client_config_from_pem(
    ca_pem: &[u8],
    cert_chain_pem: &[u8],
    private_key_pem: &[u8],
) -> Result<ClientConfig, TlsError> {
    let roots = pem::parse_roots(ca_pem, CA_PEM)?;
    let chain = pem::parse_certs(cert_chain_pem, CERT_PEM)?;
    let key = pem::parse_private_key(private_key_pem, KEY_PEM)?;
    client_config_with(roots, chain, &key, || format!("{CERT_PEM} with {KEY_PEM}"))
}

/// How in-memory PEM data is named in errors.
pub(crate) const CA_PEM: &str = "CA certificates (in-memory PEM)";
pub(crate) const CERT_PEM: &str = "client certificate chain (in-memory PEM)";
pub(crate) const KEY_PEM: &str = "client private key (in-memory PEM)";

/// The client config from parsed material, whatever its source; `pair` names the certificate
/// and key in an error. rustls gets a copy of the key's DER, which its ring key provider
/// zeroizes after parsing it; a key that does not match the certificate is refused.
pub(crate) fn client_config_with(
    roots: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'static>,
    pair: impl FnOnce() -> String,
) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(rustls_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key.clone_key())
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", pair())))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// The one crypto provider used for every config, client and server: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls error as a [`TlsError::Rustls`].
pub fn rustls_err(e: rustls::Error) -> TlsError {
    TlsError::Rustls(e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_pki;

    #[test]
    fn the_same_config_from_files_and_from_memory() {
        let pki = test_pki::pki();
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = test_pki::write(&pki, dir.path(), 0o600);
        let from_files = client_config(&ca, &cert, &key).unwrap();
        let (ca_pem, cert_pem, key_pem) = (
            pki.cert_pem.as_bytes(),
            pki.cert_pem.as_bytes(),
            pki.key_pem.as_bytes(),
        );
        let from_memory = client_config_from_pem(ca_pem, cert_pem, key_pem).unwrap();
        for c in [&from_files, &from_memory] {
            assert_eq!(c.alpn_protocols, vec![ALPN.to_vec()]);
            assert!(!c.enable_early_data);
            assert!(c.client_auth_cert_resolver.has_certs());
        }
    }

    #[test]
    fn in_memory_errors_name_the_data_and_a_mismatched_key_is_refused() {
        let (pki, other) = (test_pki::pki(), test_pki::pki());
        let (cert, key) = (pki.cert_pem.as_bytes(), pki.key_pem.as_bytes());
        let err = client_config_from_pem(b"", cert, key).unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidPem { what, .. } if what == CA_PEM),
            "{err}"
        );
        let err = client_config_from_pem(cert, key, key).unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidPem { what, .. } if what == CERT_PEM),
            "{err}"
        );
        let err = client_config_from_pem(cert, cert, cert).unwrap_err();
        assert!(
            matches!(err, TlsError::InvalidPem { what, .. } if what == KEY_PEM),
            "{err}"
        );
        let err = client_config_from_pem(cert, cert, other.key_pem.as_bytes()).unwrap_err();
        assert!(matches!(err, TlsError::Rustls(_)), "{err}");
        assert_eq!(err.status(), Status::Internal);
    }

    #[cfg(unix)]
    #[test]
    fn the_key_file_mode_is_still_checked() {
        let pki = test_pki::pki();
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = test_pki::write(&pki, dir.path(), 0o604);
        let err = client_config(&ca, &cert, &key).unwrap_err();
        assert!(
            matches!(err, TlsError::Permissions { mode: 0o604, .. }),
            "{err}"
        );
    }
}
