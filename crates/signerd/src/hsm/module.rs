//! One PKCS#11 module per process: loaded and `C_Initialize`d once (with OS locking), shared by
//! every partition and engine that uses it, `C_Finalize`d once when the last user drops it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use super::error::{HsmError, HsmResult};

/// A loaded and initialized PKCS#11 module.
#[derive(Debug)]
pub struct Module {
    path: PathBuf,
    ctx: Option<Pkcs11>,
    /// Shared by every HSM call of the workers and health probes ([`Module::calls`]); taken
    /// exclusively by [`Module::reinitialize`], so nothing uses the module while it is finalized.
    calls: RwLock<()>,
    /// Single flight for [`Module::reinitialize`], and when it last ran.
    reinit: Mutex<Option<Instant>>,
    /// Bumped by each re-initialization: sessions (and object handles) of an older generation
    /// are dead, and their handle numbers may now name someone else's session.
    generation: AtomicU64,
}

/// The least time between two re-initializations of one module.
pub const REINIT_COOLDOWN: Duration = Duration::from_secs(60);
/// How long a re-initialization waits for calls in flight to finish before giving up (new calls
/// wait meanwhile, so this bounds the stall it can cause).
const REINIT_DRAIN: Duration = Duration::from_millis(250);

/// Modules currently loaded in this process, by canonical path, with the environment they were
/// initialized under.
static LOADED: Mutex<Option<HashMap<PathBuf, LoadedModule>>> = Mutex::new(None);

/// A registry entry: the module (if still held) and the environment it was initialized with.
type LoadedModule = (Weak<Module>, BTreeMap<String, String>);

/// Puts the variables that PKCS#11 modules read at `C_Initialize` (`[providers.NAME] env`, e.g.
/// `SOFTHSM2_CONF`; [`crate::config::Config::module_env`]) into the process environment: the only
/// place signerd changes its own environment. There is no other way to give a module its
/// settings: PKCS#11 has no parameter for them, and SoftHSM2 (like most modules) reads
/// `getenv` inside `C_Initialize`.
///
/// Changing the environment is sound only while no other thread may read it: C code (a module's
/// own threads, libc's `getenv` behind name resolution or time zones) reads it without Rust's
/// lock, which is why Rust 2024 makes `std::env::set_var` unsafe. So this is called before the
/// process starts its first thread, and by nothing else:
///
/// - `signerd serve`, `check` and `selftest` call it right after reading the config (cli's
///   `load_config`): `main` before that only parsed the command line and installed the log
///   subscriber (a plain stderr writer), neither of which starts a thread; the tokio runtime,
///   the metrics recorder, the engine's workers, probes and watchdog, the audit writer and every
///   module come after it;
/// - `signerd init --dev` ([`crate::dev::init_dev`]) for its own `SOFTHSM2_CONF`, before it
///   loads the module, with nothing started before it either;
/// - `loadgen ceiling` and the `engine_ceiling` benchmark, first thing in their `main`.
///
/// On Linux the call also checks it (`/proc/self/task` must list one thread) and refuses
/// otherwise; elsewhere it relies on the call order above. Variables that already hold their
/// value are left alone, and if all do nothing is set: a process that was started with them in
/// its environment (or a test binary that set them before `main`) may call this at any time.
pub fn set_module_env(env: &BTreeMap<String, String>) -> Result<(), String> {
    let missing: Vec<(&String, &String)> = env
        .iter()
        .filter(|(k, v)| std::env::var_os(k).is_none_or(|now| now != v.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names = || {
        missing
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(threads) = threads_in_this_process() {
        if threads != 1 {
            return Err(format!(
                "cannot set {} for the PKCS#11 module: the process already runs {threads} \
                 threads, and changing the environment under them is unsound; set it in the \
                 environment that starts the process",
                names()
            ));
        }
    }
    for (k, v) in missing {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(format!("{k:?} = {v:?} is not a valid environment variable"));
        }
        // The process has one thread (checked above on Linux; the call order on every system,
        // see the doc comment), so nothing can read the environment while it changes.
        std::env::set_var(k, v);
    }
    Ok(())
}

/// Threads of this process, where the system tells (Linux: `/proc/self/task`).
fn threads_in_this_process() -> Option<usize> {
    if cfg!(target_os = "linux") {
        std::fs::read_dir("/proc/self/task")
            .ok()
            .map(Iterator::count)
    } else {
        None
    }
}

impl Module {
    /// Returns the process's instance of the module at `path`, loading and initializing it if no
    /// one holds it. `env` is what the module reads at `C_Initialize` (modules such as SoftHSM2
    /// read their config path there): it must already be in the process environment
    /// ([`set_module_env`], called before the process starts threads), else this is an error, as
    /// is asking for the same module with a different `env` while it is loaded (the module would
    /// not see it).
    pub fn load(path: &Path, env: &BTreeMap<String, String>) -> HsmResult<Arc<Module>> {
        let key = path.canonicalize().map_err(|e| HsmError::Load {
            path: path.display().to_string(),
            reason: format!(
                "{e} (is the module installed? for SoftHSM2 on Debian/Ubuntu: \
                             apt-get install softhsm2)"
            ),
        })?;
        let mut guard = LOADED.lock();
        let loaded = guard.get_or_insert_with(HashMap::new);
        if let Some((weak, old_env)) = loaded.get(&key) {
            if let Some(module) = weak.upgrade() {
                if old_env != env {
                    return Err(HsmError::Load {
                        path: key.display().to_string(),
                        reason: format!(
                            "already initialized in this process with environment {old_env:?}; \
                             cannot re-initialize it with {env:?}"
                        ),
                    });
                }
                return Ok(module);
            }
        }
        for (k, v) in env {
            // The module reads these at C_Initialize, below; they were put into the environment
            // before the process started any thread.
            let now = std::env::var_os(k);
            if now.as_deref() != Some(std::ffi::OsStr::new(v)) {
                return Err(HsmError::Load {
                    path: key.display().to_string(),
                    reason: format!(
                        "the module reads {k} at C_Initialize and it should be {v:?}, but this \
                         process has {}; the provider's env is set at start, before any thread \
                         (hsm::module::set_module_env), or inherited from the environment",
                        now.map_or_else(|| "it unset".to_owned(), |n| format!("{n:?}"))
                    ),
                });
            }
        }
        let ctx = Pkcs11::new(&key).map_err(|e| HsmError::Load {
            path: key.display().to_string(),
            reason: e.to_string(),
        })?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) => {}
            // Someone else in this process initialized it outside this registry: share it,
            // but then we must not finalize it either.
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                tracing::warn!(module = %key.display(), "module was already initialized");
            }
            Err(e) => return Err(HsmError::from(e)),
        }
        let module = Arc::new(Module {
            path: key.clone(),
            ctx: Some(ctx),
            calls: RwLock::new(()),
            reinit: Mutex::new(None),
            generation: AtomicU64::new(0),
        });
        loaded.insert(key, (Arc::downgrade(&module), env.clone()));
        Ok(module)
    }

    /// The PKCS#11 context.
    pub fn ctx(&self) -> &Pkcs11 {
        // The context is only taken in Drop.
        #[allow(clippy::expect_used)]
        self.ctx
            .as_ref()
            .expect("module context present until drop")
    }

    /// The module's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Held (shared) around HSM calls, so that [`Module::reinitialize`] never finalizes the
    /// module under a running call. Not re-entrant while a re-initialization waits: take it once,
    /// at the top of a unit of work.
    pub fn calls(&self) -> RwLockReadGuard<'_, ()> {
        self.calls.read()
    }

    /// The module's generation: changes when [`Module::reinitialize`] finalized and initialized it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `C_Finalize` then `C_Initialize`, once (single flight: a call while another runs, or
    /// within [`REINIT_COOLDOWN`] of the last one, does nothing and returns `Ok(false)`). Waits
    /// at most a short while for calls in flight (a hung call makes it give up: `Ok(false)`).
    /// While it runs no other call is made; `after` runs before the lock is released (the
    /// partitions drop their dead sessions there). Every session of the module dies; the
    /// generation changes so that their owners open new ones.
    pub fn reinitialize(&self, why: &str, after: impl FnOnce()) -> HsmResult<bool> {
        let Some(mut last) = self.reinit.try_lock() else {
            return Ok(false);
        };
        if last.is_some_and(|t| t.elapsed() < REINIT_COOLDOWN) {
            return Ok(false);
        }
        let Some(_exclusive) = self.calls.try_write_for(REINIT_DRAIN) else {
            tracing::warn!(module = %self.path.display(), "module re-initialization skipped: calls in flight did not finish");
            return Ok(false);
        };
        *last = Some(Instant::now());
        tracing::warn!(module = %self.path.display(), reason = why, "re-initializing the PKCS#11 module (C_Finalize, C_Initialize)");
        let ctx = self.ctx();
        if let Err(e) = ctx.clone().finalize() {
            tracing::warn!(module = %self.path.display(), "C_Finalize: {e}");
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        let init = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        after();
        match init {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {
                tracing::info!(module = %self.path.display(), "PKCS#11 module re-initialized; sessions are rebuilt");
                Ok(true)
            }
            Err(e) => Err(HsmError::from(e)),
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // Hold the registry lock so a concurrent `load` cannot initialize the module while we
        // finalize it.
        let mut guard = LOADED.lock();
        if let Some(loaded) = guard.as_mut() {
            loaded.remove(&self.path);
        }
        if let Some(ctx) = self.ctx.take() {
            match ctx.finalize() {
                Ok(()) => tracing::debug!(module = %self.path.display(), "finalized"),
                Err(e) => tracing::warn!(module = %self.path.display(), "C_Finalize: {e}"),
            }
        }
    }
}
