//! `own_handles = true`: the module hands out its own session and object handles, never
//! reused, and counts (and refuses) calls with a handle from before the last `C_Finalize`.
//! SoftHSM2 numbers sessions and objects afresh after a re-initialization, so without this a
//! kept handle silently names a new session or object. Its own process: it finalizes the module.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};
use support::{find_keys, rv, setup_with, slot_of, verify, USER_PIN};

#[test]
fn handles_from_before_a_reinitialization_are_refused_and_counted() {
    let h = setup_with("handles", Some("own_handles = true\n"));
    let s = h.session("fault-0");
    let token = h.token("fault-0");
    // Our own numbers, not SoftHSM2's (which start at 1).
    assert!(s.handle() >= 0x5e55_0001, "{:?}", s.handle());
    assert!(token.key.handle() >= 0x0b1e_0001, "{:?}", token.key);
    assert_eq!(
        find_keys(&s),
        vec![token.key],
        "the same object, the same handle"
    );
    h.sign(&s, "fault-0", b"before").unwrap();
    let st = h.stats();
    assert!(st.own_handles);
    assert_eq!(st.stale_calls(), 0);

    h.close_sessions();
    h.ctx.clone().finalize().unwrap();
    let ctx = Pkcs11::new(&h.module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = slot_of(&ctx, "fault-0").unwrap();
    let s2 = ctx.open_rw_session(slot).unwrap();
    s2.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned())))
        .unwrap();
    assert_ne!(s2.handle(), s.handle(), "never reused");
    let key = find_keys(&s2)[0];
    assert_ne!(key, token.key, "never reused");
    let digest = Sha256::digest(b"after");
    verify(
        &token.public,
        &digest,
        &s2.sign(&Mechanism::Ecdsa, key, &digest).unwrap(),
    );

    // The kept session (SoftHSM2 numbers afresh: its number for s2 is likely the one it had for
    // s) and the kept key handle.
    let e = s.sign(&Mechanism::Ecdsa, key, &digest).unwrap_err();
    assert_eq!(rv(&e), Some(RvError::SessionHandleInvalid));
    let e = s2.sign(&Mechanism::Ecdsa, token.key, &digest).unwrap_err();
    assert_eq!(rv(&e), Some(RvError::ObjectHandleInvalid));
    // Closing the kept session is a stale call too (never forwarded: it would close s2).
    std::mem::forget(s);
    let st = h.stats();
    assert_eq!(st.stale_sessions.get("C_SignInit"), Some(&1), "{st:?}");
    assert_eq!(st.stale_objects.get("C_SignInit"), Some(&1), "{st:?}");
    assert_eq!(st.stale_calls(), 2);
    // s2 still works: nothing stale reached the wrapped module.
    verify(
        &token.public,
        &digest,
        &s2.sign(&Mechanism::Ecdsa, key, &digest).unwrap(),
    );
}
