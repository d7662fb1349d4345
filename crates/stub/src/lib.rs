//! A stub recognition backend (`tollgate stub`): answers every action in the vendor's JSON
//! shape, with configurable latency and outcome mix, for demos, tests and load tests.
//!
//! Per-request headers override the settings (tests use them to script outcomes; they pass
//! through the gateway untouched):
//! - `X-Stub-Outcome: success` or `error:<Code>`
//! - `X-Stub-Latency-Ms: <ms>`: wait before the response head
//! - `X-Stub-Invoices: 3:OK,12:OK,2:FailedOperation.UnKnowError` (MixedInvoiceOCR items)
//! - `X-Stub-Image-Bytes: <n>`: size of the base64 image field of image-returning actions
//! - `X-Stub-Body-Delay-Ms: <ms>`: pause in the middle of the body
//! - `X-Stub-Status: <code>`: answer with this HTTP status
//!
//! `GET /stub/stats` returns calls, in-flight and peak in-flight per action, and the identity
//! headers of the latest calls.

#![deny(unsafe_code)]

pub mod cli;
pub mod settings;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::net::TcpListener;

use settings::{StubOutcome, StubSettings, parse_invoices, parse_outcome};

/// What the stub saw of one call.
#[derive(Debug, Clone, Serialize)]
pub struct SeenCall {
    pub action: String,
    /// Every `X-TC-Action` value received (a call should carry exactly one).
    pub action_values: usize,
    /// The request target.
    pub target: String,
    pub uin: Option<String>,
    pub owner_uin: Option<String>,
    pub request_id: Option<String>,
    /// Forwarding fields as received (a gateway sets `X-Forwarded-*` itself and passes on no
    /// client's `Forwarded` or `X-Real-IP`).
    pub x_forwarded_for: Option<String>,
    pub x_forwarded_proto: Option<String>,
    pub forwarded: Option<String>,
    pub x_real_ip: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ActionStats {
    pub calls: u64,
    pub in_flight: u64,
    pub max_in_flight: u64,
}

#[derive(Default)]
struct Stats {
    actions: BTreeMap<String, ActionStats>,
    recent: VecDeque<SeenCall>,
}

pub struct Stub {
    settings: StubSettings,
    counter: AtomicU64,
    stats: Mutex<Stats>,
}

const RECENT: usize = 1000;
const CHUNK: usize = 64 * 1024;

impl Stub {
    pub fn new(settings: StubSettings) -> Arc<Stub> {
        Arc::new(Stub {
            settings,
            counter: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
        })
    }

    /// Picks the outcome of call `n` by weighted round-robin.
    fn outcome(&self, n: u64) -> StubOutcome {
        let total: u64 = self
            .settings
            .outcomes
            .iter()
            .map(|(w, _)| u64::from(*w))
            .sum();
        let mut at = n % total.max(1);
        for (w, o) in &self.settings.outcomes {
            if at < u64::from(*w) {
                return o.clone();
            }
            at -= u64::from(*w);
        }
        StubOutcome::Success
    }

    fn stats_json(&self) -> String {
        let s = self.stats.lock().expect("not poisoned");
        serde_json::json!({
            "actions": s.actions,
            "recent": s.recent,
        })
        .to_string()
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<StubBody>, Infallible> {
        if req.uri().path() == "/stub/stats" {
            return Ok(json_response(
                StatusCode::OK,
                vec![Bytes::from(self.stats_json())],
                None,
            ));
        }
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let action = header("x-tc-action").unwrap_or_default();
        let request_id =
            header("x-tollgate-request-id").unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        {
            let mut s = self.stats.lock().expect("not poisoned");
            let a = s.actions.entry(action.clone()).or_default();
            a.calls += 1;
            a.in_flight += 1;
            a.max_in_flight = a.max_in_flight.max(a.in_flight);
            if s.recent.len() == RECENT {
                s.recent.pop_front();
            }
            s.recent.push_back(SeenCall {
                action: action.clone(),
                action_values: req.headers().get_all("x-tc-action").iter().count(),
                target: req.uri().to_string(),
                uin: header("x-tollgate-uin"),
                owner_uin: header("x-tollgate-owner-uin"),
                request_id: Some(request_id.clone()),
                x_forwarded_for: header("x-forwarded-for"),
                x_forwarded_proto: header("x-forwarded-proto"),
                forwarded: header("forwarded"),
                x_real_ip: header("x-real-ip"),
            });
        }
        let guard = InFlight {
            stub: Arc::clone(&self),
            action: action.clone(),
        };
        let outcome = header("x-stub-outcome")
            .map(|o| parse_outcome(&o))
            .unwrap_or_else(|| self.outcome(n));
        let latency = header("x-stub-latency-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                let jitter = if self.settings.jitter_ms > 0 {
                    // Deterministic spread over [0, jitter] from the call number.
                    n.wrapping_mul(0x9e37_79b9_7f4a_7c15) % (self.settings.jitter_ms + 1)
                } else {
                    0
                };
                self.settings.latency_ms + jitter
            });
        let image_bytes = header("x-stub-image-bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.settings.image_bytes);
        let invoices = header("x-stub-invoices")
            .and_then(|v| parse_invoices(&v).ok())
            .unwrap_or_else(|| self.settings.invoices.clone());
        let body_delay = header("x-stub-body-delay-ms")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis);
        let status = header("x-stub-status")
            .and_then(|v| v.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        // Drain the request body so keep-alive connections stay usable.
        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let chunks = answer(&action, &outcome, &invoices, image_bytes, &request_id);
        let mut resp = json_response(status, chunks, body_delay);
        resp.body_mut().guard = Some(guard);
        Ok(resp)
    }
}

/// Counts a call in flight until its response body is dropped.
struct InFlight {
    stub: Arc<Stub>,
    action: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.stub.stats.lock().expect("not poisoned");
        if let Some(a) = s.actions.get_mut(&self.action) {
            a.in_flight -= 1;
        }
    }
}

/// The image field of an action that returns one, if any.
fn image_field(action: &str) -> Option<&'static str> {
    Some(match action {
        "FuseFace" | "FuseFaceUltra" | "FaceFusion" => "FusedImage",
        "SegmentPortraitPic" | "SegmentCustomizedPortraitPic" => "ResultImage",
        "EnhanceImage" => "EnhancedImage",
        "SwapGenderPic" | "ChangeAgePic" | "FaceCartoonPic" => "ResultImage",
        "ImageEnhancement" | "CropEnhanceImageOCR" => "Image",
        "CropImage" => "CropResult",
        _ => return None,
    })
}

/// The response body in chunks: the image (if any) is cut into 64 KiB pieces so the gateway
/// sees a streamed answer.
fn answer(
    action: &str,
    outcome: &StubOutcome,
    invoices: &[(i64, String)],
    image_bytes: usize,
    request_id: &str,
) -> Vec<Bytes> {
    let rid = serde_json::to_string(request_id).expect("string");
    if let StubOutcome::Error(code) = outcome {
        let body = format!(
            r#"{{"Response":{{"Error":{{"Code":{},"Message":"stub error"}},"RequestId":{rid}}}}}"#,
            serde_json::to_string(code).expect("string")
        );
        return vec![Bytes::from(body)];
    }
    if action == "MixedInvoiceOCR" {
        let items: Vec<_> = invoices
            .iter()
            .enumerate()
            .map(|(i, (t, code))| {
                serde_json::json!({
                    "Code": code, "Type": t, "Angle": 0.0, "Page": 1,
                    "Rect": {"X": 10 * i, "Y": 10, "Width": 100, "Height": 50},
                    "SingleInvoiceInfos": [{"Name": "发票代码", "Value": "144031700221", "Row": 0}],
                })
            })
            .collect();
        let body = serde_json::json!({"Response": {
            "MixedInvoiceItems": items, "TotalPDFCount": 1, "RequestId": request_id,
        }});
        return vec![Bytes::from(body.to_string())];
    }
    match image_field(action) {
        Some(field) => {
            let mut chunks = vec![Bytes::from(format!(r#"{{"Response":{{"{field}":""#))];
            let mut left = image_bytes;
            while left > 0 {
                let n = left.min(CHUNK);
                chunks.push(Bytes::from(vec![b'A'; n]));
                left -= n;
            }
            chunks.push(Bytes::from(format!(
                r#"","HasForeground":true,"RequestId":{rid}}}}}"#
            )));
            chunks
        }
        None => vec![Bytes::from(format!(
            r#"{{"Response":{{"TextDetections":[{{"DetectedText":"stub","Confidence":99}}],"Angle":0.0,"RequestId":{rid}}}}}"#
        ))],
    }
}

fn json_response(
    status: StatusCode,
    chunks: Vec<Bytes>,
    delay: Option<Duration>,
) -> Response<StubBody> {
    let len: usize = chunks.iter().map(Bytes::len).sum();
    let mut r = Response::new(StubBody {
        chunks: chunks.into(),
        len: len as u64,
        delay,
        sleep: None,
        sent_first: false,
        guard: None,
    });
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// A chunked body with an optional pause after its first chunk.
pub struct StubBody {
    chunks: VecDeque<Bytes>,
    len: u64,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    sent_first: bool,
    guard: Option<InFlight>,
}

impl Body for StubBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.sent_first
            && let Some(d) = this.delay.take()
        {
            this.sleep = Some(Box::pin(tokio::time::sleep(d)));
        }
        if let Some(s) = this.sleep.as_mut() {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        match this.chunks.pop_front() {
            Some(c) => {
                this.sent_first = true;
                this.len -= c.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(c))))
            }
            None => {
                this.guard = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// Serves the stub on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, stub: Arc<Stub>, shutdown: impl Future<Output = ()>) {
    tollgate_ops::http::serve(
        listener,
        "stub",
        move |req| {
            let stub = Arc::clone(&stub);
            async move {
                match stub.handle(req).await {
                    Ok(answer) => answer,
                    Err(never) => match never {},
                }
            }
        },
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_round_robin_is_exact_per_cycle() {
        let stub = Stub::new(StubSettings {
            outcomes: vec![
                (3, StubOutcome::Success),
                (1, StubOutcome::Error("FailedOperation.ImageBlur".into())),
            ],
            ..StubSettings::default()
        });
        let errors = (0..400)
            .filter(|n| stub.outcome(*n) != StubOutcome::Success)
            .count();
        assert_eq!(errors, 100);
    }

    #[test]
    fn answers_parse_as_vendor_json() {
        for (action, outcome) in [
            ("GeneralBasicOCR", StubOutcome::Success),
            ("SegmentPortraitPic", StubOutcome::Success),
            ("MixedInvoiceOCR", StubOutcome::Success),
            (
                "GeneralBasicOCR",
                StubOutcome::Error("FailedOperation.ImageBlur".into()),
            ),
        ] {
            let chunks = answer(action, &outcome, &[(3, "OK".into())], 100_000, "rid");
            let body: Vec<u8> = chunks.concat();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["Response"]["RequestId"], "rid", "{action}");
        }
    }
}
