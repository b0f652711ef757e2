//! Audit log tests: a software P-256 checkpoint signer, helpers to write and edit logs, and
//! one file per theme.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;

use super::*;

mod archive;
mod lifecycle;
mod proptests;
mod tamper;

/// A software audit key (deterministic from `seed`); other modules' tests open logs with it.
pub(crate) struct SoftSigner {
    key: SigningKey,
    name: String,
}

impl SoftSigner {
    pub fn new(seed: u8) -> SoftSigner {
        let mut bytes = [0x11u8; 32];
        bytes[0] = seed;
        SoftSigner {
            key: SigningKey::from_bytes(&bytes.into()).unwrap(),
            name: format!("audit-{seed}"),
        }
    }

    pub fn spki(seed: u8) -> Vec<u8> {
        SoftSigner::new(seed).key().spki_der
    }
}

impl CheckpointSigner for SoftSigner {
    fn sign(&mut self, digest: &[u8; 32]) -> Result<Vec<u8>, String> {
        let sig: Signature = self.key.sign_prehash(digest).map_err(|e| e.to_string())?;
        Ok(sig.to_der().as_bytes().to_vec())
    }

    fn key(&self) -> CheckpointKey {
        CheckpointKey {
            name: self.name.clone(),
            version: 1,
            spki_der: self
                .key
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes()
                .to_vec(),
        }
    }
}

pub(super) fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        time: SystemTime::now(),
        identity: Arc::from("CN=app-1,O=example"),
        op: "sign",
        key: Some(Arc::from("payments")),
        version: Some(3),
        payload_sha256: Some(sha256(&i.to_be_bytes())),
        status: "OK",
        partition: Some(Arc::from("p0")),
        detail: None,
    }
}

pub(crate) fn cfg(dir: &Path) -> AuditConfig {
    AuditConfig {
        checkpoint_records: 10,
        checkpoint_interval: Duration::from_millis(20),
        commit_interval: Duration::ZERO,
        ..AuditConfig::new(dir.join("audit.log"))
    }
}

/// Commits `entries` and waits for `done`.
pub(super) fn commit_wait(log: &AuditLog, entries: Vec<AuditEntry>) -> Result<(), AuditError> {
    let (tx, rx) = crossbeam::channel::bounded(1);
    log.commit(
        entries,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv_timeout(Duration::from_secs(10))
        .expect("done was called")
}

/// Writes `n` entries in batches of `batch`, pausing so that checkpoints land in between.
pub(super) fn fill(log: &AuditLog, n: u64, batch: u64) {
    let mut i = 0;
    let mut batches = 0;
    while i < n {
        let k = batch.min(n - i);
        commit_wait(log, (i..i + k).map(entry).collect()).unwrap();
        i += k;
        batches += 1;
        if batches % 5 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A sealed log with `n` entries and several checkpoints, in one file.
pub(super) fn sealed_log(dir: &Path, n: u64) -> PathBuf {
    let c = cfg(dir);
    let path = c.path.clone();
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, n, 3);
    log.close();
    path
}

/// The lines of a file, without newlines (a torn last line included).
pub(super) fn lines(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    let mut v: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    if v.last().is_some_and(Vec::is_empty) {
        v.pop();
    }
    v
}

pub(super) fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l);
        data.push(b'\n');
    }
    std::fs::write(path, data).unwrap();
}

pub(super) fn json(line: &[u8]) -> serde_json::Value {
    serde_json::from_slice(line).unwrap()
}

pub(super) fn kind(line: &[u8]) -> String {
    json(line)["kind"].as_str().unwrap().to_string()
}

/// Index of the first line of `kind` at or after `from`.
pub(super) fn find_kind(lines: &[Vec<u8>], kind_: &str, from: usize) -> usize {
    (from..lines.len())
        .find(|&i| kind(&lines[i]) == kind_)
        .unwrap_or_else(|| panic!("no {kind_} record after line {from}"))
}

/// The verification failure, or a panic if the log verified.
pub(super) fn failure(path: &Path, trusted: Option<&[u8]>, live: bool) -> BadRecord {
    match verify(path, trusted, live) {
        Err(AuditError::Verify(f)) => f.bad,
        other => panic!("expected a verification failure, got {other:?}"),
    }
}
