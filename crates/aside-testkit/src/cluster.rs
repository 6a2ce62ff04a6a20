//! [`RedisCluster`]: a 3-primary, 3-replica Redis Cluster on free loopback
//! ports, for the cluster store's tests.
//!
//! Owns the cluster's processes and nothing else: six `redis-server
//! --cluster-enabled yes` nodes in temporary directories, joined by
//! `redis-cli --cluster create ... --cluster-replicas 1`, awaited until
//! every node says `cluster_state:ok`. A node can be killed with SIGKILL
//! and its replica's promotion awaited ([`RedisCluster::kill_node`],
//! [`RedisCluster::await_failover`]). Every node is killed on drop.
//!
//! Readiness is polled through `redis-cli` (a node's cluster state is not a
//! log line), with generous bounds: a loaded machine takes seconds to agree
//! on a cluster. Ports are chosen below 55535, because a node also listens
//! on its port + 10000 (the cluster bus).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{reap, require_binary, spawn_until_ready, start_on_a_free_port};

/// How long the cluster may take to agree on its state (creation, a failover).
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);

/// How many nodes: 3 primaries and a replica each.
const NODES: usize = 6;

/// One node of a [`RedisCluster`].
struct Node {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A running 3-primary, 3-replica cluster; every node is killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
}

/// A port P free on loopback with P + 10000 free too, and P + 10000 < 65536.
fn free_cluster_port(taken: &[u16]) -> u16 {
    for _ in 0..1000 {
        let port = 20000 + rand::random::<u16>() % 35000;
        if taken.iter().any(|t| t.abs_diff(port) == 0 || t.abs_diff(port) == 10000) {
            continue;
        }
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10000) {
            return port;
        }
    }
    panic!("no free loopback port pair (P, P+10000) below 55535");
}

/// `redis-cli -p port args...`'s output, or `None` when it cannot run or fails.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let bin = require_binary("redis-cli", "apt-get install -y redis-tools");
    let out = Command::new(bin)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` every 50 ms until it holds; panics naming `what` after `bound`.
fn poll(what: &str, bound: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {bound:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One line of `CLUSTER NODES`: the node's port, its flags, and whether it
/// serves slots (has slot ranges).
struct NodeLine {
    port: u16,
    flags: String,
    slots: Vec<(u16, u16)>,
}

fn cluster_nodes(port: u16) -> Option<Vec<NodeLine>> {
    let out = cli(port, &["cluster", "nodes"])?;
    let mut lines = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
        let addr = fields.get(1)?;
        let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
        let slots = fields
            .iter()
            .skip(8)
            .filter(|s| !s.starts_with('['))
            .filter_map(|s| match s.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => s.parse().ok().map(|n| (n, n)),
            })
            .collect();
        lines.push(NodeLine {
            port,
            flags: (*fields.get(2)?).to_owned(),
            slots,
        });
    }
    Some(lines)
}

impl Node {
    fn spawn(&mut self) -> Result<(), String> {
        let bin = require_binary("redis-server", "apt-get install -y redis-server");
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", "1000"])
            // A replica may always take over: the default (10) refuses a
            // replica whose link to its primary looks too old, which a
            // freshly made, idle cluster's replicas do.
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--logfile", "", "--daemonize", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path());
        self.child = Some(spawn_until_ready(
            cmd,
            "Ready to accept connections",
            "redis-server (cluster node)",
        )?);
        Ok(())
    }
}

/// Each node is killed on its own drop, so a cluster that fails halfway
/// through [`RedisCluster::start`] leaves no process behind.
impl Drop for Node {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster (3 primaries, 1 replica each)
    /// and waits until every node reports `cluster_state:ok` and knows all six.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing (with how to install
    /// it), or the cluster does not form within 60 s.
    pub fn start() -> Self {
        let mut ports = Vec::new();
        let mut nodes = Vec::new();
        for _ in 0..NODES {
            let mut node = Node {
                port: 0,
                dir: tempfile::tempdir().expect("temp dir"),
                child: None,
            };
            start_on_a_free_port(|| {
                node.port = free_cluster_port(&ports);
                node.spawn()
            });
            ports.push(node.port);
            nodes.push(node);
        }
        let cluster = RedisCluster { nodes };
        let bin = require_binary("redis-cli", "apt-get install -y redis-tools");
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new(bin)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        poll(
            "every node of the cluster to say cluster_state:ok",
            CLUSTER_TIMEOUT,
            || {
                cluster.alive_ports().all(|p| {
                    cli(p, &["cluster", "info"]).is_some_and(|i| i.contains("cluster_state:ok"))
                        && cluster_nodes(p).is_some_and(|n| {
                            n.len() == NODES && n.iter().filter(|l| l.flags.contains("master")).count() == 3
                        })
                })
            },
        );
        cluster
    }

    fn alive_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port)
    }

    /// The URL of every node, `redis://127.0.0.1:{port}`, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// Every node's port, in node order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The indices of the nodes that are primaries serving slots now, as a
    /// live node sees them.
    pub fn primaries(&self) -> Vec<usize> {
        let port = self.alive_ports().next().expect("a live node");
        let lines = cluster_nodes(port).expect("CLUSTER NODES answers");
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.child.is_some()
                    && lines
                        .iter()
                        .any(|l| l.port == n.port && l.flags.contains("master") && !l.slots.is_empty())
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The index of the primary that serves `slot` now.
    pub fn primary_of_slot(&self, slot: u16) -> usize {
        let port = self.alive_ports().next().expect("a live node");
        let lines = cluster_nodes(port).expect("CLUSTER NODES answers");
        let serving = lines
            .iter()
            .find(|l| l.flags.contains("master") && l.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
            .port;
        self.nodes
            .iter()
            .position(|n| n.port == serving)
            .expect("the serving port is a node of this cluster")
    }

    /// The index of the primary that serves `key` now (`CLUSTER KEYSLOT`).
    pub fn primary_of_key(&self, key: &str) -> usize {
        let port = self.alive_ports().next().expect("a live node");
        let slot = cli(port, &["cluster", "keyslot", key])
            .and_then(|s| s.trim().parse().ok())
            .expect("CLUSTER KEYSLOT answers");
        self.primary_of_slot(slot)
    }

    /// Kills node `i` with SIGKILL (no goodbye to the cluster).
    pub fn kill_node(&mut self, i: usize) {
        reap(&mut self.nodes[i].child);
    }

    /// Waits until the cluster has recovered from the death of node `i`
    /// (killed with [`RedisCluster::kill_node`]): every live node sees it
    /// failed and serving no slot, and says `cluster_state:ok`.
    ///
    /// # Panics
    /// When that takes over 60 s.
    pub fn await_failover(&self, i: usize) {
        let dead = self.nodes[i].port;
        poll(
            &format!("a replica of node {i} (port {dead}) to be promoted"),
            CLUSTER_TIMEOUT,
            || {
                self.alive_ports().all(|p| {
                    cli(p, &["cluster", "info"]).is_some_and(|i| i.contains("cluster_state:ok"))
                        && cluster_nodes(p).is_some_and(|lines| {
                            lines
                                .iter()
                                .filter(|l| l.port == dead)
                                .all(|l| l.flags.contains("fail") && !l.flags.contains("fail?") && l.slots.is_empty())
                        })
                })
            },
        );
    }

    /// `INFO commandstats` of node `i`, as `(command, calls)` pairs
    /// (`cmdstat_get:calls=3,...` gives `("get", 3)`), for tests that count
    /// what reached each node.
    pub fn command_calls(&self, i: usize) -> Vec<(String, u64)> {
        let out = cli(self.nodes[i].port, &["info", "commandstats"]).expect("INFO answers");
        out.lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?.parse().ok()?;
                Some((name.to_owned(), calls))
            })
            .collect()
    }

    /// Node `i`'s `total_reads_processed` (`INFO stats`): how many read
    /// events it has processed on client connections. A pipeline sent in
    /// one write arrives in one read (two if the kernel splits it).
    pub fn reads_processed(&self, i: usize) -> u64 {
        let out = cli(self.nodes[i].port, &["info", "stats"]).expect("INFO answers");
        out.lines()
            .find_map(|l| l.strip_prefix("total_reads_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("INFO stats has total_reads_processed (Redis 6+)")
    }

    /// Resets node `i`'s `INFO commandstats` counters (`CONFIG RESETSTAT`).
    pub fn reset_stats(&self, i: usize) {
        cli(self.nodes[i].port, &["config", "resetstat"]).expect("CONFIG RESETSTAT answers");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_killed_on_its_own_drop() {
        let mut node = Node {
            port: 0,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        start_on_a_free_port(|| {
            node.port = free_cluster_port(&[]);
            node.spawn()
        });
        let pid = node.child.as_ref().unwrap().id();
        // As when a later node of `RedisCluster::start` fails to start.
        drop(vec![node]);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        assert!(stat.is_err(), "the node {pid} outlived its handle: {stat:?}");
    }
}
