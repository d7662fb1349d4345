//! What each account may do: its owner's state (activated services, arrears, postpaid, packs
//! exhausted) and, per interface group, its billing mode and overlay packs.
//!
//! Built by `config::entitlements` from `config/entitlements.toml`. The request path asks two
//! questions of it: may this account call this service at all ([`OwnerState`]), and what is the
//! limit of this group right now ([`GroupEntitlement::resolve`]).

pub mod overlay;

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::catalog::{BillingItemId, GroupId, GroupKey, GroupLimit, ServiceId};

/// The resolved limit of one (account, group) at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Calls per second.
    Rate(u32),
    /// Calls in flight.
    Concurrency(u32),
}

/// A purchased billing mode that replaces call-count mode while it is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurchasedMode {
    /// QPS 计费: exactly this many calls per second.
    Qps(u32),
    /// 并发任务数计费: exactly this many calls in flight.
    Concurrency(u32),
}

/// A purchased mode valid over Unix nanoseconds `[from, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeWindow {
    pub from: i64,
    pub until: i64,
    pub mode: PurchasedMode,
}

/// Overlay QPS valid over Unix nanoseconds `[from, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverlayWindow {
    pub from: i64,
    pub until: i64,
    pub qps: u32,
}

/// One account's entitlement for one group. Empty (the common case) means call-count mode at
/// the catalog default, decided without reading the wall clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupEntitlement {
    pub modes: Vec<ModeWindow>,
    pub overlays: Vec<OverlayWindow>,
}

impl GroupEntitlement {
    /// The limit at the instant `unix_now()` returns; `unix_now` is called at most once, and
    /// only if something here is time-bounded.
    pub fn resolve(&self, default: GroupLimit, unix_now: impl FnOnce() -> i64) -> Limit {
        if self.modes.is_empty() && self.overlays.is_empty() {
            return default_limit(default);
        }
        let now = unix_now();
        let active = |from: i64, until: i64| from <= now && now < until;
        if let Some(w) = self.modes.iter().find(|w| active(w.from, w.until)) {
            return match w.mode {
                PurchasedMode::Qps(q) => Limit::Rate(q),
                PurchasedMode::Concurrency(c) => Limit::Concurrency(c),
            };
        }
        match default {
            GroupLimit::Rate { qps } => {
                let overlay: u32 = self
                    .overlays
                    .iter()
                    .filter(|o| active(o.from, o.until))
                    .map(|o| o.qps)
                    .sum();
                Limit::Rate(qps.saturating_add(overlay))
            }
            GroupLimit::Concurrency { max_in_flight } => Limit::Concurrency(max_in_flight),
        }
    }
}

/// The limit of a group for an account with no entitlement of its own.
pub fn default_limit(default: GroupLimit) -> Limit {
    match default {
        GroupLimit::Rate { qps } => Limit::Rate(qps),
        GroupLimit::Concurrency { max_in_flight } => Limit::Concurrency(max_in_flight),
    }
}

/// The state of a main (owner) account, shared by its sub-accounts: it gates calls before any
/// quota is consulted.
#[derive(Debug, Clone, Default)]
pub struct OwnerState {
    pub uin: u64,
    /// Services the owner has activated (开通), by [`ServiceId`].
    pub services: FxHashSet<ServiceId>,
    /// Suspended for arrears (欠费停服): every call refused.
    pub arrears: bool,
    /// Service stops at this instant (Unix nanoseconds): settlement left the balance negative
    /// and the 24 hours of grace end then; from then on, like `arrears`.
    pub suspended_from: Option<i64>,
    /// Postpaid enabled: calls beyond all packs are billed after the month.
    pub postpaid: bool,
    /// Billing items whose packs are used up (reported by settlement).
    pub exhausted: FxHashSet<BillingItemId>,
}

/// Why an owner's state refuses a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateRefusal {
    InArrears,
    NotActivated,
    PacksExhausted(BillingItemId),
}

impl OwnerState {
    /// Checks the owner's state at `now_unix_nanos` for a call of `service` that may bill
    /// `items`.
    pub fn gate(
        &self,
        service: ServiceId,
        mut items: impl Iterator<Item = BillingItemId>,
        now_unix_nanos: i64,
    ) -> Result<(), StateRefusal> {
        if self.arrears || self.suspended_from.is_some_and(|t| now_unix_nanos >= t) {
            return Err(StateRefusal::InArrears);
        }
        if !self.services.contains(&service) {
            return Err(StateRefusal::NotActivated);
        }
        if !self.postpaid
            && let Some(item) = items.find(|i| self.exhausted.contains(i))
        {
            return Err(StateRefusal::PacksExhausted(item));
        }
        Ok(())
    }
}

/// One account (main or sub).
#[derive(Debug, Clone)]
pub struct Account {
    pub uin: u64,
    /// The main account billed for this account's calls (itself for a main account).
    pub owner_uin: u64,
    pub name: Box<str>,
    pub owner: Arc<OwnerState>,
    pub groups: FxHashMap<GroupId, GroupEntitlement>,
    /// The overlay packs held, by interface (for cap checks of new purchases).
    pub overlay_packs: FxHashMap<crate::catalog::InterfaceId, Vec<overlay::OverlayPack>>,
}

impl Account {
    pub fn entitlement(&self, group: GroupId) -> Option<&GroupEntitlement> {
        self.groups.get(&group)
    }

    /// The limit of this account's calls of `route` at the instant `unix_now()` returns (Unix
    /// nanoseconds; called only if the account's entitlement for the group is time-bounded).
    /// Unlisted actions are at `default_qps`. The one place the limit in force is resolved:
    /// the request path, the load-test kit and the benches all ask here.
    pub fn limit(
        &self,
        route: &crate::catalog::Route<'_>,
        default_qps: u32,
        unix_now: impl FnOnce() -> i64,
    ) -> Limit {
        match route {
            crate::catalog::Route::Listed { group, .. } => match self.entitlement(group.id) {
                Some(e) => e.resolve(group.limit, unix_now),
                None => default_limit(group.limit),
            },
            crate::catalog::Route::Unlisted { .. } => Limit::Rate(default_qps),
        }
    }
}

/// Every account, by UIN.
#[derive(Debug, Clone, Default)]
pub struct Entitlements {
    pub accounts: FxHashMap<u64, Account>,
    /// Groups whose limits are tried, not enforced (`[shadow]`).
    pub shadow: Shadow,
}

/// Shadow mode: a call over a shadowed group's limit is admitted and counted as a shadow
/// refusal, so an operator can try a limit on live traffic before enforcing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shadow {
    /// Every group.
    pub all: bool,
    pub groups: FxHashSet<GroupKey>,
}

impl Shadow {
    pub fn covers(&self, group: GroupKey) -> bool {
        self.all || (!self.groups.is_empty() && self.groups.contains(&group))
    }
}

impl Entitlements {
    pub fn account(&self, uin: u64) -> Option<&Account> {
        self.accounts.get(&uin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000_000;

    #[test]
    fn overlays_add_while_active_and_modes_replace() {
        let ent = GroupEntitlement {
            modes: vec![],
            overlays: vec![
                OverlayWindow {
                    from: 0,
                    until: 4 * DAY,
                    qps: 50,
                },
                OverlayWindow {
                    from: DAY,
                    until: 7 * DAY,
                    qps: 30,
                },
            ],
        };
        let rate20 = GroupLimit::Rate { qps: 20 };
        assert_eq!(ent.resolve(rate20, || 0), Limit::Rate(70));
        assert_eq!(ent.resolve(rate20, || DAY), Limit::Rate(100));
        assert_eq!(ent.resolve(rate20, || 4 * DAY), Limit::Rate(50));
        assert_eq!(ent.resolve(rate20, || 7 * DAY), Limit::Rate(20));

        let qps_mode = GroupEntitlement {
            modes: vec![ModeWindow {
                from: 0,
                until: DAY,
                mode: PurchasedMode::Qps(30),
            }],
            overlays: vec![],
        };
        assert_eq!(qps_mode.resolve(rate20, || 5), Limit::Rate(30));
        // When the purchase lapses the group falls back to call-count mode.
        assert_eq!(qps_mode.resolve(rate20, || DAY), Limit::Rate(20));
    }

    #[test]
    fn no_entitlement_never_reads_the_clock() {
        let limit = GroupEntitlement::default()
            .resolve(GroupLimit::Concurrency { max_in_flight: 10 }, || {
                panic!("the wall clock was read")
            });
        assert_eq!(limit, Limit::Concurrency(10));
    }

    #[test]
    fn owner_state_gates_in_order() {
        let svc = ServiceId(0);
        let item = BillingItemId(3);
        let mut owner = OwnerState {
            uin: 1,
            services: [svc].into_iter().collect(),
            postpaid: true,
            ..Default::default()
        };
        assert_eq!(owner.gate(svc, [item].into_iter(), 0), Ok(()));
        assert_eq!(
            owner.gate(ServiceId(1), [item].into_iter(), 0),
            Err(StateRefusal::NotActivated)
        );
        owner.exhausted.insert(item);
        assert_eq!(owner.gate(svc, [item].into_iter(), 0), Ok(()));
        owner.postpaid = false;
        assert_eq!(
            owner.gate(svc, [item].into_iter(), 0),
            Err(StateRefusal::PacksExhausted(item))
        );
        owner.arrears = true;
        assert_eq!(
            owner.gate(svc, [item].into_iter(), 0),
            Err(StateRefusal::InArrears)
        );
        // A stop 24 hours after a negative settlement: served until then, refused from then.
        owner.arrears = false;
        owner.postpaid = true;
        owner.suspended_from = Some(1_000);
        assert_eq!(owner.gate(svc, [item].into_iter(), 999), Ok(()));
        assert_eq!(
            owner.gate(svc, [item].into_iter(), 1_000),
            Err(StateRefusal::InArrears)
        );
    }
}
