//! Settlement: turning counted usage into money, exactly as the seeds price it.
//!
//! The core is a library with no I/O: [`rating::rate_month`] takes an owner's usage (hourly
//! counts per billing item and interface), its packs and the price book, and returns the month's
//! statement. `quote` prices purchases (overlay packs, QPS mode, concurrency, prepaid packs);
//! `statement` renders statements for people (table) and machines (JSON, CSV); `ledger` reads
//! usage from the metering pipeline's outputs.
//!
//! Money is `rust_decimal::Decimal` throughout; nothing here touches a float.

#![deny(unsafe_code)]

/// The embedded `pricing.toml` and `billing.toml` (statements and quotes without --config-dir).
pub const EMBEDDED_PRICING: &str = include_str!("../../../config/pricing.toml");
pub const EMBEDDED_BILLING: &str = include_str!("../../../config/billing.toml");

pub mod arrears;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod ledger;
pub mod live;
pub mod notify;
pub mod prices;
pub mod quote;
pub mod rating;
pub mod statement;
pub mod store;

use std::sync::Arc;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;

use tollgate_core::catalog::{BillingItemId, ServiceId};
use tollgate_core::clock::beijing;

/// A prepaid pack an owner bought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchasedPack {
    pub id: String,
    pub item: BillingItemId,
    pub size: u64,
    pub purchased_at: DateTime<FixedOffset>,
    /// What was paid for it (the list price unless billing.toml says otherwise).
    pub price_paid: Decimal,
}

/// What settlement knows about an owner besides usage (`config/billing.toml`).
#[derive(Debug, Clone, Default)]
pub struct OwnerBilling {
    pub uin: u64,
    /// When each service was activated (one-time free packs are granted then). A service with
    /// usage but no activation record counts as activated at its first usage.
    pub activations: FxHashMap<ServiceId, DateTime<FixedOffset>>,
    pub packs: Vec<PurchasedPack>,
    /// Per-account postpaid prices (in the item's postpaid unit), used instead of list prices
    /// and required where a table says 联系商务.
    pub contract_prices: FxHashMap<BillingItemId, Decimal>,
    /// Postpaid is off (the store says so): units no pack covered are over-served, not
    /// billed (the gateway refuses such calls once settlement reports the packs used up).
    /// `false` for billing.toml, whose owners are billed postpaid.
    pub postpaid_off: bool,
    /// When service was stopped for arrears, `[from, until)` in Unix seconds (`i64::MAX`:
    /// still stopped): usage then draws no pack, and a month that starts in one gets no
    /// monthly free pack.
    pub suspensions: Vec<(i64, i64)>,
    /// Image search: the type (`GroupType`) of each library of the owner the store knows,
    /// deleted ones included (usage marked unresolved is re-rated by it).
    pub libraries: FxHashMap<String, i64>,
}

impl OwnerBilling {
    /// Whether service was stopped at `t` (Unix seconds).
    pub fn suspended_at(&self, t: i64) -> bool {
        self.suspensions
            .iter()
            .any(|(from, until)| *from <= t && t < *until)
    }
}

/// Units of one billing item used through one interface during one Beijing-time hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCount {
    pub item: BillingItemId,
    pub interface: Arc<str>,
    /// Unix seconds of the start of the hour.
    pub hour_start: i64,
    /// When the first call counted here was admitted, Unix milliseconds (the hour's start
    /// when not known): within an hour, items that share a pack draw it in the order they were
    /// first used.
    pub first_at_ms: i64,
    pub units: u64,
    /// Image search: the library of units whose type the gateway could not tell (billed
    /// against `item`, the same/product item, until rating finds the type).
    pub unresolved_library: Option<Arc<str>>,
}

/// A Beijing-time calendar month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    pub fn new(year: i32, month: u32) -> Option<Month> {
        NaiveDate::from_ymd_opt(year, month, 1).map(|_| Month { year, month })
    }

    /// The month of a Unix-seconds instant, in Beijing time.
    pub fn of_unix(seconds: i64) -> Month {
        let d = beijing()
            .timestamp_opt(seconds, 0)
            .single()
            .expect("fixed offset")
            .date_naive();
        Month {
            year: d.year(),
            month: d.month(),
        }
    }

    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).expect("valid month")
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Unix seconds of 00:00 Beijing time on the 1st.
    pub fn start(self) -> i64 {
        tollgate_core::clock::beijing_midnight_unix_nanos(self.first_day()) / 1_000_000_000
    }

    /// Unix seconds of 00:00 Beijing time on the 1st of the next month.
    pub fn end(self) -> i64 {
        self.next().start()
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl std::str::FromStr for Month {
    type Err = String;

    fn from_str(s: &str) -> Result<Month, String> {
        let (y, m) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not YYYY-MM"))?;
        let (y, m) = (
            y.parse().map_err(|_| format!("{s:?} is not YYYY-MM"))?,
            m.parse().map_err(|_| format!("{s:?} is not YYYY-MM"))?,
        );
        Month::new(y, m).ok_or_else(|| format!("{s:?} is not a month"))
    }
}
