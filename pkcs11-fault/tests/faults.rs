//! Each fault kind does what it says, through the real module on real SoftHSM2 tokens. All tests
//! of this process share the module and its config file, so they run one at a time (`serial`),
//! each writing the config it needs and leaving an empty one behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use cryptoki::error::RvError;
use support::{rv, serial, setup, slot_of, Hsm};

fn hsm() -> &'static Hsm {
    static HSM: OnceLock<Hsm> = OnceLock::new();
    HSM.get_or_init(|| setup("faults", true))
}

/// Leaves an empty (pass-through) config behind, also when the test fails.
struct Reset(&'static Hsm);

impl Drop for Reset {
    fn drop(&mut self) {
        self.0.write_config("");
        let _ = self.0.control.reload();
    }
}

fn begin() -> (std::sync::MutexGuard<'static, ()>, &'static Hsm, Reset) {
    let g = serial();
    let h = hsm();
    (g, h, Reset(h))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn empty_config_forwards() {
    let (_g, h, _r) = begin();
    h.configure("# nothing\n");
    for t in support::TOKENS {
        let s = h.session(t);
        h.sign(&s, t, b"plain").unwrap();
        assert_eq!(support::find_keys(&s).len(), 1);
    }
    assert!(h.stats().rules.is_empty());
}

#[test]
fn error_with_probability_is_reproducible_when_seeded() {
    let (_g, h, _r) = begin();
    let config = r#"
        seed = 42
        [[rule]]
        name = "flaky"
        kind = "error"
        function = "C_Sign"
        token = "fault-0"
        rv = "CKR_DEVICE_ERROR"
        probability = 0.2
    "#;
    let run = || {
        h.configure(config);
        let s = h.session("fault-0");
        let other = h.session("fault-1");
        let outcomes: Vec<bool> = (0..60)
            .map(
                |i| match h.sign(&s, "fault-0", format!("m{i}").as_bytes()) {
                    Ok(_) => true,
                    Err(e) => {
                        assert_eq!(rv(&e), Some(RvError::DeviceError));
                        false
                    }
                },
            )
            .collect();
        // The other token is not affected by a rule for fault-0.
        for i in 0..10 {
            h.sign(&other, "fault-1", format!("o{i}").as_bytes())
                .unwrap();
        }
        let failed = outcomes.iter().filter(|ok| !**ok).count() as u64;
        assert_eq!(h.stats().injected("flaky"), failed);
        // A fresh rule next time (an empty config in between drops this one's state).
        h.configure("");
        outcomes
    };
    let first = run();
    let second = run();
    let failed = first.iter().filter(|ok| !**ok).count();
    assert!((3..=30).contains(&failed), "{failed} of 60 failed at p=0.2");
    assert_eq!(first, second, "same seed, same calls: same faults");
}

#[test]
fn injected_sign_error_ends_the_operation() {
    // C_Sign failing must end the signing operation in SoftHSM2 too, or the next C_SignInit
    // would get CKR_OPERATION_ACTIVE.
    let (_g, h, _r) = begin();
    h.configure(
        "[[rule]]\nkind = \"error\"\nfunction = \"C_Sign\"\nrv = \"CKR_DEVICE_ERROR\"\ncount = 1\n",
    );
    let s = h.session("fault-0");
    let e = h.sign(&s, "fault-0", b"first").unwrap_err();
    assert_eq!(rv(&e), Some(RvError::DeviceError));
    h.sign(&s, "fault-0", b"second").unwrap();
}

#[test]
fn size_queries_are_not_charged_by_latency_or_capacity() {
    // Every signature is two C_Sign calls (a size query with a NULL buffer, then the real one);
    // a network HSM's client library answers the first without a round trip, so the model
    // charges only the second.
    let (_g, h, _r) = begin();
    h.configure(
        "[[rule]]\nname = \"slow\"\nkind = \"latency\"\nfunction = \"C_Sign\"\n\
         token = \"fault-0\"\nfixed_ms = 80\n\n\
         [[rule]]\nname = \"cap\"\nkind = \"capacity\"\nfunction = \"C_Sign\"\n\
         token = \"fault-1\"\nmax_concurrent = 1\ncall_ms = 80\n",
    );
    for token in ["fault-0", "fault-1"] {
        let s = h.session(token);
        for i in 0..3 {
            let t = Instant::now();
            h.sign(&s, token, format!("m{i}").as_bytes()).unwrap();
            let d = t.elapsed();
            assert!(d >= Duration::from_millis(80), "{token}: {:.1} ms", ms(d));
            assert!(
                d < Duration::from_millis(155),
                "{token}: one charge per signature, not two: {:.1} ms",
                ms(d)
            );
        }
    }
    assert_eq!(h.stats().injected("slow"), 3, "one delay per signature");
}

#[test]
fn injected_update_error_ends_the_multipart_operation() {
    // Per PKCS#11 an error from C_DigestUpdate ends the digest; the module ends it in SoftHSM2
    // too (through C_DigestFinal), so a new C_DigestInit works.
    let (_g, h, _r) = begin();
    h.configure(
        "[[rule]]\nkind = \"error\"\nfunction = \"C_DigestUpdate\"\nrv = \"CKR_DEVICE_ERROR\"\ncount = 1\n",
    );
    let s = h.session("fault-1");
    let sha = cryptoki::mechanism::Mechanism::Sha256;
    s.digest_init(&sha).unwrap();
    let e = s.digest_update(b"abc").unwrap_err();
    assert_eq!(rv(&e), Some(RvError::DeviceError));
    s.digest_init(&sha).unwrap();
    s.digest_update(b"abc").unwrap();
    use sha2::Digest;
    assert_eq!(
        s.digest_final().unwrap(),
        sha2::Sha256::digest(b"abc").to_vec()
    );
}

#[test]
fn error_after_n_calls() {
    let (_g, h, _r) = begin();
    h.configure(
        r#"
        [[rule]]
        kind = "error"
        function = "C_SignInit"
        token = "fault-0"
        rv = 0x30            # CKR_DEVICE_ERROR, by number
        after_calls = 3
        "#,
    );
    let s = h.session("fault-0");
    let got: Vec<Option<RvError>> = (0..6)
        .map(|_| h.sign(&s, "fault-0", b"x").err().and_then(|e| rv(&e)))
        .collect();
    let e = Some(RvError::DeviceError);
    assert_eq!(got, [None, None, None, e, e, e]);
}

#[test]
fn error_for_the_next_n_calls_only() {
    let (_g, h, _r) = begin();
    h.configure(
        r#"
        [[rule]]
        name = "blip"
        kind = "error"
        function = ["C_SignInit"]
        rv = "SESSION_HANDLE_INVALID"
        count = 2
        "#,
    );
    let s = h.session("fault-1");
    let got: Vec<Option<RvError>> = (0..5)
        .map(|_| h.sign(&s, "fault-1", b"x").err().and_then(|e| rv(&e)))
        .collect();
    let e = Some(RvError::SessionHandleInvalid);
    assert_eq!(got, [e, e, None, None, None]);
    assert_eq!(h.stats().injected("blip"), 2);
}

#[test]
fn error_in_a_time_window() {
    let (_g, h, _r) = begin();
    let s = h.session("fault-0");
    h.configure(
        r#"
        [[rule]]
        kind = "error"
        function = "C_GenerateRandom"
        token = "fault-0"
        rv = "CKR_DEVICE_ERROR"
        window_s = [0.3, 0.6]
        "#,
    );
    // The rule was loaded inside configure(): t0 is at most a few ms after its load time.
    let t0 = Instant::now();
    let at = |t: f64| {
        let when = t0 + Duration::from_secs_f64(t);
        if let Some(d) = when.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        s.generate_random_vec(8).err().and_then(|e| rv(&e))
    };
    assert_eq!(at(0.1), None);
    assert_eq!(at(0.45), Some(RvError::DeviceError));
    assert_eq!(at(0.5), Some(RvError::DeviceError));
    assert_eq!(at(0.8), None);
}

#[test]
fn latency_fixed_plus_jitter() {
    let (_g, h, _r) = begin();
    h.configure(
        r#"
        seed = 7
        [[rule]]
        name = "slow"
        kind = "latency"
        function = "C_GenerateRandom"
        token = "fault-0"
        fixed_ms = 40
        jitter_ms = 20
        "#,
    );
    let slow = h.session("fault-0");
    let fast = h.session("fault-1");
    for _ in 0..5 {
        let t = Instant::now();
        slow.generate_random_vec(8).unwrap();
        let d = t.elapsed();
        assert!(d >= Duration::from_millis(40), "{:.1} ms", ms(d));
        // fixed + jitter + slack for a loaded debug build
        assert!(d < Duration::from_millis(40 + 20 + 60), "{:.1} ms", ms(d));
        let t = Instant::now();
        fast.generate_random_vec(8).unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(30),
            "other token delayed"
        );
    }
    assert_eq!(h.stats().injected("slow"), 5);
}

#[test]
fn hang_returns_promptly_when_the_rule_is_lifted() {
    let (_g, h, _r) = begin();
    h.configure(
        r#"
        [[rule]]
        kind = "hang"
        function = "C_GenerateRandom"
        token = "fault-1"
        "#,
    );
    let s = h.session("fault-1");
    let (tx, rx) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let r = s.generate_random_vec(8);
        tx.send((Instant::now(), r.is_ok())).unwrap();
    });
    // Still blocked after a while.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    // Lift it by editing the file (no explicit reload: the module notices by itself).
    let lifted = Instant::now();
    h.write_config("");
    let (done, ok) = rx.recv_timeout(Duration::from_secs(2)).expect("hang ended");
    worker.join().unwrap();
    assert!(ok, "forwarded after the hang was lifted");
    let after = done.duration_since(lifted);
    assert!(after < Duration::from_millis(250), "{:.1} ms", ms(after));
}

#[test]
fn hang_with_a_limit_then_returns_a_code() {
    let (_g, h, _r) = begin();
    h.configure(
        r#"
        [[rule]]
        kind = "hang"
        function = "C_SignInit"
        token = "fault-0"
        hang_ms = 150
        rv = "CKR_DEVICE_ERROR"
        count = 1
        "#,
    );
    let s = h.session("fault-0");
    let t = Instant::now();
    let e = h.sign(&s, "fault-0", b"x").unwrap_err();
    let d = t.elapsed();
    assert_eq!(rv(&e), Some(RvError::DeviceError));
    assert!(d >= Duration::from_millis(150), "{:.1} ms", ms(d));
    assert!(d < Duration::from_millis(400), "{:.1} ms", ms(d));
    h.sign(&s, "fault-0", b"y").unwrap();
}

#[test]
fn token_info_rules_rewrite_one_tokens_answer() {
    let (_g, h, _r) = begin();
    let t0 = h.token("fault-0");
    let t1 = h.token("fault-1");
    let before = h.ctx.get_token_info(t0.slot).unwrap();
    assert!(!before.user_pin_locked());
    h.configure(
        "[[rule]]\nname = \"odd\"\nkind = \"token_info\"\ntoken = \"fault-0\"\n\
         label_padding = \"nul\"\nserial = \"\"\nset_flags = [\"CKF_USER_PIN_LOCKED\"]\n\
         garbage_numbers = true\n\
         [[rule]]\nname = \"clock\"\nkind = \"token_info\"\ntoken = \"fault-1\"\n\
         utc_time = \"kryoptic\"\n",
    );
    let odd = h.ctx.get_token_info(t0.slot).unwrap();
    assert!(odd.label().starts_with("fault-0\0"), "{:?}", odd.label());
    assert_eq!(odd.serial_number().trim_end(), "");
    assert!(odd.user_pin_locked() && odd.token_initialized());
    assert_eq!(odd.hardware_version().minor(), 0xff);
    // A utcTime that is not digits, with CKF_CLOCK_ON_TOKEN: cryptoki 0.12 cannot parse it.
    assert!(h.ctx.get_token_info(t1.slot).is_err());
    // The rules still know the token by its real label (learned before the rewrite).
    assert!(h.stats().injected("odd") >= 1 && h.stats().injected("clock") >= 1);
    h.session("fault-0");
    h.configure("");
    assert_eq!(
        h.ctx.get_token_info(t0.slot).unwrap().label(),
        before.label()
    );
    assert!(h.ctx.get_token_info(t1.slot).is_ok());
}

#[test]
fn token_removal_hides_the_slot_and_fails_sessions_until_lifted() {
    let (_g, h, _r) = begin();
    let gone = h.token("fault-1");
    let s_gone = h.session("fault-1");
    let s_ok = h.session("fault-0");
    h.sign(&s_gone, "fault-1", b"before").unwrap();

    h.configure("[[rule]]\nname = \"pulled\"\nkind = \"remove\"\ntoken = \"fault-1\"\n");
    assert_eq!(slot_of(&h.ctx, "fault-1"), None);
    assert!(!h.ctx.get_slots_with_token().unwrap().contains(&gone.slot));
    // The slot itself is still there, without a token.
    assert!(h.ctx.get_all_slots().unwrap().contains(&gone.slot));
    assert!(!h.ctx.get_slot_info(gone.slot).unwrap().token_present());
    let e = h.ctx.get_token_info(gone.slot).unwrap_err();
    assert_eq!(rv(&e), Some(RvError::TokenNotPresent));
    let e = h.sign(&s_gone, "fault-1", b"during").unwrap_err();
    assert_eq!(rv(&e), Some(RvError::DeviceRemoved));
    let e = h.ctx.open_rw_session(gone.slot).unwrap_err();
    assert_eq!(rv(&e), Some(RvError::TokenNotPresent));
    // The other token is untouched.
    assert!(slot_of(&h.ctx, "fault-0").is_some());
    h.sign(&s_ok, "fault-0", b"during").unwrap();
    assert!(h.stats().injected("pulled") >= 4);

    // Back: the slot is listed again and the old session works.
    h.configure("");
    assert_eq!(slot_of(&h.ctx, "fault-1"), Some(gone.slot));
    h.sign(&s_gone, "fault-1", b"after").unwrap();
    let fresh = h.session("fault-1");
    h.sign(&fresh, "fault-1", b"fresh").unwrap();
}

#[test]
fn token_removal_for_a_window_comes_back_by_itself() {
    let (_g, h, _r) = begin();
    let s = h.session("fault-0");
    h.configure(
        "[[rule]]\nkind = \"remove\"\ntoken = \"fault-0\"\nrv = \"CKR_DEVICE_ERROR\"\nwindow_s = [0.0, 0.3]\n",
    );
    let t0 = Instant::now();
    let e = h.sign(&s, "fault-0", b"x").unwrap_err();
    assert_eq!(rv(&e), Some(RvError::DeviceError));
    assert_eq!(slot_of(&h.ctx, "fault-0"), None);
    std::thread::sleep((t0 + Duration::from_millis(400)).saturating_duration_since(Instant::now()));
    assert!(slot_of(&h.ctx, "fault-0").is_some());
    h.sign(&s, "fault-0", b"y").unwrap();
}

#[test]
fn capacity_limits_concurrency_per_token() {
    let (_g, h, _r) = begin();
    h.configure(
        r#"
        [[rule]]
        name = "hsm"
        kind = "capacity"
        function = "C_GenerateRandom"
        token = "fault-0"
        max_concurrent = 2
        call_ms = 60
        "#,
    );
    let sessions: Vec<_> = (0..8).map(|_| h.session("fault-0")).collect();
    let barrier = Arc::new(Barrier::new(9));
    let threads: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let b = Arc::clone(&barrier);
            std::thread::spawn(move || {
                b.wait();
                let t = Instant::now();
                s.generate_random_vec(8).unwrap();
                t.elapsed()
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let each: Vec<Duration> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let elapsed = start.elapsed();
    // 8 calls × 60 ms / 2 places: at least 240 ms; well under 8 × 60 ms (serial).
    assert!(
        elapsed >= Duration::from_millis(235),
        "{:.1} ms",
        ms(elapsed)
    );
    assert!(
        elapsed < Duration::from_millis(470),
        "{:.1} ms",
        ms(elapsed)
    );
    assert!(
        each.iter().all(|d| *d >= Duration::from_millis(60)),
        "{each:?}"
    );
    let st = h.stats();
    let rule = st.rule("hsm").unwrap();
    assert_eq!(rule.max_inflight, 2, "{rule:?}");
    assert_eq!(rule.busy, 0);
    assert!(rule.max_waiting >= 5, "{rule:?}");
}

#[test]
fn capacity_answers_busy_when_too_many_wait() {
    let (_g, h, _r) = begin();
    h.configure(
        r#"
        [[rule]]
        name = "luna"
        kind = "capacity"
        function = "C_GenerateRandom"
        token = "fault-1"
        max_concurrent = 1
        call_ms = 200
        max_waiting = 2
        rv = "CKR_FUNCTION_FAILED"
        "#,
    );
    let sessions: Vec<_> = (0..6).map(|_| h.session("fault-1")).collect();
    let barrier = Arc::new(Barrier::new(6));
    let threads: Vec<_> = sessions
        .into_iter()
        .map(|s| {
            let b = Arc::clone(&barrier);
            std::thread::spawn(move || {
                b.wait();
                s.generate_random_vec(8).err().and_then(|e| rv(&e))
            })
        })
        .collect();
    let got: Vec<Option<RvError>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let busy = got
        .iter()
        .filter(|r| **r == Some(RvError::FunctionFailed))
        .count();
    let ok = got.iter().filter(|r| r.is_none()).count();
    // One inside, two waiting, three turned away.
    assert_eq!((ok, busy), (3, 3), "{got:?}");
    assert_eq!(h.stats().rule("luna").unwrap().busy, 3);
}

#[test]
fn reload_mid_run_switches_a_fault_on_and_off() {
    let (_g, h, _r) = begin();
    let s = h.session("fault-0");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let signer = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut i = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let ok = hsm().sign(&s, "fault-0", &i.to_le_bytes()).is_ok();
            if seen.last() != Some(&ok) {
                seen.push(ok);
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(200));
    let g = h.stats().generation;
    h.write_config(
        "[[rule]]\nkind = \"error\"\nfunction = \"C_SignInit\"\nrv = \"CKR_DEVICE_ERROR\"\n",
    );
    // Picked up by the module's own watcher, no explicit reload.
    let took = h.wait_generation_after(g, Duration::from_secs(1));
    assert!(took < Duration::from_millis(200), "{took:?}");
    std::thread::sleep(Duration::from_millis(200));
    let g = h.stats().generation;
    h.write_config("");
    h.wait_generation_after(g, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = signer.join().unwrap();
    assert_eq!(seen, [true, false, true], "ok → failing → ok");
}

#[test]
fn malformed_config_keeps_the_previous_rules() {
    let (_g, h, _r) = begin();
    let s = h.session("fault-0");
    let g = h.configure(
        "[[rule]]\nkind = \"error\"\nfunction = \"C_GenerateRandom\"\nrv = \"CKR_DEVICE_ERROR\"\n",
    );
    let fails = || rv(&s.generate_random_vec(4).unwrap_err());
    assert_eq!(fails(), Some(RvError::DeviceError));
    let errors = h.stats().config_errors;
    for bad in [
        "this is [ not toml",
        "[[rule]]\nkind = \"error\"\nrv = \"CKR_NO_SUCH_CODE\"\n",
        "[[rule]]\nkind = \"latency\"\nfunction = \"C_Sing\"\n",
        "[[rule]]\nkind = \"error\"\nrv = 5\nprobability = 2.0\n",
    ] {
        h.write_config(bad);
        assert_eq!(
            h.control.reload().unwrap(),
            g,
            "bad config replaced the rules"
        );
        assert_eq!(fails(), Some(RvError::DeviceError));
    }
    assert_eq!(h.stats().config_errors, errors + 4);
    h.configure("");
    s.generate_random_vec(4).unwrap();
}

#[test]
fn stats_file_is_written() {
    let (_g, h, _r) = begin();
    let path = h.dir.join("stats.json");
    let _ = std::fs::remove_file(&path);
    h.configure(&format!(
        "stats = {:?}\n[[rule]]\nname = \"once\"\nkind = \"error\"\nfunction = \"C_GenerateRandom\"\nrv = \"CKR_DEVICE_ERROR\"\ncount = 1\n",
        path.display().to_string()
    ));
    let s = h.session("fault-1");
    assert!(s.generate_random_vec(4).is_err());
    s.generate_random_vec(4).unwrap();
    // Written by the module's watcher within ~100 ms of a change.
    let start = Instant::now();
    let stats = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Ok(st) = serde_json::from_str::<certnode_pkcs11_fault::Stats>(&text) {
            if st.injected("once") == 1 && st.calls("C_GenerateRandom") >= 2 {
                break st;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "stats file not written: {text}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let rule = stats.rule("once").unwrap();
    assert_eq!(rule.kind, "error");
    assert_eq!(rule.functions, ["C_GenerateRandom"]);
    assert_eq!(rule.matched, 2);
}
