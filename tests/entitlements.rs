//! Entitlements as a service (issue 13): a private PostgreSQL, the admin API in front of it,
//! and three gateway replicas reading it (`[entitlements] source = "postgres"`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{Value, json};
use support::servers::Postgres;
use support::{
    Builder, Call, ENTITLEMENTS, Harness, count_codes, eventually, seed_store, store_source,
};
use tollgate_admin::client::Client;
use tollgate_core::clock::{Clock, FakeClock, SystemClock};

/// One PostgreSQL and three gateways per test: one test at a time on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Service {
    pg: Postgres,
    /// Each replica's cached snapshot (`entitlements.cache_file`) lives here, so a replica
    /// restarted in its place finds it.
    caches: tempfile::TempDir,
    clock: Option<Arc<FakeClock>>,
    api: Option<tollgate_admin::Running>,
    write: Client,
    read: Client,
    anonymous: Client,
    fleet: Vec<Arc<Harness>>,
}

impl Service {
    /// The store seeded with the test accounts, the admin API on `clock`, three replicas.
    async fn start(clock: Option<Arc<FakeClock>>) -> Service {
        Self::with_replicas(clock, 3).await
    }

    async fn with_replicas(clock: Option<Arc<FakeClock>>, replicas: usize) -> Service {
        let pg = Postgres::start();
        seed_store(&pg.url(), ENTITLEMENTS).await;
        let api_clock: Arc<dyn Clock> = match &clock {
            Some(c) => c.clone(),
            None => SystemClock::shared(),
        };
        let api = tollgate_admin::start(
            tollgate_admin::ServiceConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                store: pg.url(),
                config_dir: None,
            },
            api_clock,
        )
        .await
        .unwrap();
        let db = tollgate_store::connect(&pg.url(), Duration::from_secs(5))
            .await
            .unwrap();
        let w = tollgate_store::tokens::create(
            &db,
            "test-writer",
            &[tollgate_store::tokens::Scope::Write],
        )
        .await
        .unwrap();
        let r = tollgate_store::tokens::create(
            &db,
            "test-reader",
            &[tollgate_store::tokens::Scope::Read],
        )
        .await
        .unwrap();
        let base = format!("http://{}", api.addr);
        let caches = tempfile::tempdir().unwrap();
        let mut fleet = Vec::new();
        for i in 0..replicas {
            fleet.push(Arc::new(
                Harness::start(replica(&pg, &caches, clock.clone(), i)).await,
            ));
        }
        Service {
            pg,
            caches,
            clock,
            api: Some(api),
            write: Client::new(&base, &w),
            read: Client::new(&base, &r),
            anonymous: Client::new(&base, ""),
            fleet,
        }
    }

    /// A write with a fresh idempotency key; its answer, which must be a success.
    async fn send(&self, method: Method, path: &str, body: Value) -> Value {
        let key = uuid::Uuid::new_v4().to_string();
        self.write
            .write(method.clone(), path, &body, &key)
            .await
            .unwrap()
            .ok()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.send(Method::POST, path, body).await
    }

    async fn put(&self, path: &str, body: Value) -> Value {
        self.send(Method::PUT, path, body).await
    }

    /// Waits until every replica enforces store version `version` (each polled on its own
    /// every 2 ms); the slowest replica's delay since `since`.
    async fn reached(&self, version: i64, since: Instant) -> Duration {
        let mut set = tokio::task::JoinSet::new();
        for h in &self.fleet {
            let h = Arc::clone(h);
            set.spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(15);
                loop {
                    if h.metric("tollgate_entitlements_version", &[]).await >= version as f64 {
                        return since.elapsed();
                    }
                    assert!(
                        Instant::now() < deadline,
                        "a replica never reached version {version}: {}",
                        h.metrics().await
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
        let mut slowest = Duration::ZERO;
        while let Some(d) = set.join_next().await {
            slowest = slowest.max(d.unwrap());
        }
        slowest
    }

    /// Stops replica `i` and starts a new one in its place (same cached snapshot).
    async fn restart(&mut self, i: usize) {
        let old = std::mem::replace(
            &mut self.fleet[i],
            Arc::new(Harness::start(replica(&self.pg, &self.caches, self.clock.clone(), i)).await),
        );
        if let Ok(h) = Arc::try_unwrap(old) {
            h.stop().await;
        }
    }

    async fn stop(mut self) {
        for h in self.fleet.drain(..) {
            if let Ok(h) = Arc::try_unwrap(h) {
                h.stop().await;
            }
        }
        if let Some(api) = self.api.take() {
            api.shutdown().await;
        }
        drop(self.pg);
    }
}

fn replica(
    pg: &Postgres,
    caches: &tempfile::TempDir,
    clock: Option<Arc<FakeClock>>,
    i: usize,
) -> Builder {
    Builder {
        clock,
        entitlements_source: format!(
            "{}cache_file = \"{}\"\n",
            store_source(&pg.url()),
            caches.path().join(format!("replica-{i}.json")).display()
        ),
        ..Builder::default()
    }
}

fn version_of(answer: &Value) -> i64 {
    answer["version"]
        .as_i64()
        .expect("a write answers its version")
}

/// Fires `n` copies of `c` at `h` at once; the number that succeeded.
async fn admitted(h: &Arc<Harness>, c: &Call, n: usize) -> usize {
    h.burst(c, n)
        .await
        .iter()
        .filter(|r| r.is_success())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_bought_for_a_future_range_applies_from_beijing_midnight_on_every_replica() {
    let _serial = SERIAL.lock().await;
    let clock = FakeClock::at("2026-03-01T10:00:00+08:00");
    let s = Service::start(Some(clock.clone())).await;
    let c = Call::new("ocr", "IDCardOCR", "AKIDmain");

    let since = Instant::now();
    let bought = s
        .post(
            "/v1/accounts/1/overlays",
            json!({"interface": "ocr.IDCardOCR", "qps": 50, "start": "2026-03-05", "end": "2026-03-06"}),
        )
        .await;
    // Priced by the quote engine, and the instant it takes effect: 00:00 of its start date.
    assert_eq!(bought["effective_from"], "2026-03-05T00:00:00+08:00");
    assert_eq!(bought["until"], "2026-03-07T00:00:00+08:00");
    assert!(bought["price"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
    s.reached(version_of(&bought), since).await;

    // One second before: the default 20 on every replica (a fake clock: no refill during a
    // burst, so a burst admits exactly the limit).
    clock.set_wall("2026-03-04T23:59:58+08:00");
    for h in &s.fleet {
        assert_eq!(admitted(h, &c, 60).await, 20);
    }
    clock.set_wall("2026-03-05T00:00:00+08:00");
    for h in &s.fleet {
        assert_eq!(admitted(h, &c, 100).await, 70);
    }
    let shown = s.read.get("/v1/accounts/1").await.unwrap().ok().unwrap();
    let limit = shown["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["group"] == "ocr.IDCardOCR")
        .cloned()
        .unwrap();
    assert_eq!(limit["limit"], 70, "{limit}");
    clock.set_wall("2026-03-06T23:59:58+08:00");
    for h in &s.fleet {
        assert_eq!(admitted(h, &c, 100).await, 70);
    }
    // Not after 24:00 of its end date.
    clock.set_wall("2026-03-07T00:00:00+08:00");
    for h in &s.fleet {
        assert_eq!(admitted(h, &c, 60).await, 20);
    }

    // A purchase that breaks the class A cap (100 QPS per day) on 2026-03-06 is refused,
    // naming the day, and nothing is stored.
    let audit_before = s
        .read
        .get("/v1/audit?limit=1000")
        .await
        .unwrap()
        .ok()
        .unwrap()["entries"]
        .as_array()
        .unwrap()
        .len();
    clock.set_wall("2026-03-08T09:00:00+08:00");
    let _ = s
        .post(
            "/v1/accounts/1/overlays",
            json!({"interface": "ocr.IDCardOCR", "qps": 60, "start": "2026-03-09", "end": "2026-03-10"}),
        )
        .await;
    let refused = s
        .write
        .write(
            Method::POST,
            "/v1/accounts/1/overlays",
            &json!({"interface": "ocr.IDCardOCR", "qps": 41, "start": "2026-03-08", "end": "2026-03-12"}),
            "cap-breaker",
        )
        .await
        .unwrap();
    assert_eq!(refused.status, 422, "{}", refused.body);
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("exceeded on 2026-03-09"), "{message}");
    assert_eq!(refused.body["error"]["key"], "qps");
    let shown = s.read.get("/v1/accounts/1").await.unwrap().ok().unwrap();
    assert_eq!(shown["overlays"].as_array().unwrap().len(), 2, "{shown}");
    let audit_after = s
        .read
        .get("/v1/audit?limit=1000")
        .await
        .unwrap()
        .ok()
        .unwrap()["entries"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        audit_after,
        audit_before + 1,
        "only the accepted purchase is audited"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_bought_for_today_is_in_force_on_every_replica_within_a_second() {
    let _serial = SERIAL.lock().await;
    let s = Service::start(None).await;
    let c = Call::new("ocr", "IDCardOCR", "AKIDmain");
    // On the real clock a burst refills while it runs: the bound is the burst plus the rate
    // times the burst's duration.
    let bound = |qps: f64, took: Duration| (qps + qps * took.as_secs_f64()).ceil() as usize + 1;
    for h in &s.fleet {
        let t = Instant::now();
        let n = admitted(h, &c, 60).await;
        assert!(n <= bound(20.0, t.elapsed()), "{n} of 60 at 20 QPS");
    }
    let today = chrono::Utc::now()
        .with_timezone(&tollgate_core::clock::beijing())
        .date_naive();
    let since = Instant::now();
    let bought = s
        .post(
            "/v1/accounts/1/overlays",
            json!({"interface": "ocr.IDCardOCR", "qps": 80, "start": today, "end": today}),
        )
        .await;
    let delay = s.reached(version_of(&bought), since).await;
    println!("overlay for today: in force on all 3 replicas {delay:?} after the API answered");
    assert!(delay <= Duration::from_secs(1), "{delay:?}");
    // And over 20 more writes: from the API's answer to the slowest replica enforcing it.
    let mut delays = Vec::new();
    for i in 0..20 {
        let since = Instant::now();
        let w = s
            .put("/v1/accounts/1/postpaid", json!({"enabled": i % 2 == 1}))
            .await;
        delays.push(s.reached(version_of(&w), since).await);
    }
    delays.sort();
    println!(
        "propagation to the slowest of 3 replicas over 20 writes: median {:?}, max {:?}",
        delays[10], delays[19]
    );
    assert!(delays[19] <= Duration::from_secs(1), "{delays:?}");
    // The vendor's promise, answered: at most 15 minutes after purchase.
    let from =
        chrono::DateTime::parse_from_rfc3339(bought["effective_from"].as_str().unwrap()).unwrap();
    let by = chrono::DateTime::parse_from_rfc3339(bought["in_force_by"].as_str().unwrap()).unwrap();
    assert_eq!(by - from, chrono::Duration::minutes(15));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for h in &s.fleet {
        let t = Instant::now();
        let n = admitted(h, &c, 150).await;
        let most = bound(100.0, t.elapsed());
        assert!(
            n >= 90 && n <= most,
            "{n} of 150 admitted at 100 QPS (at most {most})"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_a_write_token_and_an_idempotency_key_and_are_audited() {
    let _serial = SERIAL.lock().await;
    let s = Service::start(None).await;
    let body = json!({"item": "ocr.general_basic", "size": 10000});
    // No token, no answer.
    let a = s.anonymous.get("/v1/accounts/1").await.unwrap();
    assert_eq!(a.status, 401);
    let a = s
        .anonymous
        .write(Method::POST, "/v1/accounts/1/packs", &body, "k1")
        .await
        .unwrap();
    assert_eq!(a.status, 401);
    let bad = Client::new(
        &format!("http://{}", s.api.as_ref().unwrap().addr),
        "tgt_nope_0123456789abcdef0123456789abcdef",
    );
    assert_eq!(bad.get("/v1/accounts/1").await.unwrap().status, 401);
    // A read token reads, and may not write.
    assert_eq!(s.read.get("/v1/accounts/1").await.unwrap().status, 200);
    let a = s
        .read
        .write(Method::POST, "/v1/accounts/1/packs", &body, "k1")
        .await
        .unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    // A write without an idempotency key is refused.
    let a = s
        .write
        .send(
            Method::POST,
            "/v1/accounts/1/packs",
            Some(body.to_string()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "MissingIdempotencyKey");

    // The same purchase retried with its key is stored once.
    let first = s
        .write
        .write(Method::POST, "/v1/accounts/1/packs", &body, "buy-1")
        .await
        .unwrap();
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(!first.replayed);
    let again = s
        .write
        .write(Method::POST, "/v1/accounts/1/packs", &body, "buy-1")
        .await
        .unwrap();
    assert_eq!(again.status, 201);
    assert!(again.replayed);
    assert_eq!(again.body["pack"]["id"], first.body["pack"]["id"]);
    // The same key with another request: refused, nothing bought.
    let other = s
        .write
        .write(
            Method::POST,
            "/v1/accounts/1/packs",
            &json!({"item": "ocr.general_basic", "size": 100000}),
            "buy-1",
        )
        .await
        .unwrap();
    assert_eq!(other.status, 422);
    assert_eq!(other.body["error"]["code"], "IdempotencyKeyReused");
    let shown = s.read.get("/v1/accounts/1").await.unwrap().ok().unwrap();
    let packs = shown["packs"].as_array().unwrap();
    assert_eq!(packs.len(), 1, "{shown}");
    // Concurrent retries of one key: one purchase.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let w = s.write.clone();
        let body = body.clone();
        set.spawn(async move {
            w.write(Method::POST, "/v1/accounts/1/packs", &body, "buy-2")
                .await
                .unwrap()
        });
    }
    let mut ids = std::collections::BTreeSet::new();
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 201, "{}", r.body);
        ids.insert(r.body["pack"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    let shown = s.read.get("/v1/accounts/1").await.unwrap().ok().unwrap();
    assert_eq!(shown["packs"].as_array().unwrap().len(), 2);

    // Every write is in the audit table: who, when, what, before, after.
    s.post(
        "/v1/accounts",
        json!({"uin": 500, "name": "new-main", "postpaid": false}),
    )
    .await;
    s.post(
        "/v1/accounts",
        json!({"uin": 501, "name": "new-sub", "owner": 500}),
    )
    .await;
    s.post("/v1/accounts/500/services", json!({"service": "ocr"}))
        .await;
    s.put("/v1/accounts/500/postpaid", json!({"enabled": true}))
        .await;
    let audit = s
        .read
        .get("/v1/audit?limit=1000")
        .await
        .unwrap()
        .ok()
        .unwrap();
    let entries = audit["entries"].as_array().unwrap();
    let by_action = |action: &str| entries.iter().filter(|e| e["action"] == action).count();
    assert_eq!(by_action("pack.buy"), 2);
    assert_eq!(
        by_action("account.create"),
        8 + 2,
        "8 imported accounts + 2"
    );
    assert!(by_action("service.activate") >= 1);
    let postpaid = entries
        .iter()
        .find(|e| e["action"] == "account.update")
        .unwrap();
    assert_eq!(postpaid["before"]["postpaid"], false);
    assert_eq!(postpaid["after"]["postpaid"], true);
    assert!(postpaid["actor"].as_str().unwrap().contains("test-writer"));
    assert!(postpaid["at"].is_string());
    // A sub-account may not hold main-account settings.
    let r = s
        .write
        .write(
            Method::PUT,
            "/v1/accounts/501/postpaid",
            &json!({"enabled": true}),
            "sub-pp",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    // The API counts its answers by route and status (no token needed for /metrics).
    let (status, text) = s.fleet[0]
        .get_text(s.api.as_ref().unwrap().addr, "/metrics")
        .await;
    assert_eq!(status, 200);
    let count = |route: &str, code: &str| {
        support::metric_value(
            &text,
            "tollgate_admin_requests_total",
            &[("route", route), ("status", code)],
        )
    };
    assert_eq!(count("/v1/accounts/{uin}/packs", "403"), 1.0, "{text}");
    assert_eq!(count("/v1/accounts/{uin}/packs", "422"), 1.0, "{text}");
    assert!(count("/v1/accounts/{uin}", "401") >= 2.0, "{text}");
    // The OpenAPI document is served.
    let doc = s.read.get("/v1/openapi.json").await.unwrap().ok().unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_credentials_stop_within_a_second_and_rotation_has_a_grace_period() {
    let _serial = SERIAL.lock().await;
    let clock = FakeClock::new(SystemClock::new().unix_nanos());
    let s = Service::start(Some(clock.clone())).await;
    let created = s.post("/v1/accounts/1/credentials", json!({})).await;
    let since = Instant::now();
    s.reached(version_of(&created), since).await;
    let call_with = |id: &str, key: &str| {
        let mut c = Call::new("ocr", "GeneralBasicOCR", id);
        c.secret_key = key.to_owned();
        c
    };
    let id = created["secret_id"].as_str().unwrap().to_owned();
    let key = created["secret_key"].as_str().unwrap().to_owned();
    for h in &s.fleet {
        assert!(h.call(&call_with(&id, &key)).await.is_success());
    }
    // Revoked: refused by every replica within a second.
    let since = Instant::now();
    let revoked = s
        .post(&format!("/v1/credentials/{id}/revoke"), json!({}))
        .await;
    let delay = s.reached(version_of(&revoked), since).await;
    println!("revocation: in force on all 3 replicas {delay:?} after the API answered");
    assert!(delay <= Duration::from_secs(1), "{delay:?}");
    for h in &s.fleet {
        let r = h.call(&call_with(&id, &key)).await;
        assert_eq!(r.error_code(), Some("AuthFailure.SecretIdNotFound"));
    }

    // Rotation: both keys work during the grace period, only the new one after it.
    let old = s.post("/v1/accounts/1/credentials", json!({})).await;
    let (old_id, old_key) = (
        old["secret_id"].as_str().unwrap().to_owned(),
        old["secret_key"].as_str().unwrap().to_owned(),
    );
    let rotated = s
        .post(
            &format!("/v1/credentials/{old_id}/rotate"),
            json!({"grace_seconds": 60}),
        )
        .await;
    s.reached(version_of(&rotated), Instant::now()).await;
    let (new_id, new_key) = (
        rotated["secret_id"].as_str().unwrap().to_owned(),
        rotated["secret_key"].as_str().unwrap().to_owned(),
    );
    assert_ne!(new_id, old_id);
    clock.advance(Duration::from_secs(59));
    for h in &s.fleet {
        assert!(h.call(&call_with(&old_id, &old_key)).await.is_success());
        assert!(h.call(&call_with(&new_id, &new_key)).await.is_success());
    }
    clock.advance(Duration::from_secs(1));
    for h in &s.fleet {
        let r = h.call(&call_with(&old_id, &old_key)).await;
        assert_eq!(r.error_code(), Some("AuthFailure.SecretIdNotFound"));
        assert!(h.call(&call_with(&new_id, &new_key)).await.is_success());
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_stopped_for_30_seconds_the_fleet_serves_its_last_snapshot() {
    let _serial = SERIAL.lock().await;
    let mut s = Service::start(None).await;
    let c = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    s.pg.down();
    let stopped = Instant::now();
    // The replicas notice, keep serving, and say how old their snapshot is.
    for h in &s.fleet {
        assert!(
            eventually(Duration::from_secs(5), || async {
                h.metric("tollgate_entitlements_store_up", &[]).await == 0.0
            })
            .await
        );
    }
    while stopped.elapsed() < Duration::from_secs(30) {
        for h in &s.fleet {
            assert!(h.call(&c).await.is_success());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // A replica restarted during the outage starts from its cached snapshot and serves.
    s.restart(0).await;
    assert!(s.fleet[0].call(&c).await.is_success());
    assert_eq!(
        s.fleet[0]
            .metric("tollgate_entitlements_store_up", &[])
            .await,
        0.0
    );
    for h in &s.fleet {
        let age = h
            .metric("tollgate_entitlements_snapshot_age_seconds", &[])
            .await;
        assert!(age >= 28.0, "age {age}");
        let (status, text) = h.get_text(h.running.admin_addr, "/readyz").await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("STORE UNREACHABLE"), "{text}");
    }
    s.pg.up();
    // A change made after it comes back reaches every replica.
    let since = Instant::now();
    let answer = loop {
        let key = uuid::Uuid::new_v4().to_string();
        match s
            .write
            .write(
                Method::PUT,
                "/v1/accounts/1/state",
                &json!({"arrears": true}),
                &key,
            )
            .await
        {
            Ok(a) if a.status.is_success() => break a.body,
            _ if since.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("the admin API did not recover: {other:?}"),
        }
    };
    let delay = s.reached(version_of(&answer), since).await;
    println!(
        "after the outage: a change reached all 3 replicas {delay:?} after PostgreSQL came back"
    );
    for h in &s.fleet {
        assert_eq!(
            h.call(&c).await.error_code(),
            Some("ResourceUnavailable.InArrears")
        );
        assert!(
            h.metric("tollgate_entitlements_snapshot_age_seconds", &[])
                .await
                < 5.0
        );
        assert_eq!(h.metric("tollgate_entitlements_store_up", &[]).await, 1.0);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_through_the_api_admits_and_counts_then_enforces_again() {
    let _serial = SERIAL.lock().await;
    let clock = FakeClock::at("2026-04-01T10:00:00+08:00");
    let s = Service::start(Some(clock.clone())).await;
    let h = &s.fleet[0];
    let c = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    // 100 calls a second for 3 seconds of the fake clock, to a 20-QPS group.
    let offer = || async {
        let mut codes = Vec::new();
        for _ in 0..300 {
            codes.push(h.call(&c).await);
            clock.advance(Duration::from_millis(10));
        }
        codes
    };
    let on = s
        .put("/v1/shadow", json!({"groups": ["ocr.GeneralBasicOCR"]}))
        .await;
    s.reached(version_of(&on), Instant::now()).await;
    let replies = offer().await;
    assert!(
        replies.iter().all(|r| r.is_success()),
        "{:?}",
        count_codes(&replies)
    );
    let shadowed = h
        .metric(
            "tollgate_admission_decisions_total",
            &[
                ("group", "ocr.GeneralBasicOCR"),
                ("decision", "shadow_over_limit"),
            ],
        )
        .await;
    // 20 of burst, then 20 a second: 80 admitted of 300, ~220 (~73/s; 80/s after the burst).
    assert!((215.0..=225.0).contains(&shadowed), "{shadowed}");
    let off = s.put("/v1/shadow", json!({"groups": []})).await;
    s.reached(version_of(&off), Instant::now()).await;
    clock.advance(Duration::from_secs(2));
    let replies = offer().await;
    let codes = count_codes(&replies);
    let refused = codes.get("RequestLimitExceeded").copied().unwrap_or(0);
    assert!((215..=225).contains(&refused), "{codes:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_is_refunded_only_wholly_unused_and_within_seven_days_of_delivery() {
    let _serial = SERIAL.lock().await;
    let clock = FakeClock::at("2027-01-01T10:00:00+08:00");
    let s = Service::with_replicas(Some(clock.clone()), 0).await;
    // The usage ledger the consumer keeps, in the same database.
    tollgate_settlement::consumer::Ledger::connect(&s.pg.url(), Duration::from_secs(10))
        .await
        .unwrap();
    let pack = json!({"item": "ocr.general_basic", "size": 10000});
    let a = s.post("/v1/accounts/1/packs", pack.clone()).await;
    let b = s.post("/v1/accounts/1/packs", pack.clone()).await;
    clock.advance(Duration::from_secs(3600));
    let c = s.post("/v1/accounts/1/packs", pack.clone()).await;
    let id = |v: &Value| v["pack"]["id"].as_str().unwrap().to_owned();
    // 8,000 calls on Jan 2: past the free pack, into the earliest prepaid pack (A or B,
    // bought at the same instant: the rating engine's order decides which).
    let db = tollgate_store::connect(&s.pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let hour = chrono::DateTime::parse_from_rfc3339("2027-01-02T10:00:00+08:00")
        .unwrap()
        .timestamp();
    db.execute(
        "INSERT INTO usage_ledger (owner_uin, billing_item, interface, hour_start, month, units, records)
         VALUES (1, 'ocr.general_basic', 'GeneralBasicOCR', $1, '2027-01', 8000, 8000)",
        &[&hour],
    )
    .await
    .unwrap();
    let refund = |pack_id: String, key: &'static str| {
        let w = s.write.clone();
        async move {
            w.write(
                Method::POST,
                &format!("/v1/accounts/1/packs/{pack_id}/refund"),
                &json!({}),
                key,
            )
            .await
            .unwrap()
        }
    };
    // Bought Jan 1: refundable until Jan 8 inclusive.
    clock.set_wall("2027-01-08T23:59:59+08:00");
    let ra = refund(id(&a), "refund-a").await;
    let rb = refund(id(&b), "refund-b").await;
    let (used, unused) = if ra.status == 200 { (rb, ra) } else { (ra, rb) };
    assert_eq!(unused.status, 200, "{}", unused.body);
    // What was paid comes back.
    assert_eq!(unused.body["refund"], a["price"], "{}", unused.body);
    assert_eq!(used.status, 422, "{}", used.body);
    assert_eq!(used.body["error"]["code"], "PackUsed", "{}", used.body);
    // Once only.
    let unused_id = unused.body["pack"]["id"].as_str().unwrap().to_owned();
    let again = refund(unused_id, "refund-again").await;
    assert_eq!(again.status, 409, "{}", again.body);
    // Not from Jan 9 00:00.
    clock.set_wall("2027-01-09T00:00:00+08:00");
    let late = refund(id(&c), "refund-c").await;
    assert_eq!(late.status, 422, "{}", late.body);
    assert_eq!(late.body["error"]["code"], "RefundWindowClosed");
    assert!(
        late.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("until 2027-01-08"),
        "{}",
        late.body
    );
    // A refunded pack is not billed: the statement reads packs from the store.
    let billing = tollgate_settlement::store::load_owner_billing(
        &s.pg.url(),
        1,
        &tollgate_core::catalog::Catalog::embedded(),
    )
    .await
    .unwrap();
    assert_eq!(billing.packs.len(), 2, "{:?}", billing.packs);
    s.stop().await;
}
