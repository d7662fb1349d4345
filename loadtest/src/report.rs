//! The report: counts per (account, group) against the limit the gateway should enforce, the
//! admission accuracy, latency percentiles and errors, as a table for people and as JSON.
//!
//! The math, for a rate group of `qps` with a burst of `burst` calls (`admission.burst_millis`
//! of its rate), sent to over a window of `w` seconds:
//! - a rested GCRA bucket admits `burst` calls at once, then one every `1/qps` s, so an
//!   overloaded group admits between `qps·w` and `qps·w + burst` calls ([`expected_band`]),
//!   and never more than it was offered;
//! - **accuracy** = admitted/s ÷ qps. Over a short run the burst shows: it tends to
//!   `1 + burst/(qps·w)`, not 1;
//! - **steady accuracy** = (admitted − burst) ÷ (qps·w): the sustained rate against the quota,
//!   ≈ 1.00 for a correct limiter under overload.
//!
//! For a concurrency group the limit is calls in flight; the report gives the limit, the most
//! calls the client had on the wire, and the admitted rate that limit allows at the observed
//! latency (`limit ÷ mean admitted latency`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::plan::{Expected, Plan};
use crate::runner::RunResult;
use crate::scenario::Load;
use crate::stats::StreamStats;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of a histogram recorded in microseconds.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// Latency split by what the answer was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencyByClass {
    pub all: Latency,
    pub admitted: Latency,
    pub rejected: Latency,
    pub errors: Latency,
}

impl LatencyByClass {
    fn of(s: &StreamStats) -> LatencyByClass {
        LatencyByClass {
            all: Latency::of(&s.latency_all()),
            admitted: Latency::of(&s.latency_admitted),
            rejected: Latency::of(&s.latency_rejected),
            errors: Latency::of(&s.latency_error),
        }
    }
}

/// The range of admissions a correct limiter produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Band {
    pub min: u64,
    pub max: u64,
}

/// Did the gateway do what its configuration says?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Admissions within the expected band (or refusals as the account state requires).
    Ok,
    /// More admissions than the quota allows.
    Over,
    /// Fewer admissions than the quota allows.
    Under,
    /// The account state should refuse every call, and something else happened.
    Unexpected,
    /// No band to check against (concurrency groups, unknown accounts, nothing judged).
    NotApplicable,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Over => "OVER",
            Verdict::Under => "UNDER",
            Verdict::Unexpected => "UNEXPECTED",
            Verdict::NotApplicable => "-",
        }
    }
}

/// The admissions a rate limiter of `qps` with a burst of `burst` should produce for `judged`
/// calls (admitted + rejected) offered over `window_secs`, whose last one went out at
/// `last_send_secs` (later than the window when the sends fell behind the timetable: calls
/// then reach the gateway over the longer span).
pub fn expected_band(
    qps: u32,
    burst: u32,
    window_secs: f64,
    last_send_secs: f64,
    judged: u64,
) -> Band {
    let qps = f64::from(qps);
    Band {
        min: judged.min((qps * window_secs).floor() as u64),
        max: judged.min((qps * window_secs.max(last_send_secs)).ceil() as u64 + u64::from(burst)),
    }
}

/// Slack for timing at the window's edges: 2 calls or 1 % of the band's top.
pub fn margin(band: Band) -> u64 {
    (band.max.div_ceil(100)).max(2)
}

/// Checks `admitted` against `band`, with [`margin`].
pub fn judge(admitted: u64, band: Band) -> Verdict {
    let m = margin(band);
    if admitted > band.max + m {
        Verdict::Over
    } else if admitted + m < band.min {
        Verdict::Under
    } else {
        Verdict::Ok
    }
}

/// A concurrency group: never refused means the limit did not bind (fine); refused means it
/// did, and then the admitted rate should be close to `ceiling` (limit ÷ mean admitted
/// latency): above it by more than 10 % means more calls in flight than the limit, below 80 %
/// means slots were left idle while calls were refused.
pub fn judge_concurrency(admitted_rate: f64, ceiling: Option<f64>, rejected: u64) -> Verdict {
    match ceiling {
        _ if rejected == 0 => Verdict::Ok,
        None => Verdict::NotApplicable,
        Some(c) if admitted_rate > c * 1.10 => Verdict::Over,
        Some(c) if admitted_rate < c * 0.80 => Verdict::Under,
        Some(_) => Verdict::Ok,
    }
}

/// admitted/s ÷ qps.
pub fn accuracy(admitted: u64, qps: u32, window_secs: f64) -> Option<f64> {
    (qps > 0 && window_secs > 0.0).then(|| admitted as f64 / window_secs / f64::from(qps))
}

/// (admitted − burst) ÷ (qps·w): the sustained admitted rate against the quota.
pub fn steady_accuracy(admitted: u64, qps: u32, burst: u32, window_secs: f64) -> Option<f64> {
    (qps > 0 && window_secs > 0.0)
        .then(|| (admitted as f64 - f64::from(burst)).max(0.0) / (f64::from(qps) * window_secs))
}

/// One (account, group).
#[derive(Debug, Clone, Serialize)]
pub struct GroupReport {
    pub uin: u64,
    pub account: String,
    pub group: String,
    pub expected: Expected,
    pub streams: Vec<String>,
    pub sent: u64,
    pub admitted: u64,
    pub rejected: u64,
    /// Admitted calls the backend answered with an error code, by code.
    pub backend_errors: BTreeMap<String, u64>,
    /// Everything neither admitted nor rate-limited, by code.
    pub errors: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub skipped: u64,
    pub offered_rate: f64,
    pub admitted_rate: f64,
    /// Rate groups: admitted/s ÷ qps.
    pub accuracy: Option<f64>,
    /// Rate groups: (admitted − burst) ÷ (qps·w).
    pub steady_accuracy: Option<f64>,
    /// Rate groups: the admissions a correct limiter produces.
    pub expected_admitted: Option<Band>,
    /// Concurrency groups: limit ÷ mean admitted latency, the most it can admit per second.
    pub concurrency_ceiling_rate: Option<f64>,
    pub verdict: Verdict,
    /// The most calls of this group the client had on the wire at once.
    pub peak_in_flight: u64,
    pub latency: LatencyByClass,
}

/// One stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamReport {
    pub name: String,
    pub uin: u64,
    pub group: String,
    pub action: String,
    /// `open` or `closed`.
    pub mode: &'static str,
    /// Open loop: the scheduled rate.
    pub target_rate: Option<f64>,
    /// Closed loop: the workers.
    pub workers: Option<u32>,
    pub sent: u64,
    pub admitted: u64,
    pub rejected: u64,
    pub errors: u64,
    pub skipped: u64,
    pub sent_rate: f64,
    pub latency: LatencyByClass,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub sent: u64,
    pub admitted: u64,
    pub rejected: u64,
    pub errors: u64,
    pub transport_errors: u64,
    pub skipped: u64,
    pub sent_rate: f64,
    pub admitted_rate: f64,
    pub latency: LatencyByClass,
}

/// The whole report (also the `--report-json` document).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub description: String,
    pub target: String,
    /// Where the limits came from (embedded demo config or a directory).
    pub config: String,
    pub started_at_unix: i64,
    pub duration_secs: f64,
    /// The window rates are computed over: the duration, or less if interrupted.
    pub send_window_secs: f64,
    /// When the last call went on the wire (later than the window if sends fell behind).
    pub last_send_secs: f64,
    pub wall_secs: f64,
    pub interrupted: bool,
    pub burst_millis: u32,
    pub totals: Totals,
    pub groups: Vec<GroupReport>,
    pub streams: Vec<StreamReport>,
    /// The stub backend's own counters (`GET /stub/stats`), when its address is known.
    pub backend: Option<serde_json::Value>,
}

/// Builds the report of `run` for `plan`.
pub fn build(plan: &Plan, run: &RunResult, target: &str, config: &str) -> Report {
    let w = run.send_window.as_secs_f64().max(1e-9);
    let mut by_group: Vec<StreamStats> =
        plan.groups.iter().map(|_| StreamStats::default()).collect();
    let mut total = StreamStats::default();
    for (plan_stream, stats) in plan.streams.iter().zip(&run.streams) {
        by_group[plan_stream.group].merge(stats);
        total.merge(stats);
    }
    let groups = plan
        .groups
        .iter()
        .zip(&by_group)
        .enumerate()
        .map(|(gi, (g, s))| {
            let admitted = s.admitted();
            let judged = admitted + s.rejected;
            let latency = LatencyByClass::of(s);
            let (mut accuracy_v, mut steady, mut band, mut ceiling) = (None, None, None, None);
            let verdict = match &g.expected {
                Expected::Rate { qps, burst } => {
                    accuracy_v = accuracy(admitted, *qps, w);
                    steady = steady_accuracy(admitted, *qps, *burst, w);
                    let b = expected_band(*qps, *burst, w, run.last_send.as_secs_f64(), judged);
                    band = Some(b);
                    if judged == 0 {
                        Verdict::NotApplicable
                    } else {
                        judge(admitted, b)
                    }
                }
                Expected::Concurrency { max_in_flight } => {
                    let mean_s = latency.admitted.mean_ms / 1000.0;
                    ceiling = (mean_s > 0.0).then(|| f64::from(*max_in_flight) / mean_s);
                    judge_concurrency(admitted as f64 / w, ceiling, s.rejected)
                }
                Expected::Refused { code } => {
                    let all_refused = admitted == 0
                        && s.rejected == 0
                        && s.errors.get(code).copied().unwrap_or(0) > 0;
                    if all_refused {
                        Verdict::Ok
                    } else {
                        Verdict::Unexpected
                    }
                }
                Expected::UnknownAccount => Verdict::NotApplicable,
            };
            GroupReport {
                uin: g.uin,
                account: g.account.clone(),
                group: g.group.clone(),
                expected: g.expected.clone(),
                streams: plan
                    .streams
                    .iter()
                    .filter(|st| st.group == gi)
                    .map(|st| st.name.clone())
                    .collect(),
                sent: s.sent(),
                admitted,
                rejected: s.rejected,
                backend_errors: s.backend_errors.clone(),
                errors: s.errors.clone(),
                transport_errors: s.transport_errors(),
                skipped: s.skipped,
                offered_rate: s.sent() as f64 / w,
                admitted_rate: admitted as f64 / w,
                accuracy: accuracy_v,
                steady_accuracy: steady,
                expected_admitted: band,
                concurrency_ceiling_rate: ceiling,
                verdict,
                peak_in_flight: run.group_peak_in_flight.get(gi).copied().unwrap_or(0),
                latency,
            }
        })
        .collect();
    let streams = plan
        .streams
        .iter()
        .zip(&run.streams)
        .map(|(p, s)| {
            let g = &plan.groups[p.group];
            let (mode, target_rate, workers) = match p.load {
                Load::Open { rate } => ("open", Some(rate), None),
                Load::Closed { workers } => ("closed", None, Some(workers)),
            };
            StreamReport {
                name: p.name.clone(),
                uin: g.uin,
                group: g.group.clone(),
                action: p.action.clone(),
                mode,
                target_rate,
                workers,
                sent: s.sent(),
                admitted: s.admitted(),
                rejected: s.rejected,
                errors: s.error_count(),
                skipped: s.skipped,
                sent_rate: s.sent() as f64 / w,
                latency: LatencyByClass::of(s),
            }
        })
        .collect();
    Report {
        scenario: plan.scenario.clone(),
        description: plan.description.clone(),
        target: target.to_owned(),
        config: config.to_owned(),
        started_at_unix: run.started_unix,
        duration_secs: plan.duration.as_secs_f64(),
        send_window_secs: run.send_window.as_secs_f64(),
        last_send_secs: run.last_send.as_secs_f64(),
        wall_secs: run.wall.as_secs_f64(),
        interrupted: run.interrupted,
        burst_millis: plan.burst_millis,
        totals: Totals {
            sent: total.sent(),
            admitted: total.admitted(),
            rejected: total.rejected,
            errors: total.error_count(),
            transport_errors: total.transport_errors(),
            skipped: total.skipped,
            sent_rate: total.sent() as f64 / w,
            admitted_rate: total.admitted() as f64 / w,
            latency: LatencyByClass::of(&total),
        },
        groups,
        streams,
        backend: None,
    }
}

impl Report {
    /// True when no rate group admitted more or fewer calls than its band allows and every
    /// refused account was refused.
    pub fn all_within_limits(&self) -> bool {
        self.groups
            .iter()
            .all(|g| matches!(g.verdict, Verdict::Ok | Verdict::NotApplicable))
    }

    /// The readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let o = &mut out;
        let _ = writeln!(o, "\n== Tollgate load test: {} ==", self.scenario);
        if !self.description.is_empty() {
            let _ = writeln!(o, "{}", wrap(&self.description, 100));
        }
        let _ = writeln!(
            o,
            "target {} · limits from {} · sent for {:.1} s{} · burst {} ms",
            self.target,
            self.config,
            self.send_window_secs,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            },
            self.burst_millis
        );

        let _ = writeln!(o, "\nAdmission by account and group");
        let mut t = Table::new(
            2,
            &[
                "account",
                "group",
                "limit",
                "sent",
                "admitted",
                "rejected",
                "errors",
                "offered/s",
                "admitted/s",
                "expected",
                "accuracy",
                "steady",
                "verdict",
            ],
        );
        for g in &self.groups {
            let judged = g.admitted + g.rejected;
            let (expected, accuracy, steady) = match (&g.expected, g.expected_admitted) {
                (Expected::Rate { .. }, _) if judged == 0 => ("-".into(), "-".into(), "-".into()),
                (Expected::Rate { .. }, Some(b)) if b.min == b.max => {
                    (format!("all {}", b.max), fmt_opt(g.accuracy, 3), "-".into())
                }
                (Expected::Rate { .. }, Some(b)) => (
                    format!("{}..{}", b.min, b.max),
                    fmt_opt(g.accuracy, 3),
                    fmt_opt(g.steady_accuracy, 3),
                ),
                (Expected::Concurrency { .. }, _) => (
                    g.concurrency_ceiling_rate
                        .map(|c| format!("~{c:.1}/s"))
                        .unwrap_or_else(|| "-".into()),
                    "-".into(),
                    "-".into(),
                ),
                (Expected::Refused { .. }, _) => ("0".into(), "-".into(), "-".into()),
                _ => ("-".into(), "-".into(), "-".into()),
            };
            t.row(vec![
                format!("{} ({})", non_empty(&g.account, "?"), g.uin),
                g.group.clone(),
                g.expected.label(),
                g.sent.to_string(),
                g.admitted.to_string(),
                g.rejected.to_string(),
                g.errors.values().sum::<u64>().to_string(),
                format!("{:.1}", g.offered_rate),
                format!("{:.1}", g.admitted_rate),
                expected,
                accuracy,
                steady,
                g.verdict.label().into(),
            ]);
        }
        let _ = write!(o, "{}", t.render());
        let _ = writeln!(
            o,
            "  admitted = answered by the backend (success or its own error code); rejected = RequestLimitExceeded."
        );
        if self
            .groups
            .iter()
            .any(|g| matches!(g.expected, Expected::Rate { .. }))
        {
            let _ = writeln!(
                o,
                "  expected = admissions a correct limiter gives: qps x {:.1} s .. + burst (a rested bucket admits {} ms of its rate at once), capped by what was offered (\"all\": under quota).",
                self.send_window_secs, self.burst_millis
            );
            let _ = writeln!(
                o,
                "  accuracy = admitted/s / qps (includes the burst); steady = (admitted - burst) / (qps x seconds), ~1.00 when the limit holds."
            );
        }
        for g in &self.groups {
            if let Expected::Concurrency { max_in_flight } = g.expected {
                let _ = writeln!(
                    o,
                    "  {} {}: limit {} in flight; admitted calls took {:.0} ms on average, so at most ~{} admitted/s; admitted {:.1}/s; client had up to {} calls on the wire.",
                    non_empty(&g.account, "?"),
                    g.group,
                    max_in_flight,
                    g.latency.admitted.mean_ms,
                    fmt_opt(g.concurrency_ceiling_rate, 1),
                    g.admitted_rate,
                    g.peak_in_flight,
                );
            }
            if let Expected::Refused { code } = &g.expected {
                let _ = writeln!(
                    o,
                    "  {} {}: the account's state refuses every call with {code}.",
                    non_empty(&g.account, "?"),
                    g.group,
                );
            }
        }

        let _ = writeln!(
            o,
            "\nLatency (ms; open loop: from the scheduled send time, so queueing counts; closed loop: from the send)"
        );
        let mut t = Table::new(
            2,
            &[
                "stream / group",
                "answers",
                "count",
                "mean",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
            ],
        );
        let lat_rows = |t: &mut Table, name: String, l: &LatencyByClass| {
            for (class, lat) in [
                ("admitted", &l.admitted),
                ("rejected", &l.rejected),
                ("errors", &l.errors),
            ] {
                if lat.count > 0 {
                    t.row(latency_row(&name, class, lat));
                }
            }
        };
        for s in &self.streams {
            let load = match (s.target_rate, s.workers) {
                (Some(r), _) => format!("open {r:.0}/s"),
                (_, Some(n)) => format!("closed x{n}"),
                _ => String::new(),
            };
            lat_rows(&mut t, format!("{} [{load}]", s.name), &s.latency);
        }
        if self.streams.len() > 1 {
            for g in &self.groups {
                if g.streams.len() > 1 {
                    lat_rows(
                        &mut t,
                        format!("group {} {}", non_empty(&g.account, "?"), g.group),
                        &g.latency,
                    );
                }
            }
        }
        t.row(latency_row("all", "all", &self.totals.latency.all));
        let _ = write!(o, "{}", t.render());

        let mut codes = Table::new(3, &["account", "group", "answer", "count"]);
        for g in &self.groups {
            for (code, n) in &g.backend_errors {
                codes.row(vec![
                    non_empty(&g.account, "?").into(),
                    g.group.clone(),
                    format!("{code} (backend, admitted)"),
                    n.to_string(),
                ]);
            }
            for (code, n) in &g.errors {
                codes.row(vec![
                    non_empty(&g.account, "?").into(),
                    g.group.clone(),
                    code.clone(),
                    n.to_string(),
                ]);
            }
            if g.skipped > 0 {
                codes.row(vec![
                    non_empty(&g.account, "?").into(),
                    g.group.clone(),
                    "not sent (generator backlog full)".into(),
                    g.skipped.to_string(),
                ]);
            }
        }
        if !codes.rows.is_empty() {
            let _ = writeln!(o, "\nErrors and error codes");
            let _ = write!(o, "{}", codes.render());
        }

        if let Some(actions) = self
            .backend
            .as_ref()
            .and_then(|b| b.get("actions"))
            .and_then(|a| a.as_object())
        {
            let _ = writeln!(o, "\nBackend (stub) view: calls that reached it");
            let mut t = Table::new(1, &["action", "calls", "max in flight"]);
            for (action, a) in actions {
                t.row(vec![
                    action.clone(),
                    a.get("calls").map(|v| v.to_string()).unwrap_or_default(),
                    a.get("max_in_flight")
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                ]);
            }
            let _ = write!(o, "{}", t.render());
        }

        let behind = self.last_send_secs - self.send_window_secs;
        if behind > 0.25 {
            let _ = writeln!(
                o,
                "\nNOTE: calls went out up to {behind:.1} s behind the timetable (last send at {:.1} s of {:.1} s): the target or this machine could not keep up with the offered rate. Latency includes that wait; rates are per second of the {:.1} s window, so they overstate what was sustained.",
                self.last_send_secs, self.send_window_secs, self.send_window_secs
            );
        }
        let tt = &self.totals;
        let _ = writeln!(
            o,
            "\nTotal: sent {} ({:.1}/s), admitted {} ({:.1}/s), rejected {}, errors {} (transport {}), not sent {}; wall time {:.1} s",
            tt.sent,
            tt.sent_rate,
            tt.admitted,
            tt.admitted_rate,
            tt.rejected,
            tt.errors,
            tt.transport_errors,
            tt.skipped,
            self.wall_secs
        );
        let verdicts: Vec<String> = self
            .groups
            .iter()
            .filter(|g| {
                matches!(
                    g.verdict,
                    Verdict::Over | Verdict::Under | Verdict::Unexpected
                )
            })
            .map(|g| {
                format!(
                    "{} {} {}",
                    non_empty(&g.account, "?"),
                    g.group,
                    g.verdict.label()
                )
            })
            .collect();
        let checked = self
            .groups
            .iter()
            .filter(|g| g.verdict != Verdict::NotApplicable)
            .count();
        if tt.transport_errors > 0 {
            let _ = writeln!(
                o,
                "WARNING: {} call(s) got no answer (see \"transport:\" above): is the gateway up at {}?",
                tt.transport_errors, self.target
            );
        }
        if checked == 0 {
            let _ = writeln!(
                o,
                "Limits: nothing to check (no group got answers from the gateway's limiter)."
            );
        } else if verdicts.is_empty() {
            let _ = writeln!(
                o,
                "Limits: all {checked} checked group(s) within their expected bands."
            );
        } else {
            let _ = writeln!(o, "Limits: OUT OF BAND: {}", verdicts.join(", "));
        }
        out
    }
}

fn latency_row(name: &str, class: &str, l: &Latency) -> Vec<String> {
    let f = |v: f64| format!("{v:.2}");
    vec![
        name.to_owned(),
        class.to_owned(),
        l.count.to_string(),
        f(l.mean_ms),
        f(l.p50_ms),
        f(l.p90_ms),
        f(l.p99_ms),
        f(l.p999_ms),
        f(l.max_ms),
    ]
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn non_empty<'a>(s: &'a str, or: &'a str) -> &'a str {
    if s.is_empty() { or } else { s }
}

fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        if line > 0 && line + 1 + word.len() > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.len();
    }
    out
}

/// A plain text table: the first `left` columns (names) left-aligned, the rest (numbers)
/// right-aligned.
struct Table {
    header: Vec<String>,
    left: usize,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(left: usize, header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            left,
            rows: vec![],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::from(" ");
            for (i, c) in r.iter().enumerate().take(n) {
                let pad = widths[i] - c.chars().count();
                line.push(' ');
                if i < self.left {
                    line.push_str(c);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(c);
                }
                line.push(' ');
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;
    use crate::plan::{GroupPlan, StreamPlan};
    use std::time::Duration;

    #[test]
    fn band_and_verdict_follow_the_gcra_burst() {
        // 20 QPS, burst 20, 10 s at 200/s: 2000 judged → 200..220.
        let b = expected_band(20, 20, 10.0, 9.995, 2000);
        assert_eq!(b, Band { min: 200, max: 220 });
        assert_eq!(margin(b), 3);
        assert_eq!(judge(219, b), Verdict::Ok);
        assert_eq!(judge(200, b), Verdict::Ok);
        assert_eq!(judge(223, b), Verdict::Ok);
        assert_eq!(judge(224, b), Verdict::Over);
        assert_eq!(judge(196, b), Verdict::Under);
        // Offered less than the quota: everything should be admitted.
        let under = expected_band(20, 20, 10.0, 9.9, 150);
        assert_eq!(under, Band { min: 150, max: 150 });
        assert_eq!(judge(150, under), Verdict::Ok);
        assert_eq!(judge(140, under), Verdict::Under);
        // Offered between qps·w and qps·w + burst: all admitted is right.
        assert_eq!(
            expected_band(20, 20, 10.0, 10.0, 210),
            Band { min: 200, max: 210 }
        );
        // Fractional windows round outward.
        assert_eq!(
            expected_band(30, 30, 2.5, 2.5, 10_000),
            Band { min: 75, max: 105 }
        );
        // Sends that fell 2 s behind reach the gateway over 12 s: the top of the band grows.
        assert_eq!(
            expected_band(20, 20, 10.0, 12.0, 2000),
            Band { min: 200, max: 260 }
        );
    }

    #[test]
    fn concurrency_groups_are_judged_against_limit_over_latency() {
        // 10 in flight at 0.5 s: ~20/s.
        assert_eq!(judge_concurrency(20.0, Some(20.0), 800), Verdict::Ok);
        assert_eq!(judge_concurrency(21.5, Some(20.0), 800), Verdict::Ok);
        assert_eq!(judge_concurrency(23.0, Some(20.0), 800), Verdict::Over);
        assert_eq!(judge_concurrency(12.0, Some(20.0), 800), Verdict::Under);
        // Never refused: the limit did not bind, whatever the rate.
        assert_eq!(judge_concurrency(12.0, Some(20.0), 0), Verdict::Ok);
        assert_eq!(judge_concurrency(0.0, None, 5), Verdict::NotApplicable);
    }

    #[test]
    fn accuracy_includes_the_burst_and_steady_accuracy_removes_it() {
        assert_eq!(accuracy(220, 20, 10.0), Some(1.1));
        assert_eq!(steady_accuracy(220, 20, 20, 10.0), Some(1.0));
        assert_eq!(steady_accuracy(10, 20, 20, 10.0), Some(0.0));
        assert_eq!(accuracy(5, 0, 10.0), None);
    }

    #[test]
    fn latency_percentiles_come_from_the_histogram_in_ms() {
        let mut h = crate::stats::new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 500.0).abs() < 1.0, "{l:?}");
        assert!((l.p90_ms - 900.0).abs() < 1.0, "{l:?}");
        assert!((l.p99_ms - 990.0).abs() < 1.0, "{l:?}");
        assert!((l.max_ms - 1000.0).abs() < 1.0, "{l:?}");
        assert_eq!(
            Latency::of(&crate::stats::new_histogram()),
            Latency::default()
        );
    }

    fn stream(name: &str, group: usize) -> StreamPlan {
        StreamPlan {
            name: name.into(),
            load: Load::Open { rate: 200.0 },
            secret_id: "A".into(),
            secret_key: "k".into(),
            service: "ocr".into(),
            action: "GeneralBasicOCR".into(),
            version: "2018-11-19".into(),
            body: bytes::Bytes::new(),
            headers: vec![],
            group,
        }
    }

    #[test]
    fn builds_group_rows_from_streams_and_renders() {
        let plan = Plan {
            scenario: "t".into(),
            description: "d".into(),
            duration: Duration::from_secs(10),
            burst_millis: 1000,
            streams: vec![stream("a", 0), stream("b", 0), stream("c", 1)],
            groups: vec![
                GroupPlan {
                    uin: 1,
                    account: "main".into(),
                    group: "ocr.GeneralBasicOCR".into(),
                    expected: Expected::Rate { qps: 20, burst: 20 },
                },
                GroupPlan {
                    uin: 20,
                    account: "arrears".into(),
                    group: "ocr.GeneralBasicOCR".into(),
                    expected: Expected::Refused {
                        code: "ResourceUnavailable.InArrears".into(),
                    },
                },
            ],
            refusal_codes: vec![],
        };
        let mut a = StreamStats::default();
        let mut b = StreamStats::default();
        let mut c = StreamStats::default();
        for i in 0..1000 {
            let o = if i < 110 {
                Outcome::Success
            } else {
                Outcome::Limited
            };
            a.record(&o, Duration::from_millis(2));
            b.record(&o, Duration::from_millis(2));
            c.record(
                &Outcome::Refused("ResourceUnavailable.InArrears".into()),
                Duration::from_millis(1),
            );
        }
        let run = RunResult {
            started_unix: 0,
            send_window: Duration::from_secs(10),
            last_send: Duration::from_millis(9995),
            wall: Duration::from_secs(10),
            interrupted: false,
            streams: vec![a, b, c],
            group_peak_in_flight: vec![5, 1],
        };
        let r = build(&plan, &run, "127.0.0.1:1", "embedded");
        let g = &r.groups[0];
        assert_eq!((g.sent, g.admitted, g.rejected), (2000, 220, 1780));
        assert_eq!(g.expected_admitted, Some(Band { min: 200, max: 220 }));
        assert_eq!(g.verdict, Verdict::Ok);
        assert_eq!(g.accuracy, Some(1.1));
        assert_eq!(g.admitted_rate, 22.0);
        assert_eq!(g.streams, vec!["a", "b"]);
        assert_eq!(r.groups[1].verdict, Verdict::Ok);
        assert_eq!(r.totals.sent, 3000);
        assert!(r.all_within_limits());
        let text = r.render();
        assert!(text.contains("200..220"), "{text}");
        assert!(text.contains("ResourceUnavailable.InArrears"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["groups"][0]["expected"]["kind"], "rate");
        assert_eq!(json["groups"][0]["verdict"], "ok");
        assert_eq!(json["totals"]["admitted"], 220);
    }
}
