//! Forwarding admitted calls to the recognition backend of their service: pooled keep-alive
//! connections, connect and response-head timeouts, the caller's identity as headers.
//!
//! Only this module (with `http1`, its HTTP/1.1 codec) talks to upstreams.
//!
//! Each API worker has its own [`Forwarder`] (see `server`), so its pool is used by one thread
//! only: a checkout is a pop from a vector, and a connection is read and written by the call
//! that holds it, in that call's task ([`http1`]). The connection travels inside the
//! [`UpstreamBody`] that streams the answer to the client, and goes back to the pool when the
//! answer has been read to its end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::http1::{self, BodyState, Conn, ExchangeError};

use crate::auth::tc3::Signer;
use crate::config::gateway::{Settings, Upstream};
use crate::proxy::names::{
    FORWARDED_FOR, FORWARDED_HOST, OWNER_UIN, REQUEST_ID, TC_CONTENT_SHA256, TC_TIMESTAMP, UIN,
};

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
    /// The gateway's request id as a header value (the answer carries the same one).
    pub request_id: &'a HeaderValue,
    /// The client's address as an `X-Forwarded-For` value (made once per connection).
    pub forwarded_for: &'a HeaderValue,
}

/// The client's address as an `X-Forwarded-For` value.
pub fn forwarded_for(peer: SocketAddr) -> HeaderValue {
    header_value(&peer.ip().to_string())
}

/// A pooled connection idle longer than this is checked with a system call before reuse.
const RECHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Idle keep-alive connections to one upstream, newest last.
struct Pool {
    authority: String,
    idle: Vec<(Conn, Instant)>,
}

struct Pools {
    by_upstream: Mutex<Vec<Pool>>,
    idle_timeout: Duration,
    max_idle: usize,
}

impl Pools {
    /// The index of `authority`'s pool (pools are only ever added, so an index stays valid).
    fn slot(&self, authority: &str) -> usize {
        let mut pools = self.by_upstream.lock().expect("not poisoned");
        match pools.iter().position(|p| p.authority == authority) {
            Some(i) => i,
            None => {
                pools.push(Pool {
                    authority: authority.to_owned(),
                    idle: Vec::new(),
                });
                pools.len() - 1
            }
        }
    }

    /// The newest idle connection of pool `slot` that is still open, if one is left.
    /// Connections idle too long, or closed by the backend, are dropped on the way.
    fn checkout(&self, slot: usize) -> Option<Conn> {
        let mut pools = self.by_upstream.lock().expect("not poisoned");
        let pool = &mut pools[slot];
        while let Some((conn, since)) = pool.idle.pop() {
            if since.elapsed() > self.idle_timeout {
                // The newest is stale, so all are.
                pool.idle.clear();
                return None;
            }
            // The event loop's view of the socket is enough for a connection idle a moment;
            // one idle longer gets a look at the kernel's (a backend's keep-alive timeout
            // closes only connections idle that long, and its FIN may not have been seen yet).
            let looked = if since.elapsed() > RECHECK_IDLE_AFTER {
                conn.peek_open()
            } else {
                conn.idle_and_open()
            };
            if looked {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, slot: usize, conn: Conn) {
        if self.max_idle == 0 {
            // Pooling turned off (`proxy.pool_max_idle_per_host = 0`): closed here.
            return;
        }
        let mut pools = self.by_upstream.lock().expect("not poisoned");
        let pool = &mut pools[slot];
        if pool.idle.len() >= self.max_idle {
            // Keep the newest: the oldest is the likeliest to have been closed by the backend.
            pool.idle.remove(0);
        }
        pool.idle.push((conn, Instant::now()));
    }
}

/// The body of a backend's answer, read from its connection as the client takes it. The
/// connection goes back to its pool as soon as the last byte of the answer is in (a client
/// slow to take the last frame does not hold it), if the answer's framing and the backend
/// allow another call on it; a body dropped before its end closes the connection.
pub struct UpstreamBody {
    state: BodyState,
    keep_alive: bool,
    conn: Option<Conn>,
    pools: Arc<Pools>,
    slot: usize,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let next = std::task::ready!(conn.poll_body(cx, &mut this.state));
        if this.state.is_end()
            && !matches!(next, Some(Err(_)))
            && let Some(conn) = this.conn.take()
            && this.keep_alive
            && conn.clean()
        {
            this.pools.checkin(this.slot, conn);
        }
        Poll::Ready(next.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.state.is_end()
    }

    fn size_hint(&self) -> SizeHint {
        match self.state.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The forwarder of one API worker: its upstream connections and timeouts.
pub struct Forwarder {
    pools: Arc<Pools>,
    connect_timeout: Duration,
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
            // The body is sent whole, with the call: nothing to wait for.
            | "expect"
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
        Forwarder {
            pools: Arc::new(Pools {
                by_upstream: Mutex::new(Vec::new()),
                idle_timeout: settings.pool_idle_timeout,
                max_idle: settings.pool_max_idle_per_host,
            }),
            connect_timeout: settings.connect_timeout,
            response_timeout: settings.response_timeout,
        }
    }

    /// A new keep-alive connection to `upstream`.
    async fn connect(&self, upstream: &Upstream) -> Result<Conn, ForwardError> {
        let host = upstream.uri.host().unwrap_or("");
        let port = upstream.uri.port_u16().unwrap_or(80);
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)),
        )
        .await
        {
            Err(_) => {
                return Err(ForwardError::Connect(format!(
                    "{}: no connection within {:?}",
                    upstream.authority, self.connect_timeout
                )));
            }
            Ok(Err(e)) => {
                return Err(ForwardError::Connect(format!(
                    "{}: {e}",
                    upstream.authority
                )));
            }
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
        Ok(Conn::new(stream))
    }

    /// Sends a call upstream and waits for the response head. The answer's body streams
    /// from the connection, which it holds until the answer has been read.
    pub async fn forward(
        &self,
        parts: Parts,
        body: Bytes,
        upstream: &Upstream,
        identity: Identity<'_>,
        service: &str,
        now_unix_seconds: i64,
    ) -> Result<Response<UpstreamBody>, ForwardError> {
        let Parts {
            method,
            uri,
            mut headers,
            ..
        } = parts;
        // The client's headers go on, edited in place, minus hop-by-hop ones and any identity
        // header a client made up. A client's Content-Length stays true: the body is forwarded
        // byte for byte.
        // Headers the client's `Connection` names are hop-by-hop too (RFC 9110 section 7.6.1).
        // (`keep-alive` and `close`, the usual tokens, name nothing left to remove.)
        let named: Vec<HeaderName> = http1::connection_tokens(&headers)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for n in named {
            headers.remove(n);
        }
        if headers.keys().any(dropped_on_forward) {
            let chunked = headers.contains_key(header::TRANSFER_ENCODING);
            let names: Vec<HeaderName> = headers
                .keys()
                .filter(|n| dropped_on_forward(n))
                .cloned()
                .collect();
            for n in names {
                headers.remove(n);
            }
            if chunked {
                // A chunked call was read whole: hyper sets its length.
                headers.remove(header::CONTENT_LENGTH);
            }
        }
        // Room for the identity and forwarding headers below: one allocation at most.
        headers.reserve(6);
        headers.remove(&FORWARDED_HOST);
        if let Some(host) = headers.remove(header::HOST) {
            headers.insert(FORWARDED_HOST.clone(), host);
        }
        headers.insert(header::HOST, upstream.host.clone());
        headers.insert(FORWARDED_FOR.clone(), identity.forwarded_for.clone());
        headers.insert(UIN.clone(), HeaderValue::from(identity.uin));
        headers.insert(OWNER_UIN.clone(), HeaderValue::from(identity.owner_uin));
        headers.insert(REQUEST_ID.clone(), identity.request_id.clone());
        if let Some((secret_id, secret_key)) = &upstream.resign {
            // The caller's signature covered the gateway's Host; a backend that verifies TC3
            // itself (the vendor's endpoint) needs one for its own Host.
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json");
            let authorization = Signer {
                secret_id,
                secret_key,
                service,
                host: &upstream.authority,
                content_type,
                method: method.as_str(),
                query: uri.query().unwrap_or("").as_bytes(),
                payload: &body,
                timestamp: now_unix_seconds,
            }
            .authorization();
            headers.insert(header::AUTHORIZATION, header_value(&authorization));
            headers.insert(TC_TIMESTAMP.clone(), HeaderValue::from(now_unix_seconds));
            headers.remove(&TC_CONTENT_SHA256);
        }
        let slot = self.pools.slot(&upstream.authority);
        let exchange = async {
            // A pooled connection the backend closed just as the call was written fails the
            // write: nothing reached the backend whole, so the call goes on a new connection.
            // Once written, any failure is final (the call may have reached the backend).
            let pooled = match self.pools.checkout(slot) {
                Some(conn) => pooled_send(conn, &method, &uri, &headers, &body).await,
                None => None,
            };
            let mut conn = match pooled {
                Some(conn) => conn,
                None => {
                    self.fresh_send(upstream, &method, &uri, &headers, &body)
                        .await?
                }
            };
            let head = conn
                .read_head(&method)
                .await
                .map_err(|e| ForwardError::Failed(e.to_string()))?;
            Ok::<_, ForwardError>((head, conn))
        };
        let (head, conn) = match tokio::time::timeout(self.response_timeout, exchange).await {
            Err(_) => return Err(ForwardError::Timeout(self.response_timeout)),
            Ok(result) => result?,
        };
        let mut response = Response::new(UpstreamBody {
            state: head.body,
            keep_alive: head.keep_alive,
            conn: Some(conn),
            pools: Arc::clone(&self.pools),
            slot,
        });
        // The status and headers go on; the version does not (it is hop-by-hop: the gateway
        // answers its clients in HTTP/1.1 whatever its backend speaks).
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    /// Writes a call on a new connection.
    async fn fresh_send(
        &self,
        upstream: &Upstream,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<Conn, ForwardError> {
        let mut conn = self.connect(upstream).await?;
        conn.send(method, uri, headers, body)
            .await
            .map_err(|e| ForwardError::Failed(e.to_string()))?;
        Ok(conn)
    }
}

/// Writes a call on a pooled connection; `None` if the write failed (the backend had closed
/// the connection).
async fn pooled_send(
    mut conn: Conn,
    method: &Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Option<Conn> {
    match conn.send(method, uri, headers, body).await {
        Ok(()) => Some(conn),
        Err(e) => {
            tracing::debug!(error = %e, "a pooled upstream connection was closed: retrying on a new one");
            None
        }
    }
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use http::Request;

    /// A raw HTTP/1.1 backend: answers every request with "ok", counts connections, and
    /// closes each connection after `per_connection` answers (0: never). It echoes the
    /// identity and forwarding headers it received in the answer's body.
    async fn backend(per_connection: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut answered = 0;
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        // Bodies here are tiny: a request is complete once its head ends and
                        // its Content-Length bytes follow.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let len: usize = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            if buf.len() < end + 4 + len {
                                break;
                            }
                            buf.drain(..end + 4 + len);
                            let echo: String = head
                                .lines()
                                .filter(|l| l.starts_with("x-") || l.starts_with("host:"))
                                .collect::<Vec<_>>()
                                .join("\n");
                            // A call with `x-close` is answered with `connection: close`.
                            let close = head.contains("\nx-close:");
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}\r\n{echo}",
                                echo.len(),
                                if close { "connection: close\r\n" } else { "" }
                            );
                            s.write_all(reply.as_bytes()).await.unwrap();
                            answered += 1;
                            if close || (per_connection > 0 && answered == per_connection) {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    fn forwarder() -> Forwarder {
        Forwarder::new(&Settings::embedded())
    }

    fn upstream(addr: SocketAddr) -> Upstream {
        Upstream::new(format!("http://{addr}").parse().unwrap(), None).unwrap()
    }

    async fn call(
        f: &Forwarder,
        up: &Upstream,
        extra: &[(&str, &str)],
    ) -> Result<String, ForwardError> {
        let mut req = Request::post("/").header("host", "gateway.example");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        let forwarded_for = forwarded_for("10.1.2.3:4567".parse().unwrap());
        let request_id = HeaderValue::from_static("req-1");
        let resp = f
            .forward(
                parts,
                Bytes::from_static(b"{}"),
                up,
                Identity {
                    uin: 7,
                    owner_uin: 9,
                    request_id: &request_id,
                    forwarded_for: &forwarded_for,
                },
                "ocr",
                0,
            )
            .await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn sequential_calls_reuse_one_connection() {
        let (addr, connections) = backend(0).await;
        let (f, up) = (forwarder(), upstream(addr));
        for _ in 0..20 {
            call(&f, &up, &[]).await.unwrap();
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_calls_open_one_connection_each_then_reuse_them() {
        let (addr, connections) = backend(0).await;
        let (f, up) = (forwarder(), upstream(addr));
        for _ in 0..5 {
            let calls: Vec<_> = (0..8).map(|_| call(&f, &up, &[])).collect();
            for r in futures_util::future::join_all(calls).await {
                r.unwrap();
            }
        }
        let n = connections.load(Ordering::SeqCst);
        assert!(
            (1..=8).contains(&n),
            "{n} connections for 8 concurrent calls"
        );
    }

    #[tokio::test]
    async fn connections_the_backend_closed_are_not_reused() {
        let (addr, connections) = backend(1).await;
        let (f, up) = (forwarder(), upstream(addr));
        for _ in 0..10 {
            call(&f, &up, &[]).await.unwrap();
            // Let the connection's task see the backend's FIN.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 10);
    }

    /// A backend that says it closes the connection is taken at its word, at once: no call
    /// is ever written to the closed connection, however soon the next one comes.
    #[tokio::test]
    async fn an_answer_with_connection_close_is_the_connections_last() {
        let (addr, connections) = backend(0).await;
        let (f, up) = (forwarder(), upstream(addr));
        for _ in 0..10 {
            call(&f, &up, &[("x-close", "1")]).await.unwrap();
        }
        assert_eq!(connections.load(Ordering::SeqCst), 10);
        call(&f, &up, &[]).await.unwrap();
        call(&f, &up, &[]).await.unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 11);
    }

    /// `proxy.pool_max_idle_per_host = 0`: no pooling, every call on a new connection.
    #[tokio::test]
    async fn a_pool_of_size_zero_pools_nothing() {
        let (addr, connections) = backend(0).await;
        let mut settings = Settings::embedded();
        settings.pool_max_idle_per_host = 0;
        let (f, up) = (Forwarder::new(&settings), upstream(addr));
        for _ in 0..3 {
            call(&f, &up, &[]).await.unwrap();
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn identity_headers_replace_any_a_client_sent() {
        let (addr, _) = backend(0).await;
        let (f, up) = (forwarder(), upstream(addr));
        let echo = call(
            &f,
            &up,
            &[
                ("x-tollgate-uin", "1"),
                ("x-tollgate-owner-uin", "1"),
                ("connection", "keep-alive, x-custom"),
                ("x-custom", "hop-by-hop: named by Connection"),
                ("x-forwarded-host", "made-up.example"),
                ("x-tc-action", "GeneralBasicOCR"),
            ],
        )
        .await
        .unwrap();
        let lines: Vec<&str> = echo.lines().collect();
        assert!(lines.contains(&"x-tollgate-uin: 7"), "{echo}");
        assert!(lines.contains(&"x-tollgate-owner-uin: 9"), "{echo}");
        assert!(lines.contains(&"x-tollgate-request-id: req-1"), "{echo}");
        assert!(lines.contains(&"x-forwarded-for: 10.1.2.3"), "{echo}");
        assert!(
            lines.contains(&"x-forwarded-host: gateway.example"),
            "{echo}"
        );
        // (the backend lower-cases what it echoes)
        assert!(lines.contains(&"x-tc-action: generalbasicocr"), "{echo}");
        assert!(lines.contains(&format!("host: {addr}").as_str()), "{echo}");
        for name in ["x-tollgate-uin", "x-forwarded-host"] {
            assert_eq!(
                lines.iter().filter(|l| l.starts_with(name)).count(),
                1,
                "{echo}"
            );
        }
        assert!(!echo.contains("x-custom"), "{echo}");
    }

    #[tokio::test]
    async fn an_unreachable_backend_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let f = forwarder();
        match call(&f, &upstream(addr), &[]).await {
            Err(ForwardError::Connect(e)) => assert!(e.contains(&addr.to_string()), "{e}"),
            other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
        }
    }
}
