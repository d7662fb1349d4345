//! The local ledger directory (`metering.ship_to = "local"`, the embedded default): sealed
//! batches as `<batch id>.json` files, moved into `applied/` once the settlement consumer has
//! applied them. The gateway writes it, `tollgate consumer --batch-dir` and
//! `tollgate statement --ledger-dir` read it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::batch::Batch;

/// Where a batch waits to be applied.
pub fn batch_path(dir: &Path, batch_id: &str) -> PathBuf {
    dir.join(format!("{batch_id}.json"))
}

/// Where an applied batch is kept.
pub fn applied_path(dir: &Path, batch_id: &str) -> PathBuf {
    dir.join("applied").join(format!("{batch_id}.json"))
}

/// True if the batch is in the directory, applied or not.
pub fn holds(dir: &Path, batch_id: &str) -> bool {
    batch_path(dir, batch_id).exists() || applied_path(dir, batch_id).exists()
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
