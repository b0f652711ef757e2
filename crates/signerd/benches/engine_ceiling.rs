//! Engine vs raw PKCS#11 ceiling, in the same process and run, on the same SoftHSM2 tokens,
//! same thread count and key handling, for ECDSA P-256.
//!
//! `cargo bench --bench engine_ceiling` (env: BENCH_SECS=3, BENCH_ROUNDS=5, BENCH_CONCURRENCY=512, BENCH_SESSION_COPY=0|1,
//! BENCH_DIR=target/bench-dev). Interleaves raw and engine rounds; prints both rates and their ratio, and a JSON line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use signerd::ceiling::{digest_pool, raw_sign_loop};
use signerd::config::Config;
use signerd::dev::init_dev;
use signerd::{Engine, KeyName, KeyType, Scheme, SignRequest};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), String> {
    // `cargo bench` passes --bench; arguments are ignored. Interleaved rounds (raw, engine, raw,
    // engine, ...) so that drift on a shared machine hits both sides alike.
    let secs: f64 = env_or("BENCH_SECS", 3.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 512);
    let dir = std::env::var("BENCH_DIR")
        .unwrap_or_else(|_| format!("{}/../bench-dev", env!("CARGO_TARGET_TMPDIR")));
    let duration = Duration::from_secs_f64(secs);
    // Still the process's only thread: init_dev may set SOFTHSM2_CONF here (hsm::module::
    // set_module_env), and raw_sign_loop and the engine find it set.
    let setup = init_dev(
        std::path::Path::new(&dir),
        2,
        signerd::dev::DevPorts { quic: 0, admin: 0 },
    )
    .map_err(|e| e.to_string())?;
    let mut cfg = Config::load(&setup.config).map_err(|e| e.to_string())?;
    // This measures throughput against the raw loop; admission (shedding when the predicted
    // queue wait is long) is not what is measured here.
    cfg.engine.max_queue_wait = Duration::from_secs(600);
    if let Ok(v) = std::env::var("BENCH_SESSION_COPY") {
        for p in cfg.providers.values_mut() {
            p.session_key_copy = v != "0";
        }
    }
    let engine = Engine::open(&cfg).map_err(|e| e.to_string())?;
    let key = KeyName::new("bench-p256").map_err(|e| e.to_string())?;
    if engine.keys().public_key(&key, None).is_err() {
        engine
            .admin()
            .create_key(&key, KeyType::EcP256, None)
            .map_err(|e| e.to_string())?;
    }
    let threads = engine.workers();
    let session_copy = cfg.providers.values().all(|p| p.session_key_copy);
    println!(
        "engine vs raw PKCS#11, ECDSA P-256, {threads} threads/workers, session_key_copy={session_copy}, \
         {rounds} rounds of {secs}s each, engine concurrency {concurrency}"
    );
    // Warm up both paths (first runs in a fresh process are slower).
    raw_sign_loop(&cfg, &key, threads, Duration::from_secs(1))?;
    engine_loop(&engine, &key, concurrency, Duration::from_secs(1))?;
    let (mut raw_total, mut eng_total, mut ratios) = (0.0, 0.0, Vec::new());
    let (mut raw_cpu, mut eng_cpu, mut raw_n, mut eng_n) = (0.0, 0.0, 0u64, 0u64);
    for round in 1..=rounds {
        let c0 = process_cpu_secs();
        let raw_run = raw_sign_loop(&cfg, &key, threads, duration)?;
        let c1 = process_cpu_secs();
        let (eng, n) = engine_loop(&engine, &key, concurrency, duration)?;
        let c2 = process_cpu_secs();
        let raw = raw_run.rate();
        println!(
            "round {round}: raw {raw:>7.0}/s  engine {eng:>7.0}/s  ratio {:>5.1}%   \
             CPU/signature raw {:.1} us, engine {:.1} us",
            100.0 * eng / raw,
            1e6 * (c1 - c0) / raw_run.signatures as f64,
            1e6 * (c2 - c1) / n as f64
        );
        raw_total += raw;
        eng_total += eng;
        ratios.push(eng / raw);
        raw_cpu += c1 - c0;
        eng_cpu += c2 - c1;
        raw_n += raw_run.signatures;
        eng_n += n;
    }
    let (raw_us, eng_us) = (1e6 * raw_cpu / raw_n as f64, 1e6 * eng_cpu / eng_n as f64);
    println!(
        "CPU per signature: raw {raw_us:.1} us, engine {eng_us:.1} us: engine CPU efficiency \
         {:.1}% (less sensitive to a noisy shared machine than the rates)",
        100.0 * raw_us / eng_us
    );
    ratios.sort_by(|a, b| a.total_cmp(b));
    let median = ratios[ratios.len() / 2];
    let (raw_mean, eng_mean) = (raw_total / rounds as f64, eng_total / rounds as f64);
    println!(
        "mean: raw {raw_mean:.0}/s, engine {eng_mean:.0}/s; engine/raw = {:.1}% (of means), median round {:.1}%",
        100.0 * eng_mean / raw_mean,
        100.0 * median
    );
    println!(
        "{{\"raw\":{raw_mean:.0},\"engine\":{eng_mean:.0},\"ratio\":{:.4},\"median_round_ratio\":{median:.4},\"threads\":{threads},\"rounds\":{rounds},\"secs\":{secs},\"raw_cpu_us_per_sig\":{raw_us:.2},\"engine_cpu_us_per_sig\":{eng_us:.2}}}",
        eng_mean / raw_mean
    );
    engine.shutdown();
    Ok(())
}

/// User + system CPU time of this process so far (from /proc/self/stat; Linux, 100 ticks/s).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the ")" that ends the command name: state is field 3; utime, stime are 14, 15.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// `concurrency` tasks on a one-thread runtime, each signing distinct digests back to back.
fn engine_loop(
    engine: &Engine,
    key: &KeyName,
    concurrency: usize,
    duration: Duration,
) -> Result<(f64, u64), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let pool = Arc::new(digest_pool(Scheme::EcdsaSha256, 4096));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let end = began + duration;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..concurrency {
            let (engine, key, pool) = (engine.clone(), key.clone(), Arc::clone(&pool));
            let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
            tasks.push(tokio::spawn(async move {
                let mut i = t;
                while Instant::now() < end {
                    let req = SignRequest {
                        key: key.clone(),
                        version: None,
                        payload: pool[i % pool.len()].clone(),
                        deadline: Instant::now() + Duration::from_secs(10),
                        identity: Arc::from("bench"),
                    };
                    match engine.sign(req).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i += concurrency;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = began.elapsed();
    let n = ok.load(Ordering::Relaxed);
    let f = failed.load(Ordering::Relaxed);
    if f > 0 {
        return Err(format!("{f} engine requests failed"));
    }
    Ok((n as f64 / elapsed.as_secs_f64(), n))
}
