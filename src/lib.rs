//! signerd: a signing daemon in front of PKCS#11 HSMs.
//!
//! The crate is organised along the request path (DESIGN.md §2): [`config`] → [`engine`]
//! (registry, admin) → [`pipeline`] (router, shard queues, workers) → [`hsm`] (modules,
//! partitions, key objects, mechanisms).

pub mod audit;
pub mod breaker;
pub mod ceiling;
pub mod client;
pub mod config;
pub mod dev;
pub mod engine;
pub mod error;
pub mod hsm;
pub mod keys;
pub mod merkle;
pub mod pipeline;
pub mod policy;
pub mod protocol;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod tls;

pub use engine::{Engine, KeyInfo, PublicKey, SignRequest, VersionInfo};
pub use error::{EngineError, Status};
pub use keys::{KeyName, KeyState, KeyType, Payload, Scheme, Version};
pub use pipeline::Signed;
