//! Integration tests on real SoftHSM2 tokens (one dev set-up per test process, shared by the
//! tests; each test uses its own key names).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod audit_tools;
mod batch_python;
mod dev_pki_python;
mod errors;
mod failover;
mod kek;
mod keys;
mod replication;
mod signing;
