//! Usage as the rating engine reads it: hourly counts per billing item and interface, from the
//! metering pipeline's outputs.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::UsageCount;
use tollgate_core::catalog::Catalog;
use tollgate_usage::UsageRecord;

/// A ledger row the catalog cannot place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("usage of unknown billing item {item:?} (not in catalog.toml)")]
pub struct UnknownItem {
    pub item: String,
}

/// Units (and when the first of them was used, Unix ms) by (hour start, billing item key, interface,
/// unresolved library), before the catalog resolves the items.
type HourlyUnits = BTreeMap<(i64, String, Arc<str>, Option<Arc<str>>), (u64, i64)>;

fn add(
    counts: &mut HourlyUnits,
    key: (i64, String, Arc<str>, Option<Arc<str>>),
    units: u64,
    minute: i64,
) {
    let e = counts.entry(key).or_insert((0, i64::MAX));
    e.0 += units;
    e.1 = e.1.min(minute);
}

/// Resolves the billing items of aggregated units into `UsageCount`s.
fn resolve(catalog: &Catalog, counts: HourlyUnits) -> Result<Vec<UsageCount>, UnknownItem> {
    counts
        .into_iter()
        .map(
            |((hour_start, item, interface, library), (units, first_at_ms))| {
                let item = catalog.item_by_key(&item).ok_or(UnknownItem { item })?.id;
                Ok(UsageCount {
                    item,
                    interface,
                    hour_start,
                    first_at_ms,
                    units,
                    unresolved_library: library,
                })
            },
        )
        .collect()
}

/// Aggregates one owner's usage records into hourly counts.
pub fn hourly_counts<'a>(
    catalog: &Catalog,
    owner_uin: u64,
    records: impl IntoIterator<Item = &'a UsageRecord>,
) -> Result<Vec<UsageCount>, UnknownItem> {
    let mut counts = HourlyUnits::new();
    for r in records.into_iter().filter(|r| r.owner_uin == owner_uin) {
        add(
            &mut counts,
            (
                r.time_unix_ms.div_euclid(3_600_000) * 3600,
                r.billing_item.to_string(),
                Arc::clone(&r.action),
                r.unresolved_library.clone(),
            ),
            u64::from(r.units),
            r.time_unix_ms,
        );
    }
    resolve(catalog, counts)
}

/// One owner's usage from sealed batches (the local ledger directory), as hourly counts.
pub fn from_batches<'a>(
    catalog: &Catalog,
    owner_uin: u64,
    batches: impl IntoIterator<Item = &'a tollgate_usage::batch::Batch>,
) -> Result<Vec<UsageCount>, UnknownItem> {
    let mut counts = HourlyUnits::new();
    let mut seen = std::collections::HashSet::new();
    for b in batches {
        // A batch id is applied once, however many copies of the file exist.
        if !seen.insert(b.batch_id.as_str()) {
            continue;
        }
        for c in b.counts.iter().filter(|c| c.owner_uin == owner_uin) {
            add(
                &mut counts,
                (
                    c.minute.div_euclid(3600) * 3600,
                    c.billing_item.clone(),
                    Arc::from(c.interface.as_str()),
                    c.unresolved_library.as_deref().map(Arc::from),
                ),
                c.units,
                c.first_unix_ms.unwrap_or(c.minute * 1000),
            );
        }
    }
    resolve(catalog, counts)
}
