//! `signerd key ...`: key administration through a running daemon (client library).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{CliError, EXIT_UNAVAILABLE, EXIT_USAGE};
use signer_client::{Client, ClientError, ClientOptions, Status};
use signerd::{KeyType, Version};

/// Key administration commands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key (generated inside the HSM; replicated to every partition by default).
    Create {
        /// Key name.
        name: String,
        /// ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096 or ed25519.
        #[arg(long = "type")]
        key_type: String,
        /// Place the key on this partition only (repeat for several).
        #[arg(long = "partition")]
        partitions: Vec<String>,
        /// Client config (admin identity).
        #[arg(long, value_name = "FILE")]
        client: PathBuf,
    },
    /// Make a new version the signing version; older versions stay for verification only.
    Rotate {
        /// Key name.
        name: String,
        /// Client config (admin identity).
        #[arg(long, value_name = "FILE")]
        client: PathBuf,
    },
    /// Stop a version from signing.
    Retire {
        /// Key name.
        name: String,
        /// Version to retire.
        #[arg(long)]
        version: Version,
        /// Client config (admin identity).
        #[arg(long, value_name = "FILE")]
        client: PathBuf,
    },
    /// Destroy a retired version in every HSM (irreversible).
    Destroy {
        /// Key name.
        name: String,
        /// Version to destroy (must be retired).
        #[arg(long)]
        version: Version,
        /// Client config (admin identity).
        #[arg(long, value_name = "FILE")]
        client: PathBuf,
    },
    /// Print a public key (SubjectPublicKeyInfo, PEM).
    Public {
        /// Key name.
        name: String,
        /// Version (default: the signing version).
        #[arg(long)]
        version: Option<Version>,
        /// Client config.
        #[arg(long, value_name = "FILE")]
        client: PathBuf,
    },
    /// List keys, versions, states and placement.
    List {
        /// Client config.
        #[arg(long, value_name = "FILE")]
        client: PathBuf,
    },
}

pub fn run(cmd: KeyCommand) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(1, e))?;
    runtime.block_on(async move {
        match cmd {
            KeyCommand::Create {
                name,
                key_type,
                partitions,
                client,
            } => {
                let key_type: KeyType =
                    key_type.parse().map_err(|e| CliError::new(EXIT_USAGE, e))?;
                let v = connect(&client)
                    .await?
                    .create_key(&name, key_type, partitions)
                    .await
                    .map_err(call_error)?;
                println!(
                    "created {name} v{} ({key_type}) on {}",
                    v.version,
                    v.partitions.join(", ")
                );
            }
            KeyCommand::Rotate { name, client } => {
                let v = connect(&client)
                    .await?
                    .rotate_key(&name)
                    .await
                    .map_err(call_error)?;
                println!("{name}: v{} is now the signing version", v.version);
            }
            KeyCommand::Retire {
                name,
                version,
                client,
            } => {
                connect(&client)
                    .await?
                    .retire_key(&name, version)
                    .await
                    .map_err(call_error)?;
                println!("{name} v{version} retired");
            }
            KeyCommand::Destroy {
                name,
                version,
                client,
            } => {
                connect(&client)
                    .await?
                    .destroy_key(&name, version)
                    .await
                    .map_err(call_error)?;
                println!("{name} v{version} destroyed");
            }
            KeyCommand::Public {
                name,
                version,
                client,
            } => {
                let pk = connect(&client)
                    .await?
                    .public_key(&name, version)
                    .await
                    .map_err(call_error)?;
                eprintln!("{name} v{} ({})", pk.version, pk.key_type);
                print!("{}", pk.pem());
            }
            KeyCommand::List { client } => {
                let keys = connect(&client)
                    .await?
                    .list_keys()
                    .await
                    .map_err(call_error)?;
                for line in super::key_lines(&keys) {
                    println!("{line}");
                }
            }
        }
        Ok(())
    })
}

pub async fn connect(path: &Path) -> Result<Client, CliError> {
    let opts = ClientOptions::from_file(path).map_err(|e| CliError::new(EXIT_USAGE, e))?;
    Client::connect(opts).await.map_err(call_error)
}

pub fn call_error(e: ClientError) -> CliError {
    let code = match e.status() {
        Some(Status::InvalidArgument | Status::NotFound | Status::PermissionDenied) => EXIT_USAGE,
        _ if e.is_retryable() => EXIT_UNAVAILABLE,
        _ => 1,
    };
    CliError::new(code, e)
}
