//! HTTP/2 attacks on the edge (issue 16): the rapid-reset attack (CVE-2023-44487: streams
//! opened and cancelled at once, so the server works on requests nobody waits for) and
//! CONTINUATION floods (a header block that never ends). Each is refused on its own connection
//! while another client's calls go on being answered.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use support::{Builder, Call, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A well-behaved client calling all along: how many calls it got answered, and the slowest.
struct Bystander {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    slowest_ms: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

fn bystander(h: &Arc<Harness>) -> Bystander {
    let (stop, answered, failed, slowest_ms) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let task = {
        let (h, stop, answered, failed, slowest_ms) = (
            Arc::clone(h),
            Arc::clone(&stop),
            Arc::clone(&answered),
            Arc::clone(&failed),
            Arc::clone(&slowest_ms),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                // The main account's DetectLabel: a quota of its own, 20 QPS.
                let r = h.call(&Call::new("tiia", "DetectLabel", "AKIDmain")).await;
                if r.is_success() {
                    answered.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                slowest_ms.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    Bystander {
        stop,
        answered,
        failed,
        slowest_ms,
        task,
    }
}

impl Bystander {
    async fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        (
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.slowest_ms.load(Ordering::Relaxed),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_the_connection_closed_and_others_are_served() {
    let h = Arc::new(Harness::start(Builder::default()).await);
    let watcher = bystander(&h);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let tcp = tokio::net::TcpStream::connect(h.api()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // Requests a backend would take 2 s over, each cancelled right after it is sent.
    let call = Call::new("ocr", "GeneralBasicOCR", "AKIDsubA").header("X-Stub-Latency-Ms", "2000");
    let mut sent = 0u64;
    let started = Instant::now();
    let closed = loop {
        let req = h.request(&call);
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let req = http::Request::from_parts(parts, ());
        let Ok((response, mut stream)) = client.send_request(req, false) else {
            break true;
        };
        if stream.send_data(body, true).is_err() {
            break true;
        }
        // Cancelled at once: RST_STREAM(CANCEL).
        drop(response);
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        match client.ready().await {
            Ok(c) => client = c,
            Err(_) => break true,
        }
        if sent >= 10_000 || started.elapsed() > Duration::from_secs(10) {
            break false;
        }
    };
    assert!(
        closed,
        "the server never closed a connection that reset {sent} streams"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the connection ends")
        .unwrap();
    let err = outcome.expect_err("closed with an error");
    println!("after {sent} cancelled streams: {err}");
    assert!(sent < 1_000, "{sent} resets before the close");
    assert!(
        err.is_go_away() || err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM),
        "{err}"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (answered, failed, slowest_ms) = watcher.finish().await;
    assert!(answered >= 5, "the bystander got {answered} answers");
    assert_eq!(failed, 0);
    assert!(slowest_ms < 1_000, "the bystander waited {slowest_ms} ms");
    // The cancelled calls were not billed.
    assert!(
        h.usage().iter().all(|u| &*u.action == "DetectLabel"),
        "a cancelled call was billed"
    );
}

/// A raw HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    let len = payload.len() as u32;
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK literal header field without indexing, new name: `x-flood-N: value`.
fn literal(n: usize, value_len: usize) -> Vec<u8> {
    let name = format!("x-flood-{n}");
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    // Value length as an HPACK integer (7-bit prefix).
    let mut len = value_len;
    if len < 127 {
        b.push(len as u8);
    } else {
        b.push(127);
        len -= 127;
        while len >= 128 {
            b.push((len % 128 + 128) as u8);
            len /= 128;
        }
        b.push(len as u8);
    }
    b.extend(std::iter::repeat_n(b'a', value_len));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_cut_off_and_others_are_served() {
    let h = Arc::new(Harness::start(Builder::default()).await);
    let watcher = bystander(&h);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut s = tokio::net::TcpStream::connect(h.api()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // SETTINGS
    // HEADERS for stream 1 without END_HEADERS: the pseudo-headers, then CONTINUATION frames
    // of made-up fields, forever.
    let mut block = vec![0x83, 0x86, 0x84]; // :method POST, :scheme http, :path /
    block.extend(literal(0, 10));
    s.write_all(&frame(0x1, 0x0, 1, &block)).await.unwrap();
    let mut sent = 0usize;
    let mut n = 1;
    let cut = loop {
        let mut payload = Vec::new();
        while payload.len() < 16_000 {
            payload.extend(literal(n, 1000));
            n += 1;
        }
        match tokio::time::timeout(
            Duration::from_secs(5),
            s.write_all(&frame(0x9, 0x0, 1, &payload)),
        )
        .await
        {
            Ok(Ok(())) => sent += payload.len(),
            // A reset, a broken pipe, or a server that stopped reading.
            _ => break true,
        }
        if sent > 64 * 1024 * 1024 {
            break false;
        }
    };
    // What the server said, if anything: a GOAWAY, then the close.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let mut goaway = false;
    let mut at = 0;
    while at + 9 <= answer.len() {
        let len = u32::from_be_bytes([0, answer[at], answer[at + 1], answer[at + 2]]) as usize;
        goaway |= answer[at + 3] == 0x7;
        at += 9 + len;
    }
    println!("CONTINUATION bytes accepted before the cut: {sent} (GOAWAY sent: {goaway})");
    assert!(
        cut || goaway,
        "the server took {sent} bytes of an endless header block"
    );
    assert!(
        sent < 8 * 1024 * 1024,
        "{sent} bytes of one header block accepted"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (answered, failed, slowest_ms) = watcher.finish().await;
    assert!(answered >= 4, "the bystander got {answered} answers");
    assert_eq!(failed, 0);
    assert!(slowest_ms < 1_000, "the bystander waited {slowest_ms} ms");
}
