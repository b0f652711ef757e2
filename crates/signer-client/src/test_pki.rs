//! Test certificates, generated in memory with rcgen (a dev-dependency only).

use std::path::{Path, PathBuf};

/// A self-signed certificate for `localhost` (usable as CA and as client identity) and its key,
/// as PEM text, plus the key's DER.
pub(crate) struct Pki {
    pub cert_pem: String,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

pub(crate) fn pki() -> Pki {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("rcgen makes a certificate");
    Pki {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
        key_der: ck.key_pair.serialize_der(),
    }
}

/// Writes `pki` as `ca.pem`, `c.pem` and `c.key` (mode `key_mode`) into `dir`; their paths.
pub(crate) fn write(pki: &Pki, dir: &Path, key_mode: u32) -> (PathBuf, PathBuf, PathBuf) {
    let (ca, cert, key) = (dir.join("ca.pem"), dir.join("c.pem"), dir.join("c.key"));
    std::fs::write(&ca, &pki.cert_pem).expect("write ca");
    std::fs::write(&cert, &pki.cert_pem).expect("write cert");
    std::fs::write(&key, &pki.key_pem).expect("write key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(key_mode))
            .expect("chmod key");
    }
    #[cfg(not(unix))]
    let _ = key_mode;
    (ca, cert, key)
}
