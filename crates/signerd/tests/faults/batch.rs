//! Merkle batch trees (docs/BATCH.md §10) under a slow and a hung HSM: a request with a short
//! deadline fails alone, never the tree it shares with others; a root job stuck in a hung
//! `C_Sign` is answered like any hung call and gives its signing slot to the next tree.

use std::time::{Duration, Instant};

use signer_client::{AnySignature, Client, ClientError, SignOptions, Status};
use signerd::Scheme;

use crate::support::{random_digest, sha256_hex, sign_ok, status_of, warm_up, Daemon};

/// Normal leaves that share a tree with one short-deadline leaf.
const NORMAL: usize = 30;
/// The latency every `C_Sign` gets in the deadline test.
const CALL: Duration = Duration::from_millis(600);

/// A daemon whose `[batch]` makes every key `allowed` with one tree per key at a time (so the
/// next tree gathers while one is signed, and a slot that never comes back stops the key's
/// batches), with `path = value` set in its config too (`path`: tables, then the key); serving.
async fn one_tree_at_a_time(name: &str, path: &[&str], value: toml::Value) -> Daemon {
    let mut d = Daemon::init(name);
    d.edit_config(|cfg| {
        let mut batch = toml::Table::new();
        batch.insert("default".into(), "allowed".into());
        batch.insert("max_trees_in_flight".into(), 1.into());
        cfg.insert("batch".into(), batch.into());
        let (key, tables) = path.split_last().unwrap();
        let mut t = cfg;
        for name in tables {
            t = t.get_mut(*name).unwrap().as_table_mut().unwrap();
        }
        t.insert((*key).into(), value);
    });
    d.serve().await;
    d
}

/// Signs `digest` accepting a batch signature.
async fn batch_sign(app: &Client, key: &str, digest: &[u8]) -> Result<AnySignature, ClientError> {
    app.sign_with(
        key,
        Scheme::EcdsaSha256,
        digest.to_vec(),
        SignOptions::new().accept_batch(true),
    )
    .await
}

/// A batch signature that verifies for `digest` (and is one).
fn batch_ok(r: Result<AnySignature, ClientError>, spki: &[u8], digest: &[u8]) {
    let sig = r.unwrap_or_else(|e| panic!("batch sign: {e}"));
    assert!(sig.is_batch(), "a batch signature for an allowed key");
    sig.verify(spki, digest).expect("the proof verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_deadline_fails_alone_and_never_its_tree() {
    let workers = ["providers", "softhsm", "workers_per_partition"];
    let mut d = one_tree_at_a_time("batch-deadline", &workers, 1.into()).await;
    // One partition, one worker: every call of the key waits for the one before it.
    let (key, spki) = d.ec_key("batch-deadline", &["p0"]).await;
    let plain = d.app(Duration::from_secs(20)).await;
    let batch = d.app(Duration::from_secs(20)).await;
    // Its deadline passes after the next tree is built, before that tree's root job reaches
    // the worker (timeline below).
    let short_app = d.app(CALL * 2 + Duration::from_millis(200)).await;
    let tiny_app = d.app(Duration::from_millis(1)).await;
    warm_up(&plain, &key, &spki, 4).await;
    for _ in 0..4 {
        let digest = random_digest();
        batch_ok(batch_sign(&batch, &key, &digest).await, &spki, &digest);
    }
    d.faults(&format!(
        "[[rule]]\nname = \"slow\"\nkind = \"latency\"\nfunction = \"C_Sign\"\nfixed_ms = {}\n",
        CALL.as_millis()
    ))
    .await;

    // Timeline, in calls of CALL: [0, 1] the worker signs the root of a tree of one; [1, 2] a
    // plain call queued meanwhile (the worker answers the root when that call is done, so the
    // tree's slot is busy until 2); the next tree gathers from 0.17 and is built at 2; a plain
    // call queued at 1.5 runs [2, 3]; the new tree's root job waits behind it, [3, 4]. The short
    // leaf's deadline (2.5) passes in between: it must fail alone.
    let t0 = Instant::now();
    let spawn_plain = |app: &Client| {
        let (app, key, spki) = (app.clone(), key.clone(), spki.clone());
        tokio::spawn(async move { sign_ok(&app, &key, &spki, &random_digest()).await })
    };
    let first = {
        let (app, key) = (batch.clone(), key.clone());
        let digest = random_digest();
        tokio::spawn(async move { (batch_sign(&app, &key, &digest).await, digest) })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut busy = vec![spawn_plain(&plain)];
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut normal = Vec::new();
    for _ in 0..NORMAL {
        let (app, key) = (batch.clone(), key.clone());
        let digest = random_digest();
        normal.push(tokio::spawn(async move {
            (batch_sign(&app, &key, &digest).await, digest)
        }));
    }
    let short_digest = random_digest();
    let short = {
        let (key, digest) = (key.clone(), short_digest.clone());
        tokio::spawn(async move { batch_sign(&short_app, &key, &digest).await })
    };
    let tiny = {
        let key = key.clone();
        tokio::spawn(async move { batch_sign(&tiny_app, &key, &random_digest()).await })
    };
    tokio::time::sleep_until((t0 + CALL * 3 / 2).into()).await;
    busy.push(spawn_plain(&plain));

    let (r, digest) = first.await.unwrap();
    batch_ok(r, &spki, &digest);
    let mut trees = std::collections::HashSet::new();
    for t in normal {
        let (r, digest) = t.await.unwrap();
        let sig = r.unwrap_or_else(|e| {
            panic!("a normal leaf failed with its tree (short-deadline neighbour): {e}")
        });
        sig.verify(&spki, &digest).expect("the proof verifies");
        let signer_client::SignatureForm::Batch(b) = &sig.signature else {
            panic!("a plain signature for a batch request");
        };
        trees.insert(b.root_signature.clone());
    }
    for (what, r) in [
        ("short", short.await.unwrap()),
        ("1 ms", tiny.await.unwrap()),
    ] {
        match r {
            Err(e) => assert_eq!(status_of(&e).0, Status::DeadlineExceeded, "{what}: {e}"),
            Ok(_) => panic!("the {what} leaf was answered with a signature after its deadline"),
        }
    }
    for t in busy {
        t.await.unwrap();
    }
    eprintln!(
        "{NORMAL} normal leaves signed in {} tree(s) after {:?}",
        trees.len(),
        t0.elapsed()
    );

    // The short leaf was in the tree (its record says it got no proof), the others signed.
    d.terminate();
    let records = d.audit_of(&short_digest);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["status"], "deadline_exceeded", "{records:#?}");
    let detail = records[0]["detail"].as_str().unwrap();
    assert!(detail.contains("no proof released"), "{detail}");
    let (ok, report) = d.audit_verify();
    assert!(ok, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_root_job_is_answered_and_gives_its_slot_back() {
    let hang = ["engine", "hang_timeout"];
    let mut d = one_tree_at_a_time("batch-hang", &hang, "300ms".into()).await;
    let (key, spki) = d.ec_key("batch-hang", &[]).await;
    let app = d.app(Duration::from_secs(5)).await;
    warm_up(&app, &key, &spki, 8).await;
    for _ in 0..4 {
        let digest = random_digest();
        batch_ok(batch_sign(&app, &key, &digest).await, &spki, &digest);
    }
    // The next C_Sign, whichever partition makes it, hangs until the rule is lifted.
    d.faults("[[rule]]\nname = \"hang-root\"\nkind = \"hang\"\nfunction = \"C_Sign\"\ncount = 1\n")
        .await;

    let hung_app = d.app(Duration::from_secs(1)).await;
    let hung_digest = random_digest();
    let sent = Instant::now();
    let e = batch_sign(&hung_app, &key, &hung_digest)
        .await
        .expect_err("the root job hangs");
    let took = sent.elapsed();
    assert_eq!(status_of(&e).0, Status::DeadlineExceeded, "{e}");
    assert!(
        took < Duration::from_secs(2),
        "answered at its deadline: {took:?}"
    );
    d.stats_when("the hung root job", |s| s.injected("hang-root") == 1)
        .await;
    let m = d.metrics().await;
    let hung = ["p0", "p1"]
        .into_iter()
        .find(|p| m.healthy(p) == 0.0)
        .expect("the partition of the hung call is out of rotation");

    // The call still hangs; the tree's only slot is free again: the next trees are signed on
    // the other partition.
    let again = Instant::now();
    for i in 0..8 {
        let digest = random_digest();
        let r = batch_sign(&app, &key, &digest).await;
        if let Err(e) = &r {
            panic!("tree {i} after the hung root: {e} (the hung root kept the only slot)");
        }
        batch_ok(r, &spki, &digest);
    }
    eprintln!(
        "8 trees signed {:?} after the hung root was answered",
        again.elapsed()
    );
    assert!(d.log().contains("quarantined and replaced"), "{}", d.log());

    // The hang ends: the late root signature is discarded, the partition comes back, and both
    // partitions sign trees again.
    d.faults("").await;
    let back = Instant::now();
    while d.metrics().await.healthy("p0") != 1.0 || d.metrics().await.healthy("p1") != 1.0 {
        assert!(back.elapsed() < Duration::from_secs(10), "{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its HSM permit and worker were handed back: it signs trees again.
    let before = d.metrics().await.hsm_calls(hung);
    for _ in 0..40 {
        let digest = random_digest();
        batch_ok(batch_sign(&app, &key, &digest).await, &spki, &digest);
    }
    assert!(
        d.metrics().await.hsm_calls(hung) > before,
        "{hung} signs again"
    );

    // The hung root is recorded as failed; no record says its leaf was signed.
    d.terminate();
    let entries = d.audit_entries();
    let hung: Vec<_> = entries
        .iter()
        .filter(|r| r["identity"] == "signerd/batcher" && r["status"] == "deadline_exceeded")
        .collect();
    assert_eq!(hung.len(), 1, "{hung:#?}");
    let detail = hung[0]["detail"].as_str().unwrap();
    assert!(detail.contains("hung call"), "{detail}");
    let h = sha256_hex(&hung_digest);
    assert!(
        !entries
            .iter()
            .any(|r| r["payload_sha256"] == h.as_str() && r["status"] == "ok"),
        "the hung tree's leaf was never signed for its caller"
    );
    let (ok, report) = d.audit_verify();
    assert!(ok, "{report}");
}
