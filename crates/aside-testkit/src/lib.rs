//! Test kit of aside: real servers, a fault layer, and the history checker.
//!
//! - This module starts `redis-server`, `memcached` and `nats-server` on free
//!   loopback ports, and can kill, restart, freeze and thaw them for fault tests.
//! - [`fault`]: `Store` and `Bus` wrappers that inject seeded faults and pauses.
//! - [`fuzz_corpus`]: replays a committed fuzz corpus as an ordinary test.
//! - [`history`]: random programs over every public operation, run by several
//!   `Aside` instances, checked against the invariants of DESIGN section 8.
//! - [`hostile`]: a memcached that lies (huge sizes, cut or endless values,
//!   garbage), for the bounds a client must keep against its peers.
//! - [`linearizability`]: a register checker for histories of reads and
//!   writes of one key.
//! - [`store_contract`]: the rules every `Store` must keep, as functions a
//!   store author runs on their store (and [`store_contract_tests!`]).
//!
//! This module owns process management for tests and nothing else. Each server gets its
//! own temporary directory and port, so tests never touch a server they did
//! not start (and may flush their own). Readiness is awaited by reading the
//! server's own "ready" log line (memcached has none: it is awaited by
//! connecting, with a bound), not by sleeping. A missing binary fails
//! the test with the command that installs it.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod fault;
pub mod fuzz_corpus;
pub mod history;
pub mod hostile;
pub mod linearizability;
pub mod proxy;
pub mod store_contract;

/// How long a server may take to say it is ready: generous, because a
/// machine running the whole suite on two cores is slow to start one.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `check` every 10 ms until it holds, for what has no event to wait
/// on (a TTL running out, a server's state); panics naming `what` after
/// `bound`, which should be generous: a loaded machine is slow.
///
/// # Panics
/// When `check` still fails after `bound`.
pub async fn eventually<F, Fut>(what: &str, bound: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn require_binary(name: &str, install: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("`{name}` is not installed; install it with `{install}` (scripts/test does this)"))
}

/// How many lines of a server's log a start failure reports.
const LOG_TAIL_LINES: usize = 20;

/// How many fresh ports a server gets before its start counts as failed.
const START_ATTEMPTS: usize = 5;

/// Spawns `cmd` and waits until a line of its log (stdout or stderr)
/// contains `ready`.
///
/// Both streams are piped and drained on threads for the server's whole
/// life, so it never blocks on a full pipe, and never inherits the test's
/// own stderr: a server that outlived its test would otherwise hold the
/// pipe of whatever reads `cargo test`'s output open, and that reader would
/// wait for it for good.
///
/// # Errors
/// When the server exits (closes both streams) or stays silent for
/// [`READY_TIMEOUT`]: the message names `what` and carries the last lines
/// of its log, such as `Address already in use`.
fn spawn_until_ready(mut cmd: Command, ready: &'static str, what: &str) -> Result<Child, String> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {what}: {e}"))?;
    let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_TAIL_LINES)));
    let (tx, rx) = mpsc::channel();
    let streams: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("stdout is piped")),
        Box::new(child.stderr.take().expect("stderr is piped")),
    ];
    for stream in streams {
        let (tx, log) = (tx.clone(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if line.contains(ready) {
                    let _ = tx.send(true);
                }
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                if log.len() == LOG_TAIL_LINES {
                    log.pop_front();
                }
                log.push_back(line);
            }
            let _ = tx.send(false);
        });
    }
    drop(tx);
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut closed = 0;
    let failure = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(true) => return Ok(child),
            Ok(false) => {
                closed += 1;
                if closed == 2 {
                    break "exited before it was ready".to_owned();
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break format!("did not become ready within {READY_TIMEOUT:?}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => break "exited before it was ready".to_owned(),
        }
    };
    let _ = child.kill();
    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    let log = log.lock().unwrap_or_else(|e| e.into_inner());
    let tail: Vec<&str> = log.iter().map(String::as_str).collect();
    Err(format!(
        "{what} {failure} ({status}); its last lines:\n{}",
        tail.join("\n")
    ))
}

/// Runs `attempt` (which picks a fresh port and starts a server on it)
/// until it succeeds, at most [`START_ATTEMPTS`] times.
///
/// A port found free can be taken before the server binds it: by another
/// test's server, or by a client's outgoing connection, whose ephemeral
/// ports span most of the range (a Cluster node also needs its port +
/// 10000 for the bus). Such a start fails with `Address already in use`
/// and is tried again on another port.
///
/// # Panics
/// With the last failure's message when every attempt failed.
fn start_on_a_free_port(mut attempt: impl FnMut() -> Result<(), String>) {
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        match attempt() {
            Ok(()) => return,
            Err(e) => failures.push(e),
        }
    }
    panic!("{}", failures.join("\n---\n"));
}

/// Sends `sig` (`-STOP`, `-CONT`) to a running server.
fn signal(child: Option<&Child>, sig: &str) {
    let Some(child) = child else { return };
    let pid = child.id();
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

/// Waits (at most 5 s) until every thread of `pid` is in the stopped state
/// (`T` in `/proc/PID/task/*/stat`): SIGSTOP is delivered asynchronously, and
/// a multi-threaded server such as memcached can still answer a request
/// that arrives while its threads are being stopped.
fn wait_until_stopped(pid: u32) {
    let stopped = || -> Option<bool> {
        let mut all = true;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
            all &= state == "T" || state == "t";
        }
        Some(all)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stopped() != Some(true) {
        assert!(
            std::time::Instant::now() < deadline,
            "server {pid} did not stop after SIGSTOP"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kills a server with SIGKILL, as a crash would, and waits for it to exit.
fn reap(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The process controls every server shares: `is_running`, `kill`,
/// `restart` (`$restarts` says what a restart keeps), `freeze`, `thaw`, and
/// a `Drop` that thaws and kills. The type needs `child: Option<Child>` and
/// a `spawn(&mut self) -> Result<(), String>`.
macro_rules! process_controls {
    ($server:ty, $restarts:literal) => {
        impl $server {
            /// True while the server process runs.
            pub fn is_running(&self) -> bool {
                self.child.is_some()
            }

            /// Kills the server with SIGKILL, as a crash would, and waits for it to exit.
            pub fn kill(&mut self) {
                reap(&mut self.child);
            }

            #[doc = concat!("Starts the server again ", $restarts, ".")]
            ///
            /// # Panics
            /// When the server does not come back (its port was taken meanwhile, say).
            pub fn restart(&mut self) {
                self.kill();
                if let Err(e) = self.spawn() {
                    panic!("{e}");
                }
            }

            /// Stops the process (SIGSTOP): connections stay open but nothing
            /// answers, as with a hung server or a network partition.
            /// Returns once every thread of the server is stopped, so no
            /// request sent afterwards is answered.
            pub fn freeze(&self) {
                signal(self.child.as_ref(), "-STOP");
                if let Some(child) = self.child.as_ref() {
                    wait_until_stopped(child.id());
                }
            }

            /// Resumes a frozen server (SIGCONT).
            pub fn thaw(&self) {
                signal(self.child.as_ref(), "-CONT");
            }
        }

        impl Drop for $server {
            fn drop(&mut self) {
                self.thaw();
                self.kill();
            }
        }
    };
}

/// A `redis-server` of the test's own, with append-only persistence
/// (`appendfsync always`) so that data survives [`RedisServer::kill`] and
/// [`RedisServer::restart`], as a production Redis with AOF would.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not start.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port: 0,
            dir,
            child: None,
        };
        start_on_a_free_port(|| {
            server.port = free_port();
            server.spawn()
        });
        server
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = require_binary("redis-server", "apt-get install -y redis-server");
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .args(["--logfile", "", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        self.child = Some(spawn_until_ready(cmd, "Ready to accept connections", "redis-server")?);
        Ok(())
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

process_controls!(RedisServer, "on the same port and data directory (its data survives)");

/// A `nats-server` of the test's own (core NATS, no JetStream).
pub struct NatsServer {
    port: u16,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port.
    ///
    /// # Panics
    /// When `nats-server` is not installed or does not start.
    pub fn start() -> Self {
        let mut server = NatsServer { port: 0, child: None };
        start_on_a_free_port(|| {
            server.port = free_port();
            server.spawn()
        });
        server
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = require_binary("nats-server", "apt-get install -y nats-server");
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        self.child = Some(spawn_until_ready(cmd, "Server is ready", "nats-server")?);
        Ok(())
    }

    /// `nats://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

process_controls!(NatsServer, "on the same port");

/// A `memcached` of the test's own (TCP only, 64 MiB, loopback).
pub struct MemcachedServer {
    port: u16,
    child: Option<Child>,
}

impl MemcachedServer {
    /// Starts a server on a free port.
    ///
    /// # Panics
    /// When `memcached` is not installed or does not accept connections in time.
    pub fn start() -> Self {
        let mut server = MemcachedServer { port: 0, child: None };
        start_on_a_free_port(|| {
            server.port = free_port();
            server.spawn()
        });
        server
    }

    /// Starts memcached and waits until its port answers `stats` with this
    /// process's pid: memcached logs nothing when ready, and a connection
    /// that merely succeeds could reach another server that took the port.
    fn spawn(&mut self) -> Result<(), String> {
        let bin = require_binary("memcached", "apt-get install -y memcached");
        let mut cmd = Command::new(bin);
        cmd.args(["-p", &self.port.to_string(), "-U", "0", "-l", "127.0.0.1", "-m", "64"]);
        if is_root() {
            // memcached refuses to run as root unless told which user to be.
            cmd.args(["-u", "root"]);
        }
        // Not the test's stderr: see `spawn_until_ready`. Its few lines
        // (a bind error) are kept for the failure message.
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("cannot start memcached: {e}"))?;
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if memcached_pid(self.port) == Some(child.id()) {
                self.child = Some(child);
                return Ok(());
            }
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let _ = child.kill();
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                let failure = if exited {
                    "exited before it was ready".to_owned()
                } else {
                    format!("did not answer within {READY_TIMEOUT:?}")
                };
                let log = log.join().unwrap_or_default();
                return Err(format!("memcached {failure} ({status}); its output:\n{log}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:{port}`, the address `MemcachedStore::connect` takes.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

process_controls!(
    MemcachedServer,
    "on the same port (memcached keeps nothing: it comes back empty)"
);

/// The pid that the memcached on `port` reports in `stats`, if one answers.
fn memcached_pid(port: u16) -> Option<u32> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"stats\r\n").ok()?;
    for line in BufReader::new(stream).lines() {
        let line = line.ok()?;
        if let Some(pid) = line.strip_prefix("STAT pid ") {
            return pid.trim().parse().ok();
        }
        if line.starts_with("END") {
            return None;
        }
    }
    None
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

// After `process_controls!`, which they use.
pub mod sentinel;
pub mod tls;

#[cfg(test)]
mod tests {
    use super::*;

    fn is_alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| Some(stat.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
            .unwrap_or(false)
    }

    #[test]
    fn a_server_whose_port_is_taken_fails_at_once_with_its_own_words() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let bin = require_binary("redis-server", "apt-get install -y redis-server");
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--logfile", "", "--daemonize", "no"]);
        let started = Instant::now();
        let err = spawn_until_ready(cmd, "Ready to accept connections", "redis-server").unwrap_err();
        assert!(err.contains("exited before it was ready"), "{err}");
        assert!(err.contains("Address already in use"), "the log tail is kept: {err}");
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "an exit is seen when it happens, not at the timeout"
        );
    }

    #[test]
    fn a_start_retries_on_a_new_port_until_one_is_free() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut ports = vec![free_port(), taken_port];
        let mut server = RedisServer {
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        start_on_a_free_port(|| {
            server.port = ports.pop().expect("two attempts at most");
            server.spawn()
        });
        assert_ne!(server.port(), taken_port);
        assert!(server.is_running());
    }

    #[test]
    fn memcached_on_a_taken_port_is_not_mistaken_for_ready() {
        // Another memcached answers on the port: it is not ours.
        let other = MemcachedServer::start();
        let mut server = MemcachedServer {
            port: other.port(),
            child: None,
        };
        let err = server.spawn().unwrap_err();
        assert!(err.contains("exited before it was ready"), "{err}");
        assert!(server.child.is_none());
    }

    #[test]
    fn a_server_is_killed_when_its_handle_is_dropped() {
        let server = RedisServer::start();
        let pid = server.child.as_ref().unwrap().id();
        assert!(is_alive(pid));
        drop(server);
        assert!(!is_alive(pid), "redis-server {pid} outlived its handle");
    }
}
