//! `tollgate.toml`: listeners, upstreams, timeouts, metering, reload and shutdown settings.
//! Read once at start; changing it needs a restart (the reloadable files are named in
//! `[files]`). Paths under `[files]` are relative to this file; data paths (`metering.path`)
//! are relative to the working directory.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate_store::tokio_postgres;

use serde::Deserialize;

use tollgate_core::config::{ConfigError, Source, Sources, parse_toml};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    listen: RawListen,
    #[serde(default)]
    files: RawFiles,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    admission: RawAdmission,
    #[serde(default)]
    quota: RawQuota,
    #[serde(default)]
    entitlements: RawEntitlementSource,
    #[serde(default)]
    proxy: RawProxy,
    upstream: BTreeMap<String, RawUpstream>,
    metering: RawMetering,
    #[serde(default)]
    reload: RawReload,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    image_search: RawImageSearch,
    tls: Option<RawTls>,
    #[serde(default)]
    http2: RawHttp2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: String,
    key_file: String,
    client_ca_file: Option<String>,
    #[serde(default = "default_tls_reload_ms")]
    reload_interval_ms: u64,
}

fn default_tls_reload_ms() -> u64 {
    500
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp2 {
    enabled: bool,
    max_concurrent_streams: u32,
    max_header_list_bytes: u32,
    initial_stream_window_bytes: u32,
    initial_connection_window_bytes: u32,
    max_pending_accept_reset_streams: usize,
    max_local_error_reset_streams: usize,
}

impl Default for RawHttp2 {
    fn default() -> Self {
        RawHttp2 {
            enabled: true,
            max_concurrent_streams: 128,
            max_header_list_bytes: 65_536,
            initial_stream_window_bytes: 1 << 20,
            initial_connection_window_bytes: 4 << 20,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 256,
        }
    }
}

/// TLS on the API listener (`[tls]`).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, clients must present a certificate this CA (PEM) signed.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for a change (a new certificate serves new
    /// connections; connections already open keep theirs).
    pub reload_interval: Duration,
}

/// HTTP/2 next to HTTP/1.1 (`[http2]`): ALPN `h2` on the TLS listener, prior knowledge (`h2c`)
/// on a plain one.
#[derive(Debug, Clone, Copy)]
pub struct Http2Settings {
    pub enabled: bool,
    pub max_concurrent_streams: u32,
    pub max_header_list_bytes: u32,
    pub initial_stream_window_bytes: u32,
    pub initial_connection_window_bytes: u32,
    /// Streams a client may open and reset before the server has accepted them (the
    /// rapid-reset attack, CVE-2023-44487): beyond, the connection is closed with GOAWAY.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset for a client's errors on one connection before closing it.
    pub max_local_error_reset_streams: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    api: String,
    admin: String,
    /// A plain-HTTP API listener beside a TLS one (for a terminator in front).
    api_plain: Option<String>,
    /// Connections to `api` (or `api_plain`) open with a PROXY protocol v2 header.
    #[serde(default)]
    api_proxy_protocol: bool,
    #[serde(default)]
    api_plain_proxy_protocol: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    catalog: String,
    entitlements: String,
    credentials: String,
}

impl Default for RawFiles {
    fn default() -> Self {
        RawFiles {
            catalog: "catalog.toml".into(),
            entitlements: "entitlements.toml".into(),
            credentials: "credentials.toml".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    max_clock_skew_seconds: i64,
    allow_unsigned_payload: bool,
    replay_guard: bool,
    replay_guard_capacity: usize,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            max_clock_skew_seconds: 300,
            allow_unsigned_payload: true,
            replay_guard: false,
            replay_guard_capacity: 4_000_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmission {
    burst_millis: u32,
    sweep_interval_seconds: u64,
}

impl Default for RawAdmission {
    fn default() -> Self {
        RawAdmission {
            burst_millis: 1000,
            sweep_interval_seconds: 60,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQuota {
    store: String,
    redis_url: Option<String>,
    redis_cluster: bool,
    member_id: Option<String>,
    key_prefix: String,
    lease_ms: u64,
    timeout_ms: u64,
    membership_ttl_ms: u64,
    probe_interval_ms: u64,
    failure_mode: String,
    failure_modes: BTreeMap<String, String>,
}

impl Default for RawQuota {
    fn default() -> Self {
        RawQuota {
            store: "local".into(),
            redis_url: None,
            redis_cluster: false,
            member_id: None,
            key_prefix: "tollgate".into(),
            lease_ms: 100,
            timeout_ms: 100,
            membership_ttl_ms: 3000,
            probe_interval_ms: 200,
            failure_mode: "fail_static".into(),
            failure_modes: BTreeMap::new(),
        }
    }
}

/// Where quota state lives (`[quota]`).
#[derive(Debug, Clone)]
pub enum QuotaSettings {
    /// In this process: one gateway, or replicas that each enforce the whole limit.
    Local,
    /// Shared by the fleet through Redis.
    Redis(Box<RedisQuota>),
}

/// `[quota]` with `store = "redis"`.
#[derive(Debug, Clone)]
pub struct RedisQuota {
    pub fleet: crate::fleet::FleetSettings,
    /// The member id is the gateway id (`metering.gateway_id`, so `--gateway-id` too).
    pub member_id_is_gateway_id: bool,
    pub failure_default: crate::admission::fleet::FailureMode,
    /// By catalog group id (checked against the catalog at start).
    pub failure_groups: BTreeMap<String, crate::admission::fleet::FailureMode>,
}

impl RedisQuota {
    /// The admission side's tuning; group ids resolved to their keys.
    pub fn tuning(&self) -> crate::admission::fleet::FleetTuning {
        let lease = self.fleet.refresh.as_nanos() as u64;
        crate::admission::fleet::FleetTuning {
            lease_nanos: lease,
            lease_idle_nanos: 2 * lease,
            warm_nanos: 1_000_000_000,
            failure_default: self.failure_default,
            failure_groups: self
                .failure_groups
                .iter()
                .map(|(g, m)| (tollgate_core::catalog::GroupKey::of_group(g), *m))
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    max_request_bytes: usize,
    max_buffered_request_bytes: usize,
    header_read_timeout_ms: u64,
    request_body_idle_timeout_ms: u64,
    request_body_timeout_ms: u64,
    connect_timeout_ms: u64,
    response_timeout_ms: u64,
    response_idle_timeout_ms: u64,
    pool_idle_timeout_seconds: u64,
    pool_max_idle_per_host: usize,
    workers: usize,
    http1_own_codec: bool,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            max_request_bytes: 10 * 1024 * 1024,
            max_buffered_request_bytes: 256 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            request_body_idle_timeout_ms: 10_000,
            request_body_timeout_ms: 30_000,
            connect_timeout_ms: 2_000,
            response_timeout_ms: 60_000,
            response_idle_timeout_ms: 30_000,
            pool_idle_timeout_seconds: 90,
            pool_max_idle_per_host: 1024,
            workers: 0,
            http1_own_codec: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    secret_id: Option<String>,
    secret_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetering {
    sink: RawSink,
    path: Option<String>,
    gateway_id: Option<String>,
    spool_dir: Option<String>,
    fsync_interval_ms: Option<u64>,
    segment_bytes: Option<u64>,
    max_spool_bytes: Option<u64>,
    seal_interval_ms: Option<u64>,
    max_batch_records: Option<usize>,
    max_batch_counts: Option<usize>,
    ship_to: Option<RawShipTo>,
    batch_dir: Option<String>,
    nats_url: Option<String>,
    nats_stream: Option<String>,
    nats_replicas: Option<usize>,
    max_in_flight: Option<usize>,
    totals_interval_ms: Option<u64>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawSink {
    Spool,
    File,
    Off,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawShipTo {
    Local,
    Nats,
}

/// `[entitlements]`: where accounts, credentials and entitlements come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEntitlementSource {
    source: String,
    postgres_url: Option<String>,
    resync_interval_ms: u64,
    full_resync_interval_ms: u64,
    timeout_ms: u64,
    startup_timeout_ms: u64,
    cache_file: String,
    spend_lease_units: u64,
    spend_lease_ttl_ms: u64,
}

impl Default for RawEntitlementSource {
    fn default() -> Self {
        RawEntitlementSource {
            source: "files".into(),
            postgres_url: None,
            resync_interval_ms: 1000,
            full_resync_interval_ms: 300_000,
            timeout_ms: 2000,
            startup_timeout_ms: 30_000,
            cache_file: "data/entitlements-snapshot.json".into(),
            spend_lease_units: 20,
            spend_lease_ttl_ms: 10_000,
        }
    }
}

/// Where accounts, credentials and entitlements come from (`[entitlements]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntitlementSource {
    /// `files.entitlements` and `files.credentials`, reloaded on change.
    Files,
    /// The entitlement store (PostgreSQL), pushed by `LISTEN`/`NOTIFY`.
    Store(StoreSource),
}

/// `[entitlements]` with `source = "postgres"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSource {
    pub url: String,
    /// Asks the store for changes this often even without a push (a lost notification is
    /// caught within this; the snapshot's age is confirmed by it).
    pub resync_interval: Duration,
    /// Reads the whole store this often (and after every reconnection).
    pub full_resync_interval: Duration,
    /// A read slower than this counts as the store being unreachable.
    pub timeout: Duration,
    /// At start the gateway waits this long for a first snapshot, then refuses to start
    /// (unless it has a cached one).
    pub startup_timeout: Duration,
    /// The last snapshot on disk: a gateway restarted while the store is unreachable starts
    /// from it. `None`: no cache.
    pub cache_file: Option<PathBuf>,
    /// Units a replica leases at a time for a prepaid-only owner's billing item (0: no spend
    /// leases).
    pub spend_lease_units: u64,
    /// A lease not renewed within this stops counting in the store; the store unreachable
    /// this long, leases are not enforced.
    pub spend_lease_ttl: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReload {
    poll_interval_ms: u64,
}

impl Default for RawReload {
    fn default() -> Self {
        RawReload {
            poll_interval_ms: 250,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawShutdown {
    drain_timeout_seconds: u64,
    idle_grace_ms: u64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown {
            drain_timeout_seconds: 30,
            idle_grace_ms: 1_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawImageSearch {
    lookup_timeout_ms: u64,
    retry_interval_ms: u64,
    libraries_file: String,
}

impl Default for RawImageSearch {
    fn default() -> Self {
        RawImageSearch {
            lookup_timeout_ms: 2_000,
            retry_interval_ms: 10_000,
            libraries_file: "data/image-libraries.json".into(),
        }
    }
}

/// Image-search libraries (`crate::library`).
#[derive(Debug, Clone)]
pub struct ImageSearchSettings {
    /// A `DescribeGroups` asked about a library never seen created must answer within this;
    /// the call is billed unresolved otherwise.
    pub lookup_timeout: Duration,
    /// How often a library whose lookup failed is asked about again (calls into it meanwhile
    /// are billed unresolved, with no lookup of their own).
    pub retry_interval: Duration,
    /// With `entitlements.source = "files"`: where learned libraries are kept (the store
    /// holds them otherwise).
    pub libraries_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: LogFormat,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Where admitted calls of a service go.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `http://host:port` (no path).
    pub uri: http::Uri,
    /// `host:port`, the Host header sent upstream.
    pub authority: String,
    /// `authority` as a header value, made once (it goes on every forwarded call).
    pub host: http::HeaderValue,
    /// Re-sign forwarded calls with this credential (needed when the upstream is the vendor's
    /// real endpoint, whose signature check covers the Host header).
    pub resign: Option<(String, String)>,
}

impl Upstream {
    /// The upstream at `uri`; `None` when it has no host.
    pub fn new(uri: http::Uri, resign: Option<(String, String)>) -> Option<Upstream> {
        let authority = uri.authority()?.to_string();
        let host = http::HeaderValue::from_str(&authority).ok()?;
        Some(Upstream {
            uri,
            authority,
            host,
            resign,
        })
    }
}

/// The durable metering pipeline: spool, batches, shipping.
#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub spool: crate::metering::spool::SpoolConfig,
    pub ship: crate::metering::ship::ShipConfig,
}

/// Where usage records go.
#[derive(Debug, Clone)]
pub enum MeteringSink {
    /// The durable spool, sealed into batches and shipped (the default).
    Spool(Box<SpoolSettings>),
    /// A local append-only JSON-lines file (no batches, no shipping).
    File(PathBuf),
    /// No metering at all: only for measuring the gateway without it. Logged loudly.
    Off,
}

/// Validated `tollgate.toml`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub source: Source,
    pub api_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub sources: Sources,
    pub max_clock_skew_seconds: i64,
    pub allow_unsigned_payload: bool,
    /// `auth.replay_guard`: the most signatures remembered at once, when the guard is on.
    pub replay_guard_capacity: Option<usize>,
    pub burst_millis: u32,
    pub sweep_interval: Duration,
    pub quota: QuotaSettings,
    pub entitlements: EntitlementSource,
    pub max_request_bytes: usize,
    /// Request bytes buffered at once by the whole gateway (bodies being read or forwarded).
    pub max_buffered_request_bytes: usize,
    /// A request head must arrive within this of the connection turning active.
    pub header_read_timeout: Duration,
    /// Plain HTTP/1.1 calls are read and answered by the gateway's own codec (`false`: every
    /// HTTP/1.1 connection is hyper's from its first byte).
    pub http1_own_codec: bool,
    /// Request bodies: no byte for this long, or not whole within the total, is refused.
    pub request_body_idle_timeout: Duration,
    pub request_body_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// An upstream answer's body that sends nothing for this long is abandoned.
    pub response_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// API worker threads (each its own event loop, listener and upstream pool); 0 = one per
    /// CPU.
    pub workers: usize,
    /// By service name; `"default"` serves services without their own entry.
    pub upstreams: BTreeMap<String, Upstream>,
    pub metering: MeteringSink,
    pub reload_poll_interval: Duration,
    pub drain_timeout: Duration,
    /// On SIGTERM, keep-alive connections stay open this long, so a call sent as the drain
    /// starts is answered (with `Connection: close`) instead of cut.
    pub idle_grace: Duration,
    pub log_format: LogFormat,
    pub log_level: String,
    pub image_search: ImageSearchSettings,
    /// `[tls]`: the API listener speaks TLS.
    pub tls: Option<TlsSettings>,
    /// `listen.api_plain`: a plain-HTTP API listener beside the TLS one.
    pub api_plain_listen: Option<SocketAddr>,
    /// `listen.api_proxy_protocol`, `listen.api_plain_proxy_protocol`: the listener's
    /// connections open with a PROXY v2 header naming the client (`proxy::proxy_protocol`).
    pub api_proxy_protocol: bool,
    pub api_plain_proxy_protocol: bool,
    pub http2: Http2Settings,
}

impl Settings {
    /// The upstream of `service`.
    pub fn upstream(&self, service: &str) -> Option<&Upstream> {
        self.upstream_slot(service).map(|(_, u)| u)
    }

    /// The upstream of `service` and its index among `upstreams` (which names its connection
    /// pool in every API worker: settings do not change while the gateway runs).
    pub fn upstream_slot(&self, service: &str) -> Option<(usize, &Upstream)> {
        let name = if self.upstreams.contains_key(service) {
            service
        } else {
            "default"
        };
        self.upstreams
            .iter()
            .enumerate()
            .find(|(_, (n, _))| n.as_str() == name)
            .map(|(i, (_, u))| (i, u))
    }

    /// The embedded defaults: every file compiled in, loopback listeners.
    pub fn embedded() -> Settings {
        load(&Source::Embedded {
            name: "tollgate.toml",
            text: crate::EMBEDDED_SETTINGS,
        })
        .expect("the embedded tollgate.toml is valid")
    }
}

/// Checks a gateway id (`metering.gateway_id`, `--gateway-id`, `$TOLLGATE_GATEWAY_ID`): it
/// names NATS subjects and batch ids, so 1-64 letters, digits, `-` or `_`.
pub fn check_gateway_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(
            "must be 1-64 letters, digits, '-' or '_' (it names NATS subjects and batch ids)"
                .into(),
        );
    }
    Ok(())
}

/// Reads and validates `tollgate.toml`. Relative paths in it are relative to its directory.
pub fn load(source: &Source) -> Result<Settings, ConfigError> {
    parse(source, &source.read()?)
}

/// Validates the text of `tollgate.toml` read from `source`.
pub fn parse(source: &Source, text: &str) -> Result<Settings, ConfigError> {
    let raw: RawSettings = parse_toml(source, text)?;
    let err = |key: &str, reason: String| ConfigError::new(source, key, reason);
    let base: PathBuf = source
        .path()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let resolve = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let addr = |key: &str, v: &str| -> Result<SocketAddr, ConfigError> {
        v.parse()
            .map_err(|e| err(key, format!("{v:?} is not host:port ({e})")))
    };
    let sources = match source {
        Source::Embedded { .. } => Sources::embedded(),
        Source::File(_) => Sources {
            catalog: Source::File(resolve(&raw.files.catalog)),
            entitlements: Source::File(resolve(&raw.files.entitlements)),
            credentials: Source::File(resolve(&raw.files.credentials)),
        },
    };
    if raw.auth.max_clock_skew_seconds <= 0 {
        return Err(err(
            "auth.max_clock_skew_seconds",
            "must be positive".into(),
        ));
    }
    if raw.admission.burst_millis == 0 {
        return Err(err("admission.burst_millis", "must be at least 1".into()));
    }
    if raw.proxy.max_request_bytes == 0 {
        return Err(err("proxy.max_request_bytes", "must be positive".into()));
    }
    if raw.proxy.max_buffered_request_bytes < raw.proxy.max_request_bytes {
        return Err(err(
            "proxy.max_buffered_request_bytes",
            format!(
                "{} is less than proxy.max_request_bytes ({}): no call of the largest size could be read",
                raw.proxy.max_buffered_request_bytes, raw.proxy.max_request_bytes
            ),
        ));
    }
    if raw.auth.replay_guard && raw.auth.replay_guard_capacity == 0 {
        return Err(err(
            "auth.replay_guard_capacity",
            "must be positive when auth.replay_guard is on".into(),
        ));
    }
    for (k, v) in [
        (
            "proxy.header_read_timeout_ms",
            raw.proxy.header_read_timeout_ms,
        ),
        (
            "proxy.request_body_idle_timeout_ms",
            raw.proxy.request_body_idle_timeout_ms,
        ),
        (
            "proxy.request_body_timeout_ms",
            raw.proxy.request_body_timeout_ms,
        ),
        ("proxy.connect_timeout_ms", raw.proxy.connect_timeout_ms),
        ("proxy.response_timeout_ms", raw.proxy.response_timeout_ms),
        (
            "proxy.response_idle_timeout_ms",
            raw.proxy.response_idle_timeout_ms,
        ),
        ("reload.poll_interval_ms", raw.reload.poll_interval_ms),
    ] {
        if v == 0 {
            return Err(err(k, "must be positive".into()));
        }
    }
    let mut upstreams = BTreeMap::new();
    for (name, u) in &raw.upstream {
        let key = format!("upstream.{name}.url");
        let uri: http::Uri = u
            .url
            .parse()
            .map_err(|e| err(&key, format!("{:?} is not a URL ({e})", u.url)))?;
        if uri.scheme_str() != Some("http") {
            return Err(err(
                &key,
                "must be an http:// URL (TLS to upstreams is terminated by a sidecar)".into(),
            ));
        }
        if uri.authority().is_none() {
            return Err(err(&key, "has no host".into()));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(err(&key, "must not have a path".into()));
        }
        let resign = match (&u.secret_id, &u.secret_key) {
            (Some(id), Some(k)) => Some((id.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return Err(err(
                    &format!("upstream.{name}.secret_key"),
                    "secret_id and secret_key go together".into(),
                ));
            }
        };
        let upstream =
            Upstream::new(uri, resign).ok_or_else(|| err(&key, "has no valid host".into()))?;
        upstreams.insert(name.clone(), upstream);
    }
    // Data paths are relative to the working directory: config may be read-only.
    let m = &raw.metering;
    let metering = match m.sink {
        RawSink::File => match &m.path {
            Some(p) => MeteringSink::File(PathBuf::from(p)),
            None => return Err(err("metering.path", "required for the file sink".into())),
        },
        RawSink::Off => MeteringSink::Off,
        RawSink::Spool => {
            let gateway_id = m.gateway_id.clone().unwrap_or_else(|| "gw-local".into());
            check_gateway_id(&gateway_id)
                .map_err(|reason| err("metering.gateway_id", format!("{gateway_id:?} {reason}")))?;
            let positive = |key: &str, v: Option<u64>, default: u64| -> Result<u64, ConfigError> {
                match v {
                    Some(0) => Err(err(key, "must be positive".into())),
                    Some(v) => Ok(v),
                    None => Ok(default),
                }
            };
            let destination = match m.ship_to.unwrap_or(RawShipTo::Local) {
                RawShipTo::Local => crate::metering::ship::Destination::LocalDir(PathBuf::from(
                    m.batch_dir.as_deref().unwrap_or("data/batches"),
                )),
                RawShipTo::Nats => crate::metering::ship::Destination::Nats {
                    url: m
                        .nats_url
                        .clone()
                        .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
                    stream: m
                        .nats_stream
                        .clone()
                        .unwrap_or_else(|| "TOLLGATE_USAGE".into()),
                    replicas: match m.nats_replicas {
                        Some(r) if (1..=5).contains(&r) => r,
                        None => 1,
                        Some(r) => {
                            return Err(err("metering.nats_replicas", format!("{r} is not 1..=5")));
                        }
                    },
                },
            };
            MeteringSink::Spool(Box::new(SpoolSettings {
                spool: crate::metering::spool::SpoolConfig {
                    dir: PathBuf::from(m.spool_dir.as_deref().unwrap_or("data/spool")),
                    segment_bytes: positive("metering.segment_bytes", m.segment_bytes, 64 << 20)?,
                    fsync_interval: Duration::from_millis(m.fsync_interval_ms.unwrap_or(100)),
                    max_bytes: positive("metering.max_spool_bytes", m.max_spool_bytes, 1 << 30)?,
                },
                ship: crate::metering::ship::ShipConfig {
                    gateway_id,
                    destination,
                    seal_interval: Duration::from_millis(positive(
                        "metering.seal_interval_ms",
                        m.seal_interval_ms,
                        1000,
                    )?),
                    max_batch_records: positive(
                        "metering.max_batch_records",
                        m.max_batch_records.map(|v| v as u64),
                        100_000,
                    )? as usize,
                    // A count is ~150 bytes of JSON at most: 2,000 counts stay well under the
                    // 1 MB default max_payload of nats-server.
                    max_batch_counts: match m.max_batch_counts {
                        Some(n) if n > 5_000 => {
                            return Err(err(
                                "metering.max_batch_counts",
                                format!(
                                    "{n} could make a batch larger than NATS's default 1 MB max_payload; use at most 5000"
                                ),
                            ));
                        }
                        other => {
                            positive("metering.max_batch_counts", other.map(|v| v as u64), 2_000)?
                                as usize
                        }
                    },
                    max_in_flight: positive(
                        "metering.max_in_flight",
                        m.max_in_flight.map(|v| v as u64),
                        8,
                    )? as usize,
                    totals_interval: Duration::from_millis(positive(
                        "metering.totals_interval_ms",
                        m.totals_interval_ms,
                        10_000,
                    )?),
                },
            }))
        }
    };
    let quota = parse_quota(&raw.quota, &metering, &err)?;
    let entitlements = parse_entitlement_source(&raw.entitlements, &err)?;
    let sources = match entitlements {
        EntitlementSource::Files => sources,
        // The files stay the catalog's; accounts and credentials come from the store.
        EntitlementSource::Store(_) => Sources {
            entitlements: Source::Embedded {
                name: "entitlements (from the store)",
                text: "",
            },
            credentials: Source::Embedded {
                name: "credentials (from the store)",
                text: "",
            },
            ..sources
        },
    };
    Ok(Settings {
        source: source.clone(),
        api_listen: addr("listen.api", &raw.listen.api)?,
        admin_listen: addr("listen.admin", &raw.listen.admin)?,
        sources,
        max_clock_skew_seconds: raw.auth.max_clock_skew_seconds,
        allow_unsigned_payload: raw.auth.allow_unsigned_payload,
        replay_guard_capacity: raw
            .auth
            .replay_guard
            .then_some(raw.auth.replay_guard_capacity),
        burst_millis: raw.admission.burst_millis,
        sweep_interval: Duration::from_secs(raw.admission.sweep_interval_seconds.max(1)),
        quota,
        entitlements,
        max_request_bytes: raw.proxy.max_request_bytes,
        max_buffered_request_bytes: raw.proxy.max_buffered_request_bytes,
        header_read_timeout: Duration::from_millis(raw.proxy.header_read_timeout_ms),
        http1_own_codec: raw.proxy.http1_own_codec,
        request_body_idle_timeout: Duration::from_millis(raw.proxy.request_body_idle_timeout_ms),
        request_body_timeout: Duration::from_millis(raw.proxy.request_body_timeout_ms),
        connect_timeout: Duration::from_millis(raw.proxy.connect_timeout_ms),
        response_timeout: Duration::from_millis(raw.proxy.response_timeout_ms),
        response_idle_timeout: Duration::from_millis(raw.proxy.response_idle_timeout_ms),
        pool_idle_timeout: Duration::from_secs(raw.proxy.pool_idle_timeout_seconds),
        pool_max_idle_per_host: raw.proxy.pool_max_idle_per_host,
        workers: raw.proxy.workers,
        upstreams,
        metering,
        reload_poll_interval: Duration::from_millis(raw.reload.poll_interval_ms),
        drain_timeout: Duration::from_secs(raw.shutdown.drain_timeout_seconds),
        idle_grace: Duration::from_millis(raw.shutdown.idle_grace_ms),
        log_format: raw.log.format,
        log_level: raw.log.level,
        image_search: image_search(&raw.image_search, &err)?,
        tls: match &raw.tls {
            None => None,
            Some(t) => {
                if t.reload_interval_ms < 100 {
                    return Err(err("tls.reload_interval_ms", "must be at least 100".into()));
                }
                Some(TlsSettings {
                    cert_file: resolve(&t.cert_file),
                    key_file: resolve(&t.key_file),
                    client_ca_file: t.client_ca_file.as_deref().map(resolve),
                    reload_interval: Duration::from_millis(t.reload_interval_ms),
                })
            }
        },
        api_plain_listen: match &raw.listen.api_plain {
            None => None,
            Some(_) if raw.tls.is_none() => {
                return Err(err(
                    "listen.api_plain",
                    "is a plain listener beside a TLS one: set [tls] (listen.api is plain without it)".into(),
                ));
            }
            Some(a) => Some(addr("listen.api_plain", a)?),
        },
        api_proxy_protocol: raw.listen.api_proxy_protocol,
        api_plain_proxy_protocol: {
            if raw.listen.api_plain_proxy_protocol && raw.listen.api_plain.is_none() {
                return Err(err(
                    "listen.api_plain_proxy_protocol",
                    "needs listen.api_plain (without [tls], listen.api is the plain listener: use listen.api_proxy_protocol)".into(),
                ));
            }
            raw.listen.api_plain_proxy_protocol
        },
        http2: {
            let h = &raw.http2;
            if h.max_concurrent_streams == 0 {
                return Err(err(
                    "http2.max_concurrent_streams",
                    "must be at least 1".into(),
                ));
            }
            if h.max_header_list_bytes < 4096 {
                return Err(err(
                    "http2.max_header_list_bytes",
                    "must be at least 4096".into(),
                ));
            }
            for (key, v) in [
                (
                    "http2.initial_stream_window_bytes",
                    h.initial_stream_window_bytes,
                ),
                (
                    "http2.initial_connection_window_bytes",
                    h.initial_connection_window_bytes,
                ),
            ] {
                if !(65_535..=(1 << 31) - 1).contains(&v) {
                    return Err(err(
                        key,
                        "must be between 65535 and 2147483647 (RFC 9113)".into(),
                    ));
                }
            }
            Http2Settings {
                enabled: h.enabled,
                max_concurrent_streams: h.max_concurrent_streams,
                max_header_list_bytes: h.max_header_list_bytes,
                initial_stream_window_bytes: h.initial_stream_window_bytes,
                initial_connection_window_bytes: h.initial_connection_window_bytes,
                max_pending_accept_reset_streams: h.max_pending_accept_reset_streams,
                max_local_error_reset_streams: h.max_local_error_reset_streams,
            }
        },
    })
}

fn image_search(
    i: &RawImageSearch,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ImageSearchSettings, ConfigError> {
    if i.lookup_timeout_ms == 0 {
        return Err(err(
            "image_search.lookup_timeout_ms",
            "must be at least 1".into(),
        ));
    }
    if i.retry_interval_ms < 100 {
        return Err(err(
            "image_search.retry_interval_ms",
            "must be at least 100 (each retry is a call to the backend)".into(),
        ));
    }
    if i.libraries_file.is_empty() {
        return Err(err(
            "image_search.libraries_file",
            "must not be empty".into(),
        ));
    }
    Ok(ImageSearchSettings {
        lookup_timeout: Duration::from_millis(i.lookup_timeout_ms),
        retry_interval: Duration::from_millis(i.retry_interval_ms),
        libraries_file: PathBuf::from(&i.libraries_file),
    })
}

fn parse_entitlement_source(
    e: &RawEntitlementSource,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<EntitlementSource, ConfigError> {
    match e.source.as_str() {
        "files" => return Ok(EntitlementSource::Files),
        "postgres" => {}
        other => {
            return Err(err(
                "entitlements.source",
                format!("{other:?} is not an entitlement source (\"files\" or \"postgres\")"),
            ));
        }
    }
    // $TOLLGATE_STORE (a Secret, in Kubernetes) stands in for the key and wins over it
    // (`tollgate gateway --store` too).
    let url = std::env::var("TOLLGATE_STORE")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| e.postgres_url.clone())
        .ok_or_else(|| {
            err(
                "entitlements.postgres_url",
                "is required with source = \"postgres\" (e.g. \"host=db user=tollgate dbname=tollgate\"), or $TOLLGATE_STORE".into(),
            )
        })?;
    // (The value is not echoed: it may hold a password.)
    if let Err(x) = url.parse::<tokio_postgres::Config>() {
        return Err(err(
            "entitlements.postgres_url",
            format!(
                "is not a PostgreSQL connection string (libpq key=value, or postgresql://…): {x}"
            ),
        ));
    }
    for (k, v) in [
        ("entitlements.resync_interval_ms", e.resync_interval_ms),
        (
            "entitlements.full_resync_interval_ms",
            e.full_resync_interval_ms,
        ),
        ("entitlements.timeout_ms", e.timeout_ms),
        ("entitlements.startup_timeout_ms", e.startup_timeout_ms),
    ] {
        if v == 0 {
            return Err(err(k, "must be positive".into()));
        }
    }
    if e.full_resync_interval_ms < e.resync_interval_ms {
        return Err(err(
            "entitlements.full_resync_interval_ms",
            format!(
                "{} is less than entitlements.resync_interval_ms ({})",
                e.full_resync_interval_ms, e.resync_interval_ms
            ),
        ));
    }
    Ok(EntitlementSource::Store(StoreSource {
        url,
        resync_interval: Duration::from_millis(e.resync_interval_ms),
        full_resync_interval: Duration::from_millis(e.full_resync_interval_ms),
        timeout: Duration::from_millis(e.timeout_ms),
        startup_timeout: Duration::from_millis(e.startup_timeout_ms),
        cache_file: (!e.cache_file.is_empty()).then(|| PathBuf::from(&e.cache_file)),
        spend_lease_units: e.spend_lease_units,
        spend_lease_ttl: Duration::from_millis(e.spend_lease_ttl_ms.max(1)),
    }))
}

fn parse_quota(
    q: &RawQuota,
    metering: &MeteringSink,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<QuotaSettings, ConfigError> {
    use crate::admission::fleet::FailureMode;
    match q.store.as_str() {
        "local" => return Ok(QuotaSettings::Local),
        "redis" => {}
        other => {
            return Err(err(
                "quota.store",
                format!("{other:?} is not a quota store (\"local\" or \"redis\")"),
            ));
        }
    }
    let url = q.redis_url.clone().ok_or_else(|| {
        err(
            "quota.redis_url",
            "is required with store = \"redis\" (e.g. \"redis://redis:6379/\")".into(),
        )
    })?;
    if q.redis_cluster {
        let nodes = crate::fleet::cluster_nodes(&url);
        if nodes.is_empty() {
            return Err(err("quota.redis_url", "names no cluster node".into()));
        }
        if let Err(e) = redis::cluster::ClusterClient::new(nodes) {
            return Err(err("quota.redis_url", format!("{url:?}: {e}")));
        }
    } else if let Err(e) = redis::Client::open(url.as_str()) {
        return Err(err("quota.redis_url", format!("{url:?}: {e}")));
    }
    let member_id = match (&q.member_id, metering) {
        (Some(m), _) => m.clone(),
        (None, MeteringSink::Spool(s)) => s.ship.gateway_id.clone(),
        (None, _) => {
            return Err(err(
                "quota.member_id",
                "is required with store = \"redis\" unless metering.gateway_id names this gateway"
                    .into(),
            ));
        }
    };
    check_gateway_id(&member_id)
        .map_err(|reason| err("quota.member_id", format!("{member_id:?} {reason}")))?;
    if q.key_prefix.is_empty()
        || q.key_prefix.contains(['{', '}'])
        || q.key_prefix.chars().any(char::is_whitespace)
    {
        return Err(err(
            "quota.key_prefix",
            format!(
                "{:?} must be non-empty, without braces or spaces (keys hash-tag the account)",
                q.key_prefix
            ),
        ));
    }
    let range = |key: &str, v: u64, lo: u64, hi: u64| -> Result<Duration, ConfigError> {
        if !(lo..=hi).contains(&v) {
            return Err(err(key, format!("{v} is outside {lo}..={hi}")));
        }
        Ok(Duration::from_millis(v))
    };
    let refresh = range("quota.lease_ms", q.lease_ms, 10, 1000)?;
    let timeout = range("quota.timeout_ms", q.timeout_ms, 1, 5000)?;
    let membership_ttl = range("quota.membership_ttl_ms", q.membership_ttl_ms, 500, 60_000)?;
    let probe_interval = range("quota.probe_interval_ms", q.probe_interval_ms, 10, 10_000)?;
    // Every member renews its entries once per max(lease, 250 ms); an entry not renewed
    // within the TTL is taken for a dead member's. Three renewals per TTL at least.
    let slice_refresh = refresh.max(Duration::from_millis(250));
    if membership_ttl < 3 * slice_refresh {
        return Err(err(
            "quota.membership_ttl_ms",
            format!(
                "{} is less than three report intervals ({} ms: max(quota.lease_ms, 250) x 3); a live member would look dead",
                q.membership_ttl_ms,
                3 * slice_refresh.as_millis()
            ),
        ));
    }
    let mode = |key: &str, v: &str| {
        FailureMode::parse(v).ok_or_else(|| {
            err(
                key,
                format!("{v:?} is not a failure mode (fail_static, fail_open or fail_closed)"),
            )
        })
    };
    let failure_default = mode("quota.failure_mode", &q.failure_mode)?;
    let mut failure_groups = BTreeMap::new();
    for (g, m) in &q.failure_modes {
        failure_groups.insert(g.clone(), mode(&format!("quota.failure_modes.{g}"), m)?);
    }
    Ok(QuotaSettings::Redis(Box::new(RedisQuota {
        fleet: crate::fleet::FleetSettings {
            redis_url: url,
            redis_cluster: q.redis_cluster,
            member_id,
            key_prefix: q.key_prefix.clone(),
            timeout,
            refresh,
            slice_refresh,
            membership_ttl,
            announce_interval: membership_ttl / 3,
            probe_interval,
            slice_idle: Duration::from_secs(10),
        },
        member_id_is_gateway_id: q.member_id.is_none(),
        failure_default,
        failure_groups,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_settings_load() {
        let s = Settings::embedded();
        assert_eq!(s.max_clock_skew_seconds, 300);
        assert!(s.upstream("ocr").is_some());
    }

    /// Found by the `config` fuzz target: an unknown field with an empty name was reported
    /// under an empty key.
    #[test]
    fn an_unnamed_field_is_reported_at_the_top_level() {
        let source = Source::File("tollgate.toml".into());
        let e = parse(&source, "\"\" = \"\"").unwrap_err();
        assert_eq!(e.key, "(top level)", "{e}");
    }

    #[test]
    fn quota_errors_name_the_key() {
        let base = "[listen]\napi = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:3\"\n[upstream.default]\nurl = \"http://127.0.0.1:2\"\n[metering]\nsink = \"off\"\n[quota]\n";
        let src = Source::Embedded {
            name: "tollgate.toml",
            text: "",
        };
        let cases = [
            (
                "store = \"memcached\"\n",
                "quota.store",
                "not a quota store",
            ),
            ("store = \"redis\"\n", "quota.redis_url", "is required"),
            (
                "store = \"redis\"\nredis_cluster = true\nredis_url = \" , \"\n",
                "quota.redis_url",
                "names no cluster node",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://r:6379/\"\n",
                "quota.member_id",
                "is required",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://r:6379/\"\nmember_id = \"a b\"\n",
                "quota.member_id",
                "1-64 letters",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://r:6379/\"\nmember_id = \"a\"\nkey_prefix = \"{x}\"\n",
                "quota.key_prefix",
                "braces",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://r:6379/\"\nmember_id = \"a\"\nlease_ms = 400\nmembership_ttl_ms = 1000\n",
                "quota.membership_ttl_ms",
                "three report intervals",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://r:6379/\"\nmember_id = \"a\"\ntimeout_ms = 0\n",
                "quota.timeout_ms",
                "outside",
            ),
            (
                "store = \"redis\"\nredis_url = \"redis://r:6379/\"\nmember_id = \"a\"\n[quota.failure_modes]\n\"ocr.x\" = \"fail_soft\"\n",
                "quota.failure_modes.ocr.x",
                "not a failure mode",
            ),
        ];
        for (quota, key, reason) in cases {
            let e = parse(&src, &format!("{base}{quota}")).unwrap_err();
            assert_eq!(e.key, key, "{quota}");
            assert!(e.reason.contains(reason), "{quota}: {e}");
        }
        let ok = parse(
            &src,
            &format!(
                "{base}store = \"redis\"\nredis_url = \"redis://r:6379/\"\nmember_id = \"gw-1\"\n"
            ),
        )
        .unwrap();
        let QuotaSettings::Redis(q) = ok.quota else {
            panic!("not redis")
        };
        assert_eq!(q.fleet.member_id, "gw-1");
        assert!(!q.member_id_is_gateway_id);
    }

    #[test]
    fn entitlement_source_errors_name_the_key() {
        let base = "[listen]\napi = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:3\"\n[upstream.default]\nurl = \"http://127.0.0.1:2\"\n[metering]\nsink = \"off\"\n[entitlements]\n";
        let src = Source::Embedded {
            name: "tollgate.toml",
            text: "",
        };
        // (Only when $TOLLGATE_STORE is unset does a missing URL fail.)
        let url_required = std::env::var("TOLLGATE_STORE").is_err();
        let mut cases = vec![
            (
                "source = \"mysql\"\n",
                "entitlements.source",
                "not an entitlement source",
            ),
            (
                "source = \"postgres\"\npostgres_url = \"host=db\"\ntimeout_ms = 0\n",
                "entitlements.timeout_ms",
                "must be positive",
            ),
            (
                "source = \"postgres\"\npostgres_url = \"host=db\"\nresync_interval_ms = 5000\nfull_resync_interval_ms = 1000\n",
                "entitlements.full_resync_interval_ms",
                "less than entitlements.resync_interval_ms",
            ),
            (
                "source = \"postgres\"\npostgres_url = \"host=db port=x\"\n",
                "entitlements.postgres_url",
                "not a PostgreSQL connection string",
            ),
        ];
        if url_required {
            cases.push((
                "source = \"postgres\"\n",
                "entitlements.postgres_url",
                "is required",
            ));
        }
        for (ent, key, reason) in cases {
            let e = parse(&src, &format!("{base}{ent}")).unwrap_err();
            assert_eq!(e.key, key, "{ent}");
            assert!(e.reason.contains(reason), "{ent}: {e}");
        }
        let ok = parse(
            &src,
            &format!(
                "{base}source = \"postgres\"\npostgres_url = \"host=db\"\ncache_file = \"\"\n"
            ),
        )
        .unwrap();
        let EntitlementSource::Store(st) = ok.entitlements else {
            panic!("not the store")
        };
        assert_eq!(st.cache_file, None);
        assert_eq!(st.resync_interval, Duration::from_secs(1));
        // With the store, the entitlement and credential files are not read.
        assert!(ok.sources.entitlements.path().is_none());
        let files = parse(&src, base).unwrap();
        assert_eq!(files.entitlements, EntitlementSource::Files);
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tollgate.toml");
        std::fs::write(
            &path,
            "[listen]\napi = \"127.0.0.1:1\"\nadmin = \"nope\"\n[upstream.default]\nurl = \"http://127.0.0.1:2\"\n[metering]\nsink = \"off\"\n",
        )
        .unwrap();
        let e = load(&Source::File(path.clone())).unwrap_err();
        assert_eq!(e.key, "listen.admin");
        assert!(e.reason.contains("not host:port"), "{e}");
        std::fs::write(
            &path,
            "[listen]\napi = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:3\"\n[upstream.default]\nurl = \"https://x\"\n[metering]\nsink = \"off\"\n",
        )
        .unwrap();
        let e = load(&Source::File(path)).unwrap_err();
        assert_eq!(e.key, "upstream.default.url");
    }
}
