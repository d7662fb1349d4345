//! The `tollgate` binary: a thin shell over the library's composition root (`app::start`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tollgate::config::gateway::{self, LogFormat, Settings, Upstream};
use tollgate::config::{Source, stub as stub_config};
use tollgate::{app, stub};

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "QPS admission gateway for cloud AI recognition APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway (embedded defaults unless --config is given).
    Gateway {
        /// tollgate.toml; its [files] are relative to it.
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Runs the stub recognition backend.
    Stub {
        #[arg(long, default_value = "127.0.0.1:19000")]
        listen: SocketAddr,
        /// Stub settings (latency, outcome mix); see loadtest/stub-*.toml.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Fixed latency before each answer, overriding the config.
        #[arg(long)]
        latency_ms: Option<u64>,
    },
    /// Runs the stub backend and the gateway on embedded defaults, with the demo accounts.
    Demo {
        #[command(flatten)]
        overrides: Overrides,
        #[arg(long, default_value = "127.0.0.1:19000")]
        stub_listen: SocketAddr,
    },
    /// Validates a tollgate.toml and the files it names, then exits.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct Overrides {
    /// Overrides listen.api.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides listen.admin.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Overrides upstream.default.url.
    #[arg(long)]
    upstream: Option<String>,
}

fn load_settings(config: Option<PathBuf>, o: &Overrides) -> anyhow::Result<Settings> {
    let mut s = match config {
        Some(p) => gateway::load(&Source::File(p))?,
        None => Settings::embedded(),
    };
    if let Some(a) = o.listen {
        s.api_listen = a;
    }
    if let Some(a) = o.admin_listen {
        s.admin_listen = a;
    }
    if let Some(u) = &o.upstream {
        let uri: http::Uri = u.parse().with_context(|| format!("--upstream {u:?}"))?;
        let authority = uri
            .authority()
            .with_context(|| format!("--upstream {u:?} has no host"))?
            .to_string();
        s.upstreams.insert(
            "default".into(),
            Upstream {
                uri,
                authority,
                resign: None,
            },
        );
    }
    Ok(s)
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

async fn run_stub(
    listen: SocketAddr,
    config: Option<PathBuf>,
    latency_ms: Option<u64>,
) -> anyhow::Result<()> {
    let mut settings = match config {
        Some(p) => stub_config::load(&Source::File(p))?,
        None => stub_config::StubSettings::default(),
    };
    if let Some(ms) = latency_ms {
        settings.latency_ms = ms;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(%listen, "stub backend listening");
    stub::serve(listener, stub::Stub::new(settings), terminated()).await;
    Ok(())
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

Metrics: http://{ADMIN}/metrics   usage records: data/usage.jsonl   stop: Ctrl-C
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Gateway { config, overrides } => {
            let settings = load_settings(config, &overrides)?;
            init_logging(settings.log_format, &settings.log_level);
            let running = app::start(settings, app::Options::default()).await?;
            running.run_until(terminated()).await;
        }
        Command::Stub {
            listen,
            config,
            latency_ms,
        } => {
            init_logging(LogFormat::Text, "info");
            run_stub(listen, config, latency_ms).await?;
        }
        Command::Demo {
            overrides,
            stub_listen,
        } => {
            let mut settings = load_settings(None, &overrides)?;
            init_logging(settings.log_format, &settings.log_level);
            if overrides.upstream.is_none() {
                let uri: http::Uri = format!("http://{stub_listen}").parse()?;
                settings.upstreams.insert(
                    "default".into(),
                    Upstream {
                        authority: stub_listen.to_string(),
                        uri,
                        resign: None,
                    },
                );
            }
            let stub_listener = tokio::net::TcpListener::bind(stub_listen)
                .await
                .with_context(|| format!("cannot listen on {stub_listen} (stub)"))?;
            let stub_task = tokio::spawn(stub::serve(
                stub_listener,
                stub::Stub::new(stub_config::StubSettings::default()),
                std::future::pending(),
            ));
            let running = app::start(settings, app::Options::default()).await?;
            println!(
                "{}",
                DEMO_HELP
                    .replace("{API}", &running.api_addr.to_string())
                    .replace("{ADMIN}", &running.admin_addr.to_string())
            );
            running.run_until(terminated()).await;
            stub_task.abort();
        }
        Command::CheckConfig { config } => {
            let settings = load_settings(
                config,
                &Overrides {
                    listen: None,
                    admin_listen: None,
                    upstream: None,
                },
            )?;
            let loaded = tollgate::config::load(&settings.sources)?;
            println!(
                "ok: {} services, {} interfaces, {} groups, {} billing items, {} accounts, {} credentials",
                loaded.catalog.services.len(),
                loaded.catalog.interfaces.len(),
                loaded.catalog.groups.len(),
                loaded.catalog.billing_items.len(),
                loaded.entitlements.accounts.len(),
                loaded.credentials.by_secret_id.len(),
            );
        }
    }
    Ok(())
}
