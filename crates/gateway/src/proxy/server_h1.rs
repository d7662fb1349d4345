//! The gateway's own HTTP/1.1 server codec, for the calls that make nearly all of its traffic:
//! plain `POST /` (or `GET /?…`) calls whose head and body arrive together. Such a call is read
//! into a [`RawHead`] (no header map is built, hashed and dropped per call), handled, and its
//! answer written with one write. Everything else on the connection — the first call outside
//! that shape ([`RawHead::parse`] says which), and every call after it — is hyper's: the
//! connection is handed over with the bytes already read ([`Ended::Handover`]), so chunked
//! bodies, `Expect`, upgrades, HTTP/1.0, malformed heads and their answers stay hyper's.
//!
//! Why by hand (ARCHITECTURE.md, "Written by hand"): hyper's HTTP/1 server builds a header
//! map for every call and another for every answer, runs its dispatcher and body channel
//! around the service, and reads the clock for `Date` per answer; together about a fifth of
//! the gateway's user CPU per forwarded call (loadtest/RESULTS.md, issue 15).
//!
//! What the connection does, as hyper did it:
//! - a request head must come whole within the header-read timeout of the connection's start
//!   or of the previous answer's end (an idle keep-alive connection is closed at it);
//! - a FIN once a call is read is a half-close: the call is answered, then the connection
//!   ends; a reset drops the call (unbilled, its permit freed);
//! - bytes of a pipelined next call that come meanwhile are kept (up to the read buffer);
//! - `Connection: close` from the client, or on the answer (a draining gateway, a refusal
//!   whose body was not read), ends the connection after the answer;
//! - on the drain, an idle connection closes when the worker stops waiting for idle ones.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::body::ProxyBody;
use super::client::Client;
use super::coarse;
use super::forward::Forwarder;
use super::head::{Parsed, RawHead};
use super::names::REQUEST_ID;
use super::respond::Refusal;
use super::server::MAX_READ_BUFFER;
use super::{Answer, Forwarded, Gateway};

/// A connection's read buffer starts this large; a read waiting for a head asks for at least
/// `MIN_READ` of room in it. The room is made only then, when the previous call's bytes (which
/// share the buffer) are gone, so it is reclaimed rather than allocated anew.
const INITIAL_BUFFER: usize = 8 * 1024;
const MIN_READ: usize = 2 * 1024;
/// While a call is served, the socket is read (for a reset, a hang-up or a pipelined call)
/// only into the room left, if at least this much.
const WATCH_ROOM: usize = 512;
/// A call whose head is in and whose body is not waits this long for the rest (the pieces of
/// one write, split by the network), then is hyper's, with its body deadlines and budget.
const BODY_COALESCE: Duration = Duration::from_millis(10);
/// Answer bytes up to this size are copied into the head's buffer and written with it; a
/// larger piece is written from where it lies.
const COPY_UP_TO: usize = 16 * 1024;

/// How a connection's own serving ended.
pub(super) enum Ended<S> {
    /// The connection is done.
    Closed,
    /// A call hyper reads: the stream, what was read of it and not consumed, and when the
    /// head being read is due.
    Handover {
        io: S,
        read: Bytes,
        head_due: tokio::time::Instant,
    },
}

/// What a connection's serving needs.
pub(super) struct Ctx<'a> {
    pub gateway: &'a Gateway,
    pub forwarder: &'a Forwarder,
    pub client: &'a Client,
    pub header_read_timeout: Duration,
    /// Completes when the worker closes idle connections (the drain).
    pub closing: Pin<&'a mut WaitForCancellationFutureOwned>,
}

/// Serves calls on `io` until the connection ends or a call is hyper's.
pub(super) async fn serve<S>(mut io: S, mut ctx: Ctx<'_>) -> Ended<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(INITIAL_BUFFER);
    let mut out = Vec::with_capacity(1024);
    let mut eof = false;
    let timeout = ctx.header_read_timeout;
    // One timer per connection, not moved call by call: it stays at or before the head's
    // deadline, and is set again to the rest of the wait when it fires before that. The wait
    // is measured on the coarse clock (`coarse`), read once per call.
    let mut head_timer = Box::pin(tokio::time::sleep(timeout));
    let mut head = RawHead::default();
    loop {
        let wait = HeadWait {
            since: coarse::monotonic_nanos(),
            timeout,
        };
        // Set once the head is in and the body is awaited.
        let mut body_due = None;
        // A whole call, or the end.
        let payload = loop {
            if !buf.is_empty() {
                match RawHead::parse(&mut buf, MAX_READ_BUFFER, &mut head) {
                    Parsed::Call(payload) => break payload,
                    Parsed::Other => {
                        return Ended::Handover {
                            io,
                            read: buf.freeze(),
                            head_due: wait.due(),
                        };
                    }
                    Parsed::BodyPartial if body_due.is_none() => {
                        let due = (tokio::time::Instant::now() + BODY_COALESCE).min(wait.due());
                        head_timer.as_mut().reset(due);
                        body_due = Some(due);
                    }
                    Parsed::Partial | Parsed::BodyPartial => {}
                }
            }
            if eof {
                // The client is done; a partial head is hyper's to answer.
                if buf.is_empty() {
                    return Ended::Closed;
                }
                return Ended::Handover {
                    io,
                    read: buf.freeze(),
                    head_due: wait.due(),
                };
            }
            if buf.len() >= MAX_READ_BUFFER {
                return Ended::Handover {
                    io,
                    read: buf.freeze(),
                    head_due: wait.due(),
                };
            }
            buf.reserve(MIN_READ);
            let idle = buf.is_empty();
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) => eof = true,
                    Ok(_) => {}
                    Err(_) => return Ended::Closed,
                },
                () = head_timer.as_mut() => {
                    if body_due.is_some() {
                        // The body comes slowly: hyper reads it, within the body deadlines.
                        return Ended::Handover {
                            io,
                            read: buf.freeze(),
                            head_due: wait.due(),
                        };
                    }
                    let left = wait.left();
                    if left.is_zero() {
                        tracing::debug!(?timeout, "no request head within the header-read timeout: closed");
                        return Ended::Closed;
                    }
                    // Set at an earlier wait's deadline: the rest of this one.
                    head_timer.as_mut().reset(tokio::time::Instant::now() + left);
                }
                () = ctx.closing.as_mut(), if idle => return Ended::Closed,
            }
        };
        // The call, while the socket is watched: a reset drops it, a FIN is a half-close.
        let mut close = head.close;
        let answer = {
            let mut call =
                std::pin::pin!(
                    ctx.gateway
                        .handle_raw(ctx.forwarder, &head, payload, ctx.client)
                );
            loop {
                let room = !eof && buf.capacity() - buf.len() >= WATCH_ROOM;
                tokio::select! {
                    biased;
                    answer = call.as_mut() => break answer,
                    read = io.read_buf(&mut buf), if room => match read {
                        Ok(0) => eof = true,
                        // A pipelined call: kept for after this one.
                        Ok(_) => {}
                        // The client reset the connection: the call is dropped, unbilled.
                        Err(_) => return Ended::Closed,
                    },
                }
            }
        };
        let written = match answer {
            Answer::Forwarded(answer) => {
                close |= answer.close;
                write_answer(&mut io, answer, &mut out, close, &mut buf, eof).await
            }
            Answer::Refused {
                refusal,
                request_id,
                close: refusal_closes,
            } => {
                close |= refusal_closes;
                write_refusal(&mut io, &refusal, request_id.as_str(), &mut out, close).await
            }
        };
        if written.is_err() {
            return Ended::Closed;
        }
        head.release();
        if close {
            let _ = io.shutdown().await;
            return Ended::Closed;
        }
    }
}

/// The wait for a request head: since when (coarse monotonic nanoseconds), and for how long.
#[derive(Clone, Copy)]
struct HeadWait {
    since: u64,
    timeout: Duration,
}

impl HeadWait {
    /// What is left of the wait now (zero once it is over).
    fn left(&self) -> Duration {
        let waited = Duration::from_nanos(coarse::monotonic_nanos().saturating_sub(self.since));
        self.timeout.saturating_sub(waited)
    }

    /// When the head is due, on the timer's clock (for hyper, when the call is its).
    fn due(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.left()
    }
}

/// Why an answer could not be written whole.
#[derive(Debug)]
enum WriteError {
    Io,
    /// The answer's body failed (its backend stalled or broke mid-answer): the client's
    /// connection is closed, as its answer cannot be completed.
    Body,
}

impl From<io::Error> for WriteError {
    fn from(_: io::Error) -> WriteError {
        WriteError::Io
    }
}

/// Writes the gateway's own answer to a call, in one write: the refusal's status, fields and
/// body (`Refusal::fields`, the same the hyper path puts in its header map).
async fn write_refusal<S>(
    io: &mut S,
    refusal: &Refusal,
    request_id: &str,
    out: &mut Vec<u8>,
    close: bool,
) -> Result<(), WriteError>
where
    S: AsyncWrite + Unpin,
{
    out.clear();
    status_line(out, refusal.status());
    refusal.fields(request_id, |name, value| {
        field(out, name.as_str().as_bytes(), value);
    });
    let body = refusal.body(request_id);
    field(
        out,
        b"content-length",
        itoa::Buffer::new().format(body.len()).as_bytes(),
    );
    DATE.with(|d| d.write(out));
    if close {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    io.write_all(out).await?;
    io.flush().await?;
    Ok(())
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes an answer: its head (with `Date`, its framing, and `Connection: close` when the
/// connection ends after it) and its body, copied into one write when small.
///
/// While the body's next piece is awaited, the socket is watched: a client that hangs up
/// mid-answer (a FIN or a reset, unless it had half-closed before: `eof`) ends the call,
/// unbilled and its permit freed, as hyper did; bytes of a next call are kept in `buf`.
async fn write_answer<S>(
    io: &mut S,
    answer: Forwarded,
    out: &mut Vec<u8>,
    close: bool,
    buf: &mut BytesMut,
    eof: bool,
) -> Result<(), WriteError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Forwarded {
        status,
        fields,
        request_id,
        close: _,
        mut body,
    } = answer;
    out.clear();
    status_line(out, status);
    // The backend's end-to-end fields, as they came (hop-by-hop ones are gone).
    out.extend_from_slice(fields.lines());
    field(out, REQUEST_ID.as_str().as_bytes(), request_id.as_bytes());
    // 1xx, 204 and 304 answers have no body (RFC 9112 section 6.3).
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut chunked = false;
    if !bodiless && !fields.has_length() {
        match body.size_hint().exact() {
            Some(n) => field(
                out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            ),
            None => {
                chunked = true;
                field(out, b"transfer-encoding", b"chunked");
            }
        }
    }
    if !fields.has_date() {
        DATE.with(|d| d.write(out));
    }
    if close {
        field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    // The body: every piece there now goes with the head; then piece by piece as it comes.
    loop {
        let pending_output = !out.is_empty();
        let room = !eof && buf.capacity() - buf.len() >= WATCH_ROOM;
        let step = tokio::select! {
            biased;
            step = std::future::poll_fn(|cx| poll_piece(&mut body, cx, pending_output)) => step,
            read = io.read_buf(buf), if room => match read {
                Ok(0) | Err(_) => return Err(WriteError::Io),
                Ok(_) => continue,
            },
        };
        match step.map_err(|_| WriteError::Body)? {
            Piece::Data(data) => {
                if data.is_empty() || bodiless {
                    continue;
                }
                if chunked {
                    let mut size = [0u8; 16];
                    out.extend_from_slice(hex(data.len(), &mut size));
                    out.extend_from_slice(b"\r\n");
                }
                if data.len() > COPY_UP_TO {
                    io.write_all(out).await?;
                    out.clear();
                    io.write_all(&data).await?;
                } else {
                    out.extend_from_slice(&data);
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
            }
            Piece::Wait => {
                io.write_all(out).await?;
                io.flush().await?;
                out.clear();
            }
            Piece::End => {
                if chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                if !out.is_empty() {
                    io.write_all(out).await?;
                }
                io.flush().await?;
                return Ok(());
            }
        }
    }
}

/// The next step of writing a body.
enum Piece {
    Data(Bytes),
    /// Nothing more yet, and something is ready to be written meanwhile.
    Wait,
    End,
}

fn poll_piece(
    body: &mut ProxyBody,
    cx: &mut Context<'_>,
    pending_output: bool,
) -> Poll<Result<Piece, super::http1::ExchangeError>> {
    match Pin::new(body).poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => {
            // Trailers are not sent (as hyper does for HTTP/1.1 answers nobody asked them of).
            Poll::Ready(Ok(Piece::Data(frame.into_data().unwrap_or_default())))
        }
        Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
        Poll::Ready(None) => Poll::Ready(Ok(Piece::End)),
        Poll::Pending if pending_output => Poll::Ready(Ok(Piece::Wait)),
        Poll::Pending => Poll::Pending,
    }
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in lower-case hex, into `buf`.
fn hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The `Date` of answers, formatted once a second per worker thread.
struct CachedDate {
    second: std::cell::Cell<u64>,
    text: std::cell::RefCell<[u8; 29]>,
}

thread_local! {
    static DATE: CachedDate = const {
        CachedDate {
            second: std::cell::Cell::new(0),
            text: std::cell::RefCell::new([0; 29]),
        }
    };
}

impl CachedDate {
    /// Writes the `Date` field of an answer sent now (`Sun, 06 Nov 1994 08:49:37 GMT`).
    fn write(&self, out: &mut Vec<u8>) {
        // The coarse clock: a `Date` is to the second, and this is read for every answer.
        let second = coarse::unix_seconds();
        let mut text = self.text.borrow_mut();
        if second != self.second.get() {
            let formatted =
                httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(second));
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                self.second.set(second);
            }
        }
        field(out, b"date", &text[..]);
    }
}

/// A stream whose first reads return bytes already read from it: how a connection reaches
/// hyper with the call the own codec read the start of.
pub(super) struct Prefixed<S> {
    read: Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    pub(super) fn new(io: S, read: Bytes) -> Prefixed<S> {
        Prefixed { read, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let piece = self.read.split_to(n);
            buf.put_slice(&piece);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        let mut b = [0u8; 16];
        assert_eq!(hex(0, &mut b), b"0");
        assert_eq!(hex(255, &mut b), b"ff");
        assert_eq!(hex(0x1_0000, &mut b), b"10000");
        assert_eq!(hex(usize::MAX, &mut b), b"ffffffffffffffff");
    }

    #[test]
    fn the_cached_date_is_an_http_date() {
        let mut out = Vec::new();
        DATE.with(|d| d.write(&mut out));
        let text = String::from_utf8(out).unwrap();
        let value = text
            .strip_prefix("date: ")
            .unwrap()
            .strip_suffix("\r\n")
            .unwrap();
        let parsed = httpdate::parse_http_date(value).unwrap();
        let skew = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(skew < Duration::from_secs(2), "{text}");
    }

    #[tokio::test]
    async fn a_prefixed_stream_reads_its_prefix_first() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut p = Prefixed::new(b, Bytes::from_static(b"hello"));
        let mut s = String::new();
        p.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }
}
