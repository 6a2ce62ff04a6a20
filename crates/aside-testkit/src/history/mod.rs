//! The history checker of issue 12: random programs over the whole public
//! API of a namespace, run by several `Aside` instances ("processes")
//! sharing one store and one bus through the [`crate::fault`] layer, with
//! every operation recorded and the invariants of DESIGN section 8 checked
//! on the history.
//!
//! Owns campaigns (many programs, one per seed), shrinking a failing
//! program, and the report; the parts are [`program`] (what a program is),
//! `record` (the history and the fake database), `run` (running one
//! program, quiescence, I2) and `check` (I1, I3, liveness).
//!
//! - **Programs.** Keys `1..=3` or `4`; a database row per key with a
//!   version bumped by every write (which may delete or recreate the row).
//!   Three instances (by default) build the namespace with one
//!   configuration drawn from the seed: every strategy, L1 on or off,
//!   negative caching, early refresh, fail-safe, stale serving, a load
//!   timeout, TTLs short enough to expire. Three tasks per instance run
//!   random operations: `get_or_load`, `fetch`, `fetch_with(skip_cache)`,
//!   `fetch_with(force_refresh)`, `fetch_owned`, a cancelled `fetch`,
//!   `read` (through the loader every namespace registers: read-through),
//!   `peek` (cache only), `get_many_or_load`, `warm`, and writes: database write then
//!   `invalidate`, `invalidate_many`, `set`, or `write_through` with the
//!   row's version; `update` (the database write under the key's fence);
//!   and silent writes (another
//!   program's, never invalidated). Loaders read the row at the moment they
//!   run, with seeded delays before and after (a slow query), and fail when
//!   the plan injects a database error. Some configurations build the
//!   namespace twice per instance (two handles of one name, each its L1).
//! - **Writers and the row lock.** Two `set`s of one key can legitimately
//!   reach the store in the other order than the database (the last store
//!   write wins); so, standing for the database's row lock, a `set` holds a
//!   per-key lock exclusively across its database write and the `set`, and
//!   an invalidating writer holds it shared across its database write and
//!   the invalidation (invalidations commute).
//! - **Invariants.** I1: no read returns a version older than the newest
//!   write whose `invalidate`/`set` returned `Ok` before the read began (in
//!   the writer's own instance, an `Err` counts too: the failed
//!   invalidation is queued and that instance's reads must bypass the
//!   cache); with an L1, other instances up to the bus's delivery (see
//!   `check`). I2: after quiescence (faults off, background loads done,
//!   replays drained, delayed deletes run, a sentinel delivered by the bus
//!   to every instance) the store, `get` and a load through every instance
//!   agree with the database. I3: at most one load per key per instance at
//!   a time, unless a write, restart or store fault in between explains a
//!   second flight. I1 and I2 are not promised across a store restart that
//!   erased a newer write and its mark while an older `write_through` of
//!   the key was in flight across it (`check::across_restart`: measured, not failed).
//!   I4: no value (tombstone) is served past its TTL
//!   (negative TTL) once the database moved on. Liveness: no operation
//!   hangs, quiescence is reached.
//!   `Lease` and `Versioned` promise I1 and I2; under `Delete` and
//!   `DoubleDelete` their violations are measured, not failures.
//! - **Replay and shrinking.** A failing program is printed with its seed
//!   and configuration and shrunk by delta debugging (chunks of steps
//!   dropped while it still fails, in any of 3 attempts: interleavings
//!   vary). `ASIDE_HISTORY_SEED=<seed>` replays one seed,
//!   `ASIDE_HISTORY_CASES=N` sets the programs per store
//!   ([`CampaignConfig::from_env`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

mod check;
pub mod program;
mod record;
mod run;

pub use check::{Invariant, Violation};
pub use program::{Change, EarlyRefreshKind, NsConfig, Op, Program, Shape, Step, StrategyKind};
pub use record::{
    Db, Delivery, DeliveryEvent, History, KeyState, LoadGuard, LoadKind, LoadRecord, OpRecord, Outcome, Recorder, Row,
};
pub use run::{
    BusSpec, ConnectFn, DbDown, FaultSwitch, ProgramRun, RunStats, StoreSpec, memcached_flush_all, redis_flushall,
};

use crate::fault::FaultCounts;

/// What [`run_campaign`] reports after each program.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    /// The store's name.
    pub store: String,
    /// Programs run so far.
    pub done: usize,
    /// Programs to run.
    pub total: usize,
    /// The seed just run.
    pub seed: u64,
    /// Its configuration.
    pub config: String,
    /// Violations of promises it found.
    pub failures: usize,
    /// Violations measured (not promised) it found.
    pub measured: usize,
    /// Faults it injected.
    pub faults: u64,
    /// Its operations.
    pub operations: u64,
    /// Milliseconds it took.
    pub elapsed_ms: u64,
    /// True while shrinking a failing program (`done` counts shrink runs then).
    pub shrinking: bool,
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// What to run.
#[derive(Clone)]
pub struct CampaignConfig {
    /// The store.
    pub store: StoreSpec,
    /// The bus (default: [`StoreSpec::default_bus`]).
    pub bus: BusSpec,
    /// Programs to run.
    pub cases: usize,
    /// Seeds: program `i` runs seed `mix(base_seed + i)`.
    pub base_seed: u64,
    /// When set, run exactly this seed instead (`repeat` times: races do
    /// not fire on every run).
    pub replay: Option<u64>,
    /// Runs of the replayed seed.
    pub repeat: usize,
    /// How programs are drawn.
    pub shape: Shape,
    /// Shrink the first failing program.
    pub shrink: bool,
    /// At most this many runs while shrinking.
    pub max_shrink_runs: usize,
    /// Stop starting programs after this long (shrinking included).
    pub time_budget: Option<Duration>,
    /// The longest another instance's L1 may lag a write without a bus delivery.
    pub bus_lag: Duration,
    /// Called after every program.
    pub progress: Option<ProgressFn>,
    /// Told when each program's faults are switched on and off (see
    /// [`FaultSwitch`]): for faults injected outside the fault layer.
    pub fault_switch: Option<FaultSwitch>,
}

impl std::fmt::Debug for CampaignConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CampaignConfig")
            .field("store", &self.store)
            .field("bus", &self.bus)
            .field("cases", &self.cases)
            .field("base_seed", &self.base_seed)
            .field("replay", &self.replay)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// The default base seed (programs are the same from run to run unless it changes).
pub const DEFAULT_BASE_SEED: u64 = 0x00a5_1de0_0012;

impl CampaignConfig {
    /// `cases` programs on `store`, with the defaults.
    pub fn new(store: StoreSpec, cases: usize) -> Self {
        CampaignConfig {
            bus: store.default_bus(),
            store,
            cases,
            base_seed: DEFAULT_BASE_SEED,
            replay: None,
            repeat: 1,
            shape: Shape::default(),
            shrink: true,
            max_shrink_runs: 40,
            time_budget: None,
            bus_lag: Duration::from_secs(1),
            progress: None,
            fault_switch: None,
        }
    }

    /// As [`CampaignConfig::new`], with from the environment:
    /// `ASIDE_HISTORY_SEED` (replay one seed, decimal or `0x` hex;
    /// `ASIDE_HISTORY_REPEAT=N` runs it N times),
    /// `ASIDE_HISTORY_CASES` (programs instead of `default_cases`),
    /// `ASIDE_HISTORY_BUDGET_SECS` (stop starting programs after that long),
    /// `ASIDE_HISTORY_BASE_SEED`, `ASIDE_HISTORY_SHRINK=0` (no shrinking) and
    /// `ASIDE_HISTORY_STRATEGIES=lease,versioned` (strategies to draw from).
    pub fn from_env(store: StoreSpec, default_cases: usize) -> Self {
        let mut config = Self::new(store, default_cases);
        let parse = |name: &str| -> Option<u64> {
            let raw = std::env::var(name).ok()?;
            let raw = raw.trim();
            match raw.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => raw.parse().ok(),
            }
        };
        if let Some(cases) = parse("ASIDE_HISTORY_CASES") {
            config.cases = cases as usize;
        }
        if let Some(secs) = parse("ASIDE_HISTORY_BUDGET_SECS") {
            config.time_budget = Some(Duration::from_secs(secs));
        }
        if let Some(base) = parse("ASIDE_HISTORY_BASE_SEED") {
            config.base_seed = base;
        }
        config.replay = parse("ASIDE_HISTORY_SEED");
        if let Some(n) = parse("ASIDE_HISTORY_REPEAT") {
            config.repeat = (n as usize).max(1);
        }
        if std::env::var("ASIDE_HISTORY_SHRINK").is_ok_and(|v| v == "0") {
            config.shrink = false;
        }
        if let Ok(list) = std::env::var("ASIDE_HISTORY_STRATEGIES") {
            config.shape.strategies = list.split(',').filter_map(|s| s.trim().parse().ok()).collect();
        }
        config
    }

    /// The seed of program `i`.
    pub fn seed(&self, i: usize) -> u64 {
        match self.replay {
            Some(seed) => seed,
            None => mix(self.base_seed.wrapping_add(i as u64)),
        }
    }

    /// The environment variables that replay `seed` with this configuration's shape.
    pub fn replay_env(&self, seed: u64) -> String {
        let mut env = format!("ASIDE_HISTORY_SEED={seed}");
        if !self.shape.strategies.is_empty() {
            let names: Vec<&str> = self.shape.strategies.iter().map(|s| s.name()).collect();
            env.push_str(&format!(" ASIDE_HISTORY_STRATEGIES={}", names.join(",")));
        }
        env
    }

    fn programs(&self) -> usize {
        if self.replay.is_some() { self.repeat } else { self.cases }
    }
}

/// SplitMix64: spreads consecutive numbers over the seed space.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Tallies of one strategy.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StrategyTally {
    /// Programs run with it.
    pub programs: usize,
    /// Stale reads (I1) found.
    pub stale_reads: u64,
    /// Stale entries (I2) found.
    pub stale_entries: u64,
    /// Other failures (I3, liveness).
    pub other: u64,
}

/// A failing program, as reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailedProgram {
    /// Its seed.
    pub seed: u64,
    /// The environment that replays it: `ASIDE_HISTORY_SEED=<seed>`, with
    /// `ASIDE_HISTORY_STRATEGIES` when the campaign drew from fewer strategies.
    pub replay: String,
    /// Its configuration.
    pub config: String,
    /// Violations of promises it found.
    pub violations: usize,
    /// The first few, with their history excerpts.
    pub first: Vec<Violation>,
    /// The smallest program found that still fails, if it was shrunk.
    pub shrunk: Option<Shrunk>,
}

/// The outcome of shrinking.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shrunk {
    /// Steps left (of the original's).
    pub steps: usize,
    /// Steps of the original.
    pub original_steps: usize,
    /// Runs it took.
    pub runs: usize,
    /// The program, printed.
    pub program: String,
    /// A violation of its last failing run.
    pub violation: Option<Violation>,
}

/// What a campaign found: what `aside demo --scenario chaos --json` prints.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CampaignReport {
    /// The store's name.
    pub store: String,
    /// `Aside` instances per program.
    pub instances: usize,
    /// Programs run (shrink runs not included).
    pub programs: usize,
    /// Operations run.
    pub operations: u64,
    /// Faults injected, in all.
    pub faults: u64,
    /// Faults injected, by kind.
    pub faults_by_kind: FaultCounts,
    /// Stale reads (I1) under promising strategies.
    pub stale_reads: u64,
    /// Stale entries after quiescence (I2) under promising strategies.
    pub stale_entries: u64,
    /// Overlapping loads in one instance (I3).
    pub load_overlaps: u64,
    /// Hangs and quiescence never reached.
    pub liveness: u64,
    /// Reads that returned the row of another key.
    pub wrong_answers: u64,
    /// Harness failures (connections, tasks).
    pub harness_errors: u64,
    /// Stale reads measured under `Delete` / `DoubleDelete` (not promised).
    pub measured_stale_reads: u64,
    /// Stale entries measured under `Delete` / `DoubleDelete` (not promised).
    pub measured_stale_entries: u64,
    /// Stale reads and entries a store restart explains (see
    /// [`Violation::across_restart`]): measured, not promised, and not
    /// counted in the two fields above.
    pub across_restarts: u64,
    /// Overlapping loads in one instance explained by a write, restart or fault.
    pub load_overlaps_excused: u64,
    /// Overlapping loads of one key in different instances.
    pub cross_instance_overlaps: u64,
    /// Unexplained overlaps of a batch's load with another load in one
    /// instance (measured, not failed: see docs/HISTORY.md, "Open").
    pub batch_load_overlaps: u64,
    /// Database reads.
    pub db_reads: u64,
    /// Cache reads (calls).
    pub calls: u64,
    /// Store calls through the fault layer.
    pub store_calls: u64,
    /// Operations slower than their lease TTL.
    pub slow_ops: u64,
    /// Milliseconds the campaign took.
    pub elapsed_ms: u64,
    /// Per strategy.
    pub by_strategy: BTreeMap<String, StrategyTally>,
    /// The failing programs.
    pub failures: Vec<FailedProgram>,
}

impl CampaignReport {
    /// True when no promise was broken.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// One line: programs, operations, faults, findings.
    pub fn summary(&self) -> String {
        format!(
            "history on {}: {} programs x {} instances, {} operations, {} faults injected ({} errors before, {} after, {} delays, {} hangs, {} restarts, {} bus faults, {} db errors), {} stale reads, {} stale entries, {} wrong answers, {} load overlaps, {} liveness, {} harness errors; measured: {} stale reads and {} stale entries under delete/double-delete, {} stale reads or entries across a store restart, {} overlapping loads explained by faults or writes, {} across instances, {} unexplained batch overlaps, {} operations slower than the lease TTL; db reads per call {:.3}; {:.1} s; failing seeds: {:?}",
            self.store,
            self.programs,
            self.instances,
            self.operations,
            self.faults,
            self.faults_by_kind.error_before,
            self.faults_by_kind.error_after,
            self.faults_by_kind.delay,
            self.faults_by_kind.hang_before + self.faults_by_kind.hang_after,
            self.faults_by_kind.restart,
            self.faults_by_kind.bus_error_before
                + self.faults_by_kind.bus_error_after
                + self.faults_by_kind.bus_delay
                + self.faults_by_kind.bus_drop
                + self.faults_by_kind.bus_subscribe_error,
            self.faults_by_kind.db_error,
            self.stale_reads,
            self.stale_entries,
            self.wrong_answers,
            self.load_overlaps,
            self.liveness,
            self.harness_errors,
            self.measured_stale_reads,
            self.measured_stale_entries,
            self.across_restarts,
            self.load_overlaps_excused,
            self.cross_instance_overlaps,
            self.batch_load_overlaps,
            self.slow_ops,
            if self.calls == 0 {
                0.0
            } else {
                self.db_reads as f64 / self.calls as f64
            },
            self.elapsed_ms as f64 / 1000.0,
            self.failures.iter().map(|f| f.seed).collect::<Vec<_>>(),
        )
    }

    fn add(&mut self, strategy: StrategyKind, run: &ProgramRun) {
        let s = &run.stats;
        self.programs += 1;
        self.operations += s.operations;
        self.faults += s.faults.total();
        self.faults_by_kind.add(&s.faults);
        self.db_reads += s.db_reads;
        self.calls += s.calls;
        self.store_calls += s.store_calls;
        self.slow_ops += s.slow_ops;
        self.load_overlaps_excused += s.load_overlaps_excused;
        self.cross_instance_overlaps += s.cross_instance_overlaps;
        self.batch_load_overlaps += s.batch_load_overlaps;
        let tally = self.by_strategy.entry(strategy.name().to_owned()).or_default();
        tally.programs += 1;
        for v in &run.violations {
            let i = v.invariant;
            match (v.promised, i) {
                _ if v.across_restart => self.across_restarts += 1,
                (true, i) if i.is_stale_read() => self.stale_reads += 1,
                (true, i) if i.is_stale_entry() => self.stale_entries += 1,
                (false, i) if i.is_stale_read() => self.measured_stale_reads += 1,
                (false, i) if i.is_stale_entry() => self.measured_stale_entries += 1,
                (_, Invariant::I3) => self.load_overlaps += 1,
                (_, Invariant::Liveness) => self.liveness += 1,
                (_, Invariant::WrongAnswer) => self.wrong_answers += 1,
                (_, Invariant::Harness) => self.harness_errors += 1,
                _ => {}
            }
            if i.is_stale_read() {
                tally.stale_reads += 1;
            } else if i.is_stale_entry() {
                tally.stale_entries += 1;
            } else {
                tally.other += 1;
            }
        }
    }
}

impl std::fmt::Display for FailedProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "FAILED seed={} ({} replays it) config: {} -- {} violation(s); the first:",
            self.seed, self.replay, self.config, self.violations
        )?;
        for v in &self.first {
            write!(f, "  {v}")?;
        }
        if let Some(shrunk) = &self.shrunk {
            writeln!(
                f,
                "  shrunk from {} to {} steps in {} runs:",
                shrunk.original_steps, shrunk.steps, shrunk.runs
            )?;
            for line in shrunk.program.lines() {
                writeln!(f, "    {line}")?;
            }
            if let Some(v) = &shrunk.violation {
                write!(f, "  its violation: {v}")?;
            }
        }
        Ok(())
    }
}

/// Runs one program on `store` (and `bus`) and checks it.
pub async fn run_program(program: &Program, store: &StoreSpec, bus: &BusSpec, bus_lag: Duration) -> ProgramRun {
    let env = run::RunEnv {
        store: store.clone(),
        bus: bus.clone(),
        bus_lag,
        run_id: run_id(),
        fault_switch: None,
    };
    run::run_program(program, &env).await
}

/// Runs one program of `config`'s campaign and checks it.
async fn run_in_campaign(program: &Program, config: &CampaignConfig) -> ProgramRun {
    let env = run::RunEnv {
        store: config.store.clone(),
        bus: config.bus.clone(),
        bus_lag: config.bus_lag,
        run_id: run_id(),
        fault_switch: config.fault_switch.clone(),
    };
    run::run_program(program, &env).await
}

/// A number unique to this call in this process, so that namespaces of
/// different runs never share keys on a shared server.
fn run_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let pid = u64::from(std::process::id());
    (pid << 20) | NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Runs a campaign: `config.cases` programs (or the one replayed), each
/// checked; shrinks the first failing one.
pub async fn run_campaign(config: &CampaignConfig) -> CampaignReport {
    let started = Instant::now();
    let mut report = CampaignReport {
        store: config.store.name(),
        instances: config.shape.instances,
        ..CampaignReport::default()
    };
    let total = config.programs();
    let over_budget = || config.time_budget.is_some_and(|b| started.elapsed() >= b);
    for i in 0..total {
        if over_budget() {
            break;
        }
        let seed = config.seed(i);
        let program = Program::generate(seed, &config.shape);
        let run = run_in_campaign(&program, config).await;
        report.add(program.config.strategy, &run);
        let failures: Vec<Violation> = run.violations.iter().filter(|v| v.fails()).cloned().collect();
        if let Some(progress) = &config.progress {
            progress(&Progress {
                store: report.store.clone(),
                done: i + 1,
                total,
                seed,
                config: program.config.label(),
                failures: failures.len(),
                measured: run.violations.len() - failures.len(),
                faults: run.stats.faults.total(),
                operations: run.stats.operations,
                elapsed_ms: run.stats.elapsed_ms,
                shrinking: false,
            });
        }
        if failures.is_empty() {
            continue;
        }
        let shrunk = if config.shrink && report.failures.iter().all(|f| f.shrunk.is_none()) && !over_budget() {
            Some(shrink(config, &program, failures[0].invariant).await)
        } else {
            None
        };
        report.failures.push(FailedProgram {
            seed,
            replay: config.replay_env(seed),
            config: program.config.label(),
            violations: failures.len(),
            first: failures.into_iter().take(3).collect(),
            shrunk,
        });
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

/// Delta debugging over the steps: drops chunks while the program still
/// fails with `invariant` in any of 3 attempts.
async fn shrink(config: &CampaignConfig, program: &Program, invariant: Invariant) -> Shrunk {
    let started = Instant::now();
    let mut steps = program.steps.clone();
    let mut runs = 0;
    let mut last: Option<Violation> = None;
    let mut n = 2usize;
    let budget_left = |runs: usize| runs < config.max_shrink_runs && started.elapsed() < Duration::from_secs(120);
    'outer: while steps.len() > 1 && budget_left(runs) {
        let chunk = steps.len().div_ceil(n);
        let mut reduced = false;
        for i in 0..n {
            let lo = i * chunk;
            if lo >= steps.len() {
                break;
            }
            let hi = (lo + chunk).min(steps.len());
            let candidate: Vec<_> = steps[..lo].iter().chain(&steps[hi..]).cloned().collect();
            if candidate.is_empty() {
                continue;
            }
            let trial = program.with_steps(candidate.clone());
            for _attempt in 0..3 {
                if !budget_left(runs) {
                    break 'outer;
                }
                runs += 1;
                let run = run_in_campaign(&trial, config).await;
                if let Some(progress) = &config.progress {
                    progress(&Progress {
                        store: config.store.name(),
                        done: runs,
                        total: config.max_shrink_runs,
                        seed: program.seed,
                        config: program.config.label(),
                        failures: run.violations.iter().filter(|v| v.fails()).count(),
                        measured: 0,
                        faults: run.stats.faults.total(),
                        operations: run.stats.operations,
                        elapsed_ms: run.stats.elapsed_ms,
                        shrinking: true,
                    });
                }
                if let Some(v) = run.violations.iter().find(|v| v.fails() && v.invariant == invariant) {
                    last = Some(v.clone());
                    steps = candidate.clone();
                    reduced = true;
                    break;
                }
            }
            if reduced {
                break;
            }
        }
        if reduced {
            n = n.saturating_sub(1).max(2);
        } else if n >= steps.len() {
            break;
        } else {
            n = (n * 2).min(steps.len());
        }
    }
    let smallest = program.with_steps(steps);
    Shrunk {
        steps: smallest.steps.len(),
        original_steps: program.steps.len(),
        runs,
        program: smallest.to_string(),
        violation: last,
    }
}
