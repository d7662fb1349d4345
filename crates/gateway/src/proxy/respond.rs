//! The one place where every refusal becomes a response on the wire.
//!
//! The official SDK recognises an error only as HTTP 200 with `Content-Type: application/json`
//! *exactly* (with `; charset=utf-8` it silently returns an empty result) and a body
//! `{"Response":{"Error":{"Code":…,"Message":…},"RequestId":…}}` (docs/api.md, "Answers").
//! Every error the gateway makes itself goes through [`Refusal::into_response`], and every
//! refusal's wording is here.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::body::ProxyBody;
use super::names::{RATELIMIT, RATELIMIT_POLICY, REQUEST_ID};
use crate::auth::AuthError;
use tollgate_core::entitlement::{Limit, StateRefusal};

/// Why the gateway answered a call itself.
#[derive(Debug)]
pub enum Refusal {
    /// Neither POST nor GET.
    UnsupportedProtocol,
    /// `CONNECT`: refused like any other method, but not with a 2xx status (which would
    /// open a tunnel).
    Connect,
    /// Not an API 3.0 target: only `/` (and `/?query` for GET) is one.
    NotApiTarget,
    /// A field that must appear once appeared twice, or was named by `Connection` (it
    /// would be authenticated here and then dropped on the way).
    AmbiguousHeader {
        name: &'static str,
        named_by_connection: bool,
    },
    /// No `X-TC-Action`.
    MissingAction,
    /// Not an action of the service: malformed, or a case variant of a listed one.
    InvalidAction {
        /// The listed action it is a case variant of.
        listed: Option<Arc<str>>,
    },
    /// The credential scope names a service this gateway does not serve.
    UnknownService(String),
    /// The body is larger than `proxy.max_request_bytes`.
    TooLarge {
        limit: usize,
    },
    /// The body did not arrive in time.
    BodyTimeout {
        idle: bool,
        after: Duration,
    },
    /// The gateway holds `proxy.max_buffered_request_bytes` of request bodies already.
    BufferFull,
    /// The request body could not be read (the client went away or sent garbage framing).
    BadRequestBody(String),
    Auth(AuthError),
    /// The account's state refuses the call; the code comes from the catalog's
    /// `refusal_codes` of the service.
    AccountState {
        code: Arc<str>,
        state: StateRefusal,
        service: Arc<str>,
        /// The billing item whose packs are used up (`PacksExhausted`).
        item: Option<Arc<str>>,
    },
    /// Over the group's limit.
    OverLimit {
        group: Arc<str>,
        limit: Limit,
        retry_after: Option<Duration>,
    },
    /// The backend could not be reached (the detail is logged, not told to clients).
    UpstreamUnavailable,
    /// The backend sent no response head in time.
    UpstreamTimeout(Duration),
    /// The backend connection failed mid-call.
    UpstreamFailed,
    /// The gateway stopped (drain timeout) before the backend answered.
    ShutDown,
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
            Refusal::UnsupportedProtocol | Refusal::Connect => "UnsupportedProtocol",
            Refusal::NotApiTarget | Refusal::BodyTimeout { .. } | Refusal::BadRequestBody(_) => {
                "InvalidParameter"
            }
            Refusal::AmbiguousHeader { name, .. } if *name == "authorization" => {
                "AuthFailure.InvalidAuthorization"
            }
            Refusal::AmbiguousHeader { .. } => "InvalidParameter",
            Refusal::MissingAction => "MissingParameter",
            Refusal::InvalidAction { .. } | Refusal::UnknownService(_) => "InvalidAction",
            Refusal::TooLarge { .. } => "RequestSizeLimitExceeded",
            Refusal::Auth(e) => e.code(),
            Refusal::AccountState { code, .. } => code,
            Refusal::OverLimit { .. } => "RequestLimitExceeded",
            Refusal::UpstreamUnavailable
            | Refusal::ShutDown
            | Refusal::BufferFull
            | Refusal::MeteringUnavailable => "ServiceUnavailable",
            Refusal::UpstreamTimeout(_) | Refusal::UpstreamFailed | Refusal::Internal(_) => {
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
        let mut resp = Response::new(ProxyBody::Full(Full::new(self.body(request_id))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        // Room for every header a refusal carries (hyper adds two more): one allocation.
        h.reserve(8);
        self.fields(request_id, |name, value| {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                h.append(name.clone(), v);
            }
        });
        resp
    }

    /// The answer's status: HTTP 200 always (the SDK reads errors only from a 200), except for
    /// CONNECT, where a 2xx would mean a tunnel.
    pub fn status(&self) -> StatusCode {
        if matches!(self, Refusal::Connect) {
            StatusCode::METHOD_NOT_ALLOWED
        } else {
            StatusCode::OK
        }
    }

    /// The answer's body: the vendor's error JSON.
    pub fn body(&self, request_id: &str) -> Bytes {
        error_body(self.code(), &Message(self), request_id)
    }

    /// The answer's fields (framing and `Date` aside), to `each`: the content type, the
    /// request id, and for limit errors the rate-limit fields. Both codecs write these: the
    /// own HTTP/1.1 codec straight to the wire, [`Refusal::into_response`] into a header map.
    pub fn fields(&self, request_id: &str, mut each: impl FnMut(&HeaderName, &[u8])) {
        each(&CONTENT_TYPE, b"application/json");
        each(&REQUEST_ID, request_id.as_bytes());
        if let Refusal::OverLimit {
            group,
            limit,
            retry_after,
        } = self
        {
            // RateLimit header fields (draft-ietf-httpapi-ratelimit-headers): the policy and
            // the current state of the quota the call hit. Under overload this is the most
            // frequent answer, so the values are assembled on the stack, without `format!`.
            let retry_secs = retry_after.map_or(1, |d| d.as_secs_f64().ceil().max(1.0) as u64);
            let mut n = itoa::Buffer::new();
            // A rate is per one-second window; a concurrency limit has no window.
            let (quota, window) = match *limit {
                Limit::Rate(q) => (q, true),
                Limit::Concurrency(c) => (c, false),
            };
            let mut value = Vec::with_capacity(group.len() + 32);
            value.push(b'"');
            value.extend_from_slice(group.as_bytes());
            value.push(b'"');
            let quoted = value.len();
            value.extend_from_slice(b";q=");
            value.extend_from_slice(n.format(quota).as_bytes());
            if window {
                value.extend_from_slice(b";w=1");
            }
            each(&RATELIMIT_POLICY, &value);
            value.truncate(quoted);
            value.extend_from_slice(b";r=0;t=");
            value.extend_from_slice(n.format(retry_secs).as_bytes());
            each(&RATELIMIT, &value);
            each(&RETRY_AFTER, n.format(retry_secs).as_bytes());
        }
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
            Refusal::Connect => f.write_str(
                "HTTP(S) 请求协议错误，只支持 GET 和 POST 请求。 (CONNECT is not served: this is not a forward proxy)",
            ),
            Refusal::NotApiTarget => f.write_str(
                "API 3.0 calls are `POST /` or `GET /?<parameters>`; this request target is not served.",
            ),
            Refusal::AmbiguousHeader {
                name,
                named_by_connection: false,
            } => write!(f, "The header `{name}` must appear once."),
            Refusal::AmbiguousHeader {
                name,
                named_by_connection: true,
            } => write!(
                f,
                "The header `{name}` is part of the call and cannot be named by `Connection`."
            ),
            Refusal::MissingAction => {
                f.write_str("The request is missing the required parameter `X-TC-Action`.")
            }
            Refusal::InvalidAction { listed: Some(a) } => write!(
                f,
                "The action is not valid; actions are case-sensitive (did you mean `{a}`?)."
            ),
            Refusal::InvalidAction { listed: None } => f.write_str(
                "The action is not valid: an action is a letter followed by letters and digits.",
            ),
            Refusal::UnknownService(s) => write!(
                f,
                "The service `{s}` of the credential scope is not served by this gateway."
            ),
            Refusal::TooLarge { limit } => {
                write!(f, "The request body is larger than {limit} bytes.")
            }
            Refusal::BodyTimeout { idle: true, after } => write!(
                f,
                "The request body stopped arriving: nothing for {} ms.",
                after.as_millis()
            ),
            Refusal::BodyTimeout { idle: false, after } => write!(
                f,
                "The request body did not arrive whole within {} ms.",
                after.as_millis()
            ),
            Refusal::BufferFull => f.write_str(
                "The gateway is holding as many request bodies as it may; retry shortly or on another instance.",
            ),
            Refusal::BadRequestBody(e) => write!(f, "The request body could not be read: {e}"),
            Refusal::Auth(e) => fmt::Display::fmt(e, f),
            Refusal::AccountState {
                state: StateRefusal::InArrears,
                ..
            } => f.write_str("The account is suspended for arrears."),
            Refusal::AccountState {
                state: StateRefusal::NotActivated,
                service,
                ..
            } => write!(
                f,
                "The service {service} is not activated for this account."
            ),
            Refusal::AccountState {
                state: StateRefusal::PacksExhausted(_),
                item,
                ..
            } => write!(
                f,
                "The resource packs of {} are used up and postpaid is not enabled.",
                item.as_deref().unwrap_or("this billing item")
            ),
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
            Refusal::UpstreamUnavailable => {
                f.write_str("The recognition backend is unavailable; retry later.")
            }
            Refusal::UpstreamTimeout(d) => write!(
                f,
                "The recognition backend did not answer within {} ms.",
                d.as_millis()
            ),
            Refusal::UpstreamFailed => {
                f.write_str("The recognition backend failed before its answer was complete.")
            }
            Refusal::ShutDown => f.write_str(
                "The gateway shut down before the backend answered; the call was not billed. Retry on another instance.",
            ),
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
    use fmt::Write as _;
    let mut buf = Vec::with_capacity(160 + code.len() + request_id.len());
    buf.extend_from_slice(br#"{"Response":{"Error":{"Code":""#);
    json_str_contents(&mut buf, code);
    buf.extend_from_slice(br#"","Message":""#);
    write!(JsonContents(&mut buf), "{message}").expect("writing to a Vec cannot fail");
    buf.extend_from_slice(br#""},"RequestId":""#);
    json_str_contents(&mut buf, request_id);
    buf.extend_from_slice(b"\"}}");
    Bytes::from(buf)
}

/// Writes what goes between the quotes of a JSON string holding `s` (RFC 8259 section 7).
/// Nearly every string here needs no escape: one check over its bytes, folded without an
/// early exit, then one copy (under overload the limit refusal is the most frequent answer,
/// and a byte-by-byte escaper was a visible share of it).
fn json_str_contents(buf: &mut Vec<u8>, s: &str) {
    let clean = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if clean {
        buf.extend_from_slice(s.as_bytes());
        return;
    }
    for c in s.chars() {
        match c {
            '"' => buf.extend_from_slice(b"\\\""),
            '\\' => buf.extend_from_slice(b"\\\\"),
            '\n' => buf.extend_from_slice(b"\\n"),
            '\r' => buf.extend_from_slice(b"\\r"),
            '\t' => buf.extend_from_slice(b"\\t"),
            '\u{8}' => buf.extend_from_slice(b"\\b"),
            '\u{c}' => buf.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let n = c as usize;
                buf.extend_from_slice(b"\\u00");
                buf.push(HEX[n >> 4]);
                buf.push(HEX[n & 0xf]);
            }
            c => {
                let mut utf8 = [0u8; 4];
                buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

/// A `fmt::Write` into the contents of a JSON string.
struct JsonContents<'a>(&'a mut Vec<u8>);

impl fmt::Write for JsonContents<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        json_str_contents(self.0, s);
        Ok(())
    }
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

    proptest::proptest! {
        /// The JSON string writer writes what serde_json writes, for any string.
        #[test]
        fn json_strings_are_written_as_serde_json_writes_them(s in "(\\PC|[\"\\\\\u{0}-\u{1f}\u{7f}])*") {
            let mut buf = Vec::new();
            json_str_contents(&mut buf, &s);
            let expected = serde_json::to_string(&s).unwrap();
            proptest::prop_assert_eq!(
                std::str::from_utf8(&buf).unwrap(),
                &expected[1..expected.len() - 1]
            );
        }
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
