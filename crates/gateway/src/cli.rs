//! The gateway's subcommands: `tollgate gateway` and `tollgate check-config`, and the
//! command-line overrides of `tollgate.toml` they (and `tollgate demo`) take.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use tollgate_core::config::{self, Source};

use crate::app;
use crate::settings::{self, LogFormat, MeteringSink, Settings, Upstream};

/// Command-line overrides of `tollgate.toml`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Overrides listen.api.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Overrides listen.admin.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Overrides upstream.default.url.
    #[arg(long)]
    pub upstream: Option<String>,
    /// Overrides metering.gateway_id (also $TOLLGATE_GATEWAY_ID): unique per instance, e.g.
    /// the StatefulSet pod name.
    #[arg(long, env = "TOLLGATE_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// Overrides entitlements.postgres_url (also $TOLLGATE_STORE: the store's connection
    /// string, from a secret).
    #[arg(long, env = "TOLLGATE_STORE", hide_env_values = true)]
    pub store: Option<String>,
}

/// `tollgate gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// tollgate.toml; its [files] are relative to it (embedded defaults without it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// `tollgate check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `tollgate.toml` (or the embedded one) with the overrides applied, validated.
pub fn load_settings(config: Option<PathBuf>, o: &Overrides) -> anyhow::Result<Settings> {
    let mut s = match config {
        Some(p) => settings::load(&Source::File(p))?,
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
            MeteringSink::Spool(sp) => {
                settings::check_gateway_id(id)
                    .map_err(|reason| anyhow::anyhow!("--gateway-id {id:?}: {reason}"))?;
                sp.ship.gateway_id = id.clone();
                if let settings::QuotaSettings::Redis(q) = &mut s.quota
                    && q.member_id_is_gateway_id
                {
                    q.fleet.member_id = id.clone();
                }
            }
            _ => {
                anyhow::bail!("--gateway-id applies to the spool sink (metering.sink = \"spool\")")
            }
        }
    }
    if let Some(url) = o.store.as_ref().filter(|u| !u.is_empty()) {
        match &mut s.entitlements {
            settings::EntitlementSource::Store(st) => {
                url.parse::<tollgate_store::tokio_postgres::Config>()
                    .map_err(|e| anyhow::anyhow!("--store: {e}"))?;
                st.url = url.clone();
            }
            // $TOLLGATE_STORE may be exported for `tollgate admin`; the files stay in force.
            settings::EntitlementSource::Files => eprintln!(
                "tollgate: --store / $TOLLGATE_STORE is ignored: [entitlements] source = \"files\""
            ),
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

/// Starts logging as `tollgate.toml` says.
pub fn init_logging(s: &Settings) {
    tollgate_ops::init_logging(s.log_format == LogFormat::Json, &s.log_level);
}

/// `tollgate gateway`: runs until SIGTERM or SIGINT, then drains.
pub async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let settings = load_settings(args.config, &args.overrides)?;
    init_logging(&settings);
    let running = app::start(settings, app::Options::default()).await?;
    running.run_until(tollgate_ops::terminated()).await;
    Ok(())
}

/// `tollgate check-config`: validates `tollgate.toml` and the files it names.
pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<()> {
    let settings = load_settings(args.config, &Overrides::default())?;
    let loaded = config::load(&settings.sources)?;
    println!(
        "ok: {} services, {} interfaces, {} groups, {} billing items, {} accounts, {} credentials",
        loaded.catalog.services.len(),
        loaded.catalog.interfaces.len(),
        loaded.catalog.groups.len(),
        loaded.catalog.billing_items.len(),
        loaded.entitlements.accounts.len(),
        loaded.credentials.by_secret_id.len(),
    );
    Ok(())
}
