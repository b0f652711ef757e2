//! PKCS#11: module context, partitions (tokens), sessions, key objects, mechanisms, error
//! classes and `pkcs11:` URIs (RFC 7512).

pub mod capabilities;
pub mod der;
pub mod error;
pub mod mechanism;
pub mod module;
pub mod objects;
pub mod partition;
pub mod raw;
pub mod uri;

pub use error::{ErrorClass, HsmError, HsmResult};
pub use module::Module;
pub use partition::{Partition, PartitionSpec, PartitionStats};

/// Where Debian and Ubuntu install the SoftHSM2 module.
pub const SOFTHSM2_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Finds the SoftHSM2 module: `$SIGNERD_SOFTHSM2_MODULE`, then the usual install locations.
pub fn find_softhsm2() -> Option<std::path::PathBuf> {
    let candidates = std::env::var("SIGNERD_SOFTHSM2_MODULE")
        .ok()
        .into_iter()
        .chain([
            SOFTHSM2_MODULE.to_owned(),
            "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so".to_owned(),
            "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so".to_owned(),
            "/usr/local/lib/softhsm/libsofthsm2.so".to_owned(),
            "/opt/homebrew/lib/softhsm/libsofthsm2.so".to_owned(),
        ]);
    candidates
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}
