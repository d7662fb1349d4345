//! Spend leases on the gateway (`[entitlements] spend_lease_units`): an owner with postpaid
//! off may be served, per billing item, only the units this replica holds a lease for
//! (`tollgate_store::spend`), so what the fleet serves beyond the owner's packs is at most the
//! calls in flight plus N × lease (and one lease of a key's first calls, served while its
//! first lease is asked for), whatever the rate and however late settlement hears of it.
//!
//! The request path takes a unit from an atomic counter and never waits: a background task
//! asks the store for more when a key runs below half a lease, and gives back what an idle key
//! holds. While the store cannot be reached for a lease's time to live, leases are not
//! enforced (the refusal would otherwise stop every prepaid-only owner during an outage; the
//! fleet then falls back to settlement's reports of packs used up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use tokio::sync::Notify;

use tollgate_core::catalog::BillingItemId;
use tollgate_core::clock::Clock;
use tollgate_store::spend::{Grant, grant};
use tollgate_store::tokio_postgres;

const UNKNOWN: u8 = 0;
const LIMITED: u8 = 1;
const UNLIMITED: u8 = 2;

/// A key that has seen no call for this long gives its units back and is forgotten.
const IDLE: Duration = Duration::from_secs(10);

struct Key {
    /// Units this replica may still serve (a first lease's calls are advanced: it starts at
    /// one lease, repaid by the first grant).
    allowance: AtomicI64,
    state: AtomicU8,
    /// Monotonic nanoseconds.
    last_call: AtomicI64,
    /// Monotonic nanoseconds of the last answer for it (an unlimited key asks again each
    /// second: its owner may have been rated since).
    checked: AtomicI64,
    /// The last grant gave nothing (the packs are used up): ask again once a second, not
    /// every round.
    dry: AtomicBool,
    asked: AtomicBool,
}

/// The replica's spend leases.
pub struct Spend {
    keys: DashMap<(u64, BillingItemId), Arc<Key>, FxBuildHasher>,
    lease: i64,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    wake: Notify,
    /// Monotonic nanoseconds of the last round the store answered.
    answered: AtomicI64,
    pub metrics: SpendMetrics,
}

impl std::fmt::Debug for Spend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spend")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Spend lease metrics.
#[derive(Clone)]
pub struct SpendMetrics {
    pub refused: prometheus::IntCounter,
    pub granted: prometheus::IntCounter,
    pub degraded: prometheus::IntGauge,
}

impl SpendMetrics {
    pub fn new(registry: &prometheus::Registry) -> SpendMetrics {
        let m = SpendMetrics {
            refused: prometheus::IntCounter::new(
                "tollgate_spend_refused_total",
                "Calls of prepaid-only owners refused ResourcePackageRunOut because this replica holds no spend lease for them.",
            )
            .expect("valid metric"),
            granted: prometheus::IntCounter::new(
                "tollgate_spend_leased_units_total",
                "Units of spend leases granted to this replica by the store.",
            )
            .expect("valid metric"),
            degraded: prometheus::IntGauge::new(
                "tollgate_spend_degraded",
                "1 while the store has not answered spend lease requests for a lease's time to live (leases not enforced).",
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(m.refused.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.granted.clone()),
            Box::new(m.degraded.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        m
    }
}

impl Spend {
    pub fn new(lease: u64, ttl: Duration, clock: Arc<dyn Clock>, metrics: SpendMetrics) -> Spend {
        let answered = AtomicI64::new(clock.monotonic_nanos() as i64);
        Spend {
            keys: DashMap::default(),
            lease: lease as i64,
            ttl,
            clock,
            wake: Notify::new(),
            answered,
            metrics,
        }
    }

    /// Takes one unit for a call of `owner` billing `item`: whether it may be served.
    /// Synchronous: atomics only.
    pub fn take(&self, owner: u64, item: BillingItemId) -> bool {
        let now = self.clock.monotonic_nanos() as i64;
        if now - self.answered.load(Ordering::Relaxed) > self.ttl.as_nanos() as i64 {
            return true;
        }
        let key = match self.keys.get(&(owner, item)) {
            Some(k) => Arc::clone(&k),
            None => {
                let k = Arc::new(Key {
                    allowance: AtomicI64::new(self.lease),
                    state: AtomicU8::new(UNKNOWN),
                    last_call: AtomicI64::new(now),
                    checked: AtomicI64::new(now),
                    dry: AtomicBool::new(false),
                    asked: AtomicBool::new(false),
                });
                Arc::clone(&self.keys.entry((owner, item)).or_insert(k))
            }
        };
        key.last_call.store(now, Ordering::Relaxed);
        let ok = match key.state.load(Ordering::Relaxed) {
            UNLIMITED => true,
            _ => {
                if key.allowance.fetch_sub(1, Ordering::AcqRel) >= 1 {
                    true
                } else {
                    key.allowance.fetch_add(1, Ordering::AcqRel);
                    false
                }
            }
        };
        let low = key.state.load(Ordering::Relaxed) == UNKNOWN
            || key.allowance.load(Ordering::Relaxed) < self.lease / 2;
        if low && !key.asked.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        if !ok {
            self.metrics.refused.inc();
        }
        ok
    }

    /// Returns the unit [`Spend::take`] took for a call that was then refused (by its quota):
    /// it was not served.
    pub fn untake(&self, owner: u64, item: BillingItemId) {
        if let Some(k) = self.keys.get(&(owner, item))
            && k.state.load(Ordering::Relaxed) != UNLIMITED
        {
            k.allowance.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Keeps leases filled until `shutdown`: `member` is this replica's gateway id (the id its
    /// batches carry), `item_key` names a billing item for the store.
    pub async fn run(
        self: Arc<Self>,
        url: String,
        member: String,
        item_key: impl Fn(BillingItemId) -> Option<String> + Send + Sync,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut client: Option<tokio_postgres::Client> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = tick.tick() => {}
                () = &mut shutdown => return,
            }
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = tollgate_store::connect(&url, Duration::from_secs(2))
                    .await
                    .ok();
            }
            let Some(c) = client.as_mut() else {
                self.refresh_degraded();
                continue;
            };
            let now = self.clock.monotonic_nanos() as i64;
            let keys: Vec<((u64, BillingItemId), Arc<Key>)> = self
                .keys
                .iter()
                .map(|e| (*e.key(), Arc::clone(e.value())))
                .collect();
            let mut failed = false;
            for ((owner, item), key) in keys {
                let Some(name) = item_key(item) else { continue };
                let idle = now - key.last_call.load(Ordering::Relaxed) > IDLE.as_nanos() as i64;
                let state = key.state.load(Ordering::Relaxed);
                let allowance = key.allowance.load(Ordering::Relaxed);
                let want = if idle {
                    // Give back what an idle key holds, and forget it.
                    -allowance.max(0)
                } else if state == UNKNOWN {
                    // Repay the first calls' advance and take a lease.
                    self.lease + (self.lease - allowance)
                } else if state == LIMITED
                    && allowance < self.lease / 2
                    && (!key.dry.load(Ordering::Relaxed)
                        || now - key.checked.load(Ordering::Relaxed) >= 1_000_000_000)
                {
                    self.lease - allowance.max(0)
                } else if state == UNLIMITED
                    && now - key.checked.load(Ordering::Relaxed) >= 1_000_000_000
                {
                    self.lease
                } else {
                    continue;
                };
                let answer = tokio::time::timeout(
                    Duration::from_secs(2),
                    grant(c, owner, &name, &member, want, self.ttl),
                )
                .await;
                match answer {
                    Ok(Ok(Grant::Unlimited)) => {
                        key.state.store(UNLIMITED, Ordering::Relaxed);
                    }
                    Ok(Ok(Grant::Units(n))) => {
                        if state == UNLIMITED {
                            // Rated since: from now on within leases.
                            key.allowance.store(n as i64, Ordering::Release);
                            self.metrics.granted.inc_by(n);
                        } else if want > 0 {
                            key.allowance.fetch_add(n as i64, Ordering::AcqRel);
                            self.metrics.granted.inc_by(n);
                        } else {
                            key.allowance.fetch_add(want, Ordering::AcqRel);
                        }
                        key.state.store(LIMITED, Ordering::Relaxed);
                        key.dry.store(want > 0 && n == 0, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %format!("{e:#}"), "spend lease request failed");
                        failed = true;
                        break;
                    }
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
                key.checked.store(now, Ordering::Relaxed);
                key.asked.store(false, Ordering::Release);
                if idle {
                    self.keys.remove(&(owner, item));
                }
            }
            if failed {
                client = None;
            } else {
                self.answered
                    .store(self.clock.monotonic_nanos() as i64, Ordering::Relaxed);
            }
            self.refresh_degraded();
        }
    }

    fn refresh_degraded(&self) {
        let stale = self.clock.monotonic_nanos() as i64 - self.answered.load(Ordering::Relaxed)
            > self.ttl.as_nanos() as i64;
        self.metrics.degraded.set(i64::from(stale));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::clock::FakeClock;

    fn spend(lease: u64) -> Spend {
        Spend::new(
            lease,
            Duration::from_secs(10),
            FakeClock::new(0),
            SpendMetrics::new(&prometheus::Registry::new()),
        )
    }

    #[test]
    fn a_new_key_is_served_one_lease_in_advance_then_refused() {
        let s = spend(5);
        let item = BillingItemId(3);
        for _ in 0..5 {
            assert!(s.take(7, item));
        }
        assert!(!s.take(7, item));
        assert_eq!(s.metrics.refused.get(), 1);
        // A unit given back (its call was refused by its quota) serves another call.
        s.untake(7, item);
        assert!(s.take(7, item));
        // Other keys are separate.
        assert!(s.take(8, item));
        assert!(s.take(7, BillingItemId(4)));
    }

    #[test]
    fn an_unlimited_key_is_not_counted() {
        let s = spend(2);
        let item = BillingItemId(1);
        assert!(s.take(1, item));
        s.keys
            .get(&(1, item))
            .unwrap()
            .state
            .store(UNLIMITED, Ordering::Relaxed);
        for _ in 0..100 {
            assert!(s.take(1, item));
        }
    }
}
