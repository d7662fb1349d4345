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
//! - a FIN that comes after the call was read whole and before any byte of its answer was
//!   written is a half-close: it is kept from hyper until the answer has been written, and
//!   the call is answered (a client that had in fact left makes that write fail; until then
//!   the call holds its permit, as the backend is still working on it anyway);
//! - a FIN once the answer has begun (the client hangs up mid-answer), a FIN before the call
//!   was read whole, and a reset reach hyper at once: the call is dropped, unbilled, and its
//!   permit freed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the request path knows of a client connection.
#[derive(Debug)]
pub struct Client {
    /// The client's address as an `X-Forwarded-For` value (made once per connection).
    pub forwarded_for: HeaderValue,
    /// A call's request has been read whole and its answer is not written yet.
    answering: AtomicBool,
    /// Some of that answer has been written.
    answer_begun: AtomicBool,
    /// The reader that saw a FIN during an answer, to wake when the answer is done.
    reader: AtomicWaker,
}

impl Client {
    pub fn new(forwarded_for: HeaderValue) -> Arc<Client> {
        Arc::new(Client {
            forwarded_for,
            answering: AtomicBool::new(false),
            answer_begun: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        })
    }

    /// The current call's request has been read to its end: a FIN from now on is a
    /// half-close, and the call is answered.
    pub fn request_read(&self) {
        self.answer_begun.store(false, Ordering::Relaxed);
        self.answering.store(true, Ordering::Release);
    }

    /// The current call's answer is done (written, or abandoned).
    pub fn answer_done(&self) {
        self.answering.store(false, Ordering::Release);
        self.reader.wake();
    }
}

/// The client's socket, keeping a half-close from hyper until the answer is written.
pub struct ClientIo {
    io: TcpStream,
    client: Arc<Client>,
    /// The client's FIN was read.
    eof: bool,
    /// ... and is being kept from hyper until the answer is done.
    eof_held: bool,
}

impl ClientIo {
    pub fn new(io: TcpStream, client: Arc<Client>) -> ClientIo {
        ClientIo {
            io,
            client,
            eof: false,
            eof_held: false,
        }
    }

    /// True while a held FIN stays held (an answer is due).
    fn hold_eof(&self, cx: &mut Context<'_>) -> bool {
        if !self.eof_held || !self.client.answering.load(Ordering::Acquire) {
            return false;
        }
        self.client.reader.register(cx.waker());
        // The answer may have ended between the load and the registration.
        self.client.answering.load(Ordering::Acquire)
    }
}

impl ClientIo {
    fn began_answer(&self) {
        if self.client.answering.load(Ordering::Relaxed)
            && !self.client.answer_begun.load(Ordering::Relaxed)
        {
            self.client.answer_begun.store(true, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for ClientIo {
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

impl AsyncWrite for ClientIo {
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

/// Marks the answer done when the response body is dropped (hyper drops it once written, or
/// when the connection fails).
#[derive(Debug)]
pub struct AnswerGuard(pub Arc<Client>);

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
