//! `certnode-pkcs11-fault`: a PKCS#11 module that forwards every call to a real module (SoftHSM2
//! in tests) and injects faults on the way: return codes, latency, hangs, token removal and the
//! capacity limits of a network HSM. A TOML file, re-read when it changes, says which; see
//! README.md for the format, the environment variables and the caveats.
//!
//! As a `cdylib` (`libcertnode_pkcs11_fault.so`) it is the module applications load. As an
//! `rlib` it offers the config parser ([`Config`]), the stats document ([`Stats`]) and
//! [`Control`], which reaches the counters of the module an application (or test) loaded in
//! the same process.
//!
//! FFI: this crate needs `unsafe` (the workspace denies it elsewhere). Every unsafe block says
//! why it is sound; every function the application can call catches panics and answers
//! `CKR_GENERAL_ERROR` instead.
#![allow(unsafe_code)]

mod capacity;
pub mod config;
mod engine;
mod ffi;
mod handles;
pub mod mechanisms;
pub mod names;
mod rng;
mod rules;
pub mod stats;
pub mod token_info;

use std::path::{Path, PathBuf};

pub use config::Config;
pub use engine::{DEFAULT_TARGET, ENV_CONFIG, ENV_TARGET};
pub use ffi::C_GetFunctionList;
pub use stats::{RuleStats, Stats};

/// The file name of the built module (in `target/<profile>/`).
pub const MODULE_FILE: &str = "libcertnode_pkcs11_fault.so";

/// A handle on the fault module loaded (by path) in this process: its counters and a forced
/// config re-read. It opens the same shared object the application loaded (the dynamic loader
/// hands back the loaded copy for the same path), so it sees that copy's state, not this
/// rlib's.
#[derive(Debug)]
pub struct Control {
    lib: libloading::Library,
    path: PathBuf,
}

type StatsFn = unsafe extern "C" fn(*mut u8, usize) -> usize;
type ReloadFn = extern "C" fn() -> u64;

impl Control {
    /// Opens the module at `path` (the path the application loaded it by).
    pub fn open(path: &Path) -> Result<Control, String> {
        // SAFETY: loading our own cdylib; if the application already loaded it, this only takes
        // another reference to the loaded copy; otherwise its initializers are Rust statics.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(Control {
            lib,
            path: path.to_owned(),
        })
    }

    /// The counters.
    pub fn stats(&self) -> Result<Stats, String> {
        // SAFETY: the symbol is defined by this crate with exactly this signature.
        let f: libloading::Symbol<'_, StatsFn> =
            unsafe { self.lib.get(b"certnode_fault_stats_json\0") }
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: `buf` is valid for writing `buf.len()` bytes.
            let n = unsafe { f(buf.as_mut_ptr(), buf.len()) };
            if n == 0 {
                return Err("the module could not render its stats".into());
            }
            if n <= buf.len() {
                buf.truncate(n);
                break;
            }
            buf.resize(n, 0);
        }
        serde_json::from_slice(&buf).map_err(|e| format!("stats JSON: {e}"))
    }

    /// Re-reads the config now if it changed (rather than within ~20 ms) and writes the stats
    /// file; returns the config generation.
    pub fn reload(&self) -> Result<u64, String> {
        // SAFETY: the symbol is defined by this crate with exactly this signature.
        let f: libloading::Symbol<'_, ReloadFn> =
            unsafe { self.lib.get(b"certnode_fault_reload\0") }
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(f())
    }
}
