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
