//! The verifier: reads every segment of a log in chain order and checks the hash chain, every
//! checkpoint (what it covers, its key, its signature), the segment links and the seal. It
//! reports the first bad record. Two passes: the first only collects which seqs checkpoints
//! cover, so the second keeps just those hashes in memory, however late a checkpoint arrives.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use p256::ecdsa::VerifyingKey;

use super::checkpoint::{check_signature, verifying_key};
use super::error::{BadRecord, VerifyFailure};
use super::parse::{covers_seq_of, parse_line, Body, Checkpoint, Parsed};
use super::record::{
    canonical_seal, checkpoint_digest, hash_from_hex, sha256, to_hex, GENESIS_PREV, MAX_LINE,
};
use super::segments::{file_name, Segments};
use super::AuditError;

/// What a verification established.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked (all kinds).
    pub records: u64,
    /// Of those, caller entries.
    pub entries: u64,
    /// Checkpoints whose coverage, key and signature verified.
    pub checkpoints: u64,
    /// Segment files, in chain order (the active file last).
    pub segments: Vec<PathBuf>,
    /// The checkpoint key, once a checkpoint was seen.
    pub key: Option<KeyReport>,
    /// Seq of the last record.
    pub head_seq: Option<u64>,
    /// Hash of the last record (hex).
    pub head_hash: Option<String>,
    /// Highest seq covered by a verified checkpoint.
    pub covered_seq: Option<u64>,
    /// Records after `covered_seq` (not yet provable by a signature).
    pub uncovered: u64,
    /// The last record is a seal (clean close after a final checkpoint).
    pub sealed: bool,
    /// `start` records of reason "restart", and how many followed an unclean end.
    pub restarts: u64,
    /// Restarts after a run that did not end with a seal (crash, kill, failed close).
    pub unclean_restarts: u64,
    /// Torn bytes that restarts cut from the log (as their `start` records declare).
    pub dropped_bytes: u64,
    /// With `live`: bytes of an incomplete last line (a write in progress), not checked.
    pub in_progress_bytes: u64,
    /// With an anchor: the seq the log continued from (its earlier records were archived).
    pub anchored_at: Option<u64>,
    /// With an anchor: checkpoints that cover a record before it (in the archive). Their
    /// signatures verified; which record they cover is the archive's to prove.
    pub covers_before_anchor: u64,
}

/// Where a log that was archived up to some record continues: that record's seq and hash, the
/// head of the archive (as verifying the archive reports it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// Seq of the last archived record.
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
}

impl std::str::FromStr for Anchor {
    type Err = String;

    /// `SEQ:HASH`, the hash as 64 lower-case hex digits (what `audit verify` prints as the head).
    fn from_str(s: &str) -> Result<Anchor, String> {
        let (seq, hash) = s
            .split_once(':')
            .ok_or("an anchor is SEQ:HASH (the archive's head, as `audit verify` prints it)")?;
        let seq = seq
            .parse()
            .map_err(|e| format!("anchor seq {seq:?}: {e}"))?;
        let hash = hash_from_hex(hash).ok_or("anchor hash: 64 lower-case hex digits expected")?;
        Ok(Anchor { seq, hash })
    }
}

impl std::fmt::Display for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, to_hex(&self.hash))
    }
}

/// How [`verify_with`] reads a log.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions<'a> {
    /// Every checkpoint must be signed by this key (a P-256 SubjectPublicKeyInfo DER); without
    /// it, by one key, the one they carry.
    pub trusted_spki: Option<&'a [u8]>,
    /// The log may still be written to: an unsealed end (and an incomplete last line) is
    /// reported, not failed.
    pub live: bool,
    /// The log's earlier records were archived up to this record: the first file must continue
    /// from it (seq + 1, `prev` = its hash) instead of beginning at seq 0.
    pub after: Option<Anchor>,
    /// The files are an archive, the beginning of a longer log: no active file and no seal are
    /// expected (the chain goes on in the live log). An incomplete line still fails.
    pub prefix: bool,
}

/// The key that signed the checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReport {
    /// Key name, as the checkpoints state it.
    pub name: String,
    /// Key version, as the checkpoints state it.
    pub version: u32,
    /// SHA-256 of the SubjectPublicKeyInfo DER, hex.
    pub fingerprint: String,
    /// Whether the key was pinned by the caller. If not, the checkpoints were only checked
    /// against the key they carry: anyone who can rewrite the whole log can also re-sign it.
    pub pinned: bool,
}

/// Verifies the log that `path` belongs to (the active file or any rotated segment; all
/// segments beside it are found and ordered). With `trusted_spki` (a P-256
/// SubjectPublicKeyInfo DER) every checkpoint must be signed by that key; without, by one key,
/// the one they carry. `live`: the log may still be written to, so an unsealed end (and an
/// incomplete last line) is reported, not failed.
///
/// `Ok` only if the log verified. A bad record gives `Err(AuditError::Verify)`; I/O problems
/// give `Err(AuditError::Io)`.
pub fn verify(
    path: &Path,
    trusted_spki: Option<&[u8]>,
    live: bool,
) -> Result<VerifyReport, AuditError> {
    verify_with(
        path,
        &VerifyOptions {
            trusted_spki,
            live,
            ..VerifyOptions::default()
        },
    )
}

/// [`verify`], also for a log whose beginning was archived ([`VerifyOptions::after`]) and for
/// the archive itself ([`VerifyOptions::prefix`]).
pub fn verify_with(path: &Path, opts: &VerifyOptions<'_>) -> Result<VerifyReport, AuditError> {
    let live = opts.live;
    let trusted = match opts.trusted_spki {
        Some(spki) => {
            Some(verifying_key(spki).map_err(|e| AuditError::Config(format!("trusted key: {e}")))?)
        }
        None => None,
    };
    let (segs, files, handles) = snapshot(path)?;
    if files.is_empty() {
        return Err(AuditError::io(
            &segs.active,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no audit log here"),
        ));
    }
    // Pass 1. The lengths seen here bound pass 2, so a live log that grows in between cannot
    // show pass 2 a checkpoint whose covered hash pass 1 did not know to keep.
    let mut covers = HashSet::new();
    let mut lengths = Vec::with_capacity(files.len());
    for (f, h) in files.iter().zip(&handles) {
        let len = h.metadata().map_err(|e| AuditError::io(f, e))?.len();
        lengths.push(len);
        for_each_line(h, f, len, |_, line, _| {
            if let Some(c) = covers_seq_of(line) {
                covers.insert(c);
            }
            true
        })?;
    }
    let mut v = Verifier {
        trusted,
        covers,
        hashes: HashMap::new(),
        key: None,
        report: VerifyReport {
            segments: files.clone(),
            anchored_at: opts.after.map(|a| a.seq),
            ..VerifyReport::default()
        },
        prev: None,
        bad: None,
        anchor: opts.after,
    };
    if let Some(a) = opts.after {
        v.hashes.insert(a.seq, a.hash);
    }
    let active_missing = files.last() != Some(&segs.active);
    for (i, f) in files.iter().enumerate() {
        let last_file = i + 1 == files.len();
        let prev_name = i.checked_sub(1).and_then(|j| file_name(&files[j]));
        let name_seq = segs.rotated.get(i).map(|(s, _)| *s);
        let mut lines = 0u64;
        for_each_line(&handles[i], f, lengths[i], |no, line, complete| {
            lines = no;
            if !complete {
                if last_file && live && !active_missing && line.len() <= MAX_LINE {
                    v.report.in_progress_bytes = line.len() as u64;
                    return false;
                }
                let reason = if line.len() > MAX_LINE {
                    format!("line longer than {MAX_LINE} bytes")
                } else {
                    "incomplete last line (no newline): the file was truncated mid-record".into()
                };
                v.fail_here(f, no, None, reason);
                return false;
            }
            let at = Here {
                file: f,
                line: no,
                first_in_file: no == 1,
                prev_name,
                name_seq,
            };
            v.record(&at, line);
            v.bad.is_none()
        })?;
        if v.bad.is_none() && lines == 0 && !(last_file && live) {
            v.fail_here(f, 1, None, "empty segment file".into());
        }
        if v.bad.is_some() {
            break;
        }
    }
    if v.bad.is_none() {
        v.finish(&segs.active, active_missing, live || opts.prefix);
    }
    let mut report = v.report;
    if let Some(p) = &v.prev {
        report.head_seq = Some(p.seq);
        report.head_hash = Some(to_hex(&p.hash));
        report.uncovered = if report.sealed {
            0
        } else {
            // Records of this log only: after an anchor, the archive's are not counted.
            // Seqs come from the file: a crafted log may carry u64::MAX, so no `+ 1` on them.
            let last_covered = report.covered_seq.max(opts.after.map(|a| a.seq));
            match last_covered {
                Some(c) => p.seq.saturating_sub(c),
                None => p.seq.saturating_add(1),
            }
        };
    }
    match v.bad {
        None => Ok(report),
        Some(bad) => Err(AuditError::Verify(Box::new(VerifyFailure { bad, report }))),
    }
}

/// Calls `f(line_number, line_without_newline, complete)` for each line of the first `len`
/// bytes of `file` (opened from `path`, from its start); stops when `f` returns false. An
/// incomplete line is one without a newline (at EOF) or an overlong one.
fn for_each_line(
    file: &File,
    path: &Path,
    len: u64,
    mut f: impl FnMut(u64, &[u8], bool) -> bool,
) -> Result<(), AuditError> {
    let mut file = file.try_clone().map_err(|e| AuditError::io(path, e))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| AuditError::io(path, e))?;
    let mut r = BufReader::with_capacity(256 * 1024, file.take(len));
    let mut buf = Vec::new();
    let mut no = 0u64;
    loop {
        buf.clear();
        let n = (&mut r)
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut buf)
            .map_err(|e| AuditError::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        no += 1;
        let complete = buf.last() == Some(&b'\n');
        if complete {
            buf.pop();
        }
        if !f(no, &buf, complete) || !complete {
            return Ok(());
        }
    }
}

/// The log's files in chain order, each opened: reading through these handles, a rotation (the
/// active file renamed to a segment, a new active file) or an archive run (segments moved away)
/// while the log is verified changes nothing. Lists again if the files changed between the
/// listing and the opening.
fn snapshot(path: &Path) -> Result<(Segments, Vec<PathBuf>, Vec<File>), AuditError> {
    for _ in 0..10 {
        let segs = Segments::find(path)?;
        let files = segs.files();
        let mut handles = Vec::with_capacity(files.len());
        for f in &files {
            match File::open(f) {
                Ok(h) => handles.push(h),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => return Err(AuditError::io(f, e)),
            }
        }
        let again = Segments::find(path)?;
        if handles.len() == files.len()
            && again.rotated == segs.rotated
            && again.active.exists() == files.last().is_some_and(|l| *l == segs.active)
        {
            return Ok((segs, files, handles));
        }
    }
    Err(AuditError::Config(format!(
        "the files of {} kept changing while they were listed (rotation or archiving under \
         way); try again",
        path.display()
    )))
}

/// Where a line is.
struct Here<'a> {
    file: &'a Path,
    line: u64,
    first_in_file: bool,
    prev_name: Option<&'a str>,
    /// The seq in a rotated segment's name.
    name_seq: Option<u64>,
}

/// The previous record, as the next one needs it.
struct Prev {
    file: PathBuf,
    line: u64,
    seq: u64,
    hash: [u8; 32],
    is_seal: bool,
    /// `Some(covers_seq)` if it is a final checkpoint.
    final_covers: Option<u64>,
}

struct Verifier {
    trusted: Option<VerifyingKey>,
    covers: HashSet<u64>,
    hashes: HashMap<u64, [u8; 32]>,
    /// Unpinned: the first checkpoint's key.
    key: Option<(Vec<u8>, VerifyingKey)>,
    report: VerifyReport,
    prev: Option<Prev>,
    bad: Option<BadRecord>,
    /// Where the log continues from, if its beginning was archived.
    anchor: Option<Anchor>,
}

impl Verifier {
    fn expected(&self) -> u64 {
        match (&self.prev, &self.anchor) {
            (Some(p), _) => p.seq.saturating_add(1),
            (None, Some(a)) => a.seq.saturating_add(1),
            (None, None) => 0,
        }
    }

    fn fail_here(&mut self, file: &Path, line: u64, found: Option<u64>, reason: String) {
        self.bad = Some(BadRecord {
            segment: file.to_path_buf(),
            line,
            seq: self.expected(),
            found_seq: found,
            reason,
        });
    }

    fn record(&mut self, at: &Here<'_>, line: &[u8]) {
        let p = match parse_line(line) {
            Ok(p) => p,
            Err(e) => return self.fail_here(at.file, at.line, None, e),
        };
        if let Err(reason) = self.check(at, &p, line) {
            return self.fail_here(at.file, at.line, Some(p.seq), reason);
        }
        if self.bad.is_some() {
            return;
        }
        self.report.records += 1;
        if self.covers.contains(&p.seq) {
            self.hashes.insert(p.seq, p.hash);
        }
        self.prev = Some(Prev {
            file: at.file.to_path_buf(),
            line: at.line,
            seq: p.seq,
            hash: p.hash,
            is_seal: matches!(p.body, Body::Seal),
            final_covers: match &p.body {
                Body::Checkpoint(c) if c.fin => Some(c.covers_seq),
                _ => None,
            },
        });
        self.report.sealed = matches!(p.body, Body::Seal);
    }

    /// Checks one parsed record against the chain so far. `Err` blames this record; a broken
    /// link to the previous record blames that one (sets `self.bad` directly).
    fn check(&mut self, at: &Here<'_>, p: &Parsed, line: &[u8]) -> Result<(), String> {
        let expected = self.expected();
        if p.seq != expected {
            return Err(if let (None, Some(a)) = (&self.prev, &self.anchor) {
                format!(
                    "the log continues at seq {} instead of {expected} (after the anchor at seq \
                     {}): records between the anchor and this file are missing, or the anchor \
                     is not this log's",
                    p.seq, a.seq
                )
            } else if self.prev.is_none() {
                format!("the log begins at seq {} instead of 0: earlier records or segments are missing (if they were archived, verify with the archive's head as the anchor)", p.seq)
            } else if p.seq > expected {
                format!(
                    "expected seq {expected}, found {}: records are missing",
                    p.seq
                )
            } else {
                format!(
                    "expected seq {expected}, found {}: records are out of order or repeated",
                    p.seq
                )
            });
        }
        match (&self.prev, &self.anchor) {
            (None, Some(a)) if p.prev != a.hash => {
                return Err(format!(
                    "`prev` is not the anchor's hash ({}): the record at seq {} was altered, or \
                     the anchor is not this log's",
                    to_hex(&a.hash),
                    a.seq
                ))
            }
            (None, None) if p.prev != GENESIS_PREV => {
                return Err("the first record's `prev` must be 64 zeros".into())
            }
            (Some(prev), _) if p.prev != prev.hash => {
                self.bad = Some(BadRecord {
                    segment: prev.file.clone(),
                    line: prev.line,
                    seq: prev.seq,
                    found_seq: Some(prev.seq),
                    reason: format!(
                        "its hash does not match `prev` of the next record (seq {}, {} line {}): \
                         this record, or that `prev`, was altered",
                        p.seq,
                        at.file.display(),
                        at.line
                    ),
                });
                return Ok(());
            }
            _ => {}
        }
        let after_seal = self.prev.as_ref().is_some_and(|q| q.is_seal);
        if at.first_in_file && !matches!(p.body, Body::Start(_)) {
            return Err("a segment must begin with a start record".into());
        }
        if let Some(n) = at.name_seq.filter(|_| at.first_in_file) {
            if n != p.seq {
                return Err(format!(
                    "segment name says seq {n}, its first record is seq {}",
                    p.seq
                ));
            }
        }
        match &p.body {
            Body::Start(s) => {
                if (s.reason == "genesis") != (p.seq == 0) {
                    return Err("a genesis start record is the record at seq 0, and only it".into());
                }
                if s.reason == "rotate" && !at.first_in_file {
                    return Err("a rotate start record must be the first in its file".into());
                }
                if at.first_in_file
                    && at.prev_name.is_some()
                    && s.prev_file.as_deref() != at.prev_name
                {
                    return Err(format!(
                        "start record names the previous file {:?}, but the previous segment is {:?}",
                        s.prev_file.as_deref().unwrap_or("(none)"),
                        at.prev_name.unwrap_or("")
                    ));
                }
                if !at.first_in_file && s.prev_file.is_some() {
                    return Err("`prev_file` in a start record that does not begin its file".into());
                }
                if let Some(sealed) = s.prior_sealed {
                    // Right after an anchor, whether the archive ended with a seal is the
                    // archive's to say.
                    if self.prev.is_some() && sealed != after_seal {
                        return Err(format!(
                            "restart says the previous run ended {}, but it {}",
                            if sealed { "sealed" } else { "unclean" },
                            if after_seal { "did" } else { "has no seal" }
                        ));
                    }
                    self.report.restarts += 1;
                    self.report.unclean_restarts += u64::from(!sealed);
                } else if after_seal {
                    return Err("only a restart may follow a seal".into());
                }
                self.report.dropped_bytes =
                    self.report.dropped_bytes.saturating_add(s.dropped_bytes);
            }
            _ if after_seal => return Err("only a restart may follow a seal".into()),
            Body::Entry => self.report.entries += 1,
            Body::Checkpoint(c) => self.checkpoint(p.seq, c)?,
            Body::Seal => {
                let ok = self.prev.as_ref().and_then(|q| q.final_covers) == p.seq.checked_sub(2);
                if !ok || p.seq < 2 {
                    return Err("a seal must directly follow a final checkpoint that covers the record before it".into());
                }
                if line != canonical_seal(p.seq, &p.prev).as_slice() {
                    return Err(
                        "a seal has exactly the fields seq, prev and kind, in that form".into(),
                    );
                }
            }
        }
        Ok(())
    }

    fn checkpoint(&mut self, seq: u64, c: &Checkpoint) -> Result<(), String> {
        if c.covers_seq >= seq {
            return Err("a checkpoint must cover an earlier record".into());
        }
        if self
            .report
            .covered_seq
            .is_some_and(|prev| c.covers_seq <= prev)
        {
            return Err(format!(
                "checkpoint covers seq {}, not after the previous checkpoint's",
                c.covers_seq
            ));
        }
        let before_anchor = self.anchor.is_some_and(|a| c.covers_seq < a.seq);
        match self.hashes.get(&c.covers_seq) {
            Some(h) if *h == c.covers_hash => {}
            // A record in the archive: its hash is not here. The signature is checked below;
            // that the archive holds this hash at that seq is the archive's to prove.
            None if before_anchor => self.report.covers_before_anchor += 1,
            _ => {
                return Err(format!(
                    "checkpoint's covers_hash is not the hash of record {}",
                    c.covers_seq
                ))
            }
        }
        let fp = to_hex(&sha256(&c.spki));
        let who = format!("key {} v{} (fingerprint {fp})", c.key, c.version);
        let vk = match (&self.trusted, &self.key) {
            (Some(vk), _) => {
                // Compare keys, not encodings: the pinned SPKI may encode the point differently.
                if verifying_key(&c.spki).ok().as_ref() != Some(vk) {
                    return Err(format!(
                        "checkpoint signed by {who}, not by the trusted key"
                    ));
                }
                *vk
            }
            (None, Some((spki, vk))) => {
                if c.spki != *spki {
                    return Err(format!(
                        "checkpoint signed by {who}, but earlier checkpoints by fingerprint {}; \
                         without a pinned key all checkpoints must use one key",
                        to_hex(&sha256(spki))
                    ));
                }
                *vk
            }
            (None, None) => {
                let vk = verifying_key(&c.spki).map_err(|e| format!("checkpoint {who}: {e}"))?;
                self.key = Some((c.spki.clone(), vk));
                vk
            }
        };
        let digest = checkpoint_digest(c.covers_seq, &c.covers_hash, c.fin);
        check_signature(&vk, &digest, &c.sig).map_err(|e| format!("checkpoint by {who}: {e}"))?;
        if self.report.key.is_none() {
            self.report.key = Some(KeyReport {
                name: c.key.clone(),
                version: c.version,
                fingerprint: fp,
                pinned: self.trusted.is_some(),
            });
        }
        self.report.checkpoints += 1;
        self.report.covered_seq = Some(c.covers_seq);
        self.hashes.retain(|s, _| *s > c.covers_seq);
        Ok(())
    }

    /// End-of-log rules.
    fn finish(&mut self, active: &Path, active_missing: bool, live: bool) {
        let Some(last) = &self.prev else {
            let f = self
                .report
                .segments
                .first()
                .cloned()
                .unwrap_or_else(|| active.to_path_buf());
            return self.fail_here(&f, 1, None, "the log has no records".into());
        };
        if active_missing && !live {
            let reason = format!(
                "the active file {} is missing: the newest records are gone",
                active.display()
            );
            return self.fail_here(active, 1, None, reason);
        }
        if !self.report.sealed && !live {
            let covered = match self.report.covered_seq {
                Some(m) => format!("records after the last checkpoint at seq {m}"),
                None => "no record is covered by a checkpoint; all records".into(),
            };
            self.bad = Some(BadRecord {
                segment: last.file.clone(),
                line: last.line,
                seq: last.seq,
                found_seq: Some(last.seq),
                reason: format!(
                    "log ends at seq {} without a seal; {covered} cannot be proven complete",
                    last.seq
                ),
            });
        }
    }
}
