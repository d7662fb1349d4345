//! Credentials: each SecretId's key and the account it acts for, as `credentials.toml` (or the
//! entitlement store) gives them, with the keyed signing MACs the verifier derives from them.

use std::hash::{Hash, Hasher};

use dashmap::DashMap;
use rustc_hash::{FxBuildHasher, FxHashMap, FxHasher};

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
    /// Keyed signing MACs by (SecretId, date, service): deriving one costs three HMACs, and it
    /// only changes once a day. It lives in the credentials snapshot, so a reload that changes
    /// a key can never be answered from a stale entry.
    keys: KeyCache,
}

#[derive(Clone, Default)]
struct KeyCache(DashMap<u64, CachedKey, FxBuildHasher>);

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyCache({} entries)", self.0.len())
    }
}

#[derive(Clone)]
struct CachedKey {
    secret_id: Box<str>,
    date: [u8; 10],
    service: Box<str>,
    mac: tc3::KeyedMac,
}

/// Entries beyond this are dropped wholesale (stale dates accumulate slowly; only valid
/// credentials ever get an entry).
const KEY_CACHE_LIMIT: usize = 100_000;

impl Credentials {
    pub fn new(by_secret_id: FxHashMap<Box<str>, Credential>) -> Credentials {
        Credentials {
            by_secret_id,
            keys: KeyCache::default(),
        }
    }

    pub fn get(&self, secret_id: &str) -> Option<&Credential> {
        self.by_secret_id.get(secret_id)
    }

    /// The keyed signing MAC of a credential for a date and service, from the cache.
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
        if let Some(c) = self.keys.0.get(&slot)
            && &*c.secret_id == secret_id
            && c.date == date.as_bytes()
            && &*c.service == service
        {
            return c.mac.clone();
        }
        let mac = tc3::KeyedMac::new(&tc3::signing_key(&credential.secret_key, date, service));
        if self.keys.0.len() >= KEY_CACHE_LIMIT {
            self.keys.0.clear();
        }
        let mut d = [0u8; 10];
        if date.len() == 10 {
            d.copy_from_slice(date.as_bytes());
        }
        self.keys.0.insert(
            slot,
            CachedKey {
                secret_id: secret_id.into(),
                date: d,
                service: service.into(),
                mac: mac.clone(),
            },
        );
        mac
    }
}
