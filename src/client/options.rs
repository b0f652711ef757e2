//! Client options, usually read from a TOML file (`signerd init --dev` writes `client.toml` for
//! the admin identity and `client-app.toml` for an ordinary one).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ClientError;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Server addresses; the client uses one at a time and moves on when it fails.
    pub endpoints: Vec<SocketAddr>,
    /// Name the server certificate must carry.
    pub server_name: String,
    /// CA bundle (PEM) that the server certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate chain (PEM).
    pub cert: PathBuf,
    /// Client private key (PEM, mode 0600).
    pub key: PathBuf,
    /// Per-call timeout, also sent as the request deadline. Default 5 s.
    pub timeout: Duration,
    /// Retries of retryable answers per call (within the timeout). Default 2.
    pub max_retries: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    endpoints: Vec<SocketAddr>,
    #[serde(default = "default_server_name")]
    server_name: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_retries")]
    max_retries: u32,
}

impl ClientOptions {
    /// Reads a client TOML file; relative paths are relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<ClientOptions, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", path.display())))?;
        let f: File = toml::from_str(&text)
            .map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_owned))
            .unwrap_or_else(|| PathBuf::from("."));
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if f.timeout_ms == 0 {
            return Err(ClientError::Config("timeout_ms must be > 0".into()));
        }
        Ok(ClientOptions {
            endpoints: f.endpoints,
            server_name: f.server_name,
            ca: abs(f.ca),
            cert: abs(f.cert),
            key: abs(f.key),
            timeout: Duration::from_millis(f.timeout_ms),
            max_retries: f.max_retries,
        })
    }
}

fn default_server_name() -> String {
    "localhost".into()
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_retries() -> u32 {
    2
}
