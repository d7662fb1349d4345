//! Time, injected: a monotonic clock for rate limiting and a wall clock for calendar rules.
//!
//! Admission needs two kinds of time. GCRA buckets measure intervals, so they use a monotonic
//! nanosecond counter that never jumps when NTP steps the wall clock. Overlay packs and quota
//! days are calendar facts in Beijing time, so they use Unix time. Tests drive both through
//! [`FakeClock`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};

/// Beijing time (UTC+8). China has observed no daylight saving time since 1991, so a fixed
/// offset is exact for every date a quota or bill can name.
pub fn beijing() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).expect("UTC+8 is a valid offset")
}

/// Unix nanoseconds of 00:00 Beijing time on `date`.
pub fn beijing_midnight_unix_nanos(date: NaiveDate) -> i64 {
    let midnight = date.and_hms_opt(0, 0, 0).expect("00:00:00 exists");
    beijing()
        .from_local_datetime(&midnight)
        .single()
        .expect("a fixed offset has no gaps")
        .timestamp_nanos_opt()
        .expect("dates between 1677 and 2262 fit in i64 nanoseconds")
}

/// The Beijing calendar date of a Unix-nanosecond instant.
pub fn beijing_date(unix_nanos: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_nanos(unix_nanos)
        .with_timezone(&beijing())
        .date_naive()
}

/// A source of time. `Send + Sync` so one clock serves every worker thread.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since an arbitrary fixed origin; never goes backwards.
    fn monotonic_nanos(&self) -> u64;
    /// Nanoseconds since the Unix epoch (wall clock).
    fn unix_nanos(&self) -> i64;
}

/// The real clocks of the machine.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }

    pub fn shared() -> Arc<dyn Clock> {
        Arc::new(SystemClock::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn monotonic_nanos(&self) -> u64 {
        // An `Instant` difference fits in u64 nanoseconds for 584 years of uptime.
        self.origin.elapsed().as_nanos() as u64
    }

    fn unix_nanos(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when a test says so. Both readings advance together.
#[derive(Debug)]
pub struct FakeClock {
    monotonic: AtomicU64,
    unix: AtomicI64,
}

impl FakeClock {
    /// Starts at `unix_nanos` wall time, monotonic origin 1 s (so "zero" is never special).
    pub fn new(unix_nanos: i64) -> Arc<Self> {
        Arc::new(FakeClock {
            monotonic: AtomicU64::new(1_000_000_000),
            unix: AtomicI64::new(unix_nanos),
        })
    }

    /// A fake clock set to `rfc3339` (e.g. "2026-03-01T09:00:00+08:00").
    pub fn at(rfc3339: &str) -> Arc<Self> {
        let t = DateTime::parse_from_rfc3339(rfc3339).expect("test clock time is RFC 3339");
        Self::new(t.timestamp_nanos_opt().expect("in range"))
    }

    pub fn advance_nanos(&self, nanos: u64) {
        self.monotonic.fetch_add(nanos, Ordering::SeqCst);
        self.unix.fetch_add(nanos as i64, Ordering::SeqCst);
    }

    pub fn advance(&self, d: std::time::Duration) {
        self.advance_nanos(d.as_nanos() as u64);
    }

    /// Advances the monotonic clock only: quotas refill, the wall clock (signature
    /// timestamps, days) stays. For benchmarks that replay one signed call millions of times.
    pub fn advance_monotonic(&self, d: std::time::Duration) {
        self.monotonic
            .fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }

    /// Moves the wall clock to `rfc3339`, advancing the monotonic clock by the same amount.
    /// Panics if that would move time backwards.
    pub fn set_wall(&self, rfc3339: &str) {
        let target = DateTime::parse_from_rfc3339(rfc3339)
            .expect("RFC 3339")
            .timestamp_nanos_opt()
            .expect("in range");
        let now = self.unix.load(Ordering::SeqCst);
        assert!(target >= now, "a fake clock does not go backwards");
        self.advance_nanos((target - now) as u64);
    }
}

impl Clock for FakeClock {
    fn monotonic_nanos(&self) -> u64 {
        self.monotonic.load(Ordering::SeqCst)
    }

    fn unix_nanos(&self) -> i64 {
        self.unix.load(Ordering::SeqCst)
    }
}

impl Clock for Arc<FakeClock> {
    fn monotonic_nanos(&self) -> u64 {
        (**self).monotonic_nanos()
    }

    fn unix_nanos(&self) -> i64 {
        (**self).unix_nanos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beijing_midnight_is_sixteen_hundred_utc_the_day_before() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let n = beijing_midnight_unix_nanos(d);
        let utc = DateTime::<Utc>::from_timestamp_nanos(n);
        assert_eq!(utc.to_rfc3339(), "2026-02-28T16:00:00+00:00");
        assert_eq!(beijing_date(n), d);
        assert_eq!(beijing_date(n - 1), d.pred_opt().unwrap());
    }

    #[test]
    fn fake_clock_moves_both_readings() {
        let c = FakeClock::at("2026-03-01T23:59:59+08:00");
        let m0 = c.monotonic_nanos();
        c.advance(std::time::Duration::from_secs(2));
        assert_eq!(c.monotonic_nanos() - m0, 2_000_000_000);
        assert_eq!(beijing_date(c.unix_nanos()).to_string(), "2026-03-02");
    }
}
