//! The cost of observability: throughput (`--executions` x `--events`) and
//! emit->committed latency (`--rate` for `--seconds`) with metrics and
//! traces off, metrics on, then metrics and traces on (exported over
//! OTLP/HTTP to a sink in this process that only counts), in one run.

use crate::BenchArgs;
use crate::scenarios::{emit_all, paced};
use crate::setup::{fresh_with, percentile};
use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use kodo_metrics::Metrics;
use kodo_telemetry::{Telemetry, TelemetryOptions};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tracing_subscriber::Layer;
use tracing_subscriber::prelude::*;

/// Traces for the `observe` scenario: the pipeline, its switch, the bytes
/// its sink took.
struct Traces {
    telemetry: Telemetry,
    on: Arc<AtomicBool>,
    exported: Arc<AtomicU64>,
}

static TRACES: OnceLock<Traces> = OnceLock::new();

/// The bench's logging: warnings on stderr, and a trace layer (off until
/// the `observe` scenario switches it on) exporting over OTLP/HTTP to a
/// sink in this process that only counts bytes. Call it inside the runtime.
pub fn init_logging() {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::EnvFilter::new("warn"));
    let traces = sink().and_then(|(endpoint, exported)| {
        let options = TelemetryOptions {
            otlp_endpoint: Some(endpoint),
            ..Default::default()
        };
        let telemetry = Telemetry::start(&options).map_err(|e| e.to_string())?;
        let telemetry = telemetry.ok_or("OTEL_SDK_DISABLED")?;
        Ok(Traces {
            telemetry,
            on: Arc::new(AtomicBool::new(false)),
            exported,
        })
    });
    let layer = traces
        .as_ref()
        .ok()
        .map(|t| t.telemetry.layer_while(t.on.clone()));
    tracing_subscriber::registry().with(logs).with(layer).init();
    match traces {
        Ok(traces) => {
            let _ = TRACES.set(traces);
        }
        Err(e) => tracing::warn!("runtime bench: no traces for `observe`: {e}"),
    }
}

/// An OTLP/HTTP endpoint that takes every export and counts its bytes.
fn sink() -> Result<(String, Arc<AtomicU64>), String> {
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = bytes.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| async move {
            counted.fetch_add(body.len() as u64, Ordering::Relaxed);
        }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, bytes))
}

fn switch(traces: &Traces, on: bool) {
    traces.on.store(on, Ordering::Relaxed);
    tracing::callsite::rebuild_interest_cache();
}

/// One mode's throughput (flow events/s) and p99 emit->committed (ms).
async fn measure(args: &BenchArgs, name: &str, metrics: Metrics) -> Result<(f64, f64), String> {
    let b = fresh_with(args, name, None, Some(Arc::new(metrics))).await?;
    let secs = emit_all(&b, args).await?;
    let throughput = (args.executions * args.events) as f64 / secs;
    let (_, latencies) = paced(&b, args, args.executions as u64).await?;
    let p99 = percentile(&latencies, 0.99) * 1e3;
    b.end().await;
    Ok((throughput, p99))
}

/// The scenario `observe`.
pub(crate) async fn observe(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let Some(traces) = TRACES.get() else {
        return Err("no trace pipeline (run it as `runtime bench`)".into());
    };
    // Rounds of each, interleaved (this machine is noisy): the best of each
    // mode, and every round's throughput to show the spread. Each round
    // starts with the next mode: a machine that slows down over the run
    // (disk write-back of the earlier runs' files) favours no mode.
    let mut best = [(0.0f64, f64::INFINITY); 3];
    let mut rates: [Vec<String>; 3] = Default::default();
    let rounds = args.rounds.max(1);
    for round in 0..rounds {
        for mode in (0..3).map(|k| (round + k) % 3) {
            let slot = &mut best[mode];
            let metrics = if mode == 0 {
                Metrics::off()
            } else {
                Metrics::new()
            };
            switch(traces, mode == 2);
            let name = format!("observe-{mode}-{round}");
            let measured = measure(args, &name, metrics).await;
            switch(traces, false);
            let (rate, p99) = measured?;
            *slot = (slot.0.max(rate), slot.1.min(p99));
            rates[mode].push(format!("{:.0}k", rate / 1e3));
        }
    }
    tokio::task::spawn_blocking(|| traces.telemetry.flush())
        .await
        .map_err(|e| e.to_string())?;
    let [(off_rate, off_p99), (m_rate, m_p99), (t_rate, t_p99)] = best;
    let cost = |rate: f64| (1.0 - rate / off_rate) * 100.0;
    report.push(format!(
        "observe  {} x {} events, then {} events/s for {} s (best of {rounds}, interleaved): off {off_rate:.0} events/s, p99 {off_p99:.2} ms; \
         metrics {m_rate:.0} events/s ({:+.1}% cost), p99 {m_p99:.2} ms; \
         metrics+traces {t_rate:.0} events/s ({:+.1}% cost), p99 {t_p99:.2} ms ({} KB of spans exported); \
         each round: off [{}], metrics [{}], metrics+traces [{}]",
        args.executions,
        args.events,
        args.rate,
        args.seconds,
        cost(m_rate),
        cost(t_rate),
        traces.exported.load(Ordering::Relaxed) / 1024,
        rates[0].join(" "),
        rates[1].join(" "),
        rates[2].join(" "),
    ));
    Ok(())
}
