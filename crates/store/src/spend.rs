//! Spend leases: how a prepaid-only owner's remaining pack units are shared by the fleet, so
//! that what it serves beyond its packs is bounded by the leases, not by how fast settlement
//! learns of its usage.
//!
//! Per (owner, billing item): live settlement keeps `spend_budgets.remaining` (units its packs
//! cover after the usage in the ledger); each gateway asks for leases (`grant`), and
//! settlement adds each batch's units to its gateway's `applied`. A member's lease is
//! outstanding while `granted - applied > 0`: leased, not yet in the ledger. A grant never
//! lets the outstanding leases exceed `remaining`. A lease not renewed for `ttl` stops
//! counting (a gateway that went away, or units it spent on calls that were not billable).
//! No budget row: the owner is not limited (postpaid on, or never rated).

use std::time::Duration;

/// What a grant gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// The owner's item has no budget: serve without a lease.
    Unlimited,
    /// This many more units (possibly 0: the packs are used up).
    Units(u64),
}

/// Asks for `want` more units for `member`, or gives back `-want` unused ones.
pub async fn grant(
    client: &mut tokio_postgres::Client,
    owner: u64,
    item: &str,
    member: &str,
    want: i64,
    ttl: Duration,
) -> anyhow::Result<Grant> {
    let tx = client.transaction().await?;
    let Some(budget) = tx
        .query_opt(
            "SELECT remaining FROM entitlements.spend_budgets WHERE owner_uin = $1 AND item = $2 FOR UPDATE",
            &[&(owner as i64), &item],
        )
        .await?
    else {
        tx.commit().await?;
        return Ok(Grant::Unlimited);
    };
    let remaining: i64 = budget.get(0);
    let ttl_secs = ttl.as_secs_f64();
    let others: i64 = tx
        .query_one(
            "SELECT coalesce(sum(greatest(granted - applied, 0)), 0)::bigint FROM entitlements.spend_leases
             WHERE owner_uin = $1 AND item = $2 AND member <> $3
               AND renewed_at > now() - make_interval(secs => $4)",
            &[&(owner as i64), &item, &member, &ttl_secs],
        )
        .await?
        .get(0);
    let mine = tx
        .query_opt(
            "SELECT granted, applied FROM entitlements.spend_leases WHERE owner_uin = $1 AND item = $2 AND member = $3",
            &[&(owner as i64), &item, &member],
        )
        .await?
        .map_or(0, |r| (r.get::<_, i64>(0) - r.get::<_, i64>(1)).max(0));
    let given = if want >= 0 {
        want.min((remaining - others - mine).max(0))
    } else {
        // Give back at most what is outstanding.
        -((-want).min(mine))
    };
    tx.execute(
        "INSERT INTO entitlements.spend_leases (owner_uin, item, member, granted, renewed_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (owner_uin, item, member)
         DO UPDATE SET granted = spend_leases.granted + EXCLUDED.granted, renewed_at = now()",
        &[&(owner as i64), &item, &member, &given],
    )
    .await?;
    tx.commit().await?;
    Ok(Grant::Units(given.max(0) as u64))
}
