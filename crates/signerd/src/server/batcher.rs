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
//! **Deadlines.** A tree's root job is due at the latest deadline of its leaves: the tree is
//! worth signing while any of its callers still waits, so one request with a short deadline
//! cannot fail the others. A leaf whose own deadline passes before the root is signed is
//! answered DEADLINE_EXCEEDED alone (its record says so; no proof is released to it). A root
//! job stuck in a hung HSM call is given up by the rule every caller of the engine applies
//! ([`crate::pipeline::gives_up_at`]): its leaves get DEADLINE_EXCEEDED and its signing slot
//! goes to the next tree; a signature the hung call returns later is discarded unreleased.
//!
//! **Off the runtime.** Building a tree and hashing its leaves' payloads for their records
//! (an Ed25519 tree of 1024 messages of 64 KiB is 64 MiB) run on a blocking thread unless the
//! work is small ([`INLINE_HASHING`]); the audit records are sent without blocking.
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
use crate::pipeline::{Reply, Signed};
use signer_proto::keys::{KeyName, Payload, Scheme, Version};
use signer_proto::merkle::{is_root_message, root_signing_input, BatchSignature, Tree};

/// The identity recorded for root signatures.
pub const BATCHER_IDENTITY: &str = "signerd/batcher";
/// Retry hint when a group's queue is full.
const FULL_RETRY_AFTER: Duration = Duration::from_millis(50);
/// Retry hint when the audit log cannot be written.
const AUDIT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most hash input (bytes, about) a tree's hashing may take on the runtime thread (some 30 µs of
/// SHA-256): a tree of a few digests is not worth a thread hop; more goes to a blocking thread,
/// so that a large tree never stalls the connections served by the same thread.
pub const INLINE_HASHING: usize = 16 * 1024;
/// Hash input per leaf besides its payload: the leaf hash's fixed part (57 bytes), its share of
/// the inner nodes (one, 90 bytes) and its blinding (32 random bytes).
const LEAF_HASHING: usize = 57 + 90 + 32;

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
fn fail_all(live: impl IntoIterator<Item = Leaf>, e: EngineError) {
    for l in live {
        l.answer(Err(e.clone()));
    }
}

/// Refuses a payload that would be signed plainly (not as a batch leaf) when its plain
/// signature would also be a valid batch root signature: an Ed25519 payload that starts with the
/// root context ([`is_root_message`]). Only the batcher signs root messages; a plain signer who
/// could get one signed could make batch signatures for any payloads of a tree it made up,
/// with no leaf records in the audit log. The same on every key, whatever its batch mode: a
/// relying party cannot see a key's mode, and a mode can change. docs/BATCH.md §4.
pub fn check_plain_payload(key: &KeyName, payload: &Payload) -> Result<(), EngineError> {
    if is_root_message(payload.scheme(), payload.bytes()) {
        return Err(EngineError::InvalidArgument(format!(
            "the payload for key {key} starts with the batch root context \
             (\"signerd batch signature v1\\0\"): only the batcher signs batch root messages \
             (docs/BATCH.md §4)"
        )));
    }
    Ok(())
}

/// The deadline of a tree's root job: the latest of its leaves', so that the tree is signed
/// while any of its callers still waits (a leaf that cannot wait that long is answered alone).
fn root_deadline(live: &[Leaf]) -> Option<Instant> {
    live.iter().map(|l| l.deadline).max()
}

/// About how many bytes hashing a tree of `payloads` (or recording its leaves) takes.
fn hashing_work<'a>(payloads: impl Iterator<Item = &'a Bytes>) -> usize {
    payloads
        .map(|p| p.len().saturating_add(LEAF_HASHING))
        .fold(0, usize::saturating_add)
}

/// Runs `f`, hashing of about `work` bytes, here when that is small ([`INLINE_HASHING`]), else on
/// a blocking thread.
async fn hashing<T: Send + 'static>(
    work: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    if work <= INLINE_HASHING {
        return Ok(f());
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EngineError::Internal(format!("batch hashing failed: {e}")))
}

/// A tree and what the HSM is asked to sign for it.
struct Built {
    tree: Tree,
    /// The root signing input, as the Sign payload of the root job.
    payload: Payload,
    /// SHA-256 of that payload (what the root's audit record names).
    root_hash: [u8; 32],
}

impl Built {
    /// Builds the tree of `payloads` (fresh blindings) and its root signing input for `key`
    /// `version` under `scheme`. Hashing: call through [`hashing`].
    fn new(
        scheme: Scheme,
        key: &KeyName,
        version: Version,
        payloads: &[Bytes],
    ) -> Result<Built, EngineError> {
        let tree = Tree::build_with_rng(payloads, &mut rand::rngs::OsRng)
            .map_err(|e| EngineError::Internal(format!("batch tree: {e}")))?;
        let size = u32::try_from(tree.size())
            .map_err(|_| EngineError::Internal("tree too large".into()))?;
        let input = root_signing_input(scheme, key, version, size, &tree.root());
        let to_sign = Bytes::copy_from_slice(input.to_be_signed());
        let root_hash: [u8; 32] = Sha256::digest(&to_sign).into();
        let payload = Payload::new(scheme, to_sign)?;
        Ok(Built {
            tree,
            payload,
            root_hash,
        })
    }
}

/// The root job's answer, or DEADLINE_EXCEEDED with a note once its caller's wait ends
/// ([`crate::pipeline::gives_up_at`] its deadline: the HSM call hung). A signature the hung call
/// returns later finds no receiver and is discarded, never released.
async fn root_reply(
    rx: oneshot::Receiver<Reply>,
    deadline: Instant,
) -> Result<Signed, (EngineError, String)> {
    let give_up = tokio::time::Instant::from_std(crate::pipeline::gives_up_at(deadline));
    match tokio::time::timeout_at(give_up, rx).await {
        Ok(Ok(Ok(signed))) => Ok(signed),
        Ok(Ok(Err(e))) => {
            let note = e.to_string();
            Err((e, note))
        }
        Ok(Err(_)) => {
            let e = EngineError::Internal("worker dropped the root signature job".into());
            let note = e.to_string();
            Err((e, note))
        }
        Err(_) => Err((
            EngineError::DeadlineExceeded,
            format!(
                "the HSM had not answered {} ms after the deadline (a hung call); \
                 any signature it returns later is discarded",
                crate::pipeline::HUNG_CALL_GRACE.as_millis()
            ),
        )),
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
        let Some(deadline) = root_deadline(&live) else {
            return;
        };
        let version =
            match self
                .engine
                .keys()
                .signing_version(&group.key, group.version, group.scheme)
            {
                Ok(v) => v,
                Err(e) => return fail_all(live, e),
            };
        let payloads: Vec<Bytes> = live.iter().map(|l| l.payload.clone()).collect();
        let (scheme, key) = (group.scheme, group.key.clone());
        let built = hashing(hashing_work(payloads.iter()), move || {
            Built::new(scheme, &key, version, &payloads)
        })
        .await;
        let Built {
            tree,
            payload,
            root_hash,
        } = match built {
            Ok(Ok(b)) => b,
            Ok(Err(e)) | Err(e) => return fail_all(live, e),
        };
        let n = tree.size();
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
        let signed = match root_reply(rx, deadline).await {
            Ok(s) => s,
            Err((e, note)) => {
                // Recorded like any failed sign (without blocking: nothing is released).
                if let Some(audit) = &self.audit {
                    let mut entry = self.root_entry(group, version, root_hash, None, n);
                    entry.status = e.status().as_str();
                    entry.detail = Some(format!("batch root of {n} leaves failed: {note}"));
                    let audit = audit.clone();
                    tokio::spawn(async move {
                        if let Err(e) = audit.append(entry).await {
                            tracing::error!("a failed batch root is not audited: {e}");
                        }
                    });
                }
                return fail_all(live, e);
            }
        };
        // The HSM's part is done: the slot is free for the next tree while this one's leaves
        // are recorded (an fsync) and answered.
        let signed_at = Instant::now();
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
            signed_at,
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
    signed: Signed,
    /// When the root signature came back: leaves whose deadline had passed get none.
    signed_at: Instant,
    /// SHA-256 of the root input the HSM signed (what the engine's audit record hashes).
    root_hash: [u8; 32],
    live: Vec<Leaf>,
}

/// Per leaf of a signed tree, in tree order: the leaf and its proof, or why it gets none (its
/// deadline passed before the root was signed); and the records of the root and every leaf
/// (none without an audit log).
type HandOut = (
    Vec<(Leaf, Result<BatchSignature, EngineError>)>,
    Vec<AuditEntry>,
);

impl SignedTree {
    /// Records the root and every leaf in the audit log (when there is one) and answers the
    /// callers: a leaf whose deadline passed before the root was signed gets DEADLINE_EXCEEDED
    /// at once (and no proof), the others their signature once the records are durable; if
    /// they cannot be written, nobody gets a signature.
    async fn finish(self, audit: Option<AuditLog>) {
        let version = self.signed.version;
        // Without a log the proofs are copies of the tree's hashes; with one, each leaf's
        // payload is hashed for its record.
        let work = match audit {
            Some(_) => hashing_work(self.live.iter().map(|l| &l.payload)),
            None => 0,
        };
        let audited = audit.is_some();
        // A failure here (a panic: a bug) drops the leaves' senders: their callers are told.
        let Ok((answers, records)) = hashing(work, move || self.hand_out(audited)).await else {
            return;
        };
        let mut signed = Vec::with_capacity(answers.len());
        for (l, proof) in answers {
            match proof {
                Ok(sig) => signed.push((l, sig)),
                Err(e) => l.answer(Err(e)),
            }
        }
        if let Some(audit) = &audit {
            // Waits without blocking the runtime while the log's queue is full; never drops.
            if let Err(e) = audit.append_all(records).await {
                return fail_all(
                    signed.into_iter().map(|(l, _)| l),
                    EngineError::Unavailable {
                        reason: format!(
                            "audit log cannot be written ({e}); batch signatures withheld"
                        ),
                        retry_after: AUDIT_RETRY_AFTER,
                    },
                );
            }
        }
        for (l, sig) in signed {
            l.answer(Ok((version, sig)));
        }
    }

    /// Each leaf's proof (none for a leaf whose deadline passed before the root was signed) and,
    /// when `audited`, the records of the root and of every leaf, with the leaf's outcome.
    /// Hashing: call through [`hashing`].
    fn hand_out(self, audited: bool) -> HandOut {
        let n = self.tree.size();
        let root_signature = Bytes::from(self.signed.signature);
        let answers: Vec<_> = self
            .live
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let proof = if l.deadline > self.signed_at {
                    self.tree
                        .signature(i, root_signature.clone())
                        .map_err(|e| EngineError::Internal(format!("batch proof: {e}")))
                } else {
                    Err(EngineError::DeadlineExceeded)
                };
                (l, proof)
            })
            .collect();
        if !audited {
            return (answers, Vec::new());
        }
        let root_input = crate::hsm::objects::hex(&self.root_hash);
        let time = SystemTime::now();
        let leaf_record = |i: usize, (l, proof): &(Leaf, Result<BatchSignature, EngineError>)| {
            let (status, outcome) = match proof {
                Ok(_) => (signer_proto::Status::Ok, String::new()),
                Err(EngineError::DeadlineExceeded) => (
                    signer_proto::Status::DeadlineExceeded,
                    "; its deadline passed before the root was signed: no proof released".into(),
                ),
                Err(e) => (e.status(), format!("; {e}: no proof released")),
            };
            AuditEntry::new("sign", Arc::clone(&l.identity), status)
                .at(time)
                .key(Some(Arc::clone(&self.key)))
                .version(Some(self.signed.version))
                .payload(&l.payload)
                .partition(self.partition.clone())
                .detail(Some(format!(
                    "batch leaf {i} of {n}; root input sha256 {root_input}{outcome}"
                )))
        };
        let records = std::iter::once(self.root.at(time))
            .chain(answers.iter().enumerate().map(|(i, a)| leaf_record(i, a)))
            .collect();
        (answers, records)
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audit::tests::{cfg, SoftSigner};

    const SECOND: Duration = Duration::from_secs(1);

    fn leaf(payload: Bytes, deadline: Instant) -> (Leaf, oneshot::Receiver<BatchReply>) {
        let (reply, rx) = oneshot::channel();
        let leaf = Leaf {
            payload,
            identity: Arc::from("spiffe://test/app"),
            deadline,
            reply,
        };
        (leaf, rx)
    }

    fn digest(i: u8) -> Bytes {
        Bytes::from(vec![i; 32])
    }

    #[test]
    fn the_root_job_is_due_at_the_latest_leaf_deadline() {
        let now = Instant::now();
        let (a, _ra) = leaf(digest(1), now + Duration::from_millis(1));
        let (b, _rb) = leaf(digest(2), now + 5 * SECOND);
        let (c, _rc) = leaf(digest(3), now + 2 * SECOND);
        assert_eq!(root_deadline(&[a, b, c]), Some(now + 5 * SECOND));
        assert_eq!(root_deadline(&[]), None);
    }

    #[test]
    fn plain_signing_refuses_root_messages_only() {
        let key = KeyName::new("k").unwrap();
        let tree = Tree::build_with_rng(&[digest(1)], &mut rand::rngs::OsRng).unwrap();
        let root = root_signing_input(Scheme::Ed25519, &key, 1, 1, &tree.root());
        let root = Payload::new(Scheme::Ed25519, Bytes::copy_from_slice(root.to_be_signed()));
        match check_plain_payload(&key, &root.unwrap()) {
            Err(EngineError::InvalidArgument(m)) => {
                assert!(m.contains("batch root context"), "{m}")
            }
            other => panic!("a root message was accepted for plain signing: {other:?}"),
        }
        let message = Payload::new(Scheme::Ed25519, Bytes::from_static(b"pay 5 EUR")).unwrap();
        check_plain_payload(&key, &message).unwrap();
        let digest = Payload::new(Scheme::EcdsaSha256, digest(7)).unwrap();
        check_plain_payload(&key, &digest).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn large_hashing_runs_off_the_runtime_thread() {
        let here = std::thread::current().id();
        let on = |work| hashing(work, || std::thread::current().id());
        assert_eq!(on(INLINE_HASHING).await.unwrap(), here);
        assert_ne!(on(INLINE_HASHING + 1).await.unwrap(), here);
        // A tree of 32 digests is hashed in place; one of two 64 KiB Ed25519 messages is not.
        let digests: Vec<Bytes> = (0..32).map(digest).collect();
        assert!(hashing_work(digests.iter()) <= INLINE_HASHING);
        let messages = [Bytes::from(vec![0; 65_536]), Bytes::from(vec![1; 65_536])];
        assert!(hashing_work(messages.iter()) > INLINE_HASHING);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_hung_root_job_is_given_up_after_the_callers_grace() {
        let (tx, rx) = oneshot::channel::<Reply>();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(100);
        match root_reply(rx, deadline).await {
            Err((EngineError::DeadlineExceeded, note)) => {
                assert!(note.contains("hung call"), "{note}")
            }
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() >= crate::pipeline::gives_up_at(deadline));
        assert!(started.elapsed() < 10 * SECOND);
        // The worker's answer, when the hung call returns, goes nowhere: never released.
        let late = Signed {
            signature: vec![1],
            version: 1,
            partition: 0,
        };
        assert!(tx.send(Ok(late)).is_err());

        // An answer in time is taken as it is.
        let (tx, rx) = oneshot::channel::<Reply>();
        tx.send(Err(EngineError::Overloaded {
            retry_after: SECOND,
        }))
        .unwrap();
        let far = Instant::now() + 60 * SECOND;
        assert!(matches!(
            root_reply(rx, far).await,
            Err((EngineError::Overloaded { .. }, _))
        ));
    }

    /// A signed tree of `deadlines.len()` leaves whose root came back at `signed_at`.
    fn signed_tree(
        deadlines: &[Instant],
        signed_at: Instant,
    ) -> (SignedTree, Vec<oneshot::Receiver<BatchReply>>) {
        let key = KeyName::new("k").unwrap();
        let (live, rxs): (Vec<Leaf>, Vec<_>) = deadlines
            .iter()
            .enumerate()
            .map(|(i, d)| leaf(digest(i as u8), *d))
            .unzip();
        let payloads: Vec<Bytes> = live.iter().map(|l| l.payload.clone()).collect();
        let built = Built::new(Scheme::EcdsaSha256, &key, 2, &payloads).unwrap();
        let n = built.tree.size();
        let identity = Arc::from(BATCHER_IDENTITY);
        let tree = SignedTree {
            root: AuditEntry::batch_root(identity, key.shared(), 2, built.root_hash, n),
            key: key.shared(),
            partition: Some(Arc::from("p0")),
            tree: built.tree,
            signed: Signed {
                signature: vec![0x30, 0x00],
                version: 2,
                partition: 0,
            },
            signed_at,
            root_hash: built.root_hash,
            live,
        };
        (tree, rxs)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_leaf_past_its_deadline_is_answered_alone_and_recorded_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(cfg(dir.path()), Box::new(SoftSigner::new(1))).unwrap();
        let now = Instant::now();
        let deadlines = [
            now + 60 * SECOND,
            now - Duration::from_millis(1),
            now + 60 * SECOND,
        ];
        let (tree, rxs) = signed_tree(&deadlines, now);
        tree.finish(Some(log.clone())).await;
        let answers: Vec<BatchReply> = rxs.into_iter().map(|rx| rx.blocking_recv_now()).collect();
        for (i, answer) in answers.iter().enumerate() {
            match (i, answer) {
                (1, Err(EngineError::DeadlineExceeded)) => {}
                (0 | 2, Ok((2, sig))) => {
                    assert_eq!(sig.leaf_index as usize, i);
                    assert_eq!(sig.tree_size, 3);
                }
                other => panic!("leaf {other:?}"),
            }
        }
        log.close();
        let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let records: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|r: &serde_json::Value| r["kind"] == "entry")
            .collect();
        // The root, then every leaf of the tree, the late one with its own status.
        assert_eq!(records.len(), 4, "{records:#?}");
        assert_eq!(records[0]["identity"], BATCHER_IDENTITY);
        let statuses: Vec<&str> = records[1..]
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["ok", "deadline_exceeded", "ok"]);
        let late = records[2]["detail"].as_str().unwrap();
        assert!(late.starts_with("batch leaf 1 of 3"), "{late}");
        assert!(late.contains("no proof released"), "{late}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_signature_leaves_without_its_durable_record() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(cfg(dir.path()), Box::new(SoftSigner::new(1))).unwrap();
        log.inject_write_failure();
        let now = Instant::now();
        let (tree, rxs) = signed_tree(&[now + 60 * SECOND, now + 60 * SECOND], now);
        tree.finish(Some(log.clone())).await;
        for rx in rxs {
            match rx.blocking_recv_now() {
                Err(EngineError::Unavailable { reason, .. }) => {
                    assert!(reason.contains("audit log"), "{reason}")
                }
                other => panic!("a signature was released without its record: {other:?}"),
            }
        }
        log.close();
    }

    #[test]
    fn a_full_audit_queue_never_blocks_the_runtime_thread() {
        let dir = tempfile::tempdir().unwrap();
        let c = crate::audit::AuditConfig {
            queue: 1,
            checkpoint_interval: Duration::from_secs(3600),
            checkpoint_records: 1_000_000,
            ..cfg(dir.path())
        };
        let log = AuditLog::open(c, Box::new(SoftSigner::new(1))).unwrap();
        // A disk that does not answer: one group in the writer's hands, one filling the queue.
        log.hold_writes(true);
        for _ in 0..2 {
            let e = AuditEntry::new("sign", Arc::from("x"), signer_proto::Status::Ok);
            log.commit(vec![e], Box::new(|_| {}));
            std::thread::sleep(Duration::from_millis(20));
        }
        let release = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(1));
                log.hold_writes(false);
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let now = Instant::now();
            let (tree, rxs) = signed_tree(&[now + 60 * SECOND], now);
            let finishing = tokio::spawn(tree.finish(Some(log.clone())));
            // The one runtime thread keeps serving while the records wait for room.
            let started = Instant::now();
            tokio::time::sleep(Duration::from_millis(10)).await;
            let took = started.elapsed();
            assert!(took < Duration::from_millis(500), "blocked for {took:?}");
            assert!(
                !finishing.is_finished(),
                "answered before its record was durable"
            );
            finishing.await.unwrap();
            for rx in rxs {
                assert!(rx.blocking_recv_now().is_ok());
            }
        });
        release.join().unwrap();
        log.close();
    }

    /// Takes an answer that must be there already.
    trait Now {
        fn blocking_recv_now(self) -> BatchReply;
    }

    impl Now for oneshot::Receiver<BatchReply> {
        fn blocking_recv_now(mut self) -> BatchReply {
            self.try_recv().expect("answered exactly once, already")
        }
    }
}
