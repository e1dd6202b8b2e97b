//! kodo's Prometheus metrics: one [`Metrics`] registry per process (a node,
//! a `runtime spool`, a `runtime temporal-worker`), filled by the Tracers
//! (what executions do: [`ExecutionMetrics`]) and the Spoolers (what is
//! stored: [`Metrics::committed`]), read by `GET /metrics` as OpenMetrics
//! text ([`Metrics::encode`]).
//!
//! Each process counts what it did itself; Prometheus sums over processes.
//! The gauges of live executions count an execution in the process whose
//! Tracer set its status, and only while that Tracer lives, so a dead
//! process's executions leave the sum with it.

use kodo_core::{Event, Kind, Status, now_ts};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Metrics shared by every part of a process.
pub type SharedMetrics = Arc<Metrics>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabel {
    flow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowStatus {
    flow: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LockEvent {
    event: String,
}

/// A process's metrics and the registry that shows them.
pub struct Metrics {
    /// False: counts nothing (`runtime bench` measures the cost this way).
    on: bool,
    registry: Registry,
    launched: Family<FlowLabel, Counter>,
    ended: Family<FlowStatus, Counter>,
    live: Family<FlowStatus, Gauge>,
    launch_to_running: Histogram,
    locks: Family<LockEvent, Counter>,
    events_stored: Counter,
    batch_events: Histogram,
    commit_seconds: Histogram,
    emit_to_commit: Histogram,
    spooler_restarts: Counter,
    store_errors: Counter,
    transport_errors: Counter,
    /// The transport's own failure count at the last scrape.
    transport_failures_seen: AtomicU64,
    transport_bytes: Gauge,
    transport_backlog: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency buckets from 0.1 ms to about 55 s.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

impl Metrics {
    /// Empty metrics, registered under the prefix `kodo`.
    pub fn new() -> Self {
        let mut m = Self {
            on: true,
            registry: Registry::with_prefix("kodo"),
            launched: Family::default(),
            ended: Family::default(),
            live: Family::default(),
            launch_to_running: seconds(),
            locks: Family::default(),
            events_stored: Counter::default(),
            batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            commit_seconds: seconds(),
            emit_to_commit: seconds(),
            spooler_restarts: Counter::default(),
            store_errors: Counter::default(),
            transport_errors: Counter::default(),
            transport_failures_seen: AtomicU64::new(0),
            transport_bytes: Gauge::default(),
            transport_backlog: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "executions_launched",
            "Executions launched, by flow",
            m.launched.clone(),
        );
        r.register(
            "executions_ended",
            "Executions ended, by flow and final status",
            m.ended.clone(),
        );
        r.register(
            "executions_live",
            "Executions now starting, running, awaiting or paused here, by flow and status",
            m.live.clone(),
        );
        r.register_with_unit(
            "launch_to_running",
            "From an execution's launch to its flow running",
            Unit::Seconds,
            m.launch_to_running.clone(),
        );
        r.register(
            "locks",
            "Lock events: opened, answered, expired",
            m.locks.clone(),
        );
        r.register(
            "events_stored",
            "Events committed to the store by this process's Spoolers",
            m.events_stored.clone(),
        );
        r.register(
            "commit_batch_events",
            "Events per committed batch",
            m.batch_events.clone(),
        );
        r.register_with_unit(
            "commit",
            "How long committing a batch took",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        r.register_with_unit(
            "emit_to_commit",
            "From the emit of a batch's oldest event to the batch's commit",
            Unit::Seconds,
            m.emit_to_commit.clone(),
        );
        r.register(
            "spooler_restarts",
            "Spoolers restarted by their supervisor",
            m.spooler_restarts.clone(),
        );
        r.register(
            "store_errors",
            "Failed store writes (each retried)",
            m.store_errors.clone(),
        );
        r.register(
            "transport_errors",
            "Failed transport operations: publishes refused to Tracers, and reads, writes and acks that failed (each retried)",
            m.transport_errors.clone(),
        );
        r.register_with_unit(
            "transport_in_flight",
            "Bytes the transport holds now",
            Unit::Bytes,
            m.transport_bytes.clone(),
        );
        r.register(
            "transport_backlog",
            "Redis: stream entries not yet acknowledged by any Spooler",
            m.transport_backlog.clone(),
        );
        m
    }

    /// Metrics that count nothing: the baseline of the cost of counting.
    pub fn off() -> Self {
        Self {
            on: false,
            ..Self::new()
        }
    }

    /// Whether these metrics count.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The counting of one execution's events by its Tracer.
    pub fn execution(self: &Arc<Self>, flow: &str) -> ExecutionMetrics {
        ExecutionMetrics {
            metrics: self.clone(),
            flow: flow.to_string(),
            counted: None,
            starting: None,
        }
    }

    /// A Spooler committed `events` in one batch that took `took`.
    pub fn committed(&self, events: &[Event], took: Duration) {
        if !self.on {
            return;
        }
        self.events_stored.inc_by(events.len() as u64);
        self.batch_events.observe(events.len() as f64);
        self.commit_seconds.observe(took.as_secs_f64());
        // One sample per batch, its oldest event's: an upper bound of every
        // event's in it, at a cost per batch rather than per event.
        if let Some(oldest) = events.iter().map(|e| e.ts).min_by(f64::total_cmp) {
            self.emit_to_commit.observe((now_ts() - oldest).max(0.0));
        }
    }

    /// A store write failed (the Spooler retries it).
    pub fn store_error(&self) {
        self.store_errors.inc();
    }

    /// The transport refused a Tracer's events.
    pub fn transport_error(&self) {
        self.transport_errors.inc();
    }

    /// A Spooler was restarted by its supervisor.
    pub fn spooler_restarted(&self) {
        self.spooler_restarts.inc();
    }

    /// The transport's state now (read at each scrape): the bytes it holds,
    /// its backlog (None: unknown now, the last known value stays), and the
    /// failures it counted itself since the process started.
    pub fn transport(&self, in_flight_bytes: usize, backlog: Option<usize>, failures: u64) {
        self.transport_bytes.set(in_flight_bytes as i64);
        if let Some(backlog) = backlog {
            self.transport_backlog.set(backlog as i64);
        }
        let seen = self
            .transport_failures_seen
            .fetch_max(failures, Ordering::AcqRel);
        if failures > seen {
            self.transport_errors.inc_by(failures - seen);
        }
    }

    /// The OpenMetrics text of every metric ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// One execution's share of the metrics, kept by its Tracer: counts its
/// launch, its end, its locks, and holds its place in the live gauge
/// (given back when the Tracer goes).
#[derive(Debug)]
pub struct ExecutionMetrics {
    metrics: Arc<Metrics>,
    flow: String,
    counted: Option<Status>,
    starting: Option<Instant>,
}

impl ExecutionMetrics {
    /// Counts what `event` says, once the transport took it.
    pub fn published(&mut self, event: &Event) {
        match event.kind {
            Kind::Status => {
                if let Some(status) = event.status() {
                    self.status(status);
                }
            }
            Kind::Lock => self.lock("opened"),
            Kind::Lease => {
                let closed = serde_json::from_str::<serde_json::Value>(&event.payload);
                let expired = closed.is_ok_and(|v| v.get("error").is_some());
                self.lock(if expired { "expired" } else { "answered" });
            }
            _ => {}
        }
    }

    /// Whether its metrics count (see [`Metrics::off`]).
    pub fn is_on(&self) -> bool {
        self.metrics.on
    }

    /// The transport refused this execution's events.
    pub fn transport_error(&self) {
        self.metrics.transport_error();
    }

    /// Whether `event` is one that [`ExecutionMetrics::published`] counts.
    pub fn counts(kind: Kind) -> bool {
        matches!(kind, Kind::Status | Kind::Lock | Kind::Lease)
    }

    fn status(&mut self, status: Status) {
        self.release();
        let m = &self.metrics;
        match status {
            Status::Starting => {
                m.launched
                    .get_or_create(&FlowLabel {
                        flow: self.flow.clone(),
                    })
                    .inc();
                self.starting = Some(Instant::now());
            }
            Status::Running => {
                if let Some(start) = self.starting.take() {
                    m.launch_to_running.observe(start.elapsed().as_secs_f64());
                }
            }
            _ => {}
        }
        let label = FlowStatus {
            flow: self.flow.clone(),
            status: status.as_str().to_string(),
        };
        if status.is_final() {
            m.ended.get_or_create(&label).inc();
        } else {
            m.live.get_or_create(&label).inc();
            self.counted = Some(status);
        }
    }

    fn lock(&self, event: &str) {
        self.metrics
            .locks
            .get_or_create(&LockEvent {
                event: event.to_string(),
            })
            .inc();
    }

    /// Gives back this execution's place in the live gauge.
    fn release(&mut self) {
        if let Some(old) = self.counted.take() {
            self.metrics
                .live
                .get_or_create(&FlowStatus {
                    flow: self.flow.clone(),
                    status: old.as_str().to_string(),
                })
                .dec();
        }
    }
}

impl Drop for ExecutionMetrics {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests;
