//! [`Flusher`]: applies the write-back log to the database, through a
//! consumer group.
//!
//! Owns reading the stream (`XREADGROUP`, the consumer's own pending
//! entries first), claiming a dead flusher's entries (`XAUTOCLAIM`),
//! parking entries that cannot be applied (a dead-letter stream), handing
//! batches to the [`WriteBackSink`], acknowledging and deleting what the
//! sink committed (`XACK` + `XDEL`), retrying with backoff, stopping
//! gracefully, and the flusher's metrics. It never writes the cache.
//!
//! The order that makes it safe: an entry is acknowledged only after the
//! sink returned `Ok` for a batch holding it (or a newer write of its key),
//! so a flusher that dies at any point leaves every unapplied write pending
//! in the group, where it is read again (same consumer name) or claimed
//! (any other consumer, once idle for [`FlusherConfig::min_idle`]). The
//! price is at-least-once delivery: a batch committed just before a crash
//! is applied again, which the sink's versioned upsert turns into a no-op.
//!
//! Concurrency: a flusher is one loop on one connection of its own, one
//! command at a time. A blocking `XREADGROUP` holds its connection until
//! it returns, so sharing it (with a store, with a second loop) would hold
//! their commands behind the block; run several flushers (processes or
//! tasks, each its own consumer) to flush in parallel.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::Hash;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{RedisError, Value};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::FlusherConfig;
use super::entry::{self, Corrupt, LoggedWrite, RawEntry};
use super::sink::WriteBackSink;
use super::stats::{FlusherMonitor, FlusherStats, Meters, Tally};
use crate::codec::{Codec, Json};
use crate::error::{Error, ErrorKind, Result};
use crate::store::redis::{Reconnecting, check_connection, client_for, connect_error, store_error};

/// A stop asked for, and how long the batch in hand may still take.
struct Stop {
    asked: watch::Receiver<bool>,
    grace: Duration,
    deadline: Option<Instant>,
}

impl Stop {
    /// True once a stop was asked for (and starts the grace period).
    fn asked(&mut self) -> bool {
        if self.deadline.is_none() && *self.asked.borrow() {
            // Capped: `Duration::MAX` says "no bound" (`deadline_after`).
            self.deadline = Some(crate::engine::deadline_after(self.grace));
        }
        self.deadline.is_some()
    }

    /// Resolves when a stop is asked for; never, if its sender is gone.
    async fn wait(&mut self) {
        while !self.asked() {
            if self.asked.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves once a stop was asked for and its grace period is over.
    async fn expired(&mut self) {
        self.wait().await;
        if let Some(deadline) = self.deadline {
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Sleeps `delay`, cut short by the end of the grace period; false
    /// when that has come (give the batch up).
    async fn pause(&mut self, delay: Duration) -> bool {
        let until = crate::engine::deadline_after(delay);
        if !self.asked() {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                () = self.wait() => {}
            }
        }
        let deadline = self.deadline.unwrap_or(until);
        tokio::time::sleep_until(until.min(deadline)).await;
        Instant::now() < deadline
    }
}

/// Applies a write-back log to the database: reads the stream through a
/// consumer group, hands batches to a [`WriteBackSink`], and acknowledges
/// (and deletes) only what the sink committed. See the module's text in
/// [`crate::writeback`] for what it guarantees.
///
/// # Examples
///
/// ```no_run
/// # use aside::writeback::{LoggedWrite, WriteBackSink};
/// # struct Table;
/// # #[async_trait::async_trait]
/// # impl WriteBackSink<u64, String> for Table {
/// #     type Error = std::io::Error;
/// #     async fn upsert(&self, _: &[LoggedWrite<u64, String>]) -> Result<(), Self::Error> { Ok(()) }
/// # }
/// # async fn run() -> aside::Result<()> {
/// use aside::writeback::{Flusher, FlusherConfig};
/// let config = FlusherConfig::new("aside:wb:users");
/// let mut flusher = Flusher::<u64, String, _>::connect("redis://127.0.0.1:6379", config, Table).await?;
/// // Until Ctrl-C; the batch in hand is finished and acknowledged first.
/// let stats = flusher.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// println!("{} writes flushed", stats.flushed);
/// # Ok(()) }
/// ```
pub struct Flusher<K, V, S> {
    conn: Reconnecting,
    config: FlusherConfig,
    dead_stream: String,
    sink: S,
    codec: Arc<dyn Codec<V>>,
    tally: Arc<Tally>,
    meters: Meters,
    /// This consumer's own pending entries (of a previous life under the
    /// same name) are read before new ones.
    own_pending_done: bool,
    claim_cursor: String,
    next_claim: Instant,
    _key: PhantomData<fn() -> K>,
}

impl<K, V, S> std::fmt::Debug for Flusher<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher")
            .field("stream", &self.config.stream)
            .field("group", &self.config.group)
            .field("consumer", &self.config.consumer)
            .finish_non_exhaustive()
    }
}

/// A Redis error of the flusher as an [`Error`].
fn redis_failed(what: &str, e: RedisError) -> Error {
    if e.is_timeout() {
        return Error::with_source(ErrorKind::Timeout, format!("{what}: no answer in time"), store_error(e));
    }
    Error::with_source(ErrorKind::Store, what.to_owned(), store_error(e))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Of several writes of one key, the one of the highest version (the
/// later in log order on a tie), in the order the keys first came.
fn newest_per_key<K: Hash + Eq + Clone, V>(writes: Vec<LoggedWrite<K, V>>) -> Vec<LoggedWrite<K, V>> {
    let mut slot: HashMap<K, usize> = HashMap::with_capacity(writes.len());
    let mut kept: Vec<LoggedWrite<K, V>> = Vec::with_capacity(writes.len());
    for write in writes {
        match slot.get(&write.key) {
            Some(&i) if kept[i].version > write.version => {}
            Some(&i) => kept[i] = write,
            None => {
                slot.insert(write.key.clone(), kept.len());
                kept.push(write);
            }
        }
    }
    kept
}

impl<K, V, S> Flusher<K, V, S>
where
    K: FromStr + Hash + Eq + Clone + Send + Sync + 'static,
    V: DeserializeOwned + Send + Sync + 'static,
    S: WriteBackSink<K, V>,
{
    /// Connects to the server at `url` and makes sure the consumer group
    /// exists. Values are decoded with [`Json`] (the default codec of a
    /// namespace); see [`Flusher::with_codec`].
    ///
    /// # Errors
    /// [`ErrorKind::Store`] when the server cannot be reached or refuses to
    /// create the group; [`ErrorKind::Config`] for a batch size of 0.
    pub async fn connect(url: &str, config: FlusherConfig, sink: S) -> Result<Self>
    where
        Json: Codec<V>,
    {
        if config.batch_size == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                "a flusher's batch size must be at least 1",
            ));
        }
        let mut redis_config = config.redis.clone();
        // The blocking read waits `block` before it answers.
        redis_config.response_timeout = redis_config.response_timeout.saturating_add(config.block);
        let client = client_for(url, &redis_config)?;
        let unreachable = |e| connect_error("cannot connect the write-back flusher to Redis at", url, e);
        let mut conn = Reconnecting::connect(client, &redis_config)
            .await
            .map_err(unreachable)?;
        check_connection(&mut conn, redis_config.connect_timeout)
            .await
            .map_err(unreachable)?;
        let dead_stream = config
            .dead_stream
            .clone()
            .unwrap_or_else(|| format!("{}:dead", config.stream));
        let mut flusher = Flusher {
            conn,
            meters: Meters::register(&config.stream),
            dead_stream,
            sink,
            codec: Arc::new(Json),
            tally: Arc::default(),
            own_pending_done: false,
            claim_cursor: "0-0".to_owned(),
            next_claim: Instant::now(),
            config,
            _key: PhantomData,
        };
        flusher.ensure_group().await?;
        Ok(flusher)
    }

    /// Decodes values with `codec`: the codec of the namespace that logs to
    /// the stream. An entry of another codec is parked.
    #[must_use]
    pub fn with_codec(mut self, codec: impl Codec<V>) -> Self {
        self.codec = Arc::new(codec);
        self
    }

    /// The stats so far.
    pub fn stats(&self) -> FlusherStats {
        self.tally.snapshot()
    }

    /// A handle that reads the stats while [`Flusher::run_until`] runs.
    pub fn monitor(&self) -> FlusherMonitor {
        FlusherMonitor(self.tally.clone())
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    async fn ensure_group(&mut self) -> Result<()> {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg("0")
            .arg("MKSTREAM")
            .exec_async(&mut self.conn)
            .await;
        match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(redis_failed(
                &format!(
                    "cannot create the consumer group {} of {}",
                    self.config.group, self.config.stream
                ),
                e,
            )),
        }
    }

    /// Flushes until `shutdown` resolves, then finishes the batch in hand
    /// (retrying it for up to [`FlusherConfig::shutdown_grace`]),
    /// acknowledges it, and returns. Redis and sink failures are logged and
    /// retried with backoff; they never end the loop.
    ///
    /// # Errors
    /// [`ErrorKind::Timeout`] when the batch in hand could not be committed
    /// and acknowledged within the grace period: its entries stay pending,
    /// for this consumer's next start or another flusher's claim.
    pub async fn run_until(&mut self, shutdown: impl Future<Output = ()>) -> Result<FlusherStats> {
        let (ask, asked) = watch::channel(false);
        let signal = async move {
            shutdown.await;
            let _ = ask.send(true);
            // Keeps the sender, so the loop sees the stop and nothing else.
            std::future::pending::<Infallible>().await
        };
        tokio::select! {
            stats = self.run_loop(asked) => stats,
            never = signal => match never {},
        }
    }

    async fn run_loop(&mut self, asked: watch::Receiver<bool>) -> Result<FlusherStats> {
        let mut stop = Stop {
            asked,
            grace: self.config.shutdown_grace,
            deadline: None,
        };
        let mut backoff = self.config.retry_min;
        while !stop.asked() {
            let entries = tokio::select! {
                () = stop.wait() => break,
                entries = self.next_entries(true) => entries,
            };
            match entries {
                Ok(entries) => {
                    backoff = self.config.retry_min;
                    if !entries.is_empty() {
                        self.process(entries, &mut stop).await?;
                    }
                    self.look_at_log().await;
                }
                Err(e) => {
                    self.retried(&e, "reading the write-back log");
                    if !stop.pause(backoff).await {
                        break;
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
        // The stop may have cancelled a read that Redis had answered: its
        // entries are pending for this consumer. The next run or drain of
        // this flusher reads them first.
        self.own_pending_done = false;
        Ok(self.stats())
    }

    /// Flushes what the log holds for this flusher now (its own pending
    /// entries, idle ones it can claim, and new ones), without waiting for
    /// more, and returns. Sink failures are retried with backoff, for as
    /// long as they last.
    ///
    /// # Errors
    /// The first Redis failure.
    pub async fn flush_available(&mut self) -> Result<FlusherStats> {
        // Its own pending entries first, always: a read that a stop of
        // `run_until` cancelled in flight may have been delivered (the
        // entries are then pending for this consumer, and nobody else
        // claims them before they are `min_idle` old).
        self.own_pending_done = false;
        let (_keep, asked) = watch::channel(false);
        let mut stop = Stop {
            asked,
            grace: self.config.shutdown_grace,
            deadline: None,
        };
        loop {
            let entries = self.next_entries(false).await?;
            if entries.is_empty() {
                break;
            }
            self.process(entries, &mut stop).await?;
        }
        self.look_at_log().await;
        Ok(self.stats())
    }

    fn retried(&self, e: &Error, doing: &str) {
        self.tally.retries.fetch_add(1, Ordering::Relaxed);
        self.meters.retries.increment(1);
        tracing::warn!(stream = self.config.stream, error = %e, "{doing} failed: retrying");
    }

    /// Runs a read of the group; a group that is gone (the server lost its
    /// data, someone destroyed it) is created again for the next try.
    async fn query(&mut self, cmd: &redis::Cmd, what: &str) -> Result<Value> {
        match cmd.query_async(&mut self.conn).await {
            Ok(reply) => Ok(reply),
            Err(e) => {
                if e.code() == Some("NOGROUP") {
                    let _ = self.ensure_group().await;
                }
                Err(redis_failed(what, e))
            }
        }
    }

    async fn read_group(&mut self, from: &str, block: bool) -> Result<Vec<RawEntry>> {
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(self.config.batch_size);
        if block {
            read.arg("BLOCK").arg(millis(self.config.block).max(1));
        }
        read.arg("STREAMS").arg(&self.config.stream).arg(from);
        let reply: Value = self.query(&read, "XREADGROUP failed").await?;
        entry::read_reply(&reply).map_err(|m| Error::new(ErrorKind::Store, format!("XREADGROUP: {}", m.0)))
    }

    /// The next entries to apply: this consumer's own pending ones first,
    /// then idle ones of other consumers (one claim pass at a time, every
    /// `min_idle` at most), then new ones (waiting up to `block` if `block`).
    /// Empty when there is nothing.
    async fn next_entries(&mut self, block: bool) -> Result<Vec<RawEntry>> {
        if !self.own_pending_done {
            let own = self.read_group("0", false).await?;
            if !own.is_empty() {
                return Ok(own);
            }
            self.own_pending_done = true;
        }
        if Instant::now() >= self.next_claim {
            let claimed = self.claim().await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
        }
        self.read_group(">", block).await
    }

    async fn claim(&mut self) -> Result<Vec<RawEntry>> {
        let mut claim = redis::cmd("XAUTOCLAIM");
        claim
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg(millis(self.config.min_idle))
            .arg(&self.claim_cursor)
            .arg("COUNT")
            .arg(self.config.batch_size);
        let reply: Value = self.query(&claim, "XAUTOCLAIM failed").await?;
        let (cursor, entries) =
            entry::autoclaim_reply(&reply).map_err(|m| Error::new(ErrorKind::Store, format!("XAUTOCLAIM: {}", m.0)))?;
        if cursor == "0-0" {
            // A pass is done: the next one when entries pending now may
            // have become idle enough, and at least a second later.
            let every = self
                .config
                .min_idle
                .clamp(Duration::from_millis(10), Duration::from_secs(5));
            self.next_claim = Instant::now() + every;
        }
        self.claim_cursor = cursor;
        let live = entries.iter().filter(|e| e.fields.is_some()).count() as u64;
        if live > 0 {
            self.tally.claimed.fetch_add(live, Ordering::Relaxed);
            self.meters.claimed.increment(live);
            tracing::info!(
                stream = self.config.stream,
                claimed = live,
                "claimed the pending writes of an idle flusher"
            );
        }
        Ok(entries)
    }

    /// Applies one read's entries: parks what cannot be applied, commits
    /// the rest through the sink, then acknowledges. Only past the grace
    /// period of a stop does it give up, leaving the entries pending.
    async fn process(&mut self, entries: Vec<RawEntry>, stop: &mut Stop) -> Result<()> {
        let mut writes = Vec::with_capacity(entries.len());
        let mut parked = Vec::new();
        let mut done = Vec::with_capacity(entries.len());
        for raw in entries {
            if raw.fields.is_none() {
                // Deleted while pending: only its acknowledgement is left.
                done.push(raw.id);
                continue;
            }
            let decoded = raw
                .decode::<K, V>(self.codec.as_ref())
                .and_then(|w| self.sink.validate(&w).map(|()| w).map_err(Corrupt));
            match decoded {
                Ok(write) => writes.push(write),
                Err(Corrupt(reason)) => parked.push((raw, reason)),
            }
        }
        // Parked before anything is acknowledged: a crash in between parks
        // again (a duplicate in the dead-letter stream), never drops.
        for (raw, reason) in &parked {
            self.until_done(stop, "parking a corrupt write-back entry", || self.park(raw, reason))
                .await?;
        }
        let mut ids: Vec<String> = parked.into_iter().map(|(raw, _)| raw.id).collect();
        ids.append(&mut done);
        let logged = writes.len() as u64;
        ids.extend(writes.iter().map(|w| w.id.clone()));
        let batch = newest_per_key(writes);
        if !batch.is_empty() {
            let mut backoff = self.config.retry_min;
            loop {
                // A sink that hangs is given up at the end of a stop's
                // grace: the batch stays pending, committed or not, and
                // its replay is harmless.
                let attempt = tokio::select! {
                    result = self.sink.upsert(&batch) => result,
                    () = stop.expired() => return Err(self.gave_up(batch.len())),
                };
                match attempt {
                    Ok(()) => break,
                    Err(e) => {
                        let e = Error::with_source(ErrorKind::Store, "the sink did not commit the batch", e);
                        self.retried(&e, "committing a write-back batch");
                        if !stop.pause(backoff).await {
                            return Err(self.gave_up(batch.len()));
                        }
                        backoff = (backoff * 2).min(self.config.retry_max);
                    }
                }
            }
        }
        // Only now, with the batch committed, is it acknowledged.
        if !ids.is_empty() {
            self.until_done(stop, "acknowledging a committed write-back batch", || {
                self.acknowledge(&ids)
            })
            .await?;
        }
        if logged > 0 {
            self.tally.flushed.fetch_add(logged, Ordering::Relaxed);
            self.tally.batches.fetch_add(1, Ordering::Relaxed);
            self.meters.flushed.increment(logged);
            self.meters.batches.increment(1);
        }
        Ok(())
    }

    fn gave_up(&self, writes: usize) -> Error {
        Error::new(
            ErrorKind::Timeout,
            format!(
                "stopped with a batch of {writes} writes of {} not committed within the {:?} grace: they stay pending for the next flusher",
                self.config.stream, self.config.shutdown_grace
            ),
        )
    }

    /// Runs a Redis step until it succeeds, with backoff; gives up only
    /// past the grace period of a stop.
    async fn until_done<Fut>(&self, stop: &mut Stop, doing: &str, mut step: impl FnMut() -> Fut) -> Result<()>
    where
        Fut: Future<Output = Result<()>>,
    {
        let mut backoff = self.config.retry_min;
        loop {
            match step().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.retried(&e, doing);
                    if !stop.pause(backoff).await {
                        return Err(Error::with_source(
                            ErrorKind::Timeout,
                            format!("stopped while {doing}: the entries stay pending for the next flusher"),
                            e,
                        ));
                    }
                    backoff = (backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    /// Copies an entry that cannot be applied to the dead-letter stream,
    /// with its id and the reason, and counts it.
    async fn park(&self, raw: &RawEntry, reason: &str) -> Result<()> {
        let mut add = redis::cmd("XADD");
        add.arg(&self.dead_stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.dead_max_len)
            .arg("*")
            .arg("reason")
            .arg(reason)
            .arg("id")
            .arg(&raw.id)
            .arg("stream")
            .arg(&self.config.stream);
        for (name, value) in raw.fields.iter().flatten() {
            add.arg(name.as_slice()).arg(value.as_slice());
        }
        let _: Value = add
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_failed("cannot park a corrupt write-back entry", e))?;
        self.tally.corrupt.fetch_add(1, Ordering::Relaxed);
        self.meters.corrupt.increment(1);
        tracing::error!(
            stream = self.config.stream,
            id = raw.id,
            reason,
            dead_stream = self.dead_stream,
            "a write-back entry cannot be applied: parked"
        );
        Ok(())
    }

    /// `XACK` and `XDEL` of `ids`, in one transaction: what is acknowledged
    /// leaves the log, so the log holds only unflushed writes.
    async fn acknowledge(&self, ids: &[String]) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XACK")
            .arg(&self.config.stream)
            .arg(&self.config.group)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&self.config.stream)
            .arg(ids)
            .ignore();
        pipe.exec_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_failed("cannot acknowledge write-back entries", e))
    }

    /// Updates the log length and flush lag (age of the oldest entry still
    /// in the log). A failure leaves them as they were.
    async fn look_at_log(&mut self) {
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN")
            .arg(&self.config.stream)
            .cmd("XRANGE")
            .arg(&self.config.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        let Ok((len, oldest)) = pipe.query_async::<(u64, Value)>(&mut self.conn).await else {
            return;
        };
        let lag = match entry::read_reply(&Value::Array(vec![Value::Array(vec![Value::Nil, oldest])])) {
            Ok(entries) => entries
                .first()
                .map_or(0, |e| now_ms().saturating_sub(entry::id_ms(&e.id))),
            Err(_) => 0,
        };
        self.tally.log_length.store(len, Ordering::Relaxed);
        self.tally.lag_ms.store(lag, Ordering::Relaxed);
        self.meters.log_length.set(len as f64);
        self.meters.lag.set(lag as f64 / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_keeps_the_newest_write_of_each_key() {
        let w = |key: u64, version: u64, value: &str| LoggedWrite::new("n", key, version, value.to_owned());
        let kept = newest_per_key(vec![
            w(1, 2, "a"),
            w(2, 1, "b"),
            w(1, 1, "older, later"),
            w(1, 3, "c"),
            w(2, 1, "tie, later"),
        ]);
        let got: Vec<_> = kept.iter().map(|w| (w.key, w.version, w.value.as_str())).collect();
        assert_eq!(got, vec![(1, 3, "c"), (2, 1, "tie, later")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_gives_up_only_past_the_grace_after_a_stop() {
        let (ask, asked) = watch::channel(false);
        let mut stop = Stop {
            asked,
            grace: Duration::from_secs(10),
            deadline: None,
        };
        assert!(stop.pause(Duration::from_secs(60)).await, "no stop: the full pause");
        ask.send(true).unwrap();
        assert!(stop.pause(Duration::from_secs(3)).await, "within the grace");
        assert!(!stop.pause(Duration::from_secs(60)).await, "cut at the grace's end");
        let started = Instant::now();
        stop.expired().await;
        assert_eq!(started.elapsed(), Duration::ZERO, "the grace is over already");
    }

    /// `shutdown_grace` and `retry_max` are the user's, and `Duration::MAX`
    /// is a common way to say "no bound": it bounds nothing and panics
    /// nowhere (it panicked on `Instant + Duration::MAX`).
    #[tokio::test(start_paused = true)]
    async fn a_grace_or_pause_of_duration_max_bounds_nothing_and_panics_nowhere() {
        let (ask, asked) = watch::channel(false);
        let mut stop = Stop {
            asked,
            grace: Duration::MAX,
            deadline: None,
        };
        let started = Instant::now();
        let paused = tokio::time::timeout(Duration::from_secs(3600), stop.pause(Duration::MAX)).await;
        assert!(
            paused.is_err(),
            "a pause of Duration::MAX is still pausing an hour later"
        );
        ask.send(true).unwrap();
        assert!(stop.asked());
        assert!(
            stop.pause(Duration::from_secs(3600)).await,
            "an endless grace is not over"
        );
        assert!(started.elapsed() >= Duration::from_secs(7200));
    }
}
