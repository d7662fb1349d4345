//! One quota across the fleet: three gateways sharing a private redis-server (issue 12).
//!
//! Each test starts its own redis-server on an ephemeral port and three in-process gateways
//! with `[quota] store = "redis"`, and offers load spread over them as a load balancer would.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::servers::Redis;
use support::{Builder, Call, Harness, Reply, count_codes, eventually};

const ENTITLEMENTS_OVERLAY_LATER: &str = "";

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
    let _ = ENTITLEMENTS_OVERLAY_LATER;
    stop_all(fleet).await;
}

/// FuseFaceUltra (10 in flight per account) with 100 parallel slow calls over three
/// replicas: the backend, shared by all three, never sees more than 10 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_shared_across_the_fleet() {
    let redis = Redis::start();
    let stub_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub_addr = stub_listener.local_addr().unwrap();
    tokio::spawn(tollgate_stub::serve(
        stub_listener,
        tollgate_stub::Stub::new(Default::default()),
        std::future::pending(),
    ));
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
    let stats = fleet[0].get_text(stub_addr, "/stub/stats").await.1;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    let max = stats["actions"]["FuseFaceUltra"]["max_in_flight"]
        .as_u64()
        .unwrap();
    assert!(max <= 10, "the backend saw {max} in flight: {codes:?}");
    // The fleet uses the limit: 4 s of 300 ms calls at up to 10 in flight is up to ~130.
    let admitted = codes.get("success").copied().unwrap_or(0);
    assert!(max >= 8 && admitted >= 60, "max {max}, {codes:?}");
    stop_all(fleet).await;
}
