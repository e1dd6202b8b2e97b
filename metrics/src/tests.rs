use super::*;
use kodo_core::{Fid, json_text};

fn event(kind: Kind, payload: &str) -> Event {
    Event {
        fid: Fid::new(),
        seq: 1,
        ts: now_ts(),
        kind,
        payload: payload.to_string(),
        attempt: 0,
    }
}

fn status(s: Status) -> Event {
    event(Kind::Status, &json_text(s.as_str()))
}

/// The value of the sample line starting with `name` (labels included).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[test]
fn a_life_moves_through_the_live_gauge_and_ends_counted() {
    let m = Arc::new(Metrics::new());
    let mut e = m.execution("hello");
    e.published(&status(Status::Starting));
    let live = |s: &str| format!("kodo_executions_live{{flow=\"hello\",status=\"{s}\"}}");
    assert_eq!(sample(&m.encode(), &live("starting")), Some(1.0));
    e.published(&status(Status::Running));
    e.published(&event(Kind::Lock, r#"{"lid":"a"}"#));
    e.published(&status(Status::Awaiting));
    let text = m.encode();
    assert_eq!(sample(&text, &live("starting")), Some(0.0));
    assert_eq!(sample(&text, &live("running")), Some(0.0));
    assert_eq!(sample(&text, &live("awaiting")), Some(1.0));
    assert_eq!(
        sample(&text, "kodo_launch_to_running_seconds_count"),
        Some(1.0)
    );
    e.published(&event(
        Kind::Lease,
        r#"{"lid":"a","result":{"error":"no"}}"#,
    ));
    e.published(&event(Kind::Lease, r#"{"lid":"b","error":"expired"}"#));
    e.published(&status(Status::Finished));
    let text = m.encode();
    assert_eq!(sample(&text, &live("awaiting")), Some(0.0));
    let ended = "kodo_executions_ended_total{flow=\"hello\",status=\"finished\"}";
    assert_eq!(sample(&text, ended), Some(1.0));
    let launched = "kodo_executions_launched_total{flow=\"hello\"}";
    assert_eq!(sample(&text, launched), Some(1.0));
    for (event, n) in [("opened", 1.0), ("answered", 1.0), ("expired", 1.0)] {
        let name = format!("kodo_locks_total{{event=\"{event}\"}}");
        assert_eq!(sample(&text, &name), Some(n), "{event}");
    }
    drop(e);
    assert_eq!(sample(&m.encode(), &live("awaiting")), Some(0.0));
}

#[test]
fn a_tracer_gone_without_an_end_gives_its_place_back() {
    let m = Arc::new(Metrics::new());
    let mut e = m.execution("ticks");
    e.published(&status(Status::Running));
    let running = "kodo_executions_live{flow=\"ticks\",status=\"running\"}";
    assert_eq!(sample(&m.encode(), running), Some(1.0));
    drop(e);
    assert_eq!(sample(&m.encode(), running), Some(0.0));
    // Closed elsewhere (a node's restart): counted as ended, never as live.
    let mut closing = m.execution("ticks");
    closing.published(&status(Status::Error));
    let text = m.encode();
    assert_eq!(sample(&text, running), Some(0.0));
    let ended = "kodo_executions_ended_total{flow=\"ticks\",status=\"error\"}";
    assert_eq!(sample(&text, ended), Some(1.0));
}

#[test]
fn commits_count_events_batches_and_latencies() {
    let m = Metrics::new();
    let batch: Vec<Event> = (0..3).map(|_| event(Kind::Stdout, "\"x\"")).collect();
    m.committed(&batch, Duration::from_millis(2));
    m.committed(&batch[..1], Duration::from_millis(1));
    m.store_error();
    m.transport(4096, Some(7), 0);
    m.transport_error();
    let text = m.encode();
    assert_eq!(sample(&text, "kodo_events_stored_total"), Some(4.0));
    assert_eq!(sample(&text, "kodo_commit_batch_events_count"), Some(2.0));
    assert_eq!(sample(&text, "kodo_commit_batch_events_sum"), Some(4.0));
    assert_eq!(sample(&text, "kodo_commit_seconds_count"), Some(2.0));
    assert_eq!(
        sample(&text, "kodo_emit_to_commit_seconds_count"),
        Some(2.0)
    );
    assert_eq!(sample(&text, "kodo_store_errors_total"), Some(1.0));
    assert_eq!(
        sample(&text, "kodo_transport_in_flight_bytes"),
        Some(4096.0)
    );
    assert_eq!(sample(&text, "kodo_transport_backlog"), Some(7.0));
    assert_eq!(sample(&text, "kodo_transport_errors_total"), Some(1.0));
    assert!(text.ends_with("# EOF\n"), "{text}");
    // The transport's own failures add once each, across scrapes; an
    // unknown backlog keeps the last known value.
    m.transport(0, None, 3);
    m.transport(0, None, 3);
    m.transport(0, None, 5);
    let text = m.encode();
    assert_eq!(sample(&text, "kodo_transport_errors_total"), Some(6.0));
    assert_eq!(sample(&text, "kodo_transport_backlog"), Some(7.0));
}
