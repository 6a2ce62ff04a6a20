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
use tokio::sync::mpsc;

use super::{Bus, BusEvent, Invalidation};
use crate::store::StoreError;
use crate::store::redis::{
    Reconnecting, RedisConfig, RedisTls, check_connection, client_for, connect_error, watched_messages,
};

/// The default channel.
pub const DEFAULT_CHANNEL: &str = "aside:invalidations";

/// A [`Bus`] on Redis pub/sub.
#[derive(Clone)]
pub struct RedisBus {
    client: redis::Client,
    publisher: Reconnecting,
    connect_timeout: Duration,
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

/// A subscribed pub/sub connection, within `bound`: a server that accepts
/// and never answers must not hang the caller.
async fn subscribe(client: &redis::Client, channel: &str, bound: Duration) -> Result<redis::aio::PubSub, StoreError> {
    let attempt = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    match tokio::time::timeout(bound, attempt).await {
        Ok(subscribed) => subscribed.map_err(connection_error),
        Err(_) => Err(StoreError::connection(format!(
            "the Redis bus did not subscribe within {bound:?}"
        ))),
    }
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
    /// [`RedisConfig::tls`](crate::store::redis::RedisConfig::tls)), and
    /// otherwise the store's defaults: bounded connects and answers,
    /// keepalive and a user timeout on every socket, and a publisher whose
    /// requests time out a few times in a row replaced, as the store's
    /// connection is.
    ///
    /// # Errors
    /// [`StoreError::Connection`] when the URL or the TLS settings are
    /// invalid or the server cannot be reached; the message names the
    /// server with its password masked.
    pub async fn connect_with(url: &str, channel: &str, tls: &RedisTls) -> Result<Self, StoreError> {
        let config = RedisConfig {
            tls: tls.clone(),
            ..RedisConfig::default()
        };
        let client = client_for(url, &config)?;
        let unreachable = |e| connect_error("cannot connect the invalidation bus to Redis at", url, e);
        let mut publisher = Reconnecting::connect(client.clone(), &config)
            .await
            .map_err(unreachable)?;
        check_connection(&mut publisher, config.connect_timeout)
            .await
            .map_err(unreachable)?;
        Ok(RedisBus {
            client,
            publisher,
            connect_timeout: config.connect_timeout,
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
        let pubsub = subscribe(&self.client, &self.channel, self.connect_timeout).await?;
        let (tx, rx) = mpsc::channel(1024);
        let (client, channel, connect_timeout) = (self.client.clone(), self.channel.clone(), self.connect_timeout);
        tokio::spawn(async move {
            let mut stream = Box::pin(watched_messages(pubsub, connect_timeout));
            loop {
                loop {
                    // The listener gone (its `Aside` dropped), the subscription
                    // ends at once: waiting for the next message to find out
                    // kept it, and its pinged connection, alive for good on a
                    // quiet channel.
                    let msg = tokio::select! {
                        msg = stream.next() => msg,
                        () = tx.closed() => return,
                    };
                    let Some(msg) = msg else { break };
                    // A message that does not parse is another program's: skip it.
                    if let Some(message) = Invalidation::decode(msg.get_payload_bytes())
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
                    if let Ok(pubsub) = subscribe(&client, &channel, connect_timeout).await {
                        break Box::pin(watched_messages(pubsub, connect_timeout));
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
