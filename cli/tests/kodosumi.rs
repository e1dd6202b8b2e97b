//! Kodosumi flow modules run unmodified under kodo (`kodosumi =
//! "pkg.mod:app"` flows, the `kodo` package bundled in the runtime), with
//! kodo's stand-ins for `kodosumi`, `ray` and `fastapi`: the modules in
//! `cli/tests/kodosumi/` are written the way Kodosumi's documentation
//! writes them.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;

/// The test modules' folder (`pythonpath` of the flows).
fn modules() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/kodosumi")
        .display()
        .to_string()
}

/// A config with one Kodosumi flow per (name, `kodosumi`, `path`): as a
/// user writes it, the `kodo` package bundled in the runtime.
fn config(dir: &Path, flows: &[(&str, &str, Option<&str>)]) -> std::path::PathBuf {
    let mut text = String::new();
    for (name, target, path) in flows {
        text.push_str(&format!(
            "[flows.{name}]\nkodosumi = \"{target}\"\npythonpath = [\"{}\"]\n",
            modules()
        ));
        if let Some(path) = path {
            text.push_str(&format!("path = \"{path}\"\n"));
        }
    }
    write_config(dir, &text)
}

/// Launches `flow` with `inputs` and waits for its end; its events.
async fn run_to_end(base: &str, flow: &str, inputs: Value) -> Vec<Value> {
    let launched = post(
        base,
        &format!("/flows/{flow}/executions"),
        json!({"inputs": inputs}),
    )
    .await;
    let fid = launched["fid"].as_str().unwrap().to_string();
    events_until(base, &fid, DEADLINE, ended).await
}

/// The text of the `error` event.
fn error_of(events: &[Value]) -> String {
    payloads(events, "error")
        .first()
        .and_then(|p| p.as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_route_launches_its_entry_point_with_the_forms_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[("hello", "hello.app:app", Some("/"))]);
    let (mut node, base) = start(&cfg, dir.path()).await;
    let inputs = json!({"name": "ann", "times": "3", "loud": "on", "tone": "cool", "note": "hi", "extra": 1});
    let events = run_to_end(&base, "hello", inputs).await;
    assert_eq!(last_status(&events), Some("finished"), "{events:?}");
    // What Kodosumi's Tracer emits, encoded as Kodosumi encodes it.
    assert_eq!(
        payloads(&events, "result")[..3],
        [
            &json!({"Markdown": {"body": "# Hello ann"}}),
            &json!({"HTML": {"body": "<b>bold</b>"}}),
            &json!({"Text": {"body": "plain"}}),
        ]
    );
    assert_eq!(payloads(&events, "debug"), [&json!("greeting")]);
    assert_eq!(
        payloads(&events, "action"),
        [&json!({"dict": {"step": "greet"}})]
    );
    assert_eq!(stdout_lines(&events), ["printed by the flow"]);
    // The app's @app.enter handler ran before the launch: the execution
    // holds the inputs its Launch gave (parsed by the form: the checkbox is
    // true for "on", a field not sent is null, one not in the form is left
    // out), and the entry point it named.
    assert_eq!(
        payloads(&events, "inputs"),
        [&json!({"name": "ann", "times": "3", "loud": true, "tone": "cool", "note": "hi"})]
    );
    assert_eq!(
        payloads(&events, "meta")[0]["launch"],
        json!({"entry_point": "hello.app:run"})
    );
    // ray.remote ran in-process.
    assert_eq!(
        payloads(&events, "final"),
        [&json!({"dict": {"greeting": "ANN!", "tone": "cool", "times": "3"}})]
    );
    // Unchecked (absent) is false, and so is anything but "on" (as in
    // Kodosumi, where `true` is not "on").
    for loud in [json!(null), json!(true)] {
        let mut quiet = json!({"name": "bo", "times": "1", "tone": "warm"});
        if !loud.is_null() {
            quiet["loud"] = loud;
        }
        let events = run_to_end(&base, "hello", quiet).await;
        assert_eq!(
            payloads(&events, "final"),
            [&json!({"dict": {"greeting": "bo", "tone": "warm", "times": "1"}})]
        );
    }
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_points_sync_failing_and_missing_end_as_kodosumi_ends_them() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[
            ("sync", "hello.app:sync_run", None),
            ("dotted", "hello.app.sync_run", None),
            ("fails", "hello.app:fails", None),
            ("missing", "hello.app:nope", None),
            ("broken", "broken.mod:fn", None),
            ("needs", "needs.mod:fn", None),
        ],
    );
    let (mut node, base) = start(&cfg, dir.path()).await;
    for flow in ["sync", "dotted"] {
        let events = run_to_end(&base, flow, json!({})).await;
        assert_eq!(last_status(&events), Some("finished"), "{events:?}");
        assert_eq!(payloads(&events, "debug"), [&json!("in a thread")]);
        assert_eq!(
            payloads(&events, "result")[0],
            &json!({"__list__": [{"str": "a"}, {"int": 1}]})
        );
        assert_eq!(payloads(&events, "final"), [&json!({"str": "done"})]);
    }
    // Each failure ends `error`, naming its cause; the traceback is on stderr.
    for (flow, cause) in [
        ("fails", "ZeroDivisionError: division by zero"),
        ("missing", "hello.app has no nope"),
        (
            "broken",
            "cannot import broken.mod for broken.mod:fn: RuntimeError: this module fails at import",
        ),
        ("needs", "No module named 'a_package_that_is_not_installed'"),
    ] {
        let events = run_to_end(&base, flow, json!({})).await;
        assert_eq!(last_status(&events), Some("error"), "{flow}: {events:?}");
        let error = error_of(&events);
        assert!(error.contains(cause), "{flow}: {error}");
    }
    let events = run_to_end(&base, "fails", json!({})).await;
    let stderr: Vec<&str> = payloads(&events, "stderr")
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(
        stderr.iter().any(|l| l.starts_with("Traceback")),
        "{stderr:?}"
    );
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_that_cannot_write_the_python_package_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[("hello", "hello.app:app", Some("/"))]);
    // A file where the folder should be.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, "").unwrap();
    let mut command = run(&cfg, dir.path());
    command.env("KODO_PYTHON_DIR", &blocked);
    let err = exits_with(&mut command, 1).await;
    assert!(
        err.contains("cannot write the kodo Python package under")
            && err.contains("KODO_PYTHON_DIR"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_form_is_the_flows_and_refuses_a_launch_that_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[
            ("hello", "hello.app:app", Some("/")),
            ("brokenapp", "broken.mod:app", Some("/")),
            ("nowhere", "hello.app:app", Some("/nowhere")),
        ],
    );
    let (mut node, base) = start(&cfg, dir.path()).await;
    // The @app.enter model and metadata, as GET /flows/{flow}.
    let flow = get(&base, "/flows/hello").await;
    assert_eq!(flow["form"]["summary"], "Hello", "{flow}");
    assert_eq!(flow["form"]["version"], "1.0.0");
    let elements = flow["form"]["elements"].as_array().unwrap();
    let types: Vec<&str> = elements
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "markdown", "text", "number", "boolean", "select", "textarea", "submit", "cancel"
        ]
    );
    assert_eq!(elements[4]["option"][1]["name"], "cool");
    // InputsError: a 400 with Kodosumi's errors, and nothing stored.
    let (code, body) = post_any(
        &base,
        "/flows/hello/executions",
        json!({"inputs": {"times": "2"}}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["errors"], json!({"name": ["Please give a name"]}));
    let listed = get(&base, "/executions").await;
    assert_eq!(listed["executions"], json!([]), "{listed}");
    // An app that cannot be imported, a path that is no route: 503, naming why.
    for (flow, cause) in [
        ("brokenapp", "RuntimeError: this module fails at import"),
        ("nowhere", "no @app.enter route at '/nowhere'"),
    ] {
        let (code, body) = post_any(&base, &format!("/flows/{flow}/executions"), json!({})).await;
        assert_eq!(code, 503, "{flow}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(cause), "{flow}: {error}");
    }
    let listed = get(&base, "/executions").await;
    assert_eq!(listed["executions"], json!([]), "{listed}");
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_shows_the_apps_form_and_its_lease_refuses_a_first_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[
            ("approve", "hello.app:app", Some("/approve")),
            ("expires", "hello.app:expires", None),
        ],
    );
    let (mut node, base) = start(&cfg, dir.path()).await;
    let launched = post(
        &base,
        "/flows/approve/executions",
        json!({"inputs": {"item": "car"}}),
    )
    .await;
    let fid = launched["fid"].as_str().unwrap().to_string();
    let opened = events_until(&base, &fid, DEADLINE, |e| {
        e.iter().any(|e| e["kind"] == "lock")
    })
    .await;
    let lock = opened.iter().find(|e| e["kind"] == "lock").unwrap();
    // The lock's data: the @app.lock form, and what the flow gave.
    assert_eq!(lock["payload"]["data"]["data"], json!({"item": "car"}));
    let types: Vec<&str> = lock["payload"]["data"]["form"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["markdown", "boolean", "text", "submit"]);
    let lid = lock["payload"]["lid"].as_str().unwrap();
    let answer = format!("/executions/{fid}/locks/{lid}");
    // The @app.lease handler refuses the first answer: 400, the lock stays open.
    let (code, body) = post_any(&base, &answer, json!({"answer": {"ok": "on"}})).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["errors"], json!({"reason": ["Give a reason"]}));
    let row = get(&base, &format!("/executions/{fid}")).await;
    assert_eq!(row["status"], "awaiting", "{row}");
    let (code, body) = post_any(
        &base,
        &answer,
        json!({"answer": {"ok": "on", "reason": "fine"}}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let events = events_until(&base, &fid, DEADLINE, ended).await;
    assert_eq!(
        payloads(&events, "final"),
        [&json!({"dict": {"approved": true, "reason": "fine", "item": "car"}})]
    );
    // Answered: no form code runs for another answer.
    let (code, body) = post_any(&base, &answer, json!({"answer": {"reason": "again"}})).await;
    assert!(code == 404 || code == 409, "{code} {body}");
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let printed = kinds.iter().position(|k| *k == "stdout").unwrap();
    assert!(
        printed < kinds.iter().position(|k| *k == "lock").unwrap(),
        "{kinds:?}"
    );
    // A lock that expires raises TimeoutError in the flow, as in Kodosumi.
    let events = run_to_end(&base, "expires", json!({})).await;
    assert_eq!(last_status(&events), Some("error"));
    let error = error_of(&events);
    assert!(error.contains("TimeoutError"), "{error}");
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kodos_kodosumi_comes_before_an_installed_one_and_an_installed_ray_wins() {
    let dir = tempfile::tempdir().unwrap();
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kodosumi_installed");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[flows.hello]\nkodosumi = \"hello.app:app\"\npath = \"/\"\n\
             pythonpath = [\"{}\", \"{}\"]\n",
            modules(),
            installed.display()
        ),
    );
    let (mut node, base) = start(&cfg, dir.path()).await;
    let events = run_to_end(&base, "hello", json!({"name": "ann", "loud": "on"})).await;
    assert_eq!(last_status(&events), Some("finished"), "{events:?}");
    assert_eq!(
        payloads(&events, "final")[0]["dict"]["greeting"],
        "ANN! (via the installed ray)"
    );
    assert_eq!(terminate(&mut node).await, 0);
}

/// A Kodosumi app sold over MIP-003: its `@app.enter` form as the input
/// schema, a checkbox given as MIP-003's `true`, its `@app.lock` form while
/// awaiting input, and its `@app.lease` refusing a first input (400, still
/// awaiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kodosumi_app_speaks_mip_003_with_its_forms() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &[("approve", "hello.app:app", Some("/approve"))],
    );
    let (mut node, base) = start(&cfg, dir.path()).await;
    let schema = get(&base, "/mip003/approve/input_schema").await;
    assert_eq!(
        schema["input_data"],
        json!([{"id": "item", "type": "string", "name": "Item",
                "validations": [{"validation": "optional", "value": "true"}]}])
    );
    let started = post(
        &base,
        "/mip003/approve/start_job",
        json!({"identifier_from_purchaser": "p-1", "input_data": {"item": "car"}}),
    )
    .await;
    let job = started["job_id"].as_str().unwrap().to_string();
    let status = format!("/mip003/approve/status?job_id={job}");
    let start = std::time::Instant::now();
    let asked = loop {
        let now = get(&base, &status).await;
        if now["status"] == "awaiting_input" {
            break now;
        }
        assert!(start.elapsed() < DEADLINE, "never awaited input: {now}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let ids: Vec<&str> = asked["input_schema"]["input_data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["text-1", "ok", "reason"]);
    assert_eq!(
        asked["input_schema"]["input_data"][0]["name"],
        "Approve car?"
    );
    let provide =
        |input: Value| json!({"job_id": job, "status_id": asked["id"], "input_data": input});
    let (code, body) = post_any(
        &base,
        "/mip003/approve/provide_input",
        provide(json!({"ok": true})),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["errors"], json!({"reason": ["Give a reason"]}));
    assert_eq!(get(&base, &status).await["status"], "awaiting_input");
    let (code, body) = post_any(
        &base,
        "/mip003/approve/provide_input",
        provide(json!({"ok": true, "reason": "fine"})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let start = std::time::Instant::now();
    let done = loop {
        let now = get(&base, &status).await;
        if now["status"] == "completed" {
            break now;
        }
        assert!(start.elapsed() < DEADLINE, "never completed: {now}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let result: Value = serde_json::from_str(done["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        result,
        json!({"dict": {"approved": true, "reason": "fine", "item": "car"}})
    );
    assert_eq!(terminate(&mut node).await, 0);
}
