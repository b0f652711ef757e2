//! Decision tables and properties of the policy engine.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

const POLICY: &str = r#"
[groups]
payments = ["spiffe://ex.org/payments-api", "spiffe://ex.org/payments-batch"]
ops = ["spiffe://ex.org/ops-alice", "spiffe://ex.org/ops-bob"]

[[rule]]
name = "payments-use"
effect = "allow"
groups = ["payments"]
keys = ["payments-*"]
ops = ["sign", "sign_batch", "verify", "public_key", "list"]

[[rule]]
name = "no-legacy-rsa"
effect = "deny"
groups = ["payments"]
keys = ["payments-legacy"]
ops = ["sign", "sign_batch"]
schemes = ["rsa-pkcs1-sha256"]

[[rule]]
name = "batch-no-verify"
effect = "deny"
identities = ["spiffe://ex.org/payments-batch"]
keys = ["*"]
ops = ["verify"]

[[rule]]
name = "ops-admin"
effect = "allow"
groups = ["ops"]
keys = ["*"]
ops = ["*"]

[[rule]]
name = "nobody-destroys-root"
effect = "deny"
identities = ["*"]
keys = ["root-ca"]
ops = ["destroy_key"]

[[rule]]
name = "readers"
effect = "allow"
identities = ["spiffe://ex.org/reader-?"]
keys = ["payments-eu", "root-ca"]
ops = ["public_key"]
"#;

const API: &str = "spiffe://ex.org/payments-api";
const BATCH: &str = "spiffe://ex.org/payments-batch";
const ALICE: &str = "spiffe://ex.org/ops-alice";
const READER: &str = "spiffe://ex.org/reader-1";
const STRANGER: &str = "spiffe://ex.org/stranger";

/// One row of the decision table: identity, key, op, scheme, allowed, deciding rule.
type Row = (
    &'static str,
    &'static str,
    Op,
    Option<Scheme>,
    bool,
    &'static str,
);

fn decide(p: &Policy, identity: &str, key: &str, op: Op, scheme: Option<Scheme>) -> (bool, String) {
    let d = p.decide(&Query {
        identity,
        key,
        op,
        scheme,
    });
    (d.allowed, d.rule_name().to_owned())
}

#[test]
fn decision_table() {
    let p = Policy::parse(POLICY).unwrap();
    let ecdsa = Some(Scheme::EcdsaSha256);
    let rsa = Some(Scheme::RsaPkcs1Sha256);
    let pss = Some(Scheme::RsaPssSha256);
    use Op::*;
    #[rustfmt::skip]
    let table: &[Row] = &[
        (API, "payments-eu", Sign, ecdsa, true, "payments-use"),
        (API, "payments-eu", SignBatch, ecdsa, true, "payments-use"),
        (API, "payments-eu", Verify, ecdsa, true, "payments-use"),
        (API, "payments-eu", GetPublicKey, None, true, "payments-use"),
        (API, "payments-eu", ListKeys, None, true, "payments-use"),
        (API, "payments-eu", CreateKey, None, false, "default-deny"),
        (API, "payments-eu", RotateKey, None, false, "default-deny"),
        (API, "payments-eu", RetireKey, None, false, "default-deny"),
        (API, "payments-eu", DestroyKey, None, false, "default-deny"),
        (API, "billing", Sign, ecdsa, false, "default-deny"),
        (API, "payments", Sign, ecdsa, false, "default-deny"),
        // The deny on one scheme of one key wins over the allow; other schemes pass.
        (API, "payments-legacy", Sign, rsa, false, "no-legacy-rsa"),
        (API, "payments-legacy", SignBatch, rsa, false, "no-legacy-rsa"),
        (API, "payments-legacy", Sign, pss, true, "payments-use"),
        (API, "payments-legacy", Verify, rsa, true, "payments-use"),
        (API, "payments-legacy", GetPublicKey, None, true, "payments-use"),
        (BATCH, "payments-eu", Sign, ecdsa, true, "payments-use"),
        (BATCH, "payments-eu", Verify, ecdsa, false, "batch-no-verify"),
        (BATCH, "payments-legacy", Sign, rsa, false, "no-legacy-rsa"),
        (ALICE, "anything", CreateKey, None, true, "ops-admin"),
        (ALICE, "payments-eu", Sign, ecdsa, true, "ops-admin"),
        (ALICE, "root-ca", RetireKey, None, true, "ops-admin"),
        (ALICE, "root-ca", DestroyKey, None, false, "nobody-destroys-root"),
        (READER, "payments-eu", GetPublicKey, None, true, "readers"),
        (READER, "root-ca", GetPublicKey, None, true, "readers"),
        (READER, "payments-eu", Sign, ecdsa, false, "default-deny"),
        (READER, "payments-us", GetPublicKey, None, false, "default-deny"),
        ("spiffe://ex.org/reader-10", "root-ca", GetPublicKey, None, false, "default-deny"),
        (STRANGER, "payments-eu", Sign, ecdsa, false, "default-deny"),
        (STRANGER, "root-ca", DestroyKey, None, false, "nobody-destroys-root"),
        ("", "payments-eu", Sign, ecdsa, false, "default-deny"),
    ];
    for (identity, key, op, scheme, allowed, rule) in table {
        let got = decide(&p, identity, key, *op, *scheme);
        assert_eq!(
            got,
            (*allowed, (*rule).to_owned()),
            "{identity} {key} {op:?} {scheme:?}"
        );
    }
}

#[test]
fn explanations_name_the_rule_and_what_matched() {
    let p = Policy::parse(POLICY).unwrap();
    let q = Query {
        identity: API,
        key: "payments-legacy",
        op: Op::Sign,
        scheme: Some(Scheme::RsaPkcs1Sha256),
    };
    let text = p.decide(&q).to_string();
    assert_eq!(
        text,
        "deny: deny rule \"no-legacy-rsa\" matched (identity \"spiffe://ex.org/payments-api\" \
         of group \"payments\", key pattern \"payments-legacy\")"
    );
    let q = Query {
        identity: STRANGER,
        ..q
    };
    assert_eq!(
        p.decide(&q).to_string(),
        "deny: no rule matched: default deny"
    );
}

#[test]
fn list_filter() {
    let p = Policy::parse(POLICY).unwrap();
    let keys = ["payments-eu", "payments-legacy", "root-ca", "billing"];
    let visible =
        |id: &str| -> Vec<&str> { keys.iter().copied().filter(|k| p.may_use(id, k)).collect() };
    assert_eq!(visible(API), ["payments-eu", "payments-legacy"]);
    assert_eq!(visible(READER), ["payments-eu", "root-ca"]);
    assert_eq!(visible(ALICE), keys);
    assert!(visible(STRANGER).is_empty());
}

#[test]
fn quotas_approval_and_defaults() {
    let text = format!(
        "{POLICY}\n[[quota]]\nidentities = [\"{API}\"]\nrate = 5\n\n\
         [[quota]]\nname = \"payments\"\ngroups = [\"payments\"]\nrate = 100.5\nburst = 20\n\
         max_inflight = 8\n\n[approval]\ndestroy_key = true\nwindow = \"90s\"\n"
    );
    let p = Policy::parse(&text).unwrap();
    let (rule, limit) = p.quota_for(API).unwrap();
    assert_eq!(&*rule.name, "quota[1]");
    assert_eq!(
        (limit.rate, limit.burst, limit.max_inflight),
        (Some(5.0), 5, None)
    );
    let (rule, limit) = p.quota_for(BATCH).unwrap();
    assert_eq!(&*rule.name, "payments");
    assert_eq!((limit.burst, limit.max_inflight), (20, Some(8)));
    assert!(p.quota_for(ALICE).is_none());
    assert_eq!(
        p.approval(),
        ApprovalConfig {
            destroy_key: true,
            window: Duration::from_secs(90)
        }
    );
    let empty = Policy::parse("").unwrap();
    assert!(!empty.approval().destroy_key);
    assert!(
        !empty
            .decide(&Query {
                identity: ALICE,
                key: "k",
                op: Op::Sign,
                scheme: None
            })
            .allowed
    );
}

#[test]
fn bad_policies_are_rejected_with_a_clear_message() {
    let rule = |body: &str| format!("[[rule]]\n{body}\n");
    let cases = [
        (rule("effect = \"allow\"\nidentities = [\"a\"]\nkeys = [\"k\"]\nops = [\"sing\"]"), "unknown op \"sing\""),
        (rule("effect = \"permit\"\nidentities = [\"a\"]\nkeys = [\"k\"]\nops = [\"sign\"]"), "unknown variant"),
        (rule("effect = \"allow\"\nkeys = [\"k\"]\nops = [\"sign\"]"), "at least one identity or group"),
        (rule("effect = \"allow\"\ngroups = [\"nope\"]\nkeys = [\"k\"]\nops = [\"sign\"]"), "unknown group \"nope\""),
        (rule("effect = \"allow\"\nidentities = [\"a\"]\nkeys = []\nops = [\"sign\"]"), "keys is empty"),
        (rule("effect = \"allow\"\nidentities = [\"a\"]\nkeys = [\"bad key\"]\nops = [\"sign\"]"), "invalid key name"),
        (rule("effect = \"allow\"\nidentities = [\"a\"]\nkeys = [\"bad/*\"]\nops = [\"sign\"]"), "may use only"),
        (rule("effect = \"allow\"\nidentities = [\"a\"]\nkeys = [\"k\"]\nops = []"), "ops is empty"),
        (rule("effect = \"allow\"\nidentities = [\"a\"]\nkeys = [\"k\"]\nops = [\"sign\"]\nschemes = [\"md5\"]"), "unknown scheme"),
        (rule("effect = \"allow\"\nidentities = [\"a\"]\nkeys = [\"k\"]\nops = [\"sign\"]\nkeyz = 1"), "unknown field"),
        (format!("{}{}", rule("name = \"x\"\neffect = \"allow\"\nidentities = [\"a\"]\nkeys = [\"k\"]\nops = [\"sign\"]"),
                 rule("name = \"x\"\neffect = \"deny\"\nidentities = [\"a\"]\nkeys = [\"k\"]\nops = [\"sign\"]")), "used twice"),
        ("[groups]\ng = []\n".to_owned(), "groups.g"),
        ("[[quota]]\nidentities = [\"a\"]\n".to_owned(), "set rate, max_inflight or both"),
        ("[[quota]]\nidentities = [\"a\"]\nrate = -1\n".to_owned(), "rate must be > 0"),
        ("[approval]\ndestroy_key = true\nwindow = \"10 minutes\"\n".to_owned(), "approval.window"),
        ("[approval]\ndestroy_key = true\nwindow = \"2d\"\n".to_owned(), "approval.window"),
        ("[approval]\ndestroy_key = true\nwindow = \"48h\"\n".to_owned(), "between"),
    ];
    for (text, want) in cases {
        let err = Policy::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains(want),
            "expected {want:?} in {err:?} for\n{text}"
        );
    }
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    for bad in ["", "10", "m", "1.5s", "-1s", "1d", "99999999999999999999h"] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn op_names_round_trip() {
    for op in Op::ALL {
        assert_eq!(parse_op(op_name(op)), Some(op));
        assert_eq!(parse_op(op.as_str()), Some(op));
    }
    assert_eq!(parse_op("*"), None);
}

#[test]
fn example_policy_is_valid() {
    let p = Policy::parse(include_str!("../../../../policy.example.toml")).unwrap();
    assert!(!p.rules().is_empty());
}

#[test]
fn identity_patterns_with_controls_brackets_or_padding_are_rejected_at_load() {
    let rule = |id: &str| {
        format!(
            "[[rule]]\nname = \"r\"\neffect = \"allow\"\nidentities = [\"{id}\"]\nkeys = [\"k\"]\n\
             ops = [\"sign\"]\n"
        )
    };
    let cases = [
        // TOML escapes: the policy holds the control character itself.
        (
            rule("spiffe://ex.org/a\\u0000"),
            "rule \"r\": identity \"spiffe://ex.org/a\\0\" contains the control character U+0000",
        ),
        (
            rule("spiffe://ex.org/a\\tb"),
            "contains the control character U+0009",
        ),
        (
            rule("spiffe://ex.org/\\u007f"),
            "contains the control character U+007F",
        ),
        (
            rule("spiffe://ex.org/[ab]"),
            "identity \"spiffe://ex.org/[ab]\" contains '[', which is reserved",
        ),
        (rule(" spiffe://ex.org/a"), "begins or ends with whitespace"),
        (rule(""), "rule \"r\": identity \"\" is empty"),
        (
            "[groups]\nops = [\"spiffe://ex.org/ok\", \"spiffe://ex.org/b\\nad\"]\n".to_owned(),
            "groups.ops: identity \"spiffe://ex.org/b\\nad\" contains the control character U+000A",
        ),
        (
            "[[quota]]\nname = \"q\"\nidentities = [\"x\\r\"]\nrate = 1\n".to_owned(),
            "quota \"q\": identity \"x\\r\" contains the control character U+000D",
        ),
    ];
    for (text, want) in cases {
        let err = Policy::parse(&text).unwrap_err().to_string();
        assert!(
            err.contains(want),
            "expected {want:?} in {err:?} for\n{text}"
        );
    }
    // Wildcards are what makes an entry a glob; inner spaces are fine (a commonName may hold one).
    let p = Policy::parse(&rule("spiffe://ex.org/*")).unwrap();
    assert!(decide(&p, "spiffe://ex.org/x", "k", Op::Sign, None).0);
    assert!(Policy::parse(&rule("Alice Smith")).is_ok());
}

/// Admins of `ops-*` (a pattern) and of `alice`, `bob` (listed), all granted every op, with
/// two-admin destroy.
const APPROVAL_POLICY: &str = r#"
[groups]
listed = ["spiffe://ex.org/ops/alice", "spiffe://ex.org/ops/bob"]
globbed = ["spiffe://ex.org/ops-*"]

[[rule]]
name = "listed-admins"
effect = "allow"
groups = ["listed"]
keys = ["*"]
ops = ["*"]

[[rule]]
name = "globbed-admins"
effect = "allow"
groups = ["globbed"]
identities = ["spiffe://ex.org/team/?"]
keys = ["*"]
ops = ["*"]

[[rule]]
name = "carol-rotates"
effect = "allow"
identities = ["spiffe://ex.org/carol"]
keys = ["*"]
ops = ["rotate_key"]

[[rule]]
name = "carol-destroys-by-pattern"
effect = "allow"
identities = ["spiffe://ex.org/caro?"]
keys = ["*"]
ops = ["destroy_key"]

[approval]
destroy_key = true
"#;

#[test]
fn two_admin_approval_counts_only_individually_listed_admins() {
    use approval::ApprovalStep;
    let policy = Policy::parse(APPROVAL_POLICY).unwrap();
    let live = LivePolicy::new(std::path::Path::new("policy.toml"), policy);
    let key = signer_proto::keys::KeyName::new("k").unwrap();
    let t0 = std::time::Instant::now();
    let step = |id: &str, version: u32| {
        let id: Arc<str> = id.into();
        live.destroy_approval(&live.current(), &key, version, &id, t0)
    };
    // Both allowed destroy_key by the policy, through a pattern.
    for id in [
        "spiffe://ex.org/ops-alice",
        "spiffe://ex.org/team/1",
        "spiffe://ex.org/carol",
    ] {
        let q = Query {
            identity: id,
            key: "k",
            op: Op::DestroyKey,
            scheme: None,
        };
        assert!(live.current().decide(&q).allowed, "{id}");
        assert!(!live.current().lists_individually(&q), "{id}");
    }

    // One person with two certificates the pattern matches cannot approve their own destroy:
    // neither the request nor the approval counts. (Carol is listed, but not for destroy_key.)
    let first = step("spiffe://ex.org/ops-alice", 1);
    let second = step("spiffe://ex.org/ops-alice-2", 1);
    assert!(
        !matches!(second, Some(ApprovalStep::Approved { .. })),
        "{second:?}"
    );
    assert_eq!(first, Some(ApprovalStep::NotListed));
    assert_eq!(second, Some(ApprovalStep::NotListed));
    assert_eq!(
        step("spiffe://ex.org/carol", 1),
        Some(ApprovalStep::NotListed)
    );
    // A listed admin's request cannot be approved by a globbed one either.
    assert!(matches!(
        step("spiffe://ex.org/ops/alice", 2),
        Some(ApprovalStep::Requested { .. })
    ));
    assert_eq!(
        step("spiffe://ex.org/team/1", 2),
        Some(ApprovalStep::NotListed)
    );
    // Two individually listed admins: approved.
    assert_eq!(
        step("spiffe://ex.org/ops/bob", 2),
        Some(ApprovalStep::Approved {
            requester: "spiffe://ex.org/ops/alice".into()
        })
    );
}

// ---- properties over generated policies ----

const IDENTITIES: &[&str] = &["a", "b", "c", "svc-1", "svc-22"];
const IDENTITY_PATTERNS: &[&str] = &["a", "b", "c", "svc-?", "svc-*"];
const KEYS: &[&str] = &["k1", "k2", "pay-1", "pay-22"];
const KEY_PATTERNS: &[&str] = &["k1", "k2", "pay-*", "k?", "*"];
const OP_NAMES: &[&str] = &[
    "sign",
    "sign_batch",
    "verify",
    "public_key",
    "list",
    "create_key",
    "destroy_key",
    "*",
];
const SCHEMES: &[&str] = &["ecdsa-sha256", "rsa-pss-sha256"];

/// A request is decided by one policy snapshot: a reload after its authorization does not
/// change the quota (or approval rule) it meets. Everything a request asks of the live policy
/// takes the snapshot it was authorized under (`LivePolicy::current` once per request).
#[test]
fn a_request_keeps_its_policy_snapshot_across_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    let id = "spiffe://ex/app";
    let limited = format!(
        "[[rule]]\neffect = \"allow\"\nidentities = [\"{id}\"]\nkeys = [\"*\"]\nops = [\"sign\"]\n\n\
         [[quota]]\nidentities = [\"{id}\"]\nrate = 1\nburst = 1\n"
    );
    std::fs::write(&path, &limited).unwrap();
    let live = LivePolicy::load(&path).unwrap();
    let snapshot = live.current();
    // The operator drops the quota (and the rule) while the request is between checks.
    std::fs::write(&path, "").unwrap();
    live.reload().unwrap();
    assert!(live.current().quota_for(id).is_none());
    let who: Arc<str> = id.into();
    let now = std::time::Instant::now();
    // Under its snapshot the request still meets the quota it was authorized with.
    assert!(live.admit(&snapshot, &who, 1, now).unwrap().is_some());
    assert!(
        live.admit(&snapshot, &who, 1, now).is_err(),
        "the snapshot's burst of 1"
    );
    // A new request gets the new policy: no quota.
    assert!(live.admit(&live.current(), &who, 1, now).unwrap().is_none());
}

fn subset(of: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(of, 1..=of.len().min(3))
}

fn arb_rule() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        subset(IDENTITY_PATTERNS),
        any::<bool>(),
        subset(KEY_PATTERNS),
        subset(OP_NAMES),
        proptest::option::of(subset(SCHEMES)),
    )
        .prop_map(|(deny, ids, use_group, keys, ops, schemes)| {
            let list = |v: &[&str]| {
                v.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let who = if use_group {
                "groups = [\"g\"]".to_owned()
            } else {
                format!("identities = [{}]", list(&ids))
            };
            let schemes = schemes.map_or(String::new(), |s| format!("schemes = [{}]\n", list(&s)));
            format!(
                "[[rule]]\neffect = \"{}\"\n{who}\nkeys = [{}]\nops = [{}]\n{schemes}\n",
                if deny { "deny" } else { "allow" },
                list(&keys),
                list(&ops)
            )
        })
}

fn arb_policy() -> impl Strategy<Value = String> {
    (
        subset(IDENTITY_PATTERNS),
        proptest::collection::vec(arb_rule(), 0..8),
    )
        .prop_map(|(group, rules)| {
            let members = group
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("[groups]\ng = [{members}]\n\n{}", rules.concat())
        })
}

fn arb_query() -> impl Strategy<Value = (&'static str, &'static str, Op, Option<Scheme>)> {
    (
        proptest::sample::select(IDENTITIES),
        proptest::sample::select(KEYS),
        proptest::sample::select(Op::ALL.to_vec()),
        proptest::option::of(proptest::sample::select(vec![
            Scheme::EcdsaSha256,
            Scheme::RsaPssSha256,
            Scheme::Ed25519,
        ])),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Deny wins: the decision is allow iff some allow rule matches and no deny rule does.
    #[test]
    fn deny_always_wins(text in arb_policy(), (identity, key, op, scheme) in arb_query()) {
        let p = Policy::parse(&text).unwrap();
        let q = Query { identity, key, op, scheme };
        let matching: Vec<&Rule> = p.rules().iter().filter(|r| r.matches(&q).is_some()).collect();
        let any_deny = matching.iter().any(|r| r.effect == Effect::Deny);
        let any_allow = matching.iter().any(|r| r.effect == Effect::Allow);
        let d = p.decide(&q);
        prop_assert_eq!(d.allowed, any_allow && !any_deny);
        if any_deny {
            let (rule, _, _) = d.matched.unwrap();
            prop_assert_eq!(rule.effect, Effect::Deny);
        }
        // Appending an all-covering deny denies everything.
        let closed = format!("{text}[[rule]]\neffect = \"deny\"\nidentities = [\"*\"]\nkeys = [\"*\"]\nops = [\"*\"]\n");
        prop_assert!(!Policy::parse(&closed).unwrap().decide(&q).allowed);
    }

    /// An identity no rule names is denied everything.
    #[test]
    fn unknown_identity_is_denied(text in arb_policy(), (_, key, op, scheme) in arb_query()) {
        let p = Policy::parse(&text).unwrap();
        let q = Query { identity: "spiffe://elsewhere/unknown", key, op, scheme };
        prop_assert!(!p.decide(&q).allowed);
        prop_assert!(!p.may_use(q.identity, key));
    }

    /// A key is listed iff some non-admin op (with some scheme or none) on it is allowed.
    #[test]
    fn list_filter_matches_decisions(text in arb_policy(), (identity, key, _, _) in arb_query()) {
        let p = Policy::parse(&text).unwrap();
        let allowed_somehow = Op::ALL.into_iter().filter(|op| !op.is_admin()).any(|op| {
            std::iter::once(None).chain(Scheme::ALL.into_iter().map(Some)).any(|scheme| {
                p.decide(&Query { identity, key, op, scheme }).allowed
            })
        });
        prop_assert_eq!(p.may_use(identity, key), allowed_somehow);
        // In particular: whatever a caller may sign with, it can see in the listing.
        for scheme in Scheme::ALL {
            if p.decide(&Query { identity, key, op: Op::Sign, scheme: Some(scheme) }).allowed {
                prop_assert!(p.may_use(identity, key));
            }
        }
    }
}
