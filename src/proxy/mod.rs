//! The request path: classify → authenticate → admit → forward → meter.
//!
//! [`Gateway::handle`] runs the stages in order, each with one job; any stage may end the call
//! with a [`Refusal`], which `respond` turns into the vendor's error. Admission is synchronous
//! and never awaits I/O; a refused call never reaches metering (only [`body::MeteredBody`]
//! creates usage records, and it exists only for forwarded calls).

pub mod body;
pub mod forward;
pub mod http1;
pub mod respond;
pub mod server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::admission::{Admission, Decision, QuotaKey};
use crate::auth::{self, AuthError, AuthRequest, parse_authorization};
use crate::catalog::Route;
use crate::clock::Clock;
use crate::config::Loaded;
use crate::config::gateway::Settings;
use crate::entitlement::{Limit, StateRefusal, default_limit};
use crate::metering::UsageSink;
use crate::metrics::{CatalogMetrics, GroupMetrics, Metrics};
use body::{GaugeGuard, HeldPermit, MeterJob, MeteredBody, ProxyBody};
use forward::{Forwarder, Identity};
pub use respond::Refusal;

/// The header names the request path reads or writes, parsed once (a `&str` name is parsed on
/// every lookup).
pub(crate) mod names {
    use http::header::HeaderName;

    use super::forward::{HEADER_OWNER_UIN, HEADER_REQUEST_ID, HEADER_UIN};

    pub static TC_ACTION: HeaderName = HeaderName::from_static("x-tc-action");
    pub static TC_TIMESTAMP: HeaderName = HeaderName::from_static("x-tc-timestamp");
    pub static TC_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-tc-content-sha256");
    pub static UIN: HeaderName = HeaderName::from_static(HEADER_UIN);
    pub static OWNER_UIN: HeaderName = HeaderName::from_static(HEADER_OWNER_UIN);
    pub static REQUEST_ID: HeaderName = HeaderName::from_static(HEADER_REQUEST_ID);
    pub static FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    pub static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
}
use names::{REQUEST_ID, TC_ACTION, TC_CONTENT_SHA256, TC_TIMESTAMP};

/// The config in force plus the metric handles resolved for it; swapped whole on reload.
pub struct Snapshot {
    pub loaded: Arc<Loaded>,
    pub metrics: CatalogMetrics,
    pub generation: u64,
    usage_records: prometheus::IntCounter,
    usage_record_failures: prometheus::IntCounter,
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
    /// `tollgate_gateway_errors_total{code="RequestLimitExceeded"}`, resolved once: under
    /// overload it is the most frequent answer.
    limit_errors: prometheus::IntCounter,
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
        let snapshot = Self::snapshot_of(&metrics, loaded, 1);
        metrics.config_generation.set(1);
        let limit_errors = metrics.errors.with_label_values(&["RequestLimitExceeded"]);
        Arc::new(Gateway {
            limit_errors,
            settings,
            snapshot: ArcSwap::from_pointee(snapshot),
            admission,
            clock,
            sink,
            metrics,
            draining: AtomicBool::new(false),
            generation: AtomicU64::new(1),
        })
    }

    fn snapshot_of(metrics: &Metrics, loaded: Arc<Loaded>, generation: u64) -> Snapshot {
        Snapshot {
            metrics: CatalogMetrics::new(metrics, &loaded.catalog),
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

    /// Stops taking new calls (readiness turns false; new calls get ServiceUnavailable).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// False while the usage sink refuses records (the spool's disk bound).
    pub fn metering_accepting(&self) -> bool {
        self.sink.accepting()
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst) && self.sink.healthy()
    }

    /// Handles one call, forwarding through `forwarder` (the pool of the worker the call
    /// arrived on). Never fails: every problem becomes a vendor-format answer.
    pub async fn handle(
        self: Arc<Self>,
        forwarder: Arc<Forwarder>,
        req: Request<Incoming>,
        forwarded_for: HeaderValue,
    ) -> Result<Response<ProxyBody>, std::convert::Infallible> {
        let in_flight = GaugeGuard::inc(&self.metrics.requests_in_flight);
        // The vendor's RequestId shape, formatted on the stack (most calls never need it owned).
        let mut id_buf = uuid::Uuid::encode_buffer();
        let request_id: &str = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id_buf);
        let response = match self
            .serve(&forwarder, req, &forwarded_for, request_id, in_flight)
            .await
        {
            Ok(resp) => resp,
            Err(refusal) => {
                let code = refusal.code();
                if let Refusal::OverLimit { .. } = &refusal {
                    self.limit_errors.inc();
                } else {
                    self.metrics.errors.with_label_values(&[code]).inc();
                }
                if let Refusal::Auth(_) = &refusal {
                    self.metrics.auth_failures.with_label_values(&[code]).inc();
                }
                tracing::debug!(%request_id, code, message = %respond::Message(&refusal), "refused");
                refusal.into_response(request_id)
            }
        };
        Ok(response)
    }

    async fn serve(
        &self,
        forwarder: &Forwarder,
        req: Request<Incoming>,
        forwarded_for: &HeaderValue,
        request_id: &str,
        in_flight: GaugeGuard,
    ) -> Result<Response<ProxyBody>, Refusal> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(Refusal::Draining);
        }
        let snapshot = self.snapshot.load_full();
        let loaded = &snapshot.loaded;
        let catalog = &loaded.catalog;
        let (parts, body) = req.into_parts();

        // Classify: the service comes from the credential scope (every product sends `POST /`
        // to the same host), the interface from X-TC-Action.
        if parts.method != Method::POST && parts.method != Method::GET {
            return Err(Refusal::UnsupportedProtocol);
        }
        let authorization = match parts.headers.get(header::AUTHORIZATION) {
            None => return Err(Refusal::Auth(auth::MalformedAuthorization::Missing.into())),
            Some(v) => v
                .to_str()
                .map_err(|_| Refusal::Auth(auth::MalformedAuthorization::NotUtf8.into()))?,
        };
        let authorization =
            parse_authorization(authorization).map_err(|e| Refusal::Auth(e.into()))?;
        let service = catalog
            .service_by_name(authorization.service)
            .ok_or_else(|| Refusal::UnknownService(authorization.service.to_owned()))?;
        let action = parts
            .headers
            .get(&TC_ACTION)
            .and_then(|v| v.to_str().ok())
            .filter(|a| !a.is_empty())
            .ok_or(Refusal::MissingAction)?;
        let route = catalog.route(service, action);

        // The signature covers the body, so it is read (bounded) before anything else.
        let body = read_body(&parts, body, self.settings.max_request_bytes).await?;

        // Authenticate over the exact bytes received.
        let unsigned_payload = self.settings.allow_unsigned_payload
            && parts
                .headers
                .get(&TC_CONTENT_SHA256)
                .is_some_and(|v| v.as_bytes() == auth::tc3::UNSIGNED_PAYLOAD.as_bytes());
        let headers = &parts.headers;
        let now_unix_nanos = self.clock.unix_nanos();
        let uin = auth::authenticate(
            &loaded.credentials,
            AuthRequest {
                authorization: &authorization,
                method: parts.method.as_str(),
                query: parts.uri.query().unwrap_or("").as_bytes(),
                header: |name: &str| {
                    // The SDKs sign these two; others are looked up by name.
                    match name {
                        "content-type" => headers.get(header::CONTENT_TYPE),
                        "host" => headers.get(header::HOST),
                        _ => headers.get(name),
                    }
                    .map(HeaderValue::as_bytes)
                },
                timestamp: headers.get(&TC_TIMESTAMP).map(HeaderValue::as_bytes),
                payload: (!unsigned_payload).then_some(&body[..]),
            },
            now_unix_nanos.div_euclid(1_000_000_000),
            self.settings.max_clock_skew_seconds,
        )
        .map_err(Refusal::Auth)?;
        let account = loaded
            .entitlements
            .account(uin)
            .ok_or(Refusal::Auth(AuthError::SecretIdNotFound))?;

        let (group_ref, group_label, group_limit) = match route {
            Route::Listed { group, .. } => (
                GroupRef::Listed(group.id.0 as usize),
                &group.name,
                group.limit,
            ),
            Route::Unlisted { service, .. } => {
                snapshot.metrics.unlisted_calls[usize::from(service.id.0)].inc();
                (
                    GroupRef::Unlisted(usize::from(service.id.0)),
                    &service.unlisted_label,
                    crate::catalog::GroupLimit::Rate {
                        qps: catalog.default_qps,
                    },
                )
            }
        };

        let group_metrics = snapshot.group_metrics(group_ref);

        // Gate by the owner's state, unbilled.
        if let Err(refusal) = account.owner.gate(service.id, catalog.items_of(&route)) {
            group_metrics.refused.inc();
            let codes = &service.refusal_codes;
            let (code, message) = match refusal {
                StateRefusal::InArrears => (
                    &codes.in_arrears,
                    "The account is suspended for arrears.".to_owned(),
                ),
                StateRefusal::NotActivated => (
                    &codes.not_activated,
                    format!(
                        "The service {} is not activated for this account.",
                        service.name
                    ),
                ),
                StateRefusal::PacksExhausted(item) => (
                    &codes.packs_exhausted,
                    format!(
                        "The resource packs of {} are used up and postpaid is not enabled.",
                        catalog.item(item).key
                    ),
                ),
            };
            return Err(Refusal::AccountState {
                code: Arc::clone(code),
                message,
            });
        }

        // A call whose usage could not be recorded is not served (fail closed, unbilled,
        // before any quota is spent).
        if !self.sink.accepting() {
            return Err(Refusal::MeteringUnavailable);
        }

        // Admit: resolve the limit at this instant, then one atomic decision.
        let decided_at = Instant::now();
        let limit = match route {
            Route::Listed { group, .. } => match account.entitlement(group.id) {
                Some(e) => e.resolve(group_limit, || now_unix_nanos),
                None => default_limit(group_limit),
            },
            Route::Unlisted { .. } => default_limit(group_limit),
        };
        let key = QuotaKey {
            uin,
            group: route.group_key(),
        };
        let decision = self
            .admission
            .decide(key, limit, self.clock.monotonic_nanos());
        self.metrics
            .admission_seconds
            .observe(decided_at.elapsed().as_secs_f64());
        let permit = match decision {
            Decision::OverLimit { retry_after_nanos } => {
                group_metrics.over_limit.inc();
                return Err(Refusal::OverLimit {
                    group: Arc::clone(group_label),
                    limit,
                    retry_after: retry_after_nanos.map(Duration::from_nanos),
                });
            }
            Decision::Admitted { permit, remaining } => {
                group_metrics.admitted.inc();
                if let Limit::Rate(qps) = limit
                    && u64::from(remaining) * 5 < u64::from(self.admission.rate(qps).burst)
                {
                    group_metrics.near_limit.inc();
                }
                permit.map(|permit| HeldPermit {
                    permit,
                    gauge: group_metrics.in_flight.as_ref().map(GaugeGuard::inc),
                })
            }
        };

        // Forward to the service's backend.
        let upstream = self
            .settings
            .upstream(&service.name)
            .ok_or_else(|| Refusal::Internal(format!("no upstream for {}", service.name)))?;
        let forwarded_at = Instant::now();
        // What metering needs of the request, taken before it is handed on.
        let (interface, action): (_, Arc<str>) = match route {
            Route::Listed { interface, .. } => (Some(interface.id), Arc::clone(&interface.action)),
            Route::Unlisted { .. } => (None, Arc::from(action)),
        };
        // One header value for the id, on the forwarded call and on the answer.
        let request_id_value = forward::header_value(request_id);
        let upstream_response = forwarder
            .forward(
                parts,
                body,
                upstream,
                Identity {
                    uin,
                    owner_uin: account.owner_uin,
                    request_id: &request_id_value,
                    forwarded_for,
                },
                &service.name,
                now_unix_nanos.div_euclid(1_000_000_000),
            )
            .await;
        snapshot.metrics.upstream_seconds[usize::from(service.id.0)]
            .observe(forwarded_at.elapsed().as_secs_f64());
        let upstream_response = upstream_response.map_err(|e| {
            group_metrics.upstream_error.inc();
            tracing::warn!(%request_id, service = %service.name, error = %e, "upstream failed");
            match e {
                forward::ForwardError::Connect(e) => Refusal::UpstreamUnavailable(e),
                forward::ForwardError::Timeout(d) => Refusal::UpstreamTimeout(d),
                forward::ForwardError::Failed(e) => Refusal::UpstreamFailed(e),
            }
        })?;

        // Meter: stream the answer through the scanner; usage is decided at its end.
        let (mut head, upstream_body) = upstream_response.into_parts();
        head.headers.retain_hop_by_hop();
        head.headers.insert(REQUEST_ID.clone(), request_id_value);
        let job = MeterJob {
            sink: Arc::clone(&self.sink),
            service: service.id,
            interface,
            action,
            group: group_ref,
            owner_uin: account.owner_uin,
            uin,
            request_id: request_id.to_owned(),
            time_unix_ms: now_unix_nanos.div_euclid(1_000_000),
            http_status: head.status.as_u16(),
            snapshot: Arc::clone(&snapshot),
        };
        let body = MeteredBody::new(upstream_body, job, permit, in_flight);
        Ok(Response::from_parts(
            head,
            ProxyBody::Metered(Box::new(body)),
        ))
    }
}

/// Removes hop-by-hop headers of an upstream response.
trait RetainHopByHop {
    fn retain_hop_by_hop(&mut self);
}

impl RetainHopByHop for http::HeaderMap {
    fn retain_hop_by_hop(&mut self) {
        let names: Vec<_> = self
            .keys()
            .filter(|n| forward::hop_by_hop(n))
            .cloned()
            .collect();
        for n in names {
            self.remove(n);
        }
    }
}

/// Reads the request body, refusing more than `max` bytes.
///
/// A refused body is still read to its end (and discarded), up to a bound: answering while the
/// client is still sending makes the connection close with unread data, and the kernel's reset
/// can reach the client before the answer, which an SDK reports as a network error instead of
/// `RequestSizeLimitExceeded`.
async fn read_body(
    parts: &http::request::Parts,
    mut body: Incoming,
    max: usize,
) -> Result<Bytes, Refusal> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Beyond this much the client is not worth waiting for: the connection just closes.
    let drain_bound = (max as u64).saturating_mul(4).max(64 << 20);
    let mut too_large = declared.is_some_and(|n| n > max as u64);
    if too_large && declared.is_some_and(|n| n > drain_bound) {
        return Err(Refusal::TooLarge { limit: max });
    }
    let mut buf =
        bytes::BytesMut::with_capacity(declared.map_or(0, |n| n.min(max as u64) as usize));
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Refusal::BadRequestBody(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > max as u64 {
                too_large = true;
            }
            if too_large {
                if seen > drain_bound {
                    break;
                }
                continue;
            }
            buf.extend_from_slice(&data);
        }
    }
    if too_large {
        return Err(Refusal::TooLarge { limit: max });
    }
    Ok(buf.freeze())
}

/// Metric handles of a group, for tests.
pub fn group_metrics_of<'s>(snapshot: &'s Snapshot, group: &str) -> Option<&'s GroupMetrics> {
    let g = snapshot.loaded.catalog.group_by_name(group)?;
    snapshot.metrics.groups.get(g.id.0 as usize)
}
