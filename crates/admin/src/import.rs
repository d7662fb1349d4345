//! The TOML files as a seed of the store (`tollgate admin import config/`), and the usage
//! check a refund needs.
//!
//! An import is one write: validated whole first (the files' own validator), then applied as
//! inserts of what the store lacks, each audited under the actor `import <dir>`. An account
//! the store already holds keeps its state (postpaid, arrears, exhausted, balance, stop): they
//! are the admin API's and settlement's from then on; only its name follows the file.
//! Importing the same files twice changes nothing the second time.

use std::path::Path;
use tollgate_store::tokio_postgres;

use chrono::{DateTime, Utc};

use tollgate_core::catalog::Catalog;
use tollgate_core::config::entitlements::{
    build_credentials, build_entitlements, parse_credentials, parse_entitlements,
};
use tollgate_core::config::{ConfigError, Source};
use tollgate_settlement::prices::PriceBook;
use tollgate_store::image::{AccountRow, Image, PackRow};
use tollgate_store::read::{Scope, read_in};
use tollgate_store::write::Write;

/// What an import changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Imported {
    pub accounts: usize,
    pub activations: usize,
    pub credentials: usize,
    pub modes: usize,
    pub overlays: usize,
    pub packs: usize,
    pub contract_prices: usize,
    pub shadow: bool,
    /// The store version of the import (`None`: nothing changed, nothing written).
    pub version: Option<i64>,
}

fn read(dir: &Path, name: &str) -> Result<Option<(Source, String)>, ConfigError> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let source = Source::File(path);
    let text = source.read()?;
    Ok(Some((source, text)))
}

/// Imports `entitlements.toml`, `credentials.toml` and (if present) `billing.toml` of `dir`.
pub async fn import(
    client: &mut tokio_postgres::Client,
    dir: &Path,
    catalog: &Catalog,
    book: &PriceBook,
    now: DateTime<Utc>,
) -> anyhow::Result<Imported> {
    let (ent_src, ent_text) = read(dir, "entitlements.toml")?
        .ok_or_else(|| anyhow::anyhow!("{}: no entitlements.toml", dir.display()))?;
    let (accounts, shadow) = parse_entitlements(&ent_src, &ent_text)?;
    let ents =
        build_entitlements(&accounts, &shadow, catalog).map_err(|e| e.in_source(&ent_src))?;
    let creds = match read(dir, "credentials.toml")? {
        Some((src, text)) => {
            let docs = parse_credentials(&src, &text)?;
            build_credentials(&docs, &ents).map_err(|e| e.in_source(&src))?;
            docs
        }
        None => vec![],
    };
    let billing = match read(dir, "billing.toml")? {
        Some((src, text)) => tollgate_settlement::config::load_billing(&src, &text, catalog, book)?,
        None => Default::default(),
    };

    let actor = format!("import {}", dir.display());
    let write = Write::begin(client, &actor, now).await?;
    let held = read_in(write.tx(), Scope::ALL).await?;
    let mut done = Imported::default();

    // Main accounts before their sub-accounts (the owner must exist).
    let mut ordered: Vec<_> = accounts.iter().collect();
    ordered.sort_by_key(|a| a.owner.is_some_and(|o| o != a.uin));
    for a in ordered {
        let owner = a.owner.filter(|o| *o != a.uin);
        let wanted = AccountRow {
            uin: a.uin,
            owner_uin: owner,
            name: a.name.clone(),
            postpaid: a.postpaid.unwrap_or(false),
            arrears: a.arrears.unwrap_or(false),
            exhausted: a.exhausted.clone().unwrap_or_default(),
            created_at: now,
            balance: rust_decimal::Decimal::ZERO,
            stop_at: None,
            version: write.version,
        };
        match held.accounts.get(&a.uin) {
            None => {
                write
                    .insert_account(a.uin, owner, &a.name, wanted.postpaid)
                    .await?;
                if wanted.arrears || !wanted.exhausted.is_empty() {
                    let inserted = AccountRow {
                        arrears: false,
                        exhausted: vec![],
                        ..wanted.clone()
                    };
                    write.update_account(&inserted, wanted).await?;
                }
                done.accounts += 1;
            }
            Some(h) => {
                if h.owner_uin != owner {
                    anyhow::bail!(
                        "{}: account {} has owner {:?} in the store, {:?} in the file: an import does not move accounts",
                        ent_src.name(),
                        a.uin,
                        h.owner_uin,
                        owner
                    );
                }
                // An existing account keeps its state: postpaid, arrears and exhausted are
                // the admin API's and settlement's once the store holds it, and money is
                // never an import's. Only a new name is taken.
                if h.name != wanted.name {
                    write
                        .update_account(
                            h,
                            AccountRow {
                                name: wanted.name.clone(),
                                ..h.clone()
                            },
                        )
                        .await?;
                    done.accounts += 1;
                }
            }
        }
        // Activations: the file's services, at the instant billing.toml gives, else now.
        if owner.is_none() {
            for s in a.services.iter().flatten() {
                if held.activations.contains_key(&(a.uin, s.clone())) {
                    continue;
                }
                let at = catalog
                    .service_by_name(s)
                    .and_then(|svc| billing.get(&a.uin)?.activations.get(&svc.id))
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or(now);
                if write.activate(a.uin, s, at).await?.is_some() {
                    done.activations += 1;
                }
            }
        }
        for m in &a.modes {
            let exists = held.modes.values().any(|h| {
                h.uin == a.uin
                    && h.group == m.group
                    && h.mode == m.mode
                    && h.quantity == m.quantity
                    && h.start == m.start
                    && h.end == m.end
            });
            if !exists {
                write
                    .insert_mode(a.uin, &m.group, m.mode, m.quantity, m.start, m.end, None)
                    .await?;
                done.modes += 1;
            }
        }
        for o in &a.overlays {
            let at = o.purchased_at.with_timezone(&Utc);
            let exists = held.overlays.values().any(|h| {
                h.uin == a.uin
                    && h.interface == o.interface
                    && h.qps == o.qps
                    && h.start == o.start
                    && h.end == o.end
                    && h.purchased_at == at
            });
            if !exists {
                write
                    .insert_overlay(a.uin, &o.interface, o.qps, o.start, o.end, at, None)
                    .await?;
                done.overlays += 1;
            }
        }
    }
    for c in &creds {
        match held.credentials.get(&c.secret_id) {
            None => {
                write
                    .insert_credential(&c.secret_id, c.uin, &c.secret_key)
                    .await?;
                done.credentials += 1;
            }
            Some(h) if h.secret_key == c.secret_key && h.uin == c.uin => {}
            Some(_) => anyhow::bail!(
                "credentials.toml: {}: the store holds this SecretId with another key or account; rotate it through the API instead",
                c.key
            ),
        }
    }
    // billing.toml: activations of owners, packs, contract prices.
    for (uin, b) in &billing {
        if !held.accounts.contains_key(uin) && !accounts.iter().any(|a| a.uin == *uin) {
            anyhow::bail!(
                "billing.toml: owner {uin} is not an account of entitlements.toml or the store"
            );
        }
        for (svc, at) in &b.activations {
            let name = catalog.service(*svc).name.to_string();
            if !held.activations.contains_key(&(*uin, name.clone()))
                && write
                    .activate(*uin, &name, at.with_timezone(&Utc))
                    .await?
                    .is_some()
            {
                done.activations += 1;
            }
        }
        for p in &b.packs {
            if !held.packs.contains_key(&p.id) {
                write
                    .insert_pack(
                        &p.id,
                        *uin,
                        &catalog.item(p.item).key,
                        p.size,
                        p.purchased_at.with_timezone(&Utc),
                        p.price_paid,
                    )
                    .await?;
                done.packs += 1;
            }
        }
        for (item, price) in &b.contract_prices {
            let key = catalog.item(*item).key.to_string();
            let before = held.contract_prices.get(&(*uin, key.clone()));
            if before.is_none_or(|h| h.price != *price) {
                write.set_contract_price(*uin, &key, *price, before).await?;
                done.contract_prices += 1;
            }
        }
    }
    if held.shadow.all != shadow.all || held.shadow.groups != shadow.groups {
        write
            .set_shadow(&held.shadow, shadow.all, &shadow.groups)
            .await?;
        done.shadow = true;
    }
    // The whole store, as a gateway will load it.
    let after = read_in(write.tx(), Scope::ALL).await?;
    after.build(catalog).map_err(|e| {
        anyhow::anyhow!(
            "the store after this import would not load: {}: {}",
            e.key,
            e.reason
        )
    })?;
    let changed = done != Imported::default();
    if changed {
        done.version = Some(write.commit().await?);
    } else {
        write.rollback().await?;
    }
    Ok(done)
}

/// Units drawn from `pack` so far, by the rating engine over the usage ledger in the same
/// database (the settlement consumer's `usage_ledger`). A refund needs a pack wholly unused.
pub async fn pack_units_used(
    tx: &tokio_postgres::Transaction<'_>,
    catalog: &Catalog,
    book: &PriceBook,
    image: &Image,
    pack: &PackRow,
    now: DateTime<Utc>,
) -> anyhow::Result<u64> {
    let exists: bool = tx
        .query_one("SELECT to_regclass('public.usage_ledger') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        anyhow::bail!(
            "the usage ledger (usage_ledger) is not in the entitlement store's database: cannot tell whether pack {} is unused",
            pack.id
        );
    }
    let counts = tollgate_settlement::consumer::usage_of(tx, catalog, pack.owner_uin).await?;
    let billing =
        tollgate_settlement::store::billing_in(tx, image, pack.owner_uin, catalog).await?;
    let month = tollgate_settlement::Month::of_unix(now.timestamp());
    let s = tollgate_settlement::rating::rate_month(catalog, book, &billing, &counts, month)?;
    Ok(s.balances
        .iter()
        .find(|b| b.pack == pack.id)
        .map_or(0, |b| b.size.saturating_sub(b.remaining)))
}
