//! Command-line contract: bad configs exit 64 and say what is wrong.

use std::process::Command;

#[test]
fn bad_config_exits_64_and_names_the_problem() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n", "bogus"),
        (
            "[engine]\nqueue_depth = 0\n[providers.x]\nmodule = \"m\"\npartitions = []\n",
            "queue_depth",
        ),
        ("this is not toml", "config"),
    ];
    for (text, needle) in cases {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{text:?}: expected {needle:?} in {stderr}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
        .args(["serve", "--config"])
        .arg(dir.join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

/// `signerd audit archive` on a log with many small segments, while it is written: the moved
/// segments verify as an archive (`--prefix`), the live log from the printed anchor
/// (`--after`), and not without it.
#[test]
fn audit_archive_and_verify_from_the_anchor() {
    use certnode_signer::audit::{
        AuditConfig, AuditEntry, AuditLog, CheckpointKey, CheckpointSigner,
    };
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    use p256::pkcs8::EncodePublicKey;

    struct Soft(p256::ecdsa::SigningKey);
    impl CheckpointSigner for Soft {
        fn sign(&mut self, digest: &[u8; 32]) -> Result<Vec<u8>, String> {
            let sig: p256::ecdsa::Signature =
                self.0.sign_prehash(digest).map_err(|e| e.to_string())?;
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

    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("archive-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("audit/audit.log");
    let key = p256::ecdsa::SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
    let log = AuditLog::open(
        AuditConfig {
            rotate_bytes: 4096,
            checkpoint_records: 20,
            ..AuditConfig::new(&path)
        },
        Box::new(Soft(key)),
    )
    .unwrap();
    let commit = |n: u64| {
        for i in 0..n {
            let (tx, rx) = std::sync::mpsc::channel();
            let entry = AuditEntry {
                time: std::time::SystemTime::now(),
                identity: "CN=app".into(),
                op: "sign",
                key: Some("k".into()),
                version: Some(1),
                payload_sha256: Some(certnode_signer::audit::sha256(&i.to_be_bytes())),
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
    };
    commit(150);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let p = path.to_str().unwrap();
    let archive = dir.join("archive");
    let a = archive.to_str().unwrap();
    let (ok, text) = run(&["audit", "archive", p, "--to", a]);
    assert!(ok, "{text}");
    let anchor = text
        .lines()
        .find_map(|l| l.strip_prefix("anchor (the archive's head): "))
        .unwrap_or_else(|| panic!("no anchor printed: {text}"))
        .to_owned();
    let moved = std::fs::read_dir(&archive).unwrap().count();
    assert!(moved >= 2, "segments moved: {moved}\n{text}");

    commit(50); // the daemon goes on writing
    log.close();
    let first = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let (ok, text) = run(&["audit", "verify", first.to_str().unwrap(), "--prefix"]);
    assert!(ok && text.starts_with("OK"), "{text}");
    assert!(text.contains("archive (open end)"), "{text}");
    assert!(
        text.contains(&format!("head: seq {}", anchor.replace(':', " sha256 "))),
        "{text}"
    );
    let (ok, text) = run(&["audit", "verify", p, "--after", &anchor]);
    assert!(ok && text.contains("sealed"), "{text}");
    assert!(text.contains("continues from the anchor"), "{text}");
    let (ok, text) = run(&["audit", "verify", p]);
    assert!(!ok && text.contains("begins at seq"), "{text}");
    let (ok, text) = run(&["audit", "verify", p, "--after", "12:zz"]);
    assert!(!ok && text.contains("anchor hash"), "{text}");
}
