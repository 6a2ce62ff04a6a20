//! What every scenario is given and how it reports: the scenarios' flags,
//! the [`Setting`] the demo hands a scenario, the report envelope every
//! scenario prints (a table, or one JSON object with `--json`), and the
//! percentile of latency samples.
//!
//! Each scenario renders its own table; this module only decides between
//! the table and the JSON, and prints.

use std::path::PathBuf;

use aside::Strategy;
use serde::Serialize;

use crate::error::{Context, Result};
use crate::html::demo::Charted;
use crate::parse;
use crate::store::StoreChoice;

/// Flags of the scenarios (`race`, `stampede`, `expiry`, `db-outage`, `chaos`).
#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// Keys the readers work on (default 10 hot keys for `race` and
    /// `expiry`, 100 for `db-outage`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub keys: Option<u64>,

    /// Delay between reading a row and answering, in ms (default 20 for
    /// `race`, 50 for `stampede` and `expiry`, 10 for `db-outage`).
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub db_read_delay_ms: Option<u64>,

    /// When the database of `db-outage` starts failing, in seconds from the
    /// start of the run.
    #[arg(long, default_value_t = 3.0, value_parser = parse::seconds_or_zero)]
    pub outage_start_s: f64,

    /// When the database of `db-outage` answers again, in seconds from the
    /// start of the run.
    #[arg(long, default_value_t = 7.0, value_parser = parse::seconds_or_zero)]
    pub outage_end_s: f64,

    /// Concurrent readers of the stampede's hot key.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub clients: u64,

    /// `stampede`: spread the readers over this many OS processes sharing
    /// the store (`--redis` or `--memcached`); 1 runs them all in this one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub processes: u64,

    /// Writer tasks of the race. Four writers on ten keys write each key
    /// about every 30 ms, so most writes meet a load in flight: the race
    /// the strategies differ on happens in every run.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub writers: u64,

    /// Pause between one race writer's writes, in ms.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub write_interval_ms: u64,

    /// How many times to run the whole scenario.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub runs: u32,

    /// Race strategies to run, comma-separated (default: all four).
    #[arg(long, value_delimiter = ',', value_parser = parse::strategy)]
    pub strategies: Vec<Strategy>,

    /// `chaos`: at most this many programs per run (the run also stops
    /// after `--duration`).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub programs: u64,

    /// `chaos`: replay one program by its seed (decimal or 0x hex), as a
    /// failing run prints it.
    #[arg(long, value_parser = parse::seed)]
    pub seed: Option<u64>,

    /// Race with an in-process first tier (L1) on the readers' and the
    /// writers' engines, kept coherent by an invalidation bus (Redis
    /// pub/sub with `--redis`, an in-process channel otherwise, memcached
    /// included).
    #[arg(long)]
    pub l1: bool,
}

/// What the demo hands a scenario: the store, the demo's own flags that
/// scenarios read (each with the scenario's default when absent), and the
/// scenarios' flags.
#[derive(Clone)]
pub struct Setting {
    /// Where the cache lives.
    pub store: StoreChoice,
    /// `--db`: the SQLite file to use instead of a temporary one.
    pub db: Option<PathBuf>,
    /// `--duration`, seconds.
    pub duration: Option<f64>,
    /// `--ttl`, seconds.
    pub ttl: Option<f64>,
    /// `--concurrency`: reader tasks.
    pub concurrency: usize,
    /// `--json`: one JSON object on stdout, and no progress lines on stderr.
    pub json: bool,
    /// `--report`: where to write the results as an HTML page with charts.
    pub report: Option<PathBuf>,
    /// The scenarios' flags.
    pub args: ScenarioArgs,
}

/// What every scenario prints with `--json`: its name, the store, and one
/// result per mode (or strategy) and run.
#[derive(Debug, Serialize)]
struct Report<'a, T> {
    scenario: &'static str,
    store: &'static str,
    /// The bound on each store operation the run used (`--op-timeout-ms`);
    /// not for `chaos`, whose programs set their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    op_timeout_ms: Option<u64>,
    results: &'a [T],
}

impl Setting {
    /// Progress lines go to stderr (not with `--json`).
    pub fn chatty(&self) -> bool {
        !self.json
    }

    /// Prints `results` of `scenario`: as one JSON object with `--json`,
    /// else a title line and the scenario's own `table`; with `--report`,
    /// also writes them with their charts to an HTML page.
    ///
    /// # Errors
    /// When the JSON cannot be encoded or the page cannot be written.
    pub fn print<T: Serialize + Charted>(
        &self,
        scenario: &'static str,
        results: &[T],
        table: fn(&[T]) -> String,
    ) -> Result<()> {
        let store = self.store.name();
        let report = Report {
            scenario,
            store,
            op_timeout_ms: (scenario != "chaos")
                .then(|| u64::try_from(crate::store::op_timeout().as_millis()).unwrap_or(u64::MAX)),
            results,
        };
        if let Some(path) = &self.report {
            let json = serde_json::to_value(&report).context("cannot encode the report")?;
            crate::html::demo::scenario_page(scenario, store, results, &json).write(path)?;
        }
        if self.json {
            println!(
                "{}",
                serde_json::to_string(&report).context("cannot encode the report")?
            );
        } else {
            println!("scenario {scenario} on the {store} store");
            print!("{}", table(results));
        }
        Ok(())
    }
}

/// Percentile of sorted samples, 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
