//! Image-search libraries: what each owner's `GroupId` is (its `GroupType`), so that a call
//! into a library is billed against the item its type names (catalog `similar_billing_item`).
//!
//! - The request path reads [`Libraries::classify`]: a map in memory, no I/O. A library the
//!   gateway holds is billed by its type at once.
//! - A library it never saw is asked about once ([`Libraries::resolve`]: `DescribeGroups`
//!   through the call's own upstream pool, signed as the upstream expects, within
//!   `image_search.lookup_timeout_ms`); concurrent calls into it wait for that one answer.
//!   When no answer comes, the call is billed against the same/product item and marked
//!   unresolved (`UsageRecord::unresolved_library`); further calls into it are billed so
//!   without a lookup of their own, and [`retry`] asks again every
//!   `image_search.retry_interval_ms` until the type is known. Settlement re-rates the
//!   unresolved units by the type learned.
//! - A successful `CreateGroup` teaches the type its body gave; a `DeleteGroup` (or a backend
//!   that says the library does not exist) makes the gateway forget it.
//! - What is learned is written, off the request path, to the entitlement store (shared by
//!   every replica, which hear it like any other change) or, with file entitlements, to
//!   `image_search.libraries_file` ([`writer`]).

pub mod fields;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use dashmap::DashMap;
use http::header::HeaderValue;
use http::{Method, Request};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use rustc_hash::FxHashMap;
use tokio::sync::{OnceCell, mpsc};

use crate::proxy::forward::{self, Forwarder, Identity, Target};
use crate::proxy::head::{Field, ReqHead};
use crate::settings::ImageSearchSettings;
use tollgate_core::catalog::{BillingItemId, Catalog, Interface, LibraryRole, Service};
use tollgate_core::credentials::Credentials;
use tollgate_core::tc3::Signer;
use tollgate_store::image::LibraryRow;

/// What a call's library does to its billing.
#[derive(Debug, Clone, Default)]
pub enum CallLibrary {
    /// Not an image-search call (or one with no library to speak of).
    #[default]
    None,
    /// Billed against `item`; `unresolved` names the library when its type is unknown.
    Billed {
        item: BillingItemId,
        unresolved: Option<Arc<str>>,
    },
    /// Creates `group_id` of `group_type` (learned when the backend says it succeeded).
    Create {
        libraries: Arc<Libraries>,
        owner_uin: u64,
        group_id: Box<str>,
        group_type: i64,
    },
    /// Deletes `group_id` (forgotten when the backend says it is gone).
    Delete {
        libraries: Arc<Libraries>,
        owner_uin: u64,
        group_id: Box<str>,
    },
}

impl CallLibrary {
    /// The item the call is billed against instead of its interface's, if any.
    pub fn item(&self) -> Option<BillingItemId> {
        match self {
            CallLibrary::Billed { item, .. } => Some(*item),
            _ => None,
        }
    }
}

/// What [`Libraries::classify`] found.
pub enum Classified {
    Ready(CallLibrary),
    /// The library is unknown: ask the backend ([`Libraries::resolve`]).
    Ask(Ask),
}

/// A library to ask about, and how a call into it is billed either way.
pub struct Ask {
    pub owner_uin: u64,
    pub group_id: Box<str>,
    interface_item: BillingItemId,
    similar: BillingItemId,
}

/// A change to write down.
#[derive(Debug, Clone)]
pub enum Change {
    Learn {
        owner_uin: u64,
        group_id: Box<str>,
        group_type: i64,
        source: &'static str,
    },
    Delete {
        owner_uin: u64,
        group_id: Box<str>,
    },
}

/// How to ask about a library again later: who asked, with what.
#[derive(Debug, Clone)]
pub struct Asker {
    pub uin: u64,
    pub secret_id: Box<str>,
    pub service: Arc<str>,
    pub version: Option<HeaderValue>,
    pub region: Option<HeaderValue>,
}

struct Failed {
    retry_at: Instant,
    /// Doubles with each failed retry, up to [`MAX_RETRY_INTERVAL`].
    interval: Duration,
    since: Instant,
    asker: Asker,
}

/// Lookups one owner may cause per minute (on the request path; the vendor allows an owner 30
/// libraries, so a real owner needs far fewer): beyond, a call into an unknown library is
/// billed unresolved without one. What bounds the backend calls a caller can cause with
/// made-up `GroupId`s, over its quota or not.
pub const LOOKUPS_PER_OWNER_PER_MINUTE: u32 = 30;
/// Unknown libraries kept for retries per owner; more are billed unresolved, not retried.
pub const FAILED_PER_OWNER: usize = 64;
/// The longest wait between two retries of one library.
pub const MAX_RETRY_INTERVAL: Duration = Duration::from_secs(600);
/// A library unknown this long is no longer asked about (its usage stays unresolved).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);

/// (owner, `GroupId`).
type LibraryKey = (u64, Box<str>);

/// A lookup's answer: `Some(type)`, or `None` when it could not be had.
type Answer = Option<Option<i64>>;

/// `tollgate_image_library_lookups_total` by result, resolved once (the request path counts
/// every call into a library).
struct Lookups {
    memory: IntCounter,
    backend: IntCounter,
    joined: IntCounter,
    failed: IntCounter,
    backoff: IntCounter,
    budget: IntCounter,
}

impl Lookups {
    fn of(v: &IntCounterVec) -> Lookups {
        let c = |r: &str| v.with_label_values(&[r]);
        Lookups {
            memory: c("memory"),
            backend: c("backend"),
            joined: c("joined"),
            failed: c("failed"),
            backoff: c("backoff"),
            budget: c("budget"),
        }
    }
}

struct LibraryMetrics {
    lookups: Lookups,
    unresolved_calls: IntCounter,
    known: IntGauge,
    pending_writes: IntGauge,
}

/// Every owner's libraries as this gateway knows them.
pub struct Libraries {
    /// Owner → its live libraries (an owner has a few: the vendor allows 30).
    by_owner: DashMap<u64, Vec<(Box<str>, i64)>>,
    /// Lookups under way: one per library, whoever asks.
    asking: Mutex<FxHashMap<LibraryKey, Arc<OnceCell<Answer>>>>,
    /// Libraries whose lookup failed: not asked again on the request path before `retry_at`.
    failed: Mutex<FxHashMap<LibraryKey, Failed>>,
    /// Lookups per owner in the current minute (minute, count).
    budget: Mutex<FxHashMap<u64, (u64, u32)>>,
    changes: mpsc::UnboundedSender<Change>,
    settings: ImageSearchSettings,
    metrics: LibraryMetrics,
}

impl std::fmt::Debug for Libraries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libraries")
            .field("owners", &self.by_owner.len())
            .finish_non_exhaustive()
    }
}

impl Libraries {
    /// An empty registry, and the receiving end of its changes (for [`writer`]).
    pub fn new(
        settings: ImageSearchSettings,
        registry: &Registry,
    ) -> (Arc<Libraries>, mpsc::UnboundedReceiver<Change>) {
        let lookups = IntCounterVec::new(
            Opts::new(
                "tollgate_image_library_lookups_total",
                "Calls into an image-search library by how its type was found: memory (held), backend (asked now), joined (waited for another call's lookup), failed (asked, no answer: billed unresolved), backoff (a failed library not asked again yet: billed unresolved), budget (the owner's lookups per minute used up: billed unresolved)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let unresolved_calls = IntCounter::new(
            "tollgate_image_library_unresolved_calls_total",
            "Calls billed against the same/product item because their library's type was unknown (settlement re-rates them once it is known)",
        )
        .expect("valid metric");
        let known = IntGauge::new(
            "tollgate_image_libraries",
            "Image-search libraries whose type this gateway holds",
        )
        .expect("valid metric");
        let pending_writes = IntGauge::new(
            "tollgate_image_library_pending_writes",
            "Learned library changes not yet written to the entitlement store or file",
        )
        .expect("valid metric");
        for m in [
            Box::new(lookups.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(unresolved_calls.clone()),
            Box::new(known.clone()),
            Box::new(pending_writes.clone()),
        ] {
            // A second gateway in one process (tests) shares the first one's families.
            let _ = registry.register(m);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Arc::new(Libraries {
                by_owner: DashMap::new(),
                asking: Mutex::new(FxHashMap::default()),
                failed: Mutex::new(FxHashMap::default()),
                budget: Mutex::new(FxHashMap::default()),
                changes: tx,
                settings,
                metrics: LibraryMetrics {
                    lookups: Lookups::of(&lookups),
                    unresolved_calls,
                    known,
                    pending_writes,
                },
            }),
            rx,
        )
    }

    /// The type of `owner`'s library `group_id`, if held.
    pub fn type_of(&self, owner_uin: u64, group_id: &str) -> Option<i64> {
        self.by_owner
            .get(&owner_uin)?
            .iter()
            .find(|(id, _)| &**id == group_id)
            .map(|(_, t)| *t)
    }

    fn set(&self, owner_uin: u64, group_id: &str, group_type: Option<i64>) {
        let mut libs = self.by_owner.entry(owner_uin).or_default();
        let at = libs.iter().position(|(id, _)| &**id == group_id);
        match (at, group_type) {
            (Some(i), Some(t)) => libs[i].1 = t,
            (None, Some(t)) => {
                libs.push((group_id.into(), t));
                self.metrics.known.inc();
            }
            (Some(i), None) => {
                libs.swap_remove(i);
                self.metrics.known.dec();
            }
            (None, None) => {}
        }
    }

    /// Takes rows read from the store or the file: live ones are held, deleted ones dropped.
    pub fn absorb<'a>(&self, rows: impl IntoIterator<Item = &'a LibraryRow>) {
        for r in rows {
            let live = r.deleted_at.is_none().then_some(r.group_type);
            self.set(r.owner_uin, &r.group_id, live);
            if live.is_some() {
                self.failed
                    .lock()
                    .expect("not poisoned")
                    .remove(&(r.owner_uin, Box::from(r.group_id.as_str())));
            }
        }
    }

    /// Records a type learned here, and queues it for the store.
    pub fn learn(&self, owner_uin: u64, group_id: &str, group_type: i64, source: &'static str) {
        if self.type_of(owner_uin, group_id) == Some(group_type) && source == "describe" {
            return;
        }
        self.set(owner_uin, group_id, Some(group_type));
        self.failed
            .lock()
            .expect("not poisoned")
            .remove(&(owner_uin, Box::from(group_id)));
        self.queue(Change::Learn {
            owner_uin,
            group_id: group_id.into(),
            group_type,
            source,
        });
        tracing::info!(
            owner_uin,
            group_id,
            group_type,
            source,
            "image library learned"
        );
    }

    /// Forgets a library (deleted), and queues that for the store.
    pub fn forget(&self, owner_uin: u64, group_id: &str) {
        self.set(owner_uin, group_id, None);
        self.queue(Change::Delete {
            owner_uin,
            group_id: group_id.into(),
        });
        tracing::info!(owner_uin, group_id, "image library deleted");
    }

    fn queue(&self, change: Change) {
        self.metrics.pending_writes.inc();
        if self.changes.send(change).is_err() {
            // No writer (a test gateway without one): nothing waits for the write.
            self.metrics.pending_writes.dec();
        }
    }

    /// What a call through `interface` of `owner` does with libraries, from memory only.
    pub fn classify(
        self: &Arc<Self>,
        catalog: &Catalog,
        interface: &Interface,
        owner_uin: u64,
        req: ReqHead<'_>,
        payload: &[u8],
    ) -> Classified {
        let Some(role) = interface.library else {
            return Classified::Ready(CallLibrary::None);
        };
        let f = if *req.method() == Method::GET {
            fields::from_query(req.query().unwrap_or(""))
        } else {
            fields::from_json(payload)
        };
        let Some(group_id) = f.group_id.filter(|g| !g.is_empty()) else {
            // Without a library the backend refuses the call (unbilled).
            return Classified::Ready(CallLibrary::None);
        };
        match role {
            LibraryRole::Create => Classified::Ready(CallLibrary::Create {
                libraries: Arc::clone(self),
                owner_uin,
                group_id: group_id.into(),
                // The vendor's default type (a same-image library).
                group_type: f.group_type.unwrap_or(4),
            }),
            LibraryRole::Delete => Classified::Ready(CallLibrary::Delete {
                libraries: Arc::clone(self),
                owner_uin,
                group_id: group_id.into(),
            }),
            LibraryRole::Describe => Classified::Ready(CallLibrary::None),
            LibraryRole::Billed { similar } => {
                let interface_item = match interface.units {
                    tollgate_core::catalog::UnitRule::PerCall(item) => item,
                    _ => return Classified::Ready(CallLibrary::None),
                };
                if let Some(t) = self.type_of(owner_uin, &group_id) {
                    self.metrics.lookups.memory.inc();
                    let item = catalog.library_item(interface, t).unwrap_or(interface_item);
                    return Classified::Ready(CallLibrary::Billed {
                        item,
                        unresolved: None,
                    });
                }
                let key = (owner_uin, Box::<str>::from(&*group_id));
                let backing_off = self
                    .failed
                    .lock()
                    .expect("not poisoned")
                    .get(&key)
                    .is_some_and(|f| Instant::now() < f.retry_at);
                if backing_off {
                    self.metrics.lookups.backoff.inc();
                    return Classified::Ready(self.unresolved(interface_item, &group_id));
                }
                if !self.within_budget(owner_uin) {
                    self.metrics.lookups.budget.inc();
                    return Classified::Ready(self.unresolved(interface_item, &group_id));
                }
                Classified::Ask(Ask {
                    owner_uin,
                    group_id: key.1,
                    interface_item,
                    similar,
                })
            }
        }
    }

    /// Whether `owner` may cause one more lookup this minute (and counts it).
    fn within_budget(&self, owner_uin: u64) -> bool {
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60);
        let mut budget = self.budget.lock().expect("not poisoned");
        if budget.len() > 100_000 {
            budget.retain(|_, (m, _)| *m == minute);
        }
        let (m, n) = budget.entry(owner_uin).or_insert((minute, 0));
        if *m != minute {
            (*m, *n) = (minute, 0);
        }
        *n += 1;
        *n <= LOOKUPS_PER_OWNER_PER_MINUTE
    }

    /// Files a library whose lookup failed for a retry, or pushes its next retry back.
    fn failed_lookup(&self, owner_uin: u64, group_id: &str, asker: &Asker) {
        let now = Instant::now();
        let mut failed = self.failed.lock().expect("not poisoned");
        let key = (owner_uin, Box::<str>::from(group_id));
        if let Some(f) = failed.get_mut(&key) {
            if now.duration_since(f.since) > GIVE_UP_AFTER {
                tracing::warn!(
                    owner_uin,
                    group_id,
                    "image library still unknown after a day: no longer asked about"
                );
                failed.remove(&key);
                return;
            }
            f.interval = (f.interval * 2).min(MAX_RETRY_INTERVAL);
            f.retry_at = now + f.interval;
            return;
        }
        if failed.keys().filter(|(o, _)| *o == owner_uin).count() >= FAILED_PER_OWNER {
            tracing::warn!(
                owner_uin,
                group_id,
                "too many unknown image libraries for this owner: this one is billed unresolved and not retried"
            );
            return;
        }
        failed.insert(
            key,
            Failed {
                retry_at: now + self.settings.retry_interval,
                interval: self.settings.retry_interval,
                since: now,
                asker: asker.clone(),
            },
        );
    }

    fn unresolved(&self, item: BillingItemId, group_id: &str) -> CallLibrary {
        self.metrics.unresolved_calls.inc();
        CallLibrary::Billed {
            item,
            unresolved: Some(Arc::from(group_id)),
        }
    }

    /// Asks the backend about `ask`'s library (once, whoever else asks meanwhile) and bills
    /// the call by the answer.
    pub async fn resolve(
        &self,
        ask: Ask,
        asker: Asker,
        credentials: &Credentials,
        forwarder: &Forwarder,
        target: &Target,
    ) -> CallLibrary {
        let key = (ask.owner_uin, ask.group_id.clone());
        let cell = Arc::clone(
            self.asking
                .lock()
                .expect("not poisoned")
                .entry(key.clone())
                .or_default(),
        );
        let mut asked_here = false;
        let answer = *cell
            .get_or_init(|| {
                asked_here = true;
                self.ask(&ask, &asker, credentials, forwarder, target)
            })
            .await;
        if asked_here {
            self.asking.lock().expect("not poisoned").remove(&key);
        }
        match answer {
            Some(Some(t)) => {
                if asked_here {
                    self.metrics.lookups.backend.inc();
                } else {
                    self.metrics.lookups.joined.inc();
                }
                CallLibrary::Billed {
                    item: if t == tollgate_core::catalog::SIMILAR_GROUP_TYPE {
                        ask.similar
                    } else {
                        ask.interface_item
                    },
                    unresolved: None,
                }
            }
            _ => {
                self.metrics.lookups.failed.inc();
                self.unresolved(ask.interface_item, &ask.group_id)
            }
        }
    }

    /// One `DescribeGroups`: learns the type, or files the library for a retry.
    async fn ask(
        &self,
        ask: &Ask,
        asker: &Asker,
        credentials: &Credentials,
        forwarder: &Forwarder,
        target: &Target,
    ) -> Answer {
        let answer = describe(
            &self.settings,
            ask.owner_uin,
            &ask.group_id,
            asker,
            credentials,
            forwarder,
            target,
        )
        .await;
        match answer {
            Ok(Some(t)) => {
                self.learn(ask.owner_uin, &ask.group_id, t, "describe");
                Some(Some(t))
            }
            other => {
                let why = match &other {
                    Ok(_) => "the backend does not know this library".to_owned(),
                    Err(e) => e.clone(),
                };
                tracing::warn!(
                    owner_uin = ask.owner_uin,
                    group_id = %ask.group_id,
                    error = %why,
                    "image library type unknown: its calls are billed unresolved until it is"
                );
                self.failed_lookup(ask.owner_uin, &ask.group_id, asker);
                None
            }
        }
    }

    /// Libraries waiting for a retry whose time has come.
    fn due(&self) -> Vec<(u64, Box<str>, Asker)> {
        let now = Instant::now();
        let mut failed = self.failed.lock().expect("not poisoned");
        failed
            .iter_mut()
            .filter(|(_, f)| f.retry_at <= now)
            .map(|((owner, id), f)| {
                // Not asked again before this round's answer is in.
                f.retry_at = now + MAX_RETRY_INTERVAL;
                (*owner, id.clone(), f.asker.clone())
            })
            .collect()
    }

    /// Libraries whose type is still unknown (for the admin page and tests).
    pub fn unresolved_libraries(&self) -> usize {
        self.failed.lock().expect("not poisoned").len()
    }
}

/// Asks the backend for `group_id`'s type: `Ok(None)` when it says there is no such library.
async fn describe(
    settings: &ImageSearchSettings,
    owner_uin: u64,
    group_id: &str,
    asker: &Asker,
    credentials: &Credentials,
    forwarder: &Forwarder,
    target: &Target,
) -> Result<Option<i64>, String> {
    let credential = credentials
        .get(&asker.secret_id)
        .ok_or_else(|| "the credential that called is gone".to_owned())?;
    let secret_key = std::str::from_utf8(&credential.secret_key)
        .map_err(|_| "the credential's key is not text".to_owned())?;
    let body = Bytes::from(format!(
        r#"{{"GroupId":{},"Offset":0,"Limit":1}}"#,
        serde_json::to_string(group_id).expect("a string serializes")
    ));
    let now = Utc::now().timestamp();
    // Signed for the upstream's Host with the caller's own credential (the forwarder signs it
    // again with the upstream's, when one is configured).
    let authorization = Signer {
        secret_id: &asker.secret_id,
        secret_key,
        service: &asker.service,
        host: &target.upstream.authority,
        content_type: "application/json",
        method: "POST",
        query: b"",
        payload: &body,
        timestamp: now,
    }
    .authorization();
    let mut req = Request::post("/")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("x-tc-action", "DescribeGroups")
        .header("x-tc-timestamp", now.to_string())
        .header(http::header::AUTHORIZATION, authorization);
    if let Some(v) = &asker.version {
        req = req.header("x-tc-version", v.clone());
    }
    if let Some(r) = &asker.region {
        req = req.header("x-tc-region", r.clone());
    }
    let (parts, ()) = req
        .body(())
        .map_err(|e| format!("request: {e}"))?
        .into_parts();
    let request_id = forward::header_value(&uuid::Uuid::new_v4().to_string());
    let forwarded_for = HeaderValue::from_static("127.0.0.1");
    let forwarded_proto = HeaderValue::from_static("http");
    let exchange = async {
        let response = forwarder
            .forward(
                ReqHead::Hyper(&parts),
                &body,
                target,
                Identity {
                    uin: asker.uin,
                    owner_uin,
                    request_id: &request_id,
                    forwarded_for: &forwarded_for,
                    forwarded_proto: &forwarded_proto,
                },
                &asker.service,
                now,
                tokio::time::Instant::now(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status;
        let bytes = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            response.body,
            256 * 1024,
        ))
        .await
        .map_err(|e| format!("answer: {e}"))?
        .to_bytes();
        if status != http::StatusCode::OK {
            return Err(format!("HTTP {status}"));
        }
        parse_describe(&bytes, group_id)
    };
    match tokio::time::timeout(settings.lookup_timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", settings.lookup_timeout)),
    }
}

/// The type of `group_id` in a `DescribeGroups` answer.
fn parse_describe(bytes: &[u8], group_id: &str) -> Result<Option<i64>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
    let response = &v["Response"];
    if let Some(code) = response["Error"]["Code"].as_str() {
        // The vendor's answer for a library that does not exist.
        if code == "InvalidParameterValue.ImageGroupIdNotExist" {
            return Ok(None);
        }
        return Err(format!("backend answered {code}"));
    }
    let groups = response["Groups"]
        .as_array()
        .ok_or_else(|| "answer has no Groups".to_owned())?;
    Ok(groups
        .iter()
        .find(|g| g["GroupId"].as_str() == Some(group_id))
        // GroupInfo's documented default type.
        .map(|g| g["GroupType"].as_i64().unwrap_or(1)))
}

/// Who asks, from a call's head: its identity and the version and region it spoke.
pub fn asker_of(req: ReqHead<'_>, uin: u64, secret_id: &str, service: &Service) -> Asker {
    let value = |field| {
        req.field(field)
            .and_then(|v| HeaderValue::from_bytes(v).ok())
    };
    Asker {
        uin,
        secret_id: secret_id.into(),
        service: Arc::clone(&service.name),
        version: value(Field::Version),
        region: value(Field::Region),
    }
}

/// Where learned changes are written.
#[derive(Debug, Clone)]
pub enum Destination {
    Store { url: String, actor: String },
    File(PathBuf),
}

/// Writes every change, in order, retrying until each is written; at `stop`, tries once
/// more what is still queued (a change lost here is learned again by the next call).
pub async fn writer(
    libraries: Arc<Libraries>,
    mut rx: mpsc::UnboundedReceiver<Change>,
    destination: Destination,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut out = Out {
        destination,
        client: None,
        file: None,
    };
    'changes: loop {
        let change = tokio::select! {
            c = rx.recv() => c,
            () = &mut stop => break,
        };
        let Some(change) = change else { break };
        let mut backoff = Duration::from_millis(100);
        loop {
            match out.write(&change).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "image library change not written yet: retrying");
                    out.client = None;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut stop => {
                            let _ = out.write(&change).await;
                            break 'changes;
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        libraries.metrics.pending_writes.dec();
    }
    while let Ok(change) = rx.try_recv() {
        match tokio::time::timeout(Duration::from_secs(2), out.write(&change)).await {
            Ok(Ok(())) => libraries.metrics.pending_writes.dec(),
            _ => tracing::warn!(?change, "image library change not written at shutdown"),
        }
    }
}

/// Where the writer writes, and what it holds open for it.
struct Out {
    destination: Destination,
    client: Option<tollgate_store::tokio_postgres::Client>,
    file: Option<BTreeMap<(u64, String), LibraryRow>>,
}

impl Out {
    async fn write(&mut self, change: &Change) -> anyhow::Result<()> {
        match &self.destination {
            Destination::Store { url, actor } => {
                write_store(&mut self.client, url, actor, change).await
            }
            Destination::File(path) => write_file(&mut self.file, path, change).await,
        }
    }
}

async fn write_store(
    client: &mut Option<tollgate_store::tokio_postgres::Client>,
    url: &str,
    actor: &str,
    change: &Change,
) -> anyhow::Result<()> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = Some(tollgate_store::connect(url, Duration::from_secs(5)).await?);
    }
    let c = client.as_mut().expect("connected");
    let w = tollgate_store::Write::begin(c, actor, Utc::now()).await?;
    let changed = match change {
        Change::Learn {
            owner_uin,
            group_id,
            group_type,
            source,
        } => w
            .learn_library(*owner_uin, group_id, *group_type, source)
            .await?
            .is_some(),
        Change::Delete {
            owner_uin,
            group_id,
        } => w.delete_library(*owner_uin, group_id).await?.is_some(),
    };
    if changed {
        w.commit().await?;
    } else {
        w.rollback().await?;
    }
    Ok(())
}

/// The libraries file: every library learned, deleted ones kept (settlement rates by them).
#[derive(serde::Serialize, serde::Deserialize)]
struct LibrariesFile {
    libraries: Vec<LibraryRow>,
}

/// Reads the libraries file (none yet: empty).
pub fn load_file(path: &Path) -> anyhow::Result<Vec<LibraryRow>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let f: LibrariesFile = serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            Ok(f.libraries)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

async fn write_file(
    held: &mut Option<BTreeMap<(u64, String), LibraryRow>>,
    path: &Path,
    change: &Change,
) -> anyhow::Result<()> {
    if held.is_none() {
        *held = Some(
            load_file(path)?
                .into_iter()
                .map(|r| ((r.owner_uin, r.group_id.clone()), r))
                .collect(),
        );
    }
    let rows = held.as_mut().expect("loaded");
    let now = Utc::now();
    let version = rows.values().map(|r| r.version).max().unwrap_or(0) + 1;
    match change {
        Change::Learn {
            owner_uin,
            group_id,
            group_type,
            source,
        } => {
            rows.insert(
                (*owner_uin, group_id.to_string()),
                LibraryRow {
                    owner_uin: *owner_uin,
                    group_id: group_id.to_string(),
                    group_type: *group_type,
                    source: (*source).to_owned(),
                    learned_at: now,
                    deleted_at: None,
                    version,
                },
            );
        }
        Change::Delete {
            owner_uin,
            group_id,
        } => {
            if let Some(r) = rows.get_mut(&(*owner_uin, group_id.to_string())) {
                r.deleted_at = Some(now);
                r.version = version;
            }
        }
    }
    let text = serde_json::to_vec_pretty(&LibrariesFile {
        libraries: rows.values().cloned().collect(),
    })?;
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        tollgate_usage::ledger_dir::write_atomic(&path, &text)
    })
    .await??;
    Ok(())
}

/// Asks again about libraries whose lookup failed, every `image_search.retry_interval_ms`,
/// through a pool of its own, until each type is known.
pub async fn retry(
    gateway: Arc<crate::proxy::Gateway>,
    forwarder: Arc<Forwarder>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let libraries = Arc::clone(gateway.libraries());
    let mut tick = tokio::time::interval(
        libraries
            .settings
            .retry_interval
            .min(Duration::from_secs(1)),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return,
        }
        for (owner_uin, group_id, asker) in libraries.due() {
            let snapshot = gateway.snapshot();
            let Some(service) = snapshot.loaded.catalog.service_by_name(&asker.service) else {
                continue;
            };
            let Some(target) = snapshot.upstream_of(service) else {
                continue;
            };
            match describe(
                &libraries.settings,
                owner_uin,
                &group_id,
                &asker,
                &snapshot.loaded.credentials,
                &forwarder,
                target,
            )
            .await
            {
                Ok(Some(t)) => libraries.learn(owner_uin, &group_id, t, "describe"),
                Ok(None) => {
                    tracing::debug!(owner_uin, group_id = %group_id, "library still unknown to the backend");
                    libraries.failed_lookup(owner_uin, &group_id, &asker);
                }
                Err(e) => {
                    tracing::debug!(owner_uin, group_id = %group_id, error = %e, "library lookup failed again");
                    libraries.failed_lookup(owner_uin, &group_id, &asker);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_describe_answer_gives_the_type_or_says_there_is_no_such_library() {
        let answer = br#"{"Response":{"Groups":[{"GroupId":"other","GroupType":1},{"GroupId":"pat","GroupType":6}],"RequestId":"r"}}"#;
        assert_eq!(parse_describe(answer, "pat"), Ok(Some(6)));
        assert_eq!(parse_describe(answer, "missing"), Ok(None));
        assert_eq!(
            parse_describe(
                br#"{"Response":{"Groups":[{"GroupId":"old"}],"RequestId":"r"}}"#,
                "old"
            ),
            Ok(Some(1))
        );
        assert_eq!(
            parse_describe(
                br#"{"Response":{"Error":{"Code":"InvalidParameterValue.ImageGroupIdNotExist","Message":"m"},"RequestId":"r"}}"#,
                "x"
            ),
            Ok(None)
        );
        assert!(
            parse_describe(
                br#"{"Response":{"Error":{"Code":"RequestLimitExceeded","Message":"m"},"RequestId":"r"}}"#,
                "x"
            )
            .is_err()
        );
        assert!(parse_describe(b"<html>", "x").is_err());
    }

    #[test]
    fn held_libraries_are_set_replaced_and_dropped() {
        let (libs, _rx) = Libraries::new(
            crate::settings::Settings::embedded().image_search,
            &Registry::new(),
        );
        libs.learn(1, "a", 6, "create");
        libs.learn(1, "b", 4, "create");
        libs.learn(2, "a", 1, "create");
        assert_eq!(libs.type_of(1, "a"), Some(6));
        assert_eq!(libs.type_of(2, "a"), Some(1));
        libs.forget(1, "a");
        assert_eq!(libs.type_of(1, "a"), None);
        assert_eq!(libs.type_of(1, "b"), Some(4));
        let row = LibraryRow {
            owner_uin: 1,
            group_id: "b".into(),
            group_type: 4,
            source: "create".into(),
            learned_at: Utc::now(),
            deleted_at: Some(Utc::now()),
            version: 9,
        };
        libs.absorb([&row]);
        assert_eq!(libs.type_of(1, "b"), None);
    }
}
