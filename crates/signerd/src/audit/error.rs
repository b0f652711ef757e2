//! Audit errors, and the verifier's account of the first bad record.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::verify::VerifyReport;

/// Why the audit log could not do what was asked.
///
/// For the signing path every variant means the same thing: the record is not durable, so the
/// signature must not be released (fail closed). Whether retrying can help is noted per variant.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AuditError {
    /// Reading or opening a file failed (the daemon's disk or permissions). Retrying helps only
    /// once the cause is fixed.
    #[error("audit file {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: Arc<std::io::Error>,
    },
    /// Writing or syncing this batch failed; its records are not durable. The log is now
    /// unhealthy and refuses further records: until there is room again if the disk was full,
    /// else until the daemon restarts (see docs/AUDIT.md).
    #[error("audit write failed: {0}")]
    Write(String),
    /// An earlier write failed, so the log does not accept records now (fail closed). After a
    /// full disk it resumes by itself once there is room; after any other failure a restart
    /// recovers the file and continues the chain.
    #[error(
        "audit log cannot be written after a write failure (a full disk resumes by itself once \
         there is room; other failures need a restart)"
    )]
    Unhealthy,
    /// The log was closed (daemon shutting down). Not retryable in this process.
    #[error("audit log is closed")]
    Closed,
    /// The existing log cannot be continued safely: its tail is corrupt beyond a torn last
    /// line. Nothing was written. An operator must look (`signerd audit verify`).
    #[error("audit log {path} is corrupt, refusing to continue it: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the log's lock file: a second daemon on the same audit path.
    /// Nothing was written. Retrying helps once the other daemon has stopped.
    #[error(
        "in use by another process{holder} holding {}: one daemon per audit path, since two \
         writers would fork the hash chain",
        lock.display()
    )]
    InUse {
        /// The lock file (`<active file>.lock`).
        lock: PathBuf,
        /// " (pid N)" when the lock file names its owner, else empty.
        holder: String,
    },
    /// Bad configuration or an unusable checkpoint key (the operator's fault).
    #[error("audit config: {0}")]
    Config(String),
    /// Verification found a bad record (or an unprovable end of log).
    #[error("{0}")]
    Verify(Box<VerifyFailure>),
}

impl AuditError {
    pub(crate) fn io(path: &Path, e: std::io::Error) -> AuditError {
        AuditError::Io {
            path: path.to_path_buf(),
            source: Arc::new(e),
        }
    }
}

/// Where the chain first stops being provably intact, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRecord {
    /// The segment file.
    pub segment: PathBuf,
    /// Line number in that file, from 1.
    pub line: u64,
    /// The seq a correct record at this position has (the chain position that is bad).
    pub seq: u64,
    /// The seq the line claims, when it could be read.
    pub found_seq: Option<u64>,
    /// What is wrong, in words.
    pub reason: String,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "first bad record: {} line {} (seq {}",
            self.segment.display(),
            self.line,
            self.seq
        )?;
        match self.found_seq {
            Some(s) if s != self.seq => write!(f, ", line says seq {s}")?,
            _ => {}
        }
        write!(f, "): {}", self.reason)
    }
}

/// A failed verification: the first bad record and what had been verified before it.
#[derive(Clone, Debug)]
pub struct VerifyFailure {
    /// The first bad record.
    pub bad: BadRecord,
    /// Counts up to (not including) the bad record.
    pub report: VerifyReport,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit log verification failed: {}", self.bad)
    }
}
