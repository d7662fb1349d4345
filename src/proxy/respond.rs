//! The one place where every refusal becomes a response on the wire.
//!
//! The official SDK recognises an error only as HTTP 200 with `Content-Type: application/json`
//! *exactly* (with `; charset=utf-8` it silently returns an empty result) and a body
//! `{"Response":{"Error":{"Code":…,"Message":…},"RequestId":…}}` (TC_API.md section 2). Every
//! error the gateway makes itself goes through [`Refusal::into_response`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::body::ProxyBody;
use super::names::{RATELIMIT, RATELIMIT_POLICY, REQUEST_ID};
use crate::auth::AuthError;
use crate::entitlement::Limit;

/// Why the gateway answered a call itself.
#[derive(Debug)]
pub enum Refusal {
    /// Neither POST nor GET.
    UnsupportedProtocol,
    /// No `X-TC-Action`.
    MissingAction,
    /// The credential scope names a service this gateway does not serve.
    UnknownService(String),
    /// The body is larger than `proxy.max_request_bytes`.
    TooLarge {
        limit: usize,
    },
    /// The request body could not be read (the client went away or sent garbage framing).
    BadRequestBody(String),
    Auth(AuthError),
    /// The account's state refuses the call (not activated, arrears, packs exhausted); the code
    /// comes from the catalog's `refusal_codes` of the service.
    AccountState {
        code: Arc<str>,
        message: String,
    },
    /// Over the group's limit.
    OverLimit {
        group: Arc<str>,
        limit: Limit,
        retry_after: Option<Duration>,
    },
    /// The backend could not be reached.
    UpstreamUnavailable(String),
    /// The backend sent no response head in time.
    UpstreamTimeout(Duration),
    /// The backend connection failed mid-call.
    UpstreamFailed(String),
    /// The gateway is shutting down and takes no new calls.
    Draining,
    /// The usage sink cannot take records (the spool is at its disk bound): the gateway does
    /// not serve calls it could not meter.
    MeteringUnavailable,
    /// A bug: something validated config promised did not hold.
    Internal(String),
}

/// The vendor's message for `RequestLimitExceeded` (OCR errorcodes.py).
const LIMIT_MESSAGE: &str = "请求的次数超过了频率限制。";

impl Refusal {
    pub fn code(&self) -> &str {
        match self {
            Refusal::UnsupportedProtocol => "UnsupportedProtocol",
            Refusal::MissingAction => "MissingParameter",
            Refusal::UnknownService(_) => "InvalidAction",
            Refusal::TooLarge { .. } => "RequestSizeLimitExceeded",
            Refusal::BadRequestBody(_) => "InvalidParameter",
            Refusal::Auth(e) => e.code(),
            Refusal::AccountState { code, .. } => code,
            Refusal::OverLimit { .. } => "RequestLimitExceeded",
            Refusal::UpstreamUnavailable(_) | Refusal::Draining | Refusal::MeteringUnavailable => {
                "ServiceUnavailable"
            }
            Refusal::UpstreamTimeout(_) | Refusal::UpstreamFailed(_) | Refusal::Internal(_) => {
                "InternalError"
            }
        }
    }

    /// The message of the answer (for logs; the answer itself streams it, see [`Message`]).
    pub fn message(&self) -> String {
        Message(self).to_string()
    }

    /// The vendor-format answer, with rate-limit headers for limit errors.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::Full(Full::new(error_body(
            self.code(),
            &Message(&self),
            request_id,
        ))));
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
        // Room for every header a refusal carries (hyper adds two more): one allocation.
        h.reserve(8);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(REQUEST_ID.clone(), v);
        }
        if let Refusal::OverLimit {
            group,
            limit,
            retry_after,
        } = &self
        {
            // RateLimit header fields (draft-ietf-httpapi-ratelimit-headers): the policy and
            // the current state of the quota the call hit. Under overload this is the most
            // frequent answer, so the values are assembled from slices, without `format!`.
            let retry_secs = retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
            let mut n = itoa::Buffer::new();
            let quoted = || {
                let mut v = Vec::with_capacity(group.len() + 24);
                v.push(b'"');
                v.extend_from_slice(group.as_bytes());
                v.push(b'"');
                v
            };
            // A rate is per one-second window; a concurrency limit has no window.
            let (quota, window) = match *limit {
                Limit::Rate(q) => (q, true),
                Limit::Concurrency(c) => (c, false),
            };
            let mut policy = quoted();
            policy.extend_from_slice(b";q=");
            policy.extend_from_slice(n.format(quota).as_bytes());
            if window {
                policy.extend_from_slice(b";w=1");
            }
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(policy)) {
                h.insert(RATELIMIT_POLICY.clone(), v);
            }
            let mut state = quoted();
            state.extend_from_slice(b";r=0;t=");
            state.extend_from_slice(n.format(retry_secs).as_bytes());
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(state)) {
                h.insert(RATELIMIT.clone(), v);
            }
            h.insert(RETRY_AFTER, HeaderValue::from(retry_secs));
        }
        resp
    }
}

/// The message of a refusal, written piece by piece where it is written to (the answer's
/// JSON, escaped on the way; a log line), never formatted into a `String` first.
pub struct Message<'a>(pub &'a Refusal);

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Refusal::UnsupportedProtocol => f.write_str(
                "HTTP(S) 请求协议错误，只支持 GET 和 POST 请求。 (only GET and POST are supported)",
            ),
            Refusal::MissingAction => {
                f.write_str("The request is missing the required parameter `X-TC-Action`.")
            }
            Refusal::UnknownService(s) => write!(
                f,
                "The service `{s}` of the credential scope is not served by this gateway."
            ),
            Refusal::TooLarge { limit } => {
                write!(f, "The request body is larger than {limit} bytes.")
            }
            Refusal::BadRequestBody(e) => write!(f, "The request body could not be read: {e}"),
            Refusal::Auth(e) => fmt::Display::fmt(e, f),
            Refusal::AccountState { message, .. } => f.write_str(message),
            Refusal::OverLimit { group, limit, .. } => {
                let mut n = itoa::Buffer::new();
                f.write_str(LIMIT_MESSAGE)?;
                f.write_str(" (group ")?;
                f.write_str(group)?;
                f.write_str(": ")?;
                match limit {
                    Limit::Rate(q) => {
                        f.write_str(n.format(*q))?;
                        f.write_str(" QPS)")
                    }
                    Limit::Concurrency(c) => {
                        f.write_str(n.format(*c))?;
                        f.write_str(" calls in flight)")
                    }
                }
            }
            Refusal::UpstreamUnavailable(e) => {
                write!(f, "The recognition backend is unavailable: {e}")
            }
            Refusal::UpstreamTimeout(d) => write!(
                f,
                "The recognition backend did not answer within {} ms.",
                d.as_millis()
            ),
            Refusal::UpstreamFailed(e) => write!(f, "The recognition backend failed: {e}"),
            Refusal::Draining => {
                f.write_str("The gateway is shutting down; retry on another instance.")
            }
            Refusal::MeteringUnavailable => f.write_str(
                "The gateway cannot record usage right now (metering backlog at its bound); retry later or on another instance.",
            ),
            Refusal::Internal(e) => write!(f, "Internal error: {e}"),
        }
    }
}

/// `{"Response":{"Error":{"Code":code,"Message":message},"RequestId":request_id}}`, every
/// string escaped as JSON.
pub fn error_body(code: &str, message: &dyn fmt::Display, request_id: &str) -> Bytes {
    use serde::Serializer as _;
    let mut buf = Vec::with_capacity(160 + code.len() + request_id.len());
    buf.extend_from_slice(br#"{"Response":{"Error":{"Code":"#);
    let mut json = serde_json::Serializer::new(&mut buf);
    json.serialize_str(code)
        .expect("writing to a Vec cannot fail");
    json.into_inner().extend_from_slice(br#","Message":"#);
    let mut json = serde_json::Serializer::new(&mut buf);
    json.collect_str(message)
        .expect("writing to a Vec cannot fail");
    json.into_inner().extend_from_slice(br#"},"RequestId":"#);
    let mut json = serde_json::Serializer::new(&mut buf);
    json.serialize_str(request_id)
        .expect("writing to a Vec cannot fail");
    buf.extend_from_slice(b"}}");
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn limit_errors_have_the_sdk_shape_and_headers() {
        let r = Refusal::OverLimit {
            group: "ocr.GeneralBasicOCR".into(),
            limit: Limit::Rate(20),
            retry_after: Some(Duration::from_millis(50)),
        }
        .into_response("req-1");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(
            r.headers()["ratelimit-policy"],
            "\"ocr.GeneralBasicOCR\";q=20;w=1"
        );
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["Response"]["Error"]["Code"], "RequestLimitExceeded");
        assert_eq!(v["Response"]["RequestId"], "req-1");
        assert!(
            v["Response"]["Error"]["Message"]
                .as_str()
                .unwrap()
                .starts_with(LIMIT_MESSAGE)
        );
    }

    #[test]
    fn messages_are_escaped() {
        let b = error_body("InternalError", &"a \"quoted\"\nline", "r");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["Response"]["Error"]["Message"], "a \"quoted\"\nline");
    }

    /// The JSON body, the message and the headers of each kind of limit refusal, exactly.
    #[tokio::test]
    async fn limit_refusals_render_exactly() {
        let check = |limit: Limit, retry_ms: Option<u64>, body: &str, policy: &str, state: &str| {
            let r = Refusal::OverLimit {
                group: "bda.segment".into(),
                limit,
                retry_after: retry_ms.map(Duration::from_millis),
            };
            let message = r.message();
            let resp = r.into_response("r-1");
            assert_eq!(resp.headers()["ratelimit-policy"], policy);
            assert_eq!(resp.headers()["ratelimit"], state);
            assert_eq!(resp.headers()["x-tollgate-request-id"], "r-1");
            (message, resp, body.to_owned())
        };
        for (message, resp, expected) in [
            check(
                Limit::Rate(20),
                Some(2_500),
                "请求的次数超过了频率限制。 (group bda.segment: 20 QPS)",
                "\"bda.segment\";q=20;w=1",
                "\"bda.segment\";r=0;t=3",
            ),
            check(
                Limit::Concurrency(10),
                None,
                "请求的次数超过了频率限制。 (group bda.segment: 10 calls in flight)",
                "\"bda.segment\";q=10",
                "\"bda.segment\";r=0;t=1",
            ),
        ] {
            assert_eq!(message, expected);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                std::str::from_utf8(&body).unwrap(),
                format!(
                    r#"{{"Response":{{"Error":{{"Code":"RequestLimitExceeded","Message":"{expected}"}},"RequestId":"r-1"}}}}"#
                )
            );
        }
    }
}
