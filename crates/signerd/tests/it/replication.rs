//! Replication: a key created across partitions is the same key everywhere, signs everywhere,
//! and its private half is sensitive and non-extractable in every token.

use std::collections::HashMap;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType, ObjectClass};
use signerd::hsm::objects;
use signerd::KeyType;

use crate::support::{self, verify::verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_key_is_identical_signs_everywhere_and_stays_sealed() {
    let engine = support::engine();
    for key_type in [KeyType::EcP256, KeyType::EcP384, KeyType::Rsa2048] {
        let name = support::unique(&format!("repl-{key_type}"));
        let info = tokio::task::block_in_place(|| engine.admin().create_key(&name, key_type, None))
            .unwrap_or_else(|e| panic!("create {key_type}: {e}"));
        assert_eq!(
            info.partitions.len(),
            2,
            "{key_type} placed on both partitions"
        );
        let spki = engine.keys().public_key(&name, None).unwrap().spki_der;
        let id = {
            let s = support::raw_session("signerd-0");
            let label = objects::key_label(&name, 1, objects::KeyRole::Client);
            let found = s
                .find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(label.into_bytes()),
                ])
                .unwrap();
            assert_eq!(found.len(), 1);
            match &s.get_attributes(found[0], &[AttributeType::Id]).unwrap()[0] {
                Attribute::Id(id) => id.clone(),
                other => panic!("unexpected {other:?}"),
            }
        };
        for token in ["signerd-0", "signerd-1"] {
            let s = support::raw_session(token);
            // Same public key on every partition.
            let public = objects::find_public(&s, &id)
                .unwrap()
                .expect("public key copy");
            let (kt, copy_spki) = objects::public_key(&s, public).unwrap();
            assert_eq!(kt, key_type);
            assert_eq!(copy_spki, spki, "{token}: public key differs");
            // The private key is sealed.
            let private = objects::find_private(&s, &id)
                .unwrap()
                .expect("private key copy");
            let attrs = s
                .get_attributes(
                    private,
                    &[
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                        AttributeType::Token,
                    ],
                )
                .unwrap();
            assert!(
                attrs.contains(&Attribute::Sensitive(true)),
                "{token}: {attrs:?}"
            );
            assert!(
                attrs.contains(&Attribute::Extractable(false)),
                "{token}: {attrs:?}"
            );
            assert!(
                attrs.contains(&Attribute::Token(true)),
                "{token}: {attrs:?}"
            );
            let secret_attr = match key_type {
                KeyType::Rsa2048 => AttributeType::PrivateExponent,
                _ => AttributeType::Value,
            };
            let read = s.get_attributes(private, &[secret_attr]);
            assert!(
                read.as_ref().map_or(true, |a| a.is_empty()),
                "{token}: reading the private value must fail, got {read:?}"
            );
            // Wrapping it under anything but the trusted KEK fails. (The session key is made
            // while no engine of this process writes objects: SoftHSM2 #573.)
            let _serial = signerd::engine::hold_object_writes();
            let untrusted = s
                .generate_key(
                    &Mechanism::AesKeyGen,
                    &[
                        Attribute::Token(false),
                        Attribute::ValueLen(32.into()),
                        Attribute::Wrap(true),
                        Attribute::KeyType(CkKeyType::AES),
                    ],
                )
                .unwrap();
            let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, untrusted, private);
            assert!(
                wrapped.is_err(),
                "{token}: {key_type} wrapped under an untrusted key"
            );
        }
        // Requests are signed on every partition holding the key, and verify.
        let mut per_partition: HashMap<usize, usize> = HashMap::new();
        let scheme = key_type.default_scheme();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let engine = engine.clone();
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                let payload = support::random_payload(scheme, 64);
                let data = payload.bytes().clone();
                (data, engine.sign(support::request(&name, payload)).await)
            }));
        }
        for t in tasks {
            let (data, signed) = t.await.unwrap();
            let signed = signed.unwrap();
            verify(&spki, scheme, &data, &signed.signature).unwrap();
            *per_partition.entry(signed.partition).or_default() += 1;
        }
        assert_eq!(
            per_partition.len(),
            2,
            "{key_type}: signed on both partitions: {per_partition:?}"
        );
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwrappable_key_types_stay_on_one_partition_and_say_so() {
    // SoftHSM2 2.6 cannot wrap Ed25519 private keys (CKR_KEY_NOT_WRAPPABLE). Default placement
    // keeps the key where it was generated; an explicit multi-partition placement is refused.
    let engine = support::engine();
    let name = support::unique("ed-one");
    let info =
        tokio::task::block_in_place(|| engine.admin().create_key(&name, KeyType::Ed25519, None))
            .unwrap();
    assert_eq!(info.partitions.len(), 1, "{info:?}");
    let explicit = ["p0".to_owned(), "p1".to_owned()];
    let other = support::unique("ed-two");
    let err = tokio::task::block_in_place(|| {
        engine
            .admin()
            .create_key(&other, KeyType::Ed25519, Some(&explicit))
    })
    .unwrap_err();
    assert!(err.to_string().contains("cannot wrap"), "{err}");
    assert!(
        engine.keys().list().iter().all(|k| k.name != other),
        "nothing left behind"
    );
    for token in ["signerd-0", "signerd-1"] {
        let s = support::raw_session(token);
        let label = objects::key_label(&other, 1, objects::KeyRole::Client).into_bytes();
        assert!(
            s.find_objects(&[Attribute::Label(label)])
                .unwrap()
                .is_empty(),
            "{token}: rolled back"
        );
    }
    let s = support::raw_session("signerd-0");
    let label = objects::key_label(&name, 1, objects::KeyRole::Client).into_bytes();
    let private = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label),
        ])
        .unwrap();
    assert_eq!(private.len(), 1);
    let attrs = s
        .get_attributes(
            private[0],
            &[AttributeType::Extractable, AttributeType::Sensitive],
        )
        .unwrap();
    assert!(
        attrs.contains(&Attribute::Extractable(false)),
        "sealed after the failed copy: {attrs:?}"
    );
    assert!(attrs.contains(&Attribute::Sensitive(true)));
    engine.shutdown();
}
