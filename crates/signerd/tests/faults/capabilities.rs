//! A token that lacks a mechanism (issue 21, "Survive what vendor modules do"): a
//! `hide_mechanism` rule of the fault module, in force from the daemon's start (the capability
//! probe runs when a partition opens), takes `CKM_EC_EDWARDS_KEY_PAIR_GEN` away from
//! `signerd-1` (partition `p1`). An Ed25519 key placed on p1 is refused with a message naming
//! the partition and the mechanism, before any object is made in either token; with the default
//! placement it is made on p0 only; P-256 keys still go to both; `signerd check --json` shows p1
//! unable to create Ed25519 keys.

use std::process::Command;

use signer_client::ClientError;
use signerd::{KeyType, Status};

use crate::support::{unique, Daemon};

const NO_EDDSA_KEYGEN: &str = "[[rule]]\nname = \"no-ed25519\"\nkind = \"hide_mechanism\"\n\
     token = \"signerd-1\"\nmechanism = \"CKM_EC_EDWARDS_KEY_PAIR_GEN\"\n";

const REFUSAL: &str =
    "partition p1 cannot create ed25519 keys: its module lacks CKM_EC_EDWARDS_KEY_PAIR_GEN";

/// `C_GenerateKeyPair` calls the fault module has forwarded so far (settled).
async fn keygens(d: &Daemon) -> u64 {
    let s = d.stats_when("a stats file", |s| s.generation >= 1).await;
    s.calls.get("C_GenerateKeyPair").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_type_a_partition_cannot_create_is_refused_before_any_object_is_made() {
    let mut d = Daemon::init("cap-refuse");
    d.write_faults(NO_EDDSA_KEYGEN);
    d.serve().await;
    let probed = d.stats_now();
    assert!(
        probed.rule("no-ed25519").expect("the rule").injected >= 1,
        "p1's probe met the rule: {probed:#?}"
    );
    let admin = d.admin().await;
    let before = keygens(&d).await;
    let mut refused = Vec::new();
    for placement in [vec!["p1"], vec!["p0", "p1"], vec!["p1", "p0"]] {
        let name = unique("cap-ed");
        let err = admin
            .create_key(
                &name,
                KeyType::Ed25519,
                placement.iter().map(|p| (*p).to_owned()).collect(),
            )
            .await
            .expect_err("p1 cannot create Ed25519 keys");
        match &err {
            ClientError::Status {
                status, message, ..
            } => {
                assert_eq!(*status, Status::InvalidArgument, "{err}");
                assert!(message.contains(REFUSAL), "{placement:?}: {message}");
            }
            other => panic!("no answer from the daemon: {other}"),
        }
        refused.push(name);
    }
    assert_eq!(
        keygens(&d).await,
        before,
        "no key pair was generated in either token"
    );
    let listed = admin.list_keys().await.unwrap();
    for name in &refused {
        assert!(
            !listed.iter().any(|k| k.name.as_str() == name),
            "{name} exists after its refusal"
        );
    }

    // P-256 still goes to both partitions (ec_key asserts the placement).
    let (_, spki) = d.ec_key("cap-p256", &["p0", "p1"]).await;
    assert!(!spki.is_empty());
    let (_, _) = d.ec_key("cap-p256-default", &[]).await;

    // The default placement ("every partition") leaves out p1, which cannot, and says why.
    let name = unique("cap-ed-default");
    let v = admin
        .create_key(&name, KeyType::Ed25519, Vec::new())
        .await
        .expect("Ed25519 on the partitions that can");
    assert_eq!(v.partitions, ["p0"], "placed on p0 only");
    assert!(
        d.log().contains(REFUSAL),
        "the warning names p1 and the mechanism:\n{}",
        d.log()
    );
    // Placed on p0 alone, an Ed25519 key is made.
    let name = unique("cap-ed-p0");
    let v = admin
        .create_key(&name, KeyType::Ed25519, vec!["p0".into()])
        .await
        .expect("p0 can");
    assert_eq!(v.partitions, ["p0"]);
    admin.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_json_shows_the_partition_lacking_ed25519() {
    let d = Daemon::init("cap-check");
    d.write_faults(NO_EDDSA_KEYGEN);
    let out = Command::new(env!("CARGO_BIN_EXE_signerd"))
        .args(["check", "--json", "--config"])
        .arg(d.path("signerd.toml"))
        .env("SIGNERD_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    let parts = v["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 2, "{v:#}");
    let by_name = |n: &str| {
        parts
            .iter()
            .find(|p| p["partition"] == n)
            .unwrap_or_else(|| panic!("{n} in {v:#}"))
    };
    let (p0, p1) = (by_name("p0"), by_name("p1"));
    let types = |p: &serde_json::Value| -> Vec<String> {
        p["key_types"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(p0["probed"], true);
    assert!(types(p0).contains(&"ed25519".to_owned()), "{p0:#}");
    assert!(p0["cannot_create"].as_array().unwrap().is_empty(), "{p0:#}");
    assert!(!types(p1).contains(&"ed25519".to_owned()), "{p1:#}");
    assert!(types(p1).contains(&"ec-p256".to_owned()), "{p1:#}");
    assert_eq!(
        p1["cannot_create"],
        serde_json::json!([{
            "key_type": "ed25519",
            "reason": "its module lacks CKM_EC_EDWARDS_KEY_PAIR_GEN",
        }]),
    );
    // Signing is another mechanism (CKM_EDDSA), still there.
    assert!(p1["schemes"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("ed25519")));
    assert!(
        p1["mechanisms"].as_u64().unwrap() + 1 == p0["mechanisms"].as_u64().unwrap(),
        "one mechanism fewer on p1: {v:#}"
    );
    assert!(v["keys"].is_array(), "{v:#}");
}

/// A module that refuses session-object copies of keys (`C_CopyObject` answered
/// `CKR_FUNCTION_NOT_SUPPORTED`, as several vendor modules do): the workers fall back to the
/// token objects with one warning per partition, and every request signs. (The old code failed
/// every request whose key had not been copied yet.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_that_refuses_session_copies_signs_with_the_token_objects() {
    let d = Daemon::start("cap-nocopy").await;
    let (key, spki) = d.ec_key("nocopy", &["p0", "p1"]).await;
    d.faults(
        "[[rule]]\nname = \"no-copies\"\nkind = \"error\"\nfunction = \"C_CopyObject\"\n\
         rv = \"CKR_FUNCTION_NOT_SUPPORTED\"\n",
    )
    .await;
    let before = d.stats_now();
    let app = d.app(std::time::Duration::from_secs(20)).await;
    for _ in 0..40 {
        crate::support::sign_ok(&app, &key, &spki, &crate::support::random_digest()).await;
    }
    // Settled: the fault module's stats file shows these signatures (C_Sign twice each).
    let signs = before.calls("C_Sign") + 80;
    let s = d
        .stats_when("the signatures counted", |s| s.calls("C_Sign") >= signs)
        .await;
    let copies = s.calls("C_CopyObject") - before.calls("C_CopyObject");
    // Each partition tries once per worker at most before it stops trying.
    assert!((1..=4).contains(&copies), "{copies} copy attempts");
    let warnings = d.log().matches("refused a session-object copy").count();
    assert!(
        (1..=2).contains(&warnings),
        "{warnings} warnings:\n{}",
        d.log()
    );
    // Later keys are not copied either: the partition remembers.
    let (other, other_spki) = d.ec_key("nocopy-2", &["p0", "p1"]).await;
    let before = d.stats_now();
    for _ in 0..10 {
        crate::support::sign_ok(&app, &other, &other_spki, &crate::support::random_digest()).await;
    }
    let signs = before.calls("C_Sign") + 20;
    let s = d
        .stats_when("the signatures counted", |s| s.calls("C_Sign") >= signs)
        .await;
    assert_eq!(s.calls("C_CopyObject") - before.calls("C_CopyObject"), 0);
}
