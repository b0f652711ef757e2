//! `signerd check --config FILE [--json]`: check the access policy (if any), log in everywhere,
//! print what each partition's token can do (the capability probe of start) and list keys, exit.

use std::path::Path;

use super::{CliError, EXIT_USAGE};
use signerd::hsm::capabilities::CapabilityReport;
use signerd::policy::Policy;
use signerd::Engine;

pub fn run(path: &Path, json: bool) -> Result<(), CliError> {
    let cfg = super::load_config(path)?;
    let mut out = serde_json::Map::new();
    // The access policy, if any, is checked before the HSM is touched.
    if let Some(file) = cfg.server.as_ref().and_then(|s| s.policy.as_ref()) {
        let policy = Policy::load(file).map_err(|e| CliError::new(EXIT_USAGE, e))?;
        if json {
            out.insert(
                "policy".into(),
                serde_json::json!({
                    "file": file.display().to_string(),
                    "rules": policy.rules().len(),
                    "quotas": policy.quota_count(),
                }),
            );
        } else {
            println!(
                "policy: {} ({} rules, {} quotas)",
                file.display(),
                policy.rules().len(),
                policy.quota_count()
            );
        }
    }
    let engine = Engine::open(&cfg).map_err(super::open_error)?;
    let caps = engine.health().capabilities();
    let keys = engine.keys().list();
    if json {
        out.insert(
            "partitions".into(),
            serde_json::to_value(&caps).unwrap_or_default(),
        );
        let listed: Vec<serde_json::Value> = keys
            .iter()
            .flat_map(|k| {
                k.versions.iter().map(|v| {
                    serde_json::json!({
                        "name": k.name.as_str(),
                        "version": v.version,
                        "type": k.key_type.as_str(),
                        "state": v.state.to_string(),
                        "signing": k.signing_version == Some(v.version),
                        "partitions": v.partitions,
                    })
                })
            })
            .collect();
        out.insert("keys".into(), listed.into());
        println!("{}", serde_json::Value::Object(out));
    } else {
        println!(
            "partitions: {}",
            engine.health().partition_names().join(", ")
        );
        for c in &caps {
            for line in capability_lines(c) {
                println!("  {line}");
            }
        }
        println!("keys: {}", keys.len());
        for line in super::key_lines(&keys) {
            println!("  {line}");
        }
    }
    engine.shutdown();
    Ok(())
}

/// One partition's capabilities as text: what it can create and sign, and why not the rest.
fn capability_lines(c: &CapabilityReport) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(why) = &c.error {
        lines.push(format!(
            "{}: mechanisms unknown ({why}); every key type assumed",
            c.partition
        ));
        return lines;
    }
    lines.push(format!(
        "{}: {} mechanisms; creates {}; signs {}",
        c.partition,
        c.mechanisms,
        none_if_empty(&c.key_types),
        none_if_empty(&c.schemes)
    ));
    for m in &c.cannot_create {
        lines.push(format!("  cannot create {}: {}", m.key_type, m.reason));
    }
    lines
}

fn none_if_empty(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(", ")
    }
}
