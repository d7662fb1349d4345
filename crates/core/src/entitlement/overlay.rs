//! QPS overlay packs (QPS 叠加包): their activation windows and the per-class daily caps.
//!
//! This module is shared by the gateway (which validates entitlement files on load) and the
//! settlement side (which validates a purchase before quoting it), so both refuse exactly the
//! same packs with the same first offending day.

use chrono::{DateTime, Days, FixedOffset, NaiveDate};

use crate::clock::beijing_midnight_unix_nanos;

/// The overlay class of an interface, which sets its daily cap (OCR seed, QPS 叠加包).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
pub enum OverlayClass {
    A,
    B,
    C,
}

impl OverlayClass {
    /// Purchased overlay QPS one UIN may hold for one interface on one day.
    pub fn daily_cap(self) -> u32 {
        match self {
            OverlayClass::A => 100,
            OverlayClass::B => 50,
            OverlayClass::C => 25,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OverlayClass::A => "A",
            OverlayClass::B => "B",
            OverlayClass::C => "C",
        }
    }
}

/// One purchased overlay pack, for one UIN and one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayPack {
    pub qps: u32,
    /// First Beijing-time day covered.
    pub start: NaiveDate,
    /// Last Beijing-time day covered (inclusive).
    pub end: NaiveDate,
    pub purchased_at: DateTime<FixedOffset>,
}

impl OverlayPack {
    pub fn covers(&self, day: NaiveDate) -> bool {
        self.start <= day && day <= self.end
    }

    /// Unix nanoseconds `[from, until)` during which the pack adds its QPS.
    ///
    /// A pack is active from 00:00 of its start date (Beijing time) until 24:00 of its end date.
    /// The seed says a pack bought on its own start date takes effect "within 15 minutes of
    /// purchase"; the gateway applies it from the purchase instant, which meets that promise as
    /// soon as the entitlement reaches the gateway.
    pub fn active_window(&self) -> (i64, i64) {
        let day_start = beijing_midnight_unix_nanos(self.start);
        let purchased = self.purchased_at.timestamp_nanos_opt().unwrap_or(i64::MIN);
        let from = day_start.max(purchased);
        let until = beijing_midnight_unix_nanos(self.end + Days::new(1));
        (from, until)
    }

    pub fn days(&self) -> u64 {
        (self.end - self.start).num_days() as u64 + 1
    }
}

/// A purchase that would take a day over its class cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "class {class} cap of {cap} QPS per day is exceeded on {day}: {held} QPS already held + {requested} requested"
)]
pub struct CapExceeded {
    pub class: &'static str,
    pub cap: u32,
    /// The first day of the new pack's range on which the cap breaks.
    pub day: NaiveDate,
    pub held: u32,
    pub requested: u32,
}

/// A pack that makes no sense on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPack {
    #[error("qps must be at least 1")]
    ZeroQps,
    #[error("end date {end} is before start date {start}")]
    EndBeforeStart { start: NaiveDate, end: NaiveDate },
    #[error("start date {start} is before the purchase date {purchased}")]
    StartBeforePurchase {
        start: NaiveDate,
        purchased: NaiveDate,
    },
}

impl InvalidPack {
    /// The field of the pack that is wrong (what a config error or an API answer names).
    pub fn field(&self) -> &'static str {
        match self {
            InvalidPack::ZeroQps => "qps",
            InvalidPack::EndBeforeStart { .. } => "end",
            InvalidPack::StartBeforePurchase { .. } => "start",
        }
    }
}

/// Checks a pack on its own: positive QPS, a non-empty range, not starting before it was bought.
pub fn check_pack(pack: &OverlayPack) -> Result<(), InvalidPack> {
    if pack.qps == 0 {
        return Err(InvalidPack::ZeroQps);
    }
    if pack.end < pack.start {
        return Err(InvalidPack::EndBeforeStart {
            start: pack.start,
            end: pack.end,
        });
    }
    let purchased = pack.purchased_at.date_naive();
    if pack.start < purchased {
        return Err(InvalidPack::StartBeforePurchase {
            start: pack.start,
            purchased,
        });
    }
    Ok(())
}

/// Checks that buying `new` on top of `held` (the same UIN's packs for the same interface)
/// keeps the summed overlay QPS within the class cap on every day of `new`'s range. The error
/// names the first day that breaks it.
pub fn check_daily_cap<'a>(
    class: OverlayClass,
    held: impl IntoIterator<Item = &'a OverlayPack> + Clone,
    new: &OverlayPack,
) -> Result<(), CapExceeded> {
    let cap = class.daily_cap();
    let mut day = new.start;
    while day <= new.end {
        let held_qps: u32 = held
            .clone()
            .into_iter()
            .filter(|p| p.covers(day))
            .map(|p| p.qps)
            .sum();
        if held_qps.saturating_add(new.qps) > cap {
            return Err(CapExceeded {
                class: class.as_str(),
                cap,
                day,
                held: held_qps,
                requested: new.qps,
            });
        }
        day = day + Days::new(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(qps: u32, start: &str, end: &str) -> OverlayPack {
        OverlayPack {
            qps,
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
            purchased_at: DateTime::parse_from_rfc3339("2026-02-01T10:00:00+08:00").unwrap(),
        }
    }

    /// The OCR seed's example: IDCardOCR (class A) holds 50 QPS for Mar 1–4; a second pack for
    /// Mar 2–7 may add at most 50, because Mar 2–4 already hold 50 of the 100.
    #[test]
    fn the_seed_cap_example_is_accepted_and_refused_exactly_at_the_boundary() {
        let first = pack(50, "2026-03-01", "2026-03-04");
        assert_eq!(check_daily_cap(OverlayClass::A, [], &first), Ok(()));
        let held = [first];
        assert_eq!(
            check_daily_cap(
                OverlayClass::A,
                &held,
                &pack(50, "2026-03-02", "2026-03-07")
            ),
            Ok(())
        );
        let err = check_daily_cap(
            OverlayClass::A,
            &held,
            &pack(51, "2026-03-02", "2026-03-07"),
        )
        .unwrap_err();
        assert_eq!(err.day.to_string(), "2026-03-02");
        assert_eq!((err.held, err.requested, err.cap), (50, 51, 100));
        // After the first pack ends, the whole cap is free again.
        assert_eq!(
            check_daily_cap(
                OverlayClass::A,
                &held,
                &pack(100, "2026-03-05", "2026-03-07")
            ),
            Ok(())
        );
        // The first offending day is named even when it is not the first day of the range.
        let err = check_daily_cap(
            OverlayClass::A,
            &held,
            &pack(60, "2026-02-27", "2026-03-02"),
        )
        .unwrap_err();
        assert_eq!(err.day.to_string(), "2026-03-01");
    }

    #[test]
    fn each_class_has_its_cap() {
        for (class, cap) in [
            (OverlayClass::A, 100),
            (OverlayClass::B, 50),
            (OverlayClass::C, 25),
        ] {
            let at_cap = pack(cap, "2026-03-01", "2026-03-01");
            assert_eq!(check_daily_cap(class, [], &at_cap), Ok(()));
            let over = pack(cap + 1, "2026-03-01", "2026-03-01");
            assert!(check_daily_cap(class, [], &over).is_err());
        }
    }

    #[test]
    fn the_window_runs_from_midnight_or_purchase_to_midnight_after_the_end() {
        let mut p = pack(80, "2026-03-01", "2026-03-04");
        let (from, until) = p.active_window();
        let fmt = |n: i64| {
            DateTime::from_timestamp_nanos(n)
                .with_timezone(&crate::clock::beijing())
                .to_rfc3339()
        };
        assert_eq!(fmt(from), "2026-03-01T00:00:00+08:00");
        assert_eq!(fmt(until), "2026-03-05T00:00:00+08:00");
        p.purchased_at = DateTime::parse_from_rfc3339("2026-03-01T10:30:00+08:00").unwrap();
        assert_eq!(fmt(p.active_window().0), "2026-03-01T10:30:00+08:00");
        assert_eq!(p.days(), 4);
    }

    #[test]
    fn nonsense_packs_are_refused() {
        assert_eq!(
            check_pack(&pack(0, "2026-03-01", "2026-03-01")),
            Err(InvalidPack::ZeroQps)
        );
        assert!(matches!(
            check_pack(&pack(1, "2026-03-02", "2026-03-01")),
            Err(InvalidPack::EndBeforeStart { .. })
        ));
        assert!(matches!(
            check_pack(&pack(1, "2026-01-02", "2026-03-01")),
            Err(InvalidPack::StartBeforePurchase { .. })
        ));
    }
}
