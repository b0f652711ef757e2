//! The capacity model of a network HSM, per token: a FIFO semaphore (at most K calls inside, the
//! others wait in arrival order, or are turned away when too many already wait) and a permit that
//! makes each call last at least T.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// How often a waiter re-checks whether its rule was lifted.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// A FIFO counting semaphore.
#[derive(Debug)]
pub struct Fifo {
    max: usize,
    state: Mutex<FifoState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct FifoState {
    inflight: usize,
    queue: VecDeque<u64>,
    next_ticket: u64,
    max_inflight: usize,
    max_queue: usize,
}

/// The outcome of [`Fifo::acquire`].
#[derive(Debug)]
pub enum Acquire {
    /// Inside: hold the permit for the call.
    Entered(Permit),
    /// `max_waiting` calls were already waiting.
    Busy,
    /// The rule was lifted while waiting: go on without a permit.
    Abandoned,
}

/// A place inside; releasing it (on drop) first sleeps out the rest of the minimum call time.
#[derive(Debug)]
pub struct Permit {
    fifo: Arc<Fifo>,
    entered: Instant,
    min: Duration,
}

impl Fifo {
    /// A semaphore with `max` places.
    pub fn new(max: usize) -> Fifo {
        Fifo {
            max: max.max(1),
            state: Mutex::new(FifoState::default()),
            cv: Condvar::new(),
        }
    }

    /// Waits for a place in arrival order. With `max_waiting = Some(q)`, a call that would have
    /// to wait while `q` others already wait gets [`Acquire::Busy`] at once. While waiting, gives
    /// up when `alive` turns false.
    pub fn acquire(
        self: &Arc<Self>,
        min_call: Duration,
        max_waiting: Option<usize>,
        alive: &AtomicBool,
    ) -> Acquire {
        let mut s = self.state.lock();
        if s.inflight < self.max && s.queue.is_empty() {
            return Acquire::Entered(self.enter(&mut s, min_call));
        }
        if let Some(q) = max_waiting {
            if s.queue.len() >= q {
                return Acquire::Busy;
            }
        }
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.queue.push_back(ticket);
        s.max_queue = s.max_queue.max(s.queue.len());
        loop {
            if s.inflight < self.max && s.queue.front() == Some(&ticket) {
                s.queue.pop_front();
                let permit = self.enter(&mut s, min_call);
                // The next in line may fit too.
                self.cv.notify_all();
                return Acquire::Entered(permit);
            }
            if !alive.load(Ordering::Acquire) {
                s.queue.retain(|t| *t != ticket);
                self.cv.notify_all();
                return Acquire::Abandoned;
            }
            let _ = self.cv.wait_for(&mut s, WAIT_SLICE);
        }
    }

    /// The most calls that were inside at once, and the longest queue seen.
    pub fn peaks(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.max_inflight, s.max_queue)
    }

    /// Calls inside now, and calls waiting now.
    #[cfg(test)]
    pub fn current(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.inflight, s.queue.len())
    }

    fn enter(self: &Arc<Self>, s: &mut FifoState, min_call: Duration) -> Permit {
        s.inflight += 1;
        s.max_inflight = s.max_inflight.max(s.inflight);
        Permit {
            fifo: Arc::clone(self),
            entered: Instant::now(),
            min: min_call,
        }
    }

    fn release(&self) {
        let mut s = self.state.lock();
        s.inflight = s.inflight.saturating_sub(1);
        drop(s);
        self.cv.notify_all();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let spent = self.entered.elapsed();
        if spent < self.min {
            std::thread::sleep(self.min - spent);
        }
        self.fifo.release();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn at_most_k_inside_and_min_duration() {
        let fifo = Arc::new(Fifo::new(2));
        let alive = Arc::new(AtomicBool::new(true));
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (fifo, alive, inside, peak) = (
                    Arc::clone(&fifo),
                    Arc::clone(&alive),
                    Arc::clone(&inside),
                    Arc::clone(&peak),
                );
                std::thread::spawn(move || {
                    let Acquire::Entered(p) = fifo.acquire(Duration::from_millis(20), None, &alive)
                    else {
                        panic!("no place");
                    };
                    let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1));
                    inside.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert!(peak.load(Ordering::SeqCst) <= 2);
        assert_eq!(fifo.peaks().0, 2);
        assert_eq!(fifo.current(), (0, 0));
    }

    #[test]
    fn busy_when_queue_full_and_abandon_when_lifted() {
        let fifo = Arc::new(Fifo::new(1));
        let alive = AtomicBool::new(true);
        let Acquire::Entered(p) = fifo.acquire(Duration::ZERO, Some(0), &alive) else {
            panic!("first gets in");
        };
        assert!(matches!(
            fifo.acquire(Duration::ZERO, Some(0), &alive),
            Acquire::Busy
        ));
        alive.store(false, Ordering::Release);
        assert!(matches!(
            fifo.acquire(Duration::ZERO, None, &alive),
            Acquire::Abandoned
        ));
        drop(p);
        assert_eq!(fifo.current(), (0, 0));
    }
}
