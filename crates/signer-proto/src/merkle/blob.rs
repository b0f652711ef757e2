//! The exportable batch-signature blob: everything a relying party needs, besides the public key
//! and the message, to verify one batch signature offline (`docs/BATCH.md` §6).

use base64::Engine as _;

use super::{payload_for_message, verify_batch, BatchSignature, EncodingError, VerifyError};
use crate::keys::{KeyName, Scheme, Version};

/// First bytes of a binary blob.
pub const BLOB_MAGIC: &[u8; 8] = b"SGNDBSIG";

/// Blob format version.
pub const BLOB_VERSION: u8 = 1;

/// First line of the text form.
pub const TEXT_HEADER: &str = "-----BEGIN SIGNERD BATCH SIGNATURE-----";

/// Last line of the text form.
pub const TEXT_FOOTER: &str = "-----END SIGNERD BATCH SIGNATURE-----";

/// Base64 characters per line of the text form.
const TEXT_WIDTH: usize = 64;

/// A batch signature with the key identity it was made under.
///
/// Binary layout: `BLOB_MAGIC ‖ u8 BLOB_VERSION ‖ u8 scheme code ‖ u8 key length ‖ key ‖
/// u32 key version ‖ u16 signature length ‖ batch signature encoding`. The message is not
/// included: the relying party supplies it (see [`BatchBlob::verify_message`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchBlob {
    /// The scheme the root was signed with.
    pub scheme: Scheme,
    /// The key's name.
    pub key: KeyName,
    /// The key version that signed.
    pub version: Version,
    /// The batch signature.
    pub signature: BatchSignature,
}

/// Why a blob could not be read or written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The bytes are not a blob of this format.
    #[error("not a signerd batch signature blob: {0}")]
    Format(String),
    /// The embedded batch signature is malformed (or cannot be encoded).
    #[error(transparent)]
    Signature(#[from] EncodingError),
}

impl BatchBlob {
    /// The binary form.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BlobError> {
        let sig = self.signature.encode()?;
        let name = self.key.as_str().as_bytes(); // ≤ 64 bytes
        let mut out = Vec::with_capacity(BLOB_MAGIC.len() + 11 + name.len() + sig.len());
        out.extend_from_slice(BLOB_MAGIC);
        out.push(BLOB_VERSION);
        out.push(self.scheme.code());
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&(sig.len() as u16).to_be_bytes()); // ≤ MAX_ENCODED_LEN
        out.extend_from_slice(&sig);
        Ok(out)
    }

    /// Reads the binary form; strict (known magic, version and scheme, a valid key name, version
    /// ≥ 1, a valid batch signature filling the rest exactly).
    pub fn from_bytes(bytes: &[u8]) -> Result<BatchBlob, BlobError> {
        let bad = |what: &str| BlobError::Format(what.to_string());
        let rest = bytes
            .strip_prefix(BLOB_MAGIC.as_slice())
            .ok_or_else(|| bad("wrong magic"))?;
        let (&[format, scheme, name_len], rest) =
            split::<3>(rest).ok_or_else(|| bad("truncated header"))?;
        if format != BLOB_VERSION {
            return Err(bad(&format!("unsupported blob version {format}")));
        }
        let scheme = Scheme::from_code(scheme)
            .ok_or_else(|| bad(&format!("unknown scheme code {scheme}")))?;
        let (name, rest) =
            split_slice(rest, name_len.into()).ok_or_else(|| bad("truncated key name"))?;
        let key = std::str::from_utf8(name)
            .ok()
            .and_then(|n| KeyName::new(n).ok())
            .ok_or_else(|| bad("invalid key name"))?;
        let (&version, rest) = split::<4>(rest).ok_or_else(|| bad("truncated key version"))?;
        let version = u32::from_be_bytes(version);
        if version == 0 {
            return Err(bad("key version 0"));
        }
        let (&len, rest) = split::<2>(rest).ok_or_else(|| bad("truncated signature length"))?;
        let len = u16::from_be_bytes(len) as usize;
        if len != rest.len() {
            return Err(bad(&format!(
                "signature length {len} but {} bytes follow",
                rest.len()
            )));
        }
        Ok(BatchBlob {
            scheme,
            key,
            version,
            signature: BatchSignature::decode(rest)?,
        })
    }

    /// The text form: [`TEXT_HEADER`], the binary form in standard base64 (with padding) in
    /// lines of 64 characters, [`TEXT_FOOTER`]; every line ends with `\n`.
    pub fn to_text(&self) -> Result<String, BlobError> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.to_bytes()?);
        let mut out = String::with_capacity(b64.len() + b64.len() / TEXT_WIDTH + 80);
        out.push_str(TEXT_HEADER);
        out.push('\n');
        for line in b64.as_bytes().chunks(TEXT_WIDTH) {
            // base64 output is ASCII
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str(TEXT_FOOTER);
        out.push('\n');
        Ok(out)
    }

    /// Reads the text form. Leading and trailing white space and `\r\n` line ends are accepted;
    /// anything else outside the base64 lines is an error.
    pub fn from_text(text: &str) -> Result<BatchBlob, BlobError> {
        let bad = |what: &str| BlobError::Format(what.to_string());
        let mut lines = text.trim().lines().map(str::trim_end);
        if lines.next() != Some(TEXT_HEADER) {
            return Err(bad("missing header line"));
        }
        let mut b64 = String::new();
        let mut ended = false;
        for line in lines {
            if ended {
                return Err(bad("text after the footer line"));
            }
            if line == TEXT_FOOTER {
                ended = true;
            } else {
                b64.push_str(line);
            }
        }
        if !ended {
            return Err(bad("missing footer line"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(&format!("invalid base64 ({e})")))?;
        BatchBlob::from_bytes(&bytes)
    }

    /// Verifies the blob against `message`, the message the relying party holds: the leaf
    /// payload is the scheme's digest of it (the message itself for Ed25519).
    pub fn verify_message(&self, spki_der: &[u8], message: &[u8]) -> Result<(), VerifyError> {
        let payload = payload_for_message(self.scheme, message);
        verify_batch(
            spki_der,
            self.scheme,
            &self.key,
            self.version,
            &payload,
            &self.signature,
        )
    }
}

fn split<const N: usize>(bytes: &[u8]) -> Option<(&[u8; N], &[u8])> {
    bytes.split_first_chunk::<N>()
}

fn split_slice(bytes: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (n <= bytes.len()).then(|| bytes.split_at(n))
}
