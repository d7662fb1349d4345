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
//!
//! Image search has state, as the vendor's does: `CreateGroup` makes a library (`GroupId`,
//! `GroupType`, default 4) of the calling account (`X-Tollgate-Owner-Uin`, or the SecretId of
//! a call that came straight to the stub), `DescribeGroups` lists them, `DeleteGroup` removes
//! one, and `CreateImage`/`SearchImage` into a library that does not exist are answered
//! `InvalidParameterValue.ImageGroupIdNotExist`. `POST /stub/fail?action=A&code=C` makes every
//! later call of action `A` fail with `C` (`DELETE /stub/fail?action=A` ends it): a backend
//! whose `DescribeGroups` is failing, for instance.

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
    /// Image-search libraries by account, then `GroupId`: their `GroupType`.
    libraries: BTreeMap<String, BTreeMap<String, i64>>,
    /// Actions made to fail, with their code.
    failing: BTreeMap<String, String>,
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
        if req.uri().path() == "/stub/fail" {
            let query = req.uri().query().unwrap_or("");
            let param = |k: &str| {
                query
                    .split('&')
                    .filter_map(|p| p.split_once('='))
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_owned())
            };
            let mut s = self.stats.lock().expect("not poisoned");
            if let Some(action) = param("action") {
                if req.method() == http::Method::DELETE {
                    s.failing.remove(&action);
                } else {
                    let code = param("code").unwrap_or_else(|| "InternalError".into());
                    s.failing.insert(action, code);
                }
            }
            return Ok(json_response(StatusCode::OK, vec![Bytes::from("{}")], None));
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
        let account = header("x-tollgate-owner-uin")
            .or_else(|| {
                header("authorization").and_then(|a| {
                    a.split("Credential=")
                        .nth(1)
                        .and_then(|c| c.split('/').next())
                        .map(str::to_owned)
                })
            })
            .unwrap_or_default();
        let failing = self
            .stats
            .lock()
            .expect("not poisoned")
            .failing
            .get(&action)
            .cloned();
        let mut outcome = header("x-stub-outcome")
            .map(|o| parse_outcome(&o))
            .or(failing.map(StubOutcome::Error))
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
        let query = req.uri().query().unwrap_or("").to_owned();
        // Read the request body (which also keeps keep-alive connections usable).
        let body = http_body_util::BodyExt::collect(req.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let mut library_answer = None;
        if matches!(outcome, StubOutcome::Success) {
            match self.libraries(&action, &account, &body, &query, &request_id) {
                Library::NotImageSearch => {}
                Library::Error(code) => outcome = StubOutcome::Error(code),
                Library::Answer(a) => library_answer = Some(a),
            }
        }
        let chunks = match library_answer {
            Some(a) => vec![Bytes::from(a)],
            None => answer(&action, &outcome, &invoices, image_bytes, &request_id),
        };
        let mut resp = json_response(status, chunks, body_delay);
        resp.body_mut().guard = Some(guard);
        Ok(resp)
    }
}

/// What the image-search state makes of a call.
enum Library {
    NotImageSearch,
    Error(String),
    Answer(String),
}

impl Stub {
    /// Image search: creates, lists and deletes `account`'s libraries; checks the library of
    /// a call into one.
    fn libraries(
        &self,
        action: &str,
        account: &str,
        body: &[u8],
        query: &str,
        request_id: &str,
    ) -> Library {
        if !matches!(
            action,
            "CreateGroup" | "DescribeGroups" | "DeleteGroup" | "CreateImage" | "SearchImage"
        ) {
            return Library::NotImageSearch;
        }
        // A POST's JSON body, or a GET's form-encoded query (values as strings).
        let params: serde_json::Value = if body.is_empty() {
            let pairs: serde_json::Map<String, serde_json::Value> = query
                .split('&')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| {
                    let v = v.replace("%5F", "_").replace("%5f", "_");
                    let v = match v.parse::<i64>() {
                        Ok(n) if k == "GroupType" => serde_json::Value::from(n),
                        _ => serde_json::Value::from(v),
                    };
                    (k.to_owned(), v)
                })
                .collect();
            serde_json::Value::Object(pairs)
        } else {
            serde_json::from_slice(body).unwrap_or_default()
        };
        let group_id = params["GroupId"].as_str().map(str::to_owned);
        let rid = serde_json::to_string(request_id).expect("string");
        let mut s = self.stats.lock().expect("not poisoned");
        let libs = s.libraries.entry(account.to_owned()).or_default();
        let not_exist = || Library::Error("InvalidParameterValue.ImageGroupIdNotExist".into());
        match action {
            "CreateGroup" => {
                let Some(id) = group_id else {
                    return Library::Error("MissingParameter".into());
                };
                if libs.contains_key(&id) {
                    return Library::Error("InvalidParameterValue.ImageGroupIdAlreadyExist".into());
                }
                libs.insert(id, params["GroupType"].as_i64().unwrap_or(4));
                Library::Answer(format!(r#"{{"Response":{{"RequestId":{rid}}}}}"#))
            }
            "DeleteGroup" => match group_id {
                Some(id) if libs.remove(&id).is_some() => {
                    Library::Answer(format!(r#"{{"Response":{{"RequestId":{rid}}}}}"#))
                }
                _ => not_exist(),
            },
            "DescribeGroups" => {
                let groups: Vec<serde_json::Value> = libs
                    .iter()
                    .filter(|(id, _)| group_id.as_ref().is_none_or(|g| g == *id))
                    .map(|(id, t)| {
                        serde_json::json!({
                            "GroupId": id, "GroupName": id, "Brief": "", "MaxCapacity": 100000,
                            "MaxQps": 10, "GroupType": t, "PicCount": 0,
                            "CreateTime": "2026-01-01 00:00:00", "UpdateTime": "2026-01-01 00:00:00",
                        })
                    })
                    .collect();
                Library::Answer(
                    serde_json::json!({"Response": {"Groups": groups, "RequestId": request_id}})
                        .to_string(),
                )
            }
            // CreateImage, SearchImage
            _ => match group_id {
                Some(id) if libs.contains_key(&id) => Library::Answer(if action == "SearchImage" {
                    format!(
                        r#"{{"Response":{{"Count":1,"ImageInfos":[{{"EntityId":"e1","CustomContent":"","Tags":"","PicName":"p1","Score":99}}],"Object":null,"ObjectTypes":[],"RequestId":{rid}}}}}"#
                    )
                } else {
                    format!(r#"{{"Response":{{"Object":null,"RequestId":{rid}}}}}"#)
                }),
                _ => not_exist(),
            },
        }
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
