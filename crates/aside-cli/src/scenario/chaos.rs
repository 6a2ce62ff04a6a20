//! `--scenario chaos`: the history checker of the test kit as a run to watch.
//!
//! Owns turning the demo's flags into a campaign of
//! `aside_testkit::history` (three `Aside` instances with an L1 and a bus
//! per program, random operations of every kind, faults injected by the
//! wrappers of the store and the bus, the bus connection dropped), printing
//! its progress on stderr and reporting what the checker found (JSON or
//! its table). The checker
//! itself (programs, faults, invariants, shrinking) lives in the test kit,
//! so this scenario and `cargo test --test history` run the same code.
//!
//! A server named on the command line is never flushed or restarted: its
//! programs inject every fault but the store restart.

use std::sync::Arc;
use std::time::Duration;

use aside_testkit::history::{self, CampaignConfig, CampaignReport, Progress, StoreSpec};
use serde::Serialize;

use super::common::Setting;
use crate::error::{CliError, Result};
use crate::store::StoreChoice;
use crate::table::render;

/// Settings of one chaos run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Stop starting programs after this long.
    pub duration: Duration,
    /// At most this many programs.
    pub programs: usize,
    /// Print each program's outcome on stderr.
    pub chatty: bool,
    /// Replay this seed only.
    pub seed: Option<u64>,
}

/// One run's figures, as `--json` prints them.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosResult {
    /// The run (1-based).
    pub run: u32,
    /// `Aside` instances per program, each standing for a process.
    pub instances: usize,
    /// Programs run.
    pub programs: usize,
    /// Operations run.
    pub operations: u64,
    /// Faults injected.
    pub faults: u64,
    /// Faults injected, by kind.
    pub faults_by_kind: aside_testkit::fault::FaultCounts,
    /// Reads that returned a value older than a write that had returned
    /// before they began, under the strategies that promise none (I1).
    pub stale_reads: u64,
    /// Entries that disagreed with the database after quiescence (I2).
    pub stale_entries: u64,
    /// Loads of one key overlapping in one instance (I3).
    pub load_overlaps: u64,
    /// Operations that hung, or quiescence never reached.
    pub liveness: u64,
    /// Stale reads measured under `delete` and `double-delete`, which promise nothing.
    pub measured_stale_reads: u64,
    /// Stale entries measured under `delete` and `double-delete`.
    pub measured_stale_entries: u64,
    /// Database reads.
    pub db_reads: u64,
    /// Cache reads.
    pub calls: u64,
    /// Seeds of the failing programs (`ASIDE_HISTORY_SEED` or `--seed` replays one).
    pub failing_seeds: Vec<u64>,
    /// The smallest failing program found, printed.
    pub shrunk: Option<String>,
    /// Seconds the run took.
    pub seconds: f64,
}

impl ChaosResult {
    fn new(run: u32, report: &CampaignReport) -> Self {
        ChaosResult {
            run,
            instances: report.instances,
            programs: report.programs,
            operations: report.operations,
            faults: report.faults,
            faults_by_kind: report.faults_by_kind,
            stale_reads: report.stale_reads,
            stale_entries: report.stale_entries,
            load_overlaps: report.load_overlaps,
            liveness: report.liveness,
            measured_stale_reads: report.measured_stale_reads,
            measured_stale_entries: report.measured_stale_entries,
            db_reads: report.db_reads,
            calls: report.calls,
            failing_seeds: report.failures.iter().map(|f| f.seed).collect(),
            shrunk: report
                .failures
                .iter()
                .find_map(|f| f.shrunk.as_ref().map(|s| s.program.clone())),
            seconds: report.elapsed_ms as f64 / 1000.0,
        }
    }
}

/// Runs `--runs` campaigns and prints their results.
///
/// # Errors
/// A store the campaigns could not drive, or broken promises (with the
/// seeds that replay them).
pub async fn run(setting: &Setting) -> Result<()> {
    let (args, store) = (&setting.args, &setting.store);
    let chaos = ChaosOptions {
        duration: Duration::from_secs_f64(setting.duration.unwrap_or(20.0)),
        programs: args.programs as usize,
        chatty: setting.chatty(),
        seed: args.seed,
    };
    let mut results = Vec::new();
    for run in 1..=args.runs {
        if setting.chatty() {
            eprintln!(
                "chaos run {run}/{}: 3 instances with an L1 and a bus on {}, faults injected, {:?} ...",
                args.runs,
                store.name(),
                chaos.duration
            );
        }
        results.push(run_chaos(store, run, &chaos).await?);
    }
    let failed: Vec<u64> = results.iter().flat_map(|r| r.failing_seeds.clone()).collect();
    setting.print("chaos", &results, table)?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "the checker found broken promises; replay with --seed: {failed:#x?}"
        )))
    }
}

/// The store a campaign runs on. Servers named by the user are never
/// restarted (nor flushed): no `restart` is given.
fn store_spec(store: &StoreChoice) -> Result<StoreSpec> {
    Ok(match store {
        StoreChoice::Memory(_) => StoreSpec::Memory,
        StoreChoice::Redis(target) if !target.has_tls_files() => StoreSpec::Redis {
            url: target.url.clone(),
            restart: None,
        },
        // The history checker connects by URL only.
        StoreChoice::Redis(_) => {
            return Err(CliError::new(
                "--scenario chaos does not take --redis-ca, --redis-cert or --redis-key yet",
            ));
        }
        StoreChoice::RedisSentinel { .. } => {
            return Err(CliError::new("--scenario chaos does not take --redis-sentinel yet"));
        }
        StoreChoice::Memcached(addrs) => StoreSpec::Memcached {
            addr: addrs.clone(),
            restart: None,
        },
        StoreChoice::RedisCluster(_, tls) if tls.redis_ca.is_some() || tls.redis_cert.is_some() => {
            return Err(CliError::new(
                "--scenario chaos does not take --redis-ca, --redis-cert or --redis-key yet",
            ));
        }
        StoreChoice::RedisCluster(urls, _) => {
            let urls = urls.clone();
            StoreSpec::Custom {
                name: "redis-cluster".to_owned(),
                connect: Arc::new(move || {
                    let urls = urls.clone();
                    Box::pin(async move {
                        let store = aside::store::redis::RedisStore::connect_cluster(&urls).await?;
                        Ok(Arc::new(store) as Arc<dyn aside::Store>)
                    })
                }),
                restart: None,
            }
        }
    })
}

/// Runs one campaign on `store`.
///
/// # Errors
/// TLS files or Sentinel (the history checker connects by URL only);
/// otherwise none of its own: a store that cannot be reached shows as harness errors in the
/// report, which [`run_chaos`]'s caller turns into an error.
pub async fn run_chaos(store: &StoreChoice, run: u32, options: &ChaosOptions) -> Result<ChaosResult> {
    let mut config = CampaignConfig::new(store_spec(store)?, options.programs);
    config.time_budget = Some(options.duration);
    config.replay = options.seed;
    if options.chatty {
        config.progress = Some(Arc::new(|p: &Progress| {
            if p.shrinking {
                eprintln!("chaos: shrinking seed {:#x}, run {}", p.seed, p.done);
                return;
            }
            eprintln!(
                "chaos: program {}/{} seed {:#x} [{}]: {} operations, {} faults, {} in {} ms",
                p.done,
                p.total,
                p.seed,
                p.config,
                p.operations,
                p.faults,
                if p.failures == 0 {
                    "promises kept".to_owned()
                } else {
                    format!("{} VIOLATIONS", p.failures)
                },
                p.elapsed_ms
            );
        }));
    }
    let report = history::run_campaign(&config).await;
    if report.programs == 0 || report.harness_errors > report.programs as u64 {
        return Err(CliError::new(format!(
            "the chaos run could not drive {}: {}",
            store.name(),
            report.summary()
        )));
    }
    if options.chatty {
        eprintln!("{}", report.summary());
    }
    Ok(ChaosResult::new(run, &report))
}

/// The results, one row per run.
fn table(results: &[ChaosResult]) -> String {
    let headers = [
        "run",
        "instances",
        "programs",
        "operations",
        "faults",
        "stale reads",
        "stale entries",
        "load overlaps",
        "hangs",
        "db reads / calls",
        "measured (delete)",
    ];
    let row = |r: &ChaosResult| {
        vec![
            r.run.to_string(),
            r.instances.to_string(),
            r.programs.to_string(),
            r.operations.to_string(),
            r.faults.to_string(),
            r.stale_reads.to_string(),
            r.stale_entries.to_string(),
            r.load_overlaps.to_string(),
            r.liveness.to_string(),
            format!("{} / {}", r.db_reads, r.calls),
            format!(
                "{} stale reads, {} entries",
                r.measured_stale_reads, r.measured_stale_entries
            ),
        ]
    };
    render(
        &headers,
        results,
        row,
        Some(
            "stale reads, stale entries, load overlaps and hangs count broken promises of lease and versioned; \
             delete and double-delete promise nothing and are measured",
        ),
    )
}
