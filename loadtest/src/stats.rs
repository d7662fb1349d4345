//! Counting answers as they arrive: live counters for the progress line (atomics), and per
//! stream the outcome counts and latency histograms the report is made from.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::outcome::{Class, Outcome};

/// Latencies are recorded in microseconds, from 1 µs to an hour, to 3 significant digits.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// A latency histogram in microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3).expect("static bounds are valid")
}

/// Totals over the whole run, for the progress line.
#[derive(Default)]
pub struct Live {
    pub sent: AtomicU64,
    pub admitted: AtomicU64,
    pub rejected: AtomicU64,
    pub errors: AtomicU64,
    /// Open-loop calls not sent because the backlog was at its bound.
    pub skipped: AtomicU64,
    /// Calls dispatched and not yet answered (including those waiting for a connection).
    pub outstanding: AtomicU64,
}

impl Live {
    pub fn snapshot(&self) -> LiveSnapshot {
        LiveSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            admitted: self.admitted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            outstanding: self.outstanding.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveSnapshot {
    pub sent: u64,
    pub admitted: u64,
    pub rejected: u64,
    pub errors: u64,
    pub skipped: u64,
    pub outstanding: u64,
}

/// What one stream saw.
#[derive(Debug, Clone)]
pub struct StreamStats {
    /// Successful answers.
    pub ok: u64,
    /// Admitted calls the backend answered with an error code, by code.
    pub backend_errors: BTreeMap<String, u64>,
    /// `RequestLimitExceeded`.
    pub rejected: u64,
    /// Everything else, by code (`AuthFailure.…`, `http 502`, `transport: timeout`, …).
    pub errors: BTreeMap<String, u64>,
    /// Open-loop calls not sent at all (the generator's backlog bound).
    pub skipped: u64,
    pub latency_admitted: Histogram<u64>,
    pub latency_rejected: Histogram<u64>,
    pub latency_error: Histogram<u64>,
}

impl Default for StreamStats {
    fn default() -> Self {
        StreamStats {
            ok: 0,
            backend_errors: BTreeMap::new(),
            rejected: 0,
            errors: BTreeMap::new(),
            skipped: 0,
            latency_admitted: new_histogram(),
            latency_rejected: new_histogram(),
            latency_error: new_histogram(),
        }
    }
}

impl StreamStats {
    pub fn admitted(&self) -> u64 {
        self.ok + self.backend_errors.values().sum::<u64>()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Calls that got an answer or failed in transport (skipped calls were never sent).
    pub fn sent(&self) -> u64 {
        self.admitted() + self.rejected + self.error_count()
    }

    /// Transport failures (no answer at all).
    pub fn transport_errors(&self) -> u64 {
        self.errors
            .iter()
            .filter(|(k, _)| k.starts_with("transport:"))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every answer's latency.
    pub fn latency_all(&self) -> Histogram<u64> {
        let mut h = self.latency_admitted.clone();
        // Same bounds on both sides: adding cannot fail.
        let _ = h.add(&self.latency_rejected);
        let _ = h.add(&self.latency_error);
        h
    }

    /// Counts one answer.
    pub fn record(&mut self, outcome: &Outcome, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        match outcome.class() {
            Class::Admitted => {
                match outcome {
                    Outcome::BackendError(code) => bump(&mut self.backend_errors, code),
                    _ => self.ok += 1,
                }
                self.latency_admitted.saturating_record(micros);
            }
            Class::Rejected => {
                self.rejected += 1;
                self.latency_rejected.saturating_record(micros);
            }
            Class::Error => {
                let key = outcome.error_key().unwrap_or_else(|| "unknown".into());
                bump(&mut self.errors, &key);
                self.latency_error.saturating_record(micros);
            }
        }
    }

    /// Adds `other`'s counts and latencies to this one.
    pub fn merge(&mut self, other: &StreamStats) {
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.skipped += other.skipped;
        for (k, v) in &other.backend_errors {
            *self.backend_errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        let _ = self.latency_admitted.add(&other.latency_admitted);
        let _ = self.latency_rejected.add(&other.latency_rejected);
        let _ = self.latency_error.add(&other.latency_error);
    }
}

fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

/// One stream's stats behind a lock (answers arrive on every runtime thread).
#[derive(Default)]
pub struct StreamRecorder {
    inner: Mutex<StreamStats>,
}

impl StreamRecorder {
    pub fn record(&self, outcome: &Outcome, latency: Duration) {
        self.lock().record(outcome, latency);
    }

    pub fn skipped(&self) {
        self.lock().skipped += 1;
    }

    pub fn take(&self) -> StreamStats {
        std::mem::take(&mut *self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StreamStats> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Calls of one (account, group) outstanding at the client, and the most seen at once.
#[derive(Default)]
pub struct InFlight {
    now: AtomicU64,
    peak: AtomicU64,
}

impl InFlight {
    pub fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
    }

    pub fn exit(&self) {
        self.now.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::TransportError;

    #[test]
    fn records_by_class_and_merges() {
        let mut s = StreamStats::default();
        let ms = Duration::from_millis;
        s.record(&Outcome::Success, ms(10));
        s.record(&Outcome::BackendError("FailedOperation.X".into()), ms(12));
        s.record(&Outcome::Limited, ms(1));
        s.record(
            &Outcome::Refused("AuthFailure.SignatureFailure".into()),
            ms(1),
        );
        s.record(&Outcome::Transport(TransportError::Timeout), ms(30_000));
        assert_eq!(
            (s.admitted(), s.rejected, s.error_count(), s.sent()),
            (2, 1, 2, 5)
        );
        assert_eq!(s.transport_errors(), 1);
        assert_eq!(s.latency_admitted.len(), 2);
        assert_eq!(s.latency_all().len(), 5);
        let mut t = StreamStats::default();
        t.merge(&s);
        t.merge(&s);
        assert_eq!(t.sent(), 10);
        assert_eq!(t.backend_errors["FailedOperation.X"], 2);
        assert_eq!(t.errors["transport: timeout"], 2);
    }

    #[test]
    fn in_flight_tracks_the_peak() {
        let f = InFlight::default();
        f.enter();
        f.enter();
        f.exit();
        f.enter();
        f.exit();
        f.exit();
        assert_eq!(f.peak(), 2);
    }
}
