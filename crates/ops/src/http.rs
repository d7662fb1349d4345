//! The small HTTP/1.1 servers beside the API: the gateway's and the consumer's admin listeners
//! (`/metrics`, probes) and the stub backend. One accept loop for all of them, with what a
//! listener facing a network needs: back-off when `accept` fails (`EMFILE` would otherwise
//! spin a core), a header-read timeout (a client trickling one byte a second is closed, not
//! held), and a stop signal.
//!
//! The gateway's API listener has its own loop (`tollgate_gateway::proxy::server`): per-worker
//! listeners, drain.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// A request head must be complete within this (admin clients are scrapers and probes).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the loop waits after `accept` failed (file descriptors exhausted, or the like).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Sleeps after an `accept` error, logging it at most once per back-off: the errors that get
/// here (`EMFILE`, `ENFILE`, `ENOBUFS`) clear only when connections close, and retrying at
/// once would spin.
pub async fn accept_failed(listener: &'static str, e: &std::io::Error) {
    tracing::warn!(listener, error = %e, "accept failed; backing off");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// Serves `route` on `listener` until `shutdown` completes. Connections still open then are
/// left to finish on their own tasks.
pub async fn serve<R, F, B>(
    listener: TcpListener,
    name: &'static str,
    route: R,
    shutdown: impl Future<Output = ()>,
) where
    R: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        accept_failed(name, &e).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let route = route.clone();
                let conn = builder.serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| {
                        let answer = route(req);
                        async move { Ok::<_, Infallible>(answer.await) }
                    }),
                );
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(listener = name, error = %e, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
}

/// A plain-text or JSON answer.
pub fn text(
    status: http::StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}
