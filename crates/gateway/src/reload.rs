//! Live reload of the reloadable files: on change (polled) or on SIGHUP.
//!
//! Polling file fingerprints (modification time, length, inode) rather than inotify is
//! deliberate: Kubernetes updates a mounted ConfigMap by swapping a symlink, and editors save
//! by renaming, both of which silently end an inotify watch on the file; a `stat` every
//! `reload.poll_interval_ms` (250 ms by default) sees both, and costs nothing measurable.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tollgate_core::config::{ConfigError, Loaded, Sources, load};

/// The outcome of the latest reload attempt (served at the admin listener's `/reload`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReloadStatus {
    pub generation: u64,
    pub attempts: u64,
    /// The error of the latest attempt, if it was refused (the previous config stays).
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Vec<Option<(i64, i64, u64, u64)>>);

fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    Fingerprint(
        paths
            .iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .map(|m| (m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
            })
            .collect(),
    )
}

/// A watch on the reloadable files, started *before* the initial load: any change after this
/// point is seen, even one that lands between the initial load and the first poll.
pub struct Watcher {
    sources: Arc<Sources>,
    paths: Vec<PathBuf>,
    last: Fingerprint,
}

impl Watcher {
    pub fn new(sources: &Sources) -> Watcher {
        let paths: Vec<PathBuf> = sources.files().map(PathBuf::from).collect();
        let last = fingerprint(&paths);
        Watcher {
            sources: Arc::new(sources.clone()),
            paths,
            last,
        }
    }

    /// Watches until `shutdown`, calling `apply` with every reload attempt's result.
    pub async fn run<F>(mut self, interval: Duration, apply: F, shutdown: impl Future<Output = ()>)
    where
        F: Fn(Result<Arc<Loaded>, ConfigError>) + Send + Sync + 'static,
    {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        tokio::pin!(shutdown);
        loop {
            let forced = tokio::select! {
                _ = ticker.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
                () = &mut shutdown => return,
            };
            let now = fingerprint(&self.paths);
            if !forced && now == self.last {
                continue;
            }
            self.last = now;
            if forced {
                tracing::info!("SIGHUP: reloading config");
            }
            let sources = Arc::clone(&self.sources);
            let result = tokio::task::spawn_blocking(move || load(&sources))
                .await
                .unwrap_or_else(|e| {
                    Err(ConfigError {
                        file: "(reload)".into(),
                        key: "(task)".into(),
                        reason: e.to_string(),
                    })
                });
            apply(result);
        }
    }
}
