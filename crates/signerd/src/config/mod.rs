//! Typed configuration: TOML, unknown keys rejected, documented defaults, validated once.
//!
//! Relative paths in the file are resolved against the directory holding the config file, so a
//! config directory (like the one `signerd init --dev` writes) can be moved as a whole.
//!
//! Loading happens in one pass: the text is read as written (partitions with their `label` /
//! `serial` / `uri` and `pin_file` / `pin_env` keys), paths are resolved, the environment
//! overrides applied, and validation turns it into a [`Config`] whose values are typed: durations
//! are [`Duration`]s (written with their unit, [`duration`]), each partition's token selector and
//! PIN source are parsed, the `[breaker]` table is the breaker's own
//! [`BreakerConfig`]. Nothing parses the file's strings again after that.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::control::breaker::BreakerConfig;
use crate::hsm::uri::Pkcs11Uri;
use crate::secret::PinSource;

pub mod batch;
pub mod duration;
pub mod ops;
pub mod server;

pub use ops::{AdminConfig, AuditSection};
pub use server::ServerConfig;

/// Default bounded queue capacity per worker shard.
pub const DEFAULT_QUEUE_DEPTH: usize = 1024;
/// Default longest predicted queue wait before shedding, in sustained overload
/// (`engine.max_queue_wait`).
pub const DEFAULT_MAX_QUEUE_WAIT: Duration = Duration::from_millis(30);
/// Default `engine.burst_queue_wait`.
pub const DEFAULT_BURST_QUEUE_WAIT: Duration = Duration::from_millis(100);
/// Default time in one HSM call after which a worker counts as hung (`engine.hang_timeout`).
pub const DEFAULT_HANG_TIMEOUT: Duration = Duration::from_secs(2);
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
    /// TOML syntax error, unknown or renamed key, or wrong type.
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
///
/// `P` is how partitions are held: [`PartitionConfig`] (the default, and the only kind
/// [`Config::load`] and [`Config::parse`] return), with the token selector and PIN source
/// parsed; the file's own form exists only while a config is being loaded.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config<P = PartitionConfig> {
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
    /// `[breaker]`: the per-partition circuit breakers (every partition alike), read straight
    /// into the breaker's own settings; every key defaults to [`BreakerConfig::default`].
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// PKCS#11 providers by name (one table each).
    pub providers: BTreeMap<String, ProviderConfig<P>>,
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
    /// `burst_queue_wait` for the other case); beyond it (or beyond the request's own
    /// deadline) it is answered OVERLOADED at once instead of queued (default 30 ms: under
    /// overload the time before admission — socket, runtime, client — and after it — HSM,
    /// audit commit, answer — also counts against the 100 ms p95 objective; measured in
    /// tuning/RESULTS.md). In sustained overload the predicted wait uses the worker's measured
    /// busy time per job when that is longer than its HSM call time.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_queue_wait: Duration,
    /// Longest predicted queue wait admitted while the queue keeps up, i.e. its requests do not
    /// arrive faster than its worker finishes them (a burst, or a stall of the machine, that the
    /// worker drains by itself). `max_queue_wait` applies once a queue is in sustained
    /// overload (it had to shed, or it is fed faster than it drains and longer than
    /// `max_queue_wait`; see tuning/CONTROL.md §4). Default 100 ms; raised to
    /// `max_queue_wait` if lower, so setting it equal turns the distinction off.
    #[serde(deserialize_with = "duration::deserialize")]
    pub burst_queue_wait: Duration,
    /// A worker inside one HSM call for longer than this is quarantined: the partition leaves
    /// rotation, the worker's queue goes to a fresh worker with a new session, and the hung
    /// call's request is answered at its deadline (default 2 s).
    #[serde(deserialize_with = "duration::deserialize")]
    pub hang_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue_depth: DEFAULT_QUEUE_DEPTH,
            max_drain: DEFAULT_MAX_DRAIN,
            max_queue_wait: DEFAULT_MAX_QUEUE_WAIT,
            burst_queue_wait: DEFAULT_BURST_QUEUE_WAIT,
            hang_timeout: DEFAULT_HANG_TIMEOUT,
        }
    }
}

/// `[providers.NAME]`: one PKCS#11 module and its partitions (`P` as in [`Config`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig<P = PartitionConfig> {
    /// Path of the PKCS#11 module (shared library).
    pub module: PathBuf,
    /// Environment variables the module reads at `C_Initialize` (e.g. `SOFTHSM2_CONF`). Put
    /// into the process environment once, at start, before any thread exists
    /// ([`crate::hsm::module::set_module_env`] with [`Config::module_env`]); so two providers
    /// may not give one variable different values.
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
    pub partitions: Vec<P>,
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

/// `[[providers.NAME.partitions]]`: one token, validated: how it is found and where its PIN
/// comes from are parsed once, when the config is loaded.
#[derive(Clone, Debug)]
pub struct PartitionConfig {
    /// Name used in logs, metrics and placement (unique across providers).
    pub name: String,
    /// How the token is found (the file's `label`, `serial` or `uri`).
    pub selector: TokenSelector,
    /// Where the user PIN comes from (the file's `pin_file` or `pin_env`, or their environment
    /// overrides).
    pub pin: PinSource,
    /// Worker threads for this partition (overrides the provider's default).
    pub workers: Option<usize>,
}

/// `[[providers.NAME.partitions]]` as written in the file; [`Config::parse`] turns it into a
/// [`PartitionConfig`].
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionFile {
    /// Name used in logs, metrics and placement (unique across providers).
    name: String,
    /// Select the token by its label ...
    #[serde(default)]
    label: Option<String>,
    /// ... or by its serial number ...
    #[serde(default)]
    serial: Option<String>,
    /// ... or by an RFC 7512 `pkcs11:` URI (token, serial, manufacturer, model attributes).
    #[serde(default)]
    uri: Option<String>,
    /// File holding the user PIN (mode 0600).
    #[serde(default)]
    pin_file: Option<PathBuf>,
    /// Environment variable holding the user PIN.
    #[serde(default)]
    pin_env: Option<String>,
    /// Worker threads for this partition (overrides the provider's default).
    #[serde(default)]
    workers: Option<usize>,
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
        let parse_error = |reason: String| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            reason,
        };
        // The keys renamed when durations got their units are refused by name, with their
        // replacement, before serde would call them unknown. Text that is not TOML at all gets
        // its syntax error from the typed parse below.
        if let Ok(doc) = toml::from_str::<toml::Table>(text) {
            duration::refuse_renamed(&doc).map_err(parse_error)?;
        }
        let mut file: Config<PartitionFile> =
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        file.resolve_paths(base);
        file.apply_env_overrides();
        file.validate()
    }

    /// The environment every provider's module reads at `C_Initialize`, merged (validation
    /// refused configs where two providers give one variable different values). Give it to
    /// [`crate::hsm::module::set_module_env`] before the process starts a thread.
    pub fn module_env(&self) -> BTreeMap<String, String> {
        self.providers
            .values()
            .flat_map(|p| p.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    }
}

impl Config<PartitionFile> {
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

    /// Checks every value and turns the file into the typed config.
    fn validate(self) -> Result<Config, ConfigError> {
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
        let e = &self.engine;
        if !(1..=1 << 20).contains(&e.queue_depth) {
            return bad("engine.queue_depth must be between 1 and 1048576".into());
        }
        let (ms, ten_minutes) = (Duration::from_millis(1), Duration::from_secs(600));
        if !(ms..=ten_minutes).contains(&e.max_queue_wait) {
            return bad("engine.max_queue_wait must be between 1ms and 10m".into());
        }
        if !(ms..=ten_minutes).contains(&e.burst_queue_wait) {
            return bad("engine.burst_queue_wait must be between 1ms and 10m".into());
        }
        if !(10 * ms..=ten_minutes).contains(&e.hang_timeout) {
            return bad("engine.hang_timeout must be between 10ms and 10m".into());
        }
        if !(1..=4096).contains(&e.max_drain) {
            return bad("engine.max_drain must be between 1 and 4096".into());
        }
        if self.providers.is_empty() {
            return bad("at least one [providers.NAME] table is required".into());
        }
        // One process, one environment: the modules' variables are set once, at start.
        let mut env: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for (pname, p) in &self.providers {
            for (k, v) in &p.env {
                if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                    return bad(format!(
                        "providers.{pname}.env: {k:?} = {v:?} is not a valid environment \
                         variable (a name without `=`, no NUL characters)"
                    ));
                }
                if let Some((other, was)) = env.insert(k, (pname, v)) {
                    if was != v {
                        return bad(format!(
                            "providers.{pname}.env.{k} differs from providers.{other}.env.{k}: \
                             the modules share the process's environment, set once at start"
                        ));
                    }
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut providers = BTreeMap::new();
        for (pname, p) in self.providers {
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
            let mut partitions = Vec::with_capacity(p.partitions.len());
            for part in p.partitions {
                let at = format!("providers.{pname}.partitions[{}]", part.name);
                if part.name.is_empty() || !names.insert(part.name.clone()) {
                    return bad(format!(
                        "{at}: partition names must be non-empty and unique"
                    ));
                }
                let selector = part
                    .selector()
                    .map_err(|m| ConfigError::Invalid(format!("{at}: {m}")))?;
                let pin = part
                    .pin_source()
                    .map_err(|m| ConfigError::Invalid(format!("{at}: {m}")))?;
                if matches!(part.workers, Some(0) | Some(257..)) {
                    return bad(format!("{at}: workers must be between 1 and 256"));
                }
                partitions.push(PartitionConfig {
                    name: part.name,
                    selector,
                    pin,
                    workers: part.workers,
                });
            }
            let provider = ProviderConfig {
                module: p.module,
                env: p.env,
                session_key_copy: p.session_key_copy,
                replicate: p.replicate,
                workers_per_partition: p.workers_per_partition,
                min_inflight: p.min_inflight,
                role: p.role,
                partitions,
            };
            providers.insert(pname, provider);
        }
        Ok(Config {
            engine: self.engine,
            server: self.server,
            admin: self.admin,
            audit: self.audit,
            batch: self.batch,
            breaker: self.breaker,
            providers,
        })
    }
}

impl PartitionFile {
    /// The token selector; exactly one of `label`, `serial`, `uri` must be set.
    fn selector(&self) -> Result<TokenSelector, String> {
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
    fn pin_source(&self) -> Result<PinSource, String> {
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

    fn parse_err(text: &str) -> String {
        Config::parse(text, Path::new("/")).unwrap_err().to_string()
    }

    #[test]
    fn parses_and_resolves() {
        let cfg = Config::parse(GOOD, Path::new("/etc/signerd")).unwrap();
        assert_eq!(cfg.engine.queue_depth, 16);
        assert_eq!(cfg.engine.max_drain, DEFAULT_MAX_DRAIN);
        let p = &cfg.providers["soft"];
        assert_eq!(p.module, PathBuf::from("/etc/signerd/lib/softhsm2.so"));
        assert!(p.replicate && p.session_key_copy);
        assert_eq!(
            p.partitions[0].pin,
            PinSource::File("/etc/signerd/pins/p0.pin".into())
        );
        assert_eq!(
            p.partitions[0].selector,
            TokenSelector::Label("signerd-0".into())
        );
        assert!(matches!(p.partitions[1].selector, TokenSelector::Uri(_)));
        assert_eq!(p.partitions[1].pin, PinSource::Env("P1_PIN".into()));
        assert_eq!(
            cfg.module_env(),
            BTreeMap::from([("SOFTHSM2_CONF".to_owned(), "/x/softhsm2.conf".to_owned())])
        );
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
            let err = parse_err(&text);
            assert!(err.contains(want), "expected {want:?} in {err:?}");
        }
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../../../signerd.example.toml");
        let cfg = Config::parse(text, Path::new("/etc/signerd")).unwrap();
        assert_eq!(cfg.engine.max_queue_wait, DEFAULT_MAX_QUEUE_WAIT);
        assert_eq!(cfg.engine.burst_queue_wait, DEFAULT_BURST_QUEUE_WAIT);
        assert_eq!(cfg.breaker, BreakerConfig::default());
        assert_eq!(
            cfg.audit.unwrap().checkpoint_interval,
            Duration::from_secs(1)
        );
        let server = cfg.server.unwrap();
        assert_eq!(server.max_streams_per_connection, 4096);
        assert_eq!(server.key, PathBuf::from("/etc/signerd/tls/server.key"));
        assert_eq!(cfg.providers["primary"].partitions.len(), 2);
    }

    #[test]
    fn durations_are_written_with_their_unit() {
        let text = GOOD.replace(
            "queue_depth = 16",
            "max_queue_wait = \"25ms\"\nburst_queue_wait = \"1s 500ms\"\nhang_timeout = \"2m\"",
        );
        let e = Config::parse(&text, Path::new("/")).unwrap().engine;
        assert_eq!(
            (e.max_queue_wait, e.burst_queue_wait, e.hang_timeout),
            (
                Duration::from_millis(25),
                Duration::from_millis(1500),
                Duration::from_secs(120)
            )
        );
        // Defaults when the keys are left out.
        let e = Config::parse(GOOD, Path::new("/")).unwrap().engine;
        assert_eq!(
            (e.max_queue_wait, e.burst_queue_wait, e.hang_timeout),
            (
                Duration::from_millis(30),
                Duration::from_millis(100),
                Duration::from_secs(2)
            )
        );
    }

    #[test]
    fn a_duration_without_a_known_unit_is_refused_at_its_key() {
        for (line, why) in [
            (
                "max_queue_wait = \"25 parsecs\"",
                "unknown time unit \"parsecs\"",
            ),
            ("max_queue_wait = \"25\"", "time unit needed"),
            ("max_queue_wait = 25", "25 has no unit"),
        ] {
            let err = parse_err(&GOOD.replace("queue_depth = 16", line));
            // The parser's message quotes the line, key included, with its position.
            assert!(
                err.contains(line) && err.contains("line 3"),
                "{line}: {err}"
            );
            assert!(err.contains(why), "{line}: {err}");
            assert!(err.contains("a duration with its unit"), "{line}: {err}");
        }
        let err = parse_err(&format!("[breaker]\nslow_call = \"1 fortnight\"\n{GOOD}"));
        assert!(err.contains("slow_call = \"1 fortnight\""), "{err}");
        assert!(err.contains("unknown time unit"), "{err}");
    }

    #[test]
    fn an_old_ms_key_is_refused_naming_its_replacement() {
        let err = parse_err(&GOOD.replace("queue_depth = 16", "max_queue_wait_ms = 30"));
        assert!(
            err.contains(
                "`engine.max_queue_wait_ms` is now `engine.max_queue_wait = \"30ms\"` (a \
                 duration with its unit)"
            ),
            "{err}"
        );
        assert!(!err.contains("unknown field"), "{err}");
        // Every old key of a table is named at once, with the value it stood for.
        let text = format!(
            "[breaker]\nslow_call_ms = 5000\nprobe_timeout_ms = 8000\n[audit]\n\
             commit_interval_us = 2000\n{GOOD}"
        );
        let err = parse_err(&text);
        for want in [
            "`breaker.slow_call_ms` is now `breaker.slow_call = \"5s\"`",
            "`breaker.probe_timeout_ms` is now `breaker.probe_timeout = \"8s\"`",
            "`audit.commit_interval_us` is now `audit.commit_interval = \"2ms\"`",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
        let server = "[server]\nlisten = \"127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\n\
                      client_ca = \"ca\"\n";
        let err = parse_err(&format!("{server}read_timeout_ms = 2500\n{GOOD}"));
        assert!(
            err.contains("`server.read_timeout_ms` is now `server.read_timeout = \"2s 500ms\"`"),
            "{err}"
        );
    }

    #[test]
    fn breaker_table_is_the_breakers_own_config() {
        let cfg = Config::parse(GOOD, Path::new("/")).unwrap();
        assert_eq!(cfg.breaker, BreakerConfig::default());
        let text = format!(
            "[breaker]\nslow_call = \"5s\"\nprobe_timeout = \"8s\"\nfailure_rate = 0.25\n{GOOD}"
        );
        let b = Config::parse(&text, Path::new("/")).unwrap().breaker;
        assert_eq!(b.slow_call, Duration::from_secs(5));
        assert_eq!(b.probe_timeout, Duration::from_secs(8));
        assert_eq!(b.failure_rate, 0.25);
        assert_eq!(b.window, BreakerConfig::default().window);
        // A probe timeout shorter than a slow call is refused, with the config's key names.
        let err = parse_err(&format!("[breaker]\nslow_call = \"5s\"\n{GOOD}"));
        assert!(err.contains("breaker.probe_timeout"), "{err}");
        assert!(err.contains("breaker.slow_call"), "{err}");
        let err = parse_err(&format!("[breaker]\nopen_base = \"1m\"\n{GOOD}"));
        assert!(err.contains("open_base <= breaker.open_max"), "{err}");
        let err = parse_err(&format!("[breaker]\nfailure_rate = 1.5\n{GOOD}"));
        assert!(err.contains("breaker.failure_rate"), "{err}");
        let err = parse_err(&format!("[breaker]\nslow_calls = \"5s\"\n{GOOD}"));
        assert!(err.contains("unknown field `slow_calls`"), "{err}");
    }

    #[test]
    fn audit_section_defaults_and_bounds() {
        let cfg = Config::parse(&format!("[audit]\n{GOOD}"), Path::new("/etc/signerd")).unwrap();
        let audit = cfg.audit.unwrap();
        assert_eq!(audit.min_free_mib, 4096);
        assert_eq!(audit.path, PathBuf::from("/etc/signerd/audit/audit.log"));
        assert_eq!(
            (audit.checkpoint_interval, audit.commit_interval),
            (Duration::from_secs(1), Duration::from_millis(4))
        );
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
        let err = parse_err(&text);
        assert!(err.contains("min_free_mib"), "{err}");
        let text =
            format!("[audit]\ncommit_interval = \"0s\"\ncheckpoint_interval = \"5s\"\n{GOOD}");
        let audit = Config::parse(&text, Path::new("/")).unwrap().audit.unwrap();
        assert_eq!(
            (audit.checkpoint_interval, audit.commit_interval),
            (Duration::from_secs(5), Duration::ZERO)
        );
        let err = parse_err(&format!("[audit]\ncommit_interval = \"101ms\"\n{GOOD}"));
        assert!(
            err.contains("audit.commit_interval must be at most 100ms"),
            "{err}"
        );
        let err = parse_err(&format!("[audit]\ncheckpoint_interval = \"0s\"\n{GOOD}"));
        assert!(err.contains("audit.checkpoint_interval"), "{err}");
    }

    #[test]
    fn bad_server_section_is_rejected() {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n\
             default_deadline = \"0s\"\n{GOOD}"
        );
        let err = parse_err(&text);
        assert!(err.contains("server.default_deadline"), "{err}");
        let text = text.replace("default_deadline = \"0s\"", "identity = \"email\"");
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
                s.handshake_timeout
            ),
            (64, 200, 400, 256, Duration::from_secs(10))
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
            ("handshake_timeout = \"5ms\"", "server.handshake_timeout"),
        ] {
            let err = Config::parse(&format!("{server}{line}\n{GOOD}"), base)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
    }

    #[test]
    fn provider_environments_must_agree_and_be_settable() {
        let second = "\n[providers.other]\nmodule = \"lib/other.so\"\n\
                      env = { SOFTHSM2_CONF = \"/y/softhsm2.conf\" }\n\
                      [[providers.other.partitions]]\nname = \"q0\"\nlabel = \"q\"\n\
                      pin_env = \"Q_PIN\"\n";
        let err = parse_err(&format!("{GOOD}{second}"));
        assert!(
            err.contains(
                "providers.soft.env.SOFTHSM2_CONF differs from providers.other.env.SOFTHSM2_CONF"
            ),
            "{err}"
        );
        // The same value twice is one environment.
        let same = second.replace("/y/softhsm2.conf", "/x/softhsm2.conf");
        assert_eq!(
            Config::parse(&format!("{GOOD}{same}"), Path::new("/"))
                .unwrap()
                .module_env()
                .len(),
            1
        );
        for env in [
            "{ \"A=B\" = \"1\" }",
            "{ \"\" = \"1\" }",
            "{ A = \"x\\u0000y\" }",
        ] {
            let text = GOOD.replace("{ SOFTHSM2_CONF = \"/x/softhsm2.conf\" }", env);
            let err = parse_err(&text);
            assert!(
                err.contains("not a valid environment variable"),
                "{env}: {err}"
            );
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
