//! Without SIGNERD_FAULT_CONFIG the module is a transparent proxy: everything an application (or
//! a generic tool) does works as on SoftHSM2 itself. Tokens are initialised through the module.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::OnceLock;

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::Attribute;
use sha2::{Digest, Sha256};
use support::{find_keys, setup, Hsm, TOKENS};

fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| setup("passthrough", false))
}

#[test]
fn slots_tokens_and_mechanisms_are_forwarded() {
    let h = hsm();
    let with_token = h.ctx.get_slots_with_token().unwrap();
    // Two initialised tokens plus SoftHSM2's spare uninitialised slot.
    assert_eq!(with_token.len(), 3);
    let labels: Vec<String> = with_token
        .iter()
        .map(|s| {
            h.ctx
                .get_token_info(*s)
                .unwrap()
                .label()
                .trim_end()
                .to_owned()
        })
        .collect();
    for t in TOKENS {
        assert!(labels.iter().any(|l| l == t), "{labels:?}");
    }
    assert_eq!(h.ctx.get_all_slots().unwrap().len(), 3);
    let slot = h.token("fault-0").slot;
    assert!(h.ctx.get_slot_info(slot).unwrap().token_present());
    let mechs = h.ctx.get_mechanism_list(slot).unwrap();
    assert!(mechs.contains(&MechanismType::ECDSA));
    let info = h
        .ctx
        .get_mechanism_info(slot, MechanismType::ECDSA)
        .unwrap();
    assert!(info.sign());
    let lib = h.ctx.get_library_info().unwrap();
    assert!(lib.manufacturer_id().contains("SoftHSM"), "{lib:?}");
}

#[test]
fn sign_verify_find_on_both_tokens() {
    let h = hsm();
    for t in TOKENS {
        let s = h.session(t);
        for i in 0..5 {
            // `sign` also checks each signature with the p256 crate.
            let sig = h.sign(&s, t, format!("message {i}").as_bytes()).unwrap();
            assert_eq!(sig.len(), 64);
            // And the token agrees.
            let digest = Sha256::digest(format!("message {i}").as_bytes());
            let public = s
                .find_objects(&[
                    Attribute::Class(cryptoki::object::ObjectClass::PUBLIC_KEY),
                    Attribute::Label("k".into()),
                ])
                .unwrap();
            assert_eq!(public.len(), 1);
            s.verify(&Mechanism::Ecdsa, public[0], &digest, &sig)
                .unwrap();
        }
        assert_eq!(find_keys(&s), vec![h.token(t).key]);
    }
}

#[test]
fn random_digest_and_session_info_are_forwarded() {
    let h = hsm();
    let s = h.session("fault-1");
    let r = s.generate_random_vec(32).unwrap();
    assert_eq!(r.len(), 32);
    let d = s.digest(&Mechanism::Sha256, b"abc").unwrap();
    assert_eq!(d, Sha256::digest(b"abc").to_vec());
    let info = s.get_session_info().unwrap();
    assert_eq!(info.slot_id(), h.token("fault-1").slot);
}

#[test]
fn counters_without_config() {
    let h = hsm();
    let s = h.session("fault-0");
    h.sign(&s, "fault-0", b"counted").unwrap();
    let st = h.stats();
    assert_eq!(st.generation, 0);
    assert_eq!(st.config, None);
    assert!(st.rules.is_empty());
    assert_eq!(st.injected_total, 0);
    assert!(st.calls("C_Sign") >= 2, "{:?}", st.calls);
    assert!(st.calls("C_InitToken") == 2);
    assert!(st.target.unwrap().contains("softhsm2"));
}

/// A generic tool works through the module (skipped when OpenSC's pkcs11-tool is not installed).
#[test]
fn pkcs11_tool_lists_tokens_through_the_module() {
    let h = hsm();
    let out = match std::process::Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&h.module)
        .arg("--list-token-slots")
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: pkcs11-tool not available ({e})");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for t in TOKENS {
        assert!(text.contains(t), "{text}");
    }
}
