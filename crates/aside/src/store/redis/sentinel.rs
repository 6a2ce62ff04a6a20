//! The connection of a [`RedisStore`](super::RedisStore) found through
//! Redis Sentinel: the primary Sentinel names, followed through failovers.
//!
//! Owns following a failover. `ConnectionManager` reconnects to the address
//! it was made with, which after a failover is a dead server or a demoted
//! replica. So a command that fails the way a lost primary fails (I/O,
//! refused, timeout, `READONLY`, `MASTERDOWN`) starts one background task that
//! asks Sentinel for the primary and, when it has moved, swaps in a
//! connection to the new one. The failing command still fails (the engine
//! treats it as a miss and falls to the loader); the next commands go to
//! the new primary, and so does the fill subscription when it reconnects
//! (see [`ClientSource`]). Why a background task and not a retry in the request:
//! a failover takes seconds, and no read may wait that long.
//!
//! Concurrency: the current connection sits behind a `std::sync::RwLock`
//! held only to clone or replace it (never across an await); one resolve
//! runs at a time (an `AtomicBool`); the task holds a `Weak`, so it ends
//! with the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::ConnectionLike;

use super::{Reconnecting, RedisConfig};
use redis::sentinel::SentinelClient;
use redis::{Cmd, ConnectionAddr, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value};

/// A store's connection to the primary Sentinel names, followed through
/// failovers: cheap to clone, every clone shares the current connection.
#[derive(Clone)]
pub struct SentinelHandle(pub(crate) Arc<SentinelConn>);

impl SentinelHandle {
    /// The connection commands go to now.
    pub(crate) fn manager(&self) -> Reconnecting {
        self.0.current().1
    }

    pub(crate) fn req_packed_command<'a>(&'a self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut manager = self.manager();
            self.watched(manager.req_packed_command(cmd)).await
        })
    }

    pub(crate) fn req_packed_commands<'a>(
        &'a self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let mut manager = self.manager();
            self.watched(manager.req_packed_commands(pipeline, offset, count)).await
        })
    }

    /// Runs `request` to the primary and hands its answer to `after`. A
    /// timeout must reach `after` (it starts the search for a new
    /// primary): the connection's own timer reports it as an error when it
    /// fires first, `given_up` when the caller's does.
    async fn watched<T>(&self, request: impl std::future::Future<Output = RedisResult<T>>) -> RedisResult<T> {
        let mut given_up = GivenUpAtDeadline::new(&self.0);
        let answer = request.await;
        given_up.answered();
        self.0.after(&answer);
        answer
    }
}

/// A request to the primary whose caller may give up on it first: when
/// the engine's operation timeout is shorter than the store's response
/// timeout, the engine's timer drops the request before the store's own
/// timer can fail it, and `after` never sees the timeout that would start
/// the search for a new primary. Dropped unanswered at or past its
/// caller's deadline, the request is reported to `after` as the timeout it
/// was to its caller (`tests/redis_sentinel.rs`,
/// `a_hung_primary_is_left_when_the_engine_gives_up_before_the_store`).
/// Dropped earlier (the caller cancelled for reasons of its own), or with
/// no caller deadline, it reports nothing.
struct GivenUpAtDeadline<'a> {
    conn: &'a Arc<SentinelConn>,
    deadline: Option<tokio::time::Instant>,
}

impl<'a> GivenUpAtDeadline<'a> {
    /// Must be made while the request's future is polled: the caller's
    /// deadline is a task-local of that poll.
    fn new(conn: &'a Arc<SentinelConn>) -> Self {
        GivenUpAtDeadline {
            conn,
            deadline: crate::store::caller_deadline(),
        }
    }

    /// The request answered (whatever it answered): `after` sees that.
    fn answered(&mut self) {
        self.deadline = None;
    }
}

impl Drop for GivenUpAtDeadline<'_> {
    fn drop(&mut self) {
        if self
            .deadline
            .is_some_and(|deadline| tokio::time::Instant::now() >= deadline)
        {
            let timeout = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the caller's deadline passed before the primary answered",
            );
            self.conn.after::<()>(&Err(RedisError::from(timeout)));
        }
    }
}

/// Clears a store's `resolving` flag when the search task that set it
/// ends, however it ends: done, given up, or dropped with its runtime
/// (`tests/redis_sentinel.rs`,
/// `a_search_dropped_with_its_runtime_does_not_stop_the_next_one`).
struct EndsSearch(Weak<SentinelConn>);

impl Drop for EndsSearch {
    fn drop(&mut self) {
        if let Some(conn) = self.0.upgrade() {
            conn.resolving.store(false, Ordering::Release);
        }
    }
}

/// True for an error that a primary gone away (or demoted) gives.
fn lost_primary(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
}

/// The primary of one Sentinel-monitored master name.
pub(crate) struct SentinelConn {
    current: RwLock<(ConnectionAddr, Reconnecting, redis::Client)>,
    sentinel: tokio::sync::Mutex<SentinelClient>,
    config: RedisConfig,
    /// Bounds one question to Sentinel plus the connect to the primary.
    resolve_timeout: Duration,
    resolving: AtomicBool,
}

impl SentinelConn {
    /// Asks Sentinel for the primary of its master name and connects to it.
    ///
    /// # Errors
    /// When no Sentinel answers, none names a primary that says it is one,
    /// or the primary cannot be reached, within `resolve_timeout`.
    pub(crate) async fn connect(
        sentinel: SentinelClient,
        config: RedisConfig,
        resolve_timeout: Duration,
    ) -> RedisResult<Arc<Self>> {
        let sentinel = tokio::sync::Mutex::new(sentinel);
        let client = Self::ask(&sentinel, resolve_timeout).await?;
        let manager = Self::manager_for(&client, &config, resolve_timeout).await?;
        let conn = Arc::new(SentinelConn {
            current: RwLock::new((client.get_connection_info().addr().clone(), manager, client)),
            sentinel,
            config,
            resolve_timeout,
            resolving: AtomicBool::new(false),
        });
        Ok(conn)
    }

    async fn ask(sentinel: &tokio::sync::Mutex<SentinelClient>, within: Duration) -> RedisResult<redis::Client> {
        let ask = async { sentinel.lock().await.async_get_client().await };
        tokio::time::timeout(within, ask).await.unwrap_or_else(|_| {
            Err(RedisError::from((
                ErrorKind::Io,
                "Sentinel did not name a primary in time",
            )))
        })
    }

    async fn manager_for(client: &redis::Client, config: &RedisConfig, within: Duration) -> RedisResult<Reconnecting> {
        let connect = Reconnecting::connect(client.clone(), config);
        tokio::time::timeout(within, connect)
            .await
            .unwrap_or_else(|_| Err(RedisError::from((ErrorKind::Io, "the primary did not answer in time"))))
    }

    pub(crate) fn current(&self) -> (ConnectionAddr, Reconnecting, redis::Client) {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// After a command: on a lost-primary error, starts the resolve task
    /// unless one runs.
    fn after<T>(self: &Arc<Self>, answer: &RedisResult<T>) {
        let Err(e) = answer else { return };
        if !lost_primary(e) || self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            self.resolving.store(false, Ordering::Release);
            return;
        }
        let weak = Arc::downgrade(self);
        // The task owns the flag from here: dropped unrun or half done (its
        // runtime shut down), it still clears it, or no search would ever
        // start again.
        let ends = EndsSearch(weak.clone());
        tokio::spawn(async move {
            let _ends = ends;
            Self::follow(weak).await;
        });
    }

    /// Asks Sentinel until it names a primary that answers (with backoff,
    /// for the seconds a failover takes); swaps the connection when the
    /// primary moved. Ends when the store is dropped, or gives up after
    /// about a minute (the next failing command starts it again).
    async fn follow(weak: Weak<Self>) {
        let mut backoff = Duration::from_millis(100);
        for _ in 0..60 {
            let Some(this) = weak.upgrade() else { return };
            match this.resolve_once().await {
                Ok(()) => return,
                Err(e) => tracing::debug!(error = %e, "Sentinel: no primary yet"),
            }
            drop(this);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn resolve_once(&self) -> RedisResult<()> {
        let client = Self::ask(&self.sentinel, self.resolve_timeout).await?;
        let addr = client.get_connection_info().addr().clone();
        if addr == self.current().0 {
            // Still the primary: its connection reconnects in place, and is
            // replaced after a run of timeouts (a silently lost one).
            return Ok(());
        }
        let manager = Self::manager_for(&client, &self.config, self.resolve_timeout).await?;
        tracing::warn!(primary = %addr, "Sentinel: the primary moved, commands follow it");
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = (addr, manager, client);
        Ok(())
    }
}
