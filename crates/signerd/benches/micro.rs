//! Micro-benchmarks of the request path's building blocks: wire codec, shard hand-off between
//! threads, router choice, batch drain, and the oneshot completion path.
//!
//! `cargo bench --bench micro` (about a minute on 2 cores). `MICRO_SMOKE=1` shortens every
//! measurement for CI (warm-up 100 ms, measurement 300 ms, 10 samples). Criterion's own flags
//! work as usual, e.g. `cargo bench --bench micro -- shard_handoff`.
//!
//! Dummy answers carry an empty signature, so no benchmark here counts the allocation of a real
//! signature: they measure the machinery around the HSM call, not the call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use tokio::sync::oneshot;

use signer_proto::protocol::{
    decode_request, decode_response, encode_request, encode_response, Op, Request, RequestFrame,
    ResponseBody, ResponseFrame, SignatureForm,
};
use signerd::engine::registry::VersionEntry;
use signerd::pipeline::router::{least_loaded, Candidate};
use signerd::pipeline::{Job, Reply, Shard, Signed};
use signerd::{KeyName, KeyType, Payload, Scheme, Status};

/// The engine's default shard capacity (`engine.queue_depth`).
const QUEUE_DEPTH: usize = 1024;
/// The engine's default `engine.max_drain`.
const MAX_DRAIN: usize = 64;
/// The worker's idle park timeout (`IDLE_PARK` in src/pipeline/worker.rs).
const IDLE_PARK: Duration = Duration::from_millis(100);
/// Jobs handed through the shard per `shard_handoff` iteration (split evenly among producers).
const HANDOFF_JOBS: usize = 100_000;
/// Items in the `SignBatch` request of the codec benchmark.
const BATCH_ITEMS: usize = 64;

static DIGEST: [u8; 32] = [0x5a; 32];

/// Criterion settings: ~4 s per benchmark, or ~0.4 s with `MICRO_SMOKE=1`.
fn config() -> Criterion {
    let smoke = std::env::var("MICRO_SMOKE").is_ok_and(|v| v == "1");
    let (warm_up, measurement, samples) = if smoke {
        (Duration::from_millis(100), Duration::from_millis(300), 10)
    } else {
        (Duration::from_secs(1), Duration::from_secs(3), 20)
    };
    Criterion::default()
        .warm_up_time(warm_up)
        .measurement_time(measurement)
        .sample_size(samples)
        .without_plots()
}

// ---------------------------------------------------------------------------------------------
// Fixtures

fn key() -> KeyName {
    KeyName::new("payments").unwrap()
}

fn version_entry() -> Arc<VersionEntry> {
    Arc::new(VersionEntry::for_tests(key(), 1, KeyType::EcP256, vec![1]))
}

fn payload() -> Payload {
    Payload::new(Scheme::EcdsaSha256, Bytes::from_static(&DIGEST)).unwrap()
}

/// A job and the receiver its answer goes to.
fn job(version: &Arc<VersionEntry>, payload: &Payload) -> (Job, oneshot::Receiver<Reply>) {
    let (reply, rx) = oneshot::channel();
    let job = Job {
        version: Arc::clone(version),
        payload: payload.clone(),
        deadline: Instant::now() + Duration::from_secs(3600),
        enqueued: Instant::now(),
        identity: Arc::from("bench"),
        probe: None,
        retried: false,
        caller_records: false,
        reply,
    };
    (job, rx)
}

/// The answer a dummy worker gives: a signature, without allocating one.
fn dummy_signed(version: u32) -> Reply {
    Ok(Signed {
        signature: Vec::new(),
        version,
        partition: 0,
    })
}

/// A 72-byte ECDSA P-256 signature in DER (both integers 33 bytes, high bit set).
fn der_signature() -> Bytes {
    let mut sig = vec![0x30, 0x46, 0x02, 0x21, 0x00];
    sig.extend_from_slice(&[0x81; 32]);
    sig.extend_from_slice(&[0x02, 0x21, 0x00]);
    sig.extend_from_slice(&[0x92; 32]);
    assert_eq!(sig.len(), 72);
    Bytes::from(sig)
}

// ---------------------------------------------------------------------------------------------
// codec

fn bench_codec(c: &mut Criterion) {
    let sign = RequestFrame {
        flags: 0,
        deadline_ms: 250,
        request: Request::Sign {
            key: key(),
            version: None,
            scheme: Scheme::EcdsaSha256,
            payload: Bytes::from_static(&DIGEST),
        },
    };
    let signed = ResponseFrame::ok(ResponseBody::Signed {
        version: 1,
        signature: SignatureForm::Plain(der_signature()),
    });
    let batch = RequestFrame {
        flags: 0,
        deadline_ms: 250,
        request: Request::SignBatch {
            key: key(),
            version: None,
            scheme: Scheme::EcdsaSha256,
            payloads: (0..BATCH_ITEMS)
                .map(|i| Bytes::from(vec![i as u8; 32]))
                .collect(),
        },
    };

    // Encode once outside the timing, and check that each frame survives a round trip.
    let mut buf = BytesMut::new();
    encode_request(&sign, &mut buf).unwrap();
    let sign_wire = buf.split().freeze();
    assert_eq!(decode_request(&sign_wire).unwrap(), sign);
    encode_response(Op::Sign, &signed, &mut buf).unwrap();
    let signed_wire = buf.split().freeze();
    assert_eq!(decode_response(Op::Sign, &signed_wire).unwrap(), signed);
    assert_eq!(signed.status, Status::Ok);
    encode_request(&batch, &mut buf).unwrap();
    let batch_wire = buf.split().freeze();
    assert_eq!(decode_request(&batch_wire).unwrap(), batch);

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_sign_request", |b| {
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            encode_request(black_box(&sign), &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.bench_function("decode_sign_request", |b| {
        b.iter(|| decode_request(black_box(&sign_wire)).unwrap())
    });
    g.bench_function("encode_sign_response", |b| {
        let mut out = BytesMut::with_capacity(256);
        b.iter(|| {
            out.clear();
            encode_response(Op::Sign, black_box(&signed), &mut out).unwrap();
            black_box(out.len())
        })
    });
    g.bench_function("decode_sign_response", |b| {
        b.iter(|| decode_response(Op::Sign, black_box(&signed_wire)).unwrap())
    });
    g.bench_function("decode_sign_batch_64", |b| {
        b.iter(|| decode_request(black_box(&batch_wire)).unwrap())
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// shard_handoff

/// Counts a producer as finished when dropped (also on panic) and wakes the consumer, so that
/// the consumer never waits for jobs that will not come.
struct ProducerDone<'a> {
    finished: &'a AtomicUsize,
    shard: &'a Shard,
}

impl Drop for ProducerDone<'_> {
    fn drop(&mut self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
        self.shard.wake();
    }
}

/// Tells producers, when dropped (also on panic), that nobody drains the shard any more, so that
/// they stop retrying a full queue.
struct ConsumerGone<'a>(&'a AtomicBool);

impl Drop for ConsumerGone<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// One round: `producers` threads push `HANDOFF_JOBS` prepared jobs into one shard while one
/// consumer drains and answers them exactly as a worker does (drain up to `MAX_DRAIN`, answer
/// each, and when empty `prepare_sleep` → `park_timeout` → `woke`). Returns the consumer's time
/// from the common start until it answered the last job. Every thread has ended on return.
fn handoff_round(producers: usize, version: &Arc<VersionEntry>, payload: &Payload) -> Duration {
    let per_producer = HANDOFF_JOBS / producers;
    let total = per_producer * producers;
    let (shard, parker) = Shard::new(QUEUE_DEPTH, 0);
    // Jobs are made before the clock starts: the round measures the hand-off, not allocation.
    let mut receivers = Vec::with_capacity(total);
    let job_lists: Vec<Vec<Job>> = (0..producers)
        .map(|_| {
            (0..per_producer)
                .map(|_| {
                    let (j, rx) = job(version, payload);
                    receivers.push(rx);
                    j
                })
                .collect()
        })
        .collect();
    let start_line = Barrier::new(producers + 1);
    let finished = AtomicUsize::new(0);
    let consumer_gone = AtomicBool::new(false);

    let (sent, received, elapsed) = thread::scope(|s| {
        let (shard, start_line, finished, consumer_gone) =
            (&shard, &start_line, &finished, &consumer_gone);
        let producer_threads: Vec<_> = job_lists
            .into_iter()
            .map(|jobs| {
                s.spawn(move || {
                    let _done = ProducerDone { finished, shard };
                    start_line.wait();
                    let mut sent = 0usize;
                    'jobs: for job in jobs {
                        let mut job = job;
                        // A full queue: wait for the consumer (the engine would answer
                        // OVERLOADED instead; here every job must get through).
                        while let Err(back) = shard.push(job) {
                            if consumer_gone.load(Ordering::SeqCst) {
                                break 'jobs;
                            }
                            job = back;
                            thread::yield_now();
                        }
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        let consumer = s.spawn(move || {
            let _gone = ConsumerGone(consumer_gone);
            let mut batch = Vec::with_capacity(MAX_DRAIN);
            let mut received = 0usize;
            start_line.wait();
            let start = Instant::now();
            loop {
                shard.drain_into(&mut batch, MAX_DRAIN);
                if batch.is_empty() {
                    if received == total {
                        break;
                    }
                    // All producers ended (a push loop gave up or panicked) and nothing is
                    // left: stop; the counts below report the shortfall.
                    if finished.load(Ordering::SeqCst) == producers && shard.queued() == 0 {
                        break;
                    }
                    if shard.prepare_sleep() {
                        parker.park_timeout(IDLE_PARK);
                    }
                    shard.woke();
                    continue;
                }
                let mut left = batch.len();
                shard.set_in_hand(left);
                for job in batch.drain(..) {
                    let v = job.version.version;
                    job.answer(dummy_signed(v));
                    received += 1;
                    left -= 1;
                    shard.set_in_hand(left);
                }
            }
            (received, start.elapsed())
        });
        let sent: usize = producer_threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        let (received, elapsed) = consumer.join().unwrap();
        (sent, received, elapsed)
    });

    assert_eq!(sent, total, "producers pushed fewer jobs than prepared");
    assert_eq!(
        received, sent,
        "consumer received a different count than sent"
    );
    assert_eq!(shard.queued(), 0);
    let answered = receivers
        .iter_mut()
        .map(|rx| rx.try_recv())
        .filter(|r| matches!(r, Ok(Ok(_))))
        .count();
    assert_eq!(answered, total, "not every job was answered");
    elapsed
}

fn bench_shard_handoff(c: &mut Criterion) {
    let version = version_entry();
    let payload = payload();
    let mut g = c.benchmark_group("shard_handoff");
    // One iteration is a whole round of HANDOFF_JOBS jobs (tens of ms): flat sampling keeps
    // the iteration count, and so the run time, small. Throughput gives jobs per second.
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Elements(HANDOFF_JOBS as u64));
    for producers in [1usize, 2] {
        g.bench_with_input(
            BenchmarkId::new("producers", producers),
            &producers,
            |b, &producers| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| handoff_round(producers, &version, &payload))
                        .sum()
                })
            },
        );
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// router

/// Candidate sets cycled through by the router benchmark (a power of two).
const ROUTER_SETS: usize = 16;

fn candidate_sets(n: usize) -> Vec<Vec<Candidate>> {
    // A fixed LCG: loads 0..8 (so that ties occur), about one candidate in eight unhealthy.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ n as u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    (0..ROUTER_SETS)
        .map(|_| {
            (0..n)
                .map(|shard| Candidate {
                    shard,
                    load: next() % 8,
                    healthy: next() % 8 != 0,
                    tier: 0,
                })
                .collect()
        })
        .collect()
}

fn bench_router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(1));
    for n in [2usize, 4, 16, 64] {
        let sets = candidate_sets(n);
        g.bench_with_input(BenchmarkId::new("least_loaded", n), &sets, |b, sets| {
            let mut rotation = 0usize;
            b.iter(|| {
                rotation = rotation.wrapping_add(1);
                let set = &sets[rotation & (ROUTER_SETS - 1)];
                least_loaded(black_box(set), black_box(rotation))
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// batch_drain

fn bench_batch_drain(c: &mut Criterion) {
    let version = version_entry();
    let payload = payload();
    let (shard, _parker) = Shard::new(QUEUE_DEPTH, 0);
    for _ in 0..QUEUE_DEPTH {
        shard.push(job(&version, &payload).0).unwrap();
    }
    // The drained jobs are pushed back in the (untimed) setup, so the shard is full before every
    // timed drain and no job is allocated or dropped in the loop.
    let spare: RefCell<Vec<Job>> = RefCell::new(Vec::with_capacity(MAX_DRAIN));
    let mut g = c.benchmark_group("batch_drain");
    g.throughput(Throughput::Elements(MAX_DRAIN as u64));
    g.bench_function("drain_into_64_from_full_1024", |b| {
        b.iter_batched(
            || {
                for job in spare.borrow_mut().drain(..) {
                    shard.push(job).unwrap();
                }
                assert_eq!(shard.queued(), QUEUE_DEPTH);
            },
            |()| {
                let mut batch = spare.borrow_mut();
                shard.drain_into(&mut batch, MAX_DRAIN);
                batch.len()
            },
            // Refilling has to happen between drains; the per-iteration timer costs a few
            // tens of ns of the ~1 µs measured.
            BatchSize::PerIteration,
        )
    });
    g.finish();
    assert_eq!(spare.borrow().len(), MAX_DRAIN);
}

// ---------------------------------------------------------------------------------------------
// oneshot

fn bench_oneshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("oneshot");
    g.throughput(Throughput::Elements(1));
    // What every request pays: make the channel, answer, and take the answer.
    g.bench_function("channel_send_try_recv", |b| {
        b.iter(|| {
            let (tx, mut rx) = oneshot::channel::<Reply>();
            tx.send(black_box(dummy_signed(1))).unwrap();
            rx.try_recv().unwrap()
        })
    });
    // The completion alone: the channel exists already (made and dropped outside the timing).
    g.bench_function("send_try_recv", |b| {
        b.iter_batched(
            oneshot::channel::<Reply>,
            |(tx, mut rx)| {
                tx.send(black_box(dummy_signed(1))).unwrap();
                let reply = rx.try_recv().unwrap();
                (rx, reply)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = micro;
    config = config();
    targets = bench_codec, bench_shard_handoff, bench_router, bench_batch_drain, bench_oneshot
}
criterion_main!(micro);
