//! `--processes N`: the stampede's readers spread over N worker processes
//! that share the store, both sides of the protocol between the demo and
//! its workers.
//!
//! The demo starts N copies of its own binary with the hidden subcommand
//! `aside stampede-worker`, telling each the store, the run's key prefix,
//! the mode, its share of the readers and the database (file and read
//! delay). A worker connects, builds the namespace, spawns its readers
//! held at a barrier, prints `ready` on stdout and waits for `go` on stdin;
//! once every worker is ready the demo writes `go` to each, so the readers
//! of all processes ask at once without a sleep. Each worker then prints
//! one JSON line, its [`Readings`], and exits; the demo merges them.
//!
//! A worker that exits early, prints anything else or stays silent past
//! [`Spread::timeout`] fails the run with an error naming it and what it
//! wrote on stderr; workers are killed when the demo drops them (on an
//! error, or if the demo is interrupted), and a worker whose stdin closes
//! before `go` exits, so none outlives its run.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};

use super::readers::{MODES, Readers, Readings, hot_namespace};
use crate::error::{CliError, Context, Result};
use crate::scenario::items::Rows;
use crate::store::{StoreArgs, StoreChoice, run_prefix};

/// The hidden subcommand that runs a worker.
const SUBCOMMAND: &str = "stampede-worker";
/// What a worker prints once its readers wait at the barrier.
const READY: &str = "ready";
/// What the demo writes to release them.
const GO: &str = "go";
/// How long a worker may take to connect and start its readers, and, on
/// top of ten loader delays, to answer: far above what a loaded machine
/// needs, there only so that a stuck worker fails the run instead of
/// hanging it.
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the error for a failed worker waits for the rest of its stderr.
const STDERR_GRACE: Duration = Duration::from_secs(5);

/// Flags of `aside stampede-worker` (hidden: the demo passes them).
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The shared store (`--redis` or `--memcached`).
    #[command(flatten)]
    pub store: StoreArgs,

    /// The run's key prefix, the same in every worker of a mode.
    #[arg(long)]
    pub prefix: String,

    /// The stampede mode.
    #[arg(long, value_parser = MODES)]
    pub mode: String,

    /// This worker's readers.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub clients: u64,

    /// The SQLite file the demo seeded.
    #[arg(long, value_name = "PATH")]
    pub db: PathBuf,

    /// Delay between reading the row and answering, in ms.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub db_read_delay_ms: u64,
}

/// Runs one worker: connects, readies its readers, waits for `go` on
/// stdin, releases them and prints its [`Readings`] as one JSON line.
///
/// # Errors
/// The in-process store (no other process could share it), connection
/// failures, stdin closed or carrying anything but `go`, failed reads.
pub async fn serve(args: WorkerArgs) -> Result<()> {
    let store = args.store.choice();
    if matches!(store, StoreChoice::Memory(_)) {
        return Err(CliError::new(
            "a stampede worker needs the store its processes share: --redis or --memcached",
        ));
    }
    let rows = Rows::open(&args.db, Duration::from_millis(args.db_read_delay_ms)).await?;
    let cache = store.aside(&args.prefix).await?;
    let hot = hot_namespace(&cache, &args.mode)?;
    let readers = Readers::spawn(&hot, &rows, usize::try_from(args.clients).unwrap_or(usize::MAX));
    say(READY).await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    match stdin.next_line().await.context("cannot read stdin")? {
        Some(line) if line.trim() == GO => {}
        Some(line) => return Err(CliError::new(format!("expected {GO:?} on stdin, read {line:?}"))),
        None => return Err(CliError::new(format!("stdin closed before {GO:?}"))),
    }
    let readings = readers.release().await?;
    say(&serde_json::to_string(&readings).context("cannot encode the readings")?).await
}

/// Writes one line on stdout and flushes it (the demo is waiting for it).
async fn say(line: &str) -> Result<()> {
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("{line}\n").as_bytes())
        .await
        .context("cannot write to stdout")?;
    stdout.flush().await.context("cannot write to stdout")
}

/// How the demo spreads one stampede over worker processes.
#[derive(Debug, Clone)]
pub struct Spread {
    exe: PathBuf,
    store_flags: Vec<String>,
    db: PathBuf,
    delay_ms: u64,
    shares: Vec<usize>,
    timeout: Duration,
}

impl Spread {
    /// `clients` readers over `processes` workers of this binary, on `store`
    /// (Redis or memcached), loading from the file `db` with `delay_ms`.
    ///
    /// # Errors
    /// Fewer readers than processes, or this binary cannot be found.
    pub fn new(store: &StoreChoice, db: &Path, delay_ms: u64, clients: usize, processes: usize) -> Result<Spread> {
        if clients < processes {
            return Err(CliError::new(format!(
                "--clients {clients} is fewer than --processes {processes}: every process runs at least one reader"
            )));
        }
        let exe = std::env::current_exe().context("cannot find the aside binary to start the stampede's workers")?;
        Ok(Spread {
            exe,
            store_flags: store.flags(),
            db: db.to_path_buf(),
            delay_ms,
            shares: shares(clients, processes),
            timeout: WORKER_TIMEOUT + Duration::from_millis(delay_ms) * 10,
        })
    }

    /// Runs one mode in new workers under a new prefix, and merges what
    /// they measured.
    ///
    /// # Errors
    /// A worker that could not start, failed, or broke the protocol.
    pub async fn run_mode(&self, mode: &str) -> Result<Readings> {
        let prefix = run_prefix("stampede");
        let deadline = Instant::now() + self.timeout;
        let mut workers = Vec::with_capacity(self.shares.len());
        for (index, &clients) in self.shares.iter().enumerate() {
            let mut command = Command::new(&self.exe);
            command
                .arg(SUBCOMMAND)
                .args(&self.store_flags)
                .args(["--prefix", &prefix, "--mode", mode])
                .arg("--clients")
                .arg(clients.to_string())
                .arg("--db")
                .arg(&self.db)
                .arg("--db-read-delay-ms")
                .arg(self.delay_ms.to_string());
            let name = format!("stampede worker {}/{}", index + 1, self.shares.len());
            workers.push(Worker::spawn(name, command, clients, deadline)?);
        }
        gather(workers).await
    }
}

/// `clients` split over `processes` as evenly as can be (the first ones get
/// one more when it does not divide).
fn shares(clients: usize, processes: usize) -> Vec<usize> {
    (0..processes)
        .map(|i| clients / processes + usize::from(i < clients % processes))
        .collect()
}

/// Waits until every worker is ready, releases them all, and merges their
/// readings, each worker by its deadline.
///
/// # Errors
/// The first worker that failed or broke the protocol; dropping the others
/// kills them.
async fn gather(mut workers: Vec<Worker>) -> Result<Readings> {
    for worker in &mut workers {
        let line = worker.line("be ready").await?;
        if line != READY {
            return Err(worker.garbage(&line, READY).await);
        }
    }
    for worker in &mut workers {
        worker.go().await?;
    }
    let mut total = Readings::default();
    for mut worker in workers {
        let line = worker.line("report its readings").await?;
        let readings: Readings = match serde_json::from_str(&line) {
            Ok(readings) => readings,
            Err(_) => return Err(worker.garbage(&line, "its readings as JSON").await),
        };
        if readings.latencies_ms.len() != worker.clients {
            return Err(CliError::new(format!(
                "{} answered for {} of its {} readers",
                worker.name,
                readings.latencies_ms.len(),
                worker.clients
            )));
        }
        worker.exit().await?;
        total.merge(readings);
    }
    Ok(total)
}

/// One running worker and its pipes.
struct Worker {
    name: String,
    clients: usize,
    /// When the worker must have done everything: past it, it is stopped.
    deadline: Instant,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Everything the worker writes on stderr, read as it comes (a full
    /// pipe would block the worker), for the error that names it.
    stderr: Option<JoinHandle<String>>,
}

impl Worker {
    /// Starts `command` with piped stdio, killed when dropped, to run
    /// `clients` readers by `deadline`.
    fn spawn(name: String, mut command: Command, clients: usize, deadline: Instant) -> Result<Worker> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context(format_args!("cannot start {name}"))?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(CliError::new(format!("{name} started without its pipes")));
        };
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            // What could not be read is left out of the message; the
            // protocol's own error is reported either way.
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Ok(Worker {
            name,
            clients,
            deadline,
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout).lines(),
            stderr: Some(stderr),
        })
    }

    /// The next line the worker prints; `doing` says what it was expected
    /// to do, for the error.
    async fn line(&mut self, doing: &str) -> Result<String> {
        match timeout_at(self.deadline, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => Ok(line.trim().to_owned()),
            Ok(Ok(None)) => {
                let status = match timeout_at(self.deadline, self.child.wait()).await {
                    Ok(Ok(status)) => status.to_string(),
                    Ok(Err(e)) => format!("an unknown status ({e})"),
                    Err(_) => {
                        return Err(self
                            .fail(format_args!("closed its stdout before it could {doing}"))
                            .await);
                    }
                };
                Err(self
                    .fail(format_args!("exited with {status} before it could {doing}"))
                    .await)
            }
            Ok(Err(e)) => Err(self.fail(format_args!("could not be read: {e}")).await),
            Err(_) => Err(self.fail(format_args!("did not {doing} in time")).await),
        }
    }

    /// Releases the worker's readers and closes its stdin.
    async fn go(&mut self) -> Result<()> {
        let Some(mut stdin) = self.stdin.take() else {
            return Ok(());
        };
        match stdin
            .write_all(format!("{GO}\n").as_bytes())
            .await
            .and(stdin.flush().await)
        {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(format_args!("could not be released: {e}")).await),
        }
    }

    /// Waits for the worker to exit and checks it succeeded.
    async fn exit(&mut self) -> Result<()> {
        match timeout_at(self.deadline, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(self.fail(format_args!("exited with {status}")).await),
            Ok(Err(e)) => Err(self.fail(format_args!("could not be waited for: {e}")).await),
            Err(_) => Err(self.fail("did not exit in time").await),
        }
    }

    /// The error for a worker that printed `line` where `expected` was due.
    async fn garbage(&mut self, line: &str, expected: &str) -> CliError {
        let shown: String = line.chars().take(200).collect();
        self.fail(format_args!("printed {shown:?} where {expected} was expected"))
            .await
    }

    /// Stops the worker (if it still runs) and describes its failure,
    /// `what`, with the end of what it wrote on stderr.
    async fn fail(&mut self, what: impl fmt::Display) -> CliError {
        // An error means it already exited: nothing left to stop.
        let _ = self.child.kill().await;
        let stderr = self.stderr_text().await;
        CliError::new(format!("{} {what} (stderr: {stderr})", self.name))
    }

    /// What the worker wrote on stderr, trimmed to its last lines, once
    /// the pipe closed (within [`STDERR_GRACE`]: a process the worker
    /// started may hold it open; the error is reported either way).
    async fn stderr_text(&mut self) -> String {
        let text = match self.stderr.take() {
            Some(reading) => match tokio::time::timeout(STDERR_GRACE, reading).await {
                Ok(read) => read.unwrap_or_default(),
                Err(_) => "(not closed)".to_owned(),
            },
            None => String::new(),
        };
        let text = text.trim();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        if tail.is_empty() {
            "empty".to_owned()
        } else {
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    async fn gathered(scripts: &[&str]) -> Result<Readings> {
        let workers = scripts
            .iter()
            .enumerate()
            .map(|(i, script)| Worker::spawn(format!("worker {i}"), shell(script), 2, Instant::now() + WORKER_TIMEOUT))
            .collect::<Result<Vec<_>>>()?;
        gather(workers).await
    }

    const GOOD: &str = r#"echo ready; read go; [ "$go" = go ] && echo '{"db_queries":1,"latencies_ms":[50.0,51.0]}'"#;

    #[test]
    fn shares_cover_every_reader() {
        assert_eq!(shares(10, 4), [3, 3, 2, 2]);
        assert_eq!(shares(4, 4), [1, 1, 1, 1]);
        assert_eq!(shares(200, 1), [200]);
    }

    #[tokio::test]
    async fn readings_of_every_worker_are_merged() {
        let readings = gathered(&[GOOD, GOOD]).await.expect("two good workers");
        assert_eq!(readings.db_queries, 2);
        assert_eq!(readings.latencies_ms, [50.0, 51.0, 50.0, 51.0]);
    }

    #[tokio::test]
    async fn a_worker_that_dies_is_an_error_naming_it() {
        let error = gathered(&[GOOD, "echo 'error: no Redis' >&2; exit 3"])
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("worker 1 exited with exit status: 3"), "{error}");
        assert!(error.contains("error: no Redis"), "{error}");
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_hang() {
        // The first would wait on `read` for ever if it were not stopped.
        for script in [
            "echo hello; read x",
            r#"echo ready; read go; echo '{"db_queries":'; read x"#,
        ] {
            let error = gathered(&[GOOD, script]).await.unwrap_err().to_string();
            assert!(error.contains("worker 1 printed"), "{script}: {error}");
        }
    }

    #[tokio::test]
    async fn a_worker_missing_readers_is_an_error() {
        let short = r#"echo ready; read go; echo '{"db_queries":1,"latencies_ms":[50.0]}'"#;
        let error = gathered(&[short]).await.unwrap_err().to_string();
        assert!(error.contains("answered for 1 of its 2 readers"), "{error}");
    }
}
