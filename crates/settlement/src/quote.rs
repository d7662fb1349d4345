//! Purchase quotes: QPS overlay packs, QPS billing mode, concurrency tasks and prepaid packs,
//! priced per unit per day or month at the tier the quantity picks. Overlay packs are checked
//! against the class daily caps with the gateway's own validator before they are priced.

use chrono::{DateTime, Days, FixedOffset, Months, NaiveDate};
use rust_decimal::Decimal;
use serde::Serialize;

use super::prices::{Price, PriceBook, QuantityTable};
use tollgate_core::catalog::Catalog;
use tollgate_core::entitlement::overlay::{
    CapExceeded, InvalidPack, OverlayPack, check_daily_cap, check_pack,
};

/// How long a purchase runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Term {
    /// Whole Beijing days, inclusive (按日购买).
    Days { start: NaiveDate, end: NaiveDate },
    /// Whole months from `start` (按月购买).
    Months { start: NaiveDate, months: u32 },
}

impl Term {
    pub fn start(self) -> NaiveDate {
        match self {
            Term::Days { start, .. } | Term::Months { start, .. } => start,
        }
    }

    /// The last day covered.
    pub fn end(self) -> NaiveDate {
        match self {
            Term::Days { end, .. } => end,
            Term::Months { start, months } => start
                .checked_add_months(Months::new(months))
                .and_then(|d| d.checked_sub_days(Days::new(1)))
                .unwrap_or(start),
        }
    }
}

/// A priced purchase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quote {
    pub what: String,
    pub quantity: u64,
    /// Days, months or packs.
    pub periods: u64,
    pub period: &'static str,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("{0} is not in the catalog")]
    Unknown(String),
    #[error("{0} has no QPS overlay class")]
    NoOverlayClass(String),
    #[error("{what} has no list price (联系商务): a contract price is required")]
    ContactSales { what: String },
    #[error("{what} is not sold {period}")]
    NotSoldPer { what: String, period: &'static str },
    #[error("{what}: {quantity} is above the maximum of {max}")]
    AboveMaximum {
        what: String,
        quantity: u64,
        max: u64,
    },
    #[error("the quantity must be at least 1")]
    Zero,
    #[error(transparent)]
    Cap(#[from] CapExceeded),
    #[error(transparent)]
    Invalid(#[from] InvalidPack),
}

fn per_period(
    table: &QuantityTable,
    what: &str,
    quantity: u64,
    term: Term,
) -> Result<Quote, QuoteError> {
    if quantity == 0 {
        return Err(QuoteError::Zero);
    }
    let tier = table.tier_of(quantity);
    let (unit_price, periods, period) = match term {
        Term::Days { start, end } => (
            tier.per_day,
            (end - start).num_days().max(0) as u64 + 1,
            "day",
        ),
        Term::Months { months, .. } => (tier.per_month, u64::from(months), "month"),
    };
    let unit_price = unit_price.ok_or_else(|| QuoteError::NotSoldPer {
        what: what.to_owned(),
        period: if period == "day" {
            "by the day"
        } else {
            "by the month"
        },
    })?;
    Ok(Quote {
        what: what.to_owned(),
        quantity,
        periods,
        period,
        unit_price,
        amount: unit_price * Decimal::from(quantity) * Decimal::from(periods),
    })
}

/// A QPS overlay pack for `interface` (`ocr.IDCardOCR`), checked against the class cap given
/// the packs the UIN already holds for that interface.
pub fn overlay(
    book: &PriceBook,
    catalog: &Catalog,
    interface: &str,
    qps: u32,
    term: Term,
    purchased_at: DateTime<FixedOffset>,
    held: &[OverlayPack],
) -> Result<Quote, QuoteError> {
    let f = catalog
        .interface_by_name(interface)
        .ok_or_else(|| QuoteError::Unknown(interface.to_owned()))?;
    let class = f
        .overlay_class
        .ok_or_else(|| QuoteError::NoOverlayClass(interface.to_owned()))?;
    let pack = OverlayPack {
        qps,
        start: term.start(),
        end: term.end(),
        purchased_at,
    };
    check_pack(&pack)?;
    check_daily_cap(class, held, &pack)?;
    let table = &book.overlay[&class];
    per_period(
        table,
        &format!("QPS overlay class {} for {interface}", class.as_str()),
        u64::from(qps),
        term,
    )
}

/// A group of the catalog and its price table in `prices` (QPS mode or concurrency).
fn group_prices<'a>(
    catalog: &'a Catalog,
    prices: &'a rustc_hash::FxHashMap<tollgate_core::catalog::GroupId, QuantityTable>,
    group: &str,
    what: &str,
) -> Result<(&'a tollgate_core::catalog::Group, &'a QuantityTable), QuoteError> {
    let g = catalog
        .group_by_name(group)
        .ok_or_else(|| QuoteError::Unknown(group.to_owned()))?;
    let table = prices
        .get(&g.id)
        .ok_or_else(|| QuoteError::Unknown(format!("{what} prices for {group}")))?;
    Ok((g, table))
}

/// QPS billing mode for `group` (`facefusion.fuse`, `bda.segment`).
pub fn qps_mode(
    book: &PriceBook,
    catalog: &Catalog,
    group: &str,
    qps: u32,
    term: Term,
) -> Result<Quote, QuoteError> {
    let (g, table) = group_prices(catalog, &book.qps_mode, group, "QPS mode")?;
    if let Some(max) = g.max_purchased_qps
        && qps > max
    {
        return Err(QuoteError::AboveMaximum {
            what: format!("QPS of {group}"),
            quantity: u64::from(qps),
            max: u64::from(max),
        });
    }
    per_period(
        table,
        &format!("QPS mode for {group}"),
        u64::from(qps),
        term,
    )
}

/// Concurrency tasks for `group` (`facefusion.fuse_ultra`), by the month.
pub fn concurrency(
    book: &PriceBook,
    catalog: &Catalog,
    group: &str,
    tasks: u32,
    term: Term,
) -> Result<Quote, QuoteError> {
    let (_, table) = group_prices(catalog, &book.concurrency, group, "concurrency")?;
    per_period(
        table,
        &format!("concurrency tasks for {group}"),
        u64::from(tasks),
        term,
    )
}

/// `count` prepaid packs of `size` for `item`; `unit_price` replaces the list price (a
/// discount, or a worked example's own figure).
pub fn prepaid(
    book: &PriceBook,
    catalog: &Catalog,
    item: &str,
    size: u64,
    count: u32,
    unit_price: Option<Decimal>,
) -> Result<Quote, QuoteError> {
    let it = catalog
        .item_by_key(item)
        .ok_or_else(|| QuoteError::Unknown(item.to_owned()))?;
    let offer = book
        .prepaid
        .get(&it.id)
        .and_then(|offers| offers.iter().find(|o| o.size == size))
        .ok_or_else(|| QuoteError::Unknown(format!("a {size} pack of {item}")))?;
    let what = format!("{size} pack of {item}");
    let price = match (unit_price, offer.price) {
        (Some(p), _) => p,
        (None, Price::List(p)) => p,
        (None, Price::ContactSales) => return Err(QuoteError::ContactSales { what }),
    };
    if count == 0 {
        return Err(QuoteError::Zero);
    }
    Ok(Quote {
        what,
        quantity: size,
        periods: u64::from(count),
        period: "pack",
        unit_price: price,
        amount: price * Decimal::from(count),
    })
}

/// The sum of several quotes.
pub fn total(quotes: &[Quote]) -> Decimal {
    quotes.iter().map(|q| q.amount).sum()
}
