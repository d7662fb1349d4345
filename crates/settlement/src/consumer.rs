//! The settlement consumer (`tollgate consumer`): applies sealed batches to the PostgreSQL
//! usage ledger exactly once, and reconciles what gateways say they sealed with what arrived.
//!
//! Each batch is applied in one transaction that inserts its id into `processed_batches` and
//! adds its counts to `usage_ledger`; a batch id already there is a duplicate and changes
//! nothing. The transaction commits, then the message is acknowledged (JetStream
//! `double_ack`), so a crash between commit and ack redelivers a batch that is then only
//! acknowledged. Sources: a JetStream durable pull consumer, or the local batch directory the
//! embedded default writes (applied files move to `applied/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use tokio_postgres::{Client, NoTls};

use crate::{Month, UsageCount};
use tollgate_usage::batch::Batch;
use tollgate_usage::stream::{Totals, ensure_stream};

/// Schema migrations, applied in order on start (each once, recorded in `schema_migrations`).
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE processed_batches (
    batch_id          text PRIMARY KEY,
    gateway_id        text   NOT NULL,
    batch_seq         bigint NOT NULL,
    first_seq         bigint NOT NULL,
    last_seq          bigint NOT NULL,
    records           bigint NOT NULL,
    units             bigint NOT NULL,
    cumulative_units  bigint NOT NULL,
    applied_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (gateway_id, batch_seq)
);
-- Units per owner, billing item, interface and Beijing-time hour. The month column makes
-- monthly reads cheap; the hour keeps what rating needs to expire packs by time of use.
CREATE TABLE usage_ledger (
    owner_uin     bigint NOT NULL,
    billing_item  text   NOT NULL,
    interface     text   NOT NULL,
    hour_start    bigint NOT NULL,
    month         text   NOT NULL,
    units         bigint NOT NULL,
    records       bigint NOT NULL,
    PRIMARY KEY (owner_uin, billing_item, interface, hour_start)
);
CREATE INDEX usage_ledger_owner_month ON usage_ledger (owner_uin, month);
CREATE TABLE gateway_totals (
    gateway_id               text NOT NULL,
    reported_at_unix_ms      bigint NOT NULL,
    received_at              timestamptz NOT NULL DEFAULT now(),
    sealed_batch_seq         bigint NOT NULL,
    sealed_cumulative_units  bigint NOT NULL,
    admitted_since_start     bigint NOT NULL,
    rejected_since_start     bigint NOT NULL,
    PRIMARY KEY (gateway_id, reported_at_unix_ms)
);
CREATE TABLE rejected_messages (
    id           bigserial PRIMARY KEY,
    subject      text NOT NULL,
    error        text NOT NULL,
    payload      bytea NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
"#,
    ),
    (
        2,
        r#"
-- Live pack balances (crate::live): each owner's packs as the rating engine leaves them after
-- the last batch applied, written in that batch's transaction.
CREATE TABLE pack_balances (
    owner_uin    bigint NOT NULL,
    pack         text   NOT NULL,
    kind         text   NOT NULL,
    items        text[] NOT NULL,
    size         bigint NOT NULL,
    remaining    bigint NOT NULL,
    valid_until  timestamptz,
    month        text   NOT NULL,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (owner_uin, pack)
);
"#,
    ),
    (
        3,
        r#"
-- Pack notices (crate::notify): each pack's level (0 normal, 1 low, 2 empty) as last seen,
-- and the notice waiting for its hour.
CREATE TABLE pack_notices (
    owner_uin          bigint NOT NULL,
    pack               text   NOT NULL,
    service            text   NOT NULL,
    level              int    NOT NULL,
    pending_kind       text,
    remaining          bigint,
    size               bigint,
    threshold_percent  bigint,
    detected_at        timestamptz,
    due_at             timestamptz,
    sent_at            timestamptz,
    PRIMARY KEY (owner_uin, pack)
);
CREATE INDEX pack_notices_due ON pack_notices (due_at) WHERE pending_kind IS NOT NULL;
"#,
    ),
    (
        4,
        r#"
-- Units each owner was served beyond its packs this month with postpaid off (crate::live),
-- as last rated: the over-served metric counts what each rating adds.
CREATE TABLE live_overserved (
    owner_uin  bigint NOT NULL,
    month      text   NOT NULL,
    units      bigint NOT NULL,
    PRIMARY KEY (owner_uin, month)
);
"#,
    ),
    (
        5,
        r#"
-- When the first call of each hour's row was admitted (Unix ms; NULL in rows applied before
-- this column): items sharing a pack draw it, within an hour, in the order they were used.
ALTER TABLE usage_ledger ADD COLUMN first_at_ms bigint;
-- Image search: units of usage_ledger (same owner, item, interface and hour) whose library's
-- type the gateway could not tell; rating bills them by the type once the store knows it.
CREATE TABLE unresolved_usage (
    owner_uin     bigint NOT NULL,
    billing_item  text   NOT NULL,
    interface     text   NOT NULL,
    library       text   NOT NULL,
    hour_start    bigint NOT NULL,
    month         text   NOT NULL,
    units         bigint NOT NULL,
    records       bigint NOT NULL,
    PRIMARY KEY (owner_uin, billing_item, interface, library, hour_start)
);
"#,
    ),
];

/// (owner, item, interface, hour) of a ledger row.
type HourKey<'a> = (u64, &'a str, &'a str, i64);
/// (owner, item, interface, library, hour) of an unresolved-usage row.
type UnresolvedKey<'a> = (u64, &'a str, &'a str, &'a str, i64);

/// Where batches come from.
#[derive(Debug, Clone)]
pub enum Source {
    Nats {
        url: String,
        stream: String,
        durable: String,
    },
    Dir(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub postgres: String,
    pub source: Source,
    /// A totals report is reconciled once this old: its batches should have arrived.
    pub reconcile_grace: Duration,
    pub reconcile_interval: Duration,
    /// Test-only failpoint: abort the process right after committing this many new batches,
    /// before acknowledging the last one (`TOLLGATE_FAILPOINT_CRASH_AFTER_COMMIT`).
    pub crash_after_commit: Option<u64>,
    /// Live balances and exhaustion (`crate::live`), when the entitlement store shares the
    /// ledger's database.
    pub live: Option<Arc<crate::live::Live>>,
}

/// The consumer's metrics.
pub struct ConsumerMetrics {
    pub registry: Registry,
    pub applied: IntCounter,
    pub duplicates: IntCounter,
    pub conflicts: IntCounter,
    pub units: IntCounter,
    pub rejected: IntCounter,
    pub apply_seconds: Histogram,
    pub lag: IntGauge,
    pub gap_units: IntGauge,
    pub gap_batches: IntGauge,
    pub gaps: IntCounter,
    pub unresolved_units: IntGauge,
}

impl ConsumerMetrics {
    pub fn new() -> ConsumerMetrics {
        let registry = Registry::new();
        let counter = |n: &str, h: &str| {
            let c = IntCounter::new(n, h).expect("valid");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let gauge = |n: &str, h: &str| {
            let g = IntGauge::new(n, h).expect("valid");
            registry.register(Box::new(g.clone())).expect("unique");
            g
        };
        let apply_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_consumer_apply_seconds",
                "Time to apply one batch in one ledger transaction.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid");
        registry
            .register(Box::new(apply_seconds.clone()))
            .expect("unique");
        ConsumerMetrics {
            applied: counter(
                "tollgate_consumer_batches_applied_total",
                "Batches applied to the ledger.",
            ),
            duplicates: counter(
                "tollgate_consumer_batches_duplicate_total",
                "Batches already applied (redeliveries, replays): acknowledged without effect.",
            ),
            conflicts: counter(
                "tollgate_consumer_conflicting_batches_total",
                "Batches whose id was already applied with other content: not applied, kept in rejected_messages (alert on any).",
            ),
            units: counter(
                "tollgate_consumer_units_applied_total",
                "Billable units added to the ledger.",
            ),
            rejected: counter(
                "tollgate_consumer_rejected_messages_total",
                "Messages that are not batches or totals (kept in rejected_messages).",
            ),
            lag: gauge(
                "tollgate_consumer_lag_batches",
                "Batches waiting to be applied.",
            ),
            gap_units: gauge(
                "tollgate_reconciliation_gap_units",
                "Units gateways sealed (per their totals, older than the grace period) that the ledger lacks.",
            ),
            gap_batches: gauge(
                "tollgate_reconciliation_gap_batches",
                "Batches gateways sealed (older than the grace period) that the ledger lacks.",
            ),
            gaps: counter(
                "tollgate_reconciliation_gaps_total",
                "Reconciliation rounds that found a gap.",
            ),
            unresolved_units: gauge(
                "tollgate_reconciliation_unresolved_units",
                "Image-search units in the ledger whose library's type the store does not know yet (billed as same/product search until it does).",
            ),
            apply_seconds,
            registry,
        }
    }

    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).expect("UTF-8")
    }
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    New,
    Duplicate,
    /// A batch id already applied, with other content: never applied, kept in
    /// `rejected_messages` for a person (it means two spools used one id, which the gateway
    /// prevents by naming each spool incarnation in its batch ids).
    Conflict,
}

/// The PostgreSQL ledger.
pub struct Ledger {
    client: Client,
    live: Option<Arc<crate::live::Live>>,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Ledger {
    /// Connects (retrying until `deadline`) and runs the migrations.
    pub async fn connect(url: &str, deadline: Duration) -> anyhow::Result<Ledger> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(100);
        let client = loop {
            match tokio_postgres::connect(url, NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::warn!(error = %e, "postgres connection ended");
                        }
                    });
                    break client;
                }
                Err(e) if started.elapsed() < deadline => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot connect to postgres yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => anyhow::bail!("cannot connect to postgres: {e}"),
            }
        };
        let mut ledger = Ledger { client, live: None };
        ledger.migrate().await?;
        Ok(ledger)
    }

    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Rates each owner a batch touches inside its transaction (`crate::live`).
    pub fn with_live(mut self, live: Option<Arc<crate::live::Live>>) -> Ledger {
        self.live = live;
        self
    }

    /// Pack notices whose hour has come, sent (`crate::notify`).
    pub async fn send_notices(&mut self, nats: Option<&async_nats::Client>) -> anyhow::Result<()> {
        let Some(live) = self.live.clone() else {
            return Ok(());
        };
        let notices = crate::notify::due(&mut self.client, chrono::Utc::now()).await?;
        crate::notify::publish(&notices, nats, live.webhook.as_deref()).await;
        Ok(())
    }

    /// Lifts exhaustion that no longer holds (`crate::live::Live::reevaluate`).
    pub async fn reevaluate(&mut self) -> anyhow::Result<()> {
        let Some(live) = self.live.clone() else {
            return Ok(());
        };
        if !crate::live::store_present(&self.client).await? {
            return Ok(());
        }
        live.reevaluate(&mut self.client, chrono::Utc::now()).await
    }

    async fn migrate(&mut self) -> anyhow::Result<()> {
        // One consumer migrates at a time.
        tollgate_store::schema::apply_migrations(
            &mut self.client,
            7420117,
            "CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
            "schema_migrations",
            MIGRATIONS,
        )
        .await
    }

    /// Applies one batch in one transaction; a batch id already applied changes nothing.
    pub async fn apply(&mut self, b: &Batch) -> anyhow::Result<Applied> {
        let tx = self.client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO processed_batches (batch_id, gateway_id, batch_seq, first_seq, last_seq, records, units, cumulative_units)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (batch_id) DO NOTHING",
                &[
                    &b.batch_id,
                    &b.gateway_id,
                    &i64_of(b.batch_seq),
                    &i64_of(b.first_seq),
                    &i64_of(b.last_seq),
                    &i64_of(b.records),
                    &i64_of(b.units),
                    &i64_of(b.cumulative_units),
                ],
            )
            .await?;
        if inserted == 0 {
            let stored = tx
                .query_one(
                    "SELECT gateway_id, batch_seq, first_seq, last_seq, records, units, cumulative_units
                     FROM processed_batches WHERE batch_id = $1",
                    &[&b.batch_id],
                )
                .await?;
            tx.rollback().await?;
            let same = stored.get::<_, String>(0) == b.gateway_id
                && stored.get::<_, i64>(1) == i64_of(b.batch_seq)
                && stored.get::<_, i64>(2) == i64_of(b.first_seq)
                && stored.get::<_, i64>(3) == i64_of(b.last_seq)
                && stored.get::<_, i64>(4) == i64_of(b.records)
                && stored.get::<_, i64>(5) == i64_of(b.units)
                && stored.get::<_, i64>(6) == i64_of(b.cumulative_units);
            return Ok(if same {
                Applied::Duplicate
            } else {
                Applied::Conflict
            });
        }
        // One row per (owner, item, interface, hour): ON CONFLICT may touch a row once.
        let mut hourly: BTreeMap<HourKey<'_>, (u64, u64, i64)> = Default::default();
        let mut unresolved: BTreeMap<UnresolvedKey<'_>, (u64, u64)> = Default::default();
        for c in &b.counts {
            let hour = c.minute.div_euclid(3600) * 3600;
            let e = hourly
                .entry((c.owner_uin, &c.billing_item, &c.interface, hour))
                .or_insert((0, 0, i64::MAX));
            e.0 += c.units;
            e.1 += c.records;
            e.2 = e.2.min(c.first_unix_ms.unwrap_or(c.minute * 1000));
            if let Some(library) = &c.unresolved_library {
                let e = unresolved
                    .entry((c.owner_uin, &c.billing_item, &c.interface, library, hour))
                    .or_default();
                e.0 += c.units;
                e.1 += c.records;
            }
        }
        let (mut owners, mut items, mut interfaces, mut hours, mut months, mut units, mut records) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let mut firsts = vec![];
        for ((owner, item, interface, hour), (u, r, first)) in hourly {
            owners.push(i64_of(owner));
            items.push(item.to_owned());
            interfaces.push(interface.to_owned());
            hours.push(hour);
            months.push(Month::of_unix(hour).to_string());
            units.push(i64_of(u));
            records.push(i64_of(r));
            firsts.push(first);
        }
        tx.execute(
            "INSERT INTO usage_ledger (owner_uin, billing_item, interface, hour_start, month, units, records, first_at_ms)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::bigint[], $8::bigint[])
             ON CONFLICT (owner_uin, billing_item, interface, hour_start)
             DO UPDATE SET units = usage_ledger.units + EXCLUDED.units, records = usage_ledger.records + EXCLUDED.records,
                first_at_ms = LEAST(coalesce(usage_ledger.first_at_ms, usage_ledger.hour_start * 1000), EXCLUDED.first_at_ms)",
            &[&owners, &items, &interfaces, &hours, &months, &units, &records, &firsts],
        )
        .await?;
        if !unresolved.is_empty() {
            let (mut o, mut it, mut ifc, mut lib, mut h, mut m, mut u, mut r) = (
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
            );
            for ((owner, item, interface, library, hour), (units, records)) in unresolved {
                o.push(i64_of(owner));
                it.push(item.to_owned());
                ifc.push(interface.to_owned());
                lib.push(library.to_owned());
                h.push(hour);
                m.push(Month::of_unix(hour).to_string());
                u.push(i64_of(units));
                r.push(i64_of(records));
            }
            tx.execute(
                "INSERT INTO unresolved_usage (owner_uin, billing_item, interface, library, hour_start, month, units, records)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[], $8::bigint[])
                 ON CONFLICT (owner_uin, billing_item, interface, library, hour_start)
                 DO UPDATE SET units = unresolved_usage.units + EXCLUDED.units, records = unresolved_usage.records + EXCLUDED.records",
                &[&o, &it, &ifc, &lib, &h, &m, &u, &r],
            )
            .await?;
        }
        let mut tx = tx;
        if let Some(live) = &self.live
            && crate::live::store_present(&tx).await?
        {
            let mut touched: Vec<u64> = owners.iter().map(|o| *o as u64).collect();
            touched.sort_unstable();
            touched.dedup();
            // In a savepoint: a rating that fails (a row naming what this catalog lacks)
            // must not hold the ledger back. It is logged and counted; the batch applies.
            let mut spent: std::collections::BTreeMap<(u64, String), u64> = Default::default();
            for c in &b.counts {
                *spent
                    .entry((c.owner_uin, c.billing_item.to_string()))
                    .or_default() += c.units;
            }
            let savepoint = tx.savepoint("live").await?;
            let result = async {
                live.apply_spend(&savepoint, &b.gateway_id, &spent).await?;
                live.settle_and_commit(savepoint, &touched, chrono::Utc::now())
                    .await
            }
            .await;
            if let Err(e) = result {
                live.metrics.errors.inc();
                tracing::error!(
                    batch = %b.batch_id,
                    error = %format!("{e:#}"),
                    "live settlement failed for this batch: its usage is applied, balances and exhaustion are not updated"
                );
            }
        }
        tx.commit().await?;
        Ok(Applied::New)
    }

    pub async fn record_totals(&self, t: &Totals) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute(
                "INSERT INTO gateway_totals (gateway_id, reported_at_unix_ms, sealed_batch_seq, sealed_cumulative_units, admitted_since_start, rejected_since_start)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                &[
                    &t.gateway_id,
                    &t.reported_at_unix_ms,
                    &i64_of(t.sealed_batch_seq),
                    &i64_of(t.sealed_cumulative_units),
                    &i64_of(t.admitted_since_start),
                    &i64_of(t.rejected_since_start),
                ],
            )
            .await
            .map(|_| ())
    }

    pub async fn reject(
        &self,
        subject: &str,
        error: &str,
        payload: &[u8],
    ) -> Result<(), tokio_postgres::Error> {
        self.client
            .execute(
                "INSERT INTO rejected_messages (subject, error, payload) VALUES ($1, $2, $3)",
                &[&subject, &error, &payload],
            )
            .await
            .map(|_| ())
    }

    /// Compares, per gateway, its newest totals report older than `grace` with the batches
    /// applied up to that report's last sealed batch. Returns (missing batches, missing units)
    /// summed over gateways, logging each gateway's gap.
    pub async fn reconcile(&self, grace: Duration) -> Result<(i64, i64), tokio_postgres::Error> {
        let rows = self
            .client
            .query(
                "SELECT DISTINCT ON (t.gateway_id) t.gateway_id, t.sealed_batch_seq, t.sealed_cumulative_units,
                        (SELECT count(*) FROM processed_batches p WHERE p.gateway_id = t.gateway_id AND p.batch_seq <= t.sealed_batch_seq),
                        (SELECT coalesce(sum(units), 0)::bigint FROM processed_batches p WHERE p.gateway_id = t.gateway_id AND p.batch_seq <= t.sealed_batch_seq)
                 FROM gateway_totals t
                 WHERE t.received_at < now() - make_interval(secs => $1)
                 ORDER BY t.gateway_id, t.reported_at_unix_ms DESC",
                &[&grace.as_secs_f64()],
            )
            .await?;
        let (mut gap_batches, mut gap_units) = (0, 0);
        for r in rows {
            let gateway: String = r.get(0);
            let (sealed_seq, sealed_units, applied, applied_units): (i64, i64, i64, i64) =
                (r.get(1), r.get(2), r.get(3), r.get(4));
            let (missing, missing_units) = (sealed_seq - applied, sealed_units - applied_units);
            if missing != 0 || missing_units != 0 {
                tracing::error!(
                    %gateway,
                    sealed_batches = sealed_seq,
                    applied_batches = applied,
                    sealed_units,
                    applied_units,
                    "reconciliation gap: the ledger lacks what the gateway sealed"
                );
            }
            gap_batches += missing;
            gap_units += missing_units;
        }
        // Keep the latest day of reports per gateway.
        self.client
            .execute(
                "DELETE FROM gateway_totals WHERE received_at < now() - interval '1 day'",
                &[],
            )
            .await?;
        Ok((gap_batches, gap_units))
    }

    /// Units marked unresolved (image search) whose library the entitlement store still does
    /// not know: billed at the same/product price until it does. By owner.
    pub async fn unresolved_units(&self) -> Result<Vec<(u64, i64)>, tokio_postgres::Error> {
        let store: bool = self
            .client
            .query_one(
                "SELECT to_regclass('entitlements.libraries') IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        let sql = if store {
            "SELECT owner_uin, sum(units)::bigint FROM unresolved_usage u
             WHERE NOT EXISTS (SELECT 1 FROM entitlements.libraries l
                               WHERE l.owner_uin = u.owner_uin AND l.group_id = u.library)
             GROUP BY owner_uin ORDER BY owner_uin"
        } else {
            "SELECT owner_uin, sum(units)::bigint FROM unresolved_usage GROUP BY owner_uin ORDER BY owner_uin"
        };
        Ok(self
            .client
            .query(sql, &[])
            .await?
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1)))
            .collect())
    }

    /// An owner's usage as hourly counts (for statements), billing items resolved by `catalog`.
    pub async fn usage(
        &self,
        catalog: &tollgate_core::catalog::Catalog,
        owner_uin: u64,
    ) -> anyhow::Result<Vec<UsageCount>> {
        usage_of(&self.client, catalog, owner_uin).await
    }

    /// Total units in the ledger (for tests and reports).
    pub async fn total_units(&self) -> Result<i64, tokio_postgres::Error> {
        Ok(self
            .client
            .query_one(
                "SELECT coalesce(sum(units), 0)::bigint FROM usage_ledger",
                &[],
            )
            .await?
            .get(0))
    }

    pub async fn applied_batches(&self) -> Result<i64, tokio_postgres::Error> {
        Ok(self
            .client
            .query_one("SELECT count(*) FROM processed_batches", &[])
            .await?
            .get(0))
    }
}

/// An owner's usage in the ledger as hourly counts, billing items resolved by `catalog`, as
/// `c` sees it (a batch's own transaction, a refund's, a statement's connection).
pub async fn usage_of(
    c: &impl tokio_postgres::GenericClient,
    catalog: &tollgate_core::catalog::Catalog,
    owner_uin: u64,
) -> anyhow::Result<Vec<UsageCount>> {
    let rows = c
        .query(
            "SELECT billing_item, interface, hour_start, units, coalesce(first_at_ms, hour_start * 1000)
             FROM usage_ledger WHERE owner_uin = $1 ORDER BY hour_start",
            &[&i64_of(owner_uin)],
        )
        .await?;
    let item_of = |item: &str| {
        catalog
            .item_by_key(item)
            .map(|i| i.id)
            .ok_or_else(|| anyhow::anyhow!("ledger has unknown billing item {item:?}"))
    };
    // Of each row, the units whose library was unresolved come apart, by library.
    let mut unresolved: std::collections::BTreeMap<(String, String, i64), Vec<(String, u64)>> =
        Default::default();
    for r in c
        .query(
            "SELECT billing_item, interface, hour_start, library, units FROM unresolved_usage WHERE owner_uin = $1",
            &[&i64_of(owner_uin)],
        )
        .await?
    {
        unresolved
            .entry((r.get(0), r.get(1), r.get(2)))
            .or_default()
            .push((r.get(3), r.get::<_, i64>(4) as u64));
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (item, interface, hour_start): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        let units = r.get::<_, i64>(3) as u64;
        let first_at_ms: i64 = r.get(4);
        let interface: Arc<str> = Arc::from(interface.as_str());
        let id = item_of(&item)?;
        let mut resolved = units;
        if let Some(libs) = unresolved.remove(&(item, interface.to_string(), hour_start)) {
            for (library, n) in libs {
                let n = n.min(resolved);
                resolved -= n;
                out.push(UsageCount {
                    item: id,
                    interface: Arc::clone(&interface),
                    hour_start,
                    first_at_ms,
                    units: n,
                    unresolved_library: Some(Arc::from(library.as_str())),
                });
            }
        }
        if resolved > 0 {
            out.push(UsageCount {
                item: id,
                interface,
                hour_start,
                first_at_ms,
                units: resolved,
                unresolved_library: None,
            });
        }
    }
    Ok(out)
}

/// Applies with retries: a lost connection is re-established; the batch is retried until it
/// applies (it is idempotent).
async fn apply_durably(
    ledger: &mut Ledger,
    url: &str,
    b: &Batch,
    m: &ConsumerMetrics,
) -> anyhow::Result<Applied> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match ledger.apply(b).await {
            Ok(a) => {
                m.apply_seconds.observe(started.elapsed().as_secs_f64());
                match a {
                    Applied::New => {
                        m.applied.inc();
                        m.units.inc_by(b.units);
                    }
                    Applied::Duplicate => m.duplicates.inc(),
                    Applied::Conflict => {
                        m.conflicts.inc();
                        tracing::error!(
                            batch = %b.batch_id,
                            units = b.units,
                            "a batch id already applied came with other content: not applied, kept in rejected_messages"
                        );
                        ledger
                            .reject(
                                "conflicting-batch",
                                &format!("batch id {} was applied with other content", b.batch_id),
                                &b.to_bytes(),
                            )
                            .await
                            .map_err(anyhow::Error::from)?;
                    }
                }
                return Ok(a);
            }
            Err(e) => {
                tracing::warn!(batch = %b.batch_id, error = %e, retry_in = ?backoff, "applying a batch failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                if ledger.is_closed() {
                    let live = ledger.live.clone();
                    *ledger = Ledger::connect(url, Duration::from_secs(3600))
                        .await?
                        .with_live(live);
                }
            }
        }
    }
}

async fn reevaluate(ledger: &mut Ledger, nats: Option<&async_nats::Client>) {
    if let Err(e) = ledger.reevaluate().await {
        tracing::warn!(error = %format!("{e:#}"), "re-rating exhausted owners failed; retried at the next tick");
    }
    if let Err(e) = ledger.send_notices(nats).await {
        tracing::warn!(error = %format!("{e:#}"), "pack notices not sent; retried at the next tick");
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Failpoint {
    after: Option<u64>,
    committed: u64,
}

impl Failpoint {
    fn committed(&mut self) {
        self.committed += 1;
        if self.after == Some(self.committed) {
            tracing::error!(
                committed = self.committed,
                "failpoint: aborting between commit and ack"
            );
            std::process::abort();
        }
    }
}

/// Runs the consumer until `shutdown`.
pub async fn run(
    config: ConsumerConfig,
    metrics: Arc<ConsumerMetrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut ledger = Ledger::connect(&config.postgres, Duration::from_secs(60))
        .await?
        .with_live(config.live.clone());
    let mut failpoint = Failpoint {
        after: config.crash_after_commit,
        committed: 0,
    };
    let mut reconcile = tokio::time::interval(config.reconcile_interval);
    tokio::pin!(shutdown);
    match &config.source {
        Source::Dir(dir) => loop {
            let applied =
                apply_dir(dir, &mut ledger, &config.postgres, &metrics, &mut failpoint).await?;
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                _ = reconcile.tick() => {
                    run_reconcile(&ledger, &config, &metrics).await;
                    reevaluate(&mut ledger, None).await;
                }
                _ = tokio::time::sleep(Duration::from_millis(if applied > 0 { 0 } else { 250 })) => {}
            }
        },
        Source::Nats {
            url,
            stream,
            durable,
        } => {
            let client = async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .connect(url.as_str())
                .await?;
            let nats = client.clone();
            let js = jetstream::new(client);
            let mut backoff = Duration::from_millis(200);
            let consumer = loop {
                let attempt = async {
                    ensure_stream(&js, stream, 1)
                        .await
                        .map_err(anyhow::Error::msg)?;
                    let s = js.get_stream(stream).await?;
                    let c: jetstream::consumer::PullConsumer = s
                        .get_or_create_consumer(
                            durable,
                            jetstream::consumer::pull::Config {
                                durable_name: Some(durable.clone()),
                                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                                // A crashed consumer's unacknowledged batches come back after
                                // this; applying one takes milliseconds.
                                ack_wait: Duration::from_secs(10),
                                max_ack_pending: 1024,
                                ..Default::default()
                            },
                        )
                        .await?;
                    anyhow::Ok(c)
                };
                match attempt.await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot reach the usage stream yet");
                        tokio::select! {
                            () = &mut shutdown => return Ok(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            };
            // The lag poller ends with this function (on shutdown or an error).
            let _lag_poller = {
                let mut c = consumer.clone();
                let lag = metrics.lag.clone();
                AbortOnDrop(tokio::spawn(async move {
                    loop {
                        if let Ok(info) = c.info().await {
                            lag.set(info.num_pending as i64 + info.num_ack_pending as i64);
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }))
            };
            loop {
                let mut messages = match consumer.messages().await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot pull messages; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                loop {
                    let next = tokio::select! {
                        () = &mut shutdown => return Ok(()),
                        _ = reconcile.tick() => {
                            run_reconcile(&ledger, &config, &metrics).await;
                            reevaluate(&mut ledger, Some(&nats)).await;
                            continue;
                        }
                        next = messages.next() => next,
                    };
                    let msg = match next {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "pull error");
                            continue;
                        }
                        None => break,
                    };
                    let subject = msg.subject.to_string();
                    if subject.starts_with("tollgate.totals.") {
                        match serde_json::from_slice::<Totals>(&msg.payload) {
                            Ok(t) => {
                                if let Err(e) = ledger.record_totals(&t).await {
                                    tracing::warn!(error = %e, "totals not recorded; will be redelivered");
                                    continue;
                                }
                            }
                            Err(e) => {
                                metrics.rejected.inc();
                                let _ = ledger.reject(&subject, &e.to_string(), &msg.payload).await;
                            }
                        }
                    } else {
                        match serde_json::from_slice::<Batch>(&msg.payload) {
                            Ok(b) => {
                                if apply_durably(&mut ledger, &config.postgres, &b, &metrics)
                                    .await?
                                    == Applied::New
                                {
                                    failpoint.committed();
                                }
                            }
                            Err(e) => {
                                // Not a batch: kept for a person, never silently dropped.
                                metrics.rejected.inc();
                                tracing::error!(%subject, error = %e, "rejected a message that is not a batch");
                                if let Err(e) =
                                    ledger.reject(&subject, &e.to_string(), &msg.payload).await
                                {
                                    tracing::warn!(error = %e, "could not keep the rejected message; will be redelivered");
                                    continue;
                                }
                            }
                        }
                    }
                    // Commit happened above; now the ack. A lost ack means a redelivery, which
                    // the processed-batches table turns into a no-op.
                    if let Err(e) = msg.double_ack().await {
                        tracing::warn!(error = %e, "ack not confirmed; the batch may be redelivered (harmless)");
                    }
                }
            }
        }
    }
}

async fn run_reconcile(ledger: &Ledger, config: &ConsumerConfig, m: &ConsumerMetrics) {
    match ledger.reconcile(config.reconcile_grace).await {
        Ok((batches, units)) => {
            m.gap_batches.set(batches);
            m.gap_units.set(units);
            if batches != 0 || units != 0 {
                m.gaps.inc();
            }
        }
        Err(e) => tracing::warn!(error = %e, "reconciliation query failed"),
    }
    match ledger.unresolved_units().await {
        Ok(by_owner) => {
            let total: i64 = by_owner.iter().map(|(_, n)| n).sum();
            m.unresolved_units.set(total);
            for (owner_uin, units) in by_owner {
                tracing::warn!(
                    owner_uin,
                    units,
                    "image-search units whose library type is unknown: billed as same/product search until it is known"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "unresolved-usage query failed"),
    }
}

/// Applies every batch file in `dir` (the local sink's directory) and moves it to `applied/`;
/// records `*.totals` reports. Returns how many batches were applied.
async fn apply_dir(
    dir: &Path,
    ledger: &mut Ledger,
    url: &str,
    metrics: &ConsumerMetrics,
    failpoint: &mut Failpoint,
) -> anyhow::Result<usize> {
    let applied_dir = dir.join("applied");
    std::fs::create_dir_all(&applied_dir)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    metrics.lag.set(
        files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .count() as i64,
    );
    let mut n = 0;
    for p in files {
        match p.extension().and_then(|x| x.to_str()) {
            Some("totals") => {
                if let Ok(t) = serde_json::from_slice::<Totals>(&std::fs::read(&p)?) {
                    ledger.record_totals(&t).await?;
                }
            }
            Some("json") => {
                let bytes = std::fs::read(&p)?;
                let b: Batch = match serde_json::from_slice(&bytes) {
                    Ok(b) => b,
                    Err(e) => {
                        metrics.rejected.inc();
                        ledger
                            .reject(&p.display().to_string(), &e.to_string(), &bytes)
                            .await?;
                        std::fs::rename(&p, p.with_extension("rejected"))?;
                        continue;
                    }
                };
                if apply_durably(ledger, url, &b, metrics).await? == Applied::New {
                    failpoint.committed();
                }
                let target = applied_dir.join(p.file_name().expect("a file"));
                std::fs::rename(&p, &target)?;
                n += 1;
            }
            _ => {}
        }
    }
    if n > 0 {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(n)
}
