//! The metering pipeline against real servers: every billable call counted once and only once
//! by the settlement ledger, whatever fails. Each test starts its own nats-server and
//! PostgreSQL on ephemeral ports (tests/support/servers.rs).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use support::servers::{Nats, Postgres, free_port, wait_for_port};
use support::{Builder, Call, Harness, eventually};
use tollgate_core::clock::FakeClock;
use tollgate_settlement::consumer::{self, ConsumerConfig, ConsumerMetrics, Ledger, Source};
use tollgate_usage::ledger_dir::read_batch_dir;

/// Adds an account whose segmentation group runs at 5,000 purchased QPS, so load tests are
/// limited by the machine, not the quota.
fn entitlements() -> String {
    format!(
        "{}\n[[account]]\nuin = 50\nname = \"load\"\nservices = [\"bda\", \"ocr\"]\npostpaid = true\n\n[[account.mode]]\ngroup = \"bda.segment\"\nmode = \"qps\"\nquantity = 5000\n",
        support::ENTITLEMENTS
    )
}

fn load_call() -> Call {
    let mut c = Call::new("bda", "SegmentPortraitPic", "AKIDload");
    c.secret_key = support::key_of("AKIDload");
    c
}

fn credentials_with_load() -> String {
    format!(
        "{}[[credential]]\nsecret_id = \"AKIDload\"\nsecret_key = \"{}\"\nuin = 50\n",
        support::credentials_toml(),
        support::key_of("AKIDload")
    )
}

async fn harness(metering: String) -> Arc<Harness> {
    let h = Harness::start(Builder {
        entitlements: entitlements(),
        metering: Some(metering),
        ..Builder::default()
    })
    .await;
    h.replace_file("credentials.toml", &credentials_with_load());
    // Wait for the reload that brings the load account's credential.
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.reload_status().await["generation"] == 2
        })
        .await
    );
    Arc::new(h)
}

fn spool_metering(spool: &Path, gateway_id: &str, ship: &str) -> String {
    format!(
        "[metering]\nsink = \"spool\"\ngateway_id = \"{gateway_id}\"\nspool_dir = \"{}\"\nfsync_interval_ms = 50\nseal_interval_ms = 200\nmax_batch_records = 500\ntotals_interval_ms = 500\n{ship}\n",
        spool.display()
    )
}

/// What a load generator saw.
#[derive(Default)]
struct Seen {
    /// Complete billable answers received.
    received: AtomicU64,
    /// Calls whose fate is unknown: the connection broke after the request was sent.
    uncertain: AtomicU64,
    refused_connect: AtomicU64,
    other: AtomicU64,
}

/// Sends billable calls from `tasks` loops until `stop`.
fn start_load(
    h: &Arc<Harness>,
    target: SocketAddr,
    tasks: usize,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|_| {
            let h = Arc::clone(h);
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let client: Client<HttpConnector, Full<Bytes>> =
                    Client::builder(TokioExecutor::new()).build(HttpConnector::new());
                while !stop.load(Ordering::Relaxed) {
                    let req = h.request_for(target, &load_call());
                    match client.request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            match resp.into_body().collect().await {
                                Ok(b) => {
                                    let v: serde_json::Value =
                                        serde_json::from_slice(&b.to_bytes()).unwrap_or_default();
                                    if status == 200
                                        && v["Response"].is_object()
                                        && v["Response"]["Error"].is_null()
                                    {
                                        seen.received.fetch_add(1, Ordering::SeqCst);
                                    } else {
                                        seen.other.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                                Err(_) => {
                                    seen.uncertain.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                        Err(e) if e.is_connect() => {
                            seen.refused_connect.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(_) => {
                            seen.uncertain.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        })
        .collect()
}

fn run_consumer(
    pg: &Postgres,
    source: Source,
) -> (
    Arc<ConsumerMetrics>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    run_consumer_with(pg, source, None)
}

/// The consumer with live settlement (balances rated in each batch's transaction).
fn run_consumer_live(
    pg: &Postgres,
    source: Source,
) -> (
    Arc<ConsumerMetrics>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let metrics = Arc::new(ConsumerMetrics::new());
    let (catalog, book) = tollgate_admin::load_pricing(&None).unwrap();
    let live = Arc::new(tollgate_settlement::live::Live::new(
        catalog,
        book,
        &metrics.registry,
        None,
    ));
    run_consumer_with(pg, source, Some((metrics, live)))
}

fn run_consumer_with(
    pg: &Postgres,
    source: Source,
    live: Option<(Arc<ConsumerMetrics>, Arc<tollgate_settlement::live::Live>)>,
) -> (
    Arc<ConsumerMetrics>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (metrics, live) = match live {
        Some((m, l)) => (m, Some(l)),
        None => (Arc::new(ConsumerMetrics::new()), None),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consumer::run(
        ConsumerConfig {
            postgres: pg.url(),
            source,
            reconcile_grace: Duration::from_secs(1),
            reconcile_interval: Duration::from_millis(500),
            crash_after_commit: None,
            live,
        },
        Arc::clone(&metrics),
        async move {
            let _ = rx.await;
        },
    ));
    (metrics, tx, task)
}

fn nats_source(nats: &Nats) -> Source {
    Source::Nats {
        url: nats.url(),
        stream: "TOLLGATE_USAGE".into(),
        durable: "settlement".into(),
    }
}

/// The entitlement store in the ledger's database, with the load account (uin 50) and a
/// 100,000-call prepaid pack of portrait segmentation for it: live settlement rates it.
async fn store_with_load_pack(pg: &Postgres) -> String {
    support::seed_store(&pg.url(), &entitlements()).await;
    let mut db = tollgate_store::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let w = tollgate_store::Write::begin(&mut db, "test", chrono::Utc::now())
        .await
        .unwrap();
    w.insert_pack(
        "load-seg-100k",
        50,
        "bda.segment",
        100_000,
        chrono::Utc::now() - chrono::Duration::days(1),
        "860".parse().unwrap(),
    )
    .await
    .unwrap();
    w.commit().await.unwrap();
    "load-seg-100k".into()
}

/// The live balances the consumer wrote equal the statement's, to the unit.
async fn assert_live_balances_match_the_statement(pg: &Postgres, owner: u64) {
    let ledger = Ledger::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let (catalog, book) = tollgate_admin::load_pricing(&None).unwrap();
    let billing = tollgate_settlement::store::load_owner_billing(&pg.url(), owner, &catalog)
        .await
        .unwrap();
    let usage = ledger.usage(&catalog, owner).await.unwrap();
    let month = tollgate_settlement::Month::of_unix(chrono::Utc::now().timestamp());
    let s =
        tollgate_settlement::rating::rate_month(&catalog, &book, &billing, &usage, month).unwrap();
    let db = tollgate_store::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let live: std::collections::BTreeMap<String, i64> = db
        .query(
            "SELECT pack, remaining FROM pack_balances WHERE owner_uin = $1",
            &[&(owner as i64)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let statement: std::collections::BTreeMap<String, i64> = s
        .balances
        .iter()
        .map(|b| (b.pack.clone(), b.remaining as i64))
        .collect();
    assert!(!statement.is_empty());
    assert_eq!(live, statement, "live balances != the statement's");
    let drawn: u64 = s.lines.iter().map(|l| l.free_units + l.prepaid_units).sum();
    println!(
        "live balances agree with the statement: {statement:?} ({drawn} units drawn from packs)"
    );
}

/// Waits until the ledger's total units stop changing for a second, and returns them.
async fn settled_units(ledger: &Ledger, at_least: u64, deadline: Duration) -> i64 {
    let start = Instant::now();
    let mut last = -1;
    let mut stable_since = Instant::now();
    loop {
        let now = ledger.total_units().await.unwrap();
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        if (now as u64) >= at_least && stable_since.elapsed() > Duration::from_secs(1) {
            return now;
        }
        if start.elapsed() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Batches of a gateway (its one spool incarnation: `<gateway id>-<incarnation>`) are numbered
/// 1..=n without holes, and the ledger holds exactly their units: nothing applied twice,
/// nothing skipped.
async fn assert_batches_contiguous(pg: &Postgres, gateway: &str) -> i64 {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT batch_seq), coalesce(max(batch_seq), 0), coalesce(sum(units), 0)::bigint FROM processed_batches WHERE gateway_id LIKE $1 || '-%'",
            &[&gateway],
        )
        .await
        .unwrap();
    let (n, distinct, max, units): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(n, distinct);
    assert_eq!(n, max, "batch sequence has holes: {n} batches, max {max}");
    let ledger: i64 = client
        .query_one(
            "SELECT coalesce(sum(units), 0)::bigint FROM usage_ledger",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        ledger, units,
        "ledger units differ from the applied batches' units"
    );
    units
}

fn spawn_gateway(config: &Path, api_port: u16) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["gateway", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_port(api_port, Duration::from_secs(10)),
        "gateway did not listen"
    );
    child
}

fn sigterm(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Under steady load, SIGKILL the gateway at 5 random moments and restart it: the ledger holds
/// the billable answers clients received, plus at most the calls in flight at each kill; no
/// batch is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_five_times_loses_nothing_and_doubles_nothing() {
    let nats = Nats::start();
    let pg = Postgres::start();
    let h = harness("[metering]\nsink = \"off\"\n".into()).await;
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let (api_port, admin_port) = (free_port(), free_port());
    let metering = spool_metering(
        &spool,
        "gw-kill",
        &format!("ship_to = \"nats\"\nnats_url = \"{}\"\n", nats.url()),
    );
    let config = h.write_process_config(work.path(), api_port, admin_port, &metering);
    std::fs::write(
        work.path().join("credentials.toml"),
        credentials_with_load(),
    )
    .unwrap();
    store_with_load_pack(&pg).await;
    let (_metrics, stop_consumer, consumer_task) = run_consumer_live(&pg, nats_source(&nats));

    let mut gateway = spawn_gateway(&config, api_port);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let target: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    let load = start_load(&h, target, 6, Arc::clone(&stop), Arc::clone(&seen));
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    for kill in 0..5 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let wait = 300 + rng % 900;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let before = seen.received.load(Ordering::SeqCst);
        gateway.kill().unwrap();
        gateway.wait().unwrap();
        println!("kill {kill} after {wait} ms ({before} received so far)");
        gateway = spawn_gateway(&config, api_port);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    sigterm(&mut gateway);

    let received = seen.received.load(Ordering::SeqCst);
    let uncertain = seen.uncertain.load(Ordering::SeqCst);
    println!(
        "received {received}, uncertain {uncertain}, refused {}, other {}",
        seen.refused_connect.load(Ordering::SeqCst),
        seen.other.load(Ordering::SeqCst)
    );
    assert!(
        received > 500,
        "too little load to mean anything: {received}"
    );
    let ledger = Ledger::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let units = settled_units(&ledger, received, Duration::from_secs(30)).await as u64;
    let _ = stop_consumer.send(());
    consumer_task.await.unwrap().unwrap();
    assert!(
        units >= received,
        "lost billable calls: ledger {units} < received {received}"
    );
    assert!(
        units <= received + uncertain,
        "ledger {units} > received {received} + in flight at kills {uncertain}"
    );
    assert_batches_contiguous(&pg, "gw-kill").await;
    assert_live_balances_match_the_statement(&pg, 50).await;
}

/// Stop nats-server for 30 s under load and start it again: nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_second_broker_outage_loses_and_doubles_nothing() {
    let mut nats = Nats::start();
    let pg = Postgres::start();
    let work = tempfile::tempdir().unwrap();
    let h = harness(spool_metering(
        &work.path().join("spool"),
        "gw-outage",
        &format!("ship_to = \"nats\"\nnats_url = \"{}\"\n", nats.url()),
    ))
    .await;
    store_with_load_pack(&pg).await;
    let (_metrics, stop_consumer, consumer_task) = run_consumer_live(&pg, nats_source(&nats));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let load = start_load(&h, h.api(), 3, Arc::clone(&stop), Arc::clone(&seen));
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.down();
    tokio::time::sleep(Duration::from_secs(15)).await;
    // Mid-outage: the gateway kept serving, the spool holds what could not be shipped.
    assert!(h.metric("tollgate_spool_unshipped_records", &[]).await > 0.0);
    assert!(h.metric("tollgate_batch_publish_errors_total", &[]).await > 0.0);
    tokio::time::sleep(Duration::from_secs(15)).await;
    nats.up();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let h = Arc::into_inner(h).expect("load tasks are done");
    let _dir = h.stop().await;
    let received = seen.received.load(Ordering::SeqCst);
    assert_eq!(seen.uncertain.load(Ordering::SeqCst), 0);
    assert!(received > 500, "{received}");
    let ledger = Ledger::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    let units = settled_units(&ledger, received, Duration::from_secs(60)).await as u64;
    let _ = stop_consumer.send(());
    consumer_task.await.unwrap().unwrap();
    assert_eq!(
        units, received,
        "the ledger must hold exactly the billable answers received"
    );
    assert_batches_contiguous(&pg, "gw-outage").await;
    assert_live_balances_match_the_statement(&pg, 50).await;
}

/// Crash the consumer between its commit and its ack: the redelivered batch is only acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_crash_between_commit_and_ack_doubles_nothing() {
    let nats = Nats::start();
    let pg = Postgres::start();
    let work = tempfile::tempdir().unwrap();
    let h = harness(spool_metering(
        &work.path().join("spool"),
        "gw-crash",
        &format!("ship_to = \"nats\"\nnats_url = \"{}\"\n", nats.url()),
    ))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let load = start_load(&h, h.api(), 2, Arc::clone(&stop), Arc::clone(&seen));
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let h = Arc::into_inner(h).expect("load tasks are done");
    let _dir = h.stop().await;
    let received = seen.received.load(Ordering::SeqCst);

    let consumer = |failpoint: Option<u64>, admin: u16| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        c.args([
            "consumer",
            "--postgres",
            &pg.url(),
            "--nats-url",
            &nats.url(),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(n) = failpoint {
            c.env("TOLLGATE_FAILPOINT_CRASH_AFTER_COMMIT", n.to_string());
        }
        c.spawn().unwrap()
    };
    let mut first = consumer(Some(3), free_port());
    let status = first.wait().unwrap();
    assert!(!status.success(), "the failpoint aborts the consumer");
    let ledger = Ledger::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        ledger.applied_batches().await.unwrap(),
        3,
        "three batches committed before the crash"
    );

    let admin = free_port();
    let mut second = consumer(None, admin);
    // Batches the crashed consumer had pulled come back after the 10 s ack wait.
    let units = settled_units(&ledger, received, Duration::from_secs(60)).await as u64;
    assert_eq!(units, received);
    assert_batches_contiguous(&pg, "gw-crash").await;
    assert!(wait_for_port(admin, Duration::from_secs(5)));
    let metrics = reqwest_text(admin, "/metrics").await;
    let dups = support::metric_value(&metrics, "tollgate_consumer_batches_duplicate_total", &[]);
    assert!(
        dups >= 1.0,
        "the batch committed before the crash was redelivered and found applied: {metrics}"
    );
    sigterm(&mut second);
}

async fn reqwest_text(port: u16, path: &str) -> String {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = http::Request::get(format!("http://127.0.0.1:{port}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = client
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

/// The embedded default end to end: spool → local batch directory → consumer → PostgreSQL, and
/// a statement from either ledger says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_pipeline_and_both_ledgers_agree() {
    let pg = Postgres::start();
    let work = tempfile::tempdir().unwrap();
    let batches = work.path().join("batches");
    let h = harness(spool_metering(
        &work.path().join("spool"),
        "gw-local-test",
        &format!(
            "ship_to = \"local\"\nbatch_dir = \"{}\"\n",
            batches.display()
        ),
    ))
    .await;
    for action in ["GeneralBasicOCR", "IDCardOCR", "GeneralBasicOCR"] {
        assert!(
            h.call(&Call::new("ocr", action, "AKIDsubA"))
                .await
                .is_success()
        );
    }
    assert!(
        h.call(
            &Call::new("ocr", "MixedInvoiceOCR", "AKIDmain")
                .header("X-Stub-Invoices", "3:OK,12:OK,2:OK")
        )
        .await
        .is_success()
    );
    let h = Arc::into_inner(h).unwrap();
    let _dir = h.stop().await;
    let local = read_batch_dir(&batches).unwrap();
    assert_eq!(local.iter().map(|b| b.units).sum::<u64>(), 6);

    let (_m, stop, task) = run_consumer(&pg, Source::Dir(batches.clone()));
    let ledger = Ledger::connect(&pg.url(), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(settled_units(&ledger, 6, Duration::from_secs(10)).await, 6);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert!(batches.join("applied").read_dir().unwrap().count() >= 1);

    let catalog = tollgate_core::catalog::Catalog::embedded();
    let from_pg = ledger.usage(&catalog, 1).await.unwrap();
    let from_dir =
        tollgate_settlement::ledger::from_batches(&catalog, 1, &read_batch_dir(&batches).unwrap())
            .unwrap();
    assert_eq!(from_pg, from_dir);
    assert_eq!(from_pg.iter().map(|u| u.units).sum::<u64>(), 6);
}

/// A rejected call never reaches the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_calls_never_reach_the_spool() {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let batches = work.path().join("batches");
    let h = Arc::new(
        Harness::start(Builder {
            clock: Some(FakeClock::at("2026-05-01T10:00:00+08:00")),
            metering: Some(spool_metering(
                &spool,
                "gw-reject",
                &format!("batch_dir = \"{}\"\n", batches.display()),
            )),
            ..Builder::default()
        })
        .await,
    );
    let replies = h
        .burst(&Call::new("ocr", "GeneralBasicOCR", "AKIDsubA"), 60)
        .await;
    let codes = support::count_codes(&replies);
    assert_eq!((codes["success"], codes["RequestLimitExceeded"]), (20, 40));
    assert_eq!(
        h.call(&Call::new("ocr", "GeneralBasicOCR", "AKIDnobody"))
            .await
            .error_code(),
        Some("AuthFailure.SecretIdNotFound")
    );
    let records = tollgate_gateway::metering::spool::read_after(&spool, 0, u64::MAX).unwrap();
    assert_eq!(records.len(), 20);
    let h = Arc::into_inner(h).unwrap();
    let _dir = h.stop().await;
    assert_eq!(
        read_batch_dir(&batches)
            .unwrap()
            .iter()
            .map(|b| b.units)
            .sum::<u64>(),
        20
    );
}

/// A spool with a torn tail and a corrupt frame recovers: the damage is counted, numbering
/// continues, and every intact record is still shipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_spool_recovers_and_counts_the_damage() {
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let batches = work.path().join("batches");
    let metering = |seal: u64| {
        format!(
            "[metering]\nsink = \"spool\"\ngateway_id = \"gw-damage\"\nspool_dir = \"{}\"\nseal_interval_ms = {seal}\ntotals_interval_ms = {seal}\nbatch_dir = \"{}\"\n",
            spool.display(),
            batches.display()
        )
    };
    // First life: a gateway process that writes five records, seals nothing, and is killed.
    let h = Harness::start(Builder::default()).await;
    let (api_port, admin_port) = (free_port(), free_port());
    let config = h.write_process_config(work.path(), api_port, admin_port, &metering(3_600_000));
    let mut gateway = spawn_gateway(&config, api_port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let target: SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    for _ in 0..5 {
        let r = h
            .send(h.request_for(target, &Call::new("ocr", "IDCardOCR", "AKIDmain")))
            .await;
        assert!(r.is_success(), "{r:?}");
    }
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    let _ = h.stop().await;
    assert!(
        read_batch_dir(&batches).unwrap().is_empty(),
        "nothing was sealed before the kill"
    );

    // Damage: corrupt the second record, and tear the tail where a kill in the middle of a
    // write leaves it: right after the last record, in the segment's reserved space.
    let (_, segment) = tollgate_gateway::metering::spool::segments(&spool)
        .unwrap()
        .pop()
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let frame_end =
        |at: usize| at + 8 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let frame2 = frame_end(0);
    let end = (0..5).fold(0, |at, _| frame_end(at));
    bytes[frame2 + 20] ^= 0x55;
    bytes.resize(bytes.len().max(end + 5), 0);
    bytes[end..end + 5].copy_from_slice(&[9, 0, 0, 0, 1]);
    std::fs::write(&segment, &bytes).unwrap();

    // Second life: recovery counts the damage, ships the intact records, numbers on.
    let h = Harness::start(Builder {
        metering: Some(metering(100)),
        ..Builder::default()
    })
    .await;
    assert_eq!(
        h.metric("tollgate_spool_corrupt_frames_total", &[]).await,
        1.0
    );
    assert_eq!(h.metric("tollgate_spool_torn_bytes_total", &[]).await, 5.0);
    assert!(
        h.call(&Call::new("ocr", "IDCardOCR", "AKIDmain"))
            .await
            .is_success()
    );
    let _dir = h.stop().await;
    let shipped = read_batch_dir(&batches).unwrap();
    assert_eq!(
        shipped.iter().map(|b| b.units).sum::<u64>(),
        5,
        "4 intact records + 1 new"
    );
    assert_eq!(shipped.first().unwrap().first_seq, 1);
    assert_eq!(
        shipped.last().unwrap().last_seq,
        6,
        "the new record is numbered after the damaged ones"
    );
}

/// While the broker is unreachable the spool grows to its disk bound; there the gateway refuses
/// new calls, unbilled, and says so (metric, readiness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_disk_bound_refuses_loudly() {
    let work = tempfile::tempdir().unwrap();
    let dead = free_port();
    let metering = format!(
        "{}max_spool_bytes = 3000\nsegment_bytes = 1000\n",
        spool_metering(
            &work.path().join("spool"),
            "gw-bound",
            &format!("ship_to = \"nats\"\nnats_url = \"nats://127.0.0.1:{dead}\"\n")
        )
    );
    let h = harness(metering).await;
    let mut refused = None;
    for i in 0..200 {
        let r = h.call(&load_call()).await;
        if r.error_code() == Some("ServiceUnavailable") {
            refused = Some(i);
            break;
        }
        assert!(r.is_success(), "{r:?}");
    }
    assert!(refused.is_some(), "the bound was never reached");
    assert_eq!(h.metric("tollgate_spool_full", &[]).await, 1.0);
    let (status, _) = h.get_text(h.running.admin_addr, "/readyz").await;
    assert_eq!(status, 503);
}

/// A batch id the ledger already holds, arriving with other content (two spools numbering
/// under one id), is refused loudly: not applied, counted, kept in `rejected_messages`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_batch_id_with_other_content_is_refused_loudly() {
    use tollgate_settlement::consumer::{Applied, Ledger};
    use tollgate_usage::batch::{Batch, Count};
    let pg = Postgres::start();
    let mut ledger = Ledger::connect(&pg.url(), Duration::from_secs(10))
        .await
        .unwrap();
    let batch = |units: u64| Batch {
        batch_id: "gw-x-000000000001".into(),
        gateway_id: "gw-x".into(),
        batch_seq: 1,
        first_seq: 1,
        last_seq: units,
        records: units,
        units,
        cumulative_units: units,
        undecodable: 0,
        first_record_unix_ms: 1_796_000_000_000,
        counts: vec![Count {
            owner_uin: 1,
            billing_item: "ocr.general_basic".into(),
            interface: "GeneralBasicOCR".into(),
            minute: 1_796_000_000 / 60 * 60,
            units,
            records: units,
            unresolved_library: None,
            first_unix_ms: None,
        }],
    };
    assert_eq!(ledger.apply(&batch(5)).await.unwrap(), Applied::New);
    assert_eq!(ledger.apply(&batch(5)).await.unwrap(), Applied::Duplicate);
    assert_eq!(ledger.apply(&batch(7)).await.unwrap(), Applied::Conflict);
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let units: i64 = client
        .query_one(
            "SELECT coalesce(sum(units), 0)::bigint FROM usage_ledger",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(units, 5, "the conflicting batch was not applied");
}
