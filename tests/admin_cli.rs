//! `tollgate admin …` as an operator runs it: the binary against a private PostgreSQL — import
//! the config directory, make a token, serve the API, buy through the CLI (retried with the
//! same idempotency key), and print a statement whose packs come from the store.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::servers::{Postgres, free_port, wait_for_port};

fn tollgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_operator_seeds_the_store_and_buys_through_the_cli() {
    let pg = Postgres::start();
    let url = pg.url();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let config = config.to_str().unwrap();

    // Import the shipped files; a second import changes nothing.
    let first: serde_json::Value = serde_json::from_str(&ok(&tollgate(
        &["admin", "import", config, "--store", &url],
        &[],
    )))
    .unwrap();
    assert_eq!(first["accounts"], 7, "{first}");
    assert_eq!(first["credentials"], 7, "{first}");
    assert_eq!(first["packs"], 1, "{first}");
    assert!(first["version"].is_i64());
    let second: serde_json::Value = serde_json::from_str(&ok(&tollgate(
        &["admin", "import", config, "--store", &url],
        &[],
    )))
    .unwrap();
    assert_eq!(second["accounts"], 0, "{second}");
    assert!(second["version"].is_null(), "{second}");

    let token = ok(&tollgate(
        &[
            "admin", "token", "create", "--name", "ops", "--scope", "write", "--store", &url,
        ],
        &[],
    ))
    .trim()
    .to_owned();
    assert!(token.starts_with("tgt_"), "{token}");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _api = Child(
        Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["admin", "serve", "--listen", &listen, "--store", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for_port(port, Duration::from_secs(20)));
    let api = format!("http://{listen}");
    let env = [
        ("TOLLGATE_ADMIN_API", api.as_str()),
        ("TOLLGATE_ADMIN_TOKEN", token.as_str()),
    ];

    // Without the token: refused.
    let out = tollgate(
        &["admin", "show", "--uin", "100000000001", "--token", ""],
        &[("TOLLGATE_ADMIN_API", api.as_str())],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    let buy = [
        "admin",
        "buy-pack",
        "--uin",
        "100000000001",
        "--item",
        "ocr.general_basic",
        "--size",
        "100000",
        "--idempotency-key",
        "order-42",
    ];
    let bought: serde_json::Value = serde_json::from_str(&ok(&tollgate(&buy, &env))).unwrap();
    let again = tollgate(&buy, &env);
    let replayed: serde_json::Value = serde_json::from_str(&ok(&again)).unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("replayed"));
    assert_eq!(bought["pack"]["id"], replayed["pack"]["id"]);

    // A cap breach names the day and exits non-zero.
    let today = chrono::Utc::now()
        .with_timezone(&tollgate_core::clock::beijing())
        .date_naive();
    let start = (today + chrono::Days::new(1)).to_string();
    let end = (today + chrono::Days::new(3)).to_string();
    let overlay = |qps: &str, key: &str| {
        tollgate(
            &[
                "admin",
                "buy-overlay",
                "--uin",
                "100000000001",
                "--interface",
                "ocr.IDCardOCR",
                "--qps",
                qps,
                "--start",
                &start,
                "--end",
                &end,
                "--idempotency-key",
                key,
            ],
            &env,
        )
    };
    ok(&overlay("60", "ov-1"));
    let refused = overlay("41", "ov-2");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(&format!("exceeded on {start}")), "{stderr}");

    let shown: serde_json::Value = serde_json::from_str(&ok(&tollgate(
        &["admin", "show", "--uin", "100000000001"],
        &env,
    )))
    .unwrap();
    assert_eq!(shown["packs"].as_array().unwrap().len(), 2, "{shown}");
    assert_eq!(shown["overlays"].as_array().unwrap().len(), 1, "{shown}");

    // The statement of this month lists both purchases, read from the store.
    let month = today.format("%Y-%m").to_string();
    let empty = tempfile::tempdir().unwrap();
    let statement: serde_json::Value = serde_json::from_str(&ok(&tollgate(
        &[
            "statement",
            "--owner",
            "100000000001",
            "--month",
            &month,
            "--store",
            &url,
            "--ledger-dir",
            empty.path().to_str().unwrap(),
            "--format",
            "json",
        ],
        &[],
    )))
    .unwrap();
    let purchases = statement["purchases"].as_array().unwrap();
    assert!(
        purchases.iter().any(|p| p["pack"] == bought["pack"]["id"]),
        "{statement}"
    );
    let audit: serde_json::Value =
        serde_json::from_str(&ok(&tollgate(&["admin", "audit", "--limit", "5"], &env))).unwrap();
    let entries = audit["entries"].as_array().unwrap();
    assert_eq!(entries[0]["action"], "overlay.buy");
    assert_eq!(entries[1]["action"], "pack.buy");
    assert!(entries[1]["actor"].as_str().unwrap().contains("ops"));
}
