//! Authentication: who is calling, proven by a TC3 signature over the exact bytes received.
//!
//! [`Credentials`] maps a SecretId to its SecretKey and account; [`authenticate`] runs the
//! checks in the vendor's order and returns the account UIN or the vendor error code.

pub mod tc3;

use std::hash::{Hash, Hasher};

use dashmap::DashMap;
use rustc_hash::{FxBuildHasher, FxHashMap, FxHasher};

pub use tc3::{Authorization, MalformedAuthorization, parse_authorization};

/// A SecretId's key and the account it acts for.
#[derive(Clone)]
pub struct Credential {
    pub secret_key: Box<[u8]>,
    pub uin: u64,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("secret_key", &"<redacted>")
            .field("uin", &self.uin)
            .finish()
    }
}

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
    fn keyed_mac(
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

/// An authentication failure, each with its vendor code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    InvalidAuthorization(String),
    #[error(
        "the request timestamp is {skew_seconds} s away from the server time; the limit is {limit_seconds} s"
    )]
    SignatureExpire {
        skew_seconds: i64,
        limit_seconds: i64,
    },
    #[error("the SecretId is not found")]
    SecretIdNotFound,
    #[error("the signature does not match the request")]
    SignatureFailure,
    #[error("the credential date {credential} does not match the UTC date of X-TC-Timestamp")]
    DateMismatch { credential: String },
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::InvalidAuthorization(_) => "AuthFailure.InvalidAuthorization",
            AuthError::SignatureExpire { .. } => "AuthFailure.SignatureExpire",
            AuthError::SecretIdNotFound => "AuthFailure.SecretIdNotFound",
            AuthError::SignatureFailure | AuthError::DateMismatch { .. } => {
                "AuthFailure.SignatureFailure"
            }
        }
    }
}

impl From<MalformedAuthorization> for AuthError {
    fn from(e: MalformedAuthorization) -> Self {
        AuthError::InvalidAuthorization(e.to_string())
    }
}

/// The request as authentication needs it.
pub struct AuthRequest<'a, H: Fn(&str) -> Option<&'a [u8]>> {
    pub authorization: &'a Authorization<'a>,
    pub method: &'a str,
    pub query: &'a [u8],
    pub header: H,
    /// `X-TC-Timestamp`, as sent.
    pub timestamp: Option<&'a [u8]>,
    /// The body, or `None` for `X-TC-Content-SHA256: UNSIGNED-PAYLOAD`.
    pub payload: Option<&'a [u8]>,
}

/// Verifies a request: timestamp within `max_skew_seconds` of `now_unix_seconds`, a known
/// SecretId, a credential date matching the timestamp, and the signature. Returns the
/// credential's account UIN.
pub fn authenticate<'a, H: Fn(&str) -> Option<&'a [u8]>>(
    credentials: &Credentials,
    req: AuthRequest<'a, H>,
    now_unix_seconds: i64,
    max_skew_seconds: i64,
) -> Result<u64, AuthError> {
    let ts_raw = req.timestamp.ok_or_else(|| {
        AuthError::InvalidAuthorization("the X-TC-Timestamp header is missing".into())
    })?;
    let ts_str = std::str::from_utf8(ts_raw)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            AuthError::InvalidAuthorization("X-TC-Timestamp must be Unix seconds".into())
        })?;
    let ts: i64 = ts_str.parse().map_err(|_| {
        AuthError::InvalidAuthorization("X-TC-Timestamp must be Unix seconds".into())
    })?;
    let skew = (now_unix_seconds - ts).abs();
    if skew > max_skew_seconds {
        return Err(AuthError::SignatureExpire {
            skew_seconds: skew,
            limit_seconds: max_skew_seconds,
        });
    }
    let auth = req.authorization;
    let credential = credentials
        .get(auth.secret_id)
        .ok_or(AuthError::SecretIdNotFound)?;
    let date = tc3::utc_date(ts).ok_or(AuthError::SignatureFailure)?;
    if date != auth.date.as_bytes() {
        return Err(AuthError::DateMismatch {
            credential: auth.date.to_owned(),
        });
    }
    let key = credentials.keyed_mac(auth.secret_id, credential, auth.date, auth.service);
    let signed = tc3::SignedRequest {
        method: req.method,
        query: req.query,
        header: req.header,
        signed_headers: auth.signed_headers,
        payload: req.payload,
        timestamp: ts_str,
        date: auth.date,
        service: auth.service,
    };
    match tc3::verify_with(&key, &signed, auth.signature) {
        Ok(true) => Ok(credential.uin),
        Ok(false) => Err(AuthError::SignatureFailure),
        Err(missing) => Err(AuthError::InvalidAuthorization(missing.to_string())),
    }
}
