//! One PKCS#11 module per process: loaded and `C_Initialize`d once (with OS locking), shared by
//! every partition and engine that uses it, `C_Finalize`d once when the last user drops it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use parking_lot::Mutex;

use super::error::{HsmError, HsmResult};

/// A loaded and initialized PKCS#11 module.
#[derive(Debug)]
pub struct Module {
    path: PathBuf,
    ctx: Option<Pkcs11>,
}

/// Modules currently loaded in this process, by canonical path, with the environment they were
/// initialized under.
static LOADED: Mutex<Option<HashMap<PathBuf, LoadedModule>>> = Mutex::new(None);

/// A registry entry: the module (if still held) and the environment it was initialized with.
type LoadedModule = (Weak<Module>, BTreeMap<String, String>);

impl Module {
    /// Returns the process's instance of the module at `path`, loading and initializing it if no
    /// one holds it. `env` is applied to the process environment before the first load (modules
    /// such as SoftHSM2 read their config path at `C_Initialize`); asking for the same module with
    /// a different `env` while it is loaded is an error, because the module would not see it.
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
            // The module reads these at C_Initialize, below. This runs at engine start-up,
            // under the LOADED lock, before any of this module's threads exist.
            std::env::set_var(k, v);
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
