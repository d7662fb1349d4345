//! Metering: usage records of billable calls, handed to a sink.
//!
//! The proxy creates records only for admitted calls whose outcome is billable, and hands them
//! over *before* it lets the last byte of the response reach the client (see
//! `proxy::body::MeteredBody`). A sink answers with a [`Ticket`] that the body polls: a sink
//! that writes synchronously returns [`Ticket::Done`]; one that batches writes in another
//! thread returns [`Ticket::Pending`] and completes it once the record is written.

pub mod file;
pub mod reader;
pub(crate) mod segment;
pub mod ship;
pub mod spool;
pub mod store;

pub use tollgate_usage::UsageRecord;

/// Why a sink could not take a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("usage sink failed: {0}")]
pub struct SinkError(pub String);

/// The answer of a sink to a submission.
#[derive(Debug)]
pub enum Ticket {
    Done(Result<(), SinkError>),
    Pending(tokio::sync::oneshot::Receiver<Result<(), SinkError>>),
}

/// Where usage records go. `submit` must not block on I/O shared with other requests.
pub trait UsageSink: Send + Sync + 'static {
    /// Hands over the records of one call (one or two, all or nothing).
    fn submit(&self, records: &[UsageRecord]) -> Ticket;

    /// False when the sink cannot currently take records (readiness reports it).
    fn healthy(&self) -> bool {
        true
    }

    /// False when new calls must be refused because their usage could not be recorded (the
    /// spool's disk bound): the gateway fails closed rather than serve unmetered calls.
    fn accepting(&self) -> bool {
        true
    }
}

/// A sink that drops everything: `metering.sink = "off"`, for measuring the gateway alone.
#[derive(Debug, Default)]
pub struct NoSink;

impl UsageSink for NoSink {
    fn submit(&self, _records: &[UsageRecord]) -> Ticket {
        Ticket::Done(Ok(()))
    }
}
