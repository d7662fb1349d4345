//! The store's schema, in PostgreSQL schema `entitlements`, and its migrations.
//!
//! Every row of an entitlement table carries `version`: the value of the one-row
//! `entitlements.counter` that the write which last changed it took. Every write transaction
//! takes the next value first (`UPDATE … RETURNING`), which holds the counter's row lock until
//! it commits, so versions become visible in the order they were taken: a reader that sees the
//! counter at V sees every row of version ≤ V and none above. That is what lets a gateway ask
//! "everything after V" and never miss a change (a plain sequence does not: a transaction can
//! take 10, commit after one that took 11, and be skipped by a reader that saw 11).
//!
//! Nothing is deleted: a revoked credential keeps its row (`revoked_at`), a refunded pack too
//! (`refunded_at`); so a delta carries every change as a row, and the audit table can always
//! point at what changed.

/// Migrations, applied in order, each once, recorded in `entitlements.migrations`.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE entitlements.counter (
    id int PRIMARY KEY CHECK (id = 1),
    version bigint NOT NULL
);
INSERT INTO entitlements.counter VALUES (1, 0);

-- Main accounts (owner_uin NULL) and sub-accounts (owner_uin = their main account).
CREATE TABLE entitlements.accounts (
    uin bigint PRIMARY KEY,
    owner_uin bigint REFERENCES entitlements.accounts (uin),
    name text NOT NULL,
    postpaid boolean NOT NULL DEFAULT false,
    arrears boolean NOT NULL DEFAULT false,
    exhausted text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL,
    version bigint NOT NULL
);
CREATE INDEX accounts_version ON entitlements.accounts (version);
CREATE INDEX accounts_owner ON entitlements.accounts (owner_uin);

-- Services a main account activated (开通): one-time free packs are granted then.
CREATE TABLE entitlements.activations (
    owner_uin bigint NOT NULL REFERENCES entitlements.accounts (uin),
    service text NOT NULL,
    activated_at timestamptz NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (owner_uin, service)
);
CREATE INDEX activations_version ON entitlements.activations (version);

-- SecretId -> SecretKey. TC3 is an HMAC: the gateway needs the key itself, so it cannot be
-- stored hashed (API tokens are). expires_at: a rotated credential's end of grace.
CREATE TABLE entitlements.credentials (
    secret_id text PRIMARY KEY,
    uin bigint NOT NULL REFERENCES entitlements.accounts (uin),
    secret_key text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    replaced_by text,
    version bigint NOT NULL
);
CREATE INDEX credentials_version ON entitlements.credentials (version);

-- Purchased billing modes (QPS 计费, 并发任务数计费) per interface group.
CREATE TABLE entitlements.modes (
    id bigserial PRIMARY KEY,
    uin bigint NOT NULL REFERENCES entitlements.accounts (uin),
    group_name text NOT NULL,
    mode text NOT NULL CHECK (mode IN ('qps', 'concurrency')),
    quantity int NOT NULL CHECK (quantity > 0),
    start_date date,
    end_date date,
    purchased_at timestamptz NOT NULL,
    price numeric,
    version bigint NOT NULL
);
CREATE INDEX modes_version ON entitlements.modes (version);

-- QPS overlay packs (QPS 叠加包), per interface; start/end are Beijing dates, inclusive.
CREATE TABLE entitlements.overlays (
    id bigserial PRIMARY KEY,
    uin bigint NOT NULL REFERENCES entitlements.accounts (uin),
    interface text NOT NULL,
    qps int NOT NULL CHECK (qps > 0),
    start_date date NOT NULL,
    end_date date NOT NULL,
    purchased_at timestamptz NOT NULL,
    price numeric,
    version bigint NOT NULL
);
CREATE INDEX overlays_version ON entitlements.overlays (version);

-- Prepaid packs (预付费资源包) an owner bought.
CREATE TABLE entitlements.packs (
    id text PRIMARY KEY,
    owner_uin bigint NOT NULL REFERENCES entitlements.accounts (uin),
    item text NOT NULL,
    size bigint NOT NULL CHECK (size > 0),
    purchased_at timestamptz NOT NULL,
    price numeric NOT NULL,
    refunded_at timestamptz,
    version bigint NOT NULL
);
CREATE INDEX packs_version ON entitlements.packs (version);

-- Per-owner contract prices, in the item's postpaid unit.
CREATE TABLE entitlements.contract_prices (
    owner_uin bigint NOT NULL REFERENCES entitlements.accounts (uin),
    item text NOT NULL,
    price numeric NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (owner_uin, item)
);
CREATE INDEX contract_prices_version ON entitlements.contract_prices (version);

-- Shadow mode: one row.
CREATE TABLE entitlements.shadow (
    id int PRIMARY KEY CHECK (id = 1),
    all_groups boolean NOT NULL,
    groups text[] NOT NULL,
    version bigint NOT NULL
);
INSERT INTO entitlements.shadow VALUES (1, false, '{}', 0);

-- Who changed what, when: one row per write, in the write's transaction.
CREATE TABLE entitlements.audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    target text NOT NULL,
    before jsonb,
    after jsonb,
    version bigint NOT NULL
);

-- Admin API bearer tokens: only the SHA-256 of the secret part is kept.
CREATE TABLE entitlements.tokens (
    id text PRIMARY KEY,
    name text NOT NULL,
    secret_sha256 bytea NOT NULL,
    scopes text[] NOT NULL,
    created_at timestamptz NOT NULL,
    revoked_at timestamptz
);

-- Idempotency keys of writes: the answer of the first, replayed to every retry.
CREATE TABLE entitlements.idempotency (
    key text PRIMARY KEY,
    request_sha256 bytea NOT NULL,
    status int NOT NULL,
    response text NOT NULL,
    created_at timestamptz NOT NULL
);
"#,
    ),
    (
        2,
        r#"
-- Arrears: the prepaid account balance month settlements are deducted from, and when
-- service stops (24 h after a settlement left it negative).
ALTER TABLE entitlements.accounts ADD COLUMN balance numeric NOT NULL DEFAULT 0;
ALTER TABLE entitlements.accounts ADD COLUMN stop_at timestamptz;

-- One row per owner and settled month: settling a month again deducts nothing.
CREATE TABLE entitlements.settlements (
    owner_uin bigint NOT NULL REFERENCES entitlements.accounts (uin),
    month text NOT NULL,
    amount numeric NOT NULL,
    balance_after numeric NOT NULL,
    settled_at timestamptz NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (owner_uin, month)
);

-- Top-ups of the balance.
CREATE TABLE entitlements.topups (
    id bigserial PRIMARY KEY,
    owner_uin bigint NOT NULL REFERENCES entitlements.accounts (uin),
    amount numeric NOT NULL CHECK (amount > 0),
    at timestamptz NOT NULL,
    version bigint NOT NULL
);

-- When service was stopped: rating draws no pack during a suspension and issues no monthly
-- free pack to a month that starts in one. until_at NULL: still suspended.
CREATE TABLE entitlements.suspensions (
    owner_uin bigint NOT NULL REFERENCES entitlements.accounts (uin),
    from_at timestamptz NOT NULL,
    until_at timestamptz,
    PRIMARY KEY (owner_uin, from_at)
);
"#,
    ),
    (
        3,
        r#"
-- Spend leases (crate::spend): for an owner with postpaid off, the units its packs still
-- cover per billing item after the usage in the ledger (written by live settlement), and
-- per gateway the units leased to it and, of its usage, those applied to the ledger.
CREATE TABLE entitlements.spend_budgets (
    owner_uin bigint NOT NULL,
    item text NOT NULL,
    remaining bigint NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (owner_uin, item)
);
CREATE TABLE entitlements.spend_leases (
    owner_uin bigint NOT NULL,
    item text NOT NULL,
    member text NOT NULL,
    granted bigint NOT NULL DEFAULT 0,
    applied bigint NOT NULL DEFAULT 0,
    renewed_at timestamptz NOT NULL,
    PRIMARY KEY (owner_uin, item, member)
);
"#,
    ),
    (
        4,
        r#"
-- Image-search libraries (tiia GroupId → GroupType), learned by gateways from the CreateGroup
-- calls they forward or by asking the backend; what a call into one is billed against, and
-- what settlement re-rates unresolved usage with. A deleted library keeps its row
-- (deleted_at): usage billed before the deletion is still rated by its type.
CREATE TABLE entitlements.libraries (
    owner_uin bigint NOT NULL,
    group_id text NOT NULL,
    group_type bigint NOT NULL,
    source text NOT NULL,
    learned_at timestamptz NOT NULL,
    deleted_at timestamptz,
    version bigint NOT NULL,
    PRIMARY KEY (owner_uin, group_id)
);
CREATE INDEX libraries_version ON entitlements.libraries (version);
"#,
    ),
];

/// The `LISTEN`/`NOTIFY` channel; each committed write notifies its version.
pub const CHANNEL: &str = "tollgate_entitlements";

/// Applies the migrations not applied yet (one migrator at a time, under an advisory lock).
pub async fn migrate(client: &mut tokio_postgres::Client) -> anyhow::Result<()> {
    apply_migrations(
        client,
        7420118,
        "CREATE SCHEMA IF NOT EXISTS entitlements;
         CREATE TABLE IF NOT EXISTS entitlements.migrations (
             version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        "entitlements.migrations",
        MIGRATIONS,
    )
    .await
}

/// Applies `migrations` in order, each once, recorded in `table` (made by `setup`), in one
/// transaction under the advisory lock `lock`: what every schema of the project (this store,
/// settlement's ledger) migrates with.
pub async fn apply_migrations(
    client: &mut tokio_postgres::Client,
    lock: i64,
    setup: &str,
    table: &str,
    migrations: &[(i32, &str)],
) -> anyhow::Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await?;
    tx.batch_execute(setup).await?;
    for (version, sql) in migrations {
        let done = tx
            .query_opt(
                &format!("SELECT 1 FROM {table} WHERE version = $1"),
                &[version],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(sql).await?;
            tx.execute(
                &format!("INSERT INTO {table} (version) VALUES ($1)"),
                &[version],
            )
            .await?;
            tracing::info!(version, table, "schema migration applied");
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Whether the schema is in place and current (a gateway never migrates; it waits).
pub async fn is_current(client: &tokio_postgres::Client) -> anyhow::Result<bool> {
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    let row = client
        .query_opt("SELECT max(version) FROM entitlements.migrations", &[])
        .await;
    match row {
        // A newer schema is fine: migrations only add what older readers do not read.
        Ok(Some(r)) => Ok(r.get::<_, Option<i32>>(0).is_some_and(|v| v >= latest)),
        Ok(None) => Ok(false),
        // The table does not exist yet.
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&tokio_postgres::error::SqlState::INVALID_SCHEMA_NAME) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
