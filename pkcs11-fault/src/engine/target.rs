//! The wrapped module: loaded once per process, never unloaded.

use std::path::{Path, PathBuf};

use cryptoki_sys::*;

use crate::names::rv_text;

/// The wrapped module: the library (kept loaded for the life of the process) and a copy of its
/// function list.
pub(crate) struct Target {
    _lib: libloading::Library,
    pub list: CK_FUNCTION_LIST,
    pub path: PathBuf,
}

/// Loads `path` and copies its function list; refuses this fault module itself (`ours`).
pub(super) fn load_module(path: &Path, ours: *const CK_FUNCTION_LIST) -> Result<Target, String> {
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
