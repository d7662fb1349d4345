//! One quota across the fleet, decided locally: the admission half of the Redis-backed store.
//!
//! Every call is decided here, synchronously, from capacity this replica already holds; the
//! fleet task (`crate::fleet`) keeps that capacity topped up from Redis in the background. The
//! two meet in [`FleetShared`]: admission pushes what it wants into a queue and wakes the task
//! (no I/O, no await); the task writes grants back into the entries' atomics.
//!
//! **Rate groups** take calls from a *lease*: calls reserved atomically in the fleet's GCRA
//! bucket in Redis (`fleet/rate.lua`), so a leased call is already counted fleet-wide and the
//! fleet never admits more than the bucket allows. A lease is sized rate × `lease` (about
//! 100 ms of calls), refilled at half, and given back if its key goes quiet. A cold key (no
//! lease in the last second) admits from this replica's *static share* (limit ÷ N) and
//! charges those calls to the bucket with the next lease (its *debt*), so the first call of a
//! key never waits and a key nobody calls costs nothing.
//!
//! **Concurrency groups** admit within this replica's *slice* of the limit, granted by
//! `fleet/slice.lua` from every member's demand; the slices, plus a static share kept for
//! each member that has none, never exceed the limit, so the fleet never has more than the
//! limit in flight. A member whose slice grant is lost in transit stops at what it had in
//! flight; a member that dies frees its slice when its membership lapses.
//!
//! **Failure** (Redis slower than `timeout`, or down) is a mode, per group: `fail_static`
//! (each replica admits limit ÷ N from local state), `fail_open` (admit without a fleet
//! limit), `fail_closed` (refuse). The task enters it on a timeout and leaves it when a probe
//! answers; admission only reads a flag.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use rustc_hash::{FxBuildHasher, FxHashMap};

use super::gcra::{self, Rate, Verdict};
use super::inflight::{Permit, Slots};
use super::{QuotaKey, QuotaStore};
use tollgate_core::catalog::GroupKey;

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// What a group does while the fleet's Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Each replica admits limit ÷ N (N: the last fleet size it knew) from local state.
    Static,
    /// Admit every call (no fleet limit while degraded).
    Open,
    /// Refuse every call of the group while degraded.
    Closed,
}

impl FailureMode {
    pub fn parse(s: &str) -> Option<FailureMode> {
        match s {
            "fail_static" => Some(FailureMode::Static),
            "fail_open" => Some(FailureMode::Open),
            "fail_closed" => Some(FailureMode::Closed),
            _ => None,
        }
    }
}

/// The timings of the fleet store (`[quota]` in `tollgate.toml`).
#[derive(Debug, Clone)]
pub struct FleetTuning {
    /// A lease holds this long's worth of calls at the limit (and at most the burst).
    pub lease_nanos: u64,
    /// A lease whose key has had no call for this long gives its calls back (a quiet replica
    /// does not sit on capacity the others could use).
    pub lease_idle_nanos: u64,
    /// A key that had an answer from Redis within this is warm: an empty lease refuses
    /// instead of falling back to the static share.
    pub warm_nanos: u64,
    /// Failure mode per group, and for every other group.
    pub failure_default: FailureMode,
    pub failure_groups: FxHashMap<GroupKey, FailureMode>,
}

impl FleetTuning {
    pub fn failure_mode(&self, group: GroupKey) -> FailureMode {
        self.failure_groups
            .get(&group)
            .copied()
            .unwrap_or(self.failure_default)
    }

    /// Calls in a lease of `rate`: rate × lease, at least one, at most the burst.
    pub fn lease_size(&self, rate: Rate) -> u32 {
        let calls = (u64::from(rate.per_second) * self.lease_nanos).div_ceil(NANOS_PER_SECOND);
        calls.clamp(1, u64::from(rate.burst.max(1))) as u32
    }
}

/// Something an entry wants from Redis.
#[derive(Debug)]
pub enum Wanted {
    Rate(QuotaKey, Arc<RateLease>),
    Slice(QuotaKey, Arc<SliceState>),
}

/// The state admission and the fleet task share.
pub struct FleetShared {
    pub tuning: FleetTuning,
    healthy: AtomicBool,
    /// Monotonic nanos when the current degraded spell began.
    degraded_since: AtomicU64,
    /// Live members in the last membership TTL (for rates and for the shares others keep).
    members: AtomicU32,
    /// Members seen in twice that window: the N of this member's own static share, never
    /// smaller than the N any other member keeps a share for.
    members_wide: AtomicU32,
    /// Past the settle period: every member has seen this one, so it may use a static share.
    settled: AtomicBool,
    queue: Mutex<Vec<Wanted>>,
    wake: tokio::sync::Notify,
}

impl FleetShared {
    pub fn new(tuning: FleetTuning) -> Arc<FleetShared> {
        Arc::new(FleetShared {
            tuning,
            // Until Redis first answers, the fleet is degraded: nothing was leased yet.
            healthy: AtomicBool::new(false),
            degraded_since: AtomicU64::new(0),
            members: AtomicU32::new(1),
            members_wide: AtomicU32::new(1),
            settled: AtomicBool::new(false),
            queue: Mutex::new(Vec::with_capacity(1024)),
            wake: tokio::sync::Notify::new(),
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// The fleet task: Redis answered (again).
    pub fn set_healthy(&self) {
        self.healthy.store(true, Ordering::Release);
    }

    /// The fleet task: Redis timed out or failed.
    pub fn set_degraded(&self, now: u64) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            self.degraded_since.store(now, Ordering::Release);
        }
    }

    pub fn set_members(&self, recent: u32, wide: u32) {
        self.members.store(recent.max(1), Ordering::Release);
        self.members_wide
            .store(wide.max(recent).max(1), Ordering::Release);
    }

    pub fn members(&self) -> u32 {
        self.members.load(Ordering::Acquire)
    }

    pub fn members_wide(&self) -> u32 {
        self.members_wide.load(Ordering::Acquire)
    }

    pub fn set_settled(&self, settled: bool) {
        self.settled.store(settled, Ordering::Release);
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Everything wanted since the last call, into `into` (swapped, so neither side
    /// reallocates once warm).
    pub fn take_wanted(&self, into: &mut Vec<Wanted>) {
        let mut q = self.queue.lock().expect("not poisoned");
        std::mem::swap(&mut *q, into);
    }

    /// Answers everything queued as a Redis with room for all of it would (each rate key a
    /// whole lease, each concurrency key its demand), without Redis: for benches and tests of
    /// the decision itself. `buf` is reused, so once warm this allocates nothing.
    pub fn grant_all_locally(&self, buf: &mut Vec<Wanted>, now: u64) {
        self.take_wanted(buf);
        for w in buf.drain(..) {
            match w {
                Wanted::Rate(_, l) => {
                    let ask = l.ask(&self.tuning, self.members(), now);
                    l.granted(&self.tuning, now, ask.want, 0);
                }
                Wanted::Slice(_, s) => {
                    let ask = s.ask(self);
                    s.granted(ask.demand.max(ask.in_use), true);
                }
            }
        }
    }

    /// Resolves when admission wants something.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    fn want(&self, w: Wanted) {
        self.queue.lock().expect("not poisoned").push(w);
        self.wake.notify_one();
    }
}

/// One (account, rate group) on this replica.
#[derive(Debug, Default)]
pub struct RateLease {
    /// Calls of the current lease not yet used. They were counted in the fleet's bucket when
    /// reserved, so they stay good until used or given back: at most one and a half leases
    /// per replica are outstanding (a refill at half adds one), which bounds how far a window
    /// can exceed the bucket's own bound.
    granted: AtomicU32,
    /// A lease reserved ahead (the key is at its limit fleet-wide): usable from `usable_from`.
    future: AtomicU32,
    usable_from: AtomicU64,
    /// Calls admitted from the static share, not yet charged to the fleet's bucket.
    debt: AtomicU32,
    /// The static share's own GCRA (cold keys and `fail_static`).
    share_tat: AtomicU64,
    /// A request for this key is queued or in flight.
    pending: AtomicBool,
    /// Redis said no lease fits before this (monotonic nanos).
    not_before: AtomicU64,
    /// A call was refused since the last answer: ask again at `not_before`.
    demand: AtomicBool,
    /// The key had an answer from Redis until this (monotonic nanos).
    warm_until: AtomicU64,
    /// The rate of the last call (per_second << 32 | burst), for the next lease.
    rate: AtomicU64,
    /// The last call (monotonic nanos), for the sweeper.
    touched: AtomicU64,
}

/// What the fleet task sends for one rate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateAsk {
    pub rate: Rate,
    pub want: u32,
    pub debt: u32,
    pub refund: u32,
}

fn pack(rate: Rate) -> u64 {
    (u64::from(rate.per_second) << 32) | u64::from(rate.burst)
}

fn unpack(v: u64) -> Rate {
    Rate {
        per_second: (v >> 32) as u32,
        burst: v as u32,
    }
}

impl RateLease {
    /// Takes one leased call if the lease has one (a lease reserved ahead, once its time came).
    fn take(&self, now: u64) -> Option<u32> {
        let mut g = self.granted.load(Ordering::Acquire);
        while g > 0 {
            match self
                .granted
                .compare_exchange_weak(g, g - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(g - 1),
                Err(seen) => g = seen,
            }
        }
        if self.future.load(Ordering::Acquire) > 0
            && self.usable_from.load(Ordering::Acquire) <= now
        {
            let f = self.future.swap(0, Ordering::AcqRel);
            if f > 0 {
                self.granted.fetch_add(f - 1, Ordering::AcqRel);
                return Some(f - 1);
            }
        }
        None
    }

    fn held(&self) -> u32 {
        self.granted.load(Ordering::Acquire) + self.future.load(Ordering::Acquire)
    }

    /// The request to send now: the lease to reserve, the debt to charge, and what an expired
    /// lease gives back. Clears the debt and the refund (they travel with the request).
    pub fn ask(&self, tuning: &FleetTuning, members: u32, now: u64) -> RateAsk {
        let rate = unpack(self.rate.load(Ordering::Acquire));
        let refund = if self.is_quiet(tuning, now) {
            self.granted.swap(0, Ordering::AcqRel) + self.future.swap(0, Ordering::AcqRel)
        } else {
            0
        };
        // Calls admitted on this replica's own (a cold key's first calls, or a degraded
        // spell's fail_static share) are charged to the bucket, up to this replica's share of
        // one burst: the fleet's charge is then at most a burst, enough that short spells do
        // not each add one, without a long outage refusing for as long after it.
        let n = members.max(1);
        let debt = self
            .debt
            .swap(0, Ordering::AcqRel)
            .min((rate.burst / n).max(1));
        RateAsk {
            rate,
            want: tuning.lease_size(rate),
            debt,
            refund,
        }
    }

    /// No call for `lease_idle`.
    fn is_quiet(&self, tuning: &FleetTuning, now: u64) -> bool {
        self.touched.load(Ordering::Acquire) + tuning.lease_idle_nanos <= now
    }

    /// The key went quiet with leased calls left: they should be given back.
    pub fn quiet_with_calls(&self, tuning: &FleetTuning, now: u64) -> bool {
        self.is_quiet(tuning, now) && self.held() > 0
    }

    /// Redis reserved `granted` calls, usable now (`wait_nanos` 0) or from `wait_nanos` on (a
    /// lease reserved ahead); with nothing granted, ask again after `wait_nanos`.
    pub fn granted(&self, tuning: &FleetTuning, now: u64, granted: u32, wait_nanos: u64) {
        if granted > 0 && wait_nanos == 0 {
            self.granted.fetch_add(granted, Ordering::AcqRel);
        } else if granted > 0 {
            self.usable_from.store(now + wait_nanos, Ordering::Release);
            self.future.fetch_add(granted, Ordering::AcqRel);
        }
        self.not_before.store(now + wait_nanos, Ordering::Release);
        self.warm_until
            .store(now + tuning.warm_nanos, Ordering::Release);
        self.pending.store(false, Ordering::Release);
    }

    /// The request failed (or its answer was lost): its debt is owed again (charging it twice
    /// refuses a little more, never admits more); the refund is forgotten.
    pub fn failed(&self, ask: &RateAsk) {
        self.debt.fetch_add(ask.debt, Ordering::AcqRel);
        self.pending.store(false, Ordering::Release);
    }

    /// A request queued but never sent (the store is degraded): it may queue again.
    pub fn release(&self) {
        self.pending.store(false, Ordering::Release);
    }

    /// Whether a call was refused since the last answer (and clears it).
    pub fn take_demand(&self) -> bool {
        self.demand.swap(false, Ordering::AcqRel)
    }

    pub fn not_before(&self) -> u64 {
        self.not_before.load(Ordering::Acquire)
    }

    /// Marks a request as queued; false if one already is.
    pub fn claim(&self) -> bool {
        !self.pending.swap(true, Ordering::AcqRel)
    }

    /// No call for 10 s and nothing leased or asked: the entry may be forgotten.
    pub fn is_idle(&self, now: u64) -> bool {
        // Debt left on a key quiet for 10 s no longer matters: its bucket has rested since.
        self.touched.load(Ordering::Acquire) + 10 * NANOS_PER_SECOND <= now
            && self.held() == 0
            && !self.pending.load(Ordering::Acquire)
    }
}

/// One (account, concurrency group) on this replica.
#[derive(Debug, Default)]
pub struct SliceState {
    slots: Arc<Slots>,
    /// The slice Redis last granted.
    slice: AtomicU32,
    /// This member has an entry in the key's hash (its slice, not a static share, applies).
    registered: AtomicBool,
    /// The limit of the last call.
    limit: AtomicU32,
    /// Most calls in flight since the last report, and calls refused since.
    peak: AtomicU32,
    refused: AtomicU32,
    pending: AtomicBool,
    touched: AtomicU64,
}

/// What the fleet task sends for one concurrency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SliceAsk {
    pub limit: u32,
    pub in_use: u32,
    pub demand: u32,
    /// The cap this member applies until the answer arrives: its slice; unregistered, its
    /// static share if settled (an entry with a request queued admits nothing more from it).
    pub held: u32,
}

impl SliceState {
    pub fn in_flight(&self) -> u32 {
        self.slots.in_flight()
    }

    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }

    pub fn slice(&self) -> u32 {
        self.slice.load(Ordering::Acquire)
    }

    /// Marks a request as queued; false if one already is.
    pub fn claim(&self) -> bool {
        !self.pending.swap(true, Ordering::AcqRel)
    }

    /// The report to send now: what is in flight, the slots this member would use (what it
    /// used at its peak, plus what it refused, plus one so the next call need not wait), and
    /// the cap it applies until the answer comes.
    pub fn ask(&self, shared: &FleetShared) -> SliceAsk {
        let limit = self.limit.load(Ordering::Acquire);
        let in_use = self.slots.in_flight();
        let peak = self.peak.swap(in_use, Ordering::AcqRel).max(in_use);
        let refused = self.refused.swap(0, Ordering::AcqRel);
        let demand = if limit == 0 {
            0
        } else {
            (peak + refused + 1).min(limit)
        };
        // Unregistered, a settled member may have admitted up to its static share (racing
        // this report): the entry must cover that much.
        let held = if self.is_registered() {
            self.slice()
        } else if shared.is_settled() {
            limit / shared.members_wide()
        } else {
            0
        };
        SliceAsk {
            limit,
            in_use,
            demand,
            held,
        }
    }

    /// After a degraded spell this member's entry may have lapsed (others then keep only a
    /// static share for it): apply no more than that until the next answer.
    pub fn clamp_to_share(&self, shared: &FleetShared) {
        let share = self.limit.load(Ordering::Acquire) / shared.members_wide();
        let s = self.slice.load(Ordering::Acquire);
        self.slice.store(s.min(share), Ordering::Release);
    }

    /// Redis granted `slice` (`registered`: this member holds an entry).
    pub fn granted(&self, slice: u32, registered: bool) {
        self.slice.store(slice, Ordering::Release);
        self.registered.store(registered, Ordering::Release);
        self.pending.store(false, Ordering::Release);
    }

    /// The report failed or its answer was lost: Redis may hold a smaller slice than before,
    /// but never less than what was in flight when it was sent, so stop there.
    pub fn failed(&self, ask: &SliceAsk) {
        if self.registered.load(Ordering::Acquire) {
            let s = self.slice.load(Ordering::Acquire);
            self.slice.store(s.min(ask.in_use), Ordering::Release);
        }
        self.pending.store(false, Ordering::Release);
    }

    /// A report queued but never sent: it may queue again.
    pub fn release(&self) {
        self.pending.store(false, Ordering::Release);
    }

    /// Nothing in flight and no call for `idle`: the entry may leave Redis and memory.
    pub fn is_idle(&self, now: u64, idle_nanos: u64) -> bool {
        self.slots.in_flight() == 0
            && self.touched.load(Ordering::Acquire) + idle_nanos <= now
            && !self.pending.load(Ordering::Acquire)
    }
}

/// The fleet store: admission's side. See the module docs.
pub struct FleetStore {
    rates: DashMap<QuotaKey, Arc<RateLease>, FxBuildHasher>,
    slices: DashMap<QuotaKey, Arc<SliceState>, FxBuildHasher>,
    shared: Arc<FleetShared>,
}

impl FleetStore {
    pub fn new(shared: Arc<FleetShared>) -> FleetStore {
        FleetStore {
            rates: DashMap::default(),
            slices: DashMap::default(),
            shared,
        }
    }

    pub fn shared(&self) -> &Arc<FleetShared> {
        &self.shared
    }

    /// The entry of a concurrency key, made if absent (for the fleet task: a key other
    /// members contend for, which this member registers for at zero).
    pub fn slice_entry(&self, key: QuotaKey) -> Arc<SliceState> {
        Arc::clone(&self.slices.entry(key).or_default())
    }

    /// Every concurrency entry (for the fleet task's periodic reports).
    pub fn slice_entries(&self, into: &mut Vec<(QuotaKey, Arc<SliceState>)>) {
        into.extend(
            self.slices
                .iter()
                .map(|e| (*e.key(), Arc::clone(e.value()))),
        );
    }

    /// Forgets a concurrency entry that left Redis (only if it is still idle and unshared).
    pub fn forget_slice(&self, key: QuotaKey) {
        self.slices.remove_if(&key, |_, s| {
            Arc::strong_count(s) <= 2 && s.in_flight() == 0 && !s.is_registered()
        });
    }

    fn rate_entry(&self, key: QuotaKey) -> Arc<RateLease> {
        if let Some(e) = self.rates.get(&key) {
            return Arc::clone(&e);
        }
        Arc::clone(&self.rates.entry(key).or_default())
    }

    /// The static share of `rate` for this member: one call per N intervals, burst ÷ N.
    fn share_check(&self, lease: &RateLease, rate: Rate, now: u64) -> Verdict {
        let n = u64::from(self.shared.members());
        let interval = rate.emission_interval_nanos().saturating_mul(n);
        let burst = (rate.burst / n as u32).max(1);
        gcra::check_interval(&lease.share_tat, now, interval, burst)
    }

    fn want_rate(&self, key: QuotaKey, lease: &Arc<RateLease>) {
        if lease.claim() {
            self.shared.want(Wanted::Rate(key, Arc::clone(lease)));
        }
    }

    fn want_slice(&self, key: QuotaKey, state: &Arc<SliceState>) {
        if state.claim() {
            self.shared.want(Wanted::Slice(key, Arc::clone(state)));
        }
    }
}

impl QuotaStore for FleetStore {
    fn check_rate(&self, key: QuotaKey, rate: Rate, now: u64) -> Verdict {
        if rate.per_second == 0 {
            return Verdict::Limited {
                retry_after_nanos: NANOS_PER_SECOND,
            };
        }
        let lease = self.rate_entry(key);
        lease.rate.store(pack(rate), Ordering::Release);
        lease.touched.store(now, Ordering::Release);
        if !self.shared.is_healthy() {
            return match self.shared.tuning.failure_mode(key.group) {
                FailureMode::Static => {
                    let verdict = self.share_check(&lease, rate, now);
                    if let Verdict::Admitted { .. } = verdict {
                        lease.debt.fetch_add(1, Ordering::AcqRel);
                    }
                    verdict
                }
                FailureMode::Open => Verdict::Admitted {
                    remaining: rate.burst,
                },
                FailureMode::Closed => Verdict::Limited {
                    retry_after_nanos: NANOS_PER_SECOND,
                },
            };
        }
        if let Some(remaining) = lease.take(now) {
            // Refill at half, so a hot key almost never finds its lease empty; unless Redis
            // said no lease fits yet (a key at its limit would otherwise ask per few calls).
            if remaining <= self.shared.tuning.lease_size(rate) / 2 && lease.not_before() <= now {
                self.want_rate(key, &lease);
            }
            return Verdict::Admitted { remaining };
        }
        if lease.warm_until.load(Ordering::Acquire) > now {
            // The fleet's bucket answered lately and this lease is spent: over the limit
            // fleet-wide (or a refill is on its way). Ask, unless Redis said when to.
            lease.demand.store(true, Ordering::Release);
            let not_before = lease.not_before();
            if not_before <= now {
                self.want_rate(key, &lease);
            }
            return Verdict::Limited {
                retry_after_nanos: not_before
                    .saturating_sub(now)
                    .max(rate.emission_interval_nanos()),
            };
        }
        // A cold key: admit from the static share, and charge it with the first lease.
        let verdict = self.share_check(&lease, rate, now);
        if let Verdict::Admitted { .. } = verdict {
            lease.debt.fetch_add(1, Ordering::AcqRel);
        }
        self.want_rate(key, &lease);
        verdict
    }

    fn acquire(&self, key: QuotaKey, limit: u32, now: u64) -> Option<Permit> {
        if limit == 0 {
            return None;
        }
        let state = match self.slices.get(&key) {
            Some(s) => Arc::clone(&s),
            None => self.slice_entry(key),
        };
        state.limit.store(limit, Ordering::Release);
        state.touched.store(now, Ordering::Release);
        let healthy = self.shared.is_healthy();
        let static_share = limit / self.shared.members_wide();
        let cap = if healthy {
            if state.is_registered() {
                state.slice().min(limit)
            } else if self.shared.is_settled() && !state.pending.load(Ordering::Acquire) {
                // Other members keep a static share for one without an entry; once it has
                // asked for an entry, it waits for the answer.
                static_share
            } else {
                0
            }
        } else {
            match self.shared.tuning.failure_mode(key.group) {
                FailureMode::Open => u32::MAX,
                FailureMode::Closed => 0,
                // Its entry in Redis may still say less than the share for a while; keep to
                // whichever is smaller.
                FailureMode::Static if state.is_registered() => static_share.min(state.slice()),
                FailureMode::Static => static_share,
            }
        };
        match state.slots.try_acquire(cap) {
            Some(permit) => {
                let in_flight = state.slots.in_flight();
                state.peak.fetch_max(in_flight, Ordering::AcqRel);
                if healthy && (!state.is_registered() || in_flight >= cap) {
                    self.want_slice(key, &state);
                }
                Some(permit)
            }
            None => {
                state.refused.fetch_add(1, Ordering::AcqRel);
                if healthy {
                    self.want_slice(key, &state);
                }
                None
            }
        }
    }

    fn sweep(&self, now: u64) -> usize {
        self.rates.retain(|_, l| !l.is_idle(now));
        self.n_entries()
    }

    fn n_entries(&self) -> usize {
        self.rates.len() + self.slices.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn healthy_store() -> (FleetStore, Arc<FleetShared>) {
        let shared = FleetShared::new(FleetTuning {
            lease_nanos: 100 * MS,
            lease_idle_nanos: 200 * MS,
            warm_nanos: 1000 * MS,
            failure_default: FailureMode::Static,
            failure_groups: FxHashMap::default(),
        });
        shared.set_healthy();
        shared.set_members(3, 3);
        shared.set_settled(true);
        (FleetStore::new(Arc::clone(&shared)), shared)
    }

    fn key() -> QuotaKey {
        QuotaKey {
            uin: 7,
            group: GroupKey::of_group("ocr.GeneralBasicOCR"),
        }
    }

    fn queued(shared: &FleetShared) -> Vec<Wanted> {
        let mut v = Vec::new();
        shared.take_wanted(&mut v);
        v
    }

    /// A key used well below its limit keeps its lease: leased calls are counted already, so
    /// they stay good however slowly they are used (a lease that lapsed under a key still in
    /// use refused calls within its quota).
    #[test]
    fn a_slow_key_keeps_its_lease() {
        let (store, shared) = healthy_store();
        let rate = Rate::with_burst_window(2000, 1000);
        let mut now = 1000 * MS;
        let mut refused = 0;
        // 100 calls/s on 2,000 QPS for 3 s; Redis (here: in process) answers every request.
        for _ in 0..300 {
            now += 10 * MS;
            if let Verdict::Limited { .. } = store.check_rate(key(), rate, now) {
                refused += 1;
            }
            shared.grant_all_locally(&mut Vec::new(), now);
        }
        assert_eq!(refused, 0);
        // One lease (200 calls) and its refill at half carried all 300 calls.
        let lease = store.rate_entry(key());
        assert!(lease.granted.load(Ordering::Acquire) <= 300);
    }

    /// A key gone quiet gives its leased calls back (and only then).
    #[test]
    fn a_quiet_key_gives_its_lease_back() {
        let (store, shared) = healthy_store();
        let rate = Rate::with_burst_window(2000, 1000);
        let now = 1000 * MS;
        assert!(matches!(
            store.check_rate(key(), rate, now),
            Verdict::Admitted { .. }
        ));
        shared.grant_all_locally(&mut Vec::new(), now);
        let lease = store.rate_entry(key());
        assert!(!lease.quiet_with_calls(&shared.tuning, now + 100 * MS));
        assert!(lease.quiet_with_calls(&shared.tuning, now + 200 * MS));
        let ask = lease.ask(&shared.tuning, 3, now + 200 * MS);
        assert_eq!(ask.refund, 200);
        assert_eq!(lease.granted.load(Ordering::Acquire), 0);
    }

    /// At its limit, a key asks once per lease: Redis reserves a whole lease ahead, usable
    /// when its last call fits; until then nothing is asked, calls are refused, and from then
    /// on the lease is used.
    #[test]
    fn a_key_at_its_limit_asks_once_per_lease() {
        let (store, shared) = healthy_store();
        let rate = Rate::with_burst_window(2000, 1000);
        let now = 1000 * MS;
        let _ = store.check_rate(key(), rate, now);
        for w in queued(&shared) {
            let Wanted::Rate(_, l) = w else { panic!() };
            let ask = l.ask(&shared.tuning, 3, now);
            assert_eq!(ask.want, 200);
            // The bucket is full: a lease of 200 reserved, usable 95 ms from now.
            l.granted(&shared.tuning, now, 200, 95 * MS);
        }
        for i in 1..50 {
            assert!(matches!(
                store.check_rate(key(), rate, now + i * MS),
                Verdict::Limited { .. }
            ));
        }
        assert!(
            queued(&shared).is_empty(),
            "asked before its lease was usable"
        );
        let mut admitted = 0;
        for i in 0..150 {
            if let Verdict::Admitted { .. } = store.check_rate(key(), rate, now + 95 * MS + i) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 150);
        // At half, one refill is asked for (one command per lease).
        assert_eq!(queued(&shared).len(), 1);
    }

    /// Calls admitted from the static share while degraded are charged on recovery, up to
    /// this replica's share of one burst.
    #[test]
    fn degraded_admissions_are_charged_up_to_a_burst() {
        let (store, shared) = healthy_store();
        let rate = Rate::with_burst_window(20, 1000);
        shared.set_degraded(0);
        let mut now = 1000 * MS;
        let mut admitted = 0u32;
        for _ in 0..400 {
            now += 5 * MS; // 200 calls/s for 2 s
            if let Verdict::Admitted { .. } = store.check_rate(key(), rate, now) {
                admitted += 1;
            }
        }
        // limit ÷ 3 for 2 s, plus the share's burst.
        assert!((12..=6 + 14).contains(&admitted), "{admitted}");
        shared.set_healthy();
        let ask = store.rate_entry(key()).ask(&shared.tuning, 3, now);
        assert_eq!(ask.debt, admitted.min(20 / 3));
    }
}
