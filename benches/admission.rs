//! Admission benches: the decision on one hot key, across 1 million active keys, and from two
//! threads on different keys and on the same key, each against a naive `Mutex<HashMap>`
//! baseline running the same GCRA behind the same trait (pingora-limits' bench shape), and
//! for the fleet store deciding from its leases (`fleet_leases`). Plus
//! every synchronous phase of the request path, through the gateway itself.
//!
//! Run: `cargo bench --bench admission`. Figures go in loadtest/RESULTS.md as ratios.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_core::catalog::GroupKey;
use tollgate_core::clock::{Clock, FakeClock};
use tollgate_gateway::admission::fleet::{
    FailureMode, FleetShared, FleetStore, FleetTuning, Wanted,
};
use tollgate_gateway::admission::{LocalStore, QuotaKey, QuotaStore, Rate, gcra};

/// What both stores implement: one rate check.
trait Limiter: Send + Sync {
    fn check(&self, key: QuotaKey, rate: Rate, now: u64) -> bool;
}

impl Limiter for LocalStore {
    fn check(&self, key: QuotaKey, rate: Rate, now: u64) -> bool {
        matches!(
            self.check_rate(key, rate, now),
            gcra::Verdict::Admitted { .. }
        )
    }
}

/// The baseline: the same GCRA, state in a `HashMap` behind one `Mutex`.
#[derive(Default)]
struct MutexMap(Mutex<HashMap<QuotaKey, u64>>);

impl Limiter for MutexMap {
    fn check(&self, key: QuotaKey, rate: Rate, now: u64) -> bool {
        let mut map = self.0.lock().unwrap();
        let tat = map.entry(key).or_insert(0);
        let cell = AtomicU64::new(*tat);
        let ok = matches!(
            gcra::check(&cell, now, rate),
            gcra::Verdict::Admitted { .. }
        );
        *tat = cell.load(Ordering::Relaxed);
        ok
    }
}

/// The fleet store (`[quota] store = "redis"`), deciding from leases. Its refills are
/// answered in process every 64 decisions, as the fleet task would answer them from Redis:
/// the decision itself never touches Redis, so this is what it costs on the request path.
struct FleetLeases {
    store: FleetStore,
    shared: Arc<FleetShared>,
    buf: Mutex<Vec<Wanted>>,
    calls: AtomicU64,
}

impl FleetLeases {
    fn new() -> FleetLeases {
        let shared = FleetShared::new(FleetTuning {
            lease_nanos: 100_000_000,
            // Leases are never given back within the bench's simulated clock.
            lease_idle_nanos: u64::MAX / 4,
            warm_nanos: u64::MAX / 4,
            failure_default: FailureMode::Static,
            failure_groups: Default::default(),
        });
        shared.set_healthy();
        shared.set_members(3, 3);
        FleetLeases {
            store: FleetStore::new(Arc::clone(&shared)),
            shared,
            buf: Mutex::new(Vec::with_capacity(1 << 20)),
            calls: AtomicU64::new(0),
        }
    }
}

impl Limiter for FleetLeases {
    fn check(&self, key: QuotaKey, rate: Rate, now: u64) -> bool {
        let ok = matches!(
            self.store.check_rate(key, rate, now),
            gcra::Verdict::Admitted { .. }
        );
        if self
            .calls
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(64)
        {
            let mut buf = self.buf.lock().unwrap();
            self.shared.grant_all_locally(&mut buf, now);
        }
        ok
    }
}

fn key(i: u64) -> QuotaKey {
    QuotaKey {
        uin: 100_000_000_000 + i,
        group: GroupKey::of_group("ocr.GeneralBasicOCR"),
    }
}

const RATE: Rate = Rate {
    per_second: 20,
    burst: 20,
};

fn stores() -> Vec<(&'static str, Arc<dyn Limiter>)> {
    vec![
        ("dashmap_gcra", Arc::new(LocalStore::new())),
        ("mutex_hashmap", Arc::new(MutexMap::default())),
        ("fleet_leases", Arc::new(FleetLeases::new())),
    ]
}

fn one_hot_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("admission/one_hot_key");
    for (name, store) in stores() {
        let mut now = 1_000_000_000u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                now += 1_000;
                black_box(store.check(key(1), RATE, now))
            })
        });
    }
    g.finish();
}

fn million_keys(c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let mut g = c.benchmark_group("admission/1M_active_keys");
    g.sample_size(30);
    // A fixed pseudo-random walk over the keys (no RNG cost in the loop).
    let order: Vec<u64> = (0..N).map(|i| (i * 2_654_435_761) % N).collect();
    for (name, store) in stores() {
        for i in 0..N {
            store.check(key(i), RATE, 1);
        }
        let mut at = 0usize;
        let mut now = 2_000_000_000u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                at = (at + 1) % order.len();
                now += 100;
                black_box(store.check(key(order[at]), RATE, now))
            })
        });
    }
    g.finish();
}

/// Two threads, each deciding `iters` calls; reports the time per decision.
fn two_threads(store: &Arc<dyn Limiter>, iters: u64, same_key: bool) -> Duration {
    let clock = Arc::new(AtomicU64::new(3_000_000_000));
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let store = Arc::clone(store);
            let clock = Arc::clone(&clock);
            s.spawn(move || {
                let k = if same_key { key(7) } else { key(10 + t) };
                for _ in 0..iters {
                    let now = clock.fetch_add(100, Ordering::Relaxed);
                    black_box(store.check(k, RATE, now));
                }
            });
        }
    });
    start.elapsed() / 2
}

fn contention(c: &mut Criterion) {
    for (label, same) in [
        ("admission/two_threads_different_keys", false),
        ("admission/two_threads_same_key", true),
    ] {
        let mut g = c.benchmark_group(label);
        for (name, store) in stores() {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| two_threads(&store, iters, same))
            });
        }
        g.finish();
    }
}

/// Every synchronous phase of the request path, through the gateway itself
/// (`Gateway::decide_buffered`: classify, precheck, verify the TC3 signature, gate, admit) on
/// the demo config, for an admitted call: what a call costs the gateway besides its I/O.
fn request_path_phases(c: &mut Criterion) {
    let clock = FakeClock::at("2026-05-01T10:00:00+08:00");
    let gateway = common::demo_gateway(Arc::clone(&clock));
    let snapshot = gateway.snapshot();
    let body = Bytes::from_static(br#"{"ImageUrl":"https://example.com/a.jpg"}"#);
    let parts = common::signed_call(
        common::MAIN,
        "ocr",
        "GeneralBasicOCR",
        &body,
        clock.unix_nanos() / 1_000_000_000,
    );
    c.bench_function("request_path/head_to_admission", |b| {
        b.iter(|| {
            // 10 calls/s on 20 QPS: every call admitted.
            clock.advance_monotonic(std::time::Duration::from_millis(100));
            black_box(
                gateway
                    .decide_buffered(&snapshot, black_box(&parts), &body)
                    .is_ok(),
            )
        })
    });
    // Still admitted after millions of replays: what was timed is the admitted path.
    assert!(gateway.decide_buffered(&snapshot, &parts, &body).is_ok());
}

/// What knowing a call's image-search library costs the request path: `SearchImage` into a
/// library the gateway holds (its `GroupId` read from the body, the owner's libraries looked
/// up in memory) against `DetectLabel` of the same service, which has no library. The ratio
/// of the two is the lookup's share; neither touches the network or the store.
fn image_search_library_lookup(c: &mut Criterion) {
    let clock = FakeClock::at("2026-05-01T10:00:00+08:00");
    let gateway = common::demo_gateway(Arc::clone(&clock));
    let owner = 100_000_000_001;
    // An owner with a few libraries (the vendor allows 30); the one searched is the last.
    for i in 0..9 {
        gateway
            .libraries()
            .learn(owner, &format!("library_{i}"), 4, "create");
    }
    gateway
        .libraries()
        .learn(owner, "patterns_2026", 6, "create");
    let snapshot = gateway.snapshot();
    let label = Bytes::from_static(br#"{"ImageUrl":"https://example.com/a.jpg"}"#);
    let search = Bytes::from_static(
        br#"{"GroupId":"patterns_2026","ImageUrl":"https://example.com/a.jpg","Limit":10,"Filter":"color=red"}"#,
    );
    let now = clock.unix_nanos() / 1_000_000_000;
    let label_parts = common::signed_call(common::MAIN, "tiia", "DetectLabel", &label, now);
    let search_parts = common::signed_call(common::MAIN, "tiia", "SearchImage", &search, now);
    assert!(
        gateway
            .decide_buffered(&snapshot, &search_parts, &search)
            .is_ok()
    );
    let mut g = c.benchmark_group("image_search");
    for (name, parts, body) in [
        ("DetectLabel_no_library", &label_parts, &label),
        ("SearchImage_known_library", &search_parts, &search),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                clock.advance_monotonic(std::time::Duration::from_millis(100));
                black_box(
                    gateway
                        .decide_buffered(&snapshot, black_box(parts), body)
                        .is_ok(),
                )
            })
        });
        assert!(
            gateway.decide_buffered(&snapshot, parts, body).is_ok(),
            "{name}"
        );
    }
    g.finish();
}

criterion_group!(
    benches,
    image_search_library_lookup,
    one_hot_key,
    million_keys,
    contention,
    request_path_phases
);
criterion_main!(benches);
