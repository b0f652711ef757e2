//! Segment files: naming, finding and ordering them. The active file is `<path>`; a rotated
//! segment is `<path>.<seq of its first record, 20 decimal digits>`, so names sort by seq.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::AuditError;

/// Digits of the seq suffix of a rotated segment's name.
const SUFFIX_DIGITS: usize = 20;

/// The active file and the rotated segments of one log, oldest first.
#[derive(Clone, Debug)]
pub(crate) struct Segments {
    pub active: PathBuf,
    /// (first seq from the name, path), sorted by seq.
    pub rotated: Vec<(u64, PathBuf)>,
}

impl Segments {
    /// Finds the segments of the log that `path` (the active file or any rotated segment)
    /// belongs to.
    pub fn find(path: &Path) -> Result<Segments, AuditError> {
        let active = active_path(path);
        let dir = parent(&active);
        let base = file_name(&active).ok_or_else(|| {
            AuditError::Config(format!("{} is not a file path", active.display()))
        })?;
        let prefix = format!("{base}.");
        let rd = std::fs::read_dir(&dir).map_err(|e| AuditError::io(&dir, e))?;
        let mut rotated = Vec::new();
        for ent in rd {
            let ent = ent.map_err(|e| AuditError::io(&dir, e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(seq) = name.strip_prefix(&prefix).and_then(parse_suffix) {
                rotated.push((seq, ent.path()));
            }
        }
        rotated.sort();
        Ok(Segments { active, rotated })
    }

    /// All files in chain order: rotated segments, then the active file (if it exists).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.rotated.iter().map(|(_, p)| p.clone()).collect();
        if self.active.exists() {
            v.push(self.active.clone());
        }
        v
    }
}

/// The path a rotated segment whose first record has `first_seq` gets.
pub(crate) fn segment_path(active: &Path, first_seq: u64) -> PathBuf {
    let mut s = active.as_os_str().to_owned();
    s.push(format!(".{first_seq:0width$}", width = SUFFIX_DIGITS));
    PathBuf::from(s)
}

/// The active file's path for `path`, which may name a rotated segment.
pub(crate) fn active_path(path: &Path) -> PathBuf {
    if let Some(name) = file_name(path) {
        if let Some((base, suffix)) = name.rsplit_once('.') {
            if !base.is_empty() && parse_suffix(suffix).is_some() {
                return parent(path).join(base);
            }
        }
    }
    path.to_path_buf()
}

/// The file name of `path` as UTF-8, if it has one.
pub(crate) fn file_name(path: &Path) -> Option<&str> {
    path.file_name().and_then(|n| n.to_str())
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a rename or a file creation in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn parse_suffix(s: &str) -> Option<u64> {
    if s.len() == SUFFIX_DIGITS && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let a = Path::new("/var/lib/signerd/audit.log");
        let s = segment_path(a, 42);
        assert_eq!(
            s,
            Path::new("/var/lib/signerd/audit.log.00000000000000000042")
        );
        assert_eq!(active_path(&s), a);
        assert_eq!(active_path(a), a);
        assert_eq!(
            active_path(Path::new("audit.log.7")),
            Path::new("audit.log.7")
        );
    }

    #[test]
    fn find_sorts_by_seq_and_ignores_strangers() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.log");
        for seq in [300u64, 5, 40] {
            std::fs::write(segment_path(&a, seq), b"").unwrap();
        }
        std::fs::write(dir.path().join("a.log.tmp"), b"").unwrap();
        std::fs::write(dir.path().join("b.log.00000000000000000001"), b"").unwrap();
        let s = Segments::find(&segment_path(&a, 40)).unwrap();
        assert_eq!(s.active, a);
        let seqs: Vec<u64> = s.rotated.iter().map(|(q, _)| *q).collect();
        assert_eq!(seqs, vec![5, 40, 300]);
        assert_eq!(s.files().len(), 3, "the active file does not exist yet");
    }
}
