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
//! - [`store_contract`]: the rules every `Store` must keep, as functions a
//!   store author runs on their store (and [`store_contract_tests!`]).
//!
//! This module owns process management for tests and nothing else. Each server gets its
//! own temporary directory and port, so tests never touch a server they did
//! not start (and may flush their own). Readiness is awaited by reading the
//! server's own "ready" log line (memcached has none: it is awaited by
//! connecting, with a bound), not by sleeping. A missing binary fails
//! the test with the command that installs it.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub mod cluster;
pub mod fault;
pub mod fuzz_corpus;
pub mod history;
pub mod hostile;
pub mod proxy;
pub mod store_contract;

/// How long a server may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Spawns `cmd` and waits until a line of its log contains `ready` (the log
/// is stdout, or stderr with `log_on_stderr`). The rest of the log is
/// drained on a thread so the server never blocks on a full pipe.
fn spawn_until_ready(mut cmd: Command, ready: &'static str, what: &str, log_on_stderr: bool) -> Child {
    if log_on_stderr {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let stdout: Box<dyn std::io::Read + Send> = if log_on_stderr {
        Box::new(child.stderr.take().expect("stderr is piped"))
    } else {
        Box::new(child.stdout.take().expect("stdout is piped"))
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut announced = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !announced && line.contains(ready) {
                announced = true;
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(READY_TIMEOUT).is_err() {
        let _ = child.kill();
        panic!("{what} did not become ready within {READY_TIMEOUT:?}");
    }
    child
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
/// a `spawn(&mut self)`.
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
            pub fn restart(&mut self) {
                self.kill();
                self.spawn();
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
            port: free_port(),
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = require_binary("redis-server", "apt-get install -y redis-server");
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--appendfsync", "always"])
            .args(["--logfile", "", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        self.child = Some(spawn_until_ready(
            cmd,
            "Ready to accept connections",
            "redis-server",
            false,
        ));
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
        let mut server = NatsServer {
            port: free_port(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = require_binary("nats-server", "apt-get install -y nats-server");
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        self.child = Some(spawn_until_ready(cmd, "Server is ready", "nats-server", true));
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
        let mut server = MemcachedServer {
            port: free_port(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let bin = require_binary("memcached", "apt-get install -y memcached");
        let mut cmd = Command::new(bin);
        cmd.args(["-p", &self.port.to_string(), "-U", "0", "-l", "127.0.0.1", "-m", "64"]);
        if is_root() {
            // memcached refuses to run as root unless told which user to be.
            cmd.args(["-u", "root"]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start memcached: {e}"));
        // memcached logs nothing when ready: wait until it accepts a connection.
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("memcached exited before accepting connections: {status}");
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("memcached did not accept connections within {READY_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.child = Some(child);
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
