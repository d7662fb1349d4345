//! Heap allocations on the hot path, counted by a global allocator: none per admission
//! decision (classification, limit resolution, the quota check), none per TC3 verification,
//! none per billability scan; and the memory each active (account, group) bucket costs.
//!
//! This test binary installs its own allocator, which needs `unsafe` (the libraries deny it;
//! the tidy test allows it here and in `metering::segment` only). Counting is per thread, so
//! tests running in parallel do not disturb it.

#![allow(unsafe_code)]

#[path = "../benches/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use tollgate_core::catalog::GroupKey;
use tollgate_core::clock::{Clock, FakeClock};
use tollgate_core::tc3::Signer;
use tollgate_gateway::admission::{Admission, LocalStore, QuotaKey};
use tollgate_gateway::auth::{
    AuthRequest, Credential, Credentials, authenticate, parse_authorization,
};
use tollgate_gateway::billing::Scanner;

struct Counting;

thread_local! {
    // Flag and counters are all per thread: tests running in parallel each count their own.
    static ON: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
}

// SAFETY: every call forwards to the system allocator unchanged; the flag and counters are
// const-initialised thread-locals, so counting itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if ON.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
            NET_BYTES.with(|b| b.set(b.get() + layout.size() as i64));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ON.with(Cell::get) {
            NET_BYTES.with(|b| b.set(b.get() - layout.size() as i64));
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if ON.with(Cell::get) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
            NET_BYTES.with(|b| b.set(b.get() + new_size as i64 - layout.size() as i64));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` with counting on (this thread only); returns (allocations, net bytes).
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64, i64) {
    let (a0, b0) = (ALLOCATIONS.with(Cell::get), NET_BYTES.with(Cell::get));
    ON.with(|on| on.set(true));
    let out = f();
    ON.with(|on| on.set(false));
    (
        out,
        ALLOCATIONS.with(Cell::get) - a0,
        NET_BYTES.with(Cell::get) - b0,
    )
}

/// Every synchronous phase of the request path, driven through the gateway itself
/// (`Gateway::decide_buffered`: classify, precheck, verify the signature, gate, admit): no
/// allocation per call, admitted or refused over the limit.
#[test]
fn the_request_path_decides_without_allocating() {
    let clock = FakeClock::at("2026-05-01T10:00:00+08:00");
    let gateway = common::demo_gateway(Arc::clone(&clock));
    let snapshot = gateway.snapshot();
    let body = Bytes::from_static(br#"{"ImageUrl":"https://example.com/a.jpg"}"#);
    let now = clock.unix_nanos() / 1_000_000_000;
    let calls = [
        common::signed_call(common::MAIN, "ocr", "GeneralBasicOCR", &body, now),
        common::signed_call(common::QPS_MODE, "ocr", "GeneralBasicOCR", &body, now),
        common::signed_call(common::SUB_A, "ocr", "IDCardOCR", &body, now),
    ];
    // The first call of a key creates its bucket, and the first verification of a
    // credential derives its signing key: per key and per day, not per call.
    for parts in &calls {
        gateway.decide_buffered(&snapshot, parts, &body).unwrap();
    }
    let (outcomes, allocations, _) = counted(|| {
        let mut admitted = 0;
        for i in 0..30_000usize {
            // Admitted and over-limit decisions alike (10 ms apart: 100 calls/s on 20 QPS).
            clock.advance(std::time::Duration::from_millis(10));
            let r = gateway.decide_buffered(&snapshot, &calls[i % 3], &body);
            admitted += usize::from(r.is_ok());
            std::hint::black_box(r.ok());
        }
        admitted
    });
    assert!(
        (1_000..29_000).contains(&outcomes),
        "{outcomes} of 30,000 admitted: both outcomes are measured"
    );
    assert_eq!(
        allocations, 0,
        "allocations in 30,000 request-path decisions"
    );
}

#[test]
fn tc3_verification_and_the_billability_scan_allocate_nothing() {
    let body = br#"{"ImageUrl":"https://example.com/a.jpg"}"#;
    let auth = Signer {
        secret_id: "AKIDx",
        secret_key: "0123456789abcdef0123456789abcdef",
        service: "ocr",
        host: "gw:1",
        content_type: "application/json",
        method: "POST",
        query: b"",
        payload: body,
        timestamp: 1_795_347_128,
    }
    .authorization();
    let mut by_id = rustc_hash::FxHashMap::default();
    by_id.insert(
        "AKIDx".into(),
        Credential {
            secret_key: b"0123456789abcdef0123456789abcdef".as_slice().into(),
            uin: 9,
            expires_unix: None,
        },
    );
    let creds = Credentials::new(by_id);
    let verify = || {
        let parsed = parse_authorization(&auth).unwrap();
        authenticate(
            &creds,
            AuthRequest {
                authorization: &parsed,
                method: "POST",
                query: b"",
                header: |n: &str| match n {
                    "host" => Some(b"gw:1".as_slice()),
                    "content-type" => Some(b"application/json".as_slice()),
                    _ => None,
                },
                timestamp: Some(b"1795347128"),
                payload: Some(body),
            },
            1_795_347_128,
            300,
        )
    };
    // The first verification of a (SecretId, date, service) derives and caches its signing
    // key: once a day, not per call.
    assert_eq!(verify(), Ok(9));
    let (uin, allocations, _) = counted(verify);
    assert_eq!(uin, Ok(9));
    assert_eq!(allocations, 0, "allocations in one TC3 verification");

    let mut answer = br#"{"Response":{"ResultImage":""#.to_vec();
    answer.extend(std::iter::repeat_n(b'A', 256 * 1024));
    answer
        .extend_from_slice(br#"","MixedInvoiceItems":[{"Code":"OK","Type":3}],"RequestId":"r"}}"#);
    let (_, allocations, _) = counted(|| {
        let mut s = Scanner::new();
        for chunk in answer.chunks(16 * 1024) {
            s.feed(chunk);
        }
        std::hint::black_box(s.finish())
    });
    assert_eq!(allocations, 0, "allocations scanning a 256 KiB answer");
}

/// The fleet store decides without allocating too: rate calls taken from leases and
/// concurrency slots from slices, refills queued for the fleet task (answered here in
/// process, as Redis would), admitted and refused alike.
#[test]
fn the_fleet_store_decides_without_allocating() {
    use tollgate_core::entitlement::Limit;
    use tollgate_gateway::admission::fleet::{FailureMode, FleetShared, FleetStore, FleetTuning};
    use tollgate_gateway::admission::{Decision, QuotaStore};
    let shared = FleetShared::new(FleetTuning {
        lease_nanos: 100_000_000,
        lease_idle_nanos: 200_000_000,
        warm_nanos: 1_000_000_000,
        failure_default: FailureMode::Static,
        failure_groups: Default::default(),
    });
    shared.set_healthy();
    shared.set_members(3, 3);
    shared.set_settled(true);
    let store = Arc::new(FleetStore::new(Arc::clone(&shared)));
    let admission = Admission::new(Arc::clone(&store) as Arc<dyn QuotaStore>, 1000);
    let ocr = GroupKey::of_group("ocr.GeneralBasicOCR");
    let fuse = GroupKey::of_group("facefusion.fuse_ultra");
    let keys = [
        (QuotaKey { uin: 1, group: ocr }, Limit::Rate(20)),
        (QuotaKey { uin: 2, group: ocr }, Limit::Rate(2000)),
        (
            QuotaKey {
                uin: 1,
                group: fuse,
            },
            Limit::Concurrency(10),
        ),
    ];
    let mut buf = Vec::with_capacity(64);
    let mut now = 1_000_000_000u64;
    // First calls make the entries (per key, not per call).
    for (k, l) in keys {
        let _ = admission.decide(k, l, now);
        shared.grant_all_locally(&mut buf, now);
    }
    let mut held = Vec::with_capacity(16);
    let ((admitted, refused), allocations, _) = counted(|| {
        let (mut admitted, mut refused) = (0u32, 0u32);
        for i in 0..30_000usize {
            now += 1_000_000; // 1,000 calls/s over the three keys
            let (k, l) = keys[i % 3];
            match admission.decide(k, l, now) {
                Decision::Admitted { permit, .. } => {
                    admitted += 1;
                    if let Some(p) = permit {
                        held.push(p);
                    }
                }
                Decision::OverLimit { .. } => refused += 1,
            }
            if held.len() >= 8 {
                held.clear();
            }
            if i % 50 == 0 {
                shared.grant_all_locally(&mut buf, now);
            }
        }
        (admitted, refused)
    });
    assert!(
        admitted > 1_000 && refused > 1_000,
        "{admitted} admitted, {refused} refused"
    );
    assert_eq!(
        allocations, 0,
        "allocations in 30,000 fleet-store decisions"
    );
}

/// What one active (account, group) bucket costs in memory, table overhead included.
#[test]
fn memory_per_active_bucket() {
    const N: u64 = 1_000_000;
    let store = LocalStore::new();
    let admission = Admission::new(Arc::new(store), 1000);
    let group = GroupKey::of_group("ocr.GeneralBasicOCR");
    let (_, _, bytes) = counted(|| {
        for uin in 0..N {
            admission.decide(
                QuotaKey { uin, group },
                tollgate_core::entitlement::Limit::Rate(20),
                1,
            );
        }
    });
    let per_bucket = bytes as f64 / N as f64;
    println!("memory per active bucket: {per_bucket:.1} bytes ({N} buckets, {bytes} bytes)");
    // A key (16 B) and its TAT (8 B) plus the sharded table's control bytes and spare capacity.
    assert!(per_bucket < 96.0, "{per_bucket} bytes per bucket");
}
