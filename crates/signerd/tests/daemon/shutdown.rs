//! SIGTERM with requests in flight: every request is answered, nothing is lost, exit code 0.

use bytes::Bytes;
use signer_client::{Client, ClientError, Status};
use signerd::{KeyType, Scheme};

use crate::daemon::{random_bytes, unique, Daemon};
use crate::verify::verify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_request_in_flight() {
    // A short grace period, so that part of the backlog must be answered UNAVAILABLE.
    let mut d = Daemon::start_with("sigterm", "shutdown_grace = \"300ms\"").await;
    let admin = d.admin().await;
    let name = unique("drain");
    // RSA-2048 is slow on SoftHSM2 (well under 2k/s), so 1,500 requests are still in flight
    // when the signal lands.
    admin
        .create_key(&name, KeyType::Rsa2048, vec![])
        .await
        .unwrap();
    let spki = admin.public_key(&name, None).await.unwrap().spki_der;
    let opts = d
        .builder("client-app.toml")
        .max_retries(0)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let app = Client::connect(opts).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..1500 {
        let (c, n) = (app.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let digest = Bytes::from(random_bytes(32));
            (
                digest.clone(),
                c.sign(&n, Scheme::RsaPssSha256, digest).await,
            )
        }));
    }
    // Let the first answers arrive, then stop the daemon.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let status = tokio::task::block_in_place(|| d.terminate());
    let (mut signed, mut unavailable) = (0, 0);
    for t in tasks {
        let (digest, result) = t.await.unwrap();
        match result {
            Ok(sig) => {
                verify(&spki, Scheme::RsaPssSha256, &digest, &sig.signature).unwrap();
                signed += 1;
            }
            Err(ClientError::Status {
                status: Status::Unavailable,
                retry_after,
                ..
            }) => {
                assert!(retry_after.is_some(), "retryable answers carry retry-after");
                unavailable += 1;
            }
            Err(e) => panic!("request lost or failed without a retryable answer: {e}"),
        }
    }
    assert_eq!(signed + unavailable, 1500);
    assert!(
        signed > 0,
        "some requests were signed before the drain ended"
    );
    assert!(
        unavailable > 0,
        "the rest was answered UNAVAILABLE after the grace period"
    );
    assert_eq!(status.code(), Some(0), "clean exit; log:\n{}", d.log());
    let log = d.log();
    assert!(log.contains("shutting down"), "{log}");
    eprintln!("SIGTERM drain: {signed} signed, {unavailable} answered UNAVAILABLE");
}
