//! Write-back on a durable log: [`Namespace::write_back`](crate::Namespace::write_back)
//! caches a write and appends it to a Redis Stream; a [`Flusher`] applies
//! the stream to the database later, in batches. Needs the `redis` feature.
//!
//! Owns the write-back pattern end to end: the log ([`WriteBackLog`],
//! [`log`]), the entry layout ([`LoggedWrite`], `entry`), the writer's
//! side (`write`: the order of the append and the cache write), and the
//! flusher ([`Flusher`], [`WriteBackSink`], `flusher`). The cache write
//! itself is the engine's versioned write-through; nothing here touches
//! the cache otherwise.
//!
//! # What it guarantees
//!
//! - **Nothing acknowledged is lost.** `write_back` returns `Ok` only once
//!   the log has the write (with Redis's `appendfsync always`, on disk). A
//!   write it could not log (Redis down, no answer in time, the log at its
//!   bound) returns an error; a timeout's write may or may not be logged,
//!   and writing it again with the same version is harmless.
//! - **Acknowledged only after commit.** The flusher `XACK`s (and `XDEL`s)
//!   an entry only after the sink committed it, so a flusher killed at any
//!   point leaves every unapplied write pending; a new flusher claims them
//!   (`XAUTOCLAIM`), and one started under the same name reads them first.
//! - **Replays have no effect.** Writes carry the caller's version and the
//!   sink applies one only above the row's version, so a batch applied
//!   twice (a crash between commit and acknowledgement) changes nothing the
//!   second time, and the database ends at the newest version of each key.
//! - **Bounded.** Past [`LogConfig::max_len`] unflushed writes, `write_back`
//!   fails with [`ErrorKind::Backpressure`](crate::ErrorKind::Backpressure)
//!   rather than grow the log.
//! - **Bad entries are parked.** An entry that does not decode (written by
//!   something else, or by hand) is copied to a dead-letter stream with the
//!   reason, counted and logged; it never stops the entries after it.
//! - **Reads see the write before it is flushed**, from the cache, as long
//!   as the entry stays cached (see below).
//!
//! # What it does not guarantee
//!
//! - A cache entry that goes before its write is flushed (its TTL ran out,
//!   memory pressure evicted it, or the cache write failed:
//!   [`WriteBack::Uncached`]) lets a read load the older row from the
//!   database, until the flush lands and the entry is invalidated or
//!   expires. Keep the TTL well above the flush lag, which the flusher
//!   reports.
//! - Durability past one Redis: without `appendfsync always` the last
//!   second of writes can go with a crash, and a failover to a replica can
//!   lose what was not replicated (no `WAIT` is sent).
//! - A write the database refuses for good blocks its batch (it is retried
//!   with backoff) unless the sink's [`WriteBackSink::validate`] refuses it
//!   first, which parks it.
//! - Writers of one key must all go through write-back with versions: a
//!   database write that bypasses the log with an unversioned row is
//!   overwritten by any logged write.

mod config;
mod entry;
mod flusher;
pub mod log;
mod sink;
mod stats;
mod write;

pub use config::{DEFAULT_GROUP, FlusherConfig};
pub use entry::LoggedWrite;
pub use flusher::Flusher;
pub use log::{DEFAULT_MAX_LOG_LEN, LogConfig, WriteBackLog, default_stream};
pub use sink::WriteBackSink;
pub use stats::{FlusherMonitor, FlusherStats};
pub(crate) use write::Target;
pub use write::WriteBack;
