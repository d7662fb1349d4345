//! Month settlement and arrears (欠费): `tollgate settle --month` rates every main account's
//! month, deducts its postpaid bill from the prepaid balance held in the entitlement store,
//! and, when that leaves the balance negative, records that service stops 24 hours later
//! (the seeds: 结算扣费后余额为负值，24小时后停止服务). From then on every replica refuses the
//! owner's calls with `ResourceUnavailable.InArrears`; packs are not drawn and no monthly free
//! pack is issued while it lasts. A top-up through the admin API that brings the balance back
//! to zero or above restores service at once.
//!
//! Settling a month twice deducts nothing the second time (`entitlements.settlements`).
//! Prepaid packs are paid when bought, not here.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::Month;
use crate::prices::PriceBook;
use tollgate_core::catalog::Catalog;
use tollgate_store::Scope;
use tollgate_store::image::AccountRow;
use tollgate_store::write::Write;

/// The grace between a negative settlement and the stop.
pub const GRACE: Duration = Duration::hours(24);

/// One owner's settled month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settled {
    pub owner_uin: u64,
    pub month: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_after: Decimal,
    /// When service stops (a negative balance), if it does.
    pub stop_at: Option<DateTime<Utc>>,
    /// Settled by an earlier run: nothing deducted now.
    pub already: bool,
    /// Not settled, and why (a line that needs a contract price): settle again once fixed.
    pub blocked: Option<String>,
}

/// Late batches of a month land within this after it ends (a gateway's seal interval and
/// shipping, a broker outage): a month is settled only once this has passed.
pub const AFTER_MONTH_END: Duration = Duration::hours(1);

/// The owner's suspensions, as rating takes them (Unix seconds).
pub async fn suspensions(c: &impl GenericClient, owner: u64) -> anyhow::Result<Vec<(i64, i64)>> {
    Ok(c.query(
        "SELECT from_at, until_at FROM entitlements.suspensions WHERE owner_uin = $1",
        &[&(owner as i64)],
    )
    .await?
    .iter()
    .map(|r| {
        let from: DateTime<Utc> = r.get(0);
        let until: Option<DateTime<Utc>> = r.get(1);
        (from.timestamp(), until.map_or(i64::MAX, |u| u.timestamp()))
    })
    .collect())
}

/// Settles `month` for every main account of the store (ledger and store in one database).
pub async fn settle_month(
    client: &mut tokio_postgres::Client,
    catalog: &Catalog,
    book: &PriceBook,
    month: Month,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Settled>> {
    let settle_from =
        DateTime::from_timestamp(month.end(), 0).unwrap_or_default() + AFTER_MONTH_END;
    anyhow::ensure!(
        now >= settle_from,
        "{month} can be settled from {settle_from} (an hour after it ends, for late batches)"
    );
    let owners: Vec<i64> = client
        .query(
            "SELECT uin FROM entitlements.accounts WHERE owner_uin IS NULL ORDER BY uin",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::with_capacity(owners.len());
    for owner in owners {
        let owner = owner as u64;
        let write = Write::begin(client, "settlement", now).await?;
        let done = write
            .tx()
            .query_opt(
                "SELECT amount::text, balance_after::text FROM entitlements.settlements
                 WHERE owner_uin = $1 AND month = $2",
                &[&(owner as i64), &month.to_string()],
            )
            .await?;
        if let Some(r) = done {
            write.rollback().await?;
            out.push(Settled {
                owner_uin: owner,
                month: month.to_string(),
                amount: r.get::<_, String>(0).parse()?,
                balance_after: r.get::<_, String>(1).parse()?,
                stop_at: None,
                already: true,
                blocked: None,
            });
            continue;
        }
        let image = tollgate_store::read::read_in(write.tx(), Scope::owner(owner)).await?;
        let billing = crate::store::billing_in(write.tx(), &image, owner, catalog).await?;
        let usage = crate::consumer::usage_of(write.tx(), catalog, owner).await?;
        let s = crate::rating::rate_month(catalog, book, &billing, &usage, month)?;
        if !s.contract_price_required.is_empty() {
            write.rollback().await?;
            let why = format!(
                "no contract price for {} (联系商务): set one (PUT /v1/accounts/{owner}/contract-prices/<item>) and settle again",
                s.contract_price_required.join(", ")
            );
            tracing::error!(owner, %why, "month not settled");
            out.push(Settled {
                owner_uin: owner,
                month: month.to_string(),
                amount: Decimal::ZERO,
                balance_after: image.accounts[&owner].balance,
                stop_at: None,
                already: false,
                blocked: Some(why),
            });
            continue;
        }
        let amount = s.postpaid_total;
        let before = image.accounts[&owner].clone();
        let balance_after = before.balance - amount;
        let stop_at = (balance_after < Decimal::ZERO && before.stop_at.is_none())
            .then(|| now + GRACE)
            .or(before.stop_at);
        write
            .tx()
            .execute(
                "INSERT INTO entitlements.settlements (owner_uin, month, amount, balance_after, settled_at, version)
                 VALUES ($1, $2, $3::text::numeric, $4::text::numeric, $5, $6)",
                &[
                    &(owner as i64),
                    &month.to_string(),
                    &amount.to_string(),
                    &balance_after.to_string(),
                    &now,
                    &write.version,
                ],
            )
            .await?;
        if amount != Decimal::ZERO || stop_at != before.stop_at {
            if stop_at != before.stop_at
                && let Some(at) = stop_at
            {
                write
                    .tx()
                    .execute(
                        "INSERT INTO entitlements.suspensions (owner_uin, from_at) VALUES ($1, $2)",
                        &[&(owner as i64), &at],
                    )
                    .await?;
                tracing::warn!(owner, %balance_after, %at, "balance negative after settlement: service stops");
            }
            let after = AccountRow {
                balance: balance_after,
                stop_at,
                ..before.clone()
            };
            write.update_account(&before, after).await?;
        }
        write.commit().await?;
        out.push(Settled {
            owner_uin: owner,
            month: month.to_string(),
            amount,
            balance_after,
            stop_at,
            already: false,
            blocked: None,
        });
    }
    Ok(out)
}

/// Adds `amount` to the owner's balance (in `write`); a balance back at zero or above lifts
/// a stop at once (ending the suspension, or cancelling one not begun).
pub async fn top_up(
    write: &Write<'_>,
    before: &AccountRow,
    amount: Decimal,
) -> anyhow::Result<AccountRow> {
    anyhow::ensure!(amount > Decimal::ZERO, "a top-up must be positive");
    write
        .tx()
        .execute(
            "INSERT INTO entitlements.topups (owner_uin, amount, at, version) VALUES ($1, $2::text::numeric, $3, $4)",
            &[&(before.uin as i64), &amount.to_string(), &write.now, &write.version],
        )
        .await?;
    let balance = before.balance + amount;
    let mut stop_at = before.stop_at;
    if balance >= Decimal::ZERO
        && let Some(at) = before.stop_at
    {
        if at <= write.now {
            write
                .tx()
                .execute(
                    "UPDATE entitlements.suspensions SET until_at = $3 WHERE owner_uin = $1 AND from_at = $2",
                    &[&(before.uin as i64), &at, &write.now],
                )
                .await?;
        } else {
            write
                .tx()
                .execute(
                    "DELETE FROM entitlements.suspensions WHERE owner_uin = $1 AND from_at = $2",
                    &[&(before.uin as i64), &at],
                )
                .await?;
        }
        stop_at = None;
    }
    let after = AccountRow {
        balance,
        stop_at,
        ..before.clone()
    };
    write.update_account(before, after).await
}
