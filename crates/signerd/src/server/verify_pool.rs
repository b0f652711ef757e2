//! Software signature verification off the network runtime.
//!
//! A `Verify` request is answered from the registry's public key, in software (the HSM is spared).
//! A P-256 verification costs more CPU than a SoftHSM2 signature, and the network runtime has one
//! thread per two cores: done there, every verification stalls every connection's QUIC traffic
//! (measured: a flood of verifications raised the p50 of concurrent signing from 5.6 to 26 ms). So
//! verifications run on a small pool of their own threads behind a bounded queue; when the queue
//! is full the request is answered OVERLOADED at once instead of waiting without bound.
//! (Running these threads at nice +10 as well was measured and not kept: no clear gain for
//! signing, 16% fewer verifications; tuning/RESULTS.md.)

use std::time::Duration;

use crossbeam::channel::{bounded, Sender, TrySendError};
use tokio::sync::oneshot;

/// Jobs waiting per verify thread before new ones are refused.
pub const QUEUE_PER_THREAD: usize = 256;
/// Retry hint when the queue is full.
pub const RETRY_AFTER: Duration = Duration::from_millis(20);

type Job = Box<dyn FnOnce() + Send>;

/// Why a verification did not run.
#[derive(Debug, PartialEq, Eq)]
pub enum PoolError {
    /// The queue is full.
    Full,
    /// The pool stopped (its threads are gone).
    Stopped,
    /// The job panicked (a bug); the thread survives it.
    Panicked,
}

/// A fixed set of verify threads fed by a bounded queue.
#[derive(Debug)]
pub struct VerifyPool {
    tx: Sender<Job>,
}

impl VerifyPool {
    /// Starts `threads` threads (at least 1) with a queue of [`QUEUE_PER_THREAD`] per thread.
    pub fn start(threads: usize) -> std::io::Result<VerifyPool> {
        let threads = threads.max(1);
        let (tx, rx) = bounded::<Job>(threads * QUEUE_PER_THREAD);
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("verify-{i}"))
                .spawn(move || {
                    // Ends when the pool (every sender) is dropped.
                    while let Ok(job) = rx.recv() {
                        // A panicking job (a bug) answers its caller with an error (its reply
                        // sender is dropped) and must not take the thread with it.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(VerifyPool { tx })
    }

    /// Runs `f` on a verify thread and waits for its result, or refuses at once when the queue
    /// is full.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The caller may have gone (connection closed): nothing to answer then.
            let _ = tx.send(f());
        });
        match self.tx.try_send(job) {
            Ok(()) => rx.await.map_err(|_| PoolError::Panicked),
            Err(TrySendError::Full(_)) => Err(PoolError::Full),
            Err(TrySendError::Disconnected(_)) => Err(PoolError::Stopped),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_refuses_when_full() {
        let pool = VerifyPool::start(1).unwrap();
        assert_eq!(pool.run(|| 6 * 7).await, Ok(42));
        // Hold the only thread, then fill the queue: the next job is refused at once.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let hold: Job = Box::new(move || {
            let _ = started.send(());
            let _ = held.recv();
        });
        assert!(pool.tx.try_send(hold).is_ok());
        running.recv_timeout(Duration::from_secs(10)).unwrap();
        for i in 0..QUEUE_PER_THREAD {
            let job: Job = Box::new(move || assert!(i < QUEUE_PER_THREAD));
            assert!(pool.tx.try_send(job).is_ok(), "job {i} fits the queue");
        }
        assert_eq!(pool.run(|| 1).await, Err(PoolError::Full));
        release.send(()).unwrap();
        // Served again once the queue drains.
        let mut answer = pool.run(|| 2).await;
        for _ in 0..1000 {
            if answer != Err(PoolError::Full) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            answer = pool.run(|| 2).await;
        }
        assert_eq!(answer, Ok(2));
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let pool = VerifyPool::start(1).unwrap();
        let boom: Result<u8, PoolError> = pool.run(|| panic!("a bug")).await;
        assert_eq!(boom, Err(PoolError::Panicked));
        assert_eq!(pool.run(|| 3).await, Ok(3), "the thread survived");
    }
}
