//! The client side of a lease: holding it while a loader runs.
//!
//! Owns two duties of a caller that was granted a lease, whatever path it
//! took (a miss, an early refresh, a forced refresh, a batch):
//!
//! - **Renewal.** A loader slower than the lease TTL would otherwise lose
//!   its lease to expiry; its fill would be refused exactly as if an
//!   invalidation had revoked it, and the key would stay empty for the
//!   next reader, who would load it again. While the loader runs, the
//!   lease is renewed every third of its TTL
//!   ([`crate::Store::renew_lease`]), so a refused fill means what it says:
//!   an invalidation revoked the lease.
//! - **Release on cancel.** A leader whose future is dropped (its caller
//!   timed out, a `select!` moved on) would leave its lease behind, and
//!   every reader in every process would wait for a fill that never comes
//!   until the lease TTL ran out. [`HeldLease`] gives the lease back when
//!   dropped unfilled, from a spawned task (a `Drop` cannot await).
//!
//! It never decides what to do with a value; `read` and `refresh` do.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::store::{LeaseToken, Store};

/// A lease granted to this caller. Dropped while still armed (the caller
/// was cancelled, or returned early without filling or releasing), it
/// releases the lease in the background.
pub(crate) struct HeldLease {
    store: Arc<dyn Store>,
    key: String,
    token: LeaseToken,
    op_timeout: Duration,
    armed: bool,
}

impl HeldLease {
    pub(crate) fn new(store: Arc<dyn Store>, key: &str, token: LeaseToken, op_timeout: Duration) -> Self {
        HeldLease {
            store,
            key: key.to_owned(),
            token,
            op_timeout,
            armed: true,
        }
    }

    /// The key and the token of the lease held.
    pub(crate) fn lease(&self) -> (&str, LeaseToken) {
        (&self.key, self.token)
    }

    /// The lease was filled or given back: nothing to do on drop.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to release from: the lease runs out by its TTL.
            return;
        };
        let store = self.store.clone();
        let key = std::mem::take(&mut self.key);
        let (token, bound) = (self.token, self.op_timeout);
        runtime.spawn(async move {
            let _ = tokio::time::timeout(bound, store.release(&key, token)).await;
        });
    }
}

/// Runs `load` while renewing the lease `token` on `key` every third of
/// `lease_ttl`. `renew` answers whether to go on: the callers stop only
/// when the store says the lease is gone (the fill will say so too), not
/// on a renewal that failed or timed out. The load runs on either way.
///
/// Why a `select!` in the caller's task rather than a spawned renewer: the
/// renewals must stop the moment the load ends or is cancelled, and a
/// spawned task would outlive a cancelled caller. The renewal in flight is
/// a branch of its own, polled beside the load, so a slow renewal never
/// holds back a load that has finished (it is dropped unanswered: the fill
/// that follows says whether the lease held). Shown by
/// `a_slow_renewal_does_not_hold_back_a_finished_load` in `tests/regressions.rs`.
pub(crate) async fn renewing<T, R, Fut>(lease_ttl: Duration, mut renew: R, load: impl Future<Output = T>) -> T
where
    R: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let period = (lease_ttl / 3).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(load);
    let mut renewing = true;
    let mut in_flight: Option<std::pin::Pin<Box<Fut>>> = None;
    loop {
        tokio::select! {
            out = &mut load => return out,
            _ = ticks.tick(), if renewing && in_flight.is_none() => in_flight = Some(Box::pin(renew())),
            renewed = async { in_flight.as_mut().expect("guarded by is_some").await }, if in_flight.is_some() => {
                in_flight = None;
                renewing = renewed;
            }
        }
    }
}
