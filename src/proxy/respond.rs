//! The one place where every refusal becomes a response on the wire.
//!
//! The official SDK recognises an error only as HTTP 200 with `Content-Type: application/json`
//! *exactly* (with `; charset=utf-8` it silently returns an empty result) and a body
//! `{"Response":{"Error":{"Code":…,"Message":…},"RequestId":…}}` (TC_API.md section 2). Every
//! error the gateway makes itself goes through [`Refusal::into_response`].

use std::io::Write as _;
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

    pub fn message(&self) -> String {
        match self {
            Refusal::UnsupportedProtocol => {
                "HTTP(S) 请求协议错误，只支持 GET 和 POST 请求。 (only GET and POST are supported)"
                    .into()
            }
            Refusal::MissingAction => {
                "The request is missing the required parameter `X-TC-Action`.".into()
            }
            Refusal::UnknownService(s) => {
                format!("The service `{s}` of the credential scope is not served by this gateway.")
            }
            Refusal::TooLarge { limit } => {
                format!("The request body is larger than {limit} bytes.")
            }
            Refusal::BadRequestBody(e) => format!("The request body could not be read: {e}"),
            Refusal::Auth(e) => e.to_string(),
            Refusal::AccountState { message, .. } => message.clone(),
            Refusal::OverLimit { group, limit, .. } => match limit {
                Limit::Rate(q) => format!("{LIMIT_MESSAGE} (group {group}: {q} QPS)"),
                Limit::Concurrency(n) => {
                    format!("{LIMIT_MESSAGE} (group {group}: {n} calls in flight)")
                }
            },
            Refusal::UpstreamUnavailable(e) => {
                format!("The recognition backend is unavailable: {e}")
            }
            Refusal::UpstreamTimeout(d) => format!(
                "The recognition backend did not answer within {} ms.",
                d.as_millis()
            ),
            Refusal::UpstreamFailed(e) => format!("The recognition backend failed: {e}"),
            Refusal::Draining => "The gateway is shutting down; retry on another instance.".into(),
            Refusal::MeteringUnavailable => {
                "The gateway cannot record usage right now (metering backlog at its bound); retry later or on another instance.".into()
            }
            Refusal::Internal(e) => format!("Internal error: {e}"),
        }
    }

    /// The vendor-format answer, with rate-limit headers for limit errors.
    pub fn into_response(self, request_id: &str) -> Response<ProxyBody> {
        let mut resp = Response::new(ProxyBody::Full(Full::new(error_body(
            self.code(),
            &self.message(),
            request_id,
        ))));
        *resp.status_mut() = StatusCode::OK;
        let h = resp.headers_mut();
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
            // the current state of the quota the call hit.
            let retry_secs = retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
            let mut policy = Vec::with_capacity(group.len() + 24);
            let _ = match limit {
                Limit::Rate(q) => write!(policy, "\"{group}\";q={q};w=1"),
                Limit::Concurrency(n) => write!(policy, "\"{group}\";q={n}"),
            };
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(policy)) {
                h.insert(RATELIMIT_POLICY.clone(), v);
            }
            let mut state = Vec::with_capacity(group.len() + 16);
            let _ = write!(state, "\"{group}\";r=0;t={retry_secs}");
            if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(state)) {
                h.insert(RATELIMIT.clone(), v);
            }
            h.insert(RETRY_AFTER, HeaderValue::from(retry_secs));
        }
        resp
    }
}

/// `{"Response":{"Error":{"Code":code,"Message":message},"RequestId":request_id}}`.
pub fn error_body(code: &str, message: &str, request_id: &str) -> Bytes {
    let mut buf = Vec::with_capacity(96 + code.len() + message.len() + request_id.len());
    buf.extend_from_slice(br#"{"Response":{"Error":{"Code":"#);
    serde_json::to_writer(&mut buf, code).expect("writing to a Vec cannot fail");
    buf.extend_from_slice(br#","Message":"#);
    serde_json::to_writer(&mut buf, message).expect("writing to a Vec cannot fail");
    buf.extend_from_slice(br#"},"RequestId":"#);
    serde_json::to_writer(&mut buf, request_id).expect("writing to a Vec cannot fail");
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
        let b = error_body("InternalError", "a \"quoted\"\nline", "r");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["Response"]["Error"]["Message"], "a \"quoted\"\nline");
    }
}
