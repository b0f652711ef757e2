//! Authentication and authorization at the front end.

use std::sync::Arc;

use signer_client::Status;
use signerd::{KeyType, Scheme};

use crate::daemon::{ec_key, random_bytes, unique, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_identity_cannot_administer_keys() {
    let d = Daemon::start("authz").await;
    let admin = d.admin().await;
    let app = d.app().await;
    let name = ec_key(&admin, "authz").await;
    let before = admin.list_keys().await.unwrap();

    let denied = [
        app.create_key(&unique("x"), KeyType::EcP256, vec![])
            .await
            .map(|_| ()),
        app.rotate_key(&name).await.map(|_| ()),
        app.retire_key(&name, 1).await.map(|_| ()),
        app.destroy_key(&name, 1).await,
    ];
    for r in denied {
        assert_eq!(r.unwrap_err().status(), Some(Status::PermissionDenied));
    }
    assert_eq!(admin.list_keys().await.unwrap(), before, "nothing changed");
    // The ordinary identity can still sign.
    app.sign(&name, Scheme::EcdsaSha256, random_bytes(32))
        .await
        .unwrap();
    // And the admin can rotate.
    assert_eq!(admin.rotate_key(&name).await.unwrap().version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_trusted_client_certificate_are_refused() {
    let d = Daemon::start("authn").await;
    // A client certificate from another CA.
    let (cert, key) = signerd::tls::generate_foreign_client(&d.path("foreign")).unwrap();
    assert!(d.refuses(cert, key).await, "foreign CA accepted");

    // No client certificate at all: a raw quinn client without client auth.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(d.path("tls/ca.pem")).unwrap() {
            r.add(c.unwrap()).unwrap();
        }
        r
    };
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![signer_proto::protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let addr = format!("127.0.0.1:{}", d.port).parse().unwrap();
    let outcome = async {
        let conn = ep.connect(addr, "localhost")?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&[0, 0, 0, 8, 1, 5, 0, 0, 0, 0, 0, 0])
            .await?;
        send.finish()?;
        let data = recv.read_to_end(1 << 20).await?;
        Ok::<_, Box<dyn std::error::Error>>(data)
    }
    .await;
    assert!(
        outcome.is_err(),
        "a client without a certificate got an answer: {outcome:?}"
    );
    // The server is still fine for a proper client.
    d.app().await.list_keys().await.unwrap();
}
