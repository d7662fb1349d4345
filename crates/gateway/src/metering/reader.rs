//! Reading the spool forward from a sequence number without re-reading whole segments: the
//! reader keeps its segment and byte offset and parses only what was appended since. In the
//! active segment it reads only up to where the records end (the rest is reserved space), as
//! the spool publishes it in its [`ActiveSegment`].

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::spool::{ActiveSegment, SpoolEntry, frame_at, segments};

pub struct SpoolReader {
    dir: PathBuf,
    /// The segment being read: its first sequence, and the offset of the next frame.
    segment: Option<(u64, PathBuf)>,
    offset: u64,
    /// Entries at or below this are skipped.
    after: u64,
    buf: Vec<u8>,
    /// The writing spool's active segment, if the spool is open in this process.
    active: Option<Arc<ActiveSegment>>,
}

impl SpoolReader {
    /// A reader of the entries above `after`.
    pub fn new(dir: &Path, after: u64) -> SpoolReader {
        SpoolReader {
            dir: dir.to_path_buf(),
            segment: None,
            offset: 0,
            after,
            buf: Vec::new(),
            active: None,
        }
    }

    /// Reads the active segment only up to the records `active` says were written, not into
    /// the space reserved after them.
    pub fn bounded_by(mut self, active: Arc<ActiveSegment>) -> SpoolReader {
        self.active = Some(active);
        self
    }

    /// Up to `max` entries above the last one read, none above `up_to` (the writer's confirmed
    /// sequence: a complete frame beyond it may be a write still in progress elsewhere).
    pub fn read(&mut self, up_to: u64, max: usize) -> std::io::Result<Vec<SpoolEntry>> {
        let mut out = Vec::new();
        loop {
            let segs = segments(&self.dir)?;
            if self.segment.is_none() {
                // Start in the last segment whose first sequence is at or below after + 1.
                let start = segs
                    .iter()
                    .rev()
                    .find(|(first, _)| *first <= self.after + 1)
                    .or(segs.first())
                    .cloned();
                let Some(s) = start else { return Ok(out) };
                self.segment = Some(s);
                self.offset = 0;
            }
            let (first, path) = self.segment.clone().expect("set above");
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Released under us (everything in it was shipped): start over.
                    self.segment = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            f.seek(SeekFrom::Start(self.offset))?;
            self.buf.clear();
            // The active segment is read up to its records; any other is final (the writer
            // truncated it before another became active) and is read to its end.
            let active_end = self.active.as_ref().and_then(|a| a.written_len(first));
            match active_end {
                Some(end) => (&mut f)
                    .take(end.saturating_sub(self.offset))
                    .read_to_end(&mut self.buf)?,
                None => f.read_to_end(&mut self.buf)?,
            };
            let mut at = 0usize;
            let mut stopped = false;
            while at < self.buf.len() {
                if out.len() >= max {
                    stopped = true;
                    break;
                }
                match frame_at(&self.buf, at) {
                    Some((entry, end)) => {
                        if entry.seq > up_to {
                            stopped = true;
                            break;
                        }
                        if entry.seq > self.after {
                            self.after = entry.seq;
                            out.push(entry);
                        }
                        at = end;
                    }
                    None => {
                        // Corruption (recovery counted it) or the start of a write still in
                        // progress: skip to the next frame that checks out, if there is one.
                        match (at + 1..self.buf.len()).find(|i| frame_at(&self.buf, *i).is_some()) {
                            Some(next) => at = next,
                            None => break,
                        }
                    }
                }
            }
            self.offset += at as u64;
            if out.len() >= max {
                return Ok(out);
            }
            // At the end of this segment: move on if a newer one exists and holds more. A final
            // segment read to its end is left even when numbers are missing before the next
            // one (frames lost to corruption, counted by recovery): waiting for them would
            // stall sealing forever.
            let read_whole = active_end.is_none() && !stopped;
            match segs.iter().find(|(f, _)| *f > first) {
                Some(next) if self.after < up_to && (next.0 <= self.after + 1 || read_whole) => {
                    if next.0 > self.after + 1 {
                        tracing::warn!(
                            missing_from = self.after + 1,
                            missing_to = next.0 - 1,
                            segment = first,
                            "spool records missing at the end of a segment (corrupt or lost): sealing goes on after them"
                        );
                        self.after = next.0 - 1;
                    }
                    self.segment = Some(next.clone());
                    self.offset = 0;
                }
                _ => return Ok(out),
            }
        }
    }
}
