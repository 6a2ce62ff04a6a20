//! A primary, a replica and three Sentinels of the test's own
//! ([`SentinelSetup`]), on free loopback ports, for failover tests.
//!
//! Owns starting them and waiting until the setup can fail over: the
//! replica in sync, and every Sentinel knowing the replica and the other
//! Sentinels. Sentinels run `redis-server FILE --sentinel` with a config
//! file in their own temporary directory (Sentinel rewrites it), with a
//! short `down-after-milliseconds` (1 s) so a killed primary is replaced
//! within seconds. Each process can be killed (SIGKILL), frozen and thawed,
//! and all are killed on drop.

use std::process::{Child, Command};
use std::time::Duration;

use super::{free_port, reap, require_binary, signal, spawn_until_ready, start_on_a_free_port, wait_until_stopped};

/// The master name the Sentinels monitor.
pub const MASTER_NAME: &str = "aside-primary";

/// One `redis-server` process of a [`SentinelSetup`]: a data node or a Sentinel.
pub struct RedisNode {
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    sentinel: bool,
    child: Option<Child>,
}

impl RedisNode {
    /// Starts a node on a free port, with the arguments (or, for a
    /// Sentinel, the config lines) that `args` makes for that port.
    fn start(args: impl Fn(u16) -> Vec<String>, sentinel: bool) -> Self {
        let mut node = RedisNode {
            port: 0,
            dir: tempfile::tempdir().expect("temp dir"),
            args: Vec::new(),
            sentinel,
            child: None,
        };
        start_on_a_free_port(|| {
            node.port = free_port();
            node.args = args(node.port);
            // A Sentinel's file is written once per port: a retry rewrites it.
            let _ = std::fs::remove_file(node.dir.path().join("sentinel.conf"));
            node.spawn()
        });
        node
    }

    fn spawn(&mut self) -> Result<(), String> {
        let bin = require_binary("redis-server", "apt-get install -y redis-server");
        let mut cmd = Command::new(bin);
        if self.sentinel {
            let file = self.dir.path().join("sentinel.conf");
            // Sentinel rewrites its file with what it learns: written once.
            if !file.exists() {
                std::fs::write(&file, self.args.join("\n") + "\n").expect("write sentinel.conf");
            }
            cmd.arg(&file).arg("--sentinel");
        } else {
            cmd.args(&self.args).arg("--dir").arg(self.dir.path());
        }
        let (ready, what) = if self.sentinel {
            ("+monitor master", "redis-server --sentinel")
        } else {
            ("Ready to accept connections", "redis-server (Sentinel setup)")
        };
        self.child = Some(spawn_until_ready(cmd, ready, what)?);
        Ok(())
    }

    /// The node's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

process_controls!(RedisNode, "on the same port");

/// A primary, one replica of it, and three Sentinels monitoring it as
/// [`MASTER_NAME`] with a quorum of 2.
pub struct SentinelSetup {
    /// The first primary.
    pub primary: RedisNode,
    /// Its replica, promoted when the primary dies.
    pub replica: RedisNode,
    /// The three Sentinels.
    pub sentinels: Vec<RedisNode>,
}

fn data_args(port: u16) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--logfile",
        "",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl SentinelSetup {
    /// Starts the five processes and waits (at most 60 s) until a failover
    /// could happen: the replica in sync, each Sentinel knowing the replica
    /// and both other Sentinels.
    ///
    /// # Panics
    /// When `redis-server` is not installed, a process does not start, or
    /// the setup is not ready within the bound.
    pub async fn start() -> Self {
        let primary = RedisNode::start(data_args, false);
        let primary_port = primary.port;
        let replica = RedisNode::start(
            |port| {
                let mut args = data_args(port);
                args.extend([
                    "--replicaof".to_owned(),
                    "127.0.0.1".to_owned(),
                    primary_port.to_string(),
                ]);
                args
            },
            false,
        );
        let sentinels = (0..3)
            .map(|_| {
                let config = |port: u16| {
                    vec![
                        format!("port {port}"),
                        "bind 127.0.0.1".to_owned(),
                        "daemonize no".to_owned(),
                        "protected-mode no".to_owned(),
                        "logfile \"\"".to_owned(),
                        format!("sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2"),
                        format!("sentinel down-after-milliseconds {MASTER_NAME} 1000"),
                        format!("sentinel failover-timeout {MASTER_NAME} 5000"),
                        format!("sentinel parallel-syncs {MASTER_NAME} 1"),
                    ]
                };
                RedisNode::start(config, true)
            })
            .collect();
        let setup = SentinelSetup {
            primary,
            replica,
            sentinels,
        };
        setup.wait_until_ready().await;
        setup
    }

    async fn wait_until_ready(&self) {
        let bound = Duration::from_secs(60);
        let replica = self.replica.url();
        crate::eventually("the replica is in sync", bound, || async {
            info(&replica, "replication")
                .await
                .is_some_and(|i| i.contains("master_link_status:up"))
        })
        .await;
        for sentinel in &self.sentinels {
            let url = sentinel.url();
            crate::eventually("each Sentinel knows the replica and the other two", bound, || async {
                let Some(i) = info(&url, "sentinel").await else {
                    return false;
                };
                i.contains("slaves=1") && i.contains("sentinels=3")
            })
            .await;
        }
    }

    /// The Sentinels' URLs.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisNode::url).collect()
    }

    /// The port of the primary the first Sentinel that answers names now.
    pub async fn primary_port_now(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            let Ok(client) = redis::Client::open(sentinel.url()) else {
                continue;
            };
            let Ok(Ok(mut conn)) =
                tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection()).await
            else {
                continue;
            };
            let answer: Result<Vec<String>, _> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER_NAME)
                .query_async(&mut conn)
                .await;
            if let Ok(addr) = answer
                && let Some(port) = addr.get(1).and_then(|p| p.parse().ok())
            {
                return Some(port);
            }
        }
        None
    }
}

/// `INFO section` of the server at `url`, or `None` if it does not answer
/// within 2 s.
async fn info(url: &str, section: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = tokio::time::timeout(Duration::from_secs(2), client.get_multiplexed_async_connection())
        .await
        .ok()?
        .ok()?;
    redis::cmd("INFO").arg(section).query_async(&mut conn).await.ok()
}
