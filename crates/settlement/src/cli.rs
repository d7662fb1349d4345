//! Settlement's subcommands: `tollgate statement`, `tollgate consumer`, `tollgate quote`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tollgate_core::catalog::Catalog;
use tollgate_core::config::{self as core_config, EMBEDDED_CATALOG, Source};

use crate::prices::PriceBook;
use crate::quote::{self, Term};
use crate::{EMBEDDED_BILLING, EMBEDDED_PRICING, config};

/// `tollgate statement`: an owner's month as an itemised statement.
#[derive(Debug, clap::Args)]
pub struct StatementArgs {
    /// The main account (owner) UIN.
    #[arg(long)]
    pub owner: u64,
    /// The Beijing-time month, YYYY-MM.
    #[arg(long)]
    pub month: String,
    /// Read usage from this PostgreSQL ledger (the settlement consumer's).
    #[arg(long, conflicts_with_all = ["ledger_dir", "usage"])]
    pub postgres: Option<String>,
    /// Read usage from sealed batches in this directory (the embedded default's ledger).
    #[arg(long, conflicts_with = "usage")]
    pub ledger_dir: Option<PathBuf>,
    /// Read usage from JSON-lines records (metering.sink = "file").
    #[arg(long)]
    pub usage: Option<PathBuf>,
    /// Directory with catalog.toml, pricing.toml and billing.toml (embedded copies if absent).
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Read activations, packs and contract prices from this entitlement store (PostgreSQL)
    /// instead of billing.toml.
    #[arg(long, env = "TOLLGATE_STORE")]
    pub store: Option<String>,
    /// Image-search library types learned by a gateway with file entitlements (its
    /// `image_search.libraries_file`); with --store they come from the store.
    #[arg(long, conflicts_with = "store")]
    pub libraries: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: StatementFormat,
}

/// `tollgate consumer`: applies sealed batches to the PostgreSQL usage ledger, exactly once,
/// and reconciles.
#[derive(Debug, clap::Args)]
pub struct ConsumerArgs {
    /// PostgreSQL connection string, e.g. "host=127.0.0.1 user=postgres dbname=tollgate".
    #[arg(long, env = "TOLLGATE_POSTGRES")]
    pub postgres: String,
    /// Read batches from JetStream at this URL.
    #[arg(long, conflicts_with = "batch_dir")]
    pub nats_url: Option<String>,
    #[arg(long, default_value = tollgate_usage::stream::DEFAULT_STREAM)]
    pub nats_stream: String,
    #[arg(long, default_value = "settlement")]
    pub durable: String,
    /// Read batches from the embedded default's local directory instead.
    #[arg(long)]
    pub batch_dir: Option<PathBuf>,
    /// /metrics and /healthz.
    #[arg(long, default_value = "127.0.0.1:19091")]
    pub admin_listen: SocketAddr,
    /// A totals report is checked once this old.
    #[arg(long, default_value_t = 60)]
    pub reconcile_grace_seconds: u64,
    /// Directory with catalog.toml and pricing.toml, for live balances (embedded copies if
    /// absent).
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Do not keep live balances nor report used-up packs to the gateways (they are kept
    /// when the entitlement store shares the ledger's database).
    #[arg(long)]
    pub no_live_balances: bool,
    /// Pack notices are also POSTed (JSON) to this URL (http://…), besides NATS
    /// `tollgate.notices.<owner>`.
    #[arg(long)]
    pub notify_webhook: Option<String>,
}

/// `tollgate settle`: settles a month: each owner's postpaid bill deducted from its balance
/// in the entitlement store; a negative balance stops service 24 hours later.
#[derive(Debug, clap::Args)]
pub struct SettleArgs {
    /// The Beijing-time month, YYYY-MM (over).
    #[arg(long)]
    pub month: String,
    /// The PostgreSQL database of the usage ledger and the entitlement store.
    #[arg(long, env = "TOLLGATE_POSTGRES")]
    pub postgres: String,
    /// Directory with catalog.toml and pricing.toml (embedded copies if absent).
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Settle even though the ledger lacks batches the gateways report sealed.
    #[arg(long)]
    pub force: bool,
}

/// `tollgate settle`.
pub async fn settle(a: SettleArgs) -> anyhow::Result<()> {
    let month: crate::Month = a
        .month
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--month: {e}"))?;
    let (catalog, book) = load_pricing(&a.config_dir)?;
    // The ledger's tables (and the store's, which `tollgate admin migrate` makes), and no
    // batch the gateways sealed missing from it.
    let ledger =
        crate::consumer::Ledger::connect(&a.postgres, std::time::Duration::from_secs(10)).await?;
    let (gap_batches, gap_units) = ledger.reconcile(std::time::Duration::from_secs(60)).await?;
    if (gap_batches, gap_units) != (0, 0) && !a.force {
        anyhow::bail!(
            "the ledger lacks {gap_batches} batches ({gap_units} units) the gateways sealed: settle once the consumer has caught up (or --force)"
        );
    }
    let mut client =
        tollgate_store::connect(&a.postgres, std::time::Duration::from_secs(10)).await?;
    let settled =
        crate::arrears::settle_month(&mut client, &catalog, &book, month, chrono::Utc::now())
            .await?;
    println!("{}", serde_json::to_string_pretty(&settled)?);
    for (owner, units) in ledger.unresolved_units().await? {
        eprintln!(
            "warning: owner {owner}: {units} image-search units went into libraries of unknown type and were rated as same/product search (they are re-rated once the type is known)"
        );
    }
    Ok(())
}

/// `tollgate quote`: the price of a purchase.
#[derive(Debug, clap::Args)]
pub struct QuoteArgs {
    #[command(subcommand)]
    pub what: QuoteWhat,
    /// Directory with catalog.toml, pricing.toml and entitlements.toml (embedded copies if absent).
    #[arg(long, global = true)]
    pub config_dir: Option<PathBuf>,
    /// Read the buyer's held overlay packs from this entitlement store instead of
    /// entitlements.toml.
    #[arg(long, global = true, env = "TOLLGATE_STORE")]
    pub store: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum StatementFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct TermArgs {
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

#[derive(Debug, clap::Subcommand)]
pub enum QuoteWhat {
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
pub fn config_source(dir: &Option<PathBuf>, name: &'static str, embedded: &'static str) -> Source {
    match dir {
        Some(d) => Source::File(d.join(name)),
        None => Source::Embedded {
            name,
            text: embedded,
        },
    }
}

/// The catalog and price book of `dir` (the embedded copies without one).
pub fn load_pricing(dir: &Option<PathBuf>) -> anyhow::Result<(Catalog, PriceBook)> {
    let src = config_source(dir, "catalog.toml", EMBEDDED_CATALOG);
    let cat = core_config::catalog::load(&src, &src.read()?)?;
    let src = config_source(dir, "pricing.toml", EMBEDDED_PRICING);
    let book = config::load_prices(&src, &src.read()?, &cat)?;
    Ok((cat, book))
}

/// Where a statement reads usage from.
enum UsageSource {
    Postgres(String),
    LedgerDir(PathBuf),
    Records(PathBuf),
}

async fn print_statement(
    owner: u64,
    month: &str,
    source: UsageSource,
    dir: &Option<PathBuf>,
    store: Option<&str>,
    libraries: Option<&std::path::Path>,
    format: StatementFormat,
) -> anyhow::Result<()> {
    use crate::{Month, OwnerBilling, ledger, rating, statement};
    let month: Month = month
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--month: {e}"))?;
    let (catalog, book) = load_pricing(dir)?;
    let billing = match store {
        Some(url) => crate::store::load_owner_billing(url, owner, &catalog).await?,
        None => {
            let src = config_source(dir, "billing.toml", EMBEDDED_BILLING);
            let owners = config::load_billing(&src, &src.read()?, &catalog, &book)?;
            owners.get(&owner).cloned().unwrap_or(OwnerBilling {
                uin: owner,
                ..Default::default()
            })
        }
    };
    let mut billing = billing;
    if let Some(path) = libraries {
        billing.libraries = crate::store::libraries_file(path, owner)?;
    }
    let counts = match source {
        UsageSource::Records(path) => {
            let records = tollgate_usage::jsonl::read_all(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            ledger::hourly_counts(&catalog, owner, &records)?
        }
        UsageSource::LedgerDir(path) => {
            let batches = tollgate_usage::ledger_dir::read_batch_dir(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            ledger::from_batches(&catalog, owner, &batches)?
        }
        UsageSource::Postgres(url) => {
            let pg =
                crate::consumer::Ledger::connect(&url, std::time::Duration::from_secs(5)).await?;
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
    metrics: std::sync::Arc<crate::consumer::ConsumerMetrics>,
) {
    tollgate_ops::http::serve(
        listener,
        "consumer-admin",
        move |req: http::Request<hyper::body::Incoming>| {
            let body = match req.uri().path() {
                "/metrics" => metrics.render(),
                _ => "ok\n".to_owned(),
            };
            async move {
                tollgate_ops::http::text(http::StatusCode::OK, body, "text/plain; version=0.0.4")
            }
        },
        std::future::pending(),
    )
    .await;
}

async fn print_quote(
    what: QuoteWhat,
    dir: &Option<PathBuf>,
    store: Option<&str>,
) -> anyhow::Result<()> {
    let (catalog, book) = load_pricing(dir)?;
    let q = match what {
        QuoteWhat::Overlay {
            interface,
            qps,
            uin,
            term,
        } => {
            let mut held = Vec::new();
            if let (Some(uin), Some(url)) = (uin, store) {
                let mut client =
                    tollgate_store::connect(url, std::time::Duration::from_secs(10)).await?;
                let owner: i64 = client
                    .query_opt(
                        "SELECT coalesce(owner_uin, uin) FROM entitlements.accounts WHERE uin = $1",
                        &[&(uin as i64)],
                    )
                    .await?
                    .with_context(|| format!("{uin} is not an account of the store"))?
                    .get(0);
                let image =
                    tollgate_store::read(&mut client, tollgate_store::Scope::owner(owner as u64))
                        .await?;
                let (ents, _) = image
                    .build(&catalog)
                    .map_err(|e| anyhow::anyhow!("the store: {}: {}", e.key, e.reason))?;
                if let (Some(a), Some(f)) =
                    (ents.account(uin), catalog.interface_by_name(&interface))
                {
                    held = a.overlay_packs.get(&f.id).cloned().unwrap_or_default();
                }
            } else if let Some(uin) = uin {
                let src =
                    config_source(dir, "entitlements.toml", core_config::EMBEDDED_ENTITLEMENTS);
                let ents =
                    core_config::entitlements::load_entitlements(&src, &src.read()?, &catalog)?;
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
            let now = chrono::Utc::now().with_timezone(&tollgate_core::clock::beijing());
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

/// `tollgate statement`.
pub async fn statement(a: StatementArgs) -> anyhow::Result<()> {
    let source = match (a.postgres, a.ledger_dir, a.usage) {
        (Some(url), _, _) => UsageSource::Postgres(url),
        (_, Some(d), _) => UsageSource::LedgerDir(d),
        (_, _, Some(f)) => UsageSource::Records(f),
        _ => UsageSource::LedgerDir(PathBuf::from("data/batches")),
    };
    print_statement(
        a.owner,
        &a.month,
        source,
        &a.config_dir,
        a.store.as_deref(),
        a.libraries.as_deref(),
        a.format,
    )
    .await
}

/// `tollgate quote`.
pub async fn quote(a: QuoteArgs) -> anyhow::Result<()> {
    print_quote(a.what, &a.config_dir, a.store.as_deref()).await
}

/// `tollgate consumer`: runs until SIGTERM or SIGINT.
pub async fn consumer(a: ConsumerArgs) -> anyhow::Result<()> {
    use crate::consumer;
    tollgate_ops::init_logging(false, "info");
    let source = match (a.nats_url, a.batch_dir) {
        (Some(url), _) => consumer::Source::Nats {
            url,
            stream: a.nats_stream,
            durable: a.durable,
        },
        (None, Some(d)) => consumer::Source::Dir(d),
        (None, None) => consumer::Source::Dir(PathBuf::from("data/batches")),
    };
    let metrics = std::sync::Arc::new(consumer::ConsumerMetrics::new());
    let live = if a.no_live_balances {
        None
    } else {
        let (catalog, book) = load_pricing(&a.config_dir)?;
        Some(std::sync::Arc::new(crate::live::Live::new(
            catalog,
            book,
            &metrics.registry,
            a.notify_webhook.clone(),
        )))
    };
    let listener = tokio::net::TcpListener::bind(a.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", a.admin_listen))?;
    tokio::spawn(serve_consumer_metrics(
        listener,
        std::sync::Arc::clone(&metrics),
    ));
    consumer::run(
        consumer::ConsumerConfig {
            postgres: a.postgres,
            source,
            reconcile_grace: std::time::Duration::from_secs(a.reconcile_grace_seconds),
            reconcile_interval: std::time::Duration::from_secs(5),
            crash_after_commit: crash_after_commit(),
            live,
        },
        metrics,
        tollgate_ops::terminated(),
    )
    .await
}

/// The crash tests' failpoint (`TOLLGATE_FAILPOINT_CRASH_AFTER_COMMIT`): only in builds with
/// the `failpoints` feature, so no environment variable can abort a production consumer.
#[cfg(feature = "failpoints")]
fn crash_after_commit() -> Option<u64> {
    std::env::var("TOLLGATE_FAILPOINT_CRASH_AFTER_COMMIT")
        .ok()
        .and_then(|v| v.parse().ok())
}

#[cfg(not(feature = "failpoints"))]
fn crash_after_commit() -> Option<u64> {
    None
}
