//! The thread glue between the async callers and the HSM: router, shard queues, worker threads.

pub mod admission;
pub mod audited;
pub mod breakers;
pub mod classify;
pub mod completion;
pub mod gate;
pub mod limiter;
pub mod router;
pub mod shard;
pub mod worker;

pub use completion::{Completion, Direct};
pub use shard::{Job, Reply, Shard, Signed};
