//! SVG charts of load runs: latency and throughput over time, the latency percentile
//! distribution, and the rate/latency curve of a stepped run or `find-max`.
//!
//! Charts are rendered into memory and then written, so drawing and file errors are reported
//! apart, both naming the file.

use std::error::Error;
use std::fmt::Display;
use std::ops::Range;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{histogram_max_ms, histogram_percentile_ms, ReportError, RunResult};

/// Size of every chart, in pixels.
const SIZE: (u32, u32) = (1200, 800);
const FONT: &str = "sans-serif";
const ORANGE: RGBColor = RGBColor(230, 120, 0);
const GREY: RGBColor = RGBColor(120, 120, 120);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type DrawResult = Result<(), Box<dyn Error + Send + Sync>>;
/// A named, colored line of (x, y) points.
type Series = (&'static str, RGBColor, Vec<(f64, f64)>);

/// Writes the charts of one run into `dir` (created if missing) and returns their paths:
///
/// 1. `{prefix}-latency-over-time.svg`: p50, p90, p99 and max latency per interval (ms, log
///    scale) against time, above offered, achieved and error rates per interval;
/// 2. `{prefix}-percentiles.svg`: the latency percentile distribution of the whole window, on the
///    HdrHistogram `1/(1-p)` axis (ticks at 50 %, 90 %, 99 %, 99.9 %, 99.99 % ...).
///
/// A run without intervals or samples still gets both files, saying "no data".
pub fn write_plots(r: &RunResult, dir: &Path, prefix: &str) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;
    let over_time = dir.join(format!("{prefix}-latency-over-time.svg"));
    let title = format!("Latency over time: {}", r.describe());
    render(&over_time, |root| draw_over_time(root, r, &title))?;
    let percentiles = dir.join(format!("{prefix}-percentiles.svg"));
    let title = format!("Latency by percentile: {}", r.describe());
    render(&percentiles, |root| {
        draw_percentiles(root, &r.histogram, &title)
    })?;
    Ok(vec![over_time, percentiles])
}

/// Writes the chart of a stepped run or `find-max` to `path`: achieved against offered rate
/// (the dashed diagonal is "achieved = offered") above p95 and p99 latency (ms, log scale)
/// against offered rate, with the p95 SLO as a horizontal line when given. Closed-loop steps
/// (no offered rate) are placed by concurrency instead. No steps gives a "no data" chart.
pub fn write_steps_plot(
    steps: &[RunResult],
    path: &Path,
    slo_p95_ms: Option<f64>,
) -> Result<(), ReportError> {
    render(path, |root| draw_steps(root, steps, slo_p95_ms))
}

/// Renders a chart into memory with `draw`, then writes it to `path`.
fn render(path: &Path, draw: impl FnOnce(&Area<'_>) -> DrawResult) -> Result<(), ReportError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(&root)
            .and_then(|()| root.present().map_err(Into::into))
            .map_err(|e| plot_error(path, e))?;
    }
    std::fs::write(path, svg).map_err(|e| ReportError::io(path, e))
}

fn plot_error(path: &Path, e: impl Display) -> ReportError {
    ReportError::Plot {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Fills `area` with a white background and a centered `message`.
fn no_data(area: &Area<'_>, message: &str) -> DrawResult {
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from((FONT, 28).into_font()).color(&GREY).pos(
        plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ),
    );
    area.draw_text(message, &style, (w as i32 / 2, h as i32 / 2))?;
    Ok(())
}

/// Replaces values that would break an axis (NaN, infinities) by 0.
fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// A linear axis range from 0 that holds every value, with some headroom.
fn linear_range(values: impl IntoIterator<Item = f64>) -> Range<f64> {
    let max = values.into_iter().map(finite).fold(0.0_f64, f64::max);
    if max > 0.0 {
        0.0..max * 1.1
    } else {
        0.0..1.0
    }
}

/// A log axis range holding every positive value, or `None` when there is none.
fn log_range(values: impl IntoIterator<Item = f64>) -> Option<Range<f64>> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(None, |acc: Option<(f64, f64)>, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })?;
    Some(lo / 1.5..hi * 1.5)
}

/// Tick values for a log axis over `range`: 1-2-5 per decade, or 1..9 per decade when that
/// would give fewer than three ticks.
fn log_ticks(range: &Range<f64>) -> Vec<f64> {
    let in_range = |mantissas: &[f64]| -> Vec<f64> {
        if !(range.start > 0.0 && range.end > range.start && range.end.is_finite()) {
            return Vec::new();
        }
        let mut ticks = Vec::new();
        let mut decade = 10f64.powf(range.start.log10().floor());
        while decade <= range.end {
            for m in mantissas {
                let v = decade * m;
                if v >= range.start && v <= range.end {
                    ticks.push(v);
                }
            }
            decade *= 10.0;
        }
        ticks
    };
    let coarse = in_range(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 3 {
        coarse
    } else {
        in_range(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])
    }
}

/// The x range of a time axis holding `end` seconds.
fn time_range(end: f64) -> Range<f64> {
    let end = finite(end);
    0.0..if end > 0.0 { end } else { 1.0 }
}

/// Formats an axis value with as few decimals as its size needs.
fn fmt_axis(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        trim_zeros(format!("{v:.1}"))
    } else if a >= 0.01 {
        trim_zeros(format!("{v:.3}"))
    } else {
        format!("{v:.1e}")
    }
}

fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

fn legend_line(color: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
}

fn draw_over_time(root: &Area<'_>, r: &RunResult, title: &str) -> DrawResult {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22))?;
    if r.intervals.is_empty() {
        return no_data(&root, "no data");
    }
    let (_, height) = root.dim_in_pixel();
    let (upper, lower) = root.split_vertically(height * 62 / 100);
    let end = r
        .intervals
        .iter()
        .map(|i| finite(i.start_s) + finite(i.length_s))
        .fold(0.0_f64, f64::max);
    let mid = |i: &crate::report::Interval| finite(i.start_s) + finite(i.length_s) / 2.0;

    // Latency percentiles per interval, on a log scale; intervals without answers are skipped.
    let answered: Vec<_> = r.intervals.iter().filter(|i| !i.hist.is_empty()).collect();
    let series: [Series; 4] = [
        (
            "p50",
            BLUE,
            answered
                .iter()
                .map(|i| (mid(i), i.percentile_ms(50.0)))
                .collect(),
        ),
        (
            "p90",
            GREEN,
            answered
                .iter()
                .map(|i| (mid(i), i.percentile_ms(90.0)))
                .collect(),
        ),
        (
            "p99",
            ORANGE,
            answered
                .iter()
                .map(|i| (mid(i), i.percentile_ms(99.0)))
                .collect(),
        ),
        (
            "max",
            RED,
            answered.iter().map(|i| (mid(i), i.max_ms())).collect(),
        ),
    ];
    match log_range(
        series
            .iter()
            .flat_map(|(_, _, pts)| pts.iter().map(|p| p.1)),
    ) {
        None => {
            upper.fill(&WHITE)?;
            no_data(&upper, "no latency data (nothing answered)")?;
        }
        Some(y) => {
            let mut chart = ChartBuilder::on(&upper)
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(
                    time_range(end),
                    y.clone().log_scale().with_key_points(log_ticks(&y)),
                )?;
            chart
                .configure_mesh()
                .x_desc("time (s)")
                .y_desc("latency (ms, log scale)")
                .x_label_formatter(&|v| fmt_axis(*v))
                .y_label_formatter(&|v| fmt_axis(*v))
                .draw()?;
            for (name, color, points) in series {
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(2),
                    ))?
                    .label(name)
                    .legend(legend_line(color));
                chart.draw_series(points.iter().map(|p| Circle::new(*p, 2, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
        }
    }

    // Rates per interval.
    let per_s = |n: u64, i: &crate::report::Interval| {
        if i.length_s > 0.0 {
            finite(n as f64 / i.length_s)
        } else {
            0.0
        }
    };
    let offered: Vec<(f64, f64)> = r
        .intervals
        .iter()
        .map(|i| (mid(i), per_s(i.offered, i)))
        .collect();
    let rates: [Series; 2] = [
        (
            "ok/s",
            BLUE,
            r.intervals
                .iter()
                .map(|i| (mid(i), per_s(i.ok, i)))
                .collect(),
        ),
        (
            "errors/s",
            RED,
            r.intervals
                .iter()
                .map(|i| (mid(i), per_s(i.errors, i)))
                .collect(),
        ),
    ];
    let y = linear_range(
        rates
            .iter()
            .flat_map(|(_, _, pts)| pts.iter().map(|p| p.1))
            .chain(offered.iter().map(|p| p.1)),
    );
    let mut chart = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(time_range(end), y)?;
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("requests/s")
        .x_label_formatter(&|v| fmt_axis(*v))
        .y_label_formatter(&|v| fmt_axis(*v))
        .draw()?;
    for (name, color, points) in rates {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(legend_line(color));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 2, color.filled())))?;
    }
    // Offered last and dashed, so it stays visible where it equals the achieved rate.
    if r.intervals.iter().any(|i| i.offered > 0) {
        chart
            .draw_series(DashedLineSeries::new(offered, 8, 6, BLACK.stroke_width(1)))?
            .label("offered/s")
            .legend(legend_line(BLACK));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Label of a point on the `1/(1-p)` axis: 2 → "50%", 10 → "90%", 1000 → "99.9%".
fn percentile_label(x: f64) -> String {
    if !(x.is_finite() && x >= 1.0) {
        return String::new();
    }
    let p = 100.0 * (1.0 - 1.0 / x);
    let decimals = (x.log10().round() as i64 - 2).clamp(0, 12) as usize;
    format!("{p:.decimals$}%")
}

fn draw_percentiles(root: &Area<'_>, h: &Histogram<u64>, title: &str) -> DrawResult {
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22))?;
    if h.is_empty() {
        return no_data(&root, "no data");
    }
    // Show percentiles down to one sample in the tail, and at least up to 99.99 %.
    let decades = (h.len() as f64).log10().ceil().clamp(4.0, 7.0) as i32;
    let x_max = 10f64.powi(decades);
    let mut ticks = vec![1.0, 2.0];
    ticks.extend((1..=decades).map(|k| 10f64.powi(k)));

    const STEPS: i32 = 400;
    let points: Vec<(f64, f64)> = (0..=STEPS)
        .map(|n| {
            let x = x_max.powf(f64::from(n) / f64::from(STEPS));
            let y = if n == STEPS {
                histogram_max_ms(h)
            } else {
                h.value_at_quantile(1.0 - 1.0 / x) as f64 / 1000.0
            };
            (x, y)
        })
        .collect();
    let q_ms = |p: f64| histogram_percentile_ms(h, p);
    let label = format!(
        "latency: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms ({} samples)",
        q_ms(50.0),
        q_ms(99.0),
        q_ms(99.9),
        histogram_max_ms(h),
        h.len()
    );

    let mut chart = ChartBuilder::on(&root)
        .margin(15)
        .margin_right(45)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (1.0..x_max).log_scale().with_key_points(ticks),
            linear_range(points.iter().map(|p| p.1)),
        )?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|v| percentile_label(*v))
        .y_label_formatter(&|v| fmt_axis(*v))
        .draw()?;
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?
        .label(label)
        .legend(legend_line(BLUE));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn draw_steps(root: &Area<'_>, steps: &[RunResult], slo_p95_ms: Option<f64>) -> DrawResult {
    root.fill(&WHITE)?;
    let title = match steps.first() {
        Some(s) => format!("Rate steps: {}, key {} ({})", s.mode, s.key, s.scheme),
        None => "Rate steps".to_owned(),
    };
    let root = root.titled(&title, (FONT, 22))?;
    if steps.is_empty() {
        return no_data(&root, "no data");
    }
    // x: offered rate when every step has one, else concurrency when every step has one, else
    // the step number.
    let (x_desc, xs): (&str, Vec<f64>) = if steps.iter().all(|s| s.offered_rate.is_some()) {
        let xs = steps
            .iter()
            .map(|s| finite(s.offered_rate.unwrap_or(0.0)))
            .collect();
        ("offered rate (requests/s)", xs)
    } else if steps.iter().all(|s| s.concurrency.is_some()) {
        let xs = steps
            .iter()
            .map(|s| s.concurrency.unwrap_or(0) as f64)
            .collect();
        ("concurrency", xs)
    } else {
        ("step", (1..=steps.len()).map(|n| n as f64).collect())
    };
    let by_rate = x_desc.starts_with("offered");
    let sorted = |ys: Vec<f64>| -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> = xs.iter().copied().zip(ys).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    };
    let x_range = {
        let max = xs.iter().copied().fold(0.0_f64, f64::max);
        0.0..if max > 0.0 { max * 1.05 } else { 1.0 }
    };
    let (_, height) = root.dim_in_pixel();
    let (upper, lower) = root.split_vertically(height / 2);

    // Achieved against offered.
    let achieved = sorted(steps.iter().map(|s| finite(s.achieved_rate())).collect());
    let y = linear_range(
        achieved
            .iter()
            .map(|p| p.1)
            .chain(by_rate.then_some(x_range.end)),
    );
    let mut chart = ChartBuilder::on(&upper)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range.clone(), y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("achieved rate (requests/s)")
        .x_label_formatter(&|v| fmt_axis(*v))
        .y_label_formatter(&|v| fmt_axis(*v))
        .draw()?;
    if by_rate {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (x_range.end, x_range.end)],
                8,
                6,
                GREY.into(),
            ))?
            .label("achieved = offered")
            .legend(legend_line(GREY));
    }
    chart
        .draw_series(LineSeries::new(
            achieved.iter().copied(),
            BLUE.stroke_width(2),
        ))?
        .label("achieved")
        .legend(legend_line(BLUE));
    chart.draw_series(achieved.iter().map(|p| Circle::new(*p, 3, BLUE.filled())))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;

    // Latency against offered, with the SLO.
    let answered: Vec<(f64, &RunResult)> = xs
        .iter()
        .copied()
        .zip(steps)
        .filter(|(_, s)| !s.histogram.is_empty())
        .collect();
    let latency = |p: f64| -> Vec<(f64, f64)> {
        let mut pts: Vec<(f64, f64)> = answered
            .iter()
            .map(|(x, s)| (*x, s.percentile_ms(p)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        pts
    };
    let series: [Series; 2] = [("p95", ORANGE, latency(95.0)), ("p99", RED, latency(99.0))];
    let slo = slo_p95_ms.filter(|v| v.is_finite() && *v > 0.0);
    let y = log_range(
        series
            .iter()
            .flat_map(|(_, _, pts)| pts.iter().map(|p| p.1))
            .chain(slo),
    );
    let Some(y) = y else {
        lower.fill(&WHITE)?;
        return no_data(&lower, "no latency data (nothing answered)");
    };
    let mut chart = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(
            x_range.clone(),
            y.clone().log_scale().with_key_points(log_ticks(&y)),
        )?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|v| fmt_axis(*v))
        .y_label_formatter(&|v| fmt_axis(*v))
        .draw()?;
    if let Some(slo) = slo {
        chart
            .draw_series(DashedLineSeries::new(
                [(x_range.start, slo), (x_range.end, slo)],
                10,
                6,
                BLACK.stroke_width(2),
            ))?
            .label(format!("SLO p95 {} ms", fmt_axis(slo)))
            .legend(legend_line(BLACK));
    }
    for (name, color, points) in series {
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(legend_line(color));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::report::tests::{empty, synthetic};
    use crate::report::{new_histogram, record};

    fn assert_svg(path: &Path, must_contain: &[&str]) {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.starts_with("<svg") || text.starts_with("<?xml"),
            "{} does not start like SVG: {:?}",
            path.display(),
            &text[..text.len().min(80)]
        );
        assert!(
            text.trim_end().ends_with("</svg>"),
            "{} is truncated",
            path.display()
        );
        for needle in must_contain {
            assert!(text.contains(needle), "{} lacks {needle:?}", path.display());
        }
    }

    #[test]
    fn plots_of_a_normal_run() {
        let dir = tempfile::tempdir().unwrap();
        let r = synthetic();
        let paths = write_plots(&r, dir.path(), "run").unwrap();
        assert_eq!(
            paths,
            vec![
                dir.path().join("run-latency-over-time.svg"),
                dir.path().join("run-percentiles.svg"),
            ]
        );
        assert_svg(
            &paths[0],
            &[
                "open-loop 100 req/s, key bench-p256",
                "p50",
                "p99",
                "max",
                "ok/s",
                "<polyline",
            ],
        );
        assert_svg(
            &paths[1],
            &[
                "open-loop 100 req/s, key bench-p256",
                "50%",
                "90%",
                "99%",
                "99.9%",
                "99.99%",
            ],
        );
        assert!(!std::fs::read_to_string(&paths[1])
            .unwrap()
            .contains("no data"));
    }

    #[test]
    fn plots_of_an_empty_run_say_no_data() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("charts").join("empty");
        let paths = write_plots(&empty(), &nested, "e").unwrap();
        assert_eq!(paths.len(), 2);
        for p in &paths {
            assert_svg(p, &["no data", "closed-loop concurrency 8"]);
        }
    }

    #[test]
    fn plots_of_a_run_where_nothing_was_answered() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = synthetic();
        r.histogram = new_histogram();
        for i in &mut r.intervals {
            i.hist = new_histogram();
            i.ok = 0;
        }
        let paths = write_plots(&r, dir.path(), "errors").unwrap();
        assert_svg(&paths[0], &["no latency data", "errors/s"]);
        assert_svg(&paths[1], &["no data"]);
    }

    #[test]
    fn plots_of_a_single_sample_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = synthetic();
        r.intervals.truncate(1);
        r.intervals[0].hist = new_histogram();
        record(&mut r.intervals[0].hist, 5_000);
        r.histogram = r.intervals[0].hist.clone();
        let paths = write_plots(&r, dir.path(), "one").unwrap();
        assert_svg(&paths[0], &["p50", "<circle"]);
        assert_svg(&paths[1], &["99.99%", "p50 5.00 ms"]);
    }

    fn step(rate: f64, p95_ms: u64) -> RunResult {
        let mut r = synthetic();
        r.offered_rate = Some(rate);
        r.ok = (rate.min(300.0) * r.duration_s) as u64;
        r.histogram = new_histogram();
        for _ in 0..100 {
            record(&mut r.histogram, p95_ms * 1000);
        }
        r
    }

    #[test]
    fn steps_plot_with_slo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("steps.svg");
        let steps = vec![step(400.0, 400), step(100.0, 5), step(200.0, 20)];
        write_steps_plot(&steps, &path, Some(100.0)).unwrap();
        assert_svg(
            &path,
            &[
                "offered rate",
                "achieved = offered",
                "SLO p95 100 ms",
                "p95",
                "p99",
                "<polyline",
            ],
        );
    }

    #[test]
    fn steps_plot_edge_cases() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none.svg");
        write_steps_plot(&[], &none, Some(100.0)).unwrap();
        assert_svg(&none, &["no data"]);

        let closed = dir.path().join("closed.svg");
        let mut a = empty();
        a.concurrency = Some(4);
        let mut b = synthetic();
        b.offered_rate = None;
        b.mode = "closed-loop".to_owned();
        b.concurrency = Some(16);
        write_steps_plot(&[a, b], &closed, None).unwrap();
        assert_svg(&closed, &["concurrency", "p95"]);
        assert!(!std::fs::read_to_string(&closed).unwrap().contains("SLO"));
    }

    #[test]
    fn write_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        let err = write_plots(&synthetic(), &blocker, "p").unwrap_err();
        assert!(matches!(err, ReportError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("file"), "{err}");
        let err = write_steps_plot(&[], &blocker.join("s.svg"), None).unwrap_err();
        assert!(err.to_string().contains("s.svg"), "{err}");
    }

    #[test]
    fn percentile_labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(1e4), "99.99%");
        assert_eq!(percentile_label(1e6), "99.9999%");
        assert_eq!(percentile_label(f64::NAN), "");
    }

    #[test]
    fn axis_ranges_never_degenerate() {
        assert_eq!(linear_range([]), 0.0..1.0);
        assert_eq!(linear_range([f64::NAN, f64::INFINITY]), 0.0..1.0);
        let r = linear_range([5.0, 10.0]);
        assert!(r.end > 10.0);
        assert!(log_range([0.0, -1.0, f64::NAN]).is_none());
        let r = log_range([2.0, 2.0]).unwrap();
        assert!(r.start > 0.0 && r.start < 2.0 && r.end > 2.0);
        assert_eq!(time_range(0.0), 0.0..1.0);
        assert_eq!(fmt_axis(0.25), "0.25");
        assert_eq!(fmt_axis(12.5), "12.5");
        assert_eq!(fmt_axis(1500.0), "1500");
        assert_eq!(log_ticks(&(2.6..50.0)), vec![5.0, 10.0, 20.0, 50.0]);
        assert_eq!(log_ticks(&(1.3..3.2)), vec![2.0, 3.0]);
        assert!(log_ticks(&(0.0..1.0)).is_empty());
    }
}
