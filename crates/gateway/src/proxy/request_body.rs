//! Reading a call's body: bounded in size, in time and, across the whole gateway, in memory.
//!
//! The signature covers the body, so it is read whole before anything is forwarded; but only
//! after the head has passed every check that needs no body (see `Gateway::check_head`), so a
//! stranger's body costs nothing but the connection. Then:
//!
//! - **Size**: at most `proxy.max_request_bytes`.
//! - **Time**: no byte for `proxy.request_body_idle_timeout_ms`, or not whole within
//!   `proxy.request_body_timeout_ms` of the first wait, and the call is refused. The timer is
//!   armed only when a read has to wait: an SDK's body usually arrives with its head.
//! - **Memory**: [`Budget`] holds the request bytes the whole gateway buffers at once
//!   (`proxy.max_buffered_request_bytes`); a call that would take it over is refused with
//!   `ServiceUnavailable` and counted. A declared length is reserved whole before the first
//!   byte is read; a chunked body is copied into blocks of [`BLOCK`] bytes as it arrives and
//!   reserved block by block, never grown by doubling, and never holding on to the server's
//!   read buffers (a body of one-byte chunks costs its bytes, not a buffer per chunk).
//!
//! A call refused before its body was read has that body read and discarded ([`discard`],
//! same deadlines, bounded in bytes): answering while the client is still sending would close
//! the connection with unread data, and the kernel's reset can reach the client before the
//! answer, which an SDK reports as a network error instead of the vendor's code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame};
use tokio::time::{Instant, Sleep};

/// Chunked bodies are copied into blocks of this size.
pub const BLOCK: usize = 64 * 1024;

/// Request bytes buffered by the whole gateway, against a bound.
#[derive(Debug)]
pub struct Budget {
    held: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            held: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Reserves `n` more bytes for `held`, or refuses if that would pass the bound.
    fn reserve(self: &Arc<Self>, held: &mut Held, n: usize) -> Result<(), BodyError> {
        let mut now = self.held.load(Ordering::Relaxed);
        loop {
            let next = now.saturating_add(n);
            if next > self.limit {
                return Err(BodyError::BufferFull);
            }
            match self
                .held
                .compare_exchange_weak(now, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(seen) => now = seen,
            }
        }
        held.bytes += n;
        Ok(())
    }
}

/// Bytes reserved in the [`Budget`] for one call's body, given back when dropped (after the
/// call was forwarded, or refused).
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Held {
    pub fn new(budget: &Arc<Budget>) -> Held {
        Held {
            budget: Arc::clone(budget),
            bytes: 0,
        }
    }

    /// Reserves `n` bytes already read (a body the own codec read with its head).
    pub fn reserve(&mut self, n: usize) -> Result<(), BodyError> {
        let budget = Arc::clone(&self.budget);
        budget.reserve(self, n)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than `limit`.
    TooLarge { limit: usize },
    /// Nothing arrived for the idle timeout (`idle`), or not whole within the total.
    Timeout { idle: bool, after: Duration },
    /// The gateway-wide buffer bound would be passed.
    BufferFull,
    /// The client sent broken framing or went away.
    Failed(String),
}

/// The deadlines of a body read.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub idle: Duration,
    pub total: Duration,
}

/// The timer of one body read, armed on the first wait.
struct Timer {
    deadlines: Deadlines,
    /// When the first wait began: the total deadline counts from it.
    started: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Set by progress: the idle deadline moves on the next wait.
    progressed: bool,
    /// The current deadline is the total one (not the idle one).
    total_due: bool,
}

impl Timer {
    fn new(deadlines: Deadlines) -> Timer {
        Timer {
            deadlines,
            started: None,
            sleep: None,
            progressed: false,
            total_due: false,
        }
    }

    /// The next frame of `body`, or the deadline's error.
    async fn next<B>(&mut self, body: &mut B) -> Option<Result<Frame<Bytes>, BodyError>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        std::future::poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.progressed = true;
                Poll::Ready(frame.map(|f| f.map_err(|e| BodyError::Failed(e.to_string()))))
            }
            Poll::Pending => {
                if self.sleep.is_none() || self.progressed {
                    let now = Instant::now();
                    let started = *self.started.get_or_insert(now);
                    let idle_due = now + self.deadlines.idle;
                    let total_due = started + self.deadlines.total;
                    self.total_due = total_due <= idle_due;
                    let due = idle_due.min(total_due);
                    match &mut self.sleep {
                        Some(sleep) => sleep.as_mut().reset(due),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(due))),
                    }
                    self.progressed = false;
                }
                let sleep = self.sleep.as_mut().expect("armed above");
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Timeout {
                        idle: !self.total_due,
                        after: if self.total_due {
                            self.deadlines.total
                        } else {
                            self.deadlines.idle
                        },
                    }))),
                    Poll::Pending => Poll::Pending,
                }
            }
        })
        .await
    }
}

/// Reads a body whose `Content-Length` is `declared` (already checked against `limit`), or
/// which is chunked (`None`), into one buffer, reserving its bytes in `held`.
pub async fn read<B>(
    body: &mut B,
    declared: Option<u64>,
    limit: usize,
    deadlines: Deadlines,
    held: &mut Held,
) -> Result<Bytes, BodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let budget = Arc::clone(&held.budget);
    let mut timer = Timer::new(deadlines);
    if let Some(n) = declared {
        // The length is known: one buffer of exactly that size (its pages are touched, and
        // so resident, only as the bytes arrive).
        let n = usize::try_from(n).map_err(|_| BodyError::TooLarge { limit })?;
        budget.reserve(held, n)?;
        let mut buf = BytesMut::with_capacity(n);
        while let Some(frame) = timer.next(body).await {
            if let Ok(data) = frame?.into_data() {
                if buf.len() + data.len() > n {
                    return Err(BodyError::Failed("more bytes than Content-Length".into()));
                }
                buf.extend_from_slice(&data);
            }
        }
        return Ok(buf.freeze());
    }
    let mut blocks: Vec<Bytes> = Vec::new();
    let mut block = BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = timer.next(body).await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(BodyError::TooLarge { limit });
        }
        let mut rest = &data[..];
        while !rest.is_empty() {
            if block.capacity() == block.len() {
                if !block.is_empty() {
                    blocks.push(std::mem::take(&mut block).freeze());
                }
                budget.reserve(held, BLOCK)?;
                block = BytesMut::with_capacity(BLOCK);
            }
            let n = rest.len().min(block.capacity() - block.len());
            block.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
    }
    if blocks.is_empty() {
        return Ok(block.freeze());
    }
    blocks.push(block.freeze());
    // Joined once, at the end: the signature and the forwarded call take one buffer.
    budget.reserve(held, total)?;
    let mut whole = BytesMut::with_capacity(total);
    for b in &blocks {
        whole.extend_from_slice(b);
    }
    Ok(whole.freeze())
}

/// Reads and drops up to `bound` bytes of a body, within the deadlines. True if the body was
/// read to its end (the connection can then carry another call).
pub async fn discard<B>(body: &mut B, bound: u64, deadlines: Deadlines) -> bool
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    if body.is_end_stream() {
        return true;
    }
    let mut timer = Timer::new(deadlines);
    let mut seen: u64 = 0;
    while let Some(frame) = timer.next(body).await {
        let Ok(frame) = frame else {
            return false;
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > bound {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    type Chunks = StreamBody<
        futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, std::convert::Infallible>>,
    >;

    fn chunked(pieces: Vec<&'static [u8]>) -> Chunks {
        use futures_util::StreamExt;
        StreamBody::new(
            futures_util::stream::iter(
                pieces
                    .into_iter()
                    .map(|p| Ok(Frame::data(Bytes::from_static(p)))),
            )
            .boxed(),
        )
    }

    const LONG: Deadlines = Deadlines {
        idle: Duration::from_secs(10),
        total: Duration::from_secs(10),
    };

    #[tokio::test]
    async fn chunked_bodies_are_joined_and_reserved_by_block() {
        let budget = Budget::new(10 << 20);
        let mut held = Held::new(&budget);
        let pieces: Vec<&'static [u8]> = std::iter::repeat_n(&b"x"[..], 100_000).collect();
        let got = read(&mut chunked(pieces), None, 1 << 20, LONG, &mut held)
            .await
            .unwrap();
        assert_eq!(got.len(), 100_000);
        // Two blocks and the joined copy, not a buffer per chunk.
        assert_eq!(budget.held(), 2 * BLOCK + 100_000);
        drop(held);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn limits_refuse_and_give_back() {
        let budget = Budget::new(BLOCK);
        let mut held = Held::new(&budget);
        let big: &'static [u8] = &[b'y'; 2000];
        let e = read(&mut chunked(vec![big; 10]), None, 1000, LONG, &mut held).await;
        assert_eq!(e.unwrap_err(), BodyError::TooLarge { limit: 1000 });
        drop(held);
        let mut held = Held::new(&budget);
        let mut body = chunked(vec![big]);
        let e = read(&mut body, Some(BLOCK as u64 + 1), 1 << 20, LONG, &mut held).await;
        assert_eq!(e.unwrap_err(), BodyError::BufferFull);
        drop(held);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_coming_times_out() {
        use futures_util::StreamExt;
        // One byte, then nothing more, ever.
        let mut body: Chunks = StreamBody::new(
            futures_util::stream::iter([Ok(Frame::data(Bytes::from_static(b"{")))])
                .chain(futures_util::stream::pending())
                .boxed(),
        );
        let deadlines = Deadlines {
            idle: Duration::from_secs(2),
            total: Duration::from_secs(5),
        };
        let budget = Budget::new(1 << 20);
        let mut held = Held::new(&budget);
        let e = read(&mut body, Some(100), 1 << 20, deadlines, &mut held).await;
        assert_eq!(
            e.unwrap_err(),
            BodyError::Timeout {
                idle: true,
                after: Duration::from_secs(2)
            }
        );
    }
}
