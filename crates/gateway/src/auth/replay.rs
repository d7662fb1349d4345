//! The replay guard (`auth.replay_guard`, off by default): each signature is accepted once.
//!
//! A TC3 signature covers its timestamp, and the gateway accepts a timestamp only within
//! `auth.max_clock_skew_seconds` of its clock, so a signature can only be replayed while its
//! timestamp is in that window. The guard remembers every signature it accepted, filed by its
//! timestamp's second: a replay carries the same timestamp, so one look in one second's set
//! decides. A second's set is emptied as soon as its timestamp leaves the window (the slot is
//! reused `2 × skew + 2` seconds later at the earliest), so the guard holds about
//! `calls per second × the window` fingerprints, bounded by `auth.replay_guard_capacity`.
//!
//! A fingerprint is the first 8 bytes of the signature. Signatures are HMAC-SHA256 outputs
//! that no client can steer without the key, so two genuine calls in the same second share a
//! fingerprint with probability about n² / 2⁶⁵: none in practice (and such a call would be
//! refused once, and its retry signed anew).
//!
//! When the guard is full (more calls in the window than its capacity), new signatures are
//! admitted without being remembered and counted (`tollgate_replay_guard_overflow_total`):
//! the guard never turns live traffic away for its own bookkeeping. Size it as calls per
//! second × the window (e.g. 5,000/s × 300 s = 1.5 M; about 20 bytes each).

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use rustc_hash::FxHashSet;

/// Each second's set is split in this many shards (by the fingerprint's low bits), so calls
/// of the same second on different threads rarely meet on one lock.
const SHARDS: usize = 8;

/// Signatures accepted within the clock-skew window.
pub struct ReplayGuard {
    /// `slots[second % len][shard]`.
    slots: Box<[[Mutex<Slot>; SHARDS]]>,
    skew: i64,
    capacity: usize,
    held: AtomicUsize,
    /// Timestamps up to this second have had their slots emptied.
    swept_through: AtomicI64,
    overflow: AtomicU64,
}

#[derive(Default)]
struct Slot {
    /// The timestamp (Unix seconds) whose fingerprints this slot holds.
    second: i64,
    seen: FxHashSet<u64>,
}

/// What the guard says of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: remembered.
    First,
    /// Accepted before: a replay.
    Again,
    /// The guard is full: not remembered (counted).
    Unguarded,
}

impl ReplayGuard {
    /// A guard for timestamps within `skew_seconds` of the clock, holding at most `capacity`
    /// signatures.
    pub fn new(skew_seconds: i64, capacity: usize) -> ReplayGuard {
        let skew = skew_seconds.max(1);
        let n = usize::try_from(2 * skew + 2).expect("the skew is validated as positive");
        ReplayGuard {
            slots: (0..n)
                .map(|_| std::array::from_fn(|_| Mutex::new(Slot::default())))
                .collect(),
            skew,
            capacity,
            held: AtomicUsize::new(0),
            swept_through: AtomicI64::new(i64::MIN),
            overflow: AtomicU64::new(0),
        }
    }

    /// Records the signature (64 hex digits) of an authenticated call with timestamp
    /// `timestamp`, at `now` (both Unix seconds; the timestamp is within the skew of now).
    pub fn check(&self, signature: &str, timestamp: i64, now: i64) -> Seen {
        self.sweep(now);
        let fingerprint = fingerprint(signature);
        let slot = &self.slots[timestamp.rem_euclid(self.slots.len() as i64) as usize]
            [(fingerprint as usize) % SHARDS];
        let mut slot = slot.lock().expect("not poisoned");
        if slot.second != timestamp {
            self.empty(&mut slot);
            slot.second = timestamp;
        }
        if slot.seen.contains(&fingerprint) {
            return Seen::Again;
        }
        if self.held.load(Ordering::Relaxed) >= self.capacity {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return Seen::Unguarded;
        }
        slot.seen.insert(fingerprint);
        self.held.fetch_add(1, Ordering::Relaxed);
        Seen::First
    }

    /// Signatures remembered now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Signatures admitted unremembered because the guard was full.
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    /// Empties the slots of timestamps that left the window since the last sweep (at most
    /// once per second, by whichever call gets there first).
    fn sweep(&self, now: i64) {
        let expired = now - self.skew - 1;
        let done = self.swept_through.load(Ordering::Relaxed);
        if done >= expired
            || self
                .swept_through
                .compare_exchange(done, expired, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let n = self.slots.len() as i64;
        // Only the seconds in (done, expired]: after a long pause, one turn of the ring.
        let first = expired - n + 1;
        let from = if done == i64::MIN {
            first
        } else {
            (done + 1).max(first)
        };
        for second in from..=expired {
            for shard in &self.slots[second.rem_euclid(n) as usize] {
                let mut slot = shard.lock().expect("not poisoned");
                if slot.second <= expired {
                    self.empty(&mut slot);
                }
            }
        }
    }

    fn empty(&self, slot: &mut Slot) {
        let n = slot.seen.len();
        if n > 0 {
            self.held.fetch_sub(n, Ordering::Relaxed);
            // Keep a modest allocation for the next second; give back a burst's.
            if slot.seen.capacity() > 4096 {
                slot.seen = FxHashSet::default();
            } else {
                slot.seen.clear();
            }
        }
    }
}

/// The first 8 bytes of a hex signature.
fn fingerprint(signature: &str) -> u64 {
    let mut v: u64 = 0;
    for &c in signature.as_bytes().iter().take(16) {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => 0,
        };
        v = (v << 4) | u64::from(d);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(n: u64) -> String {
        format!("{n:016x}{}", "0".repeat(48))
    }

    #[test]
    fn a_signature_is_accepted_once() {
        let g = ReplayGuard::new(300, 100);
        assert_eq!(g.check(&sig(1), 1000, 1000), Seen::First);
        assert_eq!(g.check(&sig(1), 1000, 1010), Seen::Again);
        assert_eq!(g.check(&sig(2), 1000, 1010), Seen::First);
        // The same fingerprint under another timestamp is another signature.
        assert_eq!(g.check(&sig(1), 1001, 1010), Seen::First);
        assert_eq!(g.held(), 3);
    }

    #[test]
    fn seconds_that_left_the_window_are_forgotten() {
        let g = ReplayGuard::new(300, 100);
        for s in 0..10 {
            assert_eq!(g.check(&sig(s), 1000 + s as i64, 1000), Seen::First);
        }
        // Still within the window of its timestamp: remembered.
        assert_eq!(g.check(&sig(0), 1000, 1300), Seen::Again);
        // At 1302, 1000 and 1001 are more than 300 s old; 1002..1009 are still in the window.
        assert_eq!(g.check(&sig(20), 1302, 1302), Seen::First);
        assert_eq!(g.held(), 8 + 1);
        // Much later, everything old is gone and the ring is reused without mixing seconds.
        assert_eq!(g.check(&sig(1), 1001 + 602, 1001 + 602), Seen::First);
        assert_eq!(g.held(), 1);
    }

    #[test]
    fn a_full_guard_admits_unremembered_and_counts() {
        let g = ReplayGuard::new(300, 2);
        assert_eq!(g.check(&sig(1), 1000, 1000), Seen::First);
        assert_eq!(g.check(&sig(2), 1000, 1000), Seen::First);
        assert_eq!(g.check(&sig(3), 1000, 1000), Seen::Unguarded);
        assert_eq!(g.overflow(), 1);
        // What it holds is still guarded.
        assert_eq!(g.check(&sig(1), 1000, 1000), Seen::Again);
    }
}
