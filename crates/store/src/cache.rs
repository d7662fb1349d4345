//! The last snapshot on disk, so a gateway restarted while the store is unreachable starts
//! serving what it served before (`entitlements.cache_file`).
//!
//! Written after every change (to a temporary file, fsynced, renamed over the old one, mode
//! 0600: it holds credentials' keys); read only at start, and only when the store does not
//! answer. The image is kept as lists (JSON objects cannot have tuple keys).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::image::{
    AccountRow, ActivationRow, ContractPriceRow, CredentialRow, Image, LibraryRow, ModeRow,
    OverlayRow, PackRow, ShadowRow,
};

/// The format's version: a file of another version is ignored (and overwritten).
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    saved_at: DateTime<Utc>,
    version: i64,
    accounts: Vec<AccountRow>,
    activations: Vec<ActivationRow>,
    credentials: Vec<CredentialRow>,
    /// (SecretId, SecretKey): the rows' serialization leaves keys out (the audit table).
    secrets: Vec<(String, String)>,
    modes: Vec<ModeRow>,
    overlays: Vec<OverlayRow>,
    packs: Vec<PackRow>,
    contract_prices: Vec<ContractPriceRow>,
    #[serde(default)]
    libraries: Vec<LibraryRow>,
    shadow: ShadowRow,
}

/// Writes `image` to `path` atomically.
pub fn save(path: &Path, image: &Image, now: DateTime<Utc>) -> std::io::Result<()> {
    let file = CacheFile {
        format: FORMAT,
        saved_at: now,
        version: image.version,
        accounts: image.accounts.values().cloned().collect(),
        activations: image.activations.values().cloned().collect(),
        credentials: image.credentials.values().cloned().collect(),
        secrets: image
            .credentials
            .values()
            .map(|c| (c.secret_id.clone(), c.secret_key.clone()))
            .collect(),
        modes: image.modes.values().cloned().collect(),
        overlays: image.overlays.values().cloned().collect(),
        packs: image.packs.values().cloned().collect(),
        contract_prices: image.contract_prices.values().cloned().collect(),
        libraries: image.libraries.values().cloned().collect(),
        shadow: image.shadow.clone(),
    };
    let text = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    // A leftover temporary file keeps its mode when reopened: start from none.
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The image saved at `path` and when it was saved; `None` if there is none (or it is of
/// another format).
pub fn load(path: &Path) -> anyhow::Result<Option<(Image, DateTime<Utc>)>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    let file: CacheFile = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not a snapshot: {e}", path.display()))?;
    if file.format != FORMAT {
        return Ok(None);
    }
    let secrets: std::collections::BTreeMap<String, String> = file.secrets.into_iter().collect();
    let mut image = Image {
        version: file.version,
        shadow: file.shadow,
        ..Default::default()
    };
    for a in file.accounts {
        image.accounts.insert(a.uin, a);
    }
    for a in file.activations {
        image
            .activations
            .insert((a.owner_uin, a.service.clone()), a);
    }
    for mut c in file.credentials {
        c.secret_key = secrets.get(&c.secret_id).cloned().unwrap_or_default();
        image.credentials.insert(c.secret_id.clone(), c);
    }
    for m in file.modes {
        image.modes.insert(m.id, m);
    }
    for o in file.overlays {
        image.overlays.insert(o.id, o);
    }
    for p in file.packs {
        image.packs.insert(p.id.clone(), p);
    }
    for p in file.contract_prices {
        image
            .contract_prices
            .insert((p.owner_uin, p.item.clone()), p);
    }
    for l in file.libraries {
        image.libraries.insert((l.owner_uin, l.group_id.clone()), l);
    }
    Ok(Some((image, file.saved_at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_snapshot_loads_whole_with_its_keys_and_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let mut image = Image {
            version: 9,
            ..Default::default()
        };
        let at = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        image.accounts.insert(
            1,
            AccountRow {
                uin: 1,
                owner_uin: None,
                name: "a".into(),
                postpaid: true,
                arrears: false,
                exhausted: vec!["ocr.general_basic".into()],
                created_at: at,
                balance: "-12.50".parse().unwrap(),
                stop_at: Some(at),
                version: 3,
            },
        );
        image.activations.insert(
            (1, "ocr".into()),
            ActivationRow {
                owner_uin: 1,
                service: "ocr".into(),
                activated_at: at,
                version: 3,
            },
        );
        image.credentials.insert(
            "AKIDx".into(),
            CredentialRow {
                secret_id: "AKIDx".into(),
                uin: 1,
                secret_key: "0123456789abcdef".into(),
                created_at: at,
                expires_at: Some(at),
                revoked_at: None,
                replaced_by: Some("AKIDy".into()),
                version: 4,
            },
        );
        image.packs.insert(
            "p".into(),
            PackRow {
                id: "p".into(),
                owner_uin: 1,
                item: "ocr.general_basic".into(),
                size: 10_000,
                purchased_at: at,
                price: "123.45".parse().unwrap(),
                refunded_at: None,
                version: 5,
            },
        );
        image.shadow = ShadowRow {
            all: false,
            groups: vec!["ocr.GeneralBasicOCR".into()],
            version: 6,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/snap.json");
        assert!(load(&path).unwrap().is_none());
        save(&path, &image, at).unwrap();
        let (back, saved) = load(&path).unwrap().unwrap();
        assert_eq!(back, image);
        assert_eq!(saved, at);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_err());
    }
}
