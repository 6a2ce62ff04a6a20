//! Fill notifications: how a reader that found a key leased by someone else
//! learns that the lease ended, without polling the store.
//!
//! Owns [`FillWakes`], a per-key registry of waiting readers that a store
//! wakes when a lease ends (a fill, a release, a write that revokes it), and
//! [`FillWatch`], one reader's ticket. A store that can notify returns a
//! watch from [`Store::watch_fill`](super::Store::watch_fill): the memory
//! store wakes its registry directly; Redis publishes the key on a channel
//! when a lease some reader waited on ends, and a subscriber task wakes the
//! registry of every process.
//!
//! Why arm before looking: the reader takes its watch *before* the lookup
//! that finds the key busy, and [`tokio::sync::Notify::notify_waiters`]
//! reaches every `Notified` future created before the call, polled or not.
//! So a fill that lands between the lookup's answer and the wait is not
//! lost. Why a registry keyed by entry rather than one broadcast: a
//! notification wakes only the readers of that key, and a store with no
//! waiters pays one atomic load per lease change.
//!
//! Notifications are a fast path, never the only one: a watch from a store
//! whose subscription is down reports [`FillWatch::is_live`] `false`, and the
//! engine then polls the store with backoff, as it does for stores with no
//! notifications at all (memcached).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// A registry of readers waiting for leases to end, shared by a store and
/// its notification source. Cloning is cheap (an `Arc`).
#[derive(Clone, Default)]
pub struct FillWakes {
    shared: Arc<Registry>,
}

/// A key's `Notify` and how many watches hold it.
type Watched = (Arc<Notify>, usize);

#[derive(Default)]
struct Registry {
    /// Per key: its `Notify` and how many watches hold it. The mutex is held
    /// only to find or drop an entry, never across an await.
    keys: Mutex<HashMap<Box<str>, Watched>>,
    /// Watches alive, so waking with nobody waiting skips the mutex.
    watching: AtomicUsize,
    /// Whether notifications are being delivered (a subscription is up).
    live: AtomicBool,
}

impl std::fmt::Debug for FillWakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillWakes")
            .field("watching", &self.shared.watching.load(Ordering::Relaxed))
            .field("live", &self.is_live())
            .finish()
    }
}

impl FillWakes {
    /// A registry whose notifications are delivered from the start (a store
    /// that wakes it itself, in process).
    pub fn live() -> Self {
        let wakes = FillWakes::default();
        wakes.set_live(true);
        wakes
    }

    /// A registry that is not live until [`FillWakes::set_live`] says so (a
    /// store whose notifications come over a subscription).
    pub fn pending() -> Self {
        FillWakes::default()
    }

    /// Whether notifications are being delivered.
    pub fn is_live(&self) -> bool {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Marks delivery up or down. Either way every waiter is woken: going
    /// down, so it polls instead of waiting for what will not come; coming
    /// up, because what was sent meanwhile was lost.
    pub fn set_live(&self, live: bool) {
        self.shared.live.store(live, Ordering::Release);
        self.wake_all();
    }

    /// A watch on `key`, to take before the lookup that may find it busy.
    pub fn watch(&self, key: &str) -> FillWatch {
        let notify = {
            let mut keys = self.shared.keys.lock().unwrap_or_else(PoisonError::into_inner);
            let (notify, holders) = keys
                .entry(Box::from(key))
                .or_insert_with(|| (Arc::new(Notify::new()), 0));
            *holders += 1;
            notify.clone()
        };
        self.shared.watching.fetch_add(1, Ordering::AcqRel);
        FillWatch {
            notified: Box::pin(notify.notified_owned()),
            live: self.is_live(),
            key: Box::from(key),
            wakes: self.clone(),
        }
    }

    /// Wakes the watches of `key`: its lease ended.
    pub fn wake(&self, key: &str) {
        if self.shared.watching.load(Ordering::Acquire) == 0 {
            return;
        }
        let keys = self.shared.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((notify, _)) = keys.get(key) {
            notify.notify_waiters();
        }
    }

    /// Wakes every watch (delivery changed; see [`FillWakes::set_live`]).
    pub fn wake_all(&self) {
        let keys = self.shared.keys.lock().unwrap_or_else(PoisonError::into_inner);
        for (notify, _) in keys.values() {
            notify.notify_waiters();
        }
    }

    fn unwatch(&self, key: &str) {
        self.shared.watching.fetch_sub(1, Ordering::AcqRel);
        let mut keys = self.shared.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, holders)) = keys.get_mut(key) {
            *holders -= 1;
            if *holders == 0 {
                keys.remove(key);
            }
        }
    }
}

/// One reader's ticket for the end of a lease on one key: armed when made,
/// so [`FillWatch::wait`] returns at once for a lease that ended since.
pub struct FillWatch {
    notified: std::pin::Pin<Box<OwnedNotified>>,
    live: bool,
    key: Box<str>,
    wakes: FillWakes,
}

impl std::fmt::Debug for FillWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillWatch")
            .field("key", &self.key)
            .field("live", &self.live)
            .finish_non_exhaustive()
    }
}

impl FillWatch {
    /// Whether notifications were being delivered when this watch was made.
    /// A watch that is not live may never be woken: poll instead.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Waits until the watched key's lease ends (or delivery changes). Bound
    /// it with a timeout: a lease can also end by running out, which nobody
    /// announces.
    pub async fn wait(mut self) {
        self.notified.as_mut().await;
    }
}

impl Drop for FillWatch {
    fn drop(&mut self) {
        self.wakes.unwatch(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wake_between_arming_and_waiting_is_not_lost() {
        let wakes = FillWakes::live();
        let watch = wakes.watch("k");
        wakes.wake("k");
        tokio::time::timeout(Duration::from_secs(30), watch.wait())
            .await
            .expect("the wake came before the wait and must still count");
    }

    #[tokio::test]
    async fn a_wake_of_another_key_does_not_end_the_wait() {
        let wakes = FillWakes::live();
        let watch = wakes.watch("k");
        wakes.wake("other");
        let mut wait = Box::pin(watch.wait());
        assert!(futures::FutureExt::now_or_never(&mut wait).is_none());
        wakes.wake("k");
        wait.await;
    }

    #[test]
    fn dropped_watches_leave_nothing_behind() {
        let wakes = FillWakes::live();
        let (a, b) = (wakes.watch("k"), wakes.watch("k"));
        drop(a);
        assert_eq!(wakes.shared.keys.lock().unwrap().len(), 1);
        drop(b);
        assert!(wakes.shared.keys.lock().unwrap().is_empty());
        assert_eq!(wakes.shared.watching.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_watch_made_while_down_says_so() {
        let wakes = FillWakes::pending();
        assert!(!wakes.watch("k").is_live());
        wakes.set_live(true);
        assert!(wakes.watch("k").is_live());
    }
}
