//! Reading the store: a full image, a delta (rows changed after a version), or one owner's
//! tree, each from one consistent snapshot of the database.

use std::str::FromStr;

use rust_decimal::Decimal;
use tokio_postgres::{GenericClient, IsolationLevel, Row};

use crate::image::{
    AccountRow, ActivationRow, ContractPriceRow, CredentialRow, Image, LibraryRow, ModeRow,
    OverlayRow, PackRow, ShadowRow,
};
use tollgate_core::config::entitlements::ModeKind;

/// Which rows to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    /// Rows of version above this (0: every row).
    pub since: i64,
    /// Only this main account's tree (and the shadow row).
    pub owner: Option<u64>,
}

impl Scope {
    pub const ALL: Scope = Scope {
        since: 0,
        owner: None,
    };

    pub fn since(version: i64) -> Scope {
        Scope {
            since: version,
            owner: None,
        }
    }

    pub fn owner(uin: u64) -> Scope {
        Scope {
            since: 0,
            owner: Some(uin),
        }
    }
}

fn money(row: &Row, col: &str) -> anyhow::Result<Option<Decimal>> {
    row.get::<_, Option<String>>(col)
        .map(|s| Decimal::from_str(&s).map_err(|e| anyhow::anyhow!("{col} {s:?}: {e}")))
        .transpose()
}

fn uin(row: &Row, col: &str) -> u64 {
    row.get::<_, i64>(col) as u64
}

/// Reads `scope` inside a REPEATABLE READ, read-only transaction of its own.
pub async fn read(client: &mut tokio_postgres::Client, scope: Scope) -> anyhow::Result<Image> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let image = read_in(&tx, scope).await?;
    tx.commit().await?;
    Ok(image)
}

/// Reads `scope` with `c` (a transaction whose snapshot the caller chose).
pub async fn read_in(c: &impl GenericClient, scope: Scope) -> anyhow::Result<Image> {
    let since = scope.since;
    let owner = scope.owner.map(|o| o as i64);
    let version: i64 = c
        .query_one("SELECT version FROM entitlements.counter WHERE id = 1", &[])
        .await?
        .get(0);
    let mut image = Image {
        version,
        ..Default::default()
    };
    // Nothing was written since: the common case of a periodic delta, one query.
    if since > 0 && version == since {
        return Ok(image);
    }
    // The accounts of the tree: the owner and the accounts whose owner it is.
    const TREE: &str = "($2::bigint IS NULL OR uin IN (SELECT uin FROM entitlements.accounts WHERE uin = $2 OR owner_uin = $2))";
    for r in c
        .query(
            "SELECT uin, owner_uin, name, postpaid, arrears, exhausted, created_at,
                    balance::text AS balance, stop_at, version
             FROM entitlements.accounts WHERE version > $1
             AND ($2::bigint IS NULL OR uin = $2 OR owner_uin = $2)",
            &[&since, &owner],
        )
        .await?
    {
        let a = AccountRow {
            uin: uin(&r, "uin"),
            owner_uin: r.get::<_, Option<i64>>("owner_uin").map(|o| o as u64),
            name: r.get("name"),
            postpaid: r.get("postpaid"),
            arrears: r.get("arrears"),
            exhausted: r.get("exhausted"),
            created_at: r.get("created_at"),
            balance: money(&r, "balance")?.unwrap_or_default(),
            stop_at: r.get("stop_at"),
            version: r.get("version"),
        };
        image.accounts.insert(a.uin, a);
    }
    for r in c
        .query(
            "SELECT owner_uin, service, activated_at, version FROM entitlements.activations
             WHERE version > $1 AND ($2::bigint IS NULL OR owner_uin = $2)",
            &[&since, &owner],
        )
        .await?
    {
        let a = ActivationRow {
            owner_uin: uin(&r, "owner_uin"),
            service: r.get("service"),
            activated_at: r.get("activated_at"),
            version: r.get("version"),
        };
        image
            .activations
            .insert((a.owner_uin, a.service.clone()), a);
    }
    for r in c
        .query(
            &format!(
                "SELECT secret_id, uin, secret_key, created_at, expires_at, revoked_at, replaced_by, version
                 FROM entitlements.credentials WHERE version > $1 AND {TREE}"
            ),
            &[&since, &owner],
        )
        .await?
    {
        let cred = CredentialRow {
            secret_id: r.get("secret_id"),
            uin: uin(&r, "uin"),
            secret_key: r.get("secret_key"),
            created_at: r.get("created_at"),
            expires_at: r.get("expires_at"),
            revoked_at: r.get("revoked_at"),
            replaced_by: r.get("replaced_by"),
            version: r.get("version"),
        };
        image.credentials.insert(cred.secret_id.clone(), cred);
    }
    for r in c
        .query(
            &format!(
                "SELECT id, uin, group_name, mode, quantity, start_date, end_date, purchased_at,
                        price::text AS price, version
                 FROM entitlements.modes WHERE version > $1 AND {TREE}"
            ),
            &[&since, &owner],
        )
        .await?
    {
        let mode = match r.get::<_, &str>("mode") {
            "qps" => ModeKind::Qps,
            _ => ModeKind::Concurrency,
        };
        let m = ModeRow {
            id: r.get("id"),
            uin: uin(&r, "uin"),
            group: r.get("group_name"),
            mode,
            quantity: r.get::<_, i32>("quantity") as u32,
            start: r.get("start_date"),
            end: r.get("end_date"),
            purchased_at: r.get("purchased_at"),
            price: money(&r, "price")?,
            version: r.get("version"),
        };
        image.modes.insert(m.id, m);
    }
    for r in c
        .query(
            &format!(
                "SELECT id, uin, interface, qps, start_date, end_date, purchased_at,
                        price::text AS price, version
                 FROM entitlements.overlays WHERE version > $1 AND {TREE}"
            ),
            &[&since, &owner],
        )
        .await?
    {
        let o = OverlayRow {
            id: r.get("id"),
            uin: uin(&r, "uin"),
            interface: r.get("interface"),
            qps: r.get::<_, i32>("qps") as u32,
            start: r.get("start_date"),
            end: r.get("end_date"),
            purchased_at: r.get("purchased_at"),
            price: money(&r, "price")?,
            version: r.get("version"),
        };
        image.overlays.insert(o.id, o);
    }
    for r in c
        .query(
            "SELECT id, owner_uin, item, size, purchased_at, price::text AS price, refunded_at, version
             FROM entitlements.packs WHERE version > $1 AND ($2::bigint IS NULL OR owner_uin = $2)",
            &[&since, &owner],
        )
        .await?
    {
        let p = PackRow {
            id: r.get("id"),
            owner_uin: uin(&r, "owner_uin"),
            item: r.get("item"),
            size: r.get::<_, i64>("size") as u64,
            purchased_at: r.get("purchased_at"),
            price: money(&r, "price")?.unwrap_or_default(),
            refunded_at: r.get("refunded_at"),
            version: r.get("version"),
        };
        image.packs.insert(p.id.clone(), p);
    }
    for r in c
        .query(
            "SELECT owner_uin, item, price::text AS price, version FROM entitlements.contract_prices
             WHERE version > $1 AND ($2::bigint IS NULL OR owner_uin = $2)",
            &[&since, &owner],
        )
        .await?
    {
        let p = ContractPriceRow {
            owner_uin: uin(&r, "owner_uin"),
            item: r.get("item"),
            price: money(&r, "price")?.unwrap_or_default(),
            version: r.get("version"),
        };
        image.contract_prices.insert((p.owner_uin, p.item.clone()), p);
    }
    for r in c
        .query(
            "SELECT owner_uin, group_id, group_type, source, learned_at, deleted_at, version
             FROM entitlements.libraries
             WHERE version > $1 AND ($2::bigint IS NULL OR owner_uin = $2)",
            &[&since, &owner],
        )
        .await?
    {
        let l = LibraryRow {
            owner_uin: uin(&r, "owner_uin"),
            group_id: r.get("group_id"),
            group_type: r.get("group_type"),
            source: r.get("source"),
            learned_at: r.get("learned_at"),
            deleted_at: r.get("deleted_at"),
            version: r.get("version"),
        };
        image.libraries.insert((l.owner_uin, l.group_id.clone()), l);
    }
    if let Some(r) = c
        .query_opt(
            "SELECT all_groups, groups, version FROM entitlements.shadow WHERE id = 1 AND version > $1",
            &[&since],
        )
        .await?
    {
        image.shadow = ShadowRow {
            all: r.get("all_groups"),
            groups: r.get("groups"),
            version: r.get("version"),
        };
    }
    Ok(image)
}
