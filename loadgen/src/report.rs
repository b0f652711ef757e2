//! Results of a load run and the ways they are reported: a human summary table, a one-line
//! progress display, JSON (the `--json` contract of DESIGN §7), and an HdrHistogram interval log.
//!
//! Latencies are recorded in microseconds, measured from each request's *scheduled* send time
//! (DESIGN §9: coordinated omission corrected), and reported in milliseconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, IntervalLogWriterError};
use hdrhistogram::serialization::{V2DeflateSerializeError, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Lowest latency a histogram tracks, in microseconds.
pub const LOWEST_MICROS: u64 = 1;
/// Highest latency a histogram tracks, in microseconds (60 s); larger values are clamped to it.
pub const HIGHEST_MICROS: u64 = 60_000_000;
/// Significant decimal digits the histograms keep (relative error at most 0.1 %).
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// Creates an empty latency histogram.
///
/// Latencies are recorded in microseconds; histograms track 1 µs .. 60 s with 3 significant
/// digits. Record into it with [`record`], which clamps out-of-range values instead of failing.
pub fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(LOWEST_MICROS, HIGHEST_MICROS, SIGNIFICANT_DIGITS) {
        Ok(h) => h,
        // The bounds are constants that satisfy every precondition of `new_with_bounds`
        // (low >= 1, high >= 2 * low, sigfig <= 5); the unit tests exercise this path.
        Err(e) => unreachable!("constant histogram bounds rejected: {e:?}"),
    }
}

/// Records one latency of `micros` microseconds into `h`.
///
/// Values below 1 µs are recorded as 1 µs and values above the histogram's highest trackable
/// value (60 s for [`new_histogram`]) as that value. Never panics; counts saturate.
pub fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.max(LOWEST_MICROS));
}

/// The value at percentile `p` (0..=100) of a microsecond histogram, in milliseconds.
///
/// Returns 0 for an empty histogram; `p` is clamped to 0..=100 (NaN counts as 0).
pub fn histogram_percentile_ms(h: &Histogram<u64>, p: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    micros_to_ms(h.value_at_quantile(quantile(p)))
}

/// The largest value recorded in a microsecond histogram, in milliseconds (0 when empty).
pub fn histogram_max_ms(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        micros_to_ms(h.max())
    }
}

/// The quantile (0..=1) of percentile `p`, snapped to 12 decimals so that e.g. 99.9 becomes the
/// double nearest 0.999 rather than 0.9990000000000001, which would push the rank (rounded up
/// from `q * count`) into the next sample. NaN counts as 0.
fn quantile(p: f64) -> f64 {
    if p.is_nan() {
        return 0.0;
    }
    ((p.clamp(0.0, 100.0) * 1e10).round() / 1e12).clamp(0.0, 1.0)
}

fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// `count / seconds`, or 0 when `seconds` is not a positive finite number.
fn rate(count: u64, seconds: f64) -> f64 {
    if seconds.is_finite() && seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// One measured interval (normally 1 s) of a run.
#[derive(Clone, Debug)]
pub struct Interval {
    /// Offset of the interval's start from the start of the measured window, in seconds.
    pub start_s: f64,
    /// Length of the interval in seconds.
    pub length_s: f64,
    /// Latency (µs, from the scheduled send time) of the requests answered in this interval.
    pub hist: Histogram<u64>,
    /// Requests answered successfully in this interval.
    pub ok: u64,
    /// Requests that failed in this interval (any status other than ok, timeouts included).
    pub errors: u64,
    /// Requests scheduled in this interval.
    pub offered: u64,
}

impl Interval {
    /// Successful requests per second in this interval (0 when the length is not positive).
    pub fn achieved_rate(&self) -> f64 {
        rate(self.ok, self.length_s)
    }

    /// Latency at percentile `p` (0..=100) in this interval, in ms; 0 when nothing was answered.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        histogram_percentile_ms(&self.hist, p)
    }

    /// Largest latency in this interval, in ms; 0 when nothing was answered.
    pub fn max_ms(&self) -> f64 {
        histogram_max_ms(&self.hist)
    }
}

/// The result of one constant-load phase (a `run`, or one step of `--step` / `find-max`).
#[derive(Clone, Debug)]
pub struct RunResult {
    /// `"open-loop"` or `"closed-loop"`.
    pub mode: String,
    /// Requests per second scheduled (open loop); `None` for closed loop.
    pub offered_rate: Option<f64>,
    /// Requests kept in flight (closed loop).
    pub concurrency: Option<usize>,
    /// QUIC connections used.
    pub connections: usize,
    /// Most single sign requests the client coalesced into one SignBatch request (1: none).
    pub coalesce: usize,
    /// Name of the key signed with.
    pub key: String,
    /// Signature scheme requested.
    pub scheme: String,
    /// Length of the measured window in seconds (warm-up excluded).
    pub duration_s: f64,
    /// Length of the warm-up in seconds (not measured).
    pub warmup_s: f64,
    /// Requests sent in the measured window.
    pub sent: u64,
    /// Requests answered successfully in the measured window.
    pub ok: u64,
    /// Failed requests by status name (e.g. `"overloaded"`, `"timeout"`, `"transport"`).
    pub errors: BTreeMap<String, u64>,
    /// Latency (µs) of every answered request in the window, from its scheduled send time.
    pub histogram: Histogram<u64>,
    /// Latency (µs) of the requests answered OK only (admitted and signed). Under overload the
    /// shed requests are answered fast, which pulls `histogram` down; this one shows what
    /// admitted requests experienced.
    pub ok_histogram: Histogram<u64>,
    /// The measured window cut into intervals, in time order.
    pub intervals: Vec<Interval>,
    /// Signatures verified after the run (0 when `--verify` was off).
    pub verified: u64,
    /// Signatures that failed verification.
    pub verify_failures: u64,
    /// Whether `--verify` was on.
    pub verify_enabled: bool,
    /// Requests answered with a Merkle batch signature (`--batch`).
    pub batch_signatures: u64,
    /// Trees those came from (each answer of a tree of n counts 1/n): HSM root signatures.
    pub batch_trees: f64,
    /// Payloads per request (1: Sign requests; more: SignBatch requests).
    pub payloads_per_request: usize,
    /// Signatures in the OK answers of the window.
    pub signatures: u64,
}

impl RunResult {
    /// Successful requests per second over the measured window (0 when the window is empty).
    pub fn achieved_rate(&self) -> f64 {
        rate(self.ok, self.duration_s)
    }

    /// Total failed requests, all statuses together.
    pub fn error_count(&self) -> u64 {
        self.errors
            .values()
            .fold(0u64, |acc, n| acc.saturating_add(*n))
    }

    /// `errors / (ok + errors)`; 0 when nothing was answered.
    pub fn error_ratio(&self) -> f64 {
        let errors = self.error_count();
        let answered = self.ok.saturating_add(errors);
        if answered == 0 {
            0.0
        } else {
            errors as f64 / answered as f64
        }
    }

    /// Latency at percentile `p` (0..=100) over the window, in ms; 0 when the histogram is empty.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        histogram_percentile_ms(&self.histogram, p)
    }

    /// Largest latency over the window, in ms; 0 when the histogram is empty.
    pub fn max_ms(&self) -> f64 {
        histogram_max_ms(&self.histogram)
    }

    /// Whether latency was measured in closed loop (which hides queueing, DESIGN §9).
    pub fn is_closed_loop(&self) -> bool {
        self.offered_rate.is_none() || self.mode == "closed-loop"
    }

    /// A short description for titles: mode, rate or concurrency, key and scheme.
    pub fn describe(&self) -> String {
        let load = match (self.offered_rate, self.concurrency) {
            (Some(r), _) => format!("{} req/s", fmt_rate(r)),
            (None, Some(c)) => format!("concurrency {c}"),
            (None, None) => "unbounded".to_owned(),
        };
        format!("{} {load}, key {} ({})", self.mode, self.key, self.scheme)
    }
}

/// The percentiles reported everywhere: (label in the table, JSON key, percentile).
const PERCENTILES: [(&str, &str, f64); 5] = [
    ("p50", "p50", 50.0),
    ("p90", "p90", 90.0),
    ("p95", "p95", 95.0),
    ("p99", "p99", 99.0),
    ("p99.9", "p999", 99.9),
];

fn fmt_rate(r: f64) -> String {
    if r.fract() == 0.0 && r.abs() < 1e15 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// A human-readable summary of a run: load, counts, latency percentiles, errors by status and
/// verification, one item per line with aligned columns.
pub fn summary_table(r: &RunResult) -> String {
    const W: usize = 16;
    let mut s = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(s, "{:<W$}{}", "mode", r.mode);
    let _ = writeln!(s, "{:<W$}{} ({})", "key", r.key, r.scheme);
    let _ = writeln!(s, "{:<W$}{}", "connections", r.connections);
    if r.coalesce > 1 {
        let _ = writeln!(s, "{:<W$}up to {} per request", "coalesce", r.coalesce);
    }
    if let Some(c) = r.concurrency {
        let _ = writeln!(s, "{:<W$}{}", "concurrency", c);
    }
    match r.offered_rate {
        Some(rate) => {
            let _ = writeln!(s, "{:<W$}{:>12.1} req/s", "offered rate", rate);
        }
        None => {
            let _ = writeln!(s, "{:<W$}{:>12} (closed loop)", "offered rate", "-");
        }
    }
    let _ = writeln!(
        s,
        "{:<W$}{:>12.1} req/s",
        "achieved rate",
        r.achieved_rate()
    );
    let _ = writeln!(
        s,
        "{:<W$}{:>12.2} s (warm-up {:.2} s excluded)",
        "duration", r.duration_s, r.warmup_s
    );
    let _ = writeln!(s, "{:<W$}{:>12}", "sent", r.sent);
    let _ = writeln!(s, "{:<W$}{:>12}", "ok", r.ok);
    let _ = writeln!(
        s,
        "{:<W$}{:>12} ({:.2}% of answered)",
        "errors",
        r.error_count(),
        r.error_ratio() * 100.0
    );
    s.push('\n');
    let basis = if r.is_closed_loop() {
        "closed loop: hides queueing, not a latency figure to quote"
    } else {
        "from scheduled send time"
    };
    let _ = writeln!(s, "latency (ms, {basis}; {} samples)", r.histogram.len());
    for (label, _, p) in PERCENTILES {
        let _ = writeln!(
            s,
            "  {:<W2$}{:>12.2}",
            label,
            r.percentile_ms(p),
            W2 = W - 2
        );
    }
    let _ = writeln!(s, "  {:<W2$}{:>12.2}", "max", r.max_ms(), W2 = W - 2);
    if r.error_count() > 0 && !r.ok_histogram.is_empty() {
        let _ = writeln!(
            s,
            "  {:<W2$}{:>12.2} / {:.2} / {:.2}",
            "ok only p50/p95/p99",
            histogram_percentile_ms(&r.ok_histogram, 50.0),
            histogram_percentile_ms(&r.ok_histogram, 95.0),
            histogram_percentile_ms(&r.ok_histogram, 99.0),
            W2 = W - 2
        );
    }
    if !r.errors.is_empty() {
        s.push('\n');
        s.push_str("errors by status\n");
        let width = r
            .errors
            .keys()
            .map(|k| k.len())
            .max()
            .unwrap_or(0)
            .max(W - 2);
        for (status, n) in &r.errors {
            let _ = writeln!(s, "  {status:<width$}{n:>12}");
        }
    }
    if r.verify_enabled {
        s.push('\n');
        let _ = writeln!(
            s,
            "{:<W$}{} verified, {} failed",
            "verification", r.verified, r.verify_failures
        );
    }
    if r.payloads_per_request > 1 {
        let _ = writeln!(
            s,
            "{:<W$}{} payloads per request: {} signatures, {:.1} signatures/s",
            "signatures",
            r.payloads_per_request,
            r.signatures,
            rate(r.signatures, r.duration_s)
        );
    }
    if r.batch_signatures > 0 {
        let _ = writeln!(
            s,
            "{:<W$}{} batch signatures from {:.0} trees: mean tree {:.1}, {:.0} HSM calls/s",
            "batch",
            r.batch_signatures,
            r.batch_trees,
            r.batch_signatures as f64 / r.batch_trees.max(1e-9),
            r.batch_trees / r.duration_s.max(1e-9)
        );
    }
    s
}

/// One compact status line for live progress, e.g.
/// `measure    12.0s    998.7 req/s  p95    12.34 ms  errors 3`.
pub fn progress_line(
    elapsed_s: f64,
    achieved_rate: f64,
    p95_ms: f64,
    errors: u64,
    phase: &str,
) -> String {
    format!(
        "{phase:<8} {elapsed_s:>7.1}s {achieved_rate:>10.1} req/s  p95 {p95_ms:>8.2} ms  \
         errors {errors}"
    )
}

fn latency_json(h: &Histogram<u64>) -> Value {
    let mut m = Map::new();
    for (_, key, p) in PERCENTILES {
        m.insert(key.to_owned(), json!(histogram_percentile_ms(h, p)));
    }
    m.insert("max".to_owned(), json!(histogram_max_ms(h)));
    let mean = if h.is_empty() { 0.0 } else { h.mean() / 1000.0 };
    m.insert("mean".to_owned(), json!(mean));
    Value::Object(m)
}

fn interval_json(i: &Interval) -> Value {
    json!({
        "start_s": i.start_s,
        "length_s": i.length_s,
        "offered": i.offered,
        "ok": i.ok,
        "errors": i.errors,
        "achieved_rate": i.achieved_rate(),
        "p50_ms": i.percentile_ms(50.0),
        "p90_ms": i.percentile_ms(90.0),
        "p95_ms": i.percentile_ms(95.0),
        "p99_ms": i.percentile_ms(99.0),
        "max_ms": i.max_ms(),
    })
}

/// The `--json` document of one run (DESIGN §7).
///
/// Fields: `mode`, `offered_rate` (null for closed loop), `concurrency`, `connections`,
/// `coalesce`, `key`,
/// `scheme`, `duration_s`, `warmup_s`, `sent`, `ok`, `errors` (object status → count),
/// `error_count`, `error_ratio`, `achieved_rate`, `latency_ms` (`p50`, `p90`, `p95`, `p99`,
/// `p999`, `max`, `mean`), `latency_samples`, `latency_ok_ms` (the same, over OK answers only),
/// `verify_enabled`, `verified`, `verify_failures`,
/// and `intervals` (each: `start_s`, `length_s`, `offered`, `ok`, `errors`, `achieved_rate`,
/// `p50_ms`, `p90_ms`, `p95_ms`, `p99_ms`, `max_ms`).
pub fn to_json(r: &RunResult) -> Value {
    json!({
        "mode": r.mode,
        "offered_rate": r.offered_rate,
        "concurrency": r.concurrency,
        "connections": r.connections,
        "coalesce": r.coalesce,
        "key": r.key,
        "scheme": r.scheme,
        "duration_s": r.duration_s,
        "warmup_s": r.warmup_s,
        "sent": r.sent,
        "ok": r.ok,
        "errors": r.errors,
        "error_count": r.error_count(),
        "error_ratio": r.error_ratio(),
        "achieved_rate": r.achieved_rate(),
        "latency_ms": latency_json(&r.histogram),
        "latency_samples": r.histogram.len(),
        "latency_ok_ms": latency_json(&r.ok_histogram),
        "verify_enabled": r.verify_enabled,
        "verified": r.verified,
        "verify_failures": r.verify_failures,
        "payloads_per_request": r.payloads_per_request,
        "signatures": r.signatures,
        "signatures_per_s": rate(r.signatures, r.duration_s),
        "batch": (r.batch_signatures > 0).then(|| json!({
            "signatures": r.batch_signatures,
            "trees": r.batch_trees,
            "mean_tree_size": r.batch_signatures as f64 / r.batch_trees.max(1e-9),
            "hsm_calls_per_s": r.batch_trees / r.duration_s.max(1e-9),
        })),
        "intervals": r.intervals.iter().map(interval_json).collect::<Vec<_>>(),
    })
}

/// Fields of the best step copied to the top level of [`steps_json`].
const BEST_STEP_FIELDS: [&str; 9] = [
    "mode",
    "offered_rate",
    "concurrency",
    "achieved_rate",
    "ok",
    "errors",
    "latency_ms",
    "verify_failures",
    "duration_s",
];

/// Index of the step whose load (offered rate, or achieved rate in closed loop) is nearest `best`.
fn best_step_index(steps: &[RunResult], best: f64) -> Option<usize> {
    let distance = |s: &RunResult| {
        let load = s.offered_rate.unwrap_or_else(|| s.achieved_rate());
        let d = (load - best).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            d
        }
    };
    (0..steps.len()).min_by(|&a, &b| distance(&steps[a]).total_cmp(&distance(&steps[b])))
}

/// The `--json` document of a stepped run or `find-max`.
///
/// `{ "steps": [to_json(step)...], "max_passing_rate": best, "slo_p95_ms": slo, "best_step":
/// index, ... }` plus top-level copies of the best step's `mode`, `offered_rate`, `concurrency`,
/// `achieved_rate`, `ok`, `errors`, `latency_ms`, `verify_failures` and `duration_s`, so readers of
/// a single run's JSON can read it too. The best step is the one whose offered rate (achieved
/// rate in closed loop) is nearest `best`. When `best` is `None` (no step passed) `best_step` is
/// null and the copied fields are null, except `errors`, which is an empty object.
pub fn steps_json(steps: &[RunResult], best: Option<f64>, slo_p95_ms: Option<f64>) -> Value {
    let step_values: Vec<Value> = steps.iter().map(to_json).collect();
    let best_index = best.and_then(|b| best_step_index(steps, b));
    let mut m = Map::new();
    m.insert("max_passing_rate".to_owned(), json!(best));
    m.insert("slo_p95_ms".to_owned(), json!(slo_p95_ms));
    m.insert("best_step".to_owned(), json!(best_index));
    for field in BEST_STEP_FIELDS {
        let v = match best_index.and_then(|i| step_values[i].get(field)) {
            Some(v) => v.clone(),
            None if field == "errors" => json!({}),
            None => Value::Null,
        };
        m.insert(field.to_owned(), v);
    }
    m.insert("steps".to_owned(), Value::Array(step_values));
    Value::Object(m)
}

/// Writes `value` as pretty-printed JSON (with a final newline) to `path`.
///
/// Errors name the path.
pub fn write_json(value: &Value, path: &Path) -> io::Result<()> {
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let file = File::create(path).map_err(with_path)?;
    let mut w = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut w, value).map_err(|e| with_path(e.into()))?;
    w.write_all(b"\n").map_err(with_path)?;
    w.flush().map_err(with_path)
}

/// Errors writing reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Creating or writing a file failed.
    #[error("writing {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Drawing a chart failed.
    #[error("plotting {}: {message}", path.display())]
    Plot {
        /// The chart file concerned.
        path: PathBuf,
        /// What plotters reported.
        message: String,
    },
    /// Serializing a histogram for an interval log failed.
    #[error("serializing a histogram for {}: {source}", path.display())]
    Hdr {
        /// The log file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: V2DeflateSerializeError,
    },
}

impl ReportError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Legend line of the HdrHistogram interval log format, written after the header comments.
const HDR_LOG_LEGEND: &[u8] =
    b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n";

/// An `io::Write` that inserts the legend line before the first line that is not a `#` header.
struct LegendWriter<W: Write> {
    inner: W,
    at_line_start: bool,
    legend_written: bool,
}

impl<W: Write> LegendWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            at_line_start: true,
            legend_written: false,
        }
    }

    fn ensure_legend(&mut self) -> io::Result<()> {
        if !self.legend_written {
            self.legend_written = true;
            self.inner.write_all(HDR_LOG_LEGEND)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.ensure_legend()?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for LegendWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for piece in buf.split_inclusive(|&b| b == b'\n') {
            if self.at_line_start && !self.legend_written && piece.first() != Some(&b'#') {
                self.ensure_legend()?;
            }
            self.inner.write_all(piece)?;
            self.at_line_start = piece.last() == Some(&b'\n');
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::ZERO)
}

/// Writes the run's intervals as an HdrHistogram interval log (the text format read by
/// `HistogramLogProcessor`, HdrHistogramVisualizer and `IntervalLogIterator`).
///
/// Headers: a `#[Logged with ...]` comment, `#[Histogram log format version 1.3]`,
/// `#[StartTime: ...]` and `#[BaseTime: ...]` (both the start of the measured window, taken as
/// the time of writing minus `duration_s`, since runs are reported as soon as they end), then the
/// CSV legend and one V2-deflate line per interval with timestamps relative to BaseTime.
/// Histograms hold microseconds; `Interval_Max` is divided by 1000, i.e. in milliseconds.
pub fn write_hdr_log(r: &RunResult, path: &Path) -> Result<(), ReportError> {
    let start = SystemTime::now()
        .checked_sub(secs(r.duration_s))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let file = File::create(path).map_err(|e| ReportError::io(path, e))?;
    let mut out = LegendWriter::new(BufWriter::new(file));
    let mut serializer = V2DeflateSerializer::new();
    {
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment(&format!(
                "[Logged with certnode-loadgen {}]",
                env!("CARGO_PKG_VERSION")
            ))
            .add_comment("[Histogram log format version 1.3]")
            .add_comment(&format!(
                "[{}; values in microseconds, Interval_Max in milliseconds]",
                r.describe().replace('\n', " ")
            ))
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1000.0)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(|e| ReportError::io(path, e))?;
        for i in &r.intervals {
            log.write_histogram(&i.hist, secs(i.start_s), secs(i.length_s), None)
                .map_err(|e| match e {
                    IntervalLogWriterError::IoError(e) => ReportError::io(path, e),
                    IntervalLogWriterError::SerializeError(source) => ReportError::Hdr {
                        path: path.to_owned(),
                        source,
                    },
                })?;
        }
    }
    let mut buffered = out.finish().map_err(|e| ReportError::io(path, e))?;
    buffered.flush().map_err(|e| ReportError::io(path, e))?;
    buffered
        .into_inner()
        .map_err(|e| ReportError::io(path, e.into_error()))?
        .sync_all()
        .map_err(|e| ReportError::io(path, e))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;

    /// Asserts `actual` is within histogram precision (0.1 % + 1 µs) of `expected_ms`.
    pub(crate) fn assert_close(actual: f64, expected_ms: f64) {
        let tolerance = expected_ms * 0.001 + 0.001;
        assert!(
            (actual - expected_ms).abs() <= tolerance,
            "{actual} is not within {tolerance} of {expected_ms}"
        );
    }

    /// A 10 s open-loop run at 100 req/s: interval `i` (0-based) holds 100 latencies,
    /// 1..=100 ms plus `i` ms; 10 errors in total (6 overloaded, 4 timeout).
    pub(crate) fn synthetic() -> RunResult {
        let mut histogram = new_histogram();
        let mut intervals = Vec::new();
        for i in 0..10u64 {
            let mut iv = Interval {
                start_s: i as f64,
                length_s: 1.0,
                hist: new_histogram(),
                ok: 0,
                errors: 0,
                offered: 0,
            };
            for ms in 1..=100u64 {
                record(&mut iv.hist, (ms + i) * 1000);
                record(&mut histogram, (ms + i) * 1000);
            }
            iv.ok = 99;
            iv.errors = 1;
            iv.offered = 100;
            intervals.push(iv);
        }
        let mut errors = BTreeMap::new();
        errors.insert("overloaded".to_owned(), 6);
        errors.insert("timeout".to_owned(), 4);
        RunResult {
            mode: "open-loop".to_owned(),
            offered_rate: Some(100.0),
            concurrency: None,
            connections: 4,
            coalesce: 1,
            key: "bench-p256".to_owned(),
            scheme: "ecdsa-p256-sha256".to_owned(),
            duration_s: 10.0,
            warmup_s: 2.0,
            sent: 1000,
            ok: 990,
            errors,
            ok_histogram: {
                let mut ok = new_histogram();
                record(&mut ok, 7_000);
                ok
            },
            histogram,
            intervals,
            verified: 990,
            verify_failures: 0,
            verify_enabled: true,
            batch_signatures: 0,
            batch_trees: 0.0,
            payloads_per_request: 1,
            signatures: 0,
        }
    }

    /// A run in which nothing happened: no intervals, empty histogram, zero duration.
    pub(crate) fn empty() -> RunResult {
        RunResult {
            mode: "closed-loop".to_owned(),
            offered_rate: None,
            concurrency: Some(8),
            connections: 1,
            coalesce: 8,
            key: "k".to_owned(),
            scheme: "ed25519".to_owned(),
            duration_s: 0.0,
            warmup_s: 0.0,
            sent: 0,
            ok: 0,
            errors: BTreeMap::new(),
            histogram: new_histogram(),
            ok_histogram: new_histogram(),
            intervals: Vec::new(),
            verified: 0,
            verify_failures: 0,
            verify_enabled: false,
            batch_signatures: 0,
            batch_trees: 0.0,
            payloads_per_request: 1,
            signatures: 0,
        }
    }

    /// Expected percentile of the synthetic histogram: the nearest-rank value of the sorted
    /// 1000 samples (the rank computed in integers: ceil(p * n / 100)).
    fn expected_percentile_ms(p: f64) -> f64 {
        let mut all: Vec<u64> = (0..10)
            .flat_map(|i| (1..=100).map(move |ms| ms + i))
            .collect();
        all.sort_unstable();
        let p_tenths = (p * 10.0).round() as usize;
        let rank = (p_tenths * all.len()).div_ceil(1000).max(1);
        all[rank - 1] as f64
    }

    #[test]
    fn percentiles_use_nearest_rank_without_float_overrun() {
        let mut h = new_histogram();
        for ms in 1..=1000u64 {
            record(&mut h, ms * 1000);
        }
        // 99.9 / 100 is 0.9990000000000001 in floating point; the rank must still be 999.
        assert_close(histogram_percentile_ms(&h, 99.9), 999.0);
        assert_close(histogram_percentile_ms(&h, 99.0), 990.0);
        assert_close(histogram_percentile_ms(&h, 50.0), 500.0);
        assert_close(histogram_percentile_ms(&h, 100.0), 1000.0);
        assert_close(histogram_percentile_ms(&h, 250.0), 1000.0);
        assert_close(histogram_percentile_ms(&h, -5.0), 1.0);
    }

    #[test]
    fn histogram_bounds_and_clamping() {
        let mut h = new_histogram();
        assert_eq!(h.low(), 1);
        assert!(h.high() >= 60_000_000);
        assert_eq!(h.sigfig(), 3);
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        record(&mut h, 120_000_000);
        assert_eq!(h.len(), 3);
        // Clamped to 60 s (reported as the top of its bucket, within 0.1 %).
        assert!((60_000_000..60_060_000).contains(&h.max()), "{}", h.max());
        assert_eq!(h.count_at(60_000_000), 2);
        assert_eq!(h.min(), 1);
    }

    #[test]
    fn percentiles_and_rates() {
        let r = synthetic();
        for p in [50.0, 90.0, 95.0, 99.0, 99.9] {
            assert_close(r.percentile_ms(p), expected_percentile_ms(p));
        }
        assert_close(r.max_ms(), 109.0);
        assert_close(r.percentile_ms(100.0), 109.0);
        assert_close(r.percentile_ms(0.0), 1.0);
        assert!((r.achieved_rate() - 99.0).abs() < 1e-9);
        assert_eq!(r.error_count(), 10);
        assert!((r.error_ratio() - 10.0 / 1000.0).abs() < 1e-12);
        let iv = &r.intervals[3];
        assert!((iv.achieved_rate() - 99.0).abs() < 1e-9);
        assert_close(iv.percentile_ms(50.0), 53.0);
        assert_close(iv.max_ms(), 103.0);
    }

    #[test]
    fn empty_run_is_all_zero() {
        let r = empty();
        assert_eq!(r.percentile_ms(99.0), 0.0);
        assert_eq!(r.max_ms(), 0.0);
        assert_eq!(r.achieved_rate(), 0.0);
        assert_eq!(r.error_ratio(), 0.0);
        assert_eq!(r.percentile_ms(f64::NAN), 0.0);
        assert!(r.is_closed_loop());
        assert_eq!(r.describe(), "closed-loop concurrency 8, key k (ed25519)");
    }

    #[test]
    fn json_has_contract_fields() {
        let r = synthetic();
        let v = to_json(&r);
        assert_eq!(v["offered_rate"], json!(100.0));
        assert!((v["achieved_rate"].as_f64().unwrap() - 99.0).abs() < 1e-9);
        assert_eq!(v["duration_s"], json!(10.0));
        assert_eq!(v["ok"], json!(990));
        assert_eq!(v["errors"], json!({"overloaded": 6, "timeout": 4}));
        assert_eq!(v["verify_failures"], json!(0));
        let lat = &v["latency_ms"];
        for (key, p) in [
            ("p50", 50.0),
            ("p90", 90.0),
            ("p95", 95.0),
            ("p99", 99.0),
            ("p999", 99.9),
        ] {
            assert_close(lat[key].as_f64().unwrap(), expected_percentile_ms(p));
        }
        assert_close(lat["max"].as_f64().unwrap(), 109.0);
        assert_close(lat["mean"].as_f64().unwrap(), 55.0);
        // The OK-only histogram is reported separately (one sample of 7 ms here).
        assert_close(v["latency_ok_ms"]["p95"].as_f64().unwrap(), 7.0);
        assert_close(v["latency_ok_ms"]["max"].as_f64().unwrap(), 7.0);
        assert!(
            summary_table(&r).contains("ok only p50/p95/p99"),
            "a run with errors shows the OK-only latency"
        );
        assert!(!summary_table(&empty()).contains("ok only"));
        assert_eq!(v["mode"], json!("open-loop"));
        assert_eq!(v["concurrency"], Value::Null);
        assert_eq!(v["connections"], json!(4));
        assert_eq!(v["key"], json!("bench-p256"));
        assert_eq!(v["scheme"], json!("ecdsa-p256-sha256"));
        assert_eq!(v["warmup_s"], json!(2.0));
        assert_eq!(v["sent"], json!(1000));
        assert!((v["error_ratio"].as_f64().unwrap() - 0.01).abs() < 1e-12);
        assert_eq!(v["verified"], json!(990));
        assert_eq!(v["verify_enabled"], json!(true));
        let intervals = v["intervals"].as_array().unwrap();
        assert_eq!(intervals.len(), 10);
        let i7 = &intervals[7];
        assert_eq!(i7["start_s"], json!(7.0));
        assert_eq!(i7["ok"], json!(99));
        assert_eq!(i7["errors"], json!(1));
        assert_eq!(i7["offered"], json!(100));
        assert_close(i7["p50_ms"].as_f64().unwrap(), 57.0);
        assert_close(i7["p95_ms"].as_f64().unwrap(), 102.0);
        assert_close(i7["p99_ms"].as_f64().unwrap(), 106.0);
        assert_close(i7["max_ms"].as_f64().unwrap(), 107.0);
    }

    #[test]
    fn json_of_closed_loop_and_empty_run() {
        let v = to_json(&empty());
        assert_eq!(v["offered_rate"], Value::Null);
        assert_eq!(v["concurrency"], json!(8));
        assert_eq!(v["achieved_rate"], json!(0.0));
        assert_eq!(v["errors"], json!({}));
        assert_eq!(v["latency_ms"]["p95"], json!(0.0));
        assert_eq!(v["latency_ms"]["max"], json!(0.0));
        assert_eq!(v["intervals"], json!([]));
        assert_eq!(v["verify_enabled"], json!(false));
    }

    #[test]
    fn table_contains_the_numbers() {
        let r = synthetic();
        let t = summary_table(&r);
        for needle in [
            "open-loop",
            "bench-p256 (ecdsa-p256-sha256)",
            "100.0 req/s",
            "99.0 req/s",
            "10.00 s (warm-up 2.00 s excluded)",
            "1000",
            "990",
            "(1.00% of answered)",
            "overloaded",
            "timeout",
            "990 verified, 0 failed",
            "from scheduled send time",
        ] {
            assert!(t.contains(needle), "table lacks {needle:?}:\n{t}");
        }
        let line = |label: &str| {
            t.lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap_or_else(|| panic!("no {label} line in\n{t}"))
                .to_owned()
        };
        assert!(line("p95 ").ends_with(&format!("{:.2}", r.percentile_ms(95.0))));
        assert!(line("p99.9").ends_with(&format!("{:.2}", r.percentile_ms(99.9))));
        assert!(line("max").ends_with(&format!("{:.2}", r.max_ms())));
        assert_close(r.max_ms(), 109.0);
        assert!(line("overloaded").ends_with(" 6"));
        assert!(line("timeout").ends_with(" 4"));
        // Values of the latency block share one right edge.
        let widths: Vec<usize> = ["p50", "p90", "p95 ", "p99 ", "p99.9", "max"]
            .iter()
            .map(|l| line(l).len())
            .collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{widths:?}\n{t}");
    }

    #[test]
    fn table_of_closed_loop_run_warns_and_skips_verification() {
        let t = summary_table(&empty());
        assert!(t.contains("closed loop"), "{t}");
        assert!(t.contains("concurrency"), "{t}");
        assert!(t.contains("not a latency figure to quote"), "{t}");
        assert!(!t.contains("verification"), "{t}");
        assert!(!t.contains("errors by status"), "{t}");
    }

    #[test]
    fn progress_line_is_one_compact_line() {
        let l = progress_line(12.04, 998.66, 12.345, 3, "measure");
        assert!(!l.contains('\n'));
        assert!(l.starts_with("measure"), "{l}");
        for needle in ["12.0s", "998.7 req/s", "p95    12.35 ms", "errors 3"] {
            assert!(l.contains(needle), "{l:?} lacks {needle:?}");
        }
        assert!(l.len() < 80, "{l}");
    }

    fn step(rate: f64, p95_ms: u64) -> RunResult {
        let mut r = synthetic();
        r.offered_rate = Some(rate);
        r.ok = (rate * r.duration_s) as u64;
        r.histogram = new_histogram();
        for _ in 0..100 {
            record(&mut r.histogram, p95_ms * 1000);
        }
        r
    }

    #[test]
    fn steps_json_reports_the_best_step() {
        let steps = vec![step(100.0, 5), step(200.0, 20), step(400.0, 300)];
        let v = steps_json(&steps, Some(200.0), Some(100.0));
        assert_eq!(v["max_passing_rate"], json!(200.0));
        assert_eq!(v["slo_p95_ms"], json!(100.0));
        assert_eq!(v["best_step"], json!(1));
        assert_eq!(v["offered_rate"], json!(200.0));
        assert!((v["achieved_rate"].as_f64().unwrap() - 200.0).abs() < 1e-9);
        assert_eq!(v["ok"], json!(2000));
        assert_close(v["latency_ms"]["p95"].as_f64().unwrap(), 20.0);
        assert_eq!(v["errors"], json!({"overloaded": 6, "timeout": 4}));
        assert_eq!(v["verify_failures"], json!(0));
        assert_eq!(v["duration_s"], json!(10.0));
        let arr = v["steps"].as_array().unwrap();
        assert_eq!(arr.len(), 3);
        assert_eq!(arr[2]["offered_rate"], json!(400.0));
        assert_close(arr[2]["latency_ms"]["p95"].as_f64().unwrap(), 300.0);
    }

    #[test]
    fn steps_json_without_a_passing_step() {
        let steps = vec![step(100.0, 500)];
        let v = steps_json(&steps, None, Some(100.0));
        assert_eq!(v["max_passing_rate"], Value::Null);
        assert_eq!(v["best_step"], Value::Null);
        assert_eq!(v["achieved_rate"], Value::Null);
        assert_eq!(v["errors"], json!({}));
        assert_eq!(v["steps"].as_array().unwrap().len(), 1);
        let none = steps_json(&[], Some(10.0), None);
        assert_eq!(none["best_step"], Value::Null);
        assert_eq!(none["slo_p95_ms"], Value::Null);
        assert_eq!(none["steps"], json!([]));
    }

    #[test]
    fn write_json_round_trips_and_names_path_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        let v = to_json(&synthetic());
        write_json(&v, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"));
        assert!(
            text.contains("\n  \"achieved_rate\""),
            "not pretty:\n{text}"
        );
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
        let bad = dir.path().join("missing-dir").join("out.json");
        let err = write_json(&v, &bad).unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }

    #[test]
    fn hdr_log_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.hlog");
        let r = synthetic();
        write_hdr_log(&r, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("#[Logged with certnode-loadgen"),
            "{text}"
        );
        assert!(
            lines.contains(&"#[Histogram log format version 1.3]"),
            "{text}"
        );
        let legend = lines
            .iter()
            .position(|l| l.starts_with("\"StartTimestamp\",\"Interval_Length\""))
            .unwrap();
        let start_time = lines
            .iter()
            .position(|l| l.starts_with("#[StartTime: "))
            .unwrap();
        assert!(start_time < legend);
        assert!(lines[legend + 1..].iter().all(|l| !l.starts_with('#')));
        assert_eq!(lines.len() - legend - 1, r.intervals.len());

        let mut deserializer = Deserializer::new();
        let mut seen = 0;
        for entry in IntervalLogIterator::new(&bytes) {
            let LogEntry::Interval(ih) = entry.unwrap() else {
                continue;
            };
            let original = &r.intervals[seen];
            assert_eq!(ih.start_timestamp(), secs(original.start_s));
            assert_eq!(ih.duration(), secs(original.length_s));
            // Interval_Max is in milliseconds.
            assert!((ih.max() - original.hist.max() as f64 / 1000.0).abs() < 0.001);
            let decoded = base64_decode(ih.encoded_histogram());
            let h: Histogram<u64> = deserializer.deserialize(&mut &decoded[..]).unwrap();
            assert_eq!(h.len(), original.hist.len());
            assert_eq!(h.max(), original.hist.max());
            assert_eq!(
                h.value_at_quantile(0.95),
                original.hist.value_at_quantile(0.95)
            );
            seen += 1;
        }
        assert_eq!(seen, r.intervals.len());
    }

    #[test]
    fn hdr_log_of_empty_run_has_headers_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.hlog");
        write_hdr_log(&empty(), &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"StartTimestamp\""), "{text}");
        let intervals = IntervalLogIterator::new(text.as_bytes())
            .filter(|e| matches!(e, Ok(LogEntry::Interval(_))))
            .count();
        assert_eq!(intervals, 0);
        let err = write_hdr_log(&empty(), &dir.path().join("no").join("x.hlog")).unwrap_err();
        assert!(matches!(err, ReportError::Io { .. }));
        assert!(err.to_string().contains("x.hlog"), "{err}");
    }

    /// Minimal standard base64 decoder, so the test needs no extra dependency.
    fn base64_decode(s: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let mut acc = 0u32;
        let mut bits = 0;
        for c in s.bytes().filter(|&c| c != b'=') {
            let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }
}
