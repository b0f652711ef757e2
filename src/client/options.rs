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
    /// Most sign calls sent together as one SignBatch request (1 to `MAX_BATCH`). 1, the
    /// default, sends every call as a request of its own. Above 1, calls for the same key,
    /// version and scheme that are made while an earlier one waits to be sent share a request
    /// (no timer: a call waits at most one yield to the runtime); each payload still gets its own
    /// signature and result. It cuts the per-request CPU of both sides under concurrent load. The
    /// identity needs the `sign_batch` op where a policy is configured.
    pub coalesce: usize,
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
    #[serde(default = "default_coalesce")]
    coalesce: usize,
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
        if !(1..=crate::protocol::MAX_BATCH).contains(&f.coalesce) {
            return Err(ClientError::Config(format!(
                "{}: coalesce must be 1 to {} (1: no coalescing)",
                path.display(),
                crate::protocol::MAX_BATCH
            )));
        }
        Ok(ClientOptions {
            endpoints: f.endpoints,
            server_name: f.server_name,
            ca: abs(f.ca),
            cert: abs(f.cert),
            key: abs(f.key),
            timeout: Duration::from_millis(f.timeout_ms),
            max_retries: f.max_retries,
            coalesce: f.coalesce,
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
fn default_coalesce() -> usize {
    1
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn read(extra: &str) -> Result<ClientOptions, ClientError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            format!(
                "endpoints = [\"127.0.0.1:7443\"]\nca = \"ca.pem\"\ncert = \"c.pem\"\n\
                 key = \"c.key\"\n{extra}"
            ),
        )
        .unwrap();
        ClientOptions::from_file(&path)
    }

    #[test]
    fn coalesce_defaults_to_off_and_is_bounded_by_the_batch_limit() {
        let o = read("").unwrap();
        assert_eq!((o.coalesce, o.max_retries), (1, 2));
        assert!(
            o.ca.is_absolute(),
            "relative paths resolve against the file"
        );
        assert_eq!(read("coalesce = 16").unwrap().coalesce, 16);
        assert_eq!(read("coalesce = 1024").unwrap().coalesce, 1024);
        for bad in ["coalesce = 0", "coalesce = 1025"] {
            let e = read(bad).unwrap_err().to_string();
            assert!(e.contains("coalesce must be 1 to 1024"), "{bad}: {e}");
        }
    }
}
