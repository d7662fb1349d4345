//! `entitlements.toml` and `credentials.toml`: raw forms and validation into
//! [`crate::entitlement::Entitlements`] and [`crate::credentials::Credentials`].

use std::sync::Arc;

use chrono::{DateTime, Days, FixedOffset, NaiveDate};
use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;

use super::{ConfigError, Source, parse_toml};
use crate::catalog::GroupKey;
use crate::catalog::{Catalog, GroupLimit};
use crate::clock::beijing_midnight_unix_nanos;
use crate::credentials::{Credential, Credentials};
use crate::entitlement::overlay::{OverlayClass, OverlayPack, check_daily_cap, check_pack};
use crate::entitlement::{
    Account, Entitlements, GroupEntitlement, ModeWindow, OverlayWindow, OwnerState, PurchasedMode,
    Shadow,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntitlements {
    #[serde(default)]
    account: Vec<RawAccount>,
    #[serde(default)]
    shadow: RawShadow,
}

/// `[shadow]`: limits tried on live traffic, not enforced.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    #[serde(default)]
    all: bool,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    uin: u64,
    name: String,
    /// The main account; absent for a main account.
    owner: Option<u64>,
    services: Option<Vec<String>>,
    arrears: Option<bool>,
    postpaid: Option<bool>,
    exhausted: Option<Vec<String>>,
    #[serde(default)]
    mode: Vec<RawMode>,
    #[serde(default)]
    overlay: Vec<RawOverlay>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMode {
    group: String,
    mode: RawModeKind,
    quantity: u32,
    start: Option<toml::value::Datetime>,
    end: Option<toml::value::Datetime>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawModeKind {
    Qps,
    Concurrency,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverlay {
    interface: String,
    class: Option<OverlayClass>,
    qps: u32,
    start: toml::value::Datetime,
    end: toml::value::Datetime,
    purchased_at: toml::value::Datetime,
}

fn date_of(v: &toml::value::Datetime) -> Result<NaiveDate, String> {
    match (v.date, v.time, v.offset) {
        (Some(d), None, None) => {
            NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
                .ok_or_else(|| format!("{v} is not a calendar date"))
        }
        _ => Err(format!(
            "{v} must be a bare date like 2026-03-01 (a Beijing-time day)"
        )),
    }
}

fn instant_of(v: &toml::value::Datetime) -> Result<DateTime<FixedOffset>, String> {
    if v.offset.is_none() || v.time.is_none() {
        return Err(format!(
            "{v} must be a date-time with an offset, like 2026-03-01T10:00:00+08:00"
        ));
    }
    DateTime::parse_from_rfc3339(&v.to_string()).map_err(|e| format!("{v}: {e}"))
}

/// A validation problem of a document: the key (as the document's own keys name it) and what
/// is wrong. The file loaders add the file's name; the entitlement store adds its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocError {
    pub key: String,
    pub reason: String,
}

impl DocError {
    fn new(key: String, reason: impl Into<String>) -> DocError {
        DocError {
            key,
            reason: reason.into(),
        }
    }

    /// As a [`ConfigError`] of `source`.
    pub fn in_source(self, source: &Source) -> ConfigError {
        ConfigError::new(source, self.key, self.reason)
    }
}

/// How a purchased mode is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeKind {
    Qps,
    Concurrency,
}

impl ModeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModeKind::Qps => "qps",
            ModeKind::Concurrency => "concurrency",
        }
    }
}

/// One account as a document: what `entitlements.toml` says of it and what the entitlement
/// store holds for it, in one neutral form validated by [`build_entitlements`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccountDoc {
    /// Names the account in errors: `account[0] (uin 1)` in a file, `account 1` in the store.
    pub key: String,
    pub uin: u64,
    pub name: String,
    /// The main account; `None` (or the account's own UIN) for a main account.
    pub owner: Option<u64>,
    pub services: Option<Vec<String>>,
    pub arrears: Option<bool>,
    /// Main only: service stops at this instant (a negative balance after settlement).
    pub suspended_from: Option<DateTime<FixedOffset>>,
    pub postpaid: Option<bool>,
    pub exhausted: Option<Vec<String>>,
    pub modes: Vec<ModeDoc>,
    pub overlays: Vec<OverlayDoc>,
}

/// A purchased billing mode for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeDoc {
    /// Names it in errors, under its account: `mode[0]`, or `mode 7` in the store.
    pub key: String,
    pub group: String,
    pub mode: ModeKind,
    pub quantity: u32,
    pub start: Option<NaiveDate>,
    pub end: Option<NaiveDate>,
}

/// A QPS overlay pack for one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayDoc {
    /// Names it in errors, under its account: `overlay[0]`, or `overlay 12` in the store.
    pub key: String,
    pub interface: String,
    pub class: Option<OverlayClass>,
    pub qps: u32,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub purchased_at: DateTime<FixedOffset>,
}

/// Shadow mode as a document.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShadowDoc {
    pub all: bool,
    pub groups: Vec<String>,
}

/// One credential as a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialDoc {
    /// Names it in errors: `credential[0]`, or `credential AKID…` in the store.
    pub key: String,
    pub secret_id: String,
    pub secret_key: String,
    pub uin: u64,
    /// A rotated credential's end of grace: refused from this instant on.
    pub expires_at: Option<DateTime<FixedOffset>>,
}

fn account_doc(i: usize, a: RawAccount) -> Result<AccountDoc, DocError> {
    let key = format!("account[{i}] (uin {})", a.uin);
    let mut modes = Vec::with_capacity(a.mode.len());
    for (j, m) in a.mode.into_iter().enumerate() {
        let mkey = |k: &str| format!("{key}.mode[{j}].{k}");
        modes.push(ModeDoc {
            key: format!("mode[{j}]"),
            group: m.group,
            mode: match m.mode {
                RawModeKind::Qps => ModeKind::Qps,
                RawModeKind::Concurrency => ModeKind::Concurrency,
            },
            quantity: m.quantity,
            start: m
                .start
                .as_ref()
                .map(date_of)
                .transpose()
                .map_err(|e| DocError::new(mkey("start"), e))?,
            end: m
                .end
                .as_ref()
                .map(date_of)
                .transpose()
                .map_err(|e| DocError::new(mkey("end"), e))?,
        });
    }
    let mut overlays = Vec::with_capacity(a.overlay.len());
    for (j, o) in a.overlay.into_iter().enumerate() {
        let okey = |k: &str| format!("{key}.overlay[{j}].{k}");
        overlays.push(OverlayDoc {
            key: format!("overlay[{j}]"),
            interface: o.interface,
            class: o.class,
            qps: o.qps,
            start: date_of(&o.start).map_err(|e| DocError::new(okey("start"), e))?,
            end: date_of(&o.end).map_err(|e| DocError::new(okey("end"), e))?,
            purchased_at: instant_of(&o.purchased_at)
                .map_err(|e| DocError::new(okey("purchased_at"), e))?,
        });
    }
    Ok(AccountDoc {
        key,
        uin: a.uin,
        name: a.name,
        owner: a.owner,
        services: a.services,
        arrears: a.arrears,
        suspended_from: None,
        postpaid: a.postpaid,
        exhausted: a.exhausted,
        modes,
        overlays,
    })
}

/// Parses `entitlements.toml` into documents, without validating them against the catalog.
pub fn parse_entitlements(
    source: &Source,
    text: &str,
) -> Result<(Vec<AccountDoc>, ShadowDoc), ConfigError> {
    let raw: RawEntitlements = parse_toml(source, text)?;
    let accounts = raw
        .account
        .into_iter()
        .enumerate()
        .map(|(i, a)| account_doc(i, a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.in_source(source))?;
    Ok((
        accounts,
        ShadowDoc {
            all: raw.shadow.all,
            groups: raw.shadow.groups,
        },
    ))
}

/// Parses and validates `entitlements.toml` against `catalog`.
pub fn load_entitlements(
    source: &Source,
    text: &str,
    catalog: &Catalog,
) -> Result<Entitlements, ConfigError> {
    let (accounts, shadow) = parse_entitlements(source, text)?;
    build_entitlements(&accounts, &shadow, catalog).map_err(|e| e.in_source(source))
}

/// Validates account documents against `catalog` into the [`Entitlements`] the request path
/// reads. The one validator of entitlements: the files, the store's snapshots and the admin
/// API's writes all go through it, so all three refuse the same things with the same words.
pub fn build_entitlements(
    docs: &[AccountDoc],
    shadow_doc: &ShadowDoc,
    catalog: &Catalog,
) -> Result<Entitlements, DocError> {
    let err = |key: String, reason: String| DocError::new(key, reason);

    // Pass 1: main accounts and their state.
    let mut owners: FxHashMap<u64, Arc<OwnerState>> = FxHashMap::default();
    let mut seen: FxHashSet<u64> = FxHashSet::default();
    for a in docs {
        let key = |k: &str| format!("{}.{k}", a.key);
        if !seen.insert(a.uin) {
            return Err(err(key("uin"), "duplicate account".into()));
        }
        if a.owner.is_some_and(|o| o != a.uin) {
            for (k, set) in [
                ("services", a.services.is_some()),
                ("arrears", a.arrears.is_some()),
                ("postpaid", a.postpaid.is_some()),
                ("exhausted", a.exhausted.is_some()),
            ] {
                if set {
                    return Err(err(
                        key(k),
                        "is a main-account setting; a sub-account inherits it from its owner"
                            .into(),
                    ));
                }
            }
            continue;
        }
        let mut state = OwnerState {
            uin: a.uin,
            arrears: a.arrears.unwrap_or(false),
            suspended_from: a.suspended_from.and_then(|t| t.timestamp_nanos_opt()),
            postpaid: a.postpaid.unwrap_or(false),
            ..Default::default()
        };
        for (j, s) in a.services.iter().flatten().enumerate() {
            let svc = catalog.service_by_name(s).ok_or_else(|| {
                err(
                    key(&format!("services[{j}]")),
                    format!("unknown service {s:?}"),
                )
            })?;
            state.services.insert(svc.id);
        }
        for (j, it) in a.exhausted.iter().flatten().enumerate() {
            let item = catalog.item_by_key(it).ok_or_else(|| {
                err(
                    key(&format!("exhausted[{j}]")),
                    format!("unknown billing item {it:?}"),
                )
            })?;
            state.exhausted.insert(item.id);
        }
        owners.insert(a.uin, Arc::new(state));
    }

    // Pass 2: every account, its modes and overlays.
    let mut accounts = FxHashMap::default();
    for a in docs {
        let key = |k: &str| format!("{}.{k}", a.key);
        let owner_uin = a.owner.unwrap_or(a.uin);
        let owner = owners.get(&owner_uin).cloned().ok_or_else(|| {
            err(
                key("owner"),
                format!("{owner_uin} is not a main account of this file"),
            )
        })?;
        let mut groups: FxHashMap<_, GroupEntitlement> = FxHashMap::default();

        for m in &a.modes {
            let mkey = |k: &str| key(&format!("{}.{k}", m.key));
            let group = catalog
                .group_by_name(&m.group)
                .ok_or_else(|| err(mkey("group"), format!("unknown group {:?}", m.group)))?;
            let mode = match m.mode {
                ModeKind::Qps if group.modes.qps => PurchasedMode::Qps(m.quantity),
                ModeKind::Concurrency if group.modes.concurrency => {
                    PurchasedMode::Concurrency(m.quantity)
                }
                _ => {
                    return Err(err(
                        mkey("mode"),
                        format!("group {} cannot be put in this mode", group.name),
                    ));
                }
            };
            if m.quantity == 0 {
                return Err(err(mkey("quantity"), "must be at least 1".into()));
            }
            if let (PurchasedMode::Qps(q), Some(max)) = (mode, group.max_purchased_qps)
                && q > max
            {
                return Err(err(
                    mkey("quantity"),
                    format!("{q} QPS is above the {max} QPS a group may buy"),
                ));
            }
            let from = m.start.map_or(i64::MIN, beijing_midnight_unix_nanos);
            let until = m.end.map_or(i64::MAX, |end| {
                beijing_midnight_unix_nanos(end + Days::new(1))
            });
            if until <= from {
                return Err(err(mkey("end"), "is before start".into()));
            }
            let ent = groups.entry(group.id).or_default();
            if ent.modes.iter().any(|w| w.from < until && from < w.until) {
                return Err(err(
                    mkey("start"),
                    "overlaps another mode purchase of the same group".into(),
                ));
            }
            ent.modes.push(ModeWindow { from, until, mode });
        }

        // Overlays: validated in purchase order against the packs bought before them.
        let mut parsed: FxHashMap<crate::catalog::InterfaceId, Vec<OverlayPack>> =
            FxHashMap::default();
        let mut packs = Vec::with_capacity(a.overlays.len());
        for o in &a.overlays {
            let okey = |k: &str| key(&format!("{}.{k}", o.key));
            let pack = OverlayPack {
                qps: o.qps,
                start: o.start,
                end: o.end,
                purchased_at: o.purchased_at,
            };
            check_pack(&pack).map_err(|e| err(okey(e.field()), e.to_string()))?;
            packs.push(pack);
        }
        let mut by_purchase: Vec<(usize, &OverlayDoc)> = a.overlays.iter().enumerate().collect();
        by_purchase.sort_by_key(|(j, _)| (packs[*j].purchased_at, *j));
        for (j, o) in by_purchase {
            let okey = |k: &str| key(&format!("{}.{k}", o.key));
            let interface = catalog.interface_by_name(&o.interface).ok_or_else(|| {
                err(
                    okey("interface"),
                    format!("unknown interface {:?} (write service.Action)", o.interface),
                )
            })?;
            let class = interface.overlay_class.ok_or_else(|| {
                err(
                    okey("interface"),
                    format!("{} has no QPS overlay class", o.interface),
                )
            })?;
            if let Some(c) = o.class
                && c != class
            {
                return Err(err(
                    okey("class"),
                    format!(
                        "{} is class {}, not {}",
                        o.interface,
                        class.as_str(),
                        c.as_str()
                    ),
                ));
            }
            let pack = &packs[j];
            let held = parsed.entry(interface.id).or_default();
            check_daily_cap(class, held.iter(), pack)
                .map_err(|e| err(okey("qps"), e.to_string()))?;
            held.push(pack.clone());
            let group = catalog.group(interface.group);
            debug_assert!(matches!(group.limit, GroupLimit::Rate { .. }));
            let (from, until) = pack.active_window();
            groups
                .entry(group.id)
                .or_default()
                .overlays
                .push(OverlayWindow {
                    from,
                    until,
                    qps: pack.qps,
                });
        }

        accounts.insert(
            a.uin,
            Account {
                uin: a.uin,
                owner_uin,
                name: a.name.as_str().into(),
                owner,
                groups,
                overlay_packs: parsed,
            },
        );
    }
    let mut shadow = Shadow {
        all: shadow_doc.all,
        groups: FxHashSet::default(),
    };
    for (i, g) in shadow_doc.groups.iter().enumerate() {
        if catalog.group_by_name(g).is_none() {
            return Err(err(
                format!("shadow.groups[{i}]"),
                format!("{g:?} is not a group of the catalog"),
            ));
        }
        shadow.groups.insert(GroupKey::of_group(g));
    }
    Ok(Entitlements { accounts, shadow })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredentials {
    #[serde(default)]
    credential: Vec<RawCredential>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    secret_id: String,
    secret_key: String,
    uin: u64,
}

/// Parses `credentials.toml` into documents.
pub fn parse_credentials(source: &Source, text: &str) -> Result<Vec<CredentialDoc>, ConfigError> {
    let raw: RawCredentials = parse_toml(source, text)?;
    Ok(raw
        .credential
        .into_iter()
        .enumerate()
        .map(|(i, c)| CredentialDoc {
            key: format!("credential[{i}]"),
            secret_id: c.secret_id,
            secret_key: c.secret_key,
            uin: c.uin,
            expires_at: None,
        })
        .collect())
}

/// Parses and validates `credentials.toml`; every credential must name a known account.
pub fn load_credentials(
    source: &Source,
    text: &str,
    entitlements: &Entitlements,
) -> Result<Credentials, ConfigError> {
    let docs = parse_credentials(source, text)?;
    build_credentials(&docs, entitlements).map_err(|e| e.in_source(source))
}

/// Checks a SecretId's form: printable ASCII without the Authorization header's separators.
pub fn valid_secret_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',')
}

/// Validates credential documents; every credential must name an account of `entitlements`.
pub fn build_credentials(
    docs: &[CredentialDoc],
    entitlements: &Entitlements,
) -> Result<Credentials, DocError> {
    let mut by_secret_id = FxHashMap::default();
    for c in docs {
        let key = |k: &str| format!("{}.{k}", c.key);
        if !valid_secret_id(&c.secret_id) {
            return Err(DocError::new(
                key("secret_id"),
                "must be printable ASCII without '/' or ','",
            ));
        }
        if c.secret_key.len() < 16 {
            return Err(DocError::new(
                key("secret_key"),
                "must be at least 16 characters",
            ));
        }
        if entitlements.account(c.uin).is_none() {
            return Err(DocError::new(
                key("uin"),
                format!("{} is not an account of the entitlements file", c.uin),
            ));
        }
        let cred = Credential {
            secret_key: c.secret_key.as_bytes().into(),
            uin: c.uin,
            expires_unix: c.expires_at.map(|t| t.timestamp()),
        };
        if by_secret_id
            .insert(c.secret_id.as_str().into(), cred)
            .is_some()
        {
            return Err(DocError::new(key("secret_id"), "duplicate SecretId"));
        }
    }
    Ok(Credentials::new(by_secret_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entitlement::Limit;

    fn catalog() -> Catalog {
        Catalog::embedded()
    }

    fn load(text: &str) -> Result<Entitlements, ConfigError> {
        load_entitlements(&Source::File("ent.toml".into()), text, &catalog())
    }

    const MAIN: &str =
        "[[account]]\nuin = 1\nname = \"main\"\nservices = [\"ocr\"]\npostpaid = true\n";

    fn overlay(qps: u32, start: &str, end: &str) -> String {
        format!(
            "[[account.overlay]]\ninterface = \"ocr.IDCardOCR\"\nqps = {qps}\nstart = {start}\nend = {end}\npurchased_at = 2026-02-01T09:00:00+08:00\n"
        )
    }

    #[test]
    fn shadow_names_catalog_groups() {
        let e = load(&format!(
            "{MAIN}[shadow]\ngroups = [\"ocr.GeneralBasicOCR\"]\n"
        ))
        .unwrap();
        assert!(
            e.shadow
                .covers(crate::catalog::GroupKey::of_group("ocr.GeneralBasicOCR"))
        );
        assert!(
            !e.shadow
                .covers(crate::catalog::GroupKey::of_group("ocr.IDCardOCR"))
        );
        let all = load(&format!("{MAIN}[shadow]\nall = true\n")).unwrap();
        assert!(
            all.shadow
                .covers(crate::catalog::GroupKey::of_group("ocr.IDCardOCR"))
        );
        let none = load(MAIN).unwrap();
        assert!(
            !none
                .shadow
                .covers(crate::catalog::GroupKey::of_group("ocr.IDCardOCR"))
        );
        let e = load(&format!("{MAIN}[shadow]\ngroups = [\"ocr.Nope\"]\n")).unwrap_err();
        assert_eq!(e.key, "shadow.groups[0]");
        assert!(e.reason.contains("not a group of the catalog"), "{e}");
    }

    #[test]
    fn the_seed_cap_example_through_the_file() {
        let ok = format!(
            "{MAIN}{}{}",
            overlay(50, "2026-03-01", "2026-03-04"),
            overlay(50, "2026-03-02", "2026-03-07")
        );
        let ents = load(&ok).unwrap();
        let c = catalog();
        let group = c.interface_by_name("ocr.IDCardOCR").unwrap().group;
        let ent = ents.account(1).unwrap().entitlement(group).unwrap();
        let at = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .unwrap()
                .timestamp_nanos_opt()
                .unwrap()
        };
        let default = c.group(group).limit;
        assert_eq!(
            ent.resolve(default, || at("2026-03-03T12:00:00+08:00")),
            Limit::Rate(120)
        );
        assert_eq!(
            ent.resolve(default, || at("2026-03-08T00:00:00+08:00")),
            Limit::Rate(20)
        );

        let bad = format!(
            "{MAIN}{}{}",
            overlay(50, "2026-03-01", "2026-03-04"),
            overlay(51, "2026-03-02", "2026-03-07")
        );
        let e = load(&bad).unwrap_err();
        assert_eq!(e.file, "ent.toml");
        assert_eq!(e.key, "account[0] (uin 1).overlay[1].qps");
        assert!(e.reason.contains("exceeded on 2026-03-02"), "{e}");
    }

    #[test]
    fn account_errors_name_their_key() {
        let cases = [
            (
                format!("{MAIN}[[account]]\nuin = 2\nname = \"sub\"\nowner = 1\npostpaid = true\n"),
                "account[1] (uin 2).postpaid",
                "main-account setting",
            ),
            (
                "[[account]]\nuin = 2\nname = \"sub\"\nowner = 9\n".to_string(),
                "account[0] (uin 2).owner",
                "not a main account",
            ),
            (
                format!(
                    "{MAIN}[[account.mode]]\ngroup = \"bda.segment\"\nmode = \"concurrency\"\nquantity = 3\n"
                ),
                "account[0] (uin 1).mode[0].mode",
                "cannot be put in this mode",
            ),
            (
                format!(
                    "{MAIN}[[account.mode]]\ngroup = \"facefusion.fuse\"\nmode = \"qps\"\nquantity = 301\n"
                ),
                "account[0] (uin 1).mode[0].quantity",
                "above the 300 QPS",
            ),
            (
                format!(
                    "{MAIN}[[account.overlay]]\ninterface = \"ocr.WaybillOCR\"\nqps = 5\nstart = 2026-03-01\nend = 2026-03-01\npurchased_at = 2026-03-01T00:00:00+08:00\n"
                ),
                "account[0] (uin 1).overlay[0].interface",
                "no QPS overlay class",
            ),
            (
                format!(
                    "{MAIN}[[account.overlay]]\ninterface = \"ocr.IDCardOCR\"\nqps = 5\nstart = \"2026-03-01\"\nend = 2026-03-01\npurchased_at = 2026-03-01T00:00:00+08:00\n"
                ),
                "account[0].overlay[0].start",
                "invalid type",
            ),
            (
                format!("{MAIN}{}", overlay(5, "2026-03-04", "2026-03-02")),
                "account[0] (uin 1).overlay[0].end",
                "is before start date",
            ),
            (
                "[[account]]\nuin = 1\nname = \"main\"\nservices = [\"ocrr\"]\n".to_string(),
                "account[0] (uin 1).services[0]",
                "unknown service",
            ),
        ];
        for (text, key, reason) in cases {
            let e = load(&text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.reason.contains(reason), "{e}");
        }
    }

    #[test]
    fn credentials_must_point_at_accounts() {
        let ents = load(MAIN).unwrap();
        let src = Source::File("cred.toml".into());
        let ok =
            "[[credential]]\nsecret_id = \"AKIDx\"\nsecret_key = \"0123456789abcdef\"\nuin = 1\n";
        assert_eq!(
            load_credentials(&src, ok, &ents)
                .unwrap()
                .get("AKIDx")
                .unwrap()
                .uin,
            1
        );
        let bad = ok.replace("uin = 1", "uin = 7");
        let e = load_credentials(&src, &bad, &ents).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cred.toml: credential[0].uin: 7 is not an account of the entitlements file"
        );
    }
}
