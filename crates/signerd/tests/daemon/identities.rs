//! Client identities on a real daemon (security finding 7): a certificate that names the caller
//! more than once, or with a policy wildcard, has no identity (the connection is closed with
//! `CLOSE_NO_IDENTITY` once the handshake completes, and the refusal is audited as an
//! authentication failure that gives the reason); and under two-admin approval an admin
//! granted `destroy_key` only through a pattern can neither request nor approve a destroy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use signer_client::Client;

use crate::daemon::Daemon;
use crate::hardening::TestCa;

/// How the server answers a connection with this certificate: the QUIC error that closed it
/// (the client may see the handshake complete before the server closes).
async fn close_of(d: &Daemon, cert: &Path, key: &Path) -> quinn::ConnectionError {
    let ep = d.raw_endpoint(cert, key);
    let closed = async {
        match ep.connect(d.addr(), "localhost").unwrap().await {
            Ok(conn) => conn.closed().await,
            Err(e) => e,
        }
    };
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .unwrap_or_else(|_| panic!("the connection with {} was not refused", cert.display()))
}

/// The audited authentication failures (`op` = `auth`) so far: their `detail`s.
fn auth_failures(d: &Daemon) -> Vec<String> {
    let text = std::fs::read_to_string(d.path("audit/audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["kind"] == "entry" && r["op"] == "auth")
        .map(|r| r["detail"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_the_caller_twice_or_by_a_wildcard_is_refused_and_audited() {
    let mut d = Daemon::start("identities").await;
    // Trust a CA of the test's own beside the dev CA (the dev clients keep working).
    d.terminate();
    let ca = TestCa::new();
    let tls = d.path("tls");
    let dev_ca = std::fs::read_to_string(tls.join("ca.pem")).unwrap();
    std::fs::write(
        tls.join("clients.pem"),
        format!("{dev_ca}{}", ca.cert.pem()),
    )
    .unwrap();
    let cfg = d.path("signerd.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("client_ca = \"tls/ca.pem\""), "{text}");
    let text = text.replace(
        "client_ca = \"tls/ca.pem\"",
        "client_ca = \"tls/clients.pem\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let one: (PathBuf, PathBuf) = ca.issue(&tls, "one-uri", 1, &["signerd://test/one"], false);
    // Names the app and the admin: the old code took the first, the app.
    let two = ca.issue(
        &tls,
        "two-uris",
        2,
        &["signerd://dev/app", "signerd://dev/admin"],
        false,
    );
    let starred = ca.issue(&tls, "starred", 3, &["signerd://dev/*"], false);
    d.spawn_serve().await;

    // The test CA's certificate with one SAN URI is accepted and served.
    let opts = d
        .builder("client-app.toml")
        .identity_files(one.0.clone(), one.1.clone())
        .max_retries(0)
        .build()
        .unwrap();
    let client = Client::connect(opts).await.unwrap();
    client.list_keys().await.unwrap();
    client.close();

    for (cert, key) in [&two, &starred] {
        match close_of(&d, cert, key).await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(
                    close.error_code,
                    quinn::VarInt::from_u32(signerd::server::CLOSE_NO_IDENTITY),
                    "{close:?}"
                );
                assert_eq!(&close.reason[..], b"no usable identity");
            }
            other => panic!(
                "{}: expected CLOSE_NO_IDENTITY, got {other}",
                cert.display()
            ),
        }
    }

    // Each refusal is an audited authentication failure that says why.
    let wants = [
        "the certificate has 2 SAN URIs; exactly one must name the caller",
        "the certificate's SAN URI \"signerd://dev/*\" contains '*', a policy wildcard",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let failures = auth_failures(&d);
        if wants
            .iter()
            .all(|want| failures.iter().any(|f| f.contains(want)))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expected audited authentication failures with {wants:?}, got {failures:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d.log().contains("refusing connection"), "{}", d.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_granted_destroy_only_through_a_pattern_can_neither_request_nor_approve() {
    // Every dev identity is an admin through one pattern; the admin is also listed by itself
    // for every op but destroy_key.
    let policy = "[[rule]]\nname = \"dev-admins\"\neffect = \"allow\"\n\
                  identities = [\"signerd://dev/*\"]\nkeys = [\"*\"]\nops = [\"*\"]\n\n\
                  [[rule]]\nname = \"admin-manages\"\neffect = \"allow\"\n\
                  identities = [\"signerd://dev/admin\"]\nkeys = [\"*\"]\n\
                  ops = [\"create_key\", \"rotate_key\", \"retire_key\"]\n\n\
                  [approval]\ndestroy_key = true\n";
    let d = Daemon::start_with_files(
        "approval-listed",
        "policy = \"policy.toml\"",
        &[("policy.toml", policy)],
    )
    .await;
    let admin = d.admin().await;
    let app = d.app().await;
    let key = crate::daemon::unique("listed");
    admin
        .create_key(&key, signerd::KeyType::EcP256, vec![])
        .await
        .unwrap();
    for (who, client) in [("signerd://dev/admin", &admin), ("signerd://dev/app", &app)] {
        match client.destroy_key(&key, 1).await {
            Err(signer_client::ClientError::Status {
                status, message, ..
            }) => {
                assert_eq!(status, signer_client::Status::PermissionDenied, "{message}");
                assert!(
                    message.contains(
                        "two-admin approval counts only admins the policy lists \
                                      individually"
                    ),
                    "{message}"
                );
            }
            other => panic!("{who}: destroy_key not refused: {other:?}"),
        }
    }
    // Nothing was destroyed, nothing recorded as pending: both denials are audited as such.
    let listing = admin.list_keys().await.unwrap();
    assert!(
        listing.iter().any(|k| k.name.as_str() == key),
        "{listing:?}"
    );
    let text = std::fs::read_to_string(d.path("audit/audit.log")).unwrap();
    let denials: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| {
            r["key"] == key.as_str() && r["op"].as_str().unwrap_or("").starts_with("destroy_key")
        })
        .collect();
    assert_eq!(denials.len(), 2, "{denials:#?}");
    for r in &denials {
        assert_eq!(r["op"], "destroy_key", "{r}");
        assert_eq!(r["status"], "permission_denied", "{r}");
    }
}
