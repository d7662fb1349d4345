//! `tollgate-loadtest`: the command line. See README.md beside this crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tollgate_loadtest::plan::{self, GatewayConfig, Overrides, Plan};
use tollgate_loadtest::report::{self, Report};
use tollgate_loadtest::runner::{self, RunOptions};
use tollgate_loadtest::scenario::{Load, Scenario};
use tollgate_loadtest::spawn::{self, Demo};

#[derive(Parser, Debug)]
#[command(
    name = "tollgate-loadtest",
    version,
    about = "Sends TC3-signed calls to a Tollgate gateway and reports admissions per (account, group) against the configured limits, with latency percentiles and errors"
)]
struct Cli {
    /// The scenario file (TOML); a bare name such as `overload-one-group` is looked up in
    /// loadtest/scenarios/.
    #[arg(long, value_name = "FILE")]
    scenario: PathBuf,
    /// The gateway's API listener [default: 127.0.0.1:18080].
    #[arg(long, value_name = "HOST:PORT")]
    target: Option<String>,
    /// Seconds to send for, instead of the scenario's duration_secs.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Total calls/s of the weighted open-loop streams, instead of the scenario's rate.
    #[arg(long, value_name = "N")]
    rate: Option<f64>,
    /// Open-loop senders: calls on the wire at once, one connection each (closed-loop
    /// workers have their own connections on top).
    #[arg(long, value_name = "N", default_value_t = 256)]
    connections: usize,
    /// Give up on a call after this long (open loop: counted from its scheduled time).
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,
    /// Open-loop calls waiting for a sender beyond which due calls are not sent but counted
    /// as skipped.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    max_backlog: u64,
    /// Write the report as JSON to this file too.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Read catalog.toml, entitlements.toml and credentials.toml (or the files a tollgate.toml
    /// there names) from DIR instead of the embedded demo config. Must match the gateway's.
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// The gateway's admission.burst_millis, for the expected band (default: from the
    /// scenario, else tollgate.toml in --config-dir, else 1000).
    #[arg(long, value_name = "MS")]
    burst_millis: Option<u32>,
    /// Start `tollgate demo` on free loopback ports, run against it, and stop it afterwards.
    #[arg(long, conflicts_with_all = ["target", "config_dir"])]
    spawn_demo: bool,
    /// The tollgate binary for --spawn-demo [default: ../target/release/tollgate beside this
    /// crate].
    #[arg(long, value_name = "PATH", requires = "spawn_demo")]
    tollgate_bin: Option<PathBuf>,
    /// The stub backend's address, to add its own counters (calls, peak in flight per action)
    /// to the report; set automatically with --spawn-demo.
    #[arg(long, value_name = "HOST:PORT")]
    stub_stats: Option<SocketAddr>,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
    /// Exit with status 2 when a group's admissions fall outside the expected band.
    #[arg(long)]
    strict: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate-loadtest: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let scenario_path = find_scenario(&cli.scenario)?;
    let scenario = Scenario::load(&scenario_path)?;
    let config = match &cli.config_dir {
        Some(dir) => GatewayConfig::from_dir(dir)?,
        None => GatewayConfig::embedded()?,
    };
    let plan = plan::resolve(
        &scenario,
        &config,
        Overrides {
            duration_secs: cli.duration,
            rate: cli.rate,
            burst_millis: cli.burst_millis,
        },
    )?;
    if cli.connections == 0 {
        bail!("--connections must be at least 1");
    }

    let demo = if cli.spawn_demo {
        let bin = cli
            .tollgate_bin
            .clone()
            .unwrap_or_else(spawn::default_binary);
        let demo = Demo::start(&bin).await?;
        eprintln!(
            "started {} demo: API {}, admin {}, stub {}",
            bin.display(),
            demo.api,
            demo.admin,
            demo.stub
        );
        Some(demo)
    } else {
        None
    };
    let target = match (&demo, &cli.target) {
        (Some(d), _) => d.api.to_string(),
        (None, Some(t)) => normalise_target(t)?,
        (None, None) => "127.0.0.1:18080".to_owned(),
    };
    let stub_addr = demo.as_ref().map(|d| d.stub).or(cli.stub_stats);
    print_plan(&plan, &target);

    let opts = RunOptions {
        target: target.clone(),
        connections: cli.connections,
        timeout: Duration::from_millis(cli.timeout_ms.max(1)),
        max_backlog: cli.max_backlog,
        progress: !cli.quiet,
    };
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping, then reporting what was sent");
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = runner::run(&plan, &opts, interrupt).await;
    let backend = match (&result, stub_addr) {
        (Ok(_), Some(addr)) => spawn::fetch_json(addr, "/stub/stats").await,
        _ => None,
    };
    if let Some(d) = demo {
        d.stop().await;
    }
    let result = result?;

    let origin = if cli.spawn_demo {
        "the embedded demo config (spawned demo)".to_owned()
    } else {
        config.origin.clone()
    };
    let mut report: Report = report::build(&plan, &result, &target, &origin);
    report.backend = backend;
    print!("{}", report.render());
    if let Some(path) = &cli.report_json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    if cli.strict && !report.all_within_limits() {
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// `path` if it exists, else `loadtest/scenarios/<path>` (with `.toml` added if missing).
fn find_scenario(path: &Path) -> anyhow::Result<PathBuf> {
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut candidates = vec![dir.join(path)];
    if path.extension().is_none() {
        candidates.push(dir.join(path).with_extension("toml"));
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "no scenario at {} (nor in {}): try overload-one-group, many-tenants, slow-concurrency or mixed-production",
                path.display(),
                dir.display()
            )
        })
}

/// Accepts `host:port`, tolerating a leading `http://` and a trailing `/`.
fn normalise_target(t: &str) -> anyhow::Result<String> {
    let t = t.trim();
    if t.starts_with("https://") {
        bail!("--target {t}: the generator speaks plain HTTP/1.1; give host:port");
    }
    let t = t.strip_prefix("http://").unwrap_or(t).trim_end_matches('/');
    let ok = t
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !ok {
        bail!("--target {t:?}: expected host:port, e.g. 127.0.0.1:18080");
    }
    Ok(t.to_owned())
}

/// What is about to be sent, on stderr.
fn print_plan(plan: &Plan, target: &str) {
    eprintln!(
        "scenario {}: {} stream(s) for {:.1} s against {target}",
        plan.scenario,
        plan.streams.len(),
        plan.duration.as_secs_f64()
    );
    let width = plan.streams.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &plan.streams {
        let g = &plan.groups[s.group];
        let load = match s.load {
            Load::Open { rate } => format!("open loop {rate:.1}/s"),
            Load::Closed { workers } => format!("closed loop, {workers} workers"),
        };
        eprintln!(
            "  {:<width$}  {load:<23} {} ({}) {} -> {} [{}]",
            s.name,
            g.account,
            g.uin,
            s.action,
            g.group,
            g.expected.label()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_host_and_port() {
        assert_eq!(
            normalise_target("127.0.0.1:18080").unwrap(),
            "127.0.0.1:18080"
        );
        assert_eq!(
            normalise_target("http://localhost:1/").unwrap(),
            "localhost:1"
        );
        assert!(normalise_target("127.0.0.1").is_err());
        assert!(normalise_target("https://x:1").is_err());
        assert!(normalise_target(":80").is_err());
    }

    #[test]
    fn bare_scenario_names_resolve_to_the_shipped_files() {
        let p = find_scenario(Path::new("overload-one-group")).unwrap();
        assert!(p.ends_with("scenarios/overload-one-group.toml"));
        assert!(find_scenario(Path::new("nope")).is_err());
    }

    #[test]
    fn the_cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["x", "--scenario", "a.toml", "--spawn-demo", "--rate", "5"])
            .unwrap();
        assert!(c.spawn_demo);
        assert!(
            Cli::try_parse_from(["x", "--scenario", "a", "--spawn-demo", "--target", "h:1"])
                .is_err()
        );
    }
}
