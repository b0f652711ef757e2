//! `signerd audit verify FILE [--public-key PEM] [--live]`: check an audit log's hash chain,
//! checkpoints and seal, and name the first bad record.

use std::path::Path;

use certnode_signer::audit::{verify, AuditError, VerifyReport};
use p256::ecdsa::VerifyingKey;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};

/// Verifies the log that `file` belongs to (active file or any rotated segment) and prints a
/// report. `public_key_pem`: the audit key's public key (PEM `PUBLIC KEY`, or DER) to pin;
/// without it the checkpoints are checked against the key they carry (see docs/AUDIT.md).
/// `live`: the daemon may still be writing, so an unsealed end is reported, not failed.
pub fn verify_cmd(file: &Path, public_key_pem: Option<&Path>, live: bool) -> Result<(), String> {
    let trusted = public_key_pem.map(read_public_key).transpose()?;
    match verify(file, trusted.as_deref(), live) {
        Ok(report) => {
            print_ok(&report, live);
            Ok(())
        }
        Err(AuditError::Verify(failure)) => {
            print_progress(&failure.report);
            Err(format!("FAILED: {}", failure.bad))
        }
        Err(e) => Err(format!("cannot verify {}: {e}", file.display())),
    }
}

fn print_ok(r: &VerifyReport, live: bool) {
    let key = match &r.key {
        Some(k) => format!(
            "key {} v{} fingerprint {}",
            k.name, k.version, k.fingerprint
        ),
        None => "no checkpoint key yet".to_string(),
    };
    println!(
        "OK: {} records in {} segments, {} checkpoints, {key}",
        r.records,
        r.segments.len(),
        r.checkpoints
    );
    match &r.key {
        Some(k) if !k.pinned => println!(
            "  key NOT pinned: checkpoints were checked against the key they carry; anyone able \
             to rewrite the whole log could re-sign it. Pin the audit key with --public-key."
        ),
        _ => {}
    }
    if let (Some(seq), Some(hash)) = (r.head_seq, &r.head_hash) {
        println!("  head: seq {seq} sha256 {hash}");
    }
    if r.sealed {
        println!("  sealed: closed cleanly after a final checkpoint");
    } else if live {
        let covered = r.covered_seq.map_or("no checkpoint yet".to_string(), |c| {
            format!("last checkpoint covers seq {c}")
        });
        println!(
            "  open (live): {covered}; {} newer records not yet covered by a checkpoint",
            r.uncovered
        );
    }
    if r.in_progress_bytes > 0 {
        println!(
            "  {} bytes of a record being written were not checked",
            r.in_progress_bytes
        );
    }
    if r.restarts > 0 {
        println!(
            "  {} restarts, {} after an unclean end; {} torn bytes declared dropped",
            r.restarts, r.unclean_restarts, r.dropped_bytes
        );
    }
}

fn print_progress(r: &VerifyReport) {
    println!(
        "checked up to the failure: {} records, {} checkpoints, in {} segment files",
        r.records,
        r.checkpoints,
        r.segments.len()
    );
}

/// The SubjectPublicKeyInfo DER of a P-256 public key given as PEM (`PUBLIC KEY`) or DER.
fn read_public_key(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let key = match std::str::from_utf8(&bytes) {
        Ok(text) if text.contains("-----BEGIN") => VerifyingKey::from_public_key_pem(text)
            .map_err(|e| format!("{}: not a P-256 PUBLIC KEY PEM: {e}", path.display()))?,
        _ => VerifyingKey::from_public_key_der(&bytes)
            .map_err(|e| format!("{}: not a P-256 SubjectPublicKeyInfo: {e}", path.display()))?,
    };
    key.to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| format!("{}: {e}", path.display()))
}
