//! Routing bus events to the namespaces of one `Aside`.
//!
//! Owns the listener task that feeds other processes' invalidations to the
//! namespaces with an L1 (the table of those is `Core::l1_peers`, which local
//! writes use too). The listener reaches them through [`Subscriber`], which
//! the engine implements: the bus depends on no engine type. The listener starts on first use (a namespace with an
//! L1, or a call to `Aside::invalidations`) and is aborted when the `Aside`
//! and its namespaces are dropped (the router's `Drop`), whether or not a
//! message ever arrives again. Until its first subscription is up, L1 fills are skipped
//! ([`Router::is_subscribed`]): an invalidation published meanwhile would
//! never reach them.
//!
//! Once a subscription is up, the listener delivers a `Reset` (every L1 is
//! cleared and its epochs bumped) before anything else, every time, the
//! first included: a fill that read the store before the subscription was
//! confirmed may install its value after it, and an invalidation published
//! in between reached nobody here; the reset fences such fills, whatever
//! the engine checked before installing. The L1s are near empty then, so
//! it costs little. The same holds after the listener lost its stream and
//! subscribed again, or was restarted on another runtime: the runtime that
//! ran it was shut down (a `#[tokio::test]`, a short-lived runtime of the
//! user's), which ends the task; [`Router::start`] then spawns a new one
//! on the current runtime, and until it is subscribed `is_subscribed` is
//! false again.
//!
//! Every publish goes through the router's bus, which bounds it by
//! [`PUBLISH_TIMEOUT`]: a write must never hang on a bus that does not
//! answer (NATS down, a Redis reconnecting); a message not sent in time is
//! reported as an error, and other processes' L1s then age out by their TTL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::{Bus, BusEvent, Invalidation};
use crate::store::StoreError;

/// Bound on one publish of an invalidation (the default store operation bound).
pub(crate) const PUBLISH_TIMEOUT: Duration = crate::DEFAULT_OP_TIMEOUT;

/// Bound on one attempt to subscribe; the listener retries with backoff.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A bus whose publishes and subscribes are bounded in time.
struct Bounded(Arc<dyn Bus>);

#[async_trait]
impl Bus for Bounded {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        tokio::time::timeout(PUBLISH_TIMEOUT, self.0.publish(message))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::connection(format!(
                    "bus publish did not finish within {PUBLISH_TIMEOUT:?}"
                )))
            })
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<BusEvent>, StoreError> {
        tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.0.subscribe())
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::connection(format!(
                    "bus subscribe did not finish within {SUBSCRIBE_TIMEOUT:?}"
                )))
            })
    }
}

/// What the listener needs of the `Aside` it serves: its router and the L1s
/// of its namespaces. Held weakly, so that the listener ends with the `Aside`.
pub(crate) trait Subscriber: Send + Sync + 'static {
    /// The `Aside`'s router (`None`: it has no bus, and nothing to listen to).
    fn router(&self) -> Option<&Router>;
    /// Evicts `keys` from every L1 of the namespaces called `namespace`.
    fn evict_local(&self, namespace: &str, keys: &[String]);
    /// Clears every L1 (messages may have been lost).
    fn clear_local(&self);
}

pub(crate) struct Router {
    /// The bus, bounded (see the module documentation).
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) origin: u64,
    /// True while a listener's subscription is up (after its reset).
    subscribed: AtomicBool,
    events: broadcast::Sender<Invalidation>,
    /// The listener task, once started; replaced when it has finished.
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl Router {
    pub(crate) fn new(bus: Arc<dyn Bus>) -> Self {
        Router {
            bus: Arc::new(Bounded(bus)),
            origin: rand::random(),
            subscribed: AtomicBool::new(false),
            events: broadcast::channel(1024).0,
            listener: Mutex::new(None),
        }
    }

    /// True while the listener's subscription is up and the reset that
    /// follows it was delivered: only then may a value enter an L1, since
    /// only then does every later invalidation reach it. False before the
    /// first subscription, and while a listener lost with its runtime has
    /// not been restarted (see [`Router::start`]).
    pub(crate) fn is_subscribed(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    pub(crate) fn events<S: Subscriber>(&self, owner: &Arc<S>) -> broadcast::Receiver<Invalidation> {
        let receiver = self.events.subscribe();
        self.start(owner);
        receiver
    }

    /// Starts the listener on the current runtime unless one is running; one
    /// whose runtime was shut down has finished and is replaced. Cheap when
    /// it runs (a lock and a flag), so a caller that finds
    /// [`Router::is_subscribed`] false may call it to restart a lost one.
    pub(crate) fn start<S: Subscriber>(&self, owner: &Arc<S>) {
        let mut listener = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if listener.as_ref().is_some_and(|l| !l.is_finished()) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let owner: Weak<dyn Subscriber> = Arc::downgrade(owner) as _;
                *listener = Some(runtime.spawn(listen(owner)));
            }
            Err(_) => tracing::warn!(
                "invalidation bus not started: no Tokio runtime here; it starts on the next use inside one"
            ),
        }
    }

    fn deliver(&self, owner: &dyn Subscriber, event: BusEvent) {
        match event {
            BusEvent::Invalidation(message) => {
                // Local writes evict this process's L1s themselves.
                if message.origin != self.origin {
                    owner.evict_local(&message.namespace, &message.keys);
                }
                // Nobody listening is fine.
                let _ = self.events.send(message);
            }
            BusEvent::Reset => owner.clear_local(),
        }
    }
}

/// The `Aside` is gone (the router dies with its `Core`): so is the
/// listener, at once. It held the owner weakly, but found it gone only at
/// the next bus event; on a quiet channel none came, and the listener, its
/// receiver, and with it the transport's subscription (a Redis pub/sub
/// connection, pinged) lived on for good: every dropped `Aside` leaked them
/// (found by `aside soak`, issue 15: live tasks and open sockets grew with
/// every history program). Aborting drops the receiver, which ends the
/// transport's subscription task.
impl Drop for Router {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            listener.abort();
        }
    }
}

/// Clears `subscribed` when the listener ends, by returning or by being
/// dropped with its runtime.
struct Unsubscribed(Weak<dyn Subscriber>);

impl Drop for Unsubscribed {
    fn drop(&mut self) {
        if let Some(router) = self.0.upgrade().as_ref().and_then(|c| c.router()) {
            router.subscribed.store(false, Ordering::Release);
        }
    }
}

async fn listen(owner: Weak<dyn Subscriber>) {
    let _unsubscribed = Unsubscribed(owner.clone());
    loop {
        let mut backoff = Duration::from_millis(50);
        let mut events = loop {
            let Some(bus) = owner.upgrade().and_then(|c| c.router().map(|r| r.bus.clone())) else {
                return;
            };
            match bus.subscribe().await {
                Ok(events) => break events,
                Err(e) => {
                    tracing::warn!(error = %e, "invalidation bus unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        {
            let Some(owner) = owner.upgrade() else { return };
            let Some(router) = owner.router() else { return };
            // See the module documentation: fences fills that read the store
            // before the subscription was up.
            router.deliver(&*owner, BusEvent::Reset);
            router.subscribed.store(true, Ordering::Release);
        }
        while let Some(event) = events.recv().await {
            let Some(owner) = owner.upgrade() else { return };
            if let Some(router) = owner.router() {
                router.deliver(&*owner, event);
            }
        }
        // The bus ended the subscription: messages may be lost until the next one.
        let Some(owner) = owner.upgrade() else { return };
        if let Some(router) = owner.router() {
            router.subscribed.store(false, Ordering::Release);
        }
        tracing::warn!("invalidation bus subscription ended; subscribing again");
    }
}
