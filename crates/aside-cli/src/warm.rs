//! `aside warm`: fills the cache with the user profiles most asked for, from
//! a list of keys or an access log, before traffic arrives (after a deploy
//! or a flush).
//!
//! Owns the command's flags, reading the input (one id per line, or ids
//! pulled out of log lines by `--pattern`, whose first capture group is the
//! id), ranking ids by how often they appear, and warming the top ones
//! through [`aside::Namespace::warm`] with the batch loader
//! [`crate::db::Db::load_users`] (one `SELECT ... WHERE id IN (...)` per
//! batch) against the demo's users database. Lines whose id does not parse
//! are counted and skipped; so are lines longer than `--max-line-bytes`,
//! which are read through in chunks and never held in memory (the line
//! parsing itself is [`aside_cli::input`]'s).

use std::collections::HashMap;
use std::io::{BufReader, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aside_cli::input::{self, WarmLine};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use regex::Regex;
use serde::Serialize;

use crate::db::{Db, User};
use crate::db::{MAX_DB_READERS, MAX_USERS};
use crate::error::{CliError, Context, Result};
use crate::store::StoreArgs;
use crate::table::count;

/// The namespace warmed: the demo's user profiles.
const NAMESPACE: &str = "user:profile";

/// Most `--max-line-bytes` may allow (16 MiB): the bound is on memory.
const MAX_LINE_BYTES_CAP: u64 = 16 << 20;

/// Flags of `aside warm`.
#[derive(Debug, Clone, Args)]
pub struct WarmArgs {
    /// File to read: one user id per line, or an access log with `--pattern`.
    #[arg(long, value_name = "FILE")]
    pub from: PathBuf,

    /// Regular expression finding the id in a log line: its first capture
    /// group is the id, e.g. `GET /users/(\d+)`. Lines it does not match are
    /// skipped. Without it, every line is an id.
    #[arg(long, value_name = "REGEX", value_parser = parse_pattern)]
    pub pattern: Option<Regex>,

    /// How many ids to warm: the most frequent ones.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub top: u64,

    /// Longest input line kept, in bytes (newline not counted): a longer
    /// line is read through without being held in memory, skipped and
    /// counted (`long_lines`).
    #[arg(long, value_name = "BYTES", default_value_t = input::DEFAULT_MAX_LINE_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_LINE_BYTES_CAP))]
    pub max_line_bytes: u64,

    /// Ids per loader call (one `SELECT ... WHERE id IN (...)` each).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub batch_size: u64,

    /// Batches in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub concurrency: u64,

    /// Where the cache lives (`--redis`, `--memcached`; in process by default).
    #[command(flatten)]
    pub store: StoreArgs,

    /// SQLite file of user profiles (created and seeded if needed, kept
    /// afterwards); by default a temporary file deleted at the end.
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,

    /// User profiles in the database (as `aside demo --users`).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=MAX_USERS))]
    pub users: u64,

    /// Key prefix before the namespace: keys are `{prefix}user:profile:{id}`.
    #[arg(long, default_value = "")]
    pub prefix: String,

    /// TTL of the warmed entries, in seconds.
    #[arg(long, default_value_t = 600.0, value_parser = crate::parse::seconds)]
    pub ttl: f64,

    /// Print the summary as one JSON object on stdout (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

fn parse_pattern(s: &str) -> std::result::Result<Regex, String> {
    let regex = Regex::new(s).map_err(|e| e.to_string())?;
    if regex.captures_len() < 2 {
        return Err("the pattern needs a capture group for the id, e.g. `/users/(\\d+)`".to_owned());
    }
    Ok(regex)
}

/// What reading the input found.
#[derive(Debug, Default)]
struct Ids {
    /// Lines read.
    lines: u64,
    /// Lines the pattern did not match (with `--pattern`).
    unmatched: u64,
    /// Lines whose id did not parse.
    bad_lines: u64,
    /// Lines past the length bound (skipped unread).
    long_lines: u64,
    /// Times each id was seen.
    counts: HashMap<u64, u64>,
}

impl Ids {
    /// Counts what one line yielded.
    fn record(&mut self, line: WarmLine) {
        self.lines += 1;
        match line {
            WarmLine::Id(id) => *self.counts.entry(id).or_insert(0) += 1,
            WarmLine::Unmatched => self.unmatched += 1,
            WarmLine::BadId => self.bad_lines += 1,
            WarmLine::TooLong => self.long_lines += 1,
            // Blank lines (and any kind added later) count only as lines.
            _ => {}
        }
    }

    /// Ids seen (with repeats).
    fn keys_read(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The `top` most frequent ids, most frequent first (ties: smaller id first).
    fn top(&self, top: usize) -> Vec<u64> {
        let mut ranked: Vec<(u64, u64)> = self.counts.iter().map(|(&id, &n)| (id, n)).collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.into_iter().take(top).map(|(id, _)| id).collect()
    }
}

/// Reads `path`: every line an id, or with `pattern` the first capture group
/// of its first match; lines past `max_line_bytes` are skipped unread.
fn read_ids(path: &Path, pattern: Option<&Regex>, max_line_bytes: usize) -> Result<Ids> {
    let file = std::fs::File::open(path).context(format!("cannot open {}", path.display()))?;
    let mut ids = Ids::default();
    input::read_warm_lines(BufReader::new(file), pattern, max_line_bytes, |line| ids.record(line))
        .context(format!("cannot read {}", path.display()))?;
    Ok(ids)
}

/// What `aside warm` did, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct WarmSummary {
    /// The input file.
    pub from: String,
    /// Store name (`memory`, `redis`, `memcached`).
    pub store: String,
    /// Lines in the file.
    pub lines: u64,
    /// Ids read (every occurrence).
    pub keys_read: u64,
    /// Lines the pattern did not match.
    pub unmatched: u64,
    /// Lines whose id did not parse (skipped).
    pub bad_lines: u64,
    /// Lines longer than `--max-line-bytes` (skipped unread).
    pub long_lines: u64,
    /// Distinct ids.
    pub distinct: u64,
    /// Ids warmed: the `--top` most frequent.
    pub warmed: u64,
    /// Warmed ids found in the database (and now cached).
    pub found: u64,
    /// Batches of `--batch-size` ids.
    pub batches: u64,
    /// Loader calls: batches that had ids not already cached.
    pub db_queries: u64,
    /// Time to read and rank the file, ms.
    pub read_ms: f64,
    /// Time to warm, ms.
    pub elapsed_ms: f64,
}

/// Runs `aside warm` and prints its summary (a table, or JSON with `--json`).
///
/// # Errors
/// A missing or unreadable file, Redis unreachable, the database cannot be
/// opened or seeded, or a failed batch.
pub async fn run(args: WarmArgs) -> Result<()> {
    let reading = Instant::now();
    let (path, pattern) = (args.from.clone(), args.pattern.clone());
    let max_line_bytes = usize::try_from(args.max_line_bytes).unwrap_or(usize::MAX);
    let ids = tokio::task::spawn_blocking(move || read_ids(&path, pattern.as_ref(), max_line_bytes))
        .await
        .map_err(|e| CliError::new(format!("reading {} failed: {e}", args.from.display())))??;
    let keys = ids.top(usize::try_from(args.top).unwrap_or(usize::MAX));
    let read_ms = millis(reading.elapsed());

    let store = args.store.choice();
    let cache = store.aside(&args.prefix).await?;
    let users = cache
        .namespace::<u64, User>(NAMESPACE)
        .ttl(Duration::from_secs_f64(args.ttl))
        .jitter(0.10)
        .build()
        .context("cannot configure the cache namespace")?;

    let (path, _scratch) = crate::db::database_path(args.db.as_deref())?;
    let readers = u32::try_from(args.concurrency).unwrap_or(u32::MAX).min(MAX_DB_READERS);
    let (db, inserted) = Db::open_seeded(&path, readers, args.users).await?;
    if !args.json {
        eprintln!(
            "database {}: {} profiles ready ({} inserted); warming {} of {} distinct ids on the {} store...",
            path.display(),
            count(args.users),
            count(inserted),
            count(keys.len() as u64),
            count(ids.counts.len() as u64),
            store.name()
        );
    }

    let bar = progress_bar(keys.len() as u64, !args.json && std::io::stderr().is_terminal());
    let options = aside::WarmOptions::default()
        .batch_size(usize::try_from(args.batch_size).unwrap_or(usize::MAX))
        .concurrency(usize::try_from(args.concurrency).unwrap_or(usize::MAX));
    let queries_before = db.queries();
    let warming = Instant::now();
    let found = users
        .warm(
            &keys,
            options,
            |batch: Vec<u64>| {
                let db = db.clone();
                async move { db.load_users(&batch).await }
            },
            |done| bar.set_position(done as u64),
        )
        .await;
    let elapsed_ms = millis(warming.elapsed());
    bar.finish_and_clear();
    let db_queries = db.queries() - queries_before;
    db.close().await;
    let found = found.context("warming failed")?;

    let summary = WarmSummary {
        from: args.from.display().to_string(),
        store: store.name().to_owned(),
        lines: ids.lines,
        keys_read: ids.keys_read(),
        unmatched: ids.unmatched,
        bad_lines: ids.bad_lines,
        long_lines: ids.long_lines,
        distinct: ids.counts.len() as u64,
        warmed: keys.len() as u64,
        found: found as u64,
        batches: (keys.len() as u64).div_ceil(args.batch_size),
        db_queries,
        read_ms,
        elapsed_ms,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&summary).context("cannot encode the summary")?
        );
    } else {
        print!("{}", table(&summary, &args));
    }
    Ok(())
}

/// Milliseconds, to a microsecond.
fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

/// A bar on stderr counting keys warmed, or a hidden one.
fn progress_bar(len: u64, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner:.green} [{bar:30.cyan/blue}] {pos}/{len} keys {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn table(s: &WarmSummary, args: &WarmArgs) -> String {
    let rows = [
        ("lines", count(s.lines), format!("in {}", s.from)),
        (
            "keys read",
            count(s.keys_read),
            if args.pattern.is_some() {
                format!("{} lines not matched", count(s.unmatched))
            } else {
                String::new()
            },
        ),
        ("bad lines", count(s.bad_lines), "id did not parse: skipped".to_owned()),
        (
            "long lines",
            count(s.long_lines),
            format!("over {} bytes: skipped", count(args.max_line_bytes)),
        ),
        ("distinct ids", count(s.distinct), String::new()),
        (
            "warmed",
            count(s.warmed),
            format!("the top {} by frequency", count(args.top)),
        ),
        ("found", count(s.found), "in the database, now cached".to_owned()),
        (
            "batches",
            count(s.batches),
            format!(
                "of {}, {} at a time; {} database queries",
                args.batch_size,
                args.concurrency,
                count(s.db_queries)
            ),
        ),
        (
            "elapsed",
            format!("{:.1} ms", s.elapsed_ms),
            format!("reading took {:.1} ms", s.read_ms),
        ),
    ];
    let label_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_width = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let mut out = format!("aside warm: namespace {NAMESPACE} on the {} store\n\n", s.store);
    for (label, value, remark) in rows {
        let line = format!("  {label:<label_width$}  {value:>value_width$}  {remark}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
        file.write_all(text.as_bytes()).expect("written");
        file
    }

    #[test]
    fn key_lists_count_bad_lines_and_skip_blank_ones() {
        let file = write("3\n1\n\n3\nx7\n 2 \n-1\n3\n99999999999999999999\n");
        let ids = read_ids(file.path(), None, input::DEFAULT_MAX_LINE_BYTES).unwrap();
        assert_eq!(ids.lines, 9);
        assert_eq!(ids.bad_lines, 3);
        assert_eq!(ids.keys_read(), 5);
        assert_eq!(ids.top(10), [3, 1, 2]);
        assert_eq!(ids.top(1), [3]);
    }

    #[test]
    fn logs_yield_the_first_capture_group() {
        let file = write(
            "GET /users/5 200\nGET /health 200\nGET /users/5/avatar 200\nGET /users/abc 404\nPOST /users/9 201\n",
        );
        let pattern = parse_pattern(r"GET /users/(\w+)").unwrap();
        let ids = read_ids(file.path(), Some(&pattern), input::DEFAULT_MAX_LINE_BYTES).unwrap();
        assert_eq!((ids.lines, ids.unmatched, ids.bad_lines, ids.keys_read()), (5, 2, 1, 2));
        assert_eq!(ids.top(5), [5]);
    }

    #[test]
    fn patterns_need_a_capture_group() {
        assert!(parse_pattern(r"/users/\d+").is_err());
        assert!(parse_pattern(r"/users/(\d+").is_err());
        assert!(parse_pattern(r"/users/(\d+)").is_ok());
    }

    #[test]
    fn ties_rank_smaller_ids_first() {
        let file = write("9\n4\n9\n4\n1\n");
        assert_eq!(
            read_ids(file.path(), None, input::DEFAULT_MAX_LINE_BYTES)
                .unwrap()
                .top(3),
            [4, 9, 1]
        );
    }
}
