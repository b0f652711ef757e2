//! Answers are not held back behind a slow HSM: a worker groups finished answers only while the
//! next call would end within the grouping hold (2 ms), so with a slow partition (a network
//! HSM's milliseconds; here 300 ms per `C_Sign`) each caller is answered as soon as its own call
//! is done, not after the next job's call as well.

use std::time::{Duration, Instant};

use crate::support::{random_digest, sign_ok, warm_up, Daemon};

const CALL: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_hsm_answers_each_job_when_its_call_is_done() {
    let d = Daemon::start_one_worker("answers-slow").await;
    let (key, spki) = d.ec_key("answers", &["p0"]).await;
    // One client each: a client coalesces concurrent calls into one request.
    let mut apps = Vec::new();
    for _ in 0..3 {
        let app = d.app(Duration::from_secs(20)).await;
        warm_up(&app, &key, &spki, 2).await;
        apps.push(app);
    }
    d.faults(&format!(
        "[[rule]]\nname = \"slow\"\nkind = \"latency\"\nfunction = \"C_Sign\"\nfixed_ms = {}\n",
        CALL.as_millis()
    ))
    .await;
    // Three requests queued at once for the one worker: they are signed one after the other.
    let t0 = Instant::now();
    let tasks: Vec<_> = apps
        .iter()
        .map(|app| {
            let (app, key, spki) = (app.clone(), key.clone(), spki.clone());
            tokio::spawn(async move {
                sign_ok(&app, &key, &spki, &random_digest()).await;
                t0.elapsed()
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    done.sort();
    eprintln!("answered after {done:?} (calls of {CALL:?})");
    // The first is answered after its own call (the old code held it until the second call
    // was done too: 2 calls), the second after two calls, not three.
    assert!(
        done[0] < CALL + CALL / 2,
        "first answer after {:?}",
        done[0]
    );
    assert!(
        done[1] < CALL * 2 + CALL / 2,
        "second answer after {:?}",
        done[1]
    );
    assert!(
        done[2] >= CALL * 3,
        "the three calls ran one after another: {done:?}"
    );
}
