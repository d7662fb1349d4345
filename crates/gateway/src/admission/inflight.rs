//! Concurrency permits: at most N calls of a group in flight per account.
//!
//! A permit is taken at admission and released by `Drop`, so it is returned whether the
//! response ended, the upstream failed or the client went away mid-response (the proxy keeps
//! the permit inside the response body, which hyper drops in every one of those cases). Like
//! pingora-limits' `Inflight`, and unlike tower's `ConcurrencyLimit`, a full group refuses at
//! once instead of queueing (tower #793).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// One slot counter, shared by the table and every permit taken from it.
#[derive(Debug, Default)]
pub struct Slots {
    in_flight: AtomicU32,
}

impl Slots {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes a slot if fewer than `limit` are taken.
    pub fn try_acquire(self: &Arc<Self>, limit: u32) -> Option<Permit> {
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if current >= limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Permit {
                        slots: Arc::clone(self),
                    });
                }
                Err(observed) => current = observed,
            }
        }
    }
}

/// A held slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    slots: Arc<Slots>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.slots.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_beyond_the_limit_and_frees_on_drop() {
        let slots = Arc::new(Slots::default());
        let held: Vec<Permit> = (0..10).map(|_| slots.try_acquire(10).unwrap()).collect();
        assert!(slots.try_acquire(10).is_none());
        assert_eq!(slots.in_flight(), 10);
        drop(held);
        assert_eq!(slots.in_flight(), 0);
        assert!(slots.try_acquire(10).is_some());
    }

    #[test]
    fn never_exceeds_the_limit_across_threads() {
        let slots = Arc::new(Slots::default());
        let max_seen = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                let slots = Arc::clone(&slots);
                let max_seen = Arc::clone(&max_seen);
                s.spawn(move || {
                    for _ in 0..20_000 {
                        if let Some(p) = slots.try_acquire(3) {
                            max_seen.fetch_max(slots.in_flight(), Ordering::SeqCst);
                            drop(p);
                        }
                    }
                });
            }
        });
        assert!(max_seen.load(Ordering::SeqCst) <= 3);
        assert_eq!(slots.in_flight(), 0);
    }
}
