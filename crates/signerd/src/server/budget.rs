//! The bytes of requests and answers the daemon holds for its peers: reserved from a
//! per-connection budget and from the daemon's global one before they are read or written, so
//! that what one connection (or all of them) can make the daemon hold is bounded whatever the
//! peer does — including never reading its answers (docs/CONFIG.md, "Memory").
//!
//! quinn returns flow-control credit as soon as the daemon reads, so its receive windows bound
//! only what quinn buffers, not what the daemon keeps after reading: this is the part they do
//! not cover.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One connection's view of the budgets: its own and the global one.
#[derive(Clone, Debug)]
pub(crate) struct ByteBudget {
    connection: Arc<Semaphore>,
    global: Arc<Semaphore>,
}

/// Bytes held until dropped (in both budgets).
#[derive(Debug)]
pub(crate) struct Reservation {
    _connection: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

/// The daemon-wide budget, shared by every connection.
pub(crate) fn global(bytes: u64) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(permits(bytes)))
}

fn permits(bytes: u64) -> usize {
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

impl ByteBudget {
    /// A new connection's budget of `bytes`, inside `global`.
    pub(crate) fn new(bytes: u64, global: &Arc<Semaphore>) -> ByteBudget {
        ByteBudget {
            connection: Arc::new(Semaphore::new(permits(bytes))),
            global: Arc::clone(global),
        }
    }

    /// Reserves `bytes` now, or not at all (a request that does not fit is refused unread).
    pub(crate) fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let n = u32::try_from(bytes).ok()?;
        let connection = Arc::clone(&self.connection)
            .try_acquire_many_owned(n)
            .ok()?;
        let global = Arc::clone(&self.global).try_acquire_many_owned(n).ok()?;
        Some(Reservation {
            _connection: connection,
            _global: global,
        })
    }

    /// Reserves `bytes`, waiting for other streams to hand theirs back (an answer waits; its
    /// writer bounds the wait). Connection first, so a connection that holds all of its own
    /// budget waits on itself, not on the global budget.
    pub(crate) async fn reserve(&self, bytes: usize) -> Option<Reservation> {
        let n = u32::try_from(bytes).ok()?;
        let connection = Arc::clone(&self.connection)
            .acquire_many_owned(n)
            .await
            .ok()?;
        let global = Arc::clone(&self.global).acquire_many_owned(n).await.ok()?;
        Some(Reservation {
            _connection: connection,
            _global: global,
        })
    }

    /// Bytes of this connection's budget not reserved now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> usize {
        self.connection.available_permits()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_bounded_by_both_budgets_and_come_back_on_drop() {
        let global = global(100);
        let a = ByteBudget::new(60, &global);
        let b = ByteBudget::new(60, &global);
        let r1 = a.try_reserve(50).expect("fits");
        assert!(a.try_reserve(20).is_none(), "over the connection's budget");
        let r2 = b.try_reserve(50).expect("fits");
        // 100 global: 50 + 50 held; b has 10 of its own left, but the daemon has none.
        assert!(b.try_reserve(1).is_none(), "over the global budget");
        assert_eq!(a.available(), 10);
        drop(r1);
        assert_eq!(a.available(), 60);
        let r3 = b.try_reserve(10);
        assert!(r3.is_some(), "the global bytes came back");
        drop(r2);
    }

    #[tokio::test]
    async fn an_answer_waits_for_bytes_to_come_back() {
        let global = global(100);
        let a = ByteBudget::new(100, &global);
        let held = a.try_reserve(90).expect("fits");
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.reserve(20).await.is_some() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "must wait while the budget is held");
        drop(held);
        assert!(waiting.await.expect("joins"));
    }
}
