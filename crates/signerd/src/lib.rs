//! signerd: a signing daemon in front of PKCS#11 HSMs.
//!
//! The crate is organised along the request path (docs/ARCHITECTURE.md): [`server`] (QUIC,
//! admission, dispatch) → [`engine`] (registry, admin) → [`pipeline`] (router, shard queues,
//! workers; each partition's breaker and in-flight limit are in [`control`]) → [`hsm`] (modules,
//! partitions, key objects, mechanisms), with [`audit`], [`policy`], [`telemetry`] and
//! [`config`] beside it. The shared vocabulary and the wire codec are in the `signer-proto`
//! crate; the client library is `signer-client`.
//!
//! This library exists for the `signerd` binary, `loadgen ceiling`, the benchmarks and the
//! integration tests; it is not a client API.

pub mod audit;
pub mod ceiling;
pub mod config;
pub mod control;
pub mod dev;
pub mod engine;
pub mod error;
pub mod hsm;
pub mod pipeline;
pub mod policy;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use engine::{Engine, EngineBuilder, KeyInfo, PublicKey, SignRequest, VersionInfo};
pub use error::EngineError;
pub use pipeline::Signed;
pub use signer_proto::{KeyName, KeyState, KeyType, Payload, Scheme, Status, Version};
