//! Merkle batch signatures (issue 8): one HSM signature over a Merkle root authenticates a whole
//! batch of payloads; each caller gets the root signature plus an inclusion proof for its payload.
//!
//! Sans-IO and HSM-free: this module builds trees, defines the root's signing input, encodes
//! batch signatures (signature form 2 on the wire), and verifies them (and plain signatures) in
//! software. `docs/BATCH.md` is the byte-level contract; an independent verifier in Python is in
//! `tools/verify_batch.py`.
//!
//! Signing a batch (what the engine does):
//!
//! ```
//! # use signer_proto::merkle::{Tree, root_signing_input};
//! # use signer_proto::{KeyName, Scheme};
//! # fn hsm_sign(_: &[u8]) -> bytes::Bytes { bytes::Bytes::from_static(&[1]) }
//! let payloads = vec![[7u8; 32], [8u8; 32]];
//! let tree = Tree::build_with_rng(&payloads, &mut rand::rngs::OsRng).unwrap();
//! let key = KeyName::new("payments").unwrap();
//! let input = root_signing_input(Scheme::EcdsaSha256, &key, 3, tree.size() as u32, &tree.root());
//! let root_signature = hsm_sign(input.to_be_signed()); // a normal Sign of this payload
//! let sig = tree.signature(1, root_signature).unwrap(); // for the caller of payload 1
//! assert_eq!(sig.path.len(), 1);
//! ```

mod blob;
mod encoding;
mod tree;
mod verify;

#[cfg(test)]
mod tests;

use sha2::{Digest, Sha256, Sha384, Sha512};

pub use blob::{BatchBlob, BlobError, BLOB_MAGIC, BLOB_VERSION, TEXT_FOOTER, TEXT_HEADER};
pub use encoding::{
    BatchSignature, EncodingError, Problem, SignatureForm, MAX_ENCODED_LEN, MAX_ROOT_SIGNATURE,
};
pub use tree::{
    depth, empty_hash, fresh_blindings, leaf_hash, node_hash, root_from_path, Blinding, Hash, Tree,
    TreeError, BLINDING_LEN, HASH_LEN, MAX_DEPTH, MAX_TREE, TREE_LABEL,
};
pub use verify::{verify, verify_batch, verify_plain, VerifyError};

use crate::keys::{KeyName, Scheme, Version};

/// Start of every root signing message: ASCII, NUL-terminated (27 bytes).
pub const ROOT_CONTEXT: &[u8; 27] = b"signerd batch signature v1\0";

/// Whether a plain Sign `payload` under `scheme` is a root signing message (it starts with
/// [`ROOT_CONTEXT`]), so that its plain signature would also be a root signature, valid for
/// every leaf of a tree its sender made up. signerd refuses to sign such a payload plainly.
///
/// Only a scheme that signs the message itself (Ed25519) can tell. For the ECDSA and RSA
/// schemes the payload is a digest, and no one can tell whether it is the digest of a root
/// message: `docs/BATCH.md` §4 says what a holder of plain sign rights can make that way.
pub fn is_root_message(scheme: Scheme, payload: &[u8]) -> bool {
    scheme.digest_len().is_none() && payload.starts_with(ROOT_CONTEXT)
}

/// What the key signs for one tree: the context message, and the payload handed to the HSM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootSigningInput {
    message: Vec<u8>,
    to_be_signed: Vec<u8>,
}

impl RootSigningInput {
    /// The context message: `ROOT_CONTEXT ‖ u8 scheme code ‖ u8 key length ‖ key ‖ u32 version ‖
    /// u32 tree_size ‖ root[32]`.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// The payload to sign, exactly as a plain Sign payload: for ECDSA and RSA schemes the
    /// scheme's hash of [`RootSigningInput::message`]; for Ed25519 the message itself.
    pub fn to_be_signed(&self) -> &[u8] {
        &self.to_be_signed
    }
}

/// The signing input of a tree root, bound to the scheme, key name, key version and tree size,
/// so that a root signature cannot be replayed under another key identity, scheme or tree shape.
pub fn root_signing_input(
    scheme: Scheme,
    key: &KeyName,
    version: Version,
    tree_size: u32,
    root: &Hash,
) -> RootSigningInput {
    let name = key.as_str().as_bytes(); // ≤ 64 bytes: KeyName is validated
    let mut message = Vec::with_capacity(ROOT_CONTEXT.len() + 2 + name.len() + 8 + HASH_LEN);
    message.extend_from_slice(ROOT_CONTEXT);
    message.push(scheme.code());
    message.push(name.len() as u8);
    message.extend_from_slice(name);
    message.extend_from_slice(&version.to_be_bytes());
    message.extend_from_slice(&tree_size.to_be_bytes());
    message.extend_from_slice(root);
    let to_be_signed = payload_for_message(scheme, &message);
    RootSigningInput {
        message,
        to_be_signed,
    }
}

/// The payload signerd signs for `message` under `scheme`: the scheme's digest of it (SHA-256,
/// -384 or -512) for ECDSA and RSA, the message itself for Ed25519. A relying party that holds
/// the message uses this to get the payload that went into the leaf.
pub fn payload_for_message(scheme: Scheme, message: &[u8]) -> Vec<u8> {
    match scheme.digest_len() {
        Some(32) => Sha256::digest(message).to_vec(),
        Some(48) => Sha384::digest(message).to_vec(),
        Some(_) => Sha512::digest(message).to_vec(),
        None => message.to_vec(),
    }
}
