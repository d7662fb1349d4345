//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is up),
//! `/readyz` (it takes traffic: config loaded, not draining, usage sink healthy), `/reload`
//! (the latest config reload attempt: generation, and why it was refused if it was).
//! Kept off the API port so scrapes and probes never compete with, or look like, API calls.

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::proxy::Gateway;
use crate::reload::ReloadStatus;
use crate::store_sync::StoreSync;
use tollgate_ops::http::text;

async fn route(
    gateway: Arc<Gateway>,
    reload: Arc<Mutex<ReloadStatus>>,
    store: Option<Arc<StoreSync>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let detail = || {
        store
            .as_ref()
            .map(|s| format!("; {}", s.detail()))
            .unwrap_or_default()
    };
    match req.uri().path() {
        "/metrics" => {
            gateway.refresh_gauges();
            if let Some(s) = &store {
                s.refresh();
            }
            text(
                StatusCode::OK,
                gateway.metrics().render(),
                "text/plain; version=0.0.4",
            )
        }
        "/reload" => {
            let status = reload.lock().expect("not poisoned").clone();
            text(
                StatusCode::OK,
                serde_json::to_string(&status).expect("serializable"),
                "application/json",
            )
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" if gateway.is_ready() => text(
            StatusCode::OK,
            format!(
                "ready (config generation {}{})\n",
                gateway.snapshot().generation,
                detail()
            ),
            "text/plain",
        ),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: draining or the usage sink is unhealthy{}\n",
                detail()
            ),
            "text/plain",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

/// Serves the admin endpoints until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    reload: Arc<Mutex<ReloadStatus>>,
    store: Option<Arc<StoreSync>>,
    shutdown: impl Future<Output = ()>,
) {
    tollgate_ops::http::serve(
        listener,
        "admin",
        move |req| {
            route(
                Arc::clone(&gateway),
                Arc::clone(&reload),
                store.clone(),
                req,
            )
        },
        shutdown,
    )
    .await;
}
