//! The composition root: one function wires the gateway top to bottom.
//!
//! `start` loads and validates the config (refusing to start on any error), builds the
//! admission store, the usage sink and the gateway, binds the listeners, and spawns the
//! background tasks: API server, admin server, config reloader, quota sweeper.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admission::fleet::{FleetShared, FleetStore};
use crate::admission::{Admission, LocalStore, QuotaStore};
use crate::fleet::{FleetMetrics, FleetTask};
use crate::metering::file::FileSink;
use crate::metering::ship::{self, ShipMetrics, Shipper};
use crate::metering::spool::Spool;
use crate::metering::store::BatchStore;
use crate::metering::{NoSink, UsageSink};
use crate::metrics::Metrics;
use crate::proxy::{Gateway, server};
use crate::reload::{self, ReloadStatus};
use crate::settings::{EntitlementSource, MeteringSink, QuotaSettings, RedisQuota, Settings};
use crate::store_sync::{StoreMetrics, StoreSync};
use tollgate_core::catalog::Catalog;
use tollgate_core::clock::{Clock, SystemClock};
use tollgate_core::config::{self, ConfigError};

/// What tests (or an embedding program) may replace.
pub struct Options {
    pub clock: Arc<dyn Clock>,
    /// Replaces the sink named in `tollgate.toml`.
    pub sink: Option<Arc<dyn UsageSink>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: SystemClock::shared(),
            sink: None,
        }
    }
}

/// A running gateway.
pub struct Running {
    pub api_addr: SocketAddr,
    /// `listen.api_plain`, when set beside TLS.
    pub api_plain_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    pub reload_status: Arc<Mutex<ReloadStatus>>,
    /// The spool, when metering uses it.
    pub spool: Option<Arc<Spool>>,
    /// The entitlement store sync, with `[entitlements] source = "postgres"`.
    pub store_sync: Option<Arc<StoreSync>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    fleet_stop: watch::Sender<bool>,
    fleet_task: Option<JoinHandle<()>>,
    ship_stop: watch::Sender<bool>,
    ship_task: Option<JoinHandle<()>>,
    admin_stop: watch::Sender<bool>,
    admin_task: JoinHandle<()>,
}

impl Running {
    /// Drains and stops everything: the API first (so every in-flight call's usage is
    /// written), then the shipper (which seals and ships the tail), then the spool writer.
    pub async fn shutdown(self) {
        self.gateway.start_draining();
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let _ = self.fleet_stop.send(true);
        if let Some(t) = self.fleet_task {
            let _ = t.await;
        }
        let _ = self.ship_stop.send(true);
        if let Some(t) = self.ship_task {
            let _ = t.await;
        }
        if let Some(spool) = self.spool {
            spool.shutdown().await;
        }
        let _ = self.admin_stop.send(true);
        let _ = self.admin_task.await;
    }

    /// Waits until the servers stop (after `trigger` completes, they drain and stop).
    pub async fn run_until(self, trigger: impl Future<Output = ()>) {
        trigger.await;
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

/// Every service of the catalog must have an upstream.
fn check_upstreams(settings: &Settings, catalog: &Catalog) -> Result<(), ConfigError> {
    for s in &catalog.services {
        if settings.upstream(&s.name).is_none() {
            return Err(ConfigError::new(
                &settings.source,
                format!("upstream.{}", s.name),
                "the catalog serves this service but it has no upstream (and there is no upstream.default)",
            ));
        }
    }
    Ok(())
}

/// The spool and its shipper: state restored, numbering above everything already sealed.
fn open_spool(
    s: &crate::settings::SpoolSettings,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(Arc<Spool>, Shipper)> {
    std::fs::create_dir_all(&s.spool.dir).with_context(|| {
        format!(
            "cannot create the spool directory {}",
            s.spool.dir.display()
        )
    })?;
    let store = BatchStore::open(&s.spool.dir)?;
    let floor = ship::sealed_floor(&store)?;
    let fsync = metrics.spool_fsync_seconds.clone();
    let spool = Arc::new(
        Spool::open_observed(
            s.spool.clone(),
            floor,
            Some(Box::new(move |d| fsync.observe(d.as_secs_f64()))),
        )
        .with_context(|| format!("cannot open the spool at {}", s.spool.dir.display()))?,
    );
    metrics.spool_max_bytes.set(s.spool.max_bytes as i64);
    metrics
        .registry
        .register(Box::new(crate::metrics::SpoolCollector::new(Arc::clone(
            spool.stats(),
        ))))
        .context("registering the spool's metrics")?;
    let r = spool.recovery();
    metrics.spool_corrupt_frames.inc_by(r.corrupt_frames);
    metrics.spool_torn_bytes.inc_by(r.torn_bytes);
    if r.corrupt_frames > 0 || r.torn_bytes > 0 {
        tracing::warn!(
            corrupt_frames = r.corrupt_frames,
            torn_bytes = r.torn_bytes,
            "spool recovered from damage"
        );
    }
    tracing::info!(
        segments = r.segments,
        records = r.records,
        max_seq = r.max_seq,
        "spool opened"
    );
    let totals_metrics = Arc::clone(metrics);
    let ship_metrics = ShipMetrics {
        sealed: metrics.batches_sealed.clone(),
        published: metrics.batches_published.clone(),
        duplicates: metrics.batches_duplicate.clone(),
        publish_errors: metrics.batch_publish_errors.clone(),
        publish_seconds: metrics.batch_publish_seconds.clone(),
        pending_batches: metrics.batches_pending.clone(),
        unshipped_records: metrics.spool_unshipped_records.clone(),
        oldest_unshipped_seconds: metrics.spool_oldest_unshipped_seconds.clone(),
        spool_bytes: metrics.spool_bytes.clone(),
        spool_full: metrics.spool_full.clone(),
        totals_source: Arc::new(move || totals_metrics.totals()),
    };
    let shipper = Shipper::open(Arc::clone(&spool), s.ship.clone(), ship_metrics)?;
    Ok((spool, shipper))
}

fn build_sink(settings: &Settings) -> anyhow::Result<Arc<dyn UsageSink>> {
    Ok(match &settings.metering {
        MeteringSink::Spool(_) => unreachable!("the spool is built by open_spool"),
        MeteringSink::File(path) => Arc::new(
            FileSink::open(path)
                .with_context(|| format!("cannot open the usage file {}", path.display()))?,
        ),
        MeteringSink::Off => {
            tracing::warn!(
                "metering.sink = \"off\": no usage is recorded; billable calls will not be billed"
            );
            Arc::new(NoSink)
        }
    })
}

/// Every group named in `quota.failure_modes` must be a catalog group.
fn check_failure_groups(
    settings: &Settings,
    q: &RedisQuota,
    catalog: &Catalog,
) -> Result<(), ConfigError> {
    for g in q.failure_groups.keys() {
        if catalog.group_by_name(g).is_none() {
            return Err(ConfigError::new(
                &settings.source,
                format!("quota.failure_modes.{g}"),
                format!("{g:?} is not a group of the catalog"),
            ));
        }
    }
    Ok(())
}

/// Starts the gateway.
pub async fn start(settings: Settings, options: Options) -> anyhow::Result<Running> {
    // Config: watched from before the first read, validated whole before anything listens.
    let watcher = reload::Watcher::new(&settings.sources);
    let mut loaded = config::load(&settings.sources)?;
    check_upstreams(&settings, &loaded.catalog)?;
    let settings = Arc::new(settings);
    let metrics = Arc::new(Metrics::new());

    // Entitlements from the store: the first snapshot before anything listens.
    let mut from_store = None;
    if let EntitlementSource::Store(s) = &settings.entitlements {
        let (sync, conn, snapshot) = StoreSync::start(
            s.clone(),
            Arc::clone(&options.clock),
            StoreMetrics::new(&metrics.registry),
            &loaded.catalog,
        )
        .await?;
        loaded = Arc::new(snapshot);
        from_store = Some((sync, conn));
    }
    let store_sync = from_store.as_ref().map(|(s, _)| Arc::clone(s));

    // Admission state lives outside the config: reloads never reset it. With a fleet store,
    // the fleet task keeps this replica's leases and slices filled from Redis.
    let (store, fleet_task): (Arc<dyn QuotaStore>, Option<FleetTask>) = match &settings.quota {
        QuotaSettings::Local => (Arc::new(LocalStore::new()), None),
        QuotaSettings::Redis(q) => {
            check_failure_groups(&settings, q, &loaded.catalog)?;
            let store = Arc::new(FleetStore::new(FleetShared::new(q.tuning())));
            let task = FleetTask::new(
                Arc::clone(&store),
                q.fleet.clone(),
                FleetMetrics::new(&metrics.registry),
                Arc::clone(&options.clock),
            )?;
            tracing::info!(
                member = %q.fleet.member_id,
                redis = %q.fleet.redis_url,
                "quotas are fleet-wide (Redis); until Redis first answers they run in their failure mode"
            );
            (store, Some(task))
        }
    };
    let admission = Admission::new(Arc::clone(&store), settings.burst_millis);
    // Metering: where billable usage goes (the spool: written before each answer completes).
    let (sink, spool, shipper) = match (options.sink, &settings.metering) {
        (Some(s), _) => (s, None, None),
        (None, MeteringSink::Spool(s)) => {
            let (spool, shipper) = open_spool(s, &metrics)?;
            (
                Arc::clone(&spool) as Arc<dyn UsageSink>,
                Some(spool),
                Some(shipper),
            )
        }
        (None, _) => (build_sink(&settings)?, None, None),
    };
    // The id settlement knows this replica's usage by (spend leases are counted against it).
    let wire_id = shipper.as_ref().map(|s| s.wire_id().to_owned());
    let gateway = Gateway::new(
        Arc::clone(&settings),
        loaded,
        admission,
        Arc::clone(&options.clock),
        sink,
        Arc::clone(&metrics),
    );

    let admin = server::bind(settings.admin_listen).await?;
    let admin_addr = admin.local_addr()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    };
    let reload_status = Arc::new(Mutex::new(ReloadStatus {
        generation: 1,
        ..Default::default()
    }));
    let mut tasks = Vec::new();

    // The API: classify → authenticate → admit → forward → meter (proxy::Gateway::handle),
    // on worker threads of their own (proxy::server::Workers).
    // TLS on the API listener when [tls] is set (the pair is loaded now: a bad one stops the
    // start, naming the file), reloaded as it changes; a plain listener beside it on request.
    let tls = match &settings.tls {
        Some(t) => Some(crate::proxy::tls::Tls::load(
            t.clone(),
            settings.http2.enabled,
            &metrics.registry,
        )?),
        None => None,
    };
    let mut listeners = vec![(
        settings.api_listen,
        server::Transport {
            tls: tls.clone(),
            proxy_protocol: settings.api_proxy_protocol,
        },
    )];
    if let Some(plain) = settings.api_plain_listen {
        listeners.push((
            plain,
            server::Transport {
                tls: None,
                proxy_protocol: settings.api_plain_proxy_protocol,
            },
        ));
    }
    if let Some(t) = &tls {
        tasks.push(tokio::spawn(Arc::clone(t).watch(stopped())));
    }
    let workers = server::Workers::start(
        listeners,
        server::worker_count(settings.workers),
        Arc::clone(&gateway),
        &stopped,
        server::Drain {
            idle_grace: settings.idle_grace,
            timeout: settings.drain_timeout,
        },
    )?;
    let api_addr = workers.local_addr();
    let api_plain_addr = workers.local_addrs().get(1).copied();
    tasks.push(tokio::spawn(workers.stopped()));
    // Metrics and probes, on their own port. They outlive the drain (readiness answers 503
    // while in-flight calls finish) and stop with the shipper.
    let (admin_stop, admin_rx) = watch::channel(false);
    let admin_task = {
        let mut rx = admin_rx;
        tokio::spawn(crate::admin::serve(
            admin,
            Arc::clone(&gateway),
            Arc::clone(&reload_status),
            store_sync.clone(),
            async move {
                let _ = rx.wait_for(|v| *v).await;
            },
        ))
    };
    // Live config: a valid change is applied whole, an invalid one refused with its reason.
    {
        let gateway = Arc::clone(&gateway);
        let status = Arc::clone(&reload_status);
        let interval = settings.reload_poll_interval;
        let settings = Arc::clone(&settings);
        let sync = store_sync.clone();
        let apply = move |result: Result<Arc<config::Loaded>, ConfigError>| {
            let result = result.and_then(|loaded| {
                check_upstreams(&settings, &loaded.catalog)?;
                Ok(loaded)
            });
            let m = gateway.metrics();
            let mut status = status.lock().expect("not poisoned");
            status.attempts += 1;
            // With the store, a reload brings a new catalog; accounts stay the store's.
            let result = result.and_then(|loaded| match &sync {
                None => Ok(gateway.apply(loaded)),
                Some(sync) => sync
                    .compose_and_apply(&gateway, Some(loaded.catalog.clone()))
                    .map_err(|reason| ConfigError {
                        file: "(entitlement store)".into(),
                        key: "(snapshot)".into(),
                        reason: format!(
                            "the store's rows do not validate against the new catalog: {reason}"
                        ),
                    }),
            });
            match result {
                Ok(generation) => {
                    m.config_reloads.with_label_values(&["ok"]).inc();
                    m.config_last_reload_ok.set(1);
                    status.generation = generation;
                    status.last_error = None;
                    tracing::info!(generation, "config reloaded");
                }
                Err(e) => {
                    m.config_reloads.with_label_values(&["error"]).inc();
                    m.config_last_reload_ok.set(0);
                    status.last_error = Some(e.to_string());
                    tracing::error!(
                        file = %e.file, key = %e.key, reason = %e.reason,
                        "config reload refused; the previous config stays in force"
                    );
                }
            }
        };
        tasks.push(tokio::spawn(watcher.run(interval, apply, stopped())));
    }
    // Spend leases for prepaid-only owners (the store, a spool whose gateway id names this
    // replica in settlement's batches).
    if let (EntitlementSource::Store(st), Some(wire_id)) = (&settings.entitlements, &wire_id)
        && st.spend_lease_units > 0
    {
        let spend = Arc::new(crate::spend::Spend::new(
            st.spend_lease_units,
            st.spend_lease_ttl,
            Arc::clone(&options.clock),
            crate::spend::SpendMetrics::new(&metrics.registry),
        ));
        gateway.set_spend(Arc::clone(&spend));
        let keys = Arc::clone(&gateway);
        tasks.push(tokio::spawn(spend.run(
            st.url.clone(),
            wire_id.clone(),
            move |item| {
                let snap = keys.snapshot();
                snap.loaded
                    .catalog
                    .billing_items
                    .get(item.0 as usize)
                    .map(|i| i.key.to_string())
            },
            stopped(),
        )));
    }
    // Image-search libraries: held from the store (or the file), learned ones written back,
    // failed lookups asked again.
    {
        let destination = match (&settings.entitlements, &store_sync) {
            (EntitlementSource::Store(st), Some(sync)) => {
                gateway.libraries().absorb(&sync.libraries());
                crate::library::Destination::Store {
                    url: st.url.clone(),
                    actor: format!(
                        "gateway {}",
                        wire_id
                            .as_deref()
                            .unwrap_or(settings.api_listen.to_string().as_str())
                    ),
                }
            }
            _ => {
                let path = settings.image_search.libraries_file.clone();
                gateway
                    .libraries()
                    .absorb(&crate::library::load_file(&path)?);
                crate::library::Destination::File(path)
            }
        };
        if let Some(rx) = gateway.take_library_changes() {
            tasks.push(tokio::spawn(crate::library::writer(
                Arc::clone(gateway.libraries()),
                rx,
                destination,
                stopped(),
            )));
        }
        tasks.push(tokio::spawn(crate::library::retry(
            Arc::clone(&gateway),
            Arc::new(crate::proxy::forward::Forwarder::new(&settings)),
            stopped(),
        )));
    }
    // The store sync: pushes, periodic deltas and full reads, until the drain is over.
    if let Some((sync, conn)) = from_store {
        tasks.push(tokio::spawn(sync.run(
            Arc::clone(&gateway),
            conn,
            stopped(),
        )));
    }
    // Forget rested buckets so memory follows active keys, not every key ever seen.
    {
        let clock = Arc::clone(&options.clock);
        let metrics = Arc::clone(&metrics);
        let interval = settings.sweep_interval;
        let stop = stopped();
        tasks.push(tokio::spawn(async move {
            tokio::pin!(stop);
            let mut ticker = tokio::time::interval(interval);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {
                        let n = store.sweep(clock.monotonic_nanos());
                        metrics.quota_entries.set(n as i64);
                    }
                    () = &mut stop => return,
                }
            }
        }));
    }
    // The fleet task stops after the API has drained (in-flight calls keep their slices),
    // then leaves the fleet.
    let (fleet_stop, fleet_rx) = watch::channel(false);
    let fleet_task = fleet_task.map(|task| {
        let mut rx = fleet_rx;
        tokio::spawn(task.run(async move {
            let _ = rx.wait_for(|v| *v).await;
        }))
    });
    // Shipping: seal the spool into batches, publish, advance the cursor after the ack. It
    // stops after the API has drained, so the last calls' usage is shipped too.
    let (ship_stop, ship_rx) = watch::channel(false);
    let ship_task = shipper.map(|shipper| {
        let mut rx = ship_rx;
        tokio::spawn(shipper.run(
            async move {
                let _ = rx.wait_for(|v| *v).await;
            },
            settings.drain_timeout,
        ))
    });
    tracing::info!(%api_addr, %admin_addr, "tollgate gateway listening");
    Ok(Running {
        api_addr,
        api_plain_addr,
        admin_addr,
        gateway,
        reload_status,
        spool,
        store_sync,
        shutdown: shutdown_tx,
        tasks,
        fleet_stop,
        fleet_task,
        ship_stop,
        ship_task,
        admin_stop,
        admin_task,
    })
}
