//! Traces over OTLP: a real OTLP/HTTP receiver started here on 127.0.0.1
//! (decoding the protobuf export requests) gets each execution's span with
//! its attributes, as a child of the launch's `traceparent`; a command flow
//! sees `TRACEPARENT`; an endpoint that is down changes nothing for the
//! executions.

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const FLOWS: &str = r#"
[flows.env]
command = ["sh", "-c", "read -r x; echo \"traceparent=$TRACEPARENT\""]

[flows.resuming]
command = ["sh", "-c", "read -r x; echo \"traceparent=$TRACEPARENT\"; if [ $KODO_ATTEMPT = 1 ]; then exec sleep 20; fi"]
recover = "resume"
"#;

const PARENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT_SPAN: &str = "b7ad6b7169203331";

/// An OTLP/HTTP receiver: every span it was sent.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let kept = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| async move {
            let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                return StatusCode::BAD_REQUEST;
            };
            let mut kept = kept.lock().unwrap();
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    kept.extend(scope.spans);
                }
            }
            StatusCode::OK
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Any::StringValue(s)) => s.clone(),
                Some(Any::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// The first span `pick` accepts, once the receiver has it.
async fn span_where(spans: &Arc<Mutex<Vec<Span>>>, pick: impl Fn(&Span) -> bool) -> Span {
    let every = Duration::from_millis(50);
    until("no such span received", DEADLINE, every, async || {
        spans.lock().unwrap().iter().find(|s| pick(s)).cloned()
    })
    .await
}

/// `runtime run` exporting to `endpoint`, its batches every `delay_ms`.
async fn start_traced(
    cfg: &std::path::Path,
    dir: &std::path::Path,
    endpoint: &str,
    delay_ms: u32,
) -> (tokio::process::Child, String) {
    let (node, base, _) = start_traced_logged(cfg, dir, endpoint, delay_ms).await;
    (node, base)
}

/// [`start_traced`], with the node's stderr.
async fn start_traced_logged(
    cfg: &std::path::Path,
    dir: &std::path::Path,
    endpoint: &str,
    delay_ms: u32,
) -> (tokio::process::Child, String, Log) {
    let mut command = run(cfg, dir);
    command
        .env("KODO_TELEMETRY_OTLP_ENDPOINT", endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", delay_ms.to_string());
    start_logged(command).await
}

/// Launches `flow` with the W3C `traceparent` of [`PARENT_TRACE`], [`PARENT_SPAN`].
async fn launch_under_parent(base: &str, flow: &str) -> String {
    let resp = reqwest::Client::new()
        .post(format!("{base}/flows/{flow}/executions"))
        .header("traceparent", format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    body["fid"].as_str().unwrap().to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_span_joins_the_launchs_trace_and_its_flow_sees_traceparent() {
    let (endpoint, spans) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), FLOWS);
    let (mut node, base) = start_traced(&cfg, dir.path(), &endpoint, 100).await;
    let fid = launch_under_parent(&base, "env").await;
    stream_until(&base, &fid, "data: \"finished\"").await;

    let execution = span_where(&spans, |s| {
        s.name == "execution" && attributes(s).get("fid") == Some(&fid)
    })
    .await;
    assert_eq!(hex(&execution.trace_id), PARENT_TRACE);
    assert_eq!(hex(&execution.parent_span_id), PARENT_SPAN);
    let attrs = attributes(&execution);
    for (key, value) in [
        ("flow", "env"),
        ("owner", "local"),
        ("attempt", "1"),
        ("status", "finished"),
    ] {
        assert_eq!(attrs.get(key).map(String::as_str), Some(value), "{attrs:?}");
    }
    let launch = span_where(&spans, |s| {
        s.name == "launch" && s.parent_span_id == execution.span_id
    })
    .await;
    assert_eq!(launch.trace_id, execution.trace_id);
    // The Spoolers' commits link to the executions whose events they stored.
    span_where(&spans, |s| {
        s.name == "commit" && s.links.iter().any(|l| l.span_id == execution.span_id)
    })
    .await;

    // The flow's TRACEPARENT names the execution's span, and so does its
    // `meta` event (for spool processes and a resumed run).
    let stored = events(&base, &fid).await;
    let lines = stdout_lines(&stored);
    let expected = format!("00-{PARENT_TRACE}-{}-01", hex(&execution.span_id));
    assert_eq!(lines, [format!("traceparent={expected}")]);
    assert_eq!(stored[0]["payload"]["trace"], expected);
    assert_eq!(terminate(&mut node).await, 0);
}

/// The `trace` of `fid`'s `meta` event, once it is stored.
async fn meta_trace(base: &str, fid: &str) -> String {
    let stored = events_until(base, fid, DEADLINE, |e| !e.is_empty()).await;
    assert_eq!(stored[0]["kind"], "meta");
    stored[0]["payload"]["trace"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_execution_continues_its_trace() {
    let (endpoint, spans) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), FLOWS);
    let (mut node, base) = start_traced(&cfg, dir.path(), &endpoint, 100).await;
    let fid = launch_under_parent(&base, "resuming").await;
    stream_until(&base, &fid, "traceparent=").await;
    let first = meta_trace(&base, &fid).await;
    assert!(first.starts_with(&format!("00-{PARENT_TRACE}-")), "{first}");
    // Killed with its node: the first run's span is never exported.
    signal(node.id().unwrap(), "KILL").await;
    node.wait().await.unwrap();

    let (mut node, base) = start_traced(&cfg, dir.path(), &endpoint, 100).await;
    stream_until(&base, &fid, "data: \"finished\"").await;
    let resumed = span_where(&spans, |s| {
        s.name == "execution"
            && attributes(s).get("fid") == Some(&fid)
            && attributes(s).get("attempt").map(String::as_str) == Some("2")
    })
    .await;
    // A child of the first run's span, in the launch's trace.
    assert_eq!(hex(&resumed.trace_id), PARENT_TRACE);
    assert_eq!(
        first,
        format!("00-{PARENT_TRACE}-{}-01", hex(&resumed.parent_span_id))
    );
    let lines = stdout_lines(&events(&base, &fid).await);
    let second = format!("traceparent=00-{PARENT_TRACE}-{}-01", hex(&resumed.span_id));
    assert_eq!(lines, [format!("traceparent={first}"), second]);
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_process_links_its_commits_to_the_executions_spans() {
    let (endpoint, spans) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = ScriptServer::redis(dir.path());
    let cfg = write_config(
        dir.path(),
        &format!(
            "{FLOWS}\n[transport]\nkind = \"redis\"\nurl = \"{}\"\nblock = 0.1\n\
             [spooler]\nenabled = false\n",
            redis.url
        ),
    );
    let (mut node, base) = start_traced(&cfg, dir.path(), &endpoint, 100).await;
    let mut command = spool(&cfg, dir.path(), "s");
    command
        .env("KODO_TELEMETRY_OTLP_ENDPOINT", &endpoint)
        .env("KODO_TELEMETRY_SERVICE_NAME", "kodo-spool")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let mut spooler = start_spooler(command).await;
    let fid = launch_under_parent(&base, "env").await;
    stream_until(&base, &fid, "data: \"finished\"").await;
    let execution = span_where(&spans, |s| {
        s.name == "execution" && attributes(s).get("fid") == Some(&fid)
    })
    .await;
    // Only the spool process stores events here: its commits link to the
    // execution, learned from the `meta` event.
    span_where(&spans, |s| {
        s.name == "commit" && s.links.iter().any(|l| l.span_id == execution.span_id)
    })
    .await;
    assert_eq!(terminate(&mut spooler).await, 0);
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_endpoint_that_is_down_changes_nothing_for_executions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), FLOWS);
    let down = format!("http://127.0.0.1:{}", free_port());
    let (mut node, base, log) = start_traced_logged(&cfg, dir.path(), &down, 50).await;
    let mut fids = Vec::new();
    for _ in 0..20 {
        fids.push(launch(&base, "env").await);
    }
    for fid in &fids {
        stream_until(&base, fid, "data: \"finished\"").await;
        let lines = stdout_lines(&events(&base, fid).await);
        // Traces on, so TRACEPARENT names a new trace of the execution's own.
        assert!(lines[0].starts_with("traceparent=00-"), "{lines:?}");
    }
    let start = Instant::now();
    assert_eq!(terminate(&mut node).await, 0);
    assert!(start.elapsed() < DEADLINE);
    // The spans were dropped, with a warning.
    let log = log.complete().await;
    assert!(
        log.contains("WARN") && log.contains("telemetry data will be lost"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_attempt_joins_the_trace_through_its_workflow() {
    let temporal = std::env::var("KODO_TEST_TEMPORAL_ADDRESS")
        .expect("scripts/test starts Temporal; or set KODO_TEST_TEMPORAL_ADDRESS=HOST:PORT");
    let (endpoint, spans) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let queue = format!("traces-{}-{}", std::process::id(), free_port());
    let cfg = write_config(
        dir.path(),
        &format!(
            "[execution]\nmode = \"temporal\"\n[temporal]\naddress = \"{temporal}\"\n\
             task_queue = \"{queue}\"\n{FLOWS}"
        ),
    );
    let (mut node, base) = start_traced(&cfg, dir.path(), &endpoint, 100).await;
    let fid = launch_under_parent(&base, "env").await;
    stream_until(&base, &fid, "data: \"finished\"").await;
    let of_fid = |s: &Span| s.name == "execution" && attributes(s).get("fid") == Some(&fid);
    // The launching node's span, child of the header; the attempt's, its child.
    let launched = span_where(&spans, |s| {
        of_fid(s) && hex(&s.parent_span_id) == PARENT_SPAN
    })
    .await;
    let attempt = span_where(&spans, |s| {
        of_fid(s) && s.parent_span_id == launched.span_id
    })
    .await;
    assert_eq!(hex(&attempt.trace_id), PARENT_TRACE);
    let lines = stdout_lines(&events(&base, &fid).await);
    let expected = format!("traceparent=00-{PARENT_TRACE}-{}-01", hex(&attempt.span_id));
    assert_eq!(lines, [expected]);
    assert_eq!(terminate(&mut node).await, 0);
}
