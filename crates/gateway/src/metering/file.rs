//! The local file sink: one JSON line per usage record, appended with a single `write(2)` per
//! call on an `O_APPEND` descriptor.
//!
//! No lock is taken: on Linux, `O_APPEND` writes to a regular file are atomic with respect to
//! each other (the kernel serialises them on the inode), so concurrent calls never interleave
//! their lines. A line is formatted in a thread-local buffer first, so the write is whole.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{SinkError, Ticket, UsageRecord, UsageSink};

#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: File,
}

impl FileSink {
    /// Opens (creating it and its directory if needed) the file at `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<FileSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(FileSink {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every record of a file written by this sink (for tests and tools).
    pub fn read_all(path: &Path) -> std::io::Result<Vec<UsageRecord>> {
        tollgate_usage::jsonl::read_all(path)
    }
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl UsageSink for FileSink {
    fn submit(&self, records: &[UsageRecord]) -> Ticket {
        let result = LINE.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            for r in records {
                serde_json::to_writer(&mut *buf, r).map_err(|e| SinkError(e.to_string()))?;
                buf.push(b'\n');
            }
            (&self.file)
                .write_all(&buf)
                .map_err(|e| SinkError(format!("{}: {e}", self.path.display())))
        });
        Ticket::Done(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn record(i: u32) -> UsageRecord {
        UsageRecord {
            request_id: format!("req-{i}"),
            owner_uin: 1,
            uin: 2,
            service: "ocr".into(),
            action: "GeneralBasicOCR".into(),
            billing_item: "ocr.general_basic".into(),
            units: i,
            time_unix_ms: 1_700_000_000_000,
            unresolved_library: None,
        }
    }

    #[test]
    fn concurrent_appends_stay_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/usage.jsonl");
        let sink = Arc::new(FileSink::open(&path).unwrap());
        std::thread::scope(|s| {
            for t in 0..4 {
                let sink = Arc::clone(&sink);
                s.spawn(move || {
                    for i in 0..500 {
                        let r = record(t * 1000 + i);
                        assert!(matches!(sink.submit(&[r.clone(), r]), Ticket::Done(Ok(()))));
                    }
                });
            }
        });
        let all = FileSink::read_all(&path).unwrap();
        assert_eq!(all.len(), 4000);
        let mut ids: Vec<u32> = all.iter().map(|r| r.units).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 2000);
    }
}
