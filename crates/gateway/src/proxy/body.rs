//! Response bodies: a gateway-made answer, or an upstream answer streamed through the
//! billability scanner.
//!
//! [`MeteredBody`] passes every frame through as it arrives (nothing is buffered, whatever the
//! size of the base64 image in it) and feeds it to the scanner. When the upstream body ends, it
//! decides the outcome and hands billable usage to the sink *before* it releases the frame that
//! completes the response, and waits for the sink's ticket: so a client never holds a complete
//! billable answer whose usage was not written. It also carries the concurrency permit and the
//! in-flight gauges, which hyper drops with the body when the response has ended or the client
//! has gone away.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use prometheus::IntGauge;

use crate::admission::Permit;
use crate::billing::{self, Outcome, Scanned, Scanner};
use crate::library::CallLibrary;
use crate::metering::{SinkError, Ticket, UsageRecord, UsageSink};
use crate::metrics::GroupMetrics;
use crate::proxy::forward::UpstreamBody;
use crate::proxy::http1::ExchangeError;
use crate::proxy::{GroupRef, Snapshot};
use tollgate_core::catalog::{InterfaceId, ServiceId, UnitRule};

/// Decrements a gauge when dropped.
#[derive(Debug)]
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub fn inc(gauge: &IntGauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A concurrency permit together with its group's in-flight gauge.
#[derive(Debug)]
pub struct HeldPermit {
    pub permit: Permit,
    pub gauge: Option<GaugeGuard>,
}

/// Everything needed to meter a call once its answer is complete.
pub struct MeterJob {
    pub snapshot: Arc<Snapshot>,
    pub sink: Arc<dyn UsageSink>,
    pub service: ServiceId,
    /// `None` for an unlisted action.
    pub interface: Option<InterfaceId>,
    pub action: Arc<str>,
    /// The group's metric handles, in `snapshot` (no per-call clone of the handles).
    pub group: GroupRef,
    pub owner_uin: u64,
    pub uin: u64,
    pub request_id: String,
    pub time_unix_ms: i64,
    pub http_status: u16,
    /// Image search: the item the call's library names, or the library it creates or deletes.
    pub library: CallLibrary,
}

impl MeterJob {
    fn group_metrics(&self) -> &GroupMetrics {
        self.snapshot.group_metrics(self.group)
    }
}

/// Records handed to a sink that writes them later, and the ticket it will complete.
struct Pending {
    rx: tokio::sync::oneshot::Receiver<Result<(), SinkError>>,
    records: Vec<UsageRecord>,
    snapshot: Arc<Snapshot>,
}

enum Phase {
    Streaming,
    /// The upstream body has ended and usage was handed over; `held` is the final frame.
    Settling {
        held: Option<Frame<Bytes>>,
        ticket: Option<Pending>,
    },
    Done,
}

/// An upstream body being streamed to the client and scanned for billing.
pub struct MeteredBody {
    /// The answer, read from the upstream connection it holds.
    inner: UpstreamBody,
    scanner: Scanner,
    job: Option<MeterJob>,
    phase: Phase,
    _permit: Option<HeldPermit>,
    _in_flight: GaugeGuard,
}

impl MeteredBody {
    pub fn new(
        inner: UpstreamBody,
        job: MeterJob,
        permit: Option<HeldPermit>,
        in_flight: GaugeGuard,
    ) -> Self {
        MeteredBody {
            inner,
            scanner: Scanner::new(),
            job: Some(job),
            phase: Phase::Streaming,
            _permit: permit,
            _in_flight: in_flight,
        }
    }

    /// Decides the outcome and hands billable usage to the sink.
    fn settle(&mut self) -> Option<Pending> {
        let mut job = self.job.take()?;
        let scanned = std::mem::take(&mut self.scanner).finish();
        let catalog = &job.snapshot.loaded.catalog;
        let service = catalog.service(job.service);
        let mut rule = job.interface.map(|id| catalog.interface(id).units);
        let mut unresolved = None;
        match &job.library {
            CallLibrary::None => {}
            CallLibrary::Billed {
                item,
                unresolved: library,
            } => {
                rule = Some(UnitRule::PerCall(*item));
                unresolved = library.clone();
            }
            CallLibrary::Create {
                libraries,
                owner_uin,
                group_id,
                group_type,
            } => {
                if job.http_status == 200 && matches!(scanned, Scanned::Success { .. }) {
                    libraries.learn(*owner_uin, group_id, *group_type, "create");
                }
            }
            CallLibrary::Delete {
                libraries,
                owner_uin,
                group_id,
            } => {
                let gone = match &scanned {
                    Scanned::Success { .. } => true,
                    Scanned::Error { code } => {
                        code.as_str() == "InvalidParameterValue.ImageGroupIdNotExist"
                    }
                    Scanned::Malformed => false,
                };
                if job.http_status == 200 && gone {
                    libraries.forget(*owner_uin, group_id);
                }
            }
        }
        let group = job.group_metrics();
        match billing::decide(catalog, service, rule, job.http_status, &scanned) {
            Outcome::Billable(units) => {
                group.billable.inc();
                if units.is_empty() {
                    return None;
                }
                // The call's id goes into its last record as is, cloned only for the others
                // (a call is almost always one record).
                let last = units.iter().count() - 1;
                let mut request_id = std::mem::take(&mut job.request_id);
                let records: Vec<UsageRecord> = units
                    .iter()
                    .enumerate()
                    .map(|(i, (item, n))| {
                        job.snapshot.metrics.billable_units[item.0 as usize].inc_by(u64::from(n));
                        UsageRecord {
                            request_id: if i == last {
                                std::mem::take(&mut request_id)
                            } else {
                                request_id.clone()
                            },
                            owner_uin: job.owner_uin,
                            uin: job.uin,
                            service: Arc::clone(&service.name),
                            action: Arc::clone(&job.action),
                            billing_item: Arc::clone(&catalog.item(item).key),
                            units: n,
                            time_unix_ms: job.time_unix_ms,
                            unresolved_library: unresolved.clone(),
                        }
                    })
                    .collect();
                job.snapshot.metering_records(records.len());
                match job.sink.submit(&records) {
                    Ticket::Done(Ok(())) => None,
                    Ticket::Done(Err(e)) => {
                        report_sink_failure(&job.snapshot, &records, &e);
                        None
                    }
                    Ticket::Pending(rx) => Some(Pending {
                        rx,
                        records,
                        snapshot: Arc::clone(&job.snapshot),
                    }),
                }
            }
            Outcome::Unbillable => {
                group.unbillable.inc();
                None
            }
            Outcome::UpstreamError => {
                group.upstream_error.inc();
                None
            }
        }
    }
}

fn report_sink_failure(snapshot: &Snapshot, records: &[UsageRecord], e: &SinkError) {
    snapshot.metering_failures(records.len());
    for r in records {
        tracing::error!(
            error = %e,
            request_id = %r.request_id,
            owner_uin = r.owner_uin,
            billing_item = %r.billing_item,
            units = r.units,
            "usage record not written"
        );
    }
}

impl Body for MeteredBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = &mut *self;
        loop {
            match &mut this.phase {
                Phase::Streaming => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            this.scanner.feed(data);
                        }
                        if !this.inner.is_end_stream() {
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        // The last frame: meter before the client can see a complete answer.
                        let ticket = this.settle();
                        this.phase = Phase::Settling {
                            held: Some(frame),
                            ticket,
                        };
                    }
                    Some(Err(e)) => {
                        if let Some(job) = this.job.take() {
                            job.group_metrics().upstream_error.inc();
                            if let ExchangeError::Stalled(after) = e {
                                job.snapshot.metrics.upstream_stalls[usize::from(job.service.0)]
                                    .inc();
                                tracing::debug!(request_id = %job.request_id, ?after, "upstream answer stalled; call dropped, unbilled");
                            }
                        }
                        this.phase = Phase::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    None => {
                        let ticket = this.settle();
                        this.phase = Phase::Settling { held: None, ticket };
                    }
                },
                Phase::Settling { held, ticket } => {
                    if let Some(pending) = ticket {
                        let result = ready!(Pin::new(&mut pending.rx).poll(cx));
                        if let Err(e) | Ok(Err(e)) =
                            result.map_err(|_| SinkError("the sink went away".into()))
                        {
                            // Counted like a write that failed at once.
                            report_sink_failure(&pending.snapshot, &pending.records, &e);
                        }
                    }
                    let held = held.take();
                    this.phase = Phase::Done;
                    return Poll::Ready(held.map(Ok));
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.phase {
            Phase::Streaming => self.inner.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for MeteredBody {
    fn drop(&mut self) {
        // The client went away (or hyper gave up) before the upstream answer was complete: the
        // outcome is unknown, so nothing is billed; it is counted.
        if let Some(job) = self.job.take() {
            job.group_metrics().abandoned.inc();
        }
    }
}

/// The body of every response the gateway sends.
pub enum ProxyBody {
    Full(Full<Bytes>),
    Metered(Box<MeteredBody>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        match self.get_mut() {
            ProxyBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ProxyBody::Metered(b) => Pin::new(&mut **b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(b) => b.is_end_stream(),
            ProxyBody::Metered(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(b) => b.size_hint(),
            ProxyBody::Metered(b) => b.size_hint(),
        }
    }
}
