//! `signerd sign --client FILE --key NAME`: sign random digests through a running daemon and
//! verify every signature (a smoke test for operators and the quickstart).

use std::path::Path;
use std::time::Instant;

use super::key::{call_error, connect};
use super::{CliError, EXIT_USAGE};
use signerd::ceiling::digest_pool;
use signerd::Scheme;

pub fn run(client: &Path, key: &str, scheme: Option<&str>, count: usize) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| CliError::new(1, e))?;
    runtime.block_on(async move {
        let client = connect(client).await?;
        let scheme: Scheme = match scheme {
            Some(s) => s.parse().map_err(|e| CliError::new(EXIT_USAGE, e))?,
            None => client
                .public_key(key, None)
                .await
                .map_err(call_error)?
                .key_type
                .default_scheme(),
        };
        let payloads = digest_pool(scheme, count.clamp(1, 100_000));
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(payloads.len());
        for p in &payloads {
            let (client, key, bytes) = (client.clone(), key.to_owned(), p.bytes().clone());
            tasks.push(tokio::spawn(async move {
                client.sign(&key, scheme, bytes).await
            }));
        }
        let mut sigs = Vec::with_capacity(tasks.len());
        for t in tasks {
            let signed = t
                .await
                .map_err(|e| CliError::new(1, e))?
                .map_err(call_error)?;
            sigs.push(signed);
        }
        let elapsed = started.elapsed();
        let mut bad = 0;
        for (p, s) in payloads.iter().zip(&sigs) {
            let ok = client
                .verify(
                    key,
                    Some(s.version),
                    scheme,
                    p.bytes().clone(),
                    s.signature.clone(),
                )
                .await
                .map_err(call_error)?;
            bad += usize::from(!ok);
        }
        println!(
            "signed {} digests with {key} ({scheme}, version {}) in {:.1} ms; verified by the \
             daemon: {} valid, {bad} invalid",
            sigs.len(),
            sigs.first().map_or(0, |s| s.version),
            elapsed.as_secs_f64() * 1e3,
            sigs.len() - bad
        );
        client.close();
        if bad > 0 {
            return Err(CliError::new(1, format!("{bad} signatures did not verify")));
        }
        Ok(())
    })
}
