//! Typed configuration: TOML, unknown keys rejected, documented defaults, validated once.
//!
//! Relative paths in the file are resolved against the directory holding the config file, so a
//! config directory (like the one `signerd init --dev` writes) can be moved as a whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::hsm::uri::Pkcs11Uri;
use crate::secret::PinSource;

pub mod batch;
pub mod ops;
pub mod server;

pub use ops::{AdminConfig, AuditSection, BreakerSection};
pub use server::ServerConfig;

/// Default bounded queue capacity per worker shard.
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;
/// Default longest predicted queue wait before shedding (ms).
pub const DEFAULT_MAX_QUEUE_WAIT_MS: u64 = 30;
/// Default `engine.burst_queue_wait_ms`.
pub const DEFAULT_BURST_QUEUE_WAIT_MS: u64 = 100;
/// Default time in one HSM call after which a worker counts as hung (ms).
pub const DEFAULT_HANG_TIMEOUT_MS: u64 = 2000;
/// Default most requests a worker takes from its queue per wake-up.
pub const DEFAULT_MAX_DRAIN: usize = 64;

/// Why a config is unusable. The message names the key and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// OS error.
        reason: String,
    },
    /// TOML syntax error, unknown key, or wrong type.
    #[error("config {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (includes line and column).
        reason: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole `signerd.toml`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pipeline settings.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The QUIC front end; required by `signerd serve`.
    #[serde(default)]
    pub server: Option<ServerConfig>,
    /// The admin HTTP listener (metrics, health); `signerd serve` starts it when present.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// The audit log; `signerd serve` requires this table (see `disabled`).
    #[serde(default)]
    pub audit: Option<AuditSection>,
    /// Merkle batch signatures (docs/BATCH.md): off for every key unless configured.
    #[serde(default)]
    pub batch: batch::BatchSection,
    /// The per-partition circuit breakers (every partition alike).
    #[serde(default)]
    pub breaker: BreakerSection,
    /// PKCS#11 providers by name (one table each).
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// `[engine]`: pipeline settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Capacity of each worker's queue (default 1024). A full queue answers OVERLOADED.
    pub queue_depth: usize,
    /// Most requests a worker drains per wake-up (default 64).
    pub max_drain: usize,
    /// Longest a request may be predicted to wait in a queue in sustained overload (see
    /// `burst_queue_wait_ms` for the other case); beyond it (or beyond the request's own
    /// deadline) it is answered OVERLOADED at once instead of queued (default 30 ms: under
    /// overload the time before admission — socket, runtime, client — and after it — HSM,
    /// audit commit, answer — also counts against the 100 ms p95 objective; measured in
    /// tuning/RESULTS.md). In sustained overload the predicted wait uses the worker's measured
    /// busy time per job when that is longer than its HSM call time.
    pub max_queue_wait_ms: u64,
    /// Longest predicted queue wait admitted while the queue keeps up, i.e. its requests do not
    /// arrive faster than its worker finishes them (a burst, or a stall of the machine, that the
    /// worker drains by itself). `max_queue_wait_ms` applies once a queue is in sustained
    /// overload (it had to shed, or it is fed faster than it drains and longer than
    /// `max_queue_wait_ms`; see tuning/CONTROL.md §4). Default 100 ms; raised to
    /// `max_queue_wait_ms` if lower, so setting it equal turns the distinction off.
    pub burst_queue_wait_ms: u64,
    /// A worker inside one HSM call for longer than this is quarantined: the partition leaves
    /// rotation, the worker's queue goes to a fresh worker with a new session, and the hung
    /// call's request is answered at its deadline (default 2000 ms).
    pub hang_timeout_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue_depth: DEFAULT_QUEUE_DEPTH,
            max_drain: DEFAULT_MAX_DRAIN,
            max_queue_wait_ms: DEFAULT_MAX_QUEUE_WAIT_MS,
            burst_queue_wait_ms: DEFAULT_BURST_QUEUE_WAIT_MS,
            hang_timeout_ms: DEFAULT_HANG_TIMEOUT_MS,
        }
    }
}

/// `[providers.NAME]`: one PKCS#11 module and its partitions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Path of the PKCS#11 module (shared library).
    pub module: PathBuf,
    /// Environment variables the module reads at `C_Initialize` (e.g. `SOFTHSM2_CONF`). Set
    /// before the module is first loaded in this process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Sign with a session-object copy of each key (`C_CopyObject`, `CKA_TOKEN=false`), made once
    /// per worker session; the copy stays inside the token. Faster on SoftHSM2; check your HSM
    /// vendor's guidance before enabling. Default false.
    #[serde(default)]
    pub session_key_copy: bool,
    /// Copy new keys to every partition, wrapped under the trusted key-encryption key. Turn off for
    /// HSM clusters that replicate keys themselves (CloudHSM, Luna HA). Default true.
    #[serde(default = "default_true")]
    pub replicate: bool,
    /// Worker threads (each with its own session) per partition unless the partition says
    /// otherwise. Default: CPU cores divided by the number of partitions, at least 1.
    #[serde(default)]
    pub workers_per_partition: Option<usize>,
    /// Lowest number of HSM calls in flight per partition that the adaptive limit may go down to
    /// (tuning/CONTROL.md §3). The limit starts at the partition's workers and follows measured
    /// call latency and busy answers between this and the workers. Default 1; set it to the
    /// workers to pin the limit (CPU-bound tokens such as SoftHSM2 with several workers).
    #[serde(default)]
    pub min_inflight: Option<usize>,
    /// `primary` (default) or `secondary`: a secondary provider's partitions serve a key only
    /// while no healthy primary partition holds it, and only where it is the same key (same
    /// public key, checked at start).
    #[serde(default)]
    pub role: ProviderRole,
    /// The partitions (tokens) of this module.
    pub partitions: Vec<PartitionConfig>,
}

/// A provider's place in failover.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderRole {
    /// Serves whenever healthy.
    #[default]
    Primary,
    /// Serves a key only while no healthy primary partition holds it.
    Secondary,
}

/// `[[providers.NAME.partitions]]`: one token.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionConfig {
    /// Name used in logs, metrics and placement (unique across providers).
    pub name: String,
    /// Select the token by its label ...
    #[serde(default)]
    pub label: Option<String>,
    /// ... or by its serial number ...
    #[serde(default)]
    pub serial: Option<String>,
    /// ... or by an RFC 7512 `pkcs11:` URI (token, serial, manufacturer, model attributes).
    #[serde(default)]
    pub uri: Option<String>,
    /// File holding the user PIN (mode 0600).
    #[serde(default)]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    #[serde(default)]
    pub pin_env: Option<String>,
    /// Worker threads for this partition (overrides the provider's default).
    #[serde(default)]
    pub workers: Option<usize>,
}

/// How a partition's token is found. Never by slot id: slot ids change (SoftHSM2 reassigns them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// By `CKA_LABEL` of the token.
    Label(String),
    /// By serial number.
    Serial(String),
    /// By `pkcs11:` URI.
    Uri(Pkcs11Uri),
}

impl TokenSelector {
    /// Whether a token with this info is the one selected.
    pub fn matches(&self, label: &str, manufacturer: &str, model: &str, serial: &str) -> bool {
        match self {
            TokenSelector::Label(l) => label.trim_end() == l.trim_end(),
            TokenSelector::Serial(s) => serial.trim_end() == s.trim_end(),
            TokenSelector::Uri(u) => u.matches_token(label, manufacturer, model, serial),
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file; relative paths become absolute.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&text, &base).map_err(|e| match e {
            ConfigError::Parse { reason, .. } => ConfigError::Parse {
                path: path.to_owned(),
                reason,
            },
            other => other,
        })
    }

    /// Parses and validates config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            reason: e.to_string(),
        })?;
        cfg.resolve_paths(base);
        cfg.apply_env_overrides();
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        if let Some(s) = &mut self.server {
            s.cert = absolute(base, &s.cert);
            s.key = absolute(base, &s.key);
            s.client_ca = absolute(base, &s.client_ca);
            if let Some(p) = &s.policy {
                s.policy = Some(absolute(base, p));
            }
            if let Some(crl) = &s.crl {
                s.crl = Some(absolute(base, crl));
            }
        }
        if let Some(a) = &mut self.audit {
            a.path = absolute(base, &a.path);
        }
        for p in self.providers.values_mut() {
            p.module = absolute(base, &p.module);
            for part in &mut p.partitions {
                if let Some(f) = &part.pin_file {
                    part.pin_file = Some(absolute(base, f));
                }
            }
        }
    }

    /// Environment overrides for where secrets come from (never the secrets themselves on the
    /// command line): `SIGNERD_TLS_KEY_FILE` replaces `server.key`; for a partition named `p0`,
    /// `SIGNERD_PIN_FILE_P0` / `SIGNERD_PIN_ENV_P0` replace its PIN source (name upper-cased,
    /// other characters than letters and digits become `_`).
    fn apply_env_overrides(&mut self) {
        if let (Some(s), Ok(v)) = (&mut self.server, std::env::var("SIGNERD_TLS_KEY_FILE")) {
            s.key = PathBuf::from(v);
        }
        for p in self.providers.values_mut() {
            for part in &mut p.partitions {
                let suffix: String = part
                    .name
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() {
                            c.to_ascii_uppercase()
                        } else {
                            '_'
                        }
                    })
                    .collect();
                if let Ok(v) = std::env::var(format!("SIGNERD_PIN_FILE_{suffix}")) {
                    part.pin_file = Some(PathBuf::from(v));
                    part.pin_env = None;
                } else if let Ok(v) = std::env::var(format!("SIGNERD_PIN_ENV_{suffix}")) {
                    part.pin_env = Some(v);
                    part.pin_file = None;
                }
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(s) = &self.server {
            s.validate().map_err(ConfigError::Invalid)?;
        }
        self.batch.validate().map_err(ConfigError::Invalid)?;
        self.breaker.validate().map_err(ConfigError::Invalid)?;
        if let Some(a) = &self.audit {
            a.validate().map_err(ConfigError::Invalid)?;
        }
        if self.admin.as_ref().is_some_and(|a| a.max_connections == 0) {
            return bad("admin.max_connections must be at least 1".into());
        }
        if !(1..=1 << 20).contains(&self.engine.queue_depth) {
            return bad("engine.queue_depth must be between 1 and 1048576".into());
        }
        if !(1..=600_000).contains(&self.engine.max_queue_wait_ms) {
            return bad("engine.max_queue_wait_ms must be between 1 and 600000".into());
        }
        if !(1..=600_000).contains(&self.engine.burst_queue_wait_ms) {
            return bad("engine.burst_queue_wait_ms must be between 1 and 600000".into());
        }
        if !(10..=600_000).contains(&self.engine.hang_timeout_ms) {
            return bad("engine.hang_timeout_ms must be between 10 and 600000".into());
        }
        if !(1..=4096).contains(&self.engine.max_drain) {
            return bad("engine.max_drain must be between 1 and 4096".into());
        }
        if self.providers.is_empty() {
            return bad("at least one [providers.NAME] table is required".into());
        }
        let mut names = std::collections::HashSet::new();
        for (pname, p) in &self.providers {
            if p.partitions.is_empty() {
                return bad(format!(
                    "providers.{pname}: at least one partition is required"
                ));
            }
            if p.min_inflight == Some(0) {
                return bad(format!("providers.{pname}.min_inflight must be >= 1"));
            }
            if p.workers_per_partition == Some(0) {
                return bad(format!(
                    "providers.{pname}.workers_per_partition must be >= 1"
                ));
            }
            for part in &p.partitions {
                let at = format!("providers.{pname}.partitions[{}]", part.name);
                if part.name.is_empty() || !names.insert(part.name.clone()) {
                    return bad(format!(
                        "{at}: partition names must be non-empty and unique"
                    ));
                }
                part.selector()
                    .map_err(|m| ConfigError::Invalid(format!("{at}: {m}")))?;
                part.pin_source()
                    .map_err(|m| ConfigError::Invalid(format!("{at}: {m}")))?;
                if matches!(part.workers, Some(0) | Some(257..)) {
                    return bad(format!("{at}: workers must be between 1 and 256"));
                }
            }
        }
        Ok(())
    }
}

impl PartitionConfig {
    /// The token selector; exactly one of `label`, `serial`, `uri` must be set.
    pub fn selector(&self) -> Result<TokenSelector, String> {
        match (&self.label, &self.serial, &self.uri) {
            (Some(l), None, None) => Ok(TokenSelector::Label(l.clone())),
            (None, Some(s), None) => Ok(TokenSelector::Serial(s.clone())),
            (None, None, Some(u)) => {
                let uri: Pkcs11Uri = u.parse().map_err(|e| format!("uri: {e}"))?;
                if uri.pin_value.is_some() {
                    return Err("uri: pin-value is not allowed; use pin_file or pin_env".into());
                }
                if uri.slot_id.is_some() {
                    return Err(
                        "uri: slot-id is not allowed; select tokens by label or serial \
                                (slot ids change when tokens are added)"
                            .into(),
                    );
                }
                if !uri.selects_token() {
                    return Err("uri: must name the token (token=...) or its serial".into());
                }
                Ok(TokenSelector::Uri(uri))
            }
            _ => Err("set exactly one of label, serial or uri".into()),
        }
    }

    /// Where the PIN comes from; exactly one of `pin_file`, `pin_env`.
    pub fn pin_source(&self) -> Result<PinSource, String> {
        match (&self.pin_file, &self.pin_env) {
            (Some(f), None) => Ok(PinSource::File(f.clone())),
            (None, Some(v)) => Ok(PinSource::Env(v.clone())),
            _ => Err("set exactly one of pin_file or pin_env".into()),
        }
    }
}

fn default_true() -> bool {
    true
}

fn absolute(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[engine]
queue_depth = 16

[providers.soft]
module = "lib/softhsm2.so"
env = { SOFTHSM2_CONF = "/x/softhsm2.conf" }
session_key_copy = true

[[providers.soft.partitions]]
name = "p0"
label = "signerd-0"
pin_file = "pins/p0.pin"

[[providers.soft.partitions]]
name = "p1"
uri = "pkcs11:token=signerd-1"
pin_env = "P1_PIN"
workers = 2
"#;

    #[test]
    fn parses_and_resolves() {
        let cfg = Config::parse(GOOD, Path::new("/etc/signerd")).unwrap();
        assert_eq!(cfg.engine.queue_depth, 16);
        assert_eq!(cfg.engine.max_drain, DEFAULT_MAX_DRAIN);
        let p = &cfg.providers["soft"];
        assert_eq!(p.module, PathBuf::from("/etc/signerd/lib/softhsm2.so"));
        assert!(p.replicate && p.session_key_copy);
        assert_eq!(
            p.partitions[0].pin_source().unwrap(),
            PinSource::File("/etc/signerd/pins/p0.pin".into())
        );
        assert!(matches!(
            p.partitions[1].selector().unwrap(),
            TokenSelector::Uri(_)
        ));
    }

    #[test]
    fn rejects_bad_configs() {
        let cases = [
            (
                GOOD.replace("queue_depth = 16", "queue_depht = 16"),
                "unknown field",
            ),
            (
                GOOD.replace("label = \"signerd-0\"", ""),
                "exactly one of label",
            ),
            (
                GOOD.replace("pin_env = \"P1_PIN\"", ""),
                "exactly one of pin_file",
            ),
            (GOOD.replace("name = \"p1\"", "name = \"p0\""), "unique"),
            (GOOD.replace("token=signerd-1", "slot-id=1"), "slot-id"),
            (
                GOOD.replace("token=signerd-1", "token=a?pin-value=1"),
                "pin-value",
            ),
            (GOOD.replace("workers = 2", "workers = 0"), "workers"),
            (
                GOOD.replace("queue_depth = 16", "queue_depth = 0"),
                "queue_depth",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(&text, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "expected {want:?} in {err:?}");
        }
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../../signerd.example.toml");
        let cfg = Config::parse(text, Path::new("/etc/signerd")).unwrap();
        let server = cfg.server.unwrap();
        assert_eq!(server.max_streams_per_connection, 4096);
        assert_eq!(server.key, PathBuf::from("/etc/signerd/tls/server.key"));
        assert_eq!(cfg.providers["primary"].partitions.len(), 2);
    }

    #[test]
    fn breaker_section_parses_and_is_checked() {
        let cfg = Config::parse(GOOD, Path::new("/")).unwrap();
        assert_eq!(cfg.breaker.slow_call_ms, 1000);
        let text = format!("[breaker]\nslow_call_ms = 5000\nprobe_timeout_ms = 8000\n{GOOD}");
        let b = Config::parse(&text, Path::new("/"))
            .unwrap()
            .breaker
            .to_config();
        assert_eq!(b.slow_call, std::time::Duration::from_secs(5));
        assert_eq!(b.probe_timeout, std::time::Duration::from_secs(8));
        // A probe timeout shorter than a slow call is refused, with the config's field names.
        let text = format!("[breaker]\nslow_call_ms = 5000\n{GOOD}");
        let err = Config::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("breaker.probe_timeout_ms"), "{err}");
        let text = format!("[breaker]\nopen_base_ms = 60000\n{GOOD}");
        let err = Config::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("open_base_ms <= open_max_ms"), "{err}");
        let text = format!("[breaker]\nfailure_rate = 1.5\n{GOOD}");
        let err = Config::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("breaker.failure_rate"), "{err}");
        let text = format!("[breaker]\nslow_call = 5\n{GOOD}");
        assert!(
            Config::parse(&text, Path::new("/")).is_err(),
            "unknown field"
        );
    }

    #[test]
    fn audit_section_defaults_and_bounds() {
        let cfg = Config::parse(&format!("[audit]\n{GOOD}"), Path::new("/etc/signerd")).unwrap();
        let audit = cfg.audit.unwrap();
        assert_eq!(audit.min_free_mib, 4096);
        assert_eq!(audit.path, PathBuf::from("/etc/signerd/audit/audit.log"));
        let text = format!("[audit]\nmin_free_mib = 0\n{GOOD}");
        assert_eq!(
            Config::parse(&text, Path::new("/"))
                .unwrap()
                .audit
                .unwrap()
                .min_free_mib,
            0
        );
        let text = format!("[audit]\nmin_free_mib = 2000000000\n{GOOD}");
        let err = Config::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("min_free_mib"), "{err}");
    }

    #[test]
    fn bad_server_section_is_rejected() {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n\
             default_deadline_ms = 0\n{GOOD}"
        );
        let err = Config::parse(&text, Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_deadline_ms"), "{err}");
        let text = text.replace("default_deadline_ms = 0", "identity = \"email\"");
        assert!(Config::parse(&text, Path::new("/")).is_err());
    }

    #[test]
    fn policy_path_is_relative_to_the_config() {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n\
             policy = \"policy.toml\"\n{GOOD}"
        );
        let cfg = Config::parse(&text, Path::new("/etc/signerd")).unwrap();
        assert_eq!(
            cfg.server.unwrap().policy,
            Some(PathBuf::from("/etc/signerd/policy.toml"))
        );
        let cfg = Config::parse(GOOD, Path::new("/")).unwrap();
        assert!(cfg.server.is_none());
    }

    #[test]
    fn admission_keys_default_validate_and_resolve() {
        let server =
            "[server]\nlisten = \"127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n";
        let base = Path::new("/etc/signerd");
        let s = Config::parse(&format!("{server}{GOOD}"), base)
            .unwrap()
            .server
            .unwrap();
        assert_eq!(
            (
                s.max_connections_per_ip,
                s.new_connections_per_second,
                s.new_connections_burst,
                s.max_handshakes,
                s.handshake_timeout_ms
            ),
            (64, 200, 400, 256, 10_000)
        );
        assert!((s.handshake_retry_share - 0.25).abs() < 1e-9);
        assert!(s.crl.is_none());
        let s = Config::parse(&format!("{server}crl = \"tls/clients.crl\"\n{GOOD}"), base)
            .unwrap()
            .server
            .unwrap();
        assert_eq!(s.crl.unwrap(), base.join("tls/clients.crl"));
        for (line, key) in [
            ("handshake_retry_share = 1.5", "handshake_retry_share"),
            ("max_handshakes = 0", "max_handshakes"),
            ("max_connections_per_ip = 0", "max_connections_per_ip"),
            (
                "new_connections_per_second = 0",
                "new_connections_per_second",
            ),
            ("handshake_timeout_ms = 5", "handshake_timeout_ms"),
        ] {
            let err = Config::parse(&format!("{server}{line}\n{GOOD}"), base)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn selectors_match_padded_token_info() {
        let sel = TokenSelector::Label("signerd-0".into());
        assert!(sel.matches("signerd-0      ", "SoftHSM", "SoftHSM v2", "abc"));
        assert!(!sel.matches("signerd-01", "SoftHSM", "SoftHSM v2", "abc"));
        let sel = TokenSelector::Serial("abc".into());
        assert!(sel.matches("x", "m", "m", "abc   "));
    }
}
