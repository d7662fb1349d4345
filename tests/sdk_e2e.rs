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

async fn run_suite(venv: &Path, h: &Harness) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/e2e.py");
    let output = tokio::process::Command::new(venv.join("bin/python"))
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
    // The mixed invoice call billed 1 大票 and 2 小票.
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
