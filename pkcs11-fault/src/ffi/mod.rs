//! The C side: our `CK_FUNCTION_LIST`, the exported `C_GetFunctionList`, and two extra symbols
//! for tests and drills (`certnode_fault_stats_json`, `certnode_fault_reload`).
//!
//! Every exported or listed function runs its body under `catch_unwind` and answers
//! `CKR_GENERAL_ERROR` if it panicked: a panic never crosses into the application.

mod forward;
mod special;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use cryptoki_sys::*;

use crate::engine::engine;

/// Runs `f`, turning a panic into `CKR_GENERAL_ERROR`.
pub(crate) fn guard(f: impl FnOnce() -> CK_RV) -> CK_RV {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(CKR_GENERAL_ERROR)
}

/// Scratch outputs larger than this are not allocated when ending an operation.
const DRAIN_MAX: CK_ULONG = 1 << 20;

/// Ends an operation whose single call writes its output through `(buf, len)`: asks for the
/// length (which keeps the operation), then runs it into a scratch buffer (which ends it).
pub(crate) fn drain_out(mut f: impl FnMut(*mut CK_BYTE, *mut CK_ULONG) -> CK_RV) {
    let mut len: CK_ULONG = 0;
    if f(ptr::null_mut(), &mut len) != CKR_OK {
        return; // an error ended it already
    }
    for _ in 0..3 {
        if len > DRAIN_MAX {
            return;
        }
        let mut buf = vec![0u8; (len as usize).max(1)];
        let mut got = buf.len() as CK_ULONG;
        if f(buf.as_mut_ptr(), &mut got) != CKR_BUFFER_TOO_SMALL {
            return;
        }
        len = got.max(len.saturating_mul(2)).max(64);
    }
}

/// Calls one function of the wrapped module's list, `CKR_FUNCTION_NOT_SUPPORTED` if it has none.
macro_rules! call_target {
    ($list:expr, $name:ident ( $($arg:expr),* )) => {
        match $list.$name {
            // SAFETY: a function of the wrapped module's list, called with arguments that satisfy
            // its PKCS#11 contract: the application's own (unchanged) or buffers owned here.
            Some(g) => unsafe { g($($arg),*) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    };
}
pub(crate) use call_target;

/// Our function list: every v2.40 entry points at a forwarder of this crate.
static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(special::C_Initialize),
    C_Finalize: Some(special::C_Finalize),
    C_GetInfo: Some(forward::C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(special::C_GetSlotList),
    C_GetSlotInfo: Some(special::C_GetSlotInfo),
    C_GetTokenInfo: Some(special::C_GetTokenInfo),
    C_GetMechanismList: Some(special::C_GetMechanismList),
    C_GetMechanismInfo: Some(special::C_GetMechanismInfo),
    C_InitToken: Some(special::C_InitToken),
    C_InitPIN: Some(forward::C_InitPIN),
    C_SetPIN: Some(forward::C_SetPIN),
    C_OpenSession: Some(special::C_OpenSession),
    C_CloseSession: Some(special::C_CloseSession),
    C_CloseAllSessions: Some(special::C_CloseAllSessions),
    C_GetSessionInfo: Some(forward::C_GetSessionInfo),
    C_GetOperationState: Some(forward::C_GetOperationState),
    C_SetOperationState: Some(forward::C_SetOperationState),
    C_Login: Some(forward::C_Login),
    C_Logout: Some(forward::C_Logout),
    C_CreateObject: Some(forward::C_CreateObject),
    C_CopyObject: Some(forward::C_CopyObject),
    C_DestroyObject: Some(forward::C_DestroyObject),
    C_GetObjectSize: Some(forward::C_GetObjectSize),
    C_GetAttributeValue: Some(forward::C_GetAttributeValue),
    C_SetAttributeValue: Some(forward::C_SetAttributeValue),
    C_FindObjectsInit: Some(forward::C_FindObjectsInit),
    C_FindObjects: Some(forward::C_FindObjects),
    C_FindObjectsFinal: Some(forward::C_FindObjectsFinal),
    C_EncryptInit: Some(forward::C_EncryptInit),
    C_Encrypt: Some(forward::C_Encrypt),
    C_EncryptUpdate: Some(forward::C_EncryptUpdate),
    C_EncryptFinal: Some(forward::C_EncryptFinal),
    C_DecryptInit: Some(forward::C_DecryptInit),
    C_Decrypt: Some(forward::C_Decrypt),
    C_DecryptUpdate: Some(forward::C_DecryptUpdate),
    C_DecryptFinal: Some(forward::C_DecryptFinal),
    C_DigestInit: Some(forward::C_DigestInit),
    C_Digest: Some(forward::C_Digest),
    C_DigestUpdate: Some(forward::C_DigestUpdate),
    C_DigestKey: Some(forward::C_DigestKey),
    C_DigestFinal: Some(forward::C_DigestFinal),
    C_SignInit: Some(forward::C_SignInit),
    C_Sign: Some(forward::C_Sign),
    C_SignUpdate: Some(forward::C_SignUpdate),
    C_SignFinal: Some(forward::C_SignFinal),
    C_SignRecoverInit: Some(forward::C_SignRecoverInit),
    C_SignRecover: Some(forward::C_SignRecover),
    C_VerifyInit: Some(forward::C_VerifyInit),
    C_Verify: Some(forward::C_Verify),
    C_VerifyUpdate: Some(forward::C_VerifyUpdate),
    C_VerifyFinal: Some(forward::C_VerifyFinal),
    C_VerifyRecoverInit: Some(forward::C_VerifyRecoverInit),
    C_VerifyRecover: Some(forward::C_VerifyRecover),
    C_DigestEncryptUpdate: Some(forward::C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(forward::C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(forward::C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(forward::C_DecryptVerifyUpdate),
    C_GenerateKey: Some(forward::C_GenerateKey),
    C_GenerateKeyPair: Some(forward::C_GenerateKeyPair),
    C_WrapKey: Some(forward::C_WrapKey),
    C_UnwrapKey: Some(forward::C_UnwrapKey),
    C_DeriveKey: Some(forward::C_DeriveKey),
    C_SeedRandom: Some(forward::C_SeedRandom),
    C_GenerateRandom: Some(forward::C_GenerateRandom),
    C_GetFunctionStatus: Some(forward::C_GetFunctionStatus),
    C_CancelFunction: Some(forward::C_CancelFunction),
    C_WaitForSlotEvent: Some(forward::C_WaitForSlotEvent),
};

/// Our function list, as the pointer PKCS#11 hands out (callers only read through it).
pub(crate) fn function_list() -> *const CK_FUNCTION_LIST {
    &FUNCTION_LIST
}

/// The PKCS#11 entry point: hands out this module's function list. The wrapped module is not
/// loaded here but at `C_Initialize`.
///
/// # Safety
/// `list` must be null or valid for writing one pointer.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guard(|| {
        if list.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        engine().count_call(crate::names::fid("C_GetFunctionList"));
        // SAFETY: checked non-null; the caller guarantees it is writable. The list is a static
        // that PKCS#11 callers only read, so handing out a `*mut` to it is the C convention.
        unsafe { *list = function_list().cast_mut() };
        CKR_OK
    })
}

/// Writes the stats JSON (see [`crate::Stats`]) into `buf` (up to `len` bytes, no NUL) and
/// returns its full length; call again with a larger buffer if that is more than `len`. Returns 0
/// on an internal error.
///
/// # Safety
/// `buf` must be null or valid for writing `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn certnode_fault_stats_json(buf: *mut u8, len: usize) -> usize {
    catch_unwind(AssertUnwindSafe(|| {
        let Ok(json) = serde_json::to_vec(&engine().snapshot()) else {
            return 0;
        };
        if !buf.is_null() {
            let n = json.len().min(len);
            // SAFETY: `buf` is valid for `len` bytes (caller's contract) and `n <= len`; `json`
            // is our own vector, so the two do not overlap.
            unsafe { ptr::copy_nonoverlapping(json.as_ptr(), buf, n) };
        }
        json.len()
    }))
    .unwrap_or(0)
}

/// Re-reads the config file now if it changed (instead of within ~20 ms), writes the stats
/// file, and returns the config generation.
#[no_mangle]
pub extern "C" fn certnode_fault_reload() -> u64 {
    catch_unwind(|| {
        let e = engine();
        e.check_config(true);
        e.write_stats(true);
        e.rules().generation
    })
    .unwrap_or(0)
}
