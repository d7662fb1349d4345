//! Writing the store: one [`Write`] per change, which takes the next version first (and with
//! it the counter's row lock: writes are serialized, and versions become visible in order),
//! writes its rows with that version and an audit row, and notifies the version on commit.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use tokio_postgres::{Client, Transaction};

use crate::image::{
    AccountRow, ActivationRow, ContractPriceRow, CredentialRow, LibraryRow, ModeRow, OverlayRow,
    PackRow, ShadowRow,
};
use crate::schema::CHANNEL;
use tollgate_core::config::entitlements::ModeKind;

/// One write transaction.
pub struct Write<'a> {
    tx: Transaction<'a>,
    /// The version every row this write touches gets.
    pub version: i64,
    /// Who is writing (a token's name, `import`, …), recorded in the audit table.
    pub actor: String,
    /// The write's instant (the API's clock), recorded in rows and the audit table.
    pub now: DateTime<Utc>,
}

impl std::fmt::Debug for Write<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Write")
            .field("version", &self.version)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// A stored answer to an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub request_sha256: Vec<u8>,
    pub status: u16,
    pub response: String,
}

fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).expect("rows serialize")
}

impl<'a> Write<'a> {
    /// Begins a write: takes the next version (waiting for any other write to commit).
    pub async fn begin(
        client: &'a mut Client,
        actor: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Write<'a>> {
        let tx = client.transaction().await?;
        Self::on(tx, actor, now).await
    }

    /// Makes a write of a transaction already under way (settlement's batch transaction: its
    /// ledger rows and the store rows they change commit together).
    pub async fn on(
        tx: Transaction<'a>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Write<'a>> {
        let version: i64 = tx
            .query_one(
                "UPDATE entitlements.counter SET version = version + 1 WHERE id = 1 RETURNING version",
                &[],
            )
            .await?
            .get(0);
        Ok(Write {
            tx,
            version,
            actor: actor.to_owned(),
            now,
        })
    }

    /// The transaction, for reads that must see this write's own rows.
    pub fn tx(&self) -> &Transaction<'a> {
        &self.tx
    }

    /// Commits, notifying the version to every listening gateway (delivered at commit).
    pub async fn commit(self) -> anyhow::Result<i64> {
        self.tx
            .execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &self.version.to_string()],
            )
            .await?;
        self.tx.commit().await?;
        Ok(self.version)
    }

    /// Abandons the write: nothing of it is stored (the counter rolls back with it, so the
    /// next write takes the same version).
    pub async fn rollback(self) -> anyhow::Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }

    /// Records what changed: `before` and `after` as JSON (`None`: nothing before, or after).
    pub async fn audit(
        &self,
        action: &str,
        target: &str,
        before: Option<&(impl Serialize + Sync)>,
        after: Option<&(impl Serialize + Sync)>,
    ) -> anyhow::Result<()> {
        let before = before.map(json);
        let after = after.map(json);
        self.tx
            .execute(
                "INSERT INTO entitlements.audit (at, actor, action, target, before, after, version)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb, $6::text::jsonb, $7)",
                &[
                    &self.now,
                    &self.actor,
                    &action,
                    &target,
                    &before,
                    &after,
                    &self.version,
                ],
            )
            .await?;
        Ok(())
    }

    /// The stored answer of an idempotency key, waiting for a concurrent write that holds it.
    pub async fn idempotent(&self, key: &str) -> anyhow::Result<Option<Stored>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT request_sha256, status, response FROM entitlements.idempotency WHERE key = $1",
                &[&key],
            )
            .await?
            .map(|r| Stored {
                request_sha256: r.get(0),
                status: r.get::<_, i32>(1) as u16,
                response: r.get(2),
            }))
    }

    /// Stores the answer of an idempotency key, in this write's transaction.
    pub async fn remember(&self, key: &str, stored: &Stored) -> anyhow::Result<()> {
        self.tx
            .execute(
                "INSERT INTO entitlements.idempotency (key, request_sha256, status, response, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &key,
                    &stored.request_sha256,
                    &i32::from(stored.status),
                    &stored.response,
                    &self.now,
                ],
            )
            .await?;
        Ok(())
    }

    pub async fn insert_account(
        &self,
        uin: u64,
        owner_uin: Option<u64>,
        name: &str,
        postpaid: bool,
    ) -> anyhow::Result<AccountRow> {
        let row = AccountRow {
            uin,
            owner_uin,
            name: name.to_owned(),
            postpaid,
            arrears: false,
            exhausted: vec![],
            created_at: self.now,
            balance: Decimal::ZERO,
            stop_at: None,
            version: self.version,
        };
        self.tx
            .execute(
                "INSERT INTO entitlements.accounts (uin, owner_uin, name, postpaid, created_at, version)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &(uin as i64),
                    &owner_uin.map(|o| o as i64),
                    &name,
                    &postpaid,
                    &self.now,
                    &self.version,
                ],
            )
            .await?;
        self.audit(
            "account.create",
            &format!("account {uin}"),
            None::<&()>,
            Some(&row),
        )
        .await?;
        Ok(row)
    }

    /// Replaces an account's name and main-account flags (the caller passes the row as read
    /// in this write, changed).
    pub async fn update_account(
        &self,
        before: &AccountRow,
        after: AccountRow,
    ) -> anyhow::Result<AccountRow> {
        let row = AccountRow {
            version: self.version,
            ..after
        };
        self.tx
            .execute(
                "UPDATE entitlements.accounts SET name = $2, postpaid = $3, arrears = $4, exhausted = $5,
                        balance = $7::text::numeric, stop_at = $8, version = $6
                 WHERE uin = $1",
                &[
                    &(row.uin as i64),
                    &row.name,
                    &row.postpaid,
                    &row.arrears,
                    &row.exhausted,
                    &self.version,
                    &row.balance.to_string(),
                    &row.stop_at,
                ],
            )
            .await?;
        self.audit(
            "account.update",
            &format!("account {}", row.uin),
            Some(before),
            Some(&row),
        )
        .await?;
        Ok(row)
    }

    /// Activates a service; `None` if it already was.
    pub async fn activate(
        &self,
        owner_uin: u64,
        service: &str,
        at: DateTime<Utc>,
    ) -> anyhow::Result<Option<ActivationRow>> {
        let n = self
            .tx
            .execute(
                "INSERT INTO entitlements.activations (owner_uin, service, activated_at, version)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&(owner_uin as i64), &service, &at, &self.version],
            )
            .await?;
        if n == 0 {
            return Ok(None);
        }
        let row = ActivationRow {
            owner_uin,
            service: service.to_owned(),
            activated_at: at,
            version: self.version,
        };
        self.audit(
            "service.activate",
            &format!("account {owner_uin}"),
            None::<&()>,
            Some(&row),
        )
        .await?;
        Ok(Some(row))
    }

    pub async fn insert_credential(
        &self,
        secret_id: &str,
        uin: u64,
        secret_key: &str,
    ) -> anyhow::Result<CredentialRow> {
        let row = CredentialRow {
            secret_id: secret_id.to_owned(),
            uin,
            secret_key: secret_key.to_owned(),
            created_at: self.now,
            expires_at: None,
            revoked_at: None,
            replaced_by: None,
            version: self.version,
        };
        self.tx
            .execute(
                "INSERT INTO entitlements.credentials (secret_id, uin, secret_key, created_at, version)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&secret_id, &(uin as i64), &secret_key, &self.now, &self.version],
            )
            .await?;
        self.audit(
            "credential.create",
            &format!("credential {secret_id}"),
            None::<&()>,
            Some(&row),
        )
        .await?;
        Ok(row)
    }

    /// Rotation's old half: the credential stays valid until `expires_at`, replaced by `by`.
    pub async fn expire_credential(
        &self,
        before: &CredentialRow,
        expires_at: DateTime<Utc>,
        by: &str,
    ) -> anyhow::Result<CredentialRow> {
        let row = CredentialRow {
            expires_at: Some(expires_at),
            replaced_by: Some(by.to_owned()),
            version: self.version,
            ..before.clone()
        };
        self.tx
            .execute(
                "UPDATE entitlements.credentials SET expires_at = $2, replaced_by = $3, version = $4
                 WHERE secret_id = $1",
                &[&row.secret_id, &expires_at, &by, &self.version],
            )
            .await?;
        self.audit(
            "credential.rotate",
            &format!("credential {}", row.secret_id),
            Some(before),
            Some(&row),
        )
        .await?;
        Ok(row)
    }

    pub async fn revoke_credential(&self, before: &CredentialRow) -> anyhow::Result<CredentialRow> {
        let row = CredentialRow {
            revoked_at: Some(self.now),
            version: self.version,
            ..before.clone()
        };
        self.tx
            .execute(
                "UPDATE entitlements.credentials SET revoked_at = $2, version = $3 WHERE secret_id = $1",
                &[&row.secret_id, &self.now, &self.version],
            )
            .await?;
        self.audit(
            "credential.revoke",
            &format!("credential {}", row.secret_id),
            Some(before),
            Some(&row),
        )
        .await?;
        Ok(row)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn insert_mode(
        &self,
        uin: u64,
        group: &str,
        mode: ModeKind,
        quantity: u32,
        start: Option<NaiveDate>,
        end: Option<NaiveDate>,
        price: Option<Decimal>,
    ) -> anyhow::Result<ModeRow> {
        let id: i64 = self
            .tx
            .query_one(
                "INSERT INTO entitlements.modes (uin, group_name, mode, quantity, start_date, end_date, purchased_at, price, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::numeric, $9) RETURNING id",
                &[
                    &(uin as i64),
                    &group,
                    &mode.as_str(),
                    &(quantity as i32),
                    &start,
                    &end,
                    &self.now,
                    &price.map(|p| p.to_string()),
                    &self.version,
                ],
            )
            .await?
            .get(0);
        let row = ModeRow {
            id,
            uin,
            group: group.to_owned(),
            mode,
            quantity,
            start,
            end,
            purchased_at: self.now,
            price,
            version: self.version,
        };
        self.audit(
            "mode.buy",
            &format!("account {uin}"),
            None::<&()>,
            Some(&row),
        )
        .await?;
        Ok(row)
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn insert_overlay(
        &self,
        uin: u64,
        interface: &str,
        qps: u32,
        start: NaiveDate,
        end: NaiveDate,
        purchased_at: DateTime<Utc>,
        price: Option<Decimal>,
    ) -> anyhow::Result<OverlayRow> {
        let id: i64 = self
            .tx
            .query_one(
                "INSERT INTO entitlements.overlays (uin, interface, qps, start_date, end_date, purchased_at, price, version)
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::numeric, $8) RETURNING id",
                &[
                    &(uin as i64),
                    &interface,
                    &(qps as i32),
                    &start,
                    &end,
                    &purchased_at,
                    &price.map(|p| p.to_string()),
                    &self.version,
                ],
            )
            .await?
            .get(0);
        let row = OverlayRow {
            id,
            uin,
            interface: interface.to_owned(),
            qps,
            start,
            end,
            purchased_at,
            price,
            version: self.version,
        };
        self.audit(
            "overlay.buy",
            &format!("account {uin}"),
            None::<&()>,
            Some(&row),
        )
        .await?;
        Ok(row)
    }

    pub async fn insert_pack(
        &self,
        id: &str,
        owner_uin: u64,
        item: &str,
        size: u64,
        purchased_at: DateTime<Utc>,
        price: Decimal,
    ) -> anyhow::Result<PackRow> {
        self.tx
            .execute(
                "INSERT INTO entitlements.packs (id, owner_uin, item, size, purchased_at, price, version)
                 VALUES ($1, $2, $3, $4, $5, $6::text::numeric, $7)",
                &[
                    &id,
                    &(owner_uin as i64),
                    &item,
                    &(size as i64),
                    &purchased_at,
                    &price.to_string(),
                    &self.version,
                ],
            )
            .await?;
        let row = PackRow {
            id: id.to_owned(),
            owner_uin,
            item: item.to_owned(),
            size,
            purchased_at,
            price,
            refunded_at: None,
            version: self.version,
        };
        self.audit(
            "pack.buy",
            &format!("account {owner_uin}"),
            None::<&()>,
            Some(&row),
        )
        .await?;
        Ok(row)
    }

    pub async fn refund_pack(&self, before: &PackRow) -> anyhow::Result<PackRow> {
        let row = PackRow {
            refunded_at: Some(self.now),
            version: self.version,
            ..before.clone()
        };
        self.tx
            .execute(
                "UPDATE entitlements.packs SET refunded_at = $2, version = $3 WHERE id = $1",
                &[&row.id, &self.now, &self.version],
            )
            .await?;
        self.audit(
            "pack.refund",
            &format!("account {}", row.owner_uin),
            Some(before),
            Some(&row),
        )
        .await?;
        Ok(row)
    }

    pub async fn set_contract_price(
        &self,
        owner_uin: u64,
        item: &str,
        price: Decimal,
        before: Option<&ContractPriceRow>,
    ) -> anyhow::Result<ContractPriceRow> {
        self.tx
            .execute(
                "INSERT INTO entitlements.contract_prices (owner_uin, item, price, version)
                 VALUES ($1, $2, $3::text::numeric, $4)
                 ON CONFLICT (owner_uin, item) DO UPDATE SET price = EXCLUDED.price, version = EXCLUDED.version",
                &[&(owner_uin as i64), &item, &price.to_string(), &self.version],
            )
            .await?;
        let row = ContractPriceRow {
            owner_uin,
            item: item.to_owned(),
            price,
            version: self.version,
        };
        self.audit(
            "contract_price.set",
            &format!("account {owner_uin}"),
            before,
            Some(&row),
        )
        .await?;
        Ok(row)
    }

    /// Records the type of an owner's library (a new one, or one created again after a
    /// deletion); `None` when the store already holds exactly this.
    pub async fn learn_library(
        &self,
        owner_uin: u64,
        group_id: &str,
        group_type: i64,
        source: &str,
    ) -> anyhow::Result<Option<LibraryRow>> {
        let before = self.library(owner_uin, group_id).await?;
        if before
            .as_ref()
            .is_some_and(|b| b.group_type == group_type && b.deleted_at.is_none())
        {
            return Ok(None);
        }
        self.tx
            .execute(
                "INSERT INTO entitlements.libraries (owner_uin, group_id, group_type, source, learned_at, deleted_at, version)
                 VALUES ($1, $2, $3, $4, $5, NULL, $6)
                 ON CONFLICT (owner_uin, group_id) DO UPDATE SET group_type = EXCLUDED.group_type,
                   source = EXCLUDED.source, learned_at = EXCLUDED.learned_at, deleted_at = NULL,
                   version = EXCLUDED.version",
                &[&(owner_uin as i64), &group_id, &group_type, &source, &self.now, &self.version],
            )
            .await?;
        let row = LibraryRow {
            owner_uin,
            group_id: group_id.to_owned(),
            group_type,
            source: source.to_owned(),
            learned_at: self.now,
            deleted_at: None,
            version: self.version,
        };
        self.audit(
            "library.learn",
            &format!("account {owner_uin}"),
            before.as_ref(),
            Some(&row),
        )
        .await?;
        Ok(Some(row))
    }

    /// Marks an owner's library deleted; `None` when the store holds no live one.
    pub async fn delete_library(
        &self,
        owner_uin: u64,
        group_id: &str,
    ) -> anyhow::Result<Option<LibraryRow>> {
        let Some(before) = self
            .library(owner_uin, group_id)
            .await?
            .filter(|b| b.deleted_at.is_none())
        else {
            return Ok(None);
        };
        self.tx
            .execute(
                "UPDATE entitlements.libraries SET deleted_at = $3, version = $4
                 WHERE owner_uin = $1 AND group_id = $2",
                &[&(owner_uin as i64), &group_id, &self.now, &self.version],
            )
            .await?;
        let row = LibraryRow {
            deleted_at: Some(self.now),
            version: self.version,
            ..before.clone()
        };
        self.audit(
            "library.delete",
            &format!("account {owner_uin}"),
            Some(&before),
            Some(&row),
        )
        .await?;
        Ok(Some(row))
    }

    async fn library(&self, owner_uin: u64, group_id: &str) -> anyhow::Result<Option<LibraryRow>> {
        Ok(self
            .tx
            .query_opt(
                "SELECT group_type, source, learned_at, deleted_at, version FROM entitlements.libraries
                 WHERE owner_uin = $1 AND group_id = $2 FOR UPDATE",
                &[&(owner_uin as i64), &group_id],
            )
            .await?
            .map(|r| LibraryRow {
                owner_uin,
                group_id: group_id.to_owned(),
                group_type: r.get("group_type"),
                source: r.get("source"),
                learned_at: r.get("learned_at"),
                deleted_at: r.get("deleted_at"),
                version: r.get("version"),
            }))
    }

    pub async fn set_shadow(
        &self,
        before: &ShadowRow,
        all: bool,
        groups: &[String],
    ) -> anyhow::Result<ShadowRow> {
        let row = ShadowRow {
            all,
            groups: groups.to_vec(),
            version: self.version,
        };
        self.tx
            .execute(
                "UPDATE entitlements.shadow SET all_groups = $1, groups = $2, version = $3 WHERE id = 1",
                &[&all, &groups, &self.version],
            )
            .await?;
        self.audit("shadow.set", "shadow", Some(before), Some(&row))
            .await?;
        Ok(row)
    }
}
