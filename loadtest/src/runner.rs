//! The engine: open-loop schedulers feeding a pool of senders, and closed-loop workers, all
//! sharing one pooled keep-alive HTTP client.
//!
//! **Open loop.** Call `i` of a stream at rate `r` is due at `start + i / r`, whatever happened
//! to the calls before it. The stream's scheduler wakes when calls are due and queues them
//! ([`JobQueue`]); `--connections` senders take them in order, build and sign each request,
//! and send it, one call at a time each (so at most that many calls, and connections, are on
//! the wire). Latency is measured from the *due* time, so time spent waiting for a sender
//! (the target is slower than the offered rate) counts, and a slow target cannot hide its
//! slowness by slowing the generator down: no coordinated omission. A job still queued when
//! its timeout has passed is counted as a timeout without being sent; beyond `max_backlog`
//! queued jobs, due calls are counted as skipped instead of piling up.
//!
//! **Closed loop.** Each of a stream's workers sends a call, waits for the complete answer,
//! and sends the next: the fastest the target sustains at that concurrency. Latency is from
//! send to answer.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::outcome::{self, Class, HttpClient, Outcome, TransportError};
use crate::plan::Plan;
use crate::progress;
use crate::queue::{Job, JobQueue};
use crate::request::{SignCache, Template, unix_seconds};
use crate::scenario::Load;
use crate::stats::{InFlight, Live, StreamRecorder, StreamStats};

/// How to run a plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The gateway, `host:port`.
    pub target: String,
    /// Open-loop senders: calls on the wire at once (each on its own connection).
    pub connections: usize,
    /// Per call, counted from its due time (open loop) or send time (closed loop).
    pub timeout: Duration,
    /// Open-loop calls queued for a sender beyond which due calls are skipped.
    pub max_backlog: u64,
    /// Print a progress line every second on stderr.
    pub progress: bool,
}

impl RunOptions {
    /// Defaults for `target`.
    pub fn new(target: impl Into<String>) -> RunOptions {
        RunOptions {
            target: target.into(),
            connections: 256,
            timeout: Duration::from_secs(30),
            max_backlog: 200_000,
            progress: false,
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Unix seconds at the start.
    pub started_unix: i64,
    /// From the start until sending stopped (the duration, or less if interrupted).
    pub send_window: Duration,
    /// When the last call went on the wire, from the start: beyond `send_window` when the
    /// target (or this machine) could not keep up with the timetable.
    pub last_send: Duration,
    /// Including waiting for the last answers.
    pub wall: Duration,
    /// True when the run was stopped early (Ctrl-C).
    pub interrupted: bool,
    /// By stream, in plan order.
    pub streams: Vec<StreamStats>,
    /// By group, in plan order: the most calls on the wire at once.
    pub group_peak_in_flight: Vec<u64>,
}

/// State shared by every scheduler, sender and worker.
struct Shared {
    client: HttpClient,
    templates: Vec<Template>,
    stream_group: Vec<usize>,
    recorders: Vec<StreamRecorder>,
    in_flight: Vec<InFlight>,
    live: Live,
    queue: JobQueue,
    timeout: Duration,
    refusal_codes: Vec<String>,
    start: Instant,
    /// Nanoseconds from `start` to the latest send.
    last_send: AtomicU64,
}

impl Shared {
    /// Builds, sends and records one call of `stream`; `since` is when its latency starts.
    async fn call(&self, stream: usize, cache: &mut SignCache, since: Instant) -> Outcome {
        let template = &self.templates[stream];
        let req = template.build(cache.get(template));
        let flight = &self.in_flight[self.stream_group[stream]];
        let offset = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_send.fetch_max(offset, Ordering::Relaxed);
        flight.enter();
        let left = self.timeout.saturating_sub(since.elapsed());
        let outcome = outcome::send(&self.client, req, left, &self.refusal_codes).await;
        flight.exit();
        self.finish(stream, &outcome, since.elapsed());
        outcome
    }

    /// Counts one answer (or failure) of `stream`.
    fn finish(&self, stream: usize, outcome: &Outcome, latency: Duration) {
        self.recorders[stream].record(outcome, latency);
        let counter = match outcome.class() {
            Class::Admitted => &self.live.admitted,
            Class::Rejected => &self.live.rejected,
            Class::Error => &self.live.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.live.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts calls that were due but are not sent.
    fn skip(&self, stream: usize, n: u64) {
        for _ in 0..n {
            self.recorders[stream].skipped();
        }
        self.live.skipped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Runs `plan` against `opts.target` until its duration is over or `stop` completes, then
/// waits for the calls still outstanding (each bounded by `opts.timeout`).
pub async fn run(
    plan: &Plan,
    opts: &RunOptions,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunResult> {
    let templates = plan
        .streams
        .iter()
        .map(|s| Template::new(s, &opts.target))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let closed_workers: usize = plan
        .streams
        .iter()
        .map(|s| match s.load {
            Load::Closed { workers } => workers as usize,
            Load::Open { .. } => 0,
        })
        .sum();
    let any_open = plan
        .streams
        .iter()
        .any(|s| matches!(s.load, Load::Open { .. }));
    let senders = if any_open { opts.connections.max(1) } else { 0 };
    let shared = Arc::new(Shared {
        client: http_client(senders + closed_workers, opts.timeout),
        templates,
        stream_group: plan.streams.iter().map(|s| s.group).collect(),
        recorders: plan
            .streams
            .iter()
            .map(|_| StreamRecorder::default())
            .collect(),
        in_flight: plan.groups.iter().map(|_| InFlight::default()).collect(),
        live: Live::default(),
        queue: JobQueue::new(usize::try_from(opts.max_backlog).unwrap_or(usize::MAX)),
        timeout: opts.timeout,
        refusal_codes: plan.refusal_codes.clone(),
        start: Instant::now(),
        last_send: AtomicU64::new(0),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopper = tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    let started_unix = unix_seconds();
    let start = shared.start;
    let end = start + plan.duration;
    let progress = opts.progress.then(|| {
        let shared = Arc::clone(&shared);
        progress::spawn(start, plan.duration, move || shared.live.snapshot())
    });

    let mut sending = JoinSet::new();
    for _ in 0..senders {
        sending.spawn(sender(Arc::clone(&shared)));
    }
    let mut scheduling = JoinSet::new();
    for (i, stream) in plan.streams.iter().enumerate() {
        match stream.load {
            Load::Open { rate } => {
                let shared = Arc::clone(&shared);
                scheduling.spawn(schedule(shared, i, rate, start, end, stop_rx.clone()));
            }
            Load::Closed { workers } => {
                for _ in 0..workers {
                    let shared = Arc::clone(&shared);
                    scheduling.spawn(closed_loop(shared, i, end, stop_rx.clone()));
                }
            }
        }
    }
    while let Some(r) = scheduling.join_next().await {
        r?;
    }
    let interrupted = *stop_rx.borrow();
    stopper.abort();
    // The timetable covers exactly [0, duration); an interrupted run, what it got through.
    let send_window = if interrupted {
        start.elapsed().min(plan.duration)
    } else {
        plan.duration
    };
    // Calls already due are still sent (each bounded by its timeout), unless interrupted.
    for stream in shared.queue.close(interrupted) {
        shared.live.outstanding.fetch_sub(1, Ordering::Relaxed);
        shared.skip(stream, 1);
    }
    while let Some(r) = sending.join_next().await {
        r?;
    }
    if let Some(p) = progress {
        p.finish().await;
    }
    Ok(RunResult {
        started_unix,
        send_window,
        last_send: Duration::from_nanos(shared.last_send.load(Ordering::Relaxed)),
        wall: start.elapsed(),
        interrupted,
        streams: shared.recorders.iter().map(StreamRecorder::take).collect(),
        group_peak_in_flight: shared.in_flight.iter().map(InFlight::peak).collect(),
    })
}

/// The pooled keep-alive client: HTTP/1.1, no Nagle, up to `max_idle` idle connections kept.
fn http_client(max_idle: usize, connect_timeout: Duration) -> HttpClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(max_idle.max(1))
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// The timetable of one open-loop stream: queues each call when it falls due.
async fn schedule(
    shared: Arc<Shared>,
    stream: usize,
    rate: f64,
    start: Instant,
    end: Instant,
    mut stop: watch::Receiver<bool>,
) {
    let due_at = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let mut i: u64 = 0;
    let mut batch = Vec::new();
    loop {
        let due = due_at(i);
        if due >= end || *stop.borrow() {
            return;
        }
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stop.changed() => return,
            }
        }
        // Every call due by now (at high rates, several per timer tick), in one batch.
        let now = Instant::now();
        batch.clear();
        loop {
            let due = due_at(i);
            if due > now || due >= end {
                break;
            }
            batch.push(Job { stream, due });
            i += 1;
        }
        shared
            .live
            .sent
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        shared
            .live
            .outstanding
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let refused = shared.queue.push_all(batch.iter().copied());
        if refused > 0 {
            shared.live.sent.fetch_sub(refused, Ordering::Relaxed);
            shared
                .live
                .outstanding
                .fetch_sub(refused, Ordering::Relaxed);
            shared.skip(stream, refused);
        }
    }
}

/// One open-loop sender: takes due calls in order and sends them, one at a time.
async fn sender(shared: Arc<Shared>) {
    let mut caches: Vec<SignCache> = shared.templates.iter().map(|_| SignCache::new()).collect();
    while let Some(job) = shared.queue.pop().await {
        if job.due.elapsed() >= shared.timeout {
            // Waited its whole timeout in the queue: the target is far slower than the rate.
            let outcome = Outcome::Transport(TransportError::Timeout);
            shared.finish(job.stream, &outcome, job.due.elapsed());
            continue;
        }
        shared
            .call(job.stream, &mut caches[job.stream], job.due)
            .await;
    }
}

/// One closed-loop worker.
async fn closed_loop(
    shared: Arc<Shared>,
    stream: usize,
    end: Instant,
    stop: watch::Receiver<bool>,
) {
    let mut cache = SignCache::new();
    while Instant::now() < end && !*stop.borrow() {
        shared.live.outstanding.fetch_add(1, Ordering::Relaxed);
        shared.live.sent.fetch_add(1, Ordering::Relaxed);
        let outcome = shared.call(stream, &mut cache, Instant::now()).await;
        if matches!(outcome, Outcome::Transport(_)) {
            // The target is unreachable: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
