//! Fault scenarios (numbered as in docs/FAULTS.md): the real `signerd` binary on
//! its own SoftHSM2 tokens, loaded through the fault-injecting PKCS#11 module
//! (`pkcs11-fault`), driven over QUIC on loopback by the client library. Each test writes fault
//! rules into `DIR/fault.toml` while the daemon runs and checks what the clients get (every
//! signature is verified with the software verifier, `loadgen/src/verify.rs`), what `/metrics`
//! and `/readyz` say, what the audit log holds, and what the fault module counted
//! (`DIR/stats.json`).
//!
//! # How the fault module gets built
//!
//! `certnode-pkcs11-fault` is a dev-dependency of the root crate. Its library target is both an
//! `rlib` and a `cdylib`, and cargo builds every crate type of a library it depends on, in the
//! same rustc invocation, into `target/<profile>/deps/` (a path package's cdylib carries no hash
//! in its name: `deps/libcertnode_pkcs11_fault.so`). So `cargo test --test faults` rebuilds the
//! module whenever its sources change, before it links this binary, and the tests load it from
//! the directory of their own executable (`support::fault_module`). So there is no `cargo build`
//! from inside the tests (a second cargo, resolving features for that package alone, rebuilding
//! and racing other builds of the same target directory) and no staleness check by modification
//! times. The copy in `target/<profile>/` (refreshed only by `cargo build -p
//! certnode-pkcs11-fault`) is not used.
//!
//! Every test starts its own daemon (a child process) on its own dev directory, ports and
//! SoftHSM2 tokens, so tests run in parallel. Directories stay in `target/tmp/faults-*-<pid>`
//! for a post-mortem (`signerd.log`, `stats.json`, `audit/`) until a later run removes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
#[path = "../../../../loadgen/src/verify.rs"]
mod verify;

mod answers;
mod audit;
mod batch;
mod capabilities;
mod hang;
mod keys;
mod load;
mod partitions;
mod reinit;
mod requests;
mod startup;
mod throttle;
mod tokens;
