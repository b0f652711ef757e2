//! Key objects the daemon finds in a bad state at start (security review, finding 5): a private
//! key left extractable by a create or replication that never reached its seal is sealed by the
//! start-up scan, or not served at all; never served extractable.

use std::time::Duration;

use signerd::KeyType;

use crate::support::{unique, Daemon};

/// The seal (`C_SetAttributeValue`) and the rollback (`C_DestroyObject`) both fail on the source
/// partition, as after a crash between generate and seal: the private key stays extractable.
const SEAL_AND_ROLLBACK_FAIL: &str = "\
[[rule]]\nname = \"seal\"\nkind = \"error\"\nfunction = \"C_SetAttributeValue\"\n\
token = \"signerd-0\"\nrv = \"CKR_FUNCTION_FAILED\"\n\
[[rule]]\nname = \"rollback\"\nkind = \"error\"\nfunction = \"C_DestroyObject\"\n\
token = \"signerd-0\"\nrv = \"CKR_FUNCTION_FAILED\"\n";

/// Creates a replicated key whose seal and rollback fail; returns its name.
async fn leave_extractable(d: &Daemon) -> String {
    d.faults(SEAL_AND_ROLLBACK_FAIL).await;
    let admin = d.admin().await;
    let name = unique("unsealed");
    let err = admin
        .create_key(&name, KeyType::EcP256, Vec::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("C_SetAttributeValue"), "{err}");
    admin.close();
    d.stats_when("the seal and the rollback both failed", |s| {
        s.rule("seal").is_some_and(|r| r.injected >= 1)
            && s.rule("rollback").is_some_and(|r| r.injected >= 1)
    })
    .await;
    name
}

async fn partitions_of(d: &Daemon, name: &str) -> Vec<String> {
    let admin = d.admin().await;
    let keys = admin.list_keys().await.unwrap();
    admin.close();
    keys.into_iter()
        .find(|k| k.name.as_str() == name)
        .map(|k| {
            let mut p = k.versions[0].partitions.clone();
            p.sort();
            p
        })
        .unwrap_or_default()
}

async fn restart(d: &mut Daemon) {
    assert!(d.terminate().success());
    d.serve().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extractable_key_found_at_start_is_sealed_then_served() {
    let mut d = Daemon::start("seal-at-scan").await;
    let name = leave_extractable(&d).await;
    d.faults("").await;
    restart(&mut d).await;
    let sealed = format!("key={name} version=1");
    let lines = |d: &Daemon| -> usize {
        d.log()
            .lines()
            .filter(|l| {
                l.contains(&sealed) && l.contains("was extractable") && l.contains("sealed it")
            })
            .count()
    };
    assert_eq!(lines(&d), 1, "sealed once at start; log:\n{}", d.log());
    // The rollback removed the copy on p1; the source on p0, now sealed, is served.
    assert_eq!(partitions_of(&d, &name).await, ["p0"], "then served");
    let app = d.app(Duration::from_secs(10)).await;
    let spki = d
        .admin()
        .await
        .public_key(&name, None)
        .await
        .unwrap()
        .spki_der;
    for _ in 0..20 {
        crate::support::sign_ok(&app, &name, &spki, &crate::support::random_digest()).await;
    }
    app.close();
    // Sealed in the token, not only in this process: the next start finds nothing to seal.
    restart(&mut d).await;
    assert_eq!(lines(&d), 1, "nothing left to seal; log:\n{}", d.log());
    d.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extractable_key_that_cannot_be_sealed_is_not_served() {
    let mut d = Daemon::start("refuse-unsealed").await;
    let name = leave_extractable(&d).await;
    // The seal still fails at the next start: the extractable copy on p0 must not be served.
    restart(&mut d).await;
    assert!(
        d.log().lines().any(|l| l.contains(&format!("key={name}"))
            && l.contains("could not be sealed")
            && l.contains("refusing to serve it")),
        "log:\n{}",
        d.log()
    );
    assert_eq!(
        partitions_of(&d, &name).await,
        Vec::<String>::new(),
        "the extractable key is not served"
    );
    let app = d.app(Duration::from_secs(10)).await;
    let err = app
        .sign(
            &name,
            signerd::Scheme::EcdsaSha256,
            crate::support::random_digest(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        crate::support::status_of(&err).0,
        signerd::Status::NotFound,
        "{err}"
    );
    app.close();
    d.faults("").await;
    d.terminate();
}
