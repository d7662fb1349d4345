//! deploy/ checked against the real thing: the alert rules pass their promtool unit tests,
//! every metric the dashboard and the alerts name is one the gateway or the consumer really
//! exports, and a real Prometheus server scraping a running gateway answers a PromQL query on
//! its counters with the expected value.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::servers::{free_port, wait_for_port};
use support::{Builder, Call, Harness, eventually};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed (.ci/run installs the Debian package prometheus)")
}

#[test]
fn the_alert_rules_pass_promtool() {
    let promtool = tool("promtool");
    for args in [
        vec!["check", "rules", "deploy/prometheus/alerts.yml"],
        vec!["test", "rules", "deploy/prometheus/alerts_test.yml"],
        vec!["check", "config", "deploy/prometheus/prometheus.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `tollgate_…` token in a text.
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("tollgate_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].trim_end_matches('_').to_owned());
        }
        i = end;
    }
    out
}

/// Metric names in a Prometheus text exposition, including HELP/TYPE base names.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            let l = l
                .strip_prefix("# HELP ")
                .or_else(|| l.strip_prefix("# TYPE "))
                .unwrap_or(l);
            let name = l.split(['{', ' ']).next()?;
            name.starts_with("tollgate_").then(|| name.to_owned())
        })
        .collect()
}

fn deploy_texts() -> Vec<(PathBuf, String)> {
    let mut files = vec![];
    for dir in ["deploy/grafana", "deploy/prometheus"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension()
                .is_some_and(|x| x == "json" || x == "yml" || x == "yaml")
            {
                let text = std::fs::read_to_string(&p).unwrap();
                files.push((p, text));
            }
        }
    }
    assert!(
        files
            .iter()
            .any(|(p, _)| p.ends_with("tollgate-dashboard.json")),
        "the dashboard exists"
    );
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_name_only_exported_metrics() {
    let h = Harness::start(Builder::default()).await;
    // Exercise the labelled families so every one of them has a series.
    assert!(
        h.call(&Call::new("ocr", "GeneralBasicOCR", "AKIDmain"))
            .await
            .is_success()
    );
    let mut bad = Call::new("ocr", "GeneralBasicOCR", "AKIDmain");
    bad.secret_key = "wrong-key-wrong-key".into();
    h.call(&bad).await;
    h.replace_file("entitlements.toml", support::ENTITLEMENTS);
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.reload_status().await["generation"] == 2
        })
        .await
    );
    let mut names = exported(&h.metrics().await);
    names.extend(exported(
        &tollgate_settlement::consumer::ConsumerMetrics::new().render(),
    ));
    // The fleet store's metrics exist with `[quota] store = "redis"` only.
    {
        let registry = prometheus::Registry::new();
        let m = tollgate_gateway::fleet::FleetMetrics::new(&registry);
        for op in ["rate", "slice", "members", "probe"] {
            m.commands.with_label_values(&[op]).inc();
        }
        for kind in ["timeout", "connection", "script"] {
            m.errors.with_label_values(&[kind]).inc();
        }
        for to in ["degraded", "healthy"] {
            m.transitions.with_label_values(&[to]).inc();
        }
        for kind in ["granted", "debt", "refund"] {
            m.leased_calls.with_label_values(&[kind]).inc();
        }
        m.round_seconds.observe(0.001);
        // And the entitlement store sync's with `[entitlements] source = "postgres"`.
        let s = tollgate_gateway::store_sync::StoreMetrics::new(&registry);
        for kind in ["full", "delta"] {
            for result in ["ok", "error"] {
                s.syncs.with_label_values(&[kind, result]).inc();
            }
        }
        for outcome in ["taken", "ignored", "refused"] {
            s.applied.with_label_values(&[outcome]).inc();
        }
        let mut text = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        names.extend(exported(&text));
    }

    let mut missing = vec![];
    for (path, text) in deploy_texts() {
        for token in metric_tokens(&text) {
            if !names.contains(&token) {
                missing.push(format!("{}: {token}", path.display()));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "names no component exports:\n{}",
        missing.join("\n")
    );
    let dashboard =
        std::fs::read_to_string(root().join("deploy/grafana/tollgate-dashboard.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut exprs = 0;
    walk(&v, &mut |k, s| {
        if k == "expr" {
            exprs += 1;
            assert!(
                s.contains("tollgate_") || s.contains("up{"),
                "an expression with no metric: {s}"
            );
        }
    });
    assert!(
        exprs >= 10,
        "only {exprs} PromQL expressions in the dashboard"
    );
}

fn walk(v: &serde_json::Value, f: &mut dyn FnMut(&str, &str)) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if let serde_json::Value::String(s) = v {
                    f(k, s);
                }
                walk(v, f);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, f)),
        _ => {}
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A real Prometheus scrapes a running gateway; PromQL on its counters returns what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_the_gateway_counters() {
    let prometheus = tool("prometheus");
    let h = Harness::start(Builder {
        clock: Some(tollgate_core::clock::FakeClock::at(
            "2026-05-01T10:00:00+08:00",
        )),
        ..Builder::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tollgate\n    static_configs:\n      - targets: ['{}']\n",
            h.running.admin_addr
        ),
    )
    .unwrap();
    let port = free_port();
    let mut server = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "prometheus did not listen"
    );

    // 7 admitted and 18 over the limit at a frozen instant; 3 signature failures.
    let h = std::sync::Arc::new(h);
    let replies = h
        .burst(&Call::new("ocr", "IDCardOCR", "AKIDsubB"), 25)
        .await;
    assert_eq!(support::count_codes(&replies)["success"], 20);
    for _ in 0..3 {
        let mut c = Call::new("ocr", "IDCardOCR", "AKIDsubB");
        c.secret_key = "wrong-key-wrong-key".into();
        h.call(&c).await;
    }
    let query = |q: &'static str| {
        let h = std::sync::Arc::clone(&h);
        async move {
            let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let (status, body) = h
                .get_text(addr, &format!("/api/v1/query?query={}", encode(q)))
                .await;
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
        }
    };
    let seen = eventually(Duration::from_secs(30), || async {
        query(
            r#"sum(tollgate_admission_decisions_total{group="ocr.IDCardOCR",decision="admitted"})"#,
        )
        .await
            == Some(20.0)
    })
    .await;
    assert!(seen, "Prometheus never saw the 20 admitted calls");
    assert_eq!(query(r#"sum(tollgate_admission_decisions_total{group="ocr.IDCardOCR",decision="over_limit"})"#).await, Some(5.0));
    assert_eq!(
        query(r#"sum(tollgate_auth_failures_total{code="AuthFailure.SignatureFailure"})"#).await,
        Some(3.0)
    );
    assert_eq!(
        query(
            r#"sum by (billing_item) (tollgate_billable_units_total{billing_item="ocr.id_card"})"#
        )
        .await,
        Some(20.0)
    );
    let _ = server.kill();
    let _ = server.wait();
}
