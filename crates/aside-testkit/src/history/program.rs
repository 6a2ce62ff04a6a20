//! Random programs: the namespace configuration under test and the
//! operations each task of each instance runs, all drawn from one seed.
//!
//! Owns what a program *is* (so that it can be printed, replayed and
//! shrunk) and nothing of running or checking it.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fault::FaultRates;

/// An invalidation strategy, as the checker names and draws it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// [`aside::Strategy::Lease`].
    Lease,
    /// [`aside::Strategy::Delete`].
    Delete,
    /// [`aside::Strategy::DoubleDelete`] with [`NsConfig::double_delete_ms`].
    DoubleDelete,
    /// [`aside::Strategy::Versioned`].
    Versioned,
}

impl StrategyKind {
    /// Every strategy.
    pub const ALL: [StrategyKind; 4] = [
        StrategyKind::Lease,
        StrategyKind::Delete,
        StrategyKind::DoubleDelete,
        StrategyKind::Versioned,
    ];

    /// True for the strategies DESIGN section 8 promises I1 and I2 for
    /// (`Lease`, `Versioned`); the others are measured, not promised.
    pub fn promised(self) -> bool {
        matches!(self, StrategyKind::Lease | StrategyKind::Versioned)
    }

    /// The name aside uses (`lease`, `delete`, ...).
    pub fn name(self) -> &'static str {
        match self {
            StrategyKind::Lease => "lease",
            StrategyKind::Delete => "delete",
            StrategyKind::DoubleDelete => "double-delete",
            StrategyKind::Versioned => "versioned",
        }
    }
}

impl std::str::FromStr for StrategyKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        StrategyKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown strategy {s:?}"))
    }
}

/// An early-refresh policy, as drawn.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EarlyRefreshKind {
    /// [`aside::EarlyRefresh::XFetch`] with this beta.
    XFetch(f64),
    /// [`aside::EarlyRefresh::AfterFraction`] with this fraction.
    AfterFraction(f64),
}

/// The namespace configuration every instance of one program builds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NsConfig {
    /// The strategy.
    pub strategy: StrategyKind,
    /// Entry TTL.
    pub ttl_ms: u64,
    /// TTL jitter (0 or 0.1).
    pub jitter: f64,
    /// Lease TTL (and lease wait).
    pub lease_ttl_ms: u64,
    /// Delay of the second delete (`DoubleDelete` only).
    pub double_delete_ms: u64,
    /// L1 TTL, when the namespace has an L1.
    pub l1_ttl_ms: Option<u64>,
    /// Negative caching TTL, when on.
    pub negative_ttl_ms: Option<u64>,
    /// Early refresh, when on.
    pub early_refresh: Option<EarlyRefreshKind>,
    /// Fail-safe `(max_stale, throttle)`, when on.
    pub fail_safe_ms: Option<(u64, u64)>,
    /// Stale serving while loading (`Lease` only), when on.
    pub keep_stale_ms: Option<u64>,
    /// Soft load timeout (with fail-safe), when on.
    pub soft_load_timeout_ms: Option<u64>,
    /// Hard load timeout, when on.
    pub load_timeout_ms: Option<u64>,
    /// The `Aside`'s per-operation store timeout.
    pub op_timeout_ms: u64,
    /// Each instance builds the namespace twice (same name, two handles,
    /// each with its own L1): steps marked `twin` use the second.
    pub twin_namespaces: bool,
    /// The fault layer passes a `MemoryStore`'s synchronous reads through
    /// (`FaultStore::with_shared_reads`): reads take the hit path a plain
    /// `MemoryStore` gives, and draw no fault there. No effect on other
    /// stores. Drawn from the seed's lowest bit, so no other draw moves.
    pub shared_reads: bool,
    /// The namespace uses the article's stampede lock
    /// ([`aside::Stampede::LockSleep`]) instead of single-flight. Drawn
    /// from the seed's bits 1 to 4 (one seed in eight), so no other draw
    /// moves and no seed recorded before it was drawn changes program.
    pub stampede_lock: bool,
}

impl NsConfig {
    /// Draws a configuration with one of `strategies` (all when empty).
    pub fn random(rng: &mut impl Rng, strategies: &[StrategyKind]) -> Self {
        let strategies = if strategies.is_empty() {
            &StrategyKind::ALL[..]
        } else {
            strategies
        };
        // The promised strategies get most of the budget.
        let weights: Vec<u32> = strategies.iter().map(|s| if s.promised() { 3 } else { 1 }).collect();
        let total: u32 = weights.iter().sum();
        let mut roll = rng.random_range(0..total);
        let mut strategy = strategies[0];
        for (s, w) in strategies.iter().zip(&weights) {
            if roll < *w {
                strategy = *s;
                break;
            }
            roll -= w;
        }
        let ttl_ms = [150, 400, 1_000, 2_500][rng.random_range(0..4)];
        let pick = |rng: &mut dyn rand::RngCore, p: f64| rng.random_bool(p);
        NsConfig {
            strategy,
            ttl_ms,
            jitter: if pick(rng, 0.3) { 0.1 } else { 0.0 },
            lease_ttl_ms: [600, 1_500][rng.random_range(0..2)],
            double_delete_ms: [20, 60][rng.random_range(0..2)],
            l1_ttl_ms: pick(rng, 0.55).then(|| if pick(rng, 0.5) { ttl_ms } else { ttl_ms / 2 }),
            negative_ttl_ms: pick(rng, 0.4).then(|| [80, 400, 1_500][rng.random_range(0..3)]),
            early_refresh: pick(rng, 0.35).then(|| {
                if pick(rng, 0.5) {
                    EarlyRefreshKind::AfterFraction([0.3, 0.6][rng.random_range(0..2)])
                } else {
                    EarlyRefreshKind::XFetch([1.0, 50.0][rng.random_range(0..2)])
                }
            }),
            fail_safe_ms: pick(rng, 0.3)
                .then(|| ([500, 2_000][rng.random_range(0..2)], [30, 150][rng.random_range(0..2)])),
            keep_stale_ms: (strategy == StrategyKind::Lease && pick(rng, 0.35))
                .then(|| [200, 1_000][rng.random_range(0..2)]),
            soft_load_timeout_ms: None,
            load_timeout_ms: pick(rng, 0.15).then_some(15),
            op_timeout_ms: 80,
            twin_namespaces: false,
            shared_reads: false,
            stampede_lock: false,
        }
        .with_soft_timeout(rng)
    }

    fn with_soft_timeout(mut self, rng: &mut impl Rng) -> Self {
        if self.fail_safe_ms.is_some() && rng.random_bool(0.5) {
            self.soft_load_timeout_ms = Some(5);
        }
        self.twin_namespaces = self.l1_ttl_ms.is_some() && rng.random_bool(0.2);
        self
    }

    /// True when a stale value may be served by policy (stale serving,
    /// fail-safe): such a value is flagged only by [`aside::Source::Stale`],
    /// which `get_or_load` does not return.
    pub fn may_serve_stale(&self) -> bool {
        self.keep_stale_ms.is_some() || self.fail_safe_ms.is_some()
    }

    /// The aside strategy.
    pub fn aside_strategy(&self) -> aside::Strategy {
        match self.strategy {
            StrategyKind::Lease => aside::Strategy::Lease,
            StrategyKind::Delete => aside::Strategy::Delete,
            StrategyKind::DoubleDelete => aside::Strategy::DoubleDelete {
                delay: Duration::from_millis(self.double_delete_ms),
            },
            StrategyKind::Versioned => aside::Strategy::Versioned,
        }
    }

    /// A short label: `lease+l1+neg+early+failsafe+stale ttl=400ms`.
    pub fn label(&self) -> String {
        let mut s = self.strategy.name().to_owned();
        if self.strategy == StrategyKind::DoubleDelete {
            s.push_str(&format!("({}ms)", self.double_delete_ms));
        }
        if let Some(l1) = self.l1_ttl_ms {
            s.push_str(&format!("+l1({l1}ms)"));
        }
        if let Some(n) = self.negative_ttl_ms {
            s.push_str(&format!("+negative({n}ms)"));
        }
        match self.early_refresh {
            Some(EarlyRefreshKind::XFetch(b)) => s.push_str(&format!("+xfetch({b})")),
            Some(EarlyRefreshKind::AfterFraction(f)) => s.push_str(&format!("+refresh-after({f})")),
            None => {}
        }
        if let Some((max_stale, throttle)) = self.fail_safe_ms {
            s.push_str(&format!("+fail-safe({max_stale}ms,{throttle}ms)"));
        }
        if let Some(soft) = self.soft_load_timeout_ms {
            s.push_str(&format!("+soft-timeout({soft}ms)"));
        }
        if let Some(k) = self.keep_stale_ms {
            s.push_str(&format!("+keep-stale({k}ms)"));
        }
        if let Some(t) = self.load_timeout_ms {
            s.push_str(&format!("+load-timeout({t}ms)"));
        }
        if self.twin_namespaces {
            s.push_str("+twin-namespaces");
        }
        if self.shared_reads {
            s.push_str("+shared-reads");
        }
        if self.stampede_lock {
            s.push_str("+lock-sleep");
        }
        s.push_str(&format!(" ttl={}ms lease={}ms", self.ttl_ms, self.lease_ttl_ms));
        s
    }
}

/// What a write does to a database row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// A new version of the row (recreating it if absent).
    Update,
    /// The row is deleted (a new version, absent).
    Delete,
}

/// One operation of a program.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// `get_or_load`.
    GetOrLoad(u64),
    /// `fetch`.
    Fetch(u64),
    /// `fetch_with(FetchOptions::skip_cache())`.
    FetchSkipCache(u64),
    /// `fetch_with(FetchOptions::force_refresh())`.
    FetchForceRefresh(u64),
    /// `fetch_owned` (background refresh, soft timeout).
    FetchOwned(u64),
    /// `fetch`, cancelled after this many microseconds if not done.
    CancelledFetch(u64, u64),
    /// `read`: through the namespace's registered loader (read-through).
    ReadThrough(u64),
    /// `peek` (cache only).
    Get(u64),
    /// `get_many_or_load`.
    GetMany(Vec<u64>),
    /// `warm` (batches of 2).
    Warm(Vec<u64>),
    /// Database write, then `invalidate`.
    Invalidate(u64, Change),
    /// Database writes, then one `invalidate_many`.
    InvalidateMany(Vec<(u64, Change)>),
    /// Database write of a new version, then `set` of it.
    Set(u64),
    /// `update`: the database write under the key's fence.
    Update(u64, Change),
    /// Database write of a new version, then `write_through` of it with
    /// its version (no row lock between such writers: the store orders them).
    WriteThrough(u64),
    /// A database write nobody invalidates (another program's): the cache
    /// may serve the old row until its TTL, no longer.
    SilentWrite(u64, Change),
}

impl Op {
    /// The keys the operation touches.
    pub fn keys(&self) -> Vec<u64> {
        match self {
            Op::GetOrLoad(k)
            | Op::Fetch(k)
            | Op::FetchSkipCache(k)
            | Op::FetchForceRefresh(k)
            | Op::FetchOwned(k)
            | Op::CancelledFetch(k, _)
            | Op::Get(k)
            | Op::ReadThrough(k)
            | Op::Invalidate(k, _)
            | Op::Update(k, _)
            | Op::SilentWrite(k, _)
            | Op::Set(k)
            | Op::WriteThrough(k) => vec![*k],
            Op::GetMany(keys) | Op::Warm(keys) => keys.clone(),
            Op::InvalidateMany(changes) => changes.iter().map(|(k, _)| *k).collect(),
        }
    }

    /// True for the writes (silent ones included).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Invalidate(..)
                | Op::InvalidateMany(_)
                | Op::Set(_)
                | Op::WriteThrough(_)
                | Op::Update(..)
                | Op::SilentWrite(..)
        )
    }

    /// True for the operations that may invalidate their keys: the writes,
    /// and a forced refresh, which invalidates the key when the value it
    /// reloaded cannot be cached (`aside::FetchOptions::force_refresh`).
    pub fn may_invalidate(&self) -> bool {
        self.is_write() || matches!(self, Op::FetchForceRefresh(_))
    }

    /// The method's name.
    pub fn name(&self) -> &'static str {
        match self {
            Op::GetOrLoad(_) => "get_or_load",
            Op::Fetch(_) => "fetch",
            Op::FetchSkipCache(_) => "fetch_with(skip_cache)",
            Op::FetchForceRefresh(_) => "fetch_with(force_refresh)",
            Op::FetchOwned(_) => "fetch_owned",
            Op::CancelledFetch(..) => "fetch(cancelled)",
            Op::Get(_) => "peek",
            Op::ReadThrough(_) => "read",
            Op::GetMany(_) => "get_many_or_load",
            Op::Warm(_) => "warm",
            Op::Invalidate(..) => "invalidate",
            Op::InvalidateMany(_) => "invalidate_many",
            Op::Set(_) => "set",
            Op::Update(..) => "update",
            Op::WriteThrough(_) => "write_through",
            Op::SilentWrite(..) => "silent write",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::CancelledFetch(k, us) => write!(f, "fetch({k}) cancelled after {us}us"),
            Op::Invalidate(k, c) => write!(f, "db {c:?} {k}; invalidate({k})"),
            Op::InvalidateMany(changes) => {
                let keys: Vec<String> = changes.iter().map(|(k, c)| format!("{c:?} {k}")).collect();
                write!(f, "db [{}]; invalidate_many", keys.join(", "))
            }
            Op::Set(k) => write!(f, "db Update {k}; set({k})"),
            Op::Update(k, c) => write!(f, "update({k}): db {c:?} {k} under its fence"),
            Op::WriteThrough(k) => write!(f, "db Update {k}; write_through({k})"),
            Op::SilentWrite(k, c) => write!(f, "db {c:?} {k} (no invalidation)"),
            op => write!(f, "{}({:?})", op.name(), op.keys()),
        }
    }
}

/// One step of one task: a think time, then an operation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// The instance (process) that runs it.
    pub instance: usize,
    /// The task of that instance.
    pub task: usize,
    /// Microseconds to wait before the operation.
    pub think_us: u64,
    /// The operation.
    pub op: Op,
    /// Run it on the instance's second handle of the namespace (with
    /// [`NsConfig::twin_namespaces`]).
    pub twin: bool,
}

/// A whole program: seed, configuration, faults, and steps (each task runs
/// its steps in order; tasks run concurrently).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Program {
    /// The seed it was drawn from (faults draw from it too).
    pub seed: u64,
    /// The namespace configuration.
    pub config: NsConfig,
    /// Fault rates.
    pub faults: FaultRates,
    /// How many `Aside` instances.
    pub instances: usize,
    /// Keys `1..=keys`.
    pub keys: u64,
    /// Keys whose row exists at the start.
    pub initially_present: Vec<u64>,
    /// The steps, grouped by nothing in particular (see [`Program::tasks`]).
    pub steps: Vec<Step>,
}

/// How a program is drawn.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    /// `Aside` instances (at least 3 for the checker's purpose).
    pub instances: usize,
    /// Concurrent tasks per instance.
    pub tasks_per_instance: usize,
    /// Operations per task.
    pub ops_per_task: usize,
    /// Strategies to draw from (all when empty).
    pub strategies: Vec<StrategyKind>,
    /// Inject faults (pauses are always on).
    pub faults: bool,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            instances: 3,
            tasks_per_instance: 3,
            ops_per_task: 30,
            strategies: Vec::new(),
            faults: true,
        }
    }
}

impl Program {
    /// Draws the program of `seed`.
    pub fn generate(seed: u64, shape: &Shape) -> Program {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut config = NsConfig::random(&mut rng, &shape.strategies);
        config.shared_reads = seed & 1 == 1;
        // Bits 1 to 4 of 8 or 12: none of the seeds in docs/HISTORY.md.
        config.stampede_lock = (seed >> 1) & 0b1011 == 0b1000;
        let faults = if !shape.faults {
            FaultRates::none()
        } else {
            match rng.random_range(0..10) {
                0..=1 => FaultRates::none(),
                2..=4 => FaultRates::default().scaled(0.5),
                5..=8 => FaultRates::default(),
                _ => FaultRates::default().scaled(2.5),
            }
        };
        let mut faults = faults;
        if config.fail_safe_ms.is_some() {
            // Fail-safe acts when loads fail: let them.
            faults.db_error = (faults.db_error * 5.0).min(0.3);
        }
        let keys = rng.random_range(3..=4u64);
        let initially_present = (1..=keys).filter(|_| rng.random_bool(0.8)).collect();
        let mut steps = Vec::new();
        for instance in 0..shape.instances {
            for task in 0..shape.tasks_per_instance {
                for _ in 0..shape.ops_per_task {
                    let think_us = match rng.random_range(0..100) {
                        0..=64 => rng.random_range(0..500),
                        65..=94 => rng.random_range(1_000..5_000),
                        _ => rng.random_range(20_000..120_000),
                    };
                    let op = random_op(&mut rng, keys);
                    let twin = rng.random_bool(0.5);
                    steps.push(Step {
                        instance,
                        task,
                        think_us,
                        op,
                        twin,
                    });
                }
            }
        }
        Program {
            seed,
            config,
            faults,
            instances: shape.instances,
            keys,
            initially_present,
            steps,
        }
    }

    /// The steps of each `(instance, task)`, in order.
    pub fn tasks(&self) -> Vec<((usize, usize), Vec<Step>)> {
        let mut tasks: std::collections::BTreeMap<(usize, usize), Vec<Step>> = Default::default();
        for step in &self.steps {
            tasks.entry((step.instance, step.task)).or_default().push(step.clone());
        }
        tasks.into_iter().collect()
    }

    /// The program with only `steps`.
    pub fn with_steps(&self, steps: Vec<Step>) -> Program {
        Program { steps, ..self.clone() }
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "program seed={} config: {} | {} instances, keys 1..={} (present at start: {:?}), {} steps, faults x{:.1}",
            self.seed,
            self.config.label(),
            self.instances,
            self.keys,
            self.initially_present,
            self.steps.len(),
            self.faults.error_before / FaultRates::default().error_before,
        )?;
        for ((instance, task), steps) in self.tasks() {
            let ops: Vec<String> = steps
                .iter()
                .map(|s| {
                    let twin = if s.twin && self.config.twin_namespaces {
                        " (twin)"
                    } else {
                        ""
                    };
                    format!("[+{}us] {}{twin}", s.think_us, s.op)
                })
                .collect();
            writeln!(f, "  p{instance}.t{task}: {}", ops.join("; "))?;
        }
        Ok(())
    }
}

fn random_keys(rng: &mut StdRng, keys: u64) -> Vec<u64> {
    let n = rng.random_range(2..=keys.min(3));
    let mut out: Vec<u64> = Vec::new();
    while out.len() < n as usize {
        let k = rng.random_range(1..=keys);
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

fn random_change(rng: &mut StdRng) -> Change {
    if rng.random_bool(0.2) {
        Change::Delete
    } else {
        Change::Update
    }
}

fn random_op(rng: &mut StdRng, keys: u64) -> Op {
    let k = rng.random_range(1..=keys);
    match rng.random_range(0..100) {
        0..=9 => Op::GetOrLoad(k),
        10..=14 => Op::ReadThrough(k),
        15..=27 => Op::Fetch(k),
        28..=34 => Op::FetchOwned(k),
        35..=43 => Op::Get(k),
        44..=49 => Op::GetMany(random_keys(rng, keys)),
        50..=51 => Op::Warm(random_keys(rng, keys)),
        52..=54 => Op::FetchSkipCache(k),
        55..=58 => Op::FetchForceRefresh(k),
        59..=63 => Op::CancelledFetch(k, rng.random_range(0..3_000)),
        64..=72 => Op::Invalidate(k, random_change(rng)),
        73..=77 => Op::Update(k, random_change(rng)),
        78..=81 => Op::SilentWrite(k, random_change(rng)),
        82..=87 => {
            let keys = random_keys(rng, keys);
            Op::InvalidateMany(keys.into_iter().map(|k| (k, random_change(rng))).collect())
        }
        88..=93 => Op::Set(k),
        _ => Op::WriteThrough(k),
    }
}
