//! Accepting connections: HTTP/1.1 with keep-alive, a header-read timeout, half-closed
//! clients answered, and a graceful drain on shutdown:
//!
//! 1. stop accepting; every answer from now on carries `Connection: close`;
//! 2. keep idle keep-alive connections open for `shutdown.idle_grace_ms`, so a call a client
//!    sent just as the drain began is answered instead of meeting a closed connection (its
//!    answer then ends the connection);
//! 3. close the connections still idle, let in-flight calls finish;
//! 4. at `shutdown.drain_timeout_seconds`, answer the calls still waiting for their backend
//!    with `ServiceUnavailable` (never a bare close), then stop.
//!
//! The API runs on `proxy.workers` threads, each with its own single-threaded event loop, its
//! own listening socket on the shared port (`SO_REUSEPORT`: the kernel spreads connections
//! across them) and its own upstream connection pool. A call never leaves the thread that
//! accepted its connection: the client connection, the upstream connection and the call are
//! woken on one thread, without the cross-thread wake-ups (eventfd writes, `epoll_wait`
//! returns, cache misses) a work-stealing runtime pays for every hop between tasks. Shared
//! state (quota buckets, the spool, metrics) is lock-free or briefly locked and is shared by
//! all workers, so a quota is one quota however many workers there are.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Gateway;
use super::client::{AnswerGuard, Client, ClientIo, Guarded};
use super::forward::Forwarder;
use super::server_h1;
use super::tls::Tls;

/// How a worker drains (from `[shutdown]`).
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub idle_grace: Duration,
    pub timeout: Duration,
}

/// The most a client connection's read buffer holds.
pub const MAX_READ_BUFFER: usize = 64 * 1024;

/// After the drain timeout, calls still waiting are answered; this long is left for those
/// answers to be written before the worker stops.
const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// How a listener's connections speak: plain (HTTP/1.1, and HTTP/2 with prior knowledge when
/// on) or TLS (ALPN `h2` or `http/1.1`), behind a PROXY v2 header or not.
#[derive(Clone, Default)]
pub struct Transport {
    pub tls: Option<Arc<Tls>>,
    /// Every connection opens with a PROXY protocol v2 header naming the client.
    pub proxy_protocol: bool,
}

/// The client preface of HTTP/2 with prior knowledge (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain connection opens with the HTTP/2 preface: its first bytes are peeked (not
/// consumed) until they tell. `None` when nothing that tells came within `timeout`, or the
/// client left: the connection is closed, as hyper closes one whose head does not come.
async fn opens_with_h2_preface(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<bool> {
    let mut buf = [0u8; 24];
    let peek = async {
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            };
            if buf[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            // A partial preface: wait for more without spinning.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(timeout, peek).await.ok().flatten()
}

/// The HTTP/1.1 and HTTP/2 server settings of a worker.
struct Protocols {
    http1: http1::Builder,
    http2: Option<http2::Builder<TokioExecutor>>,
}

impl Protocols {
    fn new(gateway: &Gateway) -> Protocols {
        let settings = gateway.settings();
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // The header-read timeout is kept by `HeadDeadline`, one timer per connection
            // moved forward call by call; hyper's would be a timer made and dropped per call.
            .header_read_timeout(None)
            // The read buffer of a connection: a request head must fit (64 KiB, as the vendor's
            // API needs a fraction of it), and a body streams through it. hyper's default
            // (~400 KiB) would let each connection sending a body hold that much.
            .max_buf_size(MAX_READ_BUFFER)
            // (A client that shuts down its sending side after its call still gets its answer:
            // `ClientIo` sees to that, and hyper keeps watching for clients that leave.)
            .keep_alive(true);
        let h = settings.http2;
        let http2 = h.enabled.then(|| {
            let mut b = http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(h.max_concurrent_streams)
                .max_header_list_size(h.max_header_list_bytes)
                .initial_stream_window_size(h.initial_stream_window_bytes)
                .initial_connection_window_size(h.initial_connection_window_bytes)
                // Rapid reset (CVE-2023-44487): streams opened and reset before they are
                // served count against this; beyond it the connection gets GOAWAY.
                .max_pending_accept_reset_streams(h.max_pending_accept_reset_streams)
                .max_local_error_reset_streams(h.max_local_error_reset_streams)
                .max_send_buf_size(MAX_READ_BUFFER)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(10));
            b
        });
        Protocols { http1: h1, http2 }
    }
}

/// Response fields HTTP/2 forbids (RFC 9113 §8.2.2): the request path's `Connection: close`
/// and any hop-by-hop field are HTTP/1.1's; over HTTP/2 a connection is closed by GOAWAY.
fn strip_connection_fields(headers: &mut http::HeaderMap) {
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
        http::HeaderName::from_static("keep-alive"),
        http::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// How a connection learns of the drain: hyper's watcher (the drain waits for every one to
/// be dropped) and the own codec's signal to close idle connections.
struct DrainSignals {
    watcher: Watcher,
    closing: CancellationToken,
}

/// One connection, whatever it speaks, until it ends (or the drain ends it).
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    transport: Transport,
    protocols: Arc<Protocols>,
    gateway: Arc<Gateway>,
    forwarder: Arc<Forwarder>,
    drain: DrainSignals,
) {
    let DrainSignals { watcher, closing } = drain;
    let mut stream = stream;
    let timeout = gateway.settings().header_read_timeout;
    let client = if transport.proxy_protocol {
        match super::proxy_protocol::read(&mut stream, timeout).await {
            Ok(Some(client)) => client,
            Ok(None) => peer,
            Err(e) => {
                gateway.metrics().proxy_protocol_refused.inc();
                tracing::debug!(%peer, error = %e, "connection without a valid PROXY v2 header: closed");
                return;
            }
        }
    } else {
        peer
    };
    let serving = Serving {
        forwarded_for: super::forward::forwarded_for(client),
        tls: transport.tls.is_some(),
        protocols,
        gateway,
        forwarder,
        watcher,
        closing,
    };
    match transport.tls {
        None => {
            let h2 = match serving.protocols.http2 {
                None => false,
                Some(_) => match opens_with_h2_preface(&stream, timeout).await {
                    Some(h2) => h2,
                    None => return,
                },
            };
            serving.serve(stream, h2).await;
        }
        Some(tls) => {
            let accepted = tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await;
            let stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tls.handshake("error", "");
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tls.handshake("timeout", "");
                    return;
                }
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            tls.handshake("ok", if h2 { "h2" } else { "http/1.1" });
            let h2 = h2 && serving.protocols.http2.is_some();
            serving.serve(stream, h2).await;
        }
    }
}

/// The header-read timeout of an HTTP/1.1 connection: a request head must come whole within
/// `timeout` of the connection's start or of the end of the previous answer (an idle
/// keep-alive connection is closed at it too); a call in progress is never cut by it.
///
/// One timer per connection, moved to the new deadline when a wait for a head begins: tokio
/// extends a registered timer whose deadline only moves later without touching its wheel, so
/// a busy connection costs one clock read per call, where hyper's own timeout made, registered
/// and dropped a boxed timer per call (loadtest/RESULTS.md, issue 15).
struct HeadDeadline<F> {
    conn: Pin<Box<F>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    client: Arc<Client>,
    timeout: Duration,
    /// The wait the timer is set for (`Client::awaiting_head`).
    armed_for: Option<u64>,
}

/// No request head came within the header-read timeout.
#[derive(Debug)]
struct HeadTimedOut;

impl<F: Future> HeadDeadline<F> {
    /// The first head is due at `first_due` (the own codec may have waited for part of it).
    fn new(
        conn: F,
        client: Arc<Client>,
        timeout: Duration,
        first_due: tokio::time::Instant,
    ) -> HeadDeadline<F> {
        HeadDeadline {
            conn: Box::pin(conn),
            sleep: Box::pin(tokio::time::sleep_until(first_due)),
            client,
            timeout,
            armed_for: None,
        }
    }
}

impl<F: Future> Future for HeadDeadline<F> {
    type Output = Result<F::Output, HeadTimedOut>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        // The connection is waiting; for a head, or for a call's own progress?
        let Some(wait) = this.client.awaiting_head() else {
            return Poll::Pending;
        };
        if this.armed_for != Some(wait) {
            // The first wait keeps the deadline it was made with.
            if this.armed_for.is_some() || wait > 0 {
                let deadline = tokio::time::Instant::now() + this.timeout;
                this.sleep.as_mut().reset(deadline);
            }
            this.armed_for = Some(wait);
        }
        match this.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(HeadTimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One connection's serving, once its transport is settled.
struct Serving {
    forwarded_for: http::HeaderValue,
    tls: bool,
    protocols: Arc<Protocols>,
    gateway: Arc<Gateway>,
    forwarder: Arc<Forwarder>,
    watcher: Watcher,
    /// Cancelled when the worker closes idle connections (the drain).
    closing: CancellationToken,
}

impl Serving {
    async fn serve<S>(self, stream: S, h2: bool)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if h2 {
            self.h2(stream).await
        } else {
            self.h1(stream).await
        }
    }

    /// HTTP/1.1: one call at a time. Plain calls are read by the own codec (`server_h1`); at
    /// the first call that is not, hyper takes the connection over, its socket wrapped so a
    /// half-closed client is answered.
    async fn h1<S>(self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Serving {
            forwarded_for,
            tls,
            protocols,
            gateway,
            forwarder,
            watcher,
            closing,
        } = self;
        let client = Client::over(forwarded_for, tls);
        let timeout = gateway.settings().header_read_timeout;
        let closing = std::pin::pin!(closing.cancelled_owned());
        let ended = if gateway.settings().http1_own_codec {
            server_h1::serve(
                stream,
                server_h1::Ctx {
                    gateway: &gateway,
                    forwarder: &forwarder,
                    client: &client,
                    header_read_timeout: timeout,
                    closing,
                },
            )
            .await
        } else {
            server_h1::Ended::Handover {
                io: stream,
                read: bytes::Bytes::new(),
                head_due: tokio::time::Instant::now() + timeout,
            }
        };
        let (stream, read, head_due) = match ended {
            server_h1::Ended::Closed => return,
            server_h1::Ended::Handover { io, read, head_due } => (io, read, head_due),
        };
        if gateway.settings().http1_own_codec {
            gateway.metrics().http1_handovers.inc();
        }
        let head_client = Arc::clone(&client);
        let io = ClientIo::new(server_h1::Prefixed::new(stream, read), Arc::clone(&client));
        let service = service_fn(move |req| {
            let guard = AnswerGuard::new(&client);
            // A combinator, not an `async` block: a block would hold the call's future twice
            // (captured, and again while awaited), and the whole is moved into place per call.
            Arc::clone(&gateway)
                .handle(Arc::clone(&forwarder), req, Arc::clone(&client))
                .map(move |answer| {
                    answer.map(|response| {
                        response.map(|body| Guarded {
                            body,
                            _guard: guard,
                        })
                    })
                })
        });
        let conn = protocols.http1.serve_connection(TokioIo::new(io), service);
        match HeadDeadline::new(watcher.watch(conn), head_client, timeout, head_due).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "connection ended with an error"),
            Err(HeadTimedOut) => {
                tracing::debug!(
                    ?timeout,
                    "no request head within the header-read timeout: closed"
                );
            }
        }
    }

    /// HTTP/2: every stream is one call, served as its own task; concurrency permits and
    /// quotas count calls, whatever connection they share.
    async fn h2<S>(self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Serving {
            forwarded_for,
            tls,
            protocols,
            gateway,
            forwarder,
            watcher,
            closing: _,
        } = self;
        // One `Client` for the connection: its half-close tracking is HTTP/1.1's (no
        // `ClientIo`, no `AnswerGuard` here: a call ends with its stream), so the streams
        // share it, and a call allocates none.
        let client = Client::over(forwarded_for, tls);
        let service = service_fn(move |req| {
            Arc::clone(&gateway)
                .handle(Arc::clone(&forwarder), req, Arc::clone(&client))
                .map(|answer| {
                    answer.map(|mut response| {
                        strip_connection_fields(response.headers_mut());
                        response
                    })
                })
        });
        let builder = protocols.http2.as_ref().expect("HTTP/2 on");
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        if let Err(e) = watcher.watch(conn).await {
            tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes, then drains. Upstream calls go
/// through `forwarder`, whose pool belongs to the runtime this runs on.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    gateway: Arc<Gateway>,
    forwarder: Arc<Forwarder>,
    accepted_connections: prometheus::IntCounter,
    shutdown: impl Future<Output = ()>,
    drain: Drain,
) {
    let graceful = GracefulShutdown::new();
    // The own HTTP/1.1 codec's connections: cancelled when idle connections are closed.
    let closing = CancellationToken::new();
    let protocols = Arc::new(Protocols::new(&gateway));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tollgate_ops::http::accept_failed("api", &e).await;
                        continue;
                    }
                };
                accepted_connections.inc();
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(
                    stream,
                    peer,
                    transport.clone(),
                    Arc::clone(&protocols),
                    Arc::clone(&gateway),
                    Arc::clone(&forwarder),
                    DrainSignals {
                        watcher: graceful.watcher(),
                        closing: closing.clone(),
                    },
                ));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    gateway.start_draining();
    tracing::debug!("worker draining in-flight calls");
    let deadline = tokio::time::Instant::now() + drain.timeout;
    // Idle keep-alive connections stay open a moment: a call already on its way is answered
    // (with Connection: close) rather than cut by the close.
    if graceful.count() > 0 {
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + drain.idle_grace))
            .await;
    }
    closing.cancel();
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!("worker drained"),
        () = tokio::time::sleep_until(deadline) => {
            tracing::warn!(drain_timeout = ?drain.timeout, "drain timeout: answering the calls still waiting, then closing");
            forwarder.abort();
            tokio::time::sleep(ANSWER_GRACE).await;
        }
    }
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
}

/// Binds `n` listening sockets on one address with `SO_REUSEPORT`, one per API worker. Port 0
/// picks a free port for the first and binds the others to the same one.
pub fn bind_shared(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut listeners = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let socket = (|| -> std::io::Result<std::net::TcpListener> {
            let s = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&at.into())?;
            s.listen(4096)?;
            Ok(s.into())
        })()
        .map_err(|e| anyhow::anyhow!("cannot listen on {at}: {e}"))?;
        at = socket.local_addr()?;
        listeners.push(socket);
    }
    Ok(listeners)
}

/// The API workers: threads each running one event loop that serves its own socket of every
/// API listener.
pub struct Workers {
    addrs: Vec<SocketAddr>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Binds `n` sockets on each of `listeners`' addresses and starts one worker thread per
    /// socket set. Each worker stops accepting when `shutdown()` completes and drains its own
    /// connections.
    pub fn start<S, F>(
        listeners: Vec<(SocketAddr, Transport)>,
        n: usize,
        gateway: Arc<Gateway>,
        shutdown: S,
        drain: Drain,
    ) -> anyhow::Result<Workers>
    where
        S: Fn() -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let mut addrs = Vec::with_capacity(listeners.len());
        // Per address, its sockets (one per worker).
        let mut sockets: Vec<(Vec<std::net::TcpListener>, Transport)> = Vec::new();
        for (addr, transport) in listeners {
            let bound = bind_shared(addr, n)?;
            addrs.push(bound[0].local_addr()?);
            sockets.push((bound, transport));
        }
        let workers = sockets.first().map_or(0, |(b, _)| b.len());
        let mut per_worker: Vec<Vec<(std::net::TcpListener, Transport)>> =
            (0..workers).map(|_| Vec::new()).collect();
        for (bound, transport) in sockets {
            for (i, l) in bound.into_iter().enumerate() {
                per_worker[i].push((l, transport.clone()));
            }
        }
        let mut threads = Vec::with_capacity(workers);
        for (i, listeners) in per_worker.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Before blocking in epoll, let whatever shares the core (the client, the
                // backend) run and refill the sockets: the next poll then finds work instead of
                // a sleep and a wake-up per call (ARCHITECTURE.md, "Sharing cores").
                .on_thread_park(std::thread::yield_now)
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start API worker {i}: {e}"))?;
            let gateway = Arc::clone(&gateway);
            let stops: Vec<F> = listeners.iter().map(|_| shutdown()).collect();
            let thread = std::thread::Builder::new()
                .name(format!("tollgate-api-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let forwarder = Arc::new(Forwarder::new(gateway.settings()));
                        let accepted = gateway
                            .metrics()
                            .api_connections
                            .with_label_values(&[&i.to_string()]);
                        let mut serving = Vec::new();
                        for ((listener, transport), stop) in listeners.into_iter().zip(stops) {
                            let listener = match TcpListener::from_std(listener) {
                                Ok(l) => l,
                                Err(e) => {
                                    tracing::error!(worker = i, error = %e, "cannot register the listener");
                                    return;
                                }
                            };
                            serving.push(serve(
                                listener,
                                transport,
                                Arc::clone(&gateway),
                                Arc::clone(&forwarder),
                                accepted.clone(),
                                stop,
                                drain,
                            ));
                        }
                        futures_util::future::join_all(serving).await;
                    });
                    // Connections still open after the drain timeout are dropped with the
                    // runtime, here, before the thread ends.
                    drop(runtime);
                })
                .map_err(|e| anyhow::anyhow!("cannot start API worker {i}: {e}"))?;
            threads.push(thread);
        }
        Ok(Workers { addrs, threads })
    }

    /// The address the first API listener is on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every API listener's address, in the order given.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Completes when every worker has drained and stopped.
    pub async fn stopped(self) {
        for t in self.threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// The number of API workers `configured` asks for: 0 means one per CPU this process may use.
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
