//! Signing with every algorithm, and many concurrent requests across partitions.

use std::collections::HashMap;

use signerd::{KeyType, Scheme};

use crate::support::{self, verify::verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_type_and_scheme_signs_and_verifies() {
    let engine = support::engine();
    for key_type in KeyType::ALL {
        let name = support::unique(&format!("alg-{key_type}"));
        let created =
            tokio::task::block_in_place(|| engine.admin().create_key(&name, key_type, None))
                .unwrap_or_else(|e| panic!("create {key_type}: {e}"));
        assert_eq!(created.version, 1);
        let spki = engine.keys().public_key(&name, None).unwrap().spki_der;
        let schemes: Vec<Scheme> = Scheme::ALL
            .into_iter()
            .filter(|s| key_type.supports(*s))
            .collect();
        assert!(!schemes.is_empty());
        for scheme in schemes {
            for msg_len in [0usize, 1, 200] {
                let payload = support::random_payload(scheme, msg_len);
                let bytes = payload.bytes().clone();
                let signed = engine
                    .sign(support::request(&name, payload))
                    .await
                    .unwrap_or_else(|e| panic!("{key_type} {scheme}: {e}"));
                assert_eq!(signed.version, 1);
                verify(&spki, scheme, &bytes, &signed.signature).unwrap_or_else(|e| {
                    panic!("{key_type} {scheme}: signature does not verify: {e}")
                });
                // A signature must not verify for other data.
                let mut other = bytes.to_vec();
                if other.is_empty() {
                    other.push(1);
                } else {
                    other[0] ^= 1;
                }
                if scheme.digest_len().is_none() || other.len() == bytes.len() {
                    assert!(verify(&spki, scheme, &other, &signed.signature).is_err());
                }
                if scheme.digest_len().is_some() {
                    break; // digests have one length; vary only messages
                }
            }
        }
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_are_each_answered_with_their_own_signature() {
    let engine = support::engine();
    let name = support::unique("concurrent");
    tokio::task::block_in_place(|| engine.admin().create_key(&name, KeyType::EcP256, None))
        .unwrap();
    let spki = engine.keys().public_key(&name, None).unwrap().spki_der;
    let before = engine.health().stats();
    const N: usize = 2000;
    let mut tasks = Vec::with_capacity(N);
    for _ in 0..N {
        let engine = engine.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let payload = support::random_payload(Scheme::EcdsaSha256, 0);
            let digest = payload.bytes().clone();
            let signed = engine.sign(support::request(&name, payload)).await;
            (digest, signed)
        }));
    }
    let mut per_partition: HashMap<usize, usize> = HashMap::new();
    for t in tasks {
        let (digest, signed) = t.await.unwrap();
        let signed = signed.expect("every request is signed");
        verify(&spki, Scheme::EcdsaSha256, &digest, &signed.signature)
            .expect("each signature matches its own digest");
        *per_partition.entry(signed.partition).or_default() += 1;
    }
    assert_eq!(per_partition.values().sum::<usize>(), N);
    assert_eq!(
        per_partition.len(),
        2,
        "both partitions signed: {per_partition:?}"
    );
    let after = engine.health().stats();
    for (b, a) in before.iter().zip(&after) {
        assert!(a.signed > b.signed, "partition {} signed nothing", a.name);
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_everything_queued() {
    let engine = support::engine();
    let name = support::unique("drain");
    tokio::task::block_in_place(|| engine.admin().create_key(&name, KeyType::EcP256, None))
        .unwrap();
    let spki = engine.keys().public_key(&name, None).unwrap().spki_der;
    let mut pending = Vec::new();
    for _ in 0..1500 {
        let payload = support::random_payload(Scheme::EcdsaSha256, 0);
        let digest = payload.bytes().clone();
        match engine.submit(support::request(&name, payload)) {
            Ok(rx) => pending.push((digest, rx)),
            Err(e) => assert_eq!(e.status(), signerd::Status::Overloaded, "{e}"),
        }
    }
    assert!(!pending.is_empty());
    tokio::task::block_in_place(|| engine.shutdown());
    // After shutdown nothing new is accepted ...
    let late = engine.submit(support::request(
        &name,
        support::random_payload(Scheme::EcdsaSha256, 0),
    ));
    assert_eq!(late.unwrap_err().status(), signerd::Status::Unavailable);
    // ... and everything accepted before was answered: signed and valid.
    for (digest, rx) in pending {
        let signed = rx.await.expect("answered").expect("signed during drain");
        verify(&spki, Scheme::EcdsaSha256, &digest, &signed.signature).unwrap();
    }
}
