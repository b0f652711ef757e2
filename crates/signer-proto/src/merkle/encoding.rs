//! The binary encoding of a [`BatchSignature`] (signature form 2 on the wire; `docs/BATCH.md` §5)
//! and the [`SignatureForm`] a signature travels in.

use std::fmt;

use bytes::Bytes;

use super::tree::{depth, hex, Blinding, Hash, BLINDING_LEN, HASH_LEN, MAX_DEPTH, MAX_TREE};

/// Largest root signature carried (bytes): an RSA-4096 signature is 512.
pub const MAX_ROOT_SIGNATURE: usize = 1024;

/// Largest encoded [`BatchSignature`]: a full-depth path and the largest root signature
/// (1 451 bytes, well under the protocol's `MAX_SIGNATURE`).
pub const MAX_ENCODED_LEN: usize = FIXED_LEN + MAX_DEPTH * HASH_LEN + MAX_ROOT_SIGNATURE;

// A form-2 signature always fits the protocol's signature field.
const _: () = assert!(MAX_ENCODED_LEN <= crate::protocol::MAX_SIGNATURE);

/// Bytes of an encoding besides the path hashes and the root signature bytes:
/// tree_size 4 + leaf_index 4 + blinding 32 + depth 1 + root signature length 2.
const FIXED_LEN: usize = 4 + 4 + BLINDING_LEN + 1 + 2;

/// One payload's Merkle batch signature: the signature over the tree root's signing input, plus
/// what is needed to recompute that root from the payload.
///
/// The fields are public so that callers can inspect them; [`BatchSignature::encode`] checks
/// every limit, and [`BatchSignature::decode`] only returns values within them.
#[derive(Clone, PartialEq, Eq)]
pub struct BatchSignature {
    /// The key's signature over the root signing input (`docs/BATCH.md` §4), in the scheme's
    /// plain encoding; 1 to [`MAX_ROOT_SIGNATURE`] bytes.
    pub root_signature: Bytes,
    /// The payload's leaf position, `< tree_size`.
    pub leaf_index: u32,
    /// Number of leaves in the tree, `1..=MAX_TREE`.
    pub tree_size: u32,
    /// The leaf's blinding value.
    pub blinding: Blinding,
    /// Sibling hashes from the leaf's level upward; exactly `depth(tree_size)` of them.
    pub path: Vec<Hash>,
}

impl fmt::Debug for BatchSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSignature")
            .field("leaf_index", &self.leaf_index)
            .field("tree_size", &self.tree_size)
            .field("path_len", &self.path.len())
            .field("root_signature", &hex(&self.root_signature))
            .finish()
    }
}

/// Why bytes are not a valid [`BatchSignature`] encoding, or a value cannot be encoded: the field
/// and its byte offset within the encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("batch signature: `{field}` at byte {offset}: {problem}")]
pub struct EncodingError {
    /// The field that failed.
    pub field: &'static str,
    /// Its offset from the start of the encoding.
    pub offset: usize,
    /// What is wrong.
    pub problem: Problem,
}

/// What is wrong in an [`EncodingError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The field needs more bytes than remain.
    #[error("needs {needed} bytes, {remaining} remain")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        remaining: usize,
    },
    /// A value outside its allowed range.
    #[error("{value} is out of range (expected {expected})")]
    OutOfRange {
        /// The value found.
        value: u64,
        /// What is allowed.
        expected: &'static str,
    },
    /// Bytes follow the last field.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
}

impl BatchSignature {
    /// The length of [`BatchSignature::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + self.path.len() * HASH_LEN + self.root_signature.len()
    }

    /// Checks the structural rules that [`BatchSignature::decode`] enforces.
    pub fn check(&self) -> Result<(), EncodingError> {
        check_position(self.tree_size, self.leaf_index)?;
        if self.path.len() != depth(self.tree_size as usize) {
            let len = self.path.len() as u64;
            return Err(out_of_range("depth", 40, len, "ceil(log2(tree_size))"));
        }
        let sig_len = self.root_signature.len();
        if sig_len == 0 || sig_len > MAX_ROOT_SIGNATURE {
            let at = 41 + self.path.len() * HASH_LEN;
            return Err(out_of_range(
                "root_signature length",
                at,
                sig_len as u64,
                SIG_RANGE,
            ));
        }
        Ok(())
    }

    /// Encodes: `u32 tree_size ‖ u32 leaf_index ‖ blinding[32] ‖ u8 depth ‖ depth × hash[32] ‖
    /// u16 root_signature length ‖ root_signature` (all integers big-endian).
    pub fn encode(&self) -> Result<Vec<u8>, EncodingError> {
        self.check()?;
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&self.tree_size.to_be_bytes());
        out.extend_from_slice(&self.leaf_index.to_be_bytes());
        out.extend_from_slice(&self.blinding);
        out.push(self.path.len() as u8); // ≤ MAX_DEPTH, checked
        for hash in &self.path {
            out.extend_from_slice(hash);
        }
        out.extend_from_slice(&(self.root_signature.len() as u16).to_be_bytes()); // ≤ 1024
        out.extend_from_slice(&self.root_signature);
        Ok(out)
    }

    /// Decodes exactly one encoding; strict: every range of [`BatchSignature::check`] holds and
    /// nothing follows the root signature. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<BatchSignature, EncodingError> {
        let mut r = Cursor { bytes, pos: 0 };
        let tree_size = r.u32("tree_size")?;
        let leaf_index = r.u32("leaf_index")?;
        let blinding: Blinding = r.array("blinding")?;
        let depth_at = r.pos;
        let depth_found = r.take(1, "depth")?[0] as usize;
        // Range checks before reading the path, so nothing is allocated for a bad header.
        check_position(tree_size, leaf_index)?;
        if depth_found != depth(tree_size as usize) {
            let value = depth_found as u64;
            return Err(out_of_range(
                "depth",
                depth_at,
                value,
                "ceil(log2(tree_size))",
            ));
        }
        let mut path = Vec::with_capacity(depth_found);
        for _ in 0..depth_found {
            path.push(r.array("path")?);
        }
        let len_at = r.pos;
        let sig_len = r.u16("root_signature length")? as usize;
        if sig_len == 0 || sig_len > MAX_ROOT_SIGNATURE {
            let value = sig_len as u64;
            return Err(out_of_range(
                "root_signature length",
                len_at,
                value,
                SIG_RANGE,
            ));
        }
        let root_signature = Bytes::copy_from_slice(r.take(sig_len, "root_signature")?);
        let remaining = bytes.len() - r.pos;
        if remaining != 0 {
            return Err(EncodingError {
                field: "root_signature",
                offset: r.pos,
                problem: Problem::TrailingBytes(remaining),
            });
        }
        Ok(BatchSignature {
            root_signature,
            leaf_index,
            tree_size,
            blinding,
            path,
        })
    }
}

const SIG_RANGE: &str = "1..=1024 bytes";

fn out_of_range(
    field: &'static str,
    offset: usize,
    value: u64,
    expected: &'static str,
) -> EncodingError {
    EncodingError {
        field,
        offset,
        problem: Problem::OutOfRange { value, expected },
    }
}

/// `1 ≤ tree_size ≤ MAX_TREE` and `leaf_index < tree_size`.
fn check_position(tree_size: u32, leaf_index: u32) -> Result<(), EncodingError> {
    if tree_size == 0 || tree_size as usize > MAX_TREE {
        return Err(out_of_range("tree_size", 0, tree_size.into(), "1..=4096"));
    }
    if leaf_index >= tree_size {
        return Err(out_of_range(
            "leaf_index",
            4,
            leaf_index.into(),
            "below tree_size",
        ));
    }
    Ok(())
}

/// A bounds-checked reader over an encoding.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], EncodingError> {
        let remaining = self.bytes.len() - self.pos;
        if n > remaining {
            return Err(EncodingError {
                field,
                offset: self.pos,
                problem: Problem::Truncated {
                    needed: n,
                    remaining,
                },
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], EncodingError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, EncodingError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, EncodingError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
}

/// A signature in one of the protocol's signature forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureForm {
    /// Form 1: a plain signature over the payload, in the scheme's encoding.
    Plain(Bytes),
    /// Form 2: a Merkle batch signature.
    Batch(BatchSignature),
}

impl SignatureForm {
    /// The `signature_form` byte on the wire (1 or 2).
    pub fn code(&self) -> u8 {
        match self {
            SignatureForm::Plain(_) => crate::protocol::SIGNATURE_FORM_PLAIN,
            SignatureForm::Batch(_) => crate::protocol::SIGNATURE_FORM_MERKLE,
        }
    }

    /// The plain signature, if this is form 1.
    pub fn as_plain(&self) -> Option<&Bytes> {
        match self {
            SignatureForm::Plain(sig) => Some(sig),
            SignatureForm::Batch(_) => None,
        }
    }
}

impl From<Bytes> for SignatureForm {
    fn from(sig: Bytes) -> Self {
        SignatureForm::Plain(sig)
    }
}

impl From<BatchSignature> for SignatureForm {
    fn from(sig: BatchSignature) -> Self {
        SignatureForm::Batch(sig)
    }
}
