//! Merkle batch signatures on a real daemon (docs/BATCH.md): concurrent requests that accept a
//! batch signature share trees, each caller's proof verifies (in the library, on the server's
//! verify op, and with the independent Python verifier), plain clients keep getting plain
//! signatures, a `required` key refuses them, a poisoned request fails alone, and the audit
//! log holds one record per leaf plus one per root.

use std::collections::HashSet;
use std::process::Command;

use sha2::{Digest, Sha256};
use signer_client::{AnySignature, Client, ClientError, SignOptions, SignatureForm, Status};
use signer_proto::merkle::BatchBlob;
use signerd::Scheme;

use crate::daemon::{ec_key, random_bytes, Daemon};

const CONCURRENT: usize = 64;

/// Sign calls that accept a Merkle batch signature (`ACCEPT_BATCH_SIGNATURE`).
fn accepting_batch() -> SignOptions {
    SignOptions::new().accept_batch(true)
}
const ROUNDS: usize = 4;

async fn start(name: &str) -> Daemon {
    Daemon::start_custom(
        name,
        "",
        &[],
        "[batch]\ndefault = \"allowed\"\n[batch.keys]\n\"strict-*\" = \"required\"\n\
         \"plain-*\" = \"off\"\n",
    )
    .await
}

async fn key(admin: &Client, prefix: &str) -> (String, Vec<u8>) {
    let name = ec_key(admin, prefix).await;
    let spki = admin.public_key(&name, None).await.unwrap().spki_der;
    (name, spki.to_vec())
}

/// Signs `payload` plainly and has the server verify the signature.
async fn plain_ok(app: &Client, key: &str, scheme: Scheme, payload: Vec<u8>) {
    let plain = app.sign(key, scheme, payload.clone()).await.unwrap();
    assert!(!plain.signature.is_empty());
    let valid = app.verify(key, None, scheme, payload, plain.signature);
    assert!(valid.await.unwrap(), "the plain signature verifies");
}

/// Signs `n` random digests at once, accepting batch signatures.
async fn burst(
    app: &Client,
    key: &str,
    n: usize,
) -> Vec<(Vec<u8>, Result<AnySignature, ClientError>)> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (app, key) = (app.clone(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let digest = random_bytes(32);
            let r = app
                .sign_with(&key, Scheme::EcdsaSha256, digest.clone(), accepting_batch())
                .await;
            (digest, r)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_trees_and_every_proof_verifies() {
    let mut d = start("merkle").await;
    let admin = d.admin().await;
    let app = d.app().await;
    let (name, spki) = key(&admin, "batched").await;

    let mut sizes = Vec::new();
    let mut roots = HashSet::new();
    let mut kept = Vec::new();
    for _ in 0..ROUNDS {
        for (digest, r) in burst(&app, &name, CONCURRENT).await {
            let sig = r.unwrap();
            assert!(sig.is_batch(), "a batch signature for an allowed key");
            sig.verify(&spki, &digest).unwrap();
            let SignatureForm::Batch(b) = &sig.signature else {
                unreachable!()
            };
            sizes.push(b.tree_size);
            roots.insert(b.root_signature.clone());
            // One leaf's proof never verifies another payload.
            assert!(sig.verify(&spki, &random_bytes(32)).is_err());
            kept.push((digest, sig));
        }
    }
    let n = kept.len();
    eprintln!(
        "{n} batch signatures from {} trees; largest tree {}",
        roots.len(),
        sizes.iter().max().unwrap()
    );
    assert!(
        roots.len() < n,
        "concurrent requests shared trees ({} roots for {n} signatures)",
        roots.len()
    );
    // The server's verify op accepts the batch form, and rejects it for another payload.
    let (digest, sig) = &kept[0];
    assert!(app.verify_any(sig, digest.clone()).await.unwrap());
    assert!(!app.verify_any(sig, random_bytes(32)).await.unwrap());

    // A plain client gets a plain signature for the same key.
    plain_ok(&app, &name, Scheme::EcdsaSha256, random_bytes(32)).await;

    // The audit log: one record per leaf (the caller's identity and digest), one per root.
    d.terminate();
    let text = std::fs::read_to_string(d.path("audit/audit.log")).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let leaf_hashes: HashSet<String> = records
        .iter()
        .filter(|r| {
            r["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("batch leaf"))
        })
        .map(|r| {
            assert_eq!(r["identity"], "signerd://dev/app");
            assert_eq!(r["status"], "ok");
            r["payload_sha256"].as_str().unwrap().to_owned()
        })
        .collect();
    for (digest, _) in &kept {
        let h = signerd::hsm::objects::hex(&Sha256::digest(digest));
        assert!(leaf_hashes.contains(&h), "leaf {h} is in the audit log");
    }
    let root_records = records
        .iter()
        .filter(|r| r["identity"] == "signerd/batcher" && r["op"] == "sign")
        .count();
    assert_eq!(root_records, roots.len(), "one record per root signature");
    let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
        .args(["audit", "verify"])
        .arg(d.path("audit/audit.log"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_poison_and_an_offline_blob_for_a_relying_party() {
    let d = start("merkle-modes").await;
    let admin = d.admin().await;
    let app = d.app().await;

    // `required`: a client that does not accept batch signatures is refused (INVALID_ARGUMENT,
    // the wire status of a failed precondition), with a message that says what to do.
    let (strict, spki) = key(&admin, "strict").await;
    let e = app
        .sign(&strict, Scheme::EcdsaSha256, random_bytes(32))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Status {
                status: Status::InvalidArgument,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("ACCEPT_BATCH_SIGNATURE"), "{e}");
    // `off`: plain even for a client that accepts batch signatures.
    let (off, off_spki) = key(&admin, "plain").await;
    let digest = random_bytes(32);
    let sig = app
        .sign_with(&off, Scheme::EcdsaSha256, digest.clone(), accepting_batch())
        .await
        .unwrap();
    assert!(!sig.is_batch());
    sig.verify(&off_spki, &digest).unwrap();

    // A poisoned request (a 31-byte "digest") fails alone; the others are signed.
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (app, key) = (app.clone(), strict.clone());
        tasks.push(tokio::spawn(async move {
            let digest = random_bytes(if i == 7 { 31 } else { 32 });
            let r = app
                .sign_with(&key, Scheme::EcdsaSha256, digest.clone(), accepting_batch())
                .await;
            (i, digest, r)
        }));
    }
    for t in tasks {
        let (i, digest, r) = t.await.unwrap();
        match r {
            Ok(sig) if i != 7 => sig.verify(&spki, &digest).unwrap(),
            Err(ClientError::Status {
                status: Status::InvalidArgument,
                ..
            }) if i == 7 => {}
            other => panic!("request {i}: {other:?}"),
        }
    }

    // A relying party verifies exported blobs with only the public key and the message: a batch
    // of live signatures (signed at once, so they share trees), each checked by the library and
    // by the independent Python verifier (tools/verify_batch.py, `cryptography` package).
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (app, key) = (app.clone(), strict.clone());
        tasks.push(tokio::spawn(async move {
            let message = format!("pay {i} EUR to account 42").into_bytes();
            let digest = Sha256::digest(&message).to_vec();
            let sig = app
                .sign_with(&key, Scheme::EcdsaSha256, digest, accepting_batch())
                .await
                .unwrap();
            (message, sig)
        }));
    }
    let pk = admin.public_key(&strict, None).await.unwrap();
    std::fs::write(d.path("pk.pem"), pk.pem()).unwrap();
    let python = std::env::var("SIGNERD_SKIP_PYTHON").as_deref() != Ok("1");
    let run = |msg: &str, blob: &str| {
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tools/verify_batch.py"
            ))
            .args(["blob", "--public-key"])
            .arg(d.path("pk.pem"))
            .arg("--message-file")
            .arg(d.path(msg))
            .arg("--blob")
            .arg(d.path(blob))
            .output()
            .unwrap()
    };
    for (i, t) in tasks.into_iter().enumerate() {
        let (message, sig) = t.await.unwrap();
        let text = sig.to_blob().unwrap().to_text().unwrap();
        let back = BatchBlob::from_text(&text).unwrap();
        back.verify_message(&spki, &message).unwrap();
        assert!(back
            .verify_message(&spki, b"pay 1000 EUR to account 42")
            .is_err());
        if python {
            std::fs::write(d.path(&format!("msg{i}")), &message).unwrap();
            std::fs::write(d.path(&format!("sig{i}.txt")), &text).unwrap();
            let ok = run(&format!("msg{i}"), &format!("sig{i}.txt"));
            assert!(
                ok.status.success(),
                "python verifier, live blob {i}: {}{}",
                String::from_utf8_lossy(&ok.stdout),
                String::from_utf8_lossy(&ok.stderr)
            );
        }
    }
    if python {
        std::fs::write(d.path("other"), b"pay 1000 EUR to account 42").unwrap();
        assert!(
            !run("other", "sig0.txt").status.success(),
            "python rejects another message"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_signing_refuses_a_batch_root_message() {
    use signer_proto::merkle::{root_signing_input, Tree};
    use signerd::{KeyName, KeyType};

    let d = start("merkle-root-message").await;
    let admin = d.admin().await;
    let app = d.app().await;
    let name = crate::daemon::unique("ed-allowed");
    let v = admin
        .create_key(&name, KeyType::Ed25519, vec![])
        .await
        .unwrap();
    let spki = admin.public_key(&name, None).await.unwrap().spki_der;

    // A holder of plain sign rights makes up a tree of payloads nobody asked signerd to sign
    // and asks for a plain signature of its root message: that signature would be a valid batch
    // signature for every made-up payload. Refused, with a message that says why.
    let forged: Vec<&[u8]> = vec![b"pay 1000 EUR to account 666", b"pay 1 EUR to account 42"];
    let tree = Tree::build_with_rng(&forged, &mut rand::rngs::OsRng).unwrap();
    let key = KeyName::new(&name).unwrap();
    let input = root_signing_input(Scheme::Ed25519, &key, v.version, 2, &tree.root());
    let e = app
        .sign(&name, Scheme::Ed25519, input.to_be_signed().to_vec())
        .await
        .expect_err("a batch root message is never signed plainly");
    match &e {
        ClientError::Status {
            status: Status::InvalidArgument,
            message,
            ..
        } => assert!(message.contains("batch root context"), "{message}"),
        other => panic!("{other}"),
    }
    // The same one check for a SignBatch's items: the root message fails, its neighbour signs.
    let items = app
        .sign_many(
            &name,
            Scheme::Ed25519,
            [input.to_be_signed().to_vec(), b"pay 2 EUR".to_vec()],
            SignOptions::new(),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            &items[0],
            Err(ClientError::Status {
                status: Status::InvalidArgument,
                ..
            })
        ),
        "{:?}",
        items[0]
    );
    items[1]
        .as_ref()
        .unwrap()
        .verify(&spki, b"pay 2 EUR")
        .unwrap();

    // Any other message is signed plainly, and verifies; as a batch leaf even a message that
    // starts with the root context is fine (a leaf is hashed under its own tag).
    plain_ok(
        &app,
        &name,
        Scheme::Ed25519,
        b"pay 5 EUR to account 42".to_vec(),
    )
    .await;
    let leaf = input.to_be_signed().to_vec();
    let sig = app
        .sign_with(&name, Scheme::Ed25519, leaf.clone(), accepting_batch())
        .await
        .unwrap();
    assert!(sig.is_batch());
    sig.verify(&spki, &leaf).unwrap();
}
