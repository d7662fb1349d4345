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
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::Gateway;
use super::client::{AnswerGuard, Client, ClientIo, Guarded};
use super::forward::Forwarder;

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

/// Serves the API on `listener` until `shutdown` completes, then drains. Upstream calls go
/// through `forwarder`, whose pool belongs to the runtime this runs on.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    forwarder: Arc<Forwarder>,
    accepted_connections: prometheus::IntCounter,
    shutdown: impl Future<Output = ()>,
    drain: Drain,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(gateway.settings().header_read_timeout)
        // The read buffer of a connection: a request head must fit (64 KiB, as the vendor's
        // API needs a fraction of it), and a body streams through it. hyper's default
        // (~400 KiB) would let each connection sending a body hold that much.
        .max_buf_size(MAX_READ_BUFFER)
        // (A client that shuts down its sending side after its call still gets its answer:
        // `ClientIo` sees to that, and hyper keeps watching for clients that leave.)
        .keep_alive(true);
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
                let gateway = Arc::clone(&gateway);
                let forwarder = Arc::clone(&forwarder);
                let client = Client::new(super::forward::forwarded_for(peer));
                let io = ClientIo::new(stream, Arc::clone(&client));
                let service = service_fn(move |req| {
                    let guard = AnswerGuard::new(&client);
                    let answer = Arc::clone(&gateway).handle(Arc::clone(&forwarder), req, Arc::clone(&client));
                    async move {
                        let response = answer.await?;
                        Ok::<_, std::convert::Infallible>(
                            response.map(|body| Guarded { body, _guard: guard }),
                        )
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(io), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
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

/// The API workers: threads each running one event loop that serves one listener.
pub struct Workers {
    addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Binds `n` listeners on `addr` and starts one worker thread per listener. Each worker
    /// stops accepting when `shutdown()` completes and drains its own connections.
    pub fn start<S, F>(
        addr: SocketAddr,
        n: usize,
        gateway: Arc<Gateway>,
        shutdown: S,
        drain: Drain,
    ) -> anyhow::Result<Workers>
    where
        S: Fn() -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let listeners = bind_shared(addr, n)?;
        let addr = listeners[0].local_addr()?;
        let mut threads = Vec::with_capacity(listeners.len());
        for (i, listener) in listeners.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start API worker {i}: {e}"))?;
            let gateway = Arc::clone(&gateway);
            let stop = shutdown();
            let thread = std::thread::Builder::new()
                .name(format!("tollgate-api-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let listener = match TcpListener::from_std(listener) {
                            Ok(l) => l,
                            Err(e) => {
                                tracing::error!(worker = i, error = %e, "cannot register the listener");
                                return;
                            }
                        };
                        let forwarder = Arc::new(Forwarder::new(gateway.settings()));
                        let accepted = gateway
                            .metrics()
                            .api_connections
                            .with_label_values(&[&i.to_string()]);
                        serve(listener, gateway, forwarder, accepted, stop, drain).await;
                    });
                    // Connections still open after the drain timeout are dropped with the
                    // runtime, here, before the thread ends.
                    drop(runtime);
                })
                .map_err(|e| anyhow::anyhow!("cannot start API worker {i}: {e}"))?;
            threads.push(thread);
        }
        Ok(Workers { addr, threads })
    }

    /// The address every worker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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
