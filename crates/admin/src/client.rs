//! The admin API's client, as the CLI (and the tests) use it.

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A client of one admin API with one token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// An answer: its status, whether it replays a stored one, and its JSON.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub replayed: bool,
    pub body: Value,
}

impl Answer {
    /// The answer's body if it is a success, else an error carrying the API's message.
    pub fn ok(self) -> anyhow::Result<Value> {
        if self.status.is_success() {
            return Ok(self.body);
        }
        let e = &self.body["error"];
        let key = e["key"]
            .as_str()
            .map(|k| format!(" ({k})"))
            .unwrap_or_default();
        anyhow::bail!(
            "{} {}{key}: {}",
            self.status.as_u16(),
            e["code"].as_str().unwrap_or("Error"),
            e["message"].as_str().unwrap_or("(no message)")
        )
    }
}

impl Client {
    /// `base` like `http://127.0.0.1:19100`.
    pub fn new(base: &str, token: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(Method::GET, path, None, None).await
    }

    /// A write: `key` is its idempotency key.
    pub async fn write(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        key: &str,
    ) -> anyhow::Result<Answer> {
        self.send(method, path, Some(body.to_string()), Some(key))
            .await
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        key: Option<&str>,
    ) -> anyhow::Result<Answer> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if !self.token.is_empty() {
            req = req.header("authorization", format!("Bearer {}", self.token));
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the admin API at {}: {e}", self.base))?;
        let status = resp.status();
        let replayed = resp.headers().contains_key("idempotent-replayed");
        let bytes = resp.into_body().collect().await?.to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            replayed,
            body,
        })
    }
}
