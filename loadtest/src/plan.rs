//! A scenario resolved against the gateway's configuration: each stream's key and account
//! (credentials.toml), its interface group (`Catalog::route`) and the limit the gateway should
//! enforce on (account, group) right now (`GroupEntitlement::resolve`), so the report can say
//! how many admissions to expect.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use tollgate_core::catalog::Route;
use tollgate_core::config::{self, EMBEDDED_CATALOG, Loaded, Source, Sources};
use tollgate_core::entitlement::{Limit, StateRefusal};
use tollgate_gateway::admission::Rate;
use tollgate_gateway::settings as gateway;

use crate::scenario::{Load, Scenario};

/// The gateway configuration the generator classifies against.
pub struct GatewayConfig {
    pub loaded: Arc<Loaded>,
    /// `admission.burst_millis`: a rested bucket admits this many milliseconds of its rate.
    pub burst_millis: u32,
    /// Where it came from, for the report.
    pub origin: String,
}

/// The embedded default's `admission.burst_millis`.
pub const DEFAULT_BURST_MILLIS: u32 = 1000;

impl GatewayConfig {
    /// The demo configuration compiled into the tollgate library (what `tollgate demo` serves).
    pub fn embedded() -> anyhow::Result<GatewayConfig> {
        let loaded = config::load(&Sources::embedded()).context("the embedded demo config")?;
        Ok(GatewayConfig {
            loaded,
            burst_millis: gateway::Settings::embedded().burst_millis,
            origin: "embedded demo config".into(),
        })
    }

    /// The configuration in `dir`: the files its `tollgate.toml` names if there is one,
    /// otherwise `catalog.toml` (the embedded catalog when absent), `entitlements.toml` and
    /// `credentials.toml` in `dir`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<GatewayConfig> {
        if !dir.is_dir() {
            bail!("--config-dir {}: not a directory", dir.display());
        }
        let settings_path = dir.join("tollgate.toml");
        let (sources, burst_millis) = if settings_path.exists() {
            let s = gateway::load(&Source::File(settings_path))?;
            (s.sources, s.burst_millis)
        } else {
            let file_or = |name: &'static str, embedded: &'static str| {
                let p = dir.join(name);
                if p.exists() {
                    Source::File(p)
                } else {
                    Source::Embedded {
                        name,
                        text: embedded,
                    }
                }
            };
            let required = |name: &str| -> anyhow::Result<Source> {
                let p: PathBuf = dir.join(name);
                if !p.exists() {
                    bail!("--config-dir {}: {name} is missing", dir.display());
                }
                Ok(Source::File(p))
            };
            (
                Sources {
                    catalog: file_or("catalog.toml", EMBEDDED_CATALOG),
                    entitlements: required("entitlements.toml")?,
                    credentials: required("credentials.toml")?,
                },
                DEFAULT_BURST_MILLIS,
            )
        };
        let loaded = config::load(&sources)?;
        Ok(GatewayConfig {
            loaded,
            burst_millis,
            origin: dir.display().to_string(),
        })
    }
}

/// What the gateway should do with (account, group) calls, resolved now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Expected {
    /// A QPS limit; a rested bucket admits `burst` calls at once.
    Rate { qps: u32, burst: u32 },
    /// At most this many calls in flight.
    Concurrency { max_in_flight: u32 },
    /// The account's state refuses every call with this code (arrears, not activated, packs
    /// exhausted).
    Refused { code: String },
    /// The credential's account is not in entitlements.toml.
    UnknownAccount,
}

impl Expected {
    /// Short form for tables: `20 qps`, `10 in flight`, `refused`.
    pub fn label(&self) -> String {
        match self {
            Expected::Rate { qps, .. } => format!("{qps} qps"),
            Expected::Concurrency { max_in_flight } => format!("{max_in_flight} in flight"),
            Expected::Refused { .. } => "refused".into(),
            Expected::UnknownAccount => "no account".into(),
        }
    }
}

/// One (account, group) quota that the run exercises.
#[derive(Debug, Clone)]
pub struct GroupPlan {
    pub uin: u64,
    pub account: String,
    /// The catalog group id (`ocr.GeneralBasicOCR`, `bda.segment`), or
    /// `<service>.unlisted` for the actions the catalog does not list (they share one quota).
    pub group: String,
    pub expected: Expected,
}

/// One stream, ready to send.
#[derive(Clone)]
pub struct StreamPlan {
    pub name: String,
    pub load: Load,
    pub secret_id: String,
    pub secret_key: String,
    pub service: String,
    pub action: String,
    pub version: String,
    pub body: Bytes,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Index into [`Plan::groups`].
    pub group: usize,
}

impl std::fmt::Debug for StreamPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPlan")
            .field("name", &self.name)
            .field("load", &self.load)
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"<redacted>")
            .field("service", &self.service)
            .field("action", &self.action)
            .field("group", &self.group)
            .finish()
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub scenario: String,
    pub description: String,
    pub duration: Duration,
    pub burst_millis: u32,
    pub streams: Vec<StreamPlan>,
    pub groups: Vec<GroupPlan>,
    /// Codes the gateway answers with itself before admission (authentication, account state,
    /// protocol): such answers are neither admitted nor rate-limited.
    pub refusal_codes: Vec<String>,
}

/// Run-time overrides of the scenario.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    pub duration_secs: Option<f64>,
    pub rate: Option<f64>,
    pub burst_millis: Option<u32>,
}

/// Codes the gateway produces itself before a call reaches admission, whatever the catalog.
const GATEWAY_REFUSALS: &[&str] = &[
    "AuthFailure.InvalidAuthorization",
    "AuthFailure.SignatureExpire",
    "AuthFailure.SecretIdNotFound",
    "AuthFailure.SignatureFailure",
    "InvalidAction",
    "MissingParameter",
    "UnsupportedProtocol",
    "RequestSizeLimitExceeded",
    "InvalidParameter",
];

/// Resolves `scenario` against `config` at the current wall-clock time.
pub fn resolve(
    scenario: &Scenario,
    config: &GatewayConfig,
    overrides: Overrides,
) -> anyhow::Result<Plan> {
    let duration_secs = overrides.duration_secs.unwrap_or(scenario.duration_secs);
    crate::scenario::check_duration(duration_secs).context("--duration")?;
    let burst_millis = overrides
        .burst_millis
        .or(scenario.burst_millis)
        .unwrap_or(config.burst_millis)
        .max(1);
    let loads = scenario.loads(overrides.rate)?;
    let now_nanos = unix_nanos();
    let loaded = &config.loaded;
    let catalog = &loaded.catalog;

    let mut groups: Vec<GroupPlan> = Vec::new();
    let mut group_index: BTreeMap<(u64, String), usize> = BTreeMap::new();
    let mut streams = Vec::with_capacity(scenario.streams.len());
    for (i, (spec, load)) in scenario.streams.iter().zip(loads).enumerate() {
        let name = scenario.stream_name(i);
        let ctx = || format!("stream[{i}] ({name})");
        let credential = loaded.credentials.get(&spec.secret_id).with_context(|| {
            format!(
                "{}: secret_id {:?} is not in credentials.toml ({})",
                ctx(),
                spec.secret_id,
                config.origin
            )
        })?;
        let secret_key = String::from_utf8(credential.secret_key.to_vec())
            .with_context(|| format!("{}: the secret key is not UTF-8", ctx()))?;
        let service = catalog.service_by_name(&spec.service).with_context(|| {
            let known: Vec<&str> = catalog.services.iter().map(|s| &*s.name).collect();
            format!(
                "{}: service {:?} is not in the catalog (it has {})",
                ctx(),
                spec.service,
                known.join(", ")
            )
        })?;
        let version = match &spec.version {
            Some(v) => v.clone(),
            None => service
                .versions
                .last()
                .map(|v| v.to_string())
                .unwrap_or_default(),
        };
        let route = catalog.route(service, &spec.action).map_err(|e| {
            anyhow::anyhow!(
                "stream {name}: the gateway refuses the action {:?} with InvalidAction ({e:?})",
                spec.action
            )
        })?;
        // Unlisted actions of a service share one quota per account.
        let group_name = match route {
            Route::Listed { group, .. } => group.name.to_string(),
            Route::Unlisted { .. } => service.unlisted_label.to_string(),
        };
        let account = loaded.entitlements.account(credential.uin);
        let expected = match account {
            None => Expected::UnknownAccount,
            Some(account) => {
                match account
                    .owner
                    .gate(service.id, catalog.items_of(&route), now_nanos)
                {
                    Err(refusal) => Expected::Refused {
                        code: match refusal {
                            StateRefusal::InArrears => &service.refusal_codes.in_arrears,
                            StateRefusal::NotActivated => &service.refusal_codes.not_activated,
                            StateRefusal::PacksExhausted(_) => {
                                &service.refusal_codes.packs_exhausted
                            }
                        }
                        .to_string(),
                    },
                    Ok(()) => {
                        let limit = account.limit(&route, catalog.default_qps, || now_nanos);
                        match limit {
                            Limit::Rate(qps) => Expected::Rate {
                                qps,
                                burst: Rate::with_burst_window(qps, burst_millis).burst,
                            },
                            Limit::Concurrency(n) => Expected::Concurrency { max_in_flight: n },
                        }
                    }
                }
            }
        };
        let key = (credential.uin, group_name.clone());
        let group = *group_index.entry(key).or_insert_with(|| {
            groups.push(GroupPlan {
                uin: credential.uin,
                account: account.map(|a| a.name.to_string()).unwrap_or_default(),
                group: group_name,
                expected,
            });
            groups.len() - 1
        });
        streams.push(StreamPlan {
            name,
            load,
            secret_id: spec.secret_id.clone(),
            secret_key,
            service: spec.service.clone(),
            action: spec.action.clone(),
            version,
            body: Bytes::from(spec.body.clone()),
            headers: spec.header_pairs()?,
            group,
        });
    }
    let mut refusal_codes: Vec<String> = GATEWAY_REFUSALS.iter().map(|c| c.to_string()).collect();
    for s in &catalog.services {
        for c in [
            &s.refusal_codes.in_arrears,
            &s.refusal_codes.not_activated,
            &s.refusal_codes.packs_exhausted,
        ] {
            if !refusal_codes.iter().any(|k| k == &**c) {
                refusal_codes.push(c.to_string());
            }
        }
    }
    Ok(Plan {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        duration: Duration::from_secs_f64(duration_secs),
        burst_millis,
        streams,
        groups,
        refusal_codes,
    })
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "AKIDTollgateDemoMain000000000000001";
    const QPS_MODE: &str = "AKIDTollgateDemoQpsMode00000000010";
    const ARREARS: &str = "AKIDTollgateDemoArrears00000000020";

    fn plan(streams: &str) -> anyhow::Result<Plan> {
        let s = Scenario::parse(&format!("rate = 100\n{streams}"))?;
        resolve(&s, &GatewayConfig::embedded()?, Overrides::default())
    }

    fn stream(id: &str, service: &str, action: &str) -> String {
        format!(
            "[[stream]]\nsecret_id = \"{id}\"\nservice = \"{service}\"\naction = \"{action}\"\n"
        )
    }

    #[test]
    fn resolves_groups_limits_and_account_state_from_the_demo_config() {
        let p = plan(
            &[
                stream(MAIN, "ocr", "GeneralBasicOCR"),
                stream(MAIN, "ocr", "GeneralBasicOCR"),
                stream(QPS_MODE, "ocr", "GeneralBasicOCR"),
                stream(QPS_MODE, "bda", "SegmentPortraitPic"),
                stream(MAIN, "facefusion", "FuseFaceUltra"),
                stream(ARREARS, "ocr", "GeneralBasicOCR"),
                stream(MAIN, "ocr", "SomeNewOCR"),
            ]
            .concat(),
        )
        .unwrap();
        // Two streams on the same (account, group) share one group entry.
        assert_eq!(p.streams[0].group, p.streams[1].group);
        assert_eq!(p.groups.len(), 6);
        let g = |i: usize| &p.groups[p.streams[i].group];
        assert_eq!(g(0).group, "ocr.GeneralBasicOCR");
        assert_eq!(g(0).account, "demo-main");
        assert_eq!(g(0).expected, Expected::Rate { qps: 20, burst: 20 });
        // The demo overlay pack of 80 QPS runs 2026-01-01..2027-12-31.
        assert_eq!(
            g(2).expected,
            Expected::Rate {
                qps: 100,
                burst: 100
            }
        );
        assert_eq!(g(3).expected, Expected::Rate { qps: 30, burst: 30 });
        assert_eq!(g(4).expected, Expected::Concurrency { max_in_flight: 10 });
        assert_eq!(
            g(5).expected,
            Expected::Refused {
                code: "ResourceUnavailable.InArrears".into()
            }
        );
        assert_eq!(g(6).group, "ocr.unlisted");
        assert_eq!(p.streams[4].version, "2022-09-27");
        assert!(
            p.refusal_codes
                .iter()
                .any(|c| c == "FailedOperation.UnOpenError")
        );
    }

    #[test]
    fn unknown_credentials_and_services_are_named() {
        let e = format!("{:#}", plan(&stream("AKIDnope", "ocr", "X")).unwrap_err());
        assert!(
            e.contains("AKIDnope") && e.contains("credentials.toml"),
            "{e}"
        );
        let e = format!("{:#}", plan(&stream(MAIN, "nosuch", "X")).unwrap_err());
        assert!(e.contains("\"nosuch\"") && e.contains("ocr"), "{e}");
    }

    #[test]
    fn overrides_replace_duration_rate_and_burst() {
        let s = Scenario::parse(&format!(
            "rate = 100\nduration_secs = 3\n{}",
            stream(MAIN, "ocr", "GeneralBasicOCR")
        ))
        .unwrap();
        let p = resolve(
            &s,
            &GatewayConfig::embedded().unwrap(),
            Overrides {
                duration_secs: Some(1.5),
                rate: Some(40.0),
                burst_millis: Some(500),
            },
        )
        .unwrap();
        assert_eq!(p.duration, Duration::from_millis(1500));
        assert_eq!(p.streams[0].load, Load::Open { rate: 40.0 });
        assert_eq!(p.groups[0].expected, Expected::Rate { qps: 20, burst: 10 });
    }
}
