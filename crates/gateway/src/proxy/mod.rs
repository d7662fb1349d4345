//! The request path: classify → authenticate → gate → admit → forward → meter.
//!
//! [`Gateway::handle`] runs the phases in order, each a function with one job returning what
//! the next needs; any phase may end the call with a [`Refusal`], which `respond` turns into
//! the vendor's error. Everything the head alone settles (method, target, single-valued
//! fields, service, action, timestamp, SecretId, declared length) is checked before a byte of
//! the body is read, so a stranger's call costs nothing but its connection. Admission is
//! synchronous and never awaits I/O; a refused call never reaches metering (only
//! [`body::MeteredBody`] creates usage records, and it exists only for forwarded calls).

pub mod body;
pub mod client;
pub(crate) mod coarse;
pub mod forward;
pub mod head;
pub mod hop;
pub mod http1;
pub mod proxy_protocol;
pub mod request_body;
pub mod respond;
pub mod server;
mod server_h1;
pub mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response};
use hyper::body::Incoming;

use crate::admission::{Admission, Decision, QuotaKey};
use crate::auth::replay::{ReplayGuard, Seen};
use crate::auth::{self, AuthError, Prechecked, Signed, parse_authorization};
use crate::library::{CallLibrary, Change as LibraryChange, Classified, Libraries};
use crate::metering::UsageSink;
use crate::metrics::{CatalogMetrics, GroupMetrics, Metrics};
use crate::settings::Settings;
use body::{GaugeGuard, HeldPermit, MeterJob, MeteredBody, ProxyBody};
use forward::{Forwarder, Identity};
use head::{Field, RawHead, ReqHead, visible_ascii};
use request_body::{BodyError, Budget, Deadlines, Held};
pub use respond::Refusal;
use tollgate_core::catalog::{BillingItemId, Route, RouteError, Service};
use tollgate_core::clock::Clock;
use tollgate_core::config::Loaded;
use tollgate_core::entitlement::{Account, Limit};

/// The header names the request path writes, parsed once (a `&str` name is parsed on every
/// use). The fields it reads are `head::Field`s.
pub(crate) mod names {
    use http::header::HeaderName;

    use super::forward::HEADER_REQUEST_ID;

    pub(crate) static REQUEST_ID: HeaderName = HeaderName::from_static(HEADER_REQUEST_ID);
    pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
}
use names::REQUEST_ID;

/// The fields of an API 3.0 call that must appear once: the gateway authenticates and routes
/// on them, so a second value (or a `Connection` naming one, which would have it dropped on
/// the way to the backend) could make the backend see another call than the one checked.
const SINGLE_VALUED: [&str; 9] = [
    "authorization",
    "x-tc-action",
    "x-tc-version",
    "x-tc-timestamp",
    "x-tc-region",
    "x-tc-content-sha256",
    "x-tc-token",
    "content-type",
    "host",
];

/// The most body bytes read (and dropped) for a call refused before its credential was
/// found: an SDK call with an image URL fits; a declared upload larger than this gets its
/// answer and a closed connection.
pub const STRANGER_DISCARD: u64 = 64 * 1024;

/// The config in force plus what is resolved for it once (metric handles, each service's
/// upstream); swapped whole on reload.
pub struct Snapshot {
    pub loaded: Arc<Loaded>,
    pub metrics: CatalogMetrics,
    pub generation: u64,
    /// Each service's upstream and its pool slot, by service id.
    upstreams: Vec<Option<forward::Target>>,
    usage_records: prometheus::IntCounter,
    usage_record_failures: prometheus::IntCounter,
}

impl Snapshot {
    /// The upstream `service`'s calls go to.
    pub fn upstream_of(&self, service: &Service) -> Option<&forward::Target> {
        self.upstreams[usize::from(service.id.0)].as_ref()
    }
}

/// Which group's metric handles a call uses: a catalog group, or a service's unlisted actions.
#[derive(Debug, Clone, Copy)]
pub enum GroupRef {
    Listed(usize),
    Unlisted(usize),
}

impl Snapshot {
    pub fn group_metrics(&self, group: GroupRef) -> &GroupMetrics {
        match group {
            GroupRef::Listed(i) => &self.metrics.groups[i],
            GroupRef::Unlisted(i) => &self.metrics.unlisted[i],
        }
    }

    fn metering_records(&self, n: usize) {
        self.usage_records.inc_by(n as u64);
    }

    fn metering_failures(&self, n: usize) {
        self.usage_record_failures.inc_by(n as u64);
    }
}

/// A refusal, and whether the connection must close after it (the call's body was not read
/// to its end).
pub struct Refused {
    pub refusal: Refusal,
    pub close: bool,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused {
            refusal,
            close: false,
        }
    }
}

/// A call's answer, before a codec writes it: the backend's (metered on its way), or the
/// gateway's own refusal, which each codec renders from the [`Refusal`] (hyper's through
/// [`Refusal::into_response`], the own HTTP/1.1 codec straight to the wire).
pub(crate) enum Answer {
    Forwarded(Forwarded),
    Refused {
        refusal: Refusal,
        request_id: RequestId,
        /// The connection closes after the answer (a body not read whole, the drain).
        close: bool,
    },
}

/// A backend's answer on its way to the client: its status and end-to-end fields, the
/// gateway's request id, and its body, metered as it streams. The own HTTP/1.1 codec writes
/// the backend's fields as they came; hyper's codecs get a header map
/// ([`Forwarded::into_response`]).
pub(crate) struct Forwarded {
    pub(crate) status: http::StatusCode,
    pub(crate) fields: http1::Fields,
    pub(crate) request_id: HeaderValue,
    /// The connection closes after the answer (the gateway is draining).
    pub(crate) close: bool,
    pub(crate) body: ProxyBody,
}

impl Forwarded {
    /// The answer as hyper's codecs take it.
    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        let mut headers = self.fields.into_header_map(2);
        headers.insert(REQUEST_ID.clone(), self.request_id);
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        *response.headers_mut() = headers;
        response
    }
}

/// A call's request id: a UUID, hyphenated, lower-case.
pub(crate) struct RequestId([u8; 36]);

impl RequestId {
    pub(crate) fn as_str(&self) -> &str {
        // Written by `uuid` as ASCII.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// A call's body: hyper's stream of it, or the whole of it, read with its head by the own
/// codec.
enum CallBody {
    Streaming(Incoming),
    Whole(Bytes),
}

/// What the head of a call settles, before its body is read.
struct Head<'a> {
    pre: Prechecked<'a>,
    service: &'a Service,
    route: Route<'a>,
    /// `X-TC-Action` as sent (an unlisted action's name goes into its usage record).
    action: &'a str,
    /// The declared `Content-Length`; `None` for a chunked body.
    declared: Option<u64>,
}

/// An admitted call: who, against which group, holding which permit.
struct Admitted<'a> {
    uin: u64,
    account: &'a Account,
    group: GroupView<'a>,
    permit: Option<HeldPermit>,
}

/// The quota a call counts against: its group's metric handles and label.
struct GroupView<'a> {
    group_ref: GroupRef,
    label: &'a Arc<str>,
}

/// A log line at most once a second, with how many were held back meanwhile: a backend that
/// is down fails every call, and a line per call would bury the log (the calls are counted).
#[derive(Default)]
struct LogThrottle {
    last_second: AtomicI64,
    held_back: AtomicU64,
}

impl LogThrottle {
    /// `Some(held back since the last line)` if a line may be written at `now_second`.
    fn allow(&self, now_second: i64) -> Option<u64> {
        let last = self.last_second.load(Ordering::Relaxed);
        if now_second > last
            && self
                .last_second
                .compare_exchange(last, now_second, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.held_back.swap(0, Ordering::Relaxed));
        }
        self.held_back.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The gateway: shared by every connection.
pub struct Gateway {
    settings: Arc<Settings>,
    snapshot: ArcSwap<Snapshot>,
    admission: Admission,
    clock: Arc<dyn Clock>,
    sink: Arc<dyn UsageSink>,
    metrics: Arc<Metrics>,
    draining: AtomicBool,
    generation: AtomicU64,
    /// Request bytes buffered at once, gateway-wide (`proxy.max_buffered_request_bytes`).
    budget: Arc<Budget>,
    body_deadlines: Deadlines,
    /// `auth.replay_guard`, when on.
    replay_guard: Option<ReplayGuard>,
    upstream_failure_log: LogThrottle,
    /// `tollgate_gateway_errors_total{code="RequestLimitExceeded"}`, resolved once: under
    /// overload it is the most frequent answer.
    limit_errors: prometheus::IntCounter,
    /// Spend leases of prepaid-only owners (`crate::spend`), when on.
    spend: std::sync::OnceLock<Arc<crate::spend::Spend>>,
    /// Image-search libraries' types (`crate::library`).
    libraries: Arc<Libraries>,
    /// The libraries' changes, until the app hands them to a writer.
    library_changes: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<LibraryChange>>>,
}

impl Gateway {
    pub fn new(
        settings: Arc<Settings>,
        loaded: Arc<Loaded>,
        admission: Admission,
        clock: Arc<dyn Clock>,
        sink: Arc<dyn UsageSink>,
        metrics: Arc<Metrics>,
    ) -> Arc<Gateway> {
        let snapshot = Self::snapshot_of(&settings, &metrics, loaded, 1);
        metrics.config_generation.set(1);
        let limit_errors = metrics.errors.with_label_values(&["RequestLimitExceeded"]);
        let (libraries, library_changes) =
            Libraries::new(settings.image_search.clone(), &metrics.registry);
        Arc::new(Gateway {
            libraries,
            library_changes: std::sync::Mutex::new(Some(library_changes)),
            limit_errors,
            budget: Budget::new(settings.max_buffered_request_bytes),
            body_deadlines: Deadlines {
                idle: settings.request_body_idle_timeout,
                total: settings.request_body_timeout,
            },
            replay_guard: settings
                .replay_guard_capacity
                .map(|capacity| ReplayGuard::new(settings.max_clock_skew_seconds, capacity)),
            upstream_failure_log: LogThrottle::default(),
            settings,
            snapshot: ArcSwap::from_pointee(snapshot),
            admission,
            clock,
            sink,
            metrics,
            draining: AtomicBool::new(false),
            generation: AtomicU64::new(1),
            spend: std::sync::OnceLock::new(),
        })
    }

    fn snapshot_of(
        settings: &Settings,
        metrics: &Metrics,
        loaded: Arc<Loaded>,
        generation: u64,
    ) -> Snapshot {
        Snapshot {
            metrics: CatalogMetrics::new(metrics, &loaded.catalog),
            upstreams: loaded
                .catalog
                .services
                .iter()
                .map(|s| {
                    settings
                        .upstream_slot(&s.name)
                        .map(|(slot, u)| forward::Target {
                            slot,
                            upstream: u.clone(),
                        })
                })
                .collect(),
            loaded,
            generation,
            usage_records: metrics.usage_records.clone(),
            usage_record_failures: metrics.usage_record_failures.clone(),
        }
    }

    /// Puts a newly loaded config in force. Quota state is keyed by (UIN, group key), not by
    /// config generation, so no bucket is reset.
    pub fn apply(&self, loaded: Arc<Loaded>) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.snapshot.store(Arc::new(Self::snapshot_of(
            &self.settings,
            &self.metrics,
            loaded,
            generation,
        )));
        self.metrics.config_generation.set(generation as i64);
        generation
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The image-search libraries' registry.
    pub fn libraries(&self) -> &Arc<Libraries> {
        &self.libraries
    }

    /// The libraries' changes, for the writer that stores them (once).
    pub fn take_library_changes(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<LibraryChange>> {
        self.library_changes.lock().expect("not poisoned").take()
    }

    /// Turns spend leases on (once, at start).
    pub fn set_spend(&self, spend: Arc<crate::spend::Spend>) {
        let _ = self.spend.set(spend);
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Starts the drain: readiness turns false, and every answer from now on carries
    /// `Connection: close`, so each client connection ends after the call it is carrying.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// False while the usage sink refuses records (the spool's disk bound).
    pub fn metering_accepting(&self) -> bool {
        self.sink.accepting()
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && self.sink.healthy()
    }

    /// Brings the gauges read on a scrape up to date.
    pub fn refresh_gauges(&self) {
        let m = &self.metrics;
        m.quota_entries
            .set(self.admission.store().n_entries() as i64);
        // Read live: the shipper may be blocked on an unreachable broker.
        m.spool_full.set(i64::from(!self.sink.accepting()));
        m.request_buffered_bytes.set(self.budget.held() as i64);
        if let Some(g) = &self.replay_guard {
            m.replay_guard_signatures.set(g.held() as i64);
        }
    }

    /// Handles one call, forwarding through `forwarder` (the pool of the worker the call
    /// arrived on). Never fails: every problem becomes a vendor-format answer.
    pub async fn handle(
        self: Arc<Self>,
        forwarder: Arc<Forwarder>,
        req: Request<Incoming>,
        client: Arc<client::Client>,
    ) -> Result<Response<ProxyBody>, std::convert::Infallible> {
        let (parts, body) = req.into_parts();
        let answer = self
            .answer(
                &forwarder,
                ReqHead::Hyper(&parts),
                CallBody::Streaming(body),
                &client,
            )
            .await;
        Ok(match answer {
            Answer::Forwarded(answer) => answer.into_response(),
            Answer::Refused {
                refusal,
                request_id,
                close,
            } => {
                let mut response = refusal.into_response(request_id.as_str());
                if close {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        })
    }

    /// Handles one call read whole by the gateway's own HTTP/1.1 codec (`server_h1`).
    pub(crate) async fn handle_raw(
        &self,
        forwarder: &Forwarder,
        head: &RawHead,
        payload: Bytes,
        client: &client::Client,
    ) -> Answer {
        self.answer(
            forwarder,
            ReqHead::Raw(head),
            CallBody::Whole(payload),
            client,
        )
        .await
    }

    /// A call's answer, whichever codec read it.
    async fn answer(
        &self,
        forwarder: &Forwarder,
        req: ReqHead<'_>,
        body: CallBody,
        client: &client::Client,
    ) -> Answer {
        let in_flight = GaugeGuard::inc(&self.metrics.requests_in_flight);
        // The vendor's RequestId shape, formatted on the stack (most calls never need it owned).
        let mut request_id = RequestId([0; 36]);
        uuid::Uuid::new_v4()
            .hyphenated()
            .encode_lower(&mut request_id.0);
        let snapshot = self.snapshot.load_full();
        let served = tokio::select! {
            biased;
            served = self.serve(&snapshot, forwarder, req, body, client, request_id.as_str(), in_flight) => served,
            // The drain timeout passed with this call still waiting: it gets an answer, not a
            // bare close.
            () = forwarder.aborted() => Err(Refused { refusal: Refusal::ShutDown, close: true }),
        };
        let draining = self.draining.load(Ordering::Relaxed);
        match served {
            Ok(mut answer) => {
                answer.close |= draining;
                Answer::Forwarded(answer)
            }
            Err(Refused { refusal, close }) => {
                let code = refusal.code();
                if let Refusal::OverLimit { .. } = &refusal {
                    self.limit_errors.inc();
                } else {
                    self.metrics.errors.with_label_values(&[code]).inc();
                }
                if let Refusal::Auth(_) = &refusal {
                    self.metrics.auth_failures.with_label_values(&[code]).inc();
                }
                tracing::debug!(request_id = request_id.as_str(), code, message = %respond::Message(&refusal), "refused");
                Answer::Refused {
                    refusal,
                    request_id,
                    close: close || draining,
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &self,
        snapshot: &Arc<Snapshot>,
        forwarder: &Forwarder,
        req: ReqHead<'_>,
        mut body: CallBody,
        client: &client::Client,
        request_id: &str,
        in_flight: GaugeGuard,
    ) -> Result<Forwarded, Refused> {
        let now_unix_nanos = self.clock.unix_nanos();
        // Classify, and check what needs no body: a stranger's body is never read into memory.
        let head = match self.check_head(snapshot, req, now_unix_nanos) {
            Ok(head) => head,
            Err(refusal) => {
                // (Boxed, here and below: a rare path's future would otherwise widen every
                // call's, which is moved whole into place.)
                let refused = Box::pin(self.refuse_unread(refusal, req, &mut body)).await;
                if !refused.close {
                    client.body_read();
                }
                return Err(refused);
            }
        };
        // Read the body: bounded in size, in time, and in the gateway's memory as a whole.
        let mut held = Held::new(&self.budget);
        let read = match &mut body {
            CallBody::Streaming(body) => {
                request_body::read(
                    body,
                    head.declared,
                    self.settings.max_request_bytes,
                    self.body_deadlines,
                    &mut held,
                )
                .await
            }
            CallBody::Whole(payload) => held
                .reserve(payload.len())
                .map(|()| std::mem::take(payload)),
        };
        let payload = match read {
            Ok(payload) => payload,
            Err(e) => return Err(Box::pin(self.refuse_body(e, req, &mut body)).await),
        };
        client.body_read();
        // Authenticate over the exact bytes received.
        let (uin, account) = self.identify(snapshot, &head, req, &payload, now_unix_nanos)?;
        let target = snapshot.upstreams[usize::from(head.service.id.0)]
            .as_ref()
            .ok_or_else(|| Refusal::Internal(format!("no upstream for {}", head.service.name)))?;
        // Image search: the library's type names the item (held in memory; a library never
        // seen is asked about once, before the call counts against anything).
        let library = match self.classify_library(snapshot, &head, account, req, &payload) {
            Classified::Ready(library) => library,
            Classified::Ask(ask) => {
                let asker = crate::library::asker_of(req, uin, head.pre.secret_id(), head.service);
                Box::pin(self.libraries.resolve(
                    ask,
                    asker,
                    &snapshot.loaded.credentials,
                    forwarder,
                    target,
                ))
                .await
            }
        };
        let Admitted {
            uin,
            account,
            group,
            permit,
        } = self.admit_identified(
            snapshot,
            &head,
            uin,
            account,
            library.item(),
            now_unix_nanos,
        )?;
        // Forward to the service's backend.
        // One header value for the id, on the forwarded call and on the answer.
        let request_id_value = forward::header_value(request_id);
        let forwarded_at = tokio::time::Instant::now();
        let upstream_response = forwarder
            .forward(
                req,
                &payload,
                target,
                Identity {
                    uin,
                    owner_uin: account.owner_uin,
                    request_id: &request_id_value,
                    forwarded_for: &client.forwarded_for,
                    forwarded_proto: &client.forwarded_proto,
                },
                &head.service.name,
                now_unix_nanos.div_euclid(1_000_000_000),
                forwarded_at,
            )
            .await;
        snapshot.metrics.upstream_seconds[usize::from(head.service.id.0)]
            .observe(forwarded_at.elapsed().as_secs_f64());
        // The body has been written (or will never be): its bytes leave the budget.
        drop(held);
        let upstream_response = upstream_response
            .map_err(|e| self.upstream_failed(snapshot, &head, &group, request_id, e))?;
        // Meter: stream the answer through the scanner; usage is decided at its end.
        let forward::UpstreamAnswer {
            status,
            fields,
            body: upstream_body,
        } = upstream_response;
        let (interface, action): (_, Arc<str>) = match head.route {
            Route::Listed { interface, .. } => (Some(interface.id), Arc::clone(&interface.action)),
            Route::Unlisted { .. } => (None, Arc::from(head.action)),
        };
        let job = MeterJob {
            sink: Arc::clone(&self.sink),
            service: head.service.id,
            interface,
            action,
            group: group.group_ref,
            owner_uin: account.owner_uin,
            uin,
            request_id: request_id.to_owned(),
            time_unix_ms: now_unix_nanos.div_euclid(1_000_000),
            http_status: status.as_u16(),
            snapshot: Arc::clone(snapshot),
            library,
        };
        let body = MeteredBody::new(upstream_body, job, permit, in_flight);
        Ok(Forwarded {
            status,
            fields,
            request_id: request_id_value,
            close: false,
            body: ProxyBody::Metered(Box::new(body)),
        })
    }

    /// Authenticates the call over the exact bytes received: the account it acts for.
    fn identify<'a>(
        &self,
        snapshot: &'a Snapshot,
        head: &Head<'a>,
        req: ReqHead<'_>,
        payload: &Bytes,
        now_unix_nanos: i64,
    ) -> Result<(u64, &'a Account), Refusal> {
        let uin = self.authenticate(snapshot, head, req, payload, now_unix_nanos)?;
        let account = snapshot
            .loaded
            .entitlements
            .account(uin)
            .ok_or(Refusal::Auth(AuthError::SecretIdNotFound))?;
        Ok((uin, account))
    }

    /// What an image-search call's library makes of its billing, from memory.
    fn classify_library(
        &self,
        snapshot: &Snapshot,
        head: &Head<'_>,
        account: &Account,
        req: ReqHead<'_>,
        payload: &Bytes,
    ) -> Classified {
        match head.route {
            Route::Listed { interface, .. } if interface.library.is_some() => {
                self.libraries.classify(
                    &snapshot.loaded.catalog,
                    interface,
                    account.owner_uin,
                    req,
                    payload,
                )
            }
            _ => Classified::Ready(CallLibrary::None),
        }
    }

    /// The phases between authentication and the backend, all synchronous: gate by the
    /// owner's state, refuse if usage could not be recorded, admit. `item` is the billing
    /// item the call's library names, when it does.
    fn admit_identified<'a>(
        &self,
        snapshot: &'a Snapshot,
        head: &Head<'a>,
        uin: u64,
        account: &'a Account,
        item: Option<BillingItemId>,
        now_unix_nanos: i64,
    ) -> Result<Admitted<'a>, Refusal> {
        let group = self.group_of(snapshot, &head.route);
        // Gate by the owner's state, unbilled.
        self.gate(snapshot, account, head, item, &group, now_unix_nanos)?;
        // A call whose usage could not be recorded is not served (fail closed, unbilled,
        // before any quota is spent).
        if !self.sink.accepting() {
            return Err(Refusal::MeteringUnavailable);
        }
        // A prepaid-only owner: within this replica's spend lease (atomics; never waits).
        let spent = match self.spend.get() {
            Some(spend) if !account.owner.postpaid => {
                match item.or_else(|| snapshot.loaded.catalog.items_of(&head.route).next()) {
                    Some(item) if !spend.take(account.owner_uin, item) => {
                        snapshot.group_metrics(group.group_ref).refused.inc();
                        return Err(Refusal::AccountState {
                            code: Arc::clone(&head.service.refusal_codes.packs_exhausted),
                            state: tollgate_core::entitlement::StateRefusal::PacksExhausted(item),
                            service: Arc::clone(&head.service.name),
                            item: Some(Arc::clone(&snapshot.loaded.catalog.item(item).key)),
                        });
                    }
                    Some(item) => Some((spend, item)),
                    None => None,
                }
            }
            _ => None,
        };
        // Admit: resolve the limit at this instant, then one atomic decision (a refused call
        // gives its spend unit back: it is not served).
        let permit = match self.admit(snapshot, account, uin, &head.route, &group, now_unix_nanos) {
            Ok(p) => p,
            Err(refusal) => {
                if let Some((spend, item)) = spent {
                    spend.untake(account.owner_uin, item);
                }
                return Err(refusal);
            }
        };
        Ok(Admitted {
            uin,
            account,
            group,
            permit,
        })
    }

    /// Every synchronous phase of the request path on a call whose body is already read:
    /// [`Gateway::handle`] runs the same two functions around its body read. The allocation
    /// test and the admission bench drive this, so what they measure is the request path
    /// itself. Returns the call's concurrency permit, if its group has one.
    pub fn decide_buffered(
        &self,
        snapshot: &Snapshot,
        parts: &Parts,
        payload: &Bytes,
    ) -> Result<Option<HeldPermit>, Refusal> {
        let now_unix_nanos = self.clock.unix_nanos();
        let req = ReqHead::Hyper(parts);
        let head = self.check_head(snapshot, req, now_unix_nanos)?;
        let (uin, account) = self.identify(snapshot, &head, req, payload, now_unix_nanos)?;
        // A library not held would be asked about: billed as its interface's item here.
        let item = match self.classify_library(snapshot, &head, account, req, payload) {
            Classified::Ready(library) => library.item(),
            Classified::Ask(_) => None,
        };
        self.admit_identified(snapshot, &head, uin, account, item, now_unix_nanos)
            .map(|a| a.permit)
    }

    /// Classify and precheck: method, target, single-valued fields, `Authorization`, service,
    /// action, timestamp, SecretId, credential date, declared length. Nothing here reads the
    /// body.
    fn check_head<'a>(
        &self,
        snapshot: &'a Snapshot,
        req: ReqHead<'a>,
        now_unix_nanos: i64,
    ) -> Result<Head<'a>, Refusal> {
        let loaded = &snapshot.loaded;
        let catalog = &loaded.catalog;
        let method = req.method();
        if *method == Method::CONNECT {
            return Err(Refusal::Connect);
        }
        if *method != Method::POST && *method != Method::GET {
            return Err(Refusal::UnsupportedProtocol);
        }
        // API 3.0 signs `/` as the path whatever was sent: any other target would reach the
        // backend unauthenticated. A query is part of a GET call only.
        if req.path() != "/"
            || (*method == Method::POST && req.query().is_some_and(|q| !q.is_empty()))
        {
            return Err(Refusal::NotApiTarget);
        }
        check_single_valued(req)?;
        // The service comes from the credential scope (every product sends `POST /` to the
        // same host), the interface from X-TC-Action.
        let authorization = match req.field(Field::Authorization) {
            None => return Err(Refusal::Auth(auth::MalformedAuthorization::Missing.into())),
            Some(v) => visible_ascii(v)
                .ok_or_else(|| Refusal::Auth(auth::MalformedAuthorization::NotUtf8.into()))?,
        };
        let authorization =
            parse_authorization(authorization).map_err(|e| Refusal::Auth(e.into()))?;
        let action = req
            .field(Field::Action)
            .and_then(visible_ascii)
            .filter(|a| !a.is_empty());
        let service = match catalog.service_by_name(authorization.service) {
            Some(s) => s,
            // An SDK that takes the scope's service from its endpoint's first label signs
            // `127` for `127.0.0.1:18080`: nothing is derived from such a scope (it is still
            // what the signature is checked with); the action names the service.
            None if host_like(authorization.service) => action
                .and_then(|a| service_of_action(catalog, a, req.field(Field::Version)))
                .ok_or_else(|| Refusal::UnknownService(authorization.service.to_owned()))?,
            None => return Err(Refusal::UnknownService(authorization.service.to_owned())),
        };
        let action = action.ok_or(Refusal::MissingAction)?;
        let route = catalog.route(service, action).map_err(|e| match e {
            RouteError::Malformed => Refusal::InvalidAction { listed: None },
            RouteError::CaseVariant(listed) => Refusal::InvalidAction {
                listed: Some(listed),
            },
        })?;
        let pre = auth::precheck(
            &loaded.credentials,
            authorization,
            req.field(Field::Timestamp),
            now_unix_nanos.div_euclid(1_000_000_000),
            self.settings.max_clock_skew_seconds,
        )
        .map_err(Refusal::Auth)?;
        let declared = if req.has(&header::TRANSFER_ENCODING) {
            None
        } else {
            // hyper (or the own codec) has already refused a malformed or conflicting length.
            let n = req
                .field(Field::ContentLength)
                .and_then(visible_ascii)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if n > self.settings.max_request_bytes as u64 {
                return Err(Refusal::TooLarge {
                    limit: self.settings.max_request_bytes,
                });
            }
            Some(n)
        };
        Ok(Head {
            pre,
            service,
            route,
            action,
            declared,
        })
    }

    /// Answers a call refused before its body was read. The body is read and dropped first
    /// (bounded, within the body deadlines), so the client is reading when the answer comes;
    /// if it cannot be read to its end, the connection closes after the answer.
    ///
    /// How much is read depends on who is calling. A call refused for its size or for the
    /// gateway's buffer bound passed every check but the signature (a known SecretId, a
    /// current timestamp): up to four times the largest call is read, so that its client
    /// sees `RequestSizeLimitExceeded` rather than a reset. Anything else is a stranger's, or
    /// a broken client's: at most [`STRANGER_DISCARD`] bytes are read for it, so that a flood
    /// of declared bodies costs no more than their heads.
    async fn refuse_unread(
        &self,
        refusal: Refusal,
        req: ReqHead<'_>,
        body: &mut CallBody,
    ) -> Refused {
        let body = match body {
            CallBody::Streaming(body) => body,
            // Read whole already.
            CallBody::Whole(_) => {
                return Refused {
                    refusal,
                    close: false,
                };
            }
        };
        let expects_continue = req
            .get("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
        if expects_continue {
            // The client waits for a go-ahead it will not get: no body comes.
            return Refused {
                refusal,
                close: true,
            };
        }
        let bound = match refusal {
            Refusal::TooLarge { .. } | Refusal::BufferFull => {
                let max = self.settings.max_request_bytes as u64;
                max.saturating_mul(4).max(64 << 20)
            }
            _ => STRANGER_DISCARD,
        };
        let declared = req
            .field(Field::ContentLength)
            .and_then(visible_ascii)
            .and_then(|v| v.parse::<u64>().ok());
        let drained = declared.is_none_or(|n| n <= bound)
            && request_body::discard(body, bound, self.body_deadlines).await;
        Refused {
            refusal,
            close: !drained,
        }
    }

    /// Answers a call whose body could not be read.
    async fn refuse_body(&self, e: BodyError, req: ReqHead<'_>, body: &mut CallBody) -> Refused {
        let (reason, refusal) = match e {
            BodyError::TooLarge { limit } => ("too_large", Refusal::TooLarge { limit }),
            BodyError::BufferFull => ("buffer_full", Refusal::BufferFull),
            BodyError::Timeout { idle, after } => ("timeout", Refusal::BodyTimeout { idle, after }),
            BodyError::Failed(e) => ("failed", Refusal::BadRequestBody(e)),
        };
        self.metrics
            .request_body_refusals
            .with_label_values(&[reason])
            .inc();
        match reason {
            // The rest of the body may still come: read and drop it (bounded).
            "too_large" | "buffer_full" => self.refuse_unread(refusal, req, body).await,
            _ => Refused {
                refusal,
                close: true,
            },
        }
    }

    /// Authenticate: the signature over the exact bytes received, then the replay guard.
    fn authenticate(
        &self,
        snapshot: &Snapshot,
        head: &Head<'_>,
        req: ReqHead<'_>,
        payload: &Bytes,
        now_unix_nanos: i64,
    ) -> Result<u64, Refusal> {
        let unsigned_payload = self.settings.allow_unsigned_payload
            && req
                .field(Field::ContentSha256)
                .is_some_and(|v| v == auth::tc3::UNSIGNED_PAYLOAD.as_bytes());
        // The Host the client sent (HTTP/2: the `:authority`).
        let host: &[u8] = req
            .field(Field::Host)
            .or_else(|| req.authority().map(str::as_bytes))
            .unwrap_or(b"");
        let verify = |host: &[u8]| {
            auth::verify(
                &snapshot.loaded.credentials,
                &head.pre,
                Signed {
                    method: req.method().as_str(),
                    query: req.query().unwrap_or("").as_bytes(),
                    header: |name: &str| {
                        // The SDKs sign these two; others are looked up by name.
                        match name {
                            "content-type" => req.field(Field::ContentType),
                            "host" => Some(host),
                            _ => req.get(name),
                        }
                    },
                    payload: (!unsigned_payload).then_some(&payload[..]),
                },
            )
        };
        let uin = match verify(host) {
            // The vendor's endpoints are on the default port, so SDKs differ on whether the
            // Host they sign carries one (Node.js signs the hostname alone while sending
            // `host:port`): a signature over the Host without its port is accepted too.
            Err(AuthError::SignatureFailure) if without_port(host).is_some() => {
                verify(without_port(host).expect("checked"))
            }
            other => other,
        }
        .map_err(Refusal::Auth)?;
        if let Some(guard) = &self.replay_guard {
            match guard.check(
                head.pre.signature(),
                head.pre.timestamp,
                now_unix_nanos.div_euclid(1_000_000_000),
            ) {
                Seen::First => {}
                Seen::Again => {
                    self.metrics.replay_guard_replays.inc();
                    return Err(Refusal::Auth(AuthError::Replayed));
                }
                Seen::Unguarded => self.metrics.replay_guard_overflow.inc(),
            }
        }
        Ok(uin)
    }

    /// The group a call counts against, and its metric handles.
    fn group_of<'a>(&self, snapshot: &'a Snapshot, route: &Route<'a>) -> GroupView<'a> {
        match *route {
            Route::Listed { group, .. } => GroupView {
                group_ref: GroupRef::Listed(group.id.0 as usize),
                label: &group.name,
            },
            Route::Unlisted { service, .. } => {
                snapshot.metrics.unlisted_calls[usize::from(service.id.0)].inc();
                GroupView {
                    group_ref: GroupRef::Unlisted(usize::from(service.id.0)),
                    label: &service.unlisted_label,
                }
            }
        }
    }

    /// Gate: the owner's state (arrears, not activated, packs exhausted).
    fn gate(
        &self,
        snapshot: &Snapshot,
        account: &Account,
        head: &Head<'_>,
        item: Option<BillingItemId>,
        group: &GroupView<'_>,
        now_unix_nanos: i64,
    ) -> Result<(), Refusal> {
        let catalog = &snapshot.loaded.catalog;
        let items: [Option<BillingItemId>; 2] = match item {
            Some(item) => [Some(item), None],
            None => {
                let mut of = catalog.items_of(&head.route);
                [of.next(), of.next()]
            }
        };
        let Err(state) =
            account
                .owner
                .gate(head.service.id, items.into_iter().flatten(), now_unix_nanos)
        else {
            return Ok(());
        };
        snapshot.group_metrics(group.group_ref).refused.inc();
        let codes = &head.service.refusal_codes;
        let (code, item) = match state {
            tollgate_core::entitlement::StateRefusal::InArrears => (&codes.in_arrears, None),
            tollgate_core::entitlement::StateRefusal::NotActivated => (&codes.not_activated, None),
            tollgate_core::entitlement::StateRefusal::PacksExhausted(item) => (
                &codes.packs_exhausted,
                Some(Arc::clone(&catalog.item(item).key)),
            ),
        };
        Err(Refusal::AccountState {
            code: Arc::clone(code),
            state,
            service: Arc::clone(&head.service.name),
            item,
        })
    }

    /// Admit: the limit in force at this instant, then one atomic decision.
    fn admit(
        &self,
        snapshot: &Snapshot,
        account: &Account,
        uin: u64,
        route: &Route<'_>,
        group: &GroupView<'_>,
        now_unix_nanos: i64,
    ) -> Result<Option<HeldPermit>, Refusal> {
        let decided_at = timed_decision().then(Instant::now);
        let limit = account.limit(route, snapshot.loaded.catalog.default_qps, || {
            now_unix_nanos
        });
        let key = QuotaKey {
            uin,
            group: route.group_key(),
        };
        let decision = self
            .admission
            .decide(key, limit, self.clock.monotonic_nanos());
        if let Some(at) = decided_at {
            self.metrics
                .admission_seconds
                .observe(at.elapsed().as_secs_f64());
        }
        let metrics = snapshot.group_metrics(group.group_ref);
        match decision {
            // Shadow mode: the limit is tried, not enforced. Nothing was consumed for this
            // call (a refusal consumes nothing), so the counts are those of enforcement.
            Decision::OverLimit { .. } if snapshot.loaded.entitlements.shadow.covers(key.group) => {
                metrics.shadow_over_limit.inc();
                Ok(None)
            }
            Decision::OverLimit { retry_after_nanos } => {
                metrics.over_limit.inc();
                Err(Refusal::OverLimit {
                    group: Arc::clone(group.label),
                    limit,
                    retry_after: retry_after_nanos.map(Duration::from_nanos),
                })
            }
            Decision::Admitted { permit, remaining } => {
                metrics.admitted.inc();
                if let Limit::Rate(qps) = limit
                    && u64::from(remaining) * 5 < u64::from(self.admission.rate(qps).burst)
                {
                    metrics.near_limit.inc();
                }
                Ok(permit.map(|permit| HeldPermit {
                    permit,
                    gauge: metrics.in_flight.as_ref().map(GaugeGuard::inc),
                }))
            }
        }
    }

    /// Counts and logs (throttled) a failed forward; the client's answer names no backend.
    fn upstream_failed(
        &self,
        snapshot: &Snapshot,
        head: &Head<'_>,
        group: &GroupView<'_>,
        request_id: &str,
        e: forward::ForwardError,
    ) -> Refusal {
        snapshot.group_metrics(group.group_ref).upstream_error.inc();
        let now_second = self.clock.unix_nanos().div_euclid(1_000_000_000);
        if let Some(held_back) = self.upstream_failure_log.allow(now_second) {
            tracing::warn!(
                %request_id,
                service = %head.service.name,
                error = %e,
                similar_lines_held_back = held_back,
                "upstream failed"
            );
        }
        match e {
            forward::ForwardError::Connect(_) => Refusal::UpstreamUnavailable,
            forward::ForwardError::Timeout(d) => Refusal::UpstreamTimeout(d),
            forward::ForwardError::Failed(_) => Refusal::UpstreamFailed,
        }
    }
}

/// One admission decision in this many is timed for `tollgate_admission_decision_seconds`:
/// the two clock reads cost more than the decision they would time.
const ADMISSION_TIMING_SAMPLE: u32 = 16;

/// Whether this decision is one of the timed ones (counted per worker thread).
fn timed_decision() -> bool {
    thread_local! {
        static DECISIONS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    DECISIONS.with(|n| {
        let next = n.get().wrapping_add(1);
        n.set(next);
        next % ADMISSION_TIMING_SAMPLE == 1
    })
}

/// `host` without its `:port`, if it has one (`[::1]:8443` → `[::1]`).
fn without_port(host: &[u8]) -> Option<&[u8]> {
    let colon = host.iter().rposition(|&b| b == b':')?;
    let (name, port) = (&host[..colon], &host[colon + 1..]);
    let bracketed_v6 = name.starts_with(b"[") && name.ends_with(b"]");
    let plain = !name.contains(&b':');
    (!port.is_empty() && port.iter().all(u8::is_ascii_digit) && (bracketed_v6 || plain))
        .then_some(name)
}

/// A credential scope's service that is a piece of an endpoint, not a service name: an IPv4
/// address's first label (`127`), a host with a port, an IPv6 literal, `localhost`.
fn host_like(scope_service: &str) -> bool {
    !scope_service.is_empty()
        && (scope_service.bytes().all(|b| b.is_ascii_digit())
            || scope_service.contains([':', '[', ']'])
            || scope_service.eq_ignore_ascii_case("localhost"))
}

/// The one service that lists `action` (and speaks `version`, when the call names one).
fn service_of_action<'c>(
    catalog: &'c tollgate_core::catalog::Catalog,
    action: &str,
    version: Option<&[u8]>,
) -> Option<&'c Service> {
    let version = version.and_then(visible_ascii);
    let mut found = catalog.services.iter().filter(|s| {
        s.actions.contains_key(action)
            && version.is_none_or(|v| s.versions.iter().any(|sv| &**sv == v))
    });
    let one = found.next()?;
    found.next().is_none().then_some(one)
}

/// Refuses a call in which a single-valued field appears twice or is named by `Connection`.
/// The own codec reads only calls with neither (`head::RawHead::parse`).
fn check_single_valued(req: ReqHead<'_>) -> Result<(), Refusal> {
    match req {
        ReqHead::Hyper(parts) => check_single_valued_in(&parts.headers),
        ReqHead::Raw(_) => Ok(()),
    }
}

/// [`check_single_valued`] on a header map.
fn check_single_valued_in(headers: &http::HeaderMap) -> Result<(), Refusal> {
    // Most calls have no field twice: one comparison settles it.
    if headers.len() != headers.keys_len() {
        for name in SINGLE_VALUED {
            if headers.get_all(name).iter().nth(1).is_some() {
                return Err(Refusal::AmbiguousHeader {
                    name,
                    named_by_connection: false,
                });
            }
        }
    }
    let connection = hop::ConnectionField::of_map(headers);
    for token in connection.tokens() {
        if let Some(name) = SINGLE_VALUED
            .iter()
            .find(|n| n.as_bytes().eq_ignore_ascii_case(token))
        {
            return Err(Refusal::AmbiguousHeader {
                name,
                named_by_connection: true,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that is down fails every call: one log line a second, saying how many
    /// were held back.
    #[test]
    fn a_host_loses_only_a_real_port() {
        assert_eq!(
            without_port(b"ocr.gateway.example:18080"),
            Some(&b"ocr.gateway.example"[..])
        );
        assert_eq!(without_port(b"127.0.0.1:443"), Some(&b"127.0.0.1"[..]));
        assert_eq!(without_port(b"[::1]:8443"), Some(&b"[::1]"[..]));
        for h in [
            &b"ocr.gateway.example"[..],
            b"[::1]",
            b"::1",
            b"host:",
            b"host:8x",
        ] {
            assert_eq!(without_port(h), None, "{}", String::from_utf8_lossy(h));
        }
    }

    #[test]
    fn an_endpoint_piece_in_the_scope_leaves_the_service_to_the_action() {
        for s in [
            "127",
            "10",
            "localhost",
            "LOCALHOST:18080",
            "[::1]:18080",
            "gw:8080",
        ] {
            assert!(host_like(s), "{s}");
        }
        for s in ["ocr", "", "ocr2", "tiia"] {
            assert!(!host_like(s), "{s}");
        }
        let catalog = tollgate_core::catalog::Catalog::embedded();
        let ocr = |a: &str, v: Option<&str>| {
            service_of_action(&catalog, a, v.map(str::as_bytes)).map(|s| s.name.to_string())
        };
        assert_eq!(ocr("GeneralBasicOCR", None).as_deref(), Some("ocr"));
        assert_eq!(
            ocr("GeneralBasicOCR", Some("2018-11-19")).as_deref(),
            Some("ocr")
        );
        assert_eq!(ocr("SearchImage", None).as_deref(), Some("tiia"));
        // Another service's version, or an action no service lists: no service.
        assert_eq!(ocr("GeneralBasicOCR", Some("2019-05-29")), None);
        assert_eq!(ocr("NoSuchAction", None), None);
    }

    #[test]
    fn failure_logs_are_throttled_to_one_a_second() {
        let t = LogThrottle::default();
        assert_eq!(t.allow(100), Some(0));
        for _ in 0..999 {
            assert_eq!(t.allow(100), None);
        }
        assert_eq!(t.allow(101), Some(999));
        assert_eq!(t.allow(101), None);
        assert_eq!(t.allow(105), Some(1));
    }

    #[test]
    fn single_valued_fields_are_checked_cheaply_and_exactly() {
        let mut h = http::HeaderMap::new();
        h.insert("x-tc-action", HeaderValue::from_static("A"));
        h.append("accept", HeaderValue::from_static("a"));
        h.append("accept", HeaderValue::from_static("b"));
        assert!(
            check_single_valued_in(&h).is_ok(),
            "a repeated field of no concern"
        );
        h.append("x-tc-action", HeaderValue::from_static("B"));
        assert!(matches!(
            check_single_valued_in(&h),
            Err(Refusal::AmbiguousHeader {
                name: "x-tc-action",
                named_by_connection: false
            })
        ));
        let mut h = http::HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, Host"));
        assert!(matches!(
            check_single_valued_in(&h),
            Err(Refusal::AmbiguousHeader {
                name: "host",
                named_by_connection: true
            })
        ));
    }
}
