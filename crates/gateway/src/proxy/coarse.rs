//! Coarse clocks: the time of the kernel's last tick, read from the vDSO's data page without
//! the timestamp counter (a few nanoseconds, against some tens for the precise clocks).
//!
//! For the per-call uses where a few milliseconds do not matter and a precise reading would be
//! a share of the call: the answer's `Date` (one-second resolution), a pooled connection's
//! idle age, and how long a connection has waited for its next request head. GCRA buckets,
//! timestamps on usage records and the latency histograms keep the precise clocks
//! ([`tollgate_core::clock`]).
//!
//! The coarse clocks lag the precise ones by at most one tick (1–10 ms, the kernel's `HZ`).

use rustix::time::{ClockId, Timespec, clock_gettime};

/// Nanoseconds since an arbitrary origin (the boot), never going backwards.
pub(crate) fn monotonic_nanos() -> u64 {
    nanos(clock_gettime(ClockId::MonotonicCoarse))
}

/// Whole seconds since the Unix epoch.
pub(crate) fn unix_seconds() -> u64 {
    u64::try_from(clock_gettime(ClockId::RealtimeCoarse).tv_sec).unwrap_or(0)
}

fn nanos(t: Timespec) -> u64 {
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let sub = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(sub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// The most a coarse reading lags the precise clock (10 ms covers `HZ` = 100 and above).
    const TICK: Duration = Duration::from_millis(10);

    #[test]
    fn the_coarse_clocks_follow_the_precise_ones_within_a_tick() {
        let precise = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let coarse = unix_seconds();
        assert!(
            coarse + 1 >= precise && coarse <= precise + 1,
            "{coarse} {precise}"
        );
        let (c0, p0) = (monotonic_nanos(), Instant::now());
        std::thread::sleep(Duration::from_millis(50));
        let (c1, elapsed) = (monotonic_nanos(), p0.elapsed());
        let coarse_elapsed = Duration::from_nanos(c1 - c0);
        assert!(
            coarse_elapsed + TICK >= elapsed && coarse_elapsed <= elapsed + TICK,
            "coarse {coarse_elapsed:?}, precise {elapsed:?}"
        );
    }
}
