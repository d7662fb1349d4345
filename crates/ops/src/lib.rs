//! What every Tollgate program runs with: the small HTTP servers of admin listeners and the
//! stub ([`http`]), the stop signal ([`terminated`]), and logging ([`init_logging`]).

#![deny(unsafe_code)]

pub mod http;

/// Completes on SIGTERM or SIGINT.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
}

/// Structured logs on stderr: text or JSON lines, filtered by `level` (a `tracing` filter;
/// `RUST_LOG` overrides it).
pub fn init_logging(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
