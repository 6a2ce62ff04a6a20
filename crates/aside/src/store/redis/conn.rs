//! The Redis connection of a store or a bus: TCP keepalive and a user
//! timeout on every socket, and a `ConnectionManager` that is replaced
//! after a run of timeouts.
//!
//! Owns how a redis-rs client is built from a URL and a [`RedisConfig`]
//! ([`client`]), [`Reconnecting`], the `ConnectionLike` every command of
//! [`super::RedisStore`] goes through, and [`watched_messages`], the
//! messages of a pub/sub connection that is pinged so that a silently lost
//! one ends instead of staying quiet for good.
//!
//! Why replace: redis-rs's `ConnectionManager` reconnects only when the
//! connection reports an error that says it is broken (I/O, a dropped
//! connection). A response timeout is not one: the next request goes to the
//! same connection. A connection that a middlebox silently lost (a
//! blackhole that healed, a half-open socket, a NAT that forgot the flow)
//! then times out every request until the kernel gives up on it, which
//! with no keepalive can take many minutes. So `Reconnecting` counts
//! consecutive timeouts (an answer resets the count) and, at
//! [`RedisConfig::replace_after_timeouts`], swaps in a new lazily
//! connecting `ConnectionManager`; the old one closes once the requests
//! still in flight on it are done. Keepalive and `TCP_USER_TIMEOUT` make
//! the kernel close such a socket too, but only where the peer's kernel
//! stops acknowledging, and in seconds rather than at once.
//!
//! Concurrency: the current manager sits behind a `RwLock` that is read
//! (and the manager cloned, an `Arc` bump) per command and written only on
//! a replacement; the count is an atomic. A request abandoned by its caller
//! (the engine's operation timeout fired first) after waiting at least half
//! the response timeout counts as a timeout too.
//!
//! One timer per request: the response timeout is `Reconnecting`'s, not
//! redis-rs's, and bounds the whole request, a wait for a reconnect in
//! progress included (redis-rs's bounds only the reply). A request whose
//! caller set an earlier deadline ([`crate::store::under_deadline`], as the
//! engine does for every store call) arms none: the caller's timer ends it
//! first. Before, an engine's hit armed two timers, the engine's and
//! redis-rs's, for the same 250 ms.

use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{TcpSettings, socket2};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use tokio::time::Instant;

/// How often a pub/sub connection with no other traffic is pinged.
pub(crate) const PUBSUB_PING_EVERY: Duration = Duration::from_secs(2);

/// The messages of `pubsub`, ending when the connection closes or when a
/// ping sent every [`PUBSUB_PING_EVERY`] goes unanswered for `bound`: a
/// subscription whose connection a network silently lost would otherwise
/// wait for messages forever, and its owner would never resubscribe.
pub(crate) fn watched_messages(pubsub: redis::aio::PubSub, bound: Duration) -> impl Stream<Item = redis::Msg> + Send {
    let (sink, stream) = pubsub.split();
    let next_ping = Instant::now() + PUBSUB_PING_EVERY;
    futures::stream::unfold(
        (sink, stream, next_ping),
        move |(mut sink, mut stream, mut next_ping)| async move {
            loop {
                tokio::select! {
                    message = stream.next() => return message.map(|m| (m, (sink, stream, next_ping))),
                    () = tokio::time::sleep_until(next_ping) => {
                        match tokio::time::timeout(bound, sink.ping::<Value>()).await {
                            Ok(Ok(_)) => next_ping = Instant::now() + PUBSUB_PING_EVERY,
                            _ => {
                                tracing::warn!("a Redis pub/sub connection stopped answering pings: dropped");
                                return None;
                            }
                        }
                    }
                }
            }
        },
    )
}

use super::RedisConfig;

/// The TCP settings of `config` for every socket: no Nagle delay,
/// keepalive, and `TCP_USER_TIMEOUT` (Linux).
pub(crate) fn tcp_settings(config: &RedisConfig) -> TcpSettings {
    let mut tcp = TcpSettings::default().set_nodelay(true);
    if let Some(idle) = config.tcp_keepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(idle).with_interval(idle);
        tcp = tcp.set_keepalive(keepalive);
    }
    #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
    if let Some(user_timeout) = config.tcp_user_timeout {
        tcp = tcp.set_user_timeout(user_timeout);
    }
    tcp
}

/// The `ConnectionManagerConfig` of `config`.
fn manager_config(config: &RedisConfig) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        // `Reconnecting::bounded` applies it, once per request.
        .set_response_timeout(None)
        .set_number_of_retries(config.reconnect_retries)
        .set_min_delay(config.reconnect_min_delay)
        .set_max_delay(Duration::from_secs(1))
}

/// A `ConnectionManager` replaced after a run of timeouts. Clones share it.
#[derive(Clone)]
pub struct Reconnecting(Arc<Shared>);

struct Shared {
    client: redis::Client,
    config: ConnectionManagerConfig,
    current: RwLock<ConnectionManager>,
    timeouts: AtomicU32,
    /// 0: never replace.
    replace_after: u32,
    /// An abandoned request that waited this long counts as timed out.
    abandoned_after: Duration,
    /// The bound of one request, reply and reconnect wait included.
    response_timeout: Duration,
    replacements: AtomicU64,
}

impl Reconnecting {
    /// Connects (bounded by the config's connect timeout and retries).
    pub(crate) async fn connect(client: redis::Client, config: &RedisConfig) -> RedisResult<Self> {
        let manager_config = manager_config(config);
        let manager = ConnectionManager::new_with_config(client.clone(), manager_config.clone()).await?;
        Ok(Reconnecting(Arc::new(Shared {
            client,
            config: manager_config,
            current: RwLock::new(manager),
            timeouts: AtomicU32::new(0),
            replace_after: config.replace_after_timeouts,
            abandoned_after: config.response_timeout / 2,
            response_timeout: config.response_timeout,
            replacements: AtomicU64::new(0),
        })))
    }

    /// The manager in use now.
    pub(crate) fn current(&self) -> ConnectionManager {
        self.0
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How many times the connection was replaced after timeouts.
    pub(crate) fn replacements(&self) -> u64 {
        self.0.replacements.load(Ordering::Relaxed)
    }

    fn watch(&self) -> Watch<'_> {
        Watch {
            shared: &self.0,
            started: Instant::now(),
            done: false,
        }
    }
}

impl Shared {
    fn answered(&self) {
        if self.timeouts.load(Ordering::Relaxed) != 0 {
            self.timeouts.store(0, Ordering::Relaxed);
        }
    }

    fn timed_out(&self) {
        let n = self.timeouts.fetch_add(1, Ordering::AcqRel) + 1;
        // A manager needs a runtime (a request dropped at a runtime's
        // shutdown has none): the next timeout replaces it.
        if self.replace_after == 0 || n < self.replace_after || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        // One caller wins the replacement; the count starts again.
        if self
            .timeouts
            .compare_exchange(n, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(fresh) => {
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
                self.replacements.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(timeouts = n, "Redis connection replaced after consecutive timeouts");
            }
            Err(e) => tracing::warn!(error = %e, "cannot replace the timed-out Redis connection"),
        }
    }
}

/// Reports one request's outcome, or its abandonment when dropped unfinished.
struct Watch<'a> {
    shared: &'a Shared,
    started: Instant,
    done: bool,
}

impl Watch<'_> {
    fn finish<T>(mut self, result: &RedisResult<T>) {
        self.done = true;
        match result {
            Ok(_) => self.shared.answered(),
            Err(e) if e.is_timeout() => self.shared.timed_out(),
            // A server's error is an answer; a broken connection is
            // ConnectionManager's to reconnect.
            Err(e) if !e.is_io_error() => self.shared.answered(),
            Err(_) => {}
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.done && self.started.elapsed() >= self.shared.abandoned_after {
            self.shared.timed_out();
        }
    }
}

impl Reconnecting {
    /// Sends `cmd` and returns its reply: what `req_packed_command` does,
    /// without its boxed future or a clone of `self`. The hit path's way
    /// in (`RedisStore::peek_fresh`), where both showed in
    /// `scripts/profile-hits redis`.
    pub(crate) async fn request(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut manager = self.current();
        self.bounded(manager.req_packed_command(cmd)).await
    }

    /// `request` bounded by the response timeout, its outcome watched.
    async fn bounded<T>(&self, request: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
        let watch = self.watch();
        // `None`: a response timeout too large to be a deadline bounds nothing.
        let bound = watch.started.checked_add(self.0.response_timeout);
        let result = match bound.filter(|&bound| arms_timer(crate::store::caller_deadline(), bound)) {
            Some(bound) => match tokio::time::timeout_at(bound, request).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("Redis did not answer within {:?}", self.0.response_timeout),
                )
                .into()),
            },
            None => request.await,
        };
        watch.finish(&result);
        result
    }
}

/// Whether a request bounded at `bound` needs a timer of its own: not when
/// its caller gives up on it at `caller` or before.
fn arms_timer(caller: Option<Instant>, bound: Instant) -> bool {
    caller.is_none_or(|caller| caller > bound)
}

impl ConnectionLike for Reconnecting {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.request(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut manager = self.current();
            self.bounded(manager.req_packed_commands(pipeline, offset, count)).await
        })
    }

    fn get_db(&self) -> i64 {
        self.current().get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's deadline comes first (it is taken before the request's
    /// start): no second timer. A caller with a later deadline, or none (a
    /// direct call, the bus, write-back), gets the store's.
    #[test]
    fn a_request_arms_a_timer_only_when_its_caller_would_wait_longer() {
        let start = Instant::now();
        let bound = start + Duration::from_millis(250);
        assert!(!arms_timer(Some(bound), bound), "the engine's default: the same 250 ms");
        assert!(!arms_timer(Some(start + Duration::from_millis(100)), bound));
        assert!(arms_timer(Some(start + Duration::from_secs(2)), bound));
        assert!(arms_timer(None, bound));
    }
}
