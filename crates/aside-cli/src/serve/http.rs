//! `aside serve`'s connections and the limits on them: what a slow, greedy
//! or hostile client can hold.
//!
//! Owns accepting connections on the public listener (and the admin one,
//! with `--admin-listen`) and serving each with hyper in a task of its own,
//! with hyper's timer set so that a client that does not finish sending a
//! request's headers within `--header-timeout-ms` is disconnected (axum's
//! `serve` sets no timer, so it waited forever); at most
//! `--max-connections` open connections per listener (past it a new one is
//! closed as soon as it is accepted: the client learns at once, instead of
//! waiting in the kernel's backlog behind connections that may be hostile);
//! graceful shutdown (in-flight requests finish, idle connections close);
//! and the two request middlewares: the concurrency limit (a 503 at once
//! past `--max-concurrency` requests in flight, never a queue) and the
//! request timeout (a 504 past `--request-timeout-ms`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Context, Result};
use crate::serve::metrics::{CONNECTIONS_REFUSED, IN_FLIGHT, OPEN_CONNECTIONS, REFUSED};
use crate::serve::routes::ApiError;

/// After a failed `accept` (out of file descriptors, say): how long to wait
/// before the next, so a full descriptor table is not spun on.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound address, the routes it serves, and its connection slots.
#[derive(Debug)]
pub struct Endpoint {
    /// `public` or `admin`: the label of its connection gauge.
    name: &'static str,
    listener: TcpListener,
    router: Router,
    slots: Arc<Semaphore>,
}

impl Endpoint {
    /// Serves `router` on `listener`, with at most `max_connections` open.
    pub fn new(name: &'static str, listener: TcpListener, router: Router, max_connections: usize) -> Self {
        Endpoint {
            name,
            listener,
            router,
            slots: Arc::new(Semaphore::new(max_connections)),
        }
    }

    /// The address bound.
    ///
    /// # Errors
    /// When the socket cannot say.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().context("cannot read the bound address")
    }

    /// The next connection within the limit, with its slot; one past it is
    /// closed (and counted). Cancel-safe: `TcpListener::accept` is, and the
    /// rest does not wait.
    async fn accept(&self) -> (TcpStream, OwnedSemaphorePermit) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _peer)) => match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => return (stream, slot),
                    Err(_) => {
                        ::metrics::counter!(CONNECTIONS_REFUSED, "listener" => self.name).increment(1);
                        drop(stream);
                    }
                },
                Err(e) => {
                    tracing::warn!("cannot accept a connection on the {} listener: {e}", self.name);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// The largest request head (request line and headers) read, in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How long a connection may make no progress.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionTimeouts {
    /// To send a request's head (hyper's `header_read_timeout`; idle
    /// keep-alive connections too).
    pub header: Duration,
    /// For a pending write to make progress: a client that stopped
    /// reading its answers is disconnected instead of holding its slot.
    pub write: Duration,
}

/// Serves `public` (and `admin`, if any) until `shutdown` resolves, then
/// stops accepting and waits at most `drain` for open connections to end.
pub async fn serve(
    public: Endpoint,
    admin: Option<Endpoint>,
    timeouts: ConnectionTimeouts,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    // The timer is what makes hyper enforce the header timeout.
    http.timer(TokioTimer::new()).header_read_timeout(timeouts.header);
    // A request head past this is refused (431) instead of buffered: every
    // open connection may hold this much.
    http.max_buf_size(MAX_HEAD_BYTES);
    tokio::pin!(shutdown);
    loop {
        let (endpoint, (stream, slot)) = tokio::select! {
            () = &mut shutdown => break,
            accepted = public.accept() => (&public, accepted),
            accepted = accept_if_any(admin.as_ref()) => accepted,
        };
        let open = ::metrics::gauge!(OPEN_CONNECTIONS, "listener" => endpoint.name);
        open.increment(1.0);
        let service = TowerToHyperService::new(endpoint.router.clone());
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(timeouts.write));
        let connection = graceful.watch(http.serve_connection(TokioIo::new(Box::pin(stream)), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // A client gone or too slow: its business, not the server's.
                tracing::debug!("connection ended: {e}");
            }
            open.decrement(1.0);
            drop(slot);
        });
    }
    drop((public, admin));
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        eprintln!(
            "aside serve: connections still open after {} ms, closing them",
            drain.as_millis()
        );
    }
}

/// The endpoint and a connection accepted on it; never resolves without one.
async fn accept_if_any(endpoint: Option<&Endpoint>) -> (&Endpoint, (TcpStream, OwnedSemaphorePermit)) {
    match endpoint {
        Some(endpoint) => (endpoint, endpoint.accept().await),
        None => std::future::pending().await,
    }
}

/// The concurrency limit's permits, shared by the public routes.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl ConcurrencyLimit {
    /// At most `limit` requests in flight.
    pub fn new(limit: usize) -> Self {
        ConcurrencyLimit {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

/// Counts a request in flight in the gauge until dropped (also when the
/// request is cancelled).
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        ::metrics::gauge!(IN_FLIGHT).increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        ::metrics::gauge!(IN_FLIGHT).decrement(1.0);
    }
}

/// Middleware: runs the request if fewer than the limit are in flight,
/// else answers 503 at once. Refusing instead of queueing keeps the
/// latency of the requests served bounded and tells the client to come
/// back (`Retry-After: 1`), where a queue would hold its connection.
pub async fn limit_concurrency(State(limit): State<ConcurrencyLimit>, request: Request, next: Next) -> Response {
    let Ok(_permit) = limit.permits.clone().try_acquire_owned() else {
        ::metrics::counter!(REFUSED, "reason" => "concurrency").increment(1);
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is over the concurrency limit ({} requests in flight); retry later",
                limit.limit
            ),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let _in_flight = InFlight::enter();
    next.run(request).await
}

/// Middleware: answers 504 when the request is not answered within the
/// bound (the handler is dropped, with whatever it was waiting on).
pub async fn limit_time(State(bound): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(bound, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ::metrics::counter!(REFUSED, "reason" => "timeout").increment(1);
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the request took longer than {} ms", bound.as_millis()),
            )
            .into_response()
        }
    }
}
