//! End to end: a real gateway (`tollgate_gateway::app::start`) in front of the stub backend, both
//! in-process on ephemeral ports with the demo accounts, driven by the generator; the report
//! must count a 20-QPS overload the way GCRA admits it.

use std::net::SocketAddr;
use std::time::Duration;

use tollgate_core::config::{self, Source};
use tollgate_gateway::app::{self, Options, Running};
use tollgate_gateway::settings as gateway;
use tollgate_loadtest::plan::{self, Expected, GatewayConfig, Overrides};
use tollgate_loadtest::report::{self, Verdict, margin};
use tollgate_loadtest::runner::{self, RunOptions};
use tollgate_loadtest::scenario::Scenario;
use tollgate_stub::settings::StubSettings;

struct Servers {
    running: Running,
    stub: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The stub and a gateway on the embedded demo config (what `tollgate demo` serves).
async fn start() -> Servers {
    let stub_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stub = stub_listener.local_addr().unwrap();
    tokio::spawn(tollgate_stub::serve(
        stub_listener,
        tollgate_stub::Stub::new(StubSettings::default()),
        std::future::pending(),
    ));
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("catalog.toml", config::EMBEDDED_CATALOG),
        ("entitlements.toml", config::EMBEDDED_ENTITLEMENTS),
        ("credentials.toml", config::EMBEDDED_CREDENTIALS),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let settings_path = dir.path().join("tollgate.toml");
    std::fs::write(
        &settings_path,
        format!(
            "[listen]\napi = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[upstream.default]\nurl = \"http://{stub}\"\n[metering]\nsink = \"off\"\n[log]\nlevel = \"error\"\n"
        ),
    )
    .unwrap();
    let settings = gateway::load(&Source::File(settings_path)).unwrap();
    let running = app::start(settings, Options::default()).await.unwrap();
    Servers {
        running,
        stub,
        _dir: dir,
    }
}

const SCENARIO: &str = r#"
name = "e2e"
duration_secs = 3
rate = 200

[[stream]]
name = "main overload"
secret_id = "AKIDTollgateDemoMain000000000000001"
service = "ocr"
action = "GeneralBasicOCR"

[[stream]]
name = "arrears"
secret_id = "AKIDTollgateDemoArrears00000000020"
service = "ocr"
action = "GeneralBasicOCR"
rate = 10

[[stream]]
name = "sub-a ultra"
secret_id = "AKIDTollgateDemoSubA000000000000002"
service = "facefusion"
action = "FuseFaceUltra"
mode = "closed"
concurrency = 14
[stream.headers]
X-Stub-Latency-Ms = "100"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_a_20_qps_overload_refusals_and_a_concurrency_limit() {
    let servers = start().await;
    let scenario = Scenario::parse(SCENARIO).unwrap();
    let plan = plan::resolve(
        &scenario,
        &GatewayConfig::embedded().unwrap(),
        Overrides::default(),
    )
    .unwrap();
    let target = servers.running.api_addr.to_string();
    let result = runner::run(&plan, &RunOptions::new(&target), std::future::pending())
        .await
        .unwrap();
    let report = report::build(&plan, &result, &target, "embedded");
    println!("{}", report.render());

    let window = result.send_window.as_secs_f64();
    assert!((window - 3.0).abs() < 0.05, "{window}");

    // 20 QPS offered 200/s for 3 s: 60 admitted, plus up to the burst of 20.
    let main = &report.groups[plan.streams[0].group];
    assert_eq!(main.expected, Expected::Rate { qps: 20, burst: 20 });
    let band = main.expected_admitted.unwrap();
    assert_eq!(band.min, 60);
    // 20 x 3 + 20, plus a call for each 50 ms the last sends fell behind the timetable (a busy
    // machine); more than 0.25 s behind would make this test meaningless.
    assert!((80..=85).contains(&band.max), "{band:?}");
    assert!(
        (60..=band.max + margin(band)).contains(&main.admitted),
        "admitted {} of {}",
        main.admitted,
        main.sent
    );
    assert!((590..=600).contains(&main.sent), "sent {}", main.sent);
    assert_eq!(main.rejected, main.sent - main.admitted);
    assert!(main.errors.is_empty(), "{:?}", main.errors);
    assert_eq!(main.verdict, Verdict::Ok);
    assert!(main.latency.admitted.count == main.admitted);

    // The arrears account is refused before admission, with the vendor's code.
    let arrears = &report.groups[plan.streams[1].group];
    assert_eq!((arrears.admitted, arrears.rejected), (0, 0));
    assert_eq!(
        arrears.errors["ResourceUnavailable.InArrears"],
        arrears.sent
    );
    assert_eq!(arrears.verdict, Verdict::Ok);

    // 14 closed-loop workers against 10 in flight at 100 ms: ~100 admitted/s at most, and the
    // backend never sees more than 10 at once.
    let ultra = &report.groups[plan.streams[2].group];
    assert_eq!(ultra.expected, Expected::Concurrency { max_in_flight: 10 });
    assert!(ultra.rejected > 0, "the limit never bound: {ultra:?}");
    assert!(ultra.admitted_rate <= 105.0, "{}", ultra.admitted_rate);
    assert!(ultra.admitted_rate >= 50.0, "{}", ultra.admitted_rate);
    let stats = tollgate_loadtest::spawn::fetch_json(servers.stub, "/stub/stats")
        .await
        .unwrap();
    let peak = stats["actions"]["FuseFaceUltra"]["max_in_flight"]
        .as_u64()
        .unwrap();
    assert!(peak <= 10, "backend saw {peak} in flight");

    assert_eq!(report.totals.transport_errors, 0);
    servers.running.shutdown().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}
