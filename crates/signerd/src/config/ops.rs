//! `[admin]` (the admin HTTP listener) and `[audit]` (the audit log): the operator-facing side of
//! the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Default admin listener: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9464";
/// Default name of the HSM key that signs audit checkpoints.
pub const DEFAULT_AUDIT_KEY: &str = "signerd-audit";

/// `[admin]`: the admin HTTP listener (`/metrics`, `/livez`, `/readyz`). Plain HTTP on TCP,
/// separate from QUIC; keep it on loopback or a private network.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address to listen on (default 127.0.0.1:9464, the usual Prometheus exporter port).
    pub listen: SocketAddr,
    /// Most admin connections served at once (default 64); more wait in the kernel backlog.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            // The constant parses; a test checks it.
            listen: DEFAULT_ADMIN_LISTEN
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9464))),
            max_connections: 64,
        }
    }
}

/// `[audit]`: the hash-chained audit log (docs/AUDIT.md).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Run without an audit log. Only for experiments: `serve` logs a warning at start.
    pub disabled: bool,
    /// The active log file; rotated files sit next to it (`PATH.<seq>`). Relative to the config
    /// file's directory.
    pub path: PathBuf,
    /// Rotate the active file once it exceeds this many MiB (default 256).
    pub rotate_mib: u64,
    /// Sign a checkpoint after this many records (default 10000) ...
    pub checkpoint_records: u64,
    /// ... or after this many milliseconds with new records (default 1000).
    pub checkpoint_interval_ms: u64,
    /// Group-commit pacing: under load, at most one `fdatasync` per this many microseconds
    /// (default 4000; 0 commits every batch at once). Bounds the fsync rate, at the cost of
    /// up to this much added latency while busy; an idle log commits at once.
    pub commit_interval_us: u64,
    /// The HSM key (ECDSA P-256) that signs checkpoints; created at start if missing. Clients
    /// cannot sign, verify or administer with it; they may fetch its public key.
    pub key: String,
    /// Warn (log, `/readyz` body, `signer_audit_disk_low`) when the log's filesystem has less
    /// than this many MiB free (default 4096; 0 never warns). Signing fails closed once the
    /// disk is full, and nothing prunes rotated segments.
    pub min_free_mib: u64,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            disabled: false,
            path: PathBuf::from("audit/audit.log"),
            rotate_mib: 256,
            checkpoint_records: 10_000,
            checkpoint_interval_ms: 1000,
            commit_interval_us: 4000,
            key: DEFAULT_AUDIT_KEY.to_owned(),
            min_free_mib: 4096,
        }
    }
}

impl AuditSection {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.rotate_mib == 0 {
            return Err("audit.rotate_mib must be at least 1".into());
        }
        if self.checkpoint_records == 0 || self.checkpoint_interval_ms == 0 {
            return Err(
                "audit.checkpoint_records and audit.checkpoint_interval_ms must be > 0".into(),
            );
        }
        if self.commit_interval_us > 100_000 {
            return Err("audit.commit_interval_us must be at most 100000 (100 ms)".into());
        }
        signer_proto::keys::KeyName::new(&self.key).map_err(|e| format!("audit.key: {e}"))?;
        if self.min_free_mib > 1 << 30 {
            return Err("audit.min_free_mib must be at most 1073741824 (1 PiB)".into());
        }
        Ok(())
    }
}

/// `[breaker]`: the per-partition circuit breaker (docs/CONFIG.md). Every field defaults to
/// [`BreakerConfig::default`](crate::breaker::BreakerConfig); times in milliseconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSection {
    /// Open after this many failed calls in a row.
    pub consecutive_failures: u32,
    /// Open when at least this share of the window's calls failed, in (0, 1].
    pub failure_rate: f64,
    /// The failure-rate window.
    pub window_ms: u64,
    /// No failure rate below this many calls in the window.
    pub min_calls: u32,
    /// A successful call at least this slow counts as a failure. Raise it for HSMs whose
    /// normal calls are slow (RSA-4096, a distant network HSM).
    pub slow_call_ms: u64,
    /// First open period; it doubles after each failed probe...
    pub open_base_ms: u64,
    /// ...up to this.
    pub open_max_ms: u64,
    /// Each open period is multiplied by a factor drawn from `1 ± jitter`, in [0, 0.9].
    pub jitter: f64,
    /// Most probes in flight at once while half-open.
    pub half_open_probes: u32,
    /// Probe successes that close the breaker.
    pub probes_to_close: u32,
    /// A probe not reported within this time counts as failed (at least `slow_call_ms`).
    pub probe_timeout_ms: u64,
}

impl Default for BreakerSection {
    fn default() -> Self {
        let d = crate::breaker::BreakerConfig::default();
        let ms = |t: std::time::Duration| u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        BreakerSection {
            consecutive_failures: d.consecutive_failures,
            failure_rate: d.failure_rate,
            window_ms: ms(d.window),
            min_calls: d.min_calls,
            slow_call_ms: ms(d.slow_call),
            open_base_ms: ms(d.open_base),
            open_max_ms: ms(d.open_max),
            jitter: d.jitter,
            half_open_probes: d.half_open_probes,
            probes_to_close: d.probes_to_close,
            probe_timeout_ms: ms(d.probe_timeout),
        }
    }
}

impl BreakerSection {
    /// The breaker settings these stand for.
    pub fn to_config(&self) -> crate::breaker::BreakerConfig {
        let ms = std::time::Duration::from_millis;
        crate::breaker::BreakerConfig {
            consecutive_failures: self.consecutive_failures,
            failure_rate: self.failure_rate,
            window: ms(self.window_ms),
            min_calls: self.min_calls,
            slow_call: ms(self.slow_call_ms),
            open_base: ms(self.open_base_ms),
            open_max: ms(self.open_max_ms),
            jitter: self.jitter,
            half_open_probes: self.half_open_probes,
            probes_to_close: self.probes_to_close,
            probe_timeout: ms(self.probe_timeout_ms),
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        self.to_config().validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_section_defaults_to_the_breaker_defaults() {
        let c = BreakerSection::default().to_config();
        let d = crate::breaker::BreakerConfig::default();
        assert_eq!(
            (c.consecutive_failures, c.window, c.min_calls, c.slow_call),
            (d.consecutive_failures, d.window, d.min_calls, d.slow_call)
        );
        assert_eq!(
            (c.open_base, c.open_max, c.probe_timeout),
            (d.open_base, d.open_max, d.probe_timeout)
        );
        assert_eq!(
            (c.half_open_probes, c.probes_to_close),
            (d.half_open_probes, d.probes_to_close)
        );
        assert!(BreakerSection::default().validate().is_ok());
    }

    #[test]
    fn default_admin_listen_parses() {
        assert!(DEFAULT_ADMIN_LISTEN.parse::<SocketAddr>().is_ok());
        assert_eq!(
            AdminConfig::default().listen.to_string(),
            DEFAULT_ADMIN_LISTEN
        );
    }
}
