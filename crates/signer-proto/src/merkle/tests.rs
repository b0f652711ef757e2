//! Unit and property tests of the batch-signature core, and the checked-in test vector
//! (`tests/vectors/batch-v1.json`) with its generator.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::pkcs8::EncodePublicKey;
use proptest::prelude::*;

use super::*;

/// The test vector's P-256 private scalar (a test key: never use it for anything else).
const VECTOR_SCALAR: [u8; 32] = [
    0xc9, 0xaf, 0xa9, 0xd8, 0x45, 0xba, 0x75, 0x16, 0x6b, 0x5c, 0x21, 0x57, 0x67, 0xb1, 0xd6, 0x93,
    0x4e, 0x50, 0xc3, 0xdb, 0x36, 0xe8, 0x9b, 0x12, 0x7b, 0x8a, 0x62, 0x2b, 0x12, 0x0f, 0x67, 0x21,
];

fn p256_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&VECTOR_SCALAR).unwrap()
}

fn spki(key: &p256::ecdsa::SigningKey) -> Vec<u8> {
    key.verifying_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes()
        .to_vec()
}

fn key_name() -> KeyName {
    KeyName::new("payments").unwrap()
}

/// Deterministic 32-byte payloads (SHA-256 digests of "payload i").
fn digests(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| payload_for_message(Scheme::EcdsaSha256, format!("payload {i}").as_bytes()))
        .collect()
}

/// Deterministic blindings: SHA-256("blinding i").
fn fixed_blindings(n: usize) -> Vec<Blinding> {
    (0..n)
        .map(|i| payload_for_message(Scheme::EcdsaSha256, format!("blinding {i}").as_bytes()))
        .map(|d| d.try_into().unwrap())
        .collect()
}

/// A signed tree over `payloads` with the P-256 test key (RFC 6979: deterministic).
fn signed_tree(payloads: &[Vec<u8>]) -> (Tree, Bytes) {
    let tree = Tree::build(payloads, fixed_blindings(payloads.len())).unwrap();
    let input = root_signing_input(
        Scheme::EcdsaSha256,
        &key_name(),
        3,
        tree.size() as u32,
        &tree.root(),
    );
    let sig: p256::ecdsa::Signature = p256_key().sign_prehash(input.to_be_signed()).unwrap();
    (tree, Bytes::from(sig.to_der().as_bytes().to_vec()))
}

#[test]
fn depth_is_ceil_log2() {
    let cases = [
        (1, 0),
        (2, 1),
        (3, 2),
        (4, 2),
        (5, 3),
        (8, 3),
        (9, 4),
        (4095, 12),
        (4096, 12),
    ];
    for (n, d) in cases {
        assert_eq!(depth(n), d, "depth({n})");
    }
}

#[test]
fn sizes_and_blindings_are_checked() {
    let none: [[u8; 32]; 0] = [];
    assert_eq!(Tree::build(&none, vec![]).unwrap_err(), TreeError::Size(0));
    let many = vec![[0u8; 32]; MAX_TREE + 1];
    assert_eq!(
        Tree::build(&many, vec![[0; 32]; MAX_TREE + 1]).unwrap_err(),
        TreeError::Size(MAX_TREE + 1)
    );
    let two = digests(2);
    assert!(matches!(
        Tree::build(&two, vec![[0; 32]]).unwrap_err(),
        TreeError::BlindingCount {
            payloads: 2,
            blindings: 1
        }
    ));
    let tree = Tree::build(&two, fixed_blindings(2)).unwrap();
    assert!(matches!(
        tree.path(2),
        Err(TreeError::Index { index: 2, size: 2 })
    ));
}

#[test]
fn one_leaf_tree_root_is_the_leaf() {
    let p = digests(1);
    let b = fixed_blindings(1);
    let tree = Tree::build(&p, b.clone()).unwrap();
    assert_eq!(tree.root(), leaf_hash(1, 0, &b[0], &p[0]));
    assert!(tree.path(0).unwrap().is_empty());
}

#[test]
fn three_leaf_tree_by_hand() {
    let p = digests(3);
    let b = fixed_blindings(3);
    let tree = Tree::build(&p, b.clone()).unwrap();
    let l: Vec<Hash> = (0..3)
        .map(|i| leaf_hash(3, i as u32, &b[i], &p[i]))
        .collect();
    let pad = empty_hash(3, 0, 3);
    let n0 = node_hash(3, 1, 0, &l[0], &l[1]);
    let n1 = node_hash(3, 1, 1, &l[2], &pad);
    assert_eq!(tree.root(), node_hash(3, 2, 0, &n0, &n1));
    assert_eq!(tree.path(2).unwrap(), vec![pad, n0]);
    // A path whose padding position holds anything but the padding hash is refused.
    let bad = [l[0], n0];
    assert_eq!(
        root_from_path(3, 2, &b[2], &p[2], &bad).unwrap_err(),
        TreeError::Padding { level: 0 }
    );
}

#[test]
fn fresh_blindings_differ() {
    let b = fresh_blindings(2, &mut rand::rngs::OsRng);
    assert_ne!(b[0], b[1]);
    let t1 = Tree::build_with_rng(&digests(2), &mut rand::rngs::OsRng).unwrap();
    let t2 = Tree::build_with_rng(&digests(2), &mut rand::rngs::OsRng).unwrap();
    assert_ne!(
        t1.root(),
        t2.root(),
        "same payloads, fresh blindings: different roots"
    );
}

#[test]
fn encoding_limits() {
    let (tree, sig) = signed_tree(&digests(5));
    let bs = tree.signature(4, sig).unwrap();
    let enc = bs.encode().unwrap();
    assert_eq!(enc.len(), bs.encoded_len());
    assert_eq!(BatchSignature::decode(&enc).unwrap(), bs);
    // trailing byte
    let mut longer = enc.clone();
    longer.push(0);
    assert!(matches!(
        BatchSignature::decode(&longer).unwrap_err().problem,
        Problem::TrailingBytes(1)
    ));
    // every truncation fails
    for cut in 0..enc.len() {
        assert!(BatchSignature::decode(&enc[..cut]).is_err(), "cut at {cut}");
    }
    // tree_size 0 and > MAX_TREE, index out of range, wrong depth, empty root signature
    let mut e = enc.clone();
    e[0..4].copy_from_slice(&0u32.to_be_bytes());
    assert_eq!(BatchSignature::decode(&e).unwrap_err().field, "tree_size");
    e[0..4].copy_from_slice(&(MAX_TREE as u32 + 1).to_be_bytes());
    assert_eq!(BatchSignature::decode(&e).unwrap_err().field, "tree_size");
    let mut e = enc.clone();
    e[4..8].copy_from_slice(&5u32.to_be_bytes());
    assert_eq!(BatchSignature::decode(&e).unwrap_err().field, "leaf_index");
    let mut e = enc.clone();
    e[40] = 2;
    assert_eq!(BatchSignature::decode(&e).unwrap_err().field, "depth");
    let mut bad = bs.clone();
    bad.root_signature = Bytes::new();
    assert!(bad.encode().is_err());
    bad.root_signature = Bytes::from(vec![1; MAX_ROOT_SIGNATURE + 1]);
    assert!(bad.encode().is_err());
}

#[test]
fn verify_plain_and_unified() {
    let key = p256_key();
    let digest = payload_for_message(Scheme::EcdsaSha256, b"hello");
    let sig: p256::ecdsa::Signature = key.sign_prehash(&digest).unwrap();
    let der = Bytes::from(sig.to_der().as_bytes().to_vec());
    let spki = spki(&key);
    verify_plain(&spki, Scheme::EcdsaSha256, &digest, &der).unwrap();
    let plain = SignatureForm::Plain(der.clone());
    verify(&spki, Scheme::EcdsaSha256, &key_name(), 1, &digest, &plain).unwrap();
    let other = payload_for_message(Scheme::EcdsaSha256, b"hullo");
    assert_eq!(
        verify_plain(&spki, Scheme::EcdsaSha256, &other, &der),
        Err(VerifyError::Invalid)
    );
    assert!(matches!(
        verify_plain(&spki, Scheme::EcdsaSha256, b"short", &der),
        Err(VerifyError::Payload(_))
    ));
    assert!(matches!(
        verify_plain(&spki, Scheme::Ed25519, &digest, &der),
        Err(VerifyError::PublicKey { .. })
    ));
    assert!(matches!(
        verify_plain(&spki, Scheme::EcdsaSha256, &digest, b"not der"),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn rsa_and_ed25519_verify_plain_and_batch() {
    use ed25519_dalek::Signer as _;
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey as _};
    let rsa_key = rsa::RsaPrivateKey::from_pkcs8_pem(include_str!(
        "../../tests/vectors/rsa-2048-test-key.pem"
    ))
    .unwrap();
    let rsa_spki = rsa_key
        .to_public_key()
        .to_public_key_der()
        .unwrap()
        .to_vec();
    let digest = payload_for_message(Scheme::RsaPssSha384, b"m");
    let pkcs1 = rsa_key
        .sign(rsa::Pkcs1v15Sign::new::<sha2::Sha384>(), &digest)
        .unwrap();
    verify_plain(&rsa_spki, Scheme::RsaPkcs1Sha384, &digest, &pkcs1).unwrap();
    assert_eq!(
        verify_plain(&rsa_spki, Scheme::RsaPssSha384, &digest, &pkcs1),
        Err(VerifyError::Invalid)
    );
    // A batch under RSA-PSS-SHA-256.
    let payloads = digests(3);
    let tree = Tree::build(&payloads, fixed_blindings(3)).unwrap();
    let input = root_signing_input(Scheme::RsaPssSha256, &key_name(), 1, 3, &tree.root());
    let pss = rsa::Pss::new_with_salt::<sha2::Sha256>(32);
    let root_sig = rsa_key
        .sign_with_rng(&mut rand::rngs::OsRng, pss, input.to_be_signed())
        .unwrap();
    let bs = tree.signature(1, Bytes::from(root_sig)).unwrap();
    verify_batch(
        &rsa_spki,
        Scheme::RsaPssSha256,
        &key_name(),
        1,
        &payloads[1],
        &bs,
    )
    .unwrap();
    let pkcs1_scheme = Scheme::RsaPkcs1Sha256;
    assert!(verify_batch(&rsa_spki, pkcs1_scheme, &key_name(), 1, &payloads[1], &bs).is_err());

    // Ed25519 signs the context message itself; leaves are the messages.
    let ed = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut ed_spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    ed_spki.extend_from_slice(ed.verifying_key().as_bytes());
    let messages = [b"first".to_vec(), b"second".to_vec()];
    let tree = Tree::build(&messages, fixed_blindings(2)).unwrap();
    let input = root_signing_input(Scheme::Ed25519, &key_name(), 1, 2, &tree.root());
    assert_eq!(input.to_be_signed(), input.message());
    let root_sig = ed.sign(input.to_be_signed()).to_bytes();
    let bs = tree
        .signature(0, Bytes::copy_from_slice(&root_sig))
        .unwrap();
    let form = SignatureForm::Batch(bs);
    verify(&ed_spki, Scheme::Ed25519, &key_name(), 1, b"first", &form).unwrap();
    assert!(verify(&ed_spki, Scheme::Ed25519, &key_name(), 1, b"second", &form).is_err());
}

#[test]
fn batch_signature_is_bound_to_key_identity() {
    let payloads = digests(5);
    let (tree, root_sig) = signed_tree(&payloads);
    let spki = spki(&p256_key());
    let bs = tree.signature(2, root_sig).unwrap();
    let name = key_name();
    verify_batch(&spki, Scheme::EcdsaSha256, &name, 3, &payloads[2], &bs).unwrap();
    let other_name = KeyName::new("payment").unwrap();
    let wrong = [
        verify_batch(
            &spki,
            Scheme::EcdsaSha256,
            &other_name,
            3,
            &payloads[2],
            &bs,
        ),
        verify_batch(&spki, Scheme::EcdsaSha256, &name, 4, &payloads[2], &bs),
        verify_batch(&spki, Scheme::RsaPssSha256, &name, 3, &payloads[2], &bs)
            .map_err(|_| VerifyError::Invalid),
    ];
    for w in wrong {
        assert_eq!(w, Err(VerifyError::Invalid));
    }
}

#[test]
fn root_messages_are_recognized_where_the_payload_is_the_message() {
    let tree = Tree::build(&digests(3), fixed_blindings(3)).unwrap();
    let input = root_signing_input(Scheme::Ed25519, &key_name(), 3, 3, &tree.root());
    // Ed25519 signs the message itself: a root message is recognized, whatever follows the
    // context (so a made-up tree's root is too), and nothing else is.
    assert!(is_root_message(Scheme::Ed25519, input.to_be_signed()));
    assert!(is_root_message(Scheme::Ed25519, ROOT_CONTEXT));
    let mut other = input.to_be_signed().to_vec();
    other[0] ^= 1;
    assert!(!is_root_message(Scheme::Ed25519, &other));
    assert!(!is_root_message(Scheme::Ed25519, &ROOT_CONTEXT[..26]));
    assert!(!is_root_message(Scheme::Ed25519, b"pay 5 EUR"));
    // A digest scheme's payload is a hash: whether it hashes a root message is unknowable, even
    // for a payload that happens to start with the context bytes.
    let ecdsa = root_signing_input(Scheme::EcdsaSha512, &key_name(), 3, 3, &tree.root());
    assert!(!is_root_message(Scheme::EcdsaSha512, ecdsa.to_be_signed()));
    assert!(!is_root_message(
        Scheme::EcdsaSha512,
        &[ROOT_CONTEXT.as_slice(), &[0; 37]].concat()
    ));
}

#[test]
fn blob_round_trips_and_verifies() {
    let messages: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("message {i}").into_bytes())
        .collect();
    let payloads: Vec<Vec<u8>> = messages
        .iter()
        .map(|m| payload_for_message(Scheme::EcdsaSha256, m))
        .collect();
    let (tree, root_sig) = signed_tree(&payloads);
    let blob = BatchBlob {
        scheme: Scheme::EcdsaSha256,
        key: key_name(),
        version: 3,
        signature: tree.signature(1, root_sig).unwrap(),
    };
    let bytes = blob.to_bytes().unwrap();
    assert_eq!(BatchBlob::from_bytes(&bytes).unwrap(), blob);
    let text = blob.to_text().unwrap();
    assert!(text.starts_with(TEXT_HEADER) && text.ends_with(&format!("{TEXT_FOOTER}\n")));
    assert!(text
        .lines()
        .all(|l| l.len() <= 64 || l.starts_with("-----")));
    let back = BatchBlob::from_text(&text.replace('\n', "\r\n")).unwrap();
    assert_eq!(back, blob);
    let spki = spki(&p256_key());
    back.verify_message(&spki, &messages[1]).unwrap();
    assert_eq!(
        back.verify_message(&spki, &messages[0]),
        Err(VerifyError::Invalid)
    );
    // malformed blobs
    assert!(BatchBlob::from_bytes(&bytes[1..]).is_err());
    let mut extra = bytes.clone();
    extra.push(0);
    assert!(BatchBlob::from_bytes(&extra).is_err());
    for cut in 0..bytes.len() {
        assert!(BatchBlob::from_bytes(&bytes[..cut]).is_err());
    }
    assert!(BatchBlob::from_text(&text.replace(TEXT_FOOTER, "")).is_err());
    assert!(BatchBlob::from_text(&format!("{text}x\n")).is_err());
}

/// One field of a batch signature (or its payload) to corrupt.
#[derive(Clone, Copy, Debug)]
enum Target {
    Payload,
    Path,
    Index,
    Blinding,
    RootSignature,
}

fn flip(bytes: &mut [u8], bit: usize) {
    let bit = bit % (bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_path_verifies_against_the_root(size in 1usize..=MAX_TREE, picks in prop::collection::vec(any::<prop::sample::Index>(), 4)) {
        let payloads: Vec<[u8; 4]> = (0..size as u32).map(u32::to_be_bytes).collect();
        let blindings = fixed_blindings(size);
        let tree = Tree::build(&payloads, blindings.clone()).unwrap();
        prop_assert_eq!(tree.depth(), depth(size));
        let mut indices: Vec<usize> = picks.iter().map(|p| p.index(size)).collect();
        indices.extend([0, size - 1]);
        for i in indices {
            let path = tree.path(i).unwrap();
            let root = root_from_path(size as u32, i as u32, &blindings[i], &payloads[i], &path).unwrap();
            prop_assert_eq!(root, tree.root());
        }
    }

    #[test]
    fn any_bit_flip_fails(size in 1usize..=40, pick in any::<prop::sample::Index>(), target in prop_oneof![
        Just(Target::Payload), Just(Target::Path), Just(Target::Index), Just(Target::Blinding), Just(Target::RootSignature)
    ], bit in any::<usize>()) {
        let payloads = digests(size);
        let (tree, root_sig) = signed_tree(&payloads);
        let spki = spki(&p256_key());
        let i = pick.index(size);
        let mut bs = tree.signature(i, root_sig).unwrap();
        let mut payload = payloads[i].clone();
        match target {
            Target::Payload => flip(&mut payload, bit),
            Target::Path if bs.path.is_empty() => flip(&mut payload, bit),
            Target::Path => {
                let n = bs.path.len();
                flip(&mut bs.path[bit % n], bit / n);
            }
            Target::Index => {
                let mut idx = bs.leaf_index.to_be_bytes();
                flip(&mut idx, bit);
                bs.leaf_index = u32::from_be_bytes(idx);
            }
            Target::Blinding => flip(&mut bs.blinding, bit),
            Target::RootSignature => {
                let mut s = bs.root_signature.to_vec();
                flip(&mut s, bit);
                bs.root_signature = Bytes::from(s);
            }
        }
        prop_assert!(verify_batch(&spki, Scheme::EcdsaSha256, &key_name(), 3, &payload, &bs).is_err());
    }

    #[test]
    fn leaves_do_not_verify_for_each_other(size in 2usize..=64, a in any::<prop::sample::Index>(), b in any::<prop::sample::Index>()) {
        let payloads = digests(size);
        let (tree, root_sig) = signed_tree(&payloads);
        let spki = spki(&p256_key());
        let (i, j) = (a.index(size), b.index(size));
        prop_assume!(i != j);
        let bs = tree.signature(i, root_sig).unwrap();
        prop_assert!(verify_batch(&spki, Scheme::EcdsaSha256, &key_name(), 3, &payloads[i], &bs).is_ok());
        prop_assert!(verify_batch(&spki, Scheme::EcdsaSha256, &key_name(), 3, &payloads[j], &bs).is_err());
        // Nor with the other leaf's index claimed.
        let mut moved = bs.clone();
        moved.leaf_index = j as u32;
        prop_assert!(verify_batch(&spki, Scheme::EcdsaSha256, &key_name(), 3, &payloads[j], &moved).is_err());
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(sig) = BatchSignature::decode(&bytes) {
            prop_assert_eq!(sig.encode().unwrap(), bytes.clone());
        }
        let _ = BatchBlob::from_bytes(&bytes);
        let _ = BatchBlob::from_text(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn valid_encodings_round_trip(size in 1u32..=MAX_TREE as u32, pick in any::<prop::sample::Index>(), blinding in any::<[u8; 32]>(), sig in prop::collection::vec(any::<u8>(), 1..=MAX_ROOT_SIGNATURE), seed in any::<u8>()) {
        let d = depth(size as usize);
        let bs = BatchSignature {
            root_signature: Bytes::from(sig),
            leaf_index: pick.index(size as usize) as u32,
            tree_size: size,
            blinding,
            path: (0..d).map(|k| [seed.wrapping_add(k as u8); 32]).collect(),
        };
        let enc = bs.encode().unwrap();
        prop_assert!(enc.len() <= MAX_ENCODED_LEN);
        prop_assert_eq!(BatchSignature::decode(&enc).unwrap(), bs);
        // Flipping any bit of a valid encoding never panics the decoder.
        let mut flipped = enc.clone();
        flip(&mut flipped, usize::from(seed) * 7);
        let _ = BatchSignature::decode(&flipped);
    }
}

// ---------------------------------------------------------------------------------------------
// The checked-in test vector

const VECTOR_PATH: &str = "tests/vectors/batch-v1.json";
const VECTOR: &str = include_str!("../../tests/vectors/batch-v1.json");
const VECTOR_SIZE: usize = 5;

fn hex_list(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| tree::hex(h)).collect()
}

/// The whole test vector, computed from its fixed inputs.
fn vector_json() -> serde_json::Value {
    use p256::pkcs8::LineEnding;
    let scheme = Scheme::EcdsaSha256;
    let key = p256_key();
    let messages: Vec<String> = (0..VECTOR_SIZE).map(|i| format!("payload {i}")).collect();
    let payloads = digests(VECTOR_SIZE);
    let blindings = fixed_blindings(VECTOR_SIZE);
    let (tree, root_sig) = signed_tree(&payloads);
    let input = root_signing_input(scheme, &key_name(), 3, VECTOR_SIZE as u32, &tree.root());
    let items: Vec<serde_json::Value> = (0..VECTOR_SIZE)
        .map(|i| {
            let sig = tree.signature(i, root_sig.clone()).unwrap();
            let blob = BatchBlob {
                scheme,
                key: key_name(),
                version: 3,
                signature: sig.clone(),
            };
            serde_json::json!({
                "index": i,
                "message": messages[i],
                "payload": tree::hex(&payloads[i]),
                "blinding": tree::hex(&blindings[i]),
                "path": hex_list(&sig.path),
                "encoding": tree::hex(&sig.encode().unwrap()),
                "blob_text": blob.to_text().unwrap(),
            })
        })
        .collect();
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    serde_json::json!({
        "description": "signerd Merkle batch signature v1 (docs/BATCH.md): 5 payloads under one \
            ecdsa-sha256 root signature. payload_i = SHA-256(message_i); blinding_i = \
            SHA-256(\"blinding i\"); the P-256 private scalar is a test key; the root signature \
            is RFC 6979 deterministic ECDSA. Regenerate: cargo test -p signer-proto --lib \
            merkle::tests::write_vector -- --ignored",
        "scheme": scheme.as_str(),
        "scheme_code": scheme.code(),
        "key": key_name().as_str(),
        "key_version": 3,
        "p256_private_scalar": tree::hex(&VECTOR_SCALAR),
        "public_key_spki_der": tree::hex(&spki(&key)),
        "public_key_pem": pem,
        "tree_size": VECTOR_SIZE,
        "depth": tree.depth(),
        "levels": tree.levels().iter().map(|l| hex_list(l)).collect::<Vec<_>>(),
        "root": tree::hex(&tree.root()),
        "signing_message": tree::hex(input.message()),
        "to_be_signed": tree::hex(input.to_be_signed()),
        "root_signature": tree::hex(&root_sig),
        "items": items,
    })
}

/// Writes `tests/vectors/batch-v1.json` (run with `--ignored` after changing the construction).
#[test]
#[ignore]
fn write_vector() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(VECTOR_PATH);
    let text = serde_json::to_string_pretty(&vector_json()).unwrap() + "\n";
    std::fs::write(&path, text).unwrap();
}

#[test]
fn checked_in_vector_matches_and_verifies() {
    let file: serde_json::Value = serde_json::from_str(VECTOR).unwrap();
    assert_eq!(
        file,
        vector_json(),
        "regenerate {VECTOR_PATH} (see its description)"
    );
    // And the file's own bytes verify, independently of how they were produced.
    let unhex = |v: &serde_json::Value| -> Vec<u8> {
        let s = v.as_str().unwrap();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let spki = unhex(&file["public_key_spki_der"]);
    let key = KeyName::new(file["key"].as_str().unwrap()).unwrap();
    for item in file["items"].as_array().unwrap() {
        let sig = BatchSignature::decode(&unhex(&item["encoding"])).unwrap();
        let payload = unhex(&item["payload"]);
        verify_batch(&spki, Scheme::EcdsaSha256, &key, 3, &payload, &sig).unwrap();
        let blob = BatchBlob::from_text(item["blob_text"].as_str().unwrap()).unwrap();
        blob.verify_message(&spki, item["message"].as_str().unwrap().as_bytes())
            .unwrap();
    }
}
