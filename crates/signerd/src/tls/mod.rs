//! TLS for the QUIC front end: mutual TLS 1.3 configs for server and client, the caller's
//! identity from its certificate, and a development PKI for `signerd init --dev`.
//!
//! Every config is built with rustls's *ring* provider (never the process default, which might be
//! unset or aws-lc), TLS 1.3 only, ALPN [`ALPN`], and without 0-RTT (sign requests are not
//! idempotent, docs/PROTOCOL.md). The server requires a client certificate that chains to the
//! configured client CA bundle; expiry and the `clientAuth` extended key usage are enforced by
//! rustls's webpki verifier.
//!
//! Files are PEM. Private key files must not be accessible by group or others on unix (the same
//! rule as PIN files, see [`crate::secret::read_private_file`]).

mod dev_pki;
mod identity;
mod live;
#[cfg(test)]
mod tests;

use std::path::Path;

use rustls::ServerConfig;

use signer_client::tls::pem;
#[cfg(test)]
use signer_client::tls::provider;

pub use dev_pki::{generate_dev_pki, generate_foreign_client, DevPki};
pub use identity::{check_identity, check_identity_pattern, identity_of, RESERVED};
pub use live::{not_after, ClientCheck, Crls, Refusal, ServerTls};
pub use signer_client::tls::{client_config, TlsError, ALPN};

/// Which certificate field names the caller.
///
/// In config files: `"san-uri"`, `"san-dns"` or `"common-name"`. The mapping is explicit: a
/// certificate without the chosen field, or with more than one of it, has no identity (no
/// fallback to another field, no choice among several; see [`identity_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentitySource {
    /// The URI in the subjectAltName extension (e.g. `signerd://dev/app`); exactly one.
    SanUri,
    /// The DNS name in the subjectAltName extension, lowercased; exactly one.
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
    let crls = crl.map(Crls::load).transpose()?;
    let (config, _) = ServerTls::load(cert_chain, private_key, client_ca)?.build(crls.as_ref())?;
    tracing::debug!(
        cert = %cert_chain.display(),
        client_ca = %client_ca.display(),
        crl = ?crl.map(Path::display),
        "TLS server config built"
    );
    Ok(config)
}
