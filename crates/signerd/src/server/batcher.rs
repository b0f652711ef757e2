//! Merkle batch signing (docs/BATCH.md): concurrent sign requests for the same (key, version,
//! scheme) that accept a batch signature are gathered into a Merkle tree; the HSM signs only the
//! root (one ordinary engine job), and each caller gets the root signature with its own
//! inclusion proof.
//!
//! **How trees form.** Each (key, version, scheme) has a group with a bounded queue of waiting
//! requests and at most `max_trees_in_flight` trees being signed. A request that finds a free
//! signing slot starts a tree at once, so at low load a tree holds one request and costs no extra
//! latency. While every slot is busy in the HSM, new requests wait in the group; the slot that
//! frees first takes all of them (up to `max_tree`) as its next tree. The tree size therefore
//! follows the load: about the arrival rate times the HSM round trip, divided by the slots. No
//! timer lingers: requests wait only while they would wait for a signer anyway, and a request
//! whose deadline passes while it waits is answered DEADLINE_EXCEEDED and left out of the tree.
//!
//! **Audit.** The root signature is one engine job whose record the batcher writes itself
//! (identity [`BATCHER_IDENTITY`], payload hash = the hash of the signed root input), in one
//! durable commit with a record per leaf (the caller's identity and the hash of its payload,
//! naming the root input's hash). The answers are released only once that commit is durable
//! (fail closed). A root that fails in the HSM is recorded with its status.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::audit::{AuditEntry, AuditLog};
use crate::config::batch::{BatchMode, BatchModes, BatchSection};
use crate::engine::{Engine, SignRequest};
use crate::error::EngineError;
use signer_proto::keys::{KeyName, Payload, Scheme, Version};
use signer_proto::merkle::{root_signing_input, BatchSignature, Tree};

/// The identity recorded for root signatures.
pub const BATCHER_IDENTITY: &str = "signerd/batcher";
/// Retry hint when a group's queue is full.
const FULL_RETRY_AFTER: Duration = Duration::from_millis(50);

/// What a batched request gets: the version that signed and its batch signature.
pub type BatchReply = Result<(Version, BatchSignature), EngineError>;

/// The batcher of one daemon.
#[derive(Debug)]
pub struct Batcher {
    engine: Engine,
    audit: Option<AuditLog>,
    cfg: BatchSection,
    modes: BatchModes,
    trees_in_flight: usize,
    identity: Arc<str>,
    /// Groups by key, then by (requested version, scheme): looked up without allocating; a
    /// group is made once per (key, version, scheme) that exists (checked before).
    groups: RwLock<HashMap<KeyName, Vec<Arc<Group>>>>,
}

#[derive(Debug)]
struct Group {
    key: KeyName,
    version: Option<Version>,
    scheme: Scheme,
    state: Mutex<GroupState>,
}

#[derive(Debug, Default)]
struct GroupState {
    waiting: VecDeque<Leaf>,
    /// Trees being built or signed now.
    signing: usize,
}

#[derive(Debug)]
struct Leaf {
    payload: Bytes,
    identity: Arc<str>,
    deadline: Instant,
    reply: oneshot::Sender<BatchReply>,
}

impl Leaf {
    fn answer(self, reply: BatchReply) {
        let _ = self.reply.send(reply);
    }
}

/// Answers every leaf with the same error.
fn fail_all(live: Vec<Leaf>, e: EngineError) {
    for l in live {
        l.answer(Err(e.clone()));
    }
}

impl Batcher {
    /// A batcher over `engine`, recording leaves in `audit` when there is one.
    pub fn new(engine: Engine, audit: Option<AuditLog>, cfg: BatchSection) -> Arc<Batcher> {
        let trees_in_flight = cfg
            .max_trees_in_flight
            .unwrap_or_else(|| default_trees_in_flight(engine.workers()))
            .max(1);
        Arc::new(Batcher {
            engine,
            audit,
            modes: cfg.modes(),
            cfg,
            trees_in_flight,
            identity: Arc::from(BATCHER_IDENTITY),
            groups: RwLock::new(HashMap::new()),
        })
    }

    /// The batch mode of `key`.
    pub fn mode(&self, key: &KeyName) -> BatchMode {
        self.modes.mode(key.as_str())
    }

    /// Queues one checked payload for the next tree of (key, version, its scheme). Fails at
    /// once, alone, for an unknown key, a scheme the key cannot use, or a full queue
    /// (OVERLOADED).
    pub fn submit(
        self: &Arc<Self>,
        key: &KeyName,
        version: Option<Version>,
        payload: Payload,
        deadline: Instant,
        identity: &Arc<str>,
    ) -> Result<oneshot::Receiver<BatchReply>, EngineError> {
        // The payload was checked against its scheme by the caller; an unknown key, version
        // or unfit scheme fails here, alone: the tree is built from the valid ones.
        let scheme = payload.scheme();
        self.engine.keys().signing_version(key, version, scheme)?;
        let group = self.group(key, version, scheme);
        let (tx, rx) = oneshot::channel();
        let leaf = Leaf {
            payload: payload.bytes().clone(),
            identity: Arc::clone(identity),
            deadline,
            reply: tx,
        };
        let mut st = group.state.lock();
        if st.waiting.len() >= self.cfg.max_pending {
            return Err(EngineError::Overloaded {
                retry_after: FULL_RETRY_AFTER,
            });
        }
        st.waiting.push_back(leaf);
        if st.signing < self.trees_in_flight {
            st.signing += 1;
            let leaves = take(&mut st.waiting, self.cfg.max_tree);
            drop(st);
            let this = Arc::clone(self);
            tokio::spawn(async move { this.sign_trees(group, leaves).await });
        }
        Ok(rx)
    }

    /// The audit record of a tree's root signature (as the engine would write it for a sign):
    /// the batcher's identity and the SHA-256 of the root input the HSM signed.
    fn root_entry(
        &self,
        group: &Group,
        version: Version,
        root_hash: [u8; 32],
        partition: Option<Arc<str>>,
        n: usize,
    ) -> AuditEntry {
        AuditEntry::batch_root(
            Arc::clone(&self.identity),
            group.key.shared(),
            version,
            root_hash,
            n,
        )
        .partition(partition)
    }

    fn group(&self, key: &KeyName, version: Option<Version>, scheme: Scheme) -> Arc<Group> {
        let find = |groups: &HashMap<KeyName, Vec<Arc<Group>>>| {
            groups
                .get(key)?
                .iter()
                .find(|g| g.version == version && g.scheme == scheme)
                .cloned()
        };
        if let Some(g) = find(&self.groups.read()) {
            return g;
        }
        let mut groups = self.groups.write();
        if let Some(g) = find(&groups) {
            return g;
        }
        let g = Arc::new(Group {
            key: key.clone(),
            version,
            scheme,
            state: Mutex::new(GroupState::default()),
        });
        groups.entry(key.clone()).or_default().push(Arc::clone(&g));
        g
    }

    /// Signs trees for `group` until nobody waits; then gives the signing slot back.
    async fn sign_trees(self: Arc<Self>, group: Arc<Group>, mut leaves: Vec<Leaf>) {
        loop {
            self.sign_tree(&group, leaves).await;
            let mut st = group.state.lock();
            if st.waiting.is_empty() {
                st.signing -= 1;
                return;
            }
            leaves = take(&mut st.waiting, self.cfg.max_tree);
        }
    }

    /// One tree: build it from the leaves still wanted, sign the root, record and answer each.
    async fn sign_tree(&self, group: &Group, leaves: Vec<Leaf>) {
        let now = Instant::now();
        let (live, late): (Vec<Leaf>, Vec<Leaf>) = leaves
            .into_iter()
            .filter(|l| !l.reply.is_closed())
            .partition(|l| l.deadline > now);
        for l in late {
            l.answer(Err(EngineError::DeadlineExceeded));
        }
        if live.is_empty() {
            return;
        }
        let version =
            match self
                .engine
                .keys()
                .signing_version(&group.key, group.version, group.scheme)
            {
                Ok(v) => v,
                Err(e) => return fail_all(live, e),
            };
        let payloads: Vec<&[u8]> = live.iter().map(|l| &l.payload[..]).collect();
        let tree = match Tree::build_with_rng(&payloads, &mut rand::rngs::OsRng) {
            Ok(t) => t,
            Err(e) => return fail_all(live, EngineError::Internal(format!("batch tree: {e}"))),
        };
        let n = tree.size();
        let Ok(size) = u32::try_from(n) else {
            return fail_all(live, EngineError::Internal("tree too large".into()));
        };
        let input = root_signing_input(group.scheme, &group.key, version, size, &tree.root());
        let to_sign = Bytes::copy_from_slice(input.to_be_signed());
        let root_hash: [u8; 32] = Sha256::digest(&to_sign).into();
        let payload = match Payload::new(group.scheme, to_sign) {
            Ok(p) => p,
            Err(e) => return fail_all(live, e.into()),
        };
        let deadline = live.iter().map(|l| l.deadline).min().unwrap_or(now);
        // The root's audit record is written below with the leaves' (one durable commit), so
        // the engine hands the signature over without one.
        let rx = match self.engine.submit_recorded_by_caller(SignRequest {
            key: group.key.clone(),
            version: Some(version),
            payload,
            deadline,
            identity: Arc::clone(&self.identity),
        }) {
            Ok(rx) => rx,
            Err(e) => return fail_all(live, e),
        };
        let signed = match rx.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // The worker took the job and it failed: recorded like any failed sign.
                if let Some(audit) = &self.audit {
                    let mut entry = self.root_entry(group, version, root_hash, None, n);
                    entry.status = e.status().as_str();
                    entry.detail = Some(format!("batch root of {n} leaves failed: {e}"));
                    audit.commit(vec![entry], Box::new(|_| {}));
                }
                return fail_all(live, e);
            }
            Err(_) => {
                return fail_all(
                    live,
                    EngineError::Internal("worker dropped the root signature job".into()),
                )
            }
        };
        // The HSM's part is done: the slot is free for the next tree while this one's leaves
        // are recorded (an fsync) and answered.
        let audit = self.audit.clone();
        let partition: Option<Arc<str>> = self
            .engine
            .health()
            .partition_name(signed.partition)
            .map(Arc::from);
        let root = self.root_entry(group, signed.version, root_hash, partition.clone(), n);
        let done = SignedTree {
            root,
            key: group.key.shared(),
            partition,
            tree,
            signed,
            root_hash,
            live,
        };
        tokio::spawn(async move { done.finish(audit).await });
    }
}

/// A tree whose root the HSM signed; its leaves are not answered yet.
struct SignedTree {
    /// The root signature's audit record.
    root: AuditEntry,
    key: Arc<str>,
    partition: Option<Arc<str>>,
    tree: Tree,
    signed: crate::pipeline::Signed,
    /// SHA-256 of the root input the HSM signed (what the engine's audit record hashes).
    root_hash: [u8; 32],
    live: Vec<Leaf>,
}

impl SignedTree {
    /// Records every leaf in the audit log (when there is one) and answers the callers once the
    /// records are durable; if they cannot be written, nobody gets a signature.
    async fn finish(self, audit: Option<AuditLog>) {
        let SignedTree {
            root,
            key,
            partition,
            tree,
            signed,
            root_hash,
            live,
        } = self;
        let n = tree.size();
        let root_signature = Bytes::from(signed.signature);
        let mut sigs = Vec::with_capacity(n);
        for i in 0..n {
            match tree.signature(i, root_signature.clone()) {
                Ok(s) => sigs.push(s),
                Err(e) => {
                    return fail_all(live, EngineError::Internal(format!("batch proof: {e}")))
                }
            }
        }
        if let Some(audit) = &audit {
            let detail_root = crate::hsm::objects::hex(&root_hash);
            let time = SystemTime::now();
            let entries = std::iter::once(root)
                .chain(live.iter().enumerate().map(|(i, l)| {
                    AuditEntry::new("sign", Arc::clone(&l.identity), signer_proto::Status::Ok)
                        .at(time)
                        .key(Some(Arc::clone(&key)))
                        .version(Some(signed.version))
                        .payload(&l.payload)
                        .partition(partition.clone())
                        .detail(Some(format!(
                            "batch leaf {i} of {n}; root input sha256 {detail_root}"
                        )))
                }))
                .collect();
            let (tx, rx) = oneshot::channel();
            audit.commit(
                entries,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            if !matches!(rx.await, Ok(Ok(()))) {
                return fail_all(
                    live,
                    EngineError::Unavailable {
                        reason: "audit log cannot be written; batch signatures withheld".into(),
                        retry_after: Duration::from_secs(1),
                    },
                );
            }
        }
        for (l, sig) in live.into_iter().zip(sigs) {
            l.answer(Ok((signed.version, sig)));
        }
    }
}

/// Trees of one group in flight by default: one per worker (HSM session). A slot is held from
/// building the tree until the HSM has signed the root; the audit records of root and leaves are
/// written after the slot is freed. More slots would only queue root jobs in the engine (where
/// admission may shed them, failing every leaf of the tree) and make trees smaller, and fewer,
/// larger trees are what batching is for.
pub fn default_trees_in_flight(workers: usize) -> usize {
    workers.max(1)
}

fn take(waiting: &mut VecDeque<Leaf>, max: usize) -> Vec<Leaf> {
    let n = waiting.len().min(max);
    waiting.drain(..n).collect()
}
