//! `signerd serve --config FILE`: the daemon.

use std::path::Path;

use super::{CliError, EXIT_UNAVAILABLE, EXIT_USAGE};
use certnode_signer::config::Config;
use certnode_signer::engine::OpenError;
use certnode_signer::hsm::ErrorClass;
use certnode_signer::server::{ServeError, Server};
use certnode_signer::Engine;

pub fn run(path: &Path) -> Result<(), CliError> {
    let cfg = Config::load(path).map_err(|e| CliError::new(EXIT_USAGE, e))?;
    let server_cfg = cfg.server.clone().ok_or_else(|| {
        CliError::new(
            EXIT_USAGE,
            format!("{}: no [server] table; serve needs one", path.display()),
        )
    })?;
    let engine = Engine::open(&cfg).map_err(open_error)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_cfg.runtime_threads())
        .enable_all()
        .thread_name("signerd-rt")
        .build()
        .map_err(|e| CliError::new(1, format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(async {
        let partitions = engine.partition_names_all().join(", ");
        let keys = engine.list().len();
        let workers = engine.workers();
        let server = Server::bind(engine.clone(), server_cfg).map_err(|e| match e {
            ServeError::Bind { .. } => CliError::new(EXIT_UNAVAILABLE, e),
            _ => CliError::new(EXIT_USAGE, e),
        })?;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            listen = %server.local_addr(),
            alpn = "certnode-sign/1",
            partitions = %partitions,
            workers,
            keys,
            "signerd started"
        );
        server.run(shutdown_signal()).await;
        Ok(())
    });
    if result.is_err() {
        engine.shutdown();
    }
    result
}

fn open_error(e: OpenError) -> CliError {
    match e {
        OpenError::Invalid(_) | OpenError::Pin { .. } => CliError::new(EXIT_USAGE, e),
        OpenError::Hsm { ref source, .. } if source.class() == ErrorClass::PinIncorrect => {
            CliError::new(EXIT_USAGE, e)
        }
        OpenError::Hsm { .. } => CliError::new(EXIT_UNAVAILABLE, e),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGTERM ({e}); only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
