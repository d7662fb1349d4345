//! One quota across the fleet: three gateways sharing a private redis-server (issue 12).
//!
//! Each test starts its own redis-server on an ephemeral port and three in-process gateways
//! with `[quota] store = "redis"`, and offers load spread over them as a load balancer would.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::servers::{Redis, RedisCluster};
use support::servers::{free_port, wait_for_port};
use support::{Builder, Call, Harness, Reply, count_codes, eventually};

/// The fleet tests offer real load on two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn quota(redis: &Redis, member: &str, extra: &str) -> String {
    format!(
        "store = \"redis\"\nredis_url = \"{}\"\nmember_id = \"{member}\"\n{extra}",
        redis.url()
    )
}

async fn fleet_of(redis: &Redis, n: usize, tweak: impl Fn(&mut Builder)) -> Vec<Arc<Harness>> {
    let mut fleet = Vec::new();
    for i in 0..n {
        let mut b = Builder {
            quota: quota(redis, &format!("gw-{i}"), ""),
            ..Builder::default()
        };
        tweak(&mut b);
        fleet.push(Arc::new(Harness::start(b).await));
    }
    fleet
}

/// Waits until every member counts the whole fleet and Redis answers.
async fn settled(fleet: &[Arc<Harness>]) {
    let n = fleet.len() as f64;
    for h in fleet {
        assert!(
            eventually(Duration::from_secs(10), || async {
                h.metric("tollgate_fleet_members", &[]).await == n
                    && h.metric("tollgate_fleet_degraded", &[]).await == 0.0
            })
            .await,
            "the fleet did not form: {}",
            h.metrics().await
        );
    }
}

/// Offers `per_second` calls for `seconds`, open loop, to the fleet's members picked by `pick`.
async fn offer(
    fleet: &[Arc<Harness>],
    call: &Call,
    per_second: u64,
    seconds: u64,
    pick: impl Fn(usize) -> usize,
) -> (Vec<(Instant, Reply)>, Duration) {
    let period = Duration::from_nanos(1_000_000_000 / per_second);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..(per_second * seconds) as usize {
        ticker.tick().await;
        let h = Arc::clone(&fleet[pick(i)]);
        let c = call.clone();
        set.spawn(async move {
            let sent = Instant::now();
            (sent, h.call(&c).await)
        });
    }
    let elapsed = started.elapsed();
    let mut replies = Vec::new();
    while let Some(r) = set.join_next().await {
        replies.push(r.unwrap());
    }
    replies.sort_by_key(|(t, _)| *t);
    (replies, elapsed)
}

fn admitted(replies: &[(Instant, Reply)]) -> usize {
    replies.iter().filter(|(_, r)| r.is_success()).count()
}

fn only_admitted_or_limited(replies: &[(Instant, Reply)]) {
    let all: Vec<&Reply> = replies.iter().map(|(_, r)| r).collect();
    for r in &all {
        assert!(
            r.is_success() || r.error_code() == Some("RequestLimitExceeded"),
            "{:?}",
            r.json
        );
    }
}

/// A stub backend shared by several gateways (it counts what they forward, together).
async fn shared_stub() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(tollgate_stub::serve(
        listener,
        tollgate_stub::Stub::new(Default::default()),
        std::future::pending(),
    ));
    addr
}

/// FuseFaceUltra's `field` (`in_flight`, `max_in_flight`) as the shared backend counts it.
async fn backend_count(h: &Harness, stub: std::net::SocketAddr, field: &str) -> u64 {
    let stats = h.get_text(stub, "/stub/stats").await.1;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    stats["actions"]["FuseFaceUltra"][field].as_u64().unwrap()
}

async fn stop_all(fleet: Vec<Arc<Harness>>) {
    for h in fleet {
        if let Ok(h) = Arc::try_unwrap(h) {
            h.stop().await;
        }
    }
}

/// 200 calls/s for 10 s of a 20-QPS group, round-robin over three gateways: the fleet admits
/// what one gateway would, within [190, 200 + burst].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_one_quota_round_robin() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let fleet = fleet_of(&redis, 3, |_| {}).await;
    settled(&fleet).await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDsubB");
    let (replies, elapsed) = offer(&fleet, &call, 200, 10, |i| i % 3).await;
    only_admitted_or_limited(&replies);
    let n = admitted(&replies);
    let window = elapsed.as_secs_f64().max(10.0);
    let upper = (20.0 * window).ceil() as usize + 20;
    assert!(
        (190..=upper).contains(&n),
        "admitted {n} in {elapsed:?}: {:?}",
        count_codes(&replies.into_iter().map(|(_, r)| r).collect::<Vec<_>>())
    );
    // Each replica admitted part of it: the quota is shared, not owned by one.
    for h in &fleet {
        let own = h.usage().len();
        assert!(own > 20, "a replica admitted only {own}");
    }
    let total: usize = fleet.iter().map(|h| h.usage().len()).sum();
    assert_eq!(total, n, "every admitted call is metered once");
    stop_all(fleet).await;
}

/// The same load all on one replica of three: the same bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_admit_one_quota_all_on_one() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let fleet = fleet_of(&redis, 3, |_| {}).await;
    settled(&fleet).await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDsubB");
    let (replies, elapsed) = offer(&fleet, &call, 200, 10, |_| 1).await;
    only_admitted_or_limited(&replies);
    let n = admitted(&replies);
    let window = elapsed.as_secs_f64().max(10.0);
    let upper = (20.0 * window).ceil() as usize + 20;
    assert!((190..=upper).contains(&n), "admitted {n} in {elapsed:?}");
    stop_all(fleet).await;
}

/// Entitlements with a 80-QPS overlay on GeneralBasicOCR for account 10, in force today
/// (Beijing time): 100 QPS.
fn overlay_today() -> String {
    let today = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
        .date_naive();
    let start = today - chrono::Days::new(1);
    let end = today + chrono::Days::new(1);
    let bought = start - chrono::Days::new(1);
    support::ENTITLEMENTS.replace(
        "qps = 80\nstart = 2026-03-01\nend = 2026-03-04\npurchased_at = 2026-02-20T10:00:00+08:00",
        &format!("qps = 80\nstart = {start}\nend = {end}\npurchased_at = {bought}T10:00:00+08:00"),
    )
}

/// A 100-QPS overlay group offered 300 calls/s for 10 s over three replicas: 1,000 admitted
/// (+ the burst), within 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_group_is_shared_too() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let entitlements = overlay_today();
    let fleet = fleet_of(&redis, 3, |b| b.entitlements = entitlements.clone()).await;
    settled(&fleet).await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDoverlay");
    let (replies, elapsed) = offer(&fleet, &call, 300, 10, |i| i % 3).await;
    only_admitted_or_limited(&replies);
    let n = admitted(&replies) as f64;
    let window = elapsed.as_secs_f64().max(10.0);
    let expected = 100.0 * window + 100.0;
    assert!(
        n >= 0.95 * 100.0 * 10.0 && n <= 1.05 * expected,
        "admitted {n} in {elapsed:?} (expected about {expected})"
    );
    stop_all(fleet).await;
}

/// An overlay pack added while three replicas serve the group: within a second every replica
/// admits at the new limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_bought_applies_fleet_wide_within_a_second() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let fleet = fleet_of(&redis, 3, |_| {}).await;
    settled(&fleet).await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDoverlay");
    let load = {
        let fleet = fleet.clone();
        let call = call.clone();
        tokio::spawn(async move { offer(&fleet, &call, 300, 8, |i| i % 3).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bought = Instant::now();
    let text = overlay_today();
    for h in &fleet {
        h.replace_file("entitlements.toml", &text);
    }
    let (replies, _) = load.await.unwrap();
    only_admitted_or_limited(&replies);
    // From one second after the purchase to the end (about 5 s): 100 QPS fleet-wide.
    let from = bought + Duration::from_secs(1);
    let after: Vec<_> = replies.iter().filter(|(t, _)| *t >= from).collect();
    let span = after
        .last()
        .unwrap()
        .0
        .duration_since(after[0].0)
        .as_secs_f64();
    let n = after.iter().filter(|(_, r)| r.is_success()).count() as f64;
    assert!(
        n >= 0.9 * 100.0 * span && n <= 100.0 * span + 100.0,
        "{n} admitted in the {span:.1} s after the pack applied"
    );
    // And on each replica, not only one.
    for h in &fleet {
        assert!(
            h.reload_status().await["generation"].as_u64() >= Some(2),
            "a replica did not reload"
        );
    }
    stop_all(fleet).await;
}

/// FuseFaceUltra (10 in flight per account) with 100 parallel slow calls over three
/// replicas: the backend, shared by all three, never sees more than 10 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_shared_across_the_fleet() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let stub_addr = shared_stub().await;
    let fleet = fleet_of(&redis, 3, |b| b.upstream = Some(stub_addr)).await;
    settled(&fleet).await;
    let call =
        Call::new("facefusion", "FuseFaceUltra", "AKIDmain").header("X-Stub-Latency-Ms", "300");
    // 100 clients, each calling again as soon as it is answered, for 4 s.
    let until = Instant::now() + Duration::from_secs(4);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..100 {
        let h = Arc::clone(&fleet[i % 3]);
        let c = call.clone();
        set.spawn(async move {
            let mut replies = Vec::new();
            while Instant::now() < until {
                let r = h.call(&c).await;
                if !r.is_success() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                replies.push(r);
            }
            replies
        });
    }
    let mut replies = Vec::new();
    while let Some(r) = set.join_next().await {
        replies.extend(r.unwrap());
    }
    let codes = count_codes(&replies);
    for r in &replies {
        assert!(
            r.is_success() || r.error_code() == Some("RequestLimitExceeded"),
            "{:?}",
            r.json
        );
    }
    let max = backend_count(&fleet[0], stub_addr, "max_in_flight").await;
    let mut transitions = 0.0;
    for h in &fleet {
        transitions += h
            .metric("tollgate_fleet_transitions_total", &[("to", "degraded")])
            .await;
    }
    assert!(
        max <= 10,
        "the backend saw {max} in flight: {codes:?} ({transitions} degraded spells)"
    );
    // The fleet uses the limit: 4 s of 300 ms calls at up to 10 in flight is up to ~130.
    let admitted = codes.get("success").copied().unwrap_or(0);
    assert!(max >= 8 && admitted >= 60, "max {max}, {codes:?}");
    stop_all(fleet).await;
}

fn p99(mut latencies: Vec<Duration>) -> Duration {
    latencies.sort();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)]
}

async fn degraded_everywhere(fleet: &[Arc<Harness>], value: f64, within: Duration) -> bool {
    for h in fleet {
        if !eventually(within, || async {
            h.metric("tollgate_fleet_degraded", &[]).await == value
        })
        .await
        {
            return false;
        }
    }
    true
}

/// Offers 200 calls/s round-robin in the background, recording when each was sent, how
/// long it took, and whether it was admitted.
fn background_load(
    fleet: &[Arc<Harness>],
    call: &Call,
    seconds: u64,
) -> tokio::task::JoinHandle<Vec<(Instant, Duration, Reply)>> {
    let fleet = fleet.to_vec();
    let call = call.clone();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(5));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut set = tokio::task::JoinSet::new();
        for i in 0..(200 * seconds) as usize {
            ticker.tick().await;
            let h = Arc::clone(&fleet[i % fleet.len()]);
            let c = call.clone();
            set.spawn(async move {
                let sent = Instant::now();
                let r = h.call(&c).await;
                (sent, sent.elapsed(), r)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out.sort_by_key(|(t, _, _)| *t);
        out
    })
}

fn admitted_between(replies: &[(Instant, Duration, Reply)], from: Instant, to: Instant) -> usize {
    replies
        .iter()
        .filter(|(t, _, r)| *t >= from && *t < to && r.is_success())
        .count()
}

/// Redis frozen (SIGSTOP) for 10 s under load: every call is still answered as quickly (the
/// request path never waits for Redis), the fleet admits at most N × (limit ÷ N) + burst,
/// the degraded gauge reads 1, and 0 again within a second of SIGCONT. Then Redis killed
/// and restarted empty: the same, and the quota is exact again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_or_restarted_empty_degrades_to_static_shares() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::start();
    let fleet = fleet_of(&redis, 3, |_| {}).await;
    settled(&fleet).await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDsubB");
    let load = background_load(&fleet, &call, 30);

    tokio::time::sleep(Duration::from_secs(4)).await;
    let paused = Instant::now();
    redis.pause();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        degraded_everywhere(&fleet, 1.0, Duration::from_secs(1)).await,
        "not degraded while Redis is frozen"
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    let resumed = Instant::now();
    redis.resume();
    assert!(
        degraded_everywhere(&fleet, 0.0, Duration::from_secs(1)).await,
        "still degraded a second after SIGCONT"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed = Instant::now();
    redis.down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(degraded_everywhere(&fleet, 1.0, Duration::from_secs(1)).await);
    redis.up();
    let restarted = Instant::now();
    assert!(
        degraded_everywhere(&fleet, 0.0, Duration::from_secs(1)).await,
        "still degraded a second after Redis came back"
    );
    let replies = load.await.unwrap();
    let end = replies.last().unwrap().0;

    for (_, _, r) in &replies {
        assert!(
            r.is_success() || r.error_code() == Some("RequestLimitExceeded"),
            "{:?}",
            r.json
        );
    }
    // The request path never waited for Redis: no call took anywhere near the freeze.
    let before: Vec<Duration> = replies
        .iter()
        .filter(|(t, _, _)| *t < paused)
        .map(|(_, d, _)| *d)
        .collect();
    let during: Vec<Duration> = replies
        .iter()
        .filter(|(t, _, _)| *t >= paused && *t < resumed)
        .map(|(_, d, _)| *d)
        .collect();
    let slowest = during.iter().max().copied().unwrap();
    assert!(
        slowest < Duration::from_secs(1),
        "a call took {slowest:?} while Redis was frozen"
    );
    eprintln!(
        "p99 before the freeze {:?}, during {:?}",
        p99(before),
        p99(during)
    );
    // While frozen: each replica admits a third of the limit.
    let secs = |a: Instant, b: Instant| b.duration_since(a).as_secs_f64();
    let frozen = admitted_between(&replies, paused, resumed);
    let bound = (20.0 * secs(paused, resumed)).ceil() as usize + 20;
    assert!(
        frozen <= bound && frozen as f64 >= 0.8 * 20.0 * secs(paused, resumed),
        "{frozen} admitted in the {:.1} s Redis was frozen (bound {bound})",
        secs(paused, resumed)
    );
    // Killed and restarted empty: static shares meanwhile, then exact again.
    let down = admitted_between(&replies, killed, restarted);
    assert!(down <= (20.0 * secs(killed, restarted)).ceil() as usize + 20);
    let after_from = restarted + Duration::from_secs(1);
    let after = admitted_between(&replies, after_from, end);
    let span = secs(after_from, end);
    // The bound of one bucket (rate × window + burst) plus what a replica can hold leased and
    // unused (one and a half leases: 3 calls at 20 QPS; counted when reserved, used later).
    assert!(
        after as f64 >= 0.9 * 20.0 * span && after as f64 <= 20.0 * span + 20.0 + 3.0 * 3.0,
        "{after} admitted in the {span:.1} s after the restart"
    );
    stop_all(fleet).await;
}

/// A gateway run as its own process, SIGKILLed while it holds FuseFaceUltra slots: its
/// slots come back to the fleet within the membership TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_frees_its_slots_within_the_ttl() {
    let _serial = SERIAL.lock().await;
    let redis = Redis::start();
    let stub_addr = shared_stub().await;
    let ttl_ms = 1500;
    let fleet = fleet_of(&redis, 2, |b| {
        b.upstream = Some(stub_addr);
        b.quota.push_str(&format!("membership_ttl_ms = {ttl_ms}\n"));
    })
    .await;
    // The third member: a process of its own.
    let dir = tempfile::tempdir().unwrap();
    for f in ["catalog.toml", "entitlements.toml", "credentials.toml"] {
        std::fs::copy(fleet[0].config_dir().join(f), dir.path().join(f)).unwrap();
    }
    let (api_port, admin_port) = (free_port(), free_port());
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\napi = \"127.0.0.1:{api_port}\"\nadmin = \"127.0.0.1:{admin_port}\"\n[upstream.default]\nurl = \"http://{stub_addr}\"\n[metering]\nsink = \"file\"\npath = \"{}\"\n[quota]\n{}membership_ttl_ms = {ttl_ms}\n[log]\nlevel = \"warn\"\n",
            dir.path().join("usage.jsonl").display(),
            quota(&redis, "gw-proc", "")
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["gateway", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_port(api_port, Duration::from_secs(10)));
    let proc_addr: std::net::SocketAddr = format!("127.0.0.1:{api_port}").parse().unwrap();
    for h in &fleet {
        assert!(
            eventually(Duration::from_secs(10), || async {
                h.metric("tollgate_fleet_members", &[]).await == 3.0
            })
            .await
        );
    }
    // Fill the process's slots with calls that outlive it (30 s at the backend).
    let slow =
        Call::new("facefusion", "FuseFaceUltra", "AKIDmain").header("X-Stub-Latency-Ms", "30000");
    let mut holders = Vec::new();
    for _ in 0..40 {
        let req = fleet[0].request_for(proc_addr, &slow);
        holders.push(tokio::spawn(async move {
            use hyper_util::client::legacy::Client;
            let client: Client<_, http_body_util::Full<bytes::Bytes>> =
                Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build(hyper_util::client::legacy::connect::HttpConnector::new());
            // Cut when the process dies: that is the point.
            let _ = client.request(req).await;
        }));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The process holds what the fleet let it take; the other two have nothing in flight.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = backend_count(&fleet[0], stub_addr, "in_flight").await;
    assert!((5..=10).contains(&held), "the process holds {held}");
    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    for h in holders {
        h.abort();
    }
    // The slots come back: the two live gateways together reach 10 in flight again (counted
    // by the gateways: the backend may still be running the dead one's orphaned calls).
    let quick =
        Call::new("facefusion", "FuseFaceUltra", "AKIDmain").header("X-Stub-Latency-Ms", "8000");
    let mut got = Vec::new();
    let deadline = killed + Duration::from_millis(ttl_ms) * 3;
    let mut in_flight = 0.0;
    while Instant::now() < deadline {
        // Five calls per gateway per 50 ms: the slots are taken as soon as they free.
        for h in &fleet {
            for _ in 0..5 {
                let h = Arc::clone(h);
                let c = quick.clone();
                got.push(tokio::spawn(async move { h.call(&c).await }));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        in_flight = 0.0;
        for h in &fleet {
            in_flight += h
                .metric(
                    "tollgate_concurrency_in_flight",
                    &[("group", "facefusion.fuse_ultra")],
                )
                .await;
        }
        if in_flight >= 10.0 {
            break;
        }
    }
    let freed_after = killed.elapsed();
    eprintln!("the live members held {in_flight} slots {freed_after:?} after the kill");
    assert!(
        in_flight == 10.0,
        "{in_flight} in flight {freed_after:?} after the kill (membership TTL {ttl_ms} ms)"
    );
    // Within the TTL plus a report or two (and the test's own 50 ms polling).
    assert!(
        freed_after < Duration::from_millis(ttl_ms) * 2,
        "slots freed only {freed_after:?} after the kill (membership TTL {ttl_ms} ms)"
    );
    for t in got {
        t.abort();
    }
    stop_all(fleet).await;
}

/// The same fleet on a Redis Cluster (three masters): the scripts' keys hash-tag one account
/// per slot and membership lives in one slot, so a 20-QPS group is still one quota and
/// FuseFaceUltra still never has more than 10 in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_the_fleet_is_one_quota_too() {
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start();
    let stub_addr = shared_stub().await;
    let mut fleet = Vec::new();
    for i in 0..3 {
        let b = Builder {
            quota: format!(
                "store = \"redis\"\nredis_cluster = true\nredis_url = \"{}\"\nmember_id = \"gw-{i}\"\n",
                cluster.urls()
            ),
            upstream: Some(stub_addr),
            ..Builder::default()
        };
        fleet.push(Arc::new(Harness::start(b).await));
    }
    settled(&fleet).await;
    // Rates: 200 calls/s for 10 s of a 20-QPS group, round-robin.
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDsubB");
    let (replies, elapsed) = offer(&fleet, &call, 200, 10, |i| i % 3).await;
    only_admitted_or_limited(&replies);
    let n = admitted(&replies);
    let upper = (20.0 * elapsed.as_secs_f64().max(10.0)).ceil() as usize + 20;
    assert!((190..=upper).contains(&n), "admitted {n} in {elapsed:?}");
    // Concurrency: 60 clients over the three for 3 s.
    let slow =
        Call::new("facefusion", "FuseFaceUltra", "AKIDmain").header("X-Stub-Latency-Ms", "300");
    let until = Instant::now() + Duration::from_secs(3);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..60 {
        let h = Arc::clone(&fleet[i % 3]);
        let c = slow.clone();
        set.spawn(async move {
            let mut ok = 0;
            while Instant::now() < until {
                if h.call(&c).await.is_success() {
                    ok += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        ok += r.unwrap();
    }
    let max = backend_count(&fleet[0], stub_addr, "max_in_flight").await;
    assert!(
        (8..=10).contains(&max) && ok >= 40,
        "max {max} in flight, {ok} admitted"
    );
    for h in &fleet {
        assert_eq!(h.metric("tollgate_fleet_degraded", &[]).await, 0.0);
    }
    stop_all(fleet).await;
}
