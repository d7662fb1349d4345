//! Spool benches: appends per second, one caller at a time (each leads and writes its own
//! record) and from 64 concurrent callers (leader/follower group commit), against a plain
//! `write(2)` per record under a mutex, the baseline a naive implementation would use (and
//! which holds a lock across I/O for every caller).
//!
//! Run: `cargo bench --bench spool`.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate_gateway::metering::spool::{Spool, SpoolConfig};

/// The payload of a typical usage record, encoded as the gateway encodes it (postcard).
fn record() -> Vec<u8> {
    tollgate_usage::record::to_payload(&tollgate_usage::UsageRecord {
        request_id: "6e1a1b59-2f2a-4b0e-9c2c-3c1d5b3f4a11".into(),
        owner_uin: 100_000_000_001,
        uin: 100_000_000_002,
        service: "ocr".into(),
        action: "GeneralBasicOCR".into(),
        billing_item: "ocr.general_basic".into(),
        units: 1,
        time_unix_ms: 1_795_347_128_123,
        unresolved_library: None,
    })
}

fn spool(dir: &std::path::Path) -> Spool {
    Spool::open(
        SpoolConfig {
            dir: dir.to_path_buf(),
            segment_bytes: 64 << 20,
            fsync_interval: Duration::from_millis(100),
            max_bytes: 1 << 40,
        },
        0,
    )
    .unwrap()
}

fn appends(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("spool_append");
    g.throughput(Throughput::Elements(1));
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(spool(dir.path()));
    g.bench_function("sequential_awaited", |b| {
        b.iter(|| rt.block_on(s.append(vec![record()])).unwrap().unwrap())
    });
    // 64 callers at once, as under load: the writer groups them into one write(2).
    g.bench_function("concurrent_64_callers", |b| {
        b.iter_custom(|iters| {
            let s = Arc::clone(&s);
            rt.block_on(async move {
                let start = Instant::now();
                let per = iters.div_ceil(64);
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..64 {
                    let s = Arc::clone(&s);
                    set.spawn(async move {
                        for _ in 0..per {
                            s.append(vec![record()]).await.unwrap().unwrap();
                        }
                    });
                }
                while set.join_next().await.is_some() {}
                start.elapsed().mul_f64(iters as f64 / (per * 64) as f64)
            })
        })
    });
    // Baseline: every caller takes a mutex and issues its own write(2).
    let dir2 = tempfile::tempdir().unwrap();
    let file = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir2.path().join("naive.log"))
            .unwrap(),
    ));
    g.bench_function("baseline_mutex_write_per_record_concurrent_64", |b| {
        b.iter_custom(|iters| {
            let file = Arc::clone(&file);
            rt.block_on(async move {
                let start = Instant::now();
                let per = iters.div_ceil(64);
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..64 {
                    let file = Arc::clone(&file);
                    set.spawn_blocking(move || {
                        for _ in 0..per {
                            file.lock().unwrap().write_all(&record()).unwrap();
                        }
                    });
                }
                while set.join_next().await.is_some() {}
                start.elapsed().mul_f64(iters as f64 / (per * 64) as f64)
            })
        })
    });
    g.finish();
}

criterion_group!(benches, appends);
criterion_main!(benches);
