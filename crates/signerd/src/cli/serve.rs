//! `signerd serve --config FILE`: the daemon.

use std::path::Path;
use std::sync::Arc;

use super::{CliError, EXIT_UNAVAILABLE, EXIT_USAGE};
use signerd::audit::{AuditConfig, AuditLog, DiskSpace};
use signerd::config::{AdminConfig, Config, ServerConfig};
use signerd::pipeline::audited::Audited;
use signerd::pipeline::{Completion, Direct};
use signerd::policy::LivePolicy;
use signerd::server::{CrlReloader, Extras, ServeError, Server};
use signerd::telemetry::{self, Admin, AdminLimits, PartitionHealth, ReadyReport};
use signerd::{Engine, EngineBuilder, KeyName};

pub fn run(path: &Path) -> Result<(), CliError> {
    let cfg = super::load_config(path)?;
    let server_cfg = cfg.server.clone().ok_or_else(|| {
        CliError::new(
            EXIT_USAGE,
            format!("{}: no [server] table; serve needs one", path.display()),
        )
    })?;
    // The recorder must exist before the engine registers its instruments.
    let prometheus = match &cfg.admin {
        Some(_) => Some(telemetry::install().map_err(|e| CliError::new(1, e))?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_cfg.runtime_threads())
        .enable_all()
        .thread_name("signerd-rt")
        .build()
        .map_err(|e| CliError::new(1, format!("cannot start the runtime: {e}")))?;
    // SIGHUP's default action ends the process: take it over before anything slow (opening the
    // tokens can take seconds), so a reload sent while the daemon starts is never fatal. One
    // that arrives before the policy is loaded is answered by the reload loop once it runs.
    let hangups = watch_sighup(&runtime);
    let policy = load_policy(&server_cfg)?;
    let opened = EngineBuilder::open(&cfg).map_err(super::open_error)?;
    // The audit log needs the engine's audit key (made on first start) before the workers it
    // receives results from are started; dropping `opened` on an error closes its sessions.
    let (audit, audit_key, completion) = open_audit(&cfg, &opened)?;
    let engine = opened.start(completion).map_err(super::open_error)?;
    let disk = match audit_disk(&cfg) {
        Ok(d) => d,
        Err(e) => {
            engine.shutdown();
            return Err(e);
        }
    };
    let result = runtime.block_on(async {
        let partitions = engine.health().partition_names().join(", ");
        let keys = engine.keys().list().len();
        let workers = engine.workers();
        let extras = Extras {
            audit: audit.clone(),
            audit_key,
            policy: policy.clone(),
            batch: cfg.batch.enabled().then(|| {
                signerd::server::batcher::Batcher::new(
                    engine.clone(),
                    audit.clone(),
                    cfg.batch.clone(),
                )
            }),
        };
        let server = Server::bind_with(engine.clone(), server_cfg, extras).map_err(|e| match e {
            ServeError::Bind { .. } => CliError::new(EXIT_UNAVAILABLE, e),
            _ => CliError::new(EXIT_USAGE, e),
        })?;
        // SIGHUPs received until now wait in `hangups` and are answered here.
        let reloader = tokio::spawn(reload_on_sighup(policy, server.crl_reloader(), hangups));
        let admin = match (&cfg.admin, prometheus) {
            (Some(admin_cfg), Some(handle)) => Some(
                start_admin(
                    admin_cfg,
                    handle,
                    &engine,
                    audit.as_ref(),
                    disk.clone(),
                    server.draining(),
                )
                .await?,
            ),
            _ => None,
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            listen = %server.local_addr(),
            admin = %cfg.admin.as_ref().map_or_else(|| "off".to_owned(), |a| a.listen.to_string()),
            audit = %cfg.audit.as_ref().filter(|a| !a.disabled).map_or_else(|| "off".to_owned(), |a| a.path.display().to_string()),
            alpn = "certnode-sign/1",
            partitions = %partitions,
            workers,
            keys,
            "signerd started"
        );
        server.run(shutdown_signal()).await;
        reloader.abort();
        if let Some(admin) = admin {
            admin.stop().await;
        }
        Ok(())
    });
    if result.is_err() {
        engine.shutdown();
    }
    // The engine has stopped (every answer given): close the log with a signed checkpoint.
    if let Some(audit) = audit {
        audit.close();
        let stats = audit.stats();
        tracing::info!(
            records = stats.records,
            fsyncs = stats.batches,
            checkpoints = stats.checkpoints,
            "audit log closed"
        );
    }
    result
}

/// The running admin listener and its background tasks.
struct AdminTasks {
    server: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    upkeep: tokio::task::JoinHandle<()>,
}

impl AdminTasks {
    /// Stops the listener (last, so that `/readyz` says "draining" during the drain).
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        self.upkeep.abort();
    }
}

/// Binds the admin listener (`/metrics`, `/livez`, `/readyz`) and starts it with the metrics
/// upkeep task. Scrapes refresh the sampled gauges (queues, health, audit totals).
async fn start_admin(
    admin_cfg: &AdminConfig,
    handle: telemetry::PrometheusHandle,
    engine: &Engine,
    audit: Option<&AuditLog>,
    disk: Option<Arc<DiskSpace>>,
    draining: tokio::sync::watch::Receiver<bool>,
) -> Result<AdminTasks, CliError> {
    let listener = telemetry::bind_admin(admin_cfg.listen)
        .await
        .map_err(|e| CliError::new(EXIT_UNAVAILABLE, format!("admin listener: {e}")))?;
    let ready = {
        let engine = engine.clone();
        let audit = audit.cloned();
        let disk = disk.clone();
        move || ReadyReport {
            keys_loaded: true, // the engine read every key from the tokens before serving
            partitions: engine
                .health()
                .partitions()
                .into_iter()
                .map(|(name, healthy, reason)| PartitionHealth {
                    name,
                    healthy,
                    reason,
                })
                .collect(),
            draining: *draining.borrow(),
            blocked: audit
                .as_ref()
                .filter(|a| !a.healthy())
                .map(|_| "the audit log cannot be written; signing fails closed".to_owned()),
            warnings: disk
                .as_ref()
                .and_then(|d| d.warning())
                .into_iter()
                .collect(),
        }
    };
    let sample = {
        let engine = engine.clone();
        let audit = audit.cloned();
        let disk = disk.clone();
        move || {
            engine.health().sample_metrics();
            let m = engine.metrics();
            match &audit {
                Some(a) => {
                    let st = a.stats();
                    m.set_audit_totals(st.records, st.batches, st.write_failures, st.checkpoints);
                    m.set_audit_healthy(a.healthy());
                }
                None => m.set_audit_healthy(false),
            }
            if let Some(d) = &disk {
                m.set_audit_disk(d.free_bytes().unwrap_or(0), d.warning().is_some());
            }
        }
    };
    let limits = AdminLimits {
        max_connections: admin_cfg.max_connections,
        ..AdminLimits::default()
    };
    let admin = Admin::new(handle.clone(), Arc::new(ready))
        .limits(limits)
        .on_scrape(sample);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(admin.serve(listener, async move {
        let _ = stopped.await;
    }));
    let upkeep = telemetry::spawn_upkeep(handle, telemetry::UPKEEP_INTERVAL);
    Ok(AdminTasks {
        server,
        stop,
        upkeep,
    })
}

/// The audit log, its key's name, and the completion that routes every finished sign job
/// through it.
type OpenedAudit = (Option<AuditLog>, Option<KeyName>, Arc<dyn Completion>);

/// Opens the audit log (creating the audit key on first start) and returns the completion that
/// routes every finished sign job through it. Without an `[audit]` table serve refuses to
/// start; `disabled = true` runs without one (jobs answered at once), with a warning.
fn open_audit(cfg: &Config, engine: &EngineBuilder) -> Result<OpenedAudit, CliError> {
    let Some(section) = &cfg.audit else {
        return Err(CliError::new(
            EXIT_USAGE,
            "no [audit] table in the config: signerd records every signature in an audit log \
             (see docs/AUDIT.md); add one, or set `[audit] disabled = true` to run without",
        ));
    };
    if section.disabled {
        tracing::warn!(
            "the audit log is disabled ([audit] disabled = true): signatures are not recorded"
        );
        return Ok((None, None, Arc::new(Direct)));
    }
    let name = KeyName::new(&section.key).map_err(|e| CliError::new(EXIT_USAGE, e))?;
    let signer = engine
        .admin()
        .audit_key_signer(&name)
        .map_err(|e| CliError::new(EXIT_UNAVAILABLE, format!("audit key {name}: {e}")))?;
    let audit_cfg = AuditConfig {
        path: section.path.clone(),
        rotate_bytes: section.rotate_mib.saturating_mul(1 << 20),
        checkpoint_records: section.checkpoint_records,
        checkpoint_interval: section.checkpoint_interval,
        commit_interval: section.commit_interval,
        ..AuditConfig::new(section.path.clone())
    };
    let log = AuditLog::open(audit_cfg, Box::new(signer)).map_err(|e| {
        CliError::new(
            EXIT_UNAVAILABLE,
            format!("audit log {}: {e}", section.path.display()),
        )
    })?;
    log.set_more_coming(engine.busy_probe());
    let completion = Audited::new(log.clone(), engine.partition_names());
    tracing::info!(path = %section.path.display(), key = %name, "audit log open");
    Ok((Some(log), Some(name), Arc::new(completion)))
}

/// The watcher of the audit log's disk (`[audit] min_free_mib`), measured once now, so that a
/// daemon started on a nearly full disk says so at once, then every 10 s.
fn audit_disk(cfg: &Config) -> Result<Option<Arc<DiskSpace>>, CliError> {
    let Some(section) = cfg.audit.as_ref().filter(|a| !a.disabled) else {
        return Ok(None);
    };
    let disk = Arc::new(DiskSpace::for_log(
        &section.path,
        section.min_free_mib.saturating_mul(1 << 20),
    ));
    disk.watch()
        .map_err(|e| CliError::new(1, format!("cannot start the audit disk watcher: {e}")))?;
    Ok(Some(disk))
}

/// Loads `[server] policy`, or warns that the built-in rules apply.
fn load_policy(server: &ServerConfig) -> Result<Option<Arc<LivePolicy>>, CliError> {
    let Some(path) = &server.policy else {
        tracing::warn!(
            "no access policy configured: every authenticated client may use every key \
             (admin ops: [server] admins only); set [server] policy to restrict keys, ops and \
             rates per identity (see policy.example.toml)"
        );
        return Ok(None);
    };
    let live = LivePolicy::load(path).map_err(|e| CliError::new(EXIT_USAGE, e))?;
    let policy = live.current();
    tracing::info!(
        path = %path.display(),
        rules = policy.rules().len(),
        quotas = policy.quota_count(),
        destroy_approval = policy.approval().destroy_key,
        "access policy loaded"
    );
    if !server.admins.is_empty() {
        tracing::warn!(
            "[server] admins is ignored because a policy is configured; grant admin ops \
             (create_key, rotate_key, retire_key, destroy_key) in policy rules"
        );
    }
    Ok(Some(Arc::new(live)))
}

/// SIGHUPs, from now on (`None` if they cannot be watched; the reason is logged).
#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

/// Starts watching SIGHUP (replacing its default action, which ends the process).
fn watch_sighup(runtime: &tokio::runtime::Runtime) -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let _in_runtime = runtime.enter();
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot watch SIGHUP ({e}); the policy cannot be reloaded");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = runtime;
    }
}

/// Reloads the policy and the CRL on every SIGHUP until aborted, each on its own: an invalid
/// file leaves the old one in force. A policy reload disturbs no connection or request; a CRL
/// reload closes the open connections whose certificate it no longer accepts.
async fn reload_on_sighup(
    policy: Option<Arc<LivePolicy>>,
    crl: Option<CrlReloader>,
    hangups: Hangups,
) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hangups else {
            return;
        };
        while hup.recv().await.is_some() {
            if policy.is_none() && crl.is_none() {
                tracing::info!(
                    "SIGHUP received; no policy or CRL is configured, nothing to reload"
                );
                continue;
            }
            if let Some(live) = &policy {
                reload_policy(Arc::clone(live)).await;
            }
            if let Some(crl) = &crl {
                reload_crl(crl).await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (policy, crl, hangups);
        std::future::pending::<()>().await;
    }
}

/// Reloads the access policy; an invalid file leaves the previous one in force.
#[cfg(unix)]
async fn reload_policy(live: Arc<LivePolicy>) {
    let path = live.path().display().to_string();
    match tokio::task::spawn_blocking(move || live.reload()).await {
        Ok(Ok(s)) => tracing::info!(
            path,
            rules = s.rules,
            quotas = s.quotas,
            "access policy reloaded"
        ),
        Ok(Err(e)) => tracing::error!(
            path,
            "policy reload rejected; the previous policy stays in force: {e}"
        ),
        Err(e) => tracing::error!(path, "policy reload failed: {e}"),
    }
}

/// Reloads `[server] crl`; an invalid file leaves the previous CRLs in force.
#[cfg(unix)]
async fn reload_crl(crl: &CrlReloader) {
    let path = crl.path().display().to_string();
    match crl.reload().await {
        Ok(r) => tracing::info!(
            path,
            crls = r.crls,
            revoked = r.revoked,
            connections_checked = r.checked,
            connections_closed = r.closed,
            "CRL reloaded"
        ),
        Err(e) => tracing::error!(
            path,
            "CRL reload rejected; the previous CRL stays in force: {e}"
        ),
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
