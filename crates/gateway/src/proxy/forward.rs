//! Forwarding admitted calls to the recognition backend of their service: pooled keep-alive
//! connections, connect, response-head and body-idle timeouts, the caller's identity as
//! headers.
//!
//! Only this module (with `http1`, its HTTP/1.1 codec) talks to upstreams.
//!
//! Each API worker has its own [`Forwarder`] (see `server`), so its pool is used by one thread
//! only: a checkout is a pop from a vector, and a connection is read and written by the call
//! that holds it, in that call's task ([`http1`]). The connection travels inside the
//! [`UpstreamBody`] that streams the answer to the client, and goes back to the pool when the
//! answer has been read to its end.
//!
//! The forwarded call's head is written straight from the client's fields, skipping what must
//! not go on (hop-by-hop fields, forwarding and identity fields a client made up) and adding
//! the gateway's own: no header map is edited or copied per call.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::coarse;
use super::head::{Field, ReqHead};
use super::http1::{self, BodyState, Conn, ExchangeError, Fields};

use crate::auth::tc3::Signer;
use crate::settings::{Settings, Upstream};

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

/// Where a service's calls go: its upstream, and the index of that upstream's pool in every
/// worker's [`Forwarder`] (settled when a config snapshot is built, not per call).
#[derive(Debug, Clone)]
pub struct Target {
    pub slot: usize,
    pub upstream: Upstream,
}

/// Who is calling, as told to the backend.
pub struct Identity<'a> {
    pub uin: u64,
    pub owner_uin: u64,
    /// The gateway's request id as a header value (the answer carries the same one).
    pub request_id: &'a HeaderValue,
    /// The client's address as an `X-Forwarded-For` value (made once per connection).
    pub forwarded_for: &'a HeaderValue,
    /// `http` or `https`: how the client reached the gateway.
    pub forwarded_proto: &'a HeaderValue,
}

/// The client's address as an `X-Forwarded-For` value.
pub fn forwarded_for(peer: SocketAddr) -> HeaderValue {
    header_value(&peer.ip().to_string())
}

/// A pooled connection idle longer than this is checked with a system call before reuse.
const RECHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

struct Pools {
    /// Idle keep-alive connections, newest last, one list per upstream (indexed as
    /// `Settings::upstream_slot` numbers them).
    /// Each with when it went idle, on the coarse monotonic clock (`coarse::monotonic_nanos`).
    by_upstream: Mutex<Vec<Vec<(Conn, u64)>>>,
    idle_timeout: Duration,
    max_idle: usize,
}

impl Pools {
    /// The newest idle connection of pool `slot` that is still open, if one is left.
    /// Connections idle too long, or closed by the backend, are dropped on the way. (Idle
    /// ages are on the coarse clock: a few milliseconds do not matter to them.)
    fn checkout(&self, slot: usize) -> Option<Conn> {
        let now = coarse::monotonic_nanos();
        let mut pools = self.by_upstream.lock().expect("not poisoned");
        let pool = &mut pools[slot];
        while let Some((conn, since)) = pool.pop() {
            let idle = Duration::from_nanos(now.saturating_sub(since));
            if idle > self.idle_timeout {
                // The newest is stale, so all are.
                pool.clear();
                return None;
            }
            // The event loop's view of the socket is enough for a connection idle a moment;
            // one idle longer gets a look at the kernel's (a backend's keep-alive timeout
            // closes only connections idle that long, and its FIN may not have been seen yet).
            let looked = if idle > RECHECK_IDLE_AFTER {
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
        if pool.len() >= self.max_idle {
            // Keep the newest: the oldest is the likeliest to have been closed by the backend.
            pool.remove(0);
        }
        pool.push((conn, coarse::monotonic_nanos()));
    }
}

/// The body of a backend's answer, read from its connection as the client takes it. The
/// connection goes back to its pool as soon as the last byte of the answer is in (a client
/// slow to take the last frame does not hold it), if the answer's framing and the backend
/// allow another call on it; a body dropped before its end closes the connection.
///
/// A backend that sends nothing for `proxy.response_idle_timeout_ms` while the body is
/// incomplete ends it with [`ExchangeError::Stalled`]: the client's connection is closed,
/// the call is not billed and its concurrency permit is freed. The timer is armed only when
/// a read has to wait (most answers arrive whole with their head).
pub struct UpstreamBody {
    state: BodyState,
    keep_alive: bool,
    conn: Option<Conn>,
    pools: Arc<Pools>,
    slot: usize,
    idle_timeout: Duration,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A read returned data since the timer was last set.
    progressed: bool,
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
        let next = match conn.poll_body(cx, &mut this.state) {
            Poll::Ready(next) => next,
            Poll::Pending => {
                let due = tokio::time::Instant::now() + this.idle_timeout;
                match &mut this.idle {
                    Some(sleep) if !this.progressed => {}
                    Some(sleep) => sleep.as_mut().reset(due),
                    None => this.idle = Some(Box::pin(tokio::time::sleep_until(due))),
                }
                this.progressed = false;
                let sleep = this.idle.as_mut().expect("armed above");
                if sleep.as_mut().poll(cx).is_ready() {
                    this.conn = None;
                    return Poll::Ready(Some(Err(ExchangeError::Stalled(this.idle_timeout))));
                }
                return Poll::Pending;
            }
        };
        this.progressed = true;
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
    response_idle_timeout: Duration,
    /// Cancelled when the drain timeout passes: calls still waiting are answered and end.
    abort: tokio_util::sync::CancellationToken,
}

/// Fields of a call that never go to the backend as the client sent them: hop-by-hop ones,
/// those the gateway sets itself, and forwarding fields only the gateway may write. `name` is
/// lower-case, as a parsed `HeaderName` always is: one comparison by length and bytes, not
/// a case-insensitive one per listed name (this runs for every field of every call).
fn dropped_on_forward(name: &[u8]) -> bool {
    debug_assert!(!name.iter().any(u8::is_ascii_uppercase), "{name:?}");
    matches!(
        name,
        // Hop-by-hop (`hop::is_hop_by_hop`).
        b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"proxy-authenticate"
            | b"proxy-authorization"
            | b"te"
            | b"trailer"
            | b"transfer-encoding"
            | b"upgrade"
            | b"host"
            // The body is sent whole, with its own length.
            | b"content-length"
            | b"expect"
            // The scanner reads the answer as sent; ask the backend not to compress it.
            | b"accept-encoding"
            // Who and where the client is: the gateway says it, a client cannot.
            | b"forwarded"
            | b"x-forwarded-for"
            | b"x-forwarded-host"
            | b"x-forwarded-proto"
            | b"x-forwarded-port"
            | b"x-real-ip"
    ) || name.starts_with(b"x-tollgate-")
}

/// Fields a re-signed call replaces.
fn replaced_by_resigning(name: &[u8]) -> bool {
    matches!(
        name,
        b"authorization" | b"x-tc-timestamp" | b"x-tc-content-sha256"
    )
}

impl Forwarder {
    pub fn new(settings: &Settings) -> Forwarder {
        Forwarder {
            pools: Arc::new(Pools {
                by_upstream: Mutex::new(settings.upstreams.values().map(|_| Vec::new()).collect()),
                idle_timeout: settings.pool_idle_timeout,
                max_idle: settings.pool_max_idle_per_host,
            }),
            connect_timeout: settings.connect_timeout,
            response_timeout: settings.response_timeout,
            response_idle_timeout: settings.response_idle_timeout,
            abort: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Completes once [`Forwarder::abort`] was called.
    pub fn aborted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.abort.cancelled()
    }

    /// Ends every call of this worker still waiting (each is answered `ServiceUnavailable`).
    pub fn abort(&self) {
        self.abort.cancel();
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

    /// Writes the forwarded call's head into `head`: the client's request line and fields,
    /// minus those that do not go on, plus the gateway's.
    fn write_head(
        &self,
        head: &mut Vec<u8>,
        req: ReqHead<'_>,
        body: &[u8],
        upstream: &Upstream,
        identity: &Identity<'_>,
        resigned: Option<(&str, i64)>,
    ) {
        http1::start_request(head, req.method(), req.path_and_query());
        let connection = req.connection();
        req.each_field(|name, value| {
            if dropped_on_forward(name)
                || connection.names(name)
                || (resigned.is_some() && replaced_by_resigning(name))
            {
                return;
            }
            http1::header(head, name, value);
        });
        http1::header(head, b"host", upstream.host.as_bytes());
        if let Some(host) = req.field(Field::Host) {
            http1::header(head, b"x-forwarded-host", host);
        } else if let Some(authority) = req.authority() {
            // HTTP/2: the `:authority`.
            http1::header(head, b"x-forwarded-host", authority.as_bytes());
        }
        http1::header(head, b"x-forwarded-for", identity.forwarded_for.as_bytes());
        http1::header(
            head,
            b"x-forwarded-proto",
            identity.forwarded_proto.as_bytes(),
        );
        let mut n = itoa::Buffer::new();
        http1::header(
            head,
            HEADER_UIN.as_bytes(),
            n.format(identity.uin).as_bytes(),
        );
        http1::header(
            head,
            HEADER_OWNER_UIN.as_bytes(),
            n.format(identity.owner_uin).as_bytes(),
        );
        http1::header(
            head,
            HEADER_REQUEST_ID.as_bytes(),
            identity.request_id.as_bytes(),
        );
        if let Some((authorization, timestamp)) = resigned {
            http1::header(head, b"authorization", authorization.as_bytes());
            http1::header(head, b"x-tc-timestamp", n.format(timestamp).as_bytes());
        }
        http1::end_request(head, req.method(), body.len());
    }

    /// Sends a call upstream and waits for the response head. The answer's body streams
    /// from the connection, which it holds until the answer has been read. `started` is now
    /// (the caller has read the clock already): the response timeout counts from it.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        req: ReqHead<'_>,
        body: &Bytes,
        target: &Target,
        identity: Identity<'_>,
        service: &str,
        now_unix_seconds: i64,
        started: tokio::time::Instant,
    ) -> Result<UpstreamAnswer, ForwardError> {
        let (upstream, slot) = (&target.upstream, target.slot);
        // The caller's signature covered the gateway's Host; a backend that verifies TC3
        // itself (the vendor's endpoint) needs one for its own Host.
        let authorization = upstream.resign.as_ref().map(|(secret_id, secret_key)| {
            Signer {
                secret_id,
                secret_key,
                service,
                host: &upstream.authority,
                content_type: req
                    .field(Field::ContentType)
                    .and_then(super::head::visible_ascii)
                    .unwrap_or("application/json"),
                method: req.method().as_str(),
                query: req.query().unwrap_or("").as_bytes(),
                payload: body,
                timestamp: now_unix_seconds,
            }
            .authorization()
        });
        let resigned = authorization.as_deref().map(|a| (a, now_unix_seconds));
        // The whole exchange (a new connection's connect included) is bounded by the response
        // timeout, kept by the pooled connection's own timer when there is one.
        let deadline = started + self.response_timeout;
        let mut pooled = self.pools.checkout(slot);
        let mut timer = pooled
            .as_mut()
            .and_then(Conn::take_timer)
            .unwrap_or_else(|| Box::pin(tokio::time::sleep_until(deadline)));
        // A pooled connection's timer is at an earlier call's deadline: left there (see
        // `until`) unless the timeout was shortened since.
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        let exchange = async {
            // A pooled connection the backend closed just as the call was written fails the
            // write: nothing reached the backend whole, so the call goes on a new connection.
            // Once written, any failure is final (the call may have reached the backend).
            let mut head = match &mut pooled {
                Some(conn) => conn.take_scratch(),
                None => Vec::with_capacity(1024),
            };
            self.write_head(&mut head, req, body, upstream, &identity, resigned);
            let mut conn = match pooled {
                Some(mut conn) => match conn.send(&head, body).await {
                    Ok(()) => Some(conn),
                    Err(e) => {
                        tracing::debug!(error = %e, "a pooled upstream connection was closed: retrying on a new one");
                        None
                    }
                },
                None => None,
            };
            if conn.is_none() {
                let mut fresh = self.connect(upstream).await?;
                fresh
                    .send(&head, body)
                    .await
                    .map_err(|e| ForwardError::Failed(e.to_string()))?;
                conn = Some(fresh);
            }
            let mut conn = conn.expect("sent on one connection or the other");
            conn.put_scratch(head);
            let head = conn
                .read_head(req.method())
                .await
                .map_err(|e| ForwardError::Failed(e.to_string()))?;
            Ok::<_, ForwardError>((head, conn))
        };
        let (head, mut conn) = tokio::select! {
            biased;
            result = exchange => result?,
            () = until(timer.as_mut(), deadline) => return Err(ForwardError::Timeout(self.response_timeout)),
        };
        conn.put_timer(timer);
        // The status and fields go on; the version does not (it is hop-by-hop: the gateway
        // answers its clients in HTTP/1.1 whatever its backend speaks).
        Ok(UpstreamAnswer {
            status: head.status,
            fields: head.fields,
            body: UpstreamBody {
                state: head.body,
                keep_alive: head.keep_alive,
                conn: Some(conn),
                pools: Arc::clone(&self.pools),
                slot,
                idle_timeout: self.response_idle_timeout,
                idle: None,
                progressed: false,
            },
        })
    }
}

/// Completes at `deadline`, on a timer set at or before it. A connection's timer is not moved
/// call by call (moving it is a visible share of a forwarded call): left at an earlier call's
/// deadline, it is set to this one's only if it fires first, at most once per response
/// timeout.
async fn until(mut timer: Pin<&mut tokio::time::Sleep>, deadline: tokio::time::Instant) {
    loop {
        timer.as_mut().await;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        timer.as_mut().reset(deadline);
    }
}

/// A backend's answer: its status, its end-to-end fields, and its body as it streams.
pub struct UpstreamAnswer {
    pub status: StatusCode,
    pub fields: Fields,
    pub body: UpstreamBody,
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
                ReqHead::Hyper(&parts),
                &Bytes::from_static(b"{}"),
                &Target {
                    slot: 0,
                    upstream: up.clone(),
                },
                Identity {
                    uin: 7,
                    owner_uin: 9,
                    request_id: &request_id,
                    forwarded_for: &forwarded_for,
                    forwarded_proto: &HeaderValue::from_static("http"),
                },
                "ocr",
                0,
                tokio::time::Instant::now(),
            )
            .await?;
        let body = resp.body.collect().await.unwrap().to_bytes();
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

    #[test]
    fn every_hop_by_hop_field_and_the_gateways_own_stay_behind() {
        for name in crate::proxy::hop::HOP_BY_HOP {
            assert!(super::dropped_on_forward(name), "{name:?}");
        }
        for name in [
            &b"host"[..],
            b"content-length",
            b"x-forwarded-for",
            b"x-tollgate-uin",
        ] {
            assert!(super::dropped_on_forward(name), "{name:?}");
        }
        for name in [
            &b"authorization"[..],
            b"content-type",
            b"x-tc-action",
            b"x-tollgate",
        ] {
            assert!(!super::dropped_on_forward(name), "{name:?}");
        }
    }
}
