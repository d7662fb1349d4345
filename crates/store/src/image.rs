//! The store's rows in memory: an [`Image`] of every table (or of one owner's tree), kept
//! current by deltas, and turned into the documents `tollgate_core` validates.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use tollgate_core::catalog::Catalog;
use tollgate_core::clock::beijing;
use tollgate_core::config::entitlements::{
    AccountDoc, CredentialDoc, DocError, ModeDoc, ModeKind, OverlayDoc, ShadowDoc,
    build_credentials, build_entitlements,
};
use tollgate_core::credentials::Credentials;
use tollgate_core::entitlement::Entitlements;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRow {
    pub uin: u64,
    pub owner_uin: Option<u64>,
    pub name: String,
    pub postpaid: bool,
    pub arrears: bool,
    pub exhausted: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Main only: the prepaid account balance (CNY) month settlements are deducted from.
    #[serde(default, with = "rust_decimal::serde::str")]
    pub balance: Decimal,
    /// Main only: service stops at this instant (24 h after a settlement left the balance
    /// negative); cleared by a top-up that brings it back to zero or above.
    #[serde(default)]
    pub stop_at: Option<DateTime<Utc>>,
    pub version: i64,
}

impl AccountRow {
    /// The main account billed for this one.
    pub fn owner(&self) -> u64 {
        self.owner_uin.unwrap_or(self.uin)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationRow {
    pub owner_uin: u64,
    pub service: String,
    pub activated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRow {
    pub secret_id: String,
    pub uin: u64,
    /// Never serialized (the audit table and API answers show it redacted).
    #[serde(skip)]
    pub secret_key: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub replaced_by: Option<String>,
    pub version: i64,
}

impl std::fmt::Debug for CredentialRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRow")
            .field("secret_id", &self.secret_id)
            .field("uin", &self.uin)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeRow {
    pub id: i64,
    pub uin: u64,
    pub group: String,
    pub mode: ModeKind,
    pub quantity: u32,
    pub start: Option<NaiveDate>,
    pub end: Option<NaiveDate>,
    pub purchased_at: DateTime<Utc>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub price: Option<Decimal>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayRow {
    pub id: i64,
    pub uin: u64,
    pub interface: String,
    pub qps: u32,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub purchased_at: DateTime<Utc>,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub price: Option<Decimal>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRow {
    pub id: String,
    pub owner_uin: u64,
    pub item: String,
    pub size: u64,
    pub purchased_at: DateTime<Utc>,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    pub refunded_at: Option<DateTime<Utc>>,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractPriceRow {
    pub owner_uin: u64,
    pub item: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ShadowRow {
    pub all: bool,
    pub groups: Vec<String>,
    pub version: i64,
}

/// An image-search library of an owner: its `GroupType`, and how it was learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LibraryRow {
    pub owner_uin: u64,
    pub group_id: String,
    pub group_type: i64,
    /// `create` (a CreateGroup the gateway forwarded), `describe` (the backend's answer to
    /// DescribeGroups), or `admin`.
    pub source: String,
    pub learned_at: DateTime<Utc>,
    /// Set by a DeleteGroup: the gateway forgets it; settlement still rates by it.
    pub deleted_at: Option<DateTime<Utc>>,
    pub version: i64,
}

/// Rows of the store, by primary key. A full image holds every row; a delta only rows changed
/// after some version; an owner's image only that owner's tree (and the shadow row).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// The counter as the read saw it: every row of this version or below is in the image.
    pub version: i64,
    pub accounts: BTreeMap<u64, AccountRow>,
    pub activations: BTreeMap<(u64, String), ActivationRow>,
    pub credentials: BTreeMap<String, CredentialRow>,
    pub modes: BTreeMap<i64, ModeRow>,
    pub overlays: BTreeMap<i64, OverlayRow>,
    pub packs: BTreeMap<String, PackRow>,
    pub contract_prices: BTreeMap<(u64, String), ContractPriceRow>,
    pub libraries: BTreeMap<(u64, String), LibraryRow>,
    pub shadow: ShadowRow,
}

/// What applying a delta did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Rows newer than the image's, taken.
    pub taken: usize,
    /// Rows not newer than the image's (a repeated or late change), ignored.
    pub ignored: usize,
}

fn merge<K: Ord + Clone, V>(
    into: &mut BTreeMap<K, V>,
    from: BTreeMap<K, V>,
    version: impl Fn(&V) -> i64,
    applied: &mut Applied,
) {
    for (k, v) in from {
        match into.get(&k) {
            Some(held) if version(held) >= version(&v) => applied.ignored += 1,
            _ => {
                into.insert(k, v);
                applied.taken += 1;
            }
        }
    }
}

impl Image {
    /// Takes every row of `delta` that is newer than the row held: a late or repeated change
    /// can never undo a newer one.
    pub fn apply(&mut self, delta: Image) -> Applied {
        let mut a = Applied::default();
        merge(&mut self.accounts, delta.accounts, |r| r.version, &mut a);
        merge(
            &mut self.activations,
            delta.activations,
            |r| r.version,
            &mut a,
        );
        merge(
            &mut self.credentials,
            delta.credentials,
            |r| r.version,
            &mut a,
        );
        merge(&mut self.modes, delta.modes, |r| r.version, &mut a);
        merge(&mut self.overlays, delta.overlays, |r| r.version, &mut a);
        merge(&mut self.packs, delta.packs, |r| r.version, &mut a);
        merge(
            &mut self.contract_prices,
            delta.contract_prices,
            |r| r.version,
            &mut a,
        );
        merge(&mut self.libraries, delta.libraries, |r| r.version, &mut a);
        if delta.shadow.version > self.shadow.version {
            self.shadow = delta.shadow;
            a.taken += 1;
        }
        self.version = self.version.max(delta.version);
        a
    }

    /// Rows in the image (for metrics and logs).
    pub fn rows(&self) -> usize {
        self.accounts.len()
            + self.activations.len()
            + self.credentials.len()
            + self.modes.len()
            + self.overlays.len()
            + self.packs.len()
            + self.contract_prices.len()
            + self.libraries.len()
    }

    /// The accounts as documents, keyed for errors as `account <uin>`.
    pub fn account_docs(&self) -> Vec<AccountDoc> {
        let mut docs: BTreeMap<u64, AccountDoc> = self
            .accounts
            .values()
            .map(|a| {
                let main = a.owner_uin.is_none_or(|o| o == a.uin);
                (
                    a.uin,
                    AccountDoc {
                        key: format!("account {}", a.uin),
                        uin: a.uin,
                        name: a.name.clone(),
                        owner: a.owner_uin,
                        services: main.then(Vec::new),
                        arrears: main.then_some(a.arrears),
                        suspended_from: if main {
                            a.stop_at.map(|t| t.with_timezone(&fixed_utc()))
                        } else {
                            None
                        },
                        postpaid: main.then_some(a.postpaid),
                        exhausted: main.then(|| a.exhausted.clone()),
                        modes: Vec::new(),
                        overlays: Vec::new(),
                    },
                )
            })
            .collect();
        for act in self.activations.values() {
            if let Some(services) = docs
                .get_mut(&act.owner_uin)
                .and_then(|d| d.services.as_mut())
            {
                services.push(act.service.clone());
            }
        }
        for m in self.modes.values() {
            if let Some(d) = docs.get_mut(&m.uin) {
                d.modes.push(ModeDoc {
                    key: format!("mode {}", m.id),
                    group: m.group.clone(),
                    mode: m.mode,
                    quantity: m.quantity,
                    start: m.start,
                    end: m.end,
                });
            }
        }
        for o in self.overlays.values() {
            if let Some(d) = docs.get_mut(&o.uin) {
                d.overlays.push(OverlayDoc {
                    key: format!("overlay {}", o.id),
                    interface: o.interface.clone(),
                    class: None,
                    qps: o.qps,
                    start: o.start,
                    end: o.end,
                    purchased_at: o.purchased_at.with_timezone(&beijing()),
                });
            }
        }
        docs.into_values().collect()
    }

    /// The credentials in force: not revoked (an expired one is kept, and refused by its
    /// `expires_at`, so its end does not wait for the next snapshot).
    pub fn credential_docs(&self) -> Vec<CredentialDoc> {
        self.credentials
            .values()
            .filter(|c| c.revoked_at.is_none())
            .map(|c| CredentialDoc {
                key: format!("credential {}", c.secret_id),
                secret_id: c.secret_id.clone(),
                secret_key: c.secret_key.clone(),
                uin: c.uin,
                expires_at: c.expires_at.map(|t| t.with_timezone(&fixed_utc())),
            })
            .collect()
    }

    pub fn shadow_doc(&self) -> ShadowDoc {
        ShadowDoc {
            all: self.shadow.all,
            groups: self.shadow.groups.clone(),
        }
    }

    /// Validates the image against `catalog` into what the request path reads: the same
    /// validator as the files'.
    pub fn build(&self, catalog: &Catalog) -> Result<(Entitlements, Credentials), DocError> {
        let entitlements = build_entitlements(&self.account_docs(), &self.shadow_doc(), catalog)?;
        let credentials = build_credentials(&self.credential_docs(), &entitlements)?;
        Ok((entitlements, credentials))
    }

    /// The main account of `uin` and every account under it.
    pub fn tree(&self, owner: u64) -> impl Iterator<Item = &AccountRow> {
        self.accounts.values().filter(move |a| a.owner() == owner)
    }
}

fn fixed_utc() -> FixedOffset {
    FixedOffset::east_opt(0).expect("zero offset")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(uin: u64, version: i64, postpaid: bool) -> AccountRow {
        AccountRow {
            uin,
            owner_uin: None,
            name: format!("a{uin}"),
            postpaid,
            arrears: false,
            exhausted: vec![],
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            balance: Decimal::ZERO,
            stop_at: None,
            version,
        }
    }

    #[test]
    fn a_late_or_repeated_change_cannot_undo_a_newer_one() {
        let mut image = Image::default();
        let mut newer = Image {
            version: 7,
            ..Default::default()
        };
        newer.accounts.insert(1, account(1, 7, true));
        let mut older = Image {
            version: 5,
            ..Default::default()
        };
        older.accounts.insert(1, account(1, 5, false));

        assert_eq!(image.apply(newer.clone()).taken, 1);
        // The older change arrives late: ignored.
        assert_eq!(image.apply(older).ignored, 1);
        assert!(image.accounts[&1].postpaid);
        // The same change again: ignored.
        assert_eq!(image.apply(newer).ignored, 1);
        assert_eq!(image.version, 7);
    }

    #[test]
    fn revoked_credentials_leave_the_documents() {
        let mut image = Image::default();
        image.accounts.insert(1, account(1, 1, true));
        let cred = |id: &str, revoked: bool| CredentialRow {
            secret_id: id.into(),
            uin: 1,
            secret_key: "0123456789abcdef".into(),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            expires_at: None,
            revoked_at: revoked.then(|| DateTime::from_timestamp(1, 0).unwrap()),
            replaced_by: None,
            version: 1,
        };
        image
            .credentials
            .insert("AKIDa".into(), cred("AKIDa", false));
        image
            .credentials
            .insert("AKIDb".into(), cred("AKIDb", true));
        let (_, creds) = image.build(&Catalog::embedded()).unwrap();
        assert!(creds.get("AKIDa").is_some());
        assert!(creds.get("AKIDb").is_none());
        // The secret never reaches a Debug line.
        assert!(!format!("{:?}", image.credentials["AKIDa"]).contains("0123456789abcdef"));
    }
}
