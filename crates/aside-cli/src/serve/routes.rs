//! `aside serve`'s HTTP routes: users and products read through the cache,
//! written to the database then invalidated (the public routes), plus
//! `/metrics` and `/healthz` (the admin routes, on their own listener with
//! `--admin-listen`).
//!
//! Owns the handlers, the shared state they run on, which middleware each
//! set of routes gets, and how failures become responses: every one is a
//! JSON `{"error": "..."}`, with 400 for a malformed id, body or query
//! string (axum's extractor rejections are mapped here), 404 for a missing
//! row, 503 when the database or the store fails. A failure's own text
//! (sqlx's, aside's) goes to the log, redacted, never into a response: the
//! body names the problem (`database unavailable`, `cache unavailable`).

use std::sync::Arc;
use std::time::Duration;

use aside::{Aside, FetchOptions, Namespace, Source};
use aside_cli::input;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router, middleware};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;

use crate::redact;
use crate::serve::db::{Database, Product, ProductFields, Record, User, UserFields};
use crate::serve::health::HealthMonitor;
use crate::serve::http::{ConcurrencyLimit, limit_concurrency, limit_time};

/// Most ids one batch `GET` may ask for.
pub const MAX_BATCH: usize = 1000;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The cache (its store, breaker and counters).
    pub aside: Aside,
    /// The database.
    pub db: Database,
    /// Cached users.
    pub users: Namespace<u64, User>,
    /// Cached products.
    pub products: Namespace<u64, Product>,
    /// `false` with `--ttl 0`: every read goes to the database.
    pub cache_on: bool,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// What `/healthz` reports.
    pub health: HealthMonitor,
    /// The writes in flight, each with its invalidation ([`detached`]):
    /// a shutdown waits for them before it replays the retry queue.
    pub writes: tokio_util::task::TaskTracker,
}

type Shared = State<Arc<AppState>>;

/// The bounds every request runs under.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// The longest a request may take (504 past it).
    pub timeout: Duration,
    /// Requests in flight on the public routes (503 past it).
    pub concurrency: ConcurrencyLimit,
}

/// The largest request body taken (413 past it): a row's fields are a
/// few hundred bytes, and every request in flight may hold this much.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The users and products routes, with an answer for any other path:
/// each request timed, bounded in time, and refused past the concurrency
/// limit.
pub fn public(state: Arc<AppState>, limits: &RequestLimits) -> Router {
    Router::new()
        .route("/users", get(get_users))
        .route("/users/{id}", get(get_user).put(put_user))
        .route("/products", get(get_products))
        .route("/products/{id}", get(get_product).put(put_product))
        .fallback(no_such_route)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(limits.timeout, limit_time))
        .layer(middleware::from_fn_with_state(
            limits.concurrency.clone(),
            limit_concurrency,
        ))
        .layer(middleware::from_fn(crate::serve::metrics::track))
        .with_state(state)
}

/// `/metrics` and `/healthz`, timed and bounded in time but outside the
/// concurrency limit (an overloaded service can still be looked at). With
/// `alone` (on a listener of their own) any other path gets a 404;
/// without, the routes are for merging into [`public`]'s, whose fallback
/// answers the rest.
pub fn admin(state: Arc<AppState>, limits: &RequestLimits, alone: bool) -> Router {
    let routes = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz));
    let routes = if alone { routes.fallback(no_such_route) } else { routes };
    routes
        .layer(middleware::from_fn_with_state(limits.timeout, limit_time))
        .layer(middleware::from_fn(crate::serve::metrics::track))
        .with_state(state)
}

async fn no_such_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route")
}

/// A failed request: its status and a JSON `{"error": message}` body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// A failure answered with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(rejection.body_text())
    }
}

impl From<JsonRejection> for ApiError {
    /// A body that is not JSON, or not of the expected shape, is a 400; a
    /// missing `Content-Type: application/json` keeps its 415, an oversized
    /// body its 413.
    fn from(rejection: JsonRejection) -> Self {
        let status = match rejection {
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => StatusCode::BAD_REQUEST,
            ref other => other.status(),
        };
        Self::new(status, rejection.body_text())
    }
}

/// The cache's failure: logged, and answered with what failed.
impl From<aside::Error> for ApiError {
    fn from(e: aside::Error) -> Self {
        tracing::warn!("request failed: {}", redact::text(&e.to_string()));
        match e.kind() {
            aside::ErrorKind::Loader => Self::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable"),
            aside::ErrorKind::Store => Self::new(StatusCode::SERVICE_UNAVAILABLE, "cache unavailable"),
            aside::ErrorKind::Timeout => Self::new(StatusCode::GATEWAY_TIMEOUT, "timed out"),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        }
    }
}

/// The database's failure (a write): logged, and answered with what failed.
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::warn!("database write failed: {}", redact::text(&e.to_string()));
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
    }
}

/// An id from the path: a `u64` the database can hold ([`input::path_id`]).
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<u64, ApiError> {
    let Path(segment) = path?;
    input::path_id(&segment).map_err(ApiError::bad_request)
}

/// The query string of a batch `GET`: `?ids=1,2,3`.
#[derive(Debug, serde::Deserialize)]
pub struct IdsQuery {
    ids: String,
}

/// Parses `1,2,3` into distinct ids, in order ([`input::id_list`]).
fn parse_ids(query: Result<Query<IdsQuery>, QueryRejection>) -> Result<Vec<u64>, ApiError> {
    let Query(IdsQuery { ids }) = query?;
    input::id_list(&ids, MAX_BATCH).map_err(ApiError::bad_request)
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Hit => "hit",
        Source::Loaded => "loaded",
        Source::Coalesced => "coalesced",
        Source::Stale => "stale",
        _ => "other",
    }
}

/// Reads one row through the cache (or, with the cache off, around it).
/// The response says where it came from in `X-Cache`.
async fn read_one<R: Record>(state: &AppState, ns: &Namespace<u64, R>, id: u64) -> Result<Response, ApiError> {
    let options = if state.cache_on {
        FetchOptions::default()
    } else {
        FetchOptions::skip_cache()
    };
    let fetched = ns.fetch_with(&id, options, || state.db.read_one::<R>(id)).await?;
    let source = HeaderValue::from_static(source_name(fetched.source));
    match fetched.value {
        Some(row) => Ok(([(header::HeaderName::from_static("x-cache"), source)], Json(row)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no {} row with id {id}", R::TABLE),
        )),
    }
}

/// Reads many rows: cached ones in one store round trip, the others in one
/// database query (or all from the database with the cache off). Returns
/// the found rows in the order asked.
async fn read_many<R: Record>(state: &AppState, ns: &Namespace<u64, R>, ids: &[u64]) -> Result<Response, ApiError> {
    let db = &state.db;
    let mut found = if state.cache_on {
        ns.get_many_or_load(
            ids,
            |missing: Vec<u64>| async move { db.read_many::<R>(&missing).await },
        )
        .await?
    } else {
        db.read_many::<R>(ids).await?
    };
    let rows: Vec<R> = ids.iter().filter_map(|id| found.remove(id)).collect();
    Ok(Json(rows).into_response())
}

/// After a database write: drops the cached row (unless the cache is off).
/// A store that did not take it is aside's to retry; the write stands.
/// Runs a write and its invalidation in a task of their own, and waits for
/// it. A request future is dropped midway when it passes the request
/// timeout or its client hangs up; dropped between the database write and
/// the invalidation, it would leave the old row cached until its TTL, with
/// nothing queued to fix it. A task runs to its end whatever becomes of
/// the request, and `writes` lets a shutdown wait for it. (A client that
/// got a 504 may so see its write land later: 504 says the outcome is
/// unknown.)
async fn detached<T: Send + 'static>(
    writes: &tokio_util::task::TaskTracker,
    write: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    writes.spawn(write).await.unwrap_or_else(|e| {
        tracing::error!("a write task failed: {e}");
        Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
    })
}

async fn invalidate<R: Record>(state: &AppState, ns: &Namespace<u64, R>, id: u64) {
    if state.cache_on
        && let Err(e) = ns.invalidate(&id).await
    {
        tracing::warn!("cannot invalidate {} {id}: {}", R::TABLE, redact::text(&e.to_string()));
    }
}

async fn get_user(State(state): Shared, id: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    read_one(&state, &state.users, path_id(id)?).await
}

async fn get_product(State(state): Shared, id: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    read_one(&state, &state.products, path_id(id)?).await
}

async fn get_users(State(state): Shared, query: Result<Query<IdsQuery>, QueryRejection>) -> Result<Response, ApiError> {
    read_many(&state, &state.users, &parse_ids(query)?).await
}

async fn get_products(
    State(state): Shared,
    query: Result<Query<IdsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    read_many(&state, &state.products, &parse_ids(query)?).await
}

async fn put_user(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<UserFields>, JsonRejection>,
) -> Result<Json<User>, ApiError> {
    let id = path_id(id)?;
    let Json(fields) = body?;
    fields.check().map_err(ApiError::bad_request)?;
    let writes = state.writes.clone();
    let row = detached(&writes, async move {
        let row = state.db.update_user(id, &fields).await?;
        if row.is_some() {
            invalidate(&state, &state.users, id).await;
        }
        Ok(row)
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no users row with id {id}")))?;
    Ok(Json(row))
}

async fn put_product(
    State(state): Shared,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<ProductFields>, JsonRejection>,
) -> Result<Json<Product>, ApiError> {
    let id = path_id(id)?;
    let Json(fields) = body?;
    fields.check().map_err(ApiError::bad_request)?;
    let writes = state.writes.clone();
    let row = detached(&writes, async move {
        let row = state.db.update_product(id, &fields).await?;
        if row.is_some() {
            invalidate(&state, &state.products, id).await;
        }
        Ok(row)
    })
    .await?
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no products row with id {id}")))?;
    Ok(Json(row))
}

async fn render_metrics(State(state): Shared) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

fn check_json(name: &str, result: Result<(), &str>) -> serde_json::Value {
    match result {
        Ok(()) => json!({ "name": name, "ok": true }),
        Err(e) => json!({ "name": name, "ok": false, "error": e }),
    }
}

/// 200 when the database answered the last background check, 503
/// otherwise (or when that check is older than the monitor trusts).
/// `status` is `degraded` when the store did not answer, answered slower
/// than the breaker's slow-call threshold, or is skipped by an open breaker
/// (a cache waited on for 200 ms, or bypassed, is not `ok`).
/// `store_latency_ms` is the last check's ping, `checked_ms_ago` its age;
/// `breaker_reason` says why the breaker opened (`failures`, `slow`),
/// `store_slow_calls` how many recent calls were slow. Pings nothing.
async fn healthz(State(state): Shared) -> Response {
    let checked = state.health.latest();
    let age = checked.taken_at.elapsed();
    let database = if age > state.health.stale_after() {
        Err("health check stalled")
    } else {
        checked.database
    };
    let store = checked.store;
    let breaker = state.aside.breaker_status();
    let slow = store.is_ok() && checked.store_latency > crate::store::slow_call();
    let (status, code) = match (database, store) {
        (Err(_), _) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE),
        (Ok(()), Err(_)) => ("degraded", StatusCode::OK),
        (Ok(()), Ok(())) if slow || breaker.state != aside::BreakerState::Closed => ("degraded", StatusCode::OK),
        (Ok(()), Ok(())) => ("ok", StatusCode::OK),
    };
    let body = json!({
        "status": status,
        "database": check_json(state.db.backend(), database),
        "store": check_json(state.aside.store().name(), store),
        "store_latency_ms": store.is_ok().then_some(checked.store_latency.as_secs_f64() * 1e3),
        "checked_ms_ago": u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
        "breaker": breaker.state,
        "breaker_reason": breaker.reason,
        "store_slow_calls": breaker.slow_calls,
        "cache": state.cache_on,
    });
    (code, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(raw: &str) -> Result<Vec<u64>, ApiError> {
        parse_ids(Ok(Query(IdsQuery { ids: raw.to_owned() })))
    }

    #[test]
    fn parses_id_lists() {
        assert_eq!(ids("1,2, 3,2").unwrap(), vec![1, 2, 3]);
        for bad in ["", "1,,2", "x", "-1", "9223372036854775808", "1;2"] {
            assert_eq!(ids(bad).unwrap_err().status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        let too_many = (1..=MAX_BATCH as u64 + 1)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(ids(&too_many).unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
