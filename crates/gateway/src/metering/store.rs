//! The gateway's shipping state in its spool directory:
//! - `pending/<batch id>.json`: sealed, not yet acknowledged by the sink;
//! - `state.json`: the gateway id, the last acknowledged ("shipped") batch and sequence, and
//!   the running totals (written atomically, fsynced before any segment is released).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tollgate_usage::batch::Batch;
use tollgate_usage::ledger_dir::write_atomic;

/// What survives restarts besides the spool and the pending batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShipState {
    pub gateway_id: String,
    /// Chosen at random when this state (the spool's numbering) began: a spool wiped and
    /// started again under the same gateway id numbers its batches from 1 again, and without
    /// it they would reuse ids the broker's duplicate window and the ledger already hold, and
    /// be dropped as duplicates. Empty in states written before it existed (their batches
    /// keep the ids they had).
    #[serde(default)]
    pub incarnation: String,
    /// The last batch the sink acknowledged, and its last spool sequence.
    pub shipped_batch_seq: u64,
    pub shipped_seq: u64,
    pub shipped_cumulative_units: u64,
}

/// The pending batches and the ship state of one spool directory.
pub struct BatchStore {
    pending: PathBuf,
    state_path: PathBuf,
}

impl ShipState {
    /// A new state for `gateway_id`, with a fresh incarnation.
    pub fn new(gateway_id: &str) -> ShipState {
        ShipState {
            gateway_id: gateway_id.to_owned(),
            incarnation: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            ..Default::default()
        }
    }

    /// The name this spool's batches and totals travel under: the gateway id and the
    /// incarnation (`gw-1-3fa94c1e`), which names its batch ids and subjects.
    pub fn wire_id(&self) -> String {
        if self.incarnation.is_empty() {
            self.gateway_id.clone()
        } else {
            format!("{}-{}", self.gateway_id, self.incarnation)
        }
    }
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
