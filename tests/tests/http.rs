//! The HTTP layer under bad input and on reused connections: every error
//! answer is JSON, bodies and parameters are checked before anything runs,
//! and live streams stay live on a keep-alive connection.

use kodo_actors::{Ctx, FlowDef};
use kodo_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn flows() -> Vec<FlowDef> {
    vec![
        FlowDef::rust("echo", |_ctx: Ctx, inputs: Value| async move { Ok(inputs) }),
        FlowDef::rust("asks", |ctx: Ctx, _| async move {
            Ok(ctx.lock("approve", json!({}), None).await?)
        }),
    ]
}

async fn start() -> TestApi {
    TestApi::start("", flows()).await
}

/// Sends a request; its status and JSON body (which every answer must have).
async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let resp = request.send().await.expect("request");
    let status = resp.status();
    let kind = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = resp
        .json()
        .await
        .unwrap_or_else(|e| panic!("{status}: not JSON ({kind:?}): {e}"));
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()) || status.is_success(),
        "{status}: {body}"
    );
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_and_answer_bodies_must_be_objects() {
    let api = start().await;
    for body in [
        r#"{"inputs": "abc"}"#,
        r#"{"inputs": 42}"#,
        r#"{"inputs": [1, 2]}"#,
        r#"[{"a": 1}]"#,
        r#""abc""#,
        "42",
    ] {
        let request = api
            .req(Method::POST, "/flows/echo/executions", None)
            .header("content-type", "application/json")
            .body(body);
        let (status, err) = send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains("object"),
            "{body}: {err}"
        );
    }
    let fid = api.launch("asks").await;
    let (_, lid) = wait_lock(api.running.node(), &fid).await;
    let path = format!("/executions/{fid}/locks/{lid}");
    let request = api.req(Method::POST, &path, None).body("[1]");
    assert_eq!(
        send(request).await.0,
        StatusCode::BAD_REQUEST,
        "not read by position"
    );
    let request = api
        .req(Method::POST, &path, None)
        .json(&json!({"answer": 1}));
    assert_eq!(send(request).await.0, StatusCode::OK);
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_beyond_i64_is_refused_not_wrapped() {
    let api = start().await;
    let fid = api.launch("echo").await;
    assert_eq!(
        wait_final(api.running.node(), &fid).await,
        kodo_core::Status::Finished
    );
    let events = |after: &str| {
        api.req(
            Method::GET,
            &format!("/executions/{fid}/events?after={after}"),
            None,
        )
    };
    let (status, body) = send(events(&u64::MAX.to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = send(events(&i64::MAX.to_string())).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"events": []})));
    for (name, value) in [
        ("?after=", u64::MAX.to_string()),
        ("last-event-id", u64::MAX.to_string()),
    ] {
        let mut request = api.req(Method::GET, &format!("/executions/{fid}/stream"), None);
        request = if name == "last-event-id" {
            request.header(name, value)
        } else {
            api.req(
                Method::GET,
                &format!("/executions/{fid}/stream{name}{value}"),
                None,
            )
        };
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {body}");
    }
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_of_the_http_layer_are_json_too() {
    let api = start().await;
    let (status, body) = send(api.req(Method::DELETE, "/flows", None)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method not allowed"))
    );
    let (status, _) = send(api.req(Method::GET, "/executions/%FF%FE", None)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let mut many_headers = api.req(Method::GET, "/health", None);
    for i in 0..150 {
        many_headers = many_headers.header(format!("x-h{i}"), "1");
    }
    let (status, body) = send(many_headers).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Some("request header fields too large")
        )
    );
    // A request hyper cannot parse at all, on a raw socket.
    let addr = api.base.strip_prefix("http://").unwrap();
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, raw.read_to_string(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("content-type: application/json"),
        "{answer}"
    );
    assert!(answer.ends_with(r#"{"error":"bad request"}"#), "{answer}");
    api.running.shutdown("test over").await;
}

/// How long following an `echo` execution's stream to its end takes:
/// launched with `launcher`, followed with `follower`.
async fn stream_time(
    api: &TestApi,
    launcher: &reqwest::Client,
    follower: &reqwest::Client,
) -> Duration {
    let url = |path: &str| format!("{}{path}", api.base);
    let body: Value = launcher
        .post(url("/flows/echo/executions"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let fid = body["fid"].as_str().unwrap();
    let started = Instant::now();
    let resp = follower
        .get(url(&format!("/executions/{fid}/stream")))
        .send()
        .await
        .unwrap();
    let events = SseReader::new(resp).until(|_| false).await;
    assert_eq!(events.last().unwrap().data, "\"finished\"");
    started.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Live means live on a keep-alive connection too. With Nagle's algorithm
/// on, the stream's second write waited for the client's delayed ACK of the
/// first (40 ms) on a connection that had served a request before; a
/// connection's first packets are acknowledged at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_streams_as_fast_as_a_fresh_one() {
    let api = start().await;
    let launcher = reqwest::Client::new();
    let (mut on_reused, mut on_fresh) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let reused = reqwest::Client::new();
        reused
            .get(format!("{}/health", api.base))
            .send()
            .await
            .unwrap();
        on_reused.push(stream_time(&api, &launcher, &reused).await);
        on_fresh.push(stream_time(&api, &launcher, &reqwest::Client::new()).await);
    }
    let (reused, fresh) = (median(on_reused), median(on_fresh));
    // Measured here: about 1.5 ms either way with TCP_NODELAY; without it,
    // 42 ms on a reused connection.
    assert!(
        reused < fresh + Duration::from_millis(25),
        "a reused connection took {reused:?}, a fresh one {fresh:?}"
    );
    api.running.shutdown("test over").await;
}
