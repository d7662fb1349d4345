//! The interface catalog as the request path sees it: validated, indexed, immutable.
//!
//! `config::catalog` builds it from `config/catalog.toml`; nothing else constructs one. Every
//! `(service, action)` classifies to an interface group (whose quota key it uses), a billing
//! rule and, for OCR, an overlay class. Actions are matched exactly, as the vendor does: a
//! case variant of a listed action (`generalbasicocr`) is refused, not given a quota of its
//! own. Well-formed actions the catalog does not list classify as [`Route::Unlisted`]: one
//! group per service at the default QPS (however many names a client makes up, an account
//! holds one such quota per service), metered against the service's `<service>.unlisted`
//! billing item.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::entitlement::overlay::OverlayClass;

/// Index of a service in [`Catalog::services`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u16);

/// Index of a group in [`Catalog::groups`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub u32);

/// Index of a billing item in [`Catalog::billing_items`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BillingItemId(pub u32);

/// Index of an interface in [`Catalog::interfaces`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceId(pub u32);

/// The quota-state key of a group, stable across catalog reloads: it is derived from the
/// group's id string, not from its position, so a reload that adds or reorders groups keeps
/// every bucket attached to the group it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey(pub u64);

impl GroupKey {
    /// The key of a catalog group.
    pub fn of_group(id: &str) -> GroupKey {
        GroupKey(fnv1a(id.as_bytes()) & !UNLISTED_BIT)
    }

    /// The key of the group that a service's unlisted actions share. The top bit keeps it
    /// apart from every catalog group.
    pub fn of_unlisted(service: &str) -> GroupKey {
        GroupKey(fnv1a_continue(fnv1a(service.as_bytes()), b".unlisted") | UNLISTED_BIT)
    }
}

const UNLISTED_BIT: u64 = 1 << 63;

/// 64-bit FNV-1a: tiny, deterministic across builds and platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_continue(0xcbf2_9ce4_8422_2325, bytes)
}

fn fnv1a_continue(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A group's limit in call-count mode (the mode every account starts in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupLimit {
    /// At most `qps` calls per second.
    Rate { qps: u32 },
    /// At most `max_in_flight` calls in flight at once.
    Concurrency { max_in_flight: u32 },
}

/// Billing modes an account may put a group in besides call-count mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modes {
    /// QPS 计费: the limit is exactly the purchased QPS; calls are not billed per count.
    pub qps: bool,
    /// 并发任务数计费: the limit is exactly the purchased concurrency; not billed per count.
    pub concurrency: bool,
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: GroupId,
    /// The catalog id, e.g. `bda.segment` or `ocr.GeneralBasicOCR`; also the metrics label
    /// (shared: a limit refusal names it without copying it).
    pub name: Arc<str>,
    pub title: Box<str>,
    pub key: GroupKey,
    pub service: ServiceId,
    pub limit: GroupLimit,
    pub modes: Modes,
    pub max_purchased_qps: Option<u32>,
    /// The interfaces in this group.
    pub interfaces: Vec<InterfaceId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// 专用资源包: only its own interface draws on it.
    Dedicated,
    /// 共享资源包: several interfaces draw on it.
    Shared,
}

#[derive(Debug, Clone)]
pub struct BillingItem {
    pub id: BillingItemId,
    /// e.g. `ocr.general_basic`; stable across reloads and used in usage records.
    pub key: Arc<str>,
    pub name: Box<str>,
    pub kind: ItemKind,
    pub service: ServiceId,
    /// True for the implicit `<service>.unlisted` item.
    pub unlisted: bool,
}

/// How the billable units of a call are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitRule {
    /// One unit per billable call, against this item.
    PerCall(BillingItemId),
    /// One unit per recognised invoice, against the big- or small-ticket item by its type.
    MixedInvoice,
    /// Never billed: free beta, management calls, job queries.
    None,
}

#[derive(Debug, Clone)]
pub struct Interface {
    pub id: InterfaceId,
    pub service: ServiceId,
    pub action: Arc<str>,
    pub name: Box<str>,
    pub group: GroupId,
    pub units: UnitRule,
    pub overlay_class: Option<OverlayClass>,
    /// What the interface does to, or how it is billed by, an image-search library.
    pub library: Option<LibraryRole>,
}

/// The 图像搜索 libraries (`GroupId`, typed by `GroupType` at `CreateGroup`): which
/// interfaces create, delete and describe them, and which are billed by their type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibraryRole {
    /// Creates a library from the `GroupId` and `GroupType` of its request body.
    Create,
    /// Deletes the library its `GroupId` names.
    Delete,
    /// Describes libraries (`GroupId` → `Groups[].GroupType`): how the gateway asks the
    /// backend about a library it has not seen created.
    Describe,
    /// Billed against the interface's item for a library of types 1–5 (and 7, 8: product
    /// search), against `similar` for type 6 (similar image search).
    Billed { similar: BillingItemId },
}

/// The `GroupType` of similar image search (相似图像搜索), priced apart from the others.
pub const SIMILAR_GROUP_TYPE: i64 = 6;

/// Vendor codes the gateway answers with when an account's state refuses a call.
#[derive(Debug, Clone)]
pub struct RefusalCodes {
    pub not_activated: Arc<str>,
    pub in_arrears: Arc<str>,
    pub packs_exhausted: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub id: ServiceId,
    pub name: Arc<str>,
    pub product: Box<str>,
    pub versions: Vec<Box<str>>,
    pub billable_error_codes: FxHashSet<Box<str>>,
    pub refusal_codes: RefusalCodes,
    pub actions: FxHashMap<Box<str>, InterfaceId>,
    /// The same actions, ASCII-lower-cased: tells a case variant from an unlisted action.
    pub actions_folded: FxHashMap<Box<str>, InterfaceId>,
    pub unlisted_item: BillingItemId,
    /// The quota key of the group every unlisted action of this service shares.
    pub unlisted_key: GroupKey,
    /// Metrics label for the groups of unlisted actions: `<service>.unlisted`.
    pub unlisted_label: Arc<str>,
    /// The action that describes this service's image-search libraries, if it has any.
    pub describe_library: Option<Arc<str>>,
}

/// The 混贴票据 rule: recognised invoices of `big_types` count against `big`, others `small`.
#[derive(Debug, Clone)]
pub struct MixedInvoiceRule {
    pub big: BillingItemId,
    pub small: BillingItemId,
    pub big_types: Vec<i64>,
}

impl MixedInvoiceRule {
    pub fn item_for_type(&self, invoice_type: i64) -> BillingItemId {
        if self.big_types.contains(&invoice_type) {
            self.big
        } else {
            self.small
        }
    }
}

/// The validated catalog.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub default_qps: u32,
    pub services: Vec<Service>,
    pub groups: Vec<Group>,
    pub billing_items: Vec<BillingItem>,
    pub interfaces: Vec<Interface>,
    pub mixed_invoice: MixedInvoiceRule,
    pub(crate) service_by_name: FxHashMap<Box<str>, ServiceId>,
    pub(crate) item_by_key: FxHashMap<Box<str>, BillingItemId>,
    pub(crate) group_by_name: FxHashMap<Box<str>, GroupId>,
}

/// The longest action name the gateway accepts (the vendor's are under 40 characters).
pub const MAX_ACTION_LEN: usize = 64;

/// An API 3.0 action name: an ASCII letter, then letters and digits, at most
/// [`MAX_ACTION_LEN`] in all.
pub fn is_action_name(action: &str) -> bool {
    let b = action.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ACTION_LEN
        && b[0].is_ascii_alphabetic()
        && b.iter().all(u8::is_ascii_alphanumeric)
}

/// Why an action does not classify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Not an action name at all (empty, too long, or not letters and digits).
    Malformed,
    /// A case variant of this listed action: refused, as the vendor refuses it.
    CaseVariant(Arc<str>),
}

/// What a call is, as far as quotas and billing are concerned.
#[derive(Debug, Clone, Copy)]
pub enum Route<'c> {
    Listed {
        interface: &'c Interface,
        group: &'c Group,
    },
    Unlisted {
        service: &'c Service,
        key: GroupKey,
    },
}

impl<'c> Route<'c> {
    pub fn group_key(&self) -> GroupKey {
        match self {
            Route::Listed { group, .. } => group.key,
            Route::Unlisted { key, .. } => *key,
        }
    }
}

impl Catalog {
    /// The catalog compiled into the binary (`config/catalog.toml`); a test checks it loads.
    pub fn embedded() -> Catalog {
        let source = crate::config::Source::Embedded {
            name: "catalog.toml",
            text: crate::config::EMBEDDED_CATALOG,
        };
        crate::config::catalog::load(&source, crate::config::EMBEDDED_CATALOG)
            .expect("the embedded catalog is valid")
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Service> {
        self.service_by_name
            .get(name)
            .map(|id| &self.services[usize::from(id.0)])
    }

    pub fn service(&self, id: ServiceId) -> &Service {
        &self.services[usize::from(id.0)]
    }

    pub fn group(&self, id: GroupId) -> &Group {
        &self.groups[id.0 as usize]
    }

    pub fn group_by_name(&self, name: &str) -> Option<&Group> {
        self.group_by_name.get(name).map(|id| self.group(*id))
    }

    pub fn item(&self, id: BillingItemId) -> &BillingItem {
        &self.billing_items[id.0 as usize]
    }

    pub fn item_by_key(&self, key: &str) -> Option<&BillingItem> {
        self.item_by_key.get(key).map(|id| self.item(*id))
    }

    pub fn interface(&self, id: InterfaceId) -> &Interface {
        &self.interfaces[id.0 as usize]
    }

    /// The interface `service.action`, e.g. `ocr.GeneralBasicOCR`.
    pub fn interface_by_name(&self, qualified: &str) -> Option<&Interface> {
        let (service, action) = qualified.split_once('.')?;
        let service = self.service_by_name(service)?;
        service.actions.get(action).map(|id| self.interface(*id))
    }

    /// Classifies a call of `action` on `service`: a listed interface, matched exactly, or
    /// the service's group of unlisted actions.
    pub fn route<'c>(
        &'c self,
        service: &'c Service,
        action: &str,
    ) -> Result<Route<'c>, RouteError> {
        if let Some(id) = service.actions.get(action) {
            let interface = self.interface(*id);
            return Ok(Route::Listed {
                interface,
                group: self.group(interface.group),
            });
        }
        if !is_action_name(action) {
            return Err(RouteError::Malformed);
        }
        // Lower-cased on the stack: this runs for every unlisted call.
        let mut folded = [0u8; MAX_ACTION_LEN];
        let folded = &mut folded[..action.len()];
        folded.copy_from_slice(action.as_bytes());
        folded.make_ascii_lowercase();
        let folded = std::str::from_utf8(folded).expect("ASCII stays UTF-8");
        if let Some(id) = service.actions_folded.get(folded) {
            return Err(RouteError::CaseVariant(Arc::clone(
                &self.interface(*id).action,
            )));
        }
        Ok(Route::Unlisted {
            service,
            key: service.unlisted_key,
        })
    }

    /// The billing items a call of this route may be counted against.
    /// The item a billable call through `interface` into a library of `group_type` counts
    /// against: the similar-search item for type 6, the interface's own otherwise (`None`: the
    /// interface is not billed by library).
    pub fn library_item(&self, interface: &Interface, group_type: i64) -> Option<BillingItemId> {
        match (interface.library, interface.units) {
            (Some(LibraryRole::Billed { similar }), UnitRule::PerCall(item)) => {
                Some(if group_type == SIMILAR_GROUP_TYPE {
                    similar
                } else {
                    item
                })
            }
            _ => None,
        }
    }

    /// Usage of `item` through `action` (of `item`'s service) whose library turned out to be of
    /// `group_type`: the item it is billed against (settlement's re-rating of unresolved
    /// usage). `item` itself when nothing changes.
    pub fn rebill(&self, item: BillingItemId, action: &str, group_type: i64) -> BillingItemId {
        let service = self.service(self.item(item).service);
        service
            .actions
            .get(action)
            .map(|id| self.interface(*id))
            .filter(|i| i.units == UnitRule::PerCall(item))
            .and_then(|i| self.library_item(i, group_type))
            .unwrap_or(item)
    }

    pub fn items_of(&self, route: &Route<'_>) -> impl Iterator<Item = BillingItemId> {
        let (a, b) = match route {
            Route::Listed { interface, .. } => match interface.units {
                UnitRule::PerCall(item) => (Some(item), None),
                UnitRule::MixedInvoice => {
                    (Some(self.mixed_invoice.big), Some(self.mixed_invoice.small))
                }
                UnitRule::None => (None, None),
            },
            Route::Unlisted { service, .. } => (Some(service.unlisted_item), None),
        };
        a.into_iter().chain(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_are_stable_and_unlisted_keys_are_apart() {
        assert_eq!(
            GroupKey::of_group("bda.segment"),
            GroupKey::of_group("bda.segment")
        );
        assert_ne!(
            GroupKey::of_group("bda.segment"),
            GroupKey::of_group("bda.segmenu")
        );
        let unlisted = GroupKey::of_unlisted("ocr");
        assert!(unlisted.0 & UNLISTED_BIT != 0);
        assert!(GroupKey::of_group("ocr.unlisted").0 & UNLISTED_BIT == 0);
        assert_ne!(unlisted, GroupKey::of_unlisted("tiia"));
    }

    #[test]
    fn action_names_are_letters_and_digits() {
        for ok in ["GeneralBasicOCR", "A", "FuseFaceUltra", "V2Action9"] {
            assert!(is_action_name(ok), "{ok}");
        }
        let long = "A".repeat(MAX_ACTION_LEN + 1);
        for bad in [
            "",
            "9Lives",
            "General-OCR",
            "Ocr.Call",
            "Ünïcode",
            "a b",
            &long,
        ] {
            assert!(!is_action_name(bad), "{bad}");
        }
    }
}
