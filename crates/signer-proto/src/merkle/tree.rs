//! The hash tree: domain-separated leaf, node and padding hashes, tree building, inclusion paths,
//! and recomputing a root from a path. `docs/BATCH.md` §2–§3 is the byte-level contract.

use std::fmt;

use bytes::Bytes;
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};

use super::BatchSignature;

/// Length of every tree hash (SHA-256).
pub const HASH_LEN: usize = 32;

/// One tree hash: a leaf, an inner node, a padding node or the root.
pub type Hash = [u8; HASH_LEN];

/// Length of a per-leaf blinding value.
pub const BLINDING_LEN: usize = 32;

/// A per-leaf random blinding value. Each leaf gets a fresh one, so that the sibling hashes in one
/// caller's path reveal nothing about other callers' payloads (they cannot be brute-forced from
/// guesses of the payload).
pub type Blinding = [u8; BLINDING_LEN];

/// Most leaves in one tree.
pub const MAX_TREE: usize = 4096;

/// Path length (tree depth) of a tree of [`MAX_TREE`] leaves.
pub const MAX_DEPTH: usize = 12;

/// Prefix of every tree hash input: separates these hashes from every other use of SHA-256.
pub const TREE_LABEL: &[u8; 16] = b"signerd-batch-v1";

/// Tag byte of a leaf hash input.
const TAG_LEAF: u8 = 0x00;
/// Tag byte of an inner-node hash input.
const TAG_NODE: u8 = 0x01;
/// Tag byte of a padding-node hash input.
const TAG_EMPTY: u8 = 0x02;

/// Why a tree could not be built, or a path not be taken or checked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// The number of leaves is 0 or over [`MAX_TREE`].
    #[error("a batch tree has 1 to {MAX_TREE} leaves, not {0}")]
    Size(usize),
    /// `build` got a different number of blindings than payloads.
    #[error("{payloads} payloads but {blindings} blinding values")]
    BlindingCount {
        /// Payloads given.
        payloads: usize,
        /// Blindings given.
        blindings: usize,
    },
    /// A leaf index is not below the tree size.
    #[error("leaf index {index} is outside a tree of {size} leaves")]
    Index {
        /// The index asked for.
        index: usize,
        /// The number of leaves.
        size: usize,
    },
    /// A path does not have exactly [`depth`]`(tree_size)` hashes.
    #[error("a path in a tree of {size} leaves has {expected} hashes, not {found}")]
    PathLength {
        /// The number of leaves.
        size: usize,
        /// The required length.
        expected: usize,
        /// The length found.
        found: usize,
    },
    /// A path hash at a padding position is not the padding hash of that position.
    #[error("path hash {level} stands at a padding position but is not the padding hash")]
    Padding {
        /// The level (0 = the leaf's sibling) of the offending hash.
        level: usize,
    },
}

/// Number of levels above the leaves: `ceil(log2(tree_size))`, which is also the length of every
/// inclusion path (0 for a one-leaf tree, whose root is its leaf hash).
pub fn depth(tree_size: usize) -> usize {
    match tree_size {
        0 | 1 => 0,
        n => (usize::BITS - (n - 1).leading_zeros()) as usize,
    }
}

/// Leaf hash: `SHA-256(TREE_LABEL ‖ 0x00 ‖ u32 tree_size ‖ u32 index ‖ blinding ‖ payload)`.
///
/// Everything before the payload has a fixed length, so the payload needs no length prefix.
pub fn leaf_hash(tree_size: u32, index: u32, blinding: &Blinding, payload: &[u8]) -> Hash {
    let mut h = prefixed(TAG_LEAF, tree_size);
    h.update(index.to_be_bytes());
    h.update(blinding);
    h.update(payload);
    h.finalize().into()
}

/// Inner-node hash of the node at `level` (≥ 1) and position `index` in that level:
/// `SHA-256(TREE_LABEL ‖ 0x01 ‖ u32 tree_size ‖ u8 level ‖ u32 index ‖ left ‖ right)`.
pub fn node_hash(tree_size: u32, level: u8, index: u32, left: &Hash, right: &Hash) -> Hash {
    let mut h = prefixed(TAG_NODE, tree_size);
    h.update([level]);
    h.update(index.to_be_bytes());
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Padding hash, the right sibling appended to a level with an odd number of nodes (below the
/// root): `SHA-256(TREE_LABEL ‖ 0x02 ‖ u32 tree_size ‖ u8 level ‖ u32 index)`, where `index` is
/// the position it takes (the level's node count before padding).
pub fn empty_hash(tree_size: u32, level: u8, index: u32) -> Hash {
    let mut h = prefixed(TAG_EMPTY, tree_size);
    h.update([level]);
    h.update(index.to_be_bytes());
    h.finalize().into()
}

fn prefixed(tag: u8, tree_size: u32) -> Sha256 {
    let mut h = Sha256::new();
    h.update(TREE_LABEL);
    h.update([tag]);
    h.update(tree_size.to_be_bytes());
    h
}

/// Draws `n` fresh blinding values from a cryptographic RNG.
pub fn fresh_blindings<R: RngCore + CryptoRng>(n: usize, rng: &mut R) -> Vec<Blinding> {
    (0..n)
        .map(|_| {
            let mut b = [0u8; BLINDING_LEN];
            rng.fill_bytes(&mut b);
            b
        })
        .collect()
}

/// A Merkle tree over the payloads of one batch.
///
/// Built once per batch: the root is signed once (see [`super::root_signing_input`]), then each
/// caller gets its [`BatchSignature`] from [`Tree::signature`]. Holds every level, so paths are
/// taken without hashing; a tree of [`MAX_TREE`] leaves holds about 8 200 hashes (256 KiB).
#[derive(Clone)]
pub struct Tree {
    /// `levels[0]` are the leaf hashes, `levels[depth]` is `[root]`. Every level below the root
    /// with an odd node count ends with its padding hash, so it has an even count.
    levels: Vec<Vec<Hash>>,
    blindings: Vec<Blinding>,
}

impl Tree {
    /// Builds the tree over `payloads` (in leaf order) with the caller's blinding values, one per
    /// payload. Use [`Tree::build_with_rng`] unless the blindings must be fixed (test vectors).
    pub fn build<P: AsRef<[u8]>>(
        payloads: &[P],
        blindings: Vec<Blinding>,
    ) -> Result<Tree, TreeError> {
        let n = payloads.len();
        if n == 0 || n > MAX_TREE {
            return Err(TreeError::Size(n));
        }
        if blindings.len() != n {
            return Err(TreeError::BlindingCount {
                payloads: n,
                blindings: blindings.len(),
            });
        }
        let size = n as u32; // ≤ MAX_TREE
        let leaves: Vec<Hash> = payloads
            .iter()
            .zip(&blindings)
            .enumerate()
            .map(|(i, (p, b))| leaf_hash(size, i as u32, b, p.as_ref()))
            .collect();
        let depth = depth(n);
        let mut levels = Vec::with_capacity(depth + 1);
        levels.push(leaves);
        for level in 0..depth {
            let current = &mut levels[level];
            if current.len() % 2 == 1 {
                current.push(empty_hash(size, level as u8, current.len() as u32));
            }
            let parent: Vec<Hash> = current
                .chunks_exact(2)
                .enumerate()
                .map(|(j, pair)| node_hash(size, level as u8 + 1, j as u32, &pair[0], &pair[1]))
                .collect();
            levels.push(parent);
        }
        Ok(Tree { levels, blindings })
    }

    /// Builds the tree with a fresh blinding per leaf drawn from `rng` (for example
    /// `rand::rngs::OsRng`).
    pub fn build_with_rng<P: AsRef<[u8]>, R: RngCore + CryptoRng>(
        payloads: &[P],
        rng: &mut R,
    ) -> Result<Tree, TreeError> {
        Tree::build(payloads, fresh_blindings(payloads.len(), rng))
    }

    /// Number of leaves (payloads).
    pub fn size(&self) -> usize {
        self.blindings.len()
    }

    /// Length of every path: `ceil(log2(size))`.
    pub fn depth(&self) -> usize {
        self.levels.len() - 1
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        // `build` always leaves exactly one hash in the last level.
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_default()
    }

    /// Every level, leaves first and the root last, padding hashes included.
    pub fn levels(&self) -> &[Vec<Hash>] {
        &self.levels
    }

    /// The blinding value of leaf `index`.
    pub fn blinding(&self, index: usize) -> Option<&Blinding> {
        self.blindings.get(index)
    }

    /// The inclusion path of leaf `index`: its sibling, then its parent's sibling, and so on up to
    /// (not including) the root; [`Tree::depth`] hashes.
    pub fn path(&self, index: usize) -> Result<Vec<Hash>, TreeError> {
        if index >= self.size() {
            return Err(TreeError::Index {
                index,
                size: self.size(),
            });
        }
        let depth = self.depth();
        let mut path = Vec::with_capacity(depth);
        let mut i = index;
        for level in &self.levels[..depth] {
            // Every level below the root has an even count, so the sibling exists.
            path.push(level.get(i ^ 1).copied().unwrap_or_default());
            i /= 2;
        }
        Ok(path)
    }

    /// The batch signature of leaf `index`, given the signature over the root's signing input.
    pub fn signature(
        &self,
        index: usize,
        root_signature: Bytes,
    ) -> Result<BatchSignature, TreeError> {
        let path = self.path(index)?;
        let blinding = *self.blinding(index).ok_or(TreeError::Index {
            index,
            size: self.size(),
        })?;
        Ok(BatchSignature {
            root_signature,
            leaf_index: index as u32,
            tree_size: self.size() as u32,
            blinding,
            path,
        })
    }
}

impl fmt::Debug for Tree {
    /// Size, depth and root only: blindings are per-caller and stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tree")
            .field("size", &self.size())
            .field("depth", &self.depth())
            .field("root", &hex(&self.root()))
            .finish()
    }
}

/// Lower-case hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Recomputes the root from a leaf's payload, blinding and inclusion path.
///
/// Checks the shape first: `1 ≤ tree_size ≤ MAX_TREE`, `leaf_index < tree_size`, the path has
/// exactly [`depth`]`(tree_size)` hashes, and a path hash at a padding position is that
/// position's padding hash.
pub fn root_from_path(
    tree_size: u32,
    leaf_index: u32,
    blinding: &Blinding,
    payload: &[u8],
    path: &[Hash],
) -> Result<Hash, TreeError> {
    let size = tree_size as usize;
    if size == 0 || size > MAX_TREE {
        return Err(TreeError::Size(size));
    }
    if leaf_index >= tree_size {
        return Err(TreeError::Index {
            index: leaf_index as usize,
            size,
        });
    }
    let expected = depth(size);
    if path.len() != expected {
        return Err(TreeError::PathLength {
            size,
            expected,
            found: path.len(),
        });
    }
    let mut hash = leaf_hash(tree_size, leaf_index, blinding, payload);
    let mut index = leaf_index;
    let mut count = tree_size; // nodes in the current level, before padding
    for (level, sibling) in path.iter().enumerate() {
        let level_u8 = level as u8; // < MAX_DEPTH
        if index.is_multiple_of(2)
            && index + 1 >= count
            && *sibling != empty_hash(tree_size, level_u8, index + 1)
        {
            return Err(TreeError::Padding { level });
        }
        hash = if index.is_multiple_of(2) {
            node_hash(tree_size, level_u8 + 1, index / 2, &hash, sibling)
        } else {
            node_hash(tree_size, level_u8 + 1, index / 2, sibling, &hash)
        };
        index /= 2;
        count = count.div_ceil(2);
    }
    Ok(hash)
}
