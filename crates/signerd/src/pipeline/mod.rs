//! The thread glue between the async callers and the HSM: router, shard queues, worker threads.

pub(crate) mod admission;
pub mod audited;
pub(crate) mod breakers;
pub(crate) mod classify;
pub mod completion;
pub(crate) mod gate;
pub mod router;
pub mod shard;
pub(crate) mod worker;

pub use completion::{Completion, Direct};
pub use shard::{Job, Reply, Shard, Signed};

use std::time::{Duration, Instant};

/// How long past a job's deadline its caller still waits for the worker's answer. A worker
/// answers every job it takes, but one stuck in a hung HSM call answers only when the call
/// returns (the watchdog hands its shard to a new worker meanwhile, and gives back the call's
/// HSM permit): past this grace the caller stops waiting and answers DEADLINE_EXCEEDED itself.
pub const HUNG_CALL_GRACE: Duration = Duration::from_millis(50);

/// When the caller of a job due at `deadline` stops waiting for it ([`HUNG_CALL_GRACE`]). The
/// one rule for every caller of the engine: the front end for each request
/// (`server::dispatch`), the Merkle batcher for a tree's root job.
pub fn gives_up_at(deadline: Instant) -> Instant {
    deadline + HUNG_CALL_GRACE
}
