//! Single-flight: one load per key per process at a time.
//!
//! Owns the in-process coalescing of concurrent loads and nothing else (it
//! does not know about stores or leases). The first caller for a key becomes
//! the leader and runs the work in its own task (not a spawned one); later
//! callers subscribe to a `watch` channel and are woken the moment the leader publishes, with no
//! polling. Why `watch`: it holds the last value, so a waiter that subscribes
//! just before the leader publishes still sees it, and its sender's drop
//! tells waiters that a leader was cancelled; one of them then takes over.
//!
//! Each flight carries a tag (a `u64` the leader may set, such as the lease
//! it holds) so that a caller can decline to join a flight it knows is
//! doomed (its lease was revoked) and start a new one; later callers join
//! the new one. The map is behind a `std::sync::Mutex`: it is held only to
//! look up or insert a channel, never across an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Coalesces concurrent work on the same key.
#[derive(Debug)]
pub struct SingleFlight<T> {
    in_flight: Mutex<HashMap<String, Flight<T>>>,
}

#[derive(Debug)]
struct Flight<T> {
    rx: watch::Receiver<Option<T>>,
    tag: Arc<AtomicU64>,
}

impl<T> Clone for Flight<T> {
    fn clone(&self) -> Self {
        Flight {
            rx: self.rx.clone(),
            tag: self.tag.clone(),
        }
    }
}

impl<T> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            in_flight: Mutex::new(HashMap::new()),
        }
    }
}

/// Whether a call ran the work itself or received a leader's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This call ran the work.
    Leader,
    /// This call waited for another's result.
    Waiter,
}

struct LeaderGuard<'a, T> {
    flight: &'a SingleFlight<T>,
    key: String,
    rx: watch::Receiver<Option<T>>,
}

impl<T> Drop for LeaderGuard<'_, T> {
    fn drop(&mut self) {
        let mut map = self.flight.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.key).is_some_and(|f| f.rx.same_channel(&self.rx)) {
            map.remove(&self.key);
        }
    }
}

/// What [`SingleFlight::begin`] made of a caller.
pub enum Begin<'a, T> {
    /// This caller runs the work and must [`Leader::publish`] its result.
    Lead(Leader<'a, T>),
    /// Another caller runs it; wait with [`Waiter::wait`].
    Wait(Waiter<T>),
}

/// The leader of one flight. Dropping it unpublished wakes the waiters,
/// who then retry (one becomes the new leader).
pub struct Leader<'a, T> {
    guard: LeaderGuard<'a, T>,
    tx: watch::Sender<Option<T>>,
    tag: Arc<AtomicU64>,
}

impl<T> Leader<'_, T> {
    /// The flight's tag, for callers deciding whether to join.
    pub fn tag(&self) -> &AtomicU64 {
        &self.tag
    }

    /// Hands `value` to every waiter and ends the flight.
    pub fn publish(self, value: T) {
        self.tx.send_replace(Some(value));
        drop(self.guard);
    }
}

/// A caller waiting for another's flight.
pub struct Waiter<T> {
    rx: watch::Receiver<Option<T>>,
}

impl<T: Clone> Waiter<T> {
    /// The leader's result, or `None` if the leader was dropped without one.
    pub async fn wait(mut self) -> Option<T> {
        self.rx.wait_for(Option::is_some).await.ok().and_then(|v| v.clone())
    }
}

impl<T: Clone> SingleFlight<T> {
    /// Runs `work` for `key` unless another call is already running it, in
    /// which case waits for that call's result.
    ///
    /// # Concurrent calls
    /// Calls with the same key while one is running all receive a clone of
    /// its result. If the leader's future is dropped before it finishes, one
    /// waiter becomes the new leader and runs its own `work`.
    #[cfg(test)] // The engine uses run_tagged; the tests drive the simple form.
    pub async fn run<F, Fut>(&self, key: &str, work: F) -> (T, Role)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        self.run_tagged(key, |_| true, |_| work()).await
    }

    /// As [`SingleFlight::run`], but joins a running flight only if
    /// `join(tag)` holds for its tag; otherwise this call starts a new
    /// flight that replaces it for later callers. The leader's `work`
    /// receives its flight's tag (initially 0) to set.
    ///
    /// # Concurrent calls
    /// As [`SingleFlight::run`]. A replaced flight still delivers its result
    /// to the callers that joined it.
    pub async fn run_tagged<J, F, Fut>(&self, key: &str, join: J, work: F) -> (T, Role)
    where
        J: Fn(u64) -> bool,
        F: FnOnce(Arc<AtomicU64>) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut work = Some(work);
        loop {
            match self.begin(key, &join) {
                Begin::Lead(leader) => {
                    let work = work.take().expect("a call leads at most once");
                    let out = work(leader.tag.clone()).await;
                    leader.publish(out.clone());
                    return (out, Role::Leader);
                }
                Begin::Wait(waiter) => {
                    if let Some(out) = waiter.wait().await {
                        return (out, Role::Waiter);
                    }
                    // The leader was dropped without publishing: try to lead.
                }
            }
        }
    }

    /// Joins the flight of `key` if there is one and `join(tag)` holds, or
    /// starts one (replacing a declined one for later callers). For callers
    /// that lead several keys at once, such as a batch load.
    pub fn begin(&self, key: &str, join: impl Fn(u64) -> bool) -> Begin<'_, T> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(key) {
            Some(f) if join(f.tag.load(std::sync::atomic::Ordering::Acquire)) => {
                Begin::Wait(Waiter { rx: f.rx.clone() })
            }
            _ => Begin::Lead(self.start(&mut map, key)),
        }
    }

    /// Starts a flight of `key` and makes the caller its leader, unless one
    /// is running: then `None`, and the running flight is neither joined
    /// nor replaced. For a caller that has an answer of its own and must
    /// not wait for another's work: a reader holding a value due for
    /// refresh leads the refresh, or keeps its value.
    ///
    /// # Concurrent calls
    /// The check and the start are one step under the map's lock, so of
    /// the callers racing for an idle key exactly one leads. A check with
    /// [`SingleFlight::contains`] followed by [`SingleFlight::begin`] was
    /// not: a flight started between the two was joined, and its caller
    /// waited for the refresh it meant to skip.
    pub fn try_lead(&self, key: &str) -> Option<Leader<'_, T>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        (!map.contains_key(key)).then(|| self.start(&mut map, key))
    }

    /// Registers a new flight of `key` in `map` (replacing any) and returns its leader.
    fn start(&self, map: &mut HashMap<String, Flight<T>>, key: &str) -> Leader<'_, T> {
        let (tx, rx) = watch::channel(None);
        let tag = Arc::new(AtomicU64::new(0));
        map.insert(
            key.to_owned(),
            Flight {
                rx: rx.clone(),
                tag: tag.clone(),
            },
        );
        Leader {
            guard: LeaderGuard {
                flight: self,
                key: key.to_owned(),
                rx,
            },
            tx,
            tag,
        }
    }

    /// True when a flight for `key` is running now.
    pub fn contains(&self, key: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(key)
    }

    /// Number of keys being worked on now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing is in flight.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::Notify;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flight = Arc::new(SingleFlight::<u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (flight, runs, release) = (flight.clone(), runs.clone(), release.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run("k", || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        release.acquire().await.unwrap().forget();
                        42
                    })
                    .await
            }));
        }
        // On the current-thread test runtime, a few yields let every task run
        // until it blocks: one leader on the semaphore, the rest on the channel.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        release.add_permits(50);
        let mut leaders = 0;
        for t in tasks {
            let (v, role) = t.await.unwrap();
            assert_eq!(v, 42);
            leaders += usize::from(role == Role::Leader);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(leaders, 1);
        assert!(flight.is_empty());
    }

    /// `try_lead` starts a flight only on an idle key, and never joins nor
    /// replaces a running one: its waiters still get its result, and the
    /// key is idle again once it ends (or its leader is dropped).
    #[tokio::test]
    async fn try_lead_leads_only_an_idle_key() {
        let flight = SingleFlight::<u32>::default();
        let first = flight.try_lead("k").expect("an idle key");
        assert!(flight.try_lead("k").is_none(), "a running flight is not replaced");
        let Begin::Wait(waiter) = flight.begin("k", |_| true) else {
            panic!("the running flight was replaced")
        };
        assert!(flight.try_lead("other").is_some(), "another key is idle");
        first.publish(7);
        assert_eq!(waiter.wait().await, Some(7));
        let again = flight.try_lead("k").expect("idle once the flight ended");
        drop(again);
        assert!(flight.try_lead("k").is_some(), "idle once its leader is dropped");
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let flight = Arc::new(SingleFlight::<u32>::default());
        let started = Arc::new(Notify::new());
        let leader = {
            let (flight, started) = (flight.clone(), started.clone());
            tokio::spawn(async move {
                flight
                    .run("k", || async move {
                        started.notify_one();
                        std::future::pending::<u32>().await
                    })
                    .await
            })
        };
        started.notified().await;
        let waiter = {
            let flight = flight.clone();
            tokio::spawn(async move { flight.run("k", || async { 7 }).await })
        };
        tokio::task::yield_now().await;
        leader.abort();
        let (v, role) = waiter.await.unwrap();
        assert_eq!((v, role), (7, Role::Leader));
    }
}
