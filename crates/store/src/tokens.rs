//! Admin API bearer tokens: `tgt_<id>_<secret>`. The store keeps the id, the scopes and the
//! SHA-256 of the secret; the token itself is shown once, when it is created.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do. `write` includes `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }
}

/// A token as the store holds it.
#[derive(Debug, Clone)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
}

impl Token {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|s| *s >= scope)
    }
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Splits `tgt_<id>_<secret>`.
fn split(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("tgt_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && secret.len() >= 32).then_some((id, secret))
}

/// Creates a token; returns its text (shown once: only its hash is stored).
pub async fn create(
    client: &tokio_postgres::Client,
    name: &str,
    scopes: &[Scope],
) -> anyhow::Result<String> {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    client
        .execute(
            "INSERT INTO entitlements.tokens (id, name, secret_sha256, scopes, created_at)
             VALUES ($1, $2, $3, $4, now())",
            &[&id, &name, &digest(&secret), &scopes],
        )
        .await?;
    Ok(format!("tgt_{id}_{secret}"))
}

/// Revokes a token by id; whether one was revoked.
pub async fn revoke(client: &tokio_postgres::Client, id: &str) -> anyhow::Result<bool> {
    Ok(client
        .execute(
            "UPDATE entitlements.tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?
        == 1)
}

/// The token a bearer string names, if it is one, is not revoked, and its secret matches.
pub async fn find(client: &tokio_postgres::Client, bearer: &str) -> anyhow::Result<Option<Token>> {
    let Some((id, secret)) = split(bearer) else {
        return Ok(None);
    };
    let Some(row) = client
        .query_opt(
            "SELECT name, secret_sha256, scopes, created_at FROM entitlements.tokens
             WHERE id = $1 AND revoked_at IS NULL",
            &[&id],
        )
        .await?
    else {
        return Ok(None);
    };
    let stored: Vec<u8> = row.get(1);
    if !bool::from(stored.ct_eq(&digest(secret))) {
        return Ok(None);
    }
    let scopes: Vec<String> = row.get(2);
    Ok(Some(Token {
        id: id.to_owned(),
        name: row.get(0),
        scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
        created_at: row.get(3),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_text_splits_and_scopes_nest() {
        assert_eq!(
            split("tgt_abc_0123456789abcdef0123456789abcdef"),
            Some(("abc", "0123456789abcdef0123456789abcdef"))
        );
        assert_eq!(split("tgt_abc_short"), None);
        assert_eq!(split("Bearer x"), None);
        let t = Token {
            id: "a".into(),
            name: "n".into(),
            scopes: vec![Scope::Write],
            created_at: Utc::now(),
        };
        assert!(t.allows(Scope::Read) && t.allows(Scope::Write));
        let r = Token {
            scopes: vec![Scope::Read],
            ..t
        };
        assert!(r.allows(Scope::Read) && !r.allows(Scope::Write));
    }
}
