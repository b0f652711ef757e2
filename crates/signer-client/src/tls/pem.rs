//! Reading PEM certificates, trust anchors and private keys from files, and (for
//! [`crate::ClientOptionsBuilder::ca_pem`] and [`crate::ClientOptionsBuilder::identity_pem`])
//! from PEM bytes in memory.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::RootCertStore;
use zeroize::Zeroizing;

use super::TlsError;

/// All `CERTIFICATE` blocks of a PEM file, in file order (other PEM items are skipped).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| read_err(path, &e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// All `X509 CRL` blocks of a PEM file, in file order (other PEM items are skipped). A file
/// without any CRL is an error: a configured but empty CRL file is a mistake, not "nothing is
/// revoked".
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| read_err(path, &e))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(path, e))?;
    if crls.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no PEM `X509 CRL` found".into(),
        });
    }
    Ok(crls)
}

/// A CA bundle: every certificate in the file becomes a trust anchor.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) of a PEM file that is not accessible by group
/// or others. The mode is checked on the opened file, so the file read is the file checked.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_private(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey(path.to_owned()),
        e => pem_err(path, e),
    })
}

/// [`load_private_key`], with the key's DER zeroized when dropped.
pub(crate) fn load_private_key_zeroizing(
    path: &Path,
) -> Result<Zeroizing<PrivateKeyDer<'static>>, TlsError> {
    load_private_key(path).map(Zeroizing::new)
}

/// All `CERTIFICATE` blocks of PEM bytes held in memory, in order (other PEM items are skipped);
/// `what` names the data in errors.
pub(crate) fn parse_certs(
    bytes: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| memory_err(what, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(memory_err(what, "no PEM certificate found".into()));
    }
    Ok(certs)
}

/// A CA bundle from PEM bytes held in memory: every certificate becomes a trust anchor.
pub(crate) fn parse_roots(bytes: &[u8], what: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(bytes, what)? {
        roots
            .add(cert)
            .map_err(|e| memory_err(what, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) of PEM bytes held in memory; its DER is
/// zeroized when dropped. Errors never quote the bytes.
pub(crate) fn parse_private_key(
    bytes: &[u8],
    what: &'static str,
) -> Result<Zeroizing<PrivateKeyDer<'static>>, TlsError> {
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => Ok(Zeroizing::new(key)),
        Err(pem::Error::NoItemsFound) => Err(memory_err(what, "no PEM private key found".into())),
        // Only the error's kind: its details can quote a line of the secret.
        Err(e) => Err(memory_err(what, format!("invalid PEM: {}", pem_kind(&e)))),
    }
}

/// Reads a secret file, refusing (on unix) one with any group or other permission bit.
/// The contents are zeroized when dropped.
pub fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let mut file = File::open(path).map_err(|e| read_err(path, &e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| read_err(path, &e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(TlsError::Permissions {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes)
        .map_err(|e| read_err(path, &e))?;
    Ok(bytes)
}

fn read_err(path: &Path, e: &std::io::Error) -> TlsError {
    TlsError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

/// What is wrong with PEM data, without quoting any of it.
fn pem_kind(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line",
        pem::Error::Base64Decode(_) => "a section is not valid base64",
        pem::Error::NoItemsFound => "no items found",
        pem::Error::SectionTooLarge => "a section is too large",
        _ => "unreadable",
    }
}

fn memory_err(what: &'static str, reason: String) -> TlsError {
    TlsError::InvalidPem { what, reason }
}

fn pem_err(path: &Path, e: pem::Error) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        reason: format!("invalid PEM: {e}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        assert!(matches!(load_certs(&missing), Err(TlsError::Read { .. })));
        assert!(matches!(
            load_private_key(&missing),
            Err(TlsError::Read { .. })
        ));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            load_certs(&empty),
            Err(TlsError::NoCertificate(_))
        ));
        assert!(matches!(
            load_roots(&empty),
            Err(TlsError::NoCertificate(_))
        ));
        assert!(matches!(
            load_private_key(&empty),
            Err(TlsError::NoPrivateKey(_))
        ));
    }
}
