//! The daemon end to end on a second, independent PKCS#11 implementation: kryoptic (issue 21).
//! Its tokens are made by `init --dev --kryoptic` through the PKCS#11 API; its `CK_TOKEN_INFO`
//! carries an all-zero `utcTime` (which cryptoki cannot parse) and no serial, and it has no
//! `CKA_TRUSTED` (so no KEK: keys stay in the partition they are made in). Every key type it
//! supports (no Ed25519 in the build for Debian 12's OpenSSL) is created, signs with every
//! scheme (verified by the independent verifier), rotates, retires and is destroyed; a restart
//! finds the same keys; the audit log verifies.

use signerd::{KeyState, KeyType, Scheme};

use crate::daemon::{audit_verify, random_bytes, unique, Daemon};
use crate::verify::verify;

const TYPES: [KeyType; 3] = [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_on_kryoptic() {
    let mut d = Daemon::start_kryoptic("kryoptic").await;
    let admin = d.admin().await;
    let app = d.app().await;
    let mut names = Vec::new();
    for key_type in TYPES {
        let name = unique(&format!("kry-{key_type}"));
        let v = admin.create_key(&name, key_type, vec![]).await.unwrap();
        assert_eq!(
            (v.version, v.partitions.len()),
            (1, 1),
            "{v:?}: no trusted wrapping, one partition"
        );
        let pk = app.public_key(&name, None).await.unwrap();
        for scheme in Scheme::ALL.into_iter().filter(|s| key_type.supports(*s)) {
            let payload = random_bytes(scheme.digest_len().unwrap_or(100));
            let sig = app.sign(&name, scheme, payload.clone()).await.unwrap();
            verify(&pk.spki_der, scheme, &payload, &sig.signature)
                .unwrap_or_else(|e| panic!("{key_type} {scheme}: {e}"));
        }
        names.push((name, key_type));
    }
    // Rotate, retire, destroy.
    let (p256, _) = &names[0];
    assert_eq!(admin.rotate_key(p256).await.unwrap().version, 2);
    let payload = random_bytes(32);
    let sig = app
        .sign(p256, Scheme::EcdsaSha256, payload.clone())
        .await
        .unwrap();
    assert_eq!(sig.version, 2);
    let pk2 = app.public_key(p256, Some(2)).await.unwrap();
    verify(&pk2.spki_der, Scheme::EcdsaSha256, &payload, &sig.signature).unwrap();
    admin.destroy_key(p256, 1).await.unwrap();
    let retired = admin.retire_key(p256, 2).await.unwrap();
    assert_eq!(retired.state, KeyState::Retired);
    assert!(app
        .sign(p256, Scheme::EcdsaSha256, random_bytes(32))
        .await
        .is_err());
    app.close();
    admin.close();

    // A restart finds the same keys, versions and states in the tokens.
    assert!(d.terminate().success(), "{}", d.log());
    d.spawn_serve().await;
    let admin = d.admin().await;
    let listed = admin.list_keys().await.unwrap();
    for (name, key_type) in &names {
        let k = listed
            .iter()
            .find(|k| k.name.as_str() == name)
            .unwrap_or_else(|| panic!("{name} not found after the restart: {listed:?}"));
        assert_eq!(k.key_type, *key_type);
    }
    let k = listed.iter().find(|k| k.name.as_str() == p256).unwrap();
    let states: Vec<_> = k.versions.iter().map(|v| (v.version, v.state)).collect();
    assert_eq!(states, [(2, KeyState::Retired)]);
    let app = d.app().await;
    let (rsa, _) = &names[2];
    let pk = app.public_key(rsa, None).await.unwrap();
    let payload = random_bytes(32);
    let sig = app
        .sign(rsa, Scheme::RsaPssSha256, payload.clone())
        .await
        .unwrap();
    verify(&pk.spki_der, Scheme::RsaPssSha256, &payload, &sig.signature).unwrap();
    app.close();
    admin.close();

    // The audit log, with its checkpoints signed in kryoptic, verifies.
    assert!(d.terminate().success(), "{}", d.log());
    let report = audit_verify(&d);
    assert!(report.contains("checkpoints"), "{report}");
}
