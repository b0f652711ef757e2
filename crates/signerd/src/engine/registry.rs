//! The in-memory view of the keys in the tokens: names, versions, states, and which partitions
//! hold each version. Rebuilt from the tokens at start; the tokens stay the source of truth.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::EngineError;
use crate::hsm::objects::{FoundKey, KeyRole};
use signer_proto::keys::{KeyName, KeyState, KeyType, Scheme, Version};

/// One version of a named key.
#[derive(Debug)]
pub struct VersionEntry {
    /// Process-unique id, used by workers to cache object handles.
    pub uid: u64,
    /// Key name.
    pub name: KeyName,
    /// Version number.
    pub version: Version,
    /// Key type.
    pub key_type: KeyType,
    /// `CKA_ID` shared by its objects on every partition.
    pub id: Vec<u8>,
    /// SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
    /// Indices of the partitions holding this version.
    pub partitions: Vec<usize>,
    /// Client key or audit key, as its label in the token says.
    pub role: KeyRole,
    state: AtomicU8,
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl VersionEntry {
    /// A new entry for a key version found in (or just made in) the tokens, held by
    /// `partitions`; active if the key may sign.
    pub fn new(key: FoundKey, partitions: Vec<usize>) -> VersionEntry {
        let state = if key.can_sign {
            KeyState::Active
        } else {
            KeyState::Retired
        };
        VersionEntry {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            name: key.name,
            version: key.version,
            key_type: key.key_type,
            id: key.id,
            spki: key.spki,
            partitions,
            role: key.role,
            state: AtomicU8::new(state as u8),
        }
    }

    /// A minimal active entry on partition 0, for unit tests of the pipeline.
    #[doc(hidden)]
    pub fn for_tests(name: KeyName, version: Version, key_type: KeyType, id: Vec<u8>) -> Self {
        VersionEntry::new(
            FoundKey {
                name,
                version,
                id,
                key_type,
                can_sign: true,
                spki: Vec::new(),
                role: KeyRole::Client,
            },
            vec![0],
        )
    }

    /// Current state. Workers read it right before every `C_Sign`.
    pub fn state(&self) -> KeyState {
        if self.state.load(Ordering::SeqCst) == KeyState::Active as u8 {
            KeyState::Active
        } else {
            KeyState::Retired
        }
    }

    /// Marks the version retired; from now on no worker signs with it.
    pub fn retire(&self) {
        self.state.store(KeyState::Retired as u8, Ordering::SeqCst);
    }
}

/// A named key: its type and versions.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    /// Type shared by all versions.
    pub key_type: KeyType,
    /// Versions by number.
    pub versions: BTreeMap<Version, Arc<VersionEntry>>,
}

impl KeyEntry {
    /// The signing version: the highest active one.
    pub fn signing_version(&self) -> Option<&Arc<VersionEntry>> {
        self.versions
            .values()
            .rev()
            .find(|v| v.state() == KeyState::Active)
    }

    /// What the key is for: an audit key if any of its versions is marked so in the token.
    pub fn role(&self) -> KeyRole {
        if self.versions.values().any(|v| v.role == KeyRole::Audit) {
            KeyRole::Audit
        } else {
            KeyRole::Client
        }
    }

    /// The highest version number (active or not).
    pub fn latest(&self) -> Version {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }
}

/// All keys, behind a read-mostly lock.
#[derive(Debug, Default)]
pub struct Registry {
    keys: RwLock<BTreeMap<KeyName, KeyEntry>>,
}

impl Registry {
    /// The version a sign request should use: the given one if active, else the signing version.
    ///
    /// The one check that `scheme` fits the key's type is here: every sign path (a plain
    /// request, a batch tree's leaves) goes through it.
    pub fn for_signing(
        &self,
        name: &KeyName,
        version: Option<Version>,
        scheme: Scheme,
    ) -> Result<Arc<VersionEntry>, EngineError> {
        let keys = self.keys.read();
        let entry = keys
            .get(name)
            .ok_or_else(|| EngineError::NotFound(format!("key {name}")))?;
        let v = match version {
            Some(n) => entry
                .versions
                .get(&n)
                .ok_or_else(|| EngineError::NotFound(format!("key {name} version {n}")))?,
            None => entry.signing_version().ok_or_else(|| {
                EngineError::FailedPrecondition(format!("key {name} has no active version"))
            })?,
        };
        if v.state() != KeyState::Active {
            return Err(EngineError::FailedPrecondition(format!(
                "key {name} version {} is retired: verify and public-key export only",
                v.version
            )));
        }
        if !v.key_type.supports(scheme) {
            return Err(EngineError::InvalidArgument(format!(
                "scheme {scheme} cannot be used with {} key {name}",
                v.key_type
            )));
        }
        Ok(Arc::clone(v))
    }

    /// A version for reading (public key): the given one, else the signing version, else the
    /// latest.
    pub fn for_reading(
        &self,
        name: &KeyName,
        version: Option<Version>,
    ) -> Result<Arc<VersionEntry>, EngineError> {
        let keys = self.keys.read();
        let entry = keys
            .get(name)
            .ok_or_else(|| EngineError::NotFound(format!("key {name}")))?;
        let v = match version {
            Some(n) => entry.versions.get(&n),
            None => entry
                .signing_version()
                .or_else(|| entry.versions.values().next_back()),
        };
        v.cloned().ok_or_else(|| match version {
            Some(n) => EngineError::NotFound(format!("key {name} version {n}")),
            None => EngineError::NotFound(format!("key {name} has no versions")),
        })
    }

    /// A copy of one key's entry.
    pub fn key(&self, name: &KeyName) -> Option<KeyEntry> {
        self.keys.read().get(name).cloned()
    }

    /// Whether `name` is an audit key (checked on every request: no copy of the entry).
    pub fn is_audit(&self, name: &KeyName) -> bool {
        self.keys
            .read()
            .get(name)
            .is_some_and(|k| k.role() == KeyRole::Audit)
    }

    /// A snapshot of all keys.
    pub fn snapshot(&self) -> BTreeMap<KeyName, KeyEntry> {
        self.keys.read().clone()
    }

    /// Adds (or replaces) a version.
    pub fn insert(&self, v: Arc<VersionEntry>) {
        let mut keys = self.keys.write();
        let entry = keys.entry(v.name.clone()).or_insert_with(|| KeyEntry {
            key_type: v.key_type,
            versions: BTreeMap::new(),
        });
        entry.versions.insert(v.version, v);
    }

    /// Removes a version; removes the key when it was the last one.
    pub fn remove(&self, name: &KeyName, version: Version) -> Option<Arc<VersionEntry>> {
        let mut keys = self.keys.write();
        let entry = keys.get_mut(name)?;
        let removed = entry.versions.remove(&version);
        if entry.versions.is_empty() {
            keys.remove(name);
        }
        removed
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v(name: &str, version: Version, state: KeyState) -> Arc<VersionEntry> {
        Arc::new(VersionEntry::new(
            FoundKey {
                name: KeyName::new(name).unwrap(),
                version,
                id: vec![version as u8],
                key_type: KeyType::EcP256,
                can_sign: state == KeyState::Active,
                spki: vec![],
                role: KeyRole::Client,
            },
            vec![0, 1],
        ))
    }

    #[test]
    fn signing_version_is_highest_active() {
        let r = Registry::default();
        let name = KeyName::new("k").unwrap();
        r.insert(v("k", 1, KeyState::Retired));
        r.insert(v("k", 2, KeyState::Active));
        r.insert(v("k", 3, KeyState::Retired));
        assert_eq!(
            r.for_signing(&name, None, Scheme::EcdsaSha256)
                .unwrap()
                .version,
            2
        );
        assert_eq!(
            r.for_signing(&name, Some(2), Scheme::EcdsaSha256)
                .unwrap()
                .version,
            2
        );
        assert!(matches!(
            r.for_signing(&name, Some(1), Scheme::EcdsaSha256),
            Err(EngineError::FailedPrecondition(_))
        ));
        assert!(matches!(
            r.for_signing(&name, Some(9), Scheme::EcdsaSha256),
            Err(EngineError::NotFound(_))
        ));
        // The scheme must fit the key type: checked here, once, for every sign path.
        assert!(matches!(
            r.for_signing(&name, None, Scheme::Ed25519),
            Err(EngineError::InvalidArgument(m)) if m.contains("cannot be used with ec-p256")
        ));
        assert_eq!(r.for_reading(&name, None).unwrap().version, 2);
        assert_eq!(r.key(&name).unwrap().latest(), 3);
    }

    #[test]
    fn retire_and_remove() {
        let r = Registry::default();
        let name = KeyName::new("k").unwrap();
        let one = v("k", 1, KeyState::Active);
        r.insert(Arc::clone(&one));
        one.retire();
        assert!(r.for_signing(&name, None, Scheme::EcdsaSha256).is_err());
        assert_eq!(r.for_reading(&name, None).unwrap().version, 1);
        assert!(r.remove(&name, 1).is_some());
        assert!(matches!(
            r.for_reading(&name, None),
            Err(EngineError::NotFound(_))
        ));
        assert!(r.snapshot().is_empty());
    }
}
