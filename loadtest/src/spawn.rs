//! `--spawn-demo`: runs `tollgate demo` (gateway + stub backend, demo accounts) on free
//! loopback ports in a scratch directory, waits until it is ready, and stops it afterwards.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};

/// Where the release binary is when the root crate was built with `cargo build --release`.
pub fn default_binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tollgate")
}

/// A running `tollgate demo`.
pub struct Demo {
    child: Child,
    pub api: SocketAddr,
    pub admin: SocketAddr,
    pub stub: SocketAddr,
    dir: PathBuf,
}

impl Demo {
    /// Starts `bin demo` and waits (up to 30 s) for its `/readyz`.
    pub async fn start(bin: &Path) -> anyhow::Result<Demo> {
        if !bin.exists() {
            bail!(
                "the tollgate binary is not at {}: build it first with `cargo build --release` in the repository root (or pass --tollgate-bin PATH)",
                bin.display()
            );
        }
        let [api, admin, stub] = free_ports()?;
        let dir = std::env::temp_dir().join(format!("tollgate-loadtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the scratch directory {}", dir.display()))?;
        let log_path = dir.join("demo.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = Command::new(bin)
            .arg("demo")
            .args(["--listen", &api.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--stub-listen", &stub.to_string()])
            // Usage records and the spool go to the scratch directory, not the caller's.
            .current_dir(&dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut demo = Demo {
            child,
            api,
            admin,
            stub,
            dir,
        };
        if let Err(e) = demo.wait_ready(Duration::from_secs(30)).await {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            demo.stop().await;
            bail!("{e}; its log:\n{}", tail(&log, 20));
        }
        Ok(demo)
    }

    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let url: hyper::Uri = format!("http://{}/readyz", self.admin).parse()?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("tollgate demo exited at start ({status})");
            }
            if let Ok(resp) = client.get(url.clone()).await
                && resp.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("tollgate demo was not ready after {} s", limit.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stub backend's counters (`GET /stub/stats`).
    pub async fn stub_stats(&self) -> Option<serde_json::Value> {
        fetch_json(self.stub, "/stub/stats").await
    }

    /// Stops the demo and removes its scratch directory.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GETs a JSON document from `addr`.
pub async fn fetch_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let url: hyper::Uri = format!("http://{addr}{path}").parse().ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.get(url))
        .await
        .ok()?
        .ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// Three loopback ports that were free a moment ago.
fn free_ports() -> anyhow::Result<[SocketAddr; 3]> {
    let listeners = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free loopback ports")?;
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()?;
    Ok([addrs[0], addrs[1], addrs[2]])
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
