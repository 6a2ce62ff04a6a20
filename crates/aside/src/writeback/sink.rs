//! [`WriteBackSink`]: where a [`Flusher`](super::Flusher) writes, and the
//! contract a sink keeps.
//!
//! Owns the trait only: the database side is the user's (the `aside flush`
//! command's SQL sink is one).

use async_trait::async_trait;

use super::entry::LoggedWrite;

/// Where the batches of a [`Flusher`](super::Flusher) go: the database.
///
/// # The contract
/// - `upsert` applies each write **only if its version is above the
///   version of the row it writes** (`INSERT ... ON CONFLICT (id) DO UPDATE
///   SET ... WHERE excluded.version > table.version`), and returns `Ok`
///   only once the whole batch is committed (one transaction, or upserts
///   each durable on its own).
/// - It must be idempotent: a batch may be handed over again, whole or in
///   part, after a crash between the commit and the acknowledgement, or
///   when a slow flusher's entries are claimed by another. With the
///   version check, a replay changes nothing.
/// - Writes of one key may arrive out of version order (two writers, or a
///   claimed entry after a newer one): the version check keeps the newest.
/// - A batch holds at most one write per key, the one of the highest
///   version among the entries read together.
/// - An error is retried, the same batch, with backoff, for as long as it
///   fails: nothing is acknowledged meanwhile. A write that can never be
///   applied should be refused by [`WriteBackSink::validate`] instead,
///   which parks it.
///
/// # Examples
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use aside::writeback::{LoggedWrite, WriteBackSink};
///
/// /// A table of (version, name) rows.
/// #[derive(Default)]
/// struct Table(Mutex<HashMap<u64, (u64, String)>>);
///
/// #[async_trait::async_trait]
/// impl WriteBackSink<u64, String> for Table {
///     type Error = std::io::Error;
///     async fn upsert(&self, batch: &[LoggedWrite<u64, String>]) -> Result<(), Self::Error> {
///         let mut rows = self.0.lock().unwrap();
///         for write in batch {
///             let row = rows.entry(write.key).or_insert((0, String::new()));
///             if write.version > row.0 {
///                 *row = (write.version, write.value.clone());
///             }
///         }
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait WriteBackSink<K: Send + Sync, V: Send + Sync>: Send + Sync {
    /// The sink's error, logged and retried.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Commits `batch` (see the contract above).
    ///
    /// # Errors
    /// Whatever kept the batch from being committed; the batch is retried.
    async fn upsert(&self, batch: &[LoggedWrite<K, V>]) -> std::result::Result<(), Self::Error>;

    /// Whether `write` can ever be applied: an `Err` with the reason parks
    /// it in the dead-letter stream (counted, logged) instead of retrying
    /// it for good. Default: every write can.
    ///
    /// # Errors
    /// The reason the write is refused.
    fn validate(&self, write: &LoggedWrite<K, V>) -> std::result::Result<(), String> {
        let _ = write;
        Ok(())
    }
}
