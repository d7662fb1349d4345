//! `tollgate demo`: the stub backend and the gateway on embedded defaults, with the demo
//! accounts, in one process (no external service).

use std::net::SocketAddr;

use anyhow::Context;
use tollgate_gateway::app;
use tollgate_gateway::cli::{Overrides, init_logging, load_settings};
use tollgate_gateway::settings::Upstream;
use tollgate_stub::settings::StubSettings;

/// `tollgate demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    overrides: Overrides,
    #[arg(long, default_value = "127.0.0.1:19000")]
    stub_listen: SocketAddr,
}

const DEMO_HELP: &str = r#"
Tollgate demo is up. Call it with the official Python SDK:

    python3 -m venv .venv && .venv/bin/pip install tencentcloud-sdk-python-ocr
    .venv/bin/python - <<'PY'
    from tencentcloud.common import credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
    from tencentcloud.ocr.v20181119 import ocr_client, models
    cred = credential.Credential("AKIDTollgateDemoMain000000000000001", "TollgateDemoMainSecretKey0000001")
    profile = ClientProfile(httpProfile=HttpProfile(endpoint="{API}", protocol="http"))
    client = ocr_client.OcrClient(cred, "ap-guangzhou", profile)
    req = models.GeneralBasicOCRRequest(); req.ImageUrl = "https://example.com/a.jpg"
    for i in range(30):
        try:
            client.GeneralBasicOCR(req); print(i, "ok")
        except TencentCloudSDKException as e:
            print(i, e.code)   # RequestLimitExceeded after the 20 QPS burst
    PY

Metrics: http://{ADMIN}/metrics   usage: spooled in data/spool/, sealed into data/batches/   stop: Ctrl-C
"#;

/// Runs the demo until SIGTERM or SIGINT.
pub(crate) async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let mut settings = load_settings(None, &a.overrides)?;
    init_logging(&settings);
    if a.overrides.upstream.is_none() {
        let uri: http::Uri = format!("http://{}", a.stub_listen).parse()?;
        let upstream = Upstream::new(uri, None)
            .with_context(|| format!("the stub address {} has no host", a.stub_listen))?;
        settings.upstreams.insert("default".into(), upstream);
    }
    let stub_listener = tokio::net::TcpListener::bind(a.stub_listen)
        .await
        .with_context(|| format!("cannot listen on {} (stub)", a.stub_listen))?;
    let stub_task = tokio::spawn(tollgate_stub::serve(
        stub_listener,
        tollgate_stub::Stub::new(StubSettings::default()),
        std::future::pending(),
    ));
    let running = app::start(settings, app::Options::default()).await?;
    println!(
        "{}",
        DEMO_HELP
            .replace("{API}", &running.api_addr.to_string())
            .replace("{ADMIN}", &running.admin_addr.to_string())
    );
    running.run_until(tollgate_ops::terminated()).await;
    stub_task.abort();
    Ok(())
}
