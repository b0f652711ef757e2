//! Fuzzes the access-policy reader (`Policy::parse`: TOML, validation, glob compilation) and the
//! decision function on whatever it accepts: no panic on any text; a policy accepted once is
//! accepted again; decisions are deterministic.

#![no_main]

use signerd::policy::{Policy, Query};
use signer_proto::protocol::Op;
use signerd::Scheme;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::parse(text) else {
        return;
    };
    assert!(Policy::parse(text).is_ok(), "accepted once, refused the second time");
    // A few probes: identities and keys taken from the text itself, and ones no rule can name.
    let words: Vec<&str> = text
        .split(|c: char| c == '"' || c.is_whitespace())
        .filter(|w| !w.is_empty() && w.len() < 64)
        .take(16)
        .collect();
    for identity in words.iter().copied().chain(["\u{1}no-such-identity\u{1}"]) {
        for key in words.iter().copied().take(4).chain(["k"]) {
            for op in [Op::Sign, Op::ListKeys, Op::DestroyKey] {
                let q = Query {
                    identity,
                    key,
                    op,
                    scheme: Some(Scheme::EcdsaSha256),
                };
                let d = policy.decide(&q);
                assert_eq!(d.allowed, policy.decide(&q).allowed, "deterministic");
                let _ = d.rule_name();
            }
        }
    }
});
