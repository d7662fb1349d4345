//! Live balances and exhaustion: as the consumer applies a batch, in the batch's own
//! transaction, it rates each owner the batch touches (the rating engine, over the ledger
//! including the batch) and
//! - stores the owner's pack balances (`pack_balances`), so the live balance and the
//!   statement agree to the unit (they are the same computation);
//! - tells the gateways which billing items no pack can cover any more (`exhausted` of the
//!   owner's account in the entitlement store, versioned and notified like an admin write):
//!   with postpaid off, the gateways refuse those calls with
//!   `ResourceUnavailable.ResourcePackageRunOut`; a new pack, postpaid switched on or the
//!   next month's free pack lifts it (the last by [`reevaluate`], run periodically).
//!
//! Needs the entitlement store in the ledger's database (schema `entitlements`); without it
//! the consumer applies batches as before.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Transaction};

use crate::Month;
use crate::prices::PriceBook;
use crate::rating::{MonthStatement, rate_month, uncovered_at};
use tollgate_core::catalog::Catalog;
use tollgate_store::Scope;
use tollgate_store::image::AccountRow;
use tollgate_store::write::Write;

/// What live settlement needs: the catalog and prices the statements use.
pub struct Live {
    pub catalog: Catalog,
    pub book: PriceBook,
    pub metrics: LiveMetrics,
    /// Pack notices are also POSTed here (JSON), besides NATS.
    pub webhook: Option<String>,
}

impl Live {
    /// Live settlement over `catalog` and `book`, its metrics in `registry`.
    pub fn new(
        catalog: Catalog,
        book: PriceBook,
        registry: &prometheus::Registry,
        webhook: Option<String>,
    ) -> Live {
        Live {
            catalog,
            book,
            metrics: LiveMetrics::new(registry),
            webhook,
        }
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// Live settlement's metrics (part of the consumer's registry).
#[derive(Clone)]
pub struct LiveMetrics {
    pub errors: prometheus::IntCounter,
    pub overserved: prometheus::IntCounter,
    pub changes: prometheus::IntCounterVec,
    pub rating_seconds: prometheus::Histogram,
}

impl LiveMetrics {
    pub fn new(registry: &prometheus::Registry) -> LiveMetrics {
        let changes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tollgate_settlement_exhaustion_changes_total",
                "Billing items settlement reported to the gateways as used up (exhausted) or covered again (lifted), and owners whose postpaid it switched on (auto_postpaid: OCR activated before 2021-12-14).",
            ),
            &["change"],
        )
        .expect("valid metric");
        let rating_seconds = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "tollgate_settlement_live_rating_seconds",
                "Time to rate one owner live (balances and exhaustion) inside a batch's transaction.",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
        )
        .expect("valid metric");
        let errors = prometheus::IntCounter::new(
            "tollgate_settlement_live_errors_total",
            "Batches whose live settlement failed (applied to the ledger; balances and exhaustion not updated until the owner's next batch).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(errors.clone()))
            .expect("registered once");
        let overserved = prometheus::IntCounter::new(
            "tollgate_settlement_overserved_units_total",
            "Units served beyond owners' packs while their postpaid was off (not billed): what the gateways served before they learnt the packs were used up, bounded by spend leases.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(overserved.clone()))
            .expect("registered once");
        registry
            .register(Box::new(changes.clone()))
            .expect("registered once");
        registry
            .register(Box::new(rating_seconds.clone()))
            .expect("registered once");
        LiveMetrics {
            errors,
            overserved,
            changes,
            rating_seconds,
        }
    }
}

/// An owner rated now.
#[derive(Debug)]
pub struct Evaluation {
    pub account: AccountRow,
    pub statement: MonthStatement,
    /// Billing item keys no pack covers now, sorted.
    pub exhausted: Vec<String>,
    /// Every pack valid now and what it has left (for notices).
    pub packs: Vec<crate::rating::PackBalance>,
    /// When OCR was activated (the 2021-12-14 rule).
    pub ocr_activated: Option<DateTime<Utc>>,
}

/// OCR accounts activated before this instant (2021-12-14 00:00 Beijing time) have postpaid
/// switched on automatically when their packs run out (the OCR seed).
pub fn auto_postpaid_before() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2021-12-14T00:00:00+08:00")
        .expect("a valid instant")
        .with_timezone(&Utc)
}

impl Evaluation {
    /// Whether the store's `exhausted` must change.
    pub fn changes(&self) -> bool {
        let mut held = self.account.exhausted.clone();
        held.sort();
        held.dedup();
        held != self.exhausted
    }
}

/// Whether the ledger's database holds the entitlement store.
pub async fn store_present(c: &impl GenericClient) -> Result<bool, tokio_postgres::Error> {
    Ok(c.query_one(
        "SELECT to_regclass('entitlements.counter') IS NOT NULL",
        &[],
    )
    .await?
    .get(0))
}

impl Live {
    /// Rates `owner` at `now` as `c` sees the ledger and the store; `None` if the store does
    /// not know the owner.
    pub async fn evaluate(
        &self,
        c: &impl GenericClient,
        owner: u64,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<Evaluation>> {
        let started = Instant::now();
        let image = tollgate_store::read::read_in(c, Scope::owner(owner)).await?;
        let Some(account) = image.accounts.get(&owner).cloned() else {
            return Ok(None);
        };
        if account.owner_uin.is_some() {
            return Ok(None);
        }
        let billing = crate::store::billing_in(c, &image, owner, &self.catalog).await?;
        let usage = crate::consumer::usage_of(c, &self.catalog, owner).await?;
        let month = Month::of_unix(now.timestamp());
        let statement = rate_month(&self.catalog, &self.book, &billing, &usage, month)?;
        let mut candidates: Vec<_> = statement
            .lines
            .iter()
            .filter_map(|l| self.catalog.item_by_key(&l.item).map(|i| i.id))
            .chain(
                account
                    .exhausted
                    .iter()
                    .filter_map(|k| self.catalog.item_by_key(k).map(|i| i.id)),
            )
            .collect();
        candidates.sort();
        candidates.dedup();
        let mut exhausted: Vec<String> = uncovered_at(
            &self.catalog,
            &self.book,
            &billing,
            &usage,
            now.timestamp(),
            &candidates,
        )
        .into_iter()
        .map(|i| self.catalog.item(i).key.to_string())
        .collect();
        exhausted.sort();
        let packs =
            crate::rating::packs_now(&self.catalog, &self.book, &billing, &usage, now.timestamp());
        self.metrics
            .rating_seconds
            .observe(started.elapsed().as_secs_f64());
        let ocr_activated = image
            .activations
            .get(&(owner, "ocr".to_owned()))
            .map(|a| a.activated_at);
        Ok(Some(Evaluation {
            account,
            statement,
            exhausted,
            packs,
            ocr_activated,
        }))
    }

    /// Rates the owners a batch touched, inside its transaction, and commits: the ledger
    /// rows, the balances and (if any item changed) the store's `exhausted`, together.
    pub async fn settle_and_commit(
        &self,
        tx: Transaction<'_>,
        owners: &[u64],
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let mut changed = Vec::new();
        for &owner in owners {
            if let Some(ev) = self.evaluate(&tx, owner, now).await? {
                write_balances(&tx, owner, &ev.statement, now).await?;
                write_budgets(&tx, &ev, now).await?;
                self.count_overserved(&tx, owner, &ev.statement).await?;
                crate::notify::record(&tx, &self.catalog, owner, &ev.packs, now).await?;
                if ev.changes() {
                    changed.push(owner);
                }
            }
        }
        if changed.is_empty() {
            tx.commit().await?;
            return Ok(());
        }
        // Take the store's version (serializing with admin writes), then rate again: a pack
        // bought meanwhile is seen.
        let write = Write::on(tx, "settlement", now).await?;
        for owner in changed {
            if let Some(ev) = self.evaluate(write.tx(), owner, now).await?
                && ev.changes()
            {
                self.apply_change(&write, ev).await?;
            }
        }
        write.commit().await?;
        Ok(())
    }

    async fn apply_change(&self, write: &Write<'_>, ev: Evaluation) -> anyhow::Result<()> {
        let before = ev.account.clone();
        for item in &ev.exhausted {
            if !before.exhausted.contains(item) {
                self.metrics.changes.with_label_values(&["exhausted"]).inc();
                tracing::info!(owner = before.uin, %item, postpaid = before.postpaid, "packs used up");
            }
        }
        for item in &before.exhausted {
            if !ev.exhausted.contains(item) {
                self.metrics.changes.with_label_values(&["lifted"]).inc();
                tracing::info!(owner = before.uin, %item, "packs cover it again");
            }
        }
        // OCR accounts activated before 2021-12-14 switch to postpaid when their packs run out.
        let ocr_ran_out = ev.exhausted.iter().any(|item| {
            !before.exhausted.contains(item)
                && self
                    .catalog
                    .item_by_key(item)
                    .is_some_and(|i| self.catalog.service(i.service).name.as_ref() == "ocr")
        });
        let auto_postpaid = !before.postpaid
            && ocr_ran_out
            && ev.ocr_activated.is_some_and(|t| t < auto_postpaid_before());
        if auto_postpaid {
            self.metrics
                .changes
                .with_label_values(&["auto_postpaid"])
                .inc();
            tracing::info!(
                owner = before.uin,
                "OCR activated before 2021-12-14 and its packs ran out: postpaid switched on"
            );
        }
        let after = AccountRow {
            exhausted: ev.exhausted,
            postpaid: before.postpaid || auto_postpaid,
            ..before.clone()
        };
        write.update_account(&before, after).await?;
        Ok(())
    }

    /// Rates again every owner the store marks exhausted (a new month's free pack, a pack
    /// bought, one that became valid) and lifts what is covered again.
    pub async fn reevaluate(
        &self,
        client: &mut tokio_postgres::Client,
        now: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let owners: Vec<i64> = client
            .query(
                "SELECT uin FROM entitlements.accounts WHERE owner_uin IS NULL AND cardinality(exhausted) > 0
                 UNION SELECT owner_uin FROM entitlements.spend_budgets WHERE remaining = 0",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for owner in owners {
            let tx = client.transaction().await?;
            self.settle_and_commit(tx, &[owner as u64], now).await?;
        }
        Ok(())
    }
}

impl Live {
    /// Counts what this rating adds to the owner's over-served units of the month.
    async fn count_overserved(
        &self,
        tx: &Transaction<'_>,
        owner: u64,
        s: &MonthStatement,
    ) -> anyhow::Result<()> {
        let now: i64 = s.lines.iter().map(|l| l.overserved_units as i64).sum();
        let before: i64 = tx
            .query_opt(
                "SELECT units FROM live_overserved WHERE owner_uin = $1 AND month = $2",
                &[&(owner as i64), &s.month],
            )
            .await?
            .map_or(0, |r| r.get(0));
        if now != before {
            tx.execute(
                "INSERT INTO live_overserved (owner_uin, month, units) VALUES ($1, $2, $3)
                 ON CONFLICT (owner_uin, month) DO UPDATE SET units = EXCLUDED.units",
                &[&(owner as i64), &s.month, &now],
            )
            .await?;
        }
        if now > before {
            self.metrics.overserved.inc_by((now - before) as u64);
        }
        Ok(())
    }

    /// Adds a batch's units to its gateway's spend leases (`tollgate_store::spend`), in the
    /// batch's transaction, budget rows locked first (the order grants lock them in).
    pub async fn apply_spend(
        &self,
        tx: &Transaction<'_>,
        gateway_id: &str,
        units: &std::collections::BTreeMap<(u64, String), u64>,
    ) -> anyhow::Result<()> {
        for ((owner, item), n) in units {
            let budget = tx
                .query_opt(
                    "SELECT 1 FROM entitlements.spend_budgets WHERE owner_uin = $1 AND item = $2 FOR UPDATE",
                    &[&(*owner as i64), item],
                )
                .await?;
            if budget.is_none() {
                continue;
            }
            tx.execute(
                "UPDATE entitlements.spend_leases SET applied = applied + $4
                 WHERE owner_uin = $1 AND item = $2 AND member = $3",
                &[&(*owner as i64), item, &gateway_id, &(*n as i64)],
            )
            .await?;
        }
        Ok(())
    }
}

/// The owner's spend budgets: with postpaid off, per billing item the units its packs valid
/// now still cover; with postpaid on, none (nothing to bound).
async fn write_budgets(
    tx: &Transaction<'_>,
    ev: &Evaluation,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let owner = ev.account.uin as i64;
    if ev.account.postpaid {
        tx.execute(
            "DELETE FROM entitlements.spend_budgets WHERE owner_uin = $1",
            &[&owner],
        )
        .await?;
        return Ok(());
    }
    let mut items: Vec<&String> = ev
        .packs
        .iter()
        .flat_map(|p| p.items.iter())
        .chain(ev.exhausted.iter())
        .chain(ev.statement.lines.iter().map(|l| &l.item))
        .collect();
    items.sort();
    items.dedup();
    for item in items {
        let remaining: u64 = ev
            .packs
            .iter()
            .filter(|p| p.items.contains(item))
            .map(|p| p.remaining)
            .sum();
        tx.execute(
            "INSERT INTO entitlements.spend_budgets (owner_uin, item, remaining, updated_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (owner_uin, item) DO UPDATE SET remaining = EXCLUDED.remaining, updated_at = EXCLUDED.updated_at",
            &[&owner, item, &(remaining as i64), &now],
        )
        .await?;
    }
    Ok(())
}

/// Replaces the owner's live balances with the statement's.
async fn write_balances(
    tx: &Transaction<'_>,
    owner: u64,
    s: &MonthStatement,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    tx.execute(
        "DELETE FROM pack_balances WHERE owner_uin = $1",
        &[&(owner as i64)],
    )
    .await?;
    for b in &s.balances {
        let kind = match b.kind {
            crate::rating::PackKind::Free => "free",
            crate::rating::PackKind::Prepaid => "prepaid",
        };
        tx.execute(
            "INSERT INTO pack_balances (owner_uin, pack, kind, items, size, remaining, valid_until, month, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &(owner as i64),
                &b.pack,
                &kind,
                &b.items,
                &(b.size as i64),
                &(b.remaining as i64),
                &b.valid_until.map(|t| t.with_timezone(&Utc)),
                &s.month,
                &now,
            ],
        )
        .await?;
    }
    Ok(())
}
