//! Shipping: seal spool ranges into batches, hand them to the sink, and advance the cursor only
//! after the sink has acknowledged them.
//!
//! Order of effects, each durable before the next (Vector's disk buffer lesson, PR #25570):
//! 1. seal: the batch file is written to `pending/` (fsynced);
//! 2. publish (NATS: the publish ack; local: the file is in the ledger directory);
//! 3. `state.json` records the shipped batch (fsynced);
//! 4. the pending file is removed and spool segments wholly at or below the shipped sequence
//!    are deleted.
//!
//! A crash between any two steps replays the batch under the same id; the broker and the
//! ledger drop the duplicate. While the sink is unreachable, batches wait in `pending/` and the
//! spool grows, up to its disk bound (`metering.max_spool_bytes`), where the gateway refuses new
//! calls, turns unready and logs an error, rather than serve calls it cannot meter.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use prometheus::{Histogram, IntCounter, IntGauge};

use super::reader::SpoolReader;
use super::spool::Spool;
use super::store::{BatchStore, ShipState};
use tollgate_usage::batch::Batch;
use tollgate_usage::ledger_dir::{self, write_atomic};
use tollgate_usage::stream::{Totals, ensure_stream, totals_subject, usage_subject};

/// Where sealed batches go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A local directory the settlement side reads (the embedded default).
    LocalDir(PathBuf),
    /// A NATS JetStream stream.
    Nats {
        url: String,
        stream: String,
        /// Replicas of the stream if the gateway has to create it (3 in production).
        replicas: usize,
    },
}

#[derive(Debug, Clone)]
pub struct ShipConfig {
    pub gateway_id: String,
    pub destination: Destination,
    /// Seal at least this often when there is anything to seal.
    pub seal_interval: Duration,
    /// Spool records the sealer holds in memory at once (a batch never spans two reads).
    pub max_batch_records: usize,
    /// Counts a batch holds at most: what bounds its size on the wire.
    pub max_batch_counts: usize,
    /// Publishes awaiting their ack at once.
    pub max_in_flight: usize,
    /// How often running totals are published for reconciliation.
    pub totals_interval: Duration,
}

/// The shipper's metric handles.
#[derive(Clone)]
pub struct ShipMetrics {
    pub sealed: IntCounter,
    pub published: IntCounter,
    pub duplicates: IntCounter,
    pub publish_errors: IntCounter,
    pub publish_seconds: Histogram,
    pub pending_batches: IntGauge,
    pub unshipped_records: IntGauge,
    pub oldest_unshipped_seconds: IntGauge,
    pub spool_bytes: IntGauge,
    pub spool_full: IntGauge,
    /// Counts for the totals report (admitted, over-limit, billable units).
    pub totals_source: Arc<dyn Fn() -> (u64, u64, u64) + Send + Sync>,
}

/// Runs file work that fsyncs (sealed batches, the cursor, the local sink) without stalling a
/// worker: on a multi-thread runtime the worker hands its other tasks over first.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// What the shipper needs to know before the spool opens: the floor for its numbering.
pub fn sealed_floor(store: &BatchStore) -> std::io::Result<u64> {
    let shipped = store.state()?.map_or(0, |s| s.shipped_seq);
    let pending = store
        .pending()?
        .iter()
        .map(|b| b.last_seq)
        .max()
        .unwrap_or(0);
    Ok(shipped.max(pending))
}

enum Sink {
    Local(PathBuf),
    Nats {
        url: String,
        stream: String,
        replicas: usize,
        js: Option<Box<jetstream::Context>>,
    },
}

impl Sink {
    /// Connects lazily (the broker may be down at start) and makes sure the stream exists:
    /// file storage, a one-hour duplicate window (`Nats-Msg-Id` = batch id) so that replays
    /// after an outage are still recognised, and the ledger's processed-batches table as the
    /// final guard beyond it.
    async fn nats(&mut self) -> Result<jetstream::Context, String> {
        let Sink::Nats {
            url,
            stream,
            replicas,
            js,
        } = self
        else {
            unreachable!("nats() on a local sink")
        };
        if let Some(js) = js {
            return Ok((**js).clone());
        }
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(url.as_str())
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        let ctx = jetstream::new(client);
        ensure_stream(&ctx, stream, *replicas)
            .await
            .map_err(|e| format!("stream {stream}: {e}"))?;
        *js = Some(Box::new(ctx.clone()));
        Ok(ctx)
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Publishes one payload and waits for the ack; `Ok(true)` if the broker said duplicate.
async fn publish_nats(
    ctx: &jetstream::Context,
    subject: String,
    id: &str,
    payload: Bytes,
) -> Result<bool, String> {
    let ack = ctx
        .send_publish(
            subject,
            jetstream::message::PublishMessage::build()
                .payload(payload)
                .message_id(id),
        )
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), ack.into_future()).await {
        Ok(Ok(a)) => Ok(a.duplicate),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no publish ack within 5 s".into()),
    }
}

pub struct Shipper {
    spool: Arc<Spool>,
    store: BatchStore,
    config: ShipConfig,
    metrics: ShipMetrics,
    sink: Sink,
    state: ShipState,
    reader: SpoolReader,
    /// Sealed batches not yet acknowledged, in order, with when they were sealed.
    queue: VecDeque<(Batch, Instant)>,
    next_batch_seq: u64,
    sealed_seq: u64,
    sealed_cumulative: u64,
    /// `state.wire_id()`: the id batches and totals travel under.
    wire_id: String,
}

impl Shipper {
    /// Restores the shipping state of a spool directory. Refuses a spool that belongs to
    /// another gateway id (two gateways must never share, or swap, a sequence space).
    pub fn open(
        spool: Arc<Spool>,
        config: ShipConfig,
        metrics: ShipMetrics,
    ) -> std::io::Result<Shipper> {
        let store = BatchStore::open(spool.dir())?;
        let state = match store.state()? {
            Some(s) if s.gateway_id != config.gateway_id => {
                return Err(std::io::Error::other(format!(
                    "the spool at {} belongs to gateway {:?}, not {:?} (metering.gateway_id)",
                    spool.dir().display(),
                    s.gateway_id,
                    config.gateway_id
                )));
            }
            Some(s) => s,
            None => {
                let s = ShipState::new(&config.gateway_id);
                store.save_state(&s)?;
                s
            }
        };
        let mut queue = VecDeque::new();
        for b in store.pending()? {
            if b.batch_seq <= state.shipped_batch_seq {
                // Acknowledged before a crash; only the cleanup was missed.
                store.remove_pending(&b.batch_id)?;
            } else {
                queue.push_back((b, Instant::now()));
            }
        }
        let (sealed_seq, next_batch_seq, sealed_cumulative) = match queue.back() {
            Some((b, _)) => (b.last_seq, b.batch_seq + 1, b.cumulative_units),
            None => (
                state.shipped_seq,
                state.shipped_batch_seq + 1,
                state.shipped_cumulative_units,
            ),
        };
        if !queue.is_empty() {
            tracing::info!(
                batches = queue.len(),
                "re-publishing sealed batches left from the last run"
            );
        }
        let sink = match &config.destination {
            Destination::LocalDir(d) => {
                std::fs::create_dir_all(d)?;
                Sink::Local(d.clone())
            }
            Destination::Nats {
                url,
                stream,
                replicas,
            } => Sink::Nats {
                url: url.clone(),
                stream: stream.clone(),
                replicas: *replicas,
                js: None,
            },
        };
        let reader = Self::reader_of(&spool, sealed_seq);
        let wire_id = state.wire_id();
        tracing::info!(gateway_id = %config.gateway_id, wire_id = %wire_id, "shipping batches");
        Ok(Shipper {
            wire_id,
            spool,
            store,
            config,
            metrics,
            sink,
            state,
            reader,
            queue,
            next_batch_seq,
            sealed_seq,
            sealed_cumulative,
        })
    }

    /// Seals what the spool holds beyond the last sealed sequence, reading at most
    /// `max_batch_records` records at a time, into batches of at most `max_batch_counts`
    /// counts. Returns how many batches were sealed.
    /// The id this spool's batches travel under (settlement knows this replica by it).
    pub fn wire_id(&self) -> &str {
        &self.wire_id
    }

    pub fn seal(&mut self) -> std::io::Result<usize> {
        let result = self.seal_into();
        if result.is_err() {
            // The reader may have moved past records no batch holds yet (read, then the batch
            // could not be written): read again from the last sealed sequence next time, or
            // those records would never be sealed.
            self.reader = Self::reader_of(&self.spool, self.sealed_seq);
        }
        result
    }

    fn reader_of(spool: &Spool, after: u64) -> SpoolReader {
        SpoolReader::new(spool.dir(), after).bounded_by(Arc::clone(spool.active_segment()))
    }

    fn seal_into(&mut self) -> std::io::Result<usize> {
        let mut n = 0;
        let written = self.spool.stats().written_seq.load(Ordering::Acquire);
        while self.sealed_seq < written {
            let entries = self.reader.read(written, self.config.max_batch_records)?;
            if entries.is_empty() {
                break;
            }
            let mut rest = &entries[..];
            while !rest.is_empty() {
                let (batch, taken) = Batch::seal(
                    &self.wire_id,
                    self.next_batch_seq,
                    rest,
                    self.sealed_cumulative,
                    self.config.max_batch_counts,
                );
                rest = &rest[taken..];
                self.store.write_pending(&batch)?;
                self.sealed_seq = batch.last_seq;
                self.sealed_cumulative = batch.cumulative_units;
                self.next_batch_seq += 1;
                self.metrics.sealed.inc();
                self.queue.push_back((batch, Instant::now()));
                n += 1;
            }
        }
        Ok(n)
    }

    /// Publishes up to `max_in_flight` queued batches concurrently and ships the acknowledged
    /// prefix. Returns how many were shipped; an error leaves the rest queued.
    pub async fn publish(&mut self) -> Result<usize, String> {
        if self.queue.is_empty() {
            return Ok(0);
        }
        let take = self.queue.len().min(self.config.max_in_flight.max(1));
        let mut acked: BTreeMap<u64, bool> = BTreeMap::new();
        let mut first_error = None;
        match &mut self.sink {
            Sink::Local(dir) => {
                let (queue, metrics) = (&self.queue, &self.metrics);
                blocking(|| -> Result<(), String> {
                    for (b, _) in queue.iter().take(take) {
                        let started = Instant::now();
                        let path = ledger_dir::batch_path(dir, &b.batch_id);
                        let duplicate = ledger_dir::holds(dir, &b.batch_id);
                        if !duplicate {
                            write_atomic(&path, &b.to_bytes())
                                .map_err(|e| format!("{}: {e}", path.display()))?;
                        }
                        metrics
                            .publish_seconds
                            .observe(started.elapsed().as_secs_f64());
                        acked.insert(b.batch_seq, duplicate);
                    }
                    Ok(())
                })?;
            }
            Sink::Nats { .. } => {
                let ctx = self.sink.nats().await?;
                let mut set = tokio::task::JoinSet::new();
                for (b, _) in self.queue.iter().take(take) {
                    let ctx = ctx.clone();
                    let subject = usage_subject(&b.gateway_id);
                    let id = b.batch_id.clone();
                    let seq = b.batch_seq;
                    let payload = Bytes::from(b.to_bytes());
                    set.spawn(async move {
                        let started = Instant::now();
                        let r = publish_nats(&ctx, subject, &id, payload).await;
                        (seq, r, started.elapsed())
                    });
                }
                while let Some(joined) = set.join_next().await {
                    let (seq, r, took) = joined.map_err(|e| e.to_string())?;
                    self.metrics.publish_seconds.observe(took.as_secs_f64());
                    match r {
                        Ok(dup) => {
                            acked.insert(seq, dup);
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
        }
        // Ship the contiguous acknowledged prefix, in order.
        let shipped = blocking(|| self.ship_acked(&acked))?;
        match first_error {
            Some(e) if shipped == 0 => Err(e),
            _ => Ok(shipped),
        }
    }

    /// Records the acknowledged prefix of the queue as shipped: the cursor durable first, then
    /// the pending files and the spool segments released.
    fn ship_acked(&mut self, acked: &BTreeMap<u64, bool>) -> Result<usize, String> {
        let mut shipped = 0;
        while let Some((b, _)) = self.queue.front() {
            let Some(dup) = acked.get(&b.batch_seq).copied() else {
                break;
            };
            self.metrics.published.inc();
            if dup {
                self.metrics.duplicates.inc();
            }
            self.state.shipped_batch_seq = b.batch_seq;
            self.state.shipped_seq = b.last_seq;
            self.state.shipped_cumulative_units = b.cumulative_units;
            let id = b.batch_id.clone();
            self.queue.pop_front();
            shipped += 1;
            // Durable cursor first, then cleanup.
            self.store
                .save_state(&self.state)
                .map_err(|e| e.to_string())?;
            self.store.remove_pending(&id).map_err(|e| e.to_string())?;
        }
        if shipped > 0 {
            self.spool
                .release(self.state.shipped_seq)
                .map_err(|e| format!("releasing spool segments: {e}"))?;
        }
        Ok(shipped)
    }

    fn totals(&self) -> Totals {
        let (admitted, rejected, units) = (self.metrics.totals_source)();
        Totals {
            gateway_id: self.wire_id.clone(),
            reported_at_unix_ms: chrono::Utc::now().timestamp_millis(),
            sealed_batch_seq: self.next_batch_seq - 1,
            sealed_cumulative_units: self.sealed_cumulative,
            last_sealed_seq: self.sealed_seq,
            admitted_since_start: admitted,
            rejected_since_start: rejected,
            billable_units_since_start: units,
        }
    }

    /// Publishes the running totals (best effort: the next report supersedes a lost one).
    pub async fn publish_totals(&mut self) -> Result<(), String> {
        let t = self.totals();
        let bytes = serde_json::to_vec(&t).expect("serializes");
        match &mut self.sink {
            Sink::Local(dir) => blocking(|| {
                write_atomic(&dir.join(format!("{}.totals", t.gateway_id)), &bytes)
                    .map_err(|e| e.to_string())
            }),
            Sink::Nats { .. } => {
                let ctx = self.sink.nats().await?;
                let id = format!("totals-{}-{}", t.gateway_id, t.reported_at_unix_ms);
                publish_nats(&ctx, totals_subject(&t.gateway_id), &id, Bytes::from(bytes))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// How long the oldest usage not yet acknowledged by the sink has waited: the earliest
    /// call of the first unacknowledged batch (whenever it was sealed, before a restart too),
    /// or, with no batch waiting, at most a seal interval (unsealed records are sealed every
    /// interval).
    fn oldest_unshipped_age(&self, now_unix_ms: i64) -> Duration {
        match self.queue.front() {
            Some((b, sealed)) if b.first_record_unix_ms > 0 => Duration::from_millis(
                u64::try_from(now_unix_ms - b.first_record_unix_ms).unwrap_or(0),
            )
            .max(sealed.elapsed()),
            // A batch sealed by an older version: no call time; since it was sealed here.
            Some((_, sealed)) => sealed.elapsed() + self.config.seal_interval,
            None => Duration::ZERO,
        }
    }

    fn update_gauges(&self) {
        let stats = self.spool.stats();
        let written = stats.written_seq.load(Ordering::Acquire);
        self.metrics.pending_batches.set(self.queue.len() as i64);
        self.metrics
            .unshipped_records
            .set(written.saturating_sub(self.state.shipped_seq) as i64);
        self.metrics
            .oldest_unshipped_seconds
            .set(self.oldest_unshipped_age(now_unix_ms()).as_secs() as i64);
        self.metrics
            .spool_bytes
            .set(stats.bytes.load(Ordering::Relaxed) as i64);
        self.metrics
            .spool_full
            .set(i64::from(!crate::metering::UsageSink::accepting(
                &*self.spool,
            )));
    }

    /// Runs until `shutdown`, then seals and ships what it can within `drain` and returns.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>, drain: Duration) {
        let mut seal_tick = tokio::time::interval(self.config.seal_interval);
        seal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut totals_tick = tokio::time::interval(self.config.totals_interval);
        totals_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Duration::from_millis(100);
        let mut retry_at: Option<tokio::time::Instant> = None;
        // After a successful publish that left batches queued (a backlog after an outage), the
        // next round starts at once instead of waiting for a tick; it only publishes. Sealing
        // happens on the tick (or when a whole batch is waiting), never in that loop: sealing
        // there would cut tiny batches as fast as calls arrive.
        let mut backlog = false;
        tokio::pin!(shutdown);
        loop {
            let mut tick = false;
            if backlog {
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = std::future::ready(()) => {}
                }
            } else {
                tokio::select! {
                    _ = seal_tick.tick() => tick = true,
                    _ = totals_tick.tick() => {
                        if let Err(e) = self.publish_totals().await {
                            tracing::warn!(error = %e, "totals not published");
                        }
                    }
                    () = &mut shutdown => break,
                }
            }
            let written = self.spool.stats().written_seq.load(Ordering::Acquire);
            let full_batch =
                written.saturating_sub(self.sealed_seq) >= self.config.max_batch_records as u64;
            if (tick || full_batch)
                && let Err(e) = blocking(|| self.seal())
            {
                tracing::error!(error = %e, "sealing failed");
            }
            if retry_at.is_some_and(|t| tokio::time::Instant::now() < t) {
                self.update_gauges();
                continue;
            }
            let attempt = tokio::time::timeout(Duration::from_secs(10), self.publish())
                .await
                .unwrap_or_else(|_| Err("publishing did not finish within 10 s".into()));
            match attempt {
                Ok(shipped) => {
                    backoff = Duration::from_millis(100);
                    retry_at = None;
                    backlog = shipped > 0 && !self.queue.is_empty();
                }
                Err(e) => {
                    backlog = false;
                    self.metrics.publish_errors.inc();
                    tracing::warn!(error = %e, pending = self.queue.len(), retry_in = ?backoff, "publishing batches failed");
                    retry_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            self.update_gauges();
        }
        // Drain: seal the tail and try to ship it; what is left stays durable for next time.
        let deadline = tokio::time::Instant::now() + drain;
        let _ = blocking(|| self.seal());
        while !self.queue.is_empty() && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.publish()).await {
                Ok(Ok(_)) => {}
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let _ = tokio::time::timeout_at(deadline, self.publish_totals()).await;
        self.update_gauges();
        if !self.queue.is_empty() {
            tracing::warn!(
                pending = self.queue.len(),
                "stopped with batches still to ship; they stay sealed on disk"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::spool::SpoolConfig;
    use crate::metering::{UsageRecord, UsageSink};
    use std::fs;
    use std::path::Path;

    fn shipper(spool: &Arc<Spool>, batches: &Path) -> Shipper {
        let counter = |name: &str| IntCounter::new(name, "test").unwrap();
        let gauge = |name: &str| IntGauge::new(name, "test").unwrap();
        Shipper::open(
            Arc::clone(spool),
            ShipConfig {
                gateway_id: "gw-test".into(),
                destination: Destination::LocalDir(batches.to_path_buf()),
                seal_interval: Duration::from_secs(1),
                max_batch_records: 100,
                max_batch_counts: 2000,
                max_in_flight: 4,
                totals_interval: Duration::from_secs(10),
            },
            ShipMetrics {
                sealed: counter("sealed"),
                published: counter("published"),
                duplicates: counter("duplicates"),
                publish_errors: counter("publish_errors"),
                publish_seconds: Histogram::with_opts(prometheus::HistogramOpts::new(
                    "publish_seconds",
                    "test",
                ))
                .unwrap(),
                pending_batches: gauge("pending_batches"),
                unshipped_records: gauge("unshipped_records"),
                oldest_unshipped_seconds: gauge("oldest_unshipped_seconds"),
                spool_bytes: gauge("spool_bytes"),
                spool_full: gauge("spool_full"),
                totals_source: Arc::new(|| (0, 0, 0)),
            },
        )
        .unwrap()
    }

    fn record(i: u32) -> UsageRecord {
        UsageRecord {
            request_id: format!("r-{i}"),
            owner_uin: 1,
            uin: 1,
            service: "ocr".into(),
            action: "GeneralBasicOCR".into(),
            billing_item: "ocr.general_basic".into(),
            units: 1,
            time_unix_ms: 1_796_000_000_000,
            unresolved_library: None,
        }
    }

    /// A batch that cannot be written leaves its records to the next attempt: none is skipped,
    /// and the next batch starts where the last sealed one ended.
    #[test]
    fn a_failed_seal_leaves_every_record_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let spool_dir = dir.path().join("spool");
        let spool = Arc::new(
            Spool::open(
                SpoolConfig {
                    dir: spool_dir.clone(),
                    segment_bytes: 1 << 20,
                    fsync_interval: Duration::from_millis(50),
                    max_bytes: 1 << 30,
                },
                0,
            )
            .unwrap(),
        );
        let mut s = shipper(&spool, &dir.path().join("batches"));
        let submit = |from: u32, to: u32| {
            let records: Vec<UsageRecord> = (from..to).map(record).collect();
            assert!(matches!(
                spool.submit(&records),
                crate::metering::Ticket::Done(Ok(()))
            ));
        };
        submit(0, 250);
        // The pending directory made unwritable: a file where it was.
        let pending = spool_dir.join("pending");
        fs::remove_dir(&pending).unwrap();
        fs::write(&pending, b"not a directory").unwrap();
        assert!(s.seal().is_err());
        fs::remove_file(&pending).unwrap();
        fs::create_dir(&pending).unwrap();
        submit(250, 260);
        assert_eq!(s.seal().unwrap(), 3, "100 + 100 + 60 records");
        let sealed: Vec<(u64, u64)> = s
            .queue
            .iter()
            .map(|(b, _)| (b.first_seq, b.last_seq))
            .collect();
        assert_eq!(sealed, vec![(1, 100), (101, 200), (201, 260)]);
        assert_eq!(s.queue.iter().map(|(b, _)| b.units).sum::<u64>(), 260);
    }

    fn spool_at(dir: &Path) -> Arc<Spool> {
        Arc::new(
            Spool::open(
                SpoolConfig {
                    dir: dir.to_path_buf(),
                    segment_bytes: 1 << 20,
                    fsync_interval: Duration::from_millis(50),
                    max_bytes: 1 << 30,
                },
                0,
            )
            .unwrap(),
        )
    }

    /// A spool wiped and started again under the same gateway id numbers its batches from 1
    /// again; their ids must still be new, or the broker's duplicate window and the ledger
    /// would drop that usage as already applied.
    #[test]
    fn a_wiped_spool_never_reuses_a_batch_id() {
        let dir = tempfile::tempdir().unwrap();
        let (spool_dir, batches) = (dir.path().join("spool"), dir.path().join("batches"));
        let mut ids = Vec::new();
        for _ in 0..2 {
            let spool = spool_at(&spool_dir);
            let mut s = shipper(&spool, &batches);
            assert!(matches!(
                spool.submit(&[record(1)]),
                crate::metering::Ticket::Done(Ok(()))
            ));
            assert_eq!(s.seal().unwrap(), 1);
            let (b, _) = s.queue.front().unwrap();
            assert_eq!(b.batch_seq, 1);
            assert!(b.gateway_id.starts_with("gw-test-"), "{}", b.gateway_id);
            ids.push(b.batch_id.clone());
            drop(s);
            spool.close();
            drop(spool);
            fs::remove_dir_all(&spool_dir).unwrap();
        }
        assert_ne!(ids[0], ids[1]);
    }

    /// The age of the oldest unshipped usage is the age of its call, not of its batch.
    #[test]
    fn the_oldest_unshipped_age_is_the_calls() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_at(&dir.path().join("spool"));
        let mut s = shipper(&spool, &dir.path().join("batches"));
        let now = now_unix_ms();
        let (mut old, mut new) = (record(1), record(2));
        old.time_unix_ms = now - 30_000;
        new.time_unix_ms = now;
        assert!(matches!(
            spool.submit(&[old, new]),
            crate::metering::Ticket::Done(Ok(()))
        ));
        assert_eq!(s.oldest_unshipped_age(now), Duration::ZERO);
        s.seal().unwrap();
        let age = s.oldest_unshipped_age(now);
        assert!(
            (Duration::from_secs(30)..Duration::from_secs(31)).contains(&age),
            "{age:?}"
        );
    }
}
