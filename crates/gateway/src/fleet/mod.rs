//! The fleet task: keeps this replica's leases and slices topped up from Redis, announces the
//! replica to the fleet, and switches the fleet store into (and out of) its failure mode.
//!
//! Admission (`admission::fleet`) never talks to Redis; it queues what it wants and wakes this
//! task, which sends every queued request at once (pipelined on one multiplexed connection),
//! bounded by `quota.timeout_ms`. A timeout or a connection error puts the store in its
//! failure mode (`tollgate_fleet_degraded` 1, one log line); a probe every
//! `quota.probe_interval_ms` brings it back (0, one log line) and re-reports every slice
//! first, so a Redis restarted empty is exact again within a round trip.
//!
//! Redis keys (`<prefix>` is `quota.key_prefix`; one account per hash slot, every key a
//! script touches declared, so the scripts run unchanged on Redis, Valkey, Redis Cluster and
//! Dragonfly):
//!
//! - `<prefix>:{<uin>}:r:<group>`: a rate group's GCRA TAT (`rate.lua`);
//! - `<prefix>:{<uin>}:c:<group>`: a concurrency group's slices (`slice.lua`);
//! - `<prefix>:{fleet}:members`, `<prefix>:{fleet}:contended`: membership (`members.lua`).

use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisError, RedisFuture, Script, Value};
use rustc_hash::FxHashMap;

use crate::admission::QuotaKey;
use crate::admission::fleet::{FleetShared, FleetStore, RateAsk, SliceAsk, SliceState, Wanted};
use tollgate_core::catalog::GroupKey;
use tollgate_core::clock::Clock;

const RATE_LUA: &str = include_str!("rate.lua");
const SLICE_LUA: &str = include_str!("slice.lua");
const MEMBERS_LUA: &str = include_str!("members.lua");

/// `[quota]` with `store = "redis"`.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// One `redis://` URL; with `redis_cluster`, the seed nodes, comma-separated.
    pub redis_url: String,
    /// Redis Cluster: commands are routed to the node of their key's slot.
    pub redis_cluster: bool,
    pub member_id: String,
    pub key_prefix: String,
    /// One round of requests to Redis that takes longer than this puts the store in its
    /// failure mode.
    pub timeout: Duration,
    /// How often leases and slices are looked after (and the lease's span).
    pub refresh: Duration,
    pub slice_refresh: Duration,
    /// A member that does not announce itself within this has left the fleet; its slots free.
    pub membership_ttl: Duration,
    pub announce_interval: Duration,
    pub probe_interval: Duration,
    /// A concurrency key with nothing in flight and no call for this leaves Redis.
    pub slice_idle: Duration,
}

/// The fleet store's metrics.
#[derive(Clone)]
pub struct FleetMetrics {
    pub degraded: IntGauge,
    pub members: IntGauge,
    pub commands: IntCounterVec,
    pub errors: IntCounterVec,
    pub transitions: IntCounterVec,
    pub round_seconds: Histogram,
    pub leased_calls: IntCounterVec,
}

impl FleetMetrics {
    pub fn new(registry: &Registry) -> FleetMetrics {
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("unique metric");
        };
        let degraded = IntGauge::new(
            "tollgate_fleet_degraded",
            "1 while the fleet's Redis cannot be reached and quotas run in their failure mode.",
        )
        .expect("valid metric");
        let members = IntGauge::new(
            "tollgate_fleet_members",
            "Gateways this one counts in the fleet (the N of limit / N).",
        )
        .expect("valid metric");
        let commands = IntCounterVec::new(
            Opts::new(
                "tollgate_fleet_redis_commands_total",
                "Commands sent to the fleet's Redis, by op (rate, slice, members, probe).",
            ),
            &["op"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new(
                "tollgate_fleet_redis_errors_total",
                "Failed rounds with the fleet's Redis, by kind (timeout, connection, script).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let transitions = IntCounterVec::new(
            Opts::new(
                "tollgate_fleet_transitions_total",
                "Entries into and exits from the failure mode (to = degraded | healthy).",
            ),
            &["to"],
        )
        .expect("valid metric");
        let round_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tollgate_fleet_round_seconds",
                "Seconds for one round of lease and slice requests to Redis (the refill latency).",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25,
            ]),
        )
        .expect("valid metric");
        let leased_calls = IntCounterVec::new(
            Opts::new(
                "tollgate_fleet_leased_calls_total",
                "Rate capacity moved through Redis, by kind (granted, debt, refund).",
            ),
            &["kind"],
        )
        .expect("valid metric");
        reg(Box::new(degraded.clone()));
        reg(Box::new(members.clone()));
        reg(Box::new(commands.clone()));
        reg(Box::new(errors.clone()));
        reg(Box::new(transitions.clone()));
        reg(Box::new(round_seconds.clone()));
        reg(Box::new(leased_calls.clone()));
        degraded.set(1);
        FleetMetrics {
            degraded,
            members,
            commands,
            errors,
            transitions,
            round_seconds,
            leased_calls,
        }
    }
}

fn rate_key(prefix: &str, k: QuotaKey) -> String {
    format!("{prefix}:{{{}}}:r:{:016x}", k.uin, k.group.0)
}

fn slice_key(prefix: &str, k: QuotaKey) -> String {
    format!("{prefix}:{{{}}}:c:{:016x}", k.uin, k.group.0)
}

fn contended_name(k: QuotaKey) -> String {
    format!("{}:{:016x}", k.uin, k.group.0)
}

fn parse_contended(s: &str) -> Option<QuotaKey> {
    let (uin, group) = s.split_once(':')?;
    Some(QuotaKey {
        uin: uin.parse().ok()?,
        group: GroupKey(u64::from_str_radix(group, 16).ok()?),
    })
}

/// How a round with Redis failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Redis did not answer in time, or the connection failed: the failure mode.
    Down(&'static str),
    /// Redis answered with an error (a script bug, a wrong key type): this request only.
    Script,
}

fn classify(e: &RedisError) -> Failure {
    if e.is_timeout() {
        Failure::Down("timeout")
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        Failure::Down("connection")
    } else {
        Failure::Script
    }
}

/// Where the fleet's Redis is: one endpoint, or a Redis Cluster.
enum Backend {
    Single(Client),
    Cluster(Box<ClusterClient>),
}

/// A connection to either (cheap to clone: both multiplex one connection per node).
#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The seed nodes of a cluster URL list.
pub fn cluster_nodes(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

enum Request {
    Rate(QuotaKey, Arc<crate::admission::fleet::RateLease>, RateAsk),
    Slice(QuotaKey, Arc<SliceState>, SliceAsk, bool),
}

enum Answer {
    Rate {
        granted: u32,
        wait_nanos: u64,
    },
    Slice {
        slice: u32,
        contended: bool,
        registered: bool,
    },
}

/// The task. Runs until `stop`, then leaves the fleet (membership and idle slices).
pub struct FleetTask {
    store: Arc<FleetStore>,
    shared: Arc<FleetShared>,
    settings: FleetSettings,
    metrics: FleetMetrics,
    clock: Arc<dyn Clock>,
    backend: Backend,
    conn: Option<Conn>,
    rate: Script,
    slice: Script,
    members_script: Script,
    /// Members by when this one last saw them live.
    seen: HashMap<String, Instant>,
    /// The members live in the last announce's answer, each "member expiry_ms" (the list the
    /// slice script keeps static shares for, as long as their membership has not expired).
    current: Vec<String>,
    /// When this member's current healthy spell first announced it.
    announced_since: Option<Instant>,
    /// Keys whose lease is out or which wait for `not_before` (refunds, re-asks).
    leased: FxHashMap<QuotaKey, Arc<crate::admission::fleet::RateLease>>,
    waiting: BinaryHeap<std::cmp::Reverse<(u64, u64, GroupKey)>>,
    /// Keys this member wants absent members to register for (sent with the next announce).
    contend: Vec<String>,
    /// Requests for the next round.
    pending: Vec<Request>,
}

impl FleetTask {
    /// Checks the Redis URL (no connection yet: a gateway starts with Redis down, degraded).
    pub fn new(
        store: Arc<FleetStore>,
        settings: FleetSettings,
        metrics: FleetMetrics,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<FleetTask> {
        let url_error =
            |e: RedisError| anyhow::anyhow!("quota.redis_url {:?}: {e}", settings.redis_url);
        let backend = if settings.redis_cluster {
            Backend::Cluster(Box::new(
                ClusterClient::builder(cluster_nodes(&settings.redis_url))
                    .connection_timeout(settings.timeout)
                    .response_timeout(settings.timeout)
                    .build()
                    .map_err(url_error)?,
            ))
        } else {
            Backend::Single(Client::open(settings.redis_url.as_str()).map_err(url_error)?)
        };
        Ok(FleetTask {
            shared: Arc::clone(store.shared()),
            store,
            settings,
            metrics,
            clock,
            backend,
            conn: None,
            rate: Script::new(RATE_LUA),
            slice: Script::new(SLICE_LUA),
            members_script: Script::new(MEMBERS_LUA),
            seen: HashMap::new(),
            current: Vec::new(),
            announced_since: None,
            leased: FxHashMap::default(),
            waiting: BinaryHeap::new(),
            contend: Vec::new(),
            pending: Vec::new(),
        })
    }

    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut wanted = Vec::with_capacity(1024);
        let mut next_announce = Instant::now();
        let mut next_slices = Instant::now();
        let mut next_probe = Instant::now();
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = self.shared.notified() => {}
                () = tokio::time::sleep(self.settings.refresh) => {}
            }
            let now = Instant::now();
            if !self.shared.is_healthy() {
                // Nothing is sent while degraded; what admission queued is dropped (it decides
                // from local state meanwhile).
                self.shared.take_wanted(&mut wanted);
                for w in wanted.drain(..) {
                    match w {
                        Wanted::Rate(_, l) => l.release(),
                        Wanted::Slice(_, s) => s.release(),
                    }
                }
                for r in std::mem::take(&mut self.pending) {
                    release(&r);
                }
                if now < next_probe {
                    continue;
                }
                next_probe = now + self.settings.probe_interval;
                if !self.probe().await {
                    continue;
                }
                self.recovered();
                next_announce = now;
                next_slices = now;
            }
            if now >= next_announce || !self.contend.is_empty() {
                next_announce = now + self.settings.announce_interval;
                if let Err(f) = self.announce(false).await {
                    self.failed(f);
                    continue;
                }
            }
            self.collect(&mut wanted);
            if now >= next_slices {
                next_slices = now + self.settings.slice_refresh;
                self.collect_slices();
            }
            if self.pending.is_empty() {
                continue;
            }
            if let Err(f) = self.round().await {
                self.failed(f);
            }
        }
        self.leave().await;
    }

    /// Connects (if need be) and pings, within the timeout.
    async fn probe(&mut self) -> bool {
        self.metrics.commands.with_label_values(&["probe"]).inc();
        let timeout = self.settings.timeout;
        let attempt = async {
            let mut conn = match &self.backend {
                Backend::Single(client) => {
                    let config = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout));
                    Conn::Single(
                        client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await?,
                    )
                }
                Backend::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
            };
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok::<_, RedisError>(conn)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(conn)) => {
                self.conn = Some(conn);
                true
            }
            _ => false,
        }
    }

    fn recovered(&mut self) {
        tracing::info!(
            member = %self.settings.member_id,
            "fleet quota store: Redis answers again; quotas are fleet-wide again"
        );
        self.metrics.degraded.set(0);
        self.metrics
            .transitions
            .with_label_values(&["healthy"])
            .inc();
        self.announced_since = None;
        self.shared.set_settled(false);
        let mut entries = Vec::new();
        self.store.slice_entries(&mut entries);
        for (_, s) in entries {
            s.clamp_to_share(&self.shared);
        }
        self.shared.set_healthy();
    }

    fn failed(&mut self, f: Failure) {
        let Failure::Down(kind) = f else { return };
        self.metrics.errors.with_label_values(&[kind]).inc();
        self.conn = None;
        if self.shared.is_healthy() {
            self.shared.set_degraded(self.clock.monotonic_nanos());
            self.metrics.degraded.set(1);
            self.metrics
                .transitions
                .with_label_values(&["degraded"])
                .inc();
            tracing::warn!(
                member = %self.settings.member_id,
                reason = kind,
                "fleet quota store: Redis did not answer; quotas run in their failure mode"
            );
        }
    }

    /// The members this one counts: seen within `window`.
    fn live(&self, window: Duration) -> Vec<&str> {
        let now = Instant::now();
        self.seen
            .iter()
            .filter(|(_, t)| now.duration_since(**t) <= window)
            .map(|(m, _)| m.as_str())
            .collect()
    }

    async fn announce(&mut self, leaving: bool) -> Result<(), Failure> {
        let Some(mut conn) = self.conn.clone() else {
            return Err(Failure::Down("connection"));
        };
        self.metrics.commands.with_label_values(&["members"]).inc();
        let prefix = &self.settings.key_prefix;
        let mut inv = self.members_script.prepare_invoke();
        inv.key(format!("{prefix}:{{fleet}}:members"))
            .key(format!("{prefix}:{{fleet}}:contended"))
            .arg(&self.settings.member_id)
            .arg(self.settings.membership_ttl.as_millis() as u64)
            .arg(if leaving { 1 } else { 0 });
        for c in self.contend.drain(..) {
            inv.arg(c);
        }
        let reply: Vec<String> =
            match tokio::time::timeout(self.settings.timeout, inv.invoke_async(&mut conn)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return Err(classify(&e)),
                Err(_) => return Err(Failure::Down("timeout")),
            };
        if leaving {
            return Ok(());
        }
        let now = Instant::now();
        let mut parts = reply.split(|s| s.is_empty());
        self.current.clear();
        for entry in parts.next().unwrap_or_default() {
            let member = entry.split(' ').next().unwrap_or_default();
            self.seen.insert(member.to_string(), now);
            self.current.push(entry.clone());
        }
        self.seen.insert(self.settings.member_id.clone(), now);
        let ttl = self.settings.membership_ttl;
        self.seen.retain(|_, t| now.duration_since(*t) <= 2 * ttl);
        let recent = self.live(ttl).len() as u32;
        let wide = self.seen.len() as u32;
        self.shared.set_members(recent, wide);
        self.metrics.members.set(i64::from(recent));
        let since = *self.announced_since.get_or_insert(now);
        self.shared
            .set_settled(now.duration_since(since) >= self.settings.membership_ttl);
        // Keys others want this member to register for, if it holds no entry of its own.
        for c in parts.next().unwrap_or_default() {
            if let Some(k) = parse_contended(c) {
                let s = self.store.slice_entry(k);
                if !s.is_registered() && s.claim() {
                    let ask = s.ask(&self.shared);
                    self.pending.push(Request::Slice(k, s, ask, false));
                }
            }
        }
        Ok(())
    }

    /// Turns what admission queued, expired leases and due re-asks into requests.
    fn collect(&mut self, wanted: &mut Vec<Wanted>) {
        let now = self.clock.monotonic_nanos();
        let tuning = &self.shared.tuning;
        let members = self.shared.members();
        self.shared.take_wanted(wanted);
        for w in wanted.drain(..) {
            match w {
                Wanted::Rate(k, l) => {
                    let ask = l.ask(tuning, members, now);
                    self.leased.entry(k).or_insert_with(|| Arc::clone(&l));
                    self.pending.push(Request::Rate(k, l, ask));
                }
                Wanted::Slice(k, s) => {
                    let ask = s.ask(&self.shared);
                    self.pending.push(Request::Slice(k, s, ask, false));
                }
            }
        }
        // Keys refused since Redis said "not before": ask again when the time comes.
        while let Some(std::cmp::Reverse((at, uin, group))) = self.waiting.peek().copied() {
            if at > now {
                break;
            }
            self.waiting.pop();
            let k = QuotaKey { uin, group };
            if let Some(l) = self.leased.get(&k)
                && l.take_demand()
                && l.claim()
            {
                let ask = l.ask(tuning, members, now);
                self.pending.push(Request::Rate(k, Arc::clone(l), ask));
            }
        }
        // Keys gone quiet with leased calls left give them back; idle keys are forgotten.
        self.leased.retain(|k, l| {
            if l.quiet_with_calls(tuning, now) && l.claim() {
                let mut ask = l.ask(tuning, members, now);
                ask.want = 0;
                self.pending.push(Request::Rate(*k, Arc::clone(l), ask));
                return true;
            }
            !l.is_idle(now) || l.quiet_with_calls(tuning, now)
        });
    }

    /// Every concurrency entry reports (so slices follow demand); idle ones leave.
    fn collect_slices(&mut self) {
        let now = self.clock.monotonic_nanos();
        let idle = self.settings.slice_idle.as_nanos() as u64;
        let mut entries = Vec::new();
        self.store.slice_entries(&mut entries);
        for (k, s) in entries {
            let leave = s.is_idle(now, idle);
            if leave && !s.is_registered() {
                self.store.forget_slice(k);
                continue;
            }
            if (s.is_registered() || s.in_flight() > 0) && s.claim() {
                let ask = s.ask(&self.shared);
                self.pending.push(Request::Slice(k, s, ask, leave));
            }
        }
    }

    /// Sends every pending request at once and applies the answers.
    async fn round(&mut self) -> Result<(), Failure> {
        let requests = std::mem::take(&mut self.pending);
        let Some(conn) = self.conn.clone() else {
            for r in &requests {
                release(r);
            }
            return Err(Failure::Down("connection"));
        };
        let prefix = self.settings.key_prefix.as_str();
        let ttl_ms = self.settings.membership_ttl.as_millis() as u64;
        let live: Vec<&str> = self.current.iter().map(String::as_str).collect();
        let members_wide = self.shared.members_wide().max(live.len() as u32);
        let member = self.settings.member_id.as_str();
        // A lease may be reserved up to ten lease spans ahead (a queue of replicas at a key's
        // limit, each taking whole leases in turn).
        let max_ahead_us = 10 * self.settings.refresh.as_micros() as u64;
        let (rate, slice) = (&self.rate, &self.slice);
        let mut n_rate = 0u64;
        let mut n_slice = 0u64;
        let calls = requests.iter().map(|r| {
            let mut conn = conn.clone();
            match r {
                Request::Rate(k, _, ask) => {
                    n_rate += 1;
                    let interval_us = ask.rate.emission_interval_nanos().div_ceil(1000);
                    let tolerance_us = interval_us * u64::from(ask.rate.burst.max(1) - 1);
                    let mut inv = rate.prepare_invoke();
                    inv.key(rate_key(prefix, *k))
                        .arg(interval_us)
                        .arg(tolerance_us)
                        .arg(ask.want)
                        .arg(ask.debt)
                        .arg(ask.refund)
                        .arg(max_ahead_us);
                    futures_util::future::Either::Left(async move {
                        let (granted, wait): (u32, String) = inv.invoke_async(&mut conn).await?;
                        let wait_us: u64 = wait.parse().unwrap_or(0);
                        Ok::<_, RedisError>(Answer::Rate {
                            granted,
                            wait_nanos: wait_us.saturating_mul(1000),
                        })
                    })
                }
                Request::Slice(k, _, ask, leave) => {
                    n_slice += 1;
                    let mut inv = slice.prepare_invoke();
                    inv.key(slice_key(prefix, *k))
                        .arg(member)
                        .arg(ask.limit)
                        .arg(ask.in_use)
                        .arg(ask.demand)
                        .arg(ttl_ms)
                        .arg(members_wide)
                        .arg(if *leave { 1 } else { 0 })
                        .arg(ask.held);
                    for m in &live {
                        inv.arg(*m);
                    }
                    futures_util::future::Either::Right(async move {
                        let (slice, contended, registered): (u32, u32, u32) =
                            inv.invoke_async(&mut conn).await?;
                        Ok::<_, RedisError>(Answer::Slice {
                            slice,
                            contended: contended == 1,
                            registered: registered == 1,
                        })
                    })
                }
            }
        });
        let calls: Vec<_> = calls.collect();
        self.metrics
            .commands
            .with_label_values(&["rate"])
            .inc_by(n_rate);
        self.metrics
            .commands
            .with_label_values(&["slice"])
            .inc_by(n_slice);
        let started = Instant::now();
        let answers = match tokio::time::timeout(self.settings.timeout, join_all(calls)).await {
            Ok(a) => a,
            Err(_) => {
                for r in &requests {
                    fail(r);
                }
                return Err(Failure::Down("timeout"));
            }
        };
        self.metrics
            .round_seconds
            .observe(started.elapsed().as_secs_f64());
        let now = self.clock.monotonic_nanos();
        let mut down = None;
        for (r, a) in requests.into_iter().zip(answers) {
            match (r, a) {
                (
                    Request::Rate(k, l, ask),
                    Ok(Answer::Rate {
                        granted,
                        wait_nanos,
                    }),
                ) => {
                    let m = &self.metrics.leased_calls;
                    m.with_label_values(&["granted"]).inc_by(u64::from(granted));
                    m.with_label_values(&["debt"]).inc_by(u64::from(ask.debt));
                    m.with_label_values(&["refund"])
                        .inc_by(u64::from(ask.refund));
                    l.granted(&self.shared.tuning, now, granted, wait_nanos);
                    if granted == 0 && ask.want > 0 {
                        self.waiting
                            .push(std::cmp::Reverse((now + wait_nanos, k.uin, k.group)));
                    }
                }
                (
                    Request::Slice(k, s, _, leave),
                    Ok(Answer::Slice {
                        slice,
                        contended,
                        registered,
                    }),
                ) => {
                    s.granted(slice, registered);
                    if contended {
                        self.contend.push(contended_name(k));
                    }
                    if leave && !registered {
                        self.store.forget_slice(k);
                    }
                }
                (r, Err(e)) => {
                    let f = classify(&e);
                    if f == Failure::Script {
                        self.metrics.errors.with_label_values(&["script"]).inc();
                        tracing::error!(error = %e, "fleet quota store: Redis refused a request");
                    } else {
                        down = Some(f);
                    }
                    fail(&r);
                }
                (r, Ok(_)) => fail(&r),
            }
        }
        match down {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }

    /// On shutdown: leave the fleet and give back every slice (best effort, one timeout).
    async fn leave(&mut self) {
        if !self.shared.is_healthy() {
            return;
        }
        let mut entries = Vec::new();
        self.store.slice_entries(&mut entries);
        for (k, s) in entries {
            if s.is_registered() && s.claim() {
                let ask = s.ask(&self.shared);
                self.pending.push(Request::Slice(k, s, ask, true));
            }
        }
        let _ = self.round().await;
        let _ = self.announce(true).await;
        tracing::info!(member = %self.settings.member_id, "fleet quota store: left the fleet");
    }
}

/// A request not sent: its entry may queue again.
fn release(r: &Request) {
    match r {
        Request::Rate(_, l, ask) => l.failed(ask),
        Request::Slice(_, s, _, _) => s.release(),
    }
}

/// A request sent whose answer never came: it may or may not have been applied.
fn fail(r: &Request) {
    match r {
        Request::Rate(_, l, ask) => l.failed(ask),
        Request::Slice(_, s, ask, _) => s.failed(ask),
    }
}
