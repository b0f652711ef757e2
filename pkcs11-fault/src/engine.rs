//! The module's process-wide state and the decision made on every call: which rules match, what
//! they inject, and whether the call is forwarded to the wrapped module.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};

use crate::capacity::{Acquire, Permit};
use crate::config::{Action, Config};
use crate::names::{fid, rv_text, FUNCTIONS, FUNCTION_COUNT};
use crate::rng::entropy_seed;
use crate::rules::{At, LiveRule, RuleSet};
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

/// The wrapped module: the library (kept loaded for the life of the process) and a copy of its
/// function list.
pub(crate) struct Target {
    _lib: libloading::Library,
    pub list: CK_FUNCTION_LIST,
    pub path: PathBuf,
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
    sessions: RwLock<HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>>,
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
        let target = load_module(&path, ours)?;
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

    pub(crate) fn session_opened(&self, session: CK_SESSION_HANDLE, slot: CK_SLOT_ID) {
        self.sessions.write().insert(session, slot);
    }

    pub(crate) fn session_closed(&self, session: CK_SESSION_HANDLE) {
        self.sessions.write().remove(&session);
    }

    pub(crate) fn slot_sessions_closed(&self, slot: CK_SLOT_ID) {
        self.sessions.write().retain(|_, s| *s != slot);
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

    // ---- the call path ----

    /// Counts a call that is forwarded without rules (C_GetSlotList's own path).
    pub(crate) fn count_call(&self, fid: usize) {
        if let Some(c) = self.calls.get(fid) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Runs one call through the rules: removal, capacity, latency, hangs, errors, then (if no
    /// rule answered) `call`, the forward to the wrapped module. `drain` runs when an injected
    /// return code replaces a call that, per PKCS#11, ends the active operation; it ends that
    /// operation in the wrapped module too.
    pub(crate) fn intercept(
        &self,
        fid: usize,
        ctx: Ctx,
        call: impl FnOnce() -> CK_RV,
        drain: impl FnOnce(),
    ) -> CK_RV {
        self.count_call(fid);
        let set = self.rules();
        if set.rules.is_empty() {
            return call();
        }
        let token = self.token_of(ctx);
        let tok = token.as_deref();
        let now = self.at();

        // Pass 1: every matching rule counts the call (and draws, if it has a probability).
        let mut removed: Option<&Arc<LiveRule>> = None;
        let mut fired: Vec<&Arc<LiveRule>> = Vec::new();
        for r in &set.rules {
            if let Action::Remove { .. } = r.spec.action {
                if tok.is_some() && r.token_matches(tok) && r.remove_gate(now) && removed.is_none()
                {
                    removed = Some(r);
                }
            } else if r.matches(fid, tok) && r.gate(now) {
                fired.push(r);
            }
        }

        // Removal.
        if let Some(rule) = removed {
            if !REMOVAL_EXEMPT.contains(&fid) {
                let rv = match (ctx, &rule.spec.action) {
                    (Ctx::Slot(_), _) => CKR_TOKEN_NOT_PRESENT,
                    (_, Action::Remove { rv }) => *rv,
                    _ => CKR_DEVICE_REMOVED,
                };
                self.note(rule);
                return injected_rv(rv, drain);
            }
        }

        // Capacity: a place in each matching token queue (released, after the minimum call time,
        // when `_permits` drops at the end of this function).
        let mut _permits: Vec<Permit> = Vec::new();
        for r in &fired {
            let Action::Capacity {
                max_concurrent,
                call: min_call,
                max_waiting,
                rv,
            } = r.spec.action
            else {
                continue;
            };
            let Some(token) = &token else {
                continue; // capacity is per token; token-less calls pass
            };
            if !r.take() {
                continue;
            }
            let fifo = r.fifo(token, max_concurrent);
            match fifo.acquire(min_call, max_waiting, r.alive_flag()) {
                Acquire::Entered(p) => _permits.push(p),
                Acquire::Busy => {
                    r.busy();
                    self.injected_total.fetch_add(1, Ordering::Relaxed);
                    self.dirty.store(true, Ordering::Relaxed);
                    return injected_rv(rv, drain);
                }
                Acquire::Abandoned => {}
            }
        }

        // Latency: all matching rules add up, one sleep.
        let mut delay = Duration::ZERO;
        for r in &fired {
            if let Action::Latency { fixed, jitter } = r.spec.action {
                if r.take() {
                    delay += fixed + r.jitter(jitter);
                    self.note(r);
                }
            }
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }

        // Hangs, one after another.
        for r in &fired {
            if let Action::Hang { max, rv } = r.spec.action {
                if !r.take() {
                    continue;
                }
                self.note(r);
                let lifted = self.hang(r, max);
                if let (false, Some(rv)) = (lifted, rv) {
                    return injected_rv(rv, drain);
                }
            }
        }

        // Errors: the first that fires answers.
        for r in &fired {
            if let Action::Error { rv } = r.spec.action {
                if r.take() {
                    self.note(r);
                    return injected_rv(rv, drain);
                }
            }
        }

        call()
    }

    /// Blocks for `max` (or until lifted); true when the rule was lifted.
    fn hang(&self, rule: &LiveRule, max: Option<Duration>) -> bool {
        let start = Instant::now();
        loop {
            if !rule.is_alive() {
                return true;
            }
            let slice = match max {
                Some(m) => {
                    let spent = start.elapsed();
                    if spent >= m {
                        return false;
                    }
                    (m - spent).min(SLICE)
                }
                None => SLICE,
            };
            std::thread::sleep(slice);
            // Do not depend on the watcher alone (e.g. C_Finalize ran in another thread).
            self.check_config(false);
        }
    }

    fn note(&self, rule: &LiveRule) {
        rule.injected();
        self.injected_total.fetch_add(1, Ordering::Relaxed);
        self.dirty.store(true, Ordering::Relaxed);
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
        Stats {
            generation: set.generation,
            config_errors: self.config_errors.load(Ordering::Relaxed),
            config: self.config_path.as_ref().map(|p| p.display().to_string()),
            target: self.target().map(|t| t.path.display().to_string()),
            calls,
            finalizes: self.finalizes.load(Ordering::Relaxed),
            injected_total: self.injected_total.load(Ordering::Relaxed),
            rules,
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

/// Answers an injected return code; ends the wrapped operation first unless the code is one that
/// keeps it (`CKR_OK`, `CKR_BUFFER_TOO_SMALL`).
fn injected_rv(rv: CK_RV, drain: impl FnOnce()) -> CK_RV {
    if rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL {
        drain();
    }
    rv
}

/// Functions a removed token does not fail: slot info (it reports the token absent instead) and
/// closing sessions (so applications can clean up and rebuild).
const REMOVAL_EXEMPT: [usize; 3] = [
    fid("C_GetSlotInfo"),
    fid("C_CloseSession"),
    fid("C_CloseAllSessions"),
];

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

fn load_module(path: &Path, ours: *const CK_FUNCTION_LIST) -> Result<Target, String> {
    // SAFETY: loading a shared library runs its initializers; the path names a PKCS#11 module,
    // which is what this module exists to wrap (the operator chose it).
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("cannot load {}: {e}", path.display()))?;
    // SAFETY: `C_GetFunctionList` has this signature in every PKCS#11 module (v2.x and 3.x).
    let get: libloading::Symbol<'_, unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { lib.get(b"C_GetFunctionList\0") }
            .map_err(|e| format!("{}: no C_GetFunctionList: {e}", path.display()))?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer for the call.
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!(
            "{}: C_GetFunctionList returned {}",
            path.display(),
            rv_text(rv)
        ));
    }
    if std::ptr::eq(list, ours) {
        return Err(format!(
            "{}: that is this fault module itself; point target at the real module",
            path.display()
        ));
    }
    // SAFETY: the module returned a non-null pointer to its function list, which stays valid
    // while the library is loaded (we keep it loaded for the life of the process); we copy it.
    let list = unsafe { *list };
    Ok(Target {
        _lib: lib,
        list,
        path: path.to_owned(),
    })
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
