//! [`FlusherConfig`]: the settings of a [`Flusher`](super::Flusher), and
//! their defaults.
//!
//! Owns what can be tuned and why each default is what it is; the flusher
//! reads them, nothing else.

use std::time::Duration;

use crate::store::redis::RedisConfig;

/// Default consumer group of a [`Flusher`](super::Flusher).
pub const DEFAULT_GROUP: &str = "aside-flushers";

/// Settings of a [`Flusher`](super::Flusher).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FlusherConfig {
    /// The stream to flush.
    pub stream: String,
    /// The consumer group (created at `0` if missing, so it sees writes
    /// logged before any flusher ran). Default [`DEFAULT_GROUP`].
    pub group: String,
    /// This flusher's name in the group. A flusher started again under the
    /// same name reads its own pending entries first; under a new name it
    /// claims them once idle. Default `flusher-{pid}`.
    pub consumer: String,
    /// Entries per read, and so per batch at most. Default 100.
    pub batch_size: usize,
    /// How long a read waits for new entries. Default 1 s.
    pub block: Duration,
    /// How long an entry must be pending with another consumer before this
    /// one claims it: longer than a batch can take, or a live but slow
    /// flusher's batch is applied twice (harmless, but wasted). Default 30 s.
    pub min_idle: Duration,
    /// First delay after a failure (sink or Redis), doubled up to
    /// `retry_max`. Default 50 ms.
    pub retry_min: Duration,
    /// Longest delay between retries. Default 5 s.
    pub retry_max: Duration,
    /// After a stop is asked for, how long the batch in hand may still
    /// take (a commit that hangs, retries) before it is left pending, for
    /// another flusher or this one's next start. Default 10 s.
    pub shutdown_grace: Duration,
    /// Where entries that cannot be applied go. Default `{stream}:dead`.
    pub dead_stream: Option<String>,
    /// Bound of the dead-letter stream (approximate trim). Default 10,000.
    pub dead_max_len: u64,
    /// The flusher's connection. Its response timeout bounds every command
    /// but the blocking read, which gets `block` more. Default
    /// [`RedisConfig::default`].
    pub redis: RedisConfig,
}

impl FlusherConfig {
    /// The defaults, flushing `stream`.
    pub fn new(stream: impl Into<String>) -> Self {
        FlusherConfig {
            stream: stream.into(),
            group: DEFAULT_GROUP.to_owned(),
            consumer: format!("flusher-{}", std::process::id()),
            batch_size: 100,
            block: Duration::from_secs(1),
            min_idle: Duration::from_secs(30),
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            dead_stream: None,
            dead_max_len: 10_000,
            redis: RedisConfig::default(),
        }
    }
}
