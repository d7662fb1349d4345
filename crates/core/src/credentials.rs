//! Credentials: each SecretId's key and the account it acts for, as `credentials.toml` (or the
//! entitlement store) gives them, with the keyed signing MACs the verifier derives from them.

use std::cell::RefCell;
use std::hash::{Hash, Hasher};

use rustc_hash::{FxHashMap, FxHasher};

use crate::tc3;

/// A SecretId's key and the account it acts for.
#[derive(Clone)]
pub struct Credential {
    pub secret_key: Box<[u8]>,
    pub uin: u64,
    /// A rotated credential's end of grace (Unix seconds): refused from then on, whether or
    /// not a newer snapshot has arrived.
    pub expires_unix: Option<i64>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("secret_key", &"<redacted>")
            .field("uin", &self.uin)
            .field("expires_unix", &self.expires_unix)
            .finish()
    }
}

/// Credentials by SecretId, as [`Credentials::new`] takes them.
pub type CredentialMap = FxHashMap<Box<str>, Credential>;

/// Every credential, by SecretId.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub by_secret_id: FxHashMap<Box<str>, Credential>,
}

/// A keyed signing MAC, with everything it was derived from.
struct CachedKey {
    secret_id: Box<str>,
    date: [u8; 10],
    service: Box<str>,
    /// The key it was derived from: an entry serves only the same key, so a reload that
    /// changes a credential's key is never answered from a stale entry, whichever snapshot
    /// asks.
    secret_key: Box<[u8]>,
    mac: tc3::KeyedMac,
}

/// Entries beyond this are dropped wholesale (stale dates accumulate slowly; only valid
/// credentials ever get an entry).
const KEY_CACHE_LIMIT: usize = 100_000;

thread_local! {
    /// Keyed signing MACs by (SecretId, date, service), one cache per thread: deriving one
    /// costs three HMACs, and it only changes once a day. Per thread, not one shared map:
    /// a shared map's lock word is written by every lookup, so its cache line would move
    /// between the API workers' cores on every call (seen in the SRE side-by-side's
    /// profile). An API worker is one thread, so its cache fills once per credential and day.
    static KEYS: RefCell<FxHashMap<u64, CachedKey>> = RefCell::new(FxHashMap::default());
}

impl Credentials {
    pub fn new(by_secret_id: FxHashMap<Box<str>, Credential>) -> Credentials {
        Credentials { by_secret_id }
    }

    pub fn get(&self, secret_id: &str) -> Option<&Credential> {
        self.by_secret_id.get(secret_id)
    }

    /// The keyed signing MAC of a credential for a date and service, from this thread's cache.
    pub fn keyed_mac(
        &self,
        secret_id: &str,
        credential: &Credential,
        date: &str,
        service: &str,
    ) -> tc3::KeyedMac {
        let mut h = FxHasher::default();
        (secret_id, date, service).hash(&mut h);
        let slot = h.finish();
        KEYS.with_borrow_mut(|keys| {
            if let Some(c) = keys.get(&slot)
                && &*c.secret_id == secret_id
                && c.date == date.as_bytes()
                && &*c.service == service
                && c.secret_key == credential.secret_key
            {
                return c.mac.clone();
            }
            let mac = tc3::KeyedMac::new(&tc3::signing_key(&credential.secret_key, date, service));
            if keys.len() >= KEY_CACHE_LIMIT {
                keys.clear();
            }
            let mut d = [0u8; 10];
            if date.len() == 10 {
                d.copy_from_slice(date.as_bytes());
            }
            keys.insert(
                slot,
                CachedKey {
                    secret_id: secret_id.into(),
                    date: d,
                    service: service.into(),
                    secret_key: credential.secret_key.clone(),
                    mac: mac.clone(),
                },
            );
            mac
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(secret_id: &str, key: &[u8]) -> Credentials {
        let mut by_secret_id = CredentialMap::default();
        by_secret_id.insert(
            secret_id.into(),
            Credential {
                secret_key: key.into(),
                uin: 100000000001,
                expires_unix: None,
            },
        );
        Credentials::new(by_secret_id)
    }

    /// The hex signature of one fixed call under `mac`.
    fn sign(mac: &tc3::KeyedMac, date: &str, service: &str) -> [u8; 64] {
        let request = tc3::SignedRequest {
            method: "POST",
            query: b"",
            header: |name: &str| (name == "host").then_some(b"ocr.example".as_slice()),
            signed_headers: "host",
            payload: Some(b"{}"),
            timestamp: "1700000000",
            date,
            service,
        };
        tc3::signature_with(mac, &request).unwrap()
    }

    fn derived(key: &[u8], date: &str, service: &str) -> tc3::KeyedMac {
        tc3::KeyedMac::new(&tc3::signing_key(key, date, service))
    }

    #[test]
    fn a_cached_mac_is_the_one_its_key_date_and_service_derive() {
        let creds = credentials("AKIDcache1", b"key-one");
        let cred = creds.get("AKIDcache1").unwrap();
        for _ in 0..2 {
            // The first call fills the cache, the second is answered from it.
            let mac = creds.keyed_mac("AKIDcache1", cred, "2023-11-14", "ocr");
            assert_eq!(
                sign(&mac, "2023-11-14", "ocr"),
                sign(
                    &derived(b"key-one", "2023-11-14", "ocr"),
                    "2023-11-14",
                    "ocr"
                )
            );
        }
        // Another date or service is another entry.
        let mac = creds.keyed_mac("AKIDcache1", cred, "2023-11-15", "faceid");
        assert_eq!(
            sign(&mac, "2023-11-15", "faceid"),
            sign(
                &derived(b"key-one", "2023-11-15", "faceid"),
                "2023-11-15",
                "faceid"
            )
        );
    }

    #[test]
    fn a_changed_key_is_never_answered_from_the_old_keys_entry() {
        let before = credentials("AKIDcache2", b"old-key");
        let mac = before.keyed_mac(
            "AKIDcache2",
            before.get("AKIDcache2").unwrap(),
            "2023-11-14",
            "ocr",
        );
        let old = sign(&mac, "2023-11-14", "ocr");
        // A reload: the same SecretId, date and service, a new key.
        let after = credentials("AKIDcache2", b"new-key");
        let mac = after.keyed_mac(
            "AKIDcache2",
            after.get("AKIDcache2").unwrap(),
            "2023-11-14",
            "ocr",
        );
        let new = sign(&mac, "2023-11-14", "ocr");
        assert_ne!(old, new);
        assert_eq!(
            new,
            sign(
                &derived(b"new-key", "2023-11-14", "ocr"),
                "2023-11-14",
                "ocr"
            )
        );
    }
}
