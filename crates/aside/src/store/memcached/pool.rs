//! A connection pool for one memcached server, with health checks.
//!
//! Owns connections and the time bounds on them. The pool is a
//! `Mutex<Vec<idle connection>>` plus a semaphore that caps open
//! connections; the mutex is held only to push or pop, never across an
//! await. A connection leaves the pool for exactly one exchange (a pipeline
//! of requests and their responses) and goes back only when that exchange
//! completed cleanly. A timed-out, cancelled (future dropped) or failed
//! exchange drops the connection, which closes it: a half-read response
//! must never reach the next caller. An I/O error also empties the idle
//! list, since a server that broke one connection (a restart, a crash)
//! has usually broken them all.
//!
//! Health checks: a connection idle for longer than
//! [`super::MemcachedConfig::health_check_after`] is checked with the
//! meta no-op (`mn`, answered `MN`) before use and replaced if it fails.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::proto::{Conn, Meta, Status};
use crate::store::{StoreError, StoreResult};

/// Time bounds and sizes of a [`Server`]'s pool.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_connections: usize,
    pub health_check_after: Duration,
}

/// One server and its pool.
#[derive(Debug)]
pub(super) struct Server {
    addr: String,
    limits: Limits,
    idle: Mutex<Vec<(Conn, Instant)>>,
    permits: Semaphore,
}

fn timed_out(what: &str, addr: &str, after: Duration) -> StoreError {
    StoreError::Connection(format!("{what} {addr} timed out after {after:?}"))
}

impl Server {
    pub(super) fn new(addr: String, limits: Limits) -> Self {
        Server {
            addr,
            permits: Semaphore::new(limits.max_connections.max(1)),
            limits,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn addr(&self) -> &str {
        &self.addr
    }

    fn pop_idle(&self) -> Option<(Conn, Instant)> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    /// Puts a connection (back) in the pool, idle from now.
    pub(super) fn push_idle(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((conn, Instant::now()));
    }

    fn clear_idle(&self) {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// Opens a new connection, bounded by the connect timeout.
    pub(super) async fn open(&self) -> StoreResult<Conn> {
        let t = self.limits.connect_timeout;
        tokio::time::timeout(t, Conn::open(&self.addr))
            .await
            .map_err(|_| timed_out("connecting to", &self.addr, t))?
    }

    /// An idle connection that passed its health check, or a new one.
    async fn checkout(&self) -> StoreResult<Conn> {
        while let Some((mut conn, since)) = self.pop_idle() {
            if since.elapsed() < self.limits.health_check_after {
                return Ok(conn);
            }
            let check = tokio::time::timeout(self.limits.response_timeout, conn.exchange(b"mn\r\n", 1, 0)).await;
            if let Ok(Ok(m)) = check
                && m.first().is_some_and(|m| m.status == Status::NoOp)
            {
                return Ok(conn);
            }
            // Failed its check: dropped (closed); try the next one.
        }
        self.open().await
    }

    /// Sends a pipeline of `count` requests and reads their responses, on a
    /// pooled connection. Waiting for a free connection and connecting are
    /// bounded by the connect timeout, the exchange by the response timeout.
    pub(super) async fn run(&self, request: &[u8], count: usize, max_value: usize) -> StoreResult<Vec<Meta>> {
        let t = self.limits.connect_timeout;
        let (_permit, mut conn) = tokio::time::timeout(t, async {
            let permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| StoreError::Connection("pool closed".into()))?;
            Ok::<_, StoreError>((permit, self.checkout().await?))
        })
        .await
        .map_err(|_| timed_out("a connection to", &self.addr, t))??;
        let t = self.limits.response_timeout;
        match tokio::time::timeout(t, conn.exchange(request, count, max_value)).await {
            Ok(Ok(metas)) => {
                self.push_idle(conn);
                Ok(metas)
            }
            Ok(Err(e)) => {
                if matches!(e, StoreError::Connection(_)) {
                    self.clear_idle();
                }
                Err(e)
            }
            Err(_) => Err(timed_out("a response from", &self.addr, t)),
        }
    }
}
