//! The gateway: a reverse proxy in front of the recognition backends that decides, per call,
//! whether it may go through, and meters every billable answer exactly once.
//!
//! The request path (`proxy`): classify → authenticate → gate → admit → forward → meter. See
//! ARCHITECTURE.md for the path, the code map and the invariants.

// `deny`, not `forbid`: one module, `metering::segment` (the spool's mapped active segment),
// allows it, for a measured need its documentation gives. Nothing else may.
#![deny(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod auth;
pub mod billing;
pub mod cli;
pub mod fleet;
pub mod library;
pub mod metering;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod settings;
pub mod spend;
pub mod store_sync;

/// The embedded `tollgate.toml` (`tollgate gateway` without `--config`, `tollgate demo`).
pub const EMBEDDED_SETTINGS: &str = include_str!("../../../config/tollgate.toml");
