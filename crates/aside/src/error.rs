//! The one error type of `aside`.
//!
//! Owns [`Error`] and [`ErrorKind`]. An `Error` is cheap to clone (an `Arc`
//! inside) because every waiter of a coalesced load receives the same error.

use std::fmt;
use std::sync::Arc;

/// What went wrong, broadly. New kinds may be added in minor releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The cache store failed or could not be reached.
    Store,
    /// An operation did not finish within its time bound.
    Timeout,
    /// A value could not be encoded or decoded.
    Codec,
    /// The caller's loader returned an error.
    Loader,
    /// The caller's database write ([`crate::Namespace::update`]) returned an error.
    Write,
    /// The configuration is invalid.
    Config,
    /// A key cannot be used (control characters, whitespace, empty).
    InvalidKey,
    /// Refused to protect a bounded resource that is full: a write-back log
    /// at its bound ([`crate::writeback::LogConfig::max_len`]). Nothing was
    /// done; try again once it drains.
    Backpressure,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Store => "store error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Codec => "codec error",
            ErrorKind::Loader => "loader error",
            ErrorKind::Write => "write error",
            ErrorKind::Config => "configuration error",
            ErrorKind::InvalidKey => "invalid key",
            ErrorKind::Backpressure => "back-pressure",
        })
    }
}

type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The error returned by every fallible `aside` operation.
///
/// Cloning is cheap: waiters of one coalesced load share a single error.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: Arc<str>,
    source: Option<Source>,
}

impl Error {
    /// Creates an error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: Arc::from(message.into()),
            source: None,
        }
    }

    /// Creates an error of `kind` caused by `source`.
    pub fn with_source<E>(kind: ErrorKind, message: impl Into<String>, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error {
            kind,
            message: Arc::from(message.into()),
            source: Some(Arc::new(source)),
        }
    }

    /// Wraps an error returned by a loader.
    pub fn loader<E>(source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let message = source.to_string();
        // A registered loader's error arrives type-erased: keep the
        // loader's own error as the source, for `loader_error`.
        if let Some(erased) = (&source as &dyn std::any::Any).downcast_ref::<crate::read_through::LoaderError>() {
            return Error {
                kind: ErrorKind::Loader,
                message: Arc::from(message),
                source: Some(erased.0.clone()),
            };
        }
        Error::with_source(ErrorKind::Loader, message, source)
    }

    /// The broad kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when an operation ran out of time.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// True when the cache store failed.
    pub fn is_store(&self) -> bool {
        self.kind == ErrorKind::Store
    }

    /// True when a bounded resource was full ([`ErrorKind::Backpressure`]).
    pub fn is_backpressure(&self) -> bool {
        self.kind == ErrorKind::Backpressure
    }

    /// True when the loader failed; see [`Error::loader_error`].
    pub fn is_loader(&self) -> bool {
        self.kind == ErrorKind::Loader
    }

    /// The loader's own error, if this error came from a loader returning an `E`.
    pub fn loader_error<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.as_deref()?.downcast_ref::<E>()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A store error becomes an [`ErrorKind::Store`] error with the store error
/// as its source, so `?` works on a store's own calls in a function that
/// returns [`Result`]:
///
/// ```no_run
/// # async fn connect() -> aside::Result<aside::Aside> {
/// let store = aside::store::redis::RedisStore::connect("redis://127.0.0.1:6379").await?;
/// Ok(aside::Aside::builder().store(store).build())
/// # }
/// ```
///
/// The message says what kind of failure it was; the store error, the
/// source, says what failed (`connection: cannot connect to Redis at ...`,
/// never with a URL's password), and its own source is the client's error.
impl From<crate::store::StoreError> for Error {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        let summary = match &e {
            StoreError::Connection { .. } => "the store could not be reached",
            StoreError::Server { .. } => "the store answered with an error",
            StoreError::Refused { .. } => "the store refused the operation",
            StoreError::Unsupported { .. } => "the store does not support the operation",
        };
        Error::with_source(ErrorKind::Store, summary, e)
    }
}

/// Shorthand for `Result<T, aside::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
