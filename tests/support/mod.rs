//! A small in-process harness: a stub backend and a gateway on ephemeral loopback ports, with
//! their config files in a temp dir, and a signing client. Each test file `mod support;`s it.

#![allow(dead_code, unreachable_pub)]

pub mod servers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tempfile::TempDir;
use tollgate_core::clock::{Clock, FakeClock, SystemClock};
use tollgate_core::config::Source;
use tollgate_core::tc3::Signer;
use tollgate_gateway::app::{self, Options, Running};
use tollgate_gateway::metering::file::FileSink;
use tollgate_gateway::settings;
use tollgate_stub::Stub;
use tollgate_stub::settings::StubSettings;
use tollgate_usage::UsageRecord;

/// Test accounts. Every credential's key is `<secret_id>-secret-key`.
pub const ENTITLEMENTS: &str = r#"
[[account]]
uin = 1
name = "main"
services = ["ocr", "facefusion", "tiia", "ft", "bda"]
postpaid = true

[[account]]
uin = 2
owner = 1
name = "sub-a"

[[account]]
uin = 3
owner = 1
name = "sub-b"

[[account]]
uin = 10
name = "overlay"
services = ["ocr"]
postpaid = true

[[account.overlay]]
interface = "ocr.GeneralBasicOCR"
qps = 80
start = 2026-03-01
end = 2026-03-04
purchased_at = 2026-02-20T10:00:00+08:00

[[account]]
uin = 11
name = "qps-mode"
services = ["bda", "facefusion"]
postpaid = true

[[account.mode]]
group = "bda.segment"
mode = "qps"
quantity = 30

[[account]]
uin = 20
name = "arrears"
services = ["ocr"]
arrears = true

[[account]]
uin = 30
name = "not-activated"
services = ["tiia"]
postpaid = true

[[account]]
uin = 40
name = "exhausted"
services = ["ocr"]
postpaid = false
exhausted = ["ocr.general_basic"]
"#;

pub const CREDENTIAL_IDS: &[(&str, u64)] = &[
    ("AKIDmain", 1),
    ("AKIDsubA", 2),
    ("AKIDsubB", 3),
    ("AKIDoverlay", 10),
    ("AKIDqpsmode", 11),
    ("AKIDarrears", 20),
    ("AKIDnotactivated", 30),
    ("AKIDexhausted", 40),
];

pub fn key_of(secret_id: &str) -> String {
    format!("{secret_id}-secret-key")
}

pub fn credentials_toml() -> String {
    CREDENTIAL_IDS
        .iter()
        .map(|(id, uin)| {
            format!(
                "[[credential]]\nsecret_id = \"{id}\"\nsecret_key = \"{}\"\nuin = {uin}\n",
                key_of(id)
            )
        })
        .collect()
}

/// Migrates the entitlement store at `url` and imports the test accounts and credentials
/// into it (what `tollgate admin import` does with a config directory).
pub async fn seed_store(url: &str, entitlements: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("entitlements.toml"), entitlements).unwrap();
    std::fs::write(dir.path().join("credentials.toml"), credentials_toml()).unwrap();
    let mut client = tollgate_store::connect(url, Duration::from_secs(10))
        .await
        .unwrap();
    tollgate_store::schema::migrate(&mut client).await.unwrap();
    let (catalog, book) = tollgate_admin::load_pricing(&None).unwrap();
    tollgate_admin::import::import(&mut client, dir.path(), &catalog, &book, chrono::Utc::now())
        .await
        .unwrap();
}

/// `[entitlements]` lines of a gateway reading the store at `url`.
pub fn store_source(url: &str) -> String {
    format!(
        "source = \"postgres\"\npostgres_url = \"{url}\"\nresync_interval_ms = 200\ntimeout_ms = 1000\n"
    )
}

pub struct Builder {
    pub entitlements: String,
    pub stub: StubSettings,
    pub clock: Option<Arc<FakeClock>>,
    pub response_timeout_ms: u64,
    pub max_request_bytes: usize,
    /// Point the gateway at a port where nothing listens.
    pub dead_upstream: bool,
    /// The `[metering]` section (default: the file sink in the temp dir).
    pub metering: Option<String>,
    /// `proxy.workers` (default: 0, one per CPU).
    pub workers: usize,
    /// More `[proxy]` lines (`key = value`).
    pub proxy_extra: String,
    /// `[auth]` lines.
    pub auth: String,
    /// Replaces the usage sink of `[metering]` (a test's own, e.g. one that fails).
    pub sink: Option<Arc<dyn tollgate_gateway::metering::UsageSink>>,
    /// `[shutdown]` lines besides `drain_timeout_seconds` (default: a 50 ms idle grace, so
    /// stopping a harness with pooled client connections does not wait a second).
    pub shutdown: String,
    /// `[quota]` lines (default: none, the local store).
    pub quota: String,
    /// Forward to this backend instead of the harness's own stub (several gateways, one
    /// backend that counts them all).
    pub upstream: Option<SocketAddr>,
    /// `image_search.libraries_file` (default: in the temp dir).
    pub image_libraries_file: Option<PathBuf>,
    /// More `[listen]` lines (e.g. `api_plain = "127.0.0.1:0"`).
    pub listen_extra: String,
    /// More top-level sections (e.g. `[tls]`, `[http2]`).
    pub extra: String,
    /// `[entitlements]` lines (default: none, the files).
    pub entitlements_source: String,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            entitlements: ENTITLEMENTS.into(),
            stub: StubSettings::default(),
            clock: None,
            response_timeout_ms: 10_000,
            max_request_bytes: 1 << 20,
            dead_upstream: false,
            metering: None,
            workers: 0,
            proxy_extra: String::new(),
            auth: String::new(),
            sink: None,
            shutdown: "drain_timeout_seconds = 10\nidle_grace_ms = 50\n".into(),
            quota: String::new(),
            upstream: None,
            image_libraries_file: None,
            listen_extra: String::new(),
            extra: String::new(),
            entitlements_source: String::new(),
        }
    }
}

pub struct Harness {
    pub dir: TempDir,
    pub stub_addr: SocketAddr,
    pub running: Running,
    pub clock: Arc<dyn Clock>,
    pub fake_clock: Option<Arc<FakeClock>>,
    pub usage_path: PathBuf,
    client: Client<HttpConnector, Full<Bytes>>,
    stub_stop: tokio::sync::oneshot::Sender<()>,
}

/// One signed call.
#[derive(Clone)]
pub struct Call {
    pub service: String,
    pub action: String,
    pub secret_id: String,
    pub secret_key: String,
    pub method: &'static str,
    pub body: Vec<u8>,
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// Seconds added to the clock's time for X-TC-Timestamp.
    pub timestamp_skew: i64,
}

impl Call {
    pub fn new(service: &str, action: &str, secret_id: &str) -> Call {
        Call {
            service: service.into(),
            action: action.into(),
            secret_id: secret_id.into(),
            secret_key: key_of(secret_id),
            method: "POST",
            body: br#"{"ImageUrl":"https://example.com/a.jpg"}"#.to_vec(),
            query: String::new(),
            headers: vec![],
            timestamp_skew: 0,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// A parsed answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub json: Value,
}

impl Reply {
    pub fn error_code(&self) -> Option<&str> {
        self.json["Response"]["Error"]["Code"].as_str()
    }

    pub fn is_success(&self) -> bool {
        self.status == 200 && self.json["Response"].is_object() && self.error_code().is_none()
    }
}

impl Harness {
    pub async fn start(b: Builder) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let stub_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stub_addr = stub_listener.local_addr().unwrap();
        let (stub_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(tollgate_stub::serve(
            stub_listener,
            Stub::new(b.stub),
            async {
                let _ = stop_rx.await;
            },
        ));
        let upstream = if let Some(u) = b.upstream {
            u
        } else if b.dead_upstream {
            // A port that was just free: nothing listens there.
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = l.local_addr().unwrap();
            drop(l);
            a
        } else {
            stub_addr
        };
        std::fs::write(
            dir.path().join("catalog.toml"),
            tollgate_core::config::EMBEDDED_CATALOG,
        )
        .unwrap();
        std::fs::write(dir.path().join("entitlements.toml"), &b.entitlements).unwrap();
        std::fs::write(dir.path().join("credentials.toml"), credentials_toml()).unwrap();
        let usage_path = dir.path().join("usage.jsonl");
        let metering = b.metering.clone().unwrap_or_else(|| {
            format!(
                "[metering]\nsink = \"file\"\npath = \"{}\"\n",
                usage_path.display()
            )
        });
        let settings_text = format!(
            r#"
[listen]
api = "127.0.0.1:0"
admin = "127.0.0.1:0"
{}
[proxy]
response_timeout_ms = {}
max_request_bytes = {}
connect_timeout_ms = 500
workers = {}
{}
[auth]
{}
[upstream.default]
url = "http://{upstream}"
{metering}
[reload]
poll_interval_ms = 100
[shutdown]
{}
[quota]
{}
{}
[image_search]
libraries_file = "{}"
lookup_timeout_ms = 1000
retry_interval_ms = 500
[entitlements]
{}
"#,
            b.listen_extra,
            b.response_timeout_ms,
            b.max_request_bytes,
            b.workers,
            b.proxy_extra,
            b.auth,
            b.shutdown,
            b.quota,
            b.extra,
            b.image_libraries_file
                .clone()
                .unwrap_or_else(|| dir.path().join("image-libraries.json"))
                .display(),
            b.entitlements_source,
        );
        // A store-fed gateway caches its snapshot in its own temp dir unless told where.
        let settings_text =
            if !b.entitlements_source.is_empty() && !b.entitlements_source.contains("cache_file") {
                format!(
                    "{settings_text}cache_file = \"{}\"\n",
                    dir.path().join("entitlements-snapshot.json").display()
                )
            } else {
                settings_text
            };
        let settings_path = dir.path().join("tollgate.toml");
        std::fs::write(&settings_path, settings_text).unwrap();
        let settings = settings::load(&Source::File(settings_path)).unwrap();
        let clock: Arc<dyn Clock> = match &b.clock {
            Some(c) => c.clone(),
            None => SystemClock::shared(),
        };
        let running = app::start(
            settings,
            Options {
                clock: Arc::clone(&clock),
                sink: b.sink.clone(),
            },
        )
        .await
        .unwrap();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(512)
            .build(connector);
        Harness {
            dir,
            stub_addr,
            running,
            clock,
            fake_clock: b.clock,
            usage_path,
            client,
            stub_stop,
        }
    }

    pub fn api(&self) -> SocketAddr {
        self.running.api_addr
    }

    /// Writes this harness's config files into `dir` for a gateway run as a separate process,
    /// with `[metering]` as given and the API on `api_port`.
    pub fn write_process_config(
        &self,
        dir: &Path,
        api_port: u16,
        admin_port: u16,
        metering: &str,
    ) -> PathBuf {
        for f in ["catalog.toml", "entitlements.toml", "credentials.toml"] {
            std::fs::copy(self.dir.path().join(f), dir.join(f)).unwrap();
        }
        let path = dir.join("tollgate.toml");
        std::fs::write(
            &path,
            format!(
                "[listen]\napi = \"127.0.0.1:{api_port}\"\nadmin = \"127.0.0.1:{admin_port}\"\n[upstream.default]\nurl = \"http://{}\"\n{metering}\n[log]\nlevel = \"warn\"\n[image_search]\nlibraries_file = \"{}\"\n",
                self.stub_addr,
                dir.join("image-libraries.json").display()
            ),
        )
        .unwrap();
        path
    }

    pub fn config_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Builds the signed HTTP request for `c`.
    pub fn request(&self, c: &Call) -> Request<Full<Bytes>> {
        self.request_for(self.api(), c)
    }

    /// Builds the signed HTTP request for `c` to a gateway at `addr`.
    pub fn request_for(&self, addr: SocketAddr, c: &Call) -> Request<Full<Bytes>> {
        let host = addr.to_string();
        let content_type = if c.method == "GET" {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        let timestamp = self.clock.unix_nanos() / 1_000_000_000 + c.timestamp_skew;
        let payload: &[u8] = if c.method == "GET" { b"" } else { &c.body };
        let authorization = Signer {
            secret_id: &c.secret_id,
            secret_key: &c.secret_key,
            service: &c.service,
            host: &host,
            content_type,
            method: c.method,
            query: c.query.as_bytes(),
            payload,
            timestamp,
        }
        .authorization();
        let uri = if c.query.is_empty() {
            format!("http://{host}/")
        } else {
            format!("http://{host}/?{}", c.query)
        };
        let mut req = Request::builder()
            .method(c.method)
            .uri(uri)
            .header("host", &host)
            .header("content-type", content_type)
            .header("x-tc-action", &c.action)
            .header("x-tc-version", "2018-11-19")
            .header("x-tc-timestamp", timestamp.to_string())
            .header("authorization", authorization);
        for (k, v) in &c.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req.body(Full::new(Bytes::from(payload.to_vec()))).unwrap()
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let resp = self.client.request(req).await.expect("gateway reachable");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("whole body").to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status: parts.status,
            headers: parts.headers,
            json,
        }
    }

    pub async fn call(&self, c: &Call) -> Reply {
        self.send(self.request(c)).await
    }

    /// Fires `n` copies of `c` concurrently; returns the replies.
    pub async fn burst(self: &Arc<Self>, c: &Call, n: usize) -> Vec<Reply> {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..n {
            let h = Arc::clone(self);
            let c = c.clone();
            set.spawn(async move { h.call(&c).await });
        }
        let mut out = Vec::with_capacity(n);
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out
    }

    pub async fn get_text(&self, addr: SocketAddr, path: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn stub_stats(&self) -> Value {
        let (_, text) = self.get_text(self.stub_addr, "/stub/stats").await;
        serde_json::from_str(&text).unwrap()
    }

    pub async fn metrics(&self) -> String {
        self.get_text(self.running.admin_addr, "/metrics").await.1
    }

    /// The value of one series in the metrics text, 0 if absent.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }

    pub fn usage(&self) -> Vec<UsageRecord> {
        if !self.usage_path.exists() {
            return vec![];
        }
        FileSink::read_all(&self.usage_path).unwrap()
    }

    /// Replaces a config file the way editors and Kubernetes do: write aside, then rename.
    pub fn replace_file(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.path().join(name)).unwrap();
    }

    pub async fn reload_status(&self) -> Value {
        let (_, text) = self.get_text(self.running.admin_addr, "/reload").await;
        serde_json::from_str(&text).unwrap()
    }

    /// Stops the gateway (draining it) and the stub; hands back the temp dir so a test can
    /// still read what was written.
    pub async fn stop(self) -> TempDir {
        self.running.shutdown().await;
        let _ = self.stub_stop.send(());
        self.dir
    }
}

/// The bytes of a request on the wire: its head as `req` has it (plus `Content-Length`
/// unless `chunked`) and its body.
pub fn raw_request(req: &Request<Full<Bytes>>, body: &[u8]) -> Vec<u8> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let mut raw = format!("{} {target} HTTP/1.1\r\n", req.method());
    for (k, v) in req.headers() {
        raw.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    raw.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = raw.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Reads one HTTP/1.1 answer with a `Content-Length` from `s`: its head (lower-cased) and
/// body. `None` if the connection ends before an answer is complete.
pub async fn read_answer(s: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    read_answer_from(s).await
}

/// [`read_answer`] from any stream (a TLS one).
pub async fn read_answer_from<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> Option<(String, Vec<u8>)> {
    let (mut answers, _) = read_answers_from(s, 1).await?;
    answers.pop()
}

/// Reads `n` answers in a row (pipelined) as [`read_answer`] reads one; with the bytes read
/// after them. `None` if the connection ends first.
pub async fn read_answers_from<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    n: usize,
) -> Option<(Vec<(String, Vec<u8>)>, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    while out.len() < n {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                out.push((head, buf[end + 4..end + 4 + len].to_vec()));
                buf.drain(..end + 4 + len);
                continue;
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
    Some((out, buf))
}

/// The vendor error code of an answer's JSON body, if it has one.
pub fn code_of(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["Response"]["Error"]["Code"].as_str().map(str::to_owned)
}

/// Sends one request on a client of its own (for tasks that outlive a borrow of the harness).
pub async fn send_alone(req: Request<Full<Bytes>>) -> Reply {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let resp = client.request(req).await.expect("gateway reachable");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("whole body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Finds `name{labels…}` in a Prometheus text exposition.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

pub fn count_codes(replies: &[Reply]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in replies {
        let k = r.error_code().unwrap_or("success").to_string();
        *m.entry(k).or_default() += 1;
    }
    m
}

pub async fn eventually<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
