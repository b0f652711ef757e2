//! Free space on the audit log's filesystem. The log fails closed: once a record cannot be
//! written, every signature is refused. Nothing prunes rotated segments (deleting them breaks
//! verification; docs/AUDIT.md), so a busy daemon fills its disk unless operators archive
//! them. This watcher says so early: a gauge, a `/readyz` warning line, and a log line when the
//! free space crosses `[audit] min_free_mib` (and again every [`REPEAT`] while it stays low).
//!
//! It never refuses work itself: every daemon of a fleet shares the same rotation pattern, so
//! turning them unready at a threshold would take the whole fleet out before the disk is full.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How often a low-space warning is repeated while the space stays low.
pub const REPEAT: Duration = Duration::from_secs(600);

/// Bytes available to an unprivileged writer on the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// The last measurement and what was said about it.
#[derive(Debug, Default)]
struct State {
    /// Free bytes at the last successful measurement.
    free: Option<u64>,
    /// The last measurement failed (its error, for the warning line).
    error: Option<String>,
    /// When the current low (or failed) spell was last logged.
    logged: Option<Instant>,
}

/// Watches the free space of one directory's filesystem against a floor.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    min_free: u64,
    state: Mutex<State>,
}

impl DiskSpace {
    /// How often [`DiskSpace::watch`] measures.
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// A watcher of the filesystem holding the audit log at `log` (its active file); below
    /// `min_free` bytes the space counts as low (0: never).
    pub fn for_log(log: &Path, min_free: u64) -> Self {
        DiskSpace::new(super::segments::parent(log), min_free)
    }

    /// A watcher of `dir`'s filesystem; below `min_free` bytes the space counts as low (0: never).
    pub fn new(dir: PathBuf, min_free: u64) -> Self {
        DiskSpace {
            dir,
            min_free,
            state: Mutex::new(State::default()),
        }
    }

    /// Measures now (a `statvfs`; may block on a stuck network filesystem, so call it off the
    /// async runtime) and logs a change.
    pub fn check(&self) {
        self.record(available_bytes(&self.dir), Instant::now());
    }

    /// Measures now, then every [`DiskSpace::INTERVAL`] on a thread of its own for the rest of
    /// the process. A detached thread, not a runtime task: a `statvfs` stuck on a hung network
    /// filesystem must not hold up the runtime's shutdown.
    pub fn watch(self: &std::sync::Arc<Self>) -> std::io::Result<()> {
        self.check();
        let disk = std::sync::Arc::clone(self);
        std::thread::Builder::new()
            .name("audit-disk".into())
            .spawn(move || loop {
                std::thread::sleep(DiskSpace::INTERVAL);
                disk.check();
            })
            .map(|_| ())
    }

    /// Free bytes at the last successful measurement.
    pub fn free_bytes(&self) -> Option<u64> {
        self.state.lock().free
    }

    /// Why the audit disk needs attention, if it does: below the floor, or not measurable.
    pub fn warning(&self) -> Option<String> {
        let st = self.state.lock();
        self.warning_of(&st)
    }

    fn warning_of(&self, st: &State) -> Option<String> {
        if let Some(e) = &st.error {
            return Some(format!(
                "audit disk: cannot measure free space in {}: {e}",
                self.dir.display()
            ));
        }
        let free = st.free?;
        (free < self.min_free).then(|| {
            format!(
                "audit disk low: {} MiB free in {}, below audit.min_free_mib = {}. Signing fails \
                 closed once the log cannot be written: archive rotated segments (docs/AUDIT.md)",
                free >> 20,
                self.dir.display(),
                self.min_free >> 20
            )
        })
    }

    /// Takes one measurement taken at `now`; logs entering a low spell (and every [`REPEAT`]
    /// while in it) and leaving it.
    fn record(&self, measured: std::io::Result<u64>, now: Instant) {
        let mut st = self.state.lock();
        let was_bad = self.warning_of(&st).is_some();
        match measured {
            Ok(free) => {
                st.free = Some(free);
                st.error = None;
            }
            Err(e) => st.error = Some(e.to_string()),
        }
        match self.warning_of(&st) {
            Some(why) => {
                let due = st
                    .logged
                    .is_none_or(|at| now.saturating_duration_since(at) >= REPEAT);
                if due || !was_bad {
                    tracing::warn!("{why}");
                    st.logged = Some(now);
                }
            }
            None => {
                if was_bad {
                    tracing::info!(
                        dir = %self.dir.display(),
                        free_mib = st.free.unwrap_or(0) >> 20,
                        "audit disk space is above audit.min_free_mib again"
                    );
                }
                st.logged = None;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn measures_a_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        let free = available_bytes(dir.path()).unwrap();
        assert!(free > 0, "a writable temp dir has free space");
        let w = DiskSpace::new(dir.path().to_path_buf(), 0);
        assert_eq!(w.free_bytes(), None, "nothing measured yet");
        w.check();
        assert!(w.free_bytes().unwrap() > 0);
        assert_eq!(w.warning(), None, "a floor of 0 is never low");
        let missing = dir.path().join("no-such-dir");
        assert!(available_bytes(&missing).is_err());
    }

    #[test]
    fn below_the_floor_warns_and_recovers() {
        let w = DiskSpace::new(PathBuf::from("/var/lib/signerd/audit"), 1024 * MIB);
        let t0 = Instant::now();
        w.record(Ok(5000 * MIB), t0);
        assert_eq!(w.warning(), None);
        w.record(Ok(1023 * MIB), t0);
        let why = w.warning().expect("below the floor");
        assert!(why.contains("1023 MiB free"), "{why}");
        assert!(why.contains("/var/lib/signerd/audit"), "{why}");
        assert!(why.contains("min_free_mib = 1024"), "{why}");
        assert_eq!(w.state.lock().logged, Some(t0), "the spell was logged");
        // Still low a minute later: not logged again until REPEAT has passed.
        w.record(Ok(1000 * MIB), t0 + Duration::from_secs(60));
        assert_eq!(w.state.lock().logged, Some(t0));
        let later = t0 + REPEAT;
        w.record(Ok(900 * MIB), later);
        assert_eq!(w.state.lock().logged, Some(later));
        assert_eq!(w.free_bytes(), Some(900 * MIB));
        w.record(Ok(1024 * MIB), later);
        assert_eq!(w.warning(), None, "at the floor is not below it");
        assert_eq!(w.state.lock().logged, None);
    }

    #[test]
    fn a_failed_measurement_is_a_warning_and_keeps_the_last_value() {
        let w = DiskSpace::new(PathBuf::from("/audit"), MIB);
        let t0 = Instant::now();
        w.record(Ok(10 * MIB), t0);
        w.record(Err(std::io::Error::other("stale file handle")), t0);
        let why = w.warning().expect("unmeasurable");
        assert!(why.contains("stale file handle"), "{why}");
        assert_eq!(
            w.free_bytes(),
            Some(10 * MIB),
            "the gauge keeps the last value"
        );
        w.record(Ok(10 * MIB), t0);
        assert_eq!(w.warning(), None);
    }
}
