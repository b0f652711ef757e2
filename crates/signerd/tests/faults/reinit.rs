//! Security review, finding 4: PKCS#11 handles after a module re-initialization. SoftHSM2
//! numbers sessions and objects afresh after `C_Finalize` and `C_Initialize`, so a session or key
//! handle kept across one names, by chance, another thread's new session or another key. Here the
//! fault module hands out its own, never reused handles (`own_handles`) and counts every call
//! that arrives with one from before its last `C_Finalize`; the daemon re-initializes the module
//! (scenario 3) while admin ops (create, with replication, rotate, retire) and audit checkpoints
//! run, and no such call may reach the module.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signer_client::{Client, Status};
use signerd::{KeyType, Scheme};

use crate::support::{random_digest, sign_ok, status_of, unique, warm_up, Daemon, WORKERS};

/// Every `C_Sign` on signerd-1 fails until the module is finalized (scenario 3: the breaker
/// trips three times while the token answers, and the daemon re-initializes the module); the
/// calls only admin ops make take 40 ms more, so that a re-initialization finds one under way.
const FAULTS: &str = "\
[[rule]]\nname = \"broken\"\nkind = \"error\"\nfunction = \"C_Sign\"\n\
token = \"signerd-1\"\nrv = \"CKR_DEVICE_ERROR\"\nuntil_finalize = true\n\
[[rule]]\nname = \"slow-admin\"\nkind = \"latency\"\n\
function = [\"C_GenerateKeyPair\", \"C_WrapKey\", \"C_UnwrapKey\", \"C_SetAttributeValue\"]\n\
fixed_ms = 40\n";

/// What the admin loop saw.
#[derive(Debug, Default)]
struct AdminTally {
    ok: usize,
    /// Clean refusals, by status (an answer from the daemon, not a dropped stream or timeout).
    failed: Vec<(String, Status)>,
    /// Successful ops that started after the module's `C_Finalize`.
    ok_after: usize,
}

/// Create (on both partitions: generate on one, wrap, unwrap on the other, seal), rotate,
/// retire v1, over and over until `stop`. Every op must be answered by the daemon.
async fn admin_loop(admin: Client, stop: Arc<AtomicBool>, reinit: Arc<AtomicBool>) -> AdminTally {
    let mut t = AdminTally::default();
    let note =
        |t: &mut AdminTally, op: &str, after: bool, r: Result<(), signer_client::ClientError>| {
            match r {
                Ok(()) => {
                    t.ok += 1;
                    t.ok_after += usize::from(after);
                }
                Err(e) => t.failed.push((format!("{op}: {e}"), status_of(&e).0)),
            }
        };
    while !stop.load(Ordering::Relaxed) {
        let name = unique("admin");
        let after = reinit.load(Ordering::Relaxed);
        let created = admin.create_key(&name, KeyType::EcP256, Vec::new()).await;
        let made = created.is_ok();
        note(&mut t, "create", after, created.map(|_| ()));
        if made {
            let after = reinit.load(Ordering::Relaxed);
            let r = admin.rotate_key(&name).await.map(|_| ());
            note(&mut t, "rotate", after, r);
            let after = reinit.load(Ordering::Relaxed);
            let r = admin.retire_key(&name, 1).await.map(|_| ());
            note(&mut t, "retire", after, r);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    admin.close();
    t
}

/// Sign requests on `key` until `stop`, answered with a signature or UNAVAILABLE; returns how
/// many failed.
async fn sign_loop(app: Client, key: String, spki: Vec<u8>, stop: Arc<AtomicBool>) -> usize {
    let mut failed = 0;
    while !stop.load(Ordering::Relaxed) {
        let digest = random_digest();
        match app.sign(&key, Scheme::EcdsaSha256, digest.clone()).await {
            Ok(sig) => crate::verify::verify(&spki, Scheme::EcdsaSha256, &digest, &sig.signature)
                .expect("a signature released during the fault verifies"),
            Err(e) => {
                assert_eq!(status_of(&e).0, Status::Unavailable, "{e}");
                failed += 1;
            }
        }
    }
    failed
}

/// The checkpoints in the audit log.
fn checkpoints(d: &Daemon) -> usize {
    std::fs::read_to_string(d.path("audit/audit.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"kind\":\"checkpoint\""))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_a_reinitialization_amid_admin_ops_and_checkpoints_uses_no_stale_handle() {
    let mut d = Daemon::init("f4-reinit");
    d.own_handles();
    // A checkpoint (signed in the HSM with the audit key) every 100 ms, so some are signed just
    // before and just after the re-initialization.
    d.edit_config(|cfg| {
        let audit = cfg.get_mut("audit").unwrap().as_table_mut().unwrap();
        audit.insert("checkpoint_interval".into(), "100ms".into());
    });
    d.serve().await;
    assert!(
        d.stats_now().own_handles,
        "the module hands out its own handles"
    );
    let (key, spki) = d.ec_key("f4", &[]).await;
    let app = d.app(Duration::from_secs(10)).await;
    warm_up(&app, &key, &spki, WORKERS).await;
    assert!(checkpoints(&d) > 0, "checkpoints are signed");

    d.faults(FAULTS).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reinit = Arc::new(AtomicBool::new(false));
    let admin = tokio::spawn(admin_loop(
        d.admin().await,
        Arc::clone(&stop),
        Arc::clone(&reinit),
    ));
    let signers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(sign_loop(
                app.clone(),
                key.clone(),
                spki.clone(),
                Arc::clone(&stop),
            ))
        })
        .collect();
    let started = Instant::now();
    while d.stats_now().finalizes == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the module was never re-initialized; log:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reinit.store(true, Ordering::Relaxed);
    let checkpoints_at_reinit = checkpoints(&d);
    eprintln!(
        "re-initialized after {:?}; {checkpoints_at_reinit} checkpoints so far",
        started.elapsed()
    );
    // Admin ops, signing and checkpoints go on for a while on the re-initialized module.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let tally = admin.await.unwrap();
    let mut unavailable = 0;
    for s in signers {
        unavailable += s.await.unwrap();
    }
    eprintln!(
        "admin ops: {} ok ({} after the re-initialization), {} refused: {:?}; {unavailable} signs \
         answered UNAVAILABLE",
        tally.ok,
        tally.ok_after,
        tally.failed.len(),
        tally.failed
    );

    let stats = d
        .stats_when("the stats after the run", |s| s.finalizes == 1)
        .await;
    assert_eq!(
        stats.stale_calls(),
        0,
        "calls on handles from before the re-initialization reached the module: sessions {:?}, \
         objects {:?}",
        stats.stale_sessions,
        stats.stale_objects
    );
    assert_eq!(stats.finalizes, 1, "one re-initialization");
    // Every op was answered by the daemon, with a result or a status (`status_of` panics on a
    // dropped stream or a timeout); the refusals are printed above.
    assert!(
        tally.ok_after > 0,
        "admin ops work after the re-initialization: {tally:?}"
    );
    assert!(
        checkpoints(&d) > checkpoints_at_reinit,
        "checkpoints are signed after the re-initialization"
    );

    // Signing works afterwards, on both partitions, with the old key and a new one.
    d.faults("").await;
    for _ in 0..2 * WORKERS {
        sign_ok(&app, &key, &spki, &random_digest()).await;
    }
    let (fresh, fresh_spki) = d.ec_key("f4-after", &[]).await;
    warm_up(&app, &fresh, &fresh_spki, WORKERS).await;
    app.close();
    let stats = d.stats_now();
    assert_eq!(stats.stale_calls(), 0, "{stats:?}");

    assert!(d.terminate().success(), "log:\n{}", d.log());
    let (ok, report) = d.audit_verify();
    assert!(ok, "audit verify: {report}");
}
