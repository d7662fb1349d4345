//! The durable local spool: every usage record is in the page cache (copied into the mapped
//! active segment) before the response that earned it is allowed to complete, so a SIGKILL
//! loses no call whose answer the client got.
//!
//! Layout: `segment-<first seq, 20 digits>.log` files of frames
//! `[len: u32 LE][crc32c: u32 LE][seq: u64 LE][payload: len − 8 bytes]`, the CRC covering seq
//! and payload. Sequence numbers are per gateway instance, monotonic, assigned by whichever
//! call is writing (one at a time), and never reused or renumbered.
//!
//! The active segment is preallocated and mapped (`segment::MappedSegment`): a record is a copy
//! into the page cache, not a `write(2)`, which took the spool's cost per billable call from
//! about 5 µs to about 2 µs (loadtest/RESULTS.md). Its reserved tail reads as zeros until
//! written; a segment is truncated to its records when the spool rolls past it or closes, and
//! recovery cuts the zero tail a killed gateway leaves. Rolling happens before a group of
//! records would not fit, so a frame never spans two segments.
//!
//! Group commit without a handoff (leader/follower): the call that finds no write in
//! progress becomes the leader and appends its own record and everything other calls queued
//! meanwhile, looping until the queue is empty; a call that finds a write in progress queues
//! its record and waits for its ticket, which the leader completes. No call ever waits on the
//! writer's lock (followers only push to a queue), and sequence numbers follow file order
//! because only the leader assigns them. An earlier design handed every record to a writer
//! thread (later a task); the extra wake-ups on the way in and out cost more throughput in the
//! side-by-side benchmark than a direct write (loadtest/RESULTS.md).
//! `fdatasync` runs on its own interval (`fsync_interval_ms`) on a syncer thread that only
//! clones the descriptor under the lock, so it never blocks writers; the page cache alone
//! already survives SIGKILL, fsync is for power loss.
//!
//! Recovery on open cuts a torn tail (an incomplete frame after the last valid one of the
//! newest segment) and any zero tail left by preallocation, skips and counts corrupt frames
//! (resynchronising on the next valid frame), and continues numbering after the highest
//! sequence seen.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::segment::MappedSegment;
use super::{SinkError, Ticket, UsageRecord, UsageSink};

const HEADER: usize = 16;
/// A frame larger than this is corruption, not a record.
const MAX_FRAME: u32 = 1 << 20;

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    /// The size of a segment: its disk blocks are reserved when it is opened, and the spool
    /// rolls to a new one before a group of records would not fit.
    pub segment_bytes: u64,
    /// `fdatasync` at most this often (zero: after every write).
    pub fsync_interval: Duration,
    /// The disk bound: at this many bytes of unshipped segments, the spool stops accepting.
    pub max_bytes: u64,
}

/// Counters the spool exposes (wired to Prometheus by the caller).
#[derive(Debug, Default)]
pub struct SpoolStats {
    /// Highest sequence in the page cache (copied into the mapped segment).
    pub written_seq: AtomicU64,
    /// Highest sequence covered by an `fdatasync`.
    pub durable_seq: AtomicU64,
    /// Bytes of records in the segments on disk (the active segment's reserved tail is not
    /// counted: it is at most one `segment_bytes` more).
    pub bytes: AtomicU64,
    /// Corrupt frames skipped at recovery.
    pub corrupt_frames: AtomicU64,
    /// Bytes truncated from a torn tail at recovery.
    pub torn_bytes: AtomicU64,
    pub fsyncs: AtomicU64,
    /// Cumulative fsync time, nanoseconds.
    pub fsync_nanos: AtomicU64,
    /// fdatasync calls that failed (the records they covered stay queued for the next).
    pub fsync_errors: AtomicU64,
    pub write_errors: AtomicU64,
}

/// Syncs every file, trying all of them even after a failure; the first error.
fn sync_all_of(files: &[File]) -> std::io::Result<()> {
    let mut first = Ok(());
    for f in files {
        if let Err(e) = f.sync_data()
            && first.is_ok()
        {
            first = Err(e);
        }
    }
    first
}

/// Called with the duration of each fdatasync (the metrics histogram).
pub type FsyncObserver = Box<dyn Fn(Duration) + Send + Sync>;

struct Job {
    payloads: Vec<Vec<u8>>,
    done: tokio::sync::oneshot::Sender<Result<(), SinkError>>,
}

/// What the leader owns while it writes (and the syncer briefly, to clone the descriptor).
struct WriterState {
    next_seq: u64,
    /// The first sequence of the active segment (its name).
    segment_first: u64,
    /// The active segment; `None` once the spool is closed.
    segment: Option<MappedSegment>,
    /// Some write since the last fdatasync.
    unsynced: bool,
    /// Segments rolled since the last sync: synced by the syncer before it syncs the current one.
    rolled: Vec<File>,
}

/// Where the active segment's records end, for readers of the spool's files: beyond it the
/// segment's reserved tail reads as zeros.
#[derive(Debug, Default)]
pub struct ActiveSegment {
    first_seq: AtomicU64,
    len: AtomicU64,
}

impl ActiveSegment {
    /// The bytes written to the segment whose first sequence is `first_seq`, if it is the
    /// active one (other segments end where their files end). The writer publishes the length
    /// before `SpoolStats::written_seq`, and truncates a segment before another becomes the
    /// active one, so a reader that loaded `written_seq` first finds every record up to it.
    pub fn written_len(&self, first_seq: u64) -> Option<u64> {
        (self.first_seq.load(Ordering::Acquire) == first_seq)
            .then(|| self.len.load(Ordering::Acquire))
    }

    fn publish(&self, first_seq: u64, len: u64) {
        if self.first_seq.load(Ordering::Relaxed) != first_seq {
            self.len.store(0, Ordering::Release);
            self.first_seq.store(first_seq, Ordering::Release);
        }
        self.len.store(len, Ordering::Release);
    }
}

struct Shared {
    config: SpoolConfig,
    stats: Arc<SpoolStats>,
    accepting: AtomicBool,
    /// True while a leader writes.
    writing: AtomicBool,
    /// Records queued by followers while a leader writes. Held only to push or take.
    queue: Mutex<Vec<Job>>,
    state: Mutex<WriterState>,
    active: Arc<ActiveSegment>,
    observe_fsync: Option<FsyncObserver>,
    closed: AtomicBool,
    /// `spool.lock`, locked (`flock`) while this spool is open: a second gateway on the same
    /// directory would renumber records and truncate the segment this one has mapped.
    _lock: File,
}

pub use tollgate_usage::record::SpoolEntry;

/// What recovery found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    pub max_seq: u64,
    pub corrupt_frames: u64,
    pub torn_bytes: u64,
}

/// The spool. Dropping it stops the writer after it has written everything queued.
pub struct Spool {
    shared: Arc<Shared>,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    recovery: Recovery,
}

fn segment_name(first_seq: u64) -> String {
    format!("segment-{first_seq:020}.log")
}

/// The segments of `dir`, oldest first, with their first sequence numbers.
pub fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix("segment-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((n, e.path()));
    }
    out.sort();
    Ok(out)
}

/// True if a valid frame starts anywhere in `bytes[from..until]`.
fn valid_frame_after(bytes: &[u8], from: usize, until: usize) -> bool {
    (from..until.min(bytes.len().saturating_sub(HEADER - 1)))
        .any(|at| frame_at(bytes, at).is_some())
}

/// The valid frame starting at `at`, as (entry, end offset).
pub(crate) fn frame_at(bytes: &[u8], at: usize) -> Option<(SpoolEntry, usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if !(8..=MAX_FRAME).contains(&len) {
        return None;
    }
    let end = at + 8 + len as usize;
    let body = bytes.get(at + 8..end)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    if seq == 0 {
        // Sequences start at 1: a frame numbered 0 was never written by a spool, whatever
        // its checksum says (recovery counted it as a record that no reader would return).
        return None;
    }
    Some((
        SpoolEntry {
            seq,
            payload: body[8..].to_vec(),
        },
        end,
    ))
}

/// One segment's bytes, parsed.
struct Parsed {
    entries: Vec<SpoolEntry>,
    /// The offset after the last valid frame.
    good_end: usize,
    /// The offset after the last non-zero byte: a segment's reserved tail is zeros, and no
    /// valid frame starts with a zero length. Bytes in `good_end..data_end` are a torn or
    /// corrupt tail.
    data_end: usize,
    /// Corrupt regions skipped (each resynchronised on the next valid frame), and a corrupt
    /// tail.
    corrupt: u64,
}

/// Parses the frames of one segment's bytes. Bytes after the last valid frame are the
/// reserved tail if they are zeros, a torn tail if they are an incomplete frame, corrupt
/// otherwise.
fn parse_frames(bytes: &[u8]) -> Parsed {
    let data_end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let mut entries = Vec::new();
    let mut corrupt = 0;
    let mut at = 0;
    let mut good_end = 0;
    while at < bytes.len() {
        if let Some((entry, end)) = frame_at(bytes, at) {
            entries.push(entry);
            at = end;
            good_end = end;
            continue;
        }
        if at >= data_end {
            // Only zeros from here: space reserved and never written.
            break;
        }
        // Not a valid frame here. If no valid frame follows, this is the tail: torn (a
        // plausible header whose frame runs past the written data, or fewer bytes than a
        // header) or corrupt garbage.
        if !valid_frame_after(bytes, at + 1, data_end) {
            let header_ok = bytes.get(at..at + 4).is_some_and(|h| {
                let len = u32::from_le_bytes(h.try_into().expect("4 bytes"));
                (8..=MAX_FRAME).contains(&len) && at + 8 + len as usize > data_end
            });
            let torn = header_ok || data_end - at < HEADER;
            if !torn {
                corrupt += 1;
            }
            break;
        }
        // Corruption in the middle: count it, skip to the next valid frame.
        corrupt += 1;
        at += 1;
        while at < bytes.len() && frame_at(bytes, at).is_none() {
            at += 1;
        }
    }
    Parsed {
        entries,
        good_end,
        data_end,
        corrupt,
    }
}

/// Reads every valid entry of the spool in `dir` with `seq > after`, in order.
pub fn read_after(dir: &Path, after: u64, up_to: u64) -> std::io::Result<Vec<SpoolEntry>> {
    let segs = segments(dir)?;
    let mut out = Vec::new();
    for (i, (first, path)) in segs.iter().enumerate() {
        // Skip segments wholly at or below `after`.
        if let Some((next_first, _)) = segs.get(i + 1)
            && *next_first <= after + 1
        {
            continue;
        }
        if *first > up_to {
            break;
        }
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        out.extend(
            parse_frames(&bytes)
                .entries
                .into_iter()
                .filter(|e| e.seq > after && e.seq <= up_to),
        );
    }
    Ok(out)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Recovers the spool in `dir`: truncates a torn tail and the reserved zero tail a killed
/// gateway leaves, counts corrupt frames, finds the highest sequence.
pub fn recover(dir: &Path) -> std::io::Result<Recovery> {
    let segs = segments(dir)?;
    let mut r = Recovery {
        segments: segs.len(),
        ..Default::default()
    };
    for (i, (_, path)) in segs.iter().enumerate() {
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        let parsed = parse_frames(&bytes);
        r.records += parsed.entries.len() as u64;
        r.corrupt_frames += parsed.corrupt;
        if let Some(last) = parsed.entries.iter().map(|e| e.seq).max() {
            r.max_seq = r.max_seq.max(last);
        }
        let newest = i + 1 == segs.len();
        let only_zeros_after = parsed.data_end <= parsed.good_end;
        if parsed.good_end < bytes.len() && (newest || only_zeros_after) {
            // Only the newest segment can have a torn tail (records are appended to the
            // active segment only); cut it so appends follow valid frames. Any segment can
            // have a reserved zero tail (a kill while it was active, or between opening the
            // next one and truncating it). Corrupt frames before `good_end` stay (they are
            // skipped on every read).
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(parsed.good_end as u64)?;
            f.sync_all()?;
            r.torn_bytes += parsed.data_end.saturating_sub(parsed.good_end) as u64;
        }
    }
    Ok(r)
}

impl Spool {
    /// Opens (recovering) or creates the spool. `floor` is a sequence the caller knows was
    /// used (e.g. the last sealed one): numbering continues above both it and what recovery
    /// found.
    pub fn open(config: SpoolConfig, floor: u64) -> std::io::Result<Spool> {
        Self::open_observed(config, floor, None)
    }

    /// Like [`Spool::open`], calling `observe_fsync` with the duration of every fdatasync.
    pub fn open_observed(
        config: SpoolConfig,
        floor: u64,
        observe_fsync: Option<FsyncObserver>,
    ) -> std::io::Result<Spool> {
        fs::create_dir_all(&config.dir)?;
        let lock = File::create(config.dir.join("spool.lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::other(format!(
                    "the spool at {} is in use by another gateway process (metering.spool_dir)",
                    config.dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let recovery = recover(&config.dir)?;
        let next_seq = recovery.max_seq.max(floor) + 1;
        let stats = Arc::new(SpoolStats::default());
        stats.written_seq.store(next_seq - 1, Ordering::SeqCst);
        stats.durable_seq.store(next_seq - 1, Ordering::SeqCst);
        stats
            .corrupt_frames
            .store(recovery.corrupt_frames, Ordering::SeqCst);
        stats
            .torn_bytes
            .store(recovery.torn_bytes, Ordering::SeqCst);
        let bytes: u64 = segments(&config.dir)?
            .iter()
            .filter_map(|(_, p)| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        stats.bytes.store(bytes, Ordering::SeqCst);
        // Appends continue in the newest segment (recovery left it ending on a valid frame).
        let (segment_first, written) = match segments(&config.dir)?.last() {
            Some((first, path)) => (*first, fs::metadata(path)?.len()),
            None => (next_seq, 0),
        };
        let segment = MappedSegment::open(
            &config.dir.join(segment_name(segment_first)),
            config.segment_bytes,
            written,
        )?;
        fsync_dir(&config.dir)?;
        let active = Arc::new(ActiveSegment::default());
        active.publish(segment_first, segment.len());
        let shared = Arc::new(Shared {
            accepting: AtomicBool::new(bytes < config.max_bytes),
            writing: AtomicBool::new(false),
            queue: Mutex::new(Vec::new()),
            state: Mutex::new(WriterState {
                next_seq,
                segment_first,
                segment: Some(segment),
                unsynced: false,
                rolled: Vec::new(),
            }),
            active,
            stats,
            observe_fsync,
            closed: AtomicBool::new(false),
            _lock: lock,
            config,
        });
        let syncer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("tollgate-spool-sync".into())
                .spawn(move || shared.run_syncer())?
        };
        Ok(Spool {
            shared,
            syncer: Mutex::new(Some(syncer)),
            recovery,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.shared.config.dir
    }

    pub fn stats(&self) -> &Arc<SpoolStats> {
        &self.shared.stats
    }

    /// Where the active segment's records end (for a [`super::reader::SpoolReader`]).
    pub fn active_segment(&self) -> &Arc<ActiveSegment> {
        &self.shared.active
    }

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Appends raw payloads (one record each) and returns a receiver that completes once they
    /// are written (at once when no other write is in progress, the usual case; else when the
    /// writing call has written them).
    pub fn append(
        &self,
        payloads: Vec<Vec<u8>>,
    ) -> tokio::sync::oneshot::Receiver<Result<(), SinkError>> {
        match self.shared.submit(payloads) {
            Ticket::Pending(rx) => rx,
            Ticket::Done(result) => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let _ = tx.send(result);
                rx
            }
        }
    }

    /// Deletes segments whose every record is at or below `shipped_seq`. The caller must have
    /// made `shipped_seq` durable first (a segment is never deleted ahead of its cursor).
    pub fn release(&self, shipped_seq: u64) -> std::io::Result<u64> {
        let segs = segments(&self.shared.config.dir)?;
        // Never the active segment, nor one the writer is rolling away from (it becomes
        // releasable once truncated and a newer one is active): their files still hold the
        // reserved space, not just records.
        let active_first = self.shared.active.first_seq.load(Ordering::Acquire);
        let mut freed = 0;
        for w in segs.windows(2) {
            let ((first, path), (next_first, _)) = (&w[0], &w[1]);
            if *first < active_first && next_first - 1 <= shipped_seq {
                freed += fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(path)?;
            }
        }
        if freed > 0 {
            fsync_dir(&self.shared.config.dir)?;
            // Saturating: a segment whose truncation failed frees more than its records.
            let left = self
                .shared
                .stats
                .bytes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                    Some(b.saturating_sub(freed))
                })
                .expect("the closure always returns Some")
                .saturating_sub(freed);
            if left < self.shared.config.max_bytes * 9 / 10
                && !self.shared.accepting.swap(true, Ordering::SeqCst)
            {
                tracing::warn!(
                    bytes = left,
                    "spool below its disk bound again: accepting calls"
                );
            }
        }
        Ok(freed)
    }

    /// Writes anything queued, syncs, and stops the syncer.
    pub async fn shutdown(&self) {
        let handle = self.syncer.lock().expect("not poisoned").take();
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        self.shared.final_sync();
    }

    /// [`Spool::shutdown`] without an async context (waits for the syncer thread).
    pub fn close(&self) {
        let handle = self.syncer.lock().expect("not poisoned").take();
        self.shared.closed.store(true, Ordering::SeqCst);
        if let Some(h) = handle {
            let _ = h.join();
        }
        self.shared.final_sync();
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

impl UsageSink for Spool {
    fn submit(&self, records: &[UsageRecord]) -> Ticket {
        if let [record] = records {
            // A call's one record: no list of payloads unless it has to wait in the queue.
            return self
                .shared
                .submit([tollgate_usage::record::to_payload(record)]);
        }
        let payloads: Vec<Vec<u8>> = records
            .iter()
            .map(tollgate_usage::record::to_payload)
            .collect();
        self.shared.submit(payloads)
    }

    fn healthy(&self) -> bool {
        self.shared.accepting.load(Ordering::Relaxed)
    }

    fn accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Writes `payloads` if no write is in progress (leading with them, from where they are),
    /// or queues them, as a list, for the write in progress.
    fn submit<P>(&self, payloads: P) -> Ticket
    where
        P: AsRef<[Vec<u8>]> + Into<Vec<Vec<u8>>>,
    {
        if self.closed.load(Ordering::SeqCst) {
            return Ticket::Done(Err(SinkError("the spool is closed".into())));
        }
        // Fast path: nobody is writing; lead with our own records.
        if self
            .writing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let mine = self.lead(Some(payloads.as_ref()));
            return Ticket::Done(mine.expect("the leader's own result"));
        }
        self.follow(payloads.into())
    }

    /// A write is in progress: queue `payloads` for its leader (or lead, if it just ended).
    fn follow(&self, payloads: Vec<Vec<u8>>) -> Ticket {
        // A write is in progress: queue, and make sure somebody writes what we queued.
        let (done, rx) = tokio::sync::oneshot::channel();
        self.queue
            .lock()
            .expect("not poisoned")
            .push(Job { payloads, done });
        if self
            .writing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            // The leader finished between our first attempt and the push.
            self.lead(None);
        }
        Ticket::Pending(rx)
    }

    /// Writes `mine` and every queued job until the queue is empty, then steps down (and
    /// leads again if something was queued meanwhile). Returns the result for `mine`.
    fn lead(&self, mut mine: Option<&[Vec<u8>]>) -> Option<Result<(), SinkError>> {
        let mut mine_result = None;
        loop {
            {
                let mut st = self.state.lock().expect("not poisoned");
                loop {
                    let jobs = std::mem::take(&mut *self.queue.lock().expect("not poisoned"));
                    if jobs.is_empty() && mine.is_none() {
                        break;
                    }
                    let own = mine.take();
                    let result = self.write(&mut st, own, &jobs);
                    if result.is_err() {
                        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if self.config.fsync_interval.is_zero() && result.is_ok() {
                        self.sync_locked(&mut st);
                    }
                    if own.is_some() {
                        mine_result = Some(result.clone());
                    }
                    for j in jobs {
                        let _ = j.done.send(result.clone());
                    }
                }
            }
            self.writing.store(false, Ordering::SeqCst);
            // A follower may have queued after our last look and before we stepped down.
            let pending = !self.queue.lock().expect("not poisoned").is_empty();
            if !pending
                || self
                    .writing
                    .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                return mine_result;
            }
        }
    }

    /// Frames `own` then `jobs` into the active segment (rolling first if they would not
    /// fit): once this returns, they are in the page cache.
    fn write(
        &self,
        st: &mut WriterState,
        own: Option<&[Vec<u8>]>,
        jobs: &[Job],
    ) -> Result<(), SinkError> {
        let payloads = || {
            own.into_iter()
                .flatten()
                .chain(jobs.iter().flat_map(|j| j.payloads.iter()))
        };
        let added: u64 = payloads().map(|p| (HEADER + p.len()) as u64).sum();
        self.make_room(st, added)?;
        let segment = st.segment.as_mut().expect("make_room checked it is open");
        if segment.remaining() < added {
            // make_room's promise broken: refuse the group whole rather than write part of it.
            return Err(SinkError(
                "the spool segment has no room for the records".into(),
            ));
        }
        let mut seq = st.next_seq;
        for p in payloads() {
            let len = (8 + p.len()) as u32;
            let crc = crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), p);
            let frame = segment
                .append(HEADER + p.len())
                .expect("room for the whole group was checked above");
            frame[0..4].copy_from_slice(&len.to_le_bytes());
            frame[4..8].copy_from_slice(&crc.to_le_bytes());
            frame[8..16].copy_from_slice(&seq.to_le_bytes());
            frame[HEADER..].copy_from_slice(p);
            seq += 1;
        }
        st.next_seq = seq;
        st.unsynced = true;
        self.active.publish(st.segment_first, segment.len());
        self.stats.written_seq.store(seq - 1, Ordering::Release);
        let bytes = self.stats.bytes.fetch_add(added, Ordering::SeqCst) + added;
        if bytes >= self.config.max_bytes && self.accepting.swap(false, Ordering::SeqCst) {
            tracing::error!(
                bytes,
                max_bytes = self.config.max_bytes,
                dir = %self.config.dir.display(),
                "spool reached its disk bound: refusing new calls until batches are shipped"
            );
        }
        Ok(())
    }

    /// Makes sure the active segment can take `need` more bytes: rolls to a new segment when
    /// the active one has reached `segment_bytes` or lacks the room. A new segment reserves
    /// `segment_bytes`, or `need` if a group of records is larger.
    fn make_room(&self, st: &mut WriterState, need: u64) -> Result<(), SinkError> {
        let Some(segment) = &mut st.segment else {
            return Err(SinkError("the spool is closed".into()));
        };
        if segment.len() < self.config.segment_bytes && segment.remaining() >= need {
            return Ok(());
        }
        let capacity = self.config.segment_bytes.max(need);
        if segment.len() == 0 {
            // Nothing in it yet: the same file, reserved larger.
            let path = self.config.dir.join(segment_name(st.segment_first));
            *segment = MappedSegment::open(&path, capacity, 0)
                .map_err(|e| SinkError(format!("cannot grow the spool segment: {e}")))?;
            return Ok(());
        }
        // A file left reserved by a roll that failed half-way is empty space: written 0.
        let path = self.config.dir.join(segment_name(st.next_seq));
        let next = MappedSegment::open(&path, capacity, 0)
            .and_then(|s| fsync_dir(&self.config.dir).map(|()| s))
            .map_err(|e| SinkError(format!("cannot roll the spool segment: {e}")))?;
        let old = std::mem::replace(segment, next);
        // Truncated before the new segment is published as the active one (readers rely on
        // it: see `ActiveSegment::written_len`).
        match old.finish() {
            Ok(file) if st.unsynced => st.rolled.push(file),
            Ok(_) => {}
            Err(e) => tracing::error!(
                error = %e,
                first_seq = st.segment_first,
                "cannot truncate a rolled spool segment (recovery will)"
            ),
        }
        st.segment_first = st.next_seq;
        self.active.publish(st.segment_first, 0);
        Ok(())
    }

    /// fdatasync with the state locked (`fsync_interval_ms = 0`, and the final sync).
    fn sync_locked(&self, st: &mut WriterState) {
        if !st.unsynced {
            return;
        }
        let started = Instant::now();
        let rolled = std::mem::take(&mut st.rolled);
        let result = sync_all_of(&rolled)
            .and_then(|()| st.segment.as_ref().map_or(Ok(()), |s| s.file().sync_data()));
        if result.is_err() {
            // Every rolled segment stays queued until a sync of it succeeds.
            st.rolled = rolled;
        } else {
            st.unsynced = false;
        }
        self.synced(result, st.next_seq - 1, started);
    }

    fn synced(&self, result: std::io::Result<()>, covered: u64, started: Instant) {
        match result {
            Ok(()) => {
                self.stats.durable_seq.fetch_max(covered, Ordering::AcqRel);
                self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                let took = started.elapsed();
                self.stats
                    .fsync_nanos
                    .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
                if let Some(observe) = &self.observe_fsync {
                    observe(took);
                }
            }
            Err(e) => {
                self.stats.fsync_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "spool fdatasync failed; retried next round");
            }
        }
    }

    /// The syncer thread: every `fsync_interval`, fdatasync what was written. It holds the
    /// state lock only to clone the descriptors, never across the sync.
    fn run_syncer(&self) {
        let interval = if self.config.fsync_interval.is_zero() {
            Duration::from_millis(100)
        } else {
            self.config.fsync_interval
        };
        while !self.closed.load(Ordering::SeqCst) {
            std::thread::sleep(interval.min(Duration::from_millis(50)));
            if self.config.fsync_interval.is_zero() {
                continue;
            }
            let started = Instant::now();
            self.sync_once();
            // Sleep out the rest of the interval.
            if let Some(rest) = interval.checked_sub(started.elapsed() + Duration::from_millis(50))
            {
                std::thread::sleep(rest);
            }
        }
    }

    /// One round of the syncer: fdatasync the segments rolled since the last round and the
    /// active one. A rolled segment whose sync failed is queued again (it holds records not
    /// yet durable); the active one is retried because it stays unsynced.
    fn sync_once(&self) {
        let (rolled, active, covered) = {
            let mut st = self.state.lock().expect("not poisoned");
            if !st.unsynced {
                return;
            }
            let rolled: Vec<File> = std::mem::take(&mut st.rolled);
            let active = match st.segment.as_ref().map(|s| s.file().try_clone()) {
                Some(Ok(f)) => Some(f),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "cannot clone the spool descriptor to sync it");
                    st.rolled = rolled;
                    return;
                }
                None => None,
            };
            st.unsynced = false;
            (rolled, active, st.next_seq - 1)
        };
        let started = Instant::now();
        let result =
            sync_all_of(&rolled).and_then(|()| active.as_ref().map_or(Ok(()), File::sync_data));
        if result.is_err() {
            let mut st = self.state.lock().expect("not poisoned");
            // Segments rolled meanwhile go after these (older first).
            let newer = std::mem::replace(&mut st.rolled, rolled);
            st.rolled.extend(newer);
            st.unsynced = true;
        }
        self.synced(result, covered, started);
    }

    /// Writes anything still queued, syncs, and truncates the active segment to its records
    /// (at close; later writes fail as the spool is closed).
    fn final_sync(&self) {
        while self
            .writing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            std::thread::yield_now();
        }
        self.lead(None);
        let mut st = self.state.lock().expect("not poisoned");
        self.sync_locked(&mut st);
        if let Some(segment) = st.segment.take()
            && let Err(e) = segment.finish().and_then(|f| f.sync_all())
        {
            tracing::error!(error = %e, "cannot truncate the active spool segment (recovery will)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::reader::SpoolReader;
    use proptest::prelude::*;
    use std::io::Write;

    fn config(dir: &Path) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 4096,
            fsync_interval: Duration::from_millis(5),
            max_bytes: 1 << 30,
        }
    }

    fn append_blocking(s: &Spool, payloads: Vec<Vec<u8>>) {
        let rx = s.append(payloads);
        tokio_test_block(rx).unwrap();
    }

    fn tokio_test_block(
        rx: tokio::sync::oneshot::Receiver<Result<(), SinkError>>,
    ) -> Result<(), SinkError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(rx)
            .unwrap()
    }

    /// Found by the `spool_recovery` fuzz target: a frame numbered 0 with a valid checksum was
    /// counted by recovery as a record, but no reader returns sequence 0.
    #[test]
    fn a_frame_numbered_zero_is_not_a_record() {
        let frame = |seq: u64, payload: &[u8]| {
            let mut body = seq.to_le_bytes().to_vec();
            body.extend_from_slice(payload);
            let mut f = (body.len() as u32).to_le_bytes().to_vec();
            f.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
            f.extend_from_slice(&body);
            f
        };
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = frame(0, b"never written");
        bytes.extend(frame(1, b"one"));
        std::fs::write(dir.path().join(segment_name(1)), &bytes).unwrap();
        let r = recover(dir.path()).unwrap();
        assert_eq!((r.records, r.corrupt_frames), (1, 1));
        assert_eq!(read_after(dir.path(), 0, u64::MAX).unwrap().len(), 1);
    }

    /// A rolled segment whose fdatasync failed stays queued and is synced on a later round
    /// (it was dropped, its records never made durable). `/dev/null` refuses fsync (EINVAL).
    #[test]
    fn a_failed_sync_of_a_rolled_segment_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        // Synced by each write, so the syncer thread stays out of it: the test drives its
        // rounds by hand.
        c.fsync_interval = Duration::ZERO;
        let spool = Spool::open(c, 0).unwrap();
        append_blocking(&spool, vec![b"one".to_vec()]);
        let shared = &spool.shared;
        {
            let mut st = shared.state.lock().unwrap();
            st.rolled.push(File::open("/dev/null").unwrap());
            st.unsynced = true;
        }
        let fsyncs = shared.stats.fsyncs.load(Ordering::SeqCst);
        shared.sync_once();
        assert_eq!(shared.stats.fsync_errors.load(Ordering::SeqCst), 1);
        assert_eq!(shared.state.lock().unwrap().rolled.len(), 1, "still queued");
        assert!(shared.state.lock().unwrap().unsynced);
        assert_eq!(shared.stats.fsyncs.load(Ordering::SeqCst), fsyncs);
        // The disk recovers (here: the failing file is replaced by a real one).
        {
            let mut st = shared.state.lock().unwrap();
            st.rolled[0] = File::open(dir.path()).unwrap();
        }
        shared.sync_once();
        assert!(shared.state.lock().unwrap().rolled.is_empty());
        assert!(!shared.state.lock().unwrap().unsynced);
        assert_eq!(shared.stats.fsyncs.load(Ordering::SeqCst), fsyncs + 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The spool against a `Vec`: whatever is appended (across reopenings) reads back in
        /// order with contiguous sequence numbers.
        #[test]
        fn matches_a_vec_model(batches in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..20), 1..12), reopen_every in 1usize..5) {
            let dir = tempfile::tempdir().unwrap();
            let mut model: Vec<Vec<u8>> = Vec::new();
            let mut spool = Spool::open(config(dir.path()), 0).unwrap();
            for (i, b) in batches.into_iter().enumerate() {
                if i % reopen_every == 0 {
                    drop(spool);
                    spool = Spool::open(config(dir.path()), 0).unwrap();
                }
                model.extend(b.iter().cloned());
                append_blocking(&spool, b);
            }
            drop(spool);
            let got = read_after(dir.path(), 0, u64::MAX).unwrap();
            prop_assert_eq!(got.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(), model.clone());
            prop_assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=model.len() as u64).collect::<Vec<_>>());
        }
    }

    /// Leader/follower group commit under contention: every submitted record is written
    /// exactly once, every ticket completes, and sequence numbers are contiguous in file order.
    #[test]
    fn concurrent_submitters_lose_and_duplicate_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(config(dir.path()), 0).unwrap());
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let spool = Arc::clone(&spool);
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    for i in 0..500u32 {
                        let payload = format!("{t}:{i}").into_bytes();
                        let result = rt.block_on(spool.append(vec![payload])).unwrap();
                        assert_eq!(result, Ok(()));
                    }
                });
            }
        });
        drop(spool);
        let all = read_after(dir.path(), 0, u64::MAX).unwrap();
        assert_eq!(all.len(), 4000);
        let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=4000).collect::<Vec<_>>());
        let mut payloads: Vec<Vec<u8>> = all.into_iter().map(|e| e.payload).collect();
        payloads.sort();
        payloads.dedup();
        assert_eq!(payloads.len(), 4000);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_numbering_continues() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        append_blocking(&spool, (0..5).map(|i| vec![i; 10]).collect());
        drop(spool);
        let (_, last) = segments(dir.path()).unwrap().pop().unwrap();
        // Half a frame, as a crash mid-write leaves it.
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 6, 0]).unwrap();
        drop(f);
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        // The torn bytes counted are those up to the tail's last non-zero byte (a segment's
        // reserved space is zeros, so a trailing zero is not told apart from it).
        assert_eq!(spool.recovery().torn_bytes, 9);
        assert_eq!(spool.recovery().corrupt_frames, 0);
        assert_eq!(spool.recovery().max_seq, 5);
        append_blocking(&spool, vec![b"after".to_vec()]);
        drop(spool);
        let all = read_after(dir.path(), 0, u64::MAX).unwrap();
        assert_eq!(all.len(), 6);
        assert_eq!(
            all[5],
            SpoolEntry {
                seq: 6,
                payload: b"after".to_vec()
            }
        );
    }

    #[test]
    fn corrupt_frames_are_skipped_counted_and_never_renumber() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        append_blocking(&spool, (0..6).map(|i| vec![b'a' + i; 20]).collect());
        drop(spool);
        let (_, seg) = segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        // Flip a payload byte of the 3rd frame (each frame is 16 + 20 bytes).
        bytes[2 * 36 + 20] ^= 0xff;
        // And corrupt the length field of the 5th.
        bytes[4 * 36] = 0xee;
        fs::write(&seg, &bytes).unwrap();
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        assert_eq!(spool.recovery().corrupt_frames, 2);
        assert_eq!(spool.recovery().max_seq, 6);
        append_blocking(&spool, vec![b"next".to_vec()]);
        drop(spool);
        let seqs: Vec<u64> = read_after(dir.path(), 0, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            seqs,
            vec![1, 2, 4, 6, 7],
            "damaged 3 and 5 are skipped; nothing is renumbered"
        );
    }

    #[test]
    fn a_corrupt_tail_after_the_last_good_frame_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        append_blocking(&spool, vec![vec![1; 20], vec![2; 20]]);
        drop(spool);
        let (_, seg) = segments(dir.path()).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[0xff; 50]).unwrap();
        drop(f);
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        assert_eq!(spool.recovery().corrupt_frames, 1);
        assert_eq!(spool.recovery().torn_bytes, 50);
        drop(spool);
        assert_eq!(fs::metadata(&seg).unwrap().len(), 72);
    }

    #[test]
    fn segments_roll_and_are_released_only_below_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        for i in 0..40u8 {
            append_blocking(&spool, vec![vec![i; 500]]);
        }
        let segs = segments(dir.path()).unwrap();
        assert!(segs.len() > 3, "{segs:?}");
        let second_first = segs[1].0;
        spool.release(second_first - 1).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), segs.len() - 1);
        spool.release(u64::MAX).unwrap();
        assert_eq!(
            segments(dir.path()).unwrap().len(),
            1,
            "the open segment stays"
        );
        assert_eq!(
            read_after(dir.path(), 0, u64::MAX)
                .unwrap()
                .last()
                .unwrap()
                .seq,
            40
        );
    }

    #[test]
    fn the_disk_bound_stops_accepting_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.max_bytes = 3000;
        c.segment_bytes = 1000;
        let spool = Spool::open(c, 0).unwrap();
        for i in 0..8u8 {
            append_blocking(&spool, vec![vec![i; 500]]);
        }
        assert!(!spool.accepting());
        spool.release(u64::MAX).unwrap();
        assert!(spool.accepting());
    }
    /// A gateway killed while a segment is active leaves the segment's reserved zero tail:
    /// recovery cuts it without calling it damage, keeps every record, and numbering goes on.
    #[test]
    fn a_killed_spool_recovers_its_records_and_cuts_the_reserved_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.segment_bytes = 1 << 20;
        let spool = Spool::open(c.clone(), 0).unwrap();
        append_blocking(&spool, (0..50u8).map(|i| vec![i; 30]).collect());
        let (_, seg) = segments(dir.path()).unwrap().pop().unwrap();
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            1 << 20,
            "reserved while active"
        );
        // As SIGKILL leaves it: the files as they are now, no close, no truncation.
        let killed = tempfile::tempdir().unwrap();
        for e in fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                fs::copy(&p, killed.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        drop(spool);
        let dir = killed;
        c.dir = dir.path().to_path_buf();
        let seg = dir.path().join(seg.file_name().unwrap());
        assert_eq!(fs::metadata(&seg).unwrap().len(), 1 << 20);
        let spool = Spool::open(c, 0).unwrap();
        assert_eq!(
            spool.recovery(),
            &Recovery {
                segments: 1,
                records: 50,
                max_seq: 50,
                corrupt_frames: 0,
                torn_bytes: 0,
            }
        );
        append_blocking(&spool, vec![b"after".to_vec()]);
        drop(spool);
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            50 * 46 + 21,
            "exact once closed"
        );
        let all = read_after(dir.path(), 0, u64::MAX).unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=51).collect::<Vec<_>>()
        );
        assert_eq!(all[50].payload, b"after");
    }

    /// A kill in the middle of copying a frame into the mapping leaves its first bytes and
    /// then zeros: a torn tail, cut, and counted up to its last non-zero byte.
    #[test]
    fn a_frame_torn_inside_the_reserved_space_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        append_blocking(&spool, vec![vec![7; 20], vec![8; 20]]);
        drop(spool);
        let (_, seg) = segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        assert_eq!(bytes.len(), 72);
        // A third frame's header and half its payload, then the reserved zeros.
        let mut torn = 36u32.to_le_bytes().to_vec();
        torn.extend_from_slice(&[1, 2, 3, 4, 3, 0, 0, 0, 0, 0, 0, 0]);
        torn.extend_from_slice(&[9; 10]);
        bytes.extend_from_slice(&torn);
        bytes.resize(4096, 0);
        fs::write(&seg, &bytes).unwrap();
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        assert_eq!(spool.recovery().torn_bytes, torn.len() as u64);
        assert_eq!(spool.recovery().corrupt_frames, 0);
        assert_eq!(spool.recovery().max_seq, 2);
        append_blocking(&spool, vec![b"third".to_vec()]);
        drop(spool);
        let all = read_after(dir.path(), 0, u64::MAX).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(all[2].payload, b"third");
    }

    /// The sealer's reader, while the spool is open and its active segment has reserved space:
    /// it reads every record once, in order, across rolls, never the zeros after them.
    #[test]
    fn a_bounded_reader_follows_the_open_spool_across_rolls() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        let mut reader =
            SpoolReader::new(dir.path(), 0).bounded_by(Arc::clone(spool.active_segment()));
        let mut seen = Vec::new();
        for round in 0..30u8 {
            append_blocking(
                &spool,
                (0..round % 7 + 1).map(|i| vec![round, i, 1]).collect(),
            );
            // A group larger than a whole segment, now and then.
            if round % 10 == 9 {
                append_blocking(&spool, vec![vec![round; 5000]]);
            }
            let written = spool.stats().written_seq.load(Ordering::Acquire);
            seen.extend(reader.read(written, usize::MAX).unwrap());
            assert_eq!(seen.last().map(|e| e.seq), Some(written));
        }
        assert!(segments(dir.path()).unwrap().len() > 3);
        let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        drop(spool);
        assert_eq!(seen, read_after(dir.path(), 0, u64::MAX).unwrap());
    }

    /// A first group of records larger than a whole segment, on a fresh spool and on a spool
    /// reopened with an empty newest segment: the segment is reserved larger, nothing panics,
    /// every record reads back.
    #[test]
    fn a_group_larger_than_a_segment_fits_an_empty_one() {
        for reopen_empty in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            if reopen_empty {
                // A previous life killed just after reserving its next segment (all zeros).
                let spool = Spool::open(config(dir.path()), 0).unwrap();
                append_blocking(&spool, vec![vec![1; 4000], vec![2; 10]]);
                drop(spool);
                fs::write(dir.path().join(segment_name(3)), vec![0u8; 4096]).unwrap();
            }
            let spool = Spool::open(config(dir.path()), 0).unwrap();
            let big = vec![vec![7; 3000], vec![8; 3000]];
            append_blocking(&spool, big.clone());
            append_blocking(&spool, vec![b"after".to_vec()]);
            drop(spool);
            let got: Vec<Vec<u8>> = read_after(dir.path(), 0, u64::MAX)
                .unwrap()
                .into_iter()
                .map(|e| e.payload)
                .collect();
            assert_eq!(&got[got.len() - 3..got.len() - 1], &big[..]);
            assert_eq!(got.last().unwrap(), b"after");
        }
    }

    /// The sealer's reader does not wait forever for numbers lost at the end of a final
    /// segment (a corrupt last frame): it goes on with the next segment.
    #[test]
    fn the_reader_goes_past_a_corrupt_end_of_a_final_segment() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        for i in 0..30u8 {
            append_blocking(&spool, vec![vec![i; 500]]);
        }
        drop(spool);
        let segs = segments(dir.path()).unwrap();
        assert!(segs.len() > 2);
        // Flip a byte of the first segment's last frame.
        let mut bytes = fs::read(&segs[0].1).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0xff;
        fs::write(&segs[0].1, &bytes).unwrap();
        let lost = segs[1].0 - 1;
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        assert_eq!(spool.recovery().corrupt_frames, 1);
        let mut reader =
            SpoolReader::new(dir.path(), 0).bounded_by(Arc::clone(spool.active_segment()));
        let written = spool.stats().written_seq.load(Ordering::Acquire);
        let mut seqs = Vec::new();
        for _ in 0..5 {
            seqs.extend(
                reader
                    .read(written, usize::MAX)
                    .unwrap()
                    .iter()
                    .map(|e| e.seq),
            );
        }
        let expected: Vec<u64> = (1..=30).filter(|&s| s != lost).collect();
        assert_eq!(seqs, expected);
    }

    /// Releasing never deletes the active segment, and the byte count never wraps.
    #[test]
    fn release_spares_the_active_segment_and_saturates() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(config(dir.path()), 0).unwrap();
        for i in 0..20u8 {
            append_blocking(&spool, vec![vec![i; 500]]);
        }
        spool.release(u64::MAX).unwrap();
        let left = segments(dir.path()).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            left[0].0,
            spool.active_segment().first_seq.load(Ordering::Acquire)
        );
        assert!(spool.stats().bytes.load(Ordering::SeqCst) < 4096);
    }

    /// Two spools on one directory would renumber each other's records: the second is refused
    /// while the first is open, and opens once it is closed.
    #[test]
    fn a_spool_directory_has_one_writer() {
        let dir = tempfile::tempdir().unwrap();
        let first = Spool::open(config(dir.path()), 0).unwrap();
        let err = Spool::open(config(dir.path()), 0).err().unwrap();
        assert!(
            err.to_string().contains("in use by another gateway"),
            "{err}"
        );
        drop(first);
        Spool::open(config(dir.path()), 0).unwrap();
    }
}
