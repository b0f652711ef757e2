//! A development PKI for `signerd init --dev`: a CA, a server certificate for localhost and two
//! client identities, as PEM files in one directory.
//!
//! **For development only.** The CA private key is kept next to the certificates (mode 0600) so
//! that running `init --dev` again can issue a certificate whose files were removed; anyone who
//! can read `ca.key` can mint client identities. Never trust this CA in production.
//!
//! Running again is safe: a certificate whose `.pem` and `.key` both exist is kept byte for byte;
//! a missing pair is issued by the existing CA. A half pair (only the `.pem` or only the `.key`),
//! or leaf files without a CA, is an error rather than a guess: remove them to regenerate.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use super::{pem, TlsError};

/// The files written by [`generate_dev_pki`] (all in one directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevPki {
    /// The dev CA certificate (`ca.pem`): the trust anchor for both servers and clients.
    pub ca_cert: PathBuf,
    /// The dev CA private key (`ca.key`, mode 0600). Development only.
    pub ca_key: PathBuf,
    /// The server certificate (`server.pem`) for DNS `localhost`, IP 127.0.0.1 and ::1.
    pub server_cert: PathBuf,
    /// The server private key (`server.key`, mode 0600).
    pub server_key: PathBuf,
    /// The admin client certificate (`client-admin.pem`): SAN URI `signerd://dev/admin`, CN `admin`.
    pub admin_cert: PathBuf,
    /// The admin client private key (`client-admin.key`, mode 0600).
    pub admin_key: PathBuf,
    /// The ordinary client certificate (`client-app.pem`): SAN URI `signerd://dev/app`, CN `app`.
    pub app_cert: PathBuf,
    /// The ordinary client private key (`client-app.key`, mode 0600).
    pub app_key: PathBuf,
}

/// In `dir` (created if missing, mode 0700), creates the dev CA, the server certificate and the
/// admin and app client identities, keeping every complete certificate/key pair that already
/// exists (see the module docs). ECDSA P-256 keys; the CA is valid ~10 years, leaves ~2 years.
/// Private keys are created with mode 0600, certificates 0644.
pub fn generate_dev_pki(dir: &Path) -> Result<DevPki, TlsError> {
    make_dir(dir)?;
    let pki = DevPki {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        admin_cert: dir.join("client-admin.pem"),
        admin_key: dir.join("client-admin.key"),
        app_cert: dir.join("client-app.pem"),
        app_key: dir.join("client-app.key"),
    };
    let leaves = [
        (&pki.server_cert, &pki.server_key, Leaf::Server),
        (&pki.admin_cert, &pki.admin_key, Leaf::client("admin")),
        (&pki.app_cert, &pki.app_key, Leaf::client("app")),
    ];

    let ca = if complete(&[&pki.ca_cert, &pki.ca_key])? {
        Ca::load(&pki.ca_cert, &pki.ca_key, DEV_CA_NAME)?
    } else if any_exists(&[&pki.ca_cert, &pki.ca_key])? {
        return Err(half_pair(&pki.ca_cert, &pki.ca_key));
    } else {
        for (cert, key, _) in &leaves {
            if any_exists(&[cert, key])? {
                return Err(TlsError::Generate(format!(
                    "{} exists but the CA that issued it ({}, {}) does not; remove the dev PKI \
                     files in {} to regenerate them",
                    cert.display(),
                    pki.ca_cert.display(),
                    pki.ca_key.display(),
                    dir.display()
                )));
            }
        }
        let ca = Ca::new(DEV_CA_NAME)?;
        write_pair(&pki.ca_cert, &ca.cert.pem(), &pki.ca_key, &ca.key_pem())?;
        ca
    };

    for (cert, key, leaf) in &leaves {
        if !complete(&[cert, key])? {
            if any_exists(&[cert, key])? {
                return Err(half_pair(cert, key));
            }
            let (cert_pem, key_pem) = ca.issue(leaf)?;
            write_pair(cert, &cert_pem, key, &key_pem)?;
        }
    }
    Ok(pki)
}

/// For tests of "a certificate from another CA is refused": in `dir`, a throwaway CA
/// (`other-ca.pem`; its key is not kept) and a client certificate it issued (`other-client.pem`,
/// `other-client.key`) that claims the same identity as the dev app client (SAN URI
/// `signerd://dev/app`, CN `app`). Existing complete files are kept. Returns (cert, key).
pub fn generate_foreign_client(dir: &Path) -> Result<(PathBuf, PathBuf), TlsError> {
    make_dir(dir)?;
    let ca_cert = dir.join("other-ca.pem");
    let cert = dir.join("other-client.pem");
    let key = dir.join("other-client.key");
    if !complete(&[&ca_cert, &cert, &key])? {
        if any_exists(&[&ca_cert, &cert, &key])? {
            return Err(TlsError::Generate(format!(
                "some of other-ca.pem, other-client.pem, other-client.key exist in {}; remove \
                 them to regenerate",
                dir.display()
            )));
        }
        let ca = Ca::new(FOREIGN_CA_NAME)?;
        let (cert_pem, key_pem) = ca.issue(&Leaf::client("app"))?;
        write_new(&ca_cert, ca.cert.pem().as_bytes(), CERT_MODE)?;
        write_pair(&cert, &cert_pem, &key, &key_pem)?;
    }
    Ok((cert, key))
}

const DEV_CA_NAME: &str = "signerd dev CA";
const FOREIGN_CA_NAME: &str = "signerd foreign test CA";
const ORGANIZATION: &str = "signerd development (not for production)";
const DAY: u64 = 24 * 60 * 60;
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * DAY);
const LEAF_VALIDITY: Duration = Duration::from_secs(2 * 365 * DAY);
/// Back-dating of `notBefore`, for peers whose clocks are a little behind.
const BACKDATE: Duration = Duration::from_secs(DAY);
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// What a leaf certificate is for.
enum Leaf {
    /// The server: DNS `localhost`, IP 127.0.0.1 and ::1, serverAuth.
    Server,
    /// A client: SAN URI `signerd://dev/NAME`, CN `NAME`, clientAuth.
    Client(&'static str),
}

impl Leaf {
    fn client(name: &'static str) -> Self {
        Leaf::Client(name)
    }

    fn params(&self) -> Result<CertificateParams, TlsError> {
        let (cn, sans, usage) = match self {
            Leaf::Server => (
                "localhost".to_owned(),
                vec![
                    SanType::DnsName(ia5("localhost")?),
                    SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                ],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            Leaf::Client(name) => (
                (*name).to_owned(),
                vec![SanType::URI(ia5(&format!("signerd://dev/{name}"))?)],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        };
        let mut params = base_params(&cn, LEAF_VALIDITY)?;
        params.subject_alt_names = sans;
        // An end-entity certificate, said so in a BasicConstraints extension whose cA field is
        // omitted: FALSE is its DEFAULT, and DER forbids encoding a default value, so rcgen's
        // `IsCa::ExplicitNoCa` (which writes cA=FALSE) is refused by strict parsers such as
        // pyca/cryptography. `IsCa::NoCa` keeps rcgen from writing the extension itself.
        params.is_ca = IsCa::NoCa;
        params
            .custom_extensions
            .push(end_entity_basic_constraints());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// A CA that can issue leaves: its key and a certificate whose subject and key identifier are
/// those of the CA certificate on disk.
struct Ca {
    key: KeyPair,
    cert: Certificate,
}

impl Ca {
    fn new(name: &str) -> Result<Self, TlsError> {
        let key = new_key()?;
        let cert = ca_params(name)?.self_signed(&key).map_err(gen_err)?;
        Ok(Ca { key, cert })
    }

    /// Loads the CA key and re-creates the issuer from it. rcgen (without its x509-parser
    /// feature) cannot read a certificate back, so the CA certificate is rebuilt from the same
    /// parameters and checked against the one on disk: same subject, same public key.
    fn load(cert_path: &Path, key_path: &Path, name: &str) -> Result<Self, TlsError> {
        let key_bytes = pem::read_private(key_path)?;
        let key_text = std::str::from_utf8(&key_bytes).map_err(|_| TlsError::Pem {
            path: key_path.to_owned(),
            reason: "not a PEM text file".into(),
        })?;
        let key = KeyPair::from_pem(key_text).map_err(|e| TlsError::Pem {
            path: key_path.to_owned(),
            reason: format!("not a usable CA key: {e}"),
        })?;
        let cert = ca_params(name)?.self_signed(&key).map_err(gen_err)?;

        let on_disk_der = pem::load_certs(cert_path)?
            .into_iter()
            .next()
            .ok_or_else(|| TlsError::NoCertificate(cert_path.to_owned()))?;
        let on_disk = parse_cert(&on_disk_der, cert_path)?;
        let rebuilt = parse_cert(cert.der(), cert_path)?;
        if on_disk.subject().as_raw() != rebuilt.subject().as_raw()
            || on_disk.public_key().raw != rebuilt.public_key().raw
        {
            return Err(TlsError::Generate(format!(
                "{} and {} are not the dev CA this tool made (subject or key differ); remove \
                 the dev PKI files to regenerate them",
                cert_path.display(),
                key_path.display()
            )));
        }
        if !on_disk.validity().is_valid() {
            return Err(TlsError::Generate(format!(
                "the dev CA {} is expired or not yet valid; remove the dev PKI files to \
                 regenerate them",
                cert_path.display()
            )));
        }
        Ok(Ca { key, cert })
    }

    fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    /// A fresh key and a certificate for it, as PEM (certificate, key).
    fn issue(&self, leaf: &Leaf) -> Result<(String, Zeroizing<String>), TlsError> {
        let key = new_key()?;
        let cert = leaf
            .params()?
            .signed_by(&key, &self.cert, &self.key)
            .map_err(gen_err)?;
        Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
    }
}

fn parse_cert<'a>(der: &'a [u8], path: &Path) -> Result<X509Certificate<'a>, TlsError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("invalid certificate: {e}"),
        })
}

/// BasicConstraints (2.5.29.19), critical, with an empty SEQUENCE: not a CA, DER-encoded.
fn end_entity_basic_constraints() -> CustomExtension {
    let mut ext = CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
    ext.set_criticality(true);
    ext
}

fn ca_params(name: &str) -> Result<CertificateParams, TlsError> {
    let mut params = base_params(name, CA_VALIDITY)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

fn base_params(cn: &str, validity: Duration) -> Result<CertificateParams, TlsError> {
    let now = SystemTime::now();
    let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
    let not_after = now
        .checked_add(validity)
        .ok_or_else(|| TlsError::Generate("certificate end date out of range".into()))?;
    let mut params = CertificateParams::default();
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    Ok(params)
}

fn new_key() -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)
}

fn ia5(s: &str) -> Result<rcgen::Ia5String, TlsError> {
    rcgen::Ia5String::try_from(s).map_err(|e| TlsError::Generate(format!("{s:?}: {e}")))
}

fn half_pair(cert: &Path, key: &Path) -> TlsError {
    TlsError::Generate(format!(
        "only one of {} and {} exists; remove it to regenerate the pair",
        cert.display(),
        key.display()
    ))
}

fn gen_err(e: rcgen::Error) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// Whether all of `paths` exist (`false` if none or only some do).
fn complete(paths: &[&Path]) -> Result<bool, TlsError> {
    for path in paths {
        if !exists(path)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn any_exists(paths: &[&Path]) -> Result<bool, TlsError> {
    for path in paths {
        if exists(path)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    // symlink_metadata: a dangling symlink counts as existing (and is never written through).
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(TlsError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}

fn make_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| write_err(dir, &e))
}

/// Writes a key (0600) then its certificate (0644); if the certificate cannot be written, the
/// key is removed again so that the next run does not find half a pair.
fn write_pair(cert: &Path, cert_pem: &str, key: &Path, key_pem: &str) -> Result<(), TlsError> {
    write_new(key, key_pem.as_bytes(), KEY_MODE)?;
    if let Err(e) = write_new(cert, cert_pem.as_bytes(), CERT_MODE) {
        let _ = std::fs::remove_file(key);
        return Err(e);
    }
    tracing::info!(cert = %cert.display(), key = %key.display(), "dev PKI: issued");
    Ok(())
}

/// Creates `path` (it must not exist, not even as a symlink) with `mode` from the first byte on:
/// a key file is never readable by others, not even briefly.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut file = opts.open(path).map_err(|e| write_err(path, &e))?;
    let written = (|| {
        #[cfg(unix)]
        {
            // The umask may have narrowed the mode (never widened it): set it exactly.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        #[cfg(not(unix))]
        let _ = mode;
        file.write_all(contents)?;
        file.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(path);
        write_err(path, &e)
    })
}

fn write_err(path: &Path, e: &std::io::Error) -> TlsError {
    TlsError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
