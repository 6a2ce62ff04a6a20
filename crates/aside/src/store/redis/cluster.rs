//! Redis Cluster under [`RedisStore`](super::RedisStore): the connection
//! either kind of store speaks through ([`RedisConnection`]), and batches
//! split by node.
//!
//! Owns what differs on a cluster and nothing else. Single commands and
//! the Lua scripts are the same code on both kinds: each touches exactly
//! one key, and redis-rs's cluster connection routes it by that key's slot
//! (following `MOVED`/`ASK`). A batch cannot go that way: redis-rs refuses a
//! pipeline whose keys span slots. [`ClusterBatches`] groups a batch's
//! commands by the primary that serves each key's slot, sends one pipeline
//! per primary, all at once, and puts the answers back in order: a batch
//! over every slot costs one round trip per primary.
//!
//! The slot→primary map comes from `CLUSTER SLOTS`, read on first use and
//! again after any sign that it is out of date (a `MOVED`/`ASK` answer, a
//! failed pipeline). A command whose node no longer serves its slot is
//! answered `MOVED` inside the pipeline; it is sent again on its own,
//! through redis-rs's routing, so a stale map costs round trips, never
//! a wrong answer. A node that does not know a script yet (`NOSCRIPT`: first
//! use, a promoted replica) is sent `SCRIPT LOAD` and the commands again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::sentinel::SentinelHandle;
use futures::future::{BoxFuture, join_all};
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value};

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;
/// [`SLOTS`] as the type of a slot.
const SLOT_COUNT: u16 = 16384;

/// The connection of a [`RedisStore`](super::RedisStore): one server through
/// a `ConnectionManager`, or a cluster through redis-rs's cluster
/// connection. Both are cheap to clone (clones share the connections) and
/// run any command through [`ConnectionLike`]; on a cluster a command is
/// routed by its key, and a pipeline must keep its keys in one slot.
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisConnection {
    /// One server (or a primary), multiplexed, reconnecting in the background.
    Single(super::Reconnecting),
    /// A Redis Cluster: a multiplexed connection per node, routed by slot,
    /// replaced when it keeps failing (see [`ClusterHandle`]).
    Cluster(ClusterHandle),
    /// The primary that Redis Sentinel names, followed through failovers
    /// (see [`SentinelHandle`]).
    Sentinel(SentinelHandle),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Single(_) => "RedisConnection::Single",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
            RedisConnection::Sentinel(_) => "RedisConnection::Sentinel",
        })
    }
}

/// Connection failures in a row after which a cluster connection is replaced.
const FAILURES_BEFORE_REPLACING: u32 = 3;

/// A cluster connection that is replaced by a new one when it fails
/// `FAILURES_BEFORE_REPLACING` (3) times in a row.
///
/// Why: redis-rs 1.8 reads the cluster's topology again only when a node
/// answers `MOVED` (or none can be found). A primary killed outright never
/// answers again, so after its replica is promoted the connection would go
/// on sending that slot's commands to the dead address, failing forever. A
/// new connection reads the topology from the seed nodes. The replacement
/// runs in a task of its own (one at a time), bounded by the connect
/// timeout; commands meanwhile use the old connection and fail as before.
#[derive(Clone)]
pub struct ClusterHandle(Arc<ClusterShared>);

struct ClusterShared {
    client: redis::cluster::ClusterClient,
    conn: RwLock<ClusterConnection>,
    failures: AtomicU32,
    replacing: AtomicBool,
    connect_timeout: Duration,
}

/// True for an error that says the node is unreachable rather than
/// anything about the command.
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound | ErrorKind::Server(ServerErrorKind::ClusterDown)
        )
}

impl ClusterHandle {
    pub(crate) fn new(
        client: redis::cluster::ClusterClient,
        conn: ClusterConnection,
        connect_timeout: Duration,
    ) -> Self {
        ClusterHandle(Arc::new(ClusterShared {
            client,
            conn: RwLock::new(conn),
            failures: AtomicU32::new(0),
            replacing: AtomicBool::new(false),
            connect_timeout,
        }))
    }

    /// The connection in use now.
    pub(crate) fn current(&self) -> ClusterConnection {
        self.0
            .conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Counts a result: a success resets the count, a connection failure
    /// adds one and, at the threshold, starts a replacement.
    pub(crate) fn observe<T>(&self, result: &RedisResult<T>) {
        match result {
            Ok(_) => self.0.failures.store(0, Ordering::Relaxed),
            Err(e) if is_connection_error(e) => {
                if self.0.failures.fetch_add(1, Ordering::Relaxed) + 1 >= FAILURES_BEFORE_REPLACING {
                    self.replace();
                }
            }
            Err(_) => {}
        }
    }

    fn replace(&self) {
        if self.0.replacing.swap(true, Ordering::AcqRel) || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let shared = self.0.clone();
        tokio::spawn(async move {
            let bound = shared.connect_timeout.saturating_mul(2);
            match tokio::time::timeout(bound, shared.client.get_async_connection()).await {
                Ok(Ok(conn)) => {
                    *shared.conn.write().unwrap_or_else(std::sync::PoisonError::into_inner) = conn;
                    shared.failures.store(0, Ordering::Relaxed);
                    tracing::info!("the Redis Cluster connection kept failing: replaced by a new one");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot replace the Redis Cluster connection yet"),
                Err(_) => tracing::debug!("cannot replace the Redis Cluster connection yet: no answer in {bound:?}"),
            }
            shared.replacing.store(false, Ordering::Release);
        });
    }

    /// `route_command` on the current connection, counted.
    pub(crate) async fn route_command(&self, cmd: Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        let result = self.current().route_command(cmd, routing).await;
        self.observe(&result);
        result
    }

    /// `route_pipeline` on the current connection, counted.
    async fn route_pipeline(
        &self,
        pipe: Pipeline,
        count: usize,
        route: SingleNodeRoutingInfo,
    ) -> RedisResult<Vec<Value>> {
        let result = self.current().route_pipeline(pipe, 0, count, route).await;
        self.observe(&result);
        result
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Sentinel(s) => s.req_packed_command(cmd),
            RedisConnection::Cluster(handle) => Box::pin(async move {
                if is_script_load(cmd) {
                    // redis-rs sends SCRIPT LOAD (what `Script` sends after
                    // a NOSCRIPT) to every node it knows, a dead one
                    // included. Only primaries run our scripts: they get it.
                    let all_primaries = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllMasters,
                        Some(ResponsePolicy::AllSucceeded),
                    ));
                    return handle.route_command(cmd.clone(), all_primaries).await;
                }
                let result = handle.current().req_packed_command(cmd).await;
                handle.observe(&result);
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Sentinel(s) => s.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(handle) => Box::pin(async move {
                let result = handle.current().req_packed_commands(pipeline, offset, count).await;
                handle.observe(&result);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Sentinel(s) => s.manager().get_db(),
            RedisConnection::Cluster(_) => 0,
        }
    }
}

fn is_script_load(cmd: &Cmd) -> bool {
    let mut args = cmd.args_iter().map(|a| match a {
        redis::Arg::Simple(bytes) => bytes,
        _ => b"".as_slice(),
    });
    matches!(
        (args.next(), args.next()),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b"SCRIPT") && b.eq_ignore_ascii_case(b"LOAD")
    )
}

/// The hash slot of `key`, as Redis Cluster computes it: CRC16 (XMODEM) of
/// the key's hash tag (the part between the first `{` and the next `}`, if
/// not empty) or of the whole key, modulo 16384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|b| *b == b'}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty());
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOT_COUNT
}

/// Which primary serves each slot, as `CLUSTER SLOTS` said: an index into
/// the primaries it listed, per slot (`None`: no primary served it).
struct SlotMap {
    owner: Vec<Option<u16>>,
}

impl SlotMap {
    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id...],
    /// replicas...]...]`. Anything else is an error, never a panic.
    fn parse(reply: &Value) -> RedisResult<Self> {
        let bad = || RedisError::from((ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"));
        let int = |v: &Value| match v {
            Value::Int(n) => usize::try_from(*n).ok(),
            _ => None,
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            Value::VerbatimString { text, .. } => Some(text.clone()),
            _ => None,
        };
        let Value::Array(ranges) = reply else { return Err(bad()) };
        let mut owner = vec![None; SLOTS];
        let mut primaries: Vec<String> = Vec::new();
        for range in ranges {
            let Value::Array(fields) = range else { return Err(bad()) };
            let (Some(start), Some(end), Some(Value::Array(primary))) =
                (fields.first().and_then(int), fields.get(1).and_then(int), fields.get(2))
            else {
                return Err(bad());
            };
            let (Some(host), Some(port)) = (primary.first().and_then(text), primary.get(1).and_then(int)) else {
                return Err(bad());
            };
            if start > end || end >= SLOTS {
                return Err(bad());
            }
            let addr = format!("{host}:{port}");
            let index = match primaries.iter().position(|p| *p == addr) {
                Some(i) => i,
                None => {
                    primaries.push(addr);
                    primaries.len() - 1
                }
            };
            let index = u16::try_from(index).map_err(|_| bad())?;
            owner[start..=end].fill(Some(index));
        }
        Ok(SlotMap { owner })
    }
}

/// The batch side of a cluster store: its connection and the slot map it
/// groups batches by. Shared by the store's clones.
///
/// Concurrency: the map sits behind an `RwLock` taken only to clone or swap
/// an `Arc` (never across an await); `stale` asks the next batch to read
/// the map again. Two batches that both find it stale both read it; the
/// last one wins, which is harmless.
pub(crate) struct ClusterBatches {
    conn: ClusterHandle,
    map: RwLock<Option<Arc<SlotMap>>>,
    stale: AtomicBool,
    /// Pipelines sent so far, for tests that count round trips.
    pub(crate) pipelines: std::sync::atomic::AtomicU64,
}

/// What to do with one command's answer from a node's pipeline.
enum Answer {
    Done(Value),
    /// `NOSCRIPT`: load the script on that node and send it again.
    NoScript,
    /// The node does not serve the key now (`MOVED`, `ASK`, `TRYAGAIN`, a
    /// slot being migrated): send it again on its own.
    Elsewhere,
}

fn answer(value: Value) -> Answer {
    match &value {
        Value::ServerError(e) if e.code() == "NOSCRIPT" => Answer::NoScript,
        Value::ServerError(e)
            if matches!(
                e.kind(),
                Some(ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain)
            ) =>
        {
            Answer::Elsewhere
        }
        _ => Answer::Done(value),
    }
}

impl ClusterBatches {
    pub(crate) fn new(conn: ClusterHandle) -> Self {
        ClusterBatches {
            conn,
            map: RwLock::new(None),
            stale: AtomicBool::new(true),
            pipelines: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The slot map, read again first if it is missing or stale; `None` when
    /// it cannot be read (batches then group by slot: correct, more round trips).
    async fn slot_map(&self) -> Option<Arc<SlotMap>> {
        let current = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if current.is_some() && !self.stale.load(Ordering::Acquire) {
            return current;
        }
        self.stale.store(false, Ordering::Release);
        let reply = self
            .conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await;
        match reply.and_then(|r| SlotMap::parse(&r)) {
            Ok(map) => {
                let map = Arc::new(map);
                *self.map.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(map.clone());
                Some(map)
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the cluster's slot map: batches go by slot");
                self.stale.store(true, Ordering::Release);
                current
            }
        }
    }

    fn route(slot: u16) -> SingleNodeRoutingInfo {
        SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master))
    }

    /// Sends `cmds` (each about the key whose slot is beside it) as one
    /// pipeline per primary, all at once, and returns every answer in order.
    /// `script` is the source of the script the commands `EVALSHA`, if any.
    ///
    /// # Errors
    /// The first error: a node's pipeline that failed, a command answered
    /// with an error (other than the redirections and `NOSCRIPT` handled
    /// here), or a command that failed when sent again.
    pub(crate) async fn run(&self, cmds: Vec<(u16, Cmd)>, script: Option<&str>) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let map = self.slot_map().await;
        // Group id: the primary's index, or the slot itself without a map.
        let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (i, (slot, _)) in cmds.iter().enumerate() {
            let group = match map.as_ref().and_then(|m| m.owner[usize::from(*slot)]) {
                Some(node) => u32::from(node),
                None => SLOTS as u32 + u32::from(*slot),
            };
            groups.entry(group).or_default().push(i);
        }
        let sends = groups
            .into_values()
            .map(|indices| self.send_group(&cmds, indices, script));
        let mut out: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut elsewhere = Vec::new();
        for sent in join_all(sends).await {
            let sent = match sent {
                Ok(sent) => sent,
                Err(e) => {
                    self.stale.store(true, Ordering::Release);
                    return Err(e);
                }
            };
            for (i, answer) in sent {
                match answer {
                    Answer::Done(value) => out[i] = Some(value),
                    Answer::NoScript | Answer::Elsewhere => elsewhere.push(i),
                }
            }
        }
        if !elsewhere.is_empty() {
            self.stale.store(true, Ordering::Release);
            let again = elsewhere.iter().map(|&i| self.send_alone(&cmds[i], script));
            for (i, value) in elsewhere.iter().zip(join_all(again).await) {
                out[*i] = Some(value?);
            }
        }
        out.into_iter()
            .map(|v| {
                let v = v.ok_or_else(|| RedisError::from((ErrorKind::Client, "a batch answer went missing")))?;
                match v {
                    Value::ServerError(e) => Err(e.into()),
                    v => Ok(v),
                }
            })
            .collect()
    }

    /// One pipeline to the primary of the group's first slot (which, by the
    /// map, serves every slot of the group); `NOSCRIPT` answers get the
    /// script loaded there and are sent once more.
    fn send_group<'a>(
        &'a self,
        cmds: &'a [(u16, Cmd)],
        indices: Vec<usize>,
        script: Option<&'a str>,
    ) -> BoxFuture<'a, RedisResult<Vec<(usize, Answer)>>> {
        Box::pin(async move {
            let route = Self::route(cmds[indices[0]].0);
            let mut answers = self.pipeline(cmds, &indices, route.clone()).await?;
            let missing: Vec<usize> = answers
                .iter()
                .filter(|(_, a)| matches!(a, Answer::NoScript))
                .map(|(i, _)| *i)
                .collect();
            if let (Some(source), false) = (script, missing.is_empty()) {
                self.conn
                    .route_command(
                        redis::cmd("SCRIPT").arg("LOAD").arg(source).clone(),
                        RoutingInfo::SingleNode(route.clone()),
                    )
                    .await?;
                let again = self.pipeline(cmds, &missing, route).await?;
                let mut again = again.into_iter();
                for (_, a) in answers.iter_mut().filter(|(_, a)| matches!(a, Answer::NoScript)) {
                    if let Some((_, b)) = again.next() {
                        *a = b;
                    }
                }
            }
            Ok(answers)
        })
    }

    async fn pipeline(
        &self,
        cmds: &[(u16, Cmd)],
        indices: &[usize],
        route: SingleNodeRoutingInfo,
    ) -> RedisResult<Vec<(usize, Answer)>> {
        let mut pipe = redis::pipe();
        for &i in indices {
            pipe.add_command(cmds[i].1.clone());
        }
        self.pipelines.fetch_add(1, Ordering::Relaxed);
        let values = self.conn.route_pipeline(pipe, indices.len(), route).await?;
        if values.len() != indices.len() {
            return Err(RedisError::from((
                ErrorKind::Parse,
                "a node answered a pipeline with the wrong number of replies",
            )));
        }
        Ok(indices.iter().copied().zip(values.into_iter().map(answer)).collect())
    }

    /// One command on its own, routed (and redirected) by redis-rs; a
    /// `NOSCRIPT` gets the script loaded on the key's primary and one more try.
    async fn send_alone(&self, (slot, cmd): &(u16, Cmd), script: Option<&str>) -> RedisResult<Value> {
        let mut conn = RedisConnection::Cluster(self.conn.clone());
        match conn.req_packed_command(cmd).await {
            Err(e) if e.code() == Some("NOSCRIPT") && script.is_some() => {}
            Ok(Value::ServerError(e)) if e.code() == "NOSCRIPT" && script.is_some() => {}
            other => return other,
        }
        self.conn
            .route_command(
                redis::cmd("SCRIPT").arg("LOAD").arg(script.unwrap_or_default()).clone(),
                RoutingInfo::SingleNode(Self::route(*slot)),
            )
            .await?;
        conn.req_packed_command(cmd).await
    }

    /// `PING` to every primary: the cluster answers for every slot.
    pub(crate) async fn ping(&self) -> RedisResult<()> {
        self.conn
            .route_command(
                redis::cmd("PING"),
                RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded))),
            )
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::Slot;

    use super::*;

    /// Our slot is Redis's (redis-rs's `Slot::for_key` agrees), hash tags included.
    #[test]
    fn slots_are_computed_as_redis_does() {
        for key in [
            "",
            "a",
            "user:profile:1001",
            "{user:1}#ver",
            "lock:{user:1}",
            "a{}b",
            "x{y",
            "{}",
        ] {
            assert_eq!(Slot::new(slot(key.as_bytes())), Some(Slot::for_key(key)), "{key}");
        }
        // Known values (CLUSTER KEYSLOT).
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
    }

    #[test]
    fn a_slot_map_is_parsed_and_bad_replies_are_errors() {
        let node = |port: i64| Value::Array(vec![Value::BulkString(b"127.0.0.1".to_vec()), Value::Int(port)]);
        let range = |a: i64, b: i64, port: i64| Value::Array(vec![Value::Int(a), Value::Int(b), node(port)]);
        let map = SlotMap::parse(&Value::Array(vec![
            range(0, 5460, 7000),
            range(5461, 10922, 7001),
            range(10923, 16383, 7002),
            range(100, 100, 7002),
        ]))
        .unwrap();
        assert_eq!(map.owner[0], Some(0));
        assert_eq!(map.owner[100], Some(2));
        assert_eq!(map.owner[5461], Some(1));
        assert_eq!(map.owner[16383], Some(2));
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![range(0, 16384, 7000)]),
            Value::Array(vec![range(5, 4, 7000)]),
            Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(1), Value::Nil])]),
        ] {
            assert!(SlotMap::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
