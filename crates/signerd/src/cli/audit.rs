//! `signerd audit verify FILE [--public-key PEM] [--live] [--after SEQ:HASH] [--prefix]`: check
//! an audit log's hash chain, checkpoints and seal, and name the first bad record.
//! `signerd audit archive FILE --to DIR [--keep N]`: move older segments into an archive.

use std::path::Path;

use p256::ecdsa::VerifyingKey;
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use signerd::audit::{archive, verify_with, Anchor, AuditError, VerifyOptions, VerifyReport};

/// Verifies the log that `file` belongs to (active file or any rotated segment) and prints a
/// report. `public_key_pem`: the audit key's public key (PEM `PUBLIC KEY`, or DER) to pin;
/// without it the checkpoints are checked against the key they carry (see docs/AUDIT.md).
/// `live`: the daemon may still be writing, so an unsealed end is reported, not failed.
/// `after`: the log continues from this archived record; `prefix`: the log is an archive.
pub fn verify_cmd(
    file: &Path,
    public_key_pem: Option<&Path>,
    live: bool,
    after: Option<Anchor>,
    prefix: bool,
) -> Result<(), String> {
    let trusted = public_key_pem.map(read_public_key).transpose()?;
    let opts = VerifyOptions {
        trusted_spki: trusted.as_deref(),
        live,
        after,
        prefix,
    };
    match verify_with(file, &opts) {
        Ok(report) => {
            print_ok(&report, live, prefix);
            Ok(())
        }
        Err(AuditError::Verify(failure)) => {
            print_progress(&failure.report);
            Err(format!("FAILED: {}", failure.bad))
        }
        Err(e) => Err(format!("cannot verify {}: {e}", file.display())),
    }
}

/// `signerd audit archive`: moves all but the newest `keep` rotated segments of `file`'s log
/// into `to`, and prints what moved and how to verify both parts.
pub fn archive_cmd(
    file: &Path,
    to: &Path,
    keep: usize,
    public_key_pem: Option<&Path>,
) -> Result<(), String> {
    let trusted = public_key_pem.map(read_public_key).transpose()?;
    let r = match archive(file, to, keep, trusted.as_deref()) {
        Ok(r) => r,
        Err(AuditError::Verify(failure)) => {
            print_progress(&failure.report);
            return Err(format!(
                "FAILED: nothing more was moved: {}. Verify the archive with `audit verify \
                 --prefix` and the log with `--after` its head.",
                failure.bad
            ));
        }
        Err(e) => return Err(format!("cannot archive {}: {e}", file.display())),
    };
    println!("moved {} segments to {}", r.moved.len(), to.display());
    for m in &r.moved {
        println!("  {}", m.display());
    }
    if let Some(a) = &r.archive {
        println!(
            "archive OK: {} records in {} segments, {} checkpoints",
            a.records,
            a.segments.len(),
            a.checkpoints
        );
    }
    println!(
        "live log OK: {} records in {} segments",
        r.live.records,
        r.live.segments.len()
    );
    if let Some(anchor) = r.anchor {
        let first = r
            .archive
            .as_ref()
            .and_then(|a| a.segments.first())
            .map_or_else(|| to.display().to_string(), |p| p.display().to_string());
        println!("anchor (the archive's head): {anchor}");
        println!("verify the archive:  signerd audit verify {first} --prefix");
        println!(
            "verify the live log: signerd audit verify {} --live --after {anchor}",
            file.display()
        );
    }
    Ok(())
}

fn print_ok(r: &VerifyReport, live: bool, prefix: bool) {
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
    } else if prefix {
        let covered = r.covered_seq.map_or("no checkpoint".to_string(), |c| {
            format!("its last checkpoint covers seq {c}")
        });
        println!(
            "  archive (open end): {covered}; the {} records after it are covered by checkpoints \
             in the live log, verified with --after this head",
            r.uncovered
        );
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
    if let Some(seq) = r.anchored_at {
        println!(
            "  continues from the anchor at seq {seq} (earlier records are in an archive); {} \
             checkpoints cover records there",
            r.covers_before_anchor
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
