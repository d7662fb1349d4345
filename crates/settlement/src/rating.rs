//! The rating engine: an owner's month, priced.
//!
//! Usage is replayed in time order from the owner's first usage up to the end of the month
//! asked for, so that one-time free packs and prepaid packs carry their balances across months.
//! Each hour's units draw, in order, on:
//! 1. free packs valid during that hour (the earliest to expire first: a monthly pack before a
//!    one-year one), then
//! 2. prepaid packs valid during that hour, earliest purchased first (expired ones skipped),
//!    then
//! 3. postpaid: the month's postpaid volume of the billing item picks ONE tier, whose price
//!    applies to every postpaid unit of the month (阶梯到达; docs/domain.md, Billing 5).
//!
//! Units are conserved: free + prepaid + postpaid = usage, for every item.
//!
//! The ledger's granularity is one hour: a pack covers an hour it is valid during any part of.
//!
//! Amounts are CNY rounded to 2 places half away from zero (四舍五入) per statement line;
//! unit prices keep their own precision.

use std::collections::BTreeMap;

use chrono::{DateTime, Days, FixedOffset, Months, TimeZone};
use rust_decimal::{Decimal, RoundingStrategy};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::prices::{Price, PriceBook, Validity};
use super::{Month, OwnerBilling, UsageCount};
use tollgate_core::catalog::{BillingItemId, Catalog, ServiceId};
use tollgate_core::clock::beijing;

const HOUR: i64 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PackKind {
    Free,
    Prepaid,
}

/// What one pack covered of one item in the month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackDraw {
    pub pack: String,
    pub kind: PackKind,
    pub units: u64,
}

/// Where a postpaid unit price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PriceSource {
    List,
    Contract,
    /// 联系商务 without a contract price: the line has no amount until one is set.
    ContractPriceRequired,
}

/// One billing item's month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemLine {
    pub item: String,
    pub name: String,
    pub usage: u64,
    /// Units by interface (action).
    pub by_interface: BTreeMap<String, u64>,
    pub covered: Vec<PackDraw>,
    pub free_units: u64,
    pub prepaid_units: u64,
    pub postpaid_units: u64,
    /// Units no pack covered while postpaid was off: served before the gateway learnt the
    /// packs were used up, and not billed.
    pub overserved_units: u64,
    /// Image search: units of this (same/product) line whose library's type is not known yet;
    /// once it is, a type-6 library's units move to the similar-search line.
    pub unresolved_units: u64,
    /// The tier the month's postpaid volume reached (0-based) and its range as written.
    pub tier: Option<usize>,
    pub tier_label: Option<String>,
    /// "per call" or "per 1000 calls".
    pub price_unit: &'static str,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub unit_price: Option<Decimal>,
    pub price_source: PriceSource,
    /// Postpaid amount, CNY, 2 places; `None` when a contract price is required.
    #[serde(with = "rust_decimal::serde::str_option")]
    pub amount: Option<Decimal>,
}

/// A prepaid pack bought in the month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PurchaseLine {
    pub pack: String,
    pub item: String,
    pub size: u64,
    pub purchased_at: DateTime<FixedOffset>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PackEventKind {
    /// Less than 20% of the pack is left.
    LowBalance,
    /// Nothing is left.
    Exhausted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackEvent {
    pub pack: String,
    pub kind: PackEventKind,
    /// The start of the hour in which it happened.
    pub at: DateTime<FixedOffset>,
    pub remaining: u64,
}

/// What a pack has left at the end of the month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackBalance {
    pub pack: String,
    pub kind: PackKind,
    pub items: Vec<String>,
    pub size: u64,
    pub remaining: u64,
    /// `None`: never expires.
    pub valid_until: Option<DateTime<FixedOffset>>,
}

/// An owner's month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonthStatement {
    pub owner_uin: u64,
    pub month: String,
    pub lines: Vec<ItemLine>,
    pub purchases: Vec<PurchaseLine>,
    #[serde(with = "rust_decimal::serde::str")]
    pub postpaid_total: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub purchases_total: Decimal,
    /// Postpaid + purchases, CNY. Excludes lines that still need a contract price.
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// Items whose postpaid tier is 联系商务 and that have no contract price.
    pub contract_price_required: Vec<String>,
    pub events: Vec<PackEvent>,
    pub balances: Vec<PackBalance>,
    /// Items with usage whose every pack is used up or expired at the end of the month: with
    /// postpaid disabled, the gateway refuses their calls (entitlements `exhausted`).
    pub exhausted_items: Vec<String>,
    /// Image-search units of the month rated as same/product search because their library's
    /// type is still unknown (the sum of the lines' `unresolved_units`).
    pub unresolved_units: u64,
}

/// Rating failed: the input contradicts the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    #[error("billing item id {0} is not in the catalog")]
    UnknownItem(u32),
}

struct PackState {
    id: String,
    kind: PackKind,
    covers: Vec<BillingItemId>,
    size: u64,
    remaining: u64,
    from: i64,
    until: i64,
    /// Draw order within its kind: expiry for free packs, purchase time for prepaid.
    order: i64,
    low_reported: bool,
}

impl PackState {
    /// A full pack valid over `[from, until)`, drawn in `order` within its kind.
    fn new(
        id: String,
        kind: PackKind,
        covers: Vec<BillingItemId>,
        size: u64,
        (from, until): (i64, i64),
        order: i64,
    ) -> PackState {
        PackState {
            id,
            kind,
            covers,
            size,
            remaining: size,
            from,
            until,
            order,
            low_reported: false,
        }
    }
}

fn at(seconds: i64) -> DateTime<FixedOffset> {
    beijing()
        .timestamp_opt(seconds, 0)
        .single()
        .expect("fixed offset")
}

fn add_years(t: DateTime<FixedOffset>, years: u32) -> i64 {
    t.checked_add_months(Months::new(12 * years))
        .map_or(i64::MAX, |d| d.timestamp())
}

/// A purchased pack lasts until 24:00 Beijing time of its purchase date, a year later (the
/// console shows a pack bought 2021-03-25 15:02 expiring 2022-03-25 23:59:59).
fn prepaid_until(purchased: DateTime<FixedOffset>, validity: Validity) -> i64 {
    match validity {
        Validity::Forever => i64::MAX,
        Validity::Month => Month::of_unix(purchased.timestamp()).end(),
        Validity::Years(n) => {
            let day = purchased.with_timezone(&beijing()).date_naive();
            day.checked_add_months(Months::new(12 * n))
                .and_then(|d| d.checked_add_days(Days::new(1)))
                .map_or(i64::MAX, |d| {
                    tollgate_core::clock::beijing_midnight_unix_nanos(d) / 1_000_000_000
                })
        }
    }
}

/// Rates `owner`'s `month`. `usage` may span any months; only those up to `month` count.
///
/// Four steps: the packs that may cover anything up to the month's end ([`packs_of`]), the
/// replay of usage hour by hour against them in drawing order ([`replay`]), the pricing of
/// each item's postpaid units ([`price_item`]), and what is left ([`balances_of`]).
pub fn rate_month(
    catalog: &Catalog,
    book: &PriceBook,
    owner: &OwnerBilling,
    usage: &[UsageCount],
    month: Month,
) -> Result<MonthStatement, RatingError> {
    let (m_start, m_end) = (month.start(), month.end());
    for u in usage {
        if catalog.billing_items.get(u.item.0 as usize).is_none() {
            return Err(RatingError::UnknownItem(u.item.0));
        }
    }
    // Image search: usage whose library the gateway could not tell is billed by the type the
    // store now knows; what it still does not know stays on the same/product item, counted.
    let rebilled: Vec<UsageCount> = usage
        .iter()
        .filter(|u| u.hour_start < m_end)
        .map(|u| match &u.unresolved_library {
            Some(library) => match owner.libraries.get(&**library) {
                Some(t) => UsageCount {
                    item: catalog.rebill(u.item, &u.interface, *t),
                    unresolved_library: None,
                    ..u.clone()
                },
                None => u.clone(),
            },
            None => u.clone(),
        })
        .collect();
    let mut unresolved: BTreeMap<BillingItemId, u64> = BTreeMap::new();
    for u in rebilled.iter().filter(|u| u.hour_start >= m_start) {
        if u.unresolved_library.is_some() {
            *unresolved.entry(u.item).or_default() += u.units;
        }
    }
    let mut usage: Vec<&UsageCount> = rebilled.iter().collect();
    // In time order; within an hour, in the order items were first used (they may share a
    // free pack: the one used first draws it first).
    usage.sort_by(|a, b| {
        (a.hour_start, a.first_at_ms, a.item, &a.interface).cmp(&(
            b.hour_start,
            b.first_at_ms,
            b.item,
            &b.interface,
        ))
    });
    let mut packs = packs_of(catalog, book, owner, &usage, month);
    let (items, events) = replay(&usage, &mut packs, month, owner);

    let mut lines = Vec::new();
    let mut contract_price_required = Vec::new();
    let mut postpaid_total = Decimal::ZERO;
    for (item, m) in &items {
        let mut line = price_item(catalog, book, owner, *item, m);
        line.unresolved_units = unresolved.get(item).copied().unwrap_or(0);
        if owner.postpaid_off && line.postpaid_units > 0 {
            line.overserved_units = line.postpaid_units;
            line.postpaid_units = 0;
            line.tier = None;
            line.tier_label = None;
            line.unit_price = None;
            line.price_source = PriceSource::List;
            line.amount = Some(Decimal::ZERO);
        }
        match line.amount {
            Some(a) => postpaid_total += a,
            None => contract_price_required.push(line.item.clone()),
        }
        lines.push(line);
    }
    let purchases: Vec<PurchaseLine> = owner
        .packs
        .iter()
        .filter(|p| (m_start..m_end).contains(&p.purchased_at.timestamp()))
        .map(|p| PurchaseLine {
            pack: p.id.clone(),
            item: catalog.item(p.item).key.to_string(),
            size: p.size,
            purchased_at: p.purchased_at,
            amount: p.price_paid,
        })
        .collect();
    let purchases_total: Decimal = purchases.iter().map(|p| p.amount).sum();
    let exhausted_items = items
        .keys()
        .filter(|item| {
            !packs.iter().any(|p| {
                p.covers.contains(item) && p.remaining > 0 && p.until >= m_end && p.from < m_end
            })
        })
        .map(|i| catalog.item(*i).key.to_string())
        .collect();
    Ok(MonthStatement {
        owner_uin: owner.uin,
        month: month.to_string(),
        lines,
        purchases,
        postpaid_total,
        purchases_total,
        total: postpaid_total + purchases_total,
        contract_price_required,
        unresolved_units: unresolved.values().sum(),
        events,
        balances: balances_of(catalog, &packs, m_end),
        exhausted_items,
    })
}

/// Of `items`, those no pack can cover at `now` (Unix seconds): every pack covering it is
/// used up, expired or not yet valid, after `usage` is drawn in the rating engine's order.
/// What settlement tells the gateways (`exhausted`), so it agrees with the statement.
pub fn uncovered_at(
    catalog: &Catalog,
    book: &PriceBook,
    owner: &OwnerBilling,
    usage: &[UsageCount],
    now: i64,
    items: &[BillingItemId],
) -> Vec<BillingItemId> {
    let packs = drawn_at(catalog, book, owner, usage, now);
    items
        .iter()
        .copied()
        .filter(|i| {
            !packs
                .iter()
                .any(|p| p.covers.contains(i) && p.remaining > 0 && p.from <= now && now < p.until)
        })
        .collect()
}

/// The packs of `now`'s month, with `usage` drawn from them in the rating engine's order.
fn drawn_at(
    catalog: &Catalog,
    book: &PriceBook,
    owner: &OwnerBilling,
    usage: &[UsageCount],
    now: i64,
) -> Vec<PackState> {
    let month = Month::of_unix(now);
    let mut usage: Vec<&UsageCount> = usage
        .iter()
        .filter(|u| u.hour_start < month.end())
        .collect();
    usage.sort_by(|a, b| {
        (a.hour_start, a.item, &a.interface).cmp(&(b.hour_start, b.item, &b.interface))
    });
    let mut packs = packs_of(catalog, book, owner, &usage, month);
    replay(&usage, &mut packs, month, owner);
    packs
}

/// Every pack valid at `now` (Unix seconds), untouched ones too, with what it has left after
/// `usage` is drawn in the rating engine's order: what pack notices look at.
pub fn packs_now(
    catalog: &Catalog,
    book: &PriceBook,
    owner: &OwnerBilling,
    usage: &[UsageCount],
    now: i64,
) -> Vec<PackBalance> {
    drawn_at(catalog, book, owner, usage, now)
        .iter()
        .filter(|p| p.from <= now && now < p.until)
        .map(|p| balance_of(catalog, p))
        .collect()
}

/// Every pack that may cover usage up to the end of `month`, in drawing order: free packs
/// (each service's from its activation, recorded or at its first usage), then prepaid packs
/// (earliest purchased first).
fn packs_of(
    catalog: &Catalog,
    book: &PriceBook,
    owner: &OwnerBilling,
    usage: &[&UsageCount],
    month: Month,
) -> Vec<PackState> {
    let m_end = month.end();
    let mut activated: FxHashMap<ServiceId, i64> = owner
        .activations
        .iter()
        .map(|(s, t)| (*s, t.timestamp()))
        .collect();
    for u in usage {
        let svc = catalog.item(u.item).service;
        activated.entry(svc).or_insert(u.hour_start);
    }
    let mut packs: Vec<PackState> = Vec::new();
    for def in &book.free_packs {
        let svc = catalog.item(def.covers[0]).service;
        let Some(&from) = activated.get(&svc) else {
            continue;
        };
        if from >= m_end {
            continue;
        }
        // OCR: an account that used none of it for a year gets no monthly pack on the 1st; it
        // comes back two minutes after the next use (for the rest of that month).
        let dormancy = catalog.service(svc).name.as_ref() == "ocr";
        let service_hours: Vec<i64> = if dormancy {
            usage
                .iter()
                .filter(|u| catalog.item(u.item).service == svc)
                .map(|u| u.hour_start)
                .collect()
        } else {
            Vec::new()
        };
        match def.validity {
            Validity::Month => {
                let mut m = Month::of_unix(from);
                while m <= month {
                    // A month that starts while service is stopped gets no free pack.
                    if owner.suspended_at(m.start()) {
                        m = m.next();
                        continue;
                    }
                    let mut valid_from = m.start();
                    if dormancy {
                        let year_before = at(m.start())
                            .checked_sub_months(Months::new(12))
                            .map_or(i64::MIN, |d| d.timestamp());
                        let dormant = from <= year_before
                            && !service_hours
                                .iter()
                                .any(|h| (year_before..m.start()).contains(h));
                        if dormant {
                            match service_hours
                                .iter()
                                .find(|h| (m.start()..m.end()).contains(*h))
                            {
                                // The ledger is hourly: the pack covers its first use's hour.
                                Some(first) => valid_from = first + 120,
                                None => {
                                    m = m.next();
                                    continue;
                                }
                            }
                        }
                    }
                    packs.push(PackState::new(
                        format!("{}@{m}", def.id),
                        PackKind::Free,
                        def.covers.clone(),
                        def.quantity,
                        (valid_from, m.end()),
                        m.end(),
                    ));
                    m = m.next();
                }
            }
            Validity::Years(_) | Validity::Forever => {
                let until = match def.validity {
                    Validity::Years(n) => add_years(at(from), n),
                    _ => i64::MAX,
                };
                packs.push(PackState::new(
                    def.id.clone(),
                    PackKind::Free,
                    def.covers.clone(),
                    def.quantity,
                    (from, until),
                    until,
                ));
            }
        }
    }
    for p in &owner.packs {
        let validity = book
            .prepaid_validity
            .get(&p.item)
            .copied()
            .unwrap_or(Validity::Years(1));
        let bought = p.purchased_at.timestamp();
        packs.push(PackState::new(
            p.id.clone(),
            PackKind::Prepaid,
            vec![p.item],
            p.size,
            (bought, prepaid_until(p.purchased_at, validity)),
            bought,
        ));
    }
    packs.sort_by(|a, b| (a.kind, a.order, &a.id).cmp(&(b.kind, b.order, &b.id)));
    packs
}

/// One item's month, as the replay leaves it.
#[derive(Default)]
struct ItemMonth {
    usage: u64,
    by_interface: BTreeMap<String, u64>,
    covered: BTreeMap<(PackKind, i64, String), u64>,
    postpaid: u64,
}

/// Draws `usage` (sorted by hour) from `packs` in order, each unit from the first pack valid
/// at its hour that covers its item and has units left; what no pack covers is postpaid.
/// Usage before `month` only draws the packs down; the month's is recorded per item, with the
/// prepaid packs' low-balance and exhaustion events.
fn replay(
    usage: &[&UsageCount],
    packs: &mut [PackState],
    month: Month,
    owner: &OwnerBilling,
) -> (BTreeMap<BillingItemId, ItemMonth>, Vec<PackEvent>) {
    let m_start = month.start();
    let mut items: BTreeMap<BillingItemId, ItemMonth> = BTreeMap::new();
    let mut events = Vec::new();
    for u in usage {
        let in_month = u.hour_start >= m_start;
        let mut left = u.units;
        // While service is stopped, packs are not drawn (calls in flight at the stop).
        let drawable: &mut [PackState] = if owner.suspended_at(u.hour_start) {
            &mut []
        } else {
            &mut *packs
        };
        for p in drawable.iter_mut() {
            if left == 0 {
                break;
            }
            let valid = p.from < u.hour_start + HOUR && u.hour_start < p.until;
            if p.remaining == 0 || !valid || !p.covers.contains(&u.item) {
                continue;
            }
            let n = left.min(p.remaining);
            p.remaining -= n;
            left -= n;
            if in_month {
                *items
                    .entry(u.item)
                    .or_default()
                    .covered
                    .entry((p.kind, p.order, p.id.clone()))
                    .or_default() += n;
                if p.kind == PackKind::Prepaid {
                    if p.remaining == 0 {
                        events.push(PackEvent {
                            pack: p.id.clone(),
                            kind: PackEventKind::Exhausted,
                            at: at(u.hour_start),
                            remaining: 0,
                        });
                    } else if !p.low_reported && p.remaining * 5 < p.size {
                        events.push(PackEvent {
                            pack: p.id.clone(),
                            kind: PackEventKind::LowBalance,
                            at: at(u.hour_start),
                            remaining: p.remaining,
                        });
                    }
                }
            }
            if p.remaining * 5 < p.size {
                p.low_reported = true;
            }
        }
        if in_month {
            let m = items.entry(u.item).or_default();
            m.usage += u.units;
            *m.by_interface.entry(u.interface.to_string()).or_default() += u.units;
            m.postpaid += left;
        }
    }
    (items, events)
}

/// The statement line of one item: what packs covered, and the postpaid units priced at the
/// tier the month's postpaid volume reached (or the owner's contract price).
fn price_item(
    catalog: &Catalog,
    book: &PriceBook,
    owner: &OwnerBilling,
    item: BillingItemId,
    m: &ItemMonth,
) -> ItemLine {
    let meta = catalog.item(item);
    let covered: Vec<PackDraw> = m
        .covered
        .iter()
        .map(|((kind, _, pack), units)| PackDraw {
            pack: pack.clone(),
            kind: *kind,
            units: *units,
        })
        .collect();
    let units_of = |kind: PackKind| {
        covered
            .iter()
            .filter(|d| d.kind == kind)
            .map(|d| d.units)
            .sum()
    };
    let table = book.postpaid.get(&item);
    let tier = table.map(|t| t.tier_of(m.postpaid));
    let list_price = match (table, tier) {
        (Some(t), Some(i)) => t.tiers[i].price,
        _ => Price::ContactSales,
    };
    let (unit_price, source) = match (owner.contract_prices.get(&item), list_price) {
        (Some(p), _) => (Some(*p), PriceSource::Contract),
        (None, Price::List(p)) => (Some(p), PriceSource::List),
        (None, Price::ContactSales) => (None, PriceSource::ContractPriceRequired),
    };
    let divisor = table.map_or(Decimal::ONE, |t| t.unit.divisor());
    let amount = if m.postpaid == 0 {
        Some(Decimal::ZERO)
    } else {
        unit_price.map(|p| {
            (Decimal::from(m.postpaid) * p / divisor)
                .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
        })
    };
    let postpaid = m.postpaid > 0;
    ItemLine {
        item: meta.key.to_string(),
        name: meta.name.to_string(),
        usage: m.usage,
        by_interface: m.by_interface.clone(),
        free_units: units_of(PackKind::Free),
        prepaid_units: units_of(PackKind::Prepaid),
        covered,
        postpaid_units: m.postpaid,
        overserved_units: 0,
        unresolved_units: 0,
        tier: postpaid.then_some(tier).flatten(),
        tier_label: match (table, tier) {
            (Some(t), Some(i)) if postpaid => Some(t.label(i)),
            _ => None,
        },
        price_unit: table.map_or("per call", |t| t.unit.as_str()),
        unit_price: if postpaid { unit_price } else { None },
        price_source: if postpaid { source } else { PriceSource::List },
        amount,
    }
}

/// Balances at the end of the month of prepaid and one-time packs, and of monthly packs that
/// were drawn on (an untouched monthly pack says nothing).
fn balances_of(catalog: &Catalog, packs: &[PackState], m_end: i64) -> Vec<PackBalance> {
    packs
        .iter()
        .filter(|p| p.from < m_end && p.until > m_end - 1)
        .filter(|p| p.kind == PackKind::Prepaid || p.until != m_end || p.remaining < p.size)
        .map(|p| balance_of(catalog, p))
        .collect()
}

/// What a pack has left, as statements and live balances show it.
fn balance_of(catalog: &Catalog, p: &PackState) -> PackBalance {
    PackBalance {
        pack: p.id.clone(),
        kind: p.kind,
        items: p
            .covers
            .iter()
            .map(|i| catalog.item(*i).key.to_string())
            .collect(),
        size: p.size,
        remaining: p.remaining,
        valid_until: (p.until != i64::MAX).then(|| at(p.until)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tollgate_core::config::Source;

    fn setup() -> (Catalog, PriceBook) {
        let catalog = Catalog::embedded();
        let book = crate::config::load_prices(
            &Source::Embedded {
                name: "pricing.toml",
                text: crate::EMBEDDED_PRICING,
            },
            crate::EMBEDDED_PRICING,
            &catalog,
        )
        .unwrap();
        (catalog, book)
    }

    fn usage(catalog: &Catalog, rfc3339: &str, units: u64) -> UsageCount {
        UsageCount {
            item: catalog.item_by_key("ocr.general_basic").unwrap().id,
            interface: "GeneralBasicOCR".into(),
            hour_start: DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp(),
            first_at_ms: DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp() * 1000,
            units,
            unresolved_library: None,
        }
    }

    /// `units` SearchImage calls billed against `item` in the hour of `at`, first used at `at`.
    fn search(
        catalog: &Catalog,
        item: &str,
        at: &str,
        units: u64,
        unresolved: Option<&str>,
    ) -> UsageCount {
        let t = DateTime::parse_from_rfc3339(at).unwrap().timestamp();
        UsageCount {
            item: catalog.item_by_key(item).unwrap().id,
            interface: "SearchImage".into(),
            hour_start: t.div_euclid(3600) * 3600,
            first_at_ms: t * 1000,
            units,
            unresolved_library: unresolved.map(Arc::from),
        }
    }

    fn line<'a>(s: &'a MonthStatement, item: &str) -> &'a ItemLine {
        s.lines.iter().find(|l| l.item == item).unwrap()
    }

    const MAY: Month = Month {
        year: 2026,
        month: 5,
    };

    #[test]
    fn similar_and_same_image_search_are_priced_apart_and_share_the_free_pack_in_order_of_use() {
        let (catalog, book) = setup();
        let owner = OwnerBilling {
            uin: 1,
            ..Default::default()
        };
        // 100,000 searches into a type-6 library, then (later in the same hour) 100,000 into
        // a type-1 one: the month's 10,000 free searches go to the first.
        let usage = [
            search(
                &catalog,
                "tiia.similar_search_query",
                "2026-05-04T10:00:00+08:00",
                100_000,
                None,
            ),
            search(
                &catalog,
                "tiia.search_query",
                "2026-05-04T10:20:00+08:00",
                100_000,
                None,
            ),
        ];
        let s = rate_month(&catalog, &book, &owner, &usage, MAY).unwrap();
        let similar = line(&s, "tiia.similar_search_query");
        assert_eq!(
            (similar.free_units, similar.postpaid_units),
            (10_000, 90_000)
        );
        assert_eq!(similar.unit_price, Some(Decimal::from(60)));
        assert_eq!(similar.amount, Some(Decimal::from(5_400)));
        let same = line(&s, "tiia.search_query");
        assert_eq!((same.free_units, same.postpaid_units), (0, 100_000));
        assert_eq!(same.unit_price, Some(Decimal::from(15)));
        assert_eq!(same.amount, Some(Decimal::from(1_500)));
        assert_eq!(s.postpaid_total, Decimal::from(6_900));
        // The other way round: the type-1 searches came first and take the free ones.
        let usage = [
            search(
                &catalog,
                "tiia.similar_search_query",
                "2026-05-04T10:20:00+08:00",
                100_000,
                None,
            ),
            search(
                &catalog,
                "tiia.search_query",
                "2026-05-04T10:00:00+08:00",
                100_000,
                None,
            ),
        ];
        let s = rate_month(&catalog, &book, &owner, &usage, MAY).unwrap();
        assert_eq!(
            line(&s, "tiia.search_query").amount,
            Some(Decimal::from(1_350))
        );
        assert_eq!(
            line(&s, "tiia.similar_search_query").amount,
            Some(Decimal::from(6_000))
        );
        // CreateImage has free calls of its own (10,000, shared by the library types).
        let create = [UsageCount {
            interface: "CreateImage".into(),
            ..search(
                &catalog,
                "tiia.similar_search_create",
                "2026-05-04T09:00:00+08:00",
                12_000,
                None,
            )
        }];
        let s = rate_month(&catalog, &book, &owner, &create, MAY).unwrap();
        let l = line(&s, "tiia.similar_search_create");
        assert_eq!((l.free_units, l.postpaid_units), (10_000, 2_000));
        assert_eq!(l.amount, Some(Decimal::from(26)));
    }

    #[test]
    fn a_similar_search_pack_is_drawn_by_similar_searches_only() {
        let (catalog, book) = setup();
        let owner = OwnerBilling {
            uin: 1,
            packs: vec![crate::PurchasedPack {
                id: "sim-1m".into(),
                item: catalog.item_by_key("tiia.similar_search_query").unwrap().id,
                size: 1_000_000,
                purchased_at: DateTime::parse_from_rfc3339("2026-04-20T12:00:00+08:00").unwrap(),
                price_paid: Decimal::from(20_000),
            }],
            ..Default::default()
        };
        let usage = [
            search(
                &catalog,
                "tiia.search_query",
                "2026-05-04T10:00:00+08:00",
                50_000,
                None,
            ),
            search(
                &catalog,
                "tiia.similar_search_query",
                "2026-05-04T11:00:00+08:00",
                30_000,
                None,
            ),
        ];
        let s = rate_month(&catalog, &book, &owner, &usage, MAY).unwrap();
        let same = line(&s, "tiia.search_query");
        assert_eq!(
            (same.free_units, same.prepaid_units, same.postpaid_units),
            (10_000, 0, 40_000)
        );
        let similar = line(&s, "tiia.similar_search_query");
        assert_eq!(
            (
                similar.free_units,
                similar.prepaid_units,
                similar.postpaid_units
            ),
            (0, 30_000, 0)
        );
        assert_eq!(similar.amount, Some(Decimal::ZERO));
        let pack = s.balances.iter().find(|b| b.pack == "sim-1m").unwrap();
        assert_eq!(pack.remaining, 970_000);
    }

    #[test]
    fn unresolved_usage_is_re_rated_by_the_type_the_store_learnt() {
        let (catalog, book) = setup();
        let usage = [
            search(
                &catalog,
                "tiia.search_query",
                "2026-05-04T10:00:00+08:00",
                10_000,
                None,
            ),
            search(
                &catalog,
                "tiia.search_query",
                "2026-05-04T10:05:00+08:00",
                3_000,
                Some("patterns"),
            ),
            search(
                &catalog,
                "tiia.search_query",
                "2026-05-04T10:06:00+08:00",
                2_000,
                Some("shoes"),
            ),
        ];
        // Nothing known yet: everything on the same/product line, 5,000 units unresolved.
        let unknown = OwnerBilling {
            uin: 1,
            ..Default::default()
        };
        let s = rate_month(&catalog, &book, &unknown, &usage, MAY).unwrap();
        let same = line(&s, "tiia.search_query");
        assert_eq!((same.usage, same.unresolved_units), (15_000, 5_000));
        assert_eq!(s.unresolved_units, 5_000);
        assert!(
            s.lines
                .iter()
                .all(|l| l.item != "tiia.similar_search_query")
        );
        // The store learnt "patterns" is type 6 and "shoes" type 5.
        let known = OwnerBilling {
            uin: 1,
            libraries: [("patterns".to_owned(), 6), ("shoes".to_owned(), 5)]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let s = rate_month(&catalog, &book, &known, &usage, MAY).unwrap();
        let same = line(&s, "tiia.search_query");
        assert_eq!((same.usage, same.unresolved_units), (12_000, 0));
        let similar = line(&s, "tiia.similar_search_query");
        assert_eq!((similar.usage, similar.postpaid_units), (3_000, 3_000));
        assert_eq!(similar.amount, Some(Decimal::from(180)));
        assert_eq!(s.unresolved_units, 0);
        // Units are conserved either way.
        let total: u64 = s.lines.iter().map(|l| l.usage).sum();
        assert_eq!(total, 15_000);
    }

    fn free_units(s: &MonthStatement) -> u64 {
        s.lines
            .iter()
            .find(|l| l.item == "ocr.general_basic")
            .map_or(0, |l| l.free_units)
    }

    /// OCR: an account unused for a year gets no monthly free pack on the 1st; its next use
    /// brings it back (for its hour on: the ledger is hourly).
    #[test]
    fn a_year_without_ocr_suspends_the_monthly_free_pack_until_the_next_use() {
        let (catalog, book) = setup();
        let ocr = catalog.service_by_name("ocr").unwrap().id;
        let owner = OwnerBilling {
            uin: 1,
            activations: [(
                ocr,
                DateTime::parse_from_rfc3339("2024-01-10T10:00:00+08:00").unwrap(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        // Last used in February 2025; March 2026 is more than a year later.
        let feb_2025 = usage(&catalog, "2025-02-10T10:00:00+08:00", 10);
        let march = Month::new(2026, 3).unwrap();
        let quiet = rate_month(
            &catalog,
            &book,
            &owner,
            std::slice::from_ref(&feb_2025),
            march,
        )
        .unwrap();
        assert!(
            !quiet
                .balances
                .iter()
                .any(|b| b.pack.starts_with("ocr.general_basic.monthly")),
            "{:?}",
            quiet.balances
        );
        // Used again on March 20: the month's pack is back from then and covers the use.
        let back = usage(&catalog, "2026-03-20T15:00:00+08:00", 300);
        let s = rate_month(&catalog, &book, &owner, &[feb_2025.clone(), back], march).unwrap();
        assert_eq!(free_units(&s), 300);
        // Used within the year (February 2026): March's pack is there from the 1st.
        let feb_2026 = usage(&catalog, "2026-02-10T10:00:00+08:00", 10);
        let early = usage(&catalog, "2026-03-01T08:00:00+08:00", 50);
        let s = rate_month(&catalog, &book, &owner, &[feb_2026, early], march).unwrap();
        assert_eq!(free_units(&s), 50);
    }
}
