//! [`RedisBus`]: invalidations over Redis pub/sub.
//!
//! Owns the Redis transport of the bus: `PUBLISH` of a JSON message on one
//! channel through a `ConnectionManager`, and a subscriber task on a
//! dedicated pub/sub connection that reconnects with backoff. Pub/sub is
//! fire-and-forget: a message published while a subscriber is away is lost,
//! which is why a reconnect delivers `Reset`.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::mpsc;

use super::{Bus, BusEvent, Invalidation};
use crate::store::StoreError;
use crate::store::redis::{RedisTls, build_client, check_connection, connect_error};

/// The default channel.
pub const DEFAULT_CHANNEL: &str = "aside:invalidations";

/// A [`Bus`] on Redis pub/sub.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    publisher: ConnectionManager,
    channel: String,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

fn connection_error(e: redis::RedisError) -> StoreError {
    StoreError::connection("the Redis bus connection failed").with_source(e)
}

impl RedisBus {
    /// Connects to the server at `url`, on [`DEFAULT_CHANNEL`].
    ///
    /// # Errors
    /// [`StoreError::Connection`] when the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_on(url, DEFAULT_CHANNEL).await
    }

    /// Connects to the server at `url`, on `channel`.
    ///
    /// # Errors
    /// [`StoreError::Connection`] when the server cannot be reached.
    pub async fn connect_on(url: &str, channel: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, channel, &RedisTls::default()).await
    }

    /// Connects to the server at `url`, on `channel`, with TLS settings for
    /// a `rediss://` or `valkeys://` URL (the same as the store's
    /// [`RedisConfig::tls`](crate::store::redis::RedisConfig::tls)).
    ///
    /// # Errors
    /// [`StoreError::Connection`] when the URL or the TLS settings are
    /// invalid or the server cannot be reached; the message names the
    /// server with its password masked.
    pub async fn connect_with(url: &str, channel: &str, tls: &RedisTls) -> Result<Self, StoreError> {
        let client = build_client(url, tls)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(250)))
            .set_number_of_retries(2);
        let unreachable = |e| connect_error("cannot connect the invalidation bus to Redis at", url, e);
        let mut publisher = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(unreachable)?;
        check_connection(&mut publisher, Duration::from_millis(500))
            .await
            .map_err(unreachable)?;
        Ok(RedisBus {
            client,
            publisher,
            channel: channel.to_owned(),
        })
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        let payload = serde_json::to_vec(message)
            .map_err(|e| StoreError::server("cannot encode the invalidation").with_source(e))?;
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(payload)
            .exec_async(&mut self.publisher.clone())
            .await
            .map_err(connection_error)
    }

    async fn subscribe(&self) -> Result<mpsc::Receiver<BusEvent>, StoreError> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(connection_error)?;
        pubsub.subscribe(&self.channel).await.map_err(connection_error)?;
        let (tx, rx) = mpsc::channel(1024);
        let (client, channel) = (self.client.clone(), self.channel.clone());
        tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            loop {
                while let Some(msg) = stream.next().await {
                    // A message that does not parse is another program's: skip it.
                    if let Ok(message) = serde_json::from_slice::<Invalidation>(msg.get_payload_bytes())
                        && tx.send(BusEvent::Invalidation(message)).await.is_err()
                    {
                        return;
                    }
                }
                // The connection ended: reconnect, then tell the listener
                // that messages may have been lost meanwhile.
                let mut backoff = Duration::from_millis(50);
                stream = loop {
                    if tx.is_closed() {
                        return;
                    }
                    if let Ok(mut pubsub) = client.get_async_pubsub().await
                        && pubsub.subscribe(&channel).await.is_ok()
                    {
                        break pubsub.into_on_message();
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                };
                tracing::warn!(channel, "invalidation bus reconnected: local tiers cleared");
                if tx.send(BusEvent::Reset).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
