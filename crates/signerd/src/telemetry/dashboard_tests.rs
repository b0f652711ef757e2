//! The Grafana dashboard (`deploy/grafana-signerd.json`) against the registered metrics, so a
//! rename cannot silently break a panel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};

use super::{MetricKind, METRICS};

/// Every series name an expression can use: counters and gauges by name, histograms by their
/// `_bucket`, `_sum`, `_count` series.
fn exposed_series() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for &(name, kind, _) in METRICS {
        match kind {
            MetricKind::Histogram => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

/// Every string in a JSON document, with the key it sits under.
fn strings<'a>(v: &'a serde_json::Value, key: &'a str, out: &mut Vec<(&'a str, &'a str)>) {
    match v {
        serde_json::Value::String(s) => out.push((key, s)),
        serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, key, out)),
        serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| strings(v, k, out)),
        _ => {}
    }
}

/// Tokens that look like our metric names.
fn metric_tokens(s: &str) -> Vec<&str> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    s.split(|c: char| !is_ident(c))
        .filter(|t| t.starts_with("signer_"))
        .collect()
}

#[test]
fn dashboard_uses_only_registered_metrics() {
    let text = include_str!("../../../../deploy/grafana-signerd.json");
    let dash: serde_json::Value = serde_json::from_str(text).unwrap();
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");

    let exposed = exposed_series();
    let label_names: BTreeSet<&str> = METRICS
        .iter()
        .flat_map(|(_, _, labels)| labels.iter().copied())
        .chain(["le", "instance", "job"])
        .collect();
    let mut all = Vec::new();
    strings(&dash, "", &mut all);
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut exprs = 0;
    for (key, s) in &all {
        for t in metric_tokens(s) {
            assert!(
                exposed.contains(t),
                "dashboard {key} uses unknown metric {t}: {s}"
            );
            *used.entry(t.to_owned()).or_default() += 1;
        }
        if *key != "expr" {
            continue;
        }
        exprs += 1;
        assert!(
            !metric_tokens(s).is_empty(),
            "expr without a signer metric: {s}"
        );
        if s.contains("histogram_quantile") {
            assert!(
                s.contains("_bucket"),
                "quantile over a non-bucket series: {s}"
            );
            assert!(s.contains("le"), "quantile without le: {s}");
        }
        // Grouping labels must be ones we export.
        for grouping in s.split("by (").skip(1) {
            let inner = grouping.split(')').next().unwrap();
            for l in inner.split(',').map(str::trim) {
                assert!(label_names.contains(l), "unknown label {l} in {s}");
            }
        }
        // Counters only under rate()/increase().
        for &(name, kind, _) in METRICS {
            if kind == MetricKind::Counter && s.contains(name) {
                assert!(
                    s.contains(&format!("rate({name}")) || s.contains(&format!("increase({name}")),
                    "counter {name} used raw: {s}"
                );
            }
        }
    }
    assert!(exprs >= 15, "only {exprs} queries");
    // Every family appears on the dashboard.
    for &(name, _, _) in METRICS {
        assert!(
            used.keys().any(|u| u.starts_with(name)),
            "{name} is not on the dashboard"
        );
    }
    // The panels the issue asks for.
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for want in [
        "Throughput by status",
        "Request latency (end to end)",
        "Queue wait vs HSM time (p95)",
        "Breaker state per partition",
        "Partition health",
        "Errors by status",
        "Queue depth per shard",
        "Inflight per partition",
        "Batch size",
        "Audit log health",
        "Audit write failures",
        "Authorization denials by op",
        "Client connections",
    ] {
        assert!(titles.contains(&want), "no panel {want:?}");
    }
}
