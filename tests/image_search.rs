//! Image search is billed by its library's type (issue 17): gateways learn each library's
//! `GroupType` from the `CreateGroup` calls they forward or by asking the backend, share it
//! through the entitlement store, and bill `CreateImage`/`SearchImage` against the item the
//! type names; what cannot be resolved is billed unresolved and re-rated by settlement.
//! Real PostgreSQL (private), the stub backend as the vendor's image search.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use support::servers::Postgres;
use support::{
    Builder, Call, ENTITLEMENTS, Harness, eventually, seed_store, send_alone, store_source,
};
use tollgate_settlement::consumer::{self, ConsumerConfig, ConsumerMetrics, Ledger, Source};
use tollgate_stub::Stub;
use tollgate_stub::settings::StubSettings;

/// A stub backend of its own, outliving the gateways of a test.
async fn stub() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tollgate_stub::serve(
        listener,
        Stub::new(StubSettings::default()),
        async {
            let _ = rx.await;
        },
    ));
    (addr, stop)
}

/// A call made straight to the stub, as owner `owner` (a library made before any gateway).
async fn at_stub(stub: SocketAddr, owner: u64, action: &str, body: &str) -> Value {
    let req = Request::post(format!("http://{stub}/"))
        .header("content-type", "application/json")
        .header("x-tc-action", action)
        .header("x-tollgate-owner-uin", owner.to_string())
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    send_alone(req).await.json
}

async fn stub_calls(stub: SocketAddr, action: &str) -> u64 {
    let req = Request::get(format!("http://{stub}/stub/stats"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send_alone(req).await.json["actions"][action]["calls"]
        .as_u64()
        .unwrap_or(0)
}

async fn stub_fail(stub: SocketAddr, action: &str, on: bool) {
    let req = Request::builder()
        .method(if on { "POST" } else { "DELETE" })
        .uri(format!(
            "http://{stub}/stub/fail?action={action}&code=InternalError"
        ))
        .body(Full::new(Bytes::new()))
        .unwrap();
    send_alone(req).await;
}

fn tiia(action: &str, secret_id: &str, body: &str) -> Call {
    let mut c = Call::new("tiia", action, secret_id);
    c.body = body.as_bytes().to_vec();
    c
}

fn search(library: &str) -> Call {
    tiia(
        "SearchImage",
        "AKIDsubA",
        &format!(r#"{{"GroupId":"{library}","ImageUrl":"https://example.com/q.jpg"}}"#),
    )
}

async fn gateway(url: &str, stub: SocketAddr, metering: Option<String>) -> Arc<Harness> {
    Arc::new(
        Harness::start(Builder {
            upstream: Some(stub),
            entitlements_source: store_source(url),
            metering,
            ..Builder::default()
        })
        .await,
    )
}

/// The items the harness's usage records were billed against, by item.
fn billed(h: &Harness) -> std::collections::BTreeMap<String, u32> {
    let mut m = std::collections::BTreeMap::new();
    for r in h.usage() {
        *m.entry(r.billing_item.to_string()).or_default() += r.units;
    }
    m
}

async fn store_rows(url: &str) -> Vec<(i64, String, i64, String, bool)> {
    let c = tollgate_store::connect(url, Duration::from_secs(5))
        .await
        .unwrap();
    c.query(
        "SELECT owner_uin, group_id, group_type, source, deleted_at IS NOT NULL FROM entitlements.libraries ORDER BY group_id",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_libraries_bill_by_type_on_every_replica_and_are_forgotten_when_deleted() {
    let pg = Postgres::start();
    let url = pg.url();
    seed_store(&url, ENTITLEMENTS).await;
    let (stub, _stop) = stub().await;
    let a = gateway(&url, stub, None).await;
    let b = gateway(&url, stub, None).await;

    // Two libraries made through replica A (by a sub-account: they are its owner's).
    for body in [
        r#"{"GroupId":"patterns","GroupName":"p","GroupType":6}"#,
        r#"{"GroupId":"shoes","GroupName":"s","GroupType":5,"MaxCapacity":1000}"#,
        r#"{"GroupId":"plain","GroupName":"x"}"#,
    ] {
        let r = a.call(&tiia("CreateGroup", "AKIDsubA", body)).await;
        assert!(r.is_success(), "{:?}", r.json);
    }
    // A CreateGroup the backend refuses teaches nothing.
    let again = a
        .call(&tiia(
            "CreateGroup",
            "AKIDsubA",
            r#"{"GroupId":"patterns","GroupType":1}"#,
        ))
        .await;
    assert_eq!(
        again.error_code(),
        Some("InvalidParameterValue.ImageGroupIdAlreadyExist")
    );
    for lib in ["patterns", "shoes", "plain"] {
        assert!(a.call(&search(lib)).await.is_success());
    }
    let m = billed(&a);
    assert_eq!(m.get("tiia.similar_search_query"), Some(&1), "{m:?}");
    assert_eq!(m.get("tiia.search_query"), Some(&2), "{m:?}");
    // CreateImage into the similar library: its create item.
    assert!(
        a.call(&tiia(
            "CreateImage",
            "AKIDmain",
            r#"{"GroupId":"patterns","EntityId":"e1","PicName":"p1","ImageUrl":"https://example.com/i.jpg"}"#
        ))
        .await
        .is_success()
    );
    assert_eq!(billed(&a).get("tiia.similar_search_create"), Some(&1));

    // Durable and shared: the store holds them for owner 1, and replica B bills by them
    // without ever asking the backend.
    let want = vec![
        (1, "patterns".into(), 6, "create".into(), false),
        (1, "plain".into(), 4, "create".into(), false),
        (1, "shoes".into(), 5, "create".into(), false),
    ];
    assert!(
        eventually(Duration::from_secs(5), || async {
            store_rows(&url).await == want
        })
        .await,
        "{:?}",
        store_rows(&url).await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            b.running.gateway.libraries().type_of(1, "patterns") == Some(6)
        })
        .await
    );
    assert!(b.call(&search("patterns")).await.is_success());
    assert_eq!(billed(&b).get("tiia.similar_search_query"), Some(&1));
    assert_eq!(stub_calls(stub, "DescribeGroups").await, 0);

    // Deleted through B: the store marks it, A forgets it, and a call into it is refused by
    // the backend (unbilled).
    let del = b
        .call(&tiia(
            "DeleteGroup",
            "AKIDmain",
            r#"{"GroupId":"patterns"}"#,
        ))
        .await;
    assert!(del.is_success(), "{:?}", del.json);
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.running
                .gateway
                .libraries()
                .type_of(1, "patterns")
                .is_none()
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            store_rows(&url)
                .await
                .contains(&(1, "patterns".into(), 6, "create".into(), true))
        })
        .await
    );
    let before = a.usage().len();
    let gone = a.call(&search("patterns")).await;
    assert_eq!(
        gone.error_code(),
        Some("InvalidParameterValue.ImageGroupIdNotExist")
    );
    assert_eq!(a.usage().len(), before, "a refused search is not billed");
    // Made again with another type: the new type counts.
    assert!(
        a.call(&tiia(
            "CreateGroup",
            "AKIDmain",
            r#"{"GroupId":"patterns","GroupType":1}"#
        ))
        .await
        .is_success()
    );
    assert!(a.call(&search("patterns")).await.is_success());
    assert_eq!(billed(&a).get("tiia.search_query"), Some(&3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_made_before_the_gateway_is_asked_about_once_then_read_from_the_store() {
    let pg = Postgres::start();
    let url = pg.url();
    seed_store(&url, ENTITLEMENTS).await;
    let (stub, _stop) = stub().await;
    let made = at_stub(
        stub,
        1,
        "CreateGroup",
        r#"{"GroupId":"legacy","GroupType":6}"#,
    )
    .await;
    assert!(made["Response"]["Error"].is_null(), "{made}");

    // Twenty concurrent calls into a library the gateway never saw: one DescribeGroups.
    let a = gateway(&url, stub, None).await;
    let replies = a.burst(&search("legacy"), 20).await;
    assert!(replies.iter().all(|r| r.is_success()));
    assert_eq!(stub_calls(stub, "DescribeGroups").await, 1);
    let m = billed(&a);
    assert_eq!(m.get("tiia.similar_search_query"), Some(&20), "{m:?}");
    assert!(a.usage().iter().all(|r| r.unresolved_library.is_none()));
    assert!(
        eventually(Duration::from_secs(5), || async {
            store_rows(&url).await == vec![(1, "legacy".into(), 6, "describe".into(), false)]
        })
        .await
    );
    // The lookup went through the upstream as a signed call of the caller's account.
    let stats: Value = {
        let req = Request::get(format!("http://{stub}/stub/stats"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send_alone(req).await.json
    };
    let asked = stats["recent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["action"] == "DescribeGroups")
        .unwrap();
    assert_eq!(asked["owner_uin"], "1");
    assert_eq!(asked["uin"], "2");

    // After a restart (a new replica, an empty memory): from the store, no new lookup.
    let a = Arc::into_inner(a).unwrap();
    let _ = a.stop().await;
    let a2 = gateway(&url, stub, None).await;
    assert!(a2.call(&search("legacy")).await.is_success());
    assert_eq!(billed(&a2).get("tiia.similar_search_query"), Some(&1));
    assert_eq!(stub_calls(stub, "DescribeGroups").await, 1);
    assert_eq!(
        a2.metric(
            "tollgate_image_library_lookups_total",
            &[("result", "memory")]
        )
        .await,
        1.0
    );
}

/// The known-library path needs neither the store nor the backend's DescribeGroups: with both
/// unavailable, calls into known libraries are billed by type and none is marked unresolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_library_costs_no_lookup_with_the_store_and_describe_both_down() {
    let mut pg = Postgres::start();
    let url = pg.url();
    seed_store(&url, ENTITLEMENTS).await;
    let (stub, _stop) = stub().await;
    let a = gateway(&url, stub, None).await;
    assert!(
        a.call(&tiia(
            "CreateGroup",
            "AKIDmain",
            r#"{"GroupId":"patterns","GroupType":6}"#
        ))
        .await
        .is_success()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            store_rows(&url).await.len() == 1
        })
        .await
    );
    pg.down();
    stub_fail(stub, "DescribeGroups", true).await;
    let replies = a.burst(&search("patterns"), 15).await;
    assert!(replies.iter().all(|r| r.is_success()));
    assert_eq!(billed(&a).get("tiia.similar_search_query"), Some(&15));
    assert_eq!(stub_calls(stub, "DescribeGroups").await, 0);
    assert_eq!(
        a.metric(
            "tollgate_image_library_lookups_total",
            &[("result", "memory")]
        )
        .await,
        15.0
    );
    assert_eq!(
        a.metric("tollgate_image_library_unresolved_calls_total", &[])
            .await,
        0.0
    );
}

fn spool_metering(spool: &Path, batches: &Path) -> String {
    format!(
        "[metering]\nsink = \"spool\"\ngateway_id = \"gw-img\"\nspool_dir = \"{}\"\nfsync_interval_ms = 50\nseal_interval_ms = 200\nmax_batch_records = 500\ntotals_interval_ms = 500\nship_to = \"local\"\nbatch_dir = \"{}\"\n",
        spool.display(),
        batches.display()
    )
}

/// `tollgate statement` for owner 1, this month, from the ledger and the store, as JSON.
fn statement(url: &str) -> Value {
    let month = chrono::Utc::now()
        .with_timezone(&tollgate_core::clock::beijing())
        .format("%Y-%m")
        .to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "statement",
            "--owner",
            "1",
            "--month",
            &month,
            "--postgres",
            url,
            "--store",
            url,
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn line_units(s: &Value, item: &str) -> (u64, u64) {
    s["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["item"] == item)
        .map_or((0, 0), |l| {
            (
                l["usage"].as_u64().unwrap(),
                l["unresolved_units"].as_u64().unwrap(),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lookups_failing_calls_are_billed_unresolved_and_re_rated_once_the_type_is_known() {
    let pg = Postgres::start();
    let url = pg.url();
    seed_store(&url, ENTITLEMENTS).await;
    let ledger = Ledger::connect(&url, Duration::from_secs(10))
        .await
        .unwrap();
    let (stub, _stop) = stub().await;
    let made = at_stub(
        stub,
        1,
        "CreateGroup",
        r#"{"GroupId":"mystery","GroupType":6}"#,
    )
    .await;
    assert!(made["Response"]["Error"].is_null(), "{made}");
    // The backend answers searches but its DescribeGroups fails (as under its own limits).
    stub_fail(stub, "DescribeGroups", true).await;

    let work = tempfile::tempdir().unwrap();
    let batches = work.path().join("batches");
    let a = gateway(
        &url,
        stub,
        Some(spool_metering(&work.path().join("spool"), &batches)),
    )
    .await;
    let metrics = Arc::new(ConsumerMetrics::new());
    let (consumer_stop, rx) = tokio::sync::oneshot::channel::<()>();
    let consumer = tokio::spawn(consumer::run(
        ConsumerConfig {
            postgres: url.clone(),
            source: Source::Dir(batches.clone()),
            reconcile_grace: Duration::from_secs(1),
            reconcile_interval: Duration::from_millis(300),
            crash_after_commit: None,
            live: None,
        },
        Arc::clone(&metrics),
        async move {
            let _ = rx.await;
        },
    ));

    // (Paced under the group's 20 QPS.)
    for _ in 0..30 {
        let r = a.call(&search("mystery")).await;
        assert!(r.is_success(), "{:?}", r.json);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    // All 30 billed: against the same/product item, marked unresolved (a failed library is
    // asked about again every 500 ms in this test, not by every call).
    assert_eq!(
        a.metric("tollgate_image_library_unresolved_calls_total", &[])
            .await,
        30.0
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            ledger.total_units().await.unwrap() == 30
        })
        .await
    );
    assert_eq!(ledger.unresolved_units().await.unwrap(), vec![(1, 30)]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            metrics.unresolved_units.get() == 30
        })
        .await
    );
    let s = statement(&url);
    assert_eq!(line_units(&s, "tiia.search_query"), (30, 30), "{s}");
    assert_eq!(line_units(&s, "tiia.similar_search_query"), (0, 0));
    assert_eq!(s["unresolved_units"], 30);

    // The backend answers again: the retry learns the type; the statement re-rates.
    stub_fail(stub, "DescribeGroups", false).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            store_rows(&url).await == vec![(1, "mystery".into(), 6, "describe".into(), false)]
        })
        .await
    );
    assert_eq!(ledger.unresolved_units().await.unwrap(), vec![]);
    assert!(a.call(&search("mystery")).await.is_success());
    assert!(
        eventually(Duration::from_secs(10), || async {
            ledger.total_units().await.unwrap() == 31
        })
        .await
    );
    let s = statement(&url);
    assert_eq!(line_units(&s, "tiia.search_query"), (0, 0), "{s}");
    assert_eq!(line_units(&s, "tiia.similar_search_query"), (31, 0), "{s}");
    assert_eq!(s["unresolved_units"], 0);
    // Nothing lost, nothing counted twice: 31 calls, 31 units, one line.
    let units: u64 = s["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["usage"].as_u64().unwrap())
        .sum();
    assert_eq!(units, 31);
    let _ = consumer_stop.send(());
    consumer.await.unwrap().unwrap();
}

/// Made-up `GroupId`s cost the backend at most the owner's lookup budget, whether or not the
/// calls are within their quota: each is billed unresolved (if the backend bills it at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_libraries_cost_the_backend_at_most_the_owners_lookup_budget() {
    let h = Arc::new(Harness::start(Builder::default()).await);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let h = Arc::clone(&h);
        set.spawn(async move { h.call(&search(&format!("made_up_{i}"))).await });
    }
    let mut codes = std::collections::BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let r = r.unwrap();
        *codes
            .entry(r.error_code().unwrap_or("ok").to_owned())
            .or_insert(0) += 1;
    }
    // The backend knows none of them; over the quota, the gateway answers itself.
    assert_eq!(codes.get("ok"), None, "{codes:?}");
    let asked = h.stub_stats().await["actions"]["DescribeGroups"]["calls"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        asked <= u64::from(tollgate_gateway::library::LOOKUPS_PER_OWNER_PER_MINUTE),
        "{asked} lookups"
    );
    assert_eq!(
        h.metric(
            "tollgate_image_library_lookups_total",
            &[("result", "budget")]
        )
        .await,
        (200 - asked) as f64
    );
    assert!(
        h.usage().is_empty(),
        "nothing the backend refused is billed"
    );
}

/// With file entitlements, learned libraries survive a restart in
/// `image_search.libraries_file`, and `tollgate statement --libraries` re-rates by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_file_entitlements_libraries_persist_in_their_file_and_statements_read_it() {
    let (stub, _stop) = stub().await;
    let made = at_stub(
        stub,
        1,
        "CreateGroup",
        r#"{"GroupId":"early","GroupType":6}"#,
    )
    .await;
    assert!(made["Response"]["Error"].is_null(), "{made}");
    stub_fail(stub, "DescribeGroups", true).await;
    // The file outlives the gateways, as a volume does.
    let volume = tempfile::tempdir().unwrap();
    let file = volume.path().join("image-libraries.json");
    let start = || {
        Harness::start(Builder {
            upstream: Some(stub),
            image_libraries_file: Some(file.clone()),
            ..Builder::default()
        })
    };
    let h = start().await;
    // Unknown and not resolvable yet: billed unresolved.
    assert!(h.call(&search("early")).await.is_success());
    assert_eq!(
        h.usage()[0].unresolved_library.as_deref(),
        Some("early"),
        "{:?}",
        h.usage()
    );
    let month = chrono::Utc::now()
        .with_timezone(&tollgate_core::clock::beijing())
        .format("%Y-%m")
        .to_string();
    let statement = |usage: &Path, libraries: Option<&Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["statement", "--owner", "1", "--month", &month, "--usage"])
            .arg(usage)
            .args(["--format", "json"]);
        if let Some(l) = libraries {
            cmd.arg("--libraries").arg(l);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(statement(&h.usage_path, None)["unresolved_units"], 1);
    // The backend answers again; the retry learns the type and writes the file.
    stub_fail(stub, "DescribeGroups", false).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            std::fs::read_to_string(&file).is_ok_and(|t| t.contains("\"early\""))
        })
        .await
    );
    let s = statement(&h.usage_path, Some(&file));
    assert_eq!(s["unresolved_units"], 0, "{s}");
    assert_eq!(line_units(&s, "tiia.similar_search_query"), (1, 0));
    // A library made through the gateway, then a restart: both known, no lookup.
    assert!(
        h.call(&tiia(
            "CreateGroup",
            "AKIDmain",
            r#"{"GroupId":"later","GroupType":6}"#
        ))
        .await
        .is_success()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            std::fs::read_to_string(&file).is_ok_and(|t| t.contains("\"later\""))
        })
        .await
    );
    let _ = h.stop().await;
    let h = start().await;
    let before = stub_calls(stub, "DescribeGroups").await;
    assert!(h.call(&search("later")).await.is_success());
    assert!(h.call(&search("early")).await.is_success());
    assert_eq!(stub_calls(stub, "DescribeGroups").await, before);
    let usage = h.usage();
    assert_eq!(usage.len(), 2);
    assert!(
        usage
            .iter()
            .all(|u| &*u.billing_item == "tiia.similar_search_query"
                && u.unresolved_library.is_none()),
        "{usage:?}"
    );
}

/// A GET-signed call carries its `GroupId` in the query: read there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_signed_search_is_billed_by_its_librarys_type() {
    let h = Harness::start(Builder::default()).await;
    assert!(
        h.call(&tiia(
            "CreateGroup",
            "AKIDmain",
            r#"{"GroupId":"pat_tern","GroupType":6}"#
        ))
        .await
        .is_success()
    );
    let mut get = Call::new("tiia", "SearchImage", "AKIDsubB");
    get.method = "GET";
    get.body = Vec::new();
    get.query = "GroupId=pat%5Ftern&ImageUrl=https%3A%2F%2Fexample.com%2Fq.jpg".into();
    let r = h.call(&get).await;
    assert!(r.is_success(), "{:?}", r.json);
    let usage = h.usage();
    assert_eq!(usage.len(), 1);
    assert_eq!(&*usage[0].billing_item, "tiia.similar_search_query");
}
