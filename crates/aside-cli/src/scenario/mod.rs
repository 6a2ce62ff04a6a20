//! The demo's scenarios beyond the main workload: `race`, `stampede`,
//! `expiry`, `db-outage`, `chaos` and `patterns`.
//!
//! Owns choosing a scenario by name and the scratch directory of its
//! database. Each scenario lives in its own module and owns its run, its
//! results and its table; what they share is in [`common`] (flags, the
//! setting, printing) and [`items`] (the versioned rows), which import no
//! scenario: dependencies point from here to the scenarios to those two.

pub mod chaos;
pub mod common;
pub mod db_outage;
pub mod expiry;
pub mod items;
pub mod patterns;
pub mod race;
pub mod stampede;

pub use common::{ScenarioArgs, Setting};

use crate::error::{CliError, Context, Result};

/// Runs `scenario` and prints its table (or its JSON with `--json`).
///
/// # Errors
/// An unknown scenario, Redis or memcached unreachable, database failures,
/// failed reads, or (for `chaos`) broken promises.
pub async fn run(scenario: &str, setting: &Setting) -> Result<()> {
    // Removed, with the database and its WAL files, when `scratch` drops.
    let scratch = tempfile::Builder::new()
        .prefix("aside-scenario-")
        .tempdir()
        .context("cannot create a temporary directory for the database")?;
    let path = setting.db.clone().unwrap_or_else(|| scratch.path().join("items.db"));
    match scenario {
        "race" => race::run(setting, &path).await,
        "stampede" => stampede::run(setting, &path).await,
        "expiry" => expiry::run(setting, &path).await,
        "db-outage" => db_outage::run(setting, &path).await,
        "chaos" => chaos::run(setting).await,
        "patterns" => patterns::run(setting, &path).await,
        other => Err(CliError::new(format!("unknown scenario {other:?}"))),
    }
}
