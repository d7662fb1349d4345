//! The entitlement store: the one home of what each account may do, in PostgreSQL.
//!
//! - [`schema`]: tables, migrations, and why versions are taken from one counter row;
//! - [`image`]: the rows in memory, deltas applied by version, and the documents
//!   `tollgate_core` validates (the same validator as the files');
//! - [`read`]: full, delta and per-owner reads from one consistent snapshot;
//! - [`write`]: one audited, versioned, notified transaction per change;
//! - [`tokens`]: the admin API's bearer tokens, stored hashed;
//! - [`listen`]: a connection that hears each committed version (`LISTEN`/`NOTIFY`);
//! - [`cache`]: the last snapshot on a gateway's disk, for a start while the store is down.
//!
//! The gateway reads (snapshot, deltas, notifications); the admin API writes; settlement
//! reads packs, activations and contract prices.

pub mod cache;
pub mod image;
pub mod listen;
pub mod read;
pub mod schema;
pub mod spend;
pub mod tokens;
pub mod write;

/// The PostgreSQL client the store is read and written with, for the crates that hold its
/// connections (the gateway's sync, the admin API): one version, linked here.
pub use tokio_postgres;

pub use image::Image;
pub use read::{Scope, read};
pub use write::Write;

use std::time::Duration;

/// Connects (within `timeout`), driving the connection on a task of its own; the client
/// reports itself closed when the connection ends.
pub async fn connect(url: &str, timeout: Duration) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio::time::timeout(timeout, tokio_postgres::connect(url, tokio_postgres::NoTls))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "cannot connect to the entitlement store: timed out after {timeout:?}"
                )
            })?
            .map_err(|e| anyhow::anyhow!("cannot connect to the entitlement store: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "entitlement store connection ended");
        }
    });
    Ok(client)
}
