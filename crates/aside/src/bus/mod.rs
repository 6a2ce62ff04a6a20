//! The invalidation bus: how an invalidation made in one process reaches
//! the L1 tiers of the others.
//!
//! Owns the message, the [`Bus`] trait, and the listener that routes
//! incoming messages to namespaces. Every invalidation made through a
//! namespace is published (one message per call, however many keys); every
//! process evicts those keys from its L1. A listener that lost its
//! connection may have missed messages, so on reconnect it delivers
//! [`BusEvent::Reset`] and every L1 is cleared. Other services can follow a
//! namespace's invalidations with [`crate::Aside::invalidations`] and run
//! their own handlers without using aside's cache.

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::store::StoreError;

#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redis")]
pub mod redis;
pub(crate) mod route;

/// One invalidation, as published: the namespace, its full store keys, and
/// the id of the `Aside` that made it (which ignores its own messages).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Invalidation {
    /// The namespace's name.
    pub namespace: String,
    /// The full store keys invalidated.
    pub keys: Vec<String>,
    /// The publishing `Aside`'s random id.
    pub origin: u64,
}

impl Invalidation {
    /// A message of `origin` for `keys` of `namespace`.
    pub fn new(namespace: impl Into<String>, keys: Vec<String>, origin: u64) -> Self {
        Invalidation {
            namespace: namespace.into(),
            keys,
            origin,
        }
    }

    /// Decodes a received message (JSON, as every bus publishes it). `None`
    /// for bytes that are not an invalidation: another program's message on
    /// the same channel, which the listener skips. Allocates no more than
    /// the payload's own size justifies (the strings and keys it holds).
    pub(crate) fn decode(payload: &[u8]) -> Option<Invalidation> {
        serde_json::from_slice(payload).ok()
    }
}

/// What a subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusEvent {
    /// An invalidation from some process.
    Invalidation(Invalidation),
    /// The connection was lost and restored: messages may have been
    /// missed, so local copies can no longer be trusted.
    Reset,
}

/// A transport for invalidations between processes.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes one message.
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError>;

    /// Starts a subscription that delivers every message published by
    /// anyone (this process included), reconnecting on its own and
    /// delivering [`BusEvent::Reset`] after every reconnect. It ends when
    /// the receiver is dropped.
    ///
    /// # Errors
    /// When the first connection cannot be made.
    async fn subscribe(&self) -> Result<mpsc::Receiver<BusEvent>, StoreError>;
}
