//! The domain the gateway and settlement share: the catalog of services, interface groups,
//! interfaces and billing items ([`catalog`]); what each account may do ([`entitlement`],
//! with the overlay-pack rules); the API 3.0 signature ([`tc3`]) and the credentials it is
//! checked with ([`credentials`]); Beijing-time calendars ([`clock`]); and the loaders of
//! the files that say all this ([`config`]).
//!
//! Nothing here does I/O on a request path, talks to a network, or knows a database.

#![deny(unsafe_code)]

pub mod catalog;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod entitlement;
pub mod tc3;
