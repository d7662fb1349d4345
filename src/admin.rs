//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is up),
//! `/readyz` (it takes traffic: config loaded, not draining, usage sink healthy), `/reload`
//! (the latest config reload attempt: generation, and why it was refused if it was).
//! Kept off the API port so scrapes and probes never compete with, or look like, API calls.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use std::sync::Mutex;

use crate::app::ReloadStatus;
use crate::proxy::Gateway;

async fn route(
    gateway: Arc<Gateway>,
    reload: Arc<Mutex<ReloadStatus>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, body: String, content_type: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        r
    };
    let resp = match req.uri().path() {
        "/metrics" => {
            let m = gateway.metrics();
            m.quota_entries
                .set(gateway.admission().store().n_entries() as i64);
            // Read live: the shipper may be blocked on an unreachable broker.
            m.spool_full.set(i64::from(!gateway.metering_accepting()));
            text(StatusCode::OK, m.render(), "text/plain; version=0.0.4")
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
                "ready (config generation {})\n",
                gateway.snapshot().generation
            ),
            "text/plain",
        ),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining or the usage sink is unhealthy\n".into(),
            "text/plain",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    };
    Ok(resp)
}

/// Serves the admin endpoints until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    reload: Arc<Mutex<ReloadStatus>>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let gateway = Arc::clone(&gateway);
                let reload = Arc::clone(&reload);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        route(Arc::clone(&gateway), Arc::clone(&reload), req)
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            () = &mut shutdown => break,
        }
    }
}
