//! `pricing.toml`: raw form and validation into [`crate::prices::PriceBook`], and
//! `billing.toml` (per owner: service activations, prepaid pack purchases, contract prices) into
//! [`crate::OwnerBilling`].

use std::str::FromStr;

use chrono::{DateTime, FixedOffset};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::prices::{
    Boundary, FreePackDef, PackOffer, Price, PriceBook, PriceUnit, QuantityTable, QuantityTier,
    Tier, TierTable, Validity,
};
use crate::{OwnerBilling, PurchasedPack};
use tollgate_core::catalog::Catalog;
use tollgate_core::config::{ConfigError, Source, parse_toml};
use tollgate_core::entitlement::overlay::OverlayClass;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPricing {
    #[serde(default)]
    free_pack: Vec<RawFree>,
    #[serde(default)]
    prepaid: Vec<RawPrepaid>,
    #[serde(default)]
    postpaid: Vec<RawPostpaid>,
    #[serde(default)]
    quantity_price: Vec<RawQuantity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFree {
    id: String,
    covers: Vec<String>,
    quantity: u64,
    validity: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrepaid {
    item: String,
    packs: Vec<RawPack>,
    /// "1y" (default) or "forever".
    validity: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPack {
    size: u64,
    price: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostpaid {
    item: String,
    boundary: RawBoundary,
    unit: RawUnit,
    tiers: Vec<RawTier>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawBoundary {
    LowerClosed,
    UpperClosed,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawUnit {
    Call,
    Thousand,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    up_to: Option<u64>,
    price: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuantity {
    kind: RawQuantityKind,
    class: Option<OverlayClass>,
    group: Option<String>,
    boundary: RawBoundary,
    tiers: Vec<RawQuantityTier>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawQuantityKind {
    Overlay,
    QpsMode,
    Concurrency,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuantityTier {
    up_to: Option<u64>,
    per_day: Option<String>,
    per_month: Option<String>,
}

fn money(s: &str) -> Result<Decimal, String> {
    let d = Decimal::from_str(s).map_err(|e| format!("{s:?} is not a decimal amount ({e})"))?;
    if d.is_sign_negative() {
        return Err(format!("{s:?} is negative"));
    }
    Ok(d)
}

fn price(s: &str) -> Result<Price, String> {
    if s == "contact" {
        Ok(Price::ContactSales)
    } else {
        money(s).map(Price::List)
    }
}

fn boundary(b: RawBoundary) -> Boundary {
    match b {
        RawBoundary::LowerClosed => Boundary::LowerClosed,
        RawBoundary::UpperClosed => Boundary::UpperClosed,
    }
}

/// Checks that bounds ascend and that only the last tier is open-ended.
fn check_bounds(bounds: &[Option<u64>]) -> Result<(), String> {
    if bounds.is_empty() {
        return Err("needs at least one tier".into());
    }
    for (i, b) in bounds.iter().enumerate() {
        let last = i + 1 == bounds.len();
        match (b, last) {
            (None, false) => return Err(format!("tier {i} has no up_to but is not the last")),
            (Some(_), true) => return Err("the last tier must have no up_to".into()),
            _ => {}
        }
        if i > 0
            && let (Some(prev), Some(cur)) = (bounds[i - 1], b)
            && *cur <= prev
        {
            return Err(format!("tier {i}: up_to {cur} does not ascend"));
        }
    }
    Ok(())
}

/// Parses and validates `pricing.toml` against `catalog`.
pub fn load_prices(
    source: &Source,
    text: &str,
    catalog: &Catalog,
) -> Result<PriceBook, ConfigError> {
    let raw: RawPricing = parse_toml(source, text)?;
    let err = |key: String, reason: String| ConfigError::new(source, key, reason);
    let item = |key: String, id: &str| {
        catalog.item_by_key(id).map(|i| i.id).ok_or_else(|| {
            err(
                key,
                format!("unknown billing item {id:?} (not in catalog.toml)"),
            )
        })
    };
    let mut book = PriceBook::default();

    let mut free_ids = std::collections::HashSet::new();
    for (i, f) in raw.free_pack.iter().enumerate() {
        let key = |k: &str| format!("free_pack[{i}] ({}).{k}", f.id);
        if !free_ids.insert(f.id.clone()) {
            return Err(err(key("id"), "duplicate free pack".into()));
        }
        if f.covers.is_empty() || f.quantity == 0 {
            return Err(err(
                key("covers"),
                "a free pack covers at least one item with a positive quantity".into(),
            ));
        }
        let validity = match f.validity.as_str() {
            "month" => Validity::Month,
            "forever" => Validity::Forever,
            y => match y.strip_suffix('y').and_then(|n| n.parse::<u32>().ok()) {
                Some(n) if n > 0 => Validity::Years(n),
                _ => {
                    return Err(err(
                        key("validity"),
                        format!("{y:?} is not \"month\", \"<n>y\" or \"forever\""),
                    ));
                }
            },
        };
        let covers: Vec<_> = f
            .covers
            .iter()
            .enumerate()
            .map(|(j, c)| item(key(&format!("covers[{j}]")), c))
            .collect::<Result<_, _>>()?;
        let services: std::collections::HashSet<_> = covers
            .iter()
            .map(|c: &tollgate_core::catalog::BillingItemId| catalog.item(*c).service)
            .collect();
        if services.len() != 1 {
            return Err(err(
                key("covers"),
                "a free pack covers items of one service".into(),
            ));
        }
        book.free_packs.push(FreePackDef {
            id: f.id.clone(),
            covers,
            quantity: f.quantity,
            validity,
        });
    }

    for (i, p) in raw.prepaid.iter().enumerate() {
        let key = |k: &str| format!("prepaid[{i}] ({}).{k}", p.item);
        let id = item(key("item"), &p.item)?;
        let mut offers = Vec::new();
        for (j, pack) in p.packs.iter().enumerate() {
            let price =
                price(&pack.price).map_err(|e| err(key(&format!("packs[{j}].price")), e))?;
            if pack.size == 0 || offers.iter().any(|o: &PackOffer| o.size >= pack.size) {
                return Err(err(
                    key(&format!("packs[{j}].size")),
                    "sizes must be positive and ascend".into(),
                ));
            }
            offers.push(PackOffer {
                size: pack.size,
                price,
            });
        }
        let validity = match p.validity.as_deref() {
            None | Some("1y") => Validity::Years(1),
            Some("forever") => Validity::Forever,
            Some(v) => {
                return Err(err(
                    key("validity"),
                    format!("{v:?} is not \"1y\" or \"forever\""),
                ));
            }
        };
        book.prepaid_validity.insert(id, validity);
        if book.prepaid.insert(id, offers).is_some() {
            return Err(err(key("item"), "prepaid packs listed twice".into()));
        }
    }

    for (i, p) in raw.postpaid.iter().enumerate() {
        let key = |k: &str| format!("postpaid[{i}] ({}).{k}", p.item);
        let id = item(key("item"), &p.item)?;
        let bounds: Vec<Option<u64>> = p.tiers.iter().map(|t| t.up_to).collect();
        check_bounds(&bounds).map_err(|e| err(key("tiers"), e))?;
        let tiers = p
            .tiers
            .iter()
            .enumerate()
            .map(|(j, t)| {
                Ok(Tier {
                    up_to: t.up_to,
                    price: price(&t.price)
                        .map_err(|e| err(key(&format!("tiers[{j}].price")), e))?,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        let table = TierTable {
            boundary: boundary(p.boundary),
            unit: match p.unit {
                RawUnit::Call => PriceUnit::Call,
                RawUnit::Thousand => PriceUnit::Thousand,
            },
            tiers,
        };
        if book.postpaid.insert(id, table).is_some() {
            return Err(err(key("item"), "postpaid table listed twice".into()));
        }
    }

    for (i, q) in raw.quantity_price.iter().enumerate() {
        let key = |k: &str| format!("quantity_price[{i}].{k}");
        let bounds: Vec<Option<u64>> = q.tiers.iter().map(|t| t.up_to).collect();
        check_bounds(&bounds).map_err(|e| err(key("tiers"), e))?;
        let mut tiers = Vec::new();
        for (j, t) in q.tiers.iter().enumerate() {
            let m = |s: &Option<String>, k: &str| {
                s.as_deref()
                    .map(money)
                    .transpose()
                    .map_err(|e| err(key(&format!("tiers[{j}].{k}")), e))
            };
            let tier = QuantityTier {
                up_to: t.up_to,
                per_day: m(&t.per_day, "per_day")?,
                per_month: m(&t.per_month, "per_month")?,
            };
            if tier.per_day.is_none() && tier.per_month.is_none() {
                return Err(err(
                    key(&format!("tiers[{j}]")),
                    "needs per_day or per_month".into(),
                ));
            }
            tiers.push(tier);
        }
        let table = QuantityTable {
            boundary: boundary(q.boundary),
            tiers,
        };
        match (q.kind, q.class, &q.group) {
            (RawQuantityKind::Overlay, Some(class), None) => {
                if book.overlay.insert(class, table).is_some() {
                    return Err(err(key("class"), "class listed twice".into()));
                }
            }
            (RawQuantityKind::QpsMode | RawQuantityKind::Concurrency, None, Some(g)) => {
                let group = catalog
                    .group_by_name(g)
                    .ok_or_else(|| err(key("group"), format!("unknown group {g:?}")))?;
                let (allowed, map) = match q.kind {
                    RawQuantityKind::QpsMode => (group.modes.qps, &mut book.qps_mode),
                    _ => (group.modes.concurrency, &mut book.concurrency),
                };
                if !allowed {
                    return Err(err(
                        key("group"),
                        format!("{g} does not allow this billing mode in catalog.toml"),
                    ));
                }
                if map.insert(group.id, table).is_some() {
                    return Err(err(key("group"), "group listed twice".into()));
                }
            }
            _ => {
                return Err(err(
                    key("kind"),
                    "overlay prices name a class; qps_mode and concurrency prices name a group"
                        .into(),
                ));
            }
        }
    }
    for class in [OverlayClass::A, OverlayClass::B, OverlayClass::C] {
        if !book.overlay.contains_key(&class) {
            return Err(err(
                "quantity_price".into(),
                format!("no overlay prices for class {}", class.as_str()),
            ));
        }
    }
    Ok(book)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBilling {
    #[serde(default)]
    owner: Vec<RawOwner>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    uin: u64,
    #[serde(default)]
    activation: Vec<RawActivation>,
    #[serde(default)]
    pack: Vec<RawPurchase>,
    #[serde(default)]
    contract_price: Vec<RawContract>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActivation {
    service: String,
    at: toml::value::Datetime,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurchase {
    id: String,
    item: String,
    size: u64,
    purchased_at: toml::value::Datetime,
    /// What was paid, when it differs from the list price (a discount, an example's figure).
    price: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContract {
    item: String,
    /// In the item's postpaid unit (per call, or per thousand calls).
    price: String,
}

fn instant(v: &toml::value::Datetime) -> Result<DateTime<FixedOffset>, String> {
    if v.offset.is_none() || v.time.is_none() {
        return Err(format!(
            "{v} must be a date-time with an offset, like 2026-03-01T10:00:00+08:00"
        ));
    }
    DateTime::parse_from_rfc3339(&v.to_string()).map_err(|e| format!("{v}: {e}"))
}

/// Parses `billing.toml`: per owner, service activations, pack purchases and contract prices.
pub fn load_billing(
    source: &Source,
    text: &str,
    catalog: &Catalog,
    book: &PriceBook,
) -> Result<FxHashMap<u64, OwnerBilling>, ConfigError> {
    let raw: RawBilling = parse_toml(source, text)?;
    let err = |key: String, reason: String| ConfigError::new(source, key, reason);
    let mut owners = FxHashMap::default();
    for (i, o) in raw.owner.iter().enumerate() {
        let key = |k: &str| format!("owner[{i}] (uin {}).{k}", o.uin);
        let mut b = OwnerBilling {
            uin: o.uin,
            ..Default::default()
        };
        for (j, a) in o.activation.iter().enumerate() {
            let svc = catalog.service_by_name(&a.service).ok_or_else(|| {
                err(
                    key(&format!("activation[{j}].service")),
                    format!("unknown service {:?}", a.service),
                )
            })?;
            let at = instant(&a.at).map_err(|e| err(key(&format!("activation[{j}].at")), e))?;
            b.activations.insert(svc.id, at);
        }
        for (j, p) in o.pack.iter().enumerate() {
            let pkey = |k: &str| key(&format!("pack[{j}].{k}"));
            let item = catalog
                .item_by_key(&p.item)
                .ok_or_else(|| err(pkey("item"), format!("unknown billing item {:?}", p.item)))?;
            let offer = book
                .prepaid
                .get(&item.id)
                .and_then(|offers| offers.iter().find(|o| o.size == p.size))
                .ok_or_else(|| {
                    err(
                        pkey("size"),
                        format!("{} has no prepaid pack of {} on sale", p.item, p.size),
                    )
                })?;
            let paid = match (&p.price, offer.price) {
                (Some(s), _) => money(s).map_err(|e| err(pkey("price"), e))?,
                (None, Price::List(d)) => d,
                (None, Price::ContactSales) => {
                    return Err(err(
                        pkey("price"),
                        "this pack has no list price (联系商务): write what was paid".into(),
                    ));
                }
            };
            if b.packs.iter().any(|q: &PurchasedPack| q.id == p.id) {
                return Err(err(pkey("id"), "duplicate pack id".into()));
            }
            b.packs.push(PurchasedPack {
                id: p.id.clone(),
                item: item.id,
                size: p.size,
                purchased_at: instant(&p.purchased_at).map_err(|e| err(pkey("purchased_at"), e))?,
                price_paid: paid,
            });
        }
        for (j, c) in o.contract_price.iter().enumerate() {
            let item = catalog.item_by_key(&c.item).ok_or_else(|| {
                err(
                    key(&format!("contract_price[{j}].item")),
                    format!("unknown billing item {:?}", c.item),
                )
            })?;
            let price =
                money(&c.price).map_err(|e| err(key(&format!("contract_price[{j}].price")), e))?;
            b.contract_prices.insert(item.id, price);
        }
        if owners.insert(o.uin, b).is_some() {
            return Err(err(key("uin"), "duplicate owner".into()));
        }
    }
    Ok(owners)
}
