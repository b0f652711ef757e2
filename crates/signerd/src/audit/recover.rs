//! Opening an existing log: find the head of the chain from the file tails, cut a torn last
//! line (a write that was never acknowledged), and refuse anything worse.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::parse::{parse_line, Body, Parsed};
use super::record::{sha256, Chain, StartInfo, StartReason, MAX_LINE};
use super::segments::{file_name, Segments};
use super::AuditError;

/// How much of a file's end is read to find (and check) its last records.
const WINDOW: u64 = 1 << 20;

/// A log never gets near u64 seqs; a larger one comes from a crafted file (and would overflow).
const MAX_SEQ: u64 = 1 << 62;

/// The active file, opened for appending, and where the chain stands.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub file: File,
    /// Length of the active file after any torn bytes were cut.
    pub active_len: u64,
    /// Seq of the active file's first record, if it has one.
    pub active_first_seq: Option<u64>,
    pub chain: Chain,
    /// What the `start` record of this run must say.
    pub start: StartInfo,
}

/// Mode of new audit files: owner read/write, group read (auditors), nothing for others.
pub(crate) const FILE_MODE: u32 = 0o640;

/// Opens (or creates) the active file at `active` and recovers the head of the chain.
pub(crate) fn recover(active: &Path) -> Result<Recovered, AuditError> {
    let segs = Segments::find(active)?;
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .open(active)
        .map_err(|e| AuditError::io(active, e))?;
    let len = file
        .metadata()
        .map_err(|e| AuditError::io(active, e))?
        .len();
    let tail = read_tail(&mut file, active, len)?;
    if let Some((n, _)) = tail.dropped {
        tracing::warn!(
            file = %active.display(),
            bytes = n,
            "audit log: cutting a torn last line (never acknowledged) before continuing"
        );
        file.set_len(tail.keep_len)
            .and_then(|()| file.sync_data())
            .map_err(|e| AuditError::io(active, e))?;
    }
    let active_first_seq = if tail.keep_len > 0 {
        Some(first_seq(&mut file, active)?)
    } else {
        None
    };
    let (chain, start) = match (&tail.last, segs.rotated.last()) {
        (Some(last), _) => (
            chain_after(last, active)?,
            StartInfo {
                reason: StartReason::Restart,
                prev_file: None,
                prior_sealed: Some(matches!(last.body, Body::Seal)),
                dropped: tail.dropped,
            },
        ),
        (None, Some((_, seg))) => {
            // The active file is empty: a crash between rotating and writing the new file's
            // first record. The head is the end of the newest rotated segment.
            let mut f = File::open(seg).map_err(|e| AuditError::io(seg, e))?;
            let slen = f.metadata().map_err(|e| AuditError::io(seg, e))?.len();
            let st = read_tail(&mut f, seg, slen)?;
            let last = match (&st.last, st.dropped) {
                (Some(last), None) => last,
                _ => {
                    return Err(AuditError::Corrupt {
                        path: seg.clone(),
                        reason: "rotated segment is empty or ends with a torn line".into(),
                    })
                }
            };
            (
                chain_after(last, seg)?,
                StartInfo {
                    reason: StartReason::Restart,
                    prev_file: file_name(seg).map(str::to_owned),
                    prior_sealed: Some(matches!(last.body, Body::Seal)),
                    dropped: tail.dropped,
                },
            )
        }
        (None, None) => (
            Chain::genesis(),
            StartInfo {
                reason: StartReason::Genesis,
                prev_file: None,
                prior_sealed: None,
                dropped: tail.dropped,
            },
        ),
    };
    Ok(Recovered {
        file,
        active_len: tail.keep_len,
        active_first_seq,
        chain,
        start,
    })
}

fn chain_after(last: &Parsed, path: &Path) -> Result<Chain, AuditError> {
    if last.seq >= MAX_SEQ {
        return Err(AuditError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("last seq {} is implausibly large", last.seq),
        });
    }
    Ok(Chain {
        next_seq: last.seq + 1,
        head: last.hash,
    })
}

/// What the end of one file looks like.
#[derive(Debug)]
struct Tail {
    /// The last intact record, if the file has one.
    last: Option<Parsed>,
    /// Bytes to keep: everything up to and including the last intact record's newline.
    keep_len: u64,
    /// Torn bytes after that: count and SHA-256.
    dropped: Option<(u64, [u8; 32])>,
}

/// Reads the last [`WINDOW`] bytes of `file`. The complete lines in it must be records that
/// chain one to the next; only the very last line may be torn: either it has no newline, or
/// it is complete but does not parse or chain (a crash mid-write). Anything else is corruption.
fn read_tail(file: &mut File, path: &Path, len: u64) -> Result<Tail, AuditError> {
    let corrupt = |reason: String| AuditError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let start = len.saturating_sub(WINDOW);
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.take(len - start).read_to_end(&mut buf))
        .map_err(|e| AuditError::io(path, e))?;
    // Lines that certainly begin in the window: all of them if it starts at the file's start.
    let first = if start == 0 {
        0
    } else {
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => return Err(corrupt(format!("no line end in the last {WINDOW} bytes"))),
        }
    };
    let body_end = buf
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(first, |i| (i + 1).max(first));
    let mut lines = Vec::new(); // (start, end) without the newline
    let mut at = first;
    while at < body_end {
        let end = buf[at..body_end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body_end, |i| at + i);
        lines.push((at, end));
        at = end + 1;
    }
    let parsed: Vec<Result<Parsed, String>> =
        lines.iter().map(|&(s, e)| parse_line(&buf[s..e])).collect();
    let chains = |i: usize| match (&parsed[i - 1], &parsed[i]) {
        (Ok(a), Ok(b)) => a.seq.checked_add(1) == Some(b.seq) && b.prev == a.hash,
        _ => false,
    };
    let mut keep = lines.len();
    if let Some(last) = keep.checked_sub(1) {
        let bad = parsed[last].is_err() || (last > 0 && parsed[last - 1].is_ok() && !chains(last));
        if bad {
            keep = last;
        }
    }
    for i in 0..keep {
        let offset = start + lines[i].0 as u64;
        if let Err(e) = &parsed[i] {
            return Err(corrupt(format!("record at byte {offset}: {e}")));
        }
        if i > 0 && !chains(i) {
            return Err(corrupt(format!(
                "record at byte {offset} does not continue the chain"
            )));
        }
    }
    if start > 0 && keep == 0 {
        return Err(corrupt(format!(
            "no intact record in the last {WINDOW} bytes"
        )));
    }
    let keep_end = if keep == 0 {
        first
    } else {
        lines[keep - 1].1 + 1
    };
    let torn = &buf[keep_end..];
    if torn.len() > MAX_LINE + 1 + MAX_LINE {
        return Err(corrupt(format!(
            "{} bytes after the last intact record: more than a torn write",
            torn.len()
        )));
    }
    if !looks_like_torn_record(torn) {
        return Err(corrupt(format!(
            "the {} bytes after the last intact record are not a record (not an audit log?)",
            torn.len()
        )));
    }
    let dropped = (!torn.is_empty()).then(|| (torn.len() as u64, sha256(torn)));
    let last = keep
        .checked_sub(1)
        .and_then(|i| parsed.get(i).and_then(|p| p.as_ref().ok()).cloned());
    Ok(Tail {
        last,
        keep_len: start + keep_end as u64,
        dropped,
    })
}

/// A torn write starts at a record boundary, so it is a (prefix of a) record: it starts with
/// `{"seq":`. Pages that never reached the disk may read back as zeros. Anything else is not
/// ours to cut.
fn looks_like_torn_record(torn: &[u8]) -> bool {
    const HEAD: &[u8] = b"{\"seq\":";
    torn.is_empty()
        || torn.starts_with(HEAD)
        || HEAD.starts_with(torn)
        || torn.iter().all(|&b| b == 0)
}

/// Seq of the first record of a file known to hold at least one intact record.
fn first_seq(file: &mut File, path: &Path) -> Result<u64, AuditError> {
    let mut buf = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.take(MAX_LINE as u64 + 1).read_to_end(&mut buf))
        .map_err(|e| AuditError::io(path, e))?;
    let end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    parse_line(&buf[..end])
        .map(|p| p.seq)
        .map_err(|e| AuditError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("first record: {e}"),
        })
}
