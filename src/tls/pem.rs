//! Reading PEM certificates, trust anchors and private keys from files.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::RootCertStore;
use zeroize::Zeroizing;

use super::TlsError;

/// All `CERTIFICATE` blocks of a PEM file, in file order (other PEM items are skipped).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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
pub(crate) fn load_crls(
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
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
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
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
pub(crate) fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_private(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey(path.to_owned()),
        e => pem_err(path, e),
    })
}

/// Reads a secret file, refusing (on unix) one with any group or other permission bit.
/// The contents are zeroized when dropped.
pub(crate) fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
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

    #[cfg(unix)]
    #[test]
    fn group_or_world_accessible_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::tls::generate_dev_pki(dir.path()).unwrap();
        let set = |mode| {
            std::fs::set_permissions(&pki.server_key, std::fs::Permissions::from_mode(mode))
                .unwrap()
        };

        set(0o644);
        let err =
            crate::tls::server_config(&pki.server_cert, &pki.server_key, &pki.ca_cert).unwrap_err();
        assert!(
            matches!(err, TlsError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod 600"), "{err}");
        set(0o640);
        assert!(matches!(
            load_private_key(&pki.server_key),
            Err(TlsError::Permissions { mode: 0o640, .. })
        ));
        set(0o400);
        load_private_key(&pki.server_key).unwrap();
        set(0o600);
        crate::tls::server_config(&pki.server_cert, &pki.server_key, &pki.ca_cert).unwrap();

        // The client library's key (client.toml `key`) follows the same rule.
        std::fs::set_permissions(&pki.app_key, std::fs::Permissions::from_mode(0o604)).unwrap();
        let err = crate::tls::client_config(&pki.ca_cert, &pki.app_cert, &pki.app_key).unwrap_err();
        assert!(
            matches!(err, TlsError::Permissions { mode: 0o604, .. }),
            "{err}"
        );
        let shown = err.to_string();
        assert!(
            shown.contains(&pki.app_key.display().to_string()),
            "{shown}"
        );
        assert!(
            shown.contains("604") && shown.contains("chmod 600"),
            "{shown}"
        );
    }

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

    #[test]
    fn certificate_file_is_not_a_key_and_key_file_is_not_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::tls::generate_dev_pki(dir.path()).unwrap();
        assert!(matches!(
            load_certs(&pki.app_key),
            Err(TlsError::NoCertificate(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pki.app_cert, std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        assert!(matches!(
            load_private_key(&pki.app_cert),
            Err(TlsError::NoPrivateKey(_))
        ));
    }
}
