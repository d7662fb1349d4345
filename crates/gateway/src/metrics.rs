//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! Names follow `tollgate_<name>_<unit>` (+ `_total` for counters). Label values come from
//! bounded sets only: services and groups of the catalog (unlisted actions share one
//! `<service>.unlisted` group label), vendor error codes the gateway itself emits, and fixed
//! outcome names. Account ids are never labels.
//!
//! The request path does not look label values up: per-group handles are resolved once per
//! config snapshot into [`GroupMetrics`].

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use tollgate_core::catalog::Catalog;

/// Every metric family the gateway exports.
pub struct Metrics {
    pub registry: Registry,
    /// Admission decisions: decision = admitted | over_limit | refused (account state).
    pub admission: IntCounterVec,
    /// Admitted calls that left fewer than 20% of their group's burst (near_limit).
    pub near_limit: IntCounterVec,
    /// Completed admitted calls: result = billable | unbillable | upstream_error | abandoned.
    pub calls: IntCounterVec,
    /// Every error the gateway itself answered with, by vendor code.
    pub errors: IntCounterVec,
    /// Authentication failures by vendor code (also counted in `errors`).
    pub auth_failures: IntCounterVec,
    /// Calls of actions the catalog does not list, by service.
    pub unlisted: IntCounterVec,
    /// Seconds to decide admission (resolve the limit + check the bucket).
    pub admission_seconds: Histogram,
    /// Seconds from forwarding a call to the upstream's response head, by service.
    pub upstream_seconds: HistogramVec,
    /// Calls in flight, per concurrency group (summed over accounts).
    pub concurrency_in_flight: IntGaugeVec,
    /// Requests being handled by the gateway right now.
    pub requests_in_flight: IntGauge,
    /// Client connections accepted, by API worker (how evenly the kernel spreads them).
    pub api_connections: IntCounterVec,
    /// Connections closed for lacking a valid PROXY v2 header (`listen.*proxy_protocol`).
    pub proxy_protocol_refused: IntCounter,
    /// HTTP/1.1 connections the own codec handed over to hyper (at a call outside its plain
    /// shape: chunked, `Expect`, HTTP/1.0, a slow body, …); the rest of the connection is
    /// hyper's.
    pub http1_handovers: IntCounter,
    /// Billable units handed to the usage sink, by service and billing item.
    pub billable_units: IntCounterVec,
    /// Usage records handed to the sink, and those it failed to take.
    pub usage_records: IntCounter,
    pub usage_record_failures: IntCounter,
    /// Config reloads: result = ok | error.
    pub config_reloads: IntCounterVec,
    /// 1 if the last reload attempt succeeded, 0 if it was refused.
    pub config_last_reload_ok: IntGauge,
    /// The generation of the config in force (1 at start, +1 per applied reload).
    pub config_generation: IntGauge,
    /// Quota state entries held in memory (rate buckets + concurrency counters).
    pub quota_entries: IntGauge,
    /// The metering pipeline (spool sink only).
    pub spool_bytes: IntGauge,
    pub spool_max_bytes: IntGauge,
    pub spool_unshipped_records: IntGauge,
    pub spool_oldest_unshipped_seconds: IntGauge,
    pub spool_full: IntGauge,
    pub spool_fsync_seconds: Histogram,
    pub spool_corrupt_frames: IntCounter,
    pub spool_torn_bytes: IntCounter,
    pub batches_sealed: IntCounter,
    pub batches_published: IntCounter,
    pub batches_duplicate: IntCounter,
    pub batch_publish_errors: IntCounter,
    pub batch_publish_seconds: Histogram,
    pub batches_pending: IntGauge,
    /// Request bytes buffered now, gateway-wide (bodies being read or forwarded).
    pub request_buffered_bytes: IntGauge,
    /// Calls whose body was refused: reason = too_large | timeout | buffer_full | failed.
    pub request_body_refusals: IntCounterVec,
    /// Upstream answers abandoned because their body stalled (proxy.response_idle_timeout_ms).
    pub upstream_stalls: IntCounterVec,
    /// The replay guard (auth.replay_guard): signatures held, replays refused, calls admitted
    /// unremembered because it was full.
    pub replay_guard_signatures: IntGauge,
    pub replay_guard_replays: IntCounter,
    pub replay_guard_overflow: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let admission = counter_vec(
            "tollgate_admission_decisions_total",
            "Admission decisions by service, group and decision (admitted, over_limit, shadow_over_limit: over the limit of a shadowed group and admitted, refused).",
            &["service", "group", "decision"],
        );
        let near_limit = counter_vec(
            "tollgate_admission_near_limit_total",
            "Admitted calls that left less than 20% of the group's burst.",
            &["service", "group"],
        );
        let calls = counter_vec(
            "tollgate_calls_total",
            "Completed admitted calls by service, group and result (billable, unbillable, upstream_error, abandoned).",
            &["service", "group", "result"],
        );
        let errors = counter_vec(
            "tollgate_gateway_errors_total",
            "Errors the gateway answered itself, by vendor error code.",
            &["code"],
        );
        let auth_failures = counter_vec(
            "tollgate_auth_failures_total",
            "Authentication failures by vendor error code.",
            &["code"],
        );
        let unlisted = counter_vec(
            "tollgate_unlisted_action_calls_total",
            "Calls of actions the catalog does not list, by service.",
            &["service"],
        );
        let admission_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_admission_decision_seconds",
                "Time to decide admission: resolve the limit and check the quota (one decision in 16 is timed).",
            )
            .buckets(vec![
                50e-9, 100e-9, 250e-9, 500e-9, 1e-6, 2.5e-6, 5e-6, 10e-6, 100e-6, 1e-3,
            ]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(admission_seconds.clone()))
            .expect("unique metric");
        let upstream_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tollgate_upstream_response_seconds",
                "Time from forwarding a call to the upstream's response head, by service.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
            &["service"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_seconds.clone()))
            .expect("unique metric");
        let concurrency_in_flight = IntGaugeVec::new(
            Opts::new(
                "tollgate_concurrency_in_flight",
                "Calls in flight per concurrency group, summed over accounts.",
            ),
            &["service", "group"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(concurrency_in_flight.clone()))
            .expect("unique metric");
        let billable_units = counter_vec(
            "tollgate_billable_units_total",
            "Billable units handed to the usage sink, by service and billing item.",
            &["service", "billing_item"],
        );
        let config_reloads = counter_vec(
            "tollgate_config_reloads_total",
            "Config reload attempts by result (ok, error).",
            &["result"],
        );
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let io_buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
        ];
        let spool_bytes = gauge("tollgate_spool_bytes", "Bytes of spool segments on disk.");
        let spool_max_bytes = gauge(
            "tollgate_spool_max_bytes",
            "The spool's disk bound (metering.max_spool_bytes); 0 without a spool.",
        );
        let spool_unshipped_records = gauge(
            "tollgate_spool_unshipped_records",
            "Usage records written to the spool and not yet acknowledged by the sink.",
        );
        let spool_oldest_unshipped_seconds = gauge(
            "tollgate_spool_oldest_unshipped_age_seconds",
            "Age of the oldest sealed batch not yet acknowledged by the sink.",
        );
        let spool_full = gauge(
            "tollgate_spool_full",
            "1 while the spool is at its disk bound and new calls are refused.",
        );
        let spool_fsync_seconds = histogram(
            "tollgate_spool_fsync_seconds",
            "Time of each group-commit fdatasync of the spool.",
            io_buckets.clone(),
        );
        let spool_corrupt_frames = counter(
            "tollgate_spool_corrupt_frames_total",
            "Corrupt spool frames skipped at recovery.",
        );
        let spool_torn_bytes = counter(
            "tollgate_spool_torn_bytes_total",
            "Bytes of torn spool tail truncated at recovery.",
        );
        let batches_sealed = counter(
            "tollgate_batches_sealed_total",
            "Batches sealed from the spool.",
        );
        let batches_published = counter(
            "tollgate_batches_published_total",
            "Batches acknowledged by the sink.",
        );
        let batches_duplicate = counter(
            "tollgate_batches_duplicate_total",
            "Batches the sink acknowledged as duplicates (replays after a crash or outage).",
        );
        let batch_publish_errors = counter(
            "tollgate_batch_publish_errors_total",
            "Failed attempts to publish batches (retried with backoff).",
        );
        let batch_publish_seconds = histogram(
            "tollgate_batch_publish_seconds",
            "Time from publishing a batch to its acknowledgement.",
            io_buckets,
        );
        let batches_pending = gauge(
            "tollgate_batches_pending",
            "Sealed batches not yet acknowledged by the sink.",
        );
        let request_buffered_bytes = gauge(
            "tollgate_request_buffered_bytes",
            "Request bytes buffered now by the whole gateway (bounded by proxy.max_buffered_request_bytes).",
        );
        let request_body_refusals = counter_vec(
            "tollgate_request_body_refusals_total",
            "Calls refused while their body was read, by reason (too_large, timeout, buffer_full, failed).",
            &["reason"],
        );
        let upstream_stalls = counter_vec(
            "tollgate_upstream_stalls_total",
            "Upstream answers abandoned because their body sent nothing for proxy.response_idle_timeout_ms, by service.",
            &["service"],
        );
        let replay_guard_signatures = gauge(
            "tollgate_replay_guard_signatures",
            "Signatures the replay guard holds (auth.replay_guard).",
        );
        let replay_guard_replays = counter(
            "tollgate_replay_guard_replays_total",
            "Calls refused because their signature was already used.",
        );
        let replay_guard_overflow = counter(
            "tollgate_replay_guard_overflow_total",
            "Calls admitted without being remembered because the replay guard was full (raise auth.replay_guard_capacity).",
        );
        let m = Metrics {
            request_buffered_bytes,
            request_body_refusals,
            upstream_stalls,
            replay_guard_signatures,
            replay_guard_replays,
            replay_guard_overflow,
            spool_bytes,
            spool_max_bytes,
            spool_unshipped_records,
            spool_oldest_unshipped_seconds,
            spool_full,
            spool_fsync_seconds,
            spool_corrupt_frames,
            spool_torn_bytes,
            batches_sealed,
            batches_published,
            batches_duplicate,
            batch_publish_errors,
            batch_publish_seconds,
            batches_pending,
            admission,
            near_limit,
            calls,
            errors,
            auth_failures,
            unlisted,
            admission_seconds,
            upstream_seconds,
            concurrency_in_flight,
            requests_in_flight: gauge(
                "tollgate_requests_in_flight",
                "Requests being handled by the gateway.",
            ),
            api_connections: counter_vec(
                "tollgate_api_connections_total",
                "Client connections accepted, by API worker.",
                &["worker"],
            ),
            proxy_protocol_refused: counter(
                "tollgate_proxy_protocol_refused_total",
                "Connections closed because they did not open with a valid PROXY v2 header.",
            ),
            http1_handovers: counter(
                "tollgate_http1_handovers_total",
                "HTTP/1.1 connections handed over to hyper at a call outside the own codec's plain shape (chunked, Expect, HTTP/1.0, a slow body, a malformed head).",
            ),
            billable_units,
            usage_records: {
                let c = IntCounter::new(
                    "tollgate_usage_records_total",
                    "Usage records handed to the sink.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            usage_record_failures: {
                let c = IntCounter::new(
                    "tollgate_usage_record_failures_total",
                    "Usage records the sink failed to take (each is also logged).",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            config_reloads,
            config_last_reload_ok: gauge(
                "tollgate_config_last_reload_success",
                "1 if the last config reload attempt succeeded, 0 if it was refused.",
            ),
            config_generation: gauge(
                "tollgate_config_generation",
                "Generation of the config in force (1 at start, +1 per applied reload).",
            ),
            quota_entries: gauge(
                "tollgate_quota_entries",
                "Quota state entries in memory (rate buckets and concurrency counters).",
            ),
            registry,
        };
        m.config_last_reload_ok.set(1);
        m
    }

    /// Calls admitted, refused over the limit, and billable units since the process started
    /// (the running totals a gateway reports for reconciliation).
    pub fn totals(&self) -> (u64, u64, u64) {
        use prometheus::core::Collector;
        let sum_where =
            |families: Vec<prometheus::proto::MetricFamily>, label: &str, value: &str| -> u64 {
                families
                    .iter()
                    .flat_map(|f| f.get_metric())
                    .filter(|m| {
                        value.is_empty()
                            || m.get_label()
                                .iter()
                                .any(|l| l.name() == label && l.value() == value)
                    })
                    .map(|m| m.get_counter().get_value() as u64)
                    .sum()
            };
        (
            // Shadow refusals were admitted (and forwarded, and billed if billable).
            sum_where(self.admission.collect(), "decision", "admitted")
                + sum_where(self.admission.collect(), "decision", "shadow_over_limit"),
            sum_where(self.admission.collect(), "decision", "over_limit"),
            sum_where(self.billable_units.collect(), "", ""),
        )
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Handles for one group's series, resolved once per snapshot.
#[derive(Clone)]
pub struct GroupMetrics {
    pub admitted: IntCounter,
    pub over_limit: IntCounter,
    /// Over the limit in a shadowed group: admitted, counted here.
    pub shadow_over_limit: IntCounter,
    pub refused: IntCounter,
    pub near_limit: IntCounter,
    pub billable: IntCounter,
    pub unbillable: IntCounter,
    pub upstream_error: IntCounter,
    pub abandoned: IntCounter,
    /// Set for concurrency groups only.
    pub in_flight: Option<IntGauge>,
}

impl GroupMetrics {
    fn new(m: &Metrics, service: &str, group: &str, concurrency: bool) -> GroupMetrics {
        let adm = |d: &str| m.admission.with_label_values(&[service, group, d]);
        let call = |r: &str| m.calls.with_label_values(&[service, group, r]);
        GroupMetrics {
            admitted: adm("admitted"),
            over_limit: adm("over_limit"),
            shadow_over_limit: adm("shadow_over_limit"),
            refused: adm("refused"),
            near_limit: m.near_limit.with_label_values(&[service, group]),
            billable: call("billable"),
            unbillable: call("unbillable"),
            upstream_error: call("upstream_error"),
            abandoned: call("abandoned"),
            in_flight: concurrency
                .then(|| m.concurrency_in_flight.with_label_values(&[service, group])),
        }
    }
}

/// Per-group handles for a catalog: by group id, plus one per service for unlisted actions.
pub struct CatalogMetrics {
    pub groups: Vec<GroupMetrics>,
    pub unlisted: Vec<GroupMetrics>,
    pub upstream_seconds: Vec<Histogram>,
    /// By service id.
    pub upstream_stalls: Vec<IntCounter>,
    pub unlisted_calls: Vec<IntCounter>,
    /// Billable units by billing item id.
    pub billable_units: Vec<IntCounter>,
}

impl CatalogMetrics {
    pub fn new(m: &Metrics, catalog: &Catalog) -> CatalogMetrics {
        let svc = |id: tollgate_core::catalog::ServiceId| catalog.service(id).name.to_string();
        CatalogMetrics {
            groups: catalog
                .groups
                .iter()
                .map(|g| {
                    let concurrency = matches!(
                        g.limit,
                        tollgate_core::catalog::GroupLimit::Concurrency { .. }
                    ) || g.modes.concurrency;
                    GroupMetrics::new(m, &svc(g.service), &g.name, concurrency)
                })
                .collect(),
            unlisted: catalog
                .services
                .iter()
                .map(|s| GroupMetrics::new(m, &s.name, &s.unlisted_label, false))
                .collect(),
            upstream_seconds: catalog
                .services
                .iter()
                .map(|s| m.upstream_seconds.with_label_values(&[&*s.name]))
                .collect(),
            unlisted_calls: catalog
                .services
                .iter()
                .map(|s| m.unlisted.with_label_values(&[&*s.name]))
                .collect(),
            upstream_stalls: catalog
                .services
                .iter()
                .map(|s| m.upstream_stalls.with_label_values(&[&*s.name]))
                .collect(),
            billable_units: catalog
                .billing_items
                .iter()
                .map(|i| {
                    m.billable_units
                        .with_label_values(&[&svc(i.service), &*i.key])
                })
                .collect(),
        }
    }
}

/// The spool's own counters (`metering::spool::SpoolStats`), read when scraped: what it has
/// written and made durable, how often it synced, and what failed.
pub struct SpoolCollector {
    stats: std::sync::Arc<crate::metering::spool::SpoolStats>,
    descs: Vec<prometheus::core::Desc>,
}

/// (name, help, is a counter) of each series the collector exports, in order.
const SPOOL_SERIES: [(&str, &str, bool); 5] = [
    (
        "tollgate_spool_written_seq",
        "Sequence of the newest usage record in the page cache (copied into the spool).",
        false,
    ),
    (
        "tollgate_spool_durable_seq",
        "Sequence of the newest usage record covered by an fdatasync (the power-loss line).",
        false,
    ),
    (
        "tollgate_spool_fsyncs_total",
        "fdatasync calls of the spool that succeeded.",
        true,
    ),
    (
        "tollgate_spool_fsync_errors_total",
        "fdatasync calls of the spool that failed (their records are synced again next round).",
        true,
    ),
    (
        "tollgate_spool_write_errors_total",
        "Usage records the spool could not write (each call is also logged and counted in tollgate_usage_record_failures_total).",
        true,
    ),
];

impl SpoolCollector {
    pub fn new(stats: std::sync::Arc<crate::metering::spool::SpoolStats>) -> SpoolCollector {
        let descs = SPOOL_SERIES
            .iter()
            .map(|(name, help, _)| {
                prometheus::core::Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    vec![],
                    Default::default(),
                )
                .expect("valid metric")
            })
            .collect();
        SpoolCollector { stats, descs }
    }
}

impl prometheus::core::Collector for SpoolCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        let values = [
            s.written_seq.load(Relaxed),
            s.durable_seq.load(Relaxed),
            s.fsyncs.load(Relaxed),
            s.fsync_errors.load(Relaxed),
            s.write_errors.load(Relaxed),
        ];
        SPOOL_SERIES
            .iter()
            .zip(values)
            .map(|((name, help, counter), v)| {
                let mut m = prometheus::proto::Metric::default();
                let mut family = prometheus::proto::MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                if *counter {
                    let mut c = prometheus::proto::Counter::default();
                    c.set_value(v as f64);
                    m.set_counter(c);
                    family.set_field_type(prometheus::proto::MetricType::COUNTER);
                } else {
                    let mut g = prometheus::proto::Gauge::default();
                    g.set_value(v as f64);
                    m.set_gauge(g);
                    family.set_field_type(prometheus::proto::MetricType::GAUGE);
                }
                family.set_metric(vec![m]);
                family
            })
            .collect()
    }
}
