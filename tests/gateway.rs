//! Black-box tests of the gateway: a stub backend and the gateway on loopback, signed calls.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Builder, Call, Harness, count_codes, eventually};
use tollgate_core::clock::FakeClock;
use tollgate_stub::settings::{StubOutcome, StubSettings};

fn frozen(at: &str) -> Builder {
    Builder {
        clock: Some(FakeClock::at(at)),
        ..Builder::default()
    }
}

async fn start(b: Builder) -> Arc<Harness> {
    Arc::new(Harness::start(b).await)
}

fn successes(replies: &[support::Reply]) -> usize {
    replies.iter().filter(|r| r.is_success()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_is_forwarded_with_identity_and_metered() {
    let h = start(Builder::default()).await;
    let r = h
        .call(&Call::new("ocr", "GeneralBasicOCR", "AKIDsubA").header("X-Tollgate-Uin", "999"))
        .await;
    assert!(r.is_success(), "{r:?}");
    assert_eq!(
        r.json["Response"]["TextDetections"][0]["DetectedText"],
        "stub"
    );
    assert!(r.headers.contains_key("x-tollgate-request-id"));

    // The backend saw the gateway's identity headers, not the one the client tried to set.
    let stats = h.stub_stats().await;
    let seen = &stats["recent"][0];
    assert_eq!(seen["uin"], "2");
    assert_eq!(seen["owner_uin"], "1");

    let usage = h.usage();
    assert_eq!(usage.len(), 1);
    let u = &usage[0];
    assert_eq!((u.owner_uin, u.uin, u.units), (1, 2, 1));
    assert_eq!(
        (&*u.service, &*u.action, &*u.billing_item),
        ("ocr", "GeneralBasicOCR", "ocr.general_basic")
    );
    assert_eq!(
        u.request_id,
        r.headers["x-tollgate-request-id"].to_str().unwrap()
    );
    assert_eq!(u.request_id, seen["request_id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_signed_call_works() {
    let h = start(Builder::default()).await;
    let mut c = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    c.method = "GET";
    c.query = "ImageUrl=https%3A%2F%2Fexample.com%2Fa.jpg&Types.0=3".into();
    let r = h.call(&c).await;
    assert!(r.is_success(), "{r:?}");
    assert_eq!(h.usage().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_failures_have_the_vendor_codes() {
    let h = start(Builder::default()).await;
    let base = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");

    let mut expired = base.clone();
    expired.timestamp_skew = -301;
    assert_eq!(
        h.call(&expired).await.error_code(),
        Some("AuthFailure.SignatureExpire")
    );
    let mut future = base.clone();
    future.timestamp_skew = 400;
    assert_eq!(
        h.call(&future).await.error_code(),
        Some("AuthFailure.SignatureExpire")
    );
    let mut within = base.clone();
    within.timestamp_skew = -299;
    assert!(h.call(&within).await.is_success());

    let mut unknown = base.clone();
    unknown.secret_id = "AKIDnobody".into();
    assert_eq!(
        h.call(&unknown).await.error_code(),
        Some("AuthFailure.SecretIdNotFound")
    );

    let mut wrong_key = base.clone();
    wrong_key.secret_key = "not-the-key-of-AKIDmain".into();
    assert_eq!(
        h.call(&wrong_key).await.error_code(),
        Some("AuthFailure.SignatureFailure")
    );

    // The signature covers the body: a body changed after signing fails.
    let mut req = h.request(&base);
    *req.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"{\"ImageUrl\":\"x\"}"));
    assert_eq!(
        h.send(req).await.error_code(),
        Some("AuthFailure.SignatureFailure")
    );

    // Malformed and missing Authorization headers.
    let mut req = h.request(&base);
    req.headers_mut().insert(
        "authorization",
        "TC3-HMAC-SHA256 Credential=broken".parse().unwrap(),
    );
    let r = h.send(req).await;
    assert_eq!(r.error_code(), Some("AuthFailure.InvalidAuthorization"));
    let mut req = h.request(&base);
    req.headers_mut().remove("authorization");
    assert_eq!(
        h.send(req).await.error_code(),
        Some("AuthFailure.InvalidAuthorization")
    );

    // Every refusal: HTTP 200, Content-Type exactly application/json, a RequestId.
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(
        r.json["Response"]["RequestId"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );

    // Nothing refused reached the backend or the meter.
    assert_eq!(
        h.stub_stats().await["actions"]["GeneralBasicOCR"]["calls"],
        1
    );
    assert_eq!(h.usage().len(), 1);
    assert_eq!(
        h.metric(
            "tollgate_auth_failures_total",
            &[("code", "AuthFailure.SignatureFailure")]
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classification_errors() {
    let h = start(Builder::default()).await;
    let unknown_service = Call::new("cvm", "DescribeInstances", "AKIDmain");
    assert_eq!(
        h.call(&unknown_service).await.error_code(),
        Some("InvalidAction")
    );
    let mut req = h.request(&Call::new("ocr", "GeneralBasicOCR", "AKIDmain"));
    req.headers_mut().remove("x-tc-action");
    assert_eq!(h.send(req).await.error_code(), Some("MissingParameter"));
    let mut req = h.request(&Call::new("ocr", "GeneralBasicOCR", "AKIDmain"));
    *req.method_mut() = http::Method::PUT;
    assert_eq!(h.send(req).await.error_code(), Some("UnsupportedProtocol"));
    let mut big = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    big.body = vec![b' '; (1 << 20) + 1];
    assert_eq!(
        h.call(&big).await.error_code(),
        Some("RequestSizeLimitExceeded")
    );
    assert!(
        h.stub_stats().await["actions"]
            .as_object()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_action_passes_through_on_the_default_quota() {
    let h = start(frozen("2026-05-01T10:00:00+08:00")).await;
    let replies = h
        .burst(&Call::new("ocr", "BrandNewOCR", "AKIDmain"), 25)
        .await;
    assert_eq!(
        count_codes(&replies)["success"],
        20,
        "{:?}",
        count_codes(&replies)
    );
    // It has a group of its own: a listed action is unaffected.
    assert!(
        h.call(&Call::new("ocr", "GeneralBasicOCR", "AKIDmain"))
            .await
            .is_success()
    );
    let usage = h.usage();
    assert_eq!(
        usage
            .iter()
            .filter(|u| &*u.billing_item == "ocr.unlisted")
            .count(),
        20
    );
    assert_eq!(
        h.metric(
            "tollgate_unlisted_action_calls_total",
            &[("service", "ocr")]
        )
        .await,
        25.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_state_gates_unbilled() {
    let h = start(Builder::default()).await;
    let cases = [
        (
            "AKIDarrears",
            "ocr",
            "GeneralBasicOCR",
            "ResourceUnavailable.InArrears",
        ),
        (
            "AKIDnotactivated",
            "ocr",
            "GeneralBasicOCR",
            "FailedOperation.UnOpenError",
        ),
        (
            "AKIDexhausted",
            "ocr",
            "GeneralBasicOCR",
            "ResourceUnavailable.ResourcePackageRunOut",
        ),
    ];
    for (id, service, action, code) in cases {
        let r = h.call(&Call::new(service, action, id)).await;
        assert_eq!(r.error_code(), Some(code), "{id}");
    }
    // The exhausted account may still call an interface whose packs are not exhausted.
    assert!(
        h.call(&Call::new("ocr", "IDCardOCR", "AKIDexhausted"))
            .await
            .is_success()
    );
    assert!(
        h.call(&Call::new("tiia", "DetectLabelPro", "AKIDnotactivated"))
            .await
            .is_success()
    );
    assert_eq!(h.usage().len(), 2);
}

/// A 20-QPS group offered 200 calls/s for 10 s admits at least 190 and at most 200 + the burst,
/// on the real clock, through HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_qps_under_tenfold_overload_for_ten_seconds() {
    let h = start(Builder::default()).await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDsubB");
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = tokio::task::JoinSet::new();
    let started = Instant::now();
    for _ in 0..2000 {
        ticker.tick().await;
        let h = Arc::clone(&h);
        let c = call.clone();
        set.spawn(async move { h.call(&c).await });
    }
    let mut replies = Vec::new();
    while let Some(r) = set.join_next().await {
        replies.push(r.unwrap());
    }
    let elapsed = started.elapsed();
    let codes = count_codes(&replies);
    let admitted = codes.get("success").copied().unwrap_or(0);
    assert_eq!(
        admitted + codes.get("RequestLimitExceeded").copied().unwrap_or(0),
        2000,
        "{codes:?}"
    );
    // The offered window may stretch a little on a loaded machine; the bound scales with it.
    let window = elapsed.as_secs_f64().max(10.0);
    let upper = (20.0 * window).ceil() as usize + 20;
    assert!(
        admitted >= 190 && admitted <= upper,
        "admitted {admitted} in {elapsed:?}: {codes:?}"
    );
    // Over-limit calls were never billed.
    assert_eq!(h.usage().len(), admitted);
    let limited = replies
        .iter()
        .find(|r| r.error_code() == Some("RequestLimitExceeded"))
        .unwrap();
    assert_eq!(
        limited.headers["ratelimit-policy"],
        "\"ocr.GeneralBasicOCR\";q=20;w=1"
    );
    assert!(limited.headers.contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmentation_interfaces_share_one_twenty() {
    let h = start(frozen("2026-05-01T10:00:00+08:00")).await;
    let (seg, custom) = (
        Call::new("bda", "SegmentPortraitPic", "AKIDmain"),
        Call::new("bda", "SegmentCustomizedPortraitPic", "AKIDmain"),
    );
    let (a, b) = tokio::join!(h.burst(&seg, 15), h.burst(&custom, 15));
    assert_eq!(successes(&a) + successes(&b), 20);
    let usage = h.usage();
    assert_eq!(usage.len(), 20);
    assert!(usage.iter().all(|u| &*u.billing_item == "bda.segment"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_accounts_each_get_their_own_twenty() {
    let h = start(frozen("2026-05-01T10:00:00+08:00")).await;
    let (sub_a, sub_b) = (
        Call::new("ocr", "GeneralBasicOCR", "AKIDsubA"),
        Call::new("ocr", "GeneralBasicOCR", "AKIDsubB"),
    );
    let (a, b) = tokio::join!(h.burst(&sub_a, 25), h.burst(&sub_b, 25));
    assert_eq!((successes(&a), successes(&b)), (20, 20));
    // Both bill the owner.
    assert!(h.usage().iter().all(|u| u.owner_uin == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlay_raises_the_limit_on_the_days_it_covers_only() {
    let clock = FakeClock::at("2026-03-03T12:00:00+08:00");
    let h = start(Builder {
        clock: Some(clock.clone()),
        ..Builder::default()
    })
    .await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDoverlay");
    assert_eq!(
        successes(&h.burst(&call, 130).await),
        100,
        "20 default + 80 overlay"
    );
    // The pack ends at 24:00 Beijing time on Mar 4.
    clock.set_wall("2026-03-04T23:59:00+08:00");
    assert_eq!(successes(&h.burst(&call, 130).await), 100);
    clock.set_wall("2026-03-05T00:00:00+08:00");
    assert_eq!(
        successes(&h.burst(&call, 130).await),
        20,
        "the day after: the default only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qps_billing_mode_admits_exactly_the_purchased_qps() {
    let h = start(frozen("2026-05-01T10:00:00+08:00")).await;
    let replies = h
        .burst(&Call::new("bda", "SegmentPortraitPic", "AKIDqpsmode"), 45)
        .await;
    assert_eq!(successes(&replies), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuse_face_ultra_never_has_more_than_ten_in_flight() {
    let h = start(Builder::default()).await;
    let call =
        Call::new("facefusion", "FuseFaceUltra", "AKIDmain").header("X-Stub-Latency-Ms", "400");
    let replies = h.burst(&call, 100).await;
    let codes = count_codes(&replies);
    let admitted = codes.get("success").copied().unwrap_or(0);
    assert!(admitted >= 10, "{codes:?}");
    assert_eq!(
        admitted + codes.get("RequestLimitExceeded").copied().unwrap_or(0),
        100,
        "{codes:?}"
    );
    let stats = h.stub_stats().await;
    let max = stats["actions"]["FuseFaceUltra"]["max_in_flight"]
        .as_u64()
        .unwrap();
    assert!(max <= 10, "the backend saw {max} in flight");
    assert_eq!(max, 10);
    assert_eq!(
        h.metric(
            "tollgate_concurrency_in_flight",
            &[("group", "facefusion.fuse_ultra")]
        )
        .await,
        0.0
    );
    // Once they are done, ten more fit.
    assert_eq!(successes(&h.burst(&call, 10).await), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_response_frees_its_permit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start(Builder::default()).await;
    let slow = Call::new("facefusion", "FuseFaceUltra", "AKIDmain")
        .header("X-Stub-Image-Bytes", "1048576")
        .header("X-Stub-Body-Delay-Ms", "30000");
    // Ten clients start reading a slow answer, then hang up.
    let mut streams = Vec::new();
    for _ in 0..10 {
        let req = h.request(&slow);
        let mut raw = String::from("POST / HTTP/1.1\r\n");
        for (k, v) in req.headers() {
            raw.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
        }
        let body = br#"{"ImageUrl":"https://example.com/a.jpg"}"#;
        raw.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        let mut s = tokio::net::TcpStream::connect(h.api()).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut first = [0u8; 4096];
        let n = s.read(&mut first).await.unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
        streams.push(s);
    }
    let quick = Call::new("facefusion", "FuseFaceUltra", "AKIDmain");
    assert_eq!(
        h.call(&quick).await.error_code(),
        Some("RequestLimitExceeded")
    );
    drop(streams);
    let freed = eventually(Duration::from_secs(5), || async {
        h.metric(
            "tollgate_concurrency_in_flight",
            &[("group", "facefusion.fuse_ultra")],
        )
        .await
            == 0.0
    })
    .await;
    assert!(freed, "permits were not freed");
    assert_eq!(successes(&h.burst(&quick, 10).await), 10);
    // The abandoned calls were not billed; they were counted.
    assert_eq!(h.usage().len(), 10);
    assert_eq!(
        h.metric(
            "tollgate_calls_total",
            &[("group", "facefusion.fuse_ultra"), ("result", "abandoned")]
        )
        .await,
        10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_for_success_billable_and_unbillable_errors_and_mixed_invoices() {
    let h = start(Builder::default()).await;
    let ocr = |action: &str| Call::new("ocr", action, "AKIDmain");
    assert!(h.call(&ocr("BusinessCardOCR")).await.is_success());
    let billable = h
        .call(&ocr("BusinessCardOCR").header(
            "X-Stub-Outcome",
            "error:FailedOperation.ImageNoBusinessCard",
        ))
        .await;
    assert_eq!(
        billable.error_code(),
        Some("FailedOperation.ImageNoBusinessCard")
    );
    let unbillable = h
        .call(&ocr("BusinessCardOCR").header("X-Stub-Outcome", "error:FailedOperation.ImageBlur"))
        .await;
    assert_eq!(unbillable.error_code(), Some("FailedOperation.ImageBlur"));
    // Seed example 1: a VAT invoice, a machine-printed invoice and a train ticket.
    let mixed = h
        .call(&ocr("MixedInvoiceOCR").header(
            "X-Stub-Invoices",
            "3:OK,8:OK,2:OK,12:FailedOperation.UnKnowError",
        ))
        .await;
    assert!(mixed.is_success());
    // Seed example 2 over one call: 5 VAT + 2 vehicle-purchase invoices, 9 bus tickets.
    let many: Vec<String> = std::iter::repeat_n("3:OK", 5)
        .chain(std::iter::repeat_n("12:OK", 2))
        .chain(std::iter::repeat_n("9:OK", 9))
        .map(String::from)
        .collect();
    assert!(
        h.call(&ocr("MixedInvoiceOCR").header("X-Stub-Invoices", &many.join(",")))
            .await
            .is_success()
    );
    // Free beta: answered, never billed.
    assert!(
        h.call(&Call::new("tiia", "EnhanceImage", "AKIDmain"))
            .await
            .is_success()
    );
    // A backend answering HTTP 502 is passed through and not billed.
    let bad = h
        .call(&ocr("GeneralBasicOCR").header("X-Stub-Status", "502"))
        .await;
    assert_eq!(bad.status, 502);

    let mut usage: Vec<(String, String, u32)> = h
        .usage()
        .iter()
        .map(|u| (u.action.to_string(), u.billing_item.to_string(), u.units))
        .collect();
    usage.sort();
    assert_eq!(
        usage,
        vec![
            ("BusinessCardOCR".into(), "ocr.business_card".into(), 1),
            ("BusinessCardOCR".into(), "ocr.business_card".into(), 1),
            ("MixedInvoiceOCR".into(), "ocr.invoice_big".into(), 1),
            ("MixedInvoiceOCR".into(), "ocr.invoice_big".into(), 7),
            ("MixedInvoiceOCR".into(), "ocr.invoice_small".into(), 2),
            ("MixedInvoiceOCR".into(), "ocr.invoice_small".into(), 9),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_stream_through_and_are_billed() {
    let h = start(Builder::default()).await;
    let r = h
        .call(
            &Call::new("bda", "SegmentPortraitPic", "AKIDmain")
                .header("X-Stub-Image-Bytes", &(8 << 20).to_string()),
        )
        .await;
    assert!(r.is_success());
    assert_eq!(
        r.json["Response"]["ResultImage"].as_str().unwrap().len(),
        8 << 20
    );
    assert_eq!(h.usage().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_slow_backend_gets_a_vendor_error_and_no_bill() {
    let dead = start(Builder {
        dead_upstream: true,
        ..Builder::default()
    })
    .await;
    let r = dead
        .call(&Call::new("ocr", "GeneralBasicOCR", "AKIDmain"))
        .await;
    assert_eq!(r.error_code(), Some("ServiceUnavailable"));
    assert_eq!(r.status, 200);
    assert!(dead.usage().is_empty());

    let slow = start(Builder {
        response_timeout_ms: 200,
        ..Builder::default()
    })
    .await;
    let r = slow
        .call(&Call::new("ocr", "GeneralBasicOCR", "AKIDmain").header("X-Stub-Latency-Ms", "1500"))
        .await;
    assert_eq!(r.error_code(), Some("InternalError"));
    assert!(slow.usage().is_empty());
    assert_eq!(
        slow.metric("tollgate_calls_total", &[("result", "upstream_error")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_reload_applies_within_a_second_and_keeps_other_buckets() {
    let clock = FakeClock::at("2026-05-01T10:00:00+08:00");
    let h = start(Builder {
        clock: Some(clock.clone()),
        ..Builder::default()
    })
    .await;
    // Exhaust sub-a's GeneralBasicOCR bucket.
    let a = Call::new("ocr", "GeneralBasicOCR", "AKIDsubA");
    assert_eq!(successes(&h.burst(&a, 25).await), 20);
    // Put sub-b's segmentation group in QPS mode, 40 purchased.
    let text = insert_after_account(
        support::ENTITLEMENTS,
        3,
        "[[account.mode]]\ngroup = \"bda.segment\"\nmode = \"qps\"\nquantity = 40\n",
    );
    let written = Instant::now();
    h.replace_file("entitlements.toml", &text);
    let applied = eventually(Duration::from_secs(1), || async {
        let s = h.reload_status().await;
        s["generation"] == 2
    })
    .await;
    assert!(
        applied,
        "not applied within a second of {written:?}: {}",
        h.reload_status().await
    );
    let b = Call::new("bda", "SegmentPortraitPic", "AKIDsubB");
    assert_eq!(successes(&h.burst(&b, 50).await), 40);
    // Sub-a's bucket was not reset by the reload: still empty at the same instant.
    assert_eq!(h.call(&a).await.error_code(), Some("RequestLimitExceeded"));
    assert_eq!(
        h.metric("tollgate_config_reloads_total", &[("result", "ok")])
            .await,
        1.0
    );
}

/// Inserts `extra` at the end of the `n`-th `[[account]]` block (1-based uin order in the file).
fn insert_after_account(text: &str, uin: u64, extra: &str) -> String {
    let marker = format!("uin = {uin}\n");
    let start = text.find(&marker).expect("account present");
    let end = text[start..]
        .find("\n[[account]]")
        .map_or(text.len(), |i| start + i + 1);
    format!("{}{}\n{}", &text[..end], extra, &text[end..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_the_old_config_and_says_why() {
    let h = start(frozen("2026-05-01T10:00:00+08:00")).await;
    // 51 QPS of class C is over the cap of 25.
    let bad = insert_after_account(
        support::ENTITLEMENTS,
        3,
        "[[account.overlay]]\ninterface = \"ocr.VatInvoiceOCR\"\nqps = 26\nstart = 2026-05-02\nend = 2026-05-03\npurchased_at = 2026-05-01T09:00:00+08:00\n",
    );
    h.replace_file("entitlements.toml", &bad);
    let refused = eventually(Duration::from_secs(5), || async {
        let s = h.reload_status().await;
        s["attempts"] == 1
    })
    .await;
    assert!(refused);
    let status = h.reload_status().await;
    let why = status["last_error"].as_str().unwrap();
    assert!(why.contains("entitlements.toml: account[2] (uin 3).overlay[0].qps: class C cap of 25 QPS per day is exceeded on 2026-05-02"), "{why}");
    assert_eq!(status["generation"], 1);
    assert_eq!(
        h.metric("tollgate_config_last_reload_success", &[]).await,
        0.0
    );
    assert_eq!(
        h.metric("tollgate_config_reloads_total", &[("result", "error")])
            .await,
        1.0
    );
    // The old config is still in force: sub-b still calls, on the old limits.
    assert_eq!(
        successes(
            &h.burst(&Call::new("ocr", "GeneralBasicOCR", "AKIDsubB"), 25)
                .await
        ),
        20
    );

    // Mended, it applies; then a syntax error in another file is refused, naming the line.
    h.replace_file("entitlements.toml", support::ENTITLEMENTS);
    assert!(
        eventually(Duration::from_secs(5), || async {
            let s = h.reload_status().await;
            s["generation"] == 2
        })
        .await
    );
    h.replace_file("credentials.toml", "[[credential]\nsecret_id = 1\n");
    assert!(
        eventually(Duration::from_secs(5), || async {
            let s = h.reload_status().await;
            s["attempts"] == 3
        })
        .await
    );
    let why = h.reload_status().await["last_error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        why.contains("credentials.toml: (syntax)") && why.contains("line 1"),
        "{why}"
    );
    assert!(
        h.call(&Call::new("ocr", "IDCardOCR", "AKIDsubB"))
            .await
            .is_success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_metrics() {
    let h = start(Builder::default()).await;
    assert!(
        h.call(&Call::new("ocr", "GeneralBasicOCR", "AKIDmain"))
            .await
            .is_success()
    );
    let admin = h.running.admin_addr;
    assert_eq!(h.get_text(admin, "/healthz").await.0, 200);
    assert_eq!(h.get_text(admin, "/readyz").await.0, 200);
    let text = h.metrics().await;
    for family in [
        "tollgate_admission_decisions_total",
        "tollgate_calls_total",
        "tollgate_admission_decision_seconds_bucket",
        "tollgate_upstream_response_seconds_bucket",
        "tollgate_billable_units_total",
        "tollgate_config_generation",
        "tollgate_requests_in_flight",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
    assert_eq!(
        support::metric_value(
            &text,
            "tollgate_admission_decisions_total",
            &[("group", "ocr.GeneralBasicOCR"), ("decision", "admitted")]
        ),
        1.0
    );
    assert_eq!(
        support::metric_value(
            &text,
            "tollgate_billable_units_total",
            &[("billing_item", "ocr.general_basic")]
        ),
        1.0
    );
    // No account id is a label.
    assert!(!text.contains("uin="));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_calls() {
    let h = Harness::start(Builder::default()).await;
    let req = h.request(
        &Call::new("ocr", "GeneralBasicOCR", "AKIDmain").header("X-Stub-Latency-Ms", "700"),
    );
    let caller = tokio::spawn(support::send_alone(req));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let usage_path = h.usage_path.clone();
    let stopping = tokio::spawn(h.stop());
    let reply = caller.await.unwrap();
    assert!(reply.is_success(), "{reply:?}");
    let _dir = stopping.await.unwrap();
    assert_eq!(
        tollgate_gateway::metering::file::FileSink::read_all(&usage_path)
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stub_mix_is_passed_through() {
    let stub = StubSettings {
        outcomes: vec![
            (3, StubOutcome::Success),
            (
                1,
                StubOutcome::Error("FailedOperation.EmptyImageError".into()),
            ),
        ],
        ..StubSettings::default()
    };
    let h = start(Builder {
        stub,
        ..Builder::default()
    })
    .await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        codes.push(
            h.call(&Call::new("ocr", "IDCardOCR", "AKIDmain"))
                .await
                .error_code()
                .map(String::from),
        );
    }
    assert_eq!(codes.iter().filter(|c| c.is_some()).count(), 2);
    // EmptyImageError is billable for OCR: all eight calls are billed.
    assert_eq!(h.usage().len(), 8);
}

/// Four API workers, each with its own listener and event loop, and one quota: calls on many
/// connections, spread by the kernel over the workers, still admit the group's 20 once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_is_one_quota_across_api_workers() {
    let h = start(Builder {
        workers: 4,
        ..frozen("2026-05-01T10:00:00+08:00")
    })
    .await;
    // Separate clients: each call on a connection of its own.
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDsubA");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let req = h.request(&call);
        set.spawn(support::send_alone(req));
    }
    let mut replies = Vec::new();
    while let Some(r) = set.join_next().await {
        replies.push(r.unwrap());
    }
    let codes = count_codes(&replies);
    assert_eq!(codes.get("success"), Some(&20), "{codes:?}");
    assert_eq!(codes.get("RequestLimitExceeded"), Some(&44), "{codes:?}");
    assert_eq!(h.usage().len(), 20);
    // The connections really were spread over more than one worker.
    let metrics = h.metrics().await;
    let busy = (0..4)
        .filter(|w| {
            support::metric_value(
                &metrics,
                "tollgate_api_connections_total",
                &[("worker", &w.to_string())],
            ) > 0.0
        })
        .count();
    assert!(busy >= 2, "64 connections landed on {busy} of 4 workers");
}

/// A sink that takes records now and fails to write them later (as the spool's leader can):
/// the call is still answered, and the records are counted as failures, not only logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_the_sink_fails_to_write_later_is_counted() {
    use tollgate_gateway::metering::{SinkError, Ticket, UsageRecord, UsageSink};
    struct FailsLater;
    impl UsageSink for FailsLater {
        fn submit(&self, _records: &[UsageRecord]) -> Ticket {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let _ = tx.send(Err(SinkError("disk full".into())));
            Ticket::Pending(rx)
        }
    }
    let h = start(Builder {
        sink: Some(Arc::new(FailsLater)),
        ..Builder::default()
    })
    .await;
    let r = h
        .call(&Call::new("ocr", "GeneralBasicOCR", "AKIDmain"))
        .await;
    assert!(r.is_success(), "{r:?}");
    assert_eq!(
        h.metric("tollgate_usage_record_failures_total", &[]).await,
        1.0
    );
}

/// Offers `per_second` calls for `seconds`, open loop; returns the replies.
async fn offered(
    h: &Arc<Harness>,
    call: &Call,
    per_second: u64,
    seconds: u64,
) -> Vec<support::Reply> {
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / per_second));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..per_second * seconds {
        ticker.tick().await;
        let h = Arc::clone(h);
        let c = call.clone();
        set.spawn(async move { h.call(&c).await });
    }
    let mut replies = Vec::new();
    while let Some(r) = set.join_next().await {
        replies.push(r.unwrap());
    }
    replies
}

/// Shadow mode (`[shadow]` in entitlements.toml): a 20-QPS group offered 100 calls/s admits
/// all of them and counts ~80/s as shadow refusals; turned off by a reload, it refuses as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_counts_refusals_and_admits() {
    let shadowed = format!(
        "{}\n[shadow]\ngroups = [\"ocr.GeneralBasicOCR\"]\n",
        support::ENTITLEMENTS
    );
    let h = start(Builder {
        entitlements: shadowed,
        ..Builder::default()
    })
    .await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDsubB");
    let labels = [
        ("group", "ocr.GeneralBasicOCR"),
        ("decision", "shadow_over_limit"),
    ];
    let replies = offered(&h, &call, 100, 3).await;
    assert_eq!(successes(&replies), 300, "{:?}", count_codes(&replies));
    let shadow = h
        .metric("tollgate_admission_decisions_total", &labels)
        .await;
    // 300 offered, 20 of burst + 20/s for 3 s within the limit.
    assert!(
        (200.0..=250.0).contains(&shadow),
        "{shadow} shadow refusals"
    );
    assert_eq!(h.usage().len(), 300, "shadow-admitted calls are metered");

    // Off again (a reload): refused as before.
    h.replace_file("entitlements.toml", support::ENTITLEMENTS);
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.reload_status().await["generation"] == 2
        })
        .await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replies = offered(&h, &call, 100, 2).await;
    let ok = successes(&replies);
    assert!((20..=70).contains(&ok), "{ok} admitted with shadow off");
    assert_eq!(
        h.metric("tollgate_admission_decisions_total", &labels)
            .await,
        shadow,
        "no shadow refusal once off"
    );
}
