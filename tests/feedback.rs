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
    consumer_metrics: Arc<ConsumerMetrics>,
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
        let live = Arc::new(tollgate_settlement::live::Live::new(
            catalog,
            book,
            &metrics.registry,
            None,
        ));
        let consumer_metrics = Arc::clone(&metrics);
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
            consumer_metrics,
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

    /// Waits until every replica enforces store version `version`, for at most `within`.
    async fn reached(&self, version: i64, within: Duration) {
        for h in &self.gateways {
            assert!(
                eventually(within, || async {
                    h.metric("tollgate_entitlements_version", &[]).await >= version as f64
                })
                .await,
                "version {version} not in force within {within:?}"
            );
        }
    }

    /// A 100-QPS overlay on each replica's 20 for today (200 calls a second need it) and a
    /// 1,000-call prepaid pack for account 40, in force on every replica. The purchase's answer.
    async fn overlay_and_pack(&self) -> serde_json::Value {
        let today = chrono::Utc::now()
            .with_timezone(&tollgate_core::clock::beijing())
            .date_naive();
        self.write(
            Method::POST,
            "/v1/accounts/40/overlays",
            json!({"interface": "ocr.GeneralBasicOCR", "qps": 100, "start": today, "end": today}),
        )
        .await;
        let bought = self
            .write(
                Method::POST,
                "/v1/accounts/40/packs",
                json!({"item": "ocr.general_basic", "size": 1000}),
            )
            .await;
        self.reached(bought["version"].as_i64().unwrap(), Duration::from_secs(5))
            .await;
        bought
    }

    /// Offers `n` copies of `call` at 200 a second, open loop, alternating replicas: for
    /// each, the replica, when it was answered and its error code.
    async fn offer(&self, call: &Call, n: usize) -> Vec<(usize, Instant, Option<String>)> {
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            ticker.tick().await;
            let h = Arc::clone(&self.gateways[i % 2]);
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
        replies
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

/// Account 40's `ocr.general_basic` line of this month's statement, as the ledger and the
/// store have it.
async fn general_basic_line(url: &str, ledger: &Ledger) -> tollgate_settlement::rating::ItemLine {
    let (catalog, book) = tollgate_admin::load_pricing(&None).unwrap();
    let billing = tollgate_settlement::store::load_owner_billing(url, 40, &catalog)
        .await
        .unwrap();
    let usage = ledger.usage(&catalog, 40).await.unwrap();
    let month = tollgate_settlement::Month::of_unix(chrono::Utc::now().timestamp());
    let s =
        tollgate_settlement::rating::rate_month(&catalog, &book, &billing, &usage, month).unwrap();
    s.lines
        .into_iter()
        .find(|l| l.item == "ocr.general_basic")
        .unwrap()
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
    let bought = f.overlay_and_pack().await;
    let pack = bought["pack"]["id"].as_str().unwrap().to_owned();

    // 200 calls a second, open loop, alternating replicas, for 12 seconds.
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDexhausted");
    let started = Instant::now();
    let wall_started = chrono::Utc::now();
    let replies = f.offer(&call, 2400).await;
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

    // When settlement reported the pack used up (the audit row of its write), if it had to:
    // spend leases may have stopped the owner first, within the pack.
    let db = tollgate_store::connect(&f.url, Duration::from_secs(5))
        .await
        .unwrap();
    let row = db
        .query_opt(
            "SELECT at FROM entitlements.audit WHERE actor = 'settlement' AND target = 'account 40' ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let over = ok.saturating_sub(1000);
    let reported = match row {
        Some(row) => {
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
            assert!(after <= Duration::from_secs(5), "{after:?}");
            format!("the last call served {after:?} after settlement reported the pack used up")
        }
        None => "settlement never had to report it: spend leases stopped the owner within the pack"
            .into(),
    };
    // The first refusal: how long the pack lasted at 200 calls/s.
    let first_refusal = replies
        .iter()
        .filter(|r| r.2.is_some())
        .map(|r| r.1.duration_since(started))
        .min()
        .unwrap();
    println!(
        "200 calls/s on 2 replicas: {ok} served, {run_out} refused ResourcePackageRunOut (the first {first_refusal:?} in); served beyond the 1,000-call pack: {over}; {reported}"
    );
    assert!(run_out > 0, "never refused");
    // The bound (README): calls in flight plus, per replica, a lease and a key's first-lease
    // advance (spend_lease_units = 20 by default).
    let bound = 2 * (2 * 20) + 10;
    assert!(over <= bound, "{over} served beyond the pack > {bound}");
    for h in &f.gateways {
        println!(
            "spend leases on a replica: {} units leased, {} calls refused for want of one",
            h.metric("tollgate_spend_leased_units_total", &[]).await,
            h.metric("tollgate_spend_refused_total", &[]).await
        );
    }
    for h in &f.gateways {
        let n = h
            .metric("tollgate_entitlements_change_lag_seconds_count", &[])
            .await;
        let sum = h
            .metric("tollgate_entitlements_change_lag_seconds_sum", &[])
            .await;
        assert!(n >= 1.0);
        println!(
            "change lag on a replica: {n} changes, mean {:.1} ms",
            sum / n * 1e3
        );
    }

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
    let line = general_basic_line(&f.url, &ledger).await;
    assert_eq!(line.free_units, 1000);
    assert_eq!(line.prepaid_units as usize, ok.min(1000));
    assert_eq!(line.postpaid_units, 0);
    assert_eq!(line.overserved_units as usize, over);
    // The consumer counted the over-served units too.
    assert!(
        eventually(Duration::from_secs(5), || async {
            support::metric_value(
                &f.consumer_metrics.render(),
                "tollgate_settlement_overserved_units_total",
                &[],
            ) == over as f64
        })
        .await,
        "{}",
        f.consumer_metrics.render()
    );
    let remaining: i64 = db
        .query_one(
            "SELECT remaining FROM pack_balances WHERE owner_uin = 40 AND pack = $1",
            &[&pack],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(remaining as usize, 1000 - ok.min(1000));

    // A pack bought through the admin API lifts the refusal on every replica within a second.
    let since = Instant::now();
    let lifted = f
        .write(
            Method::POST,
            "/v1/accounts/40/packs",
            json!({"item": "ocr.general_basic", "size": 1000}),
        )
        .await;
    f.reached(lifted["version"].as_i64().unwrap(), Duration::from_secs(1))
        .await;
    for h in &f.gateways {
        // The replica's spend lease is refilled from the raised budget at its next round.
        assert!(
            eventually(Duration::from_secs(1), || async {
                h.call(&call).await.error_code().is_none()
            })
            .await,
            "still refused a second after a new pack"
        );
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
    f.overlay_and_pack().await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDexhausted");
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for (_, _, code) in f.offer(&call, 1600).await {
        *codes
            .entry(code.unwrap_or_else(|| "success".into()))
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
    let line = general_basic_line(&f.url, &ledger).await;
    assert_eq!((line.free_units, line.prepaid_units), (1000, 1000));
    assert_eq!(line.postpaid_units, 600);
    assert_eq!(line.overserved_units, 0);
    // 600 calls in the first tier (0 to 10,000 calls at 0.15 CNY a call).
    assert_eq!(line.amount, Some("90.00".parse().unwrap()), "{line:?}");
    f.stop().await;
}

/// Usage of `item` by `owner` in the Beijing hour that starts at `hour` (added to the row).
async fn used(
    db: &tollgate_store::tokio_postgres::Client,
    owner: i64,
    item: &str,
    interface: &str,
    hour: i64,
    units: i64,
) {
    let month = tollgate_settlement::Month::of_unix(hour).to_string();
    db.execute(
        "INSERT INTO usage_ledger (owner_uin, billing_item, interface, hour_start, month, units, records)
         VALUES ($1, $2, $3, $4, $5, $6, $6)
         ON CONFLICT (owner_uin, billing_item, interface, hour_start)
         DO UPDATE SET units = usage_ledger.units + EXCLUDED.units",
        &[&owner, &item, &interface, &hour, &month, &units],
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pack_notices_go_out_on_the_hour_and_merge_when_both_thresholds_pass() {
    let pg = Postgres::start();
    let url = pg.url();
    seed_store(&url, &entitlements()).await;
    let mut ledger_db = tollgate_store::connect(&url, Duration::from_secs(5))
        .await
        .unwrap();
    Ledger::connect(&url, Duration::from_secs(10))
        .await
        .unwrap();
    let (catalog, book) = tollgate_admin::load_pricing(&None).unwrap();
    let live =
        tollgate_settlement::live::Live::new(catalog, book, &prometheus::Registry::new(), None);
    // Tomorrow (Beijing), so the accounts' activation (at the import) is before it.
    let day = chrono::Utc::now()
        .with_timezone(&tollgate_core::clock::beijing())
        .date_naive()
        + chrono::Days::new(1);
    let at = |hm: &str| {
        chrono::DateTime::parse_from_rfc3339(&format!("{day}T{hm}:00+08:00"))
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let month_start = tollgate_settlement::Month::of_unix(at("09:00").timestamp()).start();
    // One prepaid pack each, bought the day before; the month's free packs used up.
    {
        let w = tollgate_store::Write::begin(&mut ledger_db, "test", at("00:00"))
            .await
            .unwrap();
        let before = at("00:00") - chrono::Duration::hours(12);
        w.insert_pack(
            "p-ocr",
            40,
            "ocr.general_basic",
            1000,
            before,
            "120".parse().unwrap(),
        )
        .await
        .unwrap();
        w.insert_pack(
            "p-seg",
            1,
            "bda.segment",
            10000,
            before,
            "88".parse().unwrap(),
        )
        .await
        .unwrap();
        w.commit().await.unwrap();
    }
    used(
        &ledger_db,
        40,
        "ocr.general_basic",
        "GeneralBasicOCR",
        month_start,
        1000,
    )
    .await;
    used(
        &ledger_db,
        1,
        "bda.segment",
        "SegmentPortraitPic",
        month_start,
        1000,
    )
    .await;
    let settle = |owner: u64, now: chrono::DateTime<chrono::Utc>| {
        let live = &live;
        let url = url.clone();
        async move {
            let mut c = tollgate_store::connect(&url, Duration::from_secs(5))
                .await
                .unwrap();
            let tx = c.transaction().await.unwrap();
            live.settle_and_commit(tx, &[owner], now).await.unwrap();
        }
    };
    let hour9 = at("09:00").timestamp();
    let hour14 = at("14:00").timestamp();

    // OCR: below 20% at 09:40, used up at 09:55: one merged notice at 10:00.
    used(
        &ledger_db,
        40,
        "ocr.general_basic",
        "GeneralBasicOCR",
        hour9,
        850,
    )
    .await;
    settle(40, at("09:40")).await;
    used(
        &ledger_db,
        40,
        "ocr.general_basic",
        "GeneralBasicOCR",
        hour9,
        150,
    )
    .await;
    settle(40, at("09:55")).await;
    // Portrait segmentation: 1,900 of 10,000 left (19%) at 14:05 is above its 15%; 1,400 at
    // 14:10 is below: a notice at 15:00.
    used(
        &ledger_db,
        1,
        "bda.segment",
        "SegmentPortraitPic",
        hour14,
        8100,
    )
    .await;
    settle(1, at("14:05")).await;
    used(
        &ledger_db,
        1,
        "bda.segment",
        "SegmentPortraitPic",
        hour14,
        500,
    )
    .await;
    settle(1, at("14:10")).await;

    assert!(
        tollgate_settlement::notify::due(&mut ledger_db, at("09:59"))
            .await
            .unwrap()
            .is_empty()
    );
    let ten = tollgate_settlement::notify::due(&mut ledger_db, at("10:00"))
        .await
        .unwrap();
    assert_eq!(ten.len(), 1, "{ten:?}");
    assert_eq!(
        (ten[0].owner_uin, ten[0].pack.as_str(), ten[0].kind.as_str()),
        (40, "p-ocr", "exhausted")
    );
    assert_eq!(ten[0].due_at, at("10:00"));
    assert_eq!(ten[0].threshold_percent, 20);
    assert!(
        tollgate_settlement::notify::due(&mut ledger_db, at("14:59"))
            .await
            .unwrap()
            .is_empty()
    );
    let fifteen = tollgate_settlement::notify::due(&mut ledger_db, at("15:00"))
        .await
        .unwrap();
    assert_eq!(fifteen.len(), 1, "{fifteen:?}");
    assert_eq!(
        (
            fifteen[0].owner_uin,
            fifteen[0].pack.as_str(),
            fifteen[0].kind.as_str()
        ),
        (1, "p-seg", "low_balance")
    );
    assert_eq!(
        (fifteen[0].remaining, fifteen[0].threshold_percent),
        (1400, 15)
    );
    // Sent once.
    assert!(
        tollgate_settlement::notify::due(&mut ledger_db, at("16:00"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocr_accounts_activated_before_2021_12_14_switch_to_postpaid_when_packs_run_out() {
    let pg = Postgres::start();
    let url = pg.url();
    seed_store(&url, &entitlements()).await;
    Ledger::connect(&url, Duration::from_secs(10))
        .await
        .unwrap();
    let mut db = tollgate_store::connect(&url, Duration::from_secs(5))
        .await
        .unwrap();
    db.execute(
        "UPDATE entitlements.activations SET activated_at = '2021-06-01T10:00:00+08:00' WHERE owner_uin = 40",
        &[],
    )
    .await
    .unwrap();
    let (catalog, book) = tollgate_admin::load_pricing(&None).unwrap();
    let live =
        tollgate_settlement::live::Live::new(catalog, book, &prometheus::Registry::new(), None);
    let now = chrono::Utc::now();
    let month = tollgate_settlement::Month::of_unix(now.timestamp());
    // The month's free pack and 10 calls more: nothing covers them.
    used(
        &db,
        40,
        "ocr.general_basic",
        "GeneralBasicOCR",
        month.start(),
        1010,
    )
    .await;
    let tx = db.transaction().await.unwrap();
    live.settle_and_commit(tx, &[40], now).await.unwrap();
    let row = db
        .query_one(
            "SELECT postpaid, exhausted FROM entitlements.accounts WHERE uin = 40",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "postpaid was not switched on");
    assert_eq!(
        row.get::<_, Vec<String>>(1),
        vec!["ocr.general_basic".to_owned()]
    );
    let audit = db
        .query_one(
            "SELECT actor, before->>'postpaid', after->>'postpaid' FROM entitlements.audit
             WHERE target = 'account 40' AND actor = 'settlement'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (audit.get::<_, String>(1), audit.get::<_, String>(2)),
        ("false".into(), "true".into())
    );
}
