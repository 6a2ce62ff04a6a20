//! [`NatsBus`]: invalidations over NATS core subjects (async-nats).
//!
//! Owns the NATS transport of the bus. async-nats reconnects and
//! resubscribes by itself, but core NATS does not keep what was published
//! while a subscriber was away, and a slow subscriber drops messages; both
//! are reported by the client's event callback, which this transport turns
//! into [`BusEvent::Reset`] (every L1 is then cleared).
//!
//! While the server is unreachable, async-nats buffers publishes and its
//! `flush` waits for the reconnect, without a bound: a publish here is
//! therefore bounded by 250 ms (an `invalidate` must not hang
//! on a dead bus), and fails once it is out of time. A subscription is
//! confirmed with a bounded flush too, so that it counts as up only once
//! the server has registered it. The client pings the server every
//! [`PING_INTERVAL`] (async-nats's default is a minute), so a connection
//! that a network silently lost is noticed and replaced in seconds.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::{broadcast, mpsc};

use super::{Bus, BusEvent, Invalidation};
use crate::store::{StoreError, masked_url};

/// The default subject.
pub const DEFAULT_SUBJECT: &str = "aside.invalidations";

/// Bound on one publish (the message handed over and flushed to the server).
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);

/// How often the client pings the server; two unanswered pings and it reconnects.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);

/// Bound on confirming a new subscription with the server.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A [`Bus`] on NATS. Needs the `nats` feature.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    subject: String,
    /// Fired when messages may have been lost: a reconnect or a slow consumer.
    lost: broadcast::Sender<()>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl NatsBus {
    /// Connects to the server at `url` (such as `nats://127.0.0.1:4222`), on [`DEFAULT_SUBJECT`].
    ///
    /// # Errors
    /// [`StoreError::Connection`] when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_on(url, DEFAULT_SUBJECT).await
    }

    /// Connects to the server at `url`, on `subject`.
    ///
    /// # Errors
    /// [`StoreError::Connection`] when the server cannot be reached.
    pub async fn connect_on(url: &str, subject: &str) -> Result<Self, StoreError> {
        let (lost, _) = broadcast::channel(16);
        let on_event = lost.clone();
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(1))
            .ping_interval(PING_INTERVAL)
            .subscription_capacity(16 * 1024)
            .event_callback(move |event| {
                let on_event = on_event.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected | async_nats::Event::SlowConsumer(_)) {
                        // No receiver yet is fine: nothing was cached then.
                        let _ = on_event.send(());
                    }
                }
            })
            .connect(url)
            .await
            .map_err(|e| {
                StoreError::connection(format!("cannot connect to NATS at {}", masked_url(url))).with_source(e)
            })?;
        Ok(NatsBus {
            client,
            subject: subject.to_owned(),
            lost,
        })
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        let payload = serde_json::to_vec(message)
            .map_err(|e| StoreError::server("cannot encode the invalidation").with_source(e))?;
        let send = async {
            self.client
                .publish(self.subject.clone(), payload.into())
                .await
                .map_err(|e| StoreError::connection("NATS publish failed").with_source(e))?;
            // Publishing only buffers; the invalidation is due now.
            self.client
                .flush()
                .await
                .map_err(|e| StoreError::connection("NATS flush failed").with_source(e))
        };
        tokio::time::timeout(PUBLISH_TIMEOUT, send).await.unwrap_or_else(|_| {
            Err(StoreError::connection(format!(
                "NATS publish not flushed within {PUBLISH_TIMEOUT:?}"
            )))
        })
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<BusEvent>, StoreError> {
        let mut messages = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.client.subscribe(self.subject.clone()))
            .await
            .map_err(|_| StoreError::connection(format!("NATS subscribe not sent within {SUBSCRIBE_TIMEOUT:?}")))?
            .map_err(|e| StoreError::connection("NATS subscribe failed").with_source(e))?;
        // `subscribe` only queues the SUB; the server has it once a flush
        // (a PING after it) comes back.
        tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.client.flush())
            .await
            .map_err(|_| {
                StoreError::connection(format!("NATS subscription not confirmed within {SUBSCRIBE_TIMEOUT:?}"))
            })?
            .map_err(|e| StoreError::connection("NATS subscription not confirmed").with_source(e))?;
        let mut lost = self.lost.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    message = messages.next() => match message {
                        Some(message) => match Invalidation::decode(&message.payload) {
                            Some(invalidation) => BusEvent::Invalidation(invalidation),
                            // Another program's message: skip it.
                            None => continue,
                        },
                        None => return,
                    },
                    signal = lost.recv() => match signal {
                        Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => BusEvent::Reset,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
