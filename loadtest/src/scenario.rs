//! Scenario files: the traffic a run sends, as TOML.
//!
//! A scenario is a list of streams. Each stream is one kind of call (a credential, a service,
//! an action, a body and extra headers) sent either **open loop** (on a fixed timetable at a
//! rate, whatever the answers: latency then includes queueing, so there is no coordinated
//! omission) or **closed loop** (N workers, each sending its next call as soon as the previous
//! answer is complete: "maximum speed").
//!
//! ```toml
//! name = "overload-one-group"
//! description = "what it shows"
//! duration_secs = 10
//! rate = 200                 # total rate shared by the weighted open-loop streams
//! # burst_millis = 1000      # the gateway's admission.burst_millis, for the report
//!
//! [[stream]]
//! name = "main GeneralBasicOCR"                  # optional; must be unique
//! secret_id = "AKIDTollgateDemoMain000000000000001"
//! service = "ocr"
//! action = "GeneralBasicOCR"
//! weight = 1                 # share of `rate` (default 1) ...
//! # rate = 50                # ... or a fixed rate of its own
//! # mode = "closed"          # closed loop at maximum speed ...
//! # concurrency = 30         # ... with this many workers
//! # version = "2018-11-19"   # X-TC-Version (default: the service's newest in the catalog)
//! # body = '{"ImageUrl":"https://example.com/a.jpg"}'
//! [stream.headers]
//! X-Stub-Latency-Ms = "20"
//! ```
//!
//! Only this module deserializes scenarios; [`Scenario::loads`] turns each stream's rate
//! settings into a validated [`Load`].

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{Context, bail};
use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

/// The body sent when a stream names none: what the demo's SDK example sends.
pub const DEFAULT_BODY: &str = r#"{"ImageUrl":"https://example.com/a.jpg"}"#;

/// Headers the generator sets itself (signed or routing); a stream may not override them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "content-type",
    "content-length",
    "x-tc-action",
    "x-tc-timestamp",
    "x-tc-version",
];

/// A parsed scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Shown in the report (default: the file name without `.toml`).
    #[serde(default)]
    pub name: String,
    /// One paragraph: what the scenario shows.
    #[serde(default)]
    pub description: String,
    /// How long calls are sent (`--duration` overrides it).
    #[serde(default = "default_duration")]
    pub duration_secs: f64,
    /// The total rate (calls/s) shared by the weighted open-loop streams (`--rate` overrides it).
    pub rate: Option<f64>,
    /// The gateway's `admission.burst_millis`, for the expected-admissions band of the report.
    pub burst_millis: Option<u32>,
    #[serde(rename = "stream", default)]
    pub streams: Vec<StreamSpec>,
}

fn default_duration() -> f64 {
    10.0
}

fn default_body() -> String {
    DEFAULT_BODY.to_owned()
}

/// Open loop (a timetable) or closed loop (workers at maximum speed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Open,
    Closed,
}

/// One stream as written in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    pub name: Option<String>,
    /// Looked up in credentials.toml for its key and account.
    pub secret_id: String,
    /// The service of the credential scope (`ocr`, `facefusion`, `bda`, …).
    pub service: String,
    /// `X-TC-Action`.
    pub action: String,
    #[serde(default)]
    pub mode: Mode,
    /// Open loop: share of the scenario's `rate`.
    pub weight: Option<f64>,
    /// Open loop: a fixed rate of its own, calls/s.
    pub rate: Option<f64>,
    /// Closed loop: the number of workers.
    pub concurrency: Option<u32>,
    /// `X-TC-Version` (default: the newest version of the service in the catalog).
    pub version: Option<String>,
    /// The JSON body.
    #[serde(default = "default_body")]
    pub body: String,
    /// Extra headers, e.g. `X-Stub-Latency-Ms` for the stub backend.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// How a stream sends, once validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// Calls scheduled every `1 / rate` seconds.
    Open { rate: f64 },
    /// This many workers, each with one call outstanding at a time.
    Closed { workers: u32 },
}

impl Scenario {
    /// Reads and parses a scenario file; the name defaults to the file stem.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the scenario {}", path.display()))?;
        let mut s = Scenario::parse(&text)
            .with_context(|| format!("scenario {} is invalid", path.display()))?;
        if s.name.is_empty() {
            s.name = path
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "scenario".into());
        }
        Ok(s)
    }

    /// Parses scenario text and checks everything that does not need the gateway's config.
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.streams.is_empty() {
            bail!("no [[stream]]: a scenario needs at least one");
        }
        check_duration(self.duration_secs).context("duration_secs")?;
        if let Some(r) = self.rate {
            check_rate(r).context("rate")?;
        }
        let mut names = HashSet::new();
        for (i, st) in self.streams.iter().enumerate() {
            let name = self.stream_name(i);
            st.validate()
                .with_context(|| format!("stream[{i}] ({name})"))?;
            if !names.insert(name.clone()) {
                bail!("stream[{i}]: the name {name:?} is used twice; names must be unique");
            }
        }
        Ok(())
    }

    /// The display name of stream `i`: its `name`, or `<service>.<action>#<i>`.
    pub fn stream_name(&self, i: usize) -> String {
        let st = &self.streams[i];
        st.name
            .clone()
            .unwrap_or_else(|| format!("{}.{}#{i}", st.service, st.action))
    }

    /// Each stream's load, with `rate_override` (`--rate`) replacing the scenario's total rate.
    pub fn loads(&self, rate_override: Option<f64>) -> anyhow::Result<Vec<Load>> {
        if let Some(r) = rate_override {
            check_rate(r).context("--rate")?;
        }
        let total = rate_override.or(self.rate);
        let weighted = |st: &StreamSpec| st.mode == Mode::Open && st.rate.is_none();
        let weight_sum: f64 = self
            .streams
            .iter()
            .filter(|st| weighted(st))
            .map(|st| st.weight.unwrap_or(1.0))
            .sum();
        if rate_override.is_some() && weight_sum == 0.0 {
            bail!(
                "--rate sets the total rate of the weighted open-loop streams, and this scenario has none (every stream has its own `rate` or is closed loop)"
            );
        }
        self.streams
            .iter()
            .enumerate()
            .map(|(i, st)| match (st.mode, st.rate, st.concurrency) {
                (Mode::Closed, _, Some(workers)) => Ok(Load::Closed { workers }),
                (Mode::Closed, _, None) => {
                    bail!("stream[{i}]: mode = \"closed\" needs `concurrency`")
                }
                (Mode::Open, Some(rate), _) => Ok(Load::Open { rate }),
                (Mode::Open, None, _) => {
                    let total = total.with_context(|| {
                        format!(
                            "stream[{i}] ({}) has no `rate` of its own, so it takes a share of the scenario's `rate`, which is not set (add `rate = N` to the file or pass --rate N)",
                            self.stream_name(i)
                        )
                    })?;
                    Ok(Load::Open {
                        rate: total * st.weight.unwrap_or(1.0) / weight_sum,
                    })
                }
            })
            .collect()
    }
}

impl StreamSpec {
    fn validate(&self) -> anyhow::Result<()> {
        for (key, v) in [
            ("secret_id", &self.secret_id),
            ("service", &self.service),
            ("action", &self.action),
        ] {
            if v.trim().is_empty() {
                bail!("`{key}` is empty");
            }
        }
        match self.mode {
            Mode::Open => {
                if self.concurrency.is_some() {
                    bail!("`concurrency` applies to mode = \"closed\" only");
                }
                if self.rate.is_some() && self.weight.is_some() {
                    bail!(
                        "give `rate` (a fixed rate) or `weight` (a share of the scenario's rate), not both"
                    );
                }
                if let Some(r) = self.rate {
                    check_rate(r).context("rate")?;
                }
                if let Some(w) = self.weight
                    && !(w.is_finite() && w > 0.0)
                {
                    bail!("weight must be a positive number, not {w}");
                }
            }
            Mode::Closed => {
                if self.rate.is_some() || self.weight.is_some() {
                    bail!(
                        "mode = \"closed\" sends at maximum speed: use `concurrency`, not `rate` or `weight`"
                    );
                }
                match self.concurrency {
                    None => bail!("mode = \"closed\" needs `concurrency` (the number of workers)"),
                    Some(0) => bail!("concurrency must be at least 1"),
                    Some(_) => {}
                }
            }
        }
        serde_json::from_str::<serde_json::Value>(&self.body).context("body is not valid JSON")?;
        self.header_pairs()?;
        Ok(())
    }

    /// The extra headers, checked: valid names and values, none the generator sets itself.
    pub fn header_pairs(&self) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
        self.headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .with_context(|| format!("headers: {k:?} is not a valid header name"))?;
                if RESERVED_HEADERS.contains(&name.as_str()) {
                    bail!("headers: {k} is set by the generator (it is signed or routes the call)");
                }
                let value = HeaderValue::from_str(v)
                    .with_context(|| format!("headers.{k}: {v:?} is not a valid header value"))?;
                Ok((name, value))
            })
            .collect()
    }
}

/// A duration in seconds: positive, finite, at most a day.
pub fn check_duration(secs: f64) -> anyhow::Result<()> {
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        bail!("must be more than 0 and at most 86400 seconds, not {secs}");
    }
    Ok(())
}

fn check_rate(rate: f64) -> anyhow::Result<()> {
    if !(rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0) {
        bail!("must be a positive number of calls per second (at most 10000000), not {rate}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_STREAMS: &str = r#"
name = "t"
duration_secs = 5
rate = 300

[[stream]]
secret_id = "AKID1"
service = "ocr"
action = "GeneralBasicOCR"
weight = 2

[[stream]]
name = "fixed"
secret_id = "AKID2"
service = "ocr"
action = "IDCardOCR"
rate = 7.5
[stream.headers]
X-Stub-Latency-Ms = "20"

[[stream]]
secret_id = "AKID1"
service = "ocr"
action = "IDCardOCR"

[[stream]]
secret_id = "AKID1"
service = "facefusion"
action = "FuseFaceUltra"
mode = "closed"
concurrency = 30
body = '{"ProjectId":"1"}'
"#;

    #[test]
    fn parses_streams_with_defaults_and_shares_the_rate_by_weight() {
        let s = Scenario::parse(TWO_STREAMS).unwrap();
        assert_eq!(s.name, "t");
        assert_eq!(s.duration_secs, 5.0);
        assert_eq!(s.streams.len(), 4);
        assert_eq!(s.streams[0].body, DEFAULT_BODY);
        assert_eq!(s.stream_name(0), "ocr.GeneralBasicOCR#0");
        assert_eq!(s.stream_name(1), "fixed");
        let h = s.streams[1].header_pairs().unwrap();
        assert_eq!(h[0].0.as_str(), "x-stub-latency-ms");
        assert_eq!(
            s.loads(None).unwrap(),
            vec![
                Load::Open { rate: 200.0 },
                Load::Open { rate: 7.5 },
                Load::Open { rate: 100.0 },
                Load::Closed { workers: 30 },
            ]
        );
        // --rate replaces the shared total; fixed-rate and closed streams keep theirs.
        let loads = s.loads(Some(30.0)).unwrap();
        assert_eq!(loads[0], Load::Open { rate: 20.0 });
        assert_eq!(loads[1], Load::Open { rate: 7.5 });
        assert_eq!(loads[2], Load::Open { rate: 10.0 });
    }

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let s = Scenario::parse(
            "[[stream]]\nsecret_id = \"A\"\nservice = \"ocr\"\naction = \"X\"\nrate = 5\n",
        )
        .unwrap();
        assert_eq!(s.duration_secs, 10.0);
        assert_eq!(s.burst_millis, None);
        assert_eq!(s.streams[0].mode, Mode::Open);
        assert_eq!(s.loads(None).unwrap(), vec![Load::Open { rate: 5.0 }]);
    }

    fn err_of(text: &str) -> String {
        format!("{:#}", Scenario::parse(text).unwrap_err())
    }

    #[test]
    fn rejects_mistakes_with_the_stream_and_key() {
        let base = "[[stream]]\nsecret_id = \"A\"\nservice = \"ocr\"\naction = \"X\"\n";
        let cases = [
            ("", "at least one"),
            (&format!("{base}rate = 5\nweight = 1\n"), "not both"),
            (&format!("{base}mode = \"closed\"\n"), "needs `concurrency`"),
            (
                &format!("{base}mode = \"closed\"\nconcurrency = 0\n"),
                "at least 1",
            ),
            (
                &format!("{base}mode = \"closed\"\nconcurrency = 2\nrate = 3\n"),
                "not `rate`",
            ),
            (&format!("{base}concurrency = 2\n"), "closed"),
            (&format!("{base}rate = -1\n"), "positive"),
            (&format!("{base}body = \"{{nope\"\n"), "not valid JSON"),
            (
                &format!("{base}[stream.headers]\nAuthorization = \"x\"\n"),
                "set by the generator",
            ),
            (
                &format!("{base}[stream.headers]\n\"bad name\" = \"x\"\n"),
                "not a valid header name",
            ),
            (&format!("{base}colour = 1\n"), "unknown field"),
            (&format!("duration_secs = 0\n{base}"), "duration_secs"),
            (
                &format!("{base}name = \"a\"\n{base}name = \"a\"\n"),
                "used twice",
            ),
        ];
        for (text, want) in cases {
            let e = err_of(text);
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = err_of(&format!("{base}service = \"\"\n"));
        assert!(e.contains("duplicate key") || e.contains("empty"), "{e}");
    }

    #[test]
    fn a_weighted_stream_needs_a_total_rate() {
        let s =
            Scenario::parse("[[stream]]\nsecret_id = \"A\"\nservice = \"ocr\"\naction = \"X\"\n")
                .unwrap();
        let e = format!("{:#}", s.loads(None).unwrap_err());
        assert!(e.contains("--rate"), "{e}");
        assert_eq!(
            s.loads(Some(40.0)).unwrap(),
            vec![Load::Open { rate: 40.0 }]
        );
        let fixed = Scenario::parse(
            "[[stream]]\nsecret_id = \"A\"\nservice = \"ocr\"\naction = \"X\"\nrate = 3\n",
        )
        .unwrap();
        assert!(fixed.loads(Some(10.0)).is_err());
    }
}
