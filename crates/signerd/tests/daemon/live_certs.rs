//! Open connections lose their certificate's rights: a certificate that expires, or that a CRL
//! reloaded on SIGHUP revokes, has its open connections closed by the daemon within the
//! documented bound (docs/PROTOCOL.md §8), audited and counted; an invalid CRL changes nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use signer_proto::protocol::{self, Request, RequestFrame};
use signer_proto::Status;
use signerd::server::{CLOSE_CERTIFICATE_EXPIRED, CLOSE_CERTIFICATE_REVOKED};
use signerd::{KeyName, Scheme};

use crate::daemon::{ec_key, metric, random_bytes, Daemon};

/// The client CA of these tests: signs client certificates and CRLs.
struct Issuer {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
}

fn issuer() -> Issuer {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "live certificates test CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let cert = ca.self_signed(&key).unwrap();
    Issuer { key, cert }
}

/// A client certificate for `signerd://dev/NAME` valid until `not_after`, written as
/// `tls/NAME.pem` and `tls/NAME.key` (0600).
fn client_cert(
    d: &Daemon,
    ca: &Issuer,
    name: &str,
    serial: u64,
    not_after: SystemTime,
) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let uri = rcgen::Ia5String::try_from(format!("signerd://dev/{name}")).unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    leaf.serial_number = Some(rcgen::SerialNumber::from(serial));
    leaf.not_before = (SystemTime::now() - Duration::from_secs(3600)).into();
    leaf.not_after = not_after.into();
    let cert = leaf.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let paths = (
        d.path(&format!("tls/{name}.pem")),
        d.path(&format!("tls/{name}.key")),
    );
    std::fs::write(&paths.0, cert.pem()).unwrap();
    std::fs::write(&paths.1, key.serialize_pem()).unwrap();
    std::fs::set_permissions(&paths.1, std::fs::Permissions::from_mode(0o600)).unwrap();
    paths
}

/// The CA's CRL revoking `serials`, written to `tls/live.crl`.
fn write_crl(d: &Daemon, ca: &Issuer, number: u64, serials: &[u64]) {
    let revoked_certs = serials
        .iter()
        .map(|s| rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from(*s),
            revocation_time: (SystemTime::now() - Duration::from_secs(60)).into(),
            reason_code: Some(rcgen::RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: (SystemTime::now() - Duration::from_secs(3600)).into(),
        next_update: (SystemTime::now() + Duration::from_secs(86400)).into(),
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let pem = crl.signed_by(&ca.cert, &ca.key).unwrap().pem().unwrap();
    std::fs::write(d.path("tls/live.crl"), pem).unwrap();
}

/// A daemon whose client CA is `ca` (with its CRL `tls/live.crl`, revoking `revoked`, when
/// `crl`), and an EC key made before the switch (the admin identity stays with the dev CA).
async fn daemon(name: &str, ca: &Issuer, crl: Option<&[u64]>) -> (Daemon, String) {
    let mut d = Daemon::start(name).await;
    let key = ec_key(&d.admin().await, "live").await;
    d.terminate();
    std::fs::write(d.path("tls/live-ca.pem"), ca.cert.pem()).unwrap();
    // The app identity (which the harness checks the daemon with) moves to the test CA.
    let day = SystemTime::now() + Duration::from_secs(86400);
    let (cert, key_file) = client_cert(&d, ca, "app", 1, day);
    assert_eq!(cert, d.path("tls/app.pem"));
    std::fs::rename(&cert, d.path("tls/client-app.pem")).unwrap();
    std::fs::rename(&key_file, d.path("tls/client-app.key")).unwrap();
    let mut lines = "client_ca = \"tls/live-ca.pem\"".to_owned();
    if let Some(revoked) = crl {
        write_crl(&d, ca, 1, revoked);
        lines.push_str("\ncrl = \"tls/live.crl\"");
    }
    let cfg = d.path("signerd.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("client_ca = \"tls/ca.pem\"", &lines);
    std::fs::write(&cfg, text).unwrap();
    d.spawn_serve().await;
    (d, key)
}

/// A raw QUIC connection presenting `cert`, kept open by keep-alives every 500 ms.
struct Conn {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

async fn connect(d: &Daemon, (cert, key): &(PathBuf, PathBuf)) -> Conn {
    let tls = signerd::tls::client_config(&d.path("tls/ca.pem"), cert, key).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = endpoint
        .connect_with(config, d.addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    Conn {
        _endpoint: endpoint,
        conn,
    }
}

impl Conn {
    /// Signs 32 random bytes with `key` on this connection, and checks the answer is OK.
    async fn sign(&self, key: &str) {
        let frame = RequestFrame {
            flags: 0,
            deadline_ms: 5000,
            request: Request::Sign {
                key: KeyName::new(key).unwrap(),
                version: None,
                scheme: Scheme::EcdsaSha256,
                payload: Bytes::from(random_bytes(32)),
            },
        };
        let mut buf = BytesMut::new();
        protocol::encode_request(&frame, &mut buf).unwrap();
        let (mut send, mut recv) = self.conn.open_bi().await.unwrap();
        send.write_all(&buf).await.unwrap();
        send.finish().unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 16))
            .await
            .unwrap()
            .unwrap();
        let resp = protocol::decode_response(frame.request.op(), &answer).unwrap();
        assert_eq!(resp.status, Status::Ok, "{}", resp.message);
    }

    fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Waits (at most `limit`) for the daemon to close the connection; its application close
    /// code and reason.
    async fn closed_by_daemon(&self, limit: Duration) -> (u64, String) {
        let e = tokio::time::timeout(limit, self.conn.closed())
            .await
            .expect("the daemon did not close the connection");
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => (
                c.error_code.into_inner(),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            other => panic!("closed otherwise: {other}"),
        }
    }
}

/// Waits until the audit log has an authentication failure whose detail contains `needle`.
async fn audited(d: &Daemon, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(d.path("audit/audit.log")).unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains("\"op\":\"auth\"") && l.contains(needle))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no audited authentication failure with {needle:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn closed_total(d: &Daemon, reason: &str) -> f64 {
    metric(d, "signer_connections_closed_total", &[("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_when_its_certificate_expires() {
    let ca = issuer();
    let (d, key) = daemon("live-expiry", &ca, None).await;
    // notAfter in whole seconds, 6 s from now: time to connect and sign on a busy machine.
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(now + 6);
    let short = client_cert(&d, &ca, "short", 2, not_after);
    let other = client_cert(&d, &ca, "other", 3, not_after + Duration::from_secs(86400));
    let (conn, keeps) = (connect(&d, &short).await, connect(&d, &other).await);
    conn.sign(&key).await;
    keeps.sign(&key).await;
    assert!(
        SystemTime::now() < not_after,
        "too slow to test before expiry"
    );

    let (code, reason) = conn.closed_by_daemon(Duration::from_secs(20)).await;
    let at = SystemTime::now();
    assert_eq!(code, u64::from(CLOSE_CERTIFICATE_EXPIRED), "{reason}");
    assert_eq!(reason, "certificate expired");
    // Not before its certificate expired (the keep-alives kept it from idling out), and within
    // the bound: a new handshake is refused from notAfter + 1 s; the close follows at once (1 s
    // of slack for a loaded machine).
    assert!(at > not_after, "closed before notAfter");
    let late = at.duration_since(not_after).unwrap();
    assert!(
        late < Duration::from_secs(2),
        "closed {late:?} after notAfter"
    );

    audited(&d, "connection closed: certificate expired").await;
    assert_eq!(closed_total(&d, "certificate_expired"), 1.0);
    assert_eq!(closed_total(&d, "certificate_revoked"), 0.0);
    // The other client's connection is untouched; the expired certificate cannot come back.
    assert!(keeps.is_open());
    keeps.sign(&key).await;
    assert!(d.refuses(short.0, short.1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_reloaded_on_sighup_closes_the_revoked_connections_only() {
    let ca = issuer();
    let (d, key) = daemon("live-revoke", &ca, Some(&[])).await;
    let year = SystemTime::now() + Duration::from_secs(365 * 86400);
    let (doomed, kept) = (
        client_cert(&d, &ca, "doomed", 10, year),
        client_cert(&d, &ca, "kept", 11, year),
    );
    let (a, b) = (connect(&d, &doomed).await, connect(&d, &kept).await);
    a.sign(&key).await;
    b.sign(&key).await;

    write_crl(&d, &ca, 2, &[10]);
    d.hangup();
    let sent = Instant::now();
    let (code, reason) = a.closed_by_daemon(Duration::from_secs(10)).await;
    let took = sent.elapsed();
    assert_eq!(code, u64::from(CLOSE_CERTIFICATE_REVOKED), "{reason}");
    assert_eq!(reason, "certificate revoked");
    // The reload (a file read, one verification per connection) and the close: well under 2 s.
    assert!(
        took < Duration::from_secs(2),
        "closed {took:?} after SIGHUP"
    );
    d.wait_log("CRL reloaded", 1).await;
    let line = d
        .log()
        .lines()
        .find(|l| l.contains("CRL reloaded"))
        .unwrap()
        .to_owned();
    assert!(line.contains("crls=1"), "{line}");
    assert!(line.contains("revoked=1"), "{line}");
    assert!(line.contains("connections_closed=1"), "{line}");

    // The revoked certificate cannot connect again; the other client's connection stays up and
    // keeps signing, and new connections with good certificates are accepted.
    assert!(d.refuses(doomed.0.clone(), doomed.1.clone()).await);
    assert!(b.is_open());
    b.sign(&key).await;
    connect(&d, &kept).await.sign(&key).await;
    audited(
        &d,
        "identity signerd://dev/doomed: connection closed: certificate revoked",
    )
    .await;
    assert_eq!(closed_total(&d, "certificate_revoked"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_crl_on_sighup_is_rejected_and_changes_nothing() {
    let ca = issuer();
    let (d, key) = daemon("live-bad-crl", &ca, Some(&[])).await;
    let year = SystemTime::now() + Duration::from_secs(365 * 86400);
    let revoked = client_cert(&d, &ca, "revoked", 20, year);
    let good = client_cert(&d, &ca, "good", 21, year);
    // A valid reload first, revoking serial 20: the CRL then in force.
    write_crl(&d, &ca, 2, &[20]);
    d.hangup();
    d.wait_log("CRL reloaded", 1).await;
    assert!(d.refuses(revoked.0.clone(), revoked.1.clone()).await);
    let (a, b) = (connect(&d, &good).await, connect(&d, &good).await);
    a.sign(&key).await;

    // Not a CRL (PEM around bytes that are no DER), then no PEM at all: both rejected.
    for (n, garbage) in [
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        "not a CRL\n",
    ]
    .iter()
    .enumerate()
    {
        std::fs::write(d.path("tls/live.crl"), garbage).unwrap();
        d.hangup();
        d.wait_log("CRL reload rejected", n + 1).await;
    }
    assert!(d.log().contains("the previous CRL stays in force"));
    assert_eq!(d.log().matches("CRL reloaded").count(), 1);
    // Nobody was disconnected, and the previous CRL still applies to new handshakes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(a.is_open() && b.is_open());
    a.sign(&key).await;
    b.sign(&key).await;
    assert!(d.refuses(revoked.0, revoked.1).await);
    connect(&d, &good).await.sign(&key).await;
    assert_eq!(closed_total(&d, "certificate_revoked"), 0.0);
}
