//! Secrets (PINs): read from a file or an environment variable, never argv; redacted in `Debug`;
//! zeroized on drop.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

/// Where a PIN comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN (one line; a trailing newline is ignored). It must not be readable
    /// by group or others.
    File(PathBuf),
    /// An environment variable holding the PIN.
    Env(String),
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::File(p) => write!(f, "file:{}", p.display()),
            PinSource::Env(v) => write!(f, "env:{v}"),
        }
    }
}

/// A PIN. `Debug` prints `Pin([REDACTED])`; the memory is zeroized on drop.
pub struct Pin(SecretString);

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin([REDACTED])")
    }
}

/// Why a PIN could not be loaded. Never contains the PIN.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The PIN file could not be read.
    #[error("cannot read PIN file {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        reason: String,
    },
    /// The PIN file is readable by group or others.
    #[error(
        "PIN file {path} has mode {mode:o}: it must not be readable by group or others \
         (chmod 600 {path})"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The environment variable is not set or not valid UTF-8.
    #[error("environment variable {0} (PIN source) is not set")]
    EnvMissing(String),
    /// The PIN is empty.
    #[error("PIN from {0} is empty")]
    Empty(String),
}

impl Pin {
    /// Wraps a PIN value (used by `init --dev`, which generates PINs).
    pub fn new(value: String) -> Self {
        Pin(SecretString::from(value))
    }

    /// Loads the PIN from its source.
    pub fn load(source: &PinSource) -> Result<Self, PinError> {
        let value = match source {
            PinSource::File(path) => read_private_file(path)?,
            PinSource::Env(var) => {
                std::env::var(var).map_err(|_| PinError::EnvMissing(var.clone()))?
            }
        };
        let mut value = zeroize::Zeroizing::new(value);
        let trimmed = value.trim_end_matches(['\r', '\n']).to_owned();
        zeroize::Zeroize::zeroize(&mut *value);
        if trimmed.is_empty() {
            return Err(PinError::Empty(format!("{source:?}")));
        }
        Ok(Pin(SecretString::from(trimmed)))
    }

    /// The PIN in the form the PKCS#11 binding takes. Use it only to call `C_Login`.
    pub fn auth_pin(&self) -> cryptoki::types::AuthPin {
        cryptoki::types::AuthPin::from(self.0.expose_secret().to_owned())
    }

    /// The PIN's characters. Only for writing a PIN file at `init --dev`.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Reads a secret file, refusing files readable by group or others, and anything but a regular
/// file. The file is opened once and its mode is read from the opened handle (`fstat`), so the
/// file that was checked is the file that is read: swapping another file in at the path between a
/// check and a read cannot work.
pub fn read_private_file(path: &Path) -> Result<String, PinError> {
    use std::io::Read;
    let read_err = |e: std::io::Error| PinError::Read {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(PinError::Read {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(PinError::Permissions {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_err)?;
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let pin = Pin::new("123456".into());
        assert!(!format!("{pin:?}").contains("123456"));
    }

    #[cfg(unix)]
    #[test]
    fn file_permissions_and_trimming() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.pin");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Pin::load(&PinSource::File(path.clone())).unwrap_err();
        assert!(
            matches!(err, PinError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains("s3cret"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pin = Pin::load(&PinSource::File(path)).unwrap();
        assert_eq!(pin.expose(), "s3cret");
    }

    /// The file checked is the file read: a thread swaps a group-readable file and a private
    /// one in at the path as fast as it can; a read returns the private file's text or refuses,
    /// never the group-readable file's text. (Checking the path's mode, then opening the path
    /// again, returned it within a few thousand tries.)
    #[cfg(unix)]
    #[test]
    fn checked_file_is_the_file_read() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user.pin");
        let make = |name: &str, text: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        };
        make("user.pin", "private", 0o600);
        let stop = AtomicBool::new(false);
        let leaked = std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (text, mode) = if i.is_multiple_of(2) {
                        ("open", 0o644)
                    } else {
                        ("private", 0o600)
                    };
                    let p = make(&format!("next-{i}"), text, mode);
                    std::fs::rename(&p, &path).unwrap();
                    i += 1;
                }
            });
            let mut leaked = 0;
            for _ in 0..20_000 {
                match read_private_file(&path) {
                    Ok(text) if text == "open" => leaked += 1,
                    Ok(text) => assert_eq!(text, "private"),
                    Err(PinError::Permissions { mode, .. }) => assert_eq!(mode, 0o644),
                    Err(e) => panic!("{e}"),
                }
            }
            stop.store(true, Ordering::Relaxed);
            leaked
        });
        assert_eq!(leaked, 0, "group-readable file read {leaked} times");
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_private_file(dir.path()).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn missing_env() {
        let err = Pin::load(&PinSource::Env("SIGNERD_TEST_SURELY_UNSET_PIN".into())).unwrap_err();
        assert!(matches!(err, PinError::EnvMissing(_)));
    }
}
