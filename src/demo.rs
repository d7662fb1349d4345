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
    /// HTTPS (and HTTP/2) here, with a self-signed certificate made in data/tls/ (the plain
    /// listener stays where listen.api says).
    #[arg(long, default_value = "127.0.0.1:18443")]
    tls_listen: SocketAddr,
    /// Plain HTTP only.
    #[arg(long)]
    no_tls: bool,
}

/// Where the demo keeps its certificate and key.
const DEMO_CERT: &str = "data/tls/demo.crt";
const DEMO_KEY: &str = "data/tls/demo.key";

/// The demo's self-signed certificate for 127.0.0.1 and localhost (made once, kept in data/).
fn demo_certificate() -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (
        std::path::PathBuf::from(DEMO_CERT),
        std::path::PathBuf::from(DEMO_KEY),
    );
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .context("making the demo certificate")?;
    std::fs::create_dir_all("data/tls").context("creating data/tls")?;
    std::fs::write(&cert, made.cert.pem()).with_context(|| format!("writing {DEMO_CERT}"))?;
    write_private(&key, made.signing_key.serialize_pem().as_bytes())
        .with_context(|| format!("writing {DEMO_KEY}"))?;
    Ok((cert, key))
}

/// Writes a file only its owner can read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
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

{TLS}Metrics: http://{ADMIN}/metrics   usage: spooled in data/spool/, sealed into data/batches/   stop: Ctrl-C
"#;

const DEMO_TLS_HELP: &str = r#"Over HTTPS (the SDK's default protocol) and HTTP/2 at {TLS_API}, trust the demo's certificate:

    profile = ClientProfile(httpProfile=HttpProfile(endpoint="{TLS_API}", certification="{CERT}"))
    # Node.js SDK: NODE_EXTRA_CA_CERTS={CERT}   curl: curl --cacert {CERT} https://{TLS_API}/

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
    // The HTTPS port may be taken on this machine: the demo then runs plain HTTP only.
    let tls_port_free = std::net::TcpListener::bind(a.tls_listen).is_ok();
    if !tls_port_free && !a.no_tls {
        tracing::warn!(listen = %a.tls_listen, "the demo's HTTPS port is taken: serving plain HTTP only (--tls-listen to choose another)");
    }
    let cert = if a.no_tls || settings.tls.is_some() || !tls_port_free {
        None
    } else {
        // HTTPS on its own port; the plain listener stays where it was.
        let (cert, key) = demo_certificate()?;
        settings.api_plain_listen = Some(settings.api_listen);
        settings.api_listen = a.tls_listen;
        settings.tls = Some(tollgate_gateway::settings::TlsSettings {
            cert_file: cert.clone(),
            key_file: key,
            client_ca_file: None,
            reload_interval: std::time::Duration::from_millis(500),
        });
        Some(cert)
    };
    let running = app::start(settings, app::Options::default()).await?;
    let (plain, tls_help) = match (&cert, running.api_plain_addr) {
        (Some(cert), Some(plain)) => (
            plain,
            DEMO_TLS_HELP
                .replace("{TLS_API}", &running.api_addr.to_string())
                .replace("{CERT}", &cert.display().to_string()),
        ),
        _ => (running.api_addr, String::new()),
    };
    println!(
        "{}",
        DEMO_HELP
            .replace("{API}", &plain.to_string())
            .replace("{ADMIN}", &running.admin_addr.to_string())
            .replace("{TLS}", &tls_help)
    );
    running.run_until(tollgate_ops::terminated()).await;
    stub_task.abort();
    Ok(())
}
