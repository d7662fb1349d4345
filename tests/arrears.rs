//! Arrears (issue 14): a settled month that leaves the balance negative stops service 24 hours
//! later on every replica, a top-up restores it at once, and a suspended month draws no pack
//! and no free pack. A private PostgreSQL (ledger and entitlement store), the admin API and
//! two replicas, all on one fake clock.

mod support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::json;
use support::servers::Postgres;
use support::{Builder, Call, ENTITLEMENTS, Harness, eventually, seed_store, store_source};
use tollgate_admin::client::Client;
use tollgate_core::clock::{Clock, FakeClock};
use tollgate_settlement::Month;
use tollgate_settlement::consumer::Ledger;

fn instant(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_balance_stops_service_a_day_later_and_a_top_up_restores_it() {
    let pg = Postgres::start();
    let url = pg.url();
    seed_store(&url, ENTITLEMENTS).await;
    let ledger = Ledger::connect(&url, Duration::from_secs(10))
        .await
        .unwrap();
    let clock = FakeClock::at("2026-12-01T10:00:00+08:00");
    let api = tollgate_admin::start(
        tollgate_admin::ServiceConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            store: url.clone(),
            config_dir: None,
        },
        clock.clone(),
    )
    .await
    .unwrap();
    let mut db = tollgate_store::connect(&url, Duration::from_secs(5))
        .await
        .unwrap();
    let token =
        tollgate_store::tokens::create(&db, "finance", &[tollgate_store::tokens::Scope::Write])
            .await
            .unwrap();
    let admin = Client::new(&format!("http://{}", api.addr), &token);
    let mut fleet = Vec::new();
    for _ in 0..2 {
        fleet.push(Arc::new(
            Harness::start(Builder {
                clock: Some(clock.clone()),
                entitlements_source: store_source(&url),
                ..Builder::default()
            })
            .await,
        ));
    }
    let reached = |version: i64| {
        let fleet = fleet.clone();
        async move {
            for h in &fleet {
                assert!(
                    eventually(Duration::from_secs(1), || async {
                        h.metric("tollgate_entitlements_version", &[]).await >= version as f64
                    })
                    .await,
                    "version {version} not in force within a second"
                );
            }
        }
    };
    // A prepaid pack bought before the stop, for the suspended month later.
    let pack = admin
        .write(
            Method::POST,
            "/v1/accounts/1/packs",
            &json!({"item": "ocr.general_basic", "size": 10000}),
            "pack-1",
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    let pack_id = pack["pack"]["id"].as_str().unwrap().to_owned();
    // November: 5,000 postpaid calls (no free pack then: OCR was activated in December).
    let nov_15 = instant("2026-11-15T10:00:00+08:00").timestamp();
    db.execute(
        "INSERT INTO usage_ledger (owner_uin, billing_item, interface, hour_start, month, units, records)
         VALUES (1, 'ocr.general_basic', 'GeneralBasicOCR', $1, '2026-11', 5000, 5000)",
        &[&nov_15],
    )
    .await
    .unwrap();
    let (catalog, book) = tollgate_admin::load_pricing(&None).unwrap();
    let november = Month::new(2026, 11).unwrap();
    let now = || chrono::DateTime::from_timestamp_nanos(clock.unix_nanos());
    // Not before the month is over.
    assert!(
        tollgate_settlement::arrears::settle_month(
            &mut db,
            &catalog,
            &book,
            Month::new(2026, 12).unwrap(),
            now()
        )
        .await
        .is_err()
    );
    let settled =
        tollgate_settlement::arrears::settle_month(&mut db, &catalog, &book, november, now())
            .await
            .unwrap();
    let one = settled.iter().find(|s| s.owner_uin == 1).unwrap();
    assert_eq!(one.amount, "750.00".parse().unwrap(), "{one:?}");
    assert_eq!(one.balance_after, "-750.00".parse().unwrap());
    assert_eq!(one.stop_at, Some(instant("2026-12-02T10:00:00+08:00")));
    // Settling again deducts nothing.
    let again =
        tollgate_settlement::arrears::settle_month(&mut db, &catalog, &book, november, now())
            .await
            .unwrap();
    let one_again = again.iter().find(|s| s.owner_uin == 1).unwrap();
    assert!(one_again.already);
    let version: i64 = db
        .query_one("SELECT version FROM entitlements.counter", &[])
        .await
        .unwrap()
        .get(0);
    reached(version).await;
    let balance: String = db
        .query_one(
            "SELECT balance::text FROM entitlements.accounts WHERE uin = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, "-750.00");

    // Served until 24 hours after the settlement, refused from then on, on every replica; a
    // sub-account too.
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    let sub = Call::new("ocr", "GeneralBasicOCR", "AKIDsubA");
    clock.set_wall("2026-12-02T09:59:59+08:00");
    for h in &fleet {
        assert!(h.call(&call).await.is_success());
    }
    clock.set_wall("2026-12-02T10:00:00+08:00");
    for h in &fleet {
        assert_eq!(
            h.call(&call).await.error_code(),
            Some("ResourceUnavailable.InArrears")
        );
        assert_eq!(
            h.call(&sub).await.error_code(),
            Some("ResourceUnavailable.InArrears")
        );
    }

    // Still suspended when January starts: January gets no free pack, and calls in flight at
    // the stop draw no pack (here: 100 units recorded on Jan 1, 00:00).
    clock.set_wall("2027-01-01T00:30:00+08:00");
    let jan_1 = instant("2027-01-01T00:00:00+08:00").timestamp();
    db.execute(
        "INSERT INTO usage_ledger (owner_uin, billing_item, interface, hour_start, month, units, records)
         VALUES (1, 'ocr.general_basic', 'GeneralBasicOCR', $1, '2027-01', 100, 100)",
        &[&jan_1],
    )
    .await
    .unwrap();
    let billing = tollgate_settlement::store::load_owner_billing(&url, 1, &catalog)
        .await
        .unwrap();
    assert!(billing.suspended_at(jan_1));
    let usage = ledger.usage(&catalog, 1).await.unwrap();
    let january = Month::new(2027, 1).unwrap();
    let s = tollgate_settlement::rating::rate_month(&catalog, &book, &billing, &usage, january)
        .unwrap();
    let line = s
        .lines
        .iter()
        .find(|l| l.item == "ocr.general_basic")
        .unwrap();
    assert_eq!(
        (line.free_units, line.prepaid_units, line.postpaid_units),
        (0, 0, 100),
        "{line:?}"
    );
    let left = s.balances.iter().find(|b| b.pack == pack_id).unwrap();
    assert_eq!(left.remaining, 10000);

    // A top-up back to zero or above restores service on every replica within a second.
    let short = admin
        .write(
            Method::POST,
            "/v1/accounts/1/topups",
            &json!({"amount": "700"}),
            "t-1",
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(short["restored"], false);
    reached(short["version"].as_i64().unwrap()).await;
    assert_eq!(
        fleet[0].call(&call).await.error_code(),
        Some("ResourceUnavailable.InArrears")
    );
    let enough = admin
        .write(
            Method::POST,
            "/v1/accounts/1/topups",
            &json!({"amount": "100.00"}),
            "t-2",
        )
        .await
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(enough["restored"], true, "{enough}");
    assert_eq!(enough["balance"], "50.00");
    reached(enough["version"].as_i64().unwrap()).await;
    for h in &fleet {
        assert!(h.call(&call).await.is_success());
    }
    // The suspension is closed at the top-up: usage from then on draws packs again.
    let billing = tollgate_settlement::store::load_owner_billing(&url, 1, &catalog)
        .await
        .unwrap();
    assert!(billing.suspended_at(jan_1));
    assert!(!billing.suspended_at(now().timestamp()));
    for h in fleet {
        if let Ok(h) = Arc::try_unwrap(h) {
            h.stop().await;
        }
    }
    api.shutdown().await;
}
