//! Real mutual-TLS handshakes in memory: rustls client and server connections pumped into each
//! other through byte buffers, no sockets.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConnection};

use super::*;

/// How a handshake ended: the error each side saw, if any.
#[derive(Debug)]
struct Outcome {
    client: ClientConnection,
    server: ServerConnection,
    client_err: Option<rustls::Error>,
    server_err: Option<rustls::Error>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.client_err.is_none()
            && self.server_err.is_none()
            && !self.client.is_handshaking()
            && !self.server.is_handshaking()
    }
}

fn handshake(client: ClientConfig, server: ServerConfig, name: &str) -> Outcome {
    let name = ServerName::try_from(name).unwrap().to_owned();
    let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut server = ServerConnection::new(Arc::new(server)).unwrap();
    let (mut client_err, mut server_err) = (None, None);
    for _ in 0..16 {
        let to_server = flush(&mut client);
        if server_err.is_none() {
            server_err = feed(&mut server, &to_server).err();
        }
        let to_client = flush(&mut server);
        if client_err.is_none() {
            client_err = feed(&mut client, &to_client).err();
        }
        let done = !client.is_handshaking() && !server.is_handshaking();
        if (done || client_err.is_some() || server_err.is_some())
            && to_server.is_empty()
            && to_client.is_empty()
        {
            break;
        }
    }
    Outcome {
        client,
        server,
        client_err,
        server_err,
    }
}

fn flush<D>(conn: &mut ConnectionCommon<D>) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn feed<D>(conn: &mut ConnectionCommon<D>, mut bytes: &[u8]) -> Result<(), rustls::Error> {
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes).unwrap();
        conn.process_new_packets()?;
    }
    Ok(())
}

struct Fixture {
    _dir: tempfile::TempDir,
    pki: DevPki,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_dev_pki(dir.path()).unwrap();
        Fixture { _dir: dir, pki }
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    fn server(&self) -> ServerConfig {
        let p = &self.pki;
        server_config(&p.server_cert, &p.server_key, &p.ca_cert).unwrap()
    }

    fn client(&self, cert: &Path, key: &Path) -> ClientConfig {
        client_config(&self.pki.ca_cert, cert, key).unwrap()
    }

    fn app(&self) -> ClientConfig {
        self.client(&self.pki.app_cert, &self.pki.app_key)
    }
}

/// A client config that trusts the dev CA but presents no certificate.
fn anonymous_client(ca: &Path) -> ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in pem::load_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

#[test]
fn app_client_completes_mtls_and_is_identified() {
    let f = Fixture::new();
    for name in ["localhost", "127.0.0.1", "::1"] {
        let out = handshake(f.app(), f.server(), name);
        assert!(out.ok(), "{name}: {out:?}");
        for version in [out.client.protocol_version(), out.server.protocol_version()] {
            assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
        }
        assert_eq!(out.server.alpn_protocol(), Some(ALPN));
        assert_eq!(out.client.alpn_protocol(), Some(ALPN));
        let certs = out.server.peer_certificates().unwrap();
        assert_eq!(
            identity_of(&certs[0], IdentitySource::SanUri).unwrap(),
            "signerd://dev/app"
        );
        assert_eq!(
            identity_of(&certs[0], IdentitySource::CommonName).unwrap(),
            "app"
        );
    }

    let admin = f.client(&f.pki.admin_cert, &f.pki.admin_key);
    let out = handshake(admin, f.server(), "localhost");
    assert!(out.ok(), "{out:?}");
    let certs = out.server.peer_certificates().unwrap();
    assert_eq!(
        identity_of(&certs[0], IdentitySource::SanUri).unwrap(),
        "signerd://dev/admin"
    );
}

#[test]
fn client_from_another_ca_is_refused() {
    let f = Fixture::new();
    let (cert, key) = generate_foreign_client(f.dir()).unwrap();
    let out = handshake(f.client(&cert, &key), f.server(), "localhost");
    assert!(!out.ok());
    assert!(
        matches!(
            out.server_err,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{out:?}"
    );
    assert!(out.client_err.is_some(), "the client hears the alert");
}

#[test]
fn client_without_certificate_is_refused() {
    let f = Fixture::new();
    let out = handshake(anonymous_client(&f.pki.ca_cert), f.server(), "localhost");
    assert!(!out.ok());
    assert!(
        matches!(out.server_err, Some(rustls::Error::NoCertificatesPresented)),
        "{out:?}"
    );
}

#[test]
fn server_certificate_is_not_a_client_certificate() {
    let f = Fixture::new();
    let client = f.client(&f.pki.server_cert, &f.pki.server_key);
    let out = handshake(client, f.server(), "localhost");
    assert!(
        matches!(out.server_err, Some(rustls::Error::InvalidCertificate(_))),
        "clientAuth usage is required: {out:?}"
    );
}

#[test]
fn expired_client_certificate_is_refused() {
    let f = Fixture::new();
    let dir = f.dir();
    // A separate CA made here with rcgen, so the validity can be chosen.
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = dir.join("test-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let issue = |name: &str, expired: bool| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(name));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_key(&key_path, &key.serialize_pem());
        f.client(&cert_path, &key_path)
    };
    let server = || server_config(&f.pki.server_cert, &f.pki.server_key, &ca_path).unwrap();

    let out = handshake(issue("fresh", false), server(), "localhost");
    assert!(out.ok(), "control: {out:?}");
    let out = handshake(issue("expired", true), server(), "localhost");
    assert!(
        matches!(
            out.server_err,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            ))
        ),
        "{out:?}"
    );
}

#[test]
fn client_verifies_the_server() {
    let f = Fixture::new();
    let out = handshake(f.app(), f.server(), "example.com");
    assert!(
        matches!(out.client_err, Some(rustls::Error::InvalidCertificate(_))),
        "wrong name: {out:?}"
    );

    // A client that trusts only another CA refuses the dev server.
    generate_foreign_client(f.dir()).unwrap();
    let other_ca = f.dir().join("other-ca.pem");
    let client = client_config(&other_ca, &f.pki.app_cert, &f.pki.app_key).unwrap();
    let out = handshake(client, f.server(), "localhost");
    assert!(
        matches!(
            out.client_err,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{out:?}"
    );
}

#[test]
fn reissued_certificate_from_the_kept_ca_works() {
    let f = Fixture::new();
    std::fs::remove_file(&f.pki.app_cert).unwrap();
    std::fs::remove_file(&f.pki.app_key).unwrap();
    generate_dev_pki(f.dir()).unwrap();
    let out = handshake(f.app(), f.server(), "localhost");
    assert!(out.ok(), "{out:?}");
}

#[test]
fn configs_refuse_early_data_and_suit_quinn() {
    let f = Fixture::new();
    let server = f.server();
    assert_eq!(server.max_early_data_size, 0);
    assert!(!server.send_half_rtt_data);
    assert_eq!(server.alpn_protocols, vec![ALPN.to_vec()]);
    let client = f.app();
    assert!(!client.enable_early_data);
    assert_eq!(client.alpn_protocols, vec![ALPN.to_vec()]);

    quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap();
    quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap();
}

#[test]
fn key_that_does_not_match_the_certificate_is_refused() {
    let f = Fixture::new();
    let p = &f.pki;
    let err = server_config(&p.server_cert, &p.app_key, &p.ca_cert).unwrap_err();
    assert!(matches!(err, TlsError::Rustls(_)), "{err}");
    let err = client_config(&p.ca_cert, &p.app_cert, &p.admin_key).unwrap_err();
    assert!(matches!(err, TlsError::Rustls(_)), "{err}");
}

fn write_key(path: &Path, pem: &str) {
    std::fs::write(path, pem).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// A CA made here with rcgen, allowed to sign certificates and CRLs, and trusted by a server
/// built with [`TestCa::server`].
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    path: std::path::PathBuf,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        TestCa { cert, key, path }
    }

    /// A client certificate with SAN URI `signerd://test/{name}` and this serial.
    fn client(&self, f: &Fixture, name: &str, serial: u64) -> ClientConfig {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::Ia5String::try_from(format!("signerd://test/{name}")).unwrap(),
        )];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let dir = f.dir();
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(name));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        write_key(&key_path, &key.serialize_pem());
        f.client(&cert_path, &key_path)
    }

    /// A CRL revoking `serials`, issued in 2020 and valid until `next_update_year`.
    fn crl(&self, dir: &Path, serials: &[u64], next_update_year: i32) -> std::path::PathBuf {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2020, 1, 1),
            next_update: rcgen::date_time_ymd(next_update_year, 1, 1),
            crl_number: rcgen::SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from(*s),
                    revocation_time: rcgen::date_time_ymd(2020, 6, 1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key).unwrap();
        let path = dir.join(format!("crl-{next_update_year}.pem"));
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }

    fn server(&self, f: &Fixture, crl: Option<&Path>) -> ServerConfig {
        server_config_with_crl(&f.pki.server_cert, &f.pki.server_key, &self.path, crl).unwrap()
    }
}

#[test]
fn revoked_client_certificate_is_refused_with_a_crl() {
    let f = Fixture::new();
    let ca = TestCa::new(f.dir(), "test CA");
    let crl = ca.crl(f.dir(), &[666], 2099);

    // Without a CRL the certificate is good.
    let out = handshake(
        ca.client(&f, "revoked", 666),
        ca.server(&f, None),
        "localhost",
    );
    assert!(out.ok(), "control: {out:?}");
    // With it, the revoked one is refused and another one from the same CA is not.
    let out = handshake(
        ca.client(&f, "revoked", 666),
        ca.server(&f, Some(&crl)),
        "localhost",
    );
    assert!(
        matches!(
            out.server_err,
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked
            ))
        ),
        "{out:?}"
    );
    let out = handshake(
        ca.client(&f, "good", 7),
        ca.server(&f, Some(&crl)),
        "localhost",
    );
    assert!(out.ok(), "{out:?}");

    // An expired CRL (nextUpdate in the past) refuses everyone of its CA.
    let stale = ca.crl(f.dir(), &[666], 2021);
    let out = handshake(
        ca.client(&f, "good", 7),
        ca.server(&f, Some(&stale)),
        "localhost",
    );
    assert!(
        matches!(out.server_err, Some(rustls::Error::InvalidCertificate(_))),
        "{out:?}"
    );

    // A client of a CA the CRL file does not cover: its status is unknown, so it is refused.
    let crl_of_other_ca = {
        let dir = f.dir().join("other");
        std::fs::create_dir_all(&dir).unwrap();
        TestCa::new(&dir, "other test CA").crl(&dir, &[], 2099)
    };
    let out = handshake(
        ca.client(&f, "good", 7),
        ca.server(&f, Some(&crl_of_other_ca)),
        "localhost",
    );
    assert!(
        matches!(out.server_err, Some(rustls::Error::InvalidCertificate(_))),
        "{out:?}"
    );
}

#[test]
fn crl_file_problems_are_reported() {
    let f = Fixture::new();
    let p = &f.pki;
    let missing = f.dir().join("nope.crl");
    let err = server_config_with_crl(&p.server_cert, &p.server_key, &p.ca_cert, Some(&missing))
        .unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    // A certificate file is not a CRL file.
    let err = server_config_with_crl(&p.server_cert, &p.server_key, &p.ca_cert, Some(&p.ca_cert))
        .unwrap_err();
    assert!(err.to_string().contains("X509 CRL"), "{err}");
}

// PEM loading (signer_client::tls::pem) with the dev PKI's files.

#[cfg(unix)]
#[test]
fn group_or_world_accessible_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path()).unwrap();
    let set = |mode| {
        std::fs::set_permissions(&pki.server_key, std::fs::Permissions::from_mode(mode)).unwrap()
    };

    set(0o644);
    let err = server_config(&pki.server_cert, &pki.server_key, &pki.ca_cert).unwrap_err();
    assert!(
        matches!(err, TlsError::Permissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
    set(0o640);
    assert!(matches!(
        pem::load_private_key(&pki.server_key),
        Err(TlsError::Permissions { mode: 0o640, .. })
    ));
    set(0o400);
    pem::load_private_key(&pki.server_key).unwrap();
    set(0o600);
    server_config(&pki.server_cert, &pki.server_key, &pki.ca_cert).unwrap();

    // The client library's key (client.toml `key`) follows the same rule.
    std::fs::set_permissions(&pki.app_key, std::fs::Permissions::from_mode(0o604)).unwrap();
    let err = client_config(&pki.ca_cert, &pki.app_cert, &pki.app_key).unwrap_err();
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
fn certificate_file_is_not_a_key_and_key_file_is_not_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate_dev_pki(dir.path()).unwrap();
    assert!(matches!(
        pem::load_certs(&pki.app_key),
        Err(TlsError::NoCertificate(_))
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pki.app_cert, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    assert!(matches!(
        pem::load_private_key(&pki.app_cert),
        Err(TlsError::NoPrivateKey(_))
    ));
}
