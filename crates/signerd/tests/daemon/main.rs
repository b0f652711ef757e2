//! Black-box tests: the real `signerd` binary on its own SoftHSM2 tokens, driven over QUIC on
//! loopback by the client library (and by raw quinn streams for malformed input).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod daemon;
#[path = "../../../../loadgen/src/verify.rs"]
mod verify;

mod admin;
mod audit_key;
mod bad_input;
mod batch;
mod cli;
mod flood;
mod hardening;
mod identities;
mod kryoptic;
mod live_certs;
mod observability;
mod policy;
mod shutdown;
mod signing;
