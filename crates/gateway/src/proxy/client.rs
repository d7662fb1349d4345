//! One client connection as the request path sees it: who is at the other end, and its
//! socket, wrapped so that a client that half-closes is still answered.
//!
//! A client may shut down its sending side once its call is sent (`shutdown(SHUT_WR)`, as
//! `nc -N` and some HTTP/1.0-minded clients do). TCP cannot tell that FIN from the one of a
//! client that closed entirely, until something is written back. hyper either treats every
//! FIN during a call as the client leaving (and never answers a half-closed client), or, with
//! `half_close`, stops watching the socket during a call (and never notices a client that
//! reset its connection mid-answer, whose concurrency permit would then stay held until the
//! backend finished). [`ClientIo`] does what is right for a gateway:
//!
//! - a FIN that comes once a call was read whole and before any byte of its answer was
//!   written is a half-close: it is kept from hyper until the answer has been written, and
//!   the call is answered (a client that had in fact left makes that write fail; until then
//!   the call holds its permit, as the backend is still working on it anyway);
//! - a FIN in the middle of a call's body, a FIN once the answer has begun (the client hangs
//!   up mid-answer), and a reset reach hyper: the call is dropped, unbilled, and its permit
//!   and buffered bytes freed.
//!
//! hyper may read the FIN just before the request path has taken the body hyper already
//! buffered; a FIN seen while the body is not yet taken is held for at most
//! [`BODY_GRACE`], time enough for the path to take it (it is the same task), and let
//! through if the body does not complete.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the request path knows of a client connection.
#[derive(Debug)]
pub struct Client {
    /// The client's address as an `X-Forwarded-For` value (made once per connection).
    pub forwarded_for: HeaderValue,
    /// `http` or `https`, as `X-Forwarded-Proto` tells the backend.
    pub forwarded_proto: HeaderValue,
    /// A call is in progress: its head has been read and its answer is not written yet.
    answering: AtomicBool,
    /// The call's body has been read to its end.
    body_done: AtomicBool,
    /// Some of that answer has been written.
    answer_begun: AtomicBool,
    /// The reader that saw a FIN during an answer, to wake when the answer is done.
    reader: AtomicWaker,
    /// How many calls the connection has started: names the wait for the next head.
    calls: AtomicU64,
}

impl Client {
    pub fn new(forwarded_for: HeaderValue) -> Arc<Client> {
        Self::over(forwarded_for, false)
    }

    /// A client of a TLS connection (`tls`) or a plain one.
    pub fn over(forwarded_for: HeaderValue, tls: bool) -> Arc<Client> {
        Arc::new(Client {
            forwarded_for,
            forwarded_proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            answering: AtomicBool::new(false),
            body_done: AtomicBool::new(false),
            answer_begun: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            calls: AtomicU64::new(0),
        })
    }

    /// While no call is in progress (the connection waits for a request head): how many
    /// calls came before, which names this wait. `None` during a call.
    pub fn awaiting_head(&self) -> Option<u64> {
        (!self.answering.load(Ordering::Acquire)).then(|| self.calls.load(Ordering::Relaxed))
    }

    /// A call's head has been read: a FIN from now on, until its answer begins, is a
    /// half-close, and the call is answered.
    fn call_started(&self) {
        self.answer_begun.store(false, Ordering::Relaxed);
        self.body_done.store(false, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.answering.store(true, Ordering::Release);
    }

    /// The current call's body has been read to its end.
    pub fn body_read(&self) {
        self.body_done.store(true, Ordering::Release);
        self.reader.wake();
    }

    /// The current call's answer is done (written, or abandoned).
    fn answer_done(&self) {
        self.answering.store(false, Ordering::Release);
        self.reader.wake();
    }
}

/// How long a FIN read while the call's body is not yet taken waits for it to be taken.
pub const BODY_GRACE: Duration = Duration::from_millis(50);

/// The client's socket (or its TLS stream), keeping a half-close from hyper until the answer
/// is written.
pub struct ClientIo<S = TcpStream> {
    io: S,
    client: Arc<Client>,
    /// The client's FIN was read.
    eof: bool,
    /// ... during a call whose answer had not begun: it may be kept from hyper.
    eof_held: bool,
    /// Armed when a FIN came before the call's body was taken.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> ClientIo<S> {
    pub fn new(io: S, client: Arc<Client>) -> ClientIo<S> {
        ClientIo {
            io,
            client,
            eof: false,
            eof_held: false,
            grace: None,
        }
    }

    /// True while a FIN stays kept from hyper: an answer is due to a call read whole (or
    /// whose body may still be taken, within the grace).
    fn hold_eof(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.eof_held {
            return false;
        }
        self.client.reader.register(cx.waker());
        // Loaded after registering: a change made meanwhile wakes this task again.
        if !self.client.answering.load(Ordering::Acquire) {
            self.eof_held = false;
            return false;
        }
        if self.client.body_done.load(Ordering::Acquire) {
            return true;
        }
        let grace = self
            .grace
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(BODY_GRACE)));
        if grace.as_mut().poll(cx).is_ready() {
            // The body did not complete: the client left mid-call.
            self.eof_held = false;
            return false;
        }
        true
    }
}

impl<S> ClientIo<S> {
    fn began_answer(&self) {
        if self.client.answering.load(Ordering::Relaxed)
            && !self.client.answer_begun.load(Ordering::Relaxed)
        {
            self.client.answer_begun.store(true, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ClientIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.eof {
            let before = buf.filled().len();
            std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
            this.eof = true;
            // A half-close: the call is read, nothing of its answer written yet.
            this.eof_held = this.client.answering.load(Ordering::Acquire)
                && !this.client.answer_begun.load(Ordering::Relaxed);
        }
        if this.hold_eof(cx) {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.began_answer();
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.began_answer();
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Marks a call in progress from its creation (when hyper hands the call over) until it is
/// dropped with the response body (hyper drops it once written, or when the connection
/// fails).
#[derive(Debug)]
pub struct AnswerGuard(Arc<Client>);

impl AnswerGuard {
    pub fn new(client: &Arc<Client>) -> AnswerGuard {
        client.call_started();
        AnswerGuard(Arc::clone(client))
    }
}

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        self.0.answer_done();
    }
}

/// A response body that marks the answer done when dropped.
pub struct Guarded<B> {
    pub body: B,
    pub _guard: AnswerGuard,
}

impl<B: http_body::Body + Unpin> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
