//! `catalog.toml`: raw form and validation into [`crate::catalog::Catalog`].

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;

use super::{ConfigError, Source, parse_toml};
use crate::catalog::{
    BillingItem, BillingItemId, Catalog, Group, GroupId, GroupKey, GroupLimit, Interface,
    InterfaceId, ItemKind, LibraryRole, MixedInvoiceRule, Modes, RefusalCodes, Service, ServiceId,
    UnitRule,
};
use crate::entitlement::overlay::OverlayClass;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    defaults: RawDefaults,
    mixed_invoice: RawMixedInvoice,
    service: Vec<RawService>,
    billing_item: Vec<RawItem>,
    #[serde(default)]
    group: Vec<RawGroup>,
    interface: Vec<RawInterface>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    qps: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMixedInvoice {
    big_item: String,
    small_item: String,
    big_types: Vec<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    product: String,
    versions: Vec<String>,
    billable_error_codes: Vec<String>,
    refusal_codes: RawRefusalCodes,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRefusalCodes {
    not_activated: String,
    in_arrears: String,
    packs_exhausted: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem {
    id: String,
    name: String,
    kind: RawKind,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawKind {
    Dedicated,
    Shared,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    id: String,
    name: String,
    qps: Option<u32>,
    concurrency: Option<u32>,
    #[serde(default)]
    modes: Vec<RawMode>,
    max_purchased_qps: Option<u32>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawMode {
    Calls,
    Qps,
    Concurrency,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInterface {
    service: String,
    action: String,
    name: String,
    billing_item: Option<String>,
    group: Option<String>,
    qps: Option<u32>,
    overlay_class: Option<OverlayClass>,
    #[serde(default)]
    units: RawUnits,
    /// Image search: the item a call into a library of `GroupType` 6 is billed against.
    similar_billing_item: Option<String>,
    /// Image search: the interface creates, deletes or describes libraries.
    library: Option<RawLibrary>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawLibrary {
    Create,
    Delete,
    Describe,
}

#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawUnits {
    #[default]
    PerCall,
    MixedInvoice,
    None,
}

/// Parses and validates `catalog.toml`.
pub fn load(source: &Source, text: &str) -> Result<Catalog, ConfigError> {
    let raw: RawCatalog = parse_toml(source, text)?;
    build(source, raw)
}

fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|p| {
            p.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && p.chars().all(|c| c.is_ascii_alphanumeric())
        })
}

/// The catalog as it is validated, piece by piece: services, billing items, declared groups,
/// interfaces (with the groups of their own), the mixed-invoice rule.
struct Build<'s> {
    src: &'s Source,
    services: Vec<Service>,
    service_by_name: FxHashMap<Box<str>, ServiceId>,
    billing_items: Vec<BillingItem>,
    item_by_key: FxHashMap<Box<str>, BillingItemId>,
    groups: Vec<Group>,
    group_by_name: FxHashMap<Box<str>, GroupId>,
    keys_seen: FxHashMap<GroupKey, String>,
    interfaces: Vec<Interface>,
}

fn build(src: &Source, raw: RawCatalog) -> Result<Catalog, ConfigError> {
    if raw.defaults.qps == 0 {
        return Err(ConfigError::new(src, "defaults.qps", "must be at least 1"));
    }
    let mut b = Build {
        src,
        services: Vec::new(),
        service_by_name: FxHashMap::default(),
        billing_items: Vec::new(),
        item_by_key: FxHashMap::default(),
        groups: Vec::new(),
        group_by_name: FxHashMap::default(),
        keys_seen: FxHashMap::default(),
        interfaces: Vec::new(),
    };
    for (i, s) in raw.service.iter().enumerate() {
        b.service(i, s)?;
    }
    for (i, it) in raw.billing_item.iter().enumerate() {
        b.billing_item(i, it)?;
    }
    for (i, g) in raw.group.iter().enumerate() {
        b.declared_group(i, g)?;
    }
    let explicit_groups = b.groups.len();
    for (i, f) in raw.interface.iter().enumerate() {
        b.interface(i, f, explicit_groups, raw.defaults.qps)?;
    }
    for (i, g) in b.groups[..explicit_groups].iter().enumerate() {
        if g.interfaces.is_empty() {
            return Err(b.err(
                format!("group[{i}] ({}).id", g.name),
                "no interface is in this group".into(),
            ));
        }
    }
    for (i, f) in raw.interface.iter().enumerate() {
        let svc = &b.services[usize::from(b.service_by_name[f.service.as_str()].0)];
        if f.similar_billing_item.is_some() && svc.describe_library.is_none() {
            return Err(b.err(
                format!("interface[{i}] ({}.{}).similar_billing_item", f.service, f.action),
                format!(
                    "service {} has no interface with library = \"describe\": the gateway could not ask a library's type",
                    f.service
                ),
            ));
        }
    }
    let mixed_invoice = b.mixed_invoice(&raw.mixed_invoice)?;
    Ok(Catalog {
        default_qps: raw.defaults.qps,
        services: b.services,
        groups: b.groups,
        billing_items: b.billing_items,
        interfaces: b.interfaces,
        mixed_invoice,
        service_by_name: b.service_by_name,
        item_by_key: b.item_by_key,
        group_by_name: b.group_by_name,
    })
}

impl Build<'_> {
    fn err(&self, key: String, reason: String) -> ConfigError {
        ConfigError::new(self.src, key, reason)
    }

    /// The service a `<service>.<name>` id names.
    fn service_of_prefix(&self, id: &str) -> Option<ServiceId> {
        let (prefix, rest) = id.split_once('.')?;
        if rest.is_empty() {
            return None;
        }
        self.service_by_name.get(prefix).copied()
    }

    fn item(&self, key: String, name: &str) -> Result<BillingItemId, ConfigError> {
        self.item_by_key
            .get(name)
            .copied()
            .ok_or_else(|| self.err(key, format!("unknown billing item {name:?}")))
    }

    /// A service, and the implicit billing item of its unlisted actions.
    fn service(&mut self, i: usize, s: &RawService) -> Result<(), ConfigError> {
        let key = |k: &str| format!("service[{i}] ({}).{k}", s.name);
        if s.name.is_empty() || !s.name.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(self.err(key("name"), "must be lower-case letters".into()));
        }
        let id = ServiceId(
            u16::try_from(i).map_err(|_| self.err(key("name"), "too many services".into()))?,
        );
        if self
            .service_by_name
            .insert(s.name.as_str().into(), id)
            .is_some()
        {
            return Err(self.err(key("name"), "duplicate service".into()));
        }
        for (j, code) in s.billable_error_codes.iter().enumerate() {
            if !is_code(code) {
                return Err(self.err(
                    key(&format!("billable_error_codes[{j}]")),
                    format!("{code:?} is not a vendor error code (Dotted.PascalCase)"),
                ));
            }
        }
        for (k, code) in [
            ("not_activated", &s.refusal_codes.not_activated),
            ("in_arrears", &s.refusal_codes.in_arrears),
            ("packs_exhausted", &s.refusal_codes.packs_exhausted),
        ] {
            if !is_code(code) {
                return Err(self.err(
                    key(&format!("refusal_codes.{k}")),
                    format!("{code:?} is not a vendor error code (Dotted.PascalCase)"),
                ));
            }
        }
        // Every service has an implicit item for the actions the catalog does not list.
        let unlisted_key = format!("{}.unlisted", s.name);
        let unlisted_item = BillingItemId(self.billing_items.len() as u32);
        self.item_by_key
            .insert(unlisted_key.as_str().into(), unlisted_item);
        self.billing_items.push(BillingItem {
            id: unlisted_item,
            key: unlisted_key.as_str().into(),
            name: format!("{} (actions not in the catalog)", s.product).into(),
            kind: ItemKind::Dedicated,
            service: id,
            unlisted: true,
        });
        self.services.push(Service {
            id,
            name: s.name.as_str().into(),
            product: s.product.as_str().into(),
            versions: s.versions.iter().map(|v| v.as_str().into()).collect(),
            billable_error_codes: s
                .billable_error_codes
                .iter()
                .map(|c| c.as_str().into())
                .collect(),
            refusal_codes: RefusalCodes {
                not_activated: s.refusal_codes.not_activated.as_str().into(),
                in_arrears: s.refusal_codes.in_arrears.as_str().into(),
                packs_exhausted: s.refusal_codes.packs_exhausted.as_str().into(),
            },
            actions: FxHashMap::default(),
            actions_folded: FxHashMap::default(),
            unlisted_item,
            unlisted_key: GroupKey::of_unlisted(&s.name),
            unlisted_label: unlisted_key.into(),
            describe_library: None,
        });
        Ok(())
    }

    fn billing_item(&mut self, i: usize, it: &RawItem) -> Result<(), ConfigError> {
        let key = |k: &str| format!("billing_item[{i}] ({}).{k}", it.id);
        let service = self.service_of_prefix(&it.id).ok_or_else(|| {
            self.err(
                key("id"),
                "must be <service>.<name> with a service of this catalog".into(),
            )
        })?;
        if it.id.ends_with(".unlisted") {
            return Err(self.err(key("id"), "the .unlisted items are implicit".into()));
        }
        let id = BillingItemId(self.billing_items.len() as u32);
        if self.item_by_key.insert(it.id.as_str().into(), id).is_some() {
            return Err(self.err(key("id"), "duplicate billing item".into()));
        }
        self.billing_items.push(BillingItem {
            id,
            key: Arc::from(it.id.as_str()),
            name: it.name.as_str().into(),
            kind: match it.kind {
                RawKind::Dedicated => ItemKind::Dedicated,
                RawKind::Shared => ItemKind::Shared,
            },
            service,
            unlisted: false,
        });
        Ok(())
    }

    fn add_group(&mut self, g: Group, key: String) -> Result<GroupId, ConfigError> {
        if let Some(other) = self.keys_seen.insert(g.key, g.name.to_string()) {
            return Err(self.err(
                key,
                format!("group key collides with group {other:?}; rename one of them"),
            ));
        }
        if self
            .group_by_name
            .insert(Box::from(&*g.name), g.id)
            .is_some()
        {
            return Err(self.err(key, format!("duplicate group {:?}", g.name)));
        }
        let id = g.id;
        self.groups.push(g);
        Ok(id)
    }

    /// A group declared in `[[group]]` (several interfaces sharing one quota).
    fn declared_group(&mut self, i: usize, g: &RawGroup) -> Result<(), ConfigError> {
        let key = |k: &str| format!("group[{i}] ({}).{k}", g.id);
        let service = self.service_of_prefix(&g.id).ok_or_else(|| {
            self.err(
                key("id"),
                "must be <service>.<name> with a service of this catalog".into(),
            )
        })?;
        let limit = match (g.qps, g.concurrency) {
            (Some(0), None) | (None, Some(0)) => {
                return Err(self.err(key("qps"), "a limit must be at least 1".into()));
            }
            (Some(qps), None) => GroupLimit::Rate { qps },
            (None, Some(n)) => GroupLimit::Concurrency { max_in_flight: n },
            _ => {
                return Err(self.err(
                    key("qps"),
                    "exactly one of qps and concurrency must be set".into(),
                ));
            }
        };
        let mut modes = Modes::default();
        for m in &g.modes {
            match m {
                RawMode::Calls => {}
                RawMode::Qps => modes.qps = true,
                RawMode::Concurrency => modes.concurrency = true,
            }
        }
        if g.max_purchased_qps.is_some() && !modes.qps {
            return Err(self.err(
                key("max_purchased_qps"),
                "only meaningful for a group with the \"qps\" mode".into(),
            ));
        }
        let gid = GroupId(self.groups.len() as u32);
        self.add_group(
            Group {
                id: gid,
                name: g.id.as_str().into(),
                title: g.name.as_str().into(),
                key: GroupKey::of_group(&g.id),
                service,
                limit,
                modes,
                max_purchased_qps: g.max_purchased_qps,
                interfaces: Vec::new(),
            },
            key("id"),
        )?;
        Ok(())
    }

    /// An interface: its billing rule, and its group (a declared one, or one of its own).
    fn interface(
        &mut self,
        i: usize,
        f: &RawInterface,
        explicit_groups: usize,
        default_qps: u32,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("interface[{i}] ({}.{}).{k}", f.service, f.action);
        let service = *self
            .service_by_name
            .get(f.service.as_str())
            .ok_or_else(|| self.err(key("service"), format!("unknown service {:?}", f.service)))?;
        if !crate::catalog::is_action_name(&f.action) {
            return Err(self.err(
                key("action"),
                format!(
                    "{:?} is not an API 3.0 action (a letter, then letters and digits, at most {} in all)",
                    f.action,
                    crate::catalog::MAX_ACTION_LEN
                ),
            ));
        }
        let units = match (f.units, &f.billing_item) {
            (RawUnits::PerCall, Some(name)) => {
                UnitRule::PerCall(self.item(key("billing_item"), name)?)
            }
            (RawUnits::PerCall, None) => {
                return Err(self.err(
                    key("billing_item"),
                    "required unless units is \"none\" or \"mixed_invoice\"".into(),
                ));
            }
            (RawUnits::MixedInvoice, None) => UnitRule::MixedInvoice,
            (RawUnits::None, None) => UnitRule::None,
            (_, Some(_)) => {
                return Err(self.err(
                    key("billing_item"),
                    "must not be set when units is \"none\" or \"mixed_invoice\"".into(),
                ));
            }
        };
        if let UnitRule::PerCall(it) = units
            && self.billing_items[it.0 as usize].service != service
        {
            return Err(self.err(key("billing_item"), "belongs to another service".into()));
        }
        let library = self.library_role(f, service, units, &key)?;
        if f.overlay_class.is_some() && f.service != "ocr" {
            return Err(self.err(
                key("overlay_class"),
                "overlay packs exist only for OCR interfaces".into(),
            ));
        }
        let iid = InterfaceId(self.interfaces.len() as u32);
        let group = match (&f.group, f.qps) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    key("qps"),
                    "an interface in a declared group takes the group's limit; remove qps".into(),
                ));
            }
            (Some(name), None) => {
                let gid = *group_by_name_lookup(&self.groups[..explicit_groups], name)
                    .ok_or_else(|| self.err(key("group"), format!("unknown group {name:?}")))?;
                if self.groups[gid.0 as usize].service != service {
                    return Err(self.err(key("group"), "belongs to another service".into()));
                }
                if f.overlay_class.is_some() {
                    return Err(self.err(
                        key("overlay_class"),
                        "overlay packs are bought per interface, so an interface with an overlay class must be a group of its own".into(),
                    ));
                }
                gid
            }
            (None, qps) => {
                let qps = qps.unwrap_or(default_qps);
                if qps == 0 {
                    return Err(self.err(key("qps"), "must be at least 1".into()));
                }
                let name = format!("{}.{}", f.service, f.action);
                let gid = GroupId(self.groups.len() as u32);
                self.add_group(
                    Group {
                        id: gid,
                        key: GroupKey::of_group(&name),
                        name: name.into(),
                        title: f.name.as_str().into(),
                        service,
                        limit: GroupLimit::Rate { qps },
                        modes: Modes::default(),
                        max_purchased_qps: None,
                        interfaces: Vec::new(),
                    },
                    key("action"),
                )?
            }
        };
        let svc = &mut self.services[usize::from(service.0)];
        if svc.actions.insert(f.action.as_str().into(), iid).is_some() {
            return Err(self.err(key("action"), "duplicate interface".into()));
        }
        // Actions are matched exactly; a case variant of a listed action is refused, so two
        // listed actions may not differ only by case.
        let svc = &mut self.services[usize::from(service.0)];
        if let Some(other) = svc
            .actions_folded
            .insert(f.action.to_ascii_lowercase().into(), iid)
        {
            return Err(self.err(
                key("action"),
                format!(
                    "differs only by letter case from interface[{}] ({}): calls could not tell them apart",
                    other.0, self.interfaces[other.0 as usize].action
                ),
            ));
        }
        self.groups[group.0 as usize].interfaces.push(iid);
        self.interfaces.push(Interface {
            id: iid,
            service,
            action: f.action.as_str().into(),
            name: f.name.as_str().into(),
            group,
            units,
            overlay_class: f.overlay_class,
            library,
        });
        Ok(())
    }

    /// The interface's part in image-search billing (`similar_billing_item`, `library`).
    fn library_role(
        &mut self,
        f: &RawInterface,
        service: ServiceId,
        units: UnitRule,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<LibraryRole>, ConfigError> {
        match (&f.similar_billing_item, f.library) {
            (Some(_), Some(_)) => Err(self.err(
                key("library"),
                "an interface billed by its library's type does not also manage libraries".into(),
            )),
            (Some(name), None) => {
                let UnitRule::PerCall(_) = units else {
                    return Err(self.err(
                        key("similar_billing_item"),
                        "needs billing_item (the item of library types 1-5)".into(),
                    ));
                };
                let similar = self.item(key("similar_billing_item"), name)?;
                if self.billing_items[similar.0 as usize].service != service {
                    return Err(self.err(
                        key("similar_billing_item"),
                        "belongs to another service".into(),
                    ));
                }
                Ok(Some(LibraryRole::Billed { similar }))
            }
            (None, Some(RawLibrary::Describe)) => {
                let svc = &mut self.services[usize::from(service.0)];
                if let Some(other) = &svc.describe_library {
                    return Err(ConfigError::new(
                        self.src,
                        key("library"),
                        format!("{other} already describes this service's libraries"),
                    ));
                }
                svc.describe_library = Some(f.action.as_str().into());
                Ok(Some(LibraryRole::Describe))
            }
            (None, Some(RawLibrary::Create)) => Ok(Some(LibraryRole::Create)),
            (None, Some(RawLibrary::Delete)) => Ok(Some(LibraryRole::Delete)),
            (None, None) => Ok(None),
        }
    }

    fn mixed_invoice(&self, mi: &RawMixedInvoice) -> Result<MixedInvoiceRule, ConfigError> {
        let rule = MixedInvoiceRule {
            big: self.item("mixed_invoice.big_item".into(), &mi.big_item)?,
            small: self.item("mixed_invoice.small_item".into(), &mi.small_item)?,
            big_types: mi.big_types.clone(),
        };
        let distinct: FxHashSet<i64> = mi.big_types.iter().copied().collect();
        if distinct.len() != mi.big_types.len() {
            return Err(self.err(
                "mixed_invoice.big_types".into(),
                "lists a type twice".into(),
            ));
        }
        Ok(rule)
    }
}

fn group_by_name_lookup<'g>(groups: &'g [Group], name: &str) -> Option<&'g GroupId> {
    groups.iter().find(|g| &*g.name == name).map(|g| &g.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Route;

    fn shipped() -> Catalog {
        Catalog::embedded()
    }

    #[test]
    fn the_shipped_catalog_loads_and_covers_the_five_products() {
        let c = shipped();
        for s in ["ocr", "facefusion", "tiia", "ft", "bda"] {
            assert!(c.service_by_name(s).is_some(), "{s}");
        }
        // Spot checks against the vendor's documents and the SDK (docs/domain.md, docs/api.md).
        let basic = c.interface_by_name("ocr.GeneralBasicOCR").unwrap();
        assert_eq!(basic.overlay_class, Some(OverlayClass::A));
        assert_eq!(c.group(basic.group).limit, GroupLimit::Rate { qps: 20 });
        let seg = c.interface_by_name("bda.SegmentPortraitPic").unwrap();
        let custom = c
            .interface_by_name("bda.SegmentCustomizedPortraitPic")
            .unwrap();
        assert_eq!(seg.group, custom.group, "one shared 20 QPS");
        assert_eq!(seg.units, custom.units, "one shared billing item");
        let ultra = c.interface_by_name("facefusion.FuseFaceUltra").unwrap();
        assert_eq!(
            c.group(ultra.group).limit,
            GroupLimit::Concurrency { max_in_flight: 10 }
        );
        assert_eq!(
            c.interface_by_name("ocr.MixedInvoiceOCR").unwrap().units,
            UnitRule::MixedInvoice
        );
        assert_eq!(
            c.interface_by_name("tiia.EnhanceImage").unwrap().units,
            UnitRule::None
        );
        let driver = c.interface_by_name("ocr.DriverLicenseOCR").unwrap().units;
        let vehicle = c.interface_by_name("ocr.VehicleLicenseOCR").unwrap().units;
        assert_eq!(driver, vehicle, "行驶证/驾驶证识别 is one shared pack");
        // Every overlay class of the OCR purchase guide (QPS 叠加包) is carried.
        for (class, actions) in [
            (
                OverlayClass::A,
                &[
                    "QrcodeOCR",
                    "GeneralBasicOCR",
                    "IDCardOCR",
                    "BankCardOCR",
                    "GeneralHandwritingOCR",
                ][..],
            ),
            (
                OverlayClass::B,
                &[
                    "GeneralAccurateOCR",
                    "GeneralEfficientOCR",
                    "GeneralFastOCR",
                    "EnglishOCR",
                    "BizLicenseOCR",
                    "DriverLicenseOCR",
                    "VehicleLicenseOCR",
                    "LicensePlateOCR",
                ][..],
            ),
            (
                OverlayClass::C,
                &[
                    "ClassifyStoreName",
                    "RecognizeStoreName",
                    "MixedInvoiceOCR",
                    "RecognizeTableAccurateOCR",
                    "VatInvoiceOCR",
                    "SmartStructuralOCR",
                    "MLIDPassportOCR",
                ][..],
            ),
        ] {
            for a in actions {
                let f = c.interface_by_name(&format!("ocr.{a}")).unwrap();
                assert_eq!(f.overlay_class, Some(class), "{a}");
            }
        }
        let ocr = c.service_by_name("ocr").unwrap();
        let unlisted = |a: &str| match c.route(ocr, a) {
            Ok(Route::Unlisted { key, .. }) => key,
            other => panic!("{a}: {other:?}"),
        };
        // Every unlisted action of a service shares one quota.
        assert_eq!(unlisted("NotARealOCR"), unlisted("AnotherMadeUpOCR"));
        assert_eq!(
            c.route(ocr, "generalbasicOCR").unwrap_err(),
            crate::catalog::RouteError::CaseVariant("GeneralBasicOCR".into())
        );
        assert_eq!(
            c.route(ocr, "General-Basic").unwrap_err(),
            crate::catalog::RouteError::Malformed
        );
        assert!(matches!(
            c.route(ocr, "GeneralBasicOCR"),
            Ok(Route::Listed { .. })
        ));
    }

    fn check_error(text: &str, want_key: &str, want_reason: &str) {
        let src = Source::File("catalog.toml".into());
        let e = load(&src, text).unwrap_err();
        assert_eq!(e.file, "catalog.toml");
        assert_eq!(e.key, want_key, "{e}");
        assert!(e.reason.contains(want_reason), "{e}");
    }

    const HEAD: &str = r#"
[defaults]
qps = 20
[mixed_invoice]
big_item = "ocr.big"
small_item = "ocr.small"
big_types = [3, 12]
[[service]]
name = "ocr"
product = "OCR"
versions = ["2018-11-19"]
billable_error_codes = []
refusal_codes = { not_activated = "FailedOperation.UnOpenError", in_arrears = "ResourceUnavailable.InArrears", packs_exhausted = "ResourceUnavailable.ResourcePackageRunOut" }
[[billing_item]]
id = "ocr.big"
name = "big"
kind = "shared"
[[billing_item]]
id = "ocr.small"
name = "small"
kind = "shared"
"#;

    #[test]
    fn errors_name_the_key_and_reason() {
        check_error(
            &format!(
                "{HEAD}[[interface]]\nservice = \"ocr\"\naction = \"ReadIt\"\nname = \"a\"\nbilling_item = \"ocr.big\"\n[[interface]]\nservice = \"ocr\"\naction = \"Readit\"\nname = \"b\"\nbilling_item = \"ocr.big\"\n"
            ),
            "interface[1] (ocr.Readit).action",
            "differs only by letter case from interface[0] (ReadIt)",
        );
        check_error(
            &format!(
                "{HEAD}[[interface]]\nservice = \"ocr\"\naction = \"Read-It\"\nname = \"a\"\nbilling_item = \"ocr.big\"\n"
            ),
            "interface[0] (ocr.Read-It).action",
            "is not an API 3.0 action",
        );
        check_error(
            &format!(
                "{HEAD}[[interface]]\nservice = \"ocr\"\naction = \"A\"\nname = \"a\"\nbilling_item = \"ocr.nope\"\n"
            ),
            "interface[0] (ocr.A).billing_item",
            "unknown billing item \"ocr.nope\"",
        );
        check_error(
            &format!(
                "{HEAD}[[interface]]\nservice = \"ocr\"\naction = \"A\"\nname = \"a\"\nbilling_item = \"ocr.big\"\nqps = \"fast\"\n"
            ),
            "interface[0].qps",
            "invalid type",
        );
        check_error(
            &format!(
                "{HEAD}[[interface]]\nservice = \"ocr\"\naction = \"A\"\nname = \"a\"\nbilling_item = \"ocr.big\"\nqpss = 3\n"
            ),
            "interface[0].qpss",
            "unknown field `qpss`",
        );
        check_error(
            &format!(
                "{HEAD}[[interface]]\nservice = \"ocr\"\naction = \"A\"\nname = \"a\"\nunits = \"per_call\"\n"
            ),
            "interface[0] (ocr.A).billing_item",
            "required",
        );
        check_error(&format!("{HEAD}[[interface]\n"), "(syntax)", "line 22");
    }
}
