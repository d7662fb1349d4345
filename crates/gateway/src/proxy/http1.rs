//! HTTP/1.1 to the recognition backends, on one connection, driven by the call that holds it.
//!
//! One call at a time per connection (no pipelining): [`Conn::send`] writes the request head
//! and body in one vectored write, [`Conn::read_head`] reads and parses the answer's head
//! (`httparse`, informational answers skipped), and [`Conn::poll_body`] yields the body as it
//! arrives, decoding its framing (RFC 9112 section 6: `Content-Length`, `chunked`, or until the
//! connection closes). Whether the connection may carry another call is decided from the head
//! (`Connection: close`, HTTP/1.0) and from how the body ended.
//!
//! Why not hyper's client (`client::conn::http1`, which this replaced): it runs every
//! connection as a task of its own and talks to the call through three channels (the request,
//! the response head, the body chunks), so every call paid for two extra task wake-ups and the
//! channel traffic; reading the answer in the call's own task costs less CPU per forwarded
//! call (the interleaved A/B is in loadtest/RESULTS.md). The server side stays
//! hyper's. What this module does not do, because the gateway never needs it: pipelining,
//! `Expect: 100-continue` (the body is always sent whole), upgrades (a `101` is an error),
//! trailers (read and dropped).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::forward::HEADER_REQUEST_ID;
use super::hop;

/// An answer's head may not be larger than this.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Nor have more headers than this.
const MAX_HEADERS: usize = 128;
/// A chunk-size line or a trailer line longer than this is not HTTP.
const MAX_LINE: usize = 4096;
/// Reads ask for at least this much room, and for at most `MAX_READ` while a body streams.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// What went wrong in an exchange with a backend.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("writing the call: {0}")]
    Write(io::Error),
    #[error("reading the answer: {0}")]
    Read(io::Error),
    #[error("the backend closed the connection before the answer was complete")]
    Incomplete,
    #[error("the answer's head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    #[error("the backend sent nothing of the answer's body for {0:?}")]
    Stalled(std::time::Duration),
}

/// An answer's head, and how its body is framed.
pub struct Head {
    pub status: StatusCode,
    pub fields: Fields,
    pub body: BodyState,
    /// The connection may carry another call once the body has been read to its end.
    pub keep_alive: bool,
}

/// An answer's end-to-end fields as they go on to the client: `name: value\r\n` lines, names
/// lower-cased (as a `HeaderName` has them), hop-by-hop fields gone, in the backend's order.
///
/// The own HTTP/1.1 codec writes the lines as they are; a header map is built from them only
/// for the codecs that need one (hyper's HTTP/1.1 and HTTP/2, [`Fields::into_header_map`]).
/// Every line was checked by `httparse` (a token name, a value of visible bytes, spaces and
/// tabs), which is what `HeaderName` and `HeaderValue` accept.
#[derive(Debug, Default)]
pub struct Fields {
    lines: Vec<u8>,
    has_length: bool,
    has_date: bool,
}

impl Fields {
    fn push(&mut self, name: &[u8], value: &[u8]) {
        let at = self.lines.len();
        self.lines.extend_from_slice(name);
        self.lines[at..].make_ascii_lowercase();
        let name = &self.lines[at..];
        self.has_length |= name == b"content-length";
        self.has_date |= name == b"date";
        self.lines.extend_from_slice(b": ");
        self.lines.extend_from_slice(value);
        self.lines.extend_from_slice(b"\r\n");
    }

    /// The fields as lines of an HTTP/1.1 head.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// A `Content-Length` is among them.
    pub fn has_length(&self) -> bool {
        self.has_length
    }

    /// A `Date` is among them.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Each field's name and value, in order.
    pub fn each(&self, mut f: impl FnMut(&[u8], &[u8])) {
        let mut rest = &self.lines[..];
        while let Some(end) = memchr::memmem::find(rest, b"\r\n") {
            let line = &rest[..end];
            rest = &rest[end + 2..];
            // Written by `push`: the name has no colon, `": "` follows it.
            let colon = memchr::memchr(b':', line).unwrap_or(line.len());
            let value = line.get(colon + 2..).unwrap_or_default();
            f(&line[..colon], value);
        }
    }

    /// The fields as a header map, with room for `extra` more.
    pub fn into_header_map(self, extra: usize) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.lines.len() / 16 + extra);
        self.each(|name, value| {
            // Both were checked by `httparse` as these check them.
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                map.append(name, value);
            }
        });
        map
    }
}

/// Where the reading of a body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyState {
    /// This many bytes are still to come (`Content-Length`).
    Length(u64),
    Chunked(Chunk),
    /// Everything until the backend closes the connection.
    UntilClose,
    Done,
}

/// Where the decoding of a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are still to come.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// Trailer lines, up to an empty line.
    Trailers,
}

impl BodyState {
    /// True when no more body bytes will come.
    pub fn is_end(&self) -> bool {
        matches!(self, BodyState::Done | BodyState::Length(0))
    }

    /// The exact number of body bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            BodyState::Length(n) => Some(*n),
            BodyState::Done => Some(0),
            _ => None,
        }
    }
}

/// One connection to a backend, with what was read from it and not yet consumed.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// Room for the next call's request head, kept with the connection between calls.
    scratch: Vec<u8>,
    /// The timer of the call on the connection (its response timeout), kept between calls:
    /// moved to each call's later deadline, it stays in tokio's timer wheel instead of being
    /// registered and removed per call.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            scratch: Vec::with_capacity(1024),
            timer: None,
        }
    }

    /// The connection's timer, for the caller to bound the next call with (given back with
    /// [`Conn::put_timer`]); `None` for a connection that has not carried a call yet.
    pub fn take_timer(&mut self) -> Option<Pin<Box<tokio::time::Sleep>>> {
        self.timer.take()
    }

    pub fn put_timer(&mut self, timer: Pin<Box<tokio::time::Sleep>>) {
        self.timer = Some(timer);
    }

    /// The connection's head buffer, empty, for the caller to write the next request head
    /// in (given back with [`Conn::put_scratch`]).
    pub fn take_scratch(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.scratch);
        v.clear();
        v
    }

    pub fn put_scratch(&mut self, scratch: Vec<u8>) {
        self.scratch = scratch;
    }

    /// True if an idle connection shows no sign of having been closed: nothing is waiting to
    /// be read on it. A backend that closed it (its keep-alive timeout) left a FIN, which the
    /// event loop has seen by now if it arrived before this call.
    pub fn idle_and_open(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be left over from the last read of the previous answer: look.
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    /// Like [`Conn::idle_and_open`], asking the kernel (one `recv` with `MSG_PEEK`) rather
    /// than the event loop, whose view may not include a FIN that arrived since its last turn.
    pub fn peek_open(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(&self.io).peek(&mut probe),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }

    /// Writes a call: its head (made with [`start_request`], [`header`] and [`end_request`])
    /// and its body, in one vectored write when the socket takes it whole.
    pub async fn send(&mut self, head: &[u8], body: &[u8]) -> Result<(), ExchangeError> {
        let (mut h, mut b) = (0, 0);
        while h < head.len() || b < body.len() {
            let n = self
                .io
                .write_vectored(&[IoSlice::new(&head[h..]), IoSlice::new(&body[b..])])
                .await
                .map_err(ExchangeError::Write)?;
            if n == 0 {
                return Err(ExchangeError::Write(io::ErrorKind::WriteZero.into()));
            }
            let on_head = n.min(head.len() - h);
            h += on_head;
            b += n - on_head;
        }
        Ok(())
    }

    /// Reads the head of the answer to a call made with `method`, skipping informational
    /// (1xx) answers.
    pub async fn read_head(&mut self, method: &Method) -> Result<Head, ExchangeError> {
        loop {
            if let Some(head) = parse_head(&mut self.buf, method)? {
                return Ok(head);
            }
            if self.buf.len() >= MAX_HEAD_BYTES {
                return Err(ExchangeError::HeadTooLarge);
            }
            let n = std::future::poll_fn(|cx| self.poll_fill(cx, MIN_READ)).await?;
            if n == 0 {
                return Err(ExchangeError::Incomplete);
            }
        }
    }

    /// The next piece of a body whose reading stands at `state`; `None` at its end.
    pub fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        state: &mut BodyState,
    ) -> Poll<Option<Result<Bytes, ExchangeError>>> {
        loop {
            match decode_body(&mut self.buf, state) {
                Decoded::Data(data) => return Poll::Ready(Some(Ok(data))),
                Decoded::End => return Poll::Ready(None),
                Decoded::Error(e) => return Poll::Ready(Some(Err(e))),
                Decoded::More(want) => {
                    if ready!(self.poll_fill(cx, want))? == 0 {
                        return Poll::Ready(at_close(state).map(Err));
                    }
                }
            }
        }
    }

    /// True when nothing was read beyond the answer (a backend that sent more than it framed
    /// cannot be trusted with another call).
    pub fn clean(&self) -> bool {
        self.buf.is_empty()
    }

    /// Reads what the socket has into the buffer, with room for at least `want` bytes
    /// (bounded by `MIN_READ` and `MAX_READ`); 0 at the end of the stream.
    fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<Result<usize, ExchangeError>> {
        let room = want.clamp(MIN_READ, MAX_READ);
        if self.buf.capacity() - self.buf.len() < room.min(MIN_READ) {
            self.buf.reserve(room);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
            .map_err(ExchangeError::Read)
    }
}

/// The start of a request head: its request line.
pub fn start_request(head: &mut Vec<u8>, method: &Method, path_and_query: &str) {
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path_and_query.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
}

/// One header line of a request head.
pub fn header(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// The end of a request head: the body's `Content-Length` (absent only for a GET or HEAD
/// without a body) and the empty line.
pub fn end_request(head: &mut Vec<u8>, method: &Method, body_len: usize) {
    if body_len > 0 || !matches!(*method, Method::GET | Method::HEAD) {
        header(
            head,
            b"content-length",
            itoa::Buffer::new().format(body_len).as_bytes(),
        );
    }
    head.extend_from_slice(b"\r\n");
}

/// A complete answer head at the front of `buf`, consumed (informational answers skipped);
/// `None` if more bytes are needed. The head's headers keep only end-to-end fields: the
/// hop-by-hop ones (RFC 9110 section 7.6.1), including those the answer's `Connection` names,
/// are used for framing here and not handed on.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, ExchangeError> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        // Header slots left uninitialised (httparse writes those it fills): a 4 KiB memset
        // per answer otherwise.
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ExchangeError::Malformed("too many headers"));
            }
            Err(_) => return Err(ExchangeError::Malformed("not an HTTP/1 response head")),
        };
        let code = parsed.code.ok_or(ExchangeError::Malformed("no status"))?;
        let status = StatusCode::from_u16(code)
            .map_err(|_| ExchangeError::Malformed("status code out of range"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(ExchangeError::Malformed(
                "an upgrade the call did not ask for",
            ));
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        // Only HTTP/1.1 keeps a connection open by default; HTTP/1.0 is not reused.
        let http_11 = parsed.version == Some(1);
        let fields = parsed.headers.iter().map(|h| (h.name.as_bytes(), h.value));
        let (body, framing_keeps_alive) = framing(method, status, fields.clone())?;
        let connection = hop::ConnectionField::of(fields.clone());
        let keep_alive = framing_keeps_alive && http_11 && !connection.close;
        let chunked = fields
            .clone()
            .any(|(n, _)| n.eq_ignore_ascii_case(b"transfer-encoding"));
        let mut kept = Fields {
            lines: Vec::with_capacity(len),
            ..Fields::default()
        };
        for h in parsed.headers.iter() {
            let name = h.name.as_bytes();
            // Hop-by-hop fields, and a length beside Transfer-Encoding (the body is decoded
            // here: it must not frame the answer the client gets), stay behind; so does a
            // request id, which the gateway sets on every answer.
            if hop::is_hop_by_hop(name)
                || connection.names(name)
                || (chunked && name.eq_ignore_ascii_case(b"content-length"))
                || name.eq_ignore_ascii_case(HEADER_REQUEST_ID.as_bytes())
            {
                continue;
            }
            kept.push(name, h.value);
        }
        buf.advance(len);
        return Ok(Some(Head {
            status,
            fields: kept,
            body,
            keep_alive,
        }));
    }
}

/// One step of decoding a body from what was read of it.
#[derive(Debug)]
pub enum Decoded {
    /// The next piece of the body.
    Data(Bytes),
    /// The body has ended (whatever follows in the buffer is not part of it).
    End,
    /// More bytes are needed: read into the buffer (with room for about this many) and call
    /// again. If the connection has closed instead, [`at_close`] says what that means.
    More(usize),
    Error(ExchangeError),
}

/// Decodes the next piece of a body whose reading stands at `state` from `buf`, consuming what
/// it uses (RFC 9112 section 6: `Content-Length`, `chunked`, or until the connection closes).
pub fn decode_body(buf: &mut BytesMut, state: &mut BodyState) -> Decoded {
    loop {
        match state {
            BodyState::Done => return Decoded::End,
            BodyState::Length(0) => {
                *state = BodyState::Done;
                return Decoded::End;
            }
            BodyState::Length(left) => {
                if !buf.is_empty() {
                    return Decoded::Data(take(buf, left));
                }
                return Decoded::More(usize::try_from(*left).unwrap_or(MAX_READ));
            }
            BodyState::UntilClose => {
                if !buf.is_empty() {
                    return Decoded::Data(buf.split().freeze());
                }
                return Decoded::More(MAX_READ);
            }
            BodyState::Chunked(chunk) => match chunk {
                // A chunk-size line starts with a hex digit (httparse alone would take an
                // empty line for a last chunk and end the body early).
                Chunk::Size if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                    return Decoded::Error(ExchangeError::Malformed("invalid chunk size"));
                }
                Chunk::Size => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        *chunk = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if buf.len() > MAX_LINE {
                            return Decoded::Error(ExchangeError::Malformed(
                                "chunk size line too long",
                            ));
                        }
                        return Decoded::More(MIN_READ);
                    }
                    Err(_) => {
                        return Decoded::Error(ExchangeError::Malformed("invalid chunk size"));
                    }
                },
                Chunk::Data(left) => {
                    if !buf.is_empty() {
                        let data = take(buf, left);
                        if *left == 0 {
                            *chunk = Chunk::DataEnd;
                        }
                        return Decoded::Data(data);
                    }
                    return Decoded::More(usize::try_from(*left).unwrap_or(MAX_READ));
                }
                Chunk::DataEnd => {
                    if buf.len() < 2 {
                        return Decoded::More(MIN_READ);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Decoded::Error(ExchangeError::Malformed(
                            "no CRLF after chunk data",
                        ));
                    }
                    buf.advance(2);
                    *chunk = Chunk::Size;
                }
                Chunk::Trailers => match memchr::memmem::find(buf, b"\r\n") {
                    // The empty line that ends the body.
                    Some(0) => {
                        buf.advance(2);
                        *state = BodyState::Done;
                        return Decoded::End;
                    }
                    // A trailer field: dropped (the gateway forwards none).
                    Some(end) => buf.advance(end + 2),
                    None => {
                        if buf.len() > MAX_LINE {
                            return Decoded::Error(ExchangeError::Malformed(
                                "trailer line too long",
                            ));
                        }
                        return Decoded::More(MIN_READ);
                    }
                },
            },
        }
    }
}

/// What the connection closing means for a body whose reading stands at `state`: the end of
/// a close-delimited body (`None`), or an incomplete answer.
pub fn at_close(state: &mut BodyState) -> Option<ExchangeError> {
    if *state == BodyState::UntilClose {
        *state = BodyState::Done;
        return None;
    }
    Some(ExchangeError::Incomplete)
}

/// Up to `left` buffered bytes, counted off `left`.
fn take(buf: &mut BytesMut, left: &mut u64) -> Bytes {
    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
    *left -= n as u64;
    buf.split_to(n).freeze()
}

/// How the body of an answer is framed (RFC 9112 section 6.3), and whether that framing lets
/// the connection carry another call.
fn framing<'h>(
    method: &Method,
    status: StatusCode,
    fields: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
) -> Result<(BodyState, bool), ExchangeError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((BodyState::Done, true));
    }
    let named = |want: &'static [u8]| {
        fields
            .clone()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(want))
            .map(|(_, v)| v)
    };
    if named(b"transfer-encoding").next().is_some() {
        // Chunked must be the last coding; anything else runs until the connection closes. A
        // Content-Length beside it is a framing conflict (RFC 9112 section 6.3): it is dropped
        // and the connection is not reused.
        let last = named(b"transfer-encoding")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty())
            .last();
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => (
                BodyState::Chunked(Chunk::Size),
                named(b"content-length").next().is_none(),
            ),
            _ => (BodyState::UntilClose, false),
        });
    }
    let mut length = None;
    for v in named(b"content-length") {
        for part in v.split(|&b| b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(ExchangeError::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ExchangeError::Malformed(
                    "conflicting Content-Length values",
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (BodyState::Length(n), true),
        None => (BodyState::UntilClose, false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A connection on which a call (`method`, no headers, a small body unless GET) was sent
    /// to a backend that answers it with `answer`, written in pieces of `piece` bytes, and then
    /// closes the connection if `close`, or keeps it open.
    async fn answered(method: Method, answer: &'static [u8], piece: usize, close: bool) -> Conn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.read(&mut [0u8; 4096]).await.unwrap();
            for p in answer.chunks(piece) {
                s.write_all(p).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            if !close {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
        });
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let body: &[u8] = if method == Method::GET { b"" } else { b"{}" };
        let mut head = Vec::new();
        start_request(&mut head, &method, "/?a=1");
        end_request(&mut head, &method, body.len());
        conn.send(&head, body).await.unwrap();
        conn
    }

    /// The head of `answer` to a POST, and the connection to read its body from.
    async fn exchange(answer: &'static [u8], piece: usize) -> (Conn, Head) {
        let mut conn = answered(Method::POST, answer, piece, false).await;
        let head = conn.read_head(&Method::POST).await.unwrap();
        (conn, head)
    }

    async fn body_of(conn: &mut Conn, state: &mut BodyState) -> Result<Vec<u8>, ExchangeError> {
        let mut out = Vec::new();
        while let Some(piece) = std::future::poll_fn(|cx| conn.poll_body(cx, state)).await {
            out.extend_from_slice(&piece?);
        }
        Ok(out)
    }

    /// Every framing, each answer also delivered a byte at a time.
    #[tokio::test]
    async fn bodies_of_every_framing_read_whole() {
        let cases: [(&'static [u8], &[u8], bool); 5] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
                b"hello",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
                b"hello world",
                true,
            ),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                b"ok",
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                b"ok",
                false,
            ),
            (b"HTTP/1.1 204 No Content\r\n\r\n", b"", true),
        ];
        for (answer, body, keep_alive) in cases {
            for piece in [answer.len(), 1] {
                let (mut conn, mut head) = exchange(answer, piece).await;
                let shown = String::from_utf8_lossy(answer);
                assert_eq!(head.keep_alive, keep_alive, "{shown}");
                assert_eq!(body_of(&mut conn, &mut head.body).await.unwrap(), body);
                assert!(head.body.is_end() && conn.clean(), "{shown}");
            }
        }
    }

    /// Transfer-Encoding and Content-Length together: the chunked framing wins, the length is
    /// dropped from the answer, and the connection is not trusted with another call.
    #[tokio::test]
    async fn a_length_beside_chunked_framing_is_dropped() {
        let (mut conn, mut head) = exchange(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            7,
        )
        .await;
        assert!(!head.fields.has_length());
        assert!(!head.fields.lines().starts_with(b"content-length"));
        assert!(!head.keep_alive);
        assert_eq!(body_of(&mut conn, &mut head.body).await.unwrap(), b"ok");
    }

    /// Hop-by-hop fields (those `Connection` names too) stay behind; values keep their inner
    /// spaces and lose the outer ones; an empty value is kept.
    #[tokio::test]
    async fn hop_by_hop_fields_stay_behind_and_values_are_trimmed() {
        let (_, head) = exchange(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nX-Kept:   a  b \t\r\nX-Empty:\r\nDate: Wed, 02 Dec 2026 14:00:00 GMT\r\nContent-Length: 0\r\n\r\n",
            5,
        )
        .await;
        assert_eq!(
            String::from_utf8_lossy(head.fields.lines()),
            "x-kept: a  b\r\nx-empty: \r\ndate: Wed, 02 Dec 2026 14:00:00 GMT\r\ncontent-length: 0\r\n"
        );
        assert!(head.fields.has_date());
        let mut seen = Vec::new();
        head.fields.each(|n, v| seen.push((n.to_vec(), v.to_vec())));
        assert_eq!(seen[0], (b"x-kept".to_vec(), b"a  b".to_vec()));
        assert_eq!(seen[1], (b"x-empty".to_vec(), b"".to_vec()));
        let map = head.fields.into_header_map(0);
        assert_eq!(map["x-empty"], "");
        assert!(!map.contains_key("x-hop") && !map.contains_key("keep-alive"));
    }

    #[tokio::test]
    async fn headers_are_kept_and_the_head_is_parsed_once_complete() {
        let (_, head) = exchange(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Multi: a\r\nX-Multi: b\r\nContent-Length: 0\r\n\r\n",
            3,
        )
        .await;
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.body, BodyState::Length(0));
        // As the client gets them: names lower-cased, in the backend's order.
        assert_eq!(
            head.fields.lines(),
            b"content-type: application/json\r\nx-multi: a\r\nx-multi: b\r\ncontent-length: 0\r\n"
        );
        assert!(head.fields.has_length() && !head.fields.has_date());
        let map = head.fields.into_header_map(0);
        assert_eq!(map["content-type"], "application/json");
        assert_eq!(map.get_all("x-multi").iter().count(), 2);
        assert_eq!(map.len(), 4);
    }

    /// An answer without a length runs to the close and never goes back to a pool.
    #[tokio::test]
    async fn a_close_delimited_body_ends_with_the_connection() {
        let answer = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        let mut conn = answered(Method::GET, answer, answer.len(), true).await;
        let mut head = conn.read_head(&Method::GET).await.unwrap();
        assert!(!head.keep_alive);
        assert_eq!(
            body_of(&mut conn, &mut head.body).await.unwrap(),
            b"until the end"
        );
    }

    #[tokio::test]
    async fn truncated_and_malformed_answers_are_errors() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX",
            // An empty chunk-size line is not a last chunk.
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n\r\n",
        ] {
            let mut conn = answered(Method::POST, answer, answer.len(), true).await;
            let mut head = conn.read_head(&Method::POST).await.unwrap();
            let body = body_of(&mut conn, &mut head.body).await;
            assert!(body.is_err(), "{}", String::from_utf8_lossy(answer));
        }
        for (answer, expected) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx"[..],
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid Content-Length",
            ),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "upgrade"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1 response head"),
            (b"HTTP/1.1 200 OK\r\nContent-Le", "closed the connection"),
        ] {
            let mut conn = answered(Method::POST, answer, answer.len(), true).await;
            match conn.read_head(&Method::POST).await {
                Err(e) => assert!(e.to_string().contains(expected), "{e}"),
                Ok(_) => panic!("accepted {}", String::from_utf8_lossy(answer)),
            }
        }
    }

    /// The call as the backend receives it: request line, headers as given, the body's
    /// length, the body.
    #[tokio::test]
    async fn a_call_is_written_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            let mut buf = [0u8; 65536];
            while !all.ends_with(b"}") {
                let n = s.read(&mut buf).await.unwrap();
                all.extend_from_slice(&buf[..n]);
            }
            all
        });
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let body = format!("{{\"ImageBase64\":\"{}\"}}", "A".repeat(200_000));
        let mut head = Vec::new();
        start_request(&mut head, &Method::POST, "/");
        header(&mut head, b"host", b"backend:80");
        header(&mut head, b"x-tc-action", b"GeneralBasicOCR");
        end_request(&mut head, &Method::POST, body.len());
        conn.send(&head, body.as_bytes()).await.unwrap();
        let expected = format!(
            "POST / HTTP/1.1\r\nhost: backend:80\r\nx-tc-action: GeneralBasicOCR\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(String::from_utf8(got.await.unwrap()).unwrap(), expected);
    }

    /// A pooled connection is usable only while nothing is waiting on it: the backend's FIN
    /// (its keep-alive timeout) makes it unusable.
    #[tokio::test]
    async fn an_idle_connection_the_backend_closed_is_seen_as_closed() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (mut open, mut head) = exchange(answer, answer.len()).await;
        body_of(&mut open, &mut head.body).await.unwrap();
        let mut closed = answered(Method::POST, answer, answer.len(), true).await;
        let mut head = closed.read_head(&Method::POST).await.unwrap();
        body_of(&mut closed, &mut head.body).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(open.idle_and_open() && open.peek_open());
        assert!(!closed.idle_and_open() && !closed.peek_open());
    }
}
