//! Where a worker's finished jobs go: straight back to their callers, or first through the audit
//! log (a signature is released only once its record is durable).

use super::shard::{Job, Reply};

/// Delivers finished jobs to their callers. Called on a worker thread with a group of jobs (at
/// most a batch); must not do blocking I/O on that thread (hand it to another thread instead)
/// and must answer every job exactly once.
pub trait Completion: Send + Sync + std::fmt::Debug {
    /// Takes every job out of `done` and answers it (now or later). `partition` is the index
    /// of the partition whose worker handled them.
    fn complete(&self, partition: usize, done: &mut Vec<(Job, Reply)>);
}

/// Answers at once, on the worker thread.
#[derive(Debug, Default, Clone, Copy)]
pub struct Direct;

impl Completion for Direct {
    fn complete(&self, _partition: usize, done: &mut Vec<(Job, Reply)>) {
        for (job, reply) in done.drain(..) {
            job.answer(reply);
        }
    }
}
