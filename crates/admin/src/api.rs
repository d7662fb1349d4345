//! The admin API's routes.
//!
//! Every request needs `Authorization: Bearer <token>` (401 without a valid one); writes need
//! a token with the `write` scope (403 with a read token) and an `Idempotency-Key` header: the
//! first answer to a key is stored in the write's own transaction and replayed to every retry
//! (`Idempotent-Replayed: true`), so a retried purchase is bought once; the same key with a
//! different request is refused (422). A write that fails validation stores nothing.
//!
//! Errors: `{"error": {"code": "...", "message": "...", "key": "..."}}` (`key` names the field
//! of a validation error).

use std::sync::Arc;
use tollgate_store::tokio_postgres;

use bytes::Bytes;
use chrono::{DateTime, Days, NaiveDate, Utc};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use tollgate_core::catalog::{Catalog, GroupLimit};
use tollgate_core::clock::{Clock, beijing, beijing_midnight_unix_nanos};
use tollgate_core::config::entitlements::{ModeKind, valid_secret_id};
use tollgate_core::entitlement::{Limit, default_limit};
use tollgate_settlement::prices::PriceBook;
use tollgate_settlement::quote::{self, Quote, Term};
use tollgate_store::image::{AccountRow, Image};
use tollgate_store::read::{Scope, read_in};
use tollgate_store::tokens::{self, Scope as TokenScope, Token};
use tollgate_store::write::{Stored, Write};

/// Every route: method, path pattern (`{name}` is a path parameter), scope. The OpenAPI
/// document lists exactly these (checked by a test).
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("GET", "/v1/openapi.json", "read"),
    ("GET", "/v1/accounts/{uin}", "read"),
    ("POST", "/v1/accounts", "write"),
    ("POST", "/v1/accounts/{uin}/services", "write"),
    ("PUT", "/v1/accounts/{uin}/postpaid", "write"),
    ("PUT", "/v1/accounts/{uin}/state", "write"),
    ("POST", "/v1/accounts/{uin}/credentials", "write"),
    ("POST", "/v1/credentials/{secret_id}/rotate", "write"),
    ("POST", "/v1/credentials/{secret_id}/revoke", "write"),
    ("POST", "/v1/accounts/{uin}/overlays", "write"),
    ("POST", "/v1/accounts/{uin}/modes", "write"),
    ("POST", "/v1/accounts/{uin}/packs", "write"),
    ("POST", "/v1/accounts/{uin}/packs/{id}/refund", "write"),
    ("PUT", "/v1/accounts/{uin}/contract-prices/{item}", "write"),
    ("POST", "/v1/accounts/{uin}/topups", "write"),
    ("GET", "/v1/shadow", "read"),
    ("PUT", "/v1/shadow", "write"),
    ("GET", "/v1/audit", "read"),
];

/// Request bodies above this are refused (413).
const MAX_BODY: usize = 64 * 1024;

/// The days a purchased pack may be refunded after its delivery day (7天无理由退款).
const REFUND_DAYS: u64 = 7;

/// How long the vendor promises a pack bought for today takes to be in force.
const SAME_DAY_PROMISE_MINUTES: i64 = 15;

/// The admin API's metrics (`GET /metrics`, no token: counts only).
pub struct ApiMetrics {
    registry: prometheus::Registry,
    requests: prometheus::IntCounterVec,
    seconds: prometheus::HistogramVec,
}

impl ApiMetrics {
    fn new() -> ApiMetrics {
        let registry = prometheus::Registry::new();
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tollgate_admin_requests_total",
                "Admin API requests by route (its pattern; \"unmatched\" for none) and HTTP status.",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "tollgate_admin_request_seconds",
                "Admin API request time by route, store round trips included.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(seconds.clone()))
            .expect("registered once");
        ApiMetrics {
            registry,
            requests,
            seconds,
        }
    }

    fn render(&self) -> String {
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&self.registry.gather(), &mut text)
            .expect("text encoding");
        text
    }
}

/// What every request shares.
pub struct State {
    metrics: ApiMetrics,
    url: String,
    client: Mutex<Option<tokio_postgres::Client>>,
    catalog: Catalog,
    book: PriceBook,
    clock: Arc<dyn Clock>,
}

impl State {
    pub fn new(
        url: String,
        client: tokio_postgres::Client,
        catalog: Catalog,
        book: PriceBook,
        clock: Arc<dyn Clock>,
    ) -> State {
        State {
            metrics: ApiMetrics::new(),
            url,
            client: Mutex::new(Some(client)),
            catalog,
            book,
            clock,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.clock.unix_nanos())
    }
}

/// An answer that is not a success.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    key: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            key: None,
        }
    }

    fn invalid(key: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError {
            key: Some(key.into()),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "InvalidParameter",
                message,
            )
        }
    }

    fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", what)
    }

    fn internal(e: anyhow::Error) -> ApiError {
        tracing::error!(error = %format!("{e:#}"), "entitlement API: store error");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "StoreUnavailable",
            "the entitlement store cannot be reached; nothing was changed",
        )
    }

    fn body(&self) -> String {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(k) = &self.key {
            e["key"] = json!(k);
        }
        json!({ "error": e }).to_string()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        ApiError::internal(e)
    }
}

fn respond(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves one request.
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return respond(StatusCode::OK, "{\"ok\":true}".into());
    }
    if path == "/metrics" && method == http::Method::GET {
        let mut r = respond(StatusCode::OK, state.metrics.render());
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        return r;
    }
    let route = route_of(method.as_str(), &path).map_or("unmatched", |(i, _)| ROUTES[i].1);
    let started = std::time::Instant::now();
    let response = match serve(&state, req).await {
        Ok(r) => r,
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(%method, %path, code = e.code, "entitlement API error");
            }
            let mut r = respond(e.status, e.body());
            if e.status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer"),
                );
            }
            r
        }
    };
    state
        .metrics
        .requests
        .with_label_values(&[route, response.status().as_str()])
        .inc();
    state
        .metrics
        .seconds
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The route a method and path match, with its path parameters.
pub fn route_of<'p>(method: &str, path: &'p str) -> Option<(usize, Vec<&'p str>)> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    ROUTES.iter().enumerate().find_map(|(i, (m, pattern, _))| {
        if *m != method {
            return None;
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        if parts.len() != segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (p, s) in parts.iter().zip(&segments) {
            if p.starts_with('{') {
                if s.is_empty() {
                    return None;
                }
                params.push(*s);
            } else if p != s {
                return None;
            }
        }
        Some((i, params))
    })
}

async fn connection<'a>(
    state: &State,
    guard: &'a mut Option<tokio_postgres::Client>,
) -> Result<&'a mut tokio_postgres::Client, ApiError> {
    if guard.as_ref().is_none_or(|c| c.is_closed()) {
        *guard =
            Some(tollgate_store::connect(&state.url, std::time::Duration::from_secs(5)).await?);
    }
    Ok(guard.as_mut().expect("just connected"))
}

async fn serve(state: &State, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    // Authentication first: nothing else is looked at without a valid token.
    let bearer = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_owned);
    let Some(bearer) = bearer else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "an Authorization: Bearer token is required",
        ));
    };
    let token = {
        let mut guard = state.client.lock().await;
        let client = connection(state, &mut guard).await?;
        tokens::find(client, &bearer).await?
    }
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the bearer token is unknown or revoked",
        )
    })?;
    let Some((index, params)) = route_of(&method, &path) else {
        // Another method routes this path: 405, not 404.
        let known = ROUTES.iter().any(|(m, _, _)| route_of(m, &path).is_some());
        return Err(if known {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not allowed on {path}"),
            )
        } else {
            ApiError::not_found(format!("no route {path}"))
        });
    };
    let (_, pattern, scope) = ROUTES[index];
    let needed = if scope == "write" {
        TokenScope::Write
    } else {
        TokenScope::Read
    };
    if !token.allows(needed) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("this token's scopes do not include {scope}"),
        ));
    }
    let params: Vec<String> = params.into_iter().map(str::to_owned).collect();
    if needed == TokenScope::Read {
        let mut guard = state.client.lock().await;
        let client = connection(state, &mut guard).await?;
        return read_route(state, client, pattern, &params, &query).await;
    }
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 200)
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "MissingIdempotencyKey",
                "every write needs an Idempotency-Key header (1 to 200 characters): a retry with the same key is applied once",
            )
        })?;
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "BodyTooLarge",
                format!("the request body must be at most {MAX_BODY} bytes"),
            )
        })?
        .to_bytes();
    let fingerprint = {
        let mut h = Sha256::new();
        h.update(method.as_bytes());
        h.update(b" ");
        h.update(path.as_bytes());
        h.update(b"\n");
        h.update(&body);
        h.finalize().to_vec()
    };
    let now = state.now();
    let actor = format!("token {} ({})", token.id, token.name);
    // A key is the token's: another token cannot replay this token's answers (a credential's
    // SecretKey among them).
    let key = format!("{}:{key}", token.id);
    let mut guard = state.client.lock().await;
    let client = connection(state, &mut guard).await?;
    let write = Write::begin(client, &actor, now).await?;
    if let Some(stored) = write.idempotent(&key).await? {
        write.rollback().await?;
        if stored.request_sha256 != fingerprint {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IdempotencyKeyReused",
                "this Idempotency-Key was used for a different request",
            ));
        }
        let mut r = respond(
            StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK),
            stored.response,
        );
        r.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        return Ok(r);
    }
    match write_route(state, &write, &token, pattern, &params, &body).await {
        Ok((status, answer)) => {
            let response = answer.to_string();
            write
                .remember(
                    &key,
                    &Stored {
                        request_sha256: fingerprint,
                        status: status.as_u16(),
                        response: response.clone(),
                    },
                )
                .await?;
            let version = write.commit().await?;
            tracing::info!(%actor, route = pattern, version, "entitlement write");
            // A new pack raises its owner's spend budget at once (outside the write: budget
            // rows are locked before the version counter by settlement, never after it).
            if pattern == "/v1/accounts/{uin}/packs"
                && let (Some(owner), Some(item), Some(size)) = (
                    answer["pack"]["owner_uin"].as_i64(),
                    answer["pack"]["item"].as_str(),
                    answer["pack"]["size"].as_i64(),
                )
                && let Err(e) = client
                    .execute(
                        "UPDATE entitlements.spend_budgets SET remaining = remaining + $3, updated_at = now()
                         WHERE owner_uin = $1 AND item = $2",
                        &[&owner, &item, &size],
                    )
                    .await
            {
                tracing::warn!(error = %e, "spend budget not raised; settlement raises it at its next tick");
            }
            Ok(respond(status, response))
        }
        Err(e) => {
            write.rollback().await?;
            Err(e)
        }
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidJson",
            format!("the request body is not what this route takes: {e}"),
        )
    })
}

fn uin_param(s: &str) -> Result<u64, ApiError> {
    s.parse()
        .map_err(|_| ApiError::invalid("uin", format!("{s:?} is not a UIN")))
}

/// The owner's tree as this write sees it (its own rows included).
async fn tree(write: &Write<'_>, owner: u64) -> Result<Image, ApiError> {
    Ok(read_in(write.tx(), Scope::owner(owner)).await?)
}

/// An account as this write sees it, and its main account's UIN.
async fn account(write: &Write<'_>, uin: u64) -> Result<(AccountRow, Image), ApiError> {
    let row = write
        .tx()
        .query_opt(
            "SELECT coalesce(owner_uin, uin) FROM entitlements.accounts WHERE uin = $1",
            &[&(uin as i64)],
        )
        .await
        .map_err(anyhow::Error::from)?
        .ok_or_else(|| ApiError::not_found(format!("account {uin} does not exist")))?;
    let owner = row.get::<_, i64>(0) as u64;
    let image = tree(write, owner).await?;
    let a = image.accounts[&uin].clone();
    Ok((a, image))
}

/// Validates the owner's tree after a write's changes with the files' validator: the store
/// never holds what a gateway would refuse to load.
async fn validate(state: &State, write: &Write<'_>, owner: u64) -> Result<(), ApiError> {
    let image = tree(write, owner).await?;
    image
        .build(&state.catalog)
        .map(|_| ())
        .map_err(|e| ApiError::invalid(e.key, e.reason))
}

fn beijing_date_of(t: DateTime<Utc>) -> NaiveDate {
    t.with_timezone(&beijing()).date_naive()
}

fn quote_json(q: &Quote) -> Value {
    serde_json::to_value(q).expect("quotes serialize")
}

fn quote_error(e: quote::QuoteError) -> ApiError {
    let key = match &e {
        quote::QuoteError::Cap(_) => "qps",
        quote::QuoteError::Invalid(i) => i.field(),
        quote::QuoteError::Unknown(_) | quote::QuoteError::NoOverlayClass(_) => "interface",
        quote::QuoteError::AboveMaximum { .. } | quote::QuoteError::Zero => "quantity",
        quote::QuoteError::ContactSales { .. } => "price",
        quote::QuoteError::NotSoldPer { .. } => "end",
    };
    ApiError::invalid(key, e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAccount {
    uin: u64,
    name: String,
    owner: Option<u64>,
    #[serde(default)]
    postpaid: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Activate {
    service: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Switch {
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountState {
    arrears: Option<bool>,
    exhausted: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// How long the old key keeps working (default one day).
    grace_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyOverlay {
    interface: String,
    qps: u32,
    start: NaiveDate,
    end: NaiveDate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyMode {
    group: String,
    mode: ModeKind,
    quantity: u32,
    start: NaiveDate,
    end: Option<NaiveDate>,
    months: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyPack {
    item: String,
    size: u64,
    /// What was paid, when not the list price (a contract; required for 联系商务 packs).
    #[serde(default, with = "rust_decimal::serde::str_option")]
    price: Option<Decimal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPrice {
    #[serde(with = "rust_decimal::serde::str")]
    price: Decimal,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopUp {
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetShadow {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    groups: Vec<String>,
}

fn new_secret_id() -> String {
    format!("AKID{}", &uuid::Uuid::new_v4().simple().to_string()[..28]).to_ascii_uppercase()
}

fn new_secret_key() -> String {
    format!("{}", uuid::Uuid::new_v4().simple())
}

async fn write_route(
    state: &State,
    write: &Write<'_>,
    _token: &Token,
    pattern: &str,
    params: &[String],
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let now = write.now;
    match pattern {
        "/v1/accounts" => {
            let a: NewAccount = parse(body)?;
            if a.name.is_empty() || a.name.len() > 200 {
                return Err(ApiError::invalid("name", "must be 1 to 200 characters"));
            }
            if a.uin == 0 || a.uin > i64::MAX as u64 {
                return Err(ApiError::invalid("uin", "must be a positive 63-bit number"));
            }
            let exists = write
                .tx()
                .query_opt(
                    "SELECT 1 FROM entitlements.accounts WHERE uin = $1",
                    &[&(a.uin as i64)],
                )
                .await
                .map_err(anyhow::Error::from)?
                .is_some();
            if exists {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "AccountExists",
                    format!("account {} already exists", a.uin),
                ));
            }
            let owner = match a.owner.filter(|o| *o != a.uin) {
                Some(o) => {
                    let (row, _) = account(write, o).await.map_err(|_| {
                        ApiError::invalid("owner", format!("{o} is not an account"))
                    })?;
                    if row.owner_uin.is_some() {
                        return Err(ApiError::invalid(
                            "owner",
                            format!(
                                "{o} is a sub-account; a sub-account's owner is a main account"
                            ),
                        ));
                    }
                    if a.postpaid {
                        return Err(ApiError::invalid(
                            "postpaid",
                            "is a main-account setting; a sub-account inherits it from its owner",
                        ));
                    }
                    Some(o)
                }
                None => None,
            };
            let row = write
                .insert_account(a.uin, owner, &a.name, a.postpaid)
                .await?;
            validate(state, write, row.owner()).await?;
            Ok((
                StatusCode::CREATED,
                json!({ "account": row, "version": write.version }),
            ))
        }
        "/v1/accounts/{uin}/services" => {
            let uin = uin_param(&params[0])?;
            let s: Activate = parse(body)?;
            let (row, _) = account(write, uin).await?;
            if row.owner_uin.is_some() {
                return Err(ApiError::invalid(
                    "uin",
                    "services are activated on the main account; its sub-accounts share them",
                ));
            }
            if state.catalog.service_by_name(&s.service).is_none() {
                return Err(ApiError::invalid(
                    "service",
                    format!("unknown service {:?}", s.service),
                ));
            }
            let activation = write.activate(uin, &s.service, now).await?;
            Ok((
                StatusCode::OK,
                json!({ "activated": activation.is_some(), "service": s.service, "version": write.version }),
            ))
        }
        "/v1/accounts/{uin}/postpaid" | "/v1/accounts/{uin}/state" => {
            let uin = uin_param(&params[0])?;
            let (before, _) = account(write, uin).await?;
            if before.owner_uin.is_some() {
                return Err(ApiError::invalid(
                    "uin",
                    "is a sub-account; postpaid and account state are its main account's",
                ));
            }
            let mut after = before.clone();
            if pattern.ends_with("postpaid") {
                let s: Switch = parse(body)?;
                after.postpaid = s.enabled;
            } else {
                let s: AccountState = parse(body)?;
                if let Some(a) = s.arrears {
                    after.arrears = a;
                }
                if let Some(e) = s.exhausted {
                    after.exhausted = e;
                }
            }
            let row = write.update_account(&before, after).await?;
            validate(state, write, uin).await?;
            Ok((
                StatusCode::OK,
                json!({ "account": row, "version": write.version }),
            ))
        }
        "/v1/accounts/{uin}/credentials" => {
            let uin = uin_param(&params[0])?;
            account(write, uin).await?;
            let id = new_secret_id();
            let key = new_secret_key();
            let row = write.insert_credential(&id, uin, &key).await?;
            Ok((
                StatusCode::CREATED,
                json!({ "secret_id": row.secret_id, "secret_key": key, "uin": uin, "version": write.version }),
            ))
        }
        "/v1/credentials/{secret_id}/rotate" | "/v1/credentials/{secret_id}/revoke" => {
            let id = &params[0];
            if !valid_secret_id(id) {
                return Err(ApiError::invalid("secret_id", "is not a SecretId"));
            }
            let row = write
                .tx()
                .query_opt(
                    "SELECT uin FROM entitlements.credentials WHERE secret_id = $1",
                    &[id],
                )
                .await
                .map_err(anyhow::Error::from)?
                .ok_or_else(|| ApiError::not_found(format!("credential {id} does not exist")))?;
            let uin = row.get::<_, i64>(0) as u64;
            let (_, image) = account(write, uin).await?;
            let before = image.credentials[id.as_str()].clone();
            if before.revoked_at.is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "CredentialRevoked",
                    format!("credential {id} is already revoked"),
                ));
            }
            if pattern.ends_with("revoke") {
                let row = write.revoke_credential(&before).await?;
                return Ok((
                    StatusCode::OK,
                    json!({ "secret_id": id, "revoked_at": row.revoked_at, "version": write.version }),
                ));
            }
            if before.replaced_by.is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "CredentialRotated",
                    format!("credential {id} was already rotated; rotate its replacement"),
                ));
            }
            let r: Rotate = if body.is_empty() {
                Rotate {
                    grace_seconds: None,
                }
            } else {
                parse(body)?
            };
            let grace = r.grace_seconds.unwrap_or(86_400);
            if grace > 30 * 86_400 {
                return Err(ApiError::invalid(
                    "grace_seconds",
                    "must be at most 30 days",
                ));
            }
            let new_id = new_secret_id();
            let key = new_secret_key();
            write.insert_credential(&new_id, uin, &key).await?;
            let expires = now + chrono::Duration::seconds(grace as i64);
            write.expire_credential(&before, expires, &new_id).await?;
            Ok((
                StatusCode::CREATED,
                json!({
                    "secret_id": new_id, "secret_key": key, "uin": uin,
                    "replaces": id, "old_expires_at": expires, "version": write.version
                }),
            ))
        }
        "/v1/accounts/{uin}/overlays" => {
            let uin = uin_param(&params[0])?;
            let b: BuyOverlay = parse(body)?;
            let (_, image) = account(write, uin).await?;
            let (ents, _) = image
                .build(&state.catalog)
                .map_err(|e| ApiError::invalid(e.key, e.reason))?;
            let held = state
                .catalog
                .interface_by_name(&b.interface)
                .and_then(|f| ents.account(uin)?.overlay_packs.get(&f.id).cloned())
                .unwrap_or_default();
            let purchased = now.with_timezone(&beijing());
            let q = quote::overlay(
                &state.book,
                &state.catalog,
                &b.interface,
                b.qps,
                Term::Days {
                    start: b.start,
                    end: b.end,
                },
                purchased,
                &held,
            )
            .map_err(quote_error)?;
            let row = write
                .insert_overlay(
                    uin,
                    &b.interface,
                    b.qps,
                    b.start,
                    b.end,
                    now,
                    Some(q.amount),
                )
                .await?;
            validate(state, write, image.accounts[&uin].owner()).await?;
            let day_start = DateTime::from_timestamp_nanos(beijing_midnight_unix_nanos(b.start));
            let (effective_from, in_force_by) = if day_start <= now {
                (
                    now,
                    now + chrono::Duration::minutes(SAME_DAY_PROMISE_MINUTES),
                )
            } else {
                (day_start, day_start)
            };
            let until =
                DateTime::from_timestamp_nanos(beijing_midnight_unix_nanos(b.end + Days::new(1)));
            Ok((
                StatusCode::CREATED,
                json!({
                    "overlay": row,
                    "quote": quote_json(&q),
                    "price": q.amount.to_string(),
                    "effective_from": effective_from.with_timezone(&beijing()),
                    "in_force_by": in_force_by.with_timezone(&beijing()),
                    "until": until.with_timezone(&beijing()),
                    "version": write.version,
                }),
            ))
        }
        "/v1/accounts/{uin}/modes" => {
            let uin = uin_param(&params[0])?;
            let b: BuyMode = parse(body)?;
            let (_, image) = account(write, uin).await?;
            let term = match (b.end, b.months) {
                (Some(end), None) => Term::Days {
                    start: b.start,
                    end,
                },
                (None, Some(months)) => Term::Months {
                    start: b.start,
                    months,
                },
                _ => {
                    return Err(ApiError::invalid(
                        "end",
                        "give end (by the day) or months (by the month)",
                    ));
                }
            };
            if b.start < beijing_date_of(now) {
                return Err(ApiError::invalid(
                    "start",
                    format!("{} is before today ({})", b.start, beijing_date_of(now)),
                ));
            }
            let q = match b.mode {
                ModeKind::Qps => {
                    quote::qps_mode(&state.book, &state.catalog, &b.group, b.quantity, term)
                }
                ModeKind::Concurrency => {
                    quote::concurrency(&state.book, &state.catalog, &b.group, b.quantity, term)
                }
            }
            .map_err(|e| match e {
                quote::QuoteError::Unknown(m) => {
                    ApiError::invalid("group", format!("{m} is not in the catalog"))
                }
                other => quote_error(other),
            })?;
            let row = write
                .insert_mode(
                    uin,
                    &b.group,
                    b.mode,
                    b.quantity,
                    Some(term.start()),
                    Some(term.end()),
                    Some(q.amount),
                )
                .await?;
            validate(state, write, image.accounts[&uin].owner()).await?;
            Ok((
                StatusCode::CREATED,
                json!({
                    "mode": row, "quote": quote_json(&q), "price": q.amount.to_string(),
                    "effective_from": DateTime::from_timestamp_nanos(beijing_midnight_unix_nanos(term.start()).max(now.timestamp_nanos_opt().unwrap_or(0))).with_timezone(&beijing()),
                    "version": write.version,
                }),
            ))
        }
        "/v1/accounts/{uin}/packs" => {
            let uin = uin_param(&params[0])?;
            let b: BuyPack = parse(body)?;
            if let Some(p) = b.price
                && (p < Decimal::ZERO || p.scale() > 2)
            {
                return Err(ApiError::invalid(
                    "price",
                    "must be an amount of CNY, zero or more, with at most 2 decimals",
                ));
            }
            let (row, _) = account(write, uin).await?;
            if row.owner_uin.is_some() {
                return Err(ApiError::invalid(
                    "uin",
                    "packs are bought by the main account; its sub-accounts draw on them",
                ));
            }
            let q = quote::prepaid(&state.book, &state.catalog, &b.item, b.size, 1, b.price)
                .map_err(|e| match e {
                    quote::QuoteError::Unknown(m) => {
                        ApiError::invalid("item", format!("{m} is not on sale"))
                    }
                    other => quote_error(other),
                })?;
            let id = format!("pk_{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
            let pack = write
                .insert_pack(&id, uin, &b.item, b.size, now, q.amount)
                .await?;
            // A new pack covers its item: lift a refusal for packs used up at once (the
            // settlement consumer agrees at its next rating).
            if row.exhausted.contains(&b.item) {
                let after = AccountRow {
                    exhausted: row
                        .exhausted
                        .iter()
                        .filter(|i| **i != b.item)
                        .cloned()
                        .collect(),
                    ..row.clone()
                };
                write.update_account(&row, after).await?;
            }
            Ok((
                StatusCode::CREATED,
                json!({ "pack": pack, "quote": quote_json(&q), "price": q.amount.to_string(), "version": write.version }),
            ))
        }
        "/v1/accounts/{uin}/packs/{id}/refund" => {
            let uin = uin_param(&params[0])?;
            let id = &params[1];
            let (_, image) = account(write, uin).await?;
            let pack = image
                .packs
                .get(id.as_str())
                .filter(|p| p.owner_uin == uin)
                .cloned()
                .ok_or_else(|| ApiError::not_found(format!("account {uin} has no pack {id}")))?;
            if pack.refunded_at.is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "AlreadyRefunded",
                    format!("pack {id} was refunded already"),
                ));
            }
            let delivered = beijing_date_of(pack.purchased_at);
            let last = delivered + Days::new(REFUND_DAYS);
            if beijing_date_of(now) > last {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "RefundWindowClosed",
                    format!(
                        "pack {id} was delivered on {delivered}; it could be refunded until {last} (Beijing time) inclusive"
                    ),
                ));
            }
            let used = crate::import::pack_units_used(
                write.tx(),
                &state.catalog,
                &state.book,
                &image,
                &pack,
                now,
            )
            .await?;
            if used > 0 {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "PackUsed",
                    format!(
                        "pack {id} has {used} units drawn: only a wholly unused pack is refunded"
                    ),
                ));
            }
            let row = write.refund_pack(&pack).await?;
            Ok((
                StatusCode::OK,
                json!({ "pack": row, "refund": pack.price.to_string(), "version": write.version }),
            ))
        }
        "/v1/accounts/{uin}/contract-prices/{item}" => {
            let uin = uin_param(&params[0])?;
            let item = &params[1];
            let b: SetPrice = parse(body)?;
            let (row, image) = account(write, uin).await?;
            if row.owner_uin.is_some() {
                return Err(ApiError::invalid(
                    "uin",
                    "contract prices are the main account's",
                ));
            }
            if state.catalog.item_by_key(item).is_none() {
                return Err(ApiError::invalid(
                    "item",
                    format!("unknown billing item {item:?}"),
                ));
            }
            if b.price < Decimal::ZERO {
                return Err(ApiError::invalid("price", "must not be negative"));
            }
            let before = image.contract_prices.get(&(uin, item.clone()));
            let row = write.set_contract_price(uin, item, b.price, before).await?;
            Ok((
                StatusCode::OK,
                json!({ "contract_price": row, "version": write.version }),
            ))
        }
        "/v1/accounts/{uin}/topups" => {
            let uin = uin_param(&params[0])?;
            let b: TopUp = parse(body)?;
            let (before, _) = account(write, uin).await?;
            if before.owner_uin.is_some() {
                return Err(ApiError::invalid(
                    "uin",
                    "the balance is the main account's",
                ));
            }
            if b.amount <= Decimal::ZERO || b.amount.scale() > 2 {
                return Err(ApiError::invalid(
                    "amount",
                    "must be a positive amount of CNY with at most 2 decimals",
                ));
            }
            let row = tollgate_settlement::arrears::top_up(write, &before, b.amount).await?;
            Ok((
                StatusCode::OK,
                json!({
                    "balance": row.balance.to_string(),
                    "stop_at": row.stop_at,
                    "restored": before.stop_at.is_some() && row.stop_at.is_none(),
                    "version": write.version,
                }),
            ))
        }
        "/v1/shadow" => {
            let b: SetShadow = parse(body)?;
            for (i, g) in b.groups.iter().enumerate() {
                if state.catalog.group_by_name(g).is_none() {
                    return Err(ApiError::invalid(
                        format!("groups[{i}]"),
                        format!("{g:?} is not a group of the catalog"),
                    ));
                }
            }
            let before = read_in(write.tx(), Scope::owner(0)).await?.shadow;
            let row = write.set_shadow(&before, b.all, &b.groups).await?;
            Ok((
                StatusCode::OK,
                json!({ "shadow": row, "version": write.version }),
            ))
        }
        other => Err(ApiError::not_found(format!("no route {other}"))),
    }
}

fn limit_json(l: Limit) -> Value {
    match l {
        Limit::Rate(q) => json!({ "kind": "qps", "limit": q }),
        Limit::Concurrency(c) => json!({ "kind": "concurrency", "limit": c }),
    }
}

async fn read_route(
    state: &State,
    client: &mut tokio_postgres::Client,
    pattern: &str,
    params: &[String],
    query: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    match pattern {
        "/v1/openapi.json" => Ok(respond(StatusCode::OK, crate::OPENAPI.to_owned())),
        "/v1/accounts/{uin}" => {
            let uin = uin_param(&params[0])?;
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(anyhow::Error::from)?;
            let owner = tx
                .query_opt(
                    "SELECT coalesce(owner_uin, uin) FROM entitlements.accounts WHERE uin = $1",
                    &[&(uin as i64)],
                )
                .await
                .map_err(anyhow::Error::from)?
                .ok_or_else(|| ApiError::not_found(format!("account {uin} does not exist")))?
                .get::<_, i64>(0) as u64;
            let image = read_in(&tx, Scope::owner(owner)).await?;
            tx.commit().await.map_err(anyhow::Error::from)?;
            let (ents, _) = image
                .build(&state.catalog)
                .map_err(|e| ApiError::invalid(e.key, e.reason))?;
            let row = &image.accounts[&uin];
            let acc = ents.account(uin).expect("built from this image");
            let now_nanos = state.clock.unix_nanos();
            let mut limits = Vec::new();
            for g in &state.catalog.groups {
                if !acc.owner.services.contains(&g.service) {
                    continue;
                }
                let limit = match acc.entitlement(g.id) {
                    Some(e) => e.resolve(g.limit, || now_nanos),
                    None => default_limit(g.limit),
                };
                let mut l = limit_json(limit);
                l["group"] = json!(&*g.name);
                l["default"] = limit_json(default_limit(g.limit))["limit"].clone();
                l["shadow"] = json!(ents.shadow.covers(g.key));
                if let GroupLimit::Rate { .. } = g.limit {
                    l["unit"] = json!("calls per second");
                } else {
                    l["unit"] = json!("calls in flight");
                }
                limits.push(l);
            }
            let services: Vec<&String> = image
                .activations
                .values()
                .filter(|a| a.owner_uin == owner)
                .map(|a| &a.service)
                .collect();
            let credentials: Vec<Value> = image
                .credentials
                .values()
                .filter(|c| c.uin == uin)
                .map(|c| serde_json::to_value(c).expect("rows serialize"))
                .collect();
            let overlays: Vec<_> = image.overlays.values().filter(|o| o.uin == uin).collect();
            let modes: Vec<_> = image.modes.values().filter(|m| m.uin == uin).collect();
            let packs: Vec<_> = image
                .packs
                .values()
                .filter(|p| p.owner_uin == owner)
                .collect();
            let prices: Vec<_> = image
                .contract_prices
                .values()
                .filter(|p| p.owner_uin == owner)
                .collect();
            let answer = json!({
                "account": row,
                "owner": owner,
                "services": services,
                "credentials": credentials,
                "overlays": overlays,
                "modes": modes,
                "packs": packs,
                "contract_prices": prices,
                "limits": limits,
                "at": DateTime::from_timestamp_nanos(now_nanos).with_timezone(&beijing()),
                "version": image.version,
            });
            Ok(respond(StatusCode::OK, answer.to_string()))
        }
        "/v1/shadow" => {
            let image = tollgate_store::read(client, Scope::owner(0)).await?;
            Ok(respond(
                StatusCode::OK,
                json!({ "shadow": image.shadow, "version": image.version }).to_string(),
            ))
        }
        "/v1/audit" => {
            let mut limit: i64 = 100;
            let mut target: Option<String> = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                match k {
                    "limit" => {
                        limit = v
                            .parse()
                            .ok()
                            .filter(|n| (1..=1000).contains(n))
                            .ok_or_else(|| ApiError::invalid("limit", "must be 1 to 1000"))?
                    }
                    "target" => target = Some(v.replace("%20", " ").replace('+', " ")),
                    _ => return Err(ApiError::invalid(k, "unknown query parameter")),
                }
            }
            let rows = client
                .query(
                    "SELECT id, at, actor, action, target, before::text, after::text, version
                     FROM entitlements.audit WHERE ($2::text IS NULL OR target = $2)
                     ORDER BY id DESC LIMIT $1",
                    &[&limit, &target],
                )
                .await
                .map_err(anyhow::Error::from)?;
            let entries: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let parse = |s: Option<String>| {
                        s.and_then(|s| serde_json::from_str::<Value>(&s).ok())
                            .unwrap_or(Value::Null)
                    };
                    json!({
                        "id": r.get::<_, i64>(0),
                        "at": r.get::<_, DateTime<Utc>>(1),
                        "actor": r.get::<_, String>(2),
                        "action": r.get::<_, String>(3),
                        "target": r.get::<_, String>(4),
                        "before": parse(r.get(5)),
                        "after": parse(r.get(6)),
                        "version": r.get::<_, i64>(7),
                    })
                })
                .collect();
            Ok(respond(
                StatusCode::OK,
                json!({ "entries": entries }).to_string(),
            ))
        }
        other => Err(ApiError::not_found(format!("no route {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The OpenAPI document lists exactly the routes the server routes, and documents the
    /// idempotency key on every write.
    #[test]
    fn the_openapi_document_is_the_routes() {
        let doc: Value = serde_json::from_str(crate::OPENAPI).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.0.3");
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let m = method.to_ascii_uppercase();
                let params = op["parameters"].as_array().cloned().unwrap_or_default();
                let idempotent = params
                    .iter()
                    .any(|p| p["$ref"] == "#/components/parameters/IdempotencyKey");
                let is_write = m != "GET";
                assert_eq!(
                    idempotent, is_write,
                    "{m} {path}: Idempotency-Key documented iff a write"
                );
                for p in params.iter().filter(|p| p["in"] == "path") {
                    let name = p["name"].as_str().unwrap();
                    assert!(path.contains(&format!("{{{name}}}")), "{m} {path}: {name}");
                }
                assert!(
                    op["responses"]["401"].is_object(),
                    "{m} {path}: 401 documented"
                );
                documented.push((m, path.clone()));
            }
        }
        documented.sort();
        let mut routed: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        routed.sort();
        assert_eq!(documented, routed);
        // And every route's scope follows its method.
        for (m, p, scope) in ROUTES {
            assert_eq!(*scope == "read", *m == "GET", "{m} {p}");
        }
    }

    #[test]
    fn routes_match_their_patterns_only() {
        let (i, p) = route_of("POST", "/v1/accounts/7/packs/pk_1/refund").unwrap();
        assert_eq!(ROUTES[i].1, "/v1/accounts/{uin}/packs/{id}/refund");
        assert_eq!(p, vec!["7", "pk_1"]);
        assert!(route_of("GET", "/v1/accounts").is_none());
        assert!(route_of("POST", "/v1/accounts//services").is_none());
        assert_eq!(
            ROUTES[route_of("GET", "/v1/accounts/7/").unwrap().0].1,
            "/v1/accounts/{uin}"
        );
    }
}
