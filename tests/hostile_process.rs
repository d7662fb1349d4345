//! A hostile client against the gateway as a process of its own: what it costs in memory and
//! CPU, read from `/proc`, while a good client keeps calling.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::servers::{free_port, wait_for_port};
use support::{Builder, Call, Harness, raw_request, read_answer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Gateway {
    child: Child,
    api: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `tollgate gateway` on the harness's files, with `extra` under `[proxy]`, through
/// `wrapper` (e.g. `prlimit`) if given.
fn spawn(h: &Harness, dir: &Path, proxy_extra: &str, wrapper: &[&str]) -> Gateway {
    let (api_port, admin_port) = (free_port(), free_port());
    for f in ["catalog.toml", "entitlements.toml", "credentials.toml"] {
        std::fs::copy(h.config_dir().join(f), dir.join(f)).unwrap();
    }
    let config = dir.join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\napi = \"127.0.0.1:{api_port}\"\nadmin = \"127.0.0.1:{admin_port}\"\n[proxy]\nworkers = 1\n{proxy_extra}\n[upstream.default]\nurl = \"http://{}\"\n[metering]\nsink = \"file\"\npath = \"{}\"\n[log]\nlevel = \"error\"\n",
            h.stub_addr,
            dir.join("usage.jsonl").display()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_tollgate");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let child = cmd
        .args(["gateway", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_port(api_port, Duration::from_secs(10)),
        "gateway did not listen"
    );
    assert!(wait_for_port(admin_port, Duration::from_secs(10)));
    Gateway {
        child,
        api: format!("127.0.0.1:{api_port}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
    }
}

/// The resident set of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .map(|v| {
            v.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
                * 1024
        })
        .unwrap()
}

/// CPU time a process has used (user + system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of stat (utime, stime), counted from 3 after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn bogus_head(declared: usize) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\nx-tc-action: GeneralBasicOCR\r\nx-tc-timestamp: 1\r\nauthorization: TC3-HMAC-SHA256 Credential=AKIDnobody/1970-01-01/ocr/tc3_request, SignedHeaders=content-type;host, Signature={}\r\ncontent-length: {declared}\r\n\r\n",
        "0".repeat(64)
    )
    .into_bytes()
}

/// 100 unauthenticated clients, each declaring 10 MiB, sending a megabyte of it and holding
/// on, and coming back 100 ms after each close, for four seconds: the gateway's memory
/// barely moves, every connection is closed within the body deadline, and a good client is
/// served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_bodies_cost_no_memory() {
    let h = Harness::start(Builder::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = spawn(
        &h,
        dir.path(),
        "max_request_bytes = 10485760\nrequest_body_idle_timeout_ms = 1000\nrequest_body_timeout_ms = 3000\n",
        &[],
    );
    let pid = gw.child.id();
    // Warm up, so the baseline includes what serving costs anyway.
    let warm = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    for _ in 0..20 {
        assert!(
            support::send_alone(h.request_for(gw.api, &warm))
                .await
                .is_success()
        );
    }
    let baseline = rss(pid);
    let attack = Duration::from_secs(4);
    let started = Instant::now();
    let mut attackers = Vec::new();
    for _ in 0..100 {
        let api = gw.api;
        attackers.push(tokio::spawn(async move {
            // (connections made, the longest any stayed open)
            let (mut n, mut longest) = (0u32, Duration::ZERO);
            let mib = vec![b'A'; 1 << 20];
            while started.elapsed() < attack {
                let opened = Instant::now();
                let Ok(mut s) = TcpStream::connect(api).await else {
                    continue;
                };
                n += 1;
                let _ = s.write_all(&bogus_head(10 << 20)).await;
                let _ = s.write_all(&mib).await;
                // Then nothing: wait for the gateway to close the connection.
                let mut sink = [0u8; 4096];
                loop {
                    match s.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                longest = longest.max(opened.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (n, longest)
        }));
    }
    // Meanwhile: the peak resident set, and a good client's latency (another account than
    // the warm-up's, one call every 50 ms: within its quota of 20/s).
    let good = Call::new("ocr", "GeneralBasicOCR", "AKIDsubA");
    let mut peak = baseline;
    let mut latencies = Vec::new();
    let mut good_client = TcpStream::connect(gw.api).await.unwrap();
    while started.elapsed() < attack {
        peak = peak.max(rss(pid));
        let raw = raw_request(&h.request_for(gw.api, &good), &good.body);
        let t = Instant::now();
        good_client.write_all(&raw).await.unwrap();
        let (_, body) = read_answer(&mut good_client).await.expect("answered");
        latencies.push(t.elapsed());
        assert_eq!(
            support::code_of(&body),
            None,
            "{}",
            String::from_utf8_lossy(&body)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut connections, mut longest) = (0, Duration::ZERO);
    for a in attackers {
        let (n, l) = a.await.unwrap();
        connections += n;
        longest = longest.max(l);
    }
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    let p50 = latencies[latencies.len() / 2];
    eprintln!(
        "{connections} attacking connections; rss baseline {} MiB, peak {} MiB (+{} KiB); longest open {longest:?}; good client p50 {p50:?} p99 {p99:?} over {} calls",
        baseline >> 20,
        peak >> 20,
        (peak.saturating_sub(baseline)) >> 10,
        latencies.len()
    );
    assert!(connections >= 100);
    assert!(
        peak.saturating_sub(baseline) < 64 << 20,
        "resident set grew by {} MiB",
        (peak - baseline) >> 20
    );
    // Closed within the body deadline (they are refused from their heads: at once).
    assert!(longest < Duration::from_secs(3), "{longest:?}");
    // Every call of the good client was answered (asserted above). Its latency is a figure,
    // not a test: a release build's, measured beside nginx, is in loadtest/RESULTS.md
    // (loadtest/hostile-bench.sh).
}

/// With its file descriptors used up, the admin listener backs off instead of spinning on
/// `EMFILE`, and serves again once connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_backs_off_when_out_of_descriptors() {
    let h = Harness::start(Builder::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = spawn(&h, dir.path(), "", &["prlimit", "--nofile=64:64", "--"]);
    let pid = gw.child.id();
    // More connections than the gateway has descriptors: the kernel completes them, the
    // gateway's accept fails.
    let mut held = Vec::new();
    for _ in 0..120 {
        held.push(TcpStream::connect(gw.admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_time(pid) - before;
    eprintln!("CPU used in 2 s with accept failing: {used:?}");
    assert!(used < Duration::from_millis(400), "{used:?} of CPU in 2 s");
    drop(held);
    // Serving again (what was accepted is closed by its header-read timeout or the client).
    let ok = support::eventually(Duration::from_secs(10), || async {
        let Ok(mut s) = TcpStream::connect(gw.admin).await else {
            return false;
        };
        if s.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        read_answer(&mut s)
            .await
            .is_some_and(|(head, _)| head.starts_with("http/1.1 200"))
    })
    .await;
    assert!(ok, "the admin listener did not recover");
}

/// Clients that send a request head a byte a second are closed at the header-read timeout,
/// on the admin listener and on the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_closed() {
    let h = Harness::start(Builder {
        proxy_extra: "header_read_timeout_ms = 2000\n".into(),
        ..Builder::default()
    })
    .await;
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..100 {
        let addr = if i % 2 == 0 {
            h.running.admin_addr
        } else {
            h.api()
        };
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for b in b"GET /metrics HTTP/1.1\r\nhost: x\r\nx-slow: "
                .iter()
                .cycle()
            {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                let mut probe = [0u8; 64];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
                if started.elapsed() > Duration::from_secs(30) {
                    panic!("still open after 30 s");
                }
            }
            started.elapsed()
        }));
    }
    for c in clients {
        let after = c.await.unwrap();
        // The admin listener's timeout is 5 s, the API's 2 s here; a second of slack for the
        // client's own pace.
        assert!(after < Duration::from_secs(8), "closed after {after:?}");
    }
}
