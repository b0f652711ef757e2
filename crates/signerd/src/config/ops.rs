//! `[admin]` (the admin HTTP listener) and `[audit]` (the audit log): the operator-facing side of
//! the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::duration;

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
    /// ... or this long after the first record it does not cover yet (default 1 s).
    #[serde(deserialize_with = "duration::deserialize")]
    pub checkpoint_interval: Duration,
    /// Group-commit pacing: under load, at most one `fdatasync` per this interval (default 4 ms,
    /// at most 100 ms; 0 commits every batch at once). Bounds the fsync rate, at the cost of up
    /// to this much added latency while busy; an idle log commits at once.
    #[serde(deserialize_with = "duration::deserialize")]
    pub commit_interval: Duration,
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
            checkpoint_interval: Duration::from_secs(1),
            commit_interval: Duration::from_millis(4),
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
        if self.checkpoint_records == 0 {
            return Err("audit.checkpoint_records must be at least 1".into());
        }
        if self.checkpoint_interval < Duration::from_millis(1) {
            return Err("audit.checkpoint_interval must be at least 1ms".into());
        }
        if self.commit_interval > Duration::from_millis(100) {
            return Err("audit.commit_interval must be at most 100ms".into());
        }
        signer_proto::keys::KeyName::new(&self.key).map_err(|e| format!("audit.key: {e}"))?;
        if self.min_free_mib > 1 << 30 {
            return Err("audit.min_free_mib must be at most 1073741824 (1 PiB)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_admin_listen_parses() {
        assert!(DEFAULT_ADMIN_LISTEN.parse::<SocketAddr>().is_ok());
        assert_eq!(
            AdminConfig::default().listen.to_string(),
            DEFAULT_ADMIN_LISTEN
        );
    }
}
