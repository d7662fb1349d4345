//! Authentication: who is calling, proven by a TC3 signature over the exact bytes received.
//!
//! [`precheck`] runs the checks that need no body (timestamp, SecretId, credential date),
//! [`verify`] the signature over the exact bytes received; [`authenticate`] is both, in the
//! vendor's order. The signature itself is `tollgate_core::tc3`; the credentials
//! `tollgate_core::credentials`.

pub mod replay;

pub use tollgate_core::credentials::{Credential, CredentialMap, Credentials};
pub use tollgate_core::tc3::{self, Authorization, MalformedAuthorization, parse_authorization};

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
    #[error(
        "this signature was already used: a call is accepted once (auth.replay_guard); sign a new one"
    )]
    Replayed,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::InvalidAuthorization(_) => "AuthFailure.InvalidAuthorization",
            AuthError::SignatureExpire { .. } => "AuthFailure.SignatureExpire",
            AuthError::SecretIdNotFound => "AuthFailure.SecretIdNotFound",
            AuthError::SignatureFailure | AuthError::DateMismatch { .. } | AuthError::Replayed => {
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

/// What the head of a call proves before its body is read: a timestamp within the skew, a
/// known SecretId, and a credential date that matches the timestamp. Only a call that passes
/// this has its body read (a stranger's body costs the gateway nothing).
#[derive(Debug)]
pub struct Prechecked<'a> {
    authorization: Authorization<'a>,
    credential: &'a Credential,
    /// `X-TC-Timestamp`, as sent (it is part of the string to sign), and its value.
    timestamp_text: &'a str,
    pub timestamp: i64,
}

impl<'a> Prechecked<'a> {
    /// The account the SecretId acts for (not yet proven: the signature is checked later).
    pub fn claimed_uin(&self) -> u64 {
        self.credential.uin
    }

    /// The signature the call carries (64 hex digits), once verified its identity.
    pub fn signature(&self) -> &'a str {
        self.authorization.signature
    }

    /// The SecretId the call was signed with.
    pub fn secret_id(&self) -> &'a str {
        self.authorization.secret_id
    }
}

/// What the signature covers besides the head's parts already checked.
pub struct Signed<'a, H: Fn(&str) -> Option<&'a [u8]>> {
    pub method: &'a str,
    pub query: &'a [u8],
    pub header: H,
    /// The body, or `None` for `X-TC-Content-SHA256: UNSIGNED-PAYLOAD`.
    pub payload: Option<&'a [u8]>,
}

/// The checks that need no body, in the vendor's order: the timestamp (present, Unix
/// seconds, within `max_skew_seconds` of `now_unix_seconds`), the SecretId, the credential
/// date.
pub fn precheck<'a>(
    credentials: &'a Credentials,
    authorization: Authorization<'a>,
    timestamp: Option<&'a [u8]>,
    now_unix_seconds: i64,
    max_skew_seconds: i64,
) -> Result<Prechecked<'a>, AuthError> {
    let ts_raw = timestamp.ok_or_else(|| {
        AuthError::InvalidAuthorization("the X-TC-Timestamp header is missing".into())
    })?;
    let ts_str = std::str::from_utf8(ts_raw)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()))
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
    let credential = credentials
        .get(authorization.secret_id)
        .filter(|c| c.expires_unix.is_none_or(|end| now_unix_seconds < end))
        .ok_or(AuthError::SecretIdNotFound)?;
    let date = tc3::utc_date(ts).ok_or(AuthError::SignatureFailure)?;
    if date != authorization.date.as_bytes() {
        return Err(AuthError::DateMismatch {
            credential: authorization.date.to_owned(),
        });
    }
    Ok(Prechecked {
        authorization,
        credential,
        timestamp_text: ts_str,
        timestamp: ts,
    })
}

/// Verifies the signature of a prechecked call; returns the credential's account UIN.
pub fn verify<'a, H: Fn(&str) -> Option<&'a [u8]>>(
    credentials: &Credentials,
    pre: &Prechecked<'a>,
    signed: Signed<'a, H>,
) -> Result<u64, AuthError> {
    let auth = &pre.authorization;
    let key = credentials.keyed_mac(auth.secret_id, pre.credential, auth.date, auth.service);
    let request = tc3::SignedRequest {
        method: signed.method,
        query: signed.query,
        header: signed.header,
        signed_headers: auth.signed_headers,
        payload: signed.payload,
        timestamp: pre.timestamp_text,
        date: auth.date,
        service: auth.service,
    };
    match tc3::verify_with(&key, &request, auth.signature) {
        Ok(true) => Ok(pre.credential.uin),
        Ok(false) => Err(AuthError::SignatureFailure),
        Err(missing) => Err(AuthError::InvalidAuthorization(missing.to_string())),
    }
}

/// Verifies a request: [`precheck`], then [`verify`]. Returns the credential's account UIN.
pub fn authenticate<'a, H: Fn(&str) -> Option<&'a [u8]>>(
    credentials: &'a Credentials,
    req: AuthRequest<'a, H>,
    now_unix_seconds: i64,
    max_skew_seconds: i64,
) -> Result<u64, AuthError> {
    let pre = precheck(
        credentials,
        *req.authorization,
        req.timestamp,
        now_unix_seconds,
        max_skew_seconds,
    )?;
    verify(
        credentials,
        &pre,
        Signed {
            method: req.method,
            query: req.query,
            header: req.header,
            payload: req.payload,
        },
    )
}
