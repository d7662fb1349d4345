//! The stub backend's settings (`tollgate stub --config FILE`): latency and outcome mix.

use serde::Deserialize;

use tollgate_core::config::{ConfigError, Source, parse_toml};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStub {
    #[serde(default)]
    latency_ms: u64,
    #[serde(default)]
    jitter_ms: u64,
    #[serde(default = "default_image_bytes")]
    image_bytes: usize,
    #[serde(default = "default_invoices")]
    invoices: String,
    #[serde(default)]
    outcome: Vec<RawOutcome>,
}

fn default_image_bytes() -> usize {
    1024
}

fn default_invoices() -> String {
    "3:OK,8:OK,2:OK".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutcome {
    weight: u32,
    /// "success", or a vendor error code.
    result: String,
}

/// What the stub answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StubOutcome {
    Success,
    Error(String),
}

/// One mixed invoice item: (Type, Code).
pub type StubInvoice = (i64, String);

#[derive(Debug, Clone)]
pub struct StubSettings {
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub image_bytes: usize,
    pub invoices: Vec<StubInvoice>,
    /// (weight, outcome), picked by weighted round-robin so a mix is exact over each cycle.
    pub outcomes: Vec<(u32, StubOutcome)>,
}

impl Default for StubSettings {
    fn default() -> Self {
        StubSettings {
            latency_ms: 0,
            jitter_ms: 0,
            image_bytes: default_image_bytes(),
            invoices: parse_invoices(&default_invoices()).expect("valid default"),
            outcomes: vec![(1, StubOutcome::Success)],
        }
    }
}

/// Parses `"3:OK,12:OK,2:FailedOperation.UnKnowError"`.
pub fn parse_invoices(s: &str) -> Result<Vec<StubInvoice>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (t, code) = p
                .trim()
                .split_once(':')
                .ok_or_else(|| format!("{p:?} is not Type:Code"))?;
            let t: i64 = t
                .parse()
                .map_err(|_| format!("{t:?} is not an invoice type"))?;
            Ok((t, code.to_owned()))
        })
        .collect()
}

pub fn parse_outcome(s: &str) -> StubOutcome {
    if s.eq_ignore_ascii_case("success") {
        StubOutcome::Success
    } else {
        StubOutcome::Error(s.strip_prefix("error:").unwrap_or(s).to_owned())
    }
}

pub fn load(source: &Source) -> Result<StubSettings, ConfigError> {
    parse(source, &source.read()?)
}

/// Validates the text of a stub settings file read from `source`.
pub fn parse(source: &Source, text: &str) -> Result<StubSettings, ConfigError> {
    let raw: RawStub = parse_toml(source, text)?;
    let invoices =
        parse_invoices(&raw.invoices).map_err(|e| ConfigError::new(source, "invoices", e))?;
    let mut outcomes = Vec::new();
    for (i, o) in raw.outcome.iter().enumerate() {
        if o.weight == 0 {
            return Err(ConfigError::new(
                source,
                format!("outcome[{i}].weight"),
                "must be at least 1",
            ));
        }
        outcomes.push((o.weight, parse_outcome(&o.result)));
    }
    if outcomes.is_empty() {
        outcomes.push((1, StubOutcome::Success));
    }
    Ok(StubSettings {
        latency_ms: raw.latency_ms,
        jitter_ms: raw.jitter_ms,
        image_bytes: raw.image_bytes,
        invoices,
        outcomes,
    })
}
