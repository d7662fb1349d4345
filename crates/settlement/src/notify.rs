//! Pack notices (资源包余量提醒), as the seeds give them: when a service has only one usable
//! pack left, its owner is told when that pack's balance falls below a threshold (20%; portrait
//! segmentation, `bda`: 15%) and when it reaches 0; notices go out on the hour, between 10:00
//! and 22:00 Beijing time; a pack that falls past both thresholds before its notice goes out
//! gets one merged "used up" notice.
//!
//! Crossings are detected by live settlement ([`crate::live`]) at the instant a batch is
//! applied (the ledger's hours are too coarse to say when within an hour a pack crossed), and
//! kept in `pack_notices` with the hour they are due; [`due`] hands out those whose hour has
//! come (the consumer publishes them on NATS, `tollgate.notices.<owner>`, and to a webhook).

use chrono::{DateTime, Duration, Timelike, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use crate::rating::PackBalance;
use tollgate_core::catalog::Catalog;
use tollgate_core::clock::beijing;

/// How full a pack is, as far as notices go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Normal = 0,
    Low = 1,
    Empty = 2,
}

impl Level {
    fn of(i: i32) -> Level {
        match i {
            2 => Level::Empty,
            1 => Level::Low,
            _ => Level::Normal,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Level::Empty => "exhausted",
            _ => "low_balance",
        }
    }
}

/// The low-balance threshold of a service, in percent of a pack's size.
pub fn threshold_percent(service: &str) -> u64 {
    if service == "bda" { 15 } else { 20 }
}

/// Where `remaining` of `size` stands against `percent`.
pub fn level(remaining: u64, size: u64, percent: u64) -> Level {
    if remaining == 0 {
        Level::Empty
    } else if remaining.saturating_mul(100) < size.saturating_mul(percent) {
        Level::Low
    } else {
        Level::Normal
    }
}

/// The first whole hour at or after `t` between 10:00 and 22:00 Beijing time.
pub fn slot(t: DateTime<Utc>) -> DateTime<Utc> {
    let local = t.with_timezone(&beijing());
    let on_hour = local
        .with_minute(0)
        .and_then(|l| l.with_second(0))
        .and_then(|l| l.with_nanosecond(0))
        .expect("valid");
    let mut h = if on_hour == local {
        on_hour
    } else {
        on_hour + Duration::hours(1)
    };
    if h.hour() < 10 {
        h = h.with_hour(10).expect("valid");
    } else if h.hour() > 22 {
        h = (h + Duration::days(1)).with_hour(10).expect("valid");
    }
    h.with_timezone(&Utc)
}

/// One notice to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub owner_uin: u64,
    pub service: String,
    pub pack: String,
    /// `low_balance` or `exhausted` (a merged notice is `exhausted`).
    pub kind: String,
    pub remaining: u64,
    pub size: u64,
    pub threshold_percent: u64,
    pub detected_at: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

/// Records crossings of the owner's packs at `now` (in the batch's transaction): a pack that
/// is the last usable one for its billing items and fell to a lower level gets a pending
/// notice (merged with one not sent yet). Packs at their normal level leave no row.
pub async fn record(
    c: &impl GenericClient,
    catalog: &Catalog,
    owner: u64,
    packs: &[PackBalance],
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let service_of = |p: &PackBalance| {
        p.items
            .first()
            .and_then(|i| catalog.item_by_key(i))
            .map(|i| catalog.service(i.service).name.to_string())
    };
    for p in packs {
        let Some(service) = service_of(p) else {
            continue;
        };
        let percent = threshold_percent(&service);
        let now_level = level(p.remaining, p.size, percent);
        let held = c
            .query_opt(
                "SELECT level, pending_kind FROM pack_notices WHERE owner_uin = $1 AND pack = $2",
                &[&(owner as i64), &p.pack],
            )
            .await?;
        let before = held
            .as_ref()
            .map_or(Level::Normal, |r| Level::of(r.get::<_, i32>(0)));
        if now_level <= before {
            // Refilled (a pack's level only falls; a new month's free pack has its own id).
            if held.is_some() && now_level < before {
                c.execute(
                    "UPDATE pack_notices SET level = $3 WHERE owner_uin = $1 AND pack = $2",
                    &[&(owner as i64), &p.pack, &(now_level as i32)],
                )
                .await?;
            }
            continue;
        }
        // Only when this is the last usable pack for what it covers (OCR's packs are per
        // interface: "the service" is the billing item).
        let others = packs
            .iter()
            .filter(|o| o.pack != p.pack && o.remaining > 0)
            .filter(|o| o.items.iter().any(|i| p.items.contains(i)))
            .count();
        let notify = others == 0;
        let pending: Option<String> = held.as_ref().and_then(|r| r.get(1));
        // Low while other packs still cover its items, nothing pending: the level is not
        // recorded, so the crossing is noticed once the pack becomes the last one. (An empty
        // pack is recorded: it can never become the last usable one.)
        if !notify && pending.is_none() && now_level == Level::Low {
            continue;
        }
        let kind = if notify || pending.is_some() {
            // A pending notice merges into the newer, lower level.
            Some(now_level.max(if pending.as_deref() == Some("exhausted") {
                Level::Empty
            } else {
                Level::Low
            }))
        } else {
            None
        };
        c.execute(
            "INSERT INTO pack_notices (owner_uin, pack, service, level, pending_kind, remaining, size, threshold_percent, detected_at, due_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (owner_uin, pack) DO UPDATE SET level = EXCLUDED.level,
                pending_kind = coalesce(EXCLUDED.pending_kind, pack_notices.pending_kind),
                remaining = EXCLUDED.remaining, size = EXCLUDED.size,
                threshold_percent = EXCLUDED.threshold_percent,
                detected_at = coalesce(pack_notices.detected_at, EXCLUDED.detected_at),
                due_at = coalesce(pack_notices.due_at, EXCLUDED.due_at)",
            &[
                &(owner as i64),
                &p.pack,
                &service,
                &(now_level as i32),
                &kind.map(Level::kind),
                &(p.remaining as i64),
                &(p.size as i64),
                &(percent as i64),
                &now,
                &kind.map(|_| slot(now)),
            ],
        )
        .await?;
    }
    Ok(())
}

/// The notices due at `now`, marked sent (the caller publishes them; a publish that fails is
/// logged: notices are advice, not money).
pub async fn due(
    client: &mut tokio_postgres::Client,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Notice>> {
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            "UPDATE pack_notices n SET pending_kind = NULL, due_at = NULL, detected_at = NULL, sent_at = $1
             FROM (SELECT owner_uin, pack, pending_kind, detected_at, due_at FROM pack_notices
                   WHERE pending_kind IS NOT NULL AND due_at <= $1 FOR UPDATE) old
             WHERE n.owner_uin = old.owner_uin AND n.pack = old.pack
             RETURNING n.owner_uin, n.service, n.pack, old.pending_kind, n.remaining, n.size,
                       n.threshold_percent, old.detected_at, old.due_at",
            &[&now],
        )
        .await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| Notice {
            owner_uin: r.get::<_, i64>(0) as u64,
            service: r.get(1),
            pack: r.get(2),
            kind: r.get(3),
            remaining: r.get::<_, i64>(4) as u64,
            size: r.get::<_, i64>(5) as u64,
            threshold_percent: r.get::<_, i64>(6) as u64,
            detected_at: r.get(7),
            due_at: r.get(8),
        })
        .collect())
}

/// Sends `notices`: each on NATS (`tollgate.notices.<owner>`) when `nats` is given, to the
/// webhook when one is set, and to the log.
pub async fn publish(notices: &[Notice], nats: Option<&async_nats::Client>, webhook: Option<&str>) {
    for n in notices {
        let body = serde_json::to_vec(n).expect("notices serialize");
        tracing::info!(
            owner = n.owner_uin, service = %n.service, pack = %n.pack, kind = %n.kind,
            remaining = n.remaining, "pack notice"
        );
        if let Some(c) = nats
            && let Err(e) = c
                .publish(
                    format!("tollgate.notices.{}", n.owner_uin),
                    body.clone().into(),
                )
                .await
        {
            tracing::warn!(error = %e, "pack notice not published on NATS");
        }
        if let Some(url) = webhook
            && let Err(e) = post(url, body).await
        {
            tracing::warn!(error = %format!("{e:#}"), %url, "pack notice not delivered to the webhook");
        }
    }
}

async fn post(url: &str, body: Vec<u8>) -> anyhow::Result<()> {
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(body)))?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))??;
    anyhow::ensure!(resp.status().is_success(), "answered {}", resp.status());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn notices_go_out_on_the_hour_between_ten_and_twenty_two() {
        assert_eq!(
            slot(t("2026-12-02T09:40:00+08:00")),
            t("2026-12-02T10:00:00+08:00")
        );
        assert_eq!(
            slot(t("2026-12-02T14:10:00+08:00")),
            t("2026-12-02T15:00:00+08:00")
        );
        assert_eq!(
            slot(t("2026-12-02T15:00:00+08:00")),
            t("2026-12-02T15:00:00+08:00")
        );
        assert_eq!(
            slot(t("2026-12-02T21:59:00+08:00")),
            t("2026-12-02T22:00:00+08:00")
        );
        assert_eq!(
            slot(t("2026-12-02T22:00:01+08:00")),
            t("2026-12-03T10:00:00+08:00")
        );
        assert_eq!(
            slot(t("2026-12-02T03:00:00+08:00")),
            t("2026-12-02T10:00:00+08:00")
        );
    }

    #[test]
    fn levels_follow_each_product_threshold() {
        assert_eq!(level(200, 1000, 20), Level::Normal);
        assert_eq!(level(199, 1000, 20), Level::Low);
        assert_eq!(level(150, 1000, threshold_percent("bda")), Level::Normal);
        assert_eq!(level(149, 1000, threshold_percent("bda")), Level::Low);
        assert_eq!(level(0, 1000, 20), Level::Empty);
        assert_eq!(threshold_percent("ocr"), 20);
    }
}
