//! The files of the domain: it reads the TOML files, validates them once into the domain
//! types (`catalog::Catalog`, `entitlement::Entitlements`, `credentials::Credentials`), and
//! reports every problem as a [`ConfigError`] naming the file, the key and what is wrong.
//! [`parse_toml`] and [`Source`] are what every crate's own files (`tollgate.toml`,
//! `pricing.toml`, the stub's) are read with.
//!
//! Files (all under `config/`, all documented in README.md "Configuration"):
//! - `catalog.toml`: services, groups, interfaces, billing items: reloadable.
//! - `entitlements.toml`: accounts, modes, overlay packs, account state: reloadable.
//! - `credentials.toml`: SecretId → SecretKey + UIN: reloadable.
//!
//! Each file is embedded in the binary too, so `tollgate demo` runs from nothing.

pub mod catalog;
pub mod entitlements;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::catalog::Catalog;
use crate::credentials::Credentials;
use crate::entitlement::Entitlements;

pub const EMBEDDED_CATALOG: &str = include_str!("../../../../config/catalog.toml");
pub const EMBEDDED_ENTITLEMENTS: &str = include_str!("../../../../config/entitlements.toml");
pub const EMBEDDED_CREDENTIALS: &str = include_str!("../../../../config/credentials.toml");

/// A configuration problem: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(file: &Source, key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            file: file.name(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Where one config file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    /// A copy compiled into the binary, named for messages.
    Embedded {
        name: &'static str,
        text: &'static str,
    },
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Embedded { name, .. } => format!("<embedded {name}>"),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        match self {
            Source::File(p) => Some(p),
            Source::Embedded { .. } => None,
        }
    }

    pub fn read(&self) -> Result<String, ConfigError> {
        match self {
            Source::File(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError::new(self, "(file)", format!("cannot read: {e}"))),
            Source::Embedded { text, .. } => Ok((*text).to_owned()),
        }
    }
}

/// Parses TOML text into `T`, naming the key of any error (via `serde_path_to_error`) and its
/// line.
pub fn parse_toml<T: DeserializeOwned>(source: &Source, text: &str) -> Result<T, ConfigError> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default()
    };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        ConfigError::new(
            source,
            "(syntax)",
            format!("{}{}", e.message(), line_of(e.span())),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::new(
            source,
            if key == "." || key.is_empty() {
                "(top level)".into()
            } else {
                key
            },
            format!("{}{}", inner.message(), line_of(inner.span())),
        )
    })
}

/// The three reloadable files.
#[derive(Debug, Clone)]
pub struct Sources {
    pub catalog: Source,
    pub entitlements: Source,
    pub credentials: Source,
}

impl Sources {
    pub fn embedded() -> Sources {
        Sources {
            catalog: Source::Embedded {
                name: "catalog.toml",
                text: EMBEDDED_CATALOG,
            },
            entitlements: Source::Embedded {
                name: "entitlements.toml",
                text: EMBEDDED_ENTITLEMENTS,
            },
            credentials: Source::Embedded {
                name: "credentials.toml",
                text: EMBEDDED_CREDENTIALS,
            },
        }
    }

    pub fn files(&self) -> impl Iterator<Item = &Path> {
        [&self.catalog, &self.entitlements, &self.credentials]
            .into_iter()
            .filter_map(Source::path)
    }
}

/// Everything the request path reads that can change at run time, validated together: a
/// reload either replaces all of it or none of it.
#[derive(Debug)]
pub struct Loaded {
    pub catalog: Catalog,
    pub entitlements: Entitlements,
    pub credentials: Credentials,
}

/// Reads and validates the reloadable files.
pub fn load(sources: &Sources) -> Result<Arc<Loaded>, ConfigError> {
    let catalog = catalog::load(&sources.catalog, &sources.catalog.read()?)?;
    let entitlements = entitlements::load_entitlements(
        &sources.entitlements,
        &sources.entitlements.read()?,
        &catalog,
    )?;
    let credentials = entitlements::load_credentials(
        &sources.credentials,
        &sources.credentials.read()?,
        &entitlements,
    )?;
    Ok(Arc::new(Loaded {
        catalog,
        entitlements,
        credentials,
    }))
}
