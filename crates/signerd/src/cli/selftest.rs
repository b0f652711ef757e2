//! `signerd selftest --config FILE`: sign and verify real requests through the engine, end to end
//! on the configured HSMs. Creates the key (on every partition) if it does not exist.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{CliError, EXIT_UNAVAILABLE, EXIT_USAGE};
use signerd::ceiling::digest_pool;
use signerd::{Engine, KeyName, KeyType, SignRequest};

pub fn run(path: &Path, key: &str, key_type: &str, count: usize) -> Result<(), CliError> {
    let cfg = super::load_config(path)?;
    let key = KeyName::new(key).map_err(|e| CliError::new(EXIT_USAGE, e))?;
    let key_type: KeyType = key_type.parse().map_err(|e| CliError::new(EXIT_USAGE, e))?;
    let engine = Engine::open(&cfg).map_err(|e| CliError::new(EXIT_UNAVAILABLE, e))?;
    let result = exercise(&engine, &key, key_type, count.clamp(1, 1_000_000));
    engine.shutdown();
    result
}

fn exercise(
    engine: &Engine,
    key: &KeyName,
    key_type: KeyType,
    count: usize,
) -> Result<(), CliError> {
    let fail = |e: &dyn std::fmt::Display| CliError::new(1, e);
    let existing = engine.keys().list().into_iter().find(|k| &k.name == key);
    let key_type = match existing {
        Some(k) => k.key_type,
        None => {
            let v = engine
                .admin()
                .create_key(key, key_type, None)
                .map_err(|e| fail(&e))?;
            println!(
                "created key {key} ({key_type}) v{} on {}",
                v.version,
                v.partitions.join(", ")
            );
            key_type
        }
    };
    let scheme = key_type.default_scheme();
    let public = engine.keys().public_key(key, None).map_err(|e| fail(&e))?;
    print!("{}", public.pem());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| fail(&e))?;
    let payloads = digest_pool(scheme, count);
    let started = Instant::now();
    let results: Vec<_> = rt.block_on(async {
        let mut results = Vec::with_capacity(payloads.len());
        // Queue a window of requests at once (they run in parallel on the workers), then collect.
        for window in payloads.chunks(256) {
            let mut pending = Vec::with_capacity(window.len());
            for p in window {
                pending.push(engine.submit(SignRequest {
                    key: key.clone(),
                    version: None,
                    payload: p.clone(),
                    deadline: Instant::now() + Duration::from_secs(30),
                    identity: std::sync::Arc::from("local:selftest"),
                }));
            }
            for rx in pending {
                results.push(match rx {
                    Ok(rx) => rx.await.unwrap_or_else(|_| {
                        Err(signerd::EngineError::Internal("no answer".into()))
                    }),
                    Err(e) => Err(e),
                });
            }
        }
        results
    });
    let elapsed = started.elapsed();
    let mut partitions = std::collections::BTreeMap::<usize, usize>::new();
    let mut bad = 0usize;
    for (payload, result) in payloads.iter().zip(&results) {
        match result {
            Ok(signed) => {
                *partitions.entry(signed.partition).or_default() += 1;
                let (_, ok) = engine
                    .keys()
                    .verify_blocking(key, Some(signed.version), payload, &signed.signature)
                    .map_err(|e| fail(&e))?;
                bad += usize::from(!ok);
            }
            Err(e) => return Err(fail(&format!("sign failed: {e}"))),
        }
    }
    let names = engine.health().partition_names();
    let spread: Vec<String> = partitions
        .iter()
        .map(|(p, n)| format!("{}={n}", names.get(*p).map_or("?", String::as_str)))
        .collect();
    println!(
        "signed {} requests with {key} ({scheme}) in {:.1} ms ({:.0}/s); per partition: {}; \
         verified in the HSM: {} ok, {bad} bad",
        results.len(),
        elapsed.as_secs_f64() * 1e3,
        results.len() as f64 / elapsed.as_secs_f64(),
        spread.join(" "),
        results.len() - bad
    );
    if bad > 0 {
        return Err(CliError::new(1, format!("{bad} signatures did not verify")));
    }
    Ok(())
}
