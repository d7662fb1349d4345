//! The entitlement service: what each account may do, changed through one authenticated API
//! and stored in one place (the PostgreSQL entitlement store, `tollgate_store`).
//!
//! - [`api`]: the routes (JSON over HTTP on a listener of its own), bearer tokens with scopes,
//!   idempotency keys, validation by the same builder as the files', pricing by settlement's
//!   quote engine;
//! - [`import`]: the TOML files (`entitlements.toml`, `credentials.toml`, `billing.toml`) as a
//!   seed of the store;
//! - [`cli`]: `tollgate admin …`, over the same API (and, for bootstrap only, the store).
//!
//! `openapi.json` documents every route; a test checks it against [`api::ROUTES`].

pub mod api;
pub mod cli;
pub mod client;
pub mod import;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tollgate_core::clock::Clock;

/// The OpenAPI 3 document of the admin API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Where the admin API reads its catalog and prices from, and where it stores.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub listen: SocketAddr,
    /// PostgreSQL connection string of the entitlement store.
    pub store: String,
    /// Directory with catalog.toml and pricing.toml (the embedded copies if `None`).
    pub config_dir: Option<PathBuf>,
}

/// The catalog and price book of a config directory: settlement's own loader.
pub use tollgate_settlement::cli::load_pricing;

/// A running admin API.
pub struct Running {
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Migrates the store, binds the listener and serves until [`Running::shutdown`].
pub async fn start(config: ServiceConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    let (catalog, book) = load_pricing(&config.config_dir)?;
    let mut client =
        tollgate_store::connect(&config.store, std::time::Duration::from_secs(10)).await?;
    tollgate_store::schema::migrate(&mut client)
        .await
        .context("migrating the entitlement store")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(api::State::new(
        config.store.clone(),
        client,
        catalog,
        book,
        clock,
    ));
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        tollgate_ops::http::serve(
            listener,
            "entitlements-api",
            move |req| api::handle(Arc::clone(&state), req),
            async move {
                let _ = rx.wait_for(|v| *v).await;
            },
        )
        .await;
    });
    tracing::info!(%addr, "entitlement API listening");
    Ok(Running { addr, stop, task })
}
