//! Where batches travel in production: one JetStream stream holding every gateway's batches
//! (`tollgate.usage.<gateway id>`, `Nats-Msg-Id` = batch id) and running totals
//! (`tollgate.totals.<gateway id>`), with a one-hour duplicate window.

use std::time::Duration;

use async_nats::jetstream;
use serde::{Deserialize, Serialize};

/// The stream's default name (`metering.nats_stream`, `tollgate consumer --nats-stream`).
pub const DEFAULT_STREAM: &str = "TOLLGATE_USAGE";

/// Running totals a gateway publishes so the consumer can reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub gateway_id: String,
    pub reported_at_unix_ms: i64,
    /// The last sealed batch and the units of batches 1..=it.
    pub sealed_batch_seq: u64,
    pub sealed_cumulative_units: u64,
    pub last_sealed_seq: u64,
    /// Calls admitted / refused over the limit, and billable units, since the process started.
    pub admitted_since_start: u64,
    pub rejected_since_start: u64,
    pub billable_units_since_start: u64,
}

/// Creates the usage stream if it does not exist (with `replicas` replicas; an existing stream
/// is used as it is).
pub async fn ensure_stream(
    ctx: &jetstream::Context,
    name: &str,
    replicas: usize,
) -> Result<(), String> {
    ctx.get_or_create_stream(jetstream::stream::Config {
        name: name.to_owned(),
        num_replicas: replicas.max(1),
        subjects: vec!["tollgate.usage.>".into(), "tollgate.totals.>".into()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

pub fn usage_subject(gateway_id: &str) -> String {
    format!("tollgate.usage.{gateway_id}")
}

pub fn totals_subject(gateway_id: &str) -> String {
    format!("tollgate.totals.{gateway_id}")
}
