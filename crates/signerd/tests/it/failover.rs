//! Failover between providers: a secondary provider serves a key only while no healthy primary
//! partition holds it, and only where it is the same key (same public key); keys the secondary
//! does not hold get UNAVAILABLE with retry-after. Maintenance takes a partition out by hand.

use std::time::{Duration, Instant};

use signerd::config::ProviderRole;
use signerd::{EngineError, KeyType, Scheme};

use crate::support::{self, verify::verify};

/// Signs `n` digests and returns the names of the partitions that signed them (all verified).
async fn sign_n(
    engine: &signerd::Engine,
    name: &signerd::KeyName,
    spki: &[u8],
    n: usize,
) -> Vec<String> {
    let names = engine.health().partition_names();
    let mut used = Vec::new();
    for _ in 0..n {
        let payload = support::random_payload(Scheme::EcdsaSha256, 0);
        let signed = engine
            .sign(support::request(name, payload.clone()))
            .await
            .unwrap();
        verify(
            spki,
            Scheme::EcdsaSha256,
            payload.bytes(),
            &signed.signature,
        )
        .unwrap();
        used.push(names[signed.partition].clone());
    }
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_serves_only_while_the_primary_is_out_and_only_the_same_key() {
    let engine = support::engine_with(|cfg| {
        let mut backup = cfg.providers["softhsm"].clone();
        backup.partitions.retain(|p| p.name == "p1");
        backup.role = ProviderRole::Secondary;
        cfg.providers
            .get_mut("softhsm")
            .unwrap()
            .partitions
            .retain(|p| p.name == "p0");
        cfg.providers.insert("backup".into(), backup);
    });
    let both = support::unique("failover");
    let info =
        tokio::task::block_in_place(|| engine.admin().create_key(&both, KeyType::EcP256, None))
            .unwrap();
    assert_eq!(info.partitions.len(), 2, "replicated to p0 and p1");
    let only_primary = support::unique("primary-only");
    tokio::task::block_in_place(|| {
        engine
            .admin()
            .create_key(&only_primary, KeyType::EcP256, Some(&["p0".to_owned()]))
    })
    .unwrap();
    let spki = engine.keys().public_key(&both, None).unwrap().spki_der;

    // Primary healthy: every signature comes from it, although the secondary is idle.
    let used = sign_n(&engine, &both, &spki, 40).await;
    assert!(used.iter().all(|p| p == "p0"), "{used:?}");

    // Primary out: the secondary serves the replicated key (same public key, verified) ...
    engine.health().set_maintenance("p0", true).unwrap();
    let used = sign_n(&engine, &both, &spki, 40).await;
    assert!(used.iter().all(|p| p == "p1"), "{used:?}");
    // ... and a key it does not hold is refused, never signed by another key.
    let payload = support::random_payload(Scheme::EcdsaSha256, 0);
    match engine.sign(support::request(&only_primary, payload)).await {
        Err(EngineError::Unavailable { retry_after, .. }) => assert!(!retry_after.is_zero()),
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }

    // Primary back (next health probe, about a second): it serves again, without a restart.
    engine.health().set_maintenance("p0", false).unwrap();
    let started = Instant::now();
    loop {
        let used = sign_n(&engine, &both, &spki, 1).await;
        if used[0] == "p0" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "primary did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let used = sign_n(&engine, &both, &spki, 20).await;
    assert!(used.iter().all(|p| p == "p0"), "{used:?}");
    tokio::task::block_in_place(|| engine.shutdown());
}
