//! Admission: may this account's call of this group go through right now?
//!
//! The decision is synchronous and never awaits I/O. State is keyed by (account UIN, group
//! key) only; the limit comes from the caller (resolved from the entitlements at this instant),
//! so quota changes take effect on the next call and never reset a bucket.
//!
//! [`QuotaStore`] is where the state lives: [`LocalStore`] keeps it in this process (one
//! gateway); [`fleet::FleetStore`] decides from capacity leased from the fleet's Redis, which
//! the fleet task (`crate::fleet`) refills in the background (see ARCHITECTURE.md, "One quota
//! across the fleet"). Either way the decision never waits for I/O.

pub mod fleet;
pub mod gcra;
pub mod inflight;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;

pub use gcra::{Rate, Verdict};
pub use inflight::{Permit, Slots};
use tollgate_core::catalog::GroupKey;
use tollgate_core::entitlement::Limit;

/// The key of one quota: an account's use of one interface group. Sub-accounts have their own
/// UIN and so their own quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuotaKey {
    pub uin: u64,
    pub group: GroupKey,
}

/// The outcome of an admission decision.
#[derive(Debug)]
pub enum Decision {
    /// Admitted. A concurrency group hands over its permit, to be held until the response to
    /// the client has ended or the client has gone away.
    Admitted {
        permit: Option<Permit>,
        /// Calls that would still be admitted right now (rate groups) or free slots
        /// (concurrency groups), after this one.
        remaining: u32,
    },
    /// Refused: over the limit.
    OverLimit {
        /// When a retry could succeed; `None` for a full concurrency group (it depends on
        /// other calls finishing).
        retry_after_nanos: Option<u64>,
    },
}

/// Where quota state lives. Both calls are synchronous and must not block on I/O.
pub trait QuotaStore: Send + Sync + 'static {
    /// One GCRA check of `key` at monotonic `now` under `rate`.
    fn check_rate(&self, key: QuotaKey, rate: Rate, now: u64) -> Verdict;
    /// Takes one of `limit` concurrency slots of `key` at monotonic `now`, or returns `None`
    /// when all are taken.
    fn acquire(&self, key: QuotaKey, limit: u32, now: u64) -> Option<Permit>;
    /// Drops state that no longer affects any decision; returns how many entries remain.
    fn sweep(&self, now: u64) -> usize;
    /// Entries currently held (rate buckets plus concurrency counters).
    fn n_entries(&self) -> usize;
}

/// Quota state in this process: one atomic per rate bucket, one slot counter per concurrency
/// group in use. The maps are sharded (`DashMap`), so a check takes one shard read lock plus
/// one compare-and-swap; a new key takes the shard's write lock once.
#[derive(Default)]
pub struct LocalStore {
    buckets: DashMap<QuotaKey, AtomicU64, FxBuildHasher>,
    slots: DashMap<QuotaKey, Arc<Slots>, FxBuildHasher>,
}

impl LocalStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Slots in use for `key` (for tests and gauges).
    pub fn in_flight(&self, key: QuotaKey) -> u32 {
        self.slots.get(&key).map(|s| s.in_flight()).unwrap_or(0)
    }

    pub fn n_buckets(&self) -> usize {
        self.buckets.len()
    }
}

impl QuotaStore for LocalStore {
    fn check_rate(&self, key: QuotaKey, rate: Rate, now: u64) -> Verdict {
        if let Some(tat) = self.buckets.get(&key) {
            return gcra::check(&tat, now, rate);
        }
        let tat = self.buckets.entry(key).or_insert_with(|| AtomicU64::new(0));
        gcra::check(&tat, now, rate)
    }

    fn acquire(&self, key: QuotaKey, limit: u32, _now: u64) -> Option<Permit> {
        if let Some(slots) = self.slots.get(&key) {
            return slots.try_acquire(limit);
        }
        let slots = Arc::clone(&self.slots.entry(key).or_default());
        slots.try_acquire(limit)
    }

    fn sweep(&self, now: u64) -> usize {
        use std::sync::atomic::Ordering;
        // A rested bucket is indistinguishable from a missing one.
        self.buckets
            .retain(|_, tat| !gcra::is_rested(tat.load(Ordering::Acquire), now));
        // A slot counter may go only when no permit refers to it: a permit holds an `Arc`, so
        // a strong count of 1 means the map's is the last reference.
        self.slots
            .retain(|_, s| Arc::strong_count(s) > 1 || s.in_flight() > 0);
        self.n_entries()
    }

    fn n_entries(&self) -> usize {
        self.buckets.len() + self.slots.len()
    }
}

/// The admission controller: turns a resolved [`Limit`] into a decision against the store.
pub struct Admission {
    store: Arc<dyn QuotaStore>,
    burst_millis: u32,
}

impl Admission {
    /// `burst_millis`: a rested bucket admits this many milliseconds' worth of its rate at once.
    pub fn new(store: Arc<dyn QuotaStore>, burst_millis: u32) -> Self {
        Admission {
            store,
            burst_millis,
        }
    }

    pub fn store(&self) -> &Arc<dyn QuotaStore> {
        &self.store
    }

    /// The rate a limit of `qps` runs at.
    pub fn rate(&self, qps: u32) -> Rate {
        Rate::with_burst_window(qps, self.burst_millis)
    }

    /// Decides one call of `key` under `limit` at monotonic `now`.
    pub fn decide(&self, key: QuotaKey, limit: Limit, now: u64) -> Decision {
        match limit {
            Limit::Rate(qps) => match self.store.check_rate(key, self.rate(qps), now) {
                Verdict::Admitted { remaining } => Decision::Admitted {
                    permit: None,
                    remaining,
                },
                Verdict::Limited { retry_after_nanos } => Decision::OverLimit {
                    retry_after_nanos: Some(retry_after_nanos),
                },
            },
            Limit::Concurrency(max) => match self.store.acquire(key, max, now) {
                Some(permit) => Decision::Admitted {
                    permit: Some(permit),
                    remaining: 0,
                },
                None => Decision::OverLimit {
                    retry_after_nanos: None,
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn key(uin: u64, group: &str) -> QuotaKey {
        QuotaKey {
            uin,
            group: GroupKey::of_group(group),
        }
    }

    fn count_admitted(
        adm: &Admission,
        k: QuotaKey,
        limit: Limit,
        start: u64,
        per_second: u64,
        seconds: u64,
    ) -> u64 {
        let n = per_second * seconds;
        (0..n)
            .filter(|i| {
                let now = start + i * SECOND / per_second;
                matches!(adm.decide(k, limit, now), Decision::Admitted { .. })
            })
            .count() as u64
    }

    /// A 20-QPS group offered 200 calls/s for 10 s admits at least 190 and at most 200 + burst.
    #[test]
    fn twenty_qps_under_tenfold_overload() {
        let adm = Admission::new(Arc::new(LocalStore::new()), 1000);
        let admitted = count_admitted(
            &adm,
            key(1, "ocr.GeneralBasicOCR"),
            Limit::Rate(20),
            SECOND,
            200,
            10,
        );
        let burst = u64::from(adm.rate(20).burst);
        assert!(
            (190..=200 + burst).contains(&admitted),
            "admitted {admitted}"
        );
    }

    #[test]
    fn keys_are_independent_and_sweeping_forgets_only_rested_buckets() {
        let store = Arc::new(LocalStore::new());
        let adm = Admission::new(store.clone(), 1000);
        let (a, b) = (key(1, "g"), key(2, "g"));
        let t = SECOND;
        for _ in 0..20 {
            assert!(matches!(
                adm.decide(a, Limit::Rate(20), t),
                Decision::Admitted { .. }
            ));
        }
        assert!(matches!(
            adm.decide(a, Limit::Rate(20), t),
            Decision::OverLimit { .. }
        ));
        assert!(matches!(
            adm.decide(b, Limit::Rate(20), t),
            Decision::Admitted { .. }
        ));
        assert_eq!(store.n_buckets(), 2);
        // At t the bucket of `a` is a second ahead; `b`'s is 50 ms ahead.
        assert_eq!(store.sweep(t + SECOND / 10), 1);
        assert!(matches!(
            adm.decide(a, Limit::Rate(20), t + SECOND / 10),
            Decision::Admitted { .. }
        ));
        assert_eq!(store.sweep(t + 10 * SECOND), 0);
    }

    #[test]
    fn concurrency_permits_are_swept_only_when_free() {
        let store = Arc::new(LocalStore::new());
        let adm = Admission::new(store.clone(), 1000);
        let k = key(1, "facefusion.fuse_ultra");
        let permits: Vec<_> = (0..10)
            .map(|_| match adm.decide(k, Limit::Concurrency(10), 0) {
                Decision::Admitted { permit, .. } => permit.unwrap(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(matches!(
            adm.decide(k, Limit::Concurrency(10), 0),
            Decision::OverLimit {
                retry_after_nanos: None
            }
        ));
        assert_eq!(store.sweep(0), 1);
        assert_eq!(store.in_flight(k), 10);
        drop(permits);
        assert_eq!(store.sweep(0), 0);
        assert!(matches!(
            adm.decide(k, Limit::Concurrency(10), 0),
            Decision::Admitted { .. }
        ));
    }
}
