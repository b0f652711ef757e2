//! The raw PKCS#11 ceiling: N threads, each with its own session on the engine's tokens, signing
//! in a tight loop with the same key handling as the engine (the token key object, or a
//! session-object copy where the provider config asks for one). Used by the engine benchmark and
//! by `loadgen ceiling`, so that the daemon can be quoted as a ratio of what the HSM allows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::config::Config;
use crate::hsm::{mechanism, objects, Module, Partition, PartitionSpec};
use crate::secret::Pin;
use signer_proto::keys::{KeyName, Payload};

/// What a ceiling run measured.
#[derive(Clone, Debug)]
pub struct CeilingResult {
    /// Signatures made.
    pub signatures: u64,
    /// Wall time of the measured loop.
    pub elapsed: Duration,
    /// Threads (sessions) used.
    pub threads: usize,
    /// Partitions the threads were spread over.
    pub partitions: Vec<String>,
}

impl CeilingResult {
    /// Signatures per second.
    pub fn rate(&self) -> f64 {
        self.signatures as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The partitions that hold a key's signing version, opened from the daemon's config, with what
/// is needed to sign with that version the way the engine does.
#[derive(Debug)]
pub struct Holders {
    /// Opened partitions holding the version, in config order.
    pub partitions: Vec<Arc<Partition>>,
    /// The signing version (highest active) as found on the tokens.
    pub key: objects::FoundKey,
}

impl Holders {
    /// Opens every partition of `cfg`'s providers and finds the ones holding `key`'s signing
    /// version.
    pub fn open(cfg: &Config, key: &KeyName) -> Result<Holders, String> {
        let mut partitions = Vec::new();
        for (pname, p) in &cfg.providers {
            let module = Module::load(&p.module, &p.env).map_err(|e| format!("{pname}: {e}"))?;
            for part in &p.partitions {
                let spec = PartitionSpec {
                    name: part.name.clone(),
                    provider: pname.clone(),
                    selector: part.selector.clone(),
                    session_key_copy: p.session_key_copy,
                    replicate: p.replicate,
                    workers: 1,
                    min_inflight: 1,
                    tier: 0,
                };
                let pin = Pin::load(&part.pin).map_err(|e| e.to_string())?;
                let idx = partitions.len();
                let partition = Partition::open(Arc::clone(&module), spec, pin, idx)
                    .map_err(|e| format!("{}: {e}", part.name))?;
                partitions.push(Arc::new(partition));
            }
        }
        // Which partitions hold the key's signing version, and which version that is.
        let mut holders = Vec::new();
        let mut best: Option<objects::FoundKey> = None;
        for p in &partitions {
            let s = p.open_session().map_err(|e| e.to_string())?;
            let found = objects::scan(&s).map_err(|e| e.to_string())?;
            if let Some(k) = found
                .into_iter()
                .filter(|k| &k.name == key && k.can_sign)
                .max_by_key(|k| k.version)
            {
                if best.as_ref().is_none_or(|b| k.version >= b.version) {
                    best = Some(k);
                }
                holders.push(Arc::clone(p));
            }
        }
        let found =
            best.ok_or_else(|| format!("no active version of key {key} in any partition"))?;
        let partitions = holders
            .into_iter()
            .filter(|p| {
                p.open_session()
                    .ok()
                    .and_then(|s| objects::find_private(&s, &found.id).ok().flatten())
                    .is_some()
            })
            .collect();
        Ok(Holders {
            partitions,
            key: found,
        })
    }
}

/// A new session on `part` and the handle to sign `key` with in it: the token key object, or a
/// session-object copy where the provider asks for one (as the engine's workers do).
pub fn signing_session(
    part: &Partition,
    key: &objects::FoundKey,
) -> Result<(Session, ObjectHandle), String> {
    let label = objects::key_label(&key.name, key.version, key.role).into_bytes();
    let s = part.open_session().map_err(|e| e.to_string())?;
    let keys = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Token(true),
            Attribute::Label(label),
        ])
        .map_err(|e| e.to_string())?;
    let handle = *keys.first().ok_or("key vanished")?;
    let handle = if part.spec().session_key_copy {
        objects::session_copy(&s, handle).map_err(|e| e.to_string())?
    } else {
        handle
    };
    Ok((s, handle))
}

/// Runs the raw sign loop for `duration` on `threads` threads, spread round-robin over the
/// partitions that hold the signing version of `key`.
pub fn raw_sign_loop(
    cfg: &Config,
    key: &KeyName,
    threads: usize,
    duration: Duration,
) -> Result<CeilingResult, String> {
    let Holders {
        partitions: holders,
        key: found,
    } = Holders::open(cfg, key)?;
    if holders.is_empty() || threads == 0 {
        return Err("nothing to run: no partition or no thread".into());
    }
    let scheme = found.key_type.default_scheme();
    let start = Arc::new(Barrier::new(threads + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..threads {
        let part = Arc::clone(&holders[t % holders.len()]);
        let found = found.clone();
        let (start, stop) = (Arc::clone(&start), Arc::clone(&stop));
        handles.push(std::thread::spawn(move || -> Result<u64, String> {
            let prepared = signing_session(&part, &found);
            start.wait();
            let (session, handle) = prepared?;
            let digests = digest_pool(scheme, 1024);
            let mech = mechanism::mechanism(scheme);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let input = mechanism::sign_input(&digests[(n as usize) % digests.len()]);
                session
                    .sign(&mech, handle, &input)
                    .map_err(|e| format!("{}: C_Sign: {e}", part.name()))?;
                n += 1;
            }
            Ok(n)
        }));
    }
    start.wait();
    let began = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let mut signatures = 0;
    for h in handles {
        signatures += h
            .join()
            .map_err(|_| "ceiling thread panicked".to_owned())??;
    }
    Ok(CeilingResult {
        signatures,
        elapsed: began.elapsed(),
        threads,
        partitions: holders.iter().map(|p| p.name().to_owned()).collect(),
    })
}

/// `n` random payloads for `scheme` (messages of 32 bytes for Ed25519).
pub fn digest_pool(scheme: signer_proto::keys::Scheme, n: usize) -> Vec<Payload> {
    let len = scheme.digest_len().unwrap_or(32);
    (0..n)
        .filter_map(|_| {
            let bytes: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
            Payload::new(scheme, bytes.into()).ok()
        })
        .collect()
}
