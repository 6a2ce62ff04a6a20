//! `aside soak`: the history checker run for a long time against a store
//! behind a misbehaving network, with the process's memory watched.
//!
//! Owns the soak's flags, the network faults it schedules, the memory
//! samples and the summary. The workload and its judgement are the test
//! kit's history campaign (`aside_testkit::history`, as `demo --scenario
//! chaos` runs it): programs of reads, batch reads, writes with
//! invalidation and `set`s by three `Aside` instances, each program checked
//! for stale reads, stale entries after quiescence and wrong answers (a
//! read that returned another key's row), with the fault layer's own faults
//! (errors, hangs, delays, bus faults, database errors; restarts of the
//! in-process store). Programs follow one another until `--duration` has
//! passed, so the workload is bounded however long the soak runs.
//!
//! On Redis or memcached the store is reached through an
//! [`aside_testkit::proxy::FaultProxy`], on which a scheduler injects, at
//! random moments of each program: store "restarts" (every connection
//! reset, and new ones refused, for a moment), latency spikes, and
//! blackholes (connections that stop answering, and stay dead after). The
//! proxy's faults are switched off, and the store checked to answer again,
//! before a program's quiescence and checks ([`history::FaultSwitch`]): the
//! checks judge the library once the faults are over, not the faults.
//!
//! A named server is shared: nothing is ever flushed. The campaign's keys
//! start with its namespaces' names (`h<run id>-<seed>`, the run id being
//! this process's id and a counter); at the end the soak deletes from a
//! Redis the keys of this process's namespaces only. memcached cannot list
//! keys: the soak's keys there expire by their TTLs (seconds).
//!
//! Memory: the resident set (`VmRSS` of `/proc/self/status`) is sampled
//! every second; the summary gives it at the start, after the first
//! minute, at the end and its maximum. Every 10 s (1/120 of a longer soak)
//! and at the end, `samples` records it split into anonymous and
//! file-backed pages, with the live Tokio tasks, open file descriptors and
//! proxied connections: a leak of live objects (issue 15: a bus
//! subscription per program) shows as steady growth of the counts and of
//! anonymous memory, while the executable's pages read as new code paths
//! first run grow the file-backed part, bounded by the binary's size. The
//! soak leaves the allocator as it is (no `MALLOC_ARENA_MAX`): glibc's
//! arenas were measured and were not the growth (docs/BOUNDS.md, "The
//! soak's memory").

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aside::Store;
use aside::store::memcached::MemcachedStore;
use aside::store::redis::RedisStore;
use aside_testkit::history::{self, BusSpec, CampaignConfig, CampaignReport, FaultSwitch, Progress, StoreSpec};
use aside_testkit::proxy::FaultProxy;
use indicatif::ProgressBar;
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use crate::error::{CliError, Context, Result};
use crate::table::{count, render};

/// Flags of `aside soak`.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// How long to run, in seconds (programs stop starting after it).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub duration: u64,

    /// Soak the Redis server at this URL (`redis://` or `valkey://`),
    /// through a fault proxy, instead of the in-process store. A shared
    /// server is fine: the soak never flushes it and deletes only its keys.
    #[arg(long, value_name = "URL", conflicts_with = "memcached")]
    pub redis: Option<String>,

    /// Soak the memcached (1.6+) at this address (`host:port`), through a
    /// fault proxy, instead of the in-process store.
    #[arg(long, value_name = "ADDR")]
    pub memcached: Option<String>,

    /// Print the summary as one JSON object on stdout (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

impl std::fmt::Debug for SoakArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoakArgs")
            .field("duration", &self.duration)
            .field("redis", &self.redis.as_deref().map(aside::store::masked_url))
            .field("memcached", &self.memcached)
            .field("json", &self.json)
            .finish()
    }
}

/// Faults the soak injected on the network, by kind.
#[derive(Debug, Default, Serialize)]
pub struct NetworkFaults {
    /// Every connection reset, new ones refused, for a moment.
    pub restarts: u64,
    /// Latency added to every chunk each way for a while.
    pub latency_spikes: u64,
    /// Connections stopped answering (for good), new ones unanswered, for a moment.
    pub blackholes: u64,
}

impl NetworkFaults {
    fn total(&self) -> u64 {
        self.restarts + self.latency_spikes + self.blackholes
    }
}

/// What `--json` prints, under `"soak"`.
#[derive(Debug, Serialize)]
pub struct SoakSummary {
    /// `memory`, `redis` or `memcached`.
    pub store: String,
    /// Seconds the soak ran.
    pub duration_s: f64,
    /// Programs run.
    pub programs: usize,
    /// Operations run.
    pub operations: u64,
    /// Faults injected: the fault layer's and the network's.
    pub faults: u64,
    /// The fault layer's faults, by kind.
    pub layer_faults: aside_testkit::fault::FaultCounts,
    /// The network's faults, by kind.
    pub network_faults: NetworkFaults,
    /// Reads older than a write that had returned before they began (I1).
    pub stale_reads: u64,
    /// Entries that disagreed with the database after quiescence (I2).
    pub stale_entries: u64,
    /// Reads that returned another key's row.
    pub wrong_answers: u64,
    /// Overlapping loads of one key in one instance (I3).
    pub load_overlaps: u64,
    /// Operations that hung, or quiescence never reached.
    pub liveness: u64,
    /// Failures of the harness (a connection it could not make).
    pub harness_errors: u64,
    /// Seeds of the programs that broke a promise.
    pub failing_seeds: Vec<u64>,
    /// Resident memory when the soak began, MiB.
    pub rss_start_mb: f64,
    /// Resident memory one minute in (absent for a shorter soak), MiB.
    pub rss_after_first_minute_mb: Option<f64>,
    /// Resident memory at the end, MiB.
    pub rss_end_mb: f64,
    /// The largest resident memory sampled, MiB.
    pub rss_max_mb: f64,
    /// Keys of the soak deleted from a shared Redis at the end.
    pub keys_deleted: u64,
    /// What the process held over time: resident memory with the live
    /// tasks, file descriptors and proxied connections, every 10 s (or
    /// 1/120 of a longer soak), and at the end.
    pub samples: Vec<Sample>,
}

#[derive(Serialize)]
struct Printed<'a> {
    soak: &'a SoakSummary,
}

/// Runs `aside soak`.
///
/// # Errors
/// A server that cannot be reached, or a soak that found stale reads,
/// stale entries or wrong answers (after printing its summary).
pub async fn run(args: SoakArgs) -> Result<()> {
    let duration = Duration::from_secs(args.duration);
    let target = Target::connect(&args).await?;
    let connections = target.network.clone().map(|n| {
        let count: Box<dyn Fn() -> usize + Send + Sync> = Box::new(move || n.proxy.active());
        count
    });
    let memory = Arc::new(MemorySamples::start(duration, connections));
    let sampler = tokio::spawn(memory.clone().sample_every_second());
    let live = Arc::new(Live::default());
    let bar = crate::workload::elapsed_bar(duration, !args.json && std::io::stderr().is_terminal());
    let started = Instant::now();
    let ticker = {
        let (bar, live) = (bar.clone(), live.clone());
        let network = target.network.clone();
        tokio::spawn(async move {
            loop {
                update_progress(&bar, &live, network.as_deref(), started, duration);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let scheduler = target.network.clone().map(|n| tokio::spawn(n.schedule()));

    let mut config = CampaignConfig::new(target.spec.clone(), usize::MAX);
    config.bus = target.bus.clone();
    config.time_budget = Some(duration);
    config.shrink = false;
    config.fault_switch = target.network.as_ref().map(|n| n.clone().switch());
    let progress: history::ProgressFn = {
        let live = live.clone();
        Arc::new(move |p: &Progress| live.add(p))
    };
    config.progress = Some(progress);
    let report = history::run_campaign(&config).await;

    if let Some(scheduler) = scheduler {
        scheduler.abort();
    }
    ticker.abort();
    bar.finish_and_clear();
    let keys_deleted = target.clean_up().await?;
    sampler.abort();
    memory.sample_at_end();
    let summary = summarize(&target, &report, &memory, started.elapsed(), keys_deleted);
    if args.json {
        let printed = serde_json::to_string(&Printed { soak: &summary }).context("cannot print the summary")?;
        println!("{printed}");
    } else {
        print!("{}", table(&summary));
    }
    if report.programs == 0 {
        return Err(CliError::new(format!(
            "the soak could not run a program on {}: {}",
            target.spec.name(),
            report.summary()
        )));
    }
    let broken = summary.stale_reads + summary.stale_entries + summary.wrong_answers;
    if broken > 0 {
        for failure in &report.failures {
            eprint!("{failure}");
        }
        return Err(CliError::new(format!(
            "the soak found {} stale reads, {} stale entries and {} wrong answers (each program above replays \
             with `ASIDE_HISTORY_SEED=<seed> cargo test -p aside --test history`, or \
             `aside demo --scenario chaos --seed <seed>`)",
            summary.stale_reads, summary.stale_entries, summary.wrong_answers
        )));
    }
    Ok(())
}

fn summarize(
    target: &Target,
    report: &CampaignReport,
    memory: &MemorySamples,
    elapsed: Duration,
    keys_deleted: u64,
) -> SoakSummary {
    let network_faults = target.network.as_ref().map(|n| n.counts()).unwrap_or_default();
    let samples = memory.snapshot();
    SoakSummary {
        store: target.spec.name(),
        duration_s: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        programs: report.programs,
        operations: report.operations,
        faults: report.faults + network_faults.total(),
        layer_faults: report.faults_by_kind,
        network_faults,
        stale_reads: report.stale_reads,
        stale_entries: report.stale_entries,
        wrong_answers: report.wrong_answers,
        load_overlaps: report.load_overlaps,
        liveness: report.liveness,
        harness_errors: report.harness_errors,
        failing_seeds: report.failures.iter().map(|f| f.seed).collect(),
        rss_start_mb: mib(samples.start_kb),
        rss_after_first_minute_mb: samples.first_minute_kb.map(mib),
        rss_end_mb: mib(samples.last_kb),
        rss_max_mb: mib(samples.max_kb),
        keys_deleted,
        samples: samples.series,
    }
}

/// The store the soak runs on, and the proxy in front of it.
struct Target {
    spec: StoreSpec,
    bus: BusSpec,
    /// The proxy and its faults (none for the in-process store).
    network: Option<Arc<Network>>,
    /// The Redis to delete the soak's keys from at the end.
    redis_url: Option<String>,
}

impl Target {
    async fn connect(args: &SoakArgs) -> Result<Self> {
        if let Some(url) = &args.redis {
            let (upstream, proxied) = redis_via_proxy(url).await?;
            // Reachable at all, before any proxy is in the way.
            RedisStore::connect(url).await?;
            let network = Network::start(upstream).await;
            let proxied = proxied(network.proxy.port());
            let connect_url = proxied.clone();
            let current = network.current.clone();
            let spec = StoreSpec::Custom {
                name: "redis".to_owned(),
                connect: Arc::new(move || {
                    let (url, current) = (connect_url.clone(), current.clone());
                    Box::pin(async move {
                        let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&url).await?);
                        *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(store.clone());
                        Ok(store)
                    })
                }),
                restart: None,
            };
            // The bus goes to the server directly: the soak's network
            // faults are the store's.
            let bus = BusSpec::Redis { url: url.clone() };
            return Ok(Target {
                spec,
                bus,
                network: Some(network),
                redis_url: Some(url.clone()),
            });
        }
        if let Some(addr) = &args.memcached {
            if addr.contains(',') {
                return Err(CliError::new(
                    "aside soak takes one memcached server (--memcached host:port)",
                ));
            }
            let upstream = resolve(addr).await?;
            MemcachedStore::connect(addr).await?;
            let network = Network::start(upstream).await;
            let proxied = network.proxy.addr().to_string();
            let current = network.current.clone();
            let spec = StoreSpec::Custom {
                name: "memcached".to_owned(),
                connect: Arc::new(move || {
                    let (addr, current) = (proxied.clone(), current.clone());
                    Box::pin(async move {
                        let store: Arc<dyn Store> = Arc::new(MemcachedStore::connect(&addr).await?);
                        *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(store.clone());
                        Ok(store)
                    })
                }),
                restart: None,
            };
            return Ok(Target {
                spec,
                bus: BusSpec::Memory,
                network: Some(network),
                redis_url: None,
            });
        }
        Ok(Target {
            spec: StoreSpec::Memory,
            bus: BusSpec::Memory,
            network: None,
            redis_url: None,
        })
    }

    /// Deletes this process's keys from the Redis soaked, if one was;
    /// returns how many.
    async fn clean_up(&self) -> Result<u64> {
        let Some(url) = &self.redis_url else { return Ok(0) };
        let client = redis::Client::open(url.as_str()).context("cannot open the Redis URL")?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .context("cannot connect to Redis to delete the soak's keys")?;
        let pid = u64::from(std::process::id());
        let mut deleted = 0;
        for pattern in ["h*", "{h*"] {
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await
                    .context("cannot list the soak's keys")?;
                let mine: Vec<&str> = keys
                    .iter()
                    .map(String::as_str)
                    .filter(|k| is_this_process_key(k, pid))
                    .collect();
                if !mine.is_empty() {
                    let n: u64 = redis::cmd("DEL")
                        .arg(&mine)
                        .query_async(&mut conn)
                        .await
                        .context("cannot delete the soak's keys")?;
                    deleted += n;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}

/// True for a key of a history namespace of the process `pid`:
/// `h<run id>-...` or `{h<run id>-...}...`, the run id being `pid << 20`
/// plus a counter (see `aside_testkit::history`).
fn is_this_process_key(key: &str, pid: u64) -> bool {
    let rest = key.strip_prefix('{').unwrap_or(key);
    let Some(rest) = rest.strip_prefix('h') else {
        return false;
    };
    let Some((run_id, _)) = rest.split_once('-') else {
        return false;
    };
    run_id.parse::<u64>().is_ok_and(|id| id >> 20 == pid)
}

/// The URL of a Redis through a proxy on a given port.
type ProxiedUrl = Box<dyn Fn(u16) -> String + Send>;

/// The Redis at `url`'s address, and the URL that reaches it through a
/// proxy on a given port (same user, password and database).
async fn redis_via_proxy(url: &str) -> Result<(SocketAddr, ProxiedUrl)> {
    let masked = aside::store::masked_url(url);
    let parsed = redis::parse_redis_url(url).ok_or_else(|| CliError::new(format!("not a Redis URL: {masked}")))?;
    if !matches!(parsed.scheme(), "redis" | "valkey") {
        return Err(CliError::new(format!(
            "aside soak takes a redis:// or valkey:// URL (its fault proxy cannot carry TLS): {masked}"
        )));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| CliError::new(format!("no host in {masked}")))?;
    let upstream = resolve(&format!("{host}:{}", parsed.port().unwrap_or(6379))).await?;
    let proxied = move |port: u16| {
        let mut url = parsed.clone();
        // An IP host and a port are always accepted by a redis:// URL.
        let _ = url.set_host(Some("127.0.0.1"));
        let _ = url.set_port(Some(port));
        url.to_string()
    };
    Ok((upstream, Box::new(proxied)))
}

async fn resolve(addr: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .context(format_args!("cannot resolve {addr}"))?
        .next()
        .ok_or_else(|| CliError::new(format!("{addr} resolves to no address")))
}

/// The fault proxy in front of the store, and the faults scheduled on it.
///
/// Concurrency: `gate` is held while a fault is switched on or off and
/// while the program's faults are switched off, so once [`Network::switch`]
/// has returned for `false`, no fault is on and none starts until it is
/// called with `true` again.
struct Network {
    proxy: FaultProxy,
    gate: tokio::sync::Mutex<bool>,
    /// The store the current program connected (to check it answers).
    current: Arc<Mutex<Option<Arc<dyn Store>>>>,
    restarts: AtomicU64,
    latency_spikes: AtomicU64,
    blackholes: AtomicU64,
}

/// The longest a store may take to answer again once the faults are off.
const ANSWER_AGAIN_WITHIN: Duration = Duration::from_secs(60);

impl Network {
    async fn start(upstream: SocketAddr) -> Arc<Self> {
        Arc::new(Network {
            proxy: FaultProxy::start(upstream).await,
            gate: tokio::sync::Mutex::new(false),
            current: Arc::new(Mutex::new(None)),
            restarts: AtomicU64::new(0),
            latency_spikes: AtomicU64::new(0),
            blackholes: AtomicU64::new(0),
        })
    }

    fn counts(&self) -> NetworkFaults {
        NetworkFaults {
            restarts: self.restarts.load(Ordering::Relaxed),
            latency_spikes: self.latency_spikes.load(Ordering::Relaxed),
            blackholes: self.blackholes.load(Ordering::Relaxed),
        }
    }

    /// The campaign's switch: on, faults may start; off, the proxy heals
    /// and the program's store must answer again (a connection the proxy
    /// killed gets replaced after a few timeouts).
    fn switch(self: Arc<Self>) -> FaultSwitch {
        Arc::new(move |on| {
            let network = self.clone();
            let switched: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(async move {
                {
                    let mut allowed = network.gate.lock().await;
                    *allowed = on;
                    if !on {
                        network.proxy.heal();
                    }
                }
                if !on {
                    network.until_the_store_answers().await;
                }
            });
            switched
        })
    }

    async fn until_the_store_answers(&self) {
        let store = self.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(store) = store else { return };
        let deadline = Instant::now() + ANSWER_AGAIN_WITHIN;
        // A state with no event to wait on: polled, within a generous bound;
        // past it the checks run anyway and report what they find.
        while store.ping().await.is_err() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Injects a fault every 0.3 to 1.5 s while a program's faults are on:
    /// a restart (0.2-0.8 s), a latency spike of 20-150 ms (0.5-2 s) or a
    /// blackhole (0.3-1 s); then heals.
    async fn schedule(self: Arc<Self>) {
        loop {
            let (pause, kind, hold, latency) = {
                let mut rng = rand::rng();
                (
                    rng.random_range(300..1_500),
                    rng.random_range(0..3u8),
                    rng.random_range(200..1_000),
                    rng.random_range(20..150),
                )
            };
            tokio::time::sleep(Duration::from_millis(pause)).await;
            {
                let allowed = self.gate.lock().await;
                if !*allowed {
                    continue;
                }
                match kind {
                    0 => {
                        self.proxy.reset();
                        self.restarts.fetch_add(1, Ordering::Relaxed);
                    }
                    1 => {
                        self.proxy.set_latency(Duration::from_millis(latency));
                        self.proxy.set_jitter(Duration::from_millis(latency / 4));
                        self.latency_spikes.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        self.proxy.blackhole();
                        self.blackholes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let hold = if kind == 1 { hold * 2 } else { hold };
            tokio::time::sleep(Duration::from_millis(hold)).await;
            // Healing twice (here and by the switch) is harmless.
            let _allowed = self.gate.lock().await;
            self.proxy.heal();
        }
    }
}

/// Figures of the programs run so far, for the progress bar.
#[derive(Default)]
struct Live {
    programs: AtomicU64,
    operations: AtomicU64,
    faults: AtomicU64,
    failures: AtomicU64,
}

impl Live {
    fn add(&self, p: &Progress) {
        if p.shrinking {
            return;
        }
        self.programs.fetch_add(1, Ordering::Relaxed);
        self.operations.fetch_add(p.operations, Ordering::Relaxed);
        self.faults.fetch_add(p.faults, Ordering::Relaxed);
        self.failures.fetch_add(p.failures as u64, Ordering::Relaxed);
    }
}

fn update_progress(bar: &ProgressBar, live: &Live, network: Option<&Network>, started: Instant, duration: Duration) {
    if bar.is_hidden() {
        return;
    }
    let elapsed = started.elapsed().min(duration);
    let network_faults = network.map_or(0, |n| n.counts().total());
    bar.set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
    bar.set_message(format!(
        "{:.0}s / {}s  {} programs  {} operations  {} faults  {} broken promises",
        elapsed.as_secs_f64(),
        duration.as_secs(),
        count(live.programs.load(Ordering::Relaxed)),
        count(live.operations.load(Ordering::Relaxed)),
        count(live.faults.load(Ordering::Relaxed) + network_faults),
        live.failures.load(Ordering::Relaxed),
    ));
}

/// Resident-memory samples, in KiB, and the series of [`Sample`]s.
struct MemorySamples {
    started: std::time::Instant,
    samples: Mutex<Samples>,
    sampling: AtomicBool,
    /// Time between two samples of the series.
    every: Duration,
    /// Connections open through the fault proxy, when there is one.
    connections: Option<Box<dyn Fn() -> usize + Send + Sync>>,
}

#[derive(Debug, Clone, Default)]
struct Samples {
    start_kb: u64,
    first_minute_kb: Option<u64>,
    last_kb: u64,
    max_kb: u64,
    series: Vec<Sample>,
}

/// What the process held at one moment of the soak: with the resident set,
/// the live objects whose leak would make it grow (tasks, file descriptors,
/// proxied connections), so that growth of live objects can be told from
/// the allocator's own (see docs/BOUNDS.md, "The soak's memory").
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since the soak began.
    pub t_s: u64,
    /// Resident memory, MiB: the sum of the two below.
    pub rss_mb: f64,
    /// Of which anonymous (heap, stacks): where a leak grows, MiB.
    pub rss_anon_mb: Option<f64>,
    /// Of which file-backed: the pages of the executable and its libraries
    /// read so far, which grow as code runs for the first time, up to their
    /// size, and which the kernel may drop and read again, MiB.
    pub rss_file_mb: Option<f64>,
    /// Tokio tasks alive.
    pub tasks: usize,
    /// File descriptors open (sockets included); absent when `/proc/self/fd` cannot be read.
    pub fds: Option<usize>,
    /// Connections open through the fault proxy (absent without one).
    pub proxy_connections: Option<usize>,
}

/// Rounds KiB to MiB with one decimal.
fn mib(kb: u64) -> f64 {
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

impl MemorySamples {
    /// Starts sampling a soak of `duration`: the series gets a sample every
    /// 10 s, or every 1/120 of a longer soak.
    fn start(duration: Duration, connections: Option<Box<dyn Fn() -> usize + Send + Sync>>) -> Self {
        let now = resident().map_or(0, |r| r.total_kb);
        let memory = MemorySamples {
            started: std::time::Instant::now(),
            samples: Mutex::new(Samples {
                start_kb: now,
                first_minute_kb: None,
                last_kb: now,
                max_kb: now,
                series: Vec::new(),
            }),
            sampling: AtomicBool::new(true),
            every: (duration / 120).max(Duration::from_secs(10)),
            connections,
        };
        memory.sample();
        memory
    }

    fn sample(&self) {
        let Some(now) = resident() else {
            if self.sampling.swap(false, Ordering::Relaxed) {
                tracing::warn!("cannot read /proc/self/status: resident memory not sampled");
            }
            return;
        };
        let (kb, elapsed) = (now.total_kb, self.started.elapsed());
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.last_kb = kb;
        samples.max_kb = samples.max_kb.max(kb);
        if samples.first_minute_kb.is_none() && elapsed >= Duration::from_secs(60) {
            samples.first_minute_kb = Some(kb);
        }
        let due = samples.series.len() as u32 * self.every;
        if elapsed >= due {
            let sample = self.sample_now(elapsed, now);
            samples.series.push(sample);
        }
    }

    /// The last sample, taken at the end of the soak whenever it falls.
    fn sample_at_end(&self) {
        self.sample();
        let elapsed = self.started.elapsed();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.series.last().is_none_or(|s| s.t_s < elapsed.as_secs())
            && let Some(now) = resident()
        {
            let sample = self.sample_now(elapsed, now);
            samples.series.push(sample);
        }
    }

    fn sample_now(&self, elapsed: Duration, now: Resident) -> Sample {
        Sample {
            t_s: elapsed.as_secs(),
            rss_mb: mib(now.total_kb),
            rss_anon_mb: now.anon_kb.map(mib),
            rss_file_mb: now.file_kb.map(mib),
            tasks: tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks()),
            fds: std::fs::read_dir("/proc/self/fd").ok().map(Iterator::count),
            proxy_connections: self.connections.as_ref().map(|count| count()),
        }
    }

    async fn sample_every_second(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.sample();
        }
    }

    fn snapshot(&self) -> Samples {
        self.samples.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The process's resident set, KiB, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resident {
    /// `VmRSS`.
    total_kb: u64,
    /// `RssAnon`.
    anon_kb: Option<u64>,
    /// `RssFile` (with `RssShmem`, which the soak has none of).
    file_kb: Option<u64>,
}

fn resident() -> Option<Resident> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_resident(&status)
}

fn parse_resident(status: &str) -> Option<Resident> {
    let field = |name: &str| {
        let line = status
            .lines()
            .find(|l| l.strip_prefix(name).is_some_and(|l| l.starts_with(':')))?;
        line[name.len() + 1..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    };
    Some(Resident {
        total_kb: field("VmRSS")?,
        anon_kb: field("RssAnon"),
        file_kb: field("RssFile").map(|file| file + field("RssShmem").unwrap_or(0)),
    })
}

fn table(s: &SoakSummary) -> String {
    let mb = |v: f64| format!("{v:.1} MiB");
    let rows: Vec<(&str, String)> = vec![
        ("store", s.store.clone()),
        ("duration", format!("{:.1} s", s.duration_s)),
        ("programs", count(s.programs as u64)),
        ("operations", count(s.operations)),
        (
            "faults",
            format!(
                "{} ({} in the store layer, {} restarts, {} latency spikes, {} blackholes)",
                count(s.faults),
                count(s.layer_faults.total()),
                s.network_faults.restarts,
                s.network_faults.latency_spikes,
                s.network_faults.blackholes
            ),
        ),
        ("stale reads", s.stale_reads.to_string()),
        ("stale entries", s.stale_entries.to_string()),
        ("wrong answers", s.wrong_answers.to_string()),
        ("load overlaps", s.load_overlaps.to_string()),
        ("hangs", s.liveness.to_string()),
        ("harness errors", s.harness_errors.to_string()),
        ("rss at start", mb(s.rss_start_mb)),
        (
            "rss after 1 min",
            s.rss_after_first_minute_mb.map_or_else(|| "-".to_owned(), mb),
        ),
        ("rss at end", mb(s.rss_end_mb)),
        ("rss max", mb(s.rss_max_mb)),
        ("keys deleted", s.keys_deleted.to_string()),
    ];
    render(
        &["soak", "result"],
        &rows,
        |(name, value)| vec![(*name).to_owned(), value.clone()],
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_is_read_from_proc_status() {
        let status = "Name:\taside\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nRssAnon:\t    4000 kB\n\
                      RssFile:\t    8300 kB\nRssShmem:\t      45 kB\nThreads:\t4\n";
        let expected = Resident {
            total_kb: 12345,
            anon_kb: Some(4000),
            file_kb: Some(8345),
        };
        assert_eq!(parse_resident(status), Some(expected));
        let old_kernel = parse_resident("VmRSS:\t   12345 kB\n").unwrap();
        assert_eq!((old_kernel.anon_kb, old_kernel.file_kb), (None, None));
        assert_eq!(parse_resident("Name:\taside\n"), None);
        assert!(resident().is_some_and(|r| r.total_kb > 0 && r.anon_kb.is_some()));
    }

    #[test]
    fn only_this_process_keys_are_deleted() {
        let pid = 4242;
        let mine = (pid << 20) | 7;
        assert!(is_this_process_key(&format!("h{mine}-abc:1"), pid));
        assert!(is_this_process_key(&format!("{{h{mine}-abc:1}}#ver"), pid));
        let theirs = ((pid + 1) << 20) | 7;
        assert!(!is_this_process_key(&format!("h{theirs}-abc:1"), pid));
        assert!(!is_this_process_key("hello-world", pid));
        assert!(!is_this_process_key("users:1", pid));
    }
}
