//! Masumi's agentic-service API (MIP-003) on kodo flows, over real HTTP on
//! 127.0.0.1: a job's whole walk, the refusals, open access, availability.
//! Input hashes are checked against canonical texts written out here by
//! hand (RFC 8785) and hashed by coreutils' `sha256sum`.

use kodo_actors::{Ctx, FlowDef, Form};
use kodo_tests::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const ANN: &str = "token-of-ann";
const BOB: &str = "token-of-bob";
const ROOT: &str = "token-of-root";

const CONFIG: &str = r#"
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
command = ["sh", "-c", "read -r x; echo '{\"kind\":\"result\",\"payload\":\"echoed\"}' >&3"]
[flows.echo.masumi]
access = "open"
owner = "buyer"
agent_identifier = "agent-1"
"#;

/// The form of `review`: what `start_job` is checked against.
fn form() -> Vec<Value> {
    vec![
        json!({"type": "markdown", "text": "Reviews a draft"}),
        json!({"type": "text", "name": "name", "label": "Name", "required": true}),
        json!({"type": "number", "name": "times", "min_value": 1, "max_value": 5}),
        json!({"type": "boolean", "name": "loud"}),
        json!({"type": "select", "name": "tone", "option": [{"name": "warm"}, {"name": "cool"}]}),
    ]
}

/// `review` waits for `gate`, asks a note (a lock with a form), then a
/// yes or no (a lock without one), and ends with a text; `gated` waits
/// for `gate`.
fn flows(gate: Arc<Notify>) -> Vec<FlowDef> {
    let review_gate = gate.clone();
    let review = FlowDef::rust("review", move |ctx: Ctx, inputs: Value| {
        let gate = review_gate.clone();
        async move {
            ctx.result(&inputs).await?;
            gate.notified().await;
            let review = json!({
                "form": [
                    {"type": "text", "name": "note", "required": true},
                    {"type": "boolean", "name": "ok"},
                ],
                "data": {"draft": 1},
            });
            let note = ctx.lock("review", review, None).await?;
            let ship = ctx
                .lock("approve", json!({"question": "Ship it?"}), None)
                .await?;
            Ok(json!(format!(
                "{} said {} (ok: {}), ship: {}",
                inputs["name"].as_str().unwrap_or_default(),
                note["note"].as_str().unwrap_or_default(),
                note["ok"],
                ship
            )))
        }
    })
    .admit_with(Arc::new(Form::new(form()).expect("a valid form")));
    let gated = FlowDef::rust("gated", move |_ctx: Ctx, _| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok(json!("done"))
        }
    });
    vec![review, gated]
}

/// A request with an optional token and raw JSON text (kept as written:
/// `1.0` and `2.50` must reach the server as they are).
async fn call(
    api: &TestApi,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut r = api.req(method, path, token);
    if let Some(text) = body {
        r = r
            .header("content-type", "application/json")
            .body(text.to_string());
    }
    let resp = r.send().await.expect("request");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `POST path` as Ann with JSON text `body`.
async fn ann_post(api: &TestApi, path: &str, body: &str) -> (StatusCode, Value) {
    call(api, Method::POST, path, Some(ANN), Some(body)).await
}

/// Starts a job of `gated` as Ann, and waits until it runs (at its gate).
async fn gated_job(api: &TestApi) -> String {
    let body = r#"{"identifier_from_purchaser": "p"}"#;
    let path = "/mip003/gated/start_job";
    let (code, started) = call(api, Method::POST, path, Some(ANN), Some(body)).await;
    assert_eq!(code, StatusCode::OK, "{started}");
    let job = started["job_id"].as_str().unwrap().to_string();
    status_until(api, "gated", &job, Some(ANN), |s| s["status"] == "running").await;
    job
}

/// SHA-256 (hex) of `text`, by `sha256sum`.
fn sha256sum(text: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The job's status, polled until `done` says so (10 s at most).
async fn status_until(
    api: &TestApi,
    flow: &str,
    job: &str,
    token: Option<&str>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let path = format!("/mip003/{flow}/status?job_id={job}");
        let (code, body) = call(api, Method::GET, &path, token, None).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        if done(&body) {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "status stayed {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Input data with floats, unicode and nested objects, as sent, and its
/// RFC 8785 form written out by hand.
const START_INPUT: &str = r#"{"name": "Zo\u00eb 😀", "times": 3, "tone": ["cool"], "loud": true,
    "ratio": 1.5e-7, "big": 1E21, "nested": {"b": [1.0, 2.50], "a": {"€": true, "\r": null}}}"#;
const START_CANONICAL: &str = "{\"big\":1e+21,\"loud\":true,\"name\":\"Zoë 😀\",\
     \"nested\":{\"a\":{\"\\r\":null,\"€\":true},\"b\":[1,2.5]},\"ratio\":1.5e-7,\
     \"times\":3,\"tone\":[\"cool\"]}";
const NOTE_INPUT: &str =
    r#"{"note": "naïve – fine ✓", "ok": true, "extra": {"z": 0.1, "a": [-0.0, 100, 1e-7]}}"#;
const NOTE_CANONICAL: &str =
    "{\"extra\":{\"a\":[0,100,1e-7],\"z\":0.1},\"note\":\"naïve – fine ✓\",\"ok\":true}";

#[tokio::test]
async fn a_job_walks_from_start_to_completed_and_is_an_ordinary_execution() {
    let gate = Arc::new(Notify::new());
    let api = TestApi::start(CONFIG, flows(gate.clone())).await;
    let purchaser = "purchaser-7f3a";
    // The flow's form as MIP-003 fields, and the node takes jobs.
    let (code, schema) = call(
        &api,
        Method::GET,
        "/mip003/review/input_schema",
        Some(ANN),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{schema}");
    let ids: Vec<&str> = schema["input_data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["text-1", "name", "times", "loud", "tone"]);
    assert_eq!(schema["input_data"][1]["type"], "string");
    assert!(
        schema["input_data"][1].get("validations").is_none(),
        "name is required"
    );
    let (code, available) = call(
        &api,
        Method::GET,
        "/mip003/review/availability",
        Some(ANN),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(available["status"], "available");
    assert_eq!(available["type"], "masumi-agent");

    // start_job: the hash is MIP-004's, the payment fields say it is off.
    let body =
        format!(r#"{{"identifier_from_purchaser": "{purchaser}", "input_data": {START_INPUT}}}"#);
    let (code, started) = ann_post(&api, "/mip003/review/start_job", &body).await;
    assert_eq!(code, StatusCode::OK, "{started}");
    assert_eq!(started["status"], "success");
    assert_eq!(
        started["input_hash"],
        sha256sum(&format!("{purchaser};{START_CANONICAL}"))
    );
    assert_eq!(started["identifierFromPurchaser"], purchaser);
    assert_eq!(started["blockchainIdentifier"], "payment-off");
    for time in [
        "payByTime",
        "submitResultTime",
        "unlockTime",
        "externalDisputeUnlockTime",
    ] {
        assert_eq!(started[time], 0, "{time}");
    }
    let job = started["job_id"].as_str().unwrap().to_string();

    // Running while the flow waits at its gate; its inputs are the form's.
    let running = status_until(&api, "review", &job, Some(ANN), |s| {
        s["status"] == "running"
    })
    .await;
    assert_eq!(running["job_id"], job.as_str());
    let events = api
        .get_with(
            &format!("/executions/{job}/events?kinds=inputs,result"),
            ANN,
        )
        .await;
    assert_eq!(
        events["events"][0]["payload"],
        json!({"name": "Zoë 😀", "times": 3, "loud": true, "tone": "cool"})
    );
    gate.notify_one();

    // Awaiting input: the lock's form, under the lock's id.
    let asked = status_until(&api, "review", &job, Some(ANN), |s| {
        s["status"] == "awaiting_input"
    })
    .await;
    assert_eq!(
        asked["input_schema"],
        json!({"input_data": [
            {"id": "note", "type": "string", "name": "note"},
            {"id": "ok", "type": "boolean", "name": "ok",
             "validations": [{"validation": "optional", "value": "true"}]},
        ]})
    );
    let first = asked["id"].as_str().unwrap().to_string();
    let provide = |status_id: &str, input: &str| {
        format!(r#"{{"job_id": "{job}", "status_id": "{status_id}", "input_data": {input}}}"#)
    };
    let (code, given) = ann_post(
        &api,
        "/mip003/review/provide_input",
        &provide(&first, NOTE_INPUT),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{given}");
    assert_eq!(given["status"], "success");
    assert_eq!(
        given["input_hash"],
        sha256sum(&format!("{purchaser};{NOTE_CANONICAL}"))
    );

    // The second lock has no form: one `answer` field, a new status id;
    // the first one is stale now.
    let asked = status_until(&api, "review", &job, Some(ANN), |s| {
        s["status"] == "awaiting_input" && s["id"] != first.as_str()
    })
    .await;
    assert_eq!(
        asked["input_schema"]["input_data"],
        json!([{"id": "answer", "type": "string", "name": "approve", "data": {"description": "Ship it?"}}])
    );
    let second = asked["id"].as_str().unwrap().to_string();
    let (code, stale) = ann_post(
        &api,
        "/mip003/review/provide_input",
        &provide(&first, r#"{"answer": "yes"}"#),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT, "{stale}");
    let why = stale["error"].as_str().unwrap();
    assert!(why.contains("stale") && why.contains(&second), "{why}");
    let (code, refused) = ann_post(
        &api,
        "/mip003/review/provide_input",
        &provide(&second, r#"{"yes": 1}"#),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["errors"], json!({"answer": ["required"]}));
    let (code, given) = ann_post(
        &api,
        "/mip003/review/provide_input",
        &provide(&second, r#"{"answer": "yes"}"#),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{given}");
    assert_eq!(
        given["input_hash"],
        sha256sum(&format!("{purchaser};{{\"answer\":\"yes\"}}"))
    );

    // Completed, the final payload as the result's text.
    let done = status_until(&api, "review", &job, Some(ANN), |s| {
        s["status"] == "completed"
    })
    .await;
    assert_eq!(
        done["result"],
        "Zoë 😀 said naïve – fine ✓ (ok: \"on\"), ship: \"yes\""
    );

    // An ordinary execution: listed, streamed; its meta keeps the job.
    let list = api.get_with("/executions?flow=review", ANN).await;
    assert_eq!(list["executions"][0]["fid"], job.as_str());
    let stream = api
        .req(Method::GET, &format!("/executions/{job}/stream"), Some(ANN))
        .send()
        .await
        .unwrap();
    let events = SseReader::new(stream)
        .until(|e| e.iter().any(|e| e.event == "final"))
        .await;
    assert!(events.iter().any(|e| e.event == "lease"));
    let meta = api
        .get_with(&format!("/executions/{job}/events?kinds=meta"), ANN)
        .await;
    assert_eq!(
        meta["events"][0]["payload"]["job"],
        json!({"api": "mip003", "identifier_from_purchaser": purchaser, "input_hash": started["input_hash"]})
    );
}

#[tokio::test]
async fn a_job_killed_through_the_api_is_failed() {
    let gate = Arc::new(Notify::new());
    let api = TestApi::start(CONFIG, flows(gate)).await;
    let job = gated_job(&api).await;
    let (code, _) = call(
        &api,
        Method::POST,
        &format!("/executions/{job}/kill"),
        Some(ANN),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    status_until(&api, "gated", &job, Some(ANN), |s| s["status"] == "failed").await;
    // Input for a job that ended: 409.
    let body = format!(r#"{{"job_id": "{job}", "status_id": "x", "input_data": {{}}}}"#);
    let (code, ended) = ann_post(&api, "/mip003/gated/provide_input", &body).await;
    assert_eq!(code, StatusCode::CONFLICT, "{ended}");
    assert!(
        ended["error"].as_str().unwrap().contains("already ended"),
        "{ended}"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_4xx_and_store_nothing() {
    let gate = Arc::new(Notify::new());
    let api = TestApi::start(CONFIG, flows(gate)).await;
    let start = |body: &'static str| {
        let api = &api;
        async move {
            call(
                api,
                Method::POST,
                "/mip003/review/start_job",
                Some(ANN),
                Some(body),
            )
            .await
        }
    };
    // A required field missing, a wrong type, a value not in the options.
    let (code, body) =
        start(r#"{"identifier_from_purchaser": "p", "input_data": {"times": 2}}"#).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["errors"]["name"].is_array(), "{body}");
    let (code, body) = start(
        r#"{"identifier_from_purchaser": "p", "input_data": {"name": "a", "times": "three"}}"#,
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["errors"]["times"][0]
            .as_str()
            .unwrap()
            .contains("number"),
        "{body}"
    );
    let (code, body) = start(
        r#"{"identifier_from_purchaser": "p", "input_data": {"name": "a", "tone": ["hot"]}}"#,
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["errors"]["tone"].is_array(), "{body}");
    // The envelope: no purchaser, a blank one, input_data not an object,
    // an unknown field, no body.
    for bad in [
        r#"{"input_data": {"name": "a"}}"#,
        r#"{"identifier_from_purchaser": " ", "input_data": {"name": "a"}}"#,
        r#"{"identifier_from_purchaser": "p", "input_data": [1]}"#,
        r#"{"identifier_from_purchaser": "p", "input_groups": {}}"#,
        "",
    ] {
        let (code, body) = start(bad).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
    let list = api.get_with("/executions", ROOT).await;
    assert_eq!(
        list["executions"],
        json!([]),
        "a refused job stores nothing"
    );

    // Unknown flow, unknown job, no job id, a job of another flow, another
    // user's job, no token.
    let (code, _) = call(
        &api,
        Method::GET,
        "/mip003/nope/input_schema",
        Some(ANN),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let unknown = "0190b2a4-7d1e-7000-8000-000000000000";
    let (code, body) = call(
        &api,
        Method::GET,
        &format!("/mip003/review/status?job_id={unknown}"),
        Some(ANN),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body["error"].as_str().unwrap().contains("job"), "{body}");
    let (code, _) = call(
        &api,
        Method::GET,
        "/mip003/review/status?job_id=not-a-job",
        Some(ANN),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    for path in ["/mip003/review/status", "/mip003/review/status?job_id="] {
        let (code, _) = call(&api, Method::GET, path, Some(ANN), None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{path}");
    }
    let job = gated_job(&api).await;
    for (path, token) in [
        (format!("/mip003/review/status?job_id={job}"), Some(ANN)),
        (format!("/mip003/gated/status?job_id={job}"), Some(BOB)),
    ] {
        let (code, _) = call(&api, Method::GET, &path, token, None).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
    }
    for path in ["/mip003/gated/input_schema", "/mip003/gated/availability"] {
        let (code, body) = call(&api, Method::GET, path, None, None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    // An execution not started as a job is no job.
    let (code, launched) = ann_post(&api, "/flows/gated/executions", "{}").await;
    assert_eq!(code, StatusCode::CREATED);
    let plain = launched["fid"].as_str().unwrap();
    let (code, _) = call(
        &api,
        Method::GET,
        &format!("/mip003/gated/status?job_id={plain}"),
        Some(ANN),
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // Input for a job that awaits none, and with a status id that is no lock's.
    let body =
        format!(r#"{{"job_id": "{job}", "status_id": "{job}-3", "input_data": {{"answer": 1}}}}"#);
    let (code, body) = ann_post(&api, "/mip003/gated/provide_input", &body).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not awaiting input"),
        "{body}"
    );
    let (code, body) = ann_post(&api, "/mip003/gated/provide_input", r#"{"job_id": "x"}"#).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn an_open_flow_takes_jobs_without_a_token_owned_by_its_owner() {
    let gate = Arc::new(Notify::new());
    let api = TestApi::start(CONFIG, flows(gate)).await;
    let (code, schema) = call(&api, Method::GET, "/mip003/echo/input_schema", None, None).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(schema, json!({"input_data": []}));
    let body = r#"{"identifier_from_purchaser": "anon", "input_data": {"q": 1}}"#;
    let (code, started) = call(
        &api,
        Method::POST,
        "/mip003/echo/start_job",
        None,
        Some(body),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{started}");
    assert_eq!(started["agentIdentifier"], "agent-1");
    let job = started["job_id"].as_str().unwrap().to_string();
    let done = status_until(&api, "echo", &job, None, |s| s["status"] == "completed").await;
    assert_eq!(done["result"], "echoed");
    let row = api.get_with(&format!("/executions/{job}"), ROOT).await;
    assert_eq!(row["owner"], "buyer");
    // A token still names its user; a wrong one is refused.
    let (code, started) = call(
        &api,
        Method::POST,
        "/mip003/echo/start_job",
        Some(BOB),
        Some(body),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let row = api
        .get_with(
            &format!("/executions/{}", started["job_id"].as_str().unwrap()),
            ROOT,
        )
        .await;
    assert_eq!(row["owner"], "bob");
    let (code, _) = call(
        &api,
        Method::POST,
        "/mip003/echo/start_job",
        Some("wrong"),
        Some(body),
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // The anonymous owner does not see Bob's job.
    let (code, _) = call(
        &api,
        Method::GET,
        &format!(
            "/mip003/echo/status?job_id={}",
            started["job_id"].as_str().unwrap()
        ),
        None,
        None,
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn availability_follows_the_nodes_readiness_and_max_running() {
    let gate = Arc::new(Notify::new());
    let config = format!("{CONFIG}\n[limits]\nmax_running = 1\n");
    let api = TestApi::start(&config, flows(gate.clone())).await;
    let (code, body) = call(&api, Method::GET, "/mip003/echo/availability", None, None).await;
    assert_eq!(
        (code, body["status"].as_str()),
        (StatusCode::OK, Some("available"))
    );
    let job = gated_job(&api).await;
    let (code, body) = call(&api, Method::GET, "/mip003/echo/availability", None, None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["type"], "masumi-agent");
    assert!(
        body["message"].as_str().unwrap().contains("max_running"),
        "{body}"
    );
    gate.notify_one();
    status_until(&api, "gated", &job, Some(ANN), |s| {
        s["status"] == "completed"
    })
    .await;
    let start = Instant::now();
    loop {
        let (code, body) = call(&api, Method::GET, "/mip003/echo/availability", None, None).await;
        if code == StatusCode::OK {
            assert_eq!(body["status"], "available");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "still {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A payment service on 127.0.0.1, as kodo's payment hook expects one:
/// each request it gets (bearer, body) is kept; it answers the payment's
/// fields, `blockchainIdentifier` naming the job.
async fn payment_service() -> (String, Arc<std::sync::Mutex<Vec<(String, Value)>>>) {
    use axum::extract::State;
    use axum::http::HeaderMap;
    type Seen = Arc<std::sync::Mutex<Vec<(String, Value)>>>;
    let seen: Seen = Default::default();
    let app = axum::Router::new()
        .route(
            "/pay",
            axum::routing::post(
                |State(seen): State<Seen>,
                 headers: HeaderMap,
                 axum::Json(body): axum::Json<Value>| async move {
                    let bearer = headers["authorization"].to_str().unwrap().to_string();
                    let job = body["job_id"].as_str().unwrap().to_string();
                    seen.lock().unwrap().push((bearer, body));
                    axum::Json(json!({
                        "blockchainIdentifier": format!("bc-{job}"),
                        "payByTime": 1_900_000_000,
                        "submitResultTime": 1_900_000_600,
                        "unlockTime": 1_900_001_200,
                        "externalDisputeUnlockTime": 1_900_001_800,
                        "sellerVKey": "vkey-from-the-service",
                    }))
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/pay", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

const SECRET: &str = "payment-secret-0123456789";

#[tokio::test]
async fn with_a_payment_hook_a_job_waits_until_its_payment_is_confirmed() {
    let (url, seen) = payment_service().await;
    // A port nobody listens on: bound, then dropped.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let flow = |name: &str, url: &str, timeout: f64| {
        format!(
            "[flows.{name}]\ncommand = [\"sh\", \"-c\", \"echo '{{\\\"kind\\\":\\\"result\\\",\\\"payload\\\":\\\"served\\\"}}' >&3\"]\n\
             timeout = 1\n[flows.{name}.masumi]\npayment_url = \"{url}\"\npayment_token = \"{SECRET}\"\npayment_timeout = {timeout}\n"
        )
    };
    let config = format!(
        "{CONFIG}\n{}{}{}",
        flow("paid", &url, 30.0),
        flow("down", &format!("http://{closed}/pay"), 30.0),
        flow("late", &url, 0.5)
    );
    let api = TestApi::start(&config, flows(Arc::new(Notify::new()))).await;
    let body = r#"{"identifier_from_purchaser": "buyer-1", "input_data": {"x": 1}}"#;
    let (code, started) = ann_post(&api, "/mip003/paid/start_job", body).await;
    assert_eq!(code, StatusCode::OK, "{started}");
    let job = started["job_id"].as_str().unwrap().to_string();
    // The payment's fields are the service's; it was asked with the secret.
    assert_eq!(started["blockchainIdentifier"], format!("bc-{job}"));
    assert_eq!(started["payByTime"], 1_900_000_000);
    assert_eq!(started["sellerVKey"], "vkey-from-the-service");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].0, format!("Bearer {SECRET}"));
        assert_eq!(seen[0].1["job_id"], job.as_str());
        assert_eq!(seen[0].1["input_hash"], started["input_hash"]);
    }
    // Held: awaiting payment, the flow not started.
    let held = status_until(&api, "paid", &job, Some(ANN), |s| {
        s["status"] == "awaiting_payment"
    })
    .await;
    let events = api
        .get_with(
            &format!("/executions/{job}/events?kinds=stdout,final,result"),
            ANN,
        )
        .await;
    assert_eq!(
        events["events"],
        json!([]),
        "the flow waits for the payment"
    );
    // Only MIP-003 starts a paid flow (but for admins, to try it).
    let (code, body) = ann_post(&api, "/flows/paid/executions", "{}").await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let (code, body) = call(
        &api,
        Method::POST,
        "/flows/paid/executions",
        Some(ROOT),
        Some("{}"),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{body}");
    // Neither the buyer nor provide_input releases the hold.
    let hold = held["id"].as_str().unwrap();
    let (code, body) = ann_post(
        &api,
        &format!("/executions/{job}/locks/{hold}"),
        r#"{"answer": true}"#,
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    let provide =
        format!(r#"{{"job_id": "{job}", "status_id": "{hold}", "input_data": {{"answer": 1}}}}"#);
    let (code, body) = ann_post(&api, "/mip003/paid/provide_input", &provide).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    let confirm = format!(r#"{{"job_id": "{job}"}}"#);
    for token in [None, Some(ANN), Some(ROOT)] {
        let (code, _) = call(
            &api,
            Method::POST,
            "/mip003/paid/payment",
            token,
            Some(&confirm),
        )
        .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    let (code, body) = call(
        &api,
        Method::POST,
        "/mip003/echo/payment",
        Some(SECRET),
        Some(&confirm),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::UNAUTHORIZED,
        "a flow without a hook: {body}"
    );
    // The flow's timeout (1 s) counts from its start, not from the launch:
    // a job paid after it runs all the same.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The payment service confirms: the flow runs to its end.
    let (code, body) = call(
        &api,
        Method::POST,
        "/mip003/paid/payment",
        Some(SECRET),
        Some(&confirm),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let done = status_until(&api, "paid", &job, Some(ANN), |s| {
        s["status"] == "completed"
    })
    .await;
    assert_eq!(done["result"], "served");
    let (code, _) = call(
        &api,
        Method::POST,
        "/mip003/paid/payment",
        Some(SECRET),
        Some(&confirm),
    )
    .await;
    assert_eq!(
        code,
        StatusCode::OK,
        "a repeated confirmation gets the same answer"
    );

    // A payment service that does not answer: 502 naming it, and the job
    // it was for is killed.
    let (code, body) = ann_post(
        &api,
        "/mip003/down/start_job",
        r#"{"identifier_from_purchaser": "buyer-2"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("payment service"),
        "{body}"
    );
    let start = Instant::now();
    loop {
        let list = api.get_with("/executions?flow=down", ANN).await;
        if list["executions"][0]["status"] == "killed" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{list}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Not confirmed within payment_timeout: failed.
    let (code, started) = ann_post(
        &api,
        "/mip003/late/start_job",
        r#"{"identifier_from_purchaser": "buyer-3"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{started}");
    let job = started["job_id"].as_str().unwrap().to_string();
    status_until(&api, "late", &job, Some(ANN), |s| s["status"] == "failed").await;
}
