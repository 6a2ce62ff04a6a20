//! `aside serve`'s metrics: the Prometheus recorder, the service's own
//! metric names, and the middleware timing every request.
//!
//! Owns installing the recorder (which must happen before the namespaces
//! are built, so that aside's counters register with it), its periodic
//! upkeep, and the request-latency histogram, labelled by method (one of a
//! fixed set: a made-up method counts as `other`), route template
//! (`/users/{id}`, never the raw path; `unmatched` for no route) and
//! status, so no request can add a series of its own.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::{Context, Result};

/// Request latency histogram, in seconds.
pub const HTTP_DURATION: &str = "http_request_duration_seconds";
/// Database reads (loader calls reaching the database), by table.
pub const DB_READS: &str = "aside_serve_db_reads_total";
/// Requests being handled on the public routes (past the concurrency limit
/// they are refused, not counted here).
pub const IN_FLIGHT: &str = "aside_serve_requests_in_flight";
/// Requests refused, by reason: `concurrency` (over `--max-concurrency`) or
/// `timeout` (over `--request-timeout-ms`).
pub const REFUSED: &str = "aside_serve_requests_refused_total";
/// Open connections, by listener (`public`, `admin`).
pub const OPEN_CONNECTIONS: &str = "aside_serve_open_connections";
/// Connections closed at once for being past `--max-connections`, by listener.
pub const CONNECTIONS_REFUSED: &str = "aside_serve_connections_refused_total";
/// Pings of the background health check, by target (`database`, `store`).
pub const HEALTH_PINGS: &str = "aside_serve_health_pings_total";

/// Histogram buckets, in seconds: 100 µs to 5 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// How often the recorder's histograms are drained.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder as the process's `metrics` recorder and
/// starts its upkeep task. Needs a Tokio runtime.
///
/// # Errors
/// When a recorder is already installed.
pub fn install() -> Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)
        .context("cannot configure the Prometheus histogram buckets")?
        .build_recorder();
    let handle = recorder.handle();
    // With --otel, every series goes to the collector too.
    #[cfg(feature = "otel")]
    let installed = match crate::otel::take_recorder() {
        Some(otel) => metrics::set_global_recorder(
            metrics_util::layers::FanoutBuilder::default()
                .add_recorder(recorder)
                .add_recorder(otel)
                .build(),
        )
        .is_ok(),
        None => metrics::set_global_recorder(recorder).is_ok(),
    };
    #[cfg(not(feature = "otel"))]
    let installed = metrics::set_global_recorder(recorder).is_ok();
    if !installed {
        return Err(crate::error::CliError::new(
            "cannot install the Prometheus metrics recorder: one is installed already",
        ));
    }
    metrics::describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by method, route and status."
    );
    metrics::describe_counter!(DB_READS, "Database reads by table: what the cache did not absorb.");
    metrics::describe_gauge!(IN_FLIGHT, "Requests being handled on the public routes.");
    metrics::describe_counter!(REFUSED, "Requests refused, by reason: concurrency or timeout.");
    metrics::describe_gauge!(OPEN_CONNECTIONS, "Open HTTP connections, by listener.");
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at once past the connection limit, by listener."
    );
    metrics::describe_counter!(HEALTH_PINGS, "Pings of the background health check, by target.");
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Middleware: records each request's latency under its route template.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The `method` label: the method if it is one of the usual seven, `other`
/// otherwise (any token is a valid HTTP method, so the raw one would let
/// each client mint series).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_a_fixed_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for made_up in ["FOO", "get", "TRACE", "CONNECT", "X-ANYTHING"] {
            let method = Method::from_bytes(made_up.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{made_up}");
        }
    }
}
