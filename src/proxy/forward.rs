//! Forwarding admitted calls to the recognition backend of their service: pooled keep-alive
//! connections, connect and response-head timeouts, the caller's identity as headers.
//!
//! Only this module talks to upstreams.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::auth::tc3::Signer;
use crate::config::gateway::{Settings, Upstream};

/// Identity headers the gateway adds; any a client sent are removed first, so no client can
/// pose as another account to the backend.
pub const HEADER_UIN: &str = "x-tollgate-uin";
pub const HEADER_OWNER_UIN: &str = "x-tollgate-owner-uin";
pub const HEADER_REQUEST_ID: &str = "x-tollgate-request-id";

/// Why a call could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no response head within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// Who is calling, as told to the backend.
pub struct Identity<'a> {
    pub uin: u64,
    pub owner_uin: u64,
    pub request_id: &'a str,
    pub peer: SocketAddr,
}

pub struct Forwarder {
    client: Client<HttpConnector, Full<Bytes>>,
    response_timeout: Duration,
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1) and those the gateway sets itself.
fn dropped_on_forward(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            // The scanner reads the answer as sent; ask the backend not to compress it.
            | "accept-encoding"
    ) || name.as_str().starts_with("x-tollgate-")
}

/// Hop-by-hop headers of a response.
pub fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

impl Forwarder {
    pub fn new(settings: &Settings) -> Forwarder {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .build(connector);
        Forwarder {
            client,
            response_timeout: settings.response_timeout,
        }
    }

    /// Sends a call upstream and waits for the response head.
    pub async fn forward(
        &self,
        parts: &Parts,
        body: Bytes,
        upstream: &Upstream,
        identity: Identity<'_>,
        service: &str,
        now_unix_seconds: i64,
    ) -> Result<Response<Incoming>, ForwardError> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = upstream.uri.scheme().cloned();
        uri.authority = upstream.uri.authority().cloned();
        uri.path_and_query = parts.uri.path_and_query().cloned();
        let uri = Uri::from_parts(uri).map_err(|e| ForwardError::Failed(e.to_string()))?;

        let mut req = Request::builder().method(parts.method.clone()).uri(uri);
        let headers = req.headers_mut().expect("builder without errors");
        for (name, value) in &parts.headers {
            if !dropped_on_forward(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(host) = parts.headers.get(header::HOST) {
            headers.insert("x-forwarded-host", host.clone());
        }
        headers.insert(
            header::HOST,
            HeaderValue::from_str(&upstream.authority)
                .map_err(|e| ForwardError::Failed(e.to_string()))?,
        );
        headers.insert(
            "x-forwarded-for",
            header_value(&identity.peer.ip().to_string()),
        );
        headers.insert(HEADER_UIN, HeaderValue::from(identity.uin));
        headers.insert(HEADER_OWNER_UIN, HeaderValue::from(identity.owner_uin));
        headers.insert(HEADER_REQUEST_ID, header_value(identity.request_id));
        if let Some((secret_id, secret_key)) = &upstream.resign {
            // The caller's signature covered the gateway's Host; a backend that verifies TC3
            // itself (the vendor's endpoint) needs one for its own Host.
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json");
            let authorization = Signer {
                secret_id,
                secret_key,
                service,
                host: &upstream.authority,
                content_type,
                method: parts.method.as_str(),
                query: parts.uri.query().unwrap_or("").as_bytes(),
                payload: &body,
                timestamp: now_unix_seconds,
            }
            .authorization();
            headers.insert(header::AUTHORIZATION, header_value(&authorization));
            headers.insert("x-tc-timestamp", HeaderValue::from(now_unix_seconds));
            headers.remove("x-tc-content-sha256");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ForwardError::Failed(e.to_string()))?;

        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(ForwardError::Timeout(self.response_timeout)),
            Ok(Err(e)) if e.is_connect() => Err(ForwardError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(ForwardError::Failed(error_chain(&e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
