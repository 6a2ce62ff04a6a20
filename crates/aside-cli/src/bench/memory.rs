//! `aside bench --scenario memory`: resident memory per cached entry.
//!
//! Owns the memory scenario: which subjects are filled, how their memory is
//! read and how the rounds are summarized. Every subject holds `--entries`
//! user profiles (the demo's rows, built in process: no database, whose
//! pages would count) and is filled in a fresh child process (this binary,
//! re-run as the hidden `bench-memory-worker`), so that no subject inherits
//! another's heap, freed or not. The child reads its resident anonymous
//! pages (`/proc/self/statm`: resident less shared, i.e. the heap and
//! stacks, not the executable's pages that the fill first runs) before and
//! after the fill; bytes per entry are the difference over the entries.
//!
//! | subject | what holds the profiles |
//! |---|---|
//! | `moka` | a raw `moka::sync::Cache<u64, User>`: the floor |
//! | `aside-memory` | a `MemoryStore` filled by `get_or_load`, then read once more (values kept decoded, from the load's write on) |
//! | `aside-l1` | an L1 (`.l1(..)`) filled by `get_or_load` over a `MemoryStore` of no capacity |
//!
//! The L1 is measured alone: its store is a `MemoryStore` that keeps
//! nothing (a capacity of 0 bytes: moka evicts every entry at its next
//! maintenance), rather than a full store whose share would be subtracted,
//! a difference of two noisy figures. The child checks that the L1 does
//! hold every entry (a second pass is all L1 hits, no load) and that the
//! store subject holds all of them, after measuring.

use std::time::Duration;

use aside::{Aside, MemoryStore};
use serde::{Deserialize, Serialize};

use crate::db::{Db, User};
use crate::error::{CliError, Context, Result};

/// TTL of every cached profile: far longer than a run.
const TTL: Duration = Duration::from_secs(3600);

/// A subject of the memory scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemorySubject {
    /// A raw moka cache of decoded profiles: the floor.
    #[value(name = "moka")]
    Moka,
    /// aside's `MemoryStore`.
    #[value(name = "aside-memory")]
    AsideMemory,
    /// aside's L1 alone.
    #[value(name = "aside-l1")]
    AsideL1,
}

impl MemorySubject {
    const ALL: [MemorySubject; 3] = [MemorySubject::Moka, MemorySubject::AsideMemory, MemorySubject::AsideL1];

    fn name(self) -> &'static str {
        match self {
            MemorySubject::Moka => "moka",
            MemorySubject::AsideMemory => "aside-memory",
            MemorySubject::AsideL1 => "aside-l1",
        }
    }
}

/// Flags of the hidden `bench-memory-worker`: one subject, in its own process.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The subject to fill.
    #[arg(long)]
    pub subject: MemorySubject,
    /// Profiles to cache.
    #[arg(long)]
    pub entries: u64,
}

/// What a worker prints: its resident anonymous pages around the fill.
#[derive(Debug, Serialize, Deserialize)]
struct Filled {
    pages_before: u64,
    pages_after: u64,
}

/// One subject over every round.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    /// `moka`, `aside-memory` or `aside-l1`.
    pub subject: &'static str,
    /// Entries held.
    pub entries: u64,
    /// Median over rounds of resident bytes per entry.
    pub bytes_per_entry: f64,
    /// Lowest round.
    pub bytes_per_entry_min: f64,
    /// Highest round.
    pub bytes_per_entry_max: f64,
    /// Median bytes per entry over the floor's (`moka`): 1.0 for the floor.
    pub ratio_to_floor: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    entries: u64,
    repeat: u32,
    page_size: u64,
    results: Vec<MemoryResult>,
}

/// Resident pages not shared with a file (`/proc/self/statm`'s resident
/// less shared): the heap, which the fill grows.
fn anonymous_pages() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("cannot read /proc/self/statm")?;
    let fields: Vec<u64> = statm.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    match fields.as_slice() {
        [_, resident, shared, ..] => Ok(resident.saturating_sub(*shared)),
        _ => Err(CliError::new(format!("unexpected /proc/self/statm: {statm:?}"))),
    }
}

/// The page size `statm` counts in (`getconf PAGESIZE`, else 4 KiB).
fn page_size() -> u64 {
    std::process::Command::new("getconf")
        .arg("PAGESIZE")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// `bench-memory-worker`: fills one subject and prints its [`Filled`] as JSON.
///
/// # Errors
/// `/proc` unreadable, or a subject that did not hold every entry.
pub async fn worker(args: WorkerArgs) -> Result<()> {
    let n = args.entries;
    let before = anonymous_pages()?;
    let after = match args.subject {
        MemorySubject::Moka => {
            let cache: moka::sync::Cache<u64, User> = moka::sync::Cache::builder()
                .max_capacity(n * 2)
                .time_to_live(TTL)
                .build();
            for id in 1..=n {
                cache.insert(id, Db::profile(id));
            }
            cache.run_pending_tasks();
            let after = anonymous_pages()?;
            expect_count("moka", cache.entry_count(), n)?;
            after
        }
        MemorySubject::AsideMemory => {
            let store = MemoryStore::with_capacity_bytes(u64::MAX);
            let aside = Aside::builder().store(store.clone()).build();
            let ns = aside
                .namespace::<u64, User>("user")
                .ttl(TTL)
                .jitter(0.0)
                .build()
                .map_err(|e| CliError::new(format!("cannot build the namespace: {e}")))?;
            fill(&ns, n).await?;
            // One hit each, as a cache in use has had (the store keeps a
            // loaded value decoded from its write on, in place of its bytes).
            let hits = aside.stats().hits;
            hit_all(&ns, n).await?;
            expect_count("the store's hits", aside.stats().hits - hits, n)?;
            // Runs the store's pending maintenance too.
            let count = store.entry_count().await;
            let after = anonymous_pages()?;
            expect_count("the store", count, n)?;
            after
        }
        MemorySubject::AsideL1 => {
            let aside = Aside::builder().store(MemoryStore::with_capacity_bytes(0)).build();
            let ns = aside
                .namespace::<u64, User>("user")
                .ttl(TTL)
                .jitter(0.0)
                .l1(n * 2, TTL)
                .build()
                .map_err(|e| CliError::new(format!("cannot build the namespace: {e}")))?;
            fill(&ns, n).await?;
            let after = anonymous_pages()?;
            // Every entry is in the L1: reading them all again loads nothing.
            let hits = aside.stats().l1_hits;
            hit_all(&ns, n).await?;
            expect_count("the L1", aside.stats().l1_hits - hits, n)?;
            after
        }
    };
    let filled = Filled {
        pages_before: before,
        pages_after: after,
    };
    println!(
        "{}",
        serde_json::to_string(&filled).context("cannot encode the result")?
    );
    Ok(())
}

/// Reads every profile once through `ns`, loading it.
async fn fill(ns: &aside::Namespace<u64, User>, n: u64) -> Result<()> {
    for id in 1..=n {
        let user = ns
            .get_or_load(&id, || async move { Ok::<_, std::io::Error>(Some(Db::profile(id))) })
            .await
            .map_err(|e| CliError::new(format!("get_or_load failed: {e}")))?;
        super::subjects::check(id, user.as_ref())?;
    }
    Ok(())
}

/// Reads every profile once more through `ns`; a load would answer "missing" and fail the check.
async fn hit_all(ns: &aside::Namespace<u64, User>, n: u64) -> Result<()> {
    for id in 1..=n {
        let user = ns
            .get_or_load(&id, || async { Ok::<_, std::io::Error>(None) })
            .await
            .map_err(|e| CliError::new(format!("get_or_load failed: {e}")))?;
        super::subjects::check(id, user.as_ref())?;
    }
    Ok(())
}

fn expect_count(what: &str, count: u64, n: u64) -> Result<()> {
    if count == n {
        Ok(())
    } else {
        Err(CliError::new(format!("{what} holds {count} entries, not {n}")))
    }
}

/// Runs one worker and returns its resident growth in pages.
async fn run_worker(subject: MemorySubject, entries: u64) -> Result<u64> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let out = tokio::process::Command::new(exe)
        .args(["bench-memory-worker", "--subject", subject.name()])
        .args(["--entries", &entries.to_string()])
        .output()
        .await
        .context("cannot start a memory worker")?;
    if !out.status.success() {
        return Err(CliError::new(format!(
            "the {} worker failed: {}",
            subject.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let filled: Filled = serde_json::from_slice(&out.stdout).context("cannot read a memory worker's result")?;
    Ok(filled.pages_after.saturating_sub(filled.pages_before))
}

/// `aside bench --scenario memory`: prints the table, or JSON with `json`.
///
/// # Errors
/// A worker that failed or answered wrongly.
pub async fn run(entries: u64, repeat: u32, json: bool) -> Result<()> {
    let page = page_size();
    let mut rounds: Vec<Vec<f64>> = vec![Vec::new(); MemorySubject::ALL.len()];
    for round in 1..=repeat {
        for (i, subject) in MemorySubject::ALL.into_iter().enumerate() {
            if !json {
                eprintln!("round {round}/{repeat}: {} ...", subject.name());
            }
            let pages = run_worker(subject, entries).await?;
            rounds[i].push((pages * page) as f64 / entries as f64);
        }
    }
    let floor = super::median(&rounds[0]);
    let results: Vec<MemoryResult> = MemorySubject::ALL
        .into_iter()
        .zip(&rounds)
        .map(|(subject, bytes)| {
            let median = super::median(bytes);
            MemoryResult {
                subject: subject.name(),
                entries,
                bytes_per_entry: median,
                bytes_per_entry_min: bytes.iter().copied().fold(f64::INFINITY, f64::min),
                bytes_per_entry_max: bytes.iter().copied().fold(0.0, f64::max),
                ratio_to_floor: if floor > 0.0 { median / floor } else { 0.0 },
            }
        })
        .collect();
    let report = Report {
        bench: "memory",
        entries,
        repeat,
        page_size: page,
        results,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).context("cannot encode the report")?
        );
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

fn table(report: &Report) -> String {
    let mut out = format!(
        "aside bench --scenario memory: {} entries, {} round(s), resident bytes per entry, median [range]\n\n{:<14} {:>24} {:>9}\n",
        crate::table::count(report.entries),
        report.repeat,
        "subject",
        "bytes/entry",
        "× floor"
    );
    for r in &report.results {
        out.push_str(&format!(
            "{:<14} {:>24} {:>9}\n",
            r.subject,
            format!(
                "{:.1} [{:.1}–{:.1}]",
                r.bytes_per_entry, r.bytes_per_entry_min, r.bytes_per_entry_max
            ),
            format!(
                "{:.2}{}",
                r.ratio_to_floor,
                if r.subject == "moka" { " (floor)" } else { "" }
            )
        ));
    }
    out
}
