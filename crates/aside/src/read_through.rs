//! Read-through: the loader a namespace registers once
//! ([`crate::NamespaceBuilder::loader`]), so that plain reads load through it.
//!
//! Owns the type-erased form of that loader and nothing else: a read
//! through it is an ordinary `fetch` with the registered loader in place of
//! a closure, so it has everything `get_or_load` has (single-flight,
//! leases, early refresh, fail-safe, the L1) without a line of its own in
//! the engine.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;

/// A registered loader: the key in, the row (or `None`) out.
pub(crate) type Loader<K, V> = Arc<dyn Fn(&K) -> BoxFuture<'static, Result<Option<V>, LoaderError>> + Send + Sync>;

/// The error a registered loader returned, type-erased. [`crate::Error::loader`]
/// unwraps it, so [`crate::Error::loader_error`] still finds the loader's
/// own error type.
#[derive(Clone)]
pub(crate) struct LoaderError(pub(crate) Arc<dyn StdError + Send + Sync + 'static>);

impl fmt::Debug for LoaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for LoaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl StdError for LoaderError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

/// Erases `loader`'s future and error types.
pub(crate) fn erase<K, V, F, Fut, E>(loader: F) -> Loader<K, V>
where
    K: ?Sized,
    F: Fn(&K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
    E: StdError + Send + Sync + 'static,
{
    Arc::new(move |key: &K| {
        let load = loader(key);
        Box::pin(async move { load.await.map_err(|e| LoaderError(Arc::new(e))) })
    })
}
