//! What the server needs to build its TLS config again with a new CRL (`[server] crl`, reloaded
//! on SIGHUP), and to re-check the certificates of connections already open against it.
//!
//! [`ServerTls`] holds what is read once at start (the client CA bundle, the server's
//! certificate and key); [`Crls`] is one parsed CRL file; [`ServerTls::build`] makes the rustls
//! config for new handshakes and the [`ClientCheck`] that applies the very same verifier to a
//! live connection's chain, so that a connection survives a reload exactly when a new handshake
//! with its certificate would be accepted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{CertificateError, RootCertStore, ServerConfig};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use signer_client::tls::{pem, provider, rustls_err};

use super::{TlsError, ALPN};

/// One CRL file (`[server] crl`), read and parsed: every `X509 CRL` in it.
#[derive(Clone, Debug)]
pub struct Crls {
    path: PathBuf,
    ders: Vec<CertificateRevocationListDer<'static>>,
    revoked: usize,
}

impl Crls {
    /// Reads and parses `path` (PEM). A file that is not PEM, holds no CRL, or holds a CRL that
    /// does not parse is an error; nothing else is checked here (the CRLs' signatures are checked
    /// against the client CAs when [`ServerTls::build`] makes the verifier).
    pub fn load(path: &Path) -> Result<Crls, TlsError> {
        let ders = pem::load_crls(path)?;
        let mut revoked = 0;
        for der in &ders {
            let (_, crl) =
                CertificateRevocationList::from_der(der.as_ref()).map_err(|e| TlsError::Pem {
                    path: path.to_owned(),
                    reason: format!("not a usable CRL: {e}"),
                })?;
            revoked += crl.iter_revoked_certificates().count();
        }
        Ok(Crls {
            path: path.to_owned(),
            ders,
            revoked,
        })
    }

    /// How many CRLs the file holds.
    pub fn count(&self) -> usize {
        self.ders.len()
    }

    /// How many serials they revoke, all together.
    pub fn revoked(&self) -> usize {
        self.revoked
    }
}

/// The server's TLS material read once at start: the client CA bundle and the server's
/// certificate and key. Server configs are built from it, at start and after each CRL reload.
#[derive(Clone)]
pub struct ServerTls {
    roots: Arc<RootCertStore>,
    client_ca: PathBuf,
    certs: Arc<dyn ResolvesServerCert>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_ca", &self.client_ca)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the client CA bundle, the server's PEM chain (end-entity first) and its PEM key,
    /// which must not be accessible by group or others.
    pub fn load(
        cert_chain: &Path,
        private_key: &Path,
        client_ca: &Path,
    ) -> Result<ServerTls, TlsError> {
        let roots = Arc::new(pem::load_roots(client_ca)?);
        let chain = pem::load_certs(cert_chain)?;
        let key = pem::load_private_key(private_key)?;
        // A throw-away config checks that the key matches the chain and yields the resolver that
        // every config built later shares (no file is read again).
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|e| {
                TlsError::Rustls(format!("client verifier ({}): {e}", client_ca.display()))
            })?;
        let config = ServerConfig::builder_with_provider(provider())
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
        Ok(ServerTls {
            roots,
            client_ca: client_ca.to_owned(),
            certs: config.cert_resolver,
        })
    }

    /// The server config for new handshakes (TLS 1.3 only, ALPN [`ALPN`], client certificates
    /// required, no 0-RTT, no half-RTT data, a session cache of its own so that no session made
    /// under an earlier CRL resumes under this one), and the check of live connections that
    /// applies the same verifier. With `crls`, end-entity certificates must have a known
    /// revocation status and a CRL past its `nextUpdate` refuses its CA's clients.
    pub fn build(&self, crls: Option<&Crls>) -> Result<(ServerConfig, ClientCheck), TlsError> {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&self.roots), provider());
        if let Some(crls) = crls {
            builder = builder
                .with_crls(crls.ders.iter().cloned())
                .only_check_end_entity_revocation()
                .enforce_revocation_expiration();
        }
        let verifier = builder.build().map_err(|e| {
            let crl = crls.map_or_else(String::new, |c| format!(", {}", c.path.display()));
            TlsError::Rustls(format!(
                "client verifier ({}{crl}): {e}",
                self.client_ca.display()
            ))
        })?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(rustls_err)?
            .with_client_cert_verifier(Arc::clone(&verifier))
            .with_cert_resolver(Arc::clone(&self.certs));
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.max_early_data_size = 0;
        config.send_half_rtt_data = false;
        Ok((config, ClientCheck { verifier }))
    }
}

/// Why a live connection's certificate is no longer accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Past its notAfter.
    Expired,
    /// On a CRL now in force.
    Revoked,
    /// Refused for another reason (its revocation status is unknown to the CRLs now in force,
    /// its CA's CRL is past its `nextUpdate`, ...): the verifier's message.
    Other(String),
}

/// The client certificate verifier of one server config, applied to a connection's chain again.
#[derive(Clone)]
pub struct ClientCheck {
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for ClientCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCheck")
    }
}

impl ClientCheck {
    /// Whether a new handshake presenting `chain` (end-entity first, as the client sent it)
    /// would be accepted now. One chain verification (no I/O); run it off the network runtime
    /// when checking many.
    pub fn check(&self, chain: &[CertificateDer<'_>]) -> Result<(), Refusal> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(Refusal::Other("no client certificate".into()));
        };
        match self
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => Err(Refusal::Expired),
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)) => {
                Err(Refusal::Revoked)
            }
            Err(e) => Err(Refusal::Other(e.to_string())),
        }
    }
}

/// The notAfter of `leaf` (DER). webpki, whose clock has whole seconds, refuses the certificate
/// from one second past it.
pub fn not_after(leaf: &[u8]) -> Result<SystemTime, TlsError> {
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| TlsError::Rustls(format!("client certificate unreadable: {e}")))?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(|| TlsError::Rustls("client certificate notAfter out of range".into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_live_chain_is_checked_like_a_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::tls::generate_dev_pki(dir.path()).unwrap();
        let tls = ServerTls::load(&pki.server_cert, &pki.server_key, &pki.ca_cert).unwrap();
        let (_, check) = tls.build(None).unwrap();
        let app = pem::load_certs(&pki.app_cert).unwrap();
        // The dev CA's own certificate is no client certificate (a CA, no clientAuth).
        let ca = pem::load_certs(&pki.ca_cert).unwrap();
        assert!(matches!(check.check(&ca), Err(Refusal::Other(_))));
        assert!(matches!(check.check(&[]), Err(Refusal::Other(_))));
        // What a CRL reload costs per distinct certificate (this build's optimization level).
        let n: u32 = 200;
        let started = std::time::Instant::now();
        for _ in 0..n {
            assert_eq!(check.check(&app), Ok(()));
        }
        eprintln!("one live check: {:?}", started.elapsed() / n);
        // The dev leaves are valid for ~2 years.
        let end = not_after(app[0].as_ref()).unwrap();
        let left = end.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(365 * 86400), "{left:?}");
        assert!(not_after(b"not DER").is_err());
    }
}
