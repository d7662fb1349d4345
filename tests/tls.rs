//! HTTPS and HTTP/2 at the edge (issue 16): TLS termination with rustls, certificates
//! reloaded from disk, HTTP/2 over ALPN `h2` and with prior knowledge (`h2c`), driven by
//! `curl` (a client that is not ours) and by hyper's HTTP/2 client for one connection
//! carrying many streams.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use support::{Builder, Call, Harness};

/// A self-signed certificate for `127.0.0.1` and `localhost`, as PEM files in `dir`; returns
/// (cert, key) paths and the certificate's DER.
fn certificate(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let c = rcgen::generate_simple_self_signed(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        format!("{name}.tollgate.test"),
    ])
    .unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (cert, key, c.cert.der().to_vec())
}

fn tls_section(cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nreload_interval_ms = 200\n",
        cert.display(),
        key.display()
    )
}

/// What curl saw of one call: the HTTP version it spoke and the answer.
struct Curled {
    version: String,
    json: Value,
}

/// Sends `req` (signed for `addr`) with curl, over `scheme`, with `flags`.
fn curl(req: &Request<Full<Bytes>>, body: &[u8], scheme: &str, flags: &[&str]) -> Curled {
    let host = req.headers()["host"].to_str().unwrap().to_owned();
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-X", req.method().as_str()])
        .args(flags)
        .arg("-w")
        .arg("\n%{http_version}");
    for (k, v) in req.headers() {
        cmd.arg("-H")
            .arg(format!("{}: {}", k.as_str(), v.to_str().unwrap()));
    }
    if !body.is_empty() {
        cmd.arg("--data-binary")
            .arg(String::from_utf8_lossy(body).into_owned());
    }
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    cmd.arg(format!("{scheme}://{host}/{query}"));
    let out = cmd.output().expect("curl runs");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, version) = text.rsplit_once('\n').unwrap();
    Curled {
        version: version.to_owned(),
        json: serde_json::from_str(json).unwrap_or(Value::Null),
    }
}

fn ocr(secret_id: &str) -> Call {
    Call::new("ocr", "GeneralBasicOCR", secret_id)
}

fn code(v: &Value) -> Option<&str> {
    v["Response"]["Error"]["Code"].as_str()
}

async fn tls_harness(dir: &Path) -> (Harness, PathBuf) {
    let (cert, key, _) = certificate(dir, "first");
    let h = Harness::start(Builder {
        listen_extra: "api_plain = \"127.0.0.1:0\"\n".into(),
        extra: tls_section(&cert, &key),
        ..Builder::default()
    })
    .await;
    (h, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_http2_calls_are_admitted_limited_and_billed_like_http1_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (h, cert) = tls_harness(dir.path()).await;
    let tls = h.api();
    let plain = h.running.api_plain_addr.expect("listen.api_plain");
    let ca = cert.to_str().unwrap().to_owned();
    let body = br#"{"ImageUrl":"https://example.com/a.jpg"}"#;

    // HTTPS, HTTP/1.1 and HTTP/2 by ALPN; plain HTTP/1.1 and HTTP/2 with prior knowledge.
    // (`--http2` on a plain URL asks for an h2c upgrade, which is not offered: HTTP/1.1.)
    let cases: [(SocketAddr, &str, Vec<&str>, &str); 5] = [
        (tls, "https", vec!["--cacert", &ca, "--http1.1"], "1.1"),
        (tls, "https", vec!["--cacert", &ca, "--http2"], "2"),
        (plain, "http", vec!["--http1.1"], "1.1"),
        (plain, "http", vec!["--http2-prior-knowledge"], "2"),
        (plain, "http", vec!["--http2"], "1.1"),
    ];
    for (addr, scheme, flags, version) in &cases {
        let req = h.request_for(*addr, &ocr("AKIDmain"));
        let got = curl(&req, body, scheme, flags);
        assert_eq!(&got.version, version, "{scheme} {flags:?}");
        assert_eq!(code(&got.json), None, "{scheme} {flags:?}: {}", got.json);
        assert_eq!(
            got.json["Response"]["TextDetections"][0]["DetectedText"],
            "stub"
        );
    }
    // The backend was told how each client came.
    let stats = h.stub_stats().await;
    let protos: Vec<&str> = stats["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["x_forwarded_proto"].as_str().unwrap())
        .collect();
    assert_eq!(protos, ["https", "https", "http", "http", "http"]);

    // Limited in the vendor's shape over HTTP/2 as over HTTP/1.1: a 20 QPS bucket. The 30
    // calls go at once (one curl each, in parallel): one after the other, on a machine busy
    // enough that each curl takes 20 ms, the bucket would refill as fast as it is drawn.
    let reqs: Vec<_> = (0..30)
        .map(|_| h.request_for(tls, &ocr("AKIDsubB")))
        .collect();
    let answers: Vec<Curled> = std::thread::scope(|scope| {
        let running: Vec<_> = reqs
            .iter()
            .map(|req| {
                let ca = ca.as_str();
                scope.spawn(move || curl(req, body, "https", &["--cacert", ca, "--http2"]))
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut codes = Vec::new();
    for got in &answers {
        assert_eq!(got.version, "2");
        codes.push(code(&got.json).unwrap_or("ok").to_owned());
        if let Some("RequestLimitExceeded") = code(&got.json) {
            assert!(got.json["Response"]["RequestId"].is_string());
            assert!(got.json["Response"]["Error"]["Message"].is_string());
        }
    }
    assert!(
        codes.iter().any(|c| c == "RequestLimitExceeded"),
        "{codes:?}"
    );
    let admitted = codes.iter().filter(|c| *c == "ok").count();
    assert!((20..30).contains(&admitted), "{codes:?}");

    // Billed exactly as HTTP/1.1 calls: one record per admitted call, none for the refused.
    let usage = h.usage();
    assert_eq!(usage.len(), 5 + admitted, "{usage:?}");
    assert!(
        usage
            .iter()
            .all(|u| &*u.billing_item == "ocr.general_basic")
    );

    // An HTTP/1.1-only client on the TLS port still gets HTTP/1.1 (ALPN is offered, not forced).
    let req = h.request_for(tls, &ocr("AKIDmain"));
    let got = curl(
        &req,
        body,
        "https",
        &["--cacert", &ca, "--http1.1", "--no-alpn"],
    );
    assert_eq!(got.version, "1.1");
    assert_eq!(code(&got.json), None);
    h.stop().await;
}

/// 100 concurrent FuseFaceUltra streams on one HTTP/2 connection: the group's concurrency
/// limit (10) counts calls, not connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_streams_on_one_connection_never_have_more_than_ten_in_flight() {
    let h = Arc::new(Harness::start(Builder::default()).await);
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let before = h.metric("tollgate_api_connections_total", &[]).await;
    let mut call =
        Call::new("facefusion", "FuseFaceUltra", "AKIDsubA").header("X-Stub-Latency-Ms", "400");
    call.body = br#"{"RspImgType":"url","MergeInfos":[]}"#.to_vec();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let req = h.request(&call);
        let client = client.clone();
        set.spawn(async move {
            let resp = client.request(req).await.expect("answered");
            assert_eq!(resp.version(), http::Version::HTTP_2);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap();
            code(&v).unwrap_or("ok").to_owned()
        });
    }
    let mut codes = std::collections::BTreeMap::new();
    while let Some(c) = set.join_next().await {
        *codes.entry(c.unwrap()).or_insert(0) += 1;
    }
    let ok = codes.get("ok").copied().unwrap_or(0);
    assert!((10..=100).contains(&ok), "{codes:?}");
    assert_eq!(
        ok + codes.get("RequestLimitExceeded").copied().unwrap_or(0),
        100,
        "{codes:?}"
    );
    let stats = h.stub_stats().await;
    let peak = stats["actions"]["FuseFaceUltra"]["max_in_flight"]
        .as_u64()
        .unwrap();
    assert!((8..=10).contains(&peak), "peak in flight {peak}");
    // One connection carried them all.
    let after = h.metric("tollgate_api_connections_total", &[]).await;
    assert_eq!(after - before, 1.0);
    assert_eq!(h.usage().len(), ok);
}

type ClientTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS handshake for `127.0.0.1` over `tcp` by a rustls client trusting `roots`, presenting
/// `identity` (a certificate and its PKCS#8 key) when given.
async fn tls_client(
    tcp: tokio::net::TcpStream,
    roots: &[Vec<u8>],
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> std::io::Result<ClientTls> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store
            .add(rustls::pki_types::CertificateDer::from(r.clone()))
            .unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![rustls::pki_types::CertificateDer::from(cert)],
                rustls::pki_types::PrivateKeyDer::try_from(key).unwrap(),
            )
            .unwrap(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            tcp,
        )
        .await
}

/// A TLS connection to `addr` trusting `roots`, and the certificate the server presented.
async fn connect(addr: SocketAddr, roots: &[Vec<u8>]) -> (ClientTls, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tls_client(tcp, roots, None).await.unwrap();
    let presented = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (stream, presented)
}

/// One HTTP/1.1 call on an open TLS connection; the answer's JSON.
async fn call_on(stream: &mut ClientTls, h: &Harness) -> Value {
    use tokio::io::AsyncWriteExt;
    let body = br#"{"ImageUrl":"https://example.com/a.jpg"}"#;
    let req = h.request(&ocr("AKIDmain"));
    stream
        .write_all(&support::raw_request(&req, body))
        .await
        .unwrap();
    let (_, answer) = support::read_answer_from(stream).await.expect("an answer");
    serde_json::from_slice(&answer).unwrap()
}

/// A certificate rotated the way a Kubernetes Secret volume does it (the `..data` symlink
/// swapped to a new directory) serves new connections within a second; a connection opened
/// before keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_serves_new_connections_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..2026_12_01_v1");
    let v2 = dir.path().join("..2026_12_01_v2");
    std::fs::create_dir(&v1).unwrap();
    std::fs::create_dir(&v2).unwrap();
    let (c1, k1, der1) = certificate(&v1, "tls");
    let (c2, k2, der2) = certificate(&v2, "tls");
    std::fs::rename(&c2, v2.join("tls.crt")).unwrap();
    std::fs::rename(&k2, v2.join("tls.key")).unwrap();
    std::fs::rename(&c1, v1.join("tls.crt")).unwrap();
    std::fs::rename(&k1, v1.join("tls.key")).unwrap();
    let data = dir.path().join("..data");
    std::os::unix::fs::symlink(&v1, &data).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", dir.path().join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", dir.path().join("tls.key")).unwrap();
    let h = Harness::start(Builder {
        extra: tls_section(&dir.path().join("tls.crt"), &dir.path().join("tls.key")),
        ..Builder::default()
    })
    .await;
    let roots = [der1.clone(), der2.clone()];
    let (mut old, presented) = connect(h.api(), &roots).await;
    assert_eq!(presented, der1);
    assert_eq!(code(&call_on(&mut old, &h).await), None);

    // The swap: a new symlink renamed over `..data`, atomically.
    let tmp = dir.path().join("..data_tmp");
    std::os::unix::fs::symlink(&v2, &tmp).unwrap();
    std::fs::rename(&tmp, &data).unwrap();
    let swapped = Instant::now();
    let took = loop {
        let (_, presented) = connect(h.api(), &roots).await;
        if presented == der2 {
            break swapped.elapsed();
        }
        assert!(
            swapped.elapsed() < Duration::from_secs(5),
            "the new certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("new certificate served {took:?} after the swap");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(
        h.metric("tollgate_tls_reloads_total", &[("result", "ok")])
            .await,
        1.0
    );
    // The connection opened before the swap goes on with its certificate.
    assert_eq!(code(&call_on(&mut old, &h).await), None);

    // A broken pair (a key that is not the certificate's) is refused; the one in force stays.
    let (_, wrong_key, _) = certificate(dir.path(), "other");
    std::fs::copy(&wrong_key, v2.join("tls.key")).unwrap();
    assert!(
        support::eventually(Duration::from_secs(5), || async {
            h.metric("tollgate_tls_reloads_total", &[("result", "error")])
                .await
                >= 1.0
        })
        .await
    );
    let (_, presented) = connect(h.api(), &roots).await;
    assert_eq!(presented, der2);
    h.stop().await;
}

/// A bad certificate file stops the start, naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_broken_certificate_is_a_startup_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("missing.crt");
    let (_, key, _) = certificate(dir.path(), "k");
    let text = format!(
        "[listen]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[upstream.default]\nurl = \"http://127.0.0.1:9\"\n[metering]\nsink = \"off\"\n{}",
        tls_section(&cert, &key)
    );
    let path = dir.path().join("tollgate.toml");
    std::fs::write(&path, text).unwrap();
    for (f, t) in [
        ("catalog.toml", tollgate_core::config::EMBEDDED_CATALOG),
        (
            "entitlements.toml",
            tollgate_core::config::EMBEDDED_ENTITLEMENTS,
        ),
        (
            "credentials.toml",
            tollgate_core::config::EMBEDDED_CREDENTIALS,
        ),
    ] {
        std::fs::write(dir.path().join(f), t).unwrap();
    }
    let settings =
        tollgate_gateway::settings::load(&tollgate_core::config::Source::File(path.clone()))
            .unwrap();
    let err = tollgate_gateway::app::start(settings, tollgate_gateway::app::Options::default())
        .await
        .err()
        .expect("no start without the certificate")
        .to_string();
    assert!(err.contains("missing.crt"), "{err}");
    std::fs::write(&cert, "not a certificate").unwrap();
    let settings =
        tollgate_gateway::settings::load(&tollgate_core::config::Source::File(path.clone()))
            .unwrap();
    let err = tollgate_gateway::app::start(settings, tollgate_gateway::app::Options::default())
        .await
        .err()
        .expect("no start with a broken certificate")
        .to_string();
    assert!(err.contains("missing.crt"), "{err}");
}

/// Behind a TCP balancer that speaks PROXY v2: the client's address reaches the backend as
/// `X-Forwarded-For`, over plain HTTP and over TLS; a connection without the header is closed
/// unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_carries_the_clients_address_and_is_required() {
    use tokio::io::AsyncWriteExt;
    use tollgate_gateway::proxy::proxy_protocol::encode;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, der) = certificate(dir.path(), "pp");
    let h = Harness::start(Builder {
        listen_extra: "api_plain = \"127.0.0.1:0\"\napi_proxy_protocol = true\napi_plain_proxy_protocol = true\n".into(),
        extra: tls_section(&cert, &key),
        ..Builder::default()
    })
    .await;
    let plain = h.running.api_plain_addr.unwrap();
    let body = br#"{"ImageUrl":"https://example.com/a.jpg"}"#;
    let client: SocketAddr = "203.0.113.7:51234".parse().unwrap();

    // Plain HTTP/1.1 behind the header.
    let mut s = tokio::net::TcpStream::connect(plain).await.unwrap();
    s.write_all(&encode(client, plain)).await.unwrap();
    let req = h.request_for(plain, &ocr("AKIDmain"));
    s.write_all(&support::raw_request(&req, body))
        .await
        .unwrap();
    let (_, answer) = support::read_answer(&mut s).await.expect("answered");
    let v: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(code(&v), None, "{v}");

    // TLS behind the header (an IPv6 client this time).
    let v6: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let mut tcp = tokio::net::TcpStream::connect(h.api()).await.unwrap();
    tcp.write_all(&encode(v6, h.api())).await.unwrap();
    let mut tls = tls_client(tcp, &[der], None).await.unwrap();
    let v = call_on(&mut tls, &h).await;
    assert_eq!(code(&v), None, "{v}");

    let stats = h.stub_stats().await;
    let seen: Vec<&str> = stats["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["x_forwarded_for"].as_str().unwrap())
        .collect();
    assert_eq!(seen, ["203.0.113.7", "2001:db8::7"]);

    // Without the header: closed, nothing answered, counted.
    let mut s = tokio::net::TcpStream::connect(plain).await.unwrap();
    let req = h.request_for(plain, &ocr("AKIDmain"));
    let _ = s.write_all(&support::raw_request(&req, body)).await;
    assert!(support::read_answer(&mut s).await.is_none());
    assert_eq!(
        h.metric("tollgate_proxy_protocol_refused_total", &[]).await,
        1.0
    );
    assert_eq!(h.usage().len(), 2);
    h.stop().await;
}

/// With `tls.client_ca_file`, only clients holding a certificate that CA signed get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, server_der) = certificate(dir.path(), "server");
    // A private CA and a client certificate it signs.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params =
        rcgen::CertificateParams::new(vec!["client.tollgate.test".to_string()]).unwrap();
    client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
    let ca_file = dir.path().join("clients-ca.crt");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let h = Harness::start(Builder {
        extra: format!(
            "{}client_ca_file = \"{}\"\n",
            tls_section(&cert, &key),
            ca_file.display()
        ),
        ..Builder::default()
    })
    .await;
    let connect_with = |identity: Option<(Vec<u8>, Vec<u8>)>| {
        let server_der = server_der.clone();
        let addr = h.api();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tls_client(tcp, &[server_der], identity).await
        }
    };
    // With the CA's client certificate: served.
    let mut ok = connect_with(Some((
        client_cert.der().to_vec(),
        client_key.serialize_der(),
    )))
    .await
    .expect("a client certificate the CA signed is accepted");
    assert_eq!(code(&call_on(&mut ok, &h).await), None);
    // Without one (TLS 1.3 reports the refusal on the first read): no answer.
    match connect_with(None).await {
        Err(_) => {}
        Ok(mut s) => {
            use tokio::io::AsyncWriteExt;
            let req = h.request(&ocr("AKIDmain"));
            let _ = s.write_all(&support::raw_request(&req, b"{}")).await;
            assert!(
                support::read_answer_from(&mut s).await.is_none(),
                "served without a client certificate"
            );
        }
    }
    // A self-signed client certificate the CA did not sign: no answer either.
    let stranger =
        rcgen::generate_simple_self_signed(vec!["client.tollgate.test".to_string()]).unwrap();
    match connect_with(Some((
        stranger.cert.der().to_vec(),
        stranger.signing_key.serialize_der(),
    )))
    .await
    {
        Err(_) => {}
        Ok(mut s) => {
            use tokio::io::AsyncWriteExt;
            let req = h.request(&ocr("AKIDmain"));
            let _ = s.write_all(&support::raw_request(&req, b"{}")).await;
            assert!(
                support::read_answer_from(&mut s).await.is_none(),
                "served a stranger's certificate"
            );
        }
    }
    assert!(
        h.metric("tollgate_tls_handshakes_total", &[("result", "error")])
            .await
            >= 2.0
    );
    assert_eq!(h.usage().len(), 1);
    h.stop().await;
}
