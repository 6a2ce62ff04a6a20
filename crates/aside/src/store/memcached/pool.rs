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
//!
//! Generations: memcached's CAS counter starts over when the server
//! restarts, so a CAS (and a lease token made of one) from before a
//! restart can match an item written after it. Every new connection
//! therefore asks the server who it is (`stats`: pid and start time) and
//! gets the generation of that boot, a small number this process assigns
//! in the order it meets boots. A connection never outlives the server
//! process it reached (a restart closes it), so the generation of the
//! connection an exchange runs on is the generation of the server that
//! answers it; `run_with` hands it to the caller, which leaves out the
//! CAS-guarded requests of another generation.

use std::collections::VecDeque;
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

/// Generations are 14 bits: they share a lease token's 64 with the CAS.
pub(super) const GENERATION_BITS: u32 = 14;

/// Boots remembered: a connection opened just before a restart can report
/// the old boot after one opened just after it reported the new one, and
/// must get the old boot's generation back, not a new one.
const BOOTS_KEPT: usize = 16;

/// The boots of one server this process has met, with their generations.
#[derive(Debug, Default)]
struct Boots {
    known: VecDeque<(u64, u16)>,
    next: u16,
}

/// One server and its pool.
#[derive(Debug)]
pub(super) struct Server {
    addr: String,
    limits: Limits,
    idle: Mutex<Vec<(Conn, Instant)>>,
    permits: Semaphore,
    boots: Mutex<Boots>,
}

fn timed_out(what: &str, addr: &str, after: Duration) -> StoreError {
    StoreError::connection(format!("{what} {addr} timed out after {after:?}"))
}

impl Server {
    pub(super) fn new(addr: String, limits: Limits) -> Self {
        Server {
            addr,
            permits: Semaphore::new(limits.max_connections.max(1)),
            limits,
            idle: Mutex::new(Vec::new()),
            boots: Mutex::new(Boots::default()),
        }
    }

    /// The generation of the server process with identity `boot`: the same
    /// for the same boot, another for every boot met since (modulo
    /// 2^[`GENERATION_BITS`], far more restarts than a lease can live through).
    fn generation_of(&self, boot: u64) -> u16 {
        let mut boots = self.boots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, generation)) = boots.known.iter().find(|(b, _)| *b == boot) {
            return *generation;
        }
        let generation = boots.next;
        boots.next = (generation + 1) % (1 << GENERATION_BITS);
        if boots.known.len() == BOOTS_KEPT {
            boots.known.pop_front();
        }
        boots.known.push_back((boot, generation));
        generation
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

    /// Opens a new connection and learns its server's generation, bounded
    /// by the connect timeout.
    pub(super) async fn open(&self) -> StoreResult<Conn> {
        let t = self.limits.connect_timeout;
        tokio::time::timeout(t, async {
            let mut conn = Conn::open(&self.addr).await?;
            let boot = conn.boot_identity().await?;
            conn.generation = self.generation_of(boot);
            Ok::<_, StoreError>(conn)
        })
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
        let (metas, _) = self.run_with(|_| (request.to_vec(), count), max_value).await?;
        Ok(metas)
    }

    /// As [`Server::run`], with the pipeline built by `build` from the
    /// generation of the connection it will run on (`build` returns the
    /// request and how many answers it expects); returns that generation
    /// with the answers.
    pub(super) async fn run_with(
        &self,
        build: impl FnOnce(u16) -> (Vec<u8>, usize),
        max_value: usize,
    ) -> StoreResult<(Vec<Meta>, u16)> {
        let t = self.limits.connect_timeout;
        let (_permit, mut conn) = tokio::time::timeout(t, async {
            let permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| StoreError::connection("pool closed"))?;
            Ok::<_, StoreError>((permit, self.checkout().await?))
        })
        .await
        .map_err(|_| timed_out("a connection to", &self.addr, t))??;
        let generation = conn.generation;
        let (request, count) = build(generation);
        let t = self.limits.response_timeout;
        match tokio::time::timeout(t, conn.exchange(&request, count, max_value)).await {
            Ok(Ok(metas)) => {
                self.push_idle(conn);
                Ok((metas, generation))
            }
            Ok(Err(e)) => {
                if matches!(e, StoreError::Connection { .. }) {
                    self.clear_idle();
                }
                Err(e)
            }
            Err(_) => Err(timed_out("a response from", &self.addr, t)),
        }
    }
}
