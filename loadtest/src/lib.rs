//! `tollgate-loadtest`: a load generator for the Tollgate gateway.
//!
//! It sends TC3-signed API 3.0 calls for many accounts and actions, open loop at a target rate
//! or closed loop at maximum speed, prints progress every second, and ends with a report of
//! admissions per (account, interface group) against the limit the gateway's configuration
//! sets, latency percentiles and errors. See README.md beside this crate.
//!
//! Flow: [`scenario`] (the file) → [`plan`] (resolved against the gateway's config through the
//! tollgate library) → [`runner`] (sends; [`queue`] feeds its senders, [`request`] signs,
//! [`outcome`] classifies, [`stats`] counts, [`progress`] prints) → [`report`].

pub mod outcome;
pub mod plan;
pub mod progress;
pub mod queue;
pub mod report;
pub mod request;
pub mod runner;
pub mod scenario;
pub mod spawn;
pub mod stats;
