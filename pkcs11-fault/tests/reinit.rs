//! `until_finalize`: a fault that persists until the application re-initialises the module
//! (C_Finalize, then C_Initialize), as when a token returns but the module keeps failing.
//! Its own process: it finalizes the module.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use sha2::{Digest, Sha256};
use support::{find_keys, rv, setup, slot_of, verify, USER_PIN};

#[test]
fn fault_until_finalize_is_cleared_by_reinitialising_the_module() {
    let h = setup("reinit", true);
    let s = h.session("fault-0");
    h.configure(
        r#"
        [[rule]]
        name = "stuck"
        kind = "error"
        token = "fault-0"
        rv = "CKR_DEVICE_ERROR"
        until_finalize = true
        "#,
    );
    for _ in 0..3 {
        let e = h.sign(&s, "fault-0", b"x").unwrap_err();
        assert_eq!(rv(&e), Some(RvError::DeviceError));
    }
    let e = h.ctx.open_rw_session(h.token("fault-0").slot).unwrap_err();
    assert_eq!(rv(&e), Some(RvError::DeviceError));
    h.sign(&h.session("fault-1"), "fault-1", b"other token")
        .unwrap();

    // Re-initialise: close what we hold, C_Finalize, C_Initialize on a fresh context. ("*" also
    // fails C_CloseSession on that token, as a broken module would; C_Finalize still cleans up.)
    drop(s);
    h.close_sessions();
    let before = h.stats().injected("stuck");
    assert!(before >= 4);
    h.ctx.clone().finalize().unwrap();
    let ctx = Pkcs11::new(&h.module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();

    // Find the token by label again (DESIGN §5: never trust a slot id across sessions of the
    // module; SoftHSM2 only knows its slots after C_GetSlotList).
    let token = h.token("fault-0");
    let slot = slot_of(&ctx, "fault-0").expect("token listed again");
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned())))
        .unwrap();
    let key = find_keys(&s)[0];
    let digest = Sha256::digest(b"after re-init");
    let sig = s
        .sign(&cryptoki::mechanism::Mechanism::Ecdsa, key, &digest)
        .unwrap();
    verify(&token.public, &digest, &sig);

    let st = h.stats();
    assert_eq!(st.finalizes, 1);
    let stuck = st.rule("stuck").unwrap();
    assert_eq!(stuck.injected, before, "{stuck:?}");
}
