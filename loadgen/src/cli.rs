//! Command line: `run`, `find-max`, `ceiling`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::report::{self, RunResult};
use crate::run::{self, Kept, Load, Phase, Target};
use signer_client::{Client, ClientOptions, ClientOptionsBuilder, SignatureForm};
use signer_proto::Scheme;

/// Load generator for signerd.
///
/// Open loop (--rate): requests are sent on a fixed schedule whether or not earlier ones were
/// answered, and each latency is measured from the request's scheduled send time, so a stalled
/// server shows up as latency instead of hiding (coordinated omission corrected). Closed loop
/// (--concurrency): a fixed number of requests in flight; good for throughput, not for latency.
///
/// Environment: LOADGEN_THREADS (async runtime threads, default 1).
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Offer a constant load (or a --step schedule) and report latency percentiles and errors.
    ///
    /// Example: loadgen run --client dev/client-app.toml --key quickstart-p256 --rate 10000
    /// --duration 60s --verify --json out.json
    Run(RunArgs),
    /// Step the offered rate up until p95 breaks the SLO, achieved falls below 99% of offered,
    /// or errors pass 0.1%; report the highest passing rate.
    FindMax(FindMaxArgs),
    /// The raw PKCS#11 sign loop on the daemon's own tokens (no daemon needed): the ceiling the
    /// daemon is compared against.
    Ceiling(CeilingArgs),
    /// A handshake flood: new QUIC connections at a fixed rate (with the client certificate of
    /// --client), to measure what it does to other clients (run `loadgen run` beside it).
    Flood(FloodArgs),
}

#[derive(Debug, Args)]
struct FloodArgs {
    /// Client config (endpoint, CA, client certificate).
    #[arg(long, value_name = "FILE")]
    client: PathBuf,
    /// New connections per second.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// How long to flood.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// How long each established connection is held open.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    hold: Duration,
    /// Client UDP sockets the attempts are spread over.
    #[arg(long, default_value_t = 8)]
    sockets: usize,
}

#[derive(Debug, Args)]
struct Common {
    /// Client config (endpoints, CA, client certificate): e.g. dev/client-app.toml.
    #[arg(long, value_name = "FILE")]
    client: PathBuf,
    /// Key to sign with.
    #[arg(long)]
    key: String,
    /// Signature scheme (default: the key type's default, e.g. ecdsa-sha256 for ec-p256).
    #[arg(long)]
    scheme: Option<String>,
    /// Message size in bytes for Ed25519 (digest schemes use the hash length).
    #[arg(long, default_value_t = 64)]
    message_size: usize,
    /// QUIC connections (each its own client); requests are spread over them.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Coalesce concurrent single-payload sign requests into SignBatch requests of up to N
    /// payloads, as the client library does with `coalesce = N` in its file (each payload still
    /// gets its own signature and latency sample). Default: the client file's value, else the
    /// library's default (16); `--coalesce 1` sends every call as a request of its own.
    #[arg(long, value_name = "N")]
    coalesce: Option<usize>,
    /// Per-request timeout (sent as the request deadline). Requests are never retried.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// Excluded from results, before each measured phase.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Keep every digest and signature and verify them all after the measured window
    /// (in parallel, with a software verifier; not during the measurement).
    #[arg(long)]
    verify: bool,
    /// Write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write an HdrHistogram interval log (per-second histograms).
    #[arg(long, value_name = "FILE")]
    hdr_log: Option<PathBuf>,
    /// Write SVG plots (latency percentiles over time, percentile distribution) into DIR.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Most requests in flight (open loop); beyond it requests count as client_overflow.
    #[arg(long, default_value_t = 100_000)]
    max_inflight: usize,
    /// Accept Merkle batch signatures (one HSM signature per tree, docs/BATCH.md); the key must
    /// have `[batch]` enabled in the daemon's config. The report gives the mean tree size and
    /// HSM calls per second; --verify checks every inclusion proof and root signature.
    #[arg(long)]
    batch: bool,
    /// Payloads per request: 1 sends Sign requests; more send SignBatch requests of this many
    /// payloads (each gets its own signature; rates stay in requests/s, and the report adds
    /// signatures/s).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    payloads: u16,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    common: Common,
    /// Offered rate, requests/s (open loop). Default when neither --rate nor --concurrency: 1000.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Requests kept in flight (closed loop).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Measured duration (500ms, 20s, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// A schedule of open-loop rates, each held for a time: "5000:10s,10000:10s".
    #[arg(long, conflicts_with_all = ["rate", "concurrency"])]
    step: Option<String>,
}

#[derive(Debug, Args)]
struct FindMaxArgs {
    #[command(flatten)]
    common: Common,
    /// The p95 latency objective.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    slo_p95: Duration,
    /// First offered rate.
    #[arg(long, default_value_t = 2000.0)]
    start: f64,
    /// Each step multiplies the rate by this factor.
    #[arg(long, default_value_t = 1.2)]
    factor: f64,
    /// Highest rate to try.
    #[arg(long, default_value_t = 200_000.0)]
    max_rate: f64,
    /// Measured duration of each step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    step_duration: Duration,
    /// After the first failing step, this many bisection steps between the highest passing
    /// rate and the failing one (each halves the gap; 0 reports the last passing step).
    #[arg(long, default_value_t = 2)]
    refine: u32,
}

#[derive(Debug, Args)]
struct CeilingArgs {
    /// The daemon's config (its providers and partitions are used directly).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Key to sign with (its signing version).
    #[arg(long)]
    key: String,
    /// Signing threads, each with its own session (use the daemon's worker count).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// How long to sign.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Write {"achieved_rate": ...} as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Parses `500ms`, `20s`, `2m`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit: 500ms, 20s, 2m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    if !(0.0..=86_400.0).contains(&secs) || !secs.is_finite() {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ceiling(a) => ceiling(a),
        Command::Run(a) => with_runtime(|| run_cmd(a)),
        Command::FindMax(a) => with_runtime(|| find_max(a)),
        Command::Flood(a) => with_runtime(|| flood_cmd(a)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(1)
        }
    }
}

fn with_runtime<F, Fut>(f: F) -> Result<ExitCode, String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<ExitCode, String>>,
{
    // One runtime thread by default: on small machines shared with the daemon, a second thread
    // mostly takes CPU from the system under test (measured: tuning/RESULTS.md).
    let threads: usize = std::env::var("LOADGEN_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // One thread means a current-thread runtime: request tasks, QUIC drivers and the result
    // collector then share one thread, with no cross-thread wake-ups per request.
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(f())
}

fn ceiling(a: CeilingArgs) -> Result<ExitCode, String> {
    let cfg = signerd::config::Config::load(&a.config).map_err(|e| e.to_string())?;
    // The modules read their env at C_Initialize; it is set while this is the process's only
    // thread (no runtime is started for `ceiling`; main only parsed the command line).
    signerd::hsm::module::set_module_env(&cfg.module_env())?;
    let key = signerd::KeyName::new(&a.key).map_err(|e| e.to_string())?;
    eprintln!(
        "raw PKCS#11 sign loop: {} threads, {:?}",
        a.threads, a.duration
    );
    let r = signerd::ceiling::raw_sign_loop(&cfg, &key, a.threads, a.duration)?;
    println!(
        "ceiling: {:.0} signatures/s ({} signatures in {:.2} s, {} threads on {})",
        r.rate(),
        r.signatures,
        r.elapsed.as_secs_f64(),
        r.threads,
        r.partitions.join(", ")
    );
    if let Some(path) = a.json {
        let v = serde_json::json!({
            "achieved_rate": r.rate(),
            "signatures": r.signatures,
            "duration_s": r.elapsed.as_secs_f64(),
            "threads": r.threads,
            "partitions": r.partitions,
            "key": a.key,
        });
        report::write_json(&v, &path).map_err(|e| e.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn target(c: &Common) -> Result<Target, String> {
    let mut builder = ClientOptionsBuilder::from_file(&c.client)
        .map_err(|e| e.to_string())?
        .max_retries(0)
        .timeout(c.timeout);
    if let Some(n) = c.coalesce {
        if !(1..=signer_proto::protocol::MAX_BATCH).contains(&n) {
            return Err(format!(
                "--coalesce must be 1 to {}",
                signer_proto::protocol::MAX_BATCH
            ));
        }
        builder = builder.coalesce(n);
    }
    let opts = builder
        .build()
        .map_err(|e| format!("{}: {e}", c.client.display()))?;
    let coalesce = opts.coalesce();
    let mut clients = Vec::new();
    for _ in 0..c.connections.max(1) {
        clients.push(
            Client::connect(opts.clone())
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let pk = clients[0]
        .public_key(&c.key, None)
        .await
        .map_err(|e| format!("key {}: {e}", c.key))?;
    let scheme: Scheme = match &c.scheme {
        Some(s) => s.parse().map_err(|e| format!("{e}"))?,
        None => pk.key_type.default_scheme(),
    };
    Ok(Target {
        clients,
        key: c.key.clone(),
        scheme,
        payload_len: scheme.digest_len().unwrap_or(c.message_size),
        keep_signatures: c.verify,
        coalesce,
        batch: c.batch,
        payloads: usize::from(c.payloads),
        max_inflight: c.max_inflight,
    })
}

async fn phase(target: &Target, p: &Phase, label: &str) -> (RunResult, Vec<Kept>) {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    let label = label.to_owned();
    let (r, kept) = run::run_phase(target, p, |elapsed, rate, p95, errors| {
        bar.set_message(report::progress_line(elapsed, rate, p95, errors, &label));
        bar.tick();
    })
    .await;
    bar.finish_and_clear();
    (r, kept)
}

async fn run_cmd(a: RunArgs) -> Result<ExitCode, String> {
    let c = &a.common;
    let target = target(c).await?;
    let phases: Vec<Phase> = match &a.step {
        Some(spec) => parse_steps(spec)?
            .into_iter()
            .map(|(rate, duration)| Phase {
                load: Load::Rate(rate),
                duration,
                warmup: c.warmup,
            })
            .collect(),
        None => vec![Phase {
            load: match (a.rate, a.concurrency) {
                (_, Some(cc)) => Load::Concurrency(cc),
                (Some(r), None) => Load::Rate(r),
                (None, None) => Load::Rate(1000.0),
            },
            duration: a.duration,
            warmup: c.warmup,
        }],
    };
    let mut results = Vec::new();
    for (i, p) in phases.iter().enumerate() {
        let label = format!("phase {}/{}", i + 1, phases.len());
        let (mut r, kept) = phase(&target, p, &label).await;
        if c.verify {
            verify_all(&target, &mut r, kept).await?;
        }
        println!("{}", report::summary_table(&r));
        results.push(r);
    }
    outputs(c, &results, None, None)?;
    let failed = results.iter().any(|r| r.verify_failures > 0);
    Ok(if failed {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

async fn find_max(a: FindMaxArgs) -> Result<ExitCode, String> {
    let c = &a.common;
    let target = target(c).await?;
    let slo_ms = a.slo_p95.as_secs_f64() * 1000.0;
    let mut results: Vec<RunResult> = Vec::new();
    // Runs one step at `rate`, prints its line, keeps its result; true when it passed.
    let mut step = async |rate: f64| -> Result<bool, String> {
        let p = Phase {
            load: Load::Rate(rate),
            duration: a.step_duration,
            warmup: c.warmup,
        };
        let (mut r, kept) = phase(&target, &p, &format!("find-max {rate:.0}/s")).await;
        if c.verify {
            verify_all(&target, &mut r, kept).await?;
        }
        let p95 = r.percentile_ms(95.0);
        let pass = p95 <= slo_ms
            && r.achieved_rate() >= 0.99 * rate
            && r.error_ratio() <= 0.001
            && r.verify_failures == 0;
        println!(
            "offered {rate:>8.0}/s  achieved {:>8.0}/s  p95 {p95:>8.2} ms  p99 {:>8.2} ms  errors {:.3}%  {}",
            r.achieved_rate(),
            r.percentile_ms(99.0),
            100.0 * r.error_ratio(),
            if pass { "PASS" } else { "FAIL" }
        );
        results.push(r);
        Ok(pass)
    };
    let mut search = RateSearch::new(a.start, a.factor, a.max_rate, a.refine);
    while let Some(rate) = search.next_rate() {
        let pass = step(rate).await?;
        search.record(rate, pass);
    }
    let best = search.best();
    // Steps in rate order (bisection steps were run after the failing one).
    results.sort_by(|x, y| {
        x.offered_rate
            .partial_cmp(&y.offered_rate)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    match best {
        Some(b) => println!("highest passing rate: {b:.0}/s (SLO p95 <= {slo_ms:.0} ms)"),
        None => println!("no rate passed (SLO p95 <= {slo_ms:.0} ms); try a lower --start"),
    }
    outputs(c, &results, Some(best), Some(slo_ms))?;
    Ok(ExitCode::SUCCESS)
}

/// The rates `find-max` tries: from `start`, up by `factor` until a step fails (or the next
/// rate would pass `max`); then `refine` bisection steps between the highest passing rate and
/// the lowest failing one, so that the answer is not up to a whole factor below the real
/// maximum. Sans-IO: the caller runs each step and reports whether it passed.
#[derive(Debug)]
struct RateSearch {
    next: Option<f64>,
    factor: f64,
    max: f64,
    refine_left: u32,
    best: Option<f64>,
    failed: Option<f64>,
}

impl RateSearch {
    fn new(start: f64, factor: f64, max: f64, refine: u32) -> RateSearch {
        RateSearch {
            next: (start > 0.0 && start <= max).then_some(start),
            factor: factor.max(1.01),
            max,
            refine_left: refine,
            best: None,
            failed: None,
        }
    }

    /// The next rate to try, or `None` when the search is over.
    fn next_rate(&self) -> Option<f64> {
        self.next
    }

    /// Records the outcome of the step at `rate` (the last [`RateSearch::next_rate`]).
    fn record(&mut self, rate: f64, pass: bool) {
        if pass {
            self.best = Some(self.best.map_or(rate, |b| b.max(rate)));
        } else {
            self.failed = Some(self.failed.map_or(rate, |f| f.min(rate)));
        }
        self.next = if self.failed.is_none() {
            let up = rate * self.factor;
            (up <= self.max).then_some(up)
        } else {
            self.bisect()
        };
    }

    fn bisect(&mut self) -> Option<f64> {
        let (lo, hi) = (self.best?, self.failed?);
        let mid = (lo + hi) / 2.0;
        if self.refine_left == 0 || mid - lo < 0.01 * lo {
            return None;
        }
        self.refine_left -= 1;
        Some(mid)
    }

    /// The highest rate that passed.
    fn best(&self) -> Option<f64> {
        self.best
    }
}

fn outputs(
    c: &Common,
    results: &[RunResult],
    best: Option<Option<f64>>,
    slo: Option<f64>,
) -> Result<(), String> {
    let single = results.len() == 1 && best.is_none();
    if let Some(path) = &c.json {
        let v = if single {
            report::to_json(&results[0])
        } else {
            report::steps_json(results, best.flatten(), slo)
        };
        report::write_json(&v, path).map_err(|e| e.to_string())?;
    }
    if let Some(path) = &c.hdr_log {
        if let Some(r) = results.last() {
            report::write_hdr_log(r, path).map_err(|e| e.to_string())?;
        }
    }
    if let Some(dir) = &c.plots {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (i, r) in results.iter().enumerate() {
            crate::plot::write_plots(r, dir, &format!("phase{}", i + 1))
                .map_err(|e| e.to_string())?;
        }
        if results.len() > 1 {
            crate::plot::write_steps_plot(results, &dir.join("steps.svg"), slo)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn parse_steps(spec: &str) -> Result<Vec<(f64, Duration)>, String> {
    spec.split(',')
        .map(|part| {
            let (rate, dur) = part
                .split_once(':')
                .ok_or_else(|| format!("step {part:?}: expected RATE:DURATION, e.g. 5000:10s"))?;
            let rate: f64 = rate
                .trim()
                .parse()
                .map_err(|_| format!("step {part:?}: bad rate"))?;
            if rate <= 0.0 {
                return Err(format!("step {part:?}: rate must be > 0"));
            }
            Ok((rate, parse_duration(dur)?))
        })
        .collect()
}

async fn flood_cmd(a: FloodArgs) -> Result<ExitCode, String> {
    let opts = ClientOptions::from_file(&a.client).map_err(|e| e.to_string())?;
    let r = crate::flood::flood(&opts, a.rate, a.duration, a.hold, a.sockets).await?;
    println!(
        "flood: {} connection attempts in {:.1} s ({:.0}/s): {} established, {} refused or timed out",
        r.attempts,
        a.duration.as_secs_f64(),
        r.attempts as f64 / a.duration.as_secs_f64().max(1e-9),
        r.established,
        r.failed
    );
    Ok(ExitCode::SUCCESS)
}

/// Verifies every kept signature against the key's public key(s), in parallel on the rayon
/// pool, after the measured window.
async fn verify_all(target: &Target, r: &mut RunResult, kept: Vec<Kept>) -> Result<(), String> {
    let mut versions: Vec<u32> = kept.iter().map(|k| k.version).collect();
    versions.sort_unstable();
    versions.dedup();
    let mut keys = std::collections::HashMap::new();
    for v in versions {
        let pk = target.clients[0]
            .public_key(&target.key, Some(v))
            .await
            .map_err(|e| format!("public key v{v}: {e}"))?;
        keys.insert(v, pk.spki_der.to_vec());
    }
    let scheme = target.scheme;
    let key = signer_proto::KeyName::new(&target.key).map_err(|e| e.to_string())?;
    let (verified, failures) = tokio::task::spawn_blocking(move || {
        use rayon::prelude::*;
        let failures = kept
            .par_iter()
            .filter(|k| {
                keys.get(&k.version).is_none_or(|spki| match &k.signature {
                    // Plain: the independent verifier (shares no code with the signer).
                    SignatureForm::Plain(sig) => {
                        crate::verify::verify(spki, scheme, &k.payload, sig).is_err()
                    }
                    // Batch: the inclusion proof and the root signature (docs/BATCH.md); the
                    // Python verifier in tools/ checks the same construction independently.
                    SignatureForm::Batch(b) => signer_proto::merkle::verify_batch(
                        spki, scheme, &key, k.version, &k.payload, b,
                    )
                    .is_err(),
                })
            })
            .count();
        (kept.len() as u64, failures as u64)
    })
    .await
    .map_err(|e| e.to_string())?;
    r.verified = verified;
    r.verify_failures = failures;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a search against a system whose capacity is `cap` (a step passes at or below it).
    fn search(start: f64, factor: f64, max: f64, refine: u32, cap: f64) -> (Vec<f64>, Option<f64>) {
        let mut s = RateSearch::new(start, factor, max, refine);
        let mut tried = Vec::new();
        while let Some(rate) = s.next_rate() {
            tried.push(rate);
            s.record(rate, rate <= cap);
            assert!(tried.len() < 100, "runaway search: {tried:?}");
        }
        (tried, s.best())
    }

    #[test]
    fn find_max_steps_up_then_bisects_between_pass_and_failure() {
        let (tried, best) = search(1000.0, 2.0, 1e6, 2, 5000.0);
        // 1000, 2000, 4000 pass; 8000 fails; 6000 fails; 5000 passes.
        assert_eq!(tried, vec![1000.0, 2000.0, 4000.0, 8000.0, 6000.0, 5000.0]);
        assert_eq!(best, Some(5000.0));
        let (tried, best) = search(1000.0, 2.0, 1e6, 0, 5000.0);
        assert_eq!(tried, vec![1000.0, 2000.0, 4000.0, 8000.0]);
        assert_eq!(best, Some(4000.0));
    }

    #[test]
    fn find_max_stops_at_max_rate_at_a_failing_start_and_at_1_percent_gaps() {
        let (tried, best) = search(1000.0, 2.0, 5000.0, 2, 1e9);
        assert_eq!((tried, best), (vec![1000.0, 2000.0, 4000.0], Some(4000.0)));
        let (tried, best) = search(1000.0, 2.0, 1e6, 3, 10.0);
        assert_eq!((tried, best), (vec![1000.0], None), "nothing to bisect");
        // The gap closes below 1% of the rate: no more steps, whatever `refine` says.
        let (tried, best) = search(1000.0, 1.02, 1e6, 10, 1015.0);
        assert_eq!(tried, vec![1000.0, 1020.0, 1010.0]);
        assert_eq!(best, Some(1010.0));
        assert!(RateSearch::new(0.0, 2.0, 1e6, 2).next_rate().is_none());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn steps() {
        let s = parse_steps("5000:10s, 10000:500ms").unwrap_or_default();
        assert_eq!(
            s,
            vec![
                (5000.0, Duration::from_secs(10)),
                (10000.0, Duration::from_millis(500))
            ]
        );
        assert!(parse_steps("5000").is_err());
        assert!(parse_steps("0:1s").is_err());
    }
}
