//! The gateway's own HTTP/1.1 codec (plain calls) and its hand-over to hyper (everything
//! else), on real sockets: keep-alive, pipelining, `Connection: close`, a head and body sent
//! apart, and the calls that move a connection to hyper, which then serves the rest of it.

mod support;

use std::time::Duration;

use support::{Builder, Call, Harness, code_of, raw_request, read_answers_from};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads `n` answers (each with a `Content-Length`) from `s`: heads lower-cased, bodies; no
/// byte may follow them.
async fn answers(s: &mut TcpStream, n: usize) -> Vec<(String, Vec<u8>)> {
    let read = tokio::time::timeout(Duration::from_secs(10), read_answers_from(s, n)).await;
    let (out, rest) = read
        .expect("answers within 10 s")
        .unwrap_or_else(|| panic!("closed before {n} answers"));
    assert!(rest.is_empty(), "bytes after the answers: {rest:?}");
    out
}

fn request_id(head: &str) -> String {
    head.lines()
        .find_map(|l| l.strip_prefix("x-tollgate-request-id:"))
        .expect("a request id")
        .trim()
        .to_owned()
}

/// A successful answer of the vendor's shape.
fn assert_served(head: &str, body: &[u8]) {
    assert!(head.starts_with("http/1.1 200 ok"), "{head}");
    assert!(head.contains("\r\ndate: "), "{head}");
    assert_eq!(code_of(body), None, "{}", String::from_utf8_lossy(body));
}

/// `call` on the wire with a chunked body (one chunk).
fn chunked_request(h: &Harness, call: &Call) -> Vec<u8> {
    let req = h.request(call);
    let mut raw = String::from("POST / HTTP/1.1\r\n");
    for (k, v) in req.headers() {
        raw.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    raw.push_str("transfer-encoding: chunked\r\n\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(format!("{:x}\r\n", call.body.len()).as_bytes());
    raw.extend_from_slice(&call.body);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    raw
}

async fn handovers(h: &Harness) -> f64 {
    h.metric("tollgate_http1_handovers_total", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_calls_keep_alive_pipeline_and_close_on_request() {
    let h = Harness::start(Builder::default()).await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    let one = || raw_request(&h.request(&call), &call.body);

    // Three calls one after another on one connection.
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    for _ in 0..3 {
        s.write_all(&one()).await.unwrap();
        let got = answers(&mut s, 1).await;
        assert_served(&got[0].0, &got[0].1);
        assert!(!got[0].0.contains("connection: close"), "{}", got[0].0);
    }

    // Three calls in one write: three answers, in order, each its own.
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    s.write_all(&[one(), one(), one()].concat()).await.unwrap();
    let got = answers(&mut s, 3).await;
    let mut ids = Vec::new();
    for (head, body) in &got {
        assert_served(head, body);
        let id = request_id(head);
        let in_body =
            serde_json::from_slice::<serde_json::Value>(body).unwrap()["Response"]["RequestId"]
                .as_str()
                .map(str::to_owned);
        ids.push(id);
        assert!(in_body.is_some());
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}");

    // Head and body in two writes.
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    let bytes = one();
    let split = bytes.len() - call.body.len();
    s.write_all(&bytes[..split]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2)).await;
    s.write_all(&bytes[split..]).await.unwrap();
    let got = answers(&mut s, 1).await;
    assert_served(&got[0].0, &got[0].1);

    // `Connection: close`: answered, told, closed.
    let mut req = h.request(&call);
    req.headers_mut()
        .insert("connection", "close".parse().unwrap());
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    s.write_all(&raw_request(&req, &call.body)).await.unwrap();
    let got = answers(&mut s, 1).await;
    assert_served(&got[0].0, &got[0].1);
    assert!(got[0].0.contains("connection: close"), "{}", got[0].0);
    let mut rest = [0u8; 8];
    assert_eq!(s.read(&mut rest).await.unwrap_or(0), 0, "closed");

    // Every call billed once; only a slow body could have gone to hyper (none did here, or
    // at most the split one, if the machine paused between its writes).
    assert_eq!(h.usage().len(), 3 + 3 + 1 + 1);
    assert!(handovers(&h).await <= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outside_the_plain_shape_move_the_connection_to_hyper() {
    let h = Harness::start(Builder::default()).await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    let plain = || raw_request(&h.request(&call), &call.body);
    let before = handovers(&h).await;

    // A plain call, then a chunked one, then a plain one, on one connection.
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    s.write_all(&plain()).await.unwrap();
    let got = answers(&mut s, 1).await;
    assert_served(&got[0].0, &got[0].1);
    s.write_all(&chunked_request(&h, &call)).await.unwrap();
    let got = answers(&mut s, 1).await;
    assert_served(&got[0].0, &got[0].1);
    assert_eq!(handovers(&h).await, before + 1.0);
    // hyper serves the rest of the connection, plain calls included.
    for _ in 0..2 {
        s.write_all(&plain()).await.unwrap();
        let got = answers(&mut s, 1).await;
        assert_served(&got[0].0, &got[0].1);
    }
    assert_eq!(handovers(&h).await, before + 1.0);

    // HTTP/1.0, and a call whose body trickles: hyper's too, and answered.
    let mut old = plain();
    let at = old.windows(8).position(|w| w == b"HTTP/1.1").unwrap();
    old[at..at + 8].copy_from_slice(b"HTTP/1.0");
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    s.write_all(&old).await.unwrap();
    let got = answers(&mut s, 1).await;
    // (hyper answers an HTTP/1.0 call in HTTP/1.0.)
    assert!(got[0].0.starts_with("http/1.0 200"), "{}", got[0].0);
    assert_eq!(code_of(&got[0].1), None);
    let bytes = plain();
    let split = bytes.len() - call.body.len();
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    s.write_all(&bytes[..split + 1]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(&bytes[split + 1..]).await.unwrap();
    let got = answers(&mut s, 1).await;
    assert_served(&got[0].0, &got[0].1);
    assert_eq!(handovers(&h).await, before + 3.0);
    assert_eq!(h.usage().len(), 6);
}

/// `proxy.http1_own_codec = false`: hyper serves every HTTP/1.1 call from the first byte
/// (nothing is handed over, as nothing was the own codec's), plain and chunked alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_own_codec_can_be_switched_off() {
    let h = Harness::start(Builder {
        proxy_extra: "http1_own_codec = false\n".into(),
        ..Builder::default()
    })
    .await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    for _ in 0..2 {
        s.write_all(&raw_request(&h.request(&call), &call.body))
            .await
            .unwrap();
        let got = answers(&mut s, 1).await;
        assert_served(&got[0].0, &got[0].1);
    }
    s.write_all(&chunked_request(&h, &call)).await.unwrap();
    let got = answers(&mut s, 1).await;
    assert_served(&got[0].0, &got[0].1);
    assert_eq!(handovers(&h).await, 0.0);
    assert_eq!(h.usage().len(), 3);
}

/// A backend answering every call with fields of every kind: end-to-end ones (one repeated),
/// hop-by-hop ones (one named by its `Connection`), and a request id of its own.
async fn backend_with_fields() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                // A call is framed as an answer is (a head, then `Content-Length` bytes), and
                // the gateway sends one at a time on a connection.
                while read_answers_from(&mut s, 1).await.is_some() {
                    let body = br#"{"Response":{"TextDetections":[],"RequestId":"backend-id"}}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Multi: a\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nX-Tollgate-Request-Id: forged\r\nX-Multi: b\r\nServer: raw-backend\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let mut out = answer.into_bytes();
                    out.extend_from_slice(body);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The end-to-end fields of an answer head, in order, minus `date` (which moves).
fn fields_of(head: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter(|l| !l.starts_with("date:"))
        .map(str::to_owned)
        .collect()
}

/// The backend's fields reach the client the same through the own codec and through hyper:
/// end-to-end ones as they came (a repeated one twice, in order), hop-by-hop ones not at
/// all, and the request id the gateway's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_fields_go_on_alike_through_either_codec() {
    let h = Harness::start(Builder {
        upstream: Some(backend_with_fields().await),
        ..Builder::default()
    })
    .await;
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    let mut s = TcpStream::connect(h.api()).await.unwrap();
    s.write_all(&raw_request(&h.request(&call), &call.body))
        .await
        .unwrap();
    let own = answers(&mut s, 1).await.remove(0);
    s.write_all(&chunked_request(&h, &call)).await.unwrap();
    let hyper = answers(&mut s, 1).await.remove(0);
    assert_eq!(handovers(&h).await, 1.0);
    for (head, body) in [&own, &hyper] {
        assert_served(head, body);
        let fields = fields_of(head);
        let id = request_id(head);
        assert_ne!(id, "forged", "{head}");
        for line in ["x-hop", "keep-alive", "connection"] {
            assert!(!fields.iter().any(|f| f.starts_with(line)), "{head}");
        }
        let ends: Vec<&String> = fields
            .iter()
            .filter(|f| !f.starts_with("x-tollgate-request-id"))
            .collect();
        assert_eq!(
            ends,
            [
                "content-type: application/json",
                "x-multi: a",
                "x-multi: b",
                "server: raw-backend",
                &format!("content-length: {}", body.len()),
            ],
            "{head}"
        );
        assert_eq!(
            fields
                .iter()
                .filter(|f| f.starts_with("x-tollgate-request-id"))
                .count(),
            1,
            "{head}"
        );
    }
    assert_eq!(h.usage().len(), 2);
}
