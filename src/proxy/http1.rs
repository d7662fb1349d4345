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
//! channel traffic; reading the answer in the call's own task removed about 1.5 µs of CPU per
//! forwarded call, a tenth of the gateway's (loadtest/RESULTS.md). The server side stays
//! hyper's. What this module does not do, because the gateway never needs it: pipelining,
//! `Expect: 100-continue` (the body is always sent whole), upgrades (a `101` is an error),
//! trailers (read and dropped).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
}

/// An answer's head, and how its body is framed.
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BodyState,
    /// The connection may carry another call once the body has been read to its end.
    pub keep_alive: bool,
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
    /// The request head, built here and kept for the next call.
    head: Vec<u8>,
}

impl Conn {
    pub fn new(io: TcpStream) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::with_capacity(1024),
        }
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

    /// Writes a call: its head (`headers` as they are, with the body's `Content-Length`) and
    /// its body, in one vectored write when the socket takes it whole.
    pub async fn send(
        &mut self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), ExchangeError> {
        let head = &mut self.head;
        head.clear();
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            if name == header::CONTENT_LENGTH {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || !matches!(*method, Method::GET | Method::HEAD) {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
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
            if let Some(head) = self.parse_head(method)? {
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

    /// A complete head at the front of the buffer, consumed; `None` if more bytes are needed.
    fn parse_head(&mut self, method: &Method) -> Result<Option<Head>, ExchangeError> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut slots);
            let len = match parsed.parse(&self.buf) {
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
                self.buf.advance(len);
                continue;
            }
            // Only HTTP/1.1 keeps a connection open by default; HTTP/1.0 is not reused.
            let http_11 = parsed.version == Some(1);
            // Header values are slices of the head's bytes, which are split off and shared
            // by the values rather than copied.
            let base = self.buf.as_ptr() as usize;
            let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
            let n = parsed.headers.len();
            for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
                let name = h.name.as_ptr() as usize - base;
                let value = h.value.as_ptr() as usize - base;
                *span = (name, name + h.name.len(), value, value + h.value.len());
            }
            let bytes = self.buf.split_to(len).freeze();
            // Room for the headers the gateway adds to an answer (its request id).
            let mut headers = HeaderMap::with_capacity(n + 2);
            for &(name_start, name_end, value_start, value_end) in &spans[..n] {
                let name = HeaderName::from_bytes(&bytes[name_start..name_end])
                    .map_err(|_| ExchangeError::Malformed("invalid header name"))?;
                let value = HeaderValue::from_maybe_shared(bytes.slice(value_start..value_end))
                    .map_err(|_| ExchangeError::Malformed("invalid header value"))?;
                headers.append(name, value);
            }
            let (body, mut keep_alive) = framing(method, status, &headers)?;
            if headers.contains_key(header::TRANSFER_ENCODING) {
                // The body is decoded here; a Content-Length beside Transfer-Encoding must not
                // frame the answer the client gets.
                headers.remove(header::CONTENT_LENGTH);
            }
            keep_alive &=
                http_11 && !connection_tokens(&headers).any(|t| t.eq_ignore_ascii_case("close"));
            return Ok(Some(Head {
                status,
                headers,
                body,
                keep_alive,
            }));
        }
    }

    /// The next piece of a body whose reading stands at `state`; `None` at its end.
    pub fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        state: &mut BodyState,
    ) -> Poll<Option<Result<Bytes, ExchangeError>>> {
        loop {
            match state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(0) => {
                    *state = BodyState::Done;
                    return Poll::Ready(None);
                }
                BodyState::Length(left) => {
                    if !self.buf.is_empty() {
                        return Poll::Ready(Some(Ok(self.take(left))));
                    }
                    let want = usize::try_from(*left).unwrap_or(MAX_READ);
                    if ready!(self.poll_fill(cx, want))? == 0 {
                        return Poll::Ready(Some(Err(ExchangeError::Incomplete)));
                    }
                }
                BodyState::UntilClose => {
                    if !self.buf.is_empty() {
                        return Poll::Ready(Some(Ok(self.buf.split().freeze())));
                    }
                    if ready!(self.poll_fill(cx, MAX_READ))? == 0 {
                        *state = BodyState::Done;
                        return Poll::Ready(None);
                    }
                }
                BodyState::Chunked(chunk) => match chunk {
                    // A chunk-size line starts with a hex digit (httparse alone would take an
                    // empty line for a last chunk and end the body early).
                    Chunk::Size if self.buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) => {
                        return Poll::Ready(Some(Err(ExchangeError::Malformed(
                            "invalid chunk size",
                        ))));
                    }
                    Chunk::Size => match httparse::parse_chunk_size(&self.buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            self.buf.advance(used);
                            *chunk = if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Ok(httparse::Status::Partial) => {
                            if self.buf.len() > MAX_LINE {
                                return Poll::Ready(Some(Err(ExchangeError::Malformed(
                                    "chunk size line too long",
                                ))));
                            }
                            if ready!(self.poll_fill(cx, MIN_READ))? == 0 {
                                return Poll::Ready(Some(Err(ExchangeError::Incomplete)));
                            }
                        }
                        Err(_) => {
                            return Poll::Ready(Some(Err(ExchangeError::Malformed(
                                "invalid chunk size",
                            ))));
                        }
                    },
                    Chunk::Data(left) => {
                        if !self.buf.is_empty() {
                            let data = self.take(left);
                            if *left == 0 {
                                *chunk = Chunk::DataEnd;
                            }
                            return Poll::Ready(Some(Ok(data)));
                        }
                        let want = usize::try_from(*left).unwrap_or(MAX_READ);
                        if ready!(self.poll_fill(cx, want))? == 0 {
                            return Poll::Ready(Some(Err(ExchangeError::Incomplete)));
                        }
                    }
                    Chunk::DataEnd => {
                        if self.buf.len() >= 2 {
                            if &self.buf[..2] != b"\r\n" {
                                return Poll::Ready(Some(Err(ExchangeError::Malformed(
                                    "no CRLF after chunk data",
                                ))));
                            }
                            self.buf.advance(2);
                            *chunk = Chunk::Size;
                        } else if ready!(self.poll_fill(cx, MIN_READ))? == 0 {
                            return Poll::Ready(Some(Err(ExchangeError::Incomplete)));
                        }
                    }
                    Chunk::Trailers => match memchr::memmem::find(&self.buf, b"\r\n") {
                        // The empty line that ends the body.
                        Some(0) => {
                            self.buf.advance(2);
                            *state = BodyState::Done;
                            return Poll::Ready(None);
                        }
                        // A trailer field: dropped (the gateway forwards none).
                        Some(end) => self.buf.advance(end + 2),
                        None => {
                            if self.buf.len() > MAX_LINE {
                                return Poll::Ready(Some(Err(ExchangeError::Malformed(
                                    "trailer line too long",
                                ))));
                            }
                            if ready!(self.poll_fill(cx, MIN_READ))? == 0 {
                                return Poll::Ready(Some(Err(ExchangeError::Incomplete)));
                            }
                        }
                    },
                },
            }
        }
    }

    /// True when nothing was read beyond the answer (a backend that sent more than it framed
    /// cannot be trusted with another call).
    pub fn clean(&self) -> bool {
        self.buf.is_empty()
    }

    /// Up to `left` buffered bytes, counted off `left`.
    fn take(&mut self, left: &mut u64) -> Bytes {
        let n = self
            .buf
            .len()
            .min(usize::try_from(*left).unwrap_or(usize::MAX));
        *left -= n as u64;
        self.buf.split_to(n).freeze()
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

/// How the body of an answer is framed (RFC 9112 section 6.3), and whether that framing lets
/// the connection carry another call.
fn framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<(BodyState, bool), ExchangeError> {
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((BodyState::Done, true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // Chunked must be the last coding; anything else runs until the connection closes. A
        // Content-Length beside it is a framing conflict (RFC 9112 section 6.3): the caller
        // removes it and does not reuse the connection.
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|c| !c.is_empty());
        return Ok(match last {
            Some(c) if c.eq_ignore_ascii_case("chunked") => (
                BodyState::Chunked(Chunk::Size),
                !headers.contains_key(header::CONTENT_LENGTH),
            ),
            _ => (BodyState::UntilClose, false),
        });
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
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

/// The tokens the `Connection` headers of `headers` list, trimmed.
pub fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
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
        conn.send(&method, &"/?a=1".parse().unwrap(), &HeaderMap::new(), body)
            .await
            .unwrap();
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
        assert!(!head.headers.contains_key("content-length"));
        assert!(!head.keep_alive);
        assert_eq!(body_of(&mut conn, &mut head.body).await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn headers_are_kept_and_the_head_is_parsed_once_complete() {
        let (_, head) = exchange(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nX-Multi: a\r\nX-Multi: b\r\nContent-Length: 0\r\n\r\n",
            3,
        )
        .await;
        assert_eq!(head.status, StatusCode::CREATED);
        assert_eq!(head.headers["content-type"], "application/json");
        assert_eq!(head.headers.get_all("x-multi").iter().count(), 2);
        assert_eq!(head.body, BodyState::Length(0));
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
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("backend:80"));
        headers.insert("content-length", HeaderValue::from_static("999"));
        headers.insert("x-tc-action", HeaderValue::from_static("GeneralBasicOCR"));
        let body = format!("{{\"ImageBase64\":\"{}\"}}", "A".repeat(200_000));
        conn.send(
            &Method::POST,
            &"/".parse().unwrap(),
            &headers,
            body.as_bytes(),
        )
        .await
        .unwrap();
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
