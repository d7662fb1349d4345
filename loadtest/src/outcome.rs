//! What one answer means for the report.
//!
//! The gateway answers every call with HTTP 200 and the vendor's JSON shape. The body is read
//! through Tollgate's own streaming scanner (`tollgate_gateway::billing::Scanner`), which extracts
//! `Response.Error.Code` without buffering or allocating.
//!
//! - **admitted**: a success, or any error code that came from the backend (the call passed
//!   admission and was forwarded);
//! - **rejected**: `RequestLimitExceeded`, the gateway's over-limit answer;
//! - **refused**: a code the gateway answers with *before* admission (authentication, account
//!   state, protocol): neither admitted nor limited, listed under errors;
//! - **error**: anything else: `ServiceUnavailable` / `InternalError` (the backend could not
//!   be reached or failed), a non-200 status, a body that is not API 3.0 JSON, or a transport
//!   failure (connect, reset, timeout).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tollgate_gateway::billing::{Scanned, Scanner};

/// The code of the gateway's over-limit answer.
pub const LIMIT_CODE: &str = "RequestLimitExceeded";

/// The HTTP client the generator uses (pooled, keep-alive, HTTP/1.1).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The report's classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Admitted,
    Rejected,
    Error,
}

/// One answer, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `Response` without `Error`.
    Success,
    /// Admitted and forwarded; the backend answered with this error code.
    BackendError(String),
    /// `RequestLimitExceeded`.
    Limited,
    /// The gateway refused the call before admission with this code.
    Refused(String),
    /// `ServiceUnavailable` or `InternalError`: the backend could not be reached or failed.
    UpstreamError(String),
    /// HTTP status other than 200.
    Status(u16),
    /// HTTP 200 whose body is not an API 3.0 answer.
    Malformed,
    /// No answer: connect failure, reset, timeout.
    Transport(TransportError),
}

/// Why no answer arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportError {
    Connect,
    Timeout,
    /// Any other failure while sending or reading (reset, closed mid-body).
    Io,
}

impl TransportError {
    pub fn label(self) -> &'static str {
        match self {
            TransportError::Connect => "transport: connect",
            TransportError::Timeout => "transport: timeout",
            TransportError::Io => "transport: io",
        }
    }
}

impl Outcome {
    pub fn class(&self) -> Class {
        match self {
            Outcome::Success | Outcome::BackendError(_) => Class::Admitted,
            Outcome::Limited => Class::Rejected,
            _ => Class::Error,
        }
    }

    /// The key under which a non-success answer is counted, e.g. `AuthFailure.SignatureFailure`
    /// or `http 502`.
    pub fn error_key(&self) -> Option<String> {
        match self {
            Outcome::Success | Outcome::Limited => None,
            Outcome::BackendError(c) | Outcome::Refused(c) | Outcome::UpstreamError(c) => {
                Some(c.clone())
            }
            Outcome::Status(s) => Some(format!("http {s}")),
            Outcome::Malformed => Some("malformed answer".into()),
            Outcome::Transport(t) => Some(t.label().into()),
        }
    }
}

/// Classifies a complete answer. `refusal_codes` are the codes the gateway answers with itself
/// before admission.
pub fn classify(status: StatusCode, scanned: Scanned, refusal_codes: &[String]) -> Outcome {
    if status != StatusCode::OK {
        return Outcome::Status(status.as_u16());
    }
    match scanned {
        Scanned::Success { .. } => Outcome::Success,
        Scanned::Malformed => Outcome::Malformed,
        Scanned::Error { code } => {
            let code = code.as_str();
            if code == LIMIT_CODE {
                Outcome::Limited
            } else if code == "ServiceUnavailable" || code == "InternalError" {
                Outcome::UpstreamError(code.to_owned())
            } else if refusal_codes.iter().any(|c| c == code) {
                Outcome::Refused(code.to_owned())
            } else {
                Outcome::BackendError(code.to_owned())
            }
        }
    }
}

/// Sends `req` and classifies the answer, reading the body as it streams in. Gives up after
/// `timeout`.
pub async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
    refusal_codes: &[String],
) -> Outcome {
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                TransportError::Connect
            } else {
                TransportError::Io
            }
        })?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut scanner = Scanner::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| TransportError::Io)?;
            if let Some(data) = frame.data_ref() {
                scanner.feed(data);
            }
        }
        Ok::<_, TransportError>((status, scanner.finish()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Outcome::Transport(TransportError::Timeout),
        Ok(Err(e)) => Outcome::Transport(e),
        Ok(Ok((status, scanned))) => classify(status, scanned, refusal_codes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(body: &str) -> Scanned {
        let mut s = Scanner::new();
        s.feed(body.as_bytes());
        s.finish()
    }

    fn err(code: &str) -> String {
        format!(r#"{{"Response":{{"Error":{{"Code":"{code}","Message":"m"}},"RequestId":"r"}}}}"#)
    }

    #[test]
    fn classifies_answers() {
        let refusals = vec![
            "AuthFailure.SignatureFailure".to_string(),
            "ResourceUnavailable.InArrears".to_string(),
        ];
        let c = |status: u16, body: &str| {
            classify(StatusCode::from_u16(status).unwrap(), scan(body), &refusals)
        };
        let ok = r#"{"Response":{"TextDetections":[],"RequestId":"r"}}"#;
        assert_eq!(c(200, ok), Outcome::Success);
        assert_eq!(c(200, &err(LIMIT_CODE)), Outcome::Limited);
        assert_eq!(
            c(200, &err("FailedOperation.ImageDecodeFailed")),
            Outcome::BackendError("FailedOperation.ImageDecodeFailed".into())
        );
        assert_eq!(
            c(200, &err("ResourceUnavailable.InArrears")),
            Outcome::Refused("ResourceUnavailable.InArrears".into())
        );
        assert_eq!(
            c(200, &err("ServiceUnavailable")),
            Outcome::UpstreamError("ServiceUnavailable".into())
        );
        assert_eq!(c(502, ok), Outcome::Status(502));
        assert_eq!(c(200, "<html>"), Outcome::Malformed);

        assert_eq!(Outcome::Success.class(), Class::Admitted);
        assert_eq!(Outcome::BackendError("x".into()).class(), Class::Admitted);
        assert_eq!(Outcome::Limited.class(), Class::Rejected);
        assert_eq!(Outcome::Refused("x".into()).class(), Class::Error);
        assert_eq!(
            Outcome::Transport(TransportError::Timeout)
                .error_key()
                .as_deref(),
            Some("transport: timeout")
        );
        assert_eq!(
            Outcome::Status(503).error_key().as_deref(),
            Some("http 503")
        );
    }
}
