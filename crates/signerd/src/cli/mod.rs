//! Subcommands, one file each.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use signerd::config::Config;

mod audit;
mod check;
mod init;
mod key;
mod policy;
mod selftest;
mod serve;
mod sign;

/// Exit code for bad usage or a bad config (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;
/// Exit code when the HSM or a needed service is unavailable (sysexits EX_UNAVAILABLE).
pub const EXIT_UNAVAILABLE: u8 = 69;

/// Reads the config (exit 64 if it is bad) and gives the PKCS#11 modules the environment they
/// read at `C_Initialize` (`[providers.NAME] env`). The commands that load modules call this
/// first, while the process still has its only thread: `main` has parsed the command line and
/// installed the log subscriber, neither of which starts one (see
/// `signerd::hsm::module::set_module_env`).
fn load_config(path: &Path) -> Result<Config, CliError> {
    let cfg = Config::load(path).map_err(|e| CliError::new(EXIT_USAGE, e))?;
    signerd::hsm::module::set_module_env(&cfg.module_env()).map_err(|e| CliError::new(1, e))?;
    Ok(cfg)
}

/// The exit code for an engine that could not open: 64 for the operator's config or secrets
/// (a wrong PIN included), 69 for an unavailable HSM, 1 for anything else (e.g. the OS refused a
/// thread).
fn open_error(e: signerd::engine::OpenError) -> CliError {
    use signerd::engine::OpenError;
    let code = match &e {
        _ if e.is_config() => EXIT_USAGE,
        OpenError::Hsm { .. } => EXIT_UNAVAILABLE,
        _ => 1,
    };
    CliError::new(code, e)
}

/// signerd: a signing daemon in front of PKCS#11 HSMs.
#[derive(Debug, Parser)]
#[command(name = "signerd", version, about, long_about = None)]
pub struct Cli {
    /// Log format on stderr: `human` (default) or `json` (one JSON object per line). Also
    /// settable with the SIGNERD_LOG_FORMAT environment variable; SIGNERD_LOG sets the filter
    /// (default `info`).
    #[arg(long, global = true, value_enum, env = "SIGNERD_LOG_FORMAT", default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable lines for a terminal or journald.
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: QUIC front end with mutual TLS in front of the signing engine. Stops
    /// gracefully on SIGTERM/SIGINT.
    Serve {
        /// The signerd config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Key administration through a running daemon.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Access policy tools.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Sign random digests through a running daemon and verify every signature.
    Sign {
        /// Client config.
        #[arg(long, value_name = "FILE")]
        client: PathBuf,
        /// Key name.
        #[arg(long)]
        key: String,
        /// Scheme (default: the key type's default scheme).
        #[arg(long)]
        scheme: Option<String>,
        /// Number of digests.
        #[arg(long, default_value_t = 100)]
        count: usize,
    },
    /// Create a self-contained set-up. With --dev: SoftHSM2 tokens, PIN files, the trusted
    /// key-encryption key and DIR/signerd.toml, all inside DIR. Safe to run again.
    Init {
        /// Directory for the dev set-up (created if missing).
        #[arg(long, value_name = "DIR")]
        dev: PathBuf,
        /// Number of partitions (SoftHSM2 tokens).
        #[arg(long, default_value_t = 2)]
        partitions: usize,
        /// QUIC port the dev config listens on (127.0.0.1).
        #[arg(long, default_value_t = signerd::dev::DEV_PORT)]
        port: u16,
        /// Admin HTTP port (metrics, health) the dev config listens on (127.0.0.1).
        #[arg(long, default_value_t = signerd::dev::DEV_ADMIN_PORT)]
        admin_port: u16,
        /// Use kryoptic tokens (one sqlite file each, in DIR/tokens) from this PKCS#11 module
        /// instead of SoftHSM2 (`scripts/kryoptic` builds it and prints its path).
        #[arg(long, value_name = "MODULE")]
        kryoptic: Option<PathBuf>,
    },
    /// Load a config (and its access policy, if any), log in to every partition and list the
    /// keys found, then exit.
    Check {
        /// The signerd config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Print one JSON object (policy, partitions with their capabilities, keys) instead of
        /// text.
        #[arg(long)]
        json: bool,
    },
    /// Sign and verify real requests end to end on the configured HSMs (creates the key on
    /// every partition if it does not exist yet).
    Selftest {
        /// The signerd config file.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Key to sign with.
        #[arg(long, default_value = "selftest-p256")]
        key: String,
        /// Key type when the key has to be created: ec-p256, ec-p384, rsa-2048, rsa-3072,
        /// rsa-4096, ed25519.
        #[arg(long = "type", default_value = "ec-p256")]
        key_type: String,
        /// Number of requests.
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
}

/// `signerd audit ...`
#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check an audit log: the hash chain across all rotated files and every signed checkpoint.
    /// Prints the first bad record and exits 1 if anything was edited, deleted, reordered or
    /// truncated.
    Verify {
        /// The active audit log file (rotated segments beside it are found automatically).
        file: PathBuf,
        /// Pin the audit key: its public key (PEM, e.g. from `signerd key public signerd-audit`).
        /// Without it the key named in the log is used and the report says it was not pinned.
        #[arg(long, value_name = "PEM")]
        public_key: Option<PathBuf>,
        /// The log belongs to a running daemon: records after the last checkpoint are reported
        /// as not yet covered instead of failing the check for a missing seal.
        #[arg(long)]
        live: bool,
        /// The log's older segments were archived (`signerd audit archive`): it continues from
        /// this record, the archive's head as `audit verify --prefix` prints it (SEQ:HASH).
        #[arg(long, value_name = "SEQ:HASH")]
        after: Option<signerd::audit::Anchor>,
        /// FILE is in an archive, the beginning of a longer log: no active file and no seal
        /// are expected.
        #[arg(long, conflicts_with = "live")]
        prefix: bool,
    },
    /// Move the older rotated segments of an audit log into an archive directory, so the disk
    /// does not fill. Both parts are verified before anything moves and after; a segment
    /// leaves only once it is durable in the archive. Safe while the daemon runs. Prints the
    /// archive's head: the anchor the live log is verified from (`audit verify --after`).
    Archive {
        /// The active audit log file (or any of its segments).
        file: PathBuf,
        /// The archive directory (created if missing; later runs add to it).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Rotated segments to leave in place, newest first (at least 1).
        #[arg(long, default_value_t = 1)]
        keep: usize,
        /// Pin the audit key (as for `verify`).
        #[arg(long, value_name = "PEM")]
        public_key: Option<PathBuf>,
    },
}

/// A failed command: what to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub fn new(code: u8, message: impl std::fmt::Display) -> Self {
        CliError {
            message: message.to_string(),
            code,
        }
    }
}

pub fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve { config } => serve::run(&config),
        Command::Key(cmd) => key::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Audit(AuditCommand::Verify {
            file,
            public_key,
            live,
            after,
            prefix,
        }) => audit::verify_cmd(&file, public_key.as_deref(), live, after, prefix)
            .map_err(|e| CliError::new(1, e)),
        Command::Audit(AuditCommand::Archive {
            file,
            to,
            keep,
            public_key,
        }) => audit::archive_cmd(&file, &to, keep, public_key.as_deref())
            .map_err(|e| CliError::new(1, e)),
        Command::Sign {
            client,
            key,
            scheme,
            count,
        } => sign::run(&client, &key, scheme.as_deref(), count),
        Command::Init {
            dev,
            partitions,
            port,
            admin_port,
            kryoptic,
        } => init::run(
            &dev,
            partitions,
            signerd::dev::DevPorts {
                quic: port,
                admin: admin_port,
            },
            &kryoptic.map_or(
                signerd::dev::DevHsm::SoftHsm2,
                signerd::dev::DevHsm::Kryoptic,
            ),
        ),
        Command::Check { config, json } => check::run(&config, json),
        Command::Selftest {
            config,
            key,
            key_type,
            count,
        } => selftest::run(&config, &key, &key_type, count),
    }
}

/// A key listing, one line per version: `NAME vN TYPE STATE[ (signing)] on P0,P1`.
pub fn key_lines(keys: &[signerd::KeyInfo]) -> Vec<String> {
    keys.iter()
        .flat_map(|k| {
            k.versions.iter().map(move |v| {
                let signing = if k.signing_version == Some(v.version) {
                    " (signing)"
                } else {
                    ""
                };
                format!(
                    "{} v{} {} {}{signing} on {}",
                    k.name,
                    v.version,
                    k.key_type,
                    v.state,
                    v.partitions.join(",")
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use signerd::engine::OpenError;

    /// A start-up failure that is not the config's is not exit 64: a thread the OS refused
    /// exits 1, a bad config 64.
    #[test]
    fn open_errors_get_their_own_exit_codes() {
        let thread = OpenError::Thread {
            what: "worker 0".into(),
            source: std::io::Error::from_raw_os_error(11), // EAGAIN from pthread_create
        };
        assert!(!thread.is_config());
        let e = open_error(thread);
        assert_eq!(e.code, 1, "{}", e.message);
        assert!(
            e.message.contains("cannot start the worker 0 thread"),
            "{}",
            e.message
        );
        assert_eq!(
            open_error(OpenError::Invalid("bad".into())).code,
            EXIT_USAGE
        );
    }
}
