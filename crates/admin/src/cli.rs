//! `tollgate admin …`: the entitlement service from the command line.
//!
//! `serve`, `migrate`, `token` and `import` talk to the store directly (they are how a store
//! is bootstrapped: there is no token before the first one is made); every other command goes
//! through the admin API, with the token in `TOLLGATE_ADMIN_TOKEN` or `--token`.

use std::net::SocketAddr;
use std::path::PathBuf;
use tollgate_store::tokio_postgres;

use http::Method;
use serde_json::{Value, json};

use crate::client::Client;

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The store connection of the bootstrap commands.
#[derive(Debug, clap::Args)]
pub struct StoreArgs {
    /// PostgreSQL connection string of the entitlement store.
    #[arg(long, env = "TOLLGATE_STORE")]
    pub store: String,
}

/// The admin API of the other commands.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The admin API's base URL.
    #[arg(
        long,
        env = "TOLLGATE_ADMIN_API",
        default_value = "http://127.0.0.1:19100"
    )]
    pub api: String,
    /// A bearer token (`tollgate admin token create`).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The write's idempotency key: give the same one to retry safely (a fresh one if absent).
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Runs the admin API (migrating the store first).
    Serve {
        #[arg(long, default_value = "127.0.0.1:19100")]
        listen: SocketAddr,
        #[command(flatten)]
        store: StoreArgs,
        /// Directory with catalog.toml and pricing.toml (the embedded copies if absent).
        #[arg(long)]
        config_dir: Option<PathBuf>,
    },
    /// Applies the store's migrations.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Creates or revokes admin API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Imports entitlements.toml, credentials.toml and billing.toml of a directory.
    Import {
        /// The directory (e.g. config/); its catalog.toml and pricing.toml validate the import.
        dir: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Creates an account (main, or sub-account with --owner).
    CreateAccount {
        #[arg(long)]
        uin: u64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner: Option<u64>,
        #[arg(long)]
        postpaid: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Shows an account's entitlements and the limit each group has now.
    Show {
        #[arg(long)]
        uin: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Activates a service for a main account.
    Activate {
        #[arg(long)]
        uin: u64,
        #[arg(long)]
        service: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Switches postpaid on or off.
    Postpaid {
        #[arg(long)]
        uin: u64,
        #[arg(long, action = clap::ArgAction::Set)]
        enabled: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Creates a credential (SecretId and SecretKey, shown once).
    CreateCredential {
        #[arg(long)]
        uin: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Rotates a credential: a new pair; the old one keeps working for the grace period.
    RotateCredential {
        #[arg(long)]
        secret_id: String,
        #[arg(long, default_value_t = 86_400)]
        grace_seconds: u64,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revokes a credential at once.
    RevokeCredential {
        #[arg(long)]
        secret_id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Buys a QPS overlay pack (checked against the class daily cap, priced).
    BuyOverlay {
        #[arg(long)]
        uin: u64,
        #[arg(long)]
        interface: String,
        #[arg(long)]
        qps: u32,
        #[arg(long)]
        start: chrono::NaiveDate,
        #[arg(long)]
        end: chrono::NaiveDate,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Buys QPS billing mode or concurrency tasks for a group.
    BuyMode {
        #[arg(long)]
        uin: u64,
        #[arg(long)]
        group: String,
        /// qps or concurrency
        #[arg(long)]
        mode: String,
        #[arg(long)]
        quantity: u32,
        #[arg(long)]
        start: chrono::NaiveDate,
        #[arg(long, conflicts_with = "months")]
        end: Option<chrono::NaiveDate>,
        #[arg(long)]
        months: Option<u32>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Buys a prepaid pack.
    BuyPack {
        #[arg(long)]
        uin: u64,
        #[arg(long)]
        item: String,
        #[arg(long)]
        size: u64,
        /// What was paid, when not the list price.
        #[arg(long)]
        price: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Refunds a wholly unused prepaid pack within 7 days of its delivery.
    Refund {
        #[arg(long)]
        uin: u64,
        #[arg(long)]
        pack: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Tops up a main account's balance (CNY); back at zero or above, a stop is lifted.
    TopUp {
        #[arg(long)]
        uin: u64,
        /// e.g. 500 or 120.50
        #[arg(long)]
        amount: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Sets shadow mode: --all, or --group for each group tried.
    Shadow {
        #[arg(long)]
        all: bool,
        #[arg(long = "group")]
        groups: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Shows the latest audit entries.
    Audit {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Creates a token and prints it (only its hash is stored).
    Create {
        #[arg(long)]
        name: String,
        /// read or write (write includes read).
        #[arg(long, default_value = "read")]
        scope: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revokes a token by its id (the part after `tgt_`, before the next `_`).
    Revoke {
        #[arg(long)]
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

async fn store(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    tollgate_store::connect(url, std::time::Duration::from_secs(10)).await
}

async fn send(
    api: &ApiArgs,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<()> {
    let client = Client::new(&api.api, &api.token);
    let answer = match body {
        None => client.get(path).await?,
        Some(b) => {
            let key = api
                .idempotency_key
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            client.write(method, path, &b, &key).await?
        }
    };
    let replayed = answer.replayed;
    let body = answer.ok()?;
    if replayed {
        eprintln!("(replayed: this idempotency key was used before; nothing new was written)");
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(())
}

/// Runs `tollgate admin …`.
pub async fn run(a: AdminArgs) -> anyhow::Result<()> {
    use AdminCommand as C;
    match a.command {
        C::Serve {
            listen,
            store,
            config_dir,
        } => {
            tollgate_ops::init_logging(false, "info");
            let running = crate::start(
                crate::ServiceConfig {
                    listen,
                    store: store.store,
                    config_dir,
                },
                tollgate_core::clock::SystemClock::shared(),
            )
            .await?;
            tollgate_ops::terminated().await;
            running.shutdown().await;
            Ok(())
        }
        C::Migrate { store: s } => {
            let mut c = store(&s.store).await?;
            tollgate_store::schema::migrate(&mut c).await?;
            println!("the entitlement store is migrated");
            Ok(())
        }
        C::Token { command } => match command {
            TokenCommand::Create {
                name,
                scope,
                store: s,
            } => {
                let scope = tollgate_store::tokens::Scope::parse(&scope)
                    .ok_or_else(|| anyhow::anyhow!("--scope: {scope:?} is not read or write"))?;
                let mut c = store(&s.store).await?;
                tollgate_store::schema::migrate(&mut c).await?;
                let token = tollgate_store::tokens::create(&c, &name, &[scope]).await?;
                println!("{token}");
                Ok(())
            }
            TokenCommand::Revoke { id, store: s } => {
                let c = store(&s.store).await?;
                if !tollgate_store::tokens::revoke(&c, &id).await? {
                    anyhow::bail!("no live token has id {id}");
                }
                println!("token {id} revoked");
                Ok(())
            }
        },
        C::Import { dir, store: s } => {
            let (catalog, book) = crate::load_pricing(&Some(dir.clone()))?;
            let mut c = store(&s.store).await?;
            tollgate_store::schema::migrate(&mut c).await?;
            let done =
                crate::import::import(&mut c, &dir, &catalog, &book, chrono::Utc::now()).await?;
            println!("{}", serde_json::to_string_pretty(&done)?);
            Ok(())
        }
        C::CreateAccount {
            uin,
            name,
            owner,
            postpaid,
            api,
        } => {
            send(
                &api,
                Method::POST,
                "/v1/accounts",
                Some(json!({"uin": uin, "name": name, "owner": owner, "postpaid": postpaid})),
            )
            .await
        }
        C::Show { uin, api } => send(&api, Method::GET, &format!("/v1/accounts/{uin}"), None).await,
        C::Activate { uin, service, api } => {
            send(
                &api,
                Method::POST,
                &format!("/v1/accounts/{uin}/services"),
                Some(json!({ "service": service })),
            )
            .await
        }
        C::Postpaid { uin, enabled, api } => {
            send(
                &api,
                Method::PUT,
                &format!("/v1/accounts/{uin}/postpaid"),
                Some(json!({ "enabled": enabled })),
            )
            .await
        }
        C::CreateCredential { uin, api } => {
            send(
                &api,
                Method::POST,
                &format!("/v1/accounts/{uin}/credentials"),
                Some(json!({})),
            )
            .await
        }
        C::RotateCredential {
            secret_id,
            grace_seconds,
            api,
        } => {
            send(
                &api,
                Method::POST,
                &format!("/v1/credentials/{secret_id}/rotate"),
                Some(json!({ "grace_seconds": grace_seconds })),
            )
            .await
        }
        C::RevokeCredential { secret_id, api } => {
            send(
                &api,
                Method::POST,
                &format!("/v1/credentials/{secret_id}/revoke"),
                Some(json!({})),
            )
            .await
        }
        C::BuyOverlay {
            uin,
            interface,
            qps,
            start,
            end,
            api,
        } => {
            send(
                &api,
                Method::POST,
                &format!("/v1/accounts/{uin}/overlays"),
                Some(json!({"interface": interface, "qps": qps, "start": start, "end": end})),
            )
            .await
        }
        C::BuyMode {
            uin,
            group,
            mode,
            quantity,
            start,
            end,
            months,
            api,
        } => {
            send(
                &api,
                Method::POST,
                &format!("/v1/accounts/{uin}/modes"),
                Some(json!({"group": group, "mode": mode, "quantity": quantity,
                            "start": start, "end": end, "months": months})),
            )
            .await
        }
        C::BuyPack {
            uin,
            item,
            size,
            price,
            api,
        } => {
            send(
                &api,
                Method::POST,
                &format!("/v1/accounts/{uin}/packs"),
                Some(json!({"item": item, "size": size, "price": price})),
            )
            .await
        }
        C::Refund { uin, pack, api } => {
            send(
                &api,
                Method::POST,
                &format!("/v1/accounts/{uin}/packs/{pack}/refund"),
                Some(json!({})),
            )
            .await
        }
        C::TopUp { uin, amount, api } => {
            send(
                &api,
                Method::POST,
                &format!("/v1/accounts/{uin}/topups"),
                Some(json!({ "amount": amount })),
            )
            .await
        }
        C::Shadow { all, groups, api } => {
            send(
                &api,
                Method::PUT,
                "/v1/shadow",
                Some(json!({ "all": all, "groups": groups })),
            )
            .await
        }
        C::Audit { limit, api } => {
            send(&api, Method::GET, &format!("/v1/audit?limit={limit}"), None).await
        }
    }
}
