//! A lock-free GCRA (generic cell rate algorithm) bucket in one `AtomicU64`.
//!
//! The state is the bucket's *theoretical arrival time* (TAT) in monotonic nanoseconds. The rate
//! is an argument of every check, not part of the state, so a quota that changes (an overlay
//! pack starting at midnight, a config reload) takes effect on the next call without resetting
//! anything, and admit-or-refuse is one compare-and-swap that only moves the TAT forward when
//! the call is admitted: a refused call consumes nothing (envoyproxy/ratelimit #185).
//!
//! We do not use `governor` here because its `Quota` is fixed per limiter (governor #193): a
//! per-call rate would mean swapping limiters and losing their state. The algorithm is the same
//! one governor implements; `tests::matches_a_leaky_bucket_model` proves ours against a naive
//! credit-counting model.

use std::sync::atomic::{AtomicU64, Ordering};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A rate limit: `per_second` calls per second, with up to `burst` calls back to back from a
/// rested bucket. `per_second == 0` refuses everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    /// A rate whose burst is the calls of `burst_seconds` (at least one call).
    pub fn with_burst_window(per_second: u32, burst_millis: u32) -> Rate {
        let burst = (u64::from(per_second) * u64::from(burst_millis)).div_ceil(1000);
        Rate {
            per_second,
            burst: burst.clamp(1, u64::from(u32::MAX)) as u32,
        }
    }

    /// Nanoseconds between two calls at the sustained rate, rounded up so the bucket never
    /// admits faster than `per_second`.
    pub fn emission_interval_nanos(self) -> u64 {
        NANOS_PER_SECOND.div_ceil(u64::from(self.per_second.max(1)))
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; `remaining` more calls would be admitted right now.
    Admitted { remaining: u32 },
    /// Refused; a call at `now + retry_after_nanos` would be admitted (if nothing else came).
    Limited { retry_after_nanos: u64 },
}

/// Checks one call against a bucket at monotonic time `now`, admitting it if the bucket allows.
pub fn check(tat: &AtomicU64, now: u64, rate: Rate) -> Verdict {
    if rate.per_second == 0 {
        return Verdict::Limited {
            retry_after_nanos: NANOS_PER_SECOND,
        };
    }
    let interval = rate.emission_interval_nanos();
    check_interval(tat, now, interval, rate.burst)
}

/// [`check`] at an emission interval of `interval` nanoseconds (one call per interval) with
/// up to `burst` calls back to back: a rate that need not be a whole number of calls per
/// second (a fleet member's share of a limit, say).
pub fn check_interval(tat: &AtomicU64, now: u64, interval: u64, burst: u32) -> Verdict {
    let interval = interval.max(1);
    // Delay-variation tolerance: how far ahead of `now` the TAT may be and still admit.
    let tolerance = interval.saturating_mul(u64::from(burst.max(1) - 1));
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let base = current.max(now);
        let ahead = base - now;
        if ahead > tolerance {
            return Verdict::Limited {
                retry_after_nanos: ahead - tolerance,
            };
        }
        let next = base + interval;
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                let headroom = (now + tolerance).saturating_sub(next - interval);
                let remaining = (headroom / interval).min(u64::from(u32::MAX)) as u32;
                return Verdict::Admitted { remaining };
            }
            Err(observed) => current = observed,
        }
    }
}

/// True when a bucket whose TAT is `tat` is full at `now`, i.e. indistinguishable from a fresh
/// one: it may be dropped from memory without changing any future decision.
pub fn is_rested(tat: u64, now: u64) -> bool {
    tat <= now
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The naive model: a leaky bucket counting credit in nanoseconds. Credit refills one
    /// nanosecond per nanosecond up to `burst * interval`; a call costs `interval`.
    struct CreditModel {
        credit: u128,
        capacity: u128,
        interval: u128,
        last: u64,
    }

    impl CreditModel {
        fn new(rate: Rate, start: u64) -> Self {
            let interval = u128::from(rate.emission_interval_nanos());
            let capacity = interval * u128::from(rate.burst.max(1));
            CreditModel {
                credit: capacity,
                capacity,
                interval,
                last: start,
            }
        }

        fn call(&mut self, now: u64) -> bool {
            self.credit = (self.credit + u128::from(now - self.last)).min(self.capacity);
            self.last = now;
            if self.credit >= self.interval {
                self.credit -= self.interval;
                true
            } else {
                false
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// GCRA and the credit model agree on every call of any schedule.
        #[test]
        fn matches_a_leaky_bucket_model(
            per_second in 1u32..2000,
            burst in 1u32..50,
            gaps in prop::collection::vec(0u64..200_000_000, 1..400),
        ) {
            let rate = Rate { per_second, burst };
            let tat = AtomicU64::new(0);
            let mut now = 5 * NANOS_PER_SECOND;
            let mut model = CreditModel::new(rate, now);
            for gap in gaps {
                now += gap;
                let admitted = matches!(check(&tat, now, rate), Verdict::Admitted { .. });
                prop_assert_eq!(admitted, model.call(now), "at t={}", now);
            }
        }

        /// Whatever the rates a live config switches between (here, per call: the worst case),
        /// no window admits more than GCRA guarantees. Every admitted call k moves the TAT by its
        /// interval T_k, and admission keeps TAT − t ≤ b_k·T_k, so n calls in a window satisfy
        /// n·T_min ≤ Σ T_k ≤ window + max_k(b_k·T_k). At a constant rate this is the familiar
        /// "burst + rate × window"; after a rate decrease, the higher rate's burst may still be
        /// honoured once (documented in ARCHITECTURE.md).
        #[test]
        fn never_exceeds_the_gcra_bound_under_changing_rates(
            rates in prop::collection::vec((1u32..100, 1u32..20), 1..5),
            gaps in prop::collection::vec(0u64..50_000_000, 1..300),
        ) {
            let tat = AtomicU64::new(0);
            let mut now = NANOS_PER_SECOND;
            let mut admitted_at = Vec::new();
            for (i, gap) in gaps.iter().enumerate() {
                now += gap;
                let (per_second, burst) = rates[i % rates.len()];
                if let Verdict::Admitted { .. } = check(&tat, now, Rate { per_second, burst }) {
                    admitted_at.push(now);
                }
            }
            let intervals: Vec<u128> = rates
                .iter()
                .map(|(r, _)| u128::from(Rate { per_second: *r, burst: 1 }.emission_interval_nanos()))
                .collect();
            let t_min = *intervals.iter().min().unwrap();
            let max_burst_span = rates
                .iter()
                .zip(&intervals)
                .map(|((_, b), t)| u128::from(*b) * t)
                .max()
                .unwrap();
            for (i, start) in admitted_at.iter().enumerate() {
                for (j, end) in admitted_at.iter().enumerate().skip(i) {
                    let calls = (j - i + 1) as u128;
                    let window = u128::from(end - start);
                    prop_assert!(calls * t_min <= window + max_burst_span, "{} calls in {} ns", calls, window);
                }
            }
        }

        /// At a constant rate the bound is exactly burst + rate × window.
        #[test]
        fn never_exceeds_burst_plus_rate_at_a_constant_rate(
            per_second in 1u32..200,
            burst in 1u32..30,
            gaps in prop::collection::vec(0u64..30_000_000, 1..300),
        ) {
            let rate = Rate { per_second, burst };
            let tat = AtomicU64::new(0);
            let mut now = NANOS_PER_SECOND;
            let mut admitted_at = Vec::new();
            for gap in gaps {
                now += gap;
                if let Verdict::Admitted { .. } = check(&tat, now, rate) {
                    admitted_at.push(now);
                }
            }
            let t = u128::from(rate.emission_interval_nanos());
            for (i, start) in admitted_at.iter().enumerate() {
                for (j, end) in admitted_at.iter().enumerate().skip(i) {
                    let calls = (j - i + 1) as u128;
                    let window = u128::from(end - start);
                    prop_assert!(calls <= u128::from(burst) + window / t, "{} calls in {} ns", calls, window);
                }
            }
        }
    }

    #[test]
    fn a_refused_call_consumes_nothing() {
        let rate = Rate {
            per_second: 10,
            burst: 1,
        };
        let tat = AtomicU64::new(0);
        let t0 = NANOS_PER_SECOND;
        assert!(matches!(check(&tat, t0, rate), Verdict::Admitted { .. }));
        let before = tat.load(Ordering::SeqCst);
        for k in 1..50 {
            assert!(matches!(check(&tat, t0 + k, rate), Verdict::Limited { .. }));
        }
        assert_eq!(tat.load(Ordering::SeqCst), before);
        // Exactly one interval later the next call is admitted, as if nothing had been refused.
        assert!(matches!(
            check(&tat, t0 + 100_000_000, rate),
            Verdict::Admitted { .. }
        ));
    }

    #[test]
    fn reports_remaining_and_retry_after() {
        let rate = Rate {
            per_second: 20,
            burst: 20,
        };
        let tat = AtomicU64::new(0);
        let now = NANOS_PER_SECOND;
        assert_eq!(check(&tat, now, rate), Verdict::Admitted { remaining: 19 });
        for left in (0..19).rev() {
            assert_eq!(
                check(&tat, now, rate),
                Verdict::Admitted { remaining: left }
            );
        }
        assert_eq!(
            check(&tat, now, rate),
            Verdict::Limited {
                retry_after_nanos: 50_000_000
            }
        );
    }

    #[test]
    fn a_rate_of_zero_refuses_and_burst_window_rounds_up() {
        let tat = AtomicU64::new(0);
        assert!(matches!(
            check(
                &tat,
                1,
                Rate {
                    per_second: 0,
                    burst: 5
                }
            ),
            Verdict::Limited { .. }
        ));
        assert_eq!(Rate::with_burst_window(20, 1000).burst, 20);
        assert_eq!(Rate::with_burst_window(3, 500).burst, 2);
        assert_eq!(Rate::with_burst_window(1, 10).burst, 1);
    }
}
