//! [`LocalBus`]: an in-process invalidation bus, so the scenarios' engines
//! on the in-process store hear each other's invalidations as engines on
//! Redis do over a `RedisBus`.
//!
//! Owns nothing but the fan-out: every message published goes to every
//! subscription (the publisher's included, as on Redis pub/sub; aside
//! ignores its own). A subscription that falls behind by more than the
//! channel holds has lost messages, so it delivers [`BusEvent::Reset`]
//! and aside clears the local tiers, as after a lost Redis connection.

use aside::bus::{Bus, BusEvent, Invalidation};
use aside::store::StoreError;
use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc};

/// Messages a subscription may fall behind by before it resets.
const BACKLOG: usize = 4096;

/// A [`Bus`] within one process; clones share the channel.
#[derive(Debug, Clone)]
pub struct LocalBus {
    sender: broadcast::Sender<Invalidation>,
}

impl LocalBus {
    /// A new channel with no subscriber.
    pub fn new() -> Self {
        LocalBus {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        // No subscriber yet is not an error: nobody had anything to evict.
        let _ = self.sender.send(message.clone());
        Ok(())
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<BusEvent>, StoreError> {
        let mut messages = self.sender.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let event = match messages.recv().await {
                    Ok(message) => BusEvent::Invalidation(message),
                    Err(broadcast::error::RecvError::Lagged(_)) => BusEvent::Reset,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
