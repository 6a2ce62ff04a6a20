//! The linearizable update: a database write under a fence on its key.
//!
//! Owns `Namespace::update`. Plain cache-aside (write the database, then
//! invalidate) leaves a window between the two in which the cache still
//! serves the old row while the database already has the new one: a reader
//! that asked the database (its store call failed, a lease wait ran out, a
//! `skip_cache` read) can see the new row and a later reader the old one.
//! An update closes the window by fencing the key for the whole write:
//!
//! 1. **Fence.** In one atomic store step (`Store::take_fence`), remove the
//!    entry without keeping a stale copy, revoking every reader's lease in
//!    flight (no fill begun before can land), and lease the key to a fence
//!    token of the update's own. Another update's live fence is never
//!    revoked: the update waits for it to end, so updates of one key take
//!    turns (revoking it would let the earlier update's write commit
//!    unfenced). Until the fence ends, every reader in every process finds
//!    the key leased: it waits for the end (woken by the fill) or, past its
//!    lease wait, reads the database without filling. If the fence cannot
//!    be taken (the store is away), the write is not run: an update fails
//!    closed rather than write without a fence.
//! 2. **Write.** The caller's database write runs while the fence's lease
//!    is renewed (as a loader's is), so a slow write keeps it; a crashed
//!    writer's fence runs out by its TTL.
//! 3. **End.** The new row is filled under the fence's token (a fenced
//!    fill: it lands only if the fence held throughout). If it does not
//!    land (the fence was broken by another invalidation or ran out, the
//!    write failed, the row is too large), the key is invalidated instead,
//!    revoking any lease taken meanwhile, so a fill of a row read before
//!    the write committed cannot land after the update returns.
//!
//! Linearizable per key for reads and updates through `aside` in
//! namespaces without an L1 in other processes (an L1 hears of the update
//! over the bus, later). The L1s of the updater's own `Aside` are evicted
//! around it and install nothing of the key while it runs.
//! `tests/linearizability.rs` checks histories of three processes with a
//! register checker, and the history checker drives `update` beside every
//! other operation.

use std::future::Future;

use super::lease::renewing;
use super::retry::PendingOp;
use super::state::NsInner;
use crate::error::{Error, ErrorKind, Result};
use crate::policy::Strategy;
use crate::store::{FillOutcome, LeaseToken};

/// First and largest pause between tries while another update's fence
/// holds the key (its end is not announced to updates: they poll).
const FENCE_POLL_FIRST: std::time::Duration = std::time::Duration::from_millis(2);
const FENCE_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(50);

impl<V: Clone + Send + Sync + 'static> NsInner<V> {
    /// `Namespace::update` below the key: see the module documentation.
    pub(crate) async fn update_fenced<F, Fut, E>(&self, full: &str, write: F) -> Result<Option<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if self.strategy != Strategy::Lease {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "update fences a key with a lease: namespace {} uses {}, not Strategy::Lease",
                    self.name, self.strategy
                ),
            ));
        }
        let store = &self.core.store;
        if !store.supports_fences() {
            return Err(Error::new(
                ErrorKind::Config,
                format!("update needs a store with fences (memory, Redis), not {}", store.name()),
            ));
        }
        // No L1 of this `Aside` keeps the key from here to the end: a read
        // of the old row from the database during the write must not stay
        // (see `tier::Peers::fence`).
        let l1_fence = self.core.l1_peers.fence(full);
        // This namespace's L1 and every other of its name in this `Aside`.
        self.l1_evict_written(full);
        let token = LeaseToken::fence();
        // Another update holds the key at most as long as its write may run
        // (its renewals stop then) plus one lease TTL.
        let deadline = super::deadline_after(self.renewal_bound().saturating_add(self.lease_ttl));
        let mut pause = FENCE_POLL_FIRST;
        let mut fence = loop {
            // Held from before the request: a reply lost to the timeout may
            // hide a granted fence, which the guard then gives back.
            let mut offered = self.hold(full, token);
            if self.call(store.take_fence(full, token, self.lease_ttl)).await? {
                break offered;
            }
            offered.disarm();
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{full} stayed fenced by another update: nothing was written"),
                ));
            }
            tokio::time::sleep(pause.mul_f64(0.5 + rand::random::<f64>())).await;
            pause = (pause * 2).min(FENCE_POLL_MAX);
        };
        let renew_until = super::deadline_after(self.renewal_bound());
        let renew = move || async move {
            tokio::time::Instant::now() < renew_until
                && !matches!(
                    self.call(store.renew_lease(full, token, self.lease_ttl)).await,
                    Ok(false)
                )
        };
        let written = renewing(self.lease_ttl, renew, write()).await;
        let filled = match &written {
            Ok(row) => match self.encode(row.as_ref(), std::time::Duration::ZERO) {
                Ok(Some((bytes, ttl))) => matches!(
                    self.call(store.fill(full, token, bytes, ttl)).await,
                    Ok(FillOutcome::Stored)
                ),
                _ => false,
            },
            Err(_) => false,
        };
        let ended = if filled {
            Ok(())
        } else {
            let invalidated = self.call(store.invalidate(full, None)).await;
            if invalidated.is_err() {
                // Until it is replayed, this process's reads of the key
                // bypass the cache; other processes' wait out the fence.
                self.core
                    .queue_invalidation(&self.name, full, full, PendingOp::Invalidate { keep_stale: None });
            }
            invalidated
        };
        // Filled or invalidated (or queued): the guard has nothing to give back.
        fence.disarm();
        // After the marker is gone: an install that raced its removal is
        // refused by its epoch, or evicted here.
        drop(l1_fence);
        self.l1_evict_written(full);
        self.publish(vec![full.to_owned()]).await;
        let row =
            written.map_err(|e| Error::with_source(ErrorKind::Write, format!("the database write failed: {e}"), e))?;
        ended.map_err(|e| {
            Error::new(
                e.kind(),
                format!("the database was written, but the cache could not be told ({e}): its invalidation is queued for replay"),
            )
        })?;
        Ok(row)
    }
}
