//! End-to-end tests with the official Tencent Cloud Python SDK (tests/sdk/e2e.py), against a
//! gateway and stub backend started here. The SDK lives in a virtualenv: `$TOLLGATE_SDK_VENV`,
//! or `target/sdk-venv`, created from tests/sdk/requirements.txt when missing (`.ci/run`
//! creates it up front).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Builder, Harness};

fn venv() -> PathBuf {
    if let Ok(v) = std::env::var("TOLLGATE_SDK_VENV") {
        return PathBuf::from(v);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/sdk-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".requirements-installed");
    let requirements = root.join("tests/sdk/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&ready).ok().as_deref() == Some(wanted.as_str()) {
        return venv;
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap()
        .success();
    assert!(ok, "python3 -m venv failed");
    let ok = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements)
        .status()
        .unwrap()
        .success();
    assert!(
        ok,
        "pip install of the official SDK failed (is PyPI reachable?)"
    );
    std::fs::write(&ready, wanted).unwrap();
    venv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_works_unchanged() {
    let venv = tokio::task::spawn_blocking(venv).await.unwrap();
    let h = Harness::start(Builder::default()).await;
    run_suite(&venv, &h).await;
    h.stop().await;
}

/// The same suite, unchanged, with the accounts and credentials served from the entitlement
/// store (imported from the same files) instead of the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_works_unchanged_with_entitlements_from_the_store() {
    let venv = tokio::task::spawn_blocking(venv).await.unwrap();
    let pg = support::servers::Postgres::start();
    support::seed_store(&pg.url(), support::ENTITLEMENTS).await;
    let h = Harness::start(Builder {
        entitlements_source: support::store_source(&pg.url()),
        ..Builder::default()
    })
    .await;
    assert_eq!(h.metric("tollgate_entitlements_store_up", &[]).await, 1.0);
    run_suite(&venv, &h).await;
    h.stop().await;
}

/// The same suite with the SDK's default profile, `https`, against the gateway's TLS listener,
/// trusting its certificate through `HttpProfile(certification=PATH)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_works_unchanged_over_https_its_default() {
    let venv = tokio::task::spawn_blocking(venv).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (h, cert) = tls_harness(dir.path()).await;
    run_suite_with(&venv, &h, None, Some(&cert)).await;
    let stats = h.stub_stats().await;
    assert!(
        stats["recent"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["x_forwarded_proto"] == "https")
    );
    h.stop().await;
}

/// A gateway whose API listener speaks TLS with a self-signed certificate for 127.0.0.1 (made
/// in `dir`), and that certificate's path, for the SDKs to trust.
async fn tls_harness(dir: &Path) -> (Harness, PathBuf) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".into()])
        .unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, c.cert.pem()).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    let h = Harness::start(Builder {
        extra: format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        ..Builder::default()
    })
    .await;
    (h, cert)
}

/// The suites' mixed invoice call billed 1 大票 and 2 小票.
fn assert_mixed_invoice_billed(h: &Harness) {
    let usage = h.usage();
    let mixed: Vec<_> = usage
        .iter()
        .filter(|u| &*u.action == "MixedInvoiceOCR")
        .map(|u| (u.billing_item.to_string(), u.units))
        .collect();
    assert!(
        mixed.contains(&("ocr.invoice_big".into(), 1))
            && mixed.contains(&("ocr.invoice_small".into(), 2)),
        "{mixed:?}"
    );
}

async fn run_suite(venv: &Path, h: &Harness) {
    run_suite_with(venv, h, Some("http"), None).await;
}

async fn run_suite_with(venv: &Path, h: &Harness, protocol: Option<&str>, ca: Option<&Path>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/e2e.py");
    let mut cmd = tokio::process::Command::new(venv.join("bin/python"));
    if let Some(p) = protocol {
        cmd.env("TOLLGATE_PROTOCOL", p);
    }
    if let Some(ca) = ca {
        cmd.env("TOLLGATE_CA", ca);
    }
    let output = cmd
        .arg(&script)
        .env("TOLLGATE_ENDPOINT", h.api().to_string())
        .env("TOLLGATE_STUB", h.stub_addr.to_string())
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert!(output.status.success(), "the SDK tests failed:\n{stderr}");
    // unittest prints one line per test; all of them ran.
    for name in [
        "test_every_product_answers_through_the_sdk",
        "test_a_get_signed_call",
        "test_request_limit_exceeded_after_the_burst",
        "test_fuse_face_ultra_is_limited_to_ten_in_flight",
        "test_signature_expire",
        "test_secret_id_not_found",
        "test_signature_failure",
        "test_invalid_authorization",
    ] {
        assert!(
            stderr.contains(&format!("{name} ")) && stderr.contains("OK"),
            "{name} did not run"
        );
    }
    assert_mixed_invoice_billed(h);
}

/// Issue 17's month, through the official SDK and `tollgate statement`: 100,000 SearchImage
/// calls into a similar-image library (type 6), then 100,000 into a same-image one (type 1).
/// The seed's tables: the month's 10,000 free searches (shared by the types) go to the calls
/// made first; similar search's 90,000 postpaid calls at 60 per thousand (0–1,000千次 tier) =
/// 5,400.00, same-image search's 100,000 at 15 per thousand = 1,500.00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_of_image_search_through_the_sdk_is_billed_by_library_type() {
    let venv = tokio::task::spawn_blocking(venv).await.unwrap();
    let h = Harness::start(Builder::default()).await;
    // The load itself needs more than SearchImage's 20 QPS (the vendor sells no more for it):
    // raised for this test only; billing does not depend on it.
    let catalog = tollgate_core::config::EMBEDDED_CATALOG.replace(
        "billing_item = \"tiia.search_query\"\n",
        "billing_item = \"tiia.search_query\"\nqps = 100000\n",
    );
    assert_ne!(catalog, tollgate_core::config::EMBEDDED_CATALOG);
    let generation = h.reload_status().await["generation"].as_u64().unwrap();
    h.replace_file("catalog.toml", &catalog);
    assert!(
        support::eventually(std::time::Duration::from_secs(10), || async {
            h.reload_status().await["generation"].as_u64().unwrap() > generation
        })
        .await
    );
    let searches = std::env::var("TOLLGATE_SEARCHES").unwrap_or_else(|_| "100000".into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/image_search.py");
    let output = tokio::process::Command::new(venv.join("bin/python"))
        .arg(&script)
        .env("TOLLGATE_ENDPOINT", h.api().to_string())
        .env("TOLLGATE_SEARCHES", &searches)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert!(output.status.success(), "the SDK month failed:\n{stderr}");
    let n: u64 = searches.parse().unwrap();
    let usage = h.usage();
    assert_eq!(usage.len() as u64, 2 * n, "every search billed once");
    assert!(usage.iter().all(|u| u.unresolved_library.is_none()));

    let month = chrono::Utc::now()
        .with_timezone(&tollgate_core::clock::beijing())
        .format("%Y-%m")
        .to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["statement", "--owner", "1", "--month", &month, "--usage"])
        .arg(&h.usage_path)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = |item: &str| {
        s["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["item"] == item)
            .cloned()
            .unwrap_or_else(|| panic!("no {item} line: {s}"))
    };
    let similar = line("tiia.similar_search_query");
    let same = line("tiia.search_query");
    assert_eq!(similar["usage"], n);
    assert_eq!(same["usage"], n);
    // The similar searches came first: they draw the free pack first.
    let free = n.min(10_000);
    let left = n.min(10_000 - free);
    assert_eq!(similar["free_units"], free, "{similar}\n{same}");
    assert_eq!(same["free_units"], left);
    assert_eq!(similar["postpaid_units"], n - free);
    assert_eq!(same["postpaid_units"], n - left);
    let money =
        |v: &serde_json::Value| -> rust_decimal::Decimal { v.as_str().unwrap().parse().unwrap() };
    if n == 100_000 {
        assert_eq!(
            money(&similar["unit_price"]),
            rust_decimal::Decimal::from(60)
        );
        assert_eq!(
            money(&similar["amount"]),
            rust_decimal::Decimal::from(5_400)
        );
        assert_eq!(money(&same["unit_price"]), rust_decimal::Decimal::from(15));
        assert_eq!(money(&same["amount"]), rust_decimal::Decimal::from(1_500));
        assert_eq!(
            money(&s["postpaid_total"]),
            rust_decimal::Decimal::from(6_900)
        );
    }
    // The table a person reads says the same.
    let table = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["statement", "--owner", "1", "--month", &month, "--usage"])
        .arg(&h.usage_path)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    println!("{table}");
    assert!(table.contains("相似图像搜索-检索图片"), "{table}");
    h.stop().await;
}

/// `target/node-sdk`: the Node.js SDK suite and its packages (tests/sdk/node/package.json,
/// installed with npm when missing or changed).
fn node_sdk() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/node-sdk");
    let package = std::fs::read_to_string(root.join("tests/sdk/node/package.json")).unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(root.join("tests/sdk/node/e2e.mjs"), dir.join("e2e.mjs")).unwrap();
    let ready = dir.join(".installed");
    if std::fs::read_to_string(&ready).ok().as_deref() != Some(package.as_str()) {
        std::fs::write(dir.join("package.json"), &package).unwrap();
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .expect("npm runs (Node.js 18 or newer)")
            .success();
        assert!(
            ok,
            "npm install of the official Node.js SDK failed (is the npm registry reachable?)"
        );
        std::fs::write(&ready, &package).unwrap();
    }
    dir
}

async fn run_node_suite(dir: &Path, h: &Harness, protocol: &str, ca: Option<&Path>) {
    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["--test", "e2e.mjs"])
        .current_dir(dir)
        .env("TOLLGATE_ENDPOINT", h.api().to_string())
        .env("TOLLGATE_PROTOCOL", protocol)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy");
    if let Some(ca) = ca {
        cmd.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let output = cmd.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "the Node.js SDK tests failed ({protocol}):\n{stdout}"
    );
    assert!(
        stdout.contains("# pass 5") && stdout.contains("# fail 0"),
        "{stdout}"
    );
    assert_mixed_invoice_billed(h);
}

/// The official Node.js SDK, unchanged, on a non-default port with an IP-literal endpoint:
/// over plain HTTP, then over HTTPS (its default protocol).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_sdk_works_unchanged_over_http_and_https() {
    let dir = tokio::task::spawn_blocking(node_sdk).await.unwrap();
    let h = Harness::start(Builder::default()).await;
    run_node_suite(&dir, &h, "http://", None).await;
    h.stop().await;

    let certs = tempfile::tempdir().unwrap();
    let (h, cert) = tls_harness(certs.path()).await;
    run_node_suite(&dir, &h, "https://", Some(&cert)).await;
    h.stop().await;
}
