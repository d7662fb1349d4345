//! Sealed batches: counts, not calls, on the wire.
//!
//! A batch holds one contiguous range of spool sequence numbers, aggregated into counts per
//! (owner UIN, billing item, interface, Beijing-time minute). Its id is
//! `<gateway id>-<batch seq>`; a sealed batch is written to disk before it is published, so a
//! replay after a crash re-publishes the same bytes under the same id, and the broker and the
//! ledger can deduplicate on it.
//!
//! State on disk (`<spool dir>/`):
//! - `pending/<batch id>.json`: sealed, not yet acknowledged by the sink;
//! - `state.json`: the gateway id, the last acknowledged ("shipped") batch and sequence, and
//!   the running totals (written atomically, fsynced before any segment is released).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::record;
use super::spool::SpoolEntry;

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
    pub counts: Vec<Count>,
}

/// (owner, billing item, interface, minute) of a count, borrowed from the spool's bytes.
type CountKey<'a> = (u64, Cow<'a, str>, Cow<'a, str>, i64);

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
        let mut counts: BTreeMap<CountKey<'_>, (u64, u64)> = BTreeMap::new();
        let mut undecodable = 0;
        let mut taken = 0;
        for e in entries {
            match record::decode(&e.payload) {
                Ok(r) => {
                    let minute = r.time_unix_ms.div_euclid(60_000) * 60;
                    let key = (r.owner_uin, r.billing_item, r.action, minute);
                    if taken > 0 && counts.len() >= max_counts && !counts.contains_key(&key) {
                        break;
                    }
                    let c = counts.entry(key).or_default();
                    c.0 += u64::from(r.units);
                    c.1 += 1;
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
                |((owner_uin, billing_item, interface, minute), (units, records))| Count {
                    owner_uin,
                    billing_item: billing_item.into_owned(),
                    interface: interface.into_owned(),
                    minute,
                    units,
                    records,
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
            counts,
        };
        (batch, taken)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a batch serializes")
    }
}

/// What survives restarts besides the spool and the pending batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipState {
    pub gateway_id: String,
    /// The last batch the sink acknowledged, and its last spool sequence.
    pub shipped_batch_seq: u64,
    pub shipped_seq: u64,
    pub shipped_cumulative_units: u64,
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync the dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// The pending batches and the ship state of one spool directory.
pub struct BatchStore {
    pending: PathBuf,
    state_path: PathBuf,
}

impl BatchStore {
    pub fn open(spool_dir: &Path) -> std::io::Result<BatchStore> {
        let pending = spool_dir.join("pending");
        fs::create_dir_all(&pending)?;
        Ok(BatchStore {
            pending,
            state_path: spool_dir.join("state.json"),
        })
    }

    pub fn state(&self) -> std::io::Result<Option<ShipState>> {
        match fs::read(&self.state_path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn save_state(&self, s: &ShipState) -> std::io::Result<()> {
        write_atomic(
            &self.state_path,
            &serde_json::to_vec_pretty(s).expect("serializes"),
        )
    }

    /// Sealed, unacknowledged batches, by batch sequence.
    pub fn pending(&self) -> std::io::Result<Vec<Batch>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.pending)? {
            let p = e?.path();
            if p.extension().and_then(|x| x.to_str()) != Some("json") {
                continue;
            }
            let bytes = fs::read(&p)?;
            match serde_json::from_slice::<Batch>(&bytes) {
                Ok(b) => out.push(b),
                Err(err) => {
                    // A sealed file is written atomically, so this is disk damage: keep the
                    // file aside for a person, and say so loudly.
                    tracing::error!(path = %p.display(), error = %err, "unreadable sealed batch; moved aside");
                    let _ = fs::rename(&p, p.with_extension("corrupt"));
                }
            }
        }
        out.sort_by_key(|b| b.batch_seq);
        Ok(out)
    }

    pub fn write_pending(&self, b: &Batch) -> std::io::Result<()> {
        write_atomic(
            &self.pending.join(format!("{}.json", b.batch_id)),
            &b.to_bytes(),
        )
    }

    pub fn remove_pending(&self, batch_id: &str) -> std::io::Result<()> {
        match fs::remove_file(self.pending.join(format!("{batch_id}.json"))) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Reads every batch file (`*.json`) of a directory, recursively one level (`applied/`).
pub fn read_batch_dir(dir: &Path) -> std::io::Result<Vec<Batch>> {
    let mut out = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("applied")] {
        let Ok(rd) = fs::read_dir(&sub) else { continue };
        for e in rd {
            let p = e?.path();
            if p.extension().and_then(|x| x.to_str()) == Some("json") && p.is_file() {
                let bytes = fs::read(&p)?;
                out.push(
                    serde_json::from_slice(&bytes)
                        .map_err(|e| std::io::Error::other(format!("{}: {e}", p.display())))?,
                );
            }
        }
    }
    out.sort_by(|a: &Batch, b: &Batch| {
        (&a.gateway_id, a.batch_seq).cmp(&(&b.gateway_id, b.batch_seq))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::UsageRecord;

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
