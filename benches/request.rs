//! Request-path benches besides admission: TC3 signature verification of a 1 KiB call (with
//! its floor, the SHA-256 of the body alone, as the baseline),
//! classification, reading an HTTP/1.1 call's head (the own codec beside a header-map
//! baseline), and the billability scan of a typical answer and of a 1 MiB answer.
//!
//! Run: `cargo bench --bench request`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tollgate_core::config::{self, Sources};
use tollgate_core::tc3::Signer;
use tollgate_gateway::auth::{
    AuthRequest, Credential, Credentials, authenticate, parse_authorization,
};
use tollgate_gateway::billing::Scanner;

fn signature(c: &mut Criterion) {
    let body = format!(
        r#"{{"ImageUrl":"https://example.com/{}.jpg"}}"#,
        "a".repeat(1024 - 39)
    );
    assert_eq!(body.len(), 1024);
    let ts = 1_795_347_128i64;
    let auth = Signer {
        secret_id: "AKIDbench",
        secret_key: "bench-secret-key-0123456789abcdef",
        service: "ocr",
        host: "127.0.0.1:18080",
        content_type: "application/json",
        method: "POST",
        query: b"",
        payload: body.as_bytes(),
        timestamp: ts,
    }
    .authorization();
    let mut by_id = rustc_hash::FxHashMap::default();
    by_id.insert(
        "AKIDbench".into(),
        Credential {
            secret_key: b"bench-secret-key-0123456789abcdef".as_slice().into(),
            uin: 1,
            expires_unix: None,
        },
    );
    let creds = Credentials::new(by_id);
    let ts_str = ts.to_string();
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("verify_tc3_1KiB", |b| {
        b.iter(|| {
            let parsed = parse_authorization(black_box(&auth)).unwrap();
            let uin = authenticate(
                &creds,
                AuthRequest {
                    authorization: &parsed,
                    method: "POST",
                    query: b"",
                    header: |n: &str| match n {
                        "host" => Some(b"127.0.0.1:18080".as_slice()),
                        "content-type" => Some(b"application/json".as_slice()),
                        _ => None,
                    },
                    timestamp: Some(ts_str.as_bytes()),
                    payload: Some(black_box(body.as_bytes())),
                },
                ts,
                300,
            );
            black_box(uin.unwrap())
        })
    });
    g.bench_function("parse_authorization", |b| {
        b.iter(|| {
            black_box(
                parse_authorization(black_box(&auth))
                    .unwrap()
                    .secret_id
                    .len(),
            )
        })
    });
    // The floor: the body's SHA-256, which the signature commits to and no verifier can skip.
    g.bench_function("sha256_of_the_1KiB_body_alone", |b| {
        b.iter(|| {
            use sha2::Digest;
            black_box(sha2::Sha256::digest(black_box(body.as_bytes())))
        })
    });
    // The replay guard's cost per call, beside the verification it follows: a guard holding
    // 300 s of 10,000 calls/s, a new signature each call and a new second every 10,000.
    let guard = tollgate_gateway::auth::replay::ReplayGuard::new(300, 4_000_000);
    let hex = |n: u64, out: &mut [u8; 64]| {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in out[..16].iter_mut().enumerate() {
            *b = DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
    };
    let mut sig = [b'0'; 64];
    let (mut n, mut second) = (0u64, ts);
    for _ in 0..3_000_000u64 {
        n += 1;
        second += i64::from(n % 10_000 == 0);
        hex(n.wrapping_mul(0x9e37_79b9_7f4a_7c15), &mut sig);
        guard.check(std::str::from_utf8(&sig).unwrap(), second, second);
    }
    g.bench_function("replay_guard_check", |b| {
        b.iter(|| {
            n += 1;
            second += i64::from(n % 10_000 == 0);
            hex(n.wrapping_mul(0x9e37_79b9_7f4a_7c15), &mut sig);
            let s = std::str::from_utf8(&sig).unwrap();
            black_box(guard.check(black_box(s), second, second))
        })
    });
    // Making the signature alone: the guard's own cost is the difference.
    g.bench_function("replay_guard_check_baseline_making_the_signature", |b| {
        b.iter(|| {
            n += 1;
            second += i64::from(n % 10_000 == 0);
            hex(n.wrapping_mul(0x9e37_79b9_7f4a_7c15), &mut sig);
            black_box(std::str::from_utf8(&sig).unwrap());
        })
    });
    g.finish();
}

/// Reading a typical SDK call's head (11 fields): the own HTTP/1.1 codec's `RawHead::parse`,
/// beside what a header-map codec does per call (httparse, then every name and value into an
/// `http::HeaderMap`, as hyper's server builds it) in the same run.
fn http1_head(c: &mut Criterion) {
    use bytes::BytesMut;
    use tollgate_gateway::proxy::head::{Parsed, RawHead};
    let call: &[u8] = b"POST / HTTP/1.1\r\nHost: gateway.example:18080\r\nContent-Type: application/json\r\nX-TC-Action: GeneralBasicOCR\r\nX-TC-Version: 2018-11-19\r\nX-TC-Timestamp: 1795347128\r\nX-TC-Region: ap-guangzhou\r\nX-TC-RequestClient: SDK_PYTHON_3.0.1283\r\nX-TC-Language: zh-CN\r\nUser-Agent: python-requests/2.32.3\r\nAuthorization: TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2026-11-22/ocr/tc3_request, SignedHeaders=content-type;host, Signature=3066e6a8b103af2f975aea2e9b13bf0e5a174495e90cf474d1978487af943730\r\nContent-Length: 40\r\n\r\n{\"ImageUrl\":\"https://example.com/a.jpg\"}";
    let mut g = c.benchmark_group("http1_head");
    let mut head = RawHead::default();
    g.bench_function("own_codec_raw_head", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(call));
            match RawHead::parse(&mut buf, 64 * 1024, &mut head) {
                Parsed::Call(body) => black_box(body.len()),
                _ => unreachable!(),
            }
        })
    });
    g.bench_function("header_map_baseline", |b| {
        b.iter(|| {
            let buf = BytesMut::from(black_box(call)).freeze();
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut slots);
            let httparse::Status::Complete(len) = req.parse(&buf).unwrap() else {
                unreachable!()
            };
            let mut map = http::HeaderMap::with_capacity(req.headers.len());
            for h in req.headers.iter() {
                let name = http::HeaderName::from_bytes(h.name.as_bytes()).unwrap();
                let value = http::HeaderValue::from_bytes(h.value).unwrap();
                map.append(name, value);
            }
            black_box((map.len(), buf.slice(len..).len()))
        })
    });
    g.finish();
}

fn classification(c: &mut Criterion) {
    let loaded = config::load(&Sources::embedded()).unwrap();
    let catalog = &loaded.catalog;
    c.bench_function("classify/service_and_action", |b| {
        b.iter(|| {
            let svc = catalog.service_by_name(black_box("ocr")).unwrap();
            black_box(
                catalog
                    .route(svc, black_box("MixedInvoiceOCR"))
                    .expect("listed")
                    .group_key(),
            )
        })
    });
}

fn scan(c: &mut Criterion) {
    let typical = br#"{"Response":{"TextDetections":[{"DetectedText":"\u4e2d\u6587 text","Confidence":99,"Polygon":[{"X":1,"Y":2},{"X":3,"Y":4}],"AdvancedInfo":"{\"Parag\":{\"ParagNo\":1}}"}],"Angle":0.0,"Language":"zh","RequestId":"6e1a1b59-2f2a-4b0e-9c2c-3c1d5b3f4a11"}}"#.to_vec();
    let big = {
        let mut v = br#"{"Response":{"ResultImage":""#.to_vec();
        v.extend(std::iter::repeat_n(b'A', 1 << 20));
        v.extend_from_slice(br#"","HasForeground":true,"RequestId":"r"}}"#);
        v
    };
    let mut g = c.benchmark_group("billability_scan");
    for (name, body) in [
        ("typical_answer", &typical),
        ("1MiB_answer_64KiB_chunks", &big),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut s = Scanner::new();
                for chunk in body.chunks(64 * 1024) {
                    s.feed(black_box(chunk));
                }
                black_box(s.finish())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, signature, http1_head, classification, scan);
criterion_main!(benches);
