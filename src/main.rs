//! The `tollgate` binary: a thin shell over the library's composition root (`app::start`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

// mimalloc: glibc's malloc/free were ~9% of the gateway's CPU under load (per-call request,
// header and record allocations); the library itself is allocator-agnostic.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use clap::{Parser, Subcommand};
use tollgate::catalog::Catalog;
use tollgate::config::gateway::{self, LogFormat, Settings, Upstream};
use tollgate::config::{Source, stub as stub_config};
use tollgate::settlement::prices::PriceBook;
use tollgate::settlement::quote::{self, Term};
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
    /// Prints an owner's month as an itemised statement.
    Statement {
        /// The main account (owner) UIN.
        #[arg(long)]
        owner: u64,
        /// The Beijing-time month, YYYY-MM.
        #[arg(long)]
        month: String,
        /// Read usage from this PostgreSQL ledger (the settlement consumer's).
        #[arg(long, conflicts_with_all = ["ledger_dir", "usage"])]
        postgres: Option<String>,
        /// Read usage from sealed batches in this directory (the embedded default's ledger).
        #[arg(long, conflicts_with = "usage")]
        ledger_dir: Option<PathBuf>,
        /// Read usage from JSON-lines records (metering.sink = "file").
        #[arg(long)]
        usage: Option<PathBuf>,
        /// Directory with catalog.toml, pricing.toml and billing.toml (embedded copies if absent).
        #[arg(long)]
        config_dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: StatementFormat,
    },
    /// Applies sealed batches to the PostgreSQL usage ledger, exactly once, and reconciles.
    Consumer {
        /// PostgreSQL connection string, e.g. "host=127.0.0.1 user=postgres dbname=tollgate".
        #[arg(long, env = "TOLLGATE_POSTGRES")]
        postgres: String,
        /// Read batches from JetStream at this URL.
        #[arg(long, conflicts_with = "batch_dir")]
        nats_url: Option<String>,
        #[arg(long, default_value = "TOLLGATE_USAGE")]
        nats_stream: String,
        #[arg(long, default_value = "settlement")]
        durable: String,
        /// Read batches from the embedded default's local directory instead.
        #[arg(long)]
        batch_dir: Option<PathBuf>,
        /// /metrics and /healthz.
        #[arg(long, default_value = "127.0.0.1:19091")]
        admin_listen: SocketAddr,
        /// A totals report is checked once this old.
        #[arg(long, default_value_t = 60)]
        reconcile_grace_seconds: u64,
    },
    /// Prices a purchase: a QPS overlay pack, QPS mode, concurrency tasks or prepaid packs.
    Quote {
        #[command(subcommand)]
        what: QuoteWhat,
        /// Directory with catalog.toml, pricing.toml and entitlements.toml (embedded copies if absent).
        #[arg(long, global = true)]
        config_dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StatementFormat {
    Table,
    Json,
    Csv,
}

#[derive(clap::Args)]
struct TermArgs {
    /// First day (Beijing time), YYYY-MM-DD.
    #[arg(long)]
    start: chrono::NaiveDate,
    /// Last day, inclusive (by the day).
    #[arg(long, conflicts_with = "months")]
    end: Option<chrono::NaiveDate>,
    /// Number of months (by the month).
    #[arg(long)]
    months: Option<u32>,
}

impl TermArgs {
    fn term(&self) -> anyhow::Result<Term> {
        match (self.end, self.months) {
            (Some(end), None) => Ok(Term::Days {
                start: self.start,
                end,
            }),
            (None, Some(months)) => Ok(Term::Months {
                start: self.start,
                months,
            }),
            _ => anyhow::bail!("give --end (by the day) or --months (by the month)"),
        }
    }
}

#[derive(Subcommand)]
enum QuoteWhat {
    /// A QPS overlay pack for an OCR interface, checked against the class cap.
    Overlay {
        /// e.g. ocr.IDCardOCR
        #[arg(long)]
        interface: String,
        #[arg(long)]
        qps: u32,
        /// The UIN buying it: its packs in entitlements.toml count against the cap.
        #[arg(long)]
        uin: Option<u64>,
        #[command(flatten)]
        term: TermArgs,
    },
    /// QPS billing mode for a group (facefusion.fuse, bda.segment).
    Qps {
        #[arg(long)]
        group: String,
        #[arg(long)]
        qps: u32,
        #[command(flatten)]
        term: TermArgs,
    },
    /// Concurrency tasks for a group (facefusion.fuse_ultra), by the month.
    Concurrency {
        #[arg(long)]
        group: String,
        #[arg(long)]
        tasks: u32,
        #[command(flatten)]
        term: TermArgs,
    },
    /// Prepaid packs of a billing item.
    Pack {
        #[arg(long)]
        item: String,
        #[arg(long)]
        size: u64,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
}

/// A config file from `dir`, or the embedded copy.
fn config_source(dir: &Option<PathBuf>, name: &'static str, embedded: &'static str) -> Source {
    match dir {
        Some(d) => Source::File(d.join(name)),
        None => Source::Embedded {
            name,
            text: embedded,
        },
    }
}

fn load_pricing(dir: &Option<PathBuf>) -> anyhow::Result<(Catalog, PriceBook)> {
    use tollgate::config::{EMBEDDED_CATALOG, EMBEDDED_PRICING, catalog, pricing};
    let src = config_source(dir, "catalog.toml", EMBEDDED_CATALOG);
    let cat = catalog::load(&src, &src.read()?)?;
    let src = config_source(dir, "pricing.toml", EMBEDDED_PRICING);
    let book = pricing::load_prices(&src, &src.read()?, &cat)?;
    Ok((cat, book))
}

/// Where a statement reads usage from.
enum UsageSource {
    Postgres(String),
    LedgerDir(PathBuf),
    Records(PathBuf),
}

async fn run_statement(
    owner: u64,
    month: &str,
    source: UsageSource,
    dir: &Option<PathBuf>,
    format: StatementFormat,
) -> anyhow::Result<()> {
    use tollgate::settlement::{Month, OwnerBilling, ledger, rating, statement};
    let month: Month = month
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--month: {e}"))?;
    let (catalog, book) = load_pricing(dir)?;
    let src = config_source(dir, "billing.toml", tollgate::config::EMBEDDED_BILLING);
    let owners = tollgate::config::pricing::load_billing(&src, &src.read()?, &catalog, &book)?;
    let billing = owners.get(&owner).cloned().unwrap_or(OwnerBilling {
        uin: owner,
        ..Default::default()
    });
    let counts = match source {
        UsageSource::Records(path) => {
            let records = tollgate::metering::file::FileSink::read_all(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            ledger::hourly_counts(&catalog, owner, &records)?
        }
        UsageSource::LedgerDir(path) => {
            let batches = tollgate::metering::batch::read_batch_dir(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            ledger::from_batches(&catalog, owner, &batches)?
        }
        UsageSource::Postgres(url) => {
            let pg = tollgate::settlement::consumer::Ledger::connect(
                &url,
                std::time::Duration::from_secs(5),
            )
            .await?;
            pg.usage(&catalog, owner).await?
        }
    };
    let s = rating::rate_month(&catalog, &book, &billing, &counts, month)?;
    let text = match format {
        StatementFormat::Table => statement::to_table(&s),
        StatementFormat::Json => statement::to_json(&s),
        StatementFormat::Csv => statement::to_csv(&s),
    };
    print!("{text}");
    Ok(())
}

/// `/metrics` and `/healthz` of the consumer.
async fn serve_consumer_metrics(
    listener: tokio::net::TcpListener,
    metrics: std::sync::Arc<tollgate::settlement::consumer::ConsumerMetrics>,
) {
    tollgate::http_server::serve(
        listener,
        "consumer-admin",
        move |req: http::Request<hyper::body::Incoming>| {
            let body = match req.uri().path() {
                "/metrics" => metrics.render(),
                _ => "ok\n".to_owned(),
            };
            async move {
                tollgate::http_server::text(http::StatusCode::OK, body, "text/plain; version=0.0.4")
            }
        },
        std::future::pending(),
    )
    .await;
}

fn run_quote(what: QuoteWhat, dir: &Option<PathBuf>) -> anyhow::Result<()> {
    let (catalog, book) = load_pricing(dir)?;
    let q = match what {
        QuoteWhat::Overlay {
            interface,
            qps,
            uin,
            term,
        } => {
            let mut held = Vec::new();
            if let Some(uin) = uin {
                let src = config_source(
                    dir,
                    "entitlements.toml",
                    tollgate::config::EMBEDDED_ENTITLEMENTS,
                );
                let ents = tollgate::config::entitlements::load_entitlements(
                    &src,
                    &src.read()?,
                    &catalog,
                )?;
                let account = ents
                    .account(uin)
                    .with_context(|| format!("{uin} is not an account of {}", src.name()))?;
                if let Some(f) = catalog.interface_by_name(&interface) {
                    held = account
                        .overlay_packs
                        .get(&f.id)
                        .cloned()
                        .unwrap_or_default();
                }
            }
            let now = chrono::Utc::now().with_timezone(&tollgate::clock::beijing());
            quote::overlay(&book, &catalog, &interface, qps, term.term()?, now, &held)?
        }
        QuoteWhat::Qps { group, qps, term } => {
            quote::qps_mode(&book, &catalog, &group, qps, term.term()?)?
        }
        QuoteWhat::Concurrency { group, tasks, term } => {
            quote::concurrency(&book, &catalog, &group, tasks, term.term()?)?
        }
        QuoteWhat::Pack { item, size, count } => {
            quote::prepaid(&book, &catalog, &item, size, count, None)?
        }
    };
    println!(
        "{}: {} × {} {}(s) × {} = {} CNY",
        q.what, q.quantity, q.periods, q.period, q.unit_price, q.amount
    );
    Ok(())
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
    /// Overrides metering.gateway_id (also $TOLLGATE_GATEWAY_ID): unique per instance, e.g.
    /// the StatefulSet pod name.
    #[arg(long, env = "TOLLGATE_GATEWAY_ID")]
    gateway_id: Option<String>,
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
    if let Some(id) = &o.gateway_id {
        match &mut s.metering {
            gateway::MeteringSink::Spool(sp) => {
                if id.is_empty()
                    || !id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    anyhow::bail!("--gateway-id {id:?}: letters, digits, '-' or '_' only");
                }
                sp.ship.gateway_id = id.clone();
            }
            _ => {
                anyhow::bail!("--gateway-id applies to the spool sink (metering.sink = \"spool\")")
            }
        }
    }
    if let Some(u) = &o.upstream {
        let uri: http::Uri = u.parse().with_context(|| format!("--upstream {u:?}"))?;
        let upstream =
            Upstream::new(uri, None).with_context(|| format!("--upstream {u:?} has no host"))?;
        s.upstreams.insert("default".into(), upstream);
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

Metrics: http://{ADMIN}/metrics   usage: spooled in data/spool/, sealed into data/batches/   stop: Ctrl-C
"#;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on (file, key, reason for config errors); no backtrace.
            eprintln!("tollgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
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
                let upstream = Upstream::new(uri, None)
                    .with_context(|| format!("the stub address {stub_listen} has no host"))?;
                settings.upstreams.insert("default".into(), upstream);
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
        Command::Statement {
            owner,
            month,
            postgres,
            ledger_dir,
            usage,
            config_dir,
            format,
        } => {
            let source = match (postgres, ledger_dir, usage) {
                (Some(url), _, _) => UsageSource::Postgres(url),
                (_, Some(d), _) => UsageSource::LedgerDir(d),
                (_, _, Some(f)) => UsageSource::Records(f),
                _ => UsageSource::LedgerDir(PathBuf::from("data/batches")),
            };
            run_statement(owner, &month, source, &config_dir, format).await?
        }
        Command::Consumer {
            postgres,
            nats_url,
            nats_stream,
            durable,
            batch_dir,
            admin_listen,
            reconcile_grace_seconds,
        } => {
            init_logging(LogFormat::Text, "info");
            use tollgate::settlement::consumer;
            let source = match (nats_url, batch_dir) {
                (Some(url), _) => consumer::Source::Nats {
                    url,
                    stream: nats_stream,
                    durable,
                },
                (None, Some(d)) => consumer::Source::Dir(d),
                (None, None) => consumer::Source::Dir(PathBuf::from("data/batches")),
            };
            let crash_after_commit = std::env::var("TOLLGATE_FAILPOINT_CRASH_AFTER_COMMIT")
                .ok()
                .and_then(|v| v.parse().ok());
            let metrics = std::sync::Arc::new(consumer::ConsumerMetrics::new());
            let listener = tokio::net::TcpListener::bind(admin_listen)
                .await
                .with_context(|| format!("cannot listen on {admin_listen}"))?;
            tokio::spawn(serve_consumer_metrics(
                listener,
                std::sync::Arc::clone(&metrics),
            ));
            consumer::run(
                consumer::ConsumerConfig {
                    postgres,
                    source,
                    reconcile_grace: std::time::Duration::from_secs(reconcile_grace_seconds),
                    reconcile_interval: std::time::Duration::from_secs(5),
                    crash_after_commit,
                },
                metrics,
                terminated(),
            )
            .await?
        }
        Command::Quote { what, config_dir } => run_quote(what, &config_dir)?,
        Command::CheckConfig { config } => {
            let settings = load_settings(
                config,
                &Overrides {
                    listen: None,
                    admin_listen: None,
                    upstream: None,
                    gateway_id: None,
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
