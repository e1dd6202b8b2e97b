//! The Python package (`sdk/python`, `import kodo`) as a flow's author uses
//! it: real Python child processes under `runtime run`.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;

/// `sdk/python`, for a flow's `PYTHONPATH`.
fn sdk() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sdk/python")
        .display()
        .to_string()
}

/// A config with `flow` (Python source) as `[flows.NAME]`, the package on
/// its path.
fn python_flow(dir: &Path, name: &str, source: &str) -> std::path::PathBuf {
    std::fs::write(dir.join(format!("{name}.py")), source).unwrap();
    write_config(
        dir,
        &format!(
            "[flows.{name}]\ncommand = [\"python3\", \"{name}.py\"]\n\
             [flows.{name}.env]\nPYTHONPATH = \"{}\"\n",
            sdk()
        ),
    )
}

/// The lids of the open locks named in `events`, by name.
fn lid_of(events: &[Value], name: &str) -> Option<String> {
    events
        .iter()
        .find(|e| e["kind"] == "lock" && e["payload"]["name"] == name)
        .map(|e| e["payload"]["lid"].as_str().unwrap().to_string())
}

const ASYNC_FLOW: &str = r#"
import asyncio
import kodo

async def main():
    args = kodo.inputs()
    await kodo.adebug("asking both")
    print("before the locks")
    a, b, s = await asyncio.gather(
        kodo.alock("first", {"q": 1}),
        kodo.alock("second", {"q": 2}, timeout=600),
        kodo.astep("double", lambda: args["n"] * 2),
    )
    kodo.action({"a": a, "b": b})
    kodo.result({"first": a, "second": b, "double": s})

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_locks_and_a_step_awaited_together_get_their_own_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = python_flow(dir.path(), "both", ASYNC_FLOW);
    let (mut node, base) = start(&cfg, dir.path()).await;
    let launched = post(
        &base,
        "/flows/both/executions",
        json!({"inputs": {"n": 21}}),
    )
    .await;
    let fid = launched["fid"].as_str().unwrap().to_string();
    let opened = events_until(&base, &fid, DEADLINE, |e| {
        lid_of(e, "first").is_some() && lid_of(e, "second").is_some()
    })
    .await;
    // Answered in the other order than opened: each await gets its own.
    for (name, answer) in [("second", "no"), ("first", "yes")] {
        let lid = lid_of(&opened, name).unwrap();
        let (code, body) = post_any(
            &base,
            &format!("/executions/{fid}/locks/{lid}"),
            json!({"answer": answer}),
        )
        .await;
        assert_eq!(code, 200, "{body}");
    }
    let events = events_until(&base, &fid, DEADLINE, ended).await;
    assert_eq!(last_status(&events), Some("finished"), "{events:?}");
    assert_eq!(
        payloads(&events, "final"),
        [&json!({"first": "yes", "second": "no", "double": 42})]
    );
    assert_eq!(payloads(&events, "debug"), [&json!("asking both")]);
    assert_eq!(payloads(&events, "step")[0]["result"], json!(42));
    // The print before the locks is stored before them (line-buffered).
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    let printed = kinds.iter().position(|k| *k == "stdout").unwrap();
    let first_lock = kinds.iter().position(|k| *k == "lock").unwrap();
    assert!(printed < first_lock, "{kinds:?}");
    assert_eq!(terminate(&mut node).await, 0);
}

const GIVES_UP_FLOW: &str = r#"
import asyncio
import kodo

async def main():
    kodo.inputs()
    try:
        await asyncio.wait_for(kodo.alock("again", {"try": 1}), 0.2)
    except asyncio.TimeoutError:
        kodo.debug("gave up waiting")
    answer = await kodo.alock("again", {"try": 2})
    kodo.result({"answer": answer})

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_wait_given_up_does_not_take_the_next_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = python_flow(dir.path(), "again", GIVES_UP_FLOW);
    let (mut node, base) = start(&cfg, dir.path()).await;
    let launched = post(&base, "/flows/again/executions", json!({})).await;
    let fid = launched["fid"].as_str().unwrap().to_string();
    let second = |e: &[Value]| {
        e.iter()
            .find(|e| e["kind"] == "lock" && e["payload"]["data"]["try"] == 2)
            .map(|e| e["payload"]["lid"].as_str().unwrap().to_string())
    };
    let opened = events_until(&base, &fid, DEADLINE, |e| second(e).is_some()).await;
    let lid = second(&opened).unwrap();
    let (code, body) = post_any(
        &base,
        &format!("/executions/{fid}/locks/{lid}"),
        json!({"answer": "second"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let events = events_until(&base, &fid, DEADLINE, ended).await;
    assert_eq!(payloads(&events, "final"), [&json!({"answer": "second"})]);
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_outside_kodo_says_so() {
    let out = std::process::Command::new("python3")
        .args(["-c", "import kodo; kodo.debug('x')"])
        .env("PYTHONPATH", sdk())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kodo.NotUnderKodo") && err.contains("fd 3 is not open"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_installs_with_pip_and_brings_the_kodosumi_stand_ins() {
    let dir = tempfile::tempdir().unwrap();
    let venv = dir.path().join("venv");
    let ok = std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(ok.success());
    // As a user installs it (pip fetches its build backend, setuptools),
    // from a copy: pip builds in the source folder.
    let copy = dir.path().join("sdk");
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(sdk())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());
    let out = std::process::Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kodosumi");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[flows.sync]\ncommand = [\"{}\", \"-m\", \"kodo.kodosumi\", \"hello.app:sync_run\"]\n\
             [flows.sync.env]\nPYTHONPATH = \"{}\"\n",
            venv.join("bin/python").display(),
            modules.display()
        ),
    );
    let (mut node, base) = start(&cfg, dir.path()).await;
    let launched = post(&base, "/flows/sync/executions", json!({})).await;
    let fid = launched["fid"].as_str().unwrap().to_string();
    let events = events_until(&base, &fid, DEADLINE, ended).await;
    assert_eq!(last_status(&events), Some("finished"), "{events:?}");
    assert_eq!(payloads(&events, "final"), [&json!({"str": "done"})]);
    assert_eq!(terminate(&mut node).await, 0);
}
