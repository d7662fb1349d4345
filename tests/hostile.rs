//! A hostile client against a real gateway on real sockets: each hole a probe found, as a
//! black-box test. Every call here is one an attacker (or a broken client) can send; the
//! gateway must answer it in the vendor's shape, forward nothing it did not authenticate,
//! bill nothing twice, and hold nothing for long.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    Builder, Call, Harness, code_of, count_codes, eventually, metric_value, raw_request,
    read_answer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_core::clock::FakeClock;

fn frozen(at: &str) -> Builder {
    Builder {
        clock: Some(FakeClock::at(at)),
        ..Builder::default()
    }
}

async fn start(b: Builder) -> Arc<Harness> {
    Arc::new(Harness::start(b).await)
}

/// Sends raw bytes on a new connection and reads one answer.
async fn exchange(h: &Harness, bytes: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_answer(&mut s).await
}

/// The stub saw no call at all.
async fn backend_saw_nothing(h: &Harness) -> bool {
    h.stub_stats().await["actions"]
        .as_object()
        .unwrap()
        .is_empty()
}

/// A call whose SecretId nobody has, with a timestamp far in the past, declaring a large body:
/// refused from its head alone; its body is never buffered.
fn bogus_head(declared: usize) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nx-tc-action: GeneralBasicOCR\r\nx-tc-timestamp: 1\r\nauthorization: TC3-HMAC-SHA256 Credential=AKIDnobody/1970-01-01/ocr/tc3_request, SignedHeaders=content-type;host, Signature={}\r\ncontent-length: {declared}\r\n\r\n",
        "0".repeat(64)
    )
    .into_bytes()
}

/// Hole 1: the head is checked before the body is read, and a body that stops coming is cut
/// at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bogus_head_is_refused_before_its_body_is_read() {
    let h = start(Builder {
        max_request_bytes: 10 << 20,
        proxy_extra: "request_body_idle_timeout_ms = 500\nrequest_body_timeout_ms = 1500\n".into(),
        ..Builder::default()
    })
    .await;
    // Declares 10 MiB, sends nothing: answered at the idle deadline at the latest, and closed.
    let started = Instant::now();
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    s.write_all(&bogus_head(10 << 20)).await.unwrap();
    let (head, body) = read_answer(&mut s).await.expect("an answer");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        code_of(&body).as_deref(),
        Some("AuthFailure.SignatureExpire")
    );
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = [0u8; 16];
    assert_eq!(
        s.read(&mut rest).await.unwrap_or(0),
        0,
        "closed after the answer"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A known SecretId whose body trickles: cut at the total deadline, in the vendor's shape.
    let mut req = h.request(&Call::new("ocr", "GeneralBasicOCR", "AKIDmain"));
    req.headers_mut()
        .insert("content-length", "1000".parse().unwrap());
    let mut raw = support::raw_request(&req, b"");
    // raw_request appended its own length of 0: take it back out.
    let cut = raw.len() - b"content-length: 0\r\n\r\n".len();
    raw.truncate(cut);
    raw.extend_from_slice(b"\r\n");
    let started = Instant::now();
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    s.write_all(&raw).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            if s.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        read_answer(&mut s).await
    });
    let (_, body) = trickle.await.unwrap().expect("an answer");
    assert_eq!(
        code_of(&body).as_deref(),
        Some("InvalidParameter"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(backend_saw_nothing(&h).await);
    assert_eq!(
        h.metric(
            "tollgate_request_body_refusals_total",
            &[("reason", "timeout")]
        )
        .await,
        1.0
    );
}

/// Hole 1, chunked: a body of one-byte chunks costs its bytes, not a buffer per chunk, and
/// the gateway-wide bound refuses what would pass it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_are_bounded_gateway_wide() {
    let h = start(Builder {
        max_request_bytes: 1 << 20,
        proxy_extra: "max_buffered_request_bytes = 2097152\n".into(),
        ..Builder::default()
    })
    .await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    let chunked_head = |h: &Harness| {
        let req = h.request(&call);
        let mut raw = "POST / HTTP/1.1\r\n".to_string();
        for (k, v) in req.headers() {
            raw.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
        }
        raw.push_str("transfer-encoding: chunked\r\n\r\n");
        raw.into_bytes()
    };
    // Twenty clients each start a chunked body of one-byte chunks and stop halfway.
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(h.api()).await.unwrap();
        s.write_all(&chunked_head(&h)).await.unwrap();
        let chunks = b"1\r\nx\r\n".repeat(10_000);
        s.write_all(&chunks).await.unwrap();
        held.push(s);
    }
    // Each holds one 64 KiB block, not a read buffer per chunk.
    let ok = eventually(Duration::from_secs(5), || async {
        let m = h.metrics().await;
        let held = metric_value(&m, "tollgate_request_buffered_bytes", &[]);
        held > 0.0
    })
    .await;
    assert!(ok);
    let buffered = h.metric("tollgate_request_buffered_bytes", &[]).await;
    assert!(
        buffered <= (20 * 64 * 1024) as f64,
        "{buffered} bytes buffered for 20 bodies of 10,000 bytes"
    );
    // The bound (2 MiB): a 1 MiB declared body does not fit beside them.
    let mut big = call.clone();
    big.body = vec![b' '; 1 << 20];
    let r = h.call(&big).await;
    assert_eq!(r.error_code(), Some("ServiceUnavailable"), "{r:?}");
    assert_eq!(
        h.metric(
            "tollgate_request_body_refusals_total",
            &[("reason", "buffer_full")]
        )
        .await,
        1.0
    );
    drop(held);
    let released = eventually(Duration::from_secs(5), || async {
        h.metric("tollgate_request_buffered_bytes", &[]).await == 0.0
    })
    .await;
    assert!(released, "buffered bytes were not given back");
    // Small calls go through again.
    assert!(h.call(&call).await.is_success());
}

/// Hole 2: only `/` is an API 3.0 call; nothing else reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_api_target_is_forwarded() {
    let h = start(Builder::default()).await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    let req = h.request(&call);
    let raw = raw_request(&req, &call.body);
    let as_target = |target: &str| {
        let text = String::from_utf8_lossy(&raw).into_owned();
        text.replacen("POST / HTTP/1.1", &format!("POST {target} HTTP/1.1"), 1)
            .into_bytes()
    };
    for target in [
        "/stub/stats",
        "/admin",
        "//",
        "/?x=1",
        "http://evil.example/admin",
        "*",
    ] {
        let (head, body) = exchange(&h, &as_target(target)).await.expect(target);
        assert!(head.starts_with("http/1.1 "), "{target}: {head}");
        let code = code_of(&body);
        assert!(
            code.is_some(),
            "{target}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_ne!(code.as_deref(), Some("RequestLimitExceeded"), "{target}");
    }
    assert!(backend_saw_nothing(&h).await);
    // The SDK's forward-proxy form (`POST http://host/`) is still a call to `/`.
    let host = h.api().to_string();
    let (_, body) = exchange(&h, &as_target(&format!("http://{host}/")))
        .await
        .unwrap();
    assert_eq!(code_of(&body), None, "{}", String::from_utf8_lossy(&body));
    let stats = h.stub_stats().await;
    assert_eq!(stats["recent"][0]["target"], "/");
}

/// Hole 3: a field the gateway authenticates or routes on appears once, and `Connection`
/// cannot name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_valued_fields_are_single() {
    let h = start(Builder::default()).await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    for (extra, code) in [
        ("x-tc-action: IDCardOCR\r\n", "InvalidParameter"),
        ("x-tc-timestamp: 1\r\n", "InvalidParameter"),
        ("host: other.example\r\n", "InvalidParameter"),
        (
            "authorization: TC3-HMAC-SHA256 Credential=x\r\n",
            "AuthFailure.InvalidAuthorization",
        ),
        (
            "connection: X-TC-Action, Authorization, Content-Type, Host\r\n",
            "InvalidParameter",
        ),
        (
            "connection: keep-alive, X-TC-Version\r\n",
            "InvalidParameter",
        ),
    ] {
        let req = h.request(&call);
        let mut raw = raw_request(&req, &call.body);
        let at = raw.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        raw.splice(at..at, extra.bytes());
        let (_, body) = exchange(&h, &raw).await.expect(extra);
        assert_eq!(code_of(&body).as_deref(), Some(code), "{extra}");
    }
    assert!(backend_saw_nothing(&h).await);
    // A field named by Connection that is not part of the call is simply not forwarded.
    let r = h
        .call(
            &call
                .clone()
                .header("connection", "keep-alive, x-custom")
                .header("x-custom", "1"),
        )
        .await;
    assert!(r.is_success(), "{r:?}");
    assert_eq!(h.stub_stats().await["recent"][0]["action_values"], 1);
}

/// Hole 4: an action is matched exactly; case variants are refused, not given buckets of
/// their own; made-up actions of one service share one quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spelling_does_not_buy_quota() {
    let h = start(frozen("2026-05-01T10:00:00+08:00")).await;
    let mut all = Vec::new();
    for action in [
        "GeneralBasicOCR",
        "generalbasicocr",
        "GENERALBASICOCR",
        "GeneralbasicOCR",
        "generalBasicOCR",
    ] {
        all.extend(h.burst(&Call::new("ocr", action, "AKIDsubA"), 25).await);
    }
    let codes = count_codes(&all);
    assert_eq!(codes.get("success"), Some(&20), "{codes:?}");
    assert_eq!(codes.get("InvalidAction"), Some(&100), "{codes:?}");
    assert_eq!(codes.get("RequestLimitExceeded"), Some(&5), "{codes:?}");
    assert!(
        h.usage()
            .iter()
            .all(|u| &*u.billing_item == "ocr.general_basic")
    );
    assert_eq!(h.usage().len(), 20);

    // 500 made-up names: one quota between them, a handful of entries in memory.
    let mut replies = Vec::new();
    for i in 0..500 {
        replies.push(
            h.call(&Call::new("ocr", &format!("Junk{i}OCR"), "AKIDmain"))
                .await,
        );
    }
    let codes = count_codes(&replies);
    assert_eq!(codes.get("success"), Some(&20), "{codes:?}");
    let entries = h.metric("tollgate_quota_entries", &[]).await;
    assert!(entries <= 4.0, "{entries} quota entries");
    // Not an action name at all.
    let r = h.call(&Call::new("ocr", "General-OCR", "AKIDmain")).await;
    assert_eq!(r.error_code(), Some("InvalidAction"));
}

/// Hole 5: a backend that stalls mid-body is cut at the idle timeout: the client's
/// connection closes, the permit is freed, nothing is billed, and it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_stalling_mid_body_lets_go() {
    let h = start(Builder {
        proxy_extra: "response_idle_timeout_ms = 500\n".into(),
        ..Builder::default()
    })
    .await;
    let stalling = Call::new("facefusion", "FuseFaceUltra", "AKIDmain")
        .header("X-Stub-Image-Bytes", "100000")
        .header("X-Stub-Body-Delay-Ms", "60000");
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..10 {
        let req = h.request(&stalling);
        let raw = raw_request(&req, &stalling.body);
        let api = h.api();
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(api).await.unwrap();
            s.write_all(&raw).await.unwrap();
            let mut total = 0;
            let mut buf = [0u8; 65536];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n,
                }
            }
        }));
    }
    for c in clients {
        let got = c.await.unwrap();
        assert!(got > 0, "the head and part of the body came through");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held {:?}",
        started.elapsed()
    );
    // All ten permits are back: an eleventh call is admitted.
    let freed = eventually(Duration::from_secs(2), || async {
        h.metric(
            "tollgate_concurrency_in_flight",
            &[("group", "facefusion.fuse_ultra")],
        )
        .await
            == 0.0
    })
    .await;
    assert!(freed);
    let quick = Call::new("facefusion", "FuseFaceUltra", "AKIDmain");
    assert!(h.call(&quick).await.is_success());
    assert_eq!(h.usage().len(), 1, "only the quick call is billed");
    assert_eq!(
        h.metric(
            "tollgate_upstream_stalls_total",
            &[("service", "facefusion")]
        )
        .await,
        10.0
    );
}

/// Hole 7: forwarding fields only the gateway may set; no backend address in a client's
/// answer; CONNECT refused in the vendor's shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_fields_and_answers_say_only_what_they_should() {
    let h = start(Builder::default()).await;
    let r = h
        .call(
            &Call::new("ocr", "GeneralBasicOCR", "AKIDmain")
                .header("Forwarded", "for=6.6.6.6")
                .header("X-Real-IP", "6.6.6.6")
                .header("X-Forwarded-Proto", "https")
                .header("X-Forwarded-For", "6.6.6.6"),
        )
        .await;
    assert!(r.is_success());
    let seen = &h.stub_stats().await["recent"][0];
    assert_eq!(seen["forwarded"], serde_json::Value::Null);
    assert_eq!(seen["x_real_ip"], serde_json::Value::Null);
    assert_eq!(seen["x_forwarded_proto"], "http");
    assert_eq!(seen["x_forwarded_for"], "127.0.0.1");

    let (head, body) = exchange(
        &h,
        b"CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n\r\n",
    )
    .await
    .expect("an answer");
    assert!(!head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(code_of(&body).as_deref(), Some("UnsupportedProtocol"));

    let dead = start(Builder {
        dead_upstream: true,
        ..Builder::default()
    })
    .await;
    let r = dead
        .call(&Call::new("ocr", "GeneralBasicOCR", "AKIDmain"))
        .await;
    assert_eq!(r.error_code(), Some("ServiceUnavailable"));
    let message = r.json["Response"]["Error"]["Message"].as_str().unwrap();
    assert!(!message.contains("127.0.0.1"), "{message}");
    assert!(!message.to_lowercase().contains("refused"), "{message}");
}

/// Hole 7: a client that half-closes after its call is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_is_answered() {
    let h = start(Builder::default()).await;
    for latency in ["0", "300"] {
        let call =
            Call::new("ocr", "GeneralBasicOCR", "AKIDmain").header("X-Stub-Latency-Ms", latency);
        let req = h.request(&call);
        let mut s = TcpStream::connect(h.api()).await.unwrap();
        s.write_all(&raw_request(&req, &call.body)).await.unwrap();
        s.shutdown().await.unwrap();
        let (head, body) = read_answer(&mut s)
            .await
            .expect("answered after a half-close");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(code_of(&body), None, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(h.usage().len(), 2);
}

/// Hole 7: calls on keep-alive connections as the drain starts are answered (and told the
/// connection closes); a call still waiting at the drain timeout gets the vendor's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_answers_every_call_it_received() {
    let h = Harness::start(Builder {
        shutdown: "drain_timeout_seconds = 2\nidle_grace_ms = 1000\n".into(),
        ..Builder::default()
    })
    .await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    let stuck = Call::new("ocr", "IDCardOCR", "AKIDmain").header("X-Stub-Latency-Ms", "20000");
    let stuck_req = raw_request(&h.request(&stuck), &stuck.body);
    let api = h.api();
    let stuck_client = tokio::spawn(async move {
        let mut s = TcpStream::connect(api).await.unwrap();
        s.write_all(&stuck_req).await.unwrap();
        read_answer(&mut s).await
    });
    // Eight keep-alive clients, calling back to back until their connection closes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        // Signed now, valid for the whole test: every call identical.
        let raw = raw_request(&h.request(&call), &call.body);
        let stop = Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(api).await.unwrap();
            let (mut sent, mut answered, mut told_close) = (0, 0, false);
            loop {
                if s.write_all(&raw).await.is_err() {
                    break;
                }
                sent += 1;
                match read_answer(&mut s).await {
                    Some((head, _)) => {
                        answered += 1;
                        if head.contains("connection: close") {
                            told_close = true;
                            break;
                        }
                    }
                    None => break,
                }
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (sent, answered, told_close)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let stopping = tokio::spawn(h.stop());
    for c in clients {
        let (sent, answered, told_close) = c.await.unwrap();
        assert_eq!(sent, answered, "a call sent during the drain got no answer");
        assert!(
            told_close,
            "the last answer did not say the connection closes"
        );
    }
    let (_, body) = stuck_client
        .await
        .unwrap()
        .expect("the stuck call was answered");
    assert_eq!(code_of(&body).as_deref(), Some("ServiceUnavailable"));
    let _dir = stopping.await.unwrap();
}

/// The replay guard: a captured call is accepted (and billed) once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_call_is_refused_when_the_guard_is_on() {
    for (guard, expected_successes) in [(false, 3), (true, 1)] {
        let h = start(Builder {
            auth: format!("replay_guard = {guard}\n"),
            ..Builder::default()
        })
        .await;
        let call = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
        let raw = raw_request(&h.request(&call), &call.body);
        let mut codes = Vec::new();
        for _ in 0..3 {
            let (_, body) = exchange(&h, &raw).await.unwrap();
            codes.push(code_of(&body));
        }
        let ok = codes.iter().filter(|c| c.is_none()).count();
        assert_eq!(ok, expected_successes, "guard {guard}: {codes:?}");
        assert_eq!(h.usage().len(), expected_successes);
        if guard {
            assert!(
                codes[1..]
                    .iter()
                    .all(|c| c.as_deref() == Some("AuthFailure.SignatureFailure"))
            );
            assert_eq!(
                h.metric("tollgate_replay_guard_replays_total", &[]).await,
                2.0
            );
            // Another call is another signature. (Two calls alike to the byte, signed in the
            // same second, have the same signature: the guard takes the second for a replay.)
            let mut other = call.clone();
            other.body = br#"{"ImageUrl":"https://example.com/b.jpg"}"#.to_vec();
            assert!(h.call(&other).await.is_success());
        }
    }
}

/// The header-read timeout bounds the wait for each request head on a keep-alive connection
/// (an idle one is closed at it), and never cuts a call in progress, however long its
/// backend takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_timeout_closes_idle_connections_and_spares_calls() {
    let h = start(Builder {
        proxy_extra: "header_read_timeout_ms = 800\n".into(),
        ..Builder::default()
    })
    .await;
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    // Two calls on one connection, each slower than the header timeout, the second sent
    // after an idle pause shorter than it.
    for pause in [0, 500] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let call =
            Call::new("ocr", "GeneralBasicOCR", "AKIDmain").header("X-Stub-Latency-Ms", "1200");
        let req = h.request(&call);
        s.write_all(&raw_request(&req, &call.body)).await.unwrap();
        let (head, body) = read_answer(&mut s).await.expect("answered");
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(code_of(&body), None, "{}", String::from_utf8_lossy(&body));
    }
    // Then idle: closed at the timeout (not much before, not much after).
    let idle = Instant::now();
    let mut probe = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut probe))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    let after = idle.elapsed();
    assert_eq!(n, 0, "the gateway sent bytes instead of closing");
    assert!(
        after >= Duration::from_millis(600) && after < Duration::from_millis(2500),
        "closed after {after:?}"
    );
    assert_eq!(h.usage().len(), 2);
}
