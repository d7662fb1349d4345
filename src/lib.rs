//! Tollgate: a QPS admission gateway for cloud AI recognition APIs.
//!
//! See ARCHITECTURE.md for the request path (classify → authenticate → admit → forward →
//! meter), the module map and the invariants.

// `deny`, not `forbid`: one module, `metering::segment` (the spool's mapped active segment),
// allows it, for a measured need its documentation gives. Nothing else may.
#![deny(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod auth;
pub mod billing;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod entitlement;
pub mod http_server;
pub mod metering;
pub mod metrics;
pub mod proxy;
pub mod settlement;
pub mod stub;
