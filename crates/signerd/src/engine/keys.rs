//! The key registry's reading side: which keys exist, their versions, states and placement, and
//! their public keys. Admin operations that change it are in [`super::admin`]; verification in
//! the HSM is in [`super::verify`].

use std::sync::Arc;

use super::registry::Registry;
use super::{KeyInfo, PublicKey, VersionInfo};
use crate::error::EngineError;
use crate::hsm::Partition;
use signer_proto::keys::{KeyName, Scheme, Version};

/// The keys the engine knows, with the partitions they live on. Shared by the engine's parts
/// (routing reads it for every request; admin writes it).
#[derive(Debug)]
pub struct Keys {
    pub(super) partitions: Vec<Arc<Partition>>,
    pub(super) registry: Registry,
}

impl Keys {
    pub(super) fn new(partitions: Vec<Arc<Partition>>, registry: Registry) -> Keys {
        Keys {
            partitions,
            registry,
        }
    }

    /// All keys with their versions, states and placement.
    pub fn list(&self) -> Vec<KeyInfo> {
        self.registry
            .snapshot()
            .into_iter()
            .map(|(name, entry)| KeyInfo {
                signing_version: entry.signing_version().map(|v| v.version),
                key_type: entry.key_type,
                versions: entry
                    .versions
                    .values()
                    .map(|v| VersionInfo {
                        version: v.version,
                        state: v.state(),
                        partitions: self.partition_names(&v.partitions),
                    })
                    .collect(),
                name,
            })
            .collect()
    }

    /// Whether `name` is marked as an audit key in the tokens: clients may read its public key
    /// and nothing else.
    pub fn is_audit_key(&self, name: &KeyName) -> bool {
        self.registry.is_audit(name)
    }

    /// How many keys exist.
    pub fn count(&self) -> usize {
        self.registry.snapshot().len()
    }

    /// The public key of a version (default: the signing version, else the latest).
    pub fn public_key(
        &self,
        name: &KeyName,
        version: Option<Version>,
    ) -> Result<PublicKey, EngineError> {
        let v = self.registry.for_reading(name, version)?;
        Ok(PublicKey {
            name: v.name.clone(),
            version: v.version,
            key_type: v.key_type,
            spki_der: v.spki.clone(),
        })
    }

    /// The version a sign request for `name` (at `version`, or the signing version) would use,
    /// without signing: the batcher binds it into a tree's signed root before the HSM call.
    pub fn signing_version(
        &self,
        name: &KeyName,
        version: Option<Version>,
        scheme: Scheme,
    ) -> Result<Version, EngineError> {
        Ok(self.registry.for_signing(name, version, scheme)?.version)
    }

    /// The names of the partitions at `idx` (engine indices).
    pub(super) fn partition_names(&self, idx: &[usize]) -> Vec<String> {
        idx.iter()
            .map(|i| self.partitions[*i].name().to_owned())
            .collect()
    }
}
