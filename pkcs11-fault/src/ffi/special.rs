//! The functions that do more than forward: module life cycle (load, watcher), the session →
//! slot and slot → label bookkeeping, and the views of a removed token (slot lists, slot info).

#![allow(non_snake_case)]

use std::os::raw::c_void;

use cryptoki_sys::*;

use super::{function_list, guard};
use crate::engine::{engine, log, Ctx};
use crate::names::fid;

/// Loads the wrapped module (first time), re-reads the config, forwards, and on success starts
/// the config watcher.
pub(super) unsafe extern "C" fn C_Initialize(init_args: *mut c_void) -> CK_RV {
    guard(|| {
        let eng = engine();
        eng.check_config(true);
        let target = match eng.load_target(function_list()) {
            Ok(t) => t,
            Err(e) => {
                log(&e);
                return CKR_GENERAL_ERROR;
            }
        };
        let Some(f) = target.list.C_Initialize else {
            return CKR_GENERAL_ERROR;
        };
        let rv = eng.intercept(
            fid("C_Initialize"),
            Ctx::None,
            false,
            // SAFETY: the application's init args, unchanged, to the wrapped C_Initialize.
            || unsafe { f(init_args) },
            || {},
        );
        if rv == CKR_OK {
            eng.forget_all();
            eng.handles().initialized(eng.rules().config.own_handles);
            eng.start_watcher();
        }
        rv
    })
}

/// Forwards; on success stops the watcher, forgets sessions and writes the stats file.
pub(super) unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    guard(|| {
        let eng = engine();
        let Some(target) = eng.target() else {
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(f) = target.list.C_Finalize else {
            return CKR_GENERAL_ERROR;
        };
        let rv = eng.intercept(
            fid("C_Finalize"),
            Ctx::None,
            false,
            // SAFETY: the application's argument, unchanged, to the wrapped C_Finalize.
            || unsafe { f(reserved) },
            || {},
        );
        if rv == CKR_OK {
            eng.finalized();
            eng.handles().finalized();
            eng.stop_watcher();
            eng.forget_all();
            eng.write_stats(true);
        }
        rv
    })
}

/// With `token_present` and a `remove` rule in force: the wrapped list minus the slots of
/// removed tokens, with the usual two-call (count, then fill) contract. Otherwise forwards.
pub(super) unsafe extern "C" fn C_GetSlotList(
    token_present: CK_BBOOL,
    slot_list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let eng = engine();
        let Some(target) = eng.target() else {
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(f) = target.list.C_GetSlotList else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let rules = eng.rules();
        let filter = token_present != CK_FALSE && rules.has_remove;
        eng.intercept(
            fid("C_GetSlotList"),
            Ctx::None,
            false,
            || {
                if !filter {
                    // SAFETY: the application's arguments, unchanged, to the wrapped function.
                    return unsafe { f(token_present, slot_list, count) };
                }
                if count.is_null() {
                    return CKR_ARGUMENTS_BAD;
                }
                let mut slots: Vec<CK_SLOT_ID> = Vec::new();
                let mut tries = 0;
                loop {
                    let mut n: CK_ULONG = 0;
                    // SAFETY: a length query: null list, `n` a valid out-pointer.
                    let rv = unsafe { f(CK_TRUE, std::ptr::null_mut(), &mut n) };
                    if rv != CKR_OK {
                        return rv;
                    }
                    slots.resize(n as usize, 0);
                    let mut m = n;
                    // SAFETY: `slots` holds `m` writable slot ids; `m` a valid in/out length.
                    let rv = unsafe { f(CK_TRUE, slots.as_mut_ptr(), &mut m) };
                    tries += 1;
                    if rv == CKR_BUFFER_TOO_SMALL && tries < 5 {
                        continue; // a token appeared in between
                    }
                    if rv != CKR_OK {
                        return rv;
                    }
                    slots.truncate(m as usize);
                    break;
                }
                slots.retain(|s| !eng.slot_removed(&rules, *s));
                // SAFETY: `count` checked non-null; valid per the caller's contract.
                let room = unsafe { *count };
                // SAFETY: as above.
                unsafe { *count = slots.len() as CK_ULONG };
                if slot_list.is_null() {
                    return CKR_OK;
                }
                if (room as usize) < slots.len() {
                    return CKR_BUFFER_TOO_SMALL;
                }
                // SAFETY: the caller's list holds `room >= slots.len()` slot ids.
                unsafe {
                    std::ptr::copy_nonoverlapping(slots.as_ptr(), slot_list, slots.len());
                }
                CKR_OK
            },
            || {},
        )
    })
}

/// Forwards; a removed token's slot reports no token present (`CKF_TOKEN_PRESENT` cleared).
pub(super) unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    guard(|| {
        let eng = engine();
        let Some(target) = eng.target() else {
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(f) = target.list.C_GetSlotInfo else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        eng.intercept(
            fid("C_GetSlotInfo"),
            Ctx::Slot(slot),
            false,
            || {
                // SAFETY: the application's arguments, unchanged, to the wrapped function.
                let rv = unsafe { f(slot, info) };
                if rv == CKR_OK && !info.is_null() && eng.slot_removed(&eng.rules(), slot) {
                    // SAFETY: non-null, and just filled in by the wrapped module.
                    unsafe { (*info).flags &= !CKF_TOKEN_PRESENT };
                }
                rv
            },
            || {},
        )
    })
}

/// Forwards (a removed token answers `CKR_TOKEN_NOT_PRESENT` from the rules), learns the
/// slot's label from the real answer, then applies the `token_info` rules that fired.
pub(super) unsafe extern "C" fn C_GetTokenInfo(
    slot: CK_SLOT_ID,
    info: *mut CK_TOKEN_INFO,
) -> CK_RV {
    guard(|| {
        let eng = engine();
        let Some(target) = eng.target() else {
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(f) = target.list.C_GetTokenInfo else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        eng.intercept_edit(
            fid("C_GetTokenInfo"),
            Ctx::Slot(slot),
            false,
            || {
                // SAFETY: the application's arguments, unchanged, to the wrapped function.
                let rv = unsafe { f(slot, info) };
                if rv == CKR_OK && !info.is_null() {
                    // SAFETY: non-null, and just filled in by the wrapped module.
                    eng.learn_label(slot, unsafe { &*info });
                }
                rv
            },
            || {},
            |edits| {
                if info.is_null() {
                    return;
                }
                // SAFETY: non-null, filled in by the wrapped module (the call succeeded), and the
                // application's to write until we return.
                let info = unsafe { &mut *info };
                for e in edits {
                    e.apply(info);
                }
            },
        )
    })
}

/// Reads the wrapped module's whole mechanism list, removes the mechanisms `hide_mechanism`
/// rules hide, and answers the application from what is left, as PKCS#11 says (a NULL list:
/// the count; a list too short: `CKR_BUFFER_TOO_SMALL` and the count), so the count of the size
/// query matches the list that follows.
pub(super) unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> CK_RV {
    guard(|| {
        let eng = engine();
        let Some(target) = eng.target() else {
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(f) = target.list.C_GetMechanismList else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        if count.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        let real = std::cell::RefCell::new(Vec::new());
        eng.intercept_mechanisms(
            fid("C_GetMechanismList"),
            Ctx::Slot(slot),
            || {
                let mut n: CK_ULONG = 0;
                // SAFETY: a size query into our own counter.
                let rv = unsafe { f(slot, std::ptr::null_mut(), &mut n) };
                if rv != CKR_OK {
                    return rv;
                }
                let mut v: Vec<CK_MECHANISM_TYPE> = vec![0; n as usize];
                // SAFETY: our own buffer of `n` entries, and its length.
                let rv = unsafe { f(slot, v.as_mut_ptr(), &mut n) };
                v.truncate(n as usize);
                *real.borrow_mut() = v;
                rv
            },
            |rv, hidden| {
                if rv != CKR_OK {
                    return (rv, Vec::new());
                }
                let mut v = real.borrow_mut();
                let removed = crate::mechanisms::filter(&mut v, hidden);
                let len = v.len() as CK_ULONG;
                // SAFETY: `count` is non-null (checked) and the application's to write; `list`,
                // when non-null, holds `*count` entries (the caller's PKCS#11 obligation).
                let rv = unsafe {
                    if list.is_null() {
                        *count = len;
                        CKR_OK
                    } else if *count < len {
                        *count = len;
                        CKR_BUFFER_TOO_SMALL
                    } else {
                        std::ptr::copy_nonoverlapping(v.as_ptr(), list, v.len());
                        *count = len;
                        CKR_OK
                    }
                };
                (rv, removed)
            },
        )
    })
}

/// Forwards; for a mechanism a `hide_mechanism` rule hides, answers `CKR_MECHANISM_INVALID`
/// (and clears the info the wrapped module wrote).
pub(super) unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    mech_type: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> CK_RV {
    guard(|| {
        let eng = engine();
        let Some(target) = eng.target() else {
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(f) = target.list.C_GetMechanismInfo else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        eng.intercept_mechanisms(
            fid("C_GetMechanismInfo"),
            Ctx::Slot(slot),
            // SAFETY: the application's arguments, unchanged, to the wrapped function.
            || unsafe { f(slot, mech_type, info) },
            |rv, hidden| {
                if !hidden(mech_type) {
                    return (rv, Vec::new());
                }
                if rv == CKR_OK && !info.is_null() {
                    // SAFETY: non-null, and the application's to write until we return.
                    unsafe { *info = CK_MECHANISM_INFO::default() };
                }
                (CKR_MECHANISM_INVALID, vec![mech_type])
            },
        )
    })
}

/// Forwards; on success forgets cached labels (the label changed, and SoftHSM2 gives the token
/// a new slot id).
pub(super) unsafe extern "C" fn C_InitToken(
    slot: CK_SLOT_ID,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
    label: *mut CK_UTF8CHAR,
) -> CK_RV {
    guard(|| {
        let eng = engine();
        let Some(target) = eng.target() else {
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(f) = target.list.C_InitToken else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let rv = eng.intercept(
            fid("C_InitToken"),
            Ctx::Slot(slot),
            false,
            // SAFETY: the application's arguments, unchanged, to the wrapped function.
            || unsafe { f(slot, pin, pin_len, label) },
            || {},
        );
        if rv == CKR_OK {
            eng.forget_labels();
        }
        rv
    })
}

/// Forwards; on success records which slot the new session belongs to (and, with
/// `own_handles`, hands the application our handle for it).
pub(super) unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    application: *mut c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    guard(|| {
        let eng = engine();
        let Some(target) = eng.target() else {
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(f) = target.list.C_OpenSession else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        eng.intercept(
            fid("C_OpenSession"),
            Ctx::Slot(slot),
            false,
            || {
                // SAFETY: the application's arguments (its notify callback included), unchanged,
                // to the wrapped function.
                let rv = unsafe { f(slot, flags, application, notify, session) };
                if rv == CKR_OK && !session.is_null() {
                    // SAFETY: non-null, and just written by the wrapped module.
                    let ours = eng.handles().session_opened(unsafe { *session });
                    // SAFETY: as above: the application's out-pointer, valid for writing.
                    unsafe { *session = ours };
                    eng.session_opened(ours, slot);
                }
                rv
            },
            || {},
        )
    })
}

/// Forwards (also for a removed token, so applications can clean up); forgets the session.
/// With `own_handles`, a session from before the last `C_Finalize` is counted as stale and not
/// forwarded: its number may name another session of the wrapped module now.
pub(super) unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    guard(|| {
        let eng = engine();
        let Some(target) = eng.target() else {
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(f) = target.list.C_CloseSession else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        eng.intercept(
            fid("C_CloseSession"),
            Ctx::Session(session),
            false,
            || {
                let theirs = match eng.handles().session(fid("C_CloseSession"), session) {
                    Ok(h) => h,
                    Err(rv) => return rv,
                };
                // SAFETY: the application's session (the wrapped module's handle for it) to the
                // wrapped function.
                let rv = unsafe { f(theirs) };
                if matches!(rv, CKR_OK | CKR_SESSION_HANDLE_INVALID | CKR_SESSION_CLOSED) {
                    eng.session_closed(session);
                }
                rv
            },
            || {},
        )
    })
}

/// Forwards (also for a removed token); forgets the slot's sessions.
pub(super) unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    guard(|| {
        let eng = engine();
        let Some(target) = eng.target() else {
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        };
        let Some(f) = target.list.C_CloseAllSessions else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        eng.intercept(
            fid("C_CloseAllSessions"),
            Ctx::Slot(slot),
            false,
            || {
                // SAFETY: the application's argument, unchanged, to the wrapped function.
                let rv = unsafe { f(slot) };
                if rv == CKR_OK {
                    eng.slot_sessions_closed(slot);
                }
                rv
            },
            || {},
        )
    })
}
