//! The audit log's tools from the outside: logs written by the library (many small segments,
//! a restart, an archive), checked by `signerd audit archive` / `audit verify` through the
//! binary and by the independent Python verifier (`tools/verify_audit.py`, `cryptography`
//! package), which must agree with the Rust verifier on good logs, archives and tampering.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use signerd::audit::{
    archive, sha256, verify, verify_with, Anchor, AuditConfig, AuditEntry, AuditLog, CheckpointKey,
    CheckpointSigner, VerifyOptions,
};

use crate::batch_python::{describe, python_available};

/// A software audit key.
struct Soft(p256::ecdsa::SigningKey);

impl Soft {
    fn new() -> Soft {
        Soft(p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap())
    }
}

impl CheckpointSigner for Soft {
    fn sign(&mut self, digest: &[u8; 32]) -> Result<Vec<u8>, String> {
        let sig: p256::ecdsa::Signature = self.0.sign_prehash(digest).map_err(|e| e.to_string())?;
        Ok(sig.to_der().as_bytes().to_vec())
    }

    fn key(&self) -> CheckpointKey {
        let spki = self.0.verifying_key().to_public_key_der().unwrap();
        CheckpointKey {
            name: "audit-test".into(),
            version: 1,
            spki_der: spki.as_bytes().to_vec(),
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Opens (or continues) the log at `path` with 4 KiB segments and a checkpoint every 20 records.
fn open(path: &Path) -> AuditLog {
    let cfg = AuditConfig {
        rotate_bytes: 4096,
        checkpoint_records: 20,
        ..AuditConfig::new(path)
    };
    AuditLog::open(cfg, Box::new(Soft::new())).unwrap()
}

/// Commits `n` sign records, one at a time, each durable before the next.
fn commit(log: &AuditLog, n: u64) {
    for i in 0..n {
        let (tx, rx) = std::sync::mpsc::channel();
        let entry = AuditEntry {
            time: std::time::SystemTime::now(),
            identity: "CN=app".into(),
            op: "sign",
            key: Some("k".into()),
            version: Some(1),
            payload_sha256: Some(sha256(&i.to_be_bytes())),
            status: "OK",
            partition: Some("p0".into()),
            detail: None,
        };
        log.commit(
            vec![entry],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap().unwrap();
    }
}

fn signerd(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn python(args: &[&str]) -> Output {
    Command::new("python3")
        .arg(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tools/verify_audit.py"
        )))
        .args(args)
        .output()
        .unwrap()
}

/// The Python verifier's verdict, which must match `rust_ok`; its stdout.
fn python_agrees(args: &[&str], rust_ok: bool) -> String {
    let out = python(args);
    assert_eq!(
        out.status.success(),
        rust_ok,
        "Python and Rust disagree on {args:?}: {}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `signerd audit archive` while the log is written: the moved segments verify as an archive
/// (`--prefix`), the live log from the printed anchor (`--after`), and not without it.
#[test]
fn audit_archive_and_verify_from_the_anchor() {
    let dir = scratch("archive-cli");
    let path = dir.join("audit/audit.log");
    let log = open(&path);
    commit(&log, 150);
    let p = path.to_str().unwrap();
    let archive_dir = dir.join("archive");
    let a = archive_dir.to_str().unwrap();
    let (ok, text) = signerd(&["audit", "archive", p, "--to", a]);
    assert!(ok, "{text}");
    let anchor = text
        .lines()
        .find_map(|l| l.strip_prefix("anchor (the archive's head): "))
        .unwrap_or_else(|| panic!("no anchor printed: {text}"))
        .to_owned();
    let moved = std::fs::read_dir(&archive_dir).unwrap().count();
    assert!(moved >= 2, "segments moved: {moved}\n{text}");

    commit(&log, 50); // the daemon goes on writing
    log.close();
    let first = std::fs::read_dir(&archive_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let (ok, text) = signerd(&["audit", "verify", first.to_str().unwrap(), "--prefix"]);
    assert!(ok && text.starts_with("OK"), "{text}");
    assert!(text.contains("archive (open end)"), "{text}");
    let head = format!("head: seq {}", anchor.replace(':', " sha256 "));
    assert!(text.contains(&head), "{text}");
    let (ok, text) = signerd(&["audit", "verify", p, "--after", &anchor]);
    assert!(ok && text.contains("sealed"), "{text}");
    assert!(text.contains("continues from the anchor"), "{text}");
    let (ok, text) = signerd(&["audit", "verify", p]);
    assert!(!ok && text.contains("begins at seq"), "{text}");
    let (ok, text) = signerd(&["audit", "verify", p, "--after", "12:zz"]);
    assert!(!ok && text.contains("anchor hash"), "{text}");
}

/// The independent Python verifier agrees with the Rust one: whole logs with segments and a
/// restart, live logs, archives and their continuation, a pinned key, and tampering.
#[test]
fn python_verifier_agrees_on_logs_archives_and_tampering() {
    if python_available().is_none() {
        return;
    }
    let dir = scratch("python");
    let path = dir.join("audit.log");
    let p = path.to_str().unwrap();
    let log = open(&path);
    commit(&log, 90);
    // Live (unsealed, still written): passes only as live, for both.
    let rust_live = verify(&path, None, true).unwrap();
    let out = python_agrees(&[p, "--live"], true);
    assert!(out.starts_with("OK: "), "{out}");
    python_agrees(&[p], verify(&path, None, false).is_ok());
    log.close();
    // A restart continues the chain; then the log is sealed.
    let log = open(&path);
    commit(&log, 40);
    log.close();
    let whole = verify(&path, None, false).unwrap();
    assert!(
        whole.segments.len() >= 4 && whole.restarts == 1,
        "{whole:?}"
    );
    assert!(whole.records > rust_live.records);
    let out = python_agrees(&[p], true);
    let head = format!(
        "head {}:{}",
        whole.head_seq.unwrap(),
        whole.head_hash.as_ref().unwrap()
    );
    assert!(
        out.contains(&format!("OK: {} records", whole.records)) && out.contains(&head),
        "{out}"
    );
    // Any segment names the log.
    python_agrees(&[whole.segments[1].to_str().unwrap()], true);
    // Pinned: the right key passes, another fails.
    let pem = |key: &p256::ecdsa::SigningKey, name: &str| {
        let f = dir.join(name);
        let text = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        std::fs::write(&f, text).unwrap();
        f
    };
    let good = pem(&Soft::new().0, "good.pem");
    let other = pem(
        &p256::ecdsa::SigningKey::from_bytes(&[9u8; 32].into()).unwrap(),
        "other.pem",
    );
    python_agrees(&[p, "--public-key", good.to_str().unwrap()], true);
    python_agrees(&[p, "--public-key", other.to_str().unwrap()], false);

    // Archive: the beginning verifies as a prefix, the rest from its head, not without it.
    let archive_dir = dir.join("archive");
    let r = archive(&path, &archive_dir, 1, None).unwrap();
    let anchor: Anchor = r.anchor.unwrap();
    let first = r.moved[0].to_str().unwrap().to_owned();
    python_agrees(&[&first, "--prefix"], true);
    python_agrees(&[&first], false);
    let after = anchor.to_string();
    python_agrees(&[p, "--after", &after], true);
    python_agrees(&[p], false);
    let mut wrong = anchor;
    wrong.hash[31] ^= 0x80;
    assert!(verify_with(&path, &opts_after(wrong)).is_err());
    python_agrees(&[p, "--after", &wrong.to_string()], false);

    // Tampering in the live part: an edited digest, then a removed record.
    let live = verify_with(&path, &opts_after(anchor)).unwrap();
    let seg = &live.segments[0];
    let text = std::fs::read_to_string(seg).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let target = lines
        .iter()
        .position(|l| l.contains("\"kind\":\"entry\""))
        .unwrap();
    let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    edited[target] = edited[target].replacen("\"status\":\"OK\"", "\"status\":\"NO\"", 1);
    assert_ne!(edited[target], lines[target], "the edit changed the record");
    std::fs::write(seg, edited.join("\n") + "\n").unwrap();
    assert!(verify_with(&path, &opts_after(anchor)).is_err());
    python_agrees(&[p, "--after", &after], false);
    let mut removed: Vec<&str> = lines.clone();
    removed.remove(target);
    std::fs::write(seg, removed.join("\n") + "\n").unwrap();
    assert!(verify_with(&path, &opts_after(anchor)).is_err());
    python_agrees(&[p, "--after", &after], false);
    std::fs::write(seg, text).unwrap();
    python_agrees(&[p, "--after", &after], true);
}

fn opts_after(anchor: Anchor) -> VerifyOptions<'static> {
    VerifyOptions {
        after: Some(anchor),
        ..VerifyOptions::default()
    }
}
