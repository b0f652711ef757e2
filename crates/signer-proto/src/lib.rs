//! The shared vocabulary of signerd and its clients: what a key is called and what it can do
//! ([`keys`]), the status codes of every answer ([`Status`]), the `certnode-sign/1` wire codec
//! ([`protocol`], specified byte by byte in `docs/PROTOCOL.md`), and Merkle batch signatures
//! with their offline verification ([`merkle`], `docs/BATCH.md`).
//!
//! This crate does no I/O: no sockets, no files, no async runtime, no HSM. Both sides of the
//! wire (the `signerd` server and the `signer-client` library) build on it, so a type has one
//! definition whichever side uses it.
//!
//! ```
//! use bytes::BytesMut;
//! use signer_proto::protocol::{decode_request, encode_request, Request, RequestFrame};
//! use signer_proto::{KeyName, Scheme};
//!
//! let frame = RequestFrame {
//!     flags: 0,
//!     deadline_ms: 5_000,
//!     request: Request::Sign {
//!         key: KeyName::new("payments")?,
//!         version: None,
//!         scheme: Scheme::EcdsaSha256,
//!         payload: vec![7u8; 32].into(),
//!     },
//! };
//! let mut bytes = BytesMut::new();
//! encode_request(&frame, &mut bytes)?;
//! // `bytes` is the whole frame, length prefix included, as it goes on a QUIC stream.
//! assert_eq!(decode_request(&bytes)?, frame);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod keys;
pub mod merkle;
mod pem;
pub mod protocol;
mod status;

pub use keys::{ArgumentError, KeyName, KeyState, KeyType, Payload, Scheme, Version};
pub use pem::pem_encode;
pub use status::Status;
