//! Key lifecycle: create (generate in one partition, replicate wrapped to the others), rotate,
//! retire, destroy. These block on the HSM: call them from a blocking context. They are
//! serialized with each other; signing continues meanwhile. Each holds the modules' call locks
//! while it runs ([`AdminWork`]), so a module re-initialization never leaves it a stale handle.

use std::sync::Arc;

use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use rand::RngCore;

use parking_lot::Mutex;

use super::keys::Keys;
use super::registry::VersionEntry;
use super::VersionInfo;
use crate::error::EngineError;
use crate::hsm::objects::KeyRole;
use crate::hsm::{mechanism, objects, HsmError, Partition};
use signer_proto::keys::{KeyName, KeyState, KeyType, Payload, Version};

/// Serializes key-object writes (and the key scan at engine start) across every engine in this
/// process. Admin operations are rare, so this costs nothing, and SoftHSM2 2.6 corrupts token
/// objects when they are created concurrently from several threads (softhsm/SoftHSMv2#573; the
/// parsec project serializes for the same reason).
pub(crate) static ADMIN_LOCK: Mutex<()> = Mutex::new(());

/// Holds [`ADMIN_LOCK`]: for code outside the engine that creates or destroys objects in tokens
/// an engine of this process uses (tests, tools), so that it never does so concurrently with the
/// engine's own object writes (SoftHSM2 fails such calls with CKR_GENERAL_ERROR, #573). Do not
/// call engine admin operations while holding it.
#[doc(hidden)]
pub fn hold_object_writes() -> parking_lot::MutexGuard<'static, ()> {
    ADMIN_LOCK.lock()
}

/// One admin op's hold on the HSMs: the call lock of every module (so no module is
/// re-initialized while the op runs: every session and object handle it opens stays valid until
/// it ends), then [`ADMIN_LOCK`]. Taken in that order, the order workers take them in.
pub(crate) struct AdminWork<'a> {
    _calls: Vec<parking_lot::RwLockReadGuard<'a, ()>>,
    _serial: parking_lot::MutexGuard<'static, ()>,
}

/// The admin side of the key registry: create, rotate, retire, destroy. Every change goes to
/// the tokens first and to the registry after, so the registry never names an object that does
/// not exist.
#[derive(Debug, Clone)]
pub struct KeyAdmin {
    pub(super) keys: Arc<Keys>,
}

impl KeyAdmin {
    /// Starts a unit of admin work ([`AdminWork`]).
    pub(crate) fn work(&self) -> AdminWork<'_> {
        let mut modules: Vec<&Arc<crate::hsm::Module>> = Vec::new();
        for p in self.keys.partitions.iter() {
            if !modules.iter().any(|m| Arc::ptr_eq(m, p.module())) {
                modules.push(p.module());
            }
        }
        AdminWork {
            _calls: modules.into_iter().map(|m| m.calls()).collect(),
            _serial: ADMIN_LOCK.lock(),
        }
    }

    /// Creates key `name` (version 1) of `key_type`. The key pair is generated inside the first
    /// placement partition and copied, wrapped under the trusted KEK, to the others. `placement`
    /// names partitions; `None` means every partition.
    pub fn create_key(
        &self,
        name: &KeyName,
        key_type: KeyType,
        placement: Option<&[String]>,
    ) -> Result<VersionInfo, EngineError> {
        let _work = self.work();
        if self.keys.registry.key(name).is_some() {
            return Err(EngineError::InvalidArgument(format!(
                "key {name} already exists; rotate it to make a new version"
            )));
        }
        self.create_with_role(name, key_type, placement, KeyRole::Client)
    }

    /// [`KeyAdmin::create_key`] for a key marked in the token as `role`.
    pub(super) fn create_with_role(
        &self,
        name: &KeyName,
        key_type: KeyType,
        placement: Option<&[String]>,
        role: KeyRole,
    ) -> Result<VersionInfo, EngineError> {
        let targets = self.placement(placement)?;
        let targets = capable(name, key_type, targets, placement.is_none())?;
        let version = self.next_version(name, 0)?;
        let v =
            self.create_version(name, key_type, version, role, &targets, placement.is_none())?;
        Ok(self.info(&v))
    }

    /// Creates version N+1 of `name` on the partitions holding its latest version, makes it the
    /// signing version and retires every older active version.
    pub fn rotate_key(&self, name: &KeyName) -> Result<VersionInfo, EngineError> {
        let _work = self.work();
        let entry = self
            .keys
            .registry
            .key(name)
            .ok_or_else(|| EngineError::NotFound(format!("key {name}")))?;
        let latest = entry
            .versions
            .values()
            .next_back()
            .ok_or_else(|| EngineError::NotFound(format!("key {name}")))?;
        let targets: Vec<_> = latest
            .partitions
            .iter()
            .map(|i| Arc::clone(&self.keys.partitions[*i]))
            .collect();
        let version = self.next_version(name, entry.latest())?;
        let v =
            self.create_version(name, entry.key_type, version, entry.role(), &targets, false)?;
        for old in entry.versions.values() {
            if old.state() == KeyState::Active {
                self.retire_version(old)?;
            }
        }
        Ok(self.info(&v))
    }

    /// Stops `version` of `name` from signing, in the engine at once and in every token
    /// (`CKA_SIGN=false`). It stays available for verification and public-key export.
    pub fn retire_key(&self, name: &KeyName, version: Version) -> Result<VersionInfo, EngineError> {
        let _work = self.work();
        let v = self.keys.registry.for_reading(name, Some(version))?;
        self.retire_version(&v)?;
        Ok(self.info(&v))
    }

    /// Deletes `version` of `name` from every token. Only retired versions can be destroyed.
    pub fn destroy_key(&self, name: &KeyName, version: Version) -> Result<(), EngineError> {
        let _work = self.work();
        let v = self.keys.registry.for_reading(name, Some(version))?;
        if v.state() == KeyState::Active {
            return Err(EngineError::FailedPrecondition(format!(
                "{name} version {version} is active; retire it before destroying it"
            )));
        }
        // The highest version's number would be handed out again by the next rotate or create:
        // keep it as the name's high-water mark in the tokens first (a crash after leaves only
        // a mark). Marks are written only here, the one place a number can be lost, so creates
        // and rotates write no extra object.
        let highest = self
            .keys
            .registry
            .key(name)
            .is_none_or(|entry| entry.latest() <= version);
        for i in &v.partitions {
            let p = &self.keys.partitions[*i];
            let session = p.open_session().map_err(|e| hsm_err(p, e))?;
            if highest {
                objects::raise_high_water(&session, name, version).map_err(|e| hsm_err(p, e))?;
            }
            objects::destroy_version(&session, &v.id).map_err(|e| hsm_err(p, e))?;
        }
        self.keys.registry.remove(name, version);
        tracing::info!(key = %name, version, "key version destroyed");
        Ok(())
    }

    fn retire_version(&self, v: &VersionEntry) -> Result<(), EngineError> {
        // The engine stops first (workers check the state before every C_Sign), then the tokens.
        v.retire();
        for i in &v.partitions {
            let p = &self.keys.partitions[*i];
            let session = p.open_session().map_err(|e| hsm_err(p, e))?;
            let private = objects::find_private(&session, &v.id)
                .map_err(|e| hsm_err(p, e))?
                .ok_or_else(|| missing(p, v))?;
            objects::disable_signing(&session, private).map_err(|e| hsm_err(p, e))?;
            // Workers' session copies were made with CKA_SIGN=true: destroy them before saying
            // "retired". Workers make copies under ADMIN_LOCK (held here, in `AdminWork`) and
            // look at the state again first, so none is made after this.
            let copies =
                objects::destroy_session_copies(&session, &v.id).map_err(|e| hsm_err(p, e))?;
            if copies > 0 {
                tracing::debug!(key = %v.name, version = v.version, partition = %p.name(), copies, "destroyed the workers' session copies");
            }
        }
        tracing::info!(key = %v.name, version = v.version, "key version retired");
        Ok(())
    }

    /// The number of `name`'s next version: one past the highest it has ever had, in the
    /// registry (`known`) or in any partition's high-water mark (written when the highest
    /// version is destroyed), so a number is never given to two different keys. A partition whose mark cannot
    /// be read is skipped with a warning (it holds a number higher than the others only if
    /// versions were made on it alone).
    fn next_version(&self, name: &KeyName, known: Version) -> Result<Version, EngineError> {
        let mut highest = known;
        for p in self.keys.partitions.iter() {
            let mark = p.open_session().and_then(|s| objects::high_water(&s, name));
            match mark {
                Ok(Some(v)) => highest = highest.max(v),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(key = %name, partition = %p.name(), "cannot read the version mark: {e}")
                }
            }
        }
        highest.checked_add(1).ok_or_else(|| {
            EngineError::FailedPrecondition(format!("key {name} has used every version number"))
        })
    }

    fn placement(&self, names: Option<&[String]>) -> Result<Vec<Arc<Partition>>, EngineError> {
        let all = &self.keys.partitions;
        let Some(names) = names else {
            return Ok(all.iter().filter(|p| p.is_healthy()).cloned().collect());
        };
        let mut out: Vec<Arc<Partition>> = Vec::new();
        for n in names {
            let p = all
                .iter()
                .find(|p| p.name() == n)
                .ok_or_else(|| EngineError::InvalidArgument(format!("no partition named {n:?}")))?;
            if !out.iter().any(|q| q.index() == p.index()) {
                out.push(Arc::clone(p));
            }
        }
        if out.is_empty() {
            return Err(EngineError::InvalidArgument(
                "placement names no partition".into(),
            ));
        }
        Ok(out)
    }

    /// Generates in `targets[0]`, copies to the rest, checks every copy, registers the version.
    /// On failure nothing is left behind in any token. With `best_effort` (default placement), a
    /// module that cannot wrap this key type leaves the key on the first partition only (logged);
    /// otherwise that is an error.
    fn create_version(
        &self,
        name: &KeyName,
        key_type: KeyType,
        version: Version,
        role: KeyRole,
        targets: &[Arc<Partition>],
        best_effort: bool,
    ) -> Result<Arc<VersionEntry>, EngineError> {
        let source = targets.first().ok_or_else(|| EngineError::Unavailable {
            reason: "no healthy partition to create the key in".into(),
            retry_after: std::time::Duration::from_secs(1),
        })?;
        let mut id = vec![0u8; objects::ID_LEN];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let mut touched: Vec<&Arc<Partition>> = vec![source];
        let result = (|| {
            let src = source.open_session().map_err(|e| hsm_err(source, e))?;
            let copies = targets[1..]
                .iter()
                .any(|t| t.spec().replicate && source.spec().replicate);
            let (public, private) =
                objects::generate(&src, key_type, name, version, role, &id, copies)
                    .map_err(|e| hsm_err(source, e))?;
            let (_, spki) = objects::public_key(&src, public).map_err(|e| hsm_err(source, e))?;
            let mut holders = vec![source.index()];
            for target in &targets[1..] {
                touched.push(target);
                if target.spec().replicate && source.spec().replicate {
                    let copied = replicate_to(
                        &src,
                        public,
                        private,
                        target,
                        (key_type, name, version, role),
                        &id,
                    )?;
                    if !copied {
                        let why = format!(
                            "the PKCS#11 module of partition {} cannot wrap {key_type} private \
                             keys, so the key cannot be copied without leaving the HSM",
                            source.name()
                        );
                        if !best_effort {
                            return Err(EngineError::FailedPrecondition(why));
                        }
                        tracing::warn!(key = %name, version, "{why}; placed on {} only", source.name());
                        touched.pop();
                        break;
                    }
                } else {
                    // The HSM cluster replicates by itself; use the copy once it is there.
                    let t = target.open_session().map_err(|e| hsm_err(target, e))?;
                    if objects::find_private(&t, &id)
                        .map_err(|e| hsm_err(target, e))?
                        .is_none()
                    {
                        continue;
                    }
                }
                let t = target.open_session().map_err(|e| hsm_err(target, e))?;
                let copy_public = objects::find_public(&t, &id)
                    .map_err(|e| hsm_err(target, e))?
                    .ok_or_else(|| {
                        EngineError::Hsm(format!("no public key copy in {}", target.name()))
                    })?;
                let (_, copy_spki) =
                    objects::public_key(&t, copy_public).map_err(|e| hsm_err(target, e))?;
                if copy_spki != spki {
                    return Err(EngineError::Hsm(format!(
                        "public key of the copy in partition {} differs from the original",
                        target.name()
                    )));
                }
                holders.push(target.index());
            }
            if copies {
                objects::seal(&src, private).map_err(|e| hsm_err(source, e))?;
            }
            Ok((spki, holders))
        })();
        match result {
            Ok((spki, holders)) => {
                let found = objects::FoundKey {
                    name: name.clone(),
                    version,
                    id,
                    key_type,
                    can_sign: true,
                    spki,
                    role,
                };
                let v = Arc::new(VersionEntry::new(found, holders));
                self.keys.registry.insert(Arc::clone(&v));
                tracing::info!(key = %name, version, %key_type, partitions = v.partitions.len(), "key version created");
                Ok(v)
            }
            Err(e) => {
                for p in touched {
                    if let Ok(s) = p.open_session() {
                        if let Err(err) = objects::destroy_version(&s, &id) {
                            tracing::error!(partition = %p.name(), "rollback of {name} v{version}: {err}");
                        }
                    }
                }
                Err(e)
            }
        }
    }

    fn info(&self, v: &VersionEntry) -> VersionInfo {
        VersionInfo {
            version: v.version,
            state: v.state(),
            partitions: self.keys.partition_names(&v.partitions),
        }
    }
}

/// Copies a private key to `target`: wrapped under the source's trusted KEK, unwrapped under the
/// target's copy of the same KEK as a sensitive, non-extractable token object. Then proves the
/// copy is the same key: it signs a random challenge that the source's public key verifies.
/// Returns false, having changed nothing, when the module cannot wrap this key type.
fn replicate_to(
    src: &Session,
    public: ObjectHandle,
    private: ObjectHandle,
    target: &Partition,
    (key_type, name, version, role): (KeyType, &KeyName, Version, KeyRole),
    id: &[u8],
) -> Result<bool, EngineError> {
    let kek_missing = |where_: &str| {
        EngineError::Hsm(format!(
            "no key-encryption key ({}) in {where_}; run the init ceremony for every partition",
            objects::KEK_LABEL
        ))
    };
    let src_err = |e: HsmError| EngineError::Hsm(format!("replicating from source: {e}"));
    let kek_src = objects::find_kek(src)
        .map_err(src_err)?
        .ok_or_else(|| kek_missing("the source partition"))?;
    let wrapped = match objects::wrap_private(src, kek_src, private) {
        Ok(w) => zeroize::Zeroizing::new(w),
        Err(e) if e.rv() == Some(cryptoki::error::RvError::KeyNotWrappable) => return Ok(false),
        Err(e) => return Err(src_err(e)),
    };
    let public_attrs = objects::public_attributes(src, public, key_type).map_err(src_err)?;
    let t = target.open_session().map_err(|e| hsm_err(target, e))?;
    let kek_t = objects::find_kek(&t)
        .map_err(|e| hsm_err(target, e))?
        .ok_or_else(|| kek_missing(target.name()))?;
    let (copy_private, _) = objects::unwrap_copy(
        &t,
        kek_t,
        &wrapped,
        key_type,
        name,
        version,
        role,
        id,
        public_attrs,
    )
    .map_err(|e| hsm_err(target, e))?;

    let scheme = key_type.default_scheme();
    let mut challenge = vec![0u8; scheme.digest_len().unwrap_or(32)];
    rand::rngs::OsRng.fill_bytes(&mut challenge);
    let payload = Payload::new(scheme, challenge.into())?;
    let mech = mechanism::mechanism(scheme);
    let input = mechanism::sign_input(&payload);
    let sig = t
        .sign(&mech, copy_private, &input)
        .map_err(|e| hsm_err(target, e.into()))?;
    src.verify(&mech, public, &input, &sig).map_err(|e| {
        EngineError::Hsm(format!(
            "the copy in partition {} does not sign like the original ({e}); not using it",
            target.name()
        ))
    })?;
    Ok(true)
}

fn hsm_err(p: &Partition, e: HsmError) -> EngineError {
    EngineError::Hsm(format!("partition {}: {e}", p.name()))
}

fn missing(p: &Partition, v: &VersionEntry) -> EngineError {
    EngineError::Hsm(format!(
        "key {} version {} is missing from partition {}",
        v.name,
        v.version,
        p.name()
    ))
}

/// Checks, before anything is made, that every target partition can create `key_type` (from
/// the capabilities probed at start: the key-pair generation mechanism with this key size, and a
/// mechanism to sign with it). With an explicit placement, one that cannot is an error naming the
/// partition and the missing mechanism. With the default placement (`best_effort`: every
/// partition), partitions that cannot are left out with a warning, and it is an error only when
/// none can.
fn capable(
    name: &KeyName,
    key_type: KeyType,
    targets: Vec<Arc<Partition>>,
    best_effort: bool,
) -> Result<Vec<Arc<Partition>>, EngineError> {
    let mut able = Vec::with_capacity(targets.len());
    let mut refusals = Vec::new();
    for p in targets {
        match p.capabilities().cannot_create(key_type) {
            None => able.push(p),
            Some(why) => refusals.push(format!(
                "partition {} cannot create {key_type} keys: {why}",
                p.name()
            )),
        }
    }
    if refusals.is_empty() {
        return Ok(able);
    }
    if best_effort && !able.is_empty() {
        for r in &refusals {
            tracing::warn!(key = %name, "{r}; placing the key on the other partitions");
        }
        return Ok(able);
    }
    Err(EngineError::FailedPrecondition(refusals.join("; ")))
}
