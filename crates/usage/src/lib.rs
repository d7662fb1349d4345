//! The usage contract between the gateway and settlement: what one billable call counts
//! ([`UsageRecord`]), how a record is encoded in a spool ([`record`]), the sealed batches of
//! counts that travel ([`batch`]), where they travel (the JetStream stream and its subjects,
//! the running totals for reconciliation: [`stream`]), and the local ledger directory's layout
//! ([`ledger_dir`]). Both sides depend on this crate and on nothing of each other.

#![deny(unsafe_code)]

pub mod batch;
pub mod jsonl;
pub mod ledger_dir;
pub mod record;
pub mod stream;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One billable call's count against one billing item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The gateway's request id (also in the `X-Tollgate-Request-Id` header upstream).
    pub request_id: String,
    /// The main account billed.
    pub owner_uin: u64,
    /// The account (main or sub) that made the call.
    pub uin: u64,
    pub service: Arc<str>,
    pub action: Arc<str>,
    pub billing_item: Arc<str>,
    pub units: u32,
    /// When the call was admitted, Unix milliseconds (UTC; months and days are Beijing time
    /// downstream).
    pub time_unix_ms: i64,
    /// Image search: the `GroupId` of the library a call went into when the gateway could not
    /// tell its type; the call is billed against `billing_item` (the same/product item) and
    /// settlement re-rates it once the library's type is known. `None` for every other call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unresolved_library: Option<Arc<str>>,
}
