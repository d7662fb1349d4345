//! The price book: free packs, prepaid pack offers, postpaid tier tables and QPS/concurrency
//! quantity prices, validated against the catalog (`config::pricing` builds it from
//! `config/pricing.toml`).

use rust_decimal::Decimal;
use rustc_hash::FxHashMap;

use tollgate_core::catalog::{BillingItemId, GroupId};
use tollgate_core::entitlement::overlay::OverlayClass;

/// A list price, or a 联系商务 ("contact sales") cell that has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Price {
    List(Decimal),
    ContactSales,
}

/// How a tier table writes its boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary {
    /// `a ≤ volume < b` ("0 ≤ 调用量 < 1万").
    LowerClosed,
    /// `a < volume ≤ b` ("0 < 调用量 ≤ 1万").
    UpperClosed,
}

/// What a postpaid price is per.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceUnit {
    /// 元/次.
    Call,
    /// 元/千次.
    Thousand,
}

impl PriceUnit {
    pub fn divisor(self) -> Decimal {
        match self {
            PriceUnit::Call => Decimal::ONE,
            PriceUnit::Thousand => Decimal::from(1000),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PriceUnit::Call => "per call",
            PriceUnit::Thousand => "per 1000 calls",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    /// The tier's upper bound (exclusive or inclusive by the table's [`Boundary`]); `None` for
    /// the last tier.
    pub up_to: Option<u64>,
    pub price: Price,
}

/// A postpaid table: the month's postpaid volume picks one tier, whose price applies to every
/// postpaid unit of the month (阶梯到达).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierTable {
    pub boundary: Boundary,
    pub unit: PriceUnit,
    pub tiers: Vec<Tier>,
}

impl TierTable {
    /// The index of the tier `volume` reaches.
    pub fn tier_of(&self, volume: u64) -> usize {
        self.tiers
            .iter()
            .position(|t| match (t.up_to, self.boundary) {
                (None, _) => true,
                (Some(b), Boundary::LowerClosed) => volume < b,
                (Some(b), Boundary::UpperClosed) => volume <= b,
            })
            .unwrap_or(self.tiers.len() - 1)
    }

    /// The tier's range as the seed writes it, e.g. `10000 ≤ n < 100000`.
    pub fn label(&self, index: usize) -> String {
        let lower = if index == 0 {
            0
        } else {
            self.tiers[index - 1].up_to.unwrap_or(0)
        };
        let (lo_op, hi_op) = match self.boundary {
            Boundary::LowerClosed => ("≤", "<"),
            Boundary::UpperClosed => ("<", "≤"),
        };
        match self.tiers[index].up_to {
            Some(upper) => format!("{lower} {lo_op} n {hi_op} {upper}"),
            None if index == 0 => "any volume".to_owned(),
            None => format!("n {} {lower}", if lo_op == "≤" { "≥" } else { ">" }),
        }
    }
}

/// A prepaid pack on sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackOffer {
    pub size: u64,
    pub price: Price,
}

/// How long a free pack lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Issued on the 1st (or at activation), valid that calendar month only.
    Month,
    /// Issued once at activation, valid this many years.
    Years(u32),
    /// Issued once, never expires.
    Forever,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreePackDef {
    pub id: String,
    pub covers: Vec<BillingItemId>,
    pub quantity: u64,
    pub validity: Validity,
}

/// One row of a QPS/concurrency price table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantityTier {
    pub up_to: Option<u64>,
    pub per_day: Option<Decimal>,
    pub per_month: Option<Decimal>,
}

/// Prices per unit (QPS or task) per day or month, the tier picked by the quantity bought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityTable {
    pub boundary: Boundary,
    pub tiers: Vec<QuantityTier>,
}

impl QuantityTable {
    pub fn tier_of(&self, quantity: u64) -> &QuantityTier {
        self.tiers
            .iter()
            .find(|t| match (t.up_to, self.boundary) {
                (None, _) => true,
                (Some(b), Boundary::LowerClosed) => quantity < b,
                (Some(b), Boundary::UpperClosed) => quantity <= b,
            })
            .unwrap_or_else(|| self.tiers.last().expect("validated non-empty"))
    }
}

/// Every price of the catalog.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    pub postpaid: FxHashMap<BillingItemId, TierTable>,
    pub prepaid: FxHashMap<BillingItemId, Vec<PackOffer>>,
    /// How long a purchased pack of the item lasts (1 year; material quota: forever).
    pub prepaid_validity: FxHashMap<BillingItemId, Validity>,
    pub free_packs: Vec<FreePackDef>,
    pub overlay: FxHashMap<OverlayClass, QuantityTable>,
    pub qps_mode: FxHashMap<GroupId, QuantityTable>,
    pub concurrency: FxHashMap<GroupId, QuantityTable>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(boundary: Boundary, bounds: &[u64]) -> TierTable {
        let mut tiers: Vec<Tier> = bounds
            .iter()
            .map(|b| Tier {
                up_to: Some(*b),
                price: Price::ContactSales,
            })
            .collect();
        tiers.push(Tier {
            up_to: None,
            price: Price::ContactSales,
        });
        TierTable {
            boundary,
            unit: PriceUnit::Call,
            tiers,
        }
    }

    #[test]
    fn boundaries_fall_on_the_side_the_table_writes() {
        let lower = table(Boundary::LowerClosed, &[10_000, 100_000]);
        assert_eq!(
            [0, 9_999, 10_000, 99_999, 100_000, 5_000_000].map(|v| lower.tier_of(v)),
            [0, 0, 1, 1, 2, 2]
        );
        let upper = table(Boundary::UpperClosed, &[10_000, 100_000]);
        assert_eq!(
            [0, 10_000, 10_001, 100_000, 100_001].map(|v| upper.tier_of(v)),
            [0, 0, 1, 1, 2]
        );
        assert_eq!(lower.label(1), "10000 ≤ n < 100000");
        assert_eq!(upper.label(2), "n > 100000");
    }
}
