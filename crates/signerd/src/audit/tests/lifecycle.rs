//! Writing, closing, restarting, rotating, failing: the log's life, verified at each step.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::*;

#[test]
fn round_trip_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let path = c.path.clone();
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, 100, 7);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut admin = entry(0);
    admin.op = "create_key";
    admin.payload_sha256 = None;
    admin.detail = Some("type ec-p256 \"quoted\"\n".into());
    rt.block_on(log.append(admin)).unwrap();
    assert!(log.healthy());
    let head = log.head().unwrap();
    log.close();
    let s = log.stats();
    assert_eq!(s.records, 101);
    assert!(s.checkpoints >= 2, "{s:?}");

    let r = verify(&path, None, false).unwrap();
    assert_eq!(r.entries, 101);
    assert!(r.sealed);
    assert_eq!(r.checkpoints, s.checkpoints);
    assert_eq!(r.segments, vec![path.clone()]);
    // start + entries + checkpoints + seal; the head before close was durable.
    assert_eq!(r.records, 1 + 101 + s.checkpoints + 1);
    assert!(r.head_seq.unwrap() > head.0);
    let k = r.key.unwrap();
    assert!(!k.pinned);
    assert_eq!(k.name, "audit-1");
    assert_eq!(k.fingerprint, record::to_hex(&sha256(&SoftSigner::spki(1))));
    let pinned = verify(&path, Some(&SoftSigner::spki(1)), false).unwrap();
    assert!(pinned.key.unwrap().pinned);

    // Later commits are refused, and `done` still runs exactly once.
    assert!(!log.healthy());
    assert!(matches!(
        commit_wait(&log, vec![entry(1)]),
        Err(AuditError::Closed)
    ));
}

#[test]
fn queued_batches_share_one_write_and_sync() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        checkpoint_interval: Duration::from_secs(3600),
        checkpoint_records: 1_000_000,
        ..cfg(dir.path())
    };
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    let before = log.stats().batches;
    log.hold_writes(true);
    let (tx, rx) = crossbeam::channel::unbounded();
    for i in 0..50 {
        let tx = tx.clone();
        log.commit(
            vec![entry(i), entry(i + 1000)],
            Box::new(move |r| tx.send(r).unwrap()),
        );
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        rx.try_recv().is_err(),
        "nothing is acknowledged before it is durable"
    );
    log.hold_writes(false);
    for _ in 0..50 {
        rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    }
    let s = log.stats();
    assert_eq!(s.records, 100);
    // The writer may have taken the first batch alone before it was held; the rest share one.
    assert!(s.batches - before <= 2, "{s:?}");
    log.close();
}

#[test]
fn live_verification_while_the_log_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        checkpoint_records: 5,
        checkpoint_interval: Duration::from_millis(2),
        ..cfg(dir.path())
    };
    let path = c.path.clone();
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, 20, 2);
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..300 {
                commit_wait(&log, vec![entry(i), entry(i + 1000)]).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut rounds = 0;
    while !writer.is_finished() || rounds == 0 {
        let r = verify(&path, None, true).unwrap();
        assert!(!r.sealed);
        assert!(r.entries >= 20);
        rounds += 1;
    }
    writer.join().unwrap();
    log.close();
    assert!(verify(&path, None, false).unwrap().sealed);
}

#[test]
fn one_writer_per_file_and_dropping_the_last_handle_seals() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let log = AuditLog::open(c.clone(), Box::new(SoftSigner::new(1))).unwrap();
    let again = AuditLog::open(c.clone(), Box::new(SoftSigner::new(1))).unwrap_err();
    assert!(matches!(again, AuditError::Config(_)), "{again}");
    fill(&log, 3, 3);
    let clone = log.clone();
    drop(log);
    commit_wait(&clone, vec![entry(9)]).unwrap();
    drop(clone);
    assert!(verify(&c.path, None, false).unwrap().sealed);
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    log.close();
}

/// Another process holding the lock file (here: another open file description, which `flock`
/// treats the same way) keeps the log closed to us, with a message naming the holder; the log is
/// not touched. Once released, the log opens.
#[test]
fn a_log_locked_by_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    AuditLog::open(c.clone(), Box::new(SoftSigner::new(1)))
        .unwrap()
        .close();
    let before = std::fs::read(&c.path).unwrap();
    let lock_path = dir.path().join("audit.log.lock");
    let other = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .unwrap();
    other.try_lock().unwrap();
    std::fs::write(&lock_path, "4242\n").unwrap();

    let err = AuditLog::open(c.clone(), Box::new(SoftSigner::new(1))).unwrap_err();
    assert!(matches!(err, AuditError::InUse { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("in use by another process (pid 4242)") && msg.contains("audit.log.lock"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&c.path).unwrap(), before, "log untouched");

    drop(other);
    let log = AuditLog::open(c.clone(), Box::new(SoftSigner::new(1))).unwrap();
    let pid = std::fs::read_to_string(&lock_path).unwrap();
    assert_eq!(pid.trim(), std::process::id().to_string());
    log.close();
    assert!(verify(&c.path, None, false).unwrap().sealed);
}

#[test]
fn restart_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = sealed_log(dir.path(), 30);
    let before = lines(&path).len();
    let log = AuditLog::open(cfg(dir.path()), Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, 20, 4);
    log.close();
    let all = lines(&path);
    let start = json(&all[before]);
    assert_eq!(start["kind"], "start");
    assert_eq!(start["reason"], "restart");
    assert_eq!(start["prior"], "sealed");
    assert_eq!(start["seq"], before as u64);
    let r = verify(&path, None, false).unwrap();
    assert_eq!((r.entries, r.restarts, r.unclean_restarts), (50, 1, 0));
    assert!(r.sealed);
}

#[test]
fn restart_after_a_crash_is_marked_unclean() {
    let dir = tempfile::tempdir().unwrap();
    let path = sealed_log(dir.path(), 30);
    let mut l = lines(&path);
    l.truncate(l.len() - 2); // the final checkpoint and the seal never made it
    write_lines(&path, &l);
    let log = AuditLog::open(cfg(dir.path()), Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, 5, 5);
    log.close();
    assert_eq!(json(&lines(&path)[l.len()])["prior"], "unclean");
    let r = verify(&path, None, false).unwrap();
    assert_eq!((r.entries, r.unclean_restarts), (35, 1));
}

#[test]
fn rotation_spans_segments_and_verifies_from_any_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        rotate_bytes: 4096,
        ..cfg(dir.path())
    };
    let path = c.path.clone();
    let log = AuditLog::open(c.clone(), Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, 120, 4);
    log.close();
    assert!(log.stats().rotations >= 3, "{:?}", log.stats());
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, 30, 4);
    log.close();

    let r = verify(&path, None, false).unwrap();
    assert!(r.segments.len() >= 4, "{:?}", r.segments);
    assert_eq!(r.entries, 150);
    assert_eq!(r.segments.last(), Some(&path));
    let middle = r.segments[1].clone();
    let from_middle = verify(&middle, Some(&SoftSigner::spki(1)), false).unwrap();
    assert_eq!(from_middle.records, r.records);
    // Each rotated file starts with a start record naming its predecessor.
    for w in r.segments.windows(2) {
        let first = json(&lines(&w[1])[0]);
        assert_eq!(first["kind"], "start");
        let prev_name = w[0].file_name().unwrap().to_str().unwrap();
        assert_eq!(first["prev_file"], prev_name);
    }
}

#[test]
fn torn_tail_is_cut_and_declared() {
    let dir = tempfile::tempdir().unwrap();
    let path = sealed_log(dir.path(), 12);
    let n = lines(&path).len();
    let torn = b"{\"seq\":999,\"prev\":\"00ab";
    let mut data = std::fs::read(&path).unwrap();
    data.extend_from_slice(torn);
    std::fs::write(&path, &data).unwrap();
    // Torn mid-record: the verifier names the line.
    let bad = failure(&path, None, false);
    assert_eq!(
        (bad.line, bad.seq, bad.found_seq),
        (n as u64 + 1, n as u64, None)
    );

    let log = AuditLog::open(cfg(dir.path()), Box::new(SoftSigner::new(1))).unwrap();
    log.close();
    let start = json(&lines(&path)[n]);
    assert_eq!(start["dropped_bytes"], torn.len() as u64);
    assert_eq!(
        start["dropped_sha256"],
        record::to_hex(&sha256(torn)).as_str()
    );
    let r = verify(&path, None, false).unwrap();
    assert_eq!(r.dropped_bytes, torn.len() as u64);
}

#[test]
fn unparsable_complete_last_line_is_cut_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = sealed_log(dir.path(), 5);
    let mut l = lines(&path);
    l.push(b"{\"seq\":42,\"prev\":\"\0\0\0".to_vec());
    write_lines(&path, &l);
    let log = AuditLog::open(cfg(dir.path()), Box::new(SoftSigner::new(1))).unwrap();
    log.close();
    assert!(verify(&path, None, false).is_ok());
}

#[test]
fn corruption_before_the_last_line_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = sealed_log(dir.path(), 12);
    let mut l = lines(&path);
    let i = find_kind(&l, "entry", 3);
    l[i] = String::from_utf8(l[i].clone())
        .unwrap()
        .replace("app-1", "app-2")
        .into_bytes();
    write_lines(&path, &l);
    let err = AuditLog::open(cfg(dir.path()), Box::new(SoftSigner::new(1))).unwrap_err();
    assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
    // Nothing was written.
    assert_eq!(lines(&path), l);
}

#[test]
fn a_file_that_is_not_an_audit_log_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    std::fs::write(&c.path, b"important notes, no newline").unwrap();
    let err = AuditLog::open(c.clone(), Box::new(SoftSigner::new(1))).unwrap_err();
    assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");
    assert_eq!(
        std::fs::read(&c.path).unwrap(),
        b"important notes, no newline"
    );
}

#[test]
fn write_failure_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        resume_interval: Duration::from_millis(10),
        ..cfg(dir.path())
    };
    let path = c.path.clone();
    let log = AuditLog::open(c.clone(), Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, 10, 5);
    log.inject_write_failure();
    let err = commit_wait(&log, vec![entry(1), entry(2)]).unwrap_err();
    assert!(matches!(err, AuditError::Write(_)), "{err}");
    assert!(!log.healthy());
    assert_eq!(log.stats().write_failures, 1);
    // Not a full disk: no resume, however long we wait.
    std::thread::sleep(Duration::from_millis(100));
    assert!(!log.healthy());
    assert_eq!(log.stats().resumes, 0);
    assert!(matches!(
        commit_wait(&log, vec![entry(3)]),
        Err(AuditError::Unhealthy)
    ));
    log.close();
    // The log is intact up to the last durable batch; a restart continues it.
    drop(log);
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, 3, 3);
    log.close();
    let r = verify(&path, None, false).unwrap();
    assert_eq!((r.entries, r.unclean_restarts), (13, 1));
}

#[test]
fn full_disk_fails_closed_then_resumes_with_a_restart_record() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        resume_interval: Duration::from_millis(20),
        ..cfg(dir.path())
    };
    let path = c.path.clone();
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    fill(&log, 10, 5);
    log.inject_disk_full(true);
    let err = commit_wait(&log, vec![entry(100), entry(101)]).unwrap_err();
    assert!(
        matches!(err, AuditError::Write(ref m) if m.contains("space")),
        "{err}"
    );
    assert!(!log.healthy());
    // While the disk stays full, every commit is refused and resume attempts fail quietly.
    std::thread::sleep(Duration::from_millis(100));
    assert!(matches!(
        commit_wait(&log, vec![entry(102)]),
        Err(AuditError::Unhealthy)
    ));
    assert!(!log.healthy());
    let failures = log.stats().write_failures;
    assert!(failures >= 2, "resume attempts were made: {failures}");
    assert_eq!(log.stats().resumes, 0);
    // Room again: the writer resumes by itself within a few intervals.
    log.inject_disk_full(false);
    let until = Instant::now() + Duration::from_secs(5);
    while !log.healthy() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(log.healthy(), "the log resumed");
    assert_eq!(log.stats().resumes, 1);
    fill(&log, 4, 2);
    log.close();
    // One chain: the refused records are not in it, the gap is a restart record.
    let r = verify(&path, None, false).unwrap();
    assert_eq!((r.entries, r.restarts, r.unclean_restarts), (14, 1, 1));
    assert!(r.sealed);
    let text = std::fs::read_to_string(&path).unwrap();
    let starts: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"start\""))
        .collect();
    assert_eq!(starts.len(), 2, "genesis and the resume: {starts:?}");
    assert!(
        starts[1].contains("\"reason\":\"restart\""),
        "{}",
        starts[1]
    );
    assert!(
        !text.contains(&to_hex(&sha256(&100u64.to_be_bytes()))),
        "a refused record is not in the log"
    );
}

#[test]
fn failing_checkpoint_signer_is_counted_and_logging_goes_on() {
    struct Flaky(SoftSigner, u32);
    impl CheckpointSigner for Flaky {
        fn sign(&mut self, d: &[u8; 32]) -> Result<Vec<u8>, String> {
            self.1 += 1;
            if self.1 <= 2 {
                return Err("HSM busy".into());
            }
            if self.1 == 3 {
                return Ok(vec![0x30, 0x00]); // not a signature: must not be written
            }
            self.0.sign(d)
        }
        fn key(&self) -> CheckpointKey {
            self.0.key()
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let path = c.path.clone();
    let log = AuditLog::open(c, Box::new(Flaky(SoftSigner::new(1), 0))).unwrap();
    for i in 0..6 {
        commit_wait(&log, vec![entry(i)]).unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    log.close();
    let s = log.stats();
    assert_eq!(s.checkpoint_failures, 3, "{s:?}");
    assert!(s.checkpoints >= 1, "{s:?}");
    assert!(verify(&path, None, false).unwrap().sealed);
}

#[test]
fn a_hanging_checkpoint_signer_does_not_block_commits() {
    struct Gate(SoftSigner, crossbeam::channel::Receiver<()>);
    impl CheckpointSigner for Gate {
        fn sign(&mut self, d: &[u8; 32]) -> Result<Vec<u8>, String> {
            let _ = self.1.recv(); // blocks until the sender is dropped
            self.0.sign(d)
        }
        fn key(&self) -> CheckpointKey {
            self.0.key()
        }
    }
    let (open_gate, gate) = crossbeam::channel::unbounded();
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(dir.path());
    let path = c.path.clone();
    let log = AuditLog::open(c, Box::new(Gate(SoftSigner::new(1), gate))).unwrap();
    let t = Instant::now();
    fill(&log, 200, 10);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(log.stats().checkpoints, 0);
    drop(open_gate);
    log.close();
    assert!(log.stats().checkpoints >= 1);
    let r = verify(&path, None, false).unwrap();
    assert_eq!((r.entries, r.sealed), (200, true));
}

#[test]
fn time_based_checkpoints_cover_quiet_periods() {
    let dir = tempfile::tempdir().unwrap();
    let c = AuditConfig {
        checkpoint_records: 1_000_000,
        ..cfg(dir.path())
    };
    let path = c.path.clone();
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    commit_wait(&log, vec![entry(1)]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let cps = log.stats().checkpoints;
    assert!(cps >= 1);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        log.stats().checkpoints,
        cps,
        "an idle log does not checkpoint itself"
    );
    let r = verify(&path, None, true).unwrap();
    assert_eq!(r.uncovered, 1, "only the checkpoint record itself: {r:?}");
    log.close();
}

/// Group-commit throughput with a software audit key and four producer threads standing in
/// for the HSM workers. Two runs: `window = None` (producers never wait: the queue stays full,
/// the writer's own ceiling) and `window = Some(w)` (each producer keeps at most `w` batches in
/// flight, so batches stay small and fsync latency shows). Prints records/s and fsyncs/s;
/// asserts nothing about time. Debug builds make serialisation several times slower.
/// `cargo test --lib audit::tests::lifecycle::group_commit_throughput -- --ignored --nocapture`
/// (`AUDIT_BENCH_DIR=DIR` to measure on another file system).
#[test]
#[ignore = "measurement; run by hand"]
fn group_commit_throughput() {
    throughput_run(None);
    throughput_run(Some(2));
}

fn throughput_run(window: Option<u64>) {
    const PRODUCERS: u64 = 4;
    const PER_PRODUCER: u64 = 40_000;
    const BATCH: u64 = 16;
    let dir = match std::env::var_os("AUDIT_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let c = AuditConfig {
        checkpoint_records: 10_000,
        checkpoint_interval: Duration::from_secs(1),
        ..AuditConfig::new(dir.path().join("audit.log"))
    };
    let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
    let acked = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    std::thread::scope(|s| {
        for p in 0..PRODUCERS {
            let log = log.clone();
            let acked = Arc::clone(&acked);
            s.spawn(move || {
                // One token per batch in flight: `send` blocks while `window` are outstanding.
                let (tokens, returned) =
                    crossbeam::channel::bounded::<()>(window.map_or(1, |w| w as usize));
                let mut i = 0;
                while i < PER_PRODUCER {
                    if window.is_some() {
                        tokens.send(()).unwrap();
                    }
                    let entries = (0..BATCH)
                        .map(|k| entry(p * PER_PRODUCER + i + k))
                        .collect();
                    let (acked, returned) = (Arc::clone(&acked), returned.clone());
                    log.commit(
                        entries,
                        Box::new(move |r| {
                            r.unwrap();
                            acked.fetch_add(BATCH, Ordering::Relaxed);
                            let _ = returned.try_recv();
                        }),
                    );
                    i += BATCH;
                }
            });
        }
    });
    while acked.load(Ordering::Relaxed) < PRODUCERS * PER_PRODUCER {
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = t.elapsed().as_secs_f64();
    let s = log.stats();
    log.close();
    println!(
        "group commit, window {window:?} x {BATCH}: {} records in {secs:.2} s = {:.0} records/s, \
         {} fsyncs = {:.0} fsyncs/s, {:.1} records/fsync, {} checkpoints",
        s.records,
        s.records as f64 / secs,
        s.batches,
        s.batches as f64 / secs,
        s.records as f64 / s.batches as f64,
        s.checkpoints
    );
}

/// Commit pacing: a steady trickle of batches (one every 2 ms, the way workers hand over
/// answer groups under load) shares far fewer `sync_data`s when paced, and every record is
/// still durable and verifiable.
#[test]
fn paced_commits_share_fsyncs_under_load() {
    let syncs = |pace: Duration| {
        let dir = tempfile::tempdir().unwrap();
        let c = AuditConfig {
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_records: 1_000_000,
            commit_interval: pace,
            ..cfg(dir.path())
        };
        let path = c.path.clone();
        let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
        let (tx, rx) = crossbeam::channel::unbounded();
        let before = log.stats().batches;
        for i in 0..50u64 {
            let tx = tx.clone();
            log.commit(vec![entry(i)], Box::new(move |r| tx.send(r).unwrap()));
            std::thread::sleep(Duration::from_millis(2));
        }
        for _ in 0..50 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        }
        let s = log.stats();
        log.close();
        assert_eq!(s.records, 50);
        assert_eq!(verify(&path, None, false).unwrap().entries, 50);
        s.batches - before
    };
    let unpaced = syncs(Duration::ZERO);
    let paced = syncs(Duration::from_millis(40));
    // >= 100 ms of trickle at one commit per 40 ms: about 4 syncs.
    assert!(paced <= 8, "paced {paced}, unpaced {unpaced}");
    assert!(paced * 2 <= unpaced, "paced {paced}, unpaced {unpaced}");
}

/// Pacing never holds a lone commit back when nothing else is coming (the daemon's hint says
/// whether workers hold jobs), and does hold a second commit when more is coming.
#[test]
fn pacing_waits_only_when_more_records_are_coming() {
    // Long against one commit's own write and sync, which took ~200 ms once in CI and 543 ms
    // once (2026-12-07) while the other tests wrote and synced in parallel: the test tells "held
    // by pacing" apart from slow.
    let pace = Duration::from_millis(2_000);
    let two_commits = |coming: bool| {
        let dir = tempfile::tempdir().unwrap();
        // No checkpoints: the only commits are the start record's and the test's two.
        let c = AuditConfig {
            commit_interval: pace,
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_records: 1_000_000,
            ..cfg(dir.path())
        };
        let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
        log.set_more_coming(move || coming);
        std::thread::sleep(pace); // the start record's commit is long past
        let t = Instant::now();
        commit_wait(&log, vec![entry(1)]).unwrap();
        let first = t.elapsed();
        let t = Instant::now();
        commit_wait(&log, vec![entry(2)]).unwrap();
        let second = t.elapsed();
        log.close();
        (first, second)
    };
    let (first, second) = two_commits(false);
    assert!(
        first < pace / 2 && second < pace / 2,
        "{first:?} {second:?}"
    );
    let (first, second) = two_commits(true);
    assert!(first < pace / 2, "{first:?}");
    assert!(second >= pace / 2, "{second:?}");
}

/// Renumbers crafted records 0.. and links each to the one before (no checkpoints can cover
/// them: only a log without any verifies after this).
fn rechain(records: &mut [Vec<u8>]) {
    let mut prev = [0u8; 32];
    for (seq, line) in records.iter_mut().enumerate() {
        let text = String::from_utf8(line.clone()).unwrap();
        let rest = &text[text.find(",\"prev\":").unwrap() + ",\"prev\":".len() + 66..];
        *line = format!(
            "{{\"seq\":{seq},\"prev\":\"{}\"{rest}",
            record::to_hex(&prev)
        )
        .into_bytes();
        prev = sha256(line);
    }
}

/// Crafted restart records that each claim u64::MAX dropped bytes are reported (the total
/// saturates) instead of overflowing the verifier's sum (a panic in debug builds).
#[test]
fn crafted_dropped_byte_counts_do_not_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let path = sealed_log(dir.path(), 2);
    let mut data = std::fs::read(&path).unwrap();
    data.extend_from_slice(b"{\"seq\":9");
    std::fs::write(&path, &data).unwrap();
    let log = AuditLog::open(cfg(dir.path()), Box::new(SoftSigner::new(1))).unwrap();
    drop(log);
    let all = lines(&path);
    let restart = all
        .iter()
        .find(|l| json(l)["dropped_bytes"] == 8)
        .unwrap()
        .clone();
    let crafted = String::from_utf8(restart)
        .unwrap()
        .replacen(
            "\"dropped_bytes\":8",
            &format!("\"dropped_bytes\":{}", u64::MAX),
            1,
        )
        .replacen("\"prior\":\"sealed\"", "\"prior\":\"unclean\"", 1)
        .into_bytes();
    let mut records = vec![all[0].clone(), crafted.clone(), crafted];
    rechain(&mut records);
    write_lines(&path, &records);
    let r = verify(&path, None, true).unwrap();
    assert_eq!(r.restarts, 2);
    assert_eq!(r.dropped_bytes, u64::MAX);
}
