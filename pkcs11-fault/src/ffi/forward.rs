//! Forwarders for the functions that need nothing but the rules: each counts the call, applies
//! the matching rules (see [`crate::engine::Engine::intercept`]) and, unless a rule answered,
//! forwards the arguments unchanged to the wrapped module.
//!
//! `size_query(expr)`: the call only asks for the output's size (a NULL output buffer); capacity
//! and latency rules do not charge it (see [`crate::engine::Engine::intercept`]).
//!
//! `drain(t, session) expr`: how to end the wrapped module's active operation when an injected return
//! code replaces a call that, per PKCS#11, ends it (single-part calls, `*Final`, and errors of
//! `*Update`), so that the application's next `C_*Init` works as it would on a real token.

#![allow(non_snake_case)]

use std::os::raw::c_void;

use cryptoki_sys::*;

use super::{call_target, drain_out, guard};
use crate::engine::{engine, Ctx};
use crate::names::fid;

macro_rules! forward {
    ($(
        $name:ident ( $($arg:ident : $ty:ty $(as $kind:ident)?),* ) $ctx:expr
            $(, size_query($sq:expr))? $(, drain($t:ident, $s:ident) $drain:expr)? $(, out $out:block)? ;
    )*) => {$(
        pub(super) unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            const FID: usize = fid(stringify!($name));
            guard(|| {
                let eng = engine();
                let Some(target) = eng.target() else {
                    return CKR_CRYPTOKI_NOT_INITIALIZED;
                };
                let Some(f) = target.list.$name else {
                    return CKR_FUNCTION_NOT_SUPPORTED;
                };
                eng.intercept(
                    FID,
                    $ctx,
                    false $(|| $sq)?,
                    || {
                        // The application's handles → the wrapped module's (`own_handles`).
                        $($(
                            let $arg = match eng.handles().$kind(FID, $arg) {
                                Ok(h) => h,
                                Err(rv) => return rv,
                            };
                        )?)*
                        // SAFETY: the application's arguments, unchanged but for handles
                        // translated to the wrapped module's, to its implementation of the
                        // same function: the caller's PKCS#11 obligations (valid pointers and
                        // lengths) carry over as they are.
                        let rv = unsafe { f($($arg),*) };
                        $(
                            if rv == CKR_OK $out
                        )?
                        rv
                    },
                    || {
                        $(
                            let $t = &target.list;
                            let Some($s) = eng.handles().session_quiet($s) else {
                                return;
                            };
                            let _ = $drain;
                        )?
                    },
                )
            })
        }
    )*};
}

forward! {
    C_GetInfo(info: *mut CK_INFO) Ctx::None;
    C_InitPIN(session: CK_SESSION_HANDLE as session, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) Ctx::Session(session);
    C_SetPIN(session: CK_SESSION_HANDLE as session, old_pin: *mut CK_UTF8CHAR, old_len: CK_ULONG, new_pin: *mut CK_UTF8CHAR, new_len: CK_ULONG) Ctx::Session(session);
    C_GetSessionInfo(session: CK_SESSION_HANDLE as session, info: *mut CK_SESSION_INFO) Ctx::Session(session);
    C_GetOperationState(session: CK_SESSION_HANDLE as session, state: *mut CK_BYTE, state_len: *mut CK_ULONG) Ctx::Session(session);
    C_SetOperationState(session: CK_SESSION_HANDLE as session, state: *mut CK_BYTE, state_len: CK_ULONG, enc_key: CK_OBJECT_HANDLE as object, auth_key: CK_OBJECT_HANDLE as object) Ctx::Session(session);
    C_Login(session: CK_SESSION_HANDLE as session, user_type: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) Ctx::Session(session);
    C_Logout(session: CK_SESSION_HANDLE as session) Ctx::Session(session);
    C_CreateObject(session: CK_SESSION_HANDLE as session, template: *mut CK_ATTRIBUTE, count: CK_ULONG, object: *mut CK_OBJECT_HANDLE) Ctx::Session(session), out { // SAFETY: the wrapped module just wrote one handle there (the application's out-pointer).
        unsafe { engine().handles().objects_out(object, 1) } };
    C_CopyObject(session: CK_SESSION_HANDLE as session, object: CK_OBJECT_HANDLE as object, template: *mut CK_ATTRIBUTE, count: CK_ULONG, new_object: *mut CK_OBJECT_HANDLE) Ctx::Session(session), out { // SAFETY: the wrapped module just wrote one handle there (the application's out-pointer).
        unsafe { engine().handles().objects_out(new_object, 1) } };
    C_DestroyObject(session: CK_SESSION_HANDLE as session, object: CK_OBJECT_HANDLE as object) Ctx::Session(session), out { engine().handles().object_destroyed(object) };
    C_GetObjectSize(session: CK_SESSION_HANDLE as session, object: CK_OBJECT_HANDLE as object, size: *mut CK_ULONG) Ctx::Session(session);
    C_GetAttributeValue(session: CK_SESSION_HANDLE as session, object: CK_OBJECT_HANDLE as object, template: *mut CK_ATTRIBUTE, count: CK_ULONG) Ctx::Session(session);
    C_SetAttributeValue(session: CK_SESSION_HANDLE as session, object: CK_OBJECT_HANDLE as object, template: *mut CK_ATTRIBUTE, count: CK_ULONG) Ctx::Session(session);
    C_FindObjectsInit(session: CK_SESSION_HANDLE as session, template: *mut CK_ATTRIBUTE, count: CK_ULONG) Ctx::Session(session);
    C_FindObjects(session: CK_SESSION_HANDLE as session, objects: *mut CK_OBJECT_HANDLE, max: CK_ULONG, count: *mut CK_ULONG) Ctx::Session(session), out {
        if !count.is_null() {
            // SAFETY: the wrapped module just wrote `*count` (at most `max`) handles into the
            // application's array, and the count through its (non-null) out-pointer.
            unsafe { engine().handles().objects_out(objects, *count) }
        }
    };
    C_FindObjectsFinal(session: CK_SESSION_HANDLE as session) Ctx::Session(session);
    C_EncryptInit(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE as object) Ctx::Session(session);
    C_Encrypt(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_Encrypt(session, input, input_len, o, l)));
    C_EncryptUpdate(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_EncryptFinal(session, o, l)));
    C_EncryptFinal(session: CK_SESSION_HANDLE as session, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_EncryptFinal(session, o, l)));
    C_DecryptInit(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE as object) Ctx::Session(session);
    C_Decrypt(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_Decrypt(session, input, input_len, o, l)));
    C_DecryptUpdate(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_DecryptFinal(session, o, l)));
    C_DecryptFinal(session: CK_SESSION_HANDLE as session, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_DecryptFinal(session, o, l)));
    C_DigestInit(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM) Ctx::Session(session);
    C_Digest(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_Digest(session, input, input_len, o, l)));
    C_DigestUpdate(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_DigestFinal(session, o, l)));
    C_DigestKey(session: CK_SESSION_HANDLE as session, key: CK_OBJECT_HANDLE as object) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_DigestFinal(session, o, l)));
    C_DigestFinal(session: CK_SESSION_HANDLE as session, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_DigestFinal(session, o, l)));
    C_SignInit(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE as object) Ctx::Session(session);
    C_Sign(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), size_query(output.is_null()), drain(t, session) drain_out(|o, l| call_target!(t, C_Sign(session, input, input_len, o, l)));
    C_SignUpdate(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_SignFinal(session, o, l)));
    C_SignFinal(session: CK_SESSION_HANDLE as session, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_SignFinal(session, o, l)));
    C_SignRecoverInit(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE as object) Ctx::Session(session);
    C_SignRecover(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_SignRecover(session, input, input_len, o, l)));
    C_VerifyInit(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE as object) Ctx::Session(session);
    C_Verify(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, sig: *mut CK_BYTE, sig_len: CK_ULONG) Ctx::Session(session), drain(t, session) call_target!(t, C_Verify(session, input, input_len, sig, sig_len));
    C_VerifyUpdate(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG) Ctx::Session(session), drain(t, session) call_target!(t, C_VerifyFinal(session, [0u8; 1].as_mut_ptr(), 1));
    C_VerifyFinal(session: CK_SESSION_HANDLE as session, sig: *mut CK_BYTE, sig_len: CK_ULONG) Ctx::Session(session), drain(t, session) call_target!(t, C_VerifyFinal(session, sig, sig_len));
    C_VerifyRecoverInit(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE as object) Ctx::Session(session);
    C_VerifyRecover(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session), drain(t, session) drain_out(|o, l| call_target!(t, C_VerifyRecover(session, input, input_len, o, l)));
    C_DigestEncryptUpdate(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session);
    C_DecryptDigestUpdate(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session);
    C_SignEncryptUpdate(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session);
    C_DecryptVerifyUpdate(session: CK_SESSION_HANDLE as session, input: *mut CK_BYTE, input_len: CK_ULONG, output: *mut CK_BYTE, output_len: *mut CK_ULONG) Ctx::Session(session);
    C_GenerateKey(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, template: *mut CK_ATTRIBUTE, count: CK_ULONG, key: *mut CK_OBJECT_HANDLE) Ctx::Session(session), out { // SAFETY: the wrapped module just wrote one handle there (the application's out-pointer).
        unsafe { engine().handles().objects_out(key, 1) } };
    C_GenerateKeyPair(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, pub_template: *mut CK_ATTRIBUTE, pub_count: CK_ULONG, priv_template: *mut CK_ATTRIBUTE, priv_count: CK_ULONG, pub_key: *mut CK_OBJECT_HANDLE, priv_key: *mut CK_OBJECT_HANDLE) Ctx::Session(session), out {
        // SAFETY: the wrapped module just wrote one handle at each (the application's out-pointers).
        unsafe {
            engine().handles().objects_out(pub_key, 1);
            engine().handles().objects_out(priv_key, 1);
        }
    };
    C_WrapKey(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, wrapping_key: CK_OBJECT_HANDLE as object, key: CK_OBJECT_HANDLE as object, wrapped: *mut CK_BYTE, wrapped_len: *mut CK_ULONG) Ctx::Session(session);
    C_UnwrapKey(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, unwrapping_key: CK_OBJECT_HANDLE as object, wrapped: *mut CK_BYTE, wrapped_len: CK_ULONG, template: *mut CK_ATTRIBUTE, count: CK_ULONG, key: *mut CK_OBJECT_HANDLE) Ctx::Session(session), out { // SAFETY: the wrapped module just wrote one handle there (the application's out-pointer).
        unsafe { engine().handles().objects_out(key, 1) } };
    C_DeriveKey(session: CK_SESSION_HANDLE as session, mech: *mut CK_MECHANISM, base_key: CK_OBJECT_HANDLE as object, template: *mut CK_ATTRIBUTE, count: CK_ULONG, key: *mut CK_OBJECT_HANDLE) Ctx::Session(session), out { // SAFETY: the wrapped module just wrote one handle there (the application's out-pointer).
        unsafe { engine().handles().objects_out(key, 1) } };
    C_SeedRandom(session: CK_SESSION_HANDLE as session, seed: *mut CK_BYTE, seed_len: CK_ULONG) Ctx::Session(session);
    C_GenerateRandom(session: CK_SESSION_HANDLE as session, out: *mut CK_BYTE, out_len: CK_ULONG) Ctx::Session(session);
    C_GetFunctionStatus(session: CK_SESSION_HANDLE as session) Ctx::Session(session);
    C_CancelFunction(session: CK_SESSION_HANDLE as session) Ctx::Session(session);
    C_WaitForSlotEvent(flags: CK_FLAGS, slot: *mut CK_SLOT_ID, reserved: *mut c_void) Ctx::None;
}
