//! Sealed batches: counts, not calls, on the wire.
//!
//! A batch holds one contiguous range of spool sequence numbers, aggregated into counts per
//! (owner UIN, billing item, interface, Beijing-time minute). Its id is
//! `<gateway id>-<batch seq>`; a sealed batch is written to disk before it is published, so a
//! replay after a crash re-publishes the same bytes under the same id, and the broker and the
//! ledger can deduplicate on it.
//!
//! The gateway keeps sealed batches in its spool directory until the sink acknowledges them
//! (`tollgate_gateway::metering::store`); the settlement side applies them to its ledger.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::record::{self, SpoolEntry};

/// One count: units (and calls) of one billing item through one interface in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub owner_uin: u64,
    pub billing_item: String,
    pub interface: String,
    /// Unix seconds of the start of the minute (minutes align in UTC and Beijing time).
    pub minute: i64,
    pub units: u64,
    /// Usage records (billable calls, per billing item) aggregated here.
    pub records: u64,
    /// Image search: the library these units went into, when the gateway could not tell its
    /// type (`UsageRecord::unresolved_library`); such units are counted apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved_library: Option<String>,
    /// When the earliest call counted here was admitted, Unix milliseconds (`None` in batches
    /// sealed before this field): settlement draws a pack shared by two items, within an hour,
    /// by the order they were first used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_unix_ms: Option<i64>,
}

/// A sealed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub batch_id: String,
    pub gateway_id: String,
    pub batch_seq: u64,
    /// The spool range aggregated, inclusive.
    pub first_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    pub units: u64,
    /// Units of this gateway's batches 1..=batch_seq: lets the consumer reconcile.
    pub cumulative_units: u64,
    /// Spool records that could not be decoded (counted, never guessed at).
    pub undecodable: u64,
    /// When the earliest call of the batch was admitted, Unix milliseconds (0 in batches
    /// sealed before this field existed): how long the oldest unshipped usage has waited.
    #[serde(default)]
    pub first_record_unix_ms: i64,
    pub counts: Vec<Count>,
}

/// (owner, billing item, interface, minute, unresolved library) of a count, borrowed from the
/// spool's bytes.
type CountKey<'a> = (u64, Cow<'a, str>, Cow<'a, str>, i64, Option<Cow<'a, str>>);

impl Batch {
    pub fn id(gateway_id: &str, batch_seq: u64) -> String {
        format!("{gateway_id}-{batch_seq:012}")
    }

    /// Aggregates the longest prefix of `entries` that makes at most `max_counts` counts into
    /// the batch that follows `prev_cumulative_units`; returns it and the length of that prefix
    /// (at least one entry). What bounds a batch's size on the wire is its counts, not its
    /// records: thousands of calls of one account through one interface in one minute are one
    /// count.
    pub fn seal(
        gateway_id: &str,
        batch_seq: u64,
        entries: &[SpoolEntry],
        prev_cumulative_units: u64,
        max_counts: usize,
    ) -> (Batch, usize) {
        // Keys borrow from the entries: a record costs a decode and a map lookup, no allocation
        // (JSON records of older spools with escaped strings are the exception).
        let mut counts: BTreeMap<CountKey<'_>, (u64, u64, i64)> = BTreeMap::new();
        let mut undecodable = 0;
        let mut taken = 0;
        let mut first_record_unix_ms = i64::MAX;
        for e in entries {
            match record::decode(&e.payload) {
                Ok(r) => {
                    let minute = r.time_unix_ms.div_euclid(60_000) * 60;
                    let key = (
                        r.owner_uin,
                        r.billing_item,
                        r.action,
                        minute,
                        r.unresolved_library,
                    );
                    if taken > 0 && counts.len() >= max_counts && !counts.contains_key(&key) {
                        break;
                    }
                    first_record_unix_ms = first_record_unix_ms.min(r.time_unix_ms);
                    let c = counts.entry(key).or_insert((0, 0, i64::MAX));
                    c.0 += u64::from(r.units);
                    c.1 += 1;
                    c.2 = c.2.min(r.time_unix_ms);
                }
                Err(err) => {
                    undecodable += 1;
                    tracing::error!(seq = e.seq, error = %err, "undecodable spool record");
                }
            }
            taken += 1;
        }
        let entries = &entries[..taken];
        let counts: Vec<Count> = counts
            .into_iter()
            .map(
                |(
                    (owner_uin, billing_item, interface, minute, library),
                    (units, records, first),
                )| Count {
                    owner_uin,
                    billing_item: billing_item.into_owned(),
                    interface: interface.into_owned(),
                    minute,
                    units,
                    records,
                    unresolved_library: library.map(Cow::into_owned),
                    first_unix_ms: Some(first),
                },
            )
            .collect();
        let units = counts.iter().map(|c| c.units).sum();
        let batch = Batch {
            batch_id: Batch::id(gateway_id, batch_seq),
            gateway_id: gateway_id.to_owned(),
            batch_seq,
            first_seq: entries.first().map_or(0, |e| e.seq),
            last_seq: entries.last().map_or(0, |e| e.seq),
            records: counts.iter().map(|c| c.records).sum(),
            units,
            cumulative_units: prev_cumulative_units + units,
            undecodable,
            first_record_unix_ms: if first_record_unix_ms == i64::MAX {
                0
            } else {
                first_record_unix_ms
            },
            counts,
        };
        (batch, taken)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a batch serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UsageRecord;

    fn entry(seq: u64, owner: u64, item: &str, action: &str, ms: i64, units: u32) -> SpoolEntry {
        let r = UsageRecord {
            request_id: format!("r{seq}"),
            owner_uin: owner,
            uin: owner,
            service: "ocr".into(),
            action: action.into(),
            billing_item: item.into(),
            units,
            time_unix_ms: ms,
            unresolved_library: None,
        };
        SpoolEntry {
            seq,
            payload: record::to_payload(&r),
        }
    }

    #[test]
    fn sealing_counts_per_owner_item_interface_minute_and_is_deterministic() {
        let entries = vec![
            entry(11, 1, "ocr.invoice_big", "MixedInvoiceOCR", 60_000, 2),
            entry(12, 1, "ocr.invoice_small", "MixedInvoiceOCR", 61_000, 3),
            entry(13, 1, "ocr.invoice_big", "MixedInvoiceOCR", 119_999, 1),
            entry(14, 2, "ocr.general_basic", "GeneralBasicOCR", 120_000, 1),
            SpoolEntry {
                seq: 15,
                payload: b"garbage".to_vec(),
            },
        ];
        let (b, taken) = Batch::seal("gw-a", 7, &entries, 100, usize::MAX);
        assert_eq!(taken, 5);
        assert_eq!(b.batch_id, "gw-a-000000000007");
        assert_eq!(
            (
                b.first_seq,
                b.last_seq,
                b.records,
                b.units,
                b.cumulative_units,
                b.undecodable
            ),
            (11, 15, 4, 7, 107, 1)
        );
        assert_eq!(b.counts.len(), 3);
        assert_eq!(b.counts[0].units, 3, "two big-ticket records in minute 1");
        // A replay rebuilds the same bytes.
        assert_eq!(
            Batch::seal("gw-a", 7, &entries, 100, usize::MAX)
                .0
                .to_bytes(),
            b.to_bytes()
        );
    }

    /// A batch ends before the record that would make one count too many; the next batch
    /// starts with it, and the two together hold every record once.
    #[test]
    fn a_batch_is_bounded_by_its_counts_not_its_records() {
        let call = |seq, owner| {
            entry(
                seq,
                owner,
                "ocr.general_basic",
                "GeneralBasicOCR",
                60_000,
                1,
            )
        };
        let mut entries: Vec<SpoolEntry> = (0..1000).map(|i| call(i + 1, 1 + i % 2)).collect();
        entries.push(call(1001, 3));
        entries.push(call(1002, 1));
        let (first, taken) = Batch::seal("gw-a", 1, &entries, 0, 2);
        assert_eq!(taken, 1000, "a thousand records of two counts");
        assert_eq!(
            (first.counts.len(), first.records, first.last_seq),
            (2, 1000, 1000)
        );
        let (second, rest) = Batch::seal("gw-a", 2, &entries[taken..], first.cumulative_units, 2);
        assert_eq!(rest, 2);
        assert_eq!(
            (second.first_seq, second.last_seq, second.records),
            (1001, 1002, 2)
        );
        assert_eq!(second.cumulative_units, 1002);
        // One count too many for a bound of one: the first record is always taken.
        assert_eq!(Batch::seal("gw-a", 3, &entries[1000..], 0, 1).1, 1);
    }
}
