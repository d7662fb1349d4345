//! The live progress line: once a second on stderr, so stdout keeps only the report.
//!
//! `[  3s/10s] sent 600 (200/s)  admitted 60  limited 540  errors 0  in flight 2`

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::stats::LiveSnapshot;

/// A running progress printer.
pub struct Progress {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Progress {
    /// Prints the last line and stops.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts printing a line per second from `snapshot()`.
pub fn spawn(
    start: Instant,
    duration: Duration,
    snapshot: impl Fn() -> LiveSnapshot + Send + 'static,
) -> Progress {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::from_std(start + Duration::from_secs(1)),
            Duration::from_secs(1),
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = (start, LiveSnapshot::default());
        loop {
            let done = tokio::select! {
                _ = ticker.tick() => false,
                _ = &mut stopped => true,
            };
            let now = Instant::now();
            let snap = snapshot();
            eprintln!(
                "{}",
                line(now - start, duration, &snap, &last.1, now - last.0)
            );
            last = (now, snap);
            if done {
                return;
            }
        }
    });
    Progress { stop, task }
}

/// One progress line. `rate` is the calls sent since the previous line, per second.
pub fn line(
    elapsed: Duration,
    duration: Duration,
    now: &LiveSnapshot,
    before: &LiveSnapshot,
    since: Duration,
) -> String {
    let secs = since.as_secs_f64().max(1e-3);
    let rate = (now.sent - before.sent.min(now.sent)) as f64 / secs;
    let mut s = format!(
        "[{:>4.0}s/{:.0}s] sent {} ({:.0}/s)  admitted {}  limited {}  errors {}  in flight {}",
        elapsed.as_secs_f64(),
        duration.as_secs_f64(),
        now.sent,
        rate,
        now.admitted,
        now.rejected,
        now.errors,
        now.outstanding,
    );
    if now.skipped > 0 {
        s.push_str(&format!("  skipped {} (backlog full)", now.skipped));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_line_with_the_current_rate() {
        let before = LiveSnapshot {
            sent: 100,
            ..Default::default()
        };
        let now = LiveSnapshot {
            sent: 300,
            admitted: 40,
            rejected: 255,
            errors: 1,
            skipped: 0,
            outstanding: 4,
        };
        let l = line(
            Duration::from_secs(2),
            Duration::from_secs(10),
            &now,
            &before,
            Duration::from_secs(1),
        );
        assert_eq!(
            l,
            "[   2s/10s] sent 300 (200/s)  admitted 40  limited 255  errors 1  in flight 4"
        );
        let skipping = LiveSnapshot { skipped: 7, ..now };
        assert!(
            line(
                Duration::ZERO,
                Duration::from_secs(1),
                &skipping,
                &before,
                Duration::from_secs(1)
            )
            .ends_with("skipped 7 (backlog full)")
        );
    }
}
