//! `aside serve --otel URL`: traces and metrics to an OpenTelemetry
//! collector over OTLP/HTTP (protobuf), behind the `otel` feature.
//!
//! Owns the two SDK providers and what feeds them:
//! - **Traces.** `tracing-opentelemetry` turns the `aside` spans (one per
//!   cache operation: see `aside::telemetry`, named by their `otel.name`,
//!   `aside.get_or_load` and so on) into OpenTelemetry spans, sent in
//!   batches to `URL/v1/traces`.
//! - **Metrics.** Every counter, gauge and histogram recorded through the
//!   `metrics` facade (aside's and the service's: the same series
//!   `/metrics` shows) goes to `URL/v1/metrics` as well, every
//!   `--otel-interval-ms`, through a fan-out beside the Prometheus recorder.
//!
//! Why threads and not the Tokio runtime: the SDK's batch span processor
//! and periodic reader run on threads of their own, and the blocking HTTP
//! client they use must not live inside the runtime. So the providers are
//! built before the runtime starts and shut down (flushing what is
//! buffered) after it has finished: [`Otel::shutdown`].

use std::sync::Mutex;
use std::time::Duration;

use metrics_exporter_otel::OpenTelemetryRecorder;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::error::{Context, Result};

/// The recorder [`Otel::start`] made, for `serve` to install beside its
/// Prometheus recorder (the `metrics` facade takes one global recorder,
/// installed where the Prometheus handle is made).
static RECORDER: Mutex<Option<OpenTelemetryRecorder>> = Mutex::new(None);

/// The running providers; [`Otel::shutdown`] flushes them.
pub struct Otel {
    traces: SdkTracerProvider,
    metrics: SdkMeterProvider,
}

impl Otel {
    /// Builds the exporters for the collector at `endpoint` (its OTLP/HTTP
    /// base, such as `http://127.0.0.1:4318`) and returns the providers and
    /// the `tracing` layer that feeds the trace exporter. Call it outside
    /// the Tokio runtime.
    ///
    /// # Errors
    /// When an exporter cannot be built (a malformed URL).
    pub fn start<S>(endpoint: &str, interval: Duration) -> Result<(Otel, impl Layer<S>)>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
    {
        let base = endpoint.trim_end_matches('/');
        let resource = Resource::builder().with_service_name("aside").build();
        let spans = SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/traces"))
            .build()
            .context("cannot build the OTLP trace exporter")?;
        let traces = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(traces.tracer("aside"));
        let exporter = MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(format!("{base}/v1/metrics"))
            .build()
            .context("cannot build the OTLP metric exporter")?;
        let reader = PeriodicReader::builder(exporter).with_interval(interval).build();
        let metrics = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        let recorder = OpenTelemetryRecorder::new(metrics.meter("aside"));
        *RECORDER.lock().unwrap_or_else(|e| e.into_inner()) = Some(recorder);
        Ok((Otel { traces, metrics }, layer))
    }

    /// Sends what is buffered and stops the exporters. Call it after the
    /// runtime has finished.
    pub fn shutdown(self) {
        if let Err(e) = self.traces.shutdown() {
            eprintln!("warning: the last OpenTelemetry spans were not sent: {e}");
        }
        if let Err(e) = self.metrics.shutdown() {
            eprintln!("warning: the last OpenTelemetry metrics were not sent: {e}");
        }
    }
}

/// The metrics recorder of the collector, if `--otel` started one.
pub fn take_recorder() -> Option<OpenTelemetryRecorder> {
    RECORDER.lock().unwrap_or_else(|e| e.into_inner()).take()
}
