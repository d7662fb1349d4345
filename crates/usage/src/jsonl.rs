//! Usage records as JSON lines: what the gateway's `file` sink writes (`metering.sink =
//! "file"`) and `tollgate statement --usage FILE` reads.

use std::path::Path;

use crate::UsageRecord;

/// Every record of a JSON-lines usage file.
pub fn read_all(path: &Path) -> std::io::Result<Vec<UsageRecord>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}
