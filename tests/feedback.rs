//! Settlement tells the fleet when an owner's packs run out (issue 14): real NATS and
//! PostgreSQL started privately, the settlement consumer with live balances, the admin API,
//! two gateway replicas reading the entitlement store and shipping usage to NATS.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use support::servers::{Nats, Postgres};
use support::{Builder, Call, ENTITLEMENTS, Harness, eventually, seed_store, store_source};
use tollgate_admin::client::Client;
use tollgate_core::clock::SystemClock;
use tollgate_settlement::consumer::{self, ConsumerConfig, ConsumerMetrics, Ledger, Source};

/// The owner of the test: account 40, OCR activated, postpaid off, no exhausted items yet.
fn entitlements() -> String {
    ENTITLEMENTS.replace("exhausted = [\"ocr.general_basic\"]\n", "")
}

struct Fleet {
    _pg: Postgres,
    _nats: Nats,
    url: String,
    api: tollgate_admin::Running,
    admin: Client,
    gateways: Vec<Arc<Harness>>,
    consumer_stop: Option<tokio::sync::oneshot::Sender<()>>,
    consumer: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _spools: tempfile::TempDir,
}

impl Fleet {
    async fn start() -> Fleet {
        let pg = Postgres::start();
        let nats = Nats::start();
        let url = pg.url();
        seed_store(&url, &entitlements()).await;
        // The ledger's schema (the consumer would create it too).
        Ledger::connect(&url, Duration::from_secs(10))
            .await
            .unwrap();
        let api = tollgate_admin::start(
            tollgate_admin::ServiceConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                store: url.clone(),
                config_dir: None,
            },
            SystemClock::shared(),
        )
        .await
        .unwrap();
        let db = tollgate_store::connect(&url, Duration::from_secs(5))
            .await
            .unwrap();
        let token =
            tollgate_store::tokens::create(&db, "billing", &[tollgate_store::tokens::Scope::Write])
                .await
                .unwrap();
        let admin = Client::new(&format!("http://{}", api.addr), &token);

        let metrics = Arc::new(ConsumerMetrics::new());
        let (catalog, book) = tollgate_admin::load_pricing(&None).unwrap();
        let live = Arc::new(tollgate_settlement::live::Live {
            catalog,
            book,
            metrics: tollgate_settlement::live::LiveMetrics::new(&metrics.registry),
        });
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let consumer = tokio::spawn(consumer::run(
            ConsumerConfig {
                postgres: url.clone(),
                source: Source::Nats {
                    url: nats.url(),
                    stream: "TOLLGATE_USAGE".into(),
                    durable: "settlement".into(),
                },
                reconcile_grace: Duration::from_secs(1),
                reconcile_interval: Duration::from_millis(500),
                crash_after_commit: None,
                live: Some(live),
            },
            metrics,
            async move {
                let _ = rx.await;
            },
        ));
        let spools = tempfile::tempdir().unwrap();
        let mut gateways = Vec::new();
        for id in ["gw-a", "gw-b"] {
            let metering = format!(
                "[metering]\nsink = \"spool\"\ngateway_id = \"{id}\"\nspool_dir = \"{}\"\nship_to = \"nats\"\nnats_url = \"{}\"\n",
                spools.path().join(id).display(),
                nats.url()
            );
            gateways.push(Arc::new(
                Harness::start(Builder {
                    metering: Some(metering),
                    entitlements_source: store_source(&url),
                    ..Builder::default()
                })
                .await,
            ));
        }
        Fleet {
            _pg: pg,
            _nats: nats,
            url,
            api,
            admin,
            gateways,
            consumer_stop: Some(stop),
            consumer: Some(consumer),
            _spools: spools,
        }
    }

    async fn write(
        &self,
        method: Method,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        self.admin
            .write(method, path, &body, &uuid::Uuid::new_v4().to_string())
            .await
            .unwrap()
            .ok()
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    async fn stop(mut self) {
        for h in self.gateways.drain(..) {
            if let Ok(h) = Arc::try_unwrap(h) {
                h.stop().await;
            }
        }
        let _ = self.consumer_stop.take().unwrap().send(());
        let _ = self.consumer.take().unwrap().await;
        self.api.shutdown().await;
    }
}

/// The month's free pack of `ocr.general_basic` (1,000 calls) used up before the test.
async fn free_pack_used(url: &str, owner: i64) {
    let db = tollgate_store::connect(url, Duration::from_secs(5))
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let month = tollgate_settlement::Month::of_unix(now);
    db.execute(
        "INSERT INTO usage_ledger (owner_uin, billing_item, interface, hour_start, month, units, records)
         VALUES ($1, 'ocr.general_basic', 'GeneralBasicOCR', $2, $3, 1000, 1000)",
        &[&owner, &month.start(), &month.to_string()],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepaid_only_owner_is_refused_on_every_replica_once_its_pack_runs_out() {
    let f = Fleet::start().await;
    free_pack_used(&f.url, 40).await;
    let today = chrono::Utc::now()
        .with_timezone(&tollgate_core::clock::beijing())
        .date_naive();
    // 200 calls a second need the limit: a 100-QPS overlay on each replica's 20.
    f.write(
        Method::POST,
        "/v1/accounts/40/overlays",
        json!({"interface": "ocr.GeneralBasicOCR", "qps": 100, "start": today, "end": today}),
    )
    .await;
    let bought = f
        .write(
            Method::POST,
            "/v1/accounts/40/packs",
            json!({"item": "ocr.general_basic", "size": 1000}),
        )
        .await;
    let pack = bought["pack"]["id"].as_str().unwrap().to_owned();
    for h in &f.gateways {
        assert!(
            eventually(Duration::from_secs(5), || async {
                h.metric("tollgate_entitlements_version", &[]).await
                    >= bought["version"].as_i64().unwrap() as f64
            })
            .await
        );
    }

    // 200 calls a second, open loop, alternating replicas, for 12 seconds.
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDexhausted");
    let started = Instant::now();
    let wall_started = chrono::Utc::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..2400usize {
        ticker.tick().await;
        let h = Arc::clone(&f.gateways[i % 2]);
        let c = call.clone();
        set.spawn(async move {
            let r = h.call(&c).await;
            (i % 2, Instant::now(), r.error_code().map(str::to_owned))
        });
    }
    let mut replies = Vec::new();
    while let Some(r) = set.join_next().await {
        replies.push(r.unwrap());
    }
    let ok = replies.iter().filter(|r| r.2.is_none()).count();
    let run_out = replies
        .iter()
        .filter(|r| r.2.as_deref() == Some("ResourceUnavailable.ResourcePackageRunOut"))
        .count();
    let other: Vec<_> = replies
        .iter()
        .filter_map(|r| r.2.as_deref())
        .filter(|c| *c != "ResourceUnavailable.ResourcePackageRunOut")
        .collect();
    assert!(other.is_empty(), "{:?}", &other[..other.len().min(5)]);

    // When settlement reported the pack used up (the audit row of its write).
    let db = tollgate_store::connect(&f.url, Duration::from_secs(5))
        .await
        .unwrap();
    let row = db
        .query_one(
            "SELECT at FROM entitlements.audit WHERE actor = 'settlement' AND target = 'account 40' ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let reported: chrono::DateTime<chrono::Utc> = row.get(0);
    let reported_at = started + (reported - wall_started).to_std().unwrap_or_default();
    // Each replica's last success: how long after the report it still served.
    let mut after = Duration::ZERO;
    for replica in 0..2 {
        let last_ok = replies
            .iter()
            .filter(|r| r.0 == replica && r.2.is_none())
            .map(|r| r.1)
            .max()
            .unwrap();
        after = after.max(last_ok.saturating_duration_since(reported_at));
    }
    let over = ok.saturating_sub(1000);
    println!(
        "200 calls/s on 2 replicas: {ok} served, {run_out} refused ResourcePackageRunOut; \
         served beyond the 1,000-call pack: {over}; last call served {after:?} after settlement reported the pack used up"
    );
    assert!(run_out > 0, "never refused");
    assert!(after <= Duration::from_secs(5), "{after:?}");

    // Every served call reaches the ledger; the statement: 1,000 prepaid, 0 postpaid, the
    // rest over-served and unbilled; the live balance agrees.
    let ledger = Ledger::connect(&f.url, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            ledger.total_units().await.unwrap() == 1000 + ok as i64
        })
        .await,
        "ledger {} != {}",
        ledger.total_units().await.unwrap(),
        1000 + ok
    );
    let (catalog, book) = tollgate_admin::load_pricing(&None).unwrap();
    let billing = tollgate_settlement::store::load_owner_billing(&f.url, 40, &catalog)
        .await
        .unwrap();
    let usage = ledger.usage(&catalog, 40).await.unwrap();
    let month = tollgate_settlement::Month::of_unix(chrono::Utc::now().timestamp());
    let s =
        tollgate_settlement::rating::rate_month(&catalog, &book, &billing, &usage, month).unwrap();
    let line = s
        .lines
        .iter()
        .find(|l| l.item == "ocr.general_basic")
        .unwrap();
    assert_eq!(line.free_units, 1000);
    assert_eq!(line.prepaid_units, 1000);
    assert_eq!(line.postpaid_units, 0);
    assert_eq!(line.overserved_units as usize, over);
    let remaining: i64 = db
        .query_one(
            "SELECT remaining FROM pack_balances WHERE owner_uin = 40 AND pack = $1",
            &[&pack],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(remaining, 0);

    // A pack bought through the admin API lifts the refusal on every replica within a second.
    let since = Instant::now();
    let lifted = f
        .write(
            Method::POST,
            "/v1/accounts/40/packs",
            json!({"item": "ocr.general_basic", "size": 1000}),
        )
        .await;
    for h in &f.gateways {
        assert!(
            eventually(Duration::from_secs(1), || async {
                h.metric("tollgate_entitlements_version", &[]).await
                    >= lifted["version"].as_i64().unwrap() as f64
            })
            .await
        );
        assert!(h.call(&call).await.error_code().is_none());
    }
    println!(
        "a new pack lifted the refusal on both replicas {:?} after the API answered",
        since.elapsed()
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postpaid_on_the_owner_is_never_refused_and_the_excess_is_priced() {
    let f = Fleet::start().await;
    free_pack_used(&f.url, 40).await;
    f.write(
        Method::PUT,
        "/v1/accounts/40/postpaid",
        json!({"enabled": true}),
    )
    .await;
    let today = chrono::Utc::now()
        .with_timezone(&tollgate_core::clock::beijing())
        .date_naive();
    f.write(
        Method::POST,
        "/v1/accounts/40/overlays",
        json!({"interface": "ocr.GeneralBasicOCR", "qps": 100, "start": today, "end": today}),
    )
    .await;
    let bought = f
        .write(
            Method::POST,
            "/v1/accounts/40/packs",
            json!({"item": "ocr.general_basic", "size": 1000}),
        )
        .await;
    for h in &f.gateways {
        assert!(
            eventually(Duration::from_secs(5), || async {
                h.metric("tollgate_entitlements_version", &[]).await
                    >= bought["version"].as_i64().unwrap() as f64
            })
            .await
        );
    }
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDexhausted");
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..1600usize {
        ticker.tick().await;
        let h = Arc::clone(&f.gateways[i % 2]);
        let c = call.clone();
        set.spawn(async move { h.call(&c).await.error_code().map(str::to_owned) });
    }
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    while let Some(r) = set.join_next().await {
        *codes
            .entry(r.unwrap().unwrap_or_else(|| "success".into()))
            .or_default() += 1;
    }
    assert_eq!(codes.get("success"), Some(&1600), "{codes:?}");
    // Settlement still reports the packs used up (a fact); postpaid on, the gate lets calls by.
    let ledger = Ledger::connect(&f.url, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            ledger.total_units().await.unwrap() == 1000 + 1600
        })
        .await
    );
    let (catalog, book) = tollgate_admin::load_pricing(&None).unwrap();
    let billing = tollgate_settlement::store::load_owner_billing(&f.url, 40, &catalog)
        .await
        .unwrap();
    let usage = ledger.usage(&catalog, 40).await.unwrap();
    let month = tollgate_settlement::Month::of_unix(chrono::Utc::now().timestamp());
    let s =
        tollgate_settlement::rating::rate_month(&catalog, &book, &billing, &usage, month).unwrap();
    let line = s
        .lines
        .iter()
        .find(|l| l.item == "ocr.general_basic")
        .unwrap();
    assert_eq!((line.free_units, line.prepaid_units), (1000, 1000));
    assert_eq!(line.postpaid_units, 600);
    assert_eq!(line.overserved_units, 0);
    // 600 calls in the first tier (0 to 10,000 calls at 0.15 CNY a call).
    assert_eq!(line.amount, Some("90.00".parse().unwrap()), "{line:?}");
    f.stop().await;
}
