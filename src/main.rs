//! The `tollgate` binary: parses the command line and calls each crate's entry point.

mod demo;

use clap::{Parser, Subcommand};

// mimalloc: glibc's malloc/free showed high in the gateway's profile under load (per-call
// request, header and record allocations; loadtest/RESULTS.md); the libraries are
// allocator-agnostic.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "QPS admission gateway for cloud AI recognition APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the gateway (embedded defaults unless --config is given).
    Gateway(tollgate_gateway::cli::GatewayArgs),
    /// Runs the stub recognition backend.
    Stub(tollgate_stub::cli::StubArgs),
    /// Runs the stub backend and the gateway on embedded defaults, with the demo accounts.
    Demo(demo::DemoArgs),
    /// Validates a tollgate.toml and the files it names, then exits.
    CheckConfig(tollgate_gateway::cli::CheckConfigArgs),
    /// Prints an owner's month as an itemised statement.
    Statement(tollgate_settlement::cli::StatementArgs),
    /// Applies sealed batches to the PostgreSQL usage ledger, exactly once, and reconciles.
    Consumer(tollgate_settlement::cli::ConsumerArgs),
    /// Prices a purchase: a QPS overlay pack, QPS mode, concurrency tasks or prepaid packs.
    Quote(tollgate_settlement::cli::QuoteArgs),
    /// Settles a month: postpaid bills deducted from balances; negative ones stop service 24 h later.
    Settle(tollgate_settlement::cli::SettleArgs),
    /// The entitlement service: its API server, store bootstrap, and every change over the API.
    Admin(tollgate_admin::cli::AdminArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tollgate: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Gateway(a) => tollgate_gateway::cli::gateway(a).await,
            Command::Stub(a) => tollgate_stub::cli::run(a).await,
            Command::Demo(a) => demo::run(a).await,
            Command::CheckConfig(a) => tollgate_gateway::cli::check_config(a),
            Command::Statement(a) => tollgate_settlement::cli::statement(a).await,
            Command::Consumer(a) => tollgate_settlement::cli::consumer(a).await,
            Command::Quote(a) => tollgate_settlement::cli::quote(a).await,
            Command::Settle(a) => tollgate_settlement::cli::settle(a).await,
            Command::Admin(a) => tollgate_admin::cli::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on (file, key, reason for config errors); no backtrace.
            eprintln!("tollgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
