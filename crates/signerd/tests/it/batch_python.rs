//! Merkle batch signatures checked by the independent Python verifier (`tools/verify_batch.py`,
//! `cryptography` package): the checked-in vector, and fresh software-signed batches (P-256,
//! RSA-PSS-2048, Ed25519; several tree sizes) exported as text blobs. Tampered blobs must fail.
//!
//! Needs `python3` with `cryptography`; the tests fail without them unless
//! `SIGNERD_SKIP_PYTHON=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use base64::Engine as _;
use bytes::Bytes;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::pkcs8::EncodePublicKey;
use rand::rngs::OsRng;
use rand::RngCore;
use signer_proto::merkle::{
    payload_for_message, root_signing_input, verify_batch, BatchBlob, Tree,
};
use signerd::{KeyName, Scheme};

const RSA_TEST_KEY: &str =
    include_str!("../../../signer-proto/tests/vectors/rsa-2048-test-key.pem");

/// The workspace root (tools/ and the proto crate's test vectors are found from it).
fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// `None` when the user opted out with `SIGNERD_SKIP_PYTHON=1`; panics when python3 or
/// `cryptography` is missing otherwise.
pub(crate) fn python_available() -> Option<()> {
    if std::env::var("SIGNERD_SKIP_PYTHON").as_deref() == Ok("1") {
        eprintln!("SIGNERD_SKIP_PYTHON=1: skipping the Python verifier");
        return None;
    }
    let probe = Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .expect("python3 is needed for the independent verifier (or set SIGNERD_SKIP_PYTHON=1)");
    assert!(
        probe.status.success(),
        "python3 cannot import `cryptography`: python3 -m pip install cryptography \
         (or set SIGNERD_SKIP_PYTHON=1): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    Some(())
}

fn run_verifier(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(repo().join("tools/verify_batch.py"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap()
}

pub(crate) fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pem(spki_der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(spki_der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

/// A software signing key and its SubjectPublicKeyInfo.
enum SoftKey {
    P256(p256::ecdsa::SigningKey),
    RsaPss(rsa::RsaPrivateKey),
    Ed25519(ed25519_dalek::SigningKey),
}

impl SoftKey {
    fn scheme(&self) -> Scheme {
        match self {
            SoftKey::P256(_) => Scheme::EcdsaSha256,
            SoftKey::RsaPss(_) => Scheme::RsaPssSha256,
            SoftKey::Ed25519(_) => Scheme::Ed25519,
        }
    }

    fn spki(&self) -> Vec<u8> {
        match self {
            SoftKey::P256(k) => k.verifying_key().to_public_key_der().unwrap().to_vec(),
            SoftKey::RsaPss(k) => k.to_public_key().to_public_key_der().unwrap().to_vec(),
            SoftKey::Ed25519(k) => {
                // SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING { key } } (RFC 8410)
                let mut der = hex_bytes("302a300506032b6570032100");
                der.extend_from_slice(k.verifying_key().as_bytes());
                der
            }
        }
    }

    /// A plain signature over `tbs` (a digest; the message for Ed25519).
    fn sign(&self, tbs: &[u8]) -> Bytes {
        match self {
            SoftKey::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign_prehash(tbs).unwrap();
                Bytes::from(sig.to_der().as_bytes().to_vec())
            }
            SoftKey::RsaPss(k) => {
                let pss = rsa::Pss::new_with_salt::<sha2::Sha256>(32);
                Bytes::from(k.sign_with_rng(&mut OsRng, pss, tbs).unwrap())
            }
            SoftKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                Bytes::from(k.sign(tbs).to_bytes().to_vec())
            }
        }
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn keys() -> Vec<SoftKey> {
    use rsa::pkcs8::DecodePrivateKey;
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    vec![
        SoftKey::P256(p256::ecdsa::SigningKey::random(&mut OsRng)),
        SoftKey::RsaPss(rsa::RsaPrivateKey::from_pkcs8_pem(RSA_TEST_KEY).unwrap()),
        SoftKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)),
    ]
}

fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn python_verifies_the_checked_in_vector() {
    if python_available().is_none() {
        return;
    }
    let out = run_verifier(&["vector", "crates/signer-proto/tests/vectors/batch-v1.json"]);
    assert!(out.status.success(), "{}", describe(&out));
}

/// One verifier run: its arguments, the exit code it must have, and a label for failures.
struct Check {
    args: Vec<String>,
    expect: i32,
    label: String,
}

/// Runs every check as its own process, all at once, and asserts each exit code.
fn run_all(checks: Vec<Check>) {
    let children: Vec<_> = checks
        .into_iter()
        .map(|c| {
            let child = Command::new("python3")
                .arg(repo().join("tools/verify_batch.py"))
                .args(&c.args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (c, child)
        })
        .collect();
    for (check, child) in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(check.expect),
            "{}: {}",
            check.label,
            describe(&out)
        );
    }
}

#[test]
fn python_verifies_software_signed_batches_and_rejects_tampering() {
    if python_available().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let name = KeyName::new("batch-py").unwrap();
    let mut checks = Vec::new();
    for key in keys() {
        let scheme = key.scheme();
        let spki = key.spki();
        let pem_path = write(dir.path(), &format!("{scheme}.pem"), pem(&spki));
        for size in [1usize, 3, 33] {
            let messages: Vec<Vec<u8>> = (0..size)
                .map(|i| format!("{scheme} message {i} of {size}").into_bytes())
                .collect();
            let payloads: Vec<Vec<u8>> = messages
                .iter()
                .map(|m| payload_for_message(scheme, m))
                .collect();
            let tree = Tree::build_with_rng(&payloads, &mut OsRng).unwrap();
            let input = root_signing_input(scheme, &name, 2, size as u32, &tree.root());
            let root_signature = key.sign(input.to_be_signed());
            let indices = if size > 3 {
                vec![0, size / 2, size - 1]
            } else {
                vec![size - 1]
            };
            for index in indices {
                let signature = tree.signature(index, root_signature.clone()).unwrap();
                verify_batch(&spki, scheme, &name, 2, &payloads[index], &signature).unwrap();
                let blob = BatchBlob {
                    scheme,
                    key: name.clone(),
                    version: 2,
                    signature,
                };
                let tag = format!("{scheme}-{size}-{index}");
                let msg = write(dir.path(), &format!("{tag}.msg"), &messages[index]);
                let args = |blob_file: &str, message: &str| -> Vec<String> {
                    [
                        "blob",
                        "--public-key",
                        &pem_path,
                        "--message-file",
                        message,
                        "--blob",
                        blob_file,
                    ]
                    .map(str::to_owned)
                    .to_vec()
                };
                let text = write(dir.path(), &format!("{tag}.txt"), blob.to_text().unwrap());
                checks.push(Check {
                    args: args(&text, &msg),
                    expect: 0,
                    label: format!("{tag}: valid"),
                });
                if size < 33 || index != size / 2 {
                    continue;
                }
                // Tampered (exit 1, not a usage error): the root signature, the blinding, a path
                // hash, the key version, the message.
                let mut bad_sig = blob.clone();
                let mut s = bad_sig.signature.root_signature.to_vec();
                let last = s.len() - 1;
                s[last] ^= 1;
                bad_sig.signature.root_signature = Bytes::from(s);
                let mut bad_blinding = blob.clone();
                bad_blinding.signature.blinding[0] ^= 0x80;
                let mut bad_path = blob.clone();
                bad_path.signature.path[2][31] ^= 0x01;
                let mut bad_version = blob.clone();
                bad_version.version = 3;
                for (what, tampered) in [
                    ("root signature", bad_sig),
                    ("blinding", bad_blinding),
                    ("path", bad_path),
                    ("version", bad_version),
                ] {
                    let file = write(
                        dir.path(),
                        &format!("{tag}-{what}.txt"),
                        tampered.to_text().unwrap(),
                    );
                    checks.push(Check {
                        args: args(&file, &msg),
                        expect: 1,
                        label: format!("{tag}: tampered {what}"),
                    });
                }
                let other = write(dir.path(), &format!("{tag}.other"), b"another message");
                checks.push(Check {
                    args: args(&text, &other),
                    expect: 1,
                    label: format!("{tag}: another message"),
                });
            }
        }
    }
    run_all(checks);
}
