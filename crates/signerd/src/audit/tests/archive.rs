//! Archiving older segments: the archive and the live log each verify, joined by the archive's
//! head; a gap, an edit at the seam or a wrong anchor is found.

use super::*;

/// A live log with small segments: `n` entries, several rotations. The log stays open.
fn rotating_log(dir: &Path, n: u64) -> (AuditLog, AuditConfig) {
    let c = AuditConfig {
        rotate_bytes: 4096,
        ..cfg(dir)
    };
    let log = AuditLog::open(c.clone(), Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, n, 4);
    (log, c)
}

fn opts(after: Option<Anchor>, prefix: bool, live: bool) -> VerifyOptions<'static> {
    VerifyOptions {
        trusted_spki: None,
        live,
        after,
        prefix,
    }
}

fn verify_failure(path: &Path, o: &VerifyOptions<'_>) -> BadRecord {
    match verify_with(path, o) {
        Err(AuditError::Verify(f)) => f.bad,
        other => panic!("expected a verification failure, got {other:?}"),
    }
}

#[test]
fn archiving_keeps_both_parts_verifiable_while_the_log_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("archive");
    let (log, c) = rotating_log(dir.path(), 120);
    let before = verify(&c.path, None, true).unwrap();
    assert!(before.segments.len() >= 4, "{:?}", before.segments);

    let r = archive(&c.path, &dest, 1, Some(&SoftSigner::spki(1))).unwrap();
    // All but the newest rotated segment (a checkpoint landing meanwhile may have rotated once
    // more, so at least as many as were there before).
    assert!(
        r.moved.len() >= before.segments.len() - 2,
        "{} moved of {:?}",
        r.moved.len(),
        before.segments
    );
    assert!(
        r.live.segments.len() >= 2,
        "the newest rotated and the active file stay"
    );
    for m in &r.moved {
        assert!(m.starts_with(&dest) && m.exists(), "{}", m.display());
    }
    let anchor = r.anchor.expect("the archive has a head");
    let archived = r.archive.as_ref().unwrap();
    assert_eq!(Some(anchor.seq), archived.head_seq);
    assert_eq!(archived.segments.len(), r.moved.len());
    assert_eq!(r.live.anchored_at, Some(anchor.seq));
    assert!(
        r.live.uncovered <= r.live.records,
        "the uncovered tail counts this part's records only: {:?}",
        r.live
    );
    // Every seq from 0 to the live head once (checkpoints may have been added meanwhile).
    assert_eq!(
        archived.records + r.live.records,
        r.live.head_seq.unwrap() + 1,
        "no record lost or repeated at the seam"
    );
    assert!(r.live.head_seq >= before.head_seq);
    // The live log alone no longer begins at 0, and says what to do about it.
    let bad = failure(&c.path, None, true);
    assert!(bad.reason.contains("begins at seq"), "{}", bad.reason);
    assert!(bad.reason.contains("anchor"), "{}", bad.reason);

    // The daemon keeps writing and rotating; a second run moves the new segments and the seam
    // moves with them.
    fill(&log, 80, 4);
    let r2 = archive(&c.path, &dest, 1, None).unwrap();
    assert!(!r2.moved.is_empty());
    let anchor2 = r2.anchor.unwrap();
    assert!(anchor2.seq > anchor.seq);
    log.close();
    let live = verify_with(&c.path, &opts(Some(anchor2), false, false)).unwrap();
    assert!(live.sealed);
    let archived = verify_with(&dest.join("audit.log"), &opts(None, true, false)).unwrap();
    assert!(
        !archived.sealed,
        "an archive ends open: the chain goes on in the live log"
    );
    assert_eq!(archived.head_seq, Some(anchor2.seq));
    assert_eq!(archived.entries + live.entries, 200);
    // Without `prefix` the archive is an unsealed log with no active file.
    assert!(verify(&dest.join("audit.log"), None, false).is_err());

    // Put back together, it is one ordinary log again.
    for f in std::fs::read_dir(&dest).unwrap() {
        let f = f.unwrap().path();
        std::fs::rename(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let whole = verify(&c.path, Some(&SoftSigner::spki(1)), false).unwrap();
    assert_eq!(whole.entries, 200);
    assert_eq!(whole.anchored_at, None);
}

#[test]
fn a_wrong_anchor_or_a_gap_at_the_seam_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("archive");
    let (log, c) = rotating_log(dir.path(), 120);
    log.close();
    let r = archive(&c.path, &dest, 1, None).unwrap();
    let anchor = r.anchor.unwrap();

    // The right seq with another hash: not this log's archive.
    let mut wrong = anchor;
    wrong.hash[0] ^= 1;
    let bad = verify_failure(&c.path, &opts(Some(wrong), false, false));
    assert!(bad.reason.contains("anchor's hash"), "{}", bad.reason);
    // An anchor one record short: a record is missing between the archive and the log.
    let short = Anchor {
        seq: anchor.seq - 1,
        hash: anchor.hash,
    };
    let bad = verify_failure(&c.path, &opts(Some(short), false, false));
    assert!(bad.reason.contains("continues at seq"), "{}", bad.reason);

    // The oldest live segment deleted instead of archived: the seam no longer meets.
    let live = verify_with(&c.path, &opts(Some(anchor), false, false)).unwrap();
    std::fs::remove_file(&live.segments[0]).unwrap();
    let bad = verify_failure(&c.path, &opts(Some(anchor), false, false));
    assert!(bad.reason.contains("continues at seq"), "{}", bad.reason);
    // ... and archiving refuses to move anything from a log that does not verify.
    assert!(matches!(
        archive(&c.path, &dest, 1, None),
        Err(AuditError::Verify(_))
    ));
}

#[test]
fn archive_options_and_moves_are_safe() {
    let dir = tempfile::tempdir().unwrap();
    let (log, c) = rotating_log(dir.path(), 60);
    log.close();
    let dest = dir.path().join("archive");
    assert!(matches!(
        archive(&c.path, &dest, 0, None),
        Err(AuditError::Config(_))
    ));
    // Into its own directory (however spelled): refused, nothing touched.
    let files = verify(&c.path, None, false).unwrap().segments;
    let same = dir.path().join("archive/..");
    assert!(matches!(
        archive(&c.path, &same, 1, None),
        Err(AuditError::Config(m)) if m.contains("own directory")
    ));
    assert_eq!(verify(&c.path, None, false).unwrap().segments, files);
    // keep larger than the rotated segments: nothing to move, the live log still verifies.
    let r = archive(&c.path, &dest, 1000, None).unwrap();
    assert!(r.moved.is_empty() && r.anchor.is_none() && r.archive.is_none());
    assert!(r.live.sealed);

    // The copy path (used across filesystems) and resuming a move a crash interrupted.
    let a = dir.path().join("seg-a");
    std::fs::write(&a, b"records\n").unwrap();
    let to = dest.join("seg-a");
    super::super::archive::copy_then_remove(&a, &to).unwrap();
    assert!(!a.exists());
    assert_eq!(std::fs::read(&to).unwrap(), b"records\n");
    std::fs::write(&a, b"records\n").unwrap();
    super::super::archive::move_durably(&a, &to).unwrap();
    assert!(
        !a.exists(),
        "an identical copy already there: the original goes"
    );
    std::fs::write(&a, b"other records\n").unwrap();
    assert!(super::super::archive::move_durably(&a, &to).is_err());
    assert!(
        a.exists(),
        "a different file is never overwritten or removed"
    );
}

#[test]
fn live_verification_is_consistent_while_the_log_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let (log, c) = rotating_log(dir.path(), 10);
    let log2 = log.clone();
    let writer = std::thread::spawn(move || fill(&log2, 600, 2));
    let mut checks = 0;
    while !writer.is_finished() {
        let r = verify(&c.path, None, true);
        assert!(r.is_ok(), "a rotation during verification: {r:?}");
        checks += 1;
    }
    writer.join().unwrap();
    log.close();
    let r = verify(&c.path, None, false).unwrap();
    assert_eq!(r.entries, 610);
    assert!(
        r.segments.len() > 20 && checks > 5,
        "{} segments, {checks} checks",
        r.segments.len()
    );
}
