//! Every route of the HTTP API, over real HTTP on 127.0.0.1, with each error code.

use kodo_actors::{Ctx, FlowDef};
use kodo_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ANN: &str = "token-of-ann";
const BOB: &str = "token-of-bob";
const ROOT: &str = "token-of-root";

const AUTH: &str = r#"
[[auth.tokens]]
token = "token-of-ann"
user = "ann"
[[auth.tokens]]
token = "token-of-bob"
user = "bob"
[[auth.tokens]]
token = "token-of-root"
user = "root"
admin = true
[flows.echo]
command = ["sh", "-c", "read -r x; echo \"$x\"; echo '{\"kind\":\"result\",\"payload\":7}' >&3"]
description = "echoes its inputs"
"#;

fn rust_flows() -> Vec<FlowDef> {
    vec![
        FlowDef::rust("count", |ctx: Ctx, inputs: Value| async move {
            for i in 0..inputs["n"].as_u64().unwrap_or(3) {
                ctx.debug(&format!("step {i}")).await?;
            }
            Ok(json!("done"))
        }),
        FlowDef::rust("asks", |ctx: Ctx, _| async move {
            let answer = ctx.lock("approve", json!({"q": 1}), None).await?;
            ctx.result(&answer).await?;
            Ok(answer)
        }),
    ]
}

async fn start() -> TestApi {
    TestApi::start(AUTH, rust_flows()).await
}

async fn call(
    api: &TestApi,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = api.req(method, path, Some(token));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("request");
    let status = resp.status();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

async fn launch(api: &TestApi, flow: &str, token: &str, inputs: Value) -> String {
    let (status, body) = call(
        api,
        Method::POST,
        &format!("/flows/{flow}/executions"),
        token,
        Some(json!({"inputs": inputs})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["fid"].as_str().expect("fid").to_string()
}

/// Follows the execution's stream to its end and returns its events.
async fn follow(api: &TestApi, fid: &str, token: &str) -> Vec<Sse> {
    let resp = api
        .req(
            Method::GET,
            &format!("/executions/{fid}/stream"),
            Some(token),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    SseReader::new(resp).until(|_| false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_flows() {
    let api = start().await;
    let resp = api.req(Method::GET, "/health", None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let health: Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store"]["ok"], true);
    assert_eq!(health["transport"]["kind"], "local");
    for part in ["store", "transport"] {
        assert!(health[part]["latency_ms"].as_f64().is_some(), "{health}");
    }
    assert_eq!(probe(&api, "live").await, (StatusCode::OK, json!([])));
    assert_eq!(probe(&api, "ready").await, (StatusCode::OK, json!([])));
    // One check of the dependencies answers every probe for a second, so
    // probes in a loop cannot load the store: of three answers within that
    // second, two in a row report the same check (a new one measures anew).
    let start = std::time::Instant::now();
    let mut latencies = Vec::new();
    for _ in 0..3 {
        let resp = api.req(Method::GET, "/health", None).send().await.unwrap();
        let health: Value = resp.json().await.unwrap();
        latencies.push(health["store"]["latency_ms"].as_f64().unwrap());
    }
    if start.elapsed() < std::time::Duration::from_secs(1) {
        assert!(
            latencies[0] == latencies[1] || latencies[1] == latencies[2],
            "{latencies:?}"
        );
    }
    let (status, flows) = call(&api, Method::GET, "/flows", ANN, None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["asks", "count", "echo"]);
    assert_eq!(flows["flows"][2]["kind"], "command");
    assert_eq!(flows["flows"][2]["description"], "echoes its inputs");
    let (status, body) = call(&api, Method::GET, "/nowhere", ANN, None).await;
    assert_eq!(
        (status, body["error"].as_str().is_some()),
        (StatusCode::NOT_FOUND, true)
    );
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_read_and_list_with_every_error() {
    let api = start().await;
    let fid = launch(&api, "echo", ANN, json!({"hello": "world"})).await;
    let events = follow(&api, &fid, ANN).await;
    assert_eq!(events.last().unwrap().data, "\"finished\"");
    let (status, row) = call(&api, Method::GET, &format!("/executions/{fid}"), ANN, None).await;
    assert_eq!(status, StatusCode::OK);
    for key in [
        "fid", "flow", "status", "owner", "created", "updated", "events",
    ] {
        assert!(row.get(key).is_some(), "missing {key}: {row}");
    }
    assert_eq!(
        (row["status"].as_str(), row["owner"].as_str()),
        (Some("finished"), Some("ann"))
    );
    assert_eq!(row["events"].as_u64().unwrap() as usize, events.len());

    // events: paging, kinds, payloads as JSON
    let (_, all) = call(
        &api,
        Method::GET,
        &format!("/executions/{fid}/events"),
        ANN,
        None,
    )
    .await;
    let all = all["events"].as_array().unwrap().clone();
    assert_eq!(all.len(), events.len());
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e["seq"] == json!(i + 1))
    );
    assert_eq!(all[0]["kind"], "meta");
    let (_, page) = call(
        &api,
        Method::GET,
        &format!("/executions/{fid}/events?after=2&limit=2"),
        ANN,
        None,
    )
    .await;
    let seqs: Vec<_> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [3, 4]);
    let (_, out) = call(
        &api,
        Method::GET,
        &format!("/executions/{fid}/events?kinds=stdout,final"),
        ANN,
        None,
    )
    .await;
    let out = out["events"].as_array().unwrap();
    assert_eq!(out[0]["payload"], json!(r#"{"hello":"world"}"#));
    assert_eq!(out[1]["payload"], json!(7));

    for (path, code) in [("/flows/nope/executions", StatusCode::NOT_FOUND)] {
        let (status, body) = call(&api, Method::POST, path, ANN, Some(json!({}))).await;
        assert_eq!(status, code, "{path}: {body}");
    }
    let bad_bodies: [(&str, StatusCode); 4] = [
        ("{not json", StatusCode::BAD_REQUEST),
        (r#"{"inputs": 1, "extra": true}"#, StatusCode::BAD_REQUEST),
        (r#"[1,2]"#, StatusCode::BAD_REQUEST),
        (&"x".repeat(10_000), StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (body, code) in bad_bodies {
        let resp = api
            .req(Method::POST, "/flows/count/executions", Some(ANN))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), code, "{body:.40}");
        let err: Value = resp.json().await.expect("a JSON error body");
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{err}"
        );
    }
    // An empty body means no inputs.
    let resp = api
        .req(Method::POST, "/flows/count/executions", Some(ANN))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    let get_errors = [
        ("/executions/not-a-fid", StatusCode::NOT_FOUND),
        (
            "/executions/01990000-0000-7000-8000-000000000000",
            StatusCode::NOT_FOUND,
        ),
        (
            "/executions/01990000-0000-7000-8000-000000000000/events",
            StatusCode::NOT_FOUND,
        ),
        (
            "/executions/01990000-0000-7000-8000-000000000000/stream",
            StatusCode::NOT_FOUND,
        ),
        ("/executions?status=sleeping", StatusCode::BAD_REQUEST),
        ("/executions?limit=0", StatusCode::BAD_REQUEST),
        ("/executions?limit=abc", StatusCode::BAD_REQUEST),
        ("/executions?cursor=zzz", StatusCode::BAD_REQUEST),
        ("/executions?color=red", StatusCode::BAD_REQUEST),
    ];
    for (path, code) in get_errors {
        let (status, body) = call(&api, Method::GET, path, ANN, None).await;
        assert_eq!(status, code, "{path}: {body}");
        assert!(body["error"].as_str().is_some(), "{path}: {body}");
    }
    let (status, _) = call(
        &api,
        Method::GET,
        &format!("/executions/{fid}/events?kinds=nope"),
        ANN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(
        &api,
        Method::GET,
        &format!("/executions/{fid}/events?limit=0"),
        ANN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let resp = api
        .req(Method::GET, &format!("/executions/{fid}/stream"), Some(ANN))
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_filters_and_pages_with_a_cursor() {
    let api = start().await;
    let mut mine = Vec::new();
    for n in 0..5 {
        mine.push(launch(&api, "count", ANN, json!({"n": n})).await);
    }
    let bobs = launch(&api, "echo", BOB, json!({})).await;
    for fid in mine.iter().chain([&bobs]) {
        follow(&api, fid, ROOT).await;
    }
    let (_, page1) = call(&api, Method::GET, "/executions?limit=3", ANN, None).await;
    let ids1: Vec<_> = page1["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["fid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids1,
        [mine[4].clone(), mine[3].clone(), mine[2].clone()],
        "newest first, only ann's"
    );
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = call(
        &api,
        Method::GET,
        &format!("/executions?limit=3&cursor={cursor}"),
        ANN,
        None,
    )
    .await;
    let ids2: Vec<_> = page2["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["fid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids2, [mine[1].clone(), mine[0].clone()]);
    assert!(page2["next_cursor"].is_null());
    let (_, by_flow) = call(&api, Method::GET, "/executions?flow=echo", ROOT, None).await;
    assert_eq!(by_flow["executions"].as_array().unwrap().len(), 1);
    let (_, by_status) = call(&api, Method::GET, "/executions?status=finished", ROOT, None).await;
    assert_eq!(by_status["executions"].as_array().unwrap().len(), 6);
    let (_, by_owner) = call(&api, Method::GET, "/executions?owner=bob", ROOT, None).await;
    assert_eq!(by_owner["executions"][0]["fid"], json!(bobs));
    let (_, ignored) = call(&api, Method::GET, "/executions?owner=bob", ANN, None).await;
    assert!(
        ignored["executions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["owner"] == "ann")
    );
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_isolates_users_and_admins_see_all() {
    let api = start().await;
    let fid = launch(&api, "asks", ANN, json!({})).await;
    for token in [None, Some("wrong-token")] {
        for (method, path) in [
            (Method::GET, "/flows".to_string()),
            (Method::GET, format!("/executions/{fid}")),
            (Method::POST, "/flows/count/executions".to_string()),
        ] {
            let resp = api.req(method, &path, token).send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNAUTHORIZED,
                "{path} with {token:?}"
            );
            let body: Value = resp.json().await.unwrap();
            assert!(body["error"].as_str().is_some());
        }
    }
    for (method, path) in [
        (Method::GET, format!("/executions/{fid}")),
        (Method::GET, format!("/executions/{fid}/events")),
        (Method::GET, format!("/executions/{fid}/stream")),
        (Method::POST, format!("/executions/{fid}/kill")),
        (Method::POST, format!("/executions/{fid}/locks/any")),
    ] {
        let (status, _) = call(&api, method, &path, BOB, Some(json!({"answer": 1}))).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "bob must not see ann's {path}"
        );
    }
    // The scheme is case-insensitive (RFC 7235); other schemes are refused.
    for (header, code) in [
        (format!("bearer {ANN}"), StatusCode::OK),
        (format!("Basic {ANN}"), StatusCode::UNAUTHORIZED),
        (ANN.to_string(), StatusCode::UNAUTHORIZED),
    ] {
        let resp = api
            .req(Method::GET, "/flows", None)
            .header("authorization", header.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), code, "{header}");
    }
    let (_, bobs) = call(&api, Method::GET, "/executions", BOB, None).await;
    assert!(bobs["executions"].as_array().unwrap().is_empty());
    // The nodes are an admin's to see; without a cluster, this node alone.
    let (status, _) = call(&api, Method::GET, "/cluster", BOB, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, view) = call(&api, Method::GET, "/cluster", ROOT, None).await;
    assert_eq!(status, StatusCode::OK);
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{view}");
    assert_eq!(nodes[0]["name"], view["node"]);
    assert_eq!(nodes[0]["live"], true);
    assert_eq!(nodes[0]["running"], 1, "ann's execution waits on its lock");
    let (status, row) = call(&api, Method::GET, &format!("/executions/{fid}"), ROOT, None).await;
    assert_eq!(
        (status, row["owner"].as_str()),
        (StatusCode::OK, Some("ann"))
    );
    let (status, _) = call(
        &api,
        Method::POST,
        &format!("/executions/{fid}/kill"),
        ROOT,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let events = follow(&api, &fid, ANN).await;
    assert_eq!(events.last().unwrap().data, "\"killed\"");
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_follows_a_lock_to_the_end_and_resumes() {
    let api = start().await;
    let fid = launch(&api, "asks", ANN, json!({})).await;
    let live = api
        .req(Method::GET, &format!("/executions/{fid}/stream"), Some(ANN))
        .send()
        .await
        .unwrap();
    assert_eq!(live.headers()["content-type"], "text/event-stream");
    let mut live = SseReader::new(live);
    let so_far = live
        .until(|evs| evs.iter().any(|e| e.event == "lock"))
        .await;
    let lock: Value =
        serde_json::from_str(&so_far.iter().find(|e| e.event == "lock").unwrap().data).unwrap();
    let lid = lock["lid"].as_str().unwrap();
    let (status, row) = call(&api, Method::GET, &format!("/executions/{fid}"), ANN, None).await;
    assert_eq!(
        (status, row["status"].as_str()),
        (StatusCode::OK, Some("awaiting"))
    );

    let (status, body) = call(
        &api,
        Method::POST,
        &format!("/executions/{fid}/locks/not-{lid}"),
        ANN,
        Some(json!({"answer": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = call(
        &api,
        Method::POST,
        &format!("/executions/{fid}/locks/{lid}"),
        ANN,
        Some(json!({"wrong": 1})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let resp = api
        .req(
            Method::POST,
            &format!("/executions/{fid}/locks/{lid}"),
            Some(ANN),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "an answer is required"
    );
    let (status, body) = call(
        &api,
        Method::POST,
        &format!("/executions/{fid}/locks/{lid}"),
        ANN,
        Some(json!({"answer": {"ok": true}})),
    )
    .await;
    assert_eq!(
        (status, body["answered"].as_bool()),
        (StatusCode::OK, Some(true))
    );

    let all = live.until(|_| false).await;
    let ids: Vec<u64> = all.iter().filter_map(|e| e.id).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as u64).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    let kinds: Vec<&str> = all.iter().map(|e| e.event.as_str()).collect();
    assert!(
        kinds.ends_with(&["lease", "status", "result", "final", "status"]),
        "{kinds:?}"
    );
    assert_eq!(all.last().unwrap().data, "\"finished\"");

    // Resume after seq 3 with Last-Event-ID, and after the end: nothing more.
    let resumed = api
        .req(Method::GET, &format!("/executions/{fid}/stream"), Some(ANN))
        .header("last-event-id", "3")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let resumed = parse_sse(&resumed);
    assert_eq!(resumed.first().and_then(|e| e.id), Some(4));
    assert_eq!(resumed.len(), all.len() - 3);
    let past = api
        .req(
            Method::GET,
            &format!("/executions/{fid}/stream?after={}", all.len()),
            Some(ANN),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(parse_sse(&past).is_empty());

    let (status, body) = call(
        &api,
        Method::POST,
        &format!("/executions/{fid}/locks/{lid}"),
        ANN,
        Some(json!({"answer": 2})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = call(
        &api,
        Method::POST,
        &format!("/executions/{fid}/kill"),
        ANN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = call(
        &api,
        Method::POST,
        "/executions/01990000-0000-7000-8000-000000000000/kill",
        ANN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_degrades_while_store_writes_fail_and_recovers() {
    let api = TestApi::start(
        &format!("{AUTH}\n[limits]\nlaunch_wait = 0.5\n"),
        rust_flows(),
    )
    .await;
    api.faults
        .fail_writes
        .store(1_000_000, std::sync::atomic::Ordering::SeqCst);
    // The launch is accepted, but its first events cannot be stored: 202 after launch_wait.
    let resp = api
        .req(Method::POST, "/flows/count/executions", Some(ANN))
        .json(&json!({"inputs": {"n": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["stored"], false);
    let fid = body["fid"].as_str().unwrap().to_string();
    // Not stored yet, but known: its owner sees it starting, others do not see it.
    let (status, row) = call(&api, Method::GET, &format!("/executions/{fid}"), ANN, None).await;
    assert_eq!(
        (status, row["status"].as_str(), row["events"].as_u64()),
        (StatusCode::OK, Some("starting"), Some(0))
    );
    let (status, _) = call(&api, Method::GET, &format!("/executions/{fid}"), BOB, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let stream = api
        .req(Method::GET, &format!("/executions/{fid}/stream"), Some(ANN))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let resp = api.req(Method::GET, "/health", None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = resp.json().await.unwrap();
    assert_eq!(
        (health["status"].as_str(), health["store"]["ok"].as_bool()),
        (Some("degraded"), Some(false))
    );
    assert!(
        health["store"]["error"]
            .as_str()
            .unwrap()
            .contains("injected fault"),
        "{health}"
    );
    // Not ready for launches, yet live: a store outage is no reason to restart.
    let (code, reasons) = probe(&api, "ready").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reasons[0].as_str().unwrap().contains("store: "),
        "{reasons}"
    );
    assert_eq!(probe(&api, "live").await, (StatusCode::OK, json!([])));
    // The store comes back: everything accepted meanwhile is stored, health is ok again.
    api.faults
        .fail_writes
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let events = SseReader::new(stream).until(|_| false).await;
    assert_eq!(events.last().unwrap().data, "\"finished\"");
    assert_eq!(events.iter().filter(|e| e.event == "debug").count(), 2);
    let resp = api.req(Method::GET, "/health", None).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(probe(&api, "ready").await, (StatusCode::OK, json!([])));
    api.running.shutdown("test over").await;
}

/// `GET /health/KIND` (no token): the status code and the reasons.
async fn probe(api: &TestApi, kind: &str) -> (StatusCode, Value) {
    let resp = api
        .req(Method::GET, &format!("/health/{kind}"), None)
        .send()
        .await
        .unwrap();
    let code = resp.status();
    let body: Value = resp.json().await.unwrap();
    (code, body["reasons"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_answers_503() {
    let config = format!("{AUTH}\n[limits]\nmax_running = 1\n");
    let api = TestApi::start(&config, rust_flows()).await;
    let first = launch(&api, "asks", ANN, json!({})).await;
    let (status, body) = call(
        &api,
        Method::POST,
        "/flows/count/executions",
        ANN,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    let (code, reasons) = probe(&api, "ready").await;
    assert_eq!(
        (code, reasons),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!(["at limits.max_running (1)"])
        )
    );
    let (status, _) = call(
        &api,
        Method::POST,
        &format!("/executions/{first}/kill"),
        ANN,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    follow(&api, &first, ANN).await;
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_spoolers_gave_up_is_not_live() {
    let api = start().await;
    assert_eq!(probe(&api, "live").await, (StatusCode::OK, json!([])));
    // Every commit panics: the supervisor restarts the Spooler, then gives up.
    api.faults
        .panic_before_commit
        .store(1000, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = call(
        &api,
        Method::POST,
        "/flows/count/executions",
        ANN,
        Some(json!({})),
    )
    .await;
    assert!(status.is_success(), "{body}");
    let start = std::time::Instant::now();
    let reasons = loop {
        let (code, reasons) = probe(&api, "live").await;
        if code == StatusCode::SERVICE_UNAVAILABLE {
            break reasons;
        }
        assert!(start.elapsed() < DEADLINE, "still live: {reasons}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(
        reasons[0].as_str().unwrap().contains("crashed more than"),
        "{reasons}"
    );
    let (code, reasons) = probe(&api, "ready").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{reasons}");
    api.faults
        .panic_before_commit
        .store(0, std::sync::atomic::Ordering::SeqCst);
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flows_form_is_shown_and_checks_launches_before_anything_is_stored() {
    let form = kodo_actors::Form::new(vec![
        json!({"type": "text", "name": "name", "label": "Name", "required": true}),
        json!({"type": "number", "name": "times", "min_value": 1, "max_value": 3}),
        json!({"type": "submit", "text": "Greet"}),
    ])
    .unwrap();
    let greet = FlowDef::rust(
        "greet",
        |_ctx: Ctx, inputs: Value| async move { Ok(inputs) },
    )
    .admit_with(std::sync::Arc::new(form));
    let api = TestApi::start(AUTH, vec![greet]).await;
    let (status, flow) = call(&api, Method::GET, "/flows/greet", ANN, None).await;
    assert_eq!(status, StatusCode::OK, "{flow}");
    assert_eq!(flow["form"]["elements"][0]["name"], "name");
    let (status, flow) = call(&api, Method::GET, "/flows/nope", ANN, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{flow}");
    // Refused: 400 with the errors by field, and nothing stored.
    let (status, body) = call(
        &api,
        Method::POST,
        "/flows/greet/executions",
        ANN,
        Some(json!({"inputs": {"times": 7}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["errors"],
        json!({"name": ["required"], "times": ["at most 3"]})
    );
    let (_, listed) = call(&api, Method::GET, "/executions", ANN, None).await;
    assert_eq!(listed["executions"], json!([]), "{listed}");
    // Admitted: it runs with the form's fields only.
    let fid = launch(
        &api,
        "greet",
        ANN,
        json!({"name": "ann", "times": "2", "x": 1}),
    )
    .await;
    let events = follow(&api, &fid, ANN).await;
    let inputs = events.iter().find(|e| e.event == "inputs").unwrap();
    assert_eq!(inputs.data, r#"{"name":"ann","times":2.0}"#);
    api.running.shutdown("test over").await;
}

/// Without tokens every caller is the admin `local`, so a page of another
/// origin in the user's browser must not be able to change anything: a
/// state-changing request whose `Origin` is not this host is refused.
#[tokio::test]
async fn without_tokens_a_request_from_another_origin_is_refused() {
    let api = TestApi::start("", rust_flows()).await;
    let from = |origin: Option<&str>| {
        let mut request = api
            .req(Method::POST, "/flows/count/executions", None)
            .json(&json!({}));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    let refused = from(Some("http://evil.example")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("cross-site"),
        "{body}"
    );
    let page = format!("http://{}", api.base.trim_start_matches("http://"));
    assert_eq!(
        from(Some(&page)).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(from(None).await.unwrap().status(), StatusCode::CREATED);
    // The same for the MIP-003 routes, and with a credential a browser
    // sends on its own (Basic): only a bearer token is exempt.
    let start_job = api
        .req(Method::POST, "/mip003/count/start_job", None)
        .header("origin", "http://evil.example")
        .header("authorization", "Basic dXNlcjpwYXNz")
        .json(&json!({"identifier_from_purchaser": "p"}))
        .send()
        .await
        .unwrap();
    assert_eq!(start_job.status(), StatusCode::FORBIDDEN);
    let listed = api.get("/executions").await;
    assert_eq!(listed["executions"].as_array().unwrap().len(), 2);
    // A page whose host name was rebound to 127.0.0.1 reads nothing (its
    // Host is its own name); health probes still answer.
    let host = api
        .base
        .trim_start_matches("http://")
        .replace("127.0.0.1", "evil.example");
    let read = api
        .req(Method::GET, "/executions", None)
        .header("host", &host)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::FORBIDDEN);
    let probe = api
        .req(Method::GET, "/health/live", None)
        .header("host", &host)
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), StatusCode::OK);
    let local = api
        .base
        .trim_start_matches("http://")
        .replace("127.0.0.1", "localhost");
    let read = api
        .req(Method::GET, "/executions", None)
        .header("host", &local)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
}

/// `GET /executions/{fid}/events.jsonl`: every event, one JSON object per
/// line, as a download; only for those who may see the execution.
#[tokio::test]
async fn events_download_as_json_lines() {
    let api = start().await;
    let fid = launch(&api, "count", ANN, json!({"n": 3})).await;
    let events = follow(&api, &fid, ANN).await;
    let response = api
        .req(
            Method::GET,
            &format!("/executions/{fid}/events.jsonl"),
            Some(ANN),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let disposition = response.headers()["content-disposition"].to_str().unwrap();
    assert_eq!(disposition, format!("attachment; filename=\"{fid}.jsonl\""));
    let text = response.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), events.len());
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=lines.len() as u64).collect::<Vec<_>>());
    assert_eq!(lines.last().unwrap()["payload"], "finished");
    let other = api
        .req(
            Method::GET,
            &format!("/executions/{fid}/events.jsonl"),
            Some(BOB),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
}
