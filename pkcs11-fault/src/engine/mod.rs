//! The module's process-wide state: the rules in force and their reload, the watcher thread, the
//! session → slot → label bookkeeping, call counters and the stats. The per-call decision is in
//! `call.rs`, the wrapped module in `target.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};

use crate::config::Config;
use crate::handles::Handles;
use crate::names::{FUNCTIONS, FUNCTION_COUNT};
use crate::rng::entropy_seed;
use crate::rules::{At, RuleSet};
use crate::stats::{write_atomic, RuleStats, Stats};

/// Env: path of the TOML config (absent: pure pass-through).
pub const ENV_CONFIG: &str = "SIGNERD_FAULT_CONFIG";
/// Env: path of the wrapped module (the config's `target` wins).
pub const ENV_TARGET: &str = "SIGNERD_FAULT_TARGET";
/// The wrapped module when neither says.
pub const DEFAULT_TARGET: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The config file is looked at no more often than this.
const CHECK_EVERY: Duration = Duration::from_millis(20);
/// The stats file is written no more often than this.
const STATS_EVERY: Duration = Duration::from_millis(100);
/// Hangs and waits re-check their rule this often.
const SLICE: Duration = Duration::from_millis(10);

/// Which token a call is about, as far as its arguments tell.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ctx {
    /// No token: C_Initialize, C_GetInfo, C_GetSlotList, C_WaitForSlotEvent, ...
    None,
    /// A slot id.
    Slot(CK_SLOT_ID),
    /// A session handle (its slot was recorded at C_OpenSession).
    Session(CK_SESSION_HANDLE),
}

/// The process-wide state.
pub(crate) struct Engine {
    config_path: Option<PathBuf>,
    entropy: u64,
    rules: RwLock<Arc<RuleSet>>,
    reload: Mutex<ReloadState>,
    config_errors: AtomicU64,
    calls: [AtomicU64; FUNCTION_COUNT],
    injected_total: AtomicU64,
    finalizes: AtomicU64,
    dirty: AtomicBool,
    /// The slot of each open session, by the application's handle.
    sessions: RwLock<HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>>,
    handles: Handles,
    labels: RwLock<HashMap<CK_SLOT_ID, Arc<str>>>,
    target: OnceLock<Target>,
    target_lock: Mutex<()>,
    watcher: Mutex<Option<Watcher>>,
    stats: Mutex<StatsState>,
}

#[derive(Debug)]
struct ReloadState {
    /// The file as last seen: `None` before the first look, `Some(None)` when it was missing.
    seen: Option<Option<FileSig>>,
    last_check: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileSig {
    mtime: Option<SystemTime>,
    len: u64,
    ino: u64,
}

#[derive(Debug, Default)]
struct StatsState {
    last_write: Option<Instant>,
    error_logged: bool,
}

struct Watcher {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

static ENGINE: OnceLock<Engine> = OnceLock::new();

/// The process's engine, created (and the config first read) on first use.
pub(crate) fn engine() -> &'static Engine {
    ENGINE.get_or_init(|| {
        let engine = Engine::new(std::env::var_os(ENV_CONFIG).map(PathBuf::from));
        engine.check_config(true);
        engine
    })
}

/// Logs one line to stderr (the module has no other channel).
pub(crate) fn log(msg: &str) {
    eprintln!("certnode-pkcs11-fault: {msg}");
}

mod call;
mod target;

pub(crate) use target::Target;

impl Engine {
    fn new(config_path: Option<PathBuf>) -> Engine {
        Engine {
            config_path: config_path.filter(|p| !p.as_os_str().is_empty()),
            entropy: entropy_seed(),
            rules: RwLock::new(Arc::new(RuleSet::default())),
            reload: Mutex::new(ReloadState {
                seen: None,
                last_check: None,
            }),
            config_errors: AtomicU64::new(0),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            injected_total: AtomicU64::new(0),
            finalizes: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            sessions: RwLock::new(HashMap::new()),
            handles: Handles::new(),
            labels: RwLock::new(HashMap::new()),
            target: OnceLock::new(),
            target_lock: Mutex::new(()),
            watcher: Mutex::new(None),
            stats: Mutex::new(StatsState::default()),
        }
    }

    // ---- the wrapped module ----

    /// The wrapped module, if loaded.
    pub(crate) fn target(&self) -> Option<&Target> {
        self.target.get()
    }

    /// Loads the wrapped module (once per process): the config's `target`, else
    /// `SIGNERD_FAULT_TARGET`, else SoftHSM2's Debian path.
    pub(crate) fn load_target(&self, ours: *const CK_FUNCTION_LIST) -> Result<&Target, String> {
        if let Some(t) = self.target.get() {
            return Ok(t);
        }
        let _g = self.target_lock.lock();
        if let Some(t) = self.target.get() {
            return Ok(t);
        }
        let path = self
            .rules()
            .config
            .target
            .clone()
            .or_else(|| std::env::var_os(ENV_TARGET).map(PathBuf::from))
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_TARGET));
        let target = target::load_module(&path, ours)?;
        let _ = self.target.set(target);
        self.target
            .get()
            .ok_or_else(|| "wrapped module vanished".to_owned())
    }

    // ---- config ----

    /// The rules in force.
    pub(crate) fn rules(&self) -> Arc<RuleSet> {
        Arc::clone(&self.rules.read())
    }

    /// Re-reads the config when its size, mtime or inode changed. Without `force`, at most once
    /// per ~20 ms, and not at all if another thread is at it.
    pub(crate) fn check_config(&self, force: bool) {
        let Some(path) = &self.config_path else {
            return;
        };
        let mut st = if force {
            self.reload.lock()
        } else {
            match self.reload.try_lock() {
                Some(st) => st,
                None => return,
            }
        };
        let now = Instant::now();
        if !force
            && st
                .last_check
                .is_some_and(|t| now.duration_since(t) < CHECK_EVERY)
        {
            return;
        }
        st.last_check = Some(now);
        let sig = match std::fs::metadata(path) {
            Ok(m) => Some(file_sig(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                if st.seen.is_some() {
                    return; // transient; keep what we have
                }
                log(&format!("config {}: {e}; no faults", path.display()));
                st.seen = Some(None);
                return;
            }
        };
        if st.seen == Some(sig) {
            return;
        }
        st.seen = Some(sig);
        let config = match sig {
            None => {
                log(&format!(
                    "config {} does not exist: no faults until it does",
                    path.display()
                ));
                Config::default()
            }
            Some(_) => match Config::load(path) {
                Ok(c) => c,
                Err(e) => {
                    self.config_errors.fetch_add(1, Ordering::Relaxed);
                    self.dirty.store(true, Ordering::Relaxed);
                    log(&format!(
                        "config {}: {e}; keeping the previous rules",
                        path.display()
                    ));
                    return;
                }
            },
        };
        let mut rules = self.rules.write();
        let next = RuleSet::build(
            config,
            rules.generation + 1,
            &rules,
            self.entropy,
            self.finalizes.load(Ordering::Acquire),
        );
        *rules = Arc::new(next);
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Starts the thread that watches the config and writes the stats (if there is a config).
    pub(crate) fn start_watcher(&'static self) {
        if self.config_path.is_none() {
            return;
        }
        let mut w = self.watcher.lock();
        if w.is_some() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("pkcs11-fault-watch".into())
            .spawn(move || {
                while !stop2.load(Ordering::Acquire) {
                    std::thread::sleep(CHECK_EVERY);
                    self.check_config(false);
                    self.write_stats(false);
                }
            });
        match spawned {
            Ok(handle) => *w = Some(Watcher { stop, handle }),
            Err(e) => log(&format!(
                "cannot start the config watcher ({e}); config changes apply at C_Initialize"
            )),
        }
    }

    /// Stops and joins the watcher (before C_Finalize returns, so no thread of ours outlives a
    /// finalize-then-unload).
    pub(crate) fn stop_watcher(&self) {
        let w = self.watcher.lock().take();
        if let Some(w) = w {
            w.stop.store(true, Ordering::Release);
            let _ = w.handle.join();
        }
    }

    // ---- sessions and tokens ----

    /// The handle translation (`own_handles`).
    pub(crate) fn handles(&self) -> &Handles {
        &self.handles
    }

    pub(crate) fn session_opened(&self, session: CK_SESSION_HANDLE, slot: CK_SLOT_ID) {
        self.sessions.write().insert(session, slot);
    }

    pub(crate) fn session_closed(&self, session: CK_SESSION_HANDLE) {
        self.sessions.write().remove(&session);
        self.handles.session_closed(session);
    }

    pub(crate) fn slot_sessions_closed(&self, slot: CK_SLOT_ID) {
        self.sessions.write().retain(|h, s| {
            let keep = *s != slot;
            if !keep {
                self.handles.session_closed(*h);
            }
            keep
        });
    }

    /// Records a successful C_Finalize (ends `until_finalize` rules).
    pub(crate) fn finalized(&self) {
        self.finalizes.fetch_add(1, Ordering::AcqRel);
        self.dirty.store(true, Ordering::Relaxed);
    }

    fn at(&self) -> At {
        At::now(self.finalizes.load(Ordering::Acquire))
    }

    /// Forgets sessions and labels (C_Initialize, C_Finalize).
    pub(crate) fn forget_all(&self) {
        self.sessions.write().clear();
        self.labels.write().clear();
    }

    /// Forgets cached labels (C_InitToken: labels change, and SoftHSM2 renumbers slots).
    pub(crate) fn forget_labels(&self) {
        self.labels.write().clear();
    }

    /// Records a label seen in a forwarded C_GetTokenInfo.
    pub(crate) fn learn_label(&self, slot: CK_SLOT_ID, info: &CK_TOKEN_INFO) {
        let label: Arc<str> = Arc::from(label_text(&info.label));
        self.labels.write().insert(slot, label);
    }

    /// The label of the token in `slot`, cached; asks the wrapped module on a miss.
    pub(crate) fn label(&self, slot: CK_SLOT_ID) -> Option<Arc<str>> {
        if let Some(l) = self.labels.read().get(&slot) {
            return Some(Arc::clone(l));
        }
        let f = self.target()?.list.C_GetTokenInfo?;
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: `f` is the wrapped module's C_GetTokenInfo; `info` is a valid, writable
        // CK_TOKEN_INFO that lives for the call.
        let rv = unsafe { f(slot, &mut info) };
        if rv != CKR_OK {
            return None;
        }
        self.learn_label(slot, &info);
        self.labels.read().get(&slot).cloned()
    }

    fn token_of(&self, ctx: Ctx) -> Option<Arc<str>> {
        let slot = match ctx {
            Ctx::None => return None,
            Ctx::Slot(s) => s,
            Ctx::Session(h) => *self.sessions.read().get(&h)?,
        };
        self.label(slot)
    }

    /// Whether the token in `slot` is hidden by a `remove` rule now (counts it as injected).
    pub(crate) fn slot_removed(&self, rules: &RuleSet, slot: CK_SLOT_ID) -> bool {
        if !rules.has_remove {
            return false;
        }
        let Some(label) = self.label(slot) else {
            return false;
        };
        match rules.token_removed(&label, self.at()) {
            Some(rule) => {
                rule.injected();
                self.injected_total.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    // ---- stats ----

    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> Stats {
        let set = self.rules();
        let calls: BTreeMap<String, u64> = FUNCTIONS
            .iter()
            .zip(self.calls.iter())
            .map(|(n, c)| ((*n).to_owned(), c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect();
        let rules = set
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (matched, injected, busy, max_inflight, max_waiting) = r.counters();
                RuleStats {
                    name: r.spec.name.clone().unwrap_or_else(|| format!("rule{i}")),
                    kind: r.spec.action.kind().to_owned(),
                    functions: r
                        .spec
                        .functions
                        .names()
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                    token: r.spec.token.clone(),
                    matched,
                    injected,
                    busy,
                    max_inflight: max_inflight as u64,
                    max_waiting: max_waiting as u64,
                    age_s: r.age().as_secs_f64(),
                }
            })
            .collect();
        let (stale_sessions, stale_objects) = self.handles.stale();
        Stats {
            generation: set.generation,
            config_errors: self.config_errors.load(Ordering::Relaxed),
            config: self.config_path.as_ref().map(|p| p.display().to_string()),
            target: self.target().map(|t| t.path.display().to_string()),
            calls,
            finalizes: self.finalizes.load(Ordering::Relaxed),
            injected_total: self.injected_total.load(Ordering::Relaxed),
            rules,
            own_handles: self.handles.own(),
            stale_sessions,
            stale_objects,
        }
    }

    /// Writes the stats file if the config names one and something changed (at most every
    /// ~100 ms unless `force`).
    pub(crate) fn write_stats(&self, force: bool) {
        let set = self.rules();
        let Some(path) = set.config.stats.as_deref() else {
            return;
        };
        let mut st = self.stats.lock();
        if !force
            && (!self.dirty.load(Ordering::Relaxed)
                || st.last_write.is_some_and(|t| t.elapsed() < STATS_EVERY))
        {
            return;
        }
        self.dirty.store(false, Ordering::Relaxed);
        st.last_write = Some(Instant::now());
        let json = match serde_json::to_vec_pretty(&self.snapshot()) {
            Ok(j) => j,
            Err(_) => return,
        };
        if let Err(e) = write_atomic(path, &json) {
            if !st.error_logged {
                st.error_logged = true;
                log(&format!("cannot write stats to {}: {e}", path.display()));
            }
        }
    }
}

/// A token label as text: the 32 space-padded bytes, trailing blanks and NULs trimmed.
pub(crate) fn label_text(label: &[CK_UTF8CHAR]) -> String {
    String::from_utf8_lossy(label)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

fn file_sig(m: &std::fs::Metadata) -> FileSig {
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(m);
    #[cfg(not(unix))]
    let ino = 0;
    FileSig {
        mtime: m.modified().ok(),
        len: m.len(),
        ino,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_trimmed() {
        let mut l = [b' '; 32];
        l[..7].copy_from_slice(b"fault-0");
        assert_eq!(label_text(&l), "fault-0");
    }
}
