//! Archiving: moving a log's older rotated segments out of its directory, so that the disk does
//! not fill, while both parts stay verifiable. The archive directory holds the log's beginning
//! (it verifies with [`VerifyOptions::prefix`]); the live log continues from the archive's head
//! (it verifies with that head as [`VerifyOptions::after`]). Nothing is deleted: a segment
//! leaves the log's directory only once it is durable in the archive.
//!
//! Safe while the daemon writes the log: the daemon touches rotated segments only when it
//! rotates (a new name) and when it opens the log, where it may need the newest segment, which
//! is always kept.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::segments::{file_name, parent, sync_dir, Segments};
use super::verify::{verify_with, Anchor, VerifyOptions, VerifyReport};
use super::AuditError;

/// What [`archive`] did and what both parts verified as afterwards.
#[derive(Clone, Debug)]
pub struct ArchiveReport {
    /// The segments moved, at their new paths, oldest first.
    pub moved: Vec<PathBuf>,
    /// The archive after the move (`None` if it holds nothing yet).
    pub archive: Option<VerifyReport>,
    /// Where the live log continues: the archive's head (`None` if nothing was ever archived).
    pub anchor: Option<Anchor>,
    /// The live log, verified from `anchor`.
    pub live: VerifyReport,
}

/// Moves the rotated segments of the log at `log` (any of its files), all but the newest
/// `keep` (at least 1), into `dest`, oldest first. Both parts are verified before anything
/// moves (the live log as live, from the archive's current head) and after. `trusted_spki` pins
/// the checkpoint key, as in [`verify`](super::verify).
pub fn archive(
    log: &Path,
    dest: &Path,
    keep: usize,
    trusted_spki: Option<&[u8]>,
) -> Result<ArchiveReport, AuditError> {
    if keep == 0 {
        return Err(AuditError::Config(
            "keep at least the newest rotated segment: the daemon may need it when it opens the \
             log after a crash mid-rotation"
                .into(),
        ));
    }
    let segs = Segments::find(log)?;
    let base = file_name(&segs.active)
        .ok_or_else(|| AuditError::Config(format!("{} is not a file path", log.display())))?
        .to_owned();
    std::fs::create_dir_all(dest).map_err(|e| AuditError::io(dest, e))?;
    let canonical = |p: &Path| std::fs::canonicalize(p).map_err(|e| AuditError::io(p, e));
    if canonical(dest)? == canonical(&parent(&segs.active))? {
        return Err(AuditError::Config(format!(
            "the archive directory {} is the log's own directory",
            dest.display()
        )));
    }
    let in_archive = dest.join(&base);
    let (_, anchor) = archive_head(&in_archive, trusted_spki)?;
    let live_opts = |after| VerifyOptions {
        trusted_spki,
        live: true,
        after,
        prefix: false,
    };
    verify_with(log, &live_opts(anchor))?;

    let n = segs.rotated.len().saturating_sub(keep);
    let mut moved = Vec::with_capacity(n);
    for (_, src) in &segs.rotated[..n] {
        let name = file_name(src)
            .ok_or_else(|| AuditError::Config(format!("{} has no file name", src.display())))?;
        let to = dest.join(name);
        move_durably(src, &to)?;
        moved.push(to);
    }
    let (archive, anchor) = archive_head(&in_archive, trusted_spki)?;
    let live = verify_with(log, &live_opts(anchor))?;
    Ok(ArchiveReport {
        moved,
        archive,
        anchor,
        live,
    })
}

/// The archive's verification and head (seq and hash of its last record), if it holds any
/// segment of the log named by `in_archive`.
fn archive_head(
    in_archive: &Path,
    trusted_spki: Option<&[u8]>,
) -> Result<(Option<VerifyReport>, Option<Anchor>), AuditError> {
    let segs = Segments::find(in_archive)?;
    if segs.files().is_empty() {
        return Ok((None, None));
    }
    let report = verify_with(
        in_archive,
        &VerifyOptions {
            trusted_spki,
            prefix: true,
            ..VerifyOptions::default()
        },
    )?;
    let anchor = match (report.head_seq, report.head_hash.as_deref()) {
        (Some(seq), Some(hash)) => Some(format!("{seq}:{hash}").parse().map_err(|e| {
            AuditError::Config(format!(
                "the archive's head does not parse as an anchor: {e}"
            ))
        })?),
        _ => None,
    };
    Ok((Some(report), anchor))
}

/// Moves `src` to `to` (another directory): a rename, or across filesystems a copy that is
/// synced before the original is removed. Resumes a move a crash interrupted (an identical
/// copy already there); refuses to overwrite a different file.
pub(crate) fn move_durably(src: &Path, to: &Path) -> Result<(), AuditError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| AuditError::io(&p, e)
    };
    if to.exists() {
        if same_contents(src, to)? {
            std::fs::remove_file(src).map_err(io(src))?;
            return sync_dir(&parent(src)).map_err(io(&parent(src)));
        }
        return Err(AuditError::Config(format!(
            "{} already exists and differs from {}: not overwriting it",
            to.display(),
            src.display()
        )));
    }
    match std::fs::rename(src, to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => copy_then_remove(src, to)?,
        Err(e) => return Err(AuditError::io(src, e)),
    }
    sync_dir(&parent(to)).map_err(io(&parent(to)))?;
    sync_dir(&parent(src)).map_err(io(&parent(src)))
}

/// Copies `src` to `to` through a temporary name, syncs it, renames it into place, then removes
/// `src`.
pub(crate) fn copy_then_remove(src: &Path, to: &Path) -> Result<(), AuditError> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    std::fs::copy(src, &tmp).map_err(|e| AuditError::io(&tmp, e))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| AuditError::io(&tmp, e))?;
    if !same_contents(src, &tmp)? {
        let _ = std::fs::remove_file(&tmp);
        return Err(AuditError::Config(format!(
            "the copy {} differs from {}",
            tmp.display(),
            src.display()
        )));
    }
    std::fs::rename(&tmp, to).map_err(|e| AuditError::io(to, e))?;
    sync_dir(&parent(to)).map_err(|e| AuditError::io(&parent(to), e))?;
    std::fs::remove_file(src).map_err(|e| AuditError::io(src, e))
}

fn same_contents(a: &Path, b: &Path) -> Result<bool, AuditError> {
    Ok(digest(a)? == digest(b)?)
}

fn digest(path: &Path) -> Result<[u8; 32], AuditError> {
    use sha2::Digest as _;
    let mut f = File::open(path).map_err(|e| AuditError::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| AuditError::io(path, e))?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}
