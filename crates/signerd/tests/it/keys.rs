//! Key lifecycle: create, rotate, retire, destroy, list; state lives in the tokens.

use signerd::{EngineError, KeyState, KeyType, Scheme, SignRequest, Status};

use crate::support::{self, verify::verify};

fn sign_req(name: &signerd::KeyName, version: Option<u32>) -> (SignRequest, Vec<u8>) {
    let payload = support::random_payload(Scheme::EcdsaSha256, 0);
    let digest = payload.bytes().to_vec();
    let mut req = support::request(name, payload);
    req.version = version;
    (req, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rotate_retire_destroy_and_reload() {
    let engine = support::engine();
    let name = support::unique("life");
    let v1 =
        tokio::task::block_in_place(|| engine.admin().create_key(&name, KeyType::EcP256, None))
            .unwrap();
    assert_eq!((v1.version, v1.state), (1, KeyState::Active));
    assert_eq!(v1.partitions, vec!["p0".to_owned(), "p1".to_owned()]);
    let again =
        tokio::task::block_in_place(|| engine.admin().create_key(&name, KeyType::EcP256, None));
    assert_eq!(
        again.unwrap_err().status(),
        Status::InvalidArgument,
        "names are unique"
    );
    let spki1 = engine.keys().public_key(&name, Some(1)).unwrap().spki_der;

    let (req, _) = sign_req(&name, None);
    assert_eq!(engine.sign(req).await.unwrap().version, 1);

    // Rotate: v2 signs, v1 is verify/export only.
    let v2 = tokio::task::block_in_place(|| engine.admin().rotate_key(&name)).unwrap();
    assert_eq!((v2.version, v2.state), (2, KeyState::Active));
    let spki2 = engine.keys().public_key(&name, None).unwrap().spki_der;
    assert_ne!(spki1, spki2, "a rotation makes a new key pair");
    let (req, digest) = sign_req(&name, None);
    let signed = engine.sign(req).await.unwrap();
    assert_eq!(signed.version, 2);
    verify(&spki2, Scheme::EcdsaSha256, &digest, &signed.signature).unwrap();
    let (req, _) = sign_req(&name, Some(1));
    let err = engine.sign(req).await.unwrap_err();
    assert!(matches!(err, EngineError::FailedPrecondition(_)), "{err}");
    assert_eq!(
        engine.keys().public_key(&name, Some(1)).unwrap().spki_der,
        spki1
    );

    let info = engine
        .keys()
        .list()
        .into_iter()
        .find(|k| k.name == name)
        .unwrap();
    assert_eq!(info.key_type, KeyType::EcP256);
    assert_eq!(info.signing_version, Some(2));
    let states: Vec<_> = info.versions.iter().map(|v| (v.version, v.state)).collect();
    assert_eq!(states, vec![(1, KeyState::Retired), (2, KeyState::Active)]);

    // Destroying an active version is refused; a retired one goes away.
    let err = tokio::task::block_in_place(|| engine.admin().destroy_key(&name, 2)).unwrap_err();
    assert!(matches!(err, EngineError::FailedPrecondition(_)), "{err}");
    tokio::task::block_in_place(|| engine.admin().destroy_key(&name, 1)).unwrap();
    assert_eq!(
        engine
            .keys()
            .public_key(&name, Some(1))
            .unwrap_err()
            .status(),
        Status::NotFound
    );

    // A new engine over the same tokens sees exactly the same keys, versions and states.
    let second = support::engine();
    let seen = second
        .keys()
        .list()
        .into_iter()
        .find(|k| k.name == name)
        .unwrap();
    assert_eq!(
        seen,
        engine
            .keys()
            .list()
            .into_iter()
            .find(|k| k.name == name)
            .unwrap()
    );
    assert_eq!(
        second.keys().public_key(&name, None).unwrap().spki_der,
        spki2
    );

    // Retire v2: nothing signs any more, in either engine (the second learns it from the token
    // after a restart; the HSM refuses CKA_SIGN=false keys regardless).
    tokio::task::block_in_place(|| engine.admin().retire_key(&name, 2)).unwrap();
    let (req, _) = sign_req(&name, None);
    let err = engine.sign(req).await.unwrap_err();
    assert!(matches!(err, EngineError::FailedPrecondition(_)), "{err}");
    second.shutdown();
    let third = support::engine();
    let seen = third
        .keys()
        .list()
        .into_iter()
        .find(|k| k.name == name)
        .unwrap();
    assert_eq!(seen.signing_version, None);
    assert_eq!(seen.versions.len(), 1);
    assert_eq!(seen.versions[0].state, KeyState::Retired);
    let (req, _) = sign_req(&name, Some(2));
    assert!(
        third.sign(req).await.is_err(),
        "a retired version never signs"
    );
    let hsm_before = support::hsm_calls(&third);
    let (req, _) = sign_req(&name, None);
    assert!(third.sign(req).await.is_err());
    assert_eq!(
        support::hsm_calls(&third),
        hsm_before,
        "refused before the HSM"
    );
    third.shutdown();
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_key_is_refused_by_the_token_itself() {
    // Even a stale engine that still believes the version is active cannot sign with it: the
    // token's CKA_SIGN is false. A copy of the engine state is made before retiring elsewhere.
    let stale =
        support::engine_with(|c| c.providers.get_mut("softhsm").unwrap().session_key_copy = false);
    let name = support::unique("token-retire");
    tokio::task::block_in_place(|| {
        stale
            .admin()
            .create_key(&name, KeyType::EcP256, Some(&["p0".to_owned()]))
    })
    .unwrap();
    let (req, _) = sign_req(&name, None);
    stale.sign(req).await.unwrap();
    let admin = support::engine();
    tokio::task::block_in_place(|| admin.admin().retire_key(&name, 1)).unwrap();
    let (req, _) = sign_req(&name, None);
    let err = stale.sign(req).await.unwrap_err();
    assert_eq!(err.status(), Status::InvalidArgument, "HSM refuses: {err}");
    assert!(
        matches!(err, EngineError::HsmRequest(_)),
        "the token refused: {err}"
    );
    admin.shutdown();
    stale.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_on_one_partition_routes_only_there() {
    let engine = support::engine();
    let name = support::unique("placed");
    let v = tokio::task::block_in_place(|| {
        engine
            .admin()
            .create_key(&name, KeyType::EcP256, Some(&["p1".to_owned()]))
    })
    .unwrap();
    assert_eq!(v.partitions, vec!["p1".to_owned()]);
    for _ in 0..50 {
        let (req, _) = sign_req(&name, None);
        assert_eq!(engine.sign(req).await.unwrap().partition, 1);
    }
    let err = tokio::task::block_in_place(|| {
        engine.admin().create_key(
            &support::unique("x"),
            KeyType::EcP256,
            Some(&["nope".to_owned()]),
        )
    });
    assert_eq!(err.unwrap_err().status(), Status::InvalidArgument);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsm_verify_accepts_good_and_rejects_bad_signatures() {
    let engine = support::engine();
    for key_type in [
        KeyType::EcP256,
        KeyType::EcP384,
        KeyType::Rsa2048,
        KeyType::Ed25519,
    ] {
        let name = support::unique(&format!("verify-{key_type}"));
        tokio::task::block_in_place(|| engine.admin().create_key(&name, key_type, None)).unwrap();
        let scheme = key_type.default_scheme();
        let payload = support::random_payload(scheme, 40);
        let signed = engine
            .sign(support::request(&name, payload.clone()))
            .await
            .unwrap();
        let check = |sig: &[u8]| {
            tokio::task::block_in_place(|| {
                engine.keys().verify_blocking(&name, None, &payload, sig)
            })
            .unwrap()
        };
        assert_eq!(check(&signed.signature), (1, true), "{key_type}");
        let mut bad = signed.signature.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x01;
        assert!(!check(&bad).1, "{key_type}: flipped bit must fail");
        assert!(!check(&[]).1, "{key_type}: empty signature must fail");
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_recovers_when_the_token_is_logged_out() {
    // Someone logs the token out under the running engine (docs/FAULTS.md 4): the worker notices,
    // logs in again once (serialized), finds its key again and the request is signed.
    let engine = signerd::Engine::open(&support::fixture().isolated).unwrap();
    let name = support::unique("logout");
    tokio::task::block_in_place(|| engine.admin().create_key(&name, KeyType::EcP256, None))
        .unwrap();
    let spki = engine.keys().public_key(&name, None).unwrap().spki_der;
    let (req, _) = sign_req(&name, None);
    engine.sign(req).await.unwrap();
    let logins_before = engine.health().stats()[0].logins;
    let raw = support::raw_session("signerd-2");
    raw.logout().unwrap();
    for _ in 0..20 {
        let (req, digest) = sign_req(&name, None);
        let signed = engine.sign(req).await.expect("signed after re-login");
        verify(&spki, Scheme::EcdsaSha256, &digest, &signed.signature).unwrap();
    }
    let info = raw.get_session_info().unwrap();
    assert!(
        matches!(
            info.session_state(),
            cryptoki::session::SessionState::RwUser
        ),
        "the token is logged in again: {:?}",
        info.session_state()
    );
    assert_eq!(
        engine.health().stats()[0].logins,
        logins_before + 1,
        "exactly one re-login"
    );
    engine.shutdown();
}

#[test]
fn init_dev_twice_is_safe_and_keeps_everything() {
    let f = support::fixture();
    let pins_before = std::fs::read(f.setup.dir.join("pins/p0.pin")).unwrap();
    let config_before = std::fs::read(&f.setup.config).unwrap();
    let again = signerd::dev::init_dev(
        &f.setup.dir,
        3,
        signerd::dev::DevPorts { quic: 0, admin: 0 },
    )
    .unwrap();
    assert!(
        again.created.is_empty(),
        "no token re-initialized: {:?}",
        again.created
    );
    assert!(!again.wrote_config, "the config is never overwritten");
    assert_eq!(
        std::fs::read(f.setup.dir.join("pins/p0.pin")).unwrap(),
        pins_before
    );
    assert_eq!(std::fs::read(&f.setup.config).unwrap(), config_before);
}

/// The session-object copies of `name` v`version` that this process's workers hold, and whether
/// each may still sign (`CKA_SIGN`).
fn session_copies(token: &str, name: &signerd::KeyName, version: u32) -> Vec<bool> {
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    let session = support::raw_session(token);
    let label = format!("signerd:{name}:v{version}").into_bytes();
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(false),
            Attribute::Label(label),
        ])
        .unwrap();
    found
        .into_iter()
        .map(|h| {
            session
                .get_attributes(h, &[AttributeType::Sign])
                .unwrap()
                .into_iter()
                .any(|a| a == Attribute::Sign(true))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_destroys_every_workers_session_copy_before_it_returns() {
    // With session_key_copy (the default), each worker signs with a session-object copy made
    // while the version was active (CKA_SIGN=true). Retire must not leave any behind.
    let engine = support::engine();
    assert!(engine.workers() > 1, "the test needs several workers");
    let name = support::unique("copies");
    tokio::task::block_in_place(|| engine.admin().create_key(&name, KeyType::EcP256, None))
        .unwrap();
    let tokens = ["signerd-0", "signerd-1"];
    let copies = |name| -> Vec<bool> {
        tokens
            .iter()
            .flat_map(|t| session_copies(t, name, 1))
            .collect()
    };
    let mut signs = tokio::task::JoinSet::new();
    for _ in 0..400 {
        let (engine, req) = (engine.clone(), sign_req(&name, None).0);
        signs.spawn(async move { engine.sign(req).await });
    }
    while let Some(s) = signs.join_next().await {
        s.unwrap().unwrap();
    }
    let before = copies(&name);
    assert!(
        before.len() > 1 && before.iter().all(|s| *s),
        "several workers signed with their own copies: {before:?}"
    );

    tokio::task::block_in_place(|| engine.admin().retire_key(&name, 1)).unwrap();
    assert_eq!(
        copies(&name),
        Vec::<bool>::new(),
        "no session copy outlives the retire"
    );
    // Every worker refuses the old version, and makes no new copy for it.
    let mut signs = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (engine, req) = (engine.clone(), sign_req(&name, Some(1)).0);
        signs.spawn(async move { engine.sign(req).await });
    }
    while let Some(s) = signs.join_next().await {
        let err = s.unwrap().unwrap_err();
        assert!(matches!(err, EngineError::FailedPrecondition(_)), "{err}");
    }
    assert!(copies(&name).is_empty());

    tokio::task::block_in_place(|| engine.admin().destroy_key(&name, 1)).unwrap();
    for token in tokens {
        let left = support::raw_session(token)
            .find_objects(&[cryptoki::object::Attribute::Label(
                format!("signerd:{name}:v1").into_bytes(),
            )])
            .unwrap();
        assert!(
            left.is_empty(),
            "destroy leaves nothing in {token}: {left:?}"
        );
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_keys_can_only_sign_and_never_leave_the_token() {
    // Generated (p0) and unwrapped (p1) copies alike: sensitive, sealed, and no use but signing.
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    let engine = support::engine();
    for key_type in [KeyType::EcP256, KeyType::Ed25519] {
        let name = support::unique("sealed");
        let v = tokio::task::block_in_place(|| engine.admin().create_key(&name, key_type, None))
            .unwrap();
        for (i, partition) in v.partitions.iter().enumerate() {
            let token = format!("signerd-{}", &partition[1..]);
            let session = support::raw_session(&token);
            let found = session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Token(true),
                    Attribute::Label(format!("signerd:{name}:v1").into_bytes()),
                ])
                .unwrap();
            assert_eq!(found.len(), 1, "{token}");
            let attrs = session
                .get_attributes(
                    found[0],
                    &[
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::Sign,
                        AttributeType::Decrypt,
                        AttributeType::Derive,
                        AttributeType::Unwrap,
                    ],
                )
                .unwrap();
            for want in [
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Derive(false),
                Attribute::Unwrap(false),
            ] {
                assert!(
                    attrs.contains(&want),
                    "{key_type} copy {i} in {token}: want {want:?}, token has {attrs:?}"
                );
            }
        }
    }
    engine.shutdown();
}

/// Version numbers are never handed out twice, even after the latest version is destroyed, or
/// every version and the name is created again, or the engine restarts: a high-water mark kept
/// in the tokens outlives the versions. (The next number was the registry's latest + 1: destroy
/// v2, rotate, and a different key pair was v2 again; audit records and signatures naming
/// "v2" became ambiguous.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_numbers_are_never_reused() {
    let engine = support::engine();
    let admin = engine.admin();
    let name = support::unique("hwm");
    let run = |f: &dyn Fn() -> Result<signerd::VersionInfo, EngineError>| {
        tokio::task::block_in_place(f).unwrap().version
    };
    assert_eq!(run(&|| admin.create_key(&name, KeyType::EcP256, None)), 1);
    assert_eq!(run(&|| admin.rotate_key(&name)), 2);
    let spki2 = engine.keys().public_key(&name, Some(2)).unwrap().spki_der;
    run(&|| admin.retire_key(&name, 2));
    tokio::task::block_in_place(|| admin.destroy_key(&name, 2)).unwrap();
    assert_eq!(run(&|| admin.rotate_key(&name)), 3, "v2 is not reused");
    assert_ne!(
        engine.keys().public_key(&name, Some(3)).unwrap().spki_der,
        spki2
    );
    assert_eq!(
        engine
            .keys()
            .public_key(&name, Some(2))
            .unwrap_err()
            .status(),
        Status::NotFound
    );

    // Every version gone, the name made again: it goes on from the mark.
    for v in [1, 3] {
        let _ = tokio::task::block_in_place(|| admin.retire_key(&name, v));
        tokio::task::block_in_place(|| admin.destroy_key(&name, v)).unwrap();
    }
    assert!(engine.keys().list().iter().all(|k| k.name != name));
    assert_eq!(run(&|| admin.create_key(&name, KeyType::EcP256, None)), 4);
    engine.shutdown();

    // A new engine over the same tokens continues from the mark too.
    let second = support::engine();
    let admin = second.admin();
    run(&|| admin.retire_key(&name, 4));
    tokio::task::block_in_place(|| admin.destroy_key(&name, 4)).unwrap();
    assert_eq!(run(&|| admin.create_key(&name, KeyType::EcP256, None)), 5);
    second.shutdown();
}
