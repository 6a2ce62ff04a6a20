//! Routing bus events to the namespaces of one `Aside`.
//!
//! Owns the table of namespaces with an L1 and the listener task that feeds
//! them. Namespaces are held weakly: a dropped namespace simply stops
//! receiving. The listener starts on first use (a namespace with an L1, or
//! a call to `Aside::invalidations`) and stops when the `Aside` is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::broadcast;

use super::{Bus, BusEvent, Invalidation};
use crate::engine::Core;

/// What a namespace exposes to the router.
pub(crate) trait Evictor: Send + Sync {
    fn evict_keys(&self, keys: &[String]);
    fn clear_local(&self);
}

pub(crate) struct Router {
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) origin: u64,
    routes: Mutex<HashMap<String, Vec<Weak<dyn Evictor>>>>,
    events: broadcast::Sender<Invalidation>,
    started: AtomicBool,
}

impl Router {
    pub(crate) fn new(bus: Arc<dyn Bus>) -> Self {
        Router {
            bus,
            origin: rand::random(),
            routes: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
            started: AtomicBool::new(false),
        }
    }

    pub(crate) fn register(&self, core: &Arc<Core>, namespace: &str, evictor: Weak<dyn Evictor>) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(namespace.to_owned())
            .or_default()
            .push(evictor);
        self.start(core);
    }

    pub(crate) fn events(&self, core: &Arc<Core>) -> broadcast::Receiver<Invalidation> {
        let receiver = self.events.subscribe();
        self.start(core);
        receiver
    }

    fn start(&self, core: &Arc<Core>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(listen(Arc::downgrade(core)))),
            Err(_) => {
                self.started.store(false, Ordering::Release);
                tracing::warn!(
                    "invalidation bus not started: no Tokio runtime here; it starts on the next use inside one"
                );
            }
        }
    }

    fn evictors(&self, namespace: Option<&str>) -> Vec<Arc<dyn Evictor>> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let mut live = Vec::new();
        for (name, list) in routes.iter_mut() {
            if namespace.is_some_and(|n| n != name) {
                continue;
            }
            list.retain(|w| w.strong_count() > 0);
            live.extend(list.iter().filter_map(Weak::upgrade));
        }
        live
    }

    fn deliver(&self, event: BusEvent) {
        match event {
            BusEvent::Invalidation(message) => {
                if message.origin != self.origin {
                    for evictor in self.evictors(Some(&message.namespace)) {
                        evictor.evict_keys(&message.keys);
                    }
                }
                // Nobody listening is fine.
                let _ = self.events.send(message);
            }
            BusEvent::Reset => {
                for evictor in self.evictors(None) {
                    evictor.clear_local();
                }
            }
        }
    }
}

async fn listen(core: Weak<Core>) {
    let mut backoff = Duration::from_millis(50);
    let mut events = loop {
        let Some(bus) = core.upgrade().and_then(|c| c.router.as_ref().map(|r| r.bus.clone())) else {
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
    while let Some(event) = events.recv().await {
        let Some(core) = core.upgrade() else { return };
        if let Some(router) = &core.router {
            router.deliver(event);
        }
    }
}
