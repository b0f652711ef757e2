//! Security review, finding 5: the key-encryption key made by `init --dev` carries
//! `CKA_UNWRAP_TEMPLATE` (what it unwraps is a sensitive, non-extractable signing key, only
//! wrappable under a trusted key again) and `CKA_WRAP_TEMPLATE` (it wraps only such private
//! keys), and the token enforces both: an unwrap under it that asks for an extractable key, or a
//! wrap of anything else, is refused by SoftHSM2 itself, not by signerd.

use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType as CkKeyType};
use cryptoki::session::Session;
use signerd::dev::{kek_unwrap_template, kek_wrap_template};
use signerd::hsm::objects;
use signerd::hsm::raw::{RawCalls, TemplateAttribute};
use signerd::KeyType;

use crate::support;

/// The same attributes, in any order.
fn same_set(got: &[Attribute], want: &[Attribute]) -> bool {
    got.len() == want.len() && want.iter().all(|w| got.contains(w))
}

fn rv(e: &Error) -> Option<RvError> {
    match e {
        Error::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

#[test]
fn the_kek_carries_its_wrap_and_unwrap_templates() {
    let raw = RawCalls::open(&support::fixture().module).unwrap();
    for token in ["signerd-0", "signerd-1", "signerd-2"] {
        let s = support::raw_session(token);
        let kek = objects::find_kek(&s).unwrap().expect("the KEK");
        let unwrap = raw.template(&s, kek, TemplateAttribute::Unwrap).unwrap();
        assert!(
            same_set(&unwrap, &kek_unwrap_template()),
            "{token}: CKA_UNWRAP_TEMPLATE is {unwrap:?}"
        );
        for must in [
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::WrapWithTrusted(true),
        ] {
            assert!(unwrap.contains(&must), "{token}: {must:?} in {unwrap:?}");
        }
        let wrap = raw.template(&s, kek, TemplateAttribute::Wrap).unwrap();
        assert!(
            same_set(&wrap, &kek_wrap_template()),
            "{token}: CKA_WRAP_TEMPLATE is {wrap:?}"
        );
        // Still trusted, sensitive and never extractable itself.
        let attrs = s
            .get_attributes(
                kek,
                &[
                    AttributeType::Trusted,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .unwrap();
        assert!(
            same_set(
                &attrs,
                &[
                    Attribute::Trusted(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false)
                ]
            ),
            "{token}: {attrs:?}"
        );
    }
}

/// DER OID of P-256 (prime256v1).
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// An EC P-256 key pair on `s` with the private attributes `objects::generate` gives a key made
/// for replication (extractable under trusted keys only), wrapped under the KEK: the wrapped
/// bytes and the two handles. Session objects without a signerd label, so that no engine's
/// start-up scan (other tests open engines meanwhile) seals the extractable key under our feet.
fn wrapped_key(s: &Session) -> (Vec<u8>, Vec<cryptoki::object::ObjectHandle>) {
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::Verify(true),
                Attribute::EcParams(P256_OID.to_vec()),
            ],
            &[
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::WrapWithTrusted(true),
                Attribute::Sign(true),
                Attribute::Decrypt(false),
                Attribute::Derive(false),
                Attribute::Unwrap(false),
                Attribute::Label(b"kek-template-test".to_vec()),
            ],
        )
        .unwrap();
    let kek = objects::find_kek(s).unwrap().unwrap();
    let wrapped = objects::wrap_private(s, kek, private).unwrap();
    (wrapped, vec![public, private])
}

/// The template `objects::unwrap_copy` uses (a session object here, so nothing stays in the
/// token), with `change` applied.
fn unwrap_template(change: impl FnOnce(&mut Vec<Attribute>)) -> Vec<Attribute> {
    let mut t = objects::unwrap_template(KeyType::EcP256);
    t.retain(|a| a.attribute_type() != AttributeType::Token);
    t.push(Attribute::Token(false));
    change(&mut t);
    t
}

#[test]
fn the_token_refuses_an_unwrap_that_contradicts_the_kek_template() {
    let s0 = support::raw_session("signerd-0");
    // Objects are made beside other tests' engines: never at the same time as theirs.
    let _serial = signerd::engine::hold_object_writes();
    let (wrapped, made) = wrapped_key(&s0);
    let s1 = support::raw_session("signerd-1");
    let kek = objects::find_kek(&s1).unwrap().unwrap();
    let unwrap =
        |template: &[Attribute]| s1.unwrap_key(&Mechanism::AesKeyWrapPad, kek, &wrapped, template);
    // As the engine unwraps.
    let copy = unwrap(&unwrap_template(|_| {})).expect("the engine's own template is accepted");
    s1.destroy_object(copy).unwrap();
    // Asking for an extractable copy, a non-sensitive one, or one that could decrypt: refused.
    for (what, attr) in [
        ("extractable", Attribute::Extractable(true)),
        ("not sensitive", Attribute::Sensitive(false)),
        ("decrypting", Attribute::Decrypt(true)),
        ("wrappable under any key", Attribute::WrapWithTrusted(false)),
    ] {
        let template = unwrap_template(|t| {
            let ty = attr.attribute_type();
            t.retain(|a| a.attribute_type() != ty);
            t.push(attr.clone());
        });
        match unwrap(&template) {
            Err(e) => assert_eq!(rv(&e), Some(RvError::TemplateInconsistent), "{what}: {e}"),
            Ok(h) => {
                let _ = s1.destroy_object(h);
                panic!("the token unwrapped an {what} copy under the KEK");
            }
        }
    }
    for h in made {
        s0.destroy_object(h).unwrap();
    }
}

#[test]
fn the_kek_wraps_only_what_its_wrap_template_allows() {
    let s = support::raw_session("signerd-0");
    // Objects are made beside other tests' engines: never at the same time as theirs.
    let _serial = signerd::engine::hold_object_writes();
    let kek = objects::find_kek(&s).unwrap().unwrap();
    // An extractable AES session key: PKCS#11 would wrap it under any wrapping key.
    let secret = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Extractable(true),
                Attribute::Sensitive(true),
                Attribute::KeyType(CkKeyType::AES),
            ],
        )
        .unwrap();
    let e = s
        .wrap_key(&Mechanism::AesKeyWrapPad, kek, secret)
        .expect_err("a secret key wrapped under the KEK");
    assert_eq!(rv(&e), Some(RvError::KeyNotWrappable), "{e}");
    s.destroy_object(secret).unwrap();
    // What replication wraps still wraps.
    let (_, made) = wrapped_key(&s);
    for h in made {
        s.destroy_object(h).unwrap();
    }
}
