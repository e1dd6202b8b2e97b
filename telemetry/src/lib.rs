//! kodo's OpenTelemetry traces.
//!
//! - [`Telemetry::start`] builds the OTLP/HTTP exporter (a batch processor
//!   on its own thread: a down endpoint drops spans with a warning, it
//!   never blocks an emit) and [`Telemetry::layer`] is the
//!   `tracing-opentelemetry` layer that turns kodo's spans into OTel spans.
//! - [`set_parent`], [`traceparent`] and [`add_link`] move W3C trace
//!   context between `tracing` spans and `traceparent` strings (the
//!   header of a launch, `TRACEPARENT` of a command flow). Without the
//!   layer they do nothing.
//!
//! The `OTEL_*` variables work as the OpenTelemetry spec says
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_SDK_DISABLED`...); a value set in
//! `[telemetry]` wins over its variable.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// `[telemetry]`: where traces go (each unset value from its `OTEL_*` variable).
#[derive(Clone, Debug, Default)]
pub struct TelemetryOptions {
    /// The OTLP/HTTP endpoint, as `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is added).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of every span, as `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// The share of new traces kept (0 to 1; a parent's choice wins), as
    /// `OTEL_TRACES_SAMPLER=parentbased_traceidratio` with its argument.
    pub sample_ratio: Option<f64>,
}

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
#[error("telemetry: {0}")]
pub struct TelemetryError(String);

/// The trace pipeline of this process; flushes and stops when shut down.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

impl Telemetry {
    /// The pipeline, when traces go somewhere: `otlp_endpoint`, or an
    /// `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`, and `OTEL_SDK_DISABLED` not `true`.
    pub fn start(options: &TelemetryOptions) -> Result<Option<Self>, TelemetryError> {
        let disabled =
            std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let endpoint_set = options.otlp_endpoint.is_some()
            || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        if disabled || !endpoint_set {
            return Ok(None);
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(endpoint) = &options.otlp_endpoint {
            // As OTEL_EXPORTER_OTLP_ENDPOINT: the base, the signal's path added.
            let base = endpoint.trim_end_matches('/');
            exporter = exporter.with_endpoint(format!("{base}/v1/traces"));
        }
        let exporter = exporter
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if let Some(name) = &options.service_name {
            resource = resource.with_service_name(name.clone());
        } else if !env_set("OTEL_SERVICE_NAME") {
            resource = resource.with_service_name("kodo");
        }
        let mut provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build());
        if let Some(ratio) = options.sample_ratio {
            let root = Sampler::TraceIdRatioBased(ratio);
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(root)));
        }
        Ok(Some(Self {
            provider: provider.build(),
        }))
    }

    /// The `tracing` layer that exports kodo's spans (targets `kodo*`).
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        self.layer_while(Arc::new(AtomicBool::new(true)))
    }

    /// [`Telemetry::layer`], exporting only while `on` holds (spans begun
    /// meanwhile; call `tracing::callsite::rebuild_interest_cache` after a
    /// change). `runtime bench` measures the cost of traces with it.
    pub fn layer_while<S>(&self, on: Arc<AtomicBool>) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let kodo_only = tracing_subscriber::filter::filter_fn(move |meta| {
            meta.is_span() && meta.target().starts_with("kodo") && on.load(Ordering::Relaxed)
        });
        // No per-poll bookkeeping: busy/idle times are not tracked, and no
        // OpenTelemetry context is made current on each enter (kodo reads
        // its spans' contexts itself; no other OTel instrumentation runs
        // here). Thread, code location and target attributes are left out.
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("kodo"))
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_target(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(kodo_only)
    }

    /// Exports the spans ended so far (blocks: call it off the async runtime).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "telemetry: spans left unexported");
        }
    }

    /// Exports what is left and stops (an endpoint that does not answer
    /// holds it up to `OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default).
    pub fn shutdown(self) {
        // The provider's shutdown blocks: off the async runtime's threads.
        let provider = self.provider;
        let done = std::thread::spawn(move || provider.shutdown());
        if let Ok(Err(e)) = done.join() {
            tracing::warn!(error = %e, "telemetry: spans left unexported at shutdown");
        }
    }
}

/// Makes the trace of `traceparent` (W3C) the parent of `span`, which
/// must not have been entered yet. Does nothing for a malformed value or
/// without the layer.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if let Some(parent) = parsed(traceparent) {
        let _ = span.set_parent(parent);
    }
}

/// The trace context `traceparent` names, if it is well-formed.
fn parsed(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// `span`'s W3C `traceparent` (its sampled flag as decided), None without the layer.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// A span another span can link to (see [`add_link`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SpanLink(opentelemetry::trace::SpanContext);

/// What links to `span`, None without the layer.
pub fn span_link(span: &tracing::Span) -> Option<SpanLink> {
    let context = span.context();
    let linked = context.span().span_context().clone();
    linked.is_valid().then_some(SpanLink(linked))
}

impl SpanLink {
    /// The span a W3C `traceparent` names, if it is well-formed.
    pub fn from_traceparent(traceparent: &str) -> Option<Self> {
        let context = parsed(traceparent)?;
        Some(Self(context.span().span_context().clone()))
    }
}

/// Links `span` (not entered yet) to `linked`.
pub fn add_link(span: &tracing::Span, linked: &SpanLink) {
    span.add_link(linked.0.clone());
}

/// Whether `value` is a well-formed W3C `traceparent`.
pub fn is_traceparent(value: &str) -> bool {
    parsed(value).is_some()
}
