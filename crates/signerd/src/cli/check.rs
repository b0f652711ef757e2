//! `signerd check --config FILE`: check the access policy (if any), log in everywhere, list
//! keys, exit.

use std::path::Path;

use super::{CliError, EXIT_USAGE};
use signerd::policy::Policy;
use signerd::Engine;

pub fn run(path: &Path) -> Result<(), CliError> {
    let cfg = super::load_config(path)?;
    // The access policy, if any, is checked before the HSM is touched.
    if let Some(file) = cfg.server.as_ref().and_then(|s| s.policy.as_ref()) {
        let policy = Policy::load(file).map_err(|e| CliError::new(EXIT_USAGE, e))?;
        println!(
            "policy: {} ({} rules, {} quotas)",
            file.display(),
            policy.rules().len(),
            policy.quota_count()
        );
    }
    let engine = Engine::open(&cfg).map_err(super::open_error)?;
    println!(
        "partitions: {}",
        engine.health().partition_names().join(", ")
    );
    let keys = engine.keys().list();
    println!("keys: {}", keys.len());
    for k in keys {
        for v in &k.versions {
            let line = super::key_line(
                &k.name,
                v.version,
                k.key_type,
                v.state,
                k.signing_version,
                &v.partitions,
            );
            println!("  {line}");
        }
    }
    engine.shutdown();
    Ok(())
}
