//! Building signed requests fast.
//!
//! A TC3 signature covers the method, `content-type`, `host`, the body and the timestamp, and
//! the timestamp has one-second resolution. So for a stream whose body and headers are fixed,
//! every call within the same second carries the same `Authorization`: [`SignCache`] signs
//! once per second and hands out cheap clones (`HeaderValue` is reference-counted), and
//! [`Template::build`] assembles the rest from pre-parsed parts.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use tollgate_core::tc3::Signer;

use crate::plan::StreamPlan;

const CONTENT_TYPE_JSON: &str = "application/json";

/// The per-second signed headers of one stream.
#[derive(Clone)]
pub struct Signed {
    pub unix_seconds: i64,
    pub timestamp: HeaderValue,
    pub authorization: HeaderValue,
}

/// Everything about a stream's request except the per-second signature.
pub struct Template {
    uri: Uri,
    host: HeaderValue,
    action: HeaderValue,
    version: HeaderValue,
    body: Bytes,
    extra: Vec<(HeaderName, HeaderValue)>,
    secret_id: String,
    secret_key: String,
    service: String,
    host_text: String,
}

impl Template {
    /// The template of `stream` sent to the gateway at `target` (`host:port`).
    pub fn new(stream: &StreamPlan, target: &str) -> anyhow::Result<Template> {
        let uri: Uri = format!("http://{target}/")
            .parse()
            .with_context(|| format!("--target {target:?} is not a valid host:port"))?;
        let value = |what: &str, v: &str| {
            HeaderValue::from_str(v).with_context(|| {
                format!(
                    "stream {}: {what} {v:?} is not a valid header value",
                    stream.name
                )
            })
        };
        Ok(Template {
            uri,
            host: value("target", target)?,
            action: value("action", &stream.action)?,
            version: value("version", &stream.version)?,
            body: stream.body.clone(),
            extra: stream.headers.clone(),
            secret_id: stream.secret_id.clone(),
            secret_key: stream.secret_key.clone(),
            service: stream.service.clone(),
            host_text: target.to_owned(),
        })
    }

    /// Signs the template's call for the Unix second `unix_seconds`, as the official SDK does
    /// (and as the gateway's own tests do): `content-type;host` signed, body hashed.
    pub fn sign(&self, unix_seconds: i64) -> Signed {
        let authorization = Signer {
            secret_id: &self.secret_id,
            secret_key: &self.secret_key,
            service: &self.service,
            host: &self.host_text,
            content_type: CONTENT_TYPE_JSON,
            method: "POST",
            query: b"",
            payload: &self.body,
            timestamp: unix_seconds,
        }
        .authorization();
        Signed {
            unix_seconds,
            timestamp: HeaderValue::from(unix_seconds),
            // The Authorization value is ASCII by construction (hex, ids and dates), so this
            // cannot fail for the secret ids credentials.toml accepts; an odd one still yields
            // a header the gateway will refuse, which the report shows.
            authorization: HeaderValue::from_str(&authorization)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        }
    }

    /// The request, with `signed`'s timestamp and signature.
    pub fn build(&self, signed: &Signed) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        let h = req.headers_mut();
        h.reserve(6 + self.extra.len());
        h.insert(HOST, self.host.clone());
        h.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_JSON));
        h.insert("x-tc-action", self.action.clone());
        h.insert("x-tc-version", self.version.clone());
        h.insert("x-tc-timestamp", signed.timestamp.clone());
        h.insert(hyper::header::AUTHORIZATION, signed.authorization.clone());
        for (k, v) in &self.extra {
            h.insert(k.clone(), v.clone());
        }
        req
    }
}

/// The current signature of one stream for one sender (a scheduler or a worker): re-signed
/// when the wall-clock second changes.
pub struct SignCache {
    current: Option<Signed>,
}

impl SignCache {
    pub fn new() -> SignCache {
        SignCache { current: None }
    }

    /// The signature for the current second.
    pub fn get(&mut self, template: &Template) -> &Signed {
        self.get_at(template, unix_seconds())
    }

    /// The signature for the Unix second `now`.
    pub fn get_at(&mut self, template: &Template, now: i64) -> &Signed {
        match self.current {
            Some(ref s) if s.unix_seconds == now => {}
            _ => self.current = Some(template.sign(now)),
        }
        self.current.as_ref().expect("set just above")
    }
}

impl Default for SignCache {
    fn default() -> Self {
        Self::new()
    }
}

/// The wall clock in Unix seconds (what `X-TC-Timestamp` carries).
pub fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Load;
    use tollgate_core::tc3::{SignedRequest, parse_authorization, signing_key, verify};

    fn stream() -> StreamPlan {
        StreamPlan {
            name: "s".into(),
            load: Load::Open { rate: 1.0 },
            secret_id: "AKIDx".into(),
            secret_key: "key".into(),
            service: "ocr".into(),
            action: "GeneralBasicOCR".into(),
            version: "2018-11-19".into(),
            body: Bytes::from_static(br#"{"ImageUrl":"https://example.com/a.jpg"}"#),
            headers: vec![(
                HeaderName::from_static("x-stub-latency-ms"),
                HeaderValue::from_static("5"),
            )],
            group: 0,
        }
    }

    #[test]
    fn builds_a_request_the_gateway_verifies() {
        let t = Template::new(&stream(), "127.0.0.1:18080").unwrap();
        let signed = t.sign(1_795_347_128);
        let req = t.build(&signed);
        let h = req.headers();
        assert_eq!(req.uri(), "http://127.0.0.1:18080/");
        assert_eq!(h["host"], "127.0.0.1:18080");
        assert_eq!(h["x-tc-action"], "GeneralBasicOCR");
        assert_eq!(h["x-tc-timestamp"], "1795347128");
        assert_eq!(h["x-stub-latency-ms"], "5");
        let auth = parse_authorization(h["authorization"].to_str().unwrap()).unwrap();
        assert_eq!(
            (auth.secret_id, auth.date, auth.service),
            ("AKIDx", "2026-11-22", "ocr")
        );
        let key = signing_key(b"key", auth.date, auth.service);
        let body = br#"{"ImageUrl":"https://example.com/a.jpg"}"#;
        let signed_req = SignedRequest {
            method: "POST",
            query: b"",
            header: |n: &str| match n {
                "host" => Some(&b"127.0.0.1:18080"[..]),
                "content-type" => Some(&b"application/json"[..]),
                _ => None,
            },
            signed_headers: auth.signed_headers,
            payload: Some(&body[..]),
            timestamp: "1795347128",
            date: auth.date,
            service: auth.service,
        };
        assert!(verify(&key, &signed_req, auth.signature).unwrap());
    }

    #[test]
    fn the_cache_signs_once_per_second() {
        let t = Template::new(&stream(), "127.0.0.1:1").unwrap();
        let mut c = SignCache::new();
        let a = c.get_at(&t, 1_795_347_128).authorization.clone();
        let b = c.get_at(&t, 1_795_347_128).authorization.clone();
        assert_eq!(a, b);
        let next = c.get_at(&t, 1_795_347_129);
        assert_eq!(next.timestamp, "1795347129");
        assert_ne!(next.authorization, a);
        assert!(Template::new(&stream(), "not a host:port/x y").is_err());
    }
}
