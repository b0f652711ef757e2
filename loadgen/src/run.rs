//! The load engine: open loop at a constant rate (latency measured from each request's scheduled
//! send time, so coordinated omission is corrected), or closed loop with a fixed concurrency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use signer_client::{Client, ClientError, SignOptions, SignatureForm};
use signer_proto::Scheme;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::report::{self, Interval, RunResult};

/// How load is offered.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Constant arrival rate (requests/s), independent of responses.
    Rate(f64),
    /// A fixed number of requests always in flight.
    Concurrency(usize),
}

/// One constant-load phase.
#[derive(Clone, Debug)]
pub struct Phase {
    /// The load.
    pub load: Load,
    /// Measured window.
    pub duration: Duration,
    /// Excluded from results.
    pub warmup: Duration,
}

/// What every phase shares.
#[derive(Clone, Debug)]
pub struct Target {
    /// One client per connection.
    pub clients: Vec<Client>,
    /// Key name.
    pub key: String,
    /// Scheme.
    pub scheme: Scheme,
    /// Payload length (digest length, or message size for Ed25519).
    pub payload_len: usize,
    /// Keep every (payload, signature) of the window for verification afterwards.
    pub keep_signatures: bool,
    /// Most requests in flight in open loop; beyond it requests are counted as `client_overflow`
    /// instead of piling up without bound.
    pub max_inflight: usize,
    /// Accept Merkle batch signatures (`ACCEPT_BATCH_SIGNATURE`).
    pub batch: bool,
    /// Payloads per request: 1 sends Sign requests, more send SignBatch requests of this many.
    pub payloads: usize,
    /// The clients' `coalesce` (most single sign requests sharing one SignBatch request).
    pub coalesce: usize,
}

/// A signature kept for verification.
#[derive(Clone, Debug)]
pub struct Kept {
    /// What was signed.
    pub payload: Bytes,
    /// The key version that signed.
    pub version: u32,
    /// The signature, plain or batch.
    pub signature: SignatureForm,
}

/// One answered request, sent to the collector.
struct Sample {
    /// Scheduled send time, as an offset from the phase start.
    scheduled: Duration,
    /// Completion minus scheduled send time.
    latency: Duration,
    /// `None` = OK.
    error: Option<&'static str>,
    /// Signatures in the answer (the request's payloads, when it is OK).
    signatures: u32,
    /// Batch signatures in the answer, and the sum of 1/tree size over them.
    batch_items: u32,
    trees: f64,
    kept: Vec<Kept>,
}

/// Runs one phase; `progress` is called about once a second with (elapsed, rate, p95 ms, errors).
pub async fn run_phase(
    target: &Target,
    phase: &Phase,
    mut progress: impl FnMut(f64, f64, f64, u64),
) -> (RunResult, Vec<Kept>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let start = Instant::now();
    let warmup = phase.warmup;
    let end = warmup + phase.duration;
    let inflight = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let overflow = Arc::new(AtomicU64::new(0));
    let driver = {
        let (target, load, tx) = (target.clone(), phase.load, tx.clone());
        let (inflight, sent, overflow) = (inflight.clone(), sent.clone(), overflow.clone());
        tokio::spawn(async move {
            match load {
                Load::Rate(rate) => {
                    open_loop(
                        &target, rate, start, end, warmup, tx, inflight, sent, overflow,
                    )
                    .await
                }
                Load::Concurrency(c) => closed_loop(&target, c, start, end, warmup, tx, sent).await,
            }
        })
    };
    drop(tx);

    // Collect until every sender (driver and request tasks) is gone.
    let seconds = phase.duration.as_secs_f64().ceil().max(1.0) as usize;
    let mut intervals: Vec<Interval> = (0..seconds)
        .map(|i| Interval {
            start_s: i as f64,
            length_s: 1.0,
            hist: report::new_histogram(),
            ok: 0,
            errors: 0,
            offered: 0,
        })
        .collect();
    let mut total = report::new_histogram();
    let mut ok_only = report::new_histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok = 0u64;
    let mut kept: Vec<Vec<Kept>> = Vec::new();
    let (mut batch_signatures, mut trees, mut signatures) = (0u64, 0f64, 0u64);
    let mut last_progress = Instant::now();
    let mut window_hist = report::new_histogram();
    let mut window_ok = 0u64;
    let mut error_total = 0u64;
    // One timer for the progress line (not one per sample).
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sample = tokio::select! {
            s = rx.recv() => s,
            _ = ticker.tick() => {
                tick(&mut last_progress, start, &mut window_hist, &mut window_ok, error_total, &mut progress);
                continue;
            }
        };
        let Some(s) = sample else { break };
        if s.scheduled < warmup || s.scheduled >= end {
            continue;
        }
        let offset = s.scheduled - warmup;
        let slot = (offset.as_secs() as usize).min(seconds - 1);
        let micros = u64::try_from(s.latency.as_micros()).unwrap_or(u64::MAX);
        report::record(&mut total, micros);
        report::record(&mut intervals[slot].hist, micros);
        report::record(&mut window_hist, micros);
        intervals[slot].offered += 1;
        match s.error {
            None => {
                report::record(&mut ok_only, micros);
                ok += 1;
                window_ok += 1;
                intervals[slot].ok += 1;
                signatures += u64::from(s.signatures);
                batch_signatures += u64::from(s.batch_items);
                trees += s.trees;
                keep(&mut kept, s.kept);
            }
            Some(name) => {
                error_total += 1;
                intervals[slot].errors += 1;
                *errors.entry(name.to_owned()).or_default() += 1;
            }
        }
        tick(
            &mut last_progress,
            start,
            &mut window_hist,
            &mut window_ok,
            error_total,
            &mut progress,
        );
    }
    let _ = driver.await;
    let over = overflow.load(Ordering::Relaxed);
    if over > 0 {
        *errors.entry("client_overflow".into()).or_default() += over;
    }
    let (mode, offered_rate, concurrency) = match phase.load {
        Load::Rate(r) => ("open-loop", Some(r), None),
        Load::Concurrency(c) => ("closed-loop", None, Some(c)),
    };
    let result = RunResult {
        mode: mode.into(),
        offered_rate,
        concurrency,
        connections: target.clients.len(),
        coalesce: target.coalesce,
        key: target.key.clone(),
        scheme: target.scheme.to_string(),
        duration_s: phase.duration.as_secs_f64(),
        warmup_s: phase.warmup.as_secs_f64(),
        sent: sent.load(Ordering::Relaxed),
        ok,
        errors,
        histogram: total,
        ok_histogram: ok_only,
        intervals,
        verified: 0,
        verify_failures: 0,
        verify_enabled: target.keep_signatures,
        batch_signatures,
        batch_trees: trees,
        payloads_per_request: target.payloads.max(1),
        signatures,
    };
    // Joined after the measured window, where the copy costs the measurement nothing.
    let mut all = Vec::with_capacity(kept.iter().map(Vec::len).sum());
    for chunk in kept {
        all.extend(chunk);
    }
    (result, all)
}

/// Entries per chunk of kept signatures.
const KEPT_CHUNK: usize = 1 << 14;

/// Stores signatures kept for verification in fixed-size chunks. One growing `Vec` doubles (copies
/// everything kept so far into fresh memory) at 2^k entries: at 10,000/s that stalled the one
/// thread that also sends, for tens of milliseconds, at 6.5, 13, 26 and 52 s into a run, and the
/// burst of late sends that followed was shed by the daemon (OVERLOADED bursts at exactly those
/// seconds of `--verify` runs). A new chunk costs one allocation and copies nothing.
fn keep(chunks: &mut Vec<Vec<Kept>>, items: Vec<Kept>) {
    for item in items {
        match chunks.last_mut() {
            Some(chunk) if chunk.len() < KEPT_CHUNK => chunk.push(item),
            _ => {
                let mut chunk = Vec::with_capacity(KEPT_CHUNK);
                chunk.push(item);
                chunks.push(chunk);
            }
        }
    }
}

fn tick(
    last: &mut Instant,
    start: Instant,
    hist: &mut Histogram<u64>,
    ok: &mut u64,
    errors: u64,
    progress: &mut impl FnMut(f64, f64, f64, u64),
) {
    let since = last.elapsed();
    if since >= Duration::from_secs(1) {
        let p95 = hist.value_at_quantile(0.95) as f64 / 1000.0;
        progress(
            start.elapsed().as_secs_f64(),
            *ok as f64 / since.as_secs_f64(),
            p95,
            errors,
        );
        hist.reset();
        *ok = 0;
        *last = Instant::now();
    }
}

#[allow(clippy::too_many_arguments)]
async fn open_loop(
    target: &Target,
    rate: f64,
    start: Instant,
    end: Duration,
    warmup: Duration,
    tx: mpsc::UnboundedSender<Sample>,
    inflight: Arc<AtomicUsize>,
    sent: Arc<AtomicU64>,
    overflow: Arc<AtomicU64>,
) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut n: u64 = 0;
    let conns = target.clients.len();
    // Wake every millisecond (or per request at low rates) and launch everything due.
    let tick = interval.clamp(Duration::from_micros(500), Duration::from_millis(1));
    loop {
        let now = start.elapsed();
        loop {
            let scheduled = interval.mul_f64(n as f64);
            if scheduled >= end {
                return;
            }
            if scheduled > now {
                break;
            }
            n += 1;
            if scheduled >= warmup {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            if inflight.load(Ordering::Relaxed) >= target.max_inflight {
                if scheduled >= warmup {
                    overflow.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            inflight.fetch_add(1, Ordering::Relaxed);
            let client = target.clients[(n as usize) % conns].clone();
            let (tx, inflight) = (tx.clone(), inflight.clone());
            let (key, scheme, len) = (target.key.clone(), target.scheme, target.payload_len);
            let payloads = target.payloads;
            let keep = target.keep_signatures && scheduled >= warmup;
            let batch = target.batch;
            tokio::spawn(async move {
                let sample = one(
                    &client,
                    &key,
                    Shape {
                        scheme,
                        len,
                        batch,
                        payloads,
                    },
                    start + scheduled,
                    scheduled,
                    keep,
                )
                .await;
                inflight.fetch_sub(1, Ordering::Relaxed);
                let _ = tx.send(sample);
            });
        }
        tokio::time::sleep(tick).await;
    }
}

async fn closed_loop(
    target: &Target,
    concurrency: usize,
    start: Instant,
    end: Duration,
    warmup: Duration,
    tx: mpsc::UnboundedSender<Sample>,
    sent: Arc<AtomicU64>,
) {
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency.max(1) {
        let client = target.clients[i % target.clients.len()].clone();
        let (tx, sent) = (tx.clone(), sent.clone());
        let (key, scheme, len, keep, batch, payloads) = (
            target.key.clone(),
            target.scheme,
            target.payload_len,
            target.keep_signatures,
            target.batch,
            target.payloads,
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let scheduled = start.elapsed();
                if scheduled >= end {
                    return;
                }
                let in_window = scheduled >= warmup;
                if in_window {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                let sample = one(
                    &client,
                    &key,
                    Shape {
                        scheme,
                        len,
                        batch,
                        payloads,
                    },
                    Instant::now(),
                    scheduled,
                    keep && in_window,
                )
                .await;
                if tx.send(sample).is_err() {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// What each request looks like.
#[derive(Clone, Copy, Debug)]
struct Shape {
    scheme: Scheme,
    /// Payload length.
    len: usize,
    /// Accept a batch signature.
    batch: bool,
    /// Payloads per request.
    payloads: usize,
}

/// One payload's answer: the version that signed and the signature.
type ItemResult = Result<(u32, SignatureForm), ClientError>;

async fn one(
    client: &Client,
    key: &str,
    shape: Shape,
    scheduled_at: Instant,
    scheduled: Duration,
    keep: bool,
) -> Sample {
    let Shape {
        scheme,
        len,
        batch,
        payloads,
    } = shape;
    // One RNG fill per payload (not one call per byte): this runs for every request, on the
    // cores the daemon under test also needs.
    let payloads: Vec<Bytes> = {
        let mut rng = rand::thread_rng(); // not held across an await (it is not Send)
        (0..payloads.max(1))
            .map(|_| {
                let mut p = vec![0u8; len];
                rand::Rng::fill(&mut rng, &mut p[..]);
                Bytes::from(p)
            })
            .collect()
    };
    // One result per payload (all or nothing for a transport error).
    let options = SignOptions::new().accept_batch(batch);
    let result: Result<Vec<ItemResult>, ClientError> = match (payloads.len(), batch) {
        (1, true) => client
            .sign_with(key, scheme, payloads[0].clone(), options)
            .await
            .map(|s| vec![Ok((s.version, s.signature))]),
        (1, false) => client
            .sign(key, scheme, payloads[0].clone())
            .await
            .map(|s| vec![Ok((s.version, SignatureForm::Plain(s.signature)))]),
        (_, _) => client
            .sign_many(key, scheme, payloads.iter().cloned(), options)
            .await
            .map(|items| {
                items
                    .into_iter()
                    .map(|r| r.map(|s| (s.version, s.signature)))
                    .collect()
            }),
    };
    let latency = scheduled_at.elapsed();
    let mut sample = Sample {
        scheduled,
        latency,
        error: None,
        signatures: 0,
        batch_items: 0,
        trees: 0.0,
        kept: Vec::new(),
    };
    let items = match result {
        Ok(items) => items,
        Err(e) => {
            sample.error = Some(error_name(&e));
            return sample;
        }
    };
    for (payload, item) in payloads.into_iter().zip(items) {
        match item {
            Ok((version, signature)) => {
                sample.signatures += 1;
                if let SignatureForm::Batch(b) = &signature {
                    // A tree of n leaves answers n payloads: each stands for 1/n of a tree.
                    sample.batch_items += 1;
                    sample.trees += 1.0 / f64::from(b.tree_size.max(1));
                }
                if keep {
                    sample.kept.push(Kept {
                        payload,
                        version,
                        signature,
                    });
                }
            }
            Err(e) => {
                if sample.error.is_none() {
                    sample.error = Some(error_name(&e));
                }
            }
        }
    }
    sample
}

/// The status name used in reports for a failed request.
pub fn error_name(e: &ClientError) -> &'static str {
    match e {
        ClientError::Status { status, .. } => status.as_str(),
        ClientError::Timeout => "timeout",
        ClientError::Transport(_) => "transport",
        ClientError::Connect(_) => "connect",
        ClientError::Protocol { .. } => "protocol",
        _ => "client",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_signatures_are_chunked_in_order_and_chunks_never_grow() {
        let item = |i: u32| Kept {
            payload: Bytes::from(i.to_be_bytes().to_vec()),
            version: i,
            signature: SignatureForm::Plain(Bytes::new()),
        };
        let mut chunks = Vec::new();
        let n = 2 * KEPT_CHUNK as u32 + 5;
        for start in (0..n).step_by(7) {
            keep(&mut chunks, (start..(start + 7).min(n)).map(item).collect());
        }
        assert_eq!(chunks.len(), 3);
        assert!(
            chunks.iter().all(|c| c.capacity() == KEPT_CHUNK),
            "no chunk reallocated"
        );
        let versions: Vec<u32> = chunks.into_iter().flatten().map(|k| k.version).collect();
        assert_eq!(versions, (0..n).collect::<Vec<_>>());
    }
}
