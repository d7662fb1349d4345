//! `tollgate stub`: the stub recognition backend alone.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tollgate_core::config::Source;

use crate::settings::{self, StubSettings};
use crate::{Stub, serve};

/// `tollgate stub`.
#[derive(Debug, clap::Args)]
pub struct StubArgs {
    #[arg(long, default_value = "127.0.0.1:19000")]
    pub listen: SocketAddr,
    /// Stub settings (latency, outcome mix); see loadtest/stub-*.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Fixed latency before each answer, overriding the config.
    #[arg(long)]
    pub latency_ms: Option<u64>,
}

/// Runs the stub until SIGTERM or SIGINT.
pub async fn run(a: StubArgs) -> anyhow::Result<()> {
    tollgate_ops::init_logging(false, "info");
    let mut settings = match a.config {
        Some(p) => settings::load(&Source::File(p))?,
        None => StubSettings::default(),
    };
    if let Some(ms) = a.latency_ms {
        settings.latency_ms = ms;
    }
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.listen))?;
    tracing::info!(listen = %a.listen, "stub backend listening");
    serve(listener, Stub::new(settings), tollgate_ops::terminated()).await;
    Ok(())
}
