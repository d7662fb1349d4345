//! Entitlements from the store (`[entitlements] source = "postgres"`): a snapshot at start,
//! every committed change pushed (`LISTEN`/`NOTIFY`, each carrying its version), a delta read
//! every `resync_interval` in case a push is lost, a full read every `full_resync_interval`
//! and after every reconnection.
//!
//! The request path never waits for any of it: a change becomes a new config snapshot
//! (`Gateway::apply`), swapped in whole. A gateway that cannot reach the store keeps serving
//! its last snapshot and says how old it is: `tollgate_entitlements_snapshot_age_seconds`
//! (the time since a read last confirmed it current) and the `/readyz` detail.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tollgate_store::tokio_postgres;

use prometheus::{Gauge, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::mpsc;

use crate::proxy::Gateway;
use crate::settings::StoreSource;
use tollgate_core::catalog::Catalog;
use tollgate_core::clock::Clock;
use tollgate_core::config::Loaded;
use tollgate_store::listen::{self, Event};
use tollgate_store::{Image, Scope};

/// The store sync's metrics.
#[derive(Clone)]
pub struct StoreMetrics {
    pub lag_seconds: prometheus::Histogram,
    pub up: IntGauge,
    pub version: IntGauge,
    pub age_seconds: Gauge,
    pub rows: IntGauge,
    pub syncs: IntCounterVec,
    pub applied: IntCounterVec,
}

impl StoreMetrics {
    pub fn new(registry: &Registry) -> StoreMetrics {
        let m = StoreMetrics {
            lag_seconds: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "tollgate_entitlements_change_lag_seconds",
                    "From a store write's commit (its audit time, the writer's clock) to this gateway enforcing it: a purchase, a revocation, settlement's report of packs used up.",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0]),
            )
            .expect("valid metric"),
            up: IntGauge::new(
                "tollgate_entitlements_store_up",
                "1 while the entitlement store answers (pushes are heard), 0 while the gateway serves its last snapshot.",
            )
            .expect("valid metric"),
            version: IntGauge::new(
                "tollgate_entitlements_version",
                "The entitlement store version this gateway's snapshot holds.",
            )
            .expect("valid metric"),
            age_seconds: Gauge::new(
                "tollgate_entitlements_snapshot_age_seconds",
                "Seconds since a read of the entitlement store last confirmed this gateway's snapshot current.",
            )
            .expect("valid metric"),
            rows: IntGauge::new(
                "tollgate_entitlements_rows",
                "Rows of the entitlement store in this gateway's snapshot.",
            )
            .expect("valid metric"),
            syncs: IntCounterVec::new(
                Opts::new(
                    "tollgate_entitlements_syncs_total",
                    "Reads of the entitlement store, by kind (full, delta) and result (ok, error).",
                ),
                &["kind", "result"],
            )
            .expect("valid metric"),
            applied: IntCounterVec::new(
                Opts::new(
                    "tollgate_entitlements_changes_total",
                    "Rows of store changes: taken (newer than held), ignored (late or repeated), refused (the snapshot would not validate).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
        };
        for c in [
            Box::new(m.lag_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.up.clone()),
            Box::new(m.version.clone()),
            Box::new(m.age_seconds.clone()),
            Box::new(m.rows.clone()),
            Box::new(m.syncs.clone()),
            Box::new(m.applied.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        m
    }
}

/// The store sync's state, shared with the admin listener and the config reloader.
pub struct StoreSync {
    settings: StoreSource,
    clock: Arc<dyn Clock>,
    image: Mutex<Image>,
    /// Serializes building and applying snapshots (the sync and a catalog reload), so
    /// neither can overwrite the other's newer half.
    apply_lock: Mutex<()>,
    /// Unix nanoseconds of the last read that confirmed the snapshot current.
    confirmed: AtomicI64,
    up: AtomicBool,
    /// The store's rows did not validate against the catalog: the previous snapshot is in
    /// force, and the snapshot is not confirmed current until they do.
    refused: AtomicBool,
    last_error: Mutex<Option<String>>,
    metrics: StoreMetrics,
}

impl std::fmt::Debug for StoreSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSync")
            .field("url", &self.settings.url)
            .finish_non_exhaustive()
    }
}

/// What to read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Full,
    Delta,
}

type Listening = (tokio_postgres::Client, mpsc::UnboundedReceiver<Event>);

impl StoreSync {
    /// Connects and reads the first snapshot, retrying until `startup_timeout`; or, if the
    /// store does not answer at once and a cached snapshot exists (`cache_file`), starts from
    /// that (the store is then reached in the background). Returns the sync, the listening
    /// connection if there is one, and the entitlements and credentials built against
    /// `catalog`.
    pub async fn start(
        settings: StoreSource,
        clock: Arc<dyn Clock>,
        metrics: StoreMetrics,
        catalog: &Catalog,
    ) -> anyhow::Result<(Arc<StoreSync>, Option<Listening>, Loaded)> {
        let cached = match &settings.cache_file {
            Some(path) => match tollgate_store::cache::load(path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "the cached entitlement snapshot is unreadable; ignored");
                    None
                }
            },
            None => None,
        };
        let deadline = Instant::now() + settings.startup_timeout;
        let mut backoff = Duration::from_millis(200);
        let (conn, image, confirmed, error) = loop {
            match Self::first(&settings).await {
                Ok((conn, image)) => {
                    metrics.syncs.with_label_values(&["full", "ok"]).inc();
                    break (Some(conn), image, clock.unix_nanos(), None);
                }
                Err(e) => {
                    metrics.syncs.with_label_values(&["full", "error"]).inc();
                    let last = format!("{e:#}");
                    if let Some((image, saved_at)) = cached.clone() {
                        tracing::warn!(
                            error = %last,
                            version = image.version,
                            saved_at = %saved_at,
                            "entitlement store unreachable at start: serving the cached snapshot"
                        );
                        let saved = saved_at.timestamp_nanos_opt().unwrap_or(0);
                        break (None, image, saved, Some(last));
                    }
                    if Instant::now() + backoff > deadline {
                        anyhow::bail!(
                            "no entitlement snapshot within entitlements.startup_timeout_ms ({:?}) and none cached: {last}",
                            settings.startup_timeout
                        );
                    }
                    tracing::warn!(error = %last, retry_in = ?backoff, "entitlement store not ready yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        let (entitlements, credentials) = image.build(catalog).map_err(|e| {
            anyhow::anyhow!(
                "the entitlement snapshot (version {}) does not validate against the catalog: {}: {}",
                image.version,
                e.key,
                e.reason
            )
        })?;
        metrics.up.set(i64::from(error.is_none()));
        metrics.version.set(image.version);
        metrics.rows.set(image.rows() as i64);
        tracing::info!(
            version = image.version,
            accounts = entitlements.accounts.len(),
            credentials = credentials.by_secret_id.len(),
            from = if error.is_none() { "store" } else { "cache" },
            "entitlements loaded"
        );
        let sync = Arc::new(StoreSync {
            confirmed: AtomicI64::new(confirmed),
            settings,
            clock,
            image: Mutex::new(image),
            apply_lock: Mutex::new(()),
            up: AtomicBool::new(error.is_none()),
            refused: AtomicBool::new(false),
            last_error: Mutex::new(error.clone()),
            metrics,
        });
        if error.is_none() {
            sync.save_cache().await;
        }
        let loaded = Loaded {
            catalog: catalog.clone(),
            entitlements,
            credentials,
        };
        Ok((sync, conn, loaded))
    }

    /// Writes the image held to `cache_file` (off the async threads: it fsyncs).
    async fn save_cache(&self) {
        let Some(path) = self.settings.cache_file.clone() else {
            return;
        };
        let image = self.image.lock().expect("not poisoned").clone();
        let now = chrono::DateTime::from_timestamp_nanos(self.clock.unix_nanos());
        let result =
            tokio::task::spawn_blocking(move || tollgate_store::cache::save(&path, &image, now))
                .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot write the cached entitlement snapshot")
            }
            Err(e) => tracing::warn!(error = %e, "cannot write the cached entitlement snapshot"),
        }
    }

    async fn first(settings: &StoreSource) -> anyhow::Result<(Listening, Image)> {
        let (mut client, rx) = listen::connect(&settings.url, settings.timeout).await?;
        if !tollgate_store::schema::is_current(&client).await? {
            anyhow::bail!(
                "the entitlement store has no current schema: run `tollgate admin migrate` (or start `tollgate admin serve`)"
            );
        }
        let image = tokio::time::timeout(
            settings.timeout.max(Duration::from_secs(5)),
            tollgate_store::read(&mut client, Scope::ALL),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the first snapshot read timed out"))??;
        Ok(((client, rx), image))
    }

    /// The version of the snapshot held.
    /// The image-search libraries in the image held.
    pub fn libraries(&self) -> Vec<tollgate_store::image::LibraryRow> {
        self.image
            .lock()
            .expect("not poisoned")
            .libraries
            .values()
            .cloned()
            .collect()
    }

    pub fn version(&self) -> i64 {
        self.image.lock().expect("not poisoned").version
    }

    /// Seconds since a read last confirmed the snapshot current.
    pub fn age_seconds(&self) -> f64 {
        let now = self.clock.unix_nanos();
        (now - self.confirmed.load(Ordering::Relaxed)).max(0) as f64 / 1e9
    }

    /// Brings the age gauge up to date (on a scrape).
    pub fn refresh(&self) {
        self.metrics.age_seconds.set(self.age_seconds());
    }

    fn last_error(&self) -> String {
        self.last_error
            .lock()
            .expect("not poisoned")
            .clone()
            .unwrap_or_default()
    }

    /// The `/readyz` detail.
    pub fn detail(&self) -> String {
        let age = self.age_seconds();
        if self.refused.load(Ordering::Relaxed) {
            let err = self.last_error();
            return format!(
                "entitlements: the store's rows DO NOT VALIDATE against this catalog, serving an older snapshot ({age:.1} s since it was current): {err}"
            );
        }
        if self.up.load(Ordering::Relaxed) {
            format!(
                "entitlements: store version {}, confirmed {age:.1} s ago",
                self.version()
            )
        } else {
            let err = self.last_error();
            format!(
                "entitlements: STORE UNREACHABLE, serving the last snapshot (version {}, {age:.1} s old): {err}",
                self.version()
            )
        }
    }

    /// Builds the snapshot the request path reads from `catalog` and the image held, and
    /// applies it. Called by the sync (new rows) and the config reloader (a new catalog).
    pub fn compose_and_apply(
        &self,
        gateway: &Gateway,
        catalog: Option<Catalog>,
    ) -> Result<u64, String> {
        let _guard = self.apply_lock.lock().expect("not poisoned");
        let catalog = catalog.unwrap_or_else(|| gateway.snapshot().loaded.catalog.clone());
        let built = {
            let image = self.image.lock().expect("not poisoned");
            image
                .build(&catalog)
                .map_err(|e| format!("{}: {}", e.key, e.reason))
        };
        let (entitlements, credentials) = built?;
        Ok(gateway.apply(Arc::new(Loaded {
            catalog,
            entitlements,
            credentials,
        })))
    }

    fn down(&self, why: String) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::error!(
                error = %why,
                version = self.version(),
                "entitlement store unreachable: serving the last snapshot"
            );
        }
        self.metrics.up.set(0);
        *self.last_error.lock().expect("not poisoned") = Some(why);
    }

    fn confirmed_now(&self) {
        self.confirmed
            .store(self.clock.unix_nanos(), Ordering::Relaxed);
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(
                version = self.version(),
                "entitlement store reachable again"
            );
        }
        self.metrics.up.set(1);
        *self.last_error.lock().expect("not poisoned") = None;
    }

    /// Takes a read's rows; rebuilds and applies the snapshot if anything changed. Whether
    /// a new snapshot is in force.
    fn absorb(&self, gateway: &Gateway, want: Want, read: Image) -> bool {
        // Image-search libraries are not entitlements: the registry takes them as they come.
        if !read.libraries.is_empty() {
            gateway.libraries().absorb(read.libraries.values());
        }
        let changed = {
            let mut image = self.image.lock().expect("not poisoned");
            match want {
                Want::Full => {
                    let changed = *image != read;
                    *image = read;
                    changed
                }
                Want::Delta => {
                    let a = image.apply(read);
                    self.metrics
                        .applied
                        .with_label_values(&["taken"])
                        .inc_by(a.taken as u64);
                    self.metrics
                        .applied
                        .with_label_values(&["ignored"])
                        .inc_by(a.ignored as u64);
                    a.taken > 0
                }
            }
        };
        // A refused snapshot is retried with every read until the rows validate.
        if changed || self.refused.load(Ordering::Relaxed) {
            match self.compose_and_apply(gateway, None) {
                Ok(generation) => {
                    self.refused.store(false, Ordering::Relaxed);
                    tracing::info!(
                        version = self.version(),
                        generation,
                        "entitlements updated from the store"
                    );
                }
                Err(e) => {
                    self.metrics.applied.with_label_values(&["refused"]).inc();
                    if !self.refused.swap(true, Ordering::Relaxed) {
                        tracing::error!(
                            error = %e,
                            version = self.version(),
                            "the entitlement store's rows do not validate: the previous snapshot stays in force"
                        );
                    }
                    // Not current: the age keeps growing (TollgateEntitlementsStale).
                    *self.last_error.lock().expect("not poisoned") = Some(e);
                    return false;
                }
            }
        }
        self.confirmed_now();
        // Published after the snapshot is in force: a version seen here is being enforced.
        let image = self.image.lock().expect("not poisoned");
        self.metrics.version.set(image.version);
        self.metrics.rows.set(image.rows() as i64);
        changed
    }

    /// Observes how long after their commit the writes above `held` are enforced here.
    async fn observe_lag(&self, client: &tokio_postgres::Client, held: i64) {
        let newest = tokio::time::timeout(
            self.settings.timeout,
            client.query_one(
                "SELECT max(at) FROM entitlements.audit WHERE version > $1",
                &[&held],
            ),
        )
        .await;
        if let Ok(Ok(row)) = newest
            && let Some(at) = row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(0)
            && let Some(at) = at.timestamp_nanos_opt()
        {
            let lag = (self.clock.unix_nanos() - at).max(0) as f64 / 1e9;
            self.metrics.lag_seconds.observe(lag);
        }
    }

    /// Keeps the snapshot current until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        gateway: Arc<Gateway>,
        first: Option<Listening>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut conn: Option<Listening> = first;
        let mut tick = tokio::time::interval(self.settings.resync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_full = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let mut need_full = false;
        loop {
            let Some((client, events)) = conn.as_mut() else {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = &mut shutdown => return,
                }
                match listen::connect(&self.settings.url, self.settings.timeout).await {
                    Ok(c) => {
                        conn = Some(c);
                        need_full = true;
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        self.down(format!("cannot connect: {e:#}"));
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
                continue;
            };
            let want = if need_full {
                Want::Full
            } else {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(Event::Notified(v)) if v > self.version() => Want::Delta,
                        Some(Event::Notified(_)) => {
                            self.metrics.applied.with_label_values(&["ignored"]).inc();
                            continue;
                        }
                        Some(Event::Closed(why)) => {
                            self.down(why);
                            conn = None;
                            continue;
                        }
                        None => {
                            self.down("the listening connection ended".into());
                            conn = None;
                            continue;
                        }
                    },
                    _ = tick.tick() => {
                        if last_full.elapsed() >= self.settings.full_resync_interval {
                            Want::Full
                        } else {
                            Want::Delta
                        }
                    }
                    () = &mut shutdown => return,
                }
            };
            let held = self.version();
            let (scope, kind) = match want {
                Want::Full => (Scope::ALL, "full"),
                Want::Delta => (Scope::since(self.version()), "delta"),
            };
            let read =
                tokio::time::timeout(self.settings.timeout, tollgate_store::read(client, scope))
                    .await;
            match read {
                Ok(Ok(image)) => {
                    self.metrics.syncs.with_label_values(&[kind, "ok"]).inc();
                    if want == Want::Full {
                        last_full = Instant::now();
                        need_full = false;
                    }
                    if self.absorb(&gateway, want, image) {
                        if want == Want::Delta {
                            self.observe_lag(client, held).await;
                        }
                        self.save_cache().await;
                    }
                }
                Ok(Err(e)) => {
                    self.metrics.syncs.with_label_values(&[kind, "error"]).inc();
                    self.down(format!("{kind} read failed: {e:#}"));
                    conn = None;
                }
                Err(_) => {
                    self.metrics.syncs.with_label_values(&[kind, "error"]).inc();
                    self.down(format!(
                        "{kind} read timed out after {:?}",
                        self.settings.timeout
                    ));
                    conn = None;
                }
            }
        }
    }
}
