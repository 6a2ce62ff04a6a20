//! `aside`: the command-line tool of the aside cache-aside library.
//!
//! Owns argument parsing, logging set-up, the runtime, and turning a
//! failure into one `error: ...` line on stderr and a non-zero exit. Each
//! subcommand lives in its own module (`demo`, `warm`, `serve`, `bench`,
//! `soak`, `flush`; `flush` writes through `serve`'s database module);
//! what several share is a module of its own that imports none of them:
//! the store flags (`store`), the stop signals (`signal`), the flag parsers (`parse`), credential
//! masking (`redact`), table layout and
//! number formats (`table`), the database (`db`), the key sampler (`zipf`),
//! the workload runner (`workload`) and its report (`report`), and the
//! HTML page of `--report` (`html`). The hidden
//! subcommand `stampede-worker` is one reader process of
//! `demo --scenario stampede --processes N`, started by the demo itself;
//! `bench-memory-worker` is one subject of `bench --scenario memory`.
#![forbid(unsafe_code)]

mod bench;
mod db;
mod demo;
mod error;
mod flush;
mod html;
#[cfg(feature = "otel")]
mod otel;
mod parse;
mod redact;
mod report;
mod scenario;
mod serve;
mod signal;
mod soak;
mod store;
mod table;
mod warm;
mod workload;
mod zipf;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// The aside command-line tool.
#[derive(Debug, Parser)]
#[command(name = "aside", version, about = "The aside cache-aside library's command-line tool")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs a read-heavy workload of user profiles through aside in front of
    /// SQLite, and reports hit ratio, database load and latencies.
    Demo(demo::DemoArgs),
    /// Warms the cache with the user profiles a key list or an access log
    /// asks for most, in batches, from the demo's SQLite database.
    Warm(warm::WarmArgs),
    /// Serves user profiles and products over HTTP, read through the cache
    /// from SQLite or PostgreSQL, with Prometheus metrics and a health check.
    Serve(serve::ServeArgs),
    /// Measures the cost of a cache hit: aside on Redis, in memory and in
    /// its L1, against a raw redis-rs GET, a raw moka get, the article's
    /// code and (feature `peers`) the `cached` and `amalgam-cache` crates.
    Bench(bench::BenchArgs),
    /// Runs the write-back flusher: applies a write-back log (a Redis
    /// Stream of user profiles) to the users table with versioned upserts,
    /// until SIGINT or SIGTERM (or, with --drain, until the log is flushed).
    Flush(flush::FlushArgs),
    /// Runs the history checker against a store behind a fault proxy for
    /// a long time (store restarts, latency spikes, blackholes), and reports
    /// stale reads, stale entries, wrong answers and resident memory.
    Soak(soak::SoakArgs),
    /// One process of `demo --scenario stampede --processes N`: readers of
    /// the hot key, started by the demo, released by `go` on stdin.
    #[command(hide = true)]
    StampedeWorker(scenario::stampede::workers::WorkerArgs),
    /// One subject of `bench --scenario memory`, filled in a process of its
    /// own so that no other subject's heap is counted.
    #[command(hide = true)]
    BenchMemoryWorker(bench::memory::WorkerArgs),
}

/// Logs to stderr, `default` and above unless `RUST_LOG` says otherwise;
/// with `aside serve --otel`, also sends the cache operations' spans (and
/// the service's own at info) to the collector. Returns the running
/// exporters, to shut down once the runtime has finished.
#[cfg(feature = "otel")]
fn init_logging(default: &str, command: &Command) -> Result<Option<otel::Otel>, error::CliError> {
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let otel = match command {
        Command::Serve(args) => match &args.otel {
            Some(url) => Some(otel::Otel::start(
                url,
                std::time::Duration::from_millis(args.otel_interval_ms),
            )?),
            None => None,
        },
        _ => None,
    };
    match otel {
        Some((running, layer)) => {
            let spans = EnvFilter::new("aside::op=debug,info");
            tracing_subscriber::registry()
                .with(fmt)
                .with(layer.with_filter(spans))
                .init();
            Ok(Some(running))
        }
        None => {
            tracing_subscriber::registry().with(fmt).init();
            Ok(None)
        }
    }
}

/// Logs to stderr, `default` and above unless `RUST_LOG` says otherwise.
#[cfg(not(feature = "otel"))]
fn init_logging(default: &str, command: &Command) -> Result<Option<std::convert::Infallible>, error::CliError> {
    if let Command::Serve(args) = command
        && args.otel.is_some()
    {
        return Err(error::CliError::new(
            "--otel needs the otel feature: cargo build --release -p aside-cli --features otel",
        ));
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(None)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A soak injects faults by the thousand, and each one's warning would
    // bury its progress and its summary.
    let default = if matches!(cli.command, Command::Soak(_)) {
        "error"
    } else {
        "warn"
    };
    let otel = match init_logging(default, &cli.command) {
        Ok(otel) => otel,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Warm(args) => warm::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Soak(args) => soak::run(args).await,
            Command::Flush(args) => flush::run(args).await,
            Command::StampedeWorker(args) => scenario::stampede::workers::serve(args).await,
            Command::BenchMemoryWorker(args) => bench::memory::worker(args).await,
        }
    });
    // The exporters send what they hold only once the runtime is done.
    drop(runtime);
    #[cfg(feature = "otel")]
    if let Some(otel) = otel {
        otel.shutdown();
    }
    #[cfg(not(feature = "otel"))]
    let _ = otel;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every message masks the URLs it names; this is the net under
            // text quoted from other crates.
            eprintln!("error: {}", redact::text(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
