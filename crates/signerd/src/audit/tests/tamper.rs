//! Tampering: every kind of edit is detected, and the first bad record is named exactly.
//! In a single-file log the record on line L has seq L - 1.

use super::*;

fn one_file_log(n: u64) -> (tempfile::TempDir, PathBuf, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let path = sealed_log(dir.path(), n);
    let l = lines(&path);
    assert!(verify(&path, None, false).is_ok());
    (dir, path, l)
}

fn replace_once(line: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = String::from_utf8(line.to_vec()).unwrap();
    assert!(s.contains(from), "{s} has no {from}");
    s.replacen(from, to, 1).into_bytes()
}

#[test]
fn editing_one_byte_of_an_entry_is_detected() {
    let (_d, path, mut l) = one_file_log(40);
    let i = find_kind(&l, "entry", 10);
    l[i] = replace_once(&l[i], "app-1", "app-7");
    write_lines(&path, &l);
    let bad = failure(&path, None, false);
    assert_eq!((bad.line, bad.seq), (i as u64 + 1, i as u64), "{bad}");
    assert!(
        bad.reason
            .contains("does not match `prev` of the next record"),
        "{bad}"
    );
}

#[test]
fn editing_a_checkpoint_signature_is_detected() {
    let (_d, path, mut l) = one_file_log(40);
    let i = find_kind(&l, "checkpoint", 2);
    let sig = json(&l[i])["sig"].as_str().unwrap().to_string();
    let mut forged = sig.clone().into_bytes();
    forged[20] = if forged[20] == b'A' { b'B' } else { b'A' };
    l[i] = replace_once(&l[i], &sig, std::str::from_utf8(&forged).unwrap());
    write_lines(&path, &l);
    let bad = failure(&path, None, false);
    assert_eq!((bad.line, bad.seq), (i as u64 + 1, i as u64), "{bad}");
    assert!(bad.reason.contains("checkpoint by key audit-1 v1"), "{bad}");
}

#[test]
fn editing_the_time_of_a_checkpoint_is_detected() {
    let (_d, path, mut l) = one_file_log(40);
    let i = find_kind(&l, "checkpoint", 2);
    l[i] = replace_once(&l[i], "\"time\":\"2", "\"time\":\"1");
    write_lines(&path, &l);
    let bad = failure(&path, None, false);
    assert_eq!((bad.line, bad.seq), (i as u64 + 1, i as u64), "{bad}");
}

#[test]
fn deleting_a_record_is_detected() {
    let (_d, path, mut l) = one_file_log(40);
    let i = find_kind(&l, "entry", 12);
    l.remove(i);
    write_lines(&path, &l);
    let bad = failure(&path, None, false);
    assert_eq!(
        (bad.line, bad.seq, bad.found_seq),
        (i as u64 + 1, i as u64, Some(i as u64 + 1)),
        "{bad}"
    );
    assert!(bad.reason.contains("missing"), "{bad}");
}

#[test]
fn reordering_two_records_is_detected() {
    let (_d, path, mut l) = one_file_log(40);
    let i = find_kind(&l, "entry", 8);
    l.swap(i, i + 1);
    write_lines(&path, &l);
    let bad = failure(&path, None, false);
    assert_eq!(
        (bad.line, bad.seq, bad.found_seq),
        (i as u64 + 1, i as u64, Some(i as u64 + 1)),
        "{bad}"
    );
}

#[test]
fn truncating_a_sealed_log_at_a_record_boundary_is_detected() {
    let (_d, path, mut l) = one_file_log(40);
    l.truncate(l.len() - 6);
    write_lines(&path, &l);
    let k = l.len() as u64;
    let bad = failure(&path, None, false);
    assert_eq!((bad.line, bad.seq), (k, k - 1), "{bad}");
    assert!(
        bad.reason
            .starts_with(&format!("log ends at seq {} without a seal", k - 1)),
        "{bad}"
    );
    assert!(
        bad.reason
            .contains("records after the last checkpoint at seq"),
        "{bad}"
    );
    // A live log may end open: reported, not failed.
    let r = verify(&path, None, true).unwrap();
    assert!(!r.sealed);
    assert_eq!(r.head_seq, Some(k - 1));
    assert_eq!(r.uncovered, k - 1 - r.covered_seq.unwrap());
}

#[test]
fn truncating_mid_line_is_detected() {
    let (_d, path, l) = one_file_log(40);
    let k = l.len() - 5;
    let mut data = Vec::new();
    for line in &l[..k] {
        data.extend_from_slice(line);
        data.push(b'\n');
    }
    data.extend_from_slice(&l[k][..l[k].len() / 2]);
    std::fs::write(&path, data).unwrap();
    let bad = failure(&path, None, false);
    assert_eq!(
        (bad.line, bad.seq, bad.found_seq),
        (k as u64 + 1, k as u64, None),
        "{bad}"
    );
    assert!(bad.reason.contains("truncated mid-record"), "{bad}");
}

#[test]
fn a_forged_seal_after_truncation_is_detected() {
    let (_d, path, mut l) = one_file_log(40);
    // Cut right after a periodic checkpoint and append a well-formed seal.
    let i = find_kind(&l, "checkpoint", 10);
    l.truncate(i + 1);
    let seal = record::canonical_seal(i as u64 + 1, &sha256(&l[i]));
    l.push(seal);
    write_lines(&path, &l);
    let bad = failure(&path, None, false);
    assert_eq!((bad.line, bad.seq), (i as u64 + 2, i as u64 + 1), "{bad}");
    assert!(bad.reason.contains("final checkpoint"), "{bad}");
}

#[test]
fn editing_the_seal_or_appending_after_it_is_detected() {
    let (_d, path, mut l) = one_file_log(10);
    let n = l.len() as u64;
    let orig = l.clone();
    let last = l.len() - 1;
    l[last] = replace_once(&l[last], "}", ",\"time\":\"x\"}");
    write_lines(&path, &l);
    let bad = failure(&path, None, false);
    assert_eq!((bad.line, bad.seq), (n, n - 1), "{bad}");

    let mut l = orig;
    let mut chain = record::Chain {
        next_seq: n,
        head: sha256(&l[last]),
    };
    let mut buf = Vec::new();
    chain.push(&mut buf, |f| record::entry_fields(f, &entry(1)));
    buf.pop();
    l.push(buf);
    write_lines(&path, &l);
    let bad = failure(&path, None, false);
    assert_eq!((bad.line, bad.seq), (n + 1, n), "{bad}");
    assert!(
        bad.reason.contains("only a restart may follow a seal"),
        "{bad}"
    );
}

fn rotated_log() -> (tempfile::TempDir, PathBuf, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        rotate_bytes: 4096,
        ..cfg(dir.path())
    };
    let path = c.path.clone();
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, 120, 4);
    log.close();
    let segs = verify(&path, None, false).unwrap().segments;
    assert!(segs.len() >= 4, "{segs:?}");
    (dir, path, segs)
}

fn first_seq(path: &Path) -> u64 {
    json(&lines(path)[0])["seq"].as_u64().unwrap()
}

#[test]
fn deleting_a_rotated_segment_is_detected() {
    let (_d, path, segs) = rotated_log();
    let gone = first_seq(&segs[1]);
    let next = first_seq(&segs[2]);
    std::fs::remove_file(&segs[1]).unwrap();
    let bad = failure(&path, None, false);
    assert_eq!(bad.segment, segs[2]);
    assert_eq!(
        (bad.line, bad.seq, bad.found_seq),
        (1, gone, Some(next)),
        "{bad}"
    );
}

#[test]
fn deleting_the_first_segment_is_detected() {
    let (_d, path, segs) = rotated_log();
    let next = first_seq(&segs[1]);
    std::fs::remove_file(&segs[0]).unwrap();
    let bad = failure(&path, None, false);
    assert_eq!(bad.segment, segs[1]);
    assert_eq!(
        (bad.line, bad.seq, bad.found_seq),
        (1, 0, Some(next)),
        "{bad}"
    );
    assert!(bad.reason.contains("instead of 0"), "{bad}");
}

#[test]
fn deleting_the_active_file_is_detected() {
    let (_d, path, _segs) = rotated_log();
    std::fs::remove_file(&path).unwrap();
    let bad = failure(&path, None, false);
    assert_eq!(bad.segment, path);
    assert!(bad.reason.contains("active file"), "{bad}");
}

#[test]
fn truncating_a_rotated_segment_is_detected() {
    let (_d, path, segs) = rotated_log();
    let mut l = lines(&segs[1]);
    let cut = json(l.last().unwrap())["seq"].as_u64().unwrap();
    l.pop();
    write_lines(&segs[1], &l);
    let bad = failure(&path, None, false);
    assert_eq!(bad.segment, segs[2]);
    assert_eq!(
        (bad.line, bad.seq, bad.found_seq),
        (1, cut, Some(cut + 1)),
        "{bad}"
    );
}

#[test]
fn a_checkpoint_key_other_than_the_pinned_one_is_detected() {
    let (_d, path, l) = one_file_log(40);
    let i = find_kind(&l, "checkpoint", 0);
    let bad = failure(&path, Some(&SoftSigner::spki(2)), false);
    assert_eq!((bad.line, bad.seq), (i as u64 + 1, i as u64), "{bad}");
    assert!(bad.reason.contains("not by the trusted key"), "{bad}");
}

#[test]
fn swapping_the_checkpoint_key_midway_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = sealed_log(dir.path(), 20);
    let n = lines(&path).len();
    let log = AuditLog::open(cfg(dir.path()), Box::new(SoftSigner::new(2))).unwrap();
    fill(&log, 20, 4);
    log.close();
    let l = lines(&path);
    let i = find_kind(&l, "checkpoint", n);
    let bad = failure(&path, Some(&SoftSigner::spki(1)), false);
    assert_eq!((bad.line, bad.seq), (i as u64 + 1, i as u64), "{bad}");
    let bad = failure(&path, None, false);
    assert_eq!((bad.line, bad.seq), (i as u64 + 1, i as u64), "{bad}");
    assert!(bad.reason.contains("must use one key"), "{bad}");
}

/// A crafted log whose record carries the largest seq (after an anchor just below it) is
/// reported, never a panic or a wrapped count: the verifier's arithmetic on seqs from the file
/// is checked. (It added 1 to the head's seq unchecked: an overflow panic in debug builds, a
/// wrapped `uncovered` in release.)
#[test]
fn largest_seq_in_a_crafted_log_is_reported_not_overflowed() {
    let (_d, path, l) = one_file_log(3);
    // The log's first record is its genesis start; as a segment after an archive, a rotation.
    let text = String::from_utf8(l[0].clone())
        .unwrap()
        .replacen("genesis", "rotate", 1);
    // `{"seq":N,"prev":"HEX",REST}`: keep REST, put the largest seq after a made-up anchor.
    let rest = &text[text.find(",\"prev\":").unwrap() + ",\"prev\":".len() + 66..];
    let anchor_hash = [7u8; 32];
    let line = format!(
        "{{\"seq\":{},\"prev\":\"{}\"{rest}",
        u64::MAX,
        to_hex(&anchor_hash)
    );
    write_lines(&path, &[line.into_bytes()]);
    let anchor = Anchor {
        seq: u64::MAX - 1,
        hash: anchor_hash,
    };
    let opts = VerifyOptions {
        trusted_spki: None,
        live: true,
        after: Some(anchor),
        prefix: false,
    };
    let report = verify_with(&path, &opts).unwrap();
    assert_eq!(report.head_seq, Some(u64::MAX));
    assert_eq!(report.records, 1);
    assert_eq!(report.uncovered, 1);
}
