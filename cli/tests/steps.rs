//! Durable steps with `recover = "resume"`, as a user runs them: a Python
//! command flow with the `kodo` package, the node SIGKILLed mid-run and
//! started again, on SQLite and on PostgreSQL.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A flow of `steps` steps (inputs); each appends its number to
/// `SIDE_DIR/FID` (its side effect), sleeps 10 ms and returns
/// `{"n", "square"}`; the result is the sum of the squares. Its steps are
/// named `STEP_PREFIX-n`, numbered from 2 (step 1 always fails).
const FLOW: &str = r#"
import os, time
import kodo

args = kodo.inputs()
side = os.path.join(os.environ["SIDE_DIR"], os.environ["KODO_FID"])
prefix = os.environ.get("STEP_PREFIX", "step")
# A step that fails on every run: it uses up number 1, and journals nothing.
try:
    kodo.step("flaky", lambda: 1 / 0)
except ZeroDivisionError:
    pass
total = 0
for n in range(1, args["steps"] + 1):
    def work(n=n):
        with open(side, "a") as f:
            f.write(f"{n}\n")
        time.sleep(0.01)
        return {"n": n, "square": n * n}
    r = kodo.step(f"{prefix}-{n}", work)
    assert r == {"n": n, "square": n * n}, r
    total += r["square"]
kodo.result({"total": total})
"#;

/// Writes the flow and a config running it with `recover = "resume"`
/// (`extra` follows the flow's keys, `env` its environment's); the
/// side-effect folder.
fn setup(
    dir: &Path,
    store: Option<&str>,
    extra: &str,
    env: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::write(dir.join("steps.py"), FLOW).unwrap();
    let side = dir.join("side");
    std::fs::create_dir_all(&side).unwrap();
    let flows = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python");
    let store = store.map_or(String::new(), |url| format!("[store]\nurl = \"{url}\"\n"));
    let config = write_config(
        dir,
        &format!(
            "{store}[flows.steps]\ncommand = [\"python3\", \"-u\", \"steps.py\"]\n\
             recover = \"resume\"\n{extra}\n\
             [flows.steps.env]\nPYTHONPATH = \"{}\"\nSIDE_DIR = \"{}\"\n{env}\n",
            flows.display(),
            side.display()
        ),
    );
    (config, side)
}

/// `runtime run` with the store at `store` (None: the default SQLite file).
async fn start_on(
    config: &Path,
    dir: &Path,
    store: Option<&str>,
) -> (tokio::process::Child, String) {
    let mut command = run(config, dir);
    if let Some(url) = store {
        command.env("KODO_STORE_URL", url);
    }
    let (child, base, _) = start_logged(command).await;
    (child, base)
}

/// How many times each step's side effect ran.
fn side_effects(side: &Path, fid: &str) -> BTreeMap<u64, usize> {
    let text = std::fs::read_to_string(side.join(fid)).unwrap_or_default();
    let mut runs = BTreeMap::new();
    for line in text.lines() {
        *runs.entry(line.parse::<u64>().unwrap()).or_default() += 1;
    }
    runs
}

/// Waits (up to [`DEADLINE`]) until `done` holds; `what` names it otherwise.
async fn until_true(done: impl Fn() -> bool, what: &str) {
    let every = Duration::from_millis(10);
    until(what, DEADLINE, every, async || done().then_some(())).await
}

/// Launches the steps flow with `steps` steps through `base`; its fid.
async fn launch_steps(base: &str, steps: u64) -> String {
    let body = json!({"inputs": {"steps": steps}});
    let launched = post(base, "/flows/steps/executions", body).await;
    launched["fid"].as_str().unwrap().to_string()
}

/// The journal a run of `steps` steps leaves: step k is number k + 1 (the
/// flow's first step always fails), with its value.
fn journal_of(steps: u64) -> Vec<Value> {
    (1..=steps)
        .map(|n| json!({"n": n + 1, "name": format!("step-{n}"), "result": {"n": n, "square": n * n}}))
        .collect()
}

/// The `debug` markers of the runs after the first ("attempt K of M: ...").
fn markers(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| e["payload"].as_str().filter(|p| p.starts_with("attempt ")))
        .collect()
}

/// Each side effect in `runs` happened once, but at most one (the step in
/// flight at the crash), which happened twice.
fn at_most_the_step_in_flight_repeated(runs: &BTreeMap<u64, usize>, fid: &str) {
    let repeated: Vec<(u64, usize)> = runs
        .iter()
        .map(|(&n, &r)| (n, r))
        .filter(|&(_, r)| r > 1)
        .collect();
    assert!(
        repeated.len() <= 1 && repeated.iter().all(|&(_, r)| r == 2),
        "{fid}: at most the step in flight ran twice: {repeated:?}"
    );
}

/// The `step` events' payloads.
fn steps_of(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["kind"] == "step")
        .map(|e| e["payload"].clone())
        .collect()
}

async fn twenty_executions_of_a_hundred_steps_resume(store: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let (config, side) = setup(dir.path(), store, "", "");
    let (mut node, base) = start_on(&config, dir.path(), store).await;
    let mut fids = Vec::new();
    for _ in 0..20 {
        fids.push(launch_steps(&base, 100).await);
    }
    // Mid-run: every execution took some steps, none took them all.
    until_true(
        || fids.iter().all(|fid| side_effects(&side, fid).len() >= 10),
        "the flows do not run",
    )
    .await;
    node.start_kill().unwrap();
    node.wait().await.unwrap();
    let before: Vec<usize> = fids.iter().map(|f| side_effects(&side, f).len()).collect();
    assert!(
        before.iter().all(|&n| n < 100),
        "killed mid-run: {before:?}"
    );

    let (mut again, base) = start_on(&config, dir.path(), store).await;
    for fid in &fids {
        let events = events_until(&base, fid, Duration::from_secs(120), ended).await;
        assert_eq!(check_log(&events), "finished", "{fid}: {events:?}");
        let total: u64 = (1..=100u64).map(|n| n * n).sum();
        let last = events.iter().rfind(|e| e["kind"] == "final").unwrap();
        assert_eq!(last["payload"], json!({"total": total}));
        // Each step journaled once, in order, with its result.
        assert_eq!(
            steps_of(&events),
            journal_of(100),
            "{fid}: one journal entry per step"
        );
        // Each side effect once, but the step in flight at the kill.
        let runs = side_effects(&side, fid);
        assert_eq!(
            runs.keys().copied().collect::<Vec<_>>(),
            (1..=100).collect::<Vec<_>>()
        );
        at_most_the_step_in_flight_repeated(&runs, fid);
        // The new attempt is marked, after the journal it replays.
        let markers = markers(&events);
        assert_eq!(markers.len(), 1, "{markers:?}");
        assert!(
            markers[0].starts_with("attempt 2 of 3: the node restarted;"),
            "{}",
            markers[0]
        );
    }
    assert_eq!(terminate(&mut again).await, 0);
}

#[tokio::test]
async fn twenty_executions_of_a_hundred_steps_resume_after_sigkill_on_sqlite() {
    twenty_executions_of_a_hundred_steps_resume(None).await;
}

#[tokio::test]
async fn twenty_executions_of_a_hundred_steps_resume_after_sigkill_on_postgres() {
    let url = fresh_pg_database().await;
    twenty_executions_of_a_hundred_steps_resume(Some(&url)).await;
}

/// Starts a node, launches one execution of `steps` steps, waits until
/// `taken` side effects happened, SIGKILLs the node; the fid.
async fn killed_after(config: &Path, dir: &Path, side: &Path, steps: u64, taken: usize) -> String {
    let (mut node, base) = start_on(config, dir, None).await;
    let fid = launch_steps(&base, steps).await;
    until_true(
        || side_effects(side, &fid).len() >= taken,
        "the flow does not run",
    )
    .await;
    node.start_kill().unwrap();
    node.wait().await.unwrap();
    fid
}

#[tokio::test]
async fn a_flow_whose_steps_changed_fails_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let (config, side) = setup(dir.path(), None, "", "");
    let fid = killed_after(&config, dir.path(), &side, 100_000, 3).await;
    // The flow's code changes: its steps have other names now.
    let (config, _) = setup(dir.path(), None, "", "STEP_PREFIX = \"renamed\"");
    let (mut node, base) = start_on(&config, dir.path(), None).await;
    let events = events_until(&base, &fid, DEADLINE, ended).await;
    assert_eq!(check_log(&events), "error");
    let error = events.iter().rfind(|e| e["kind"] == "error").unwrap();
    let error = error["payload"].as_str().unwrap();
    assert!(
        error.contains(r#"step 2 is "renamed-1" but the journal holds "step-1" there"#),
        "{error}"
    );
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test]
async fn an_execution_that_dies_with_its_node_every_time_ends_after_its_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let (config, side) = setup(dir.path(), None, "attempts = 2", "");
    let fid = killed_after(&config, dir.path(), &side, 100_000, 3).await;
    // Attempt 2 runs, and its node dies too.
    let (mut node, base) = start_on(&config, dir.path(), None).await;
    let taken = side_effects(&side, &fid).len();
    events_until(&base, &fid, DEADLINE, |e| {
        markers(e).iter().any(|m| m.starts_with("attempt 2 of 2"))
    })
    .await;
    until_true(
        || side_effects(&side, &fid).len() >= taken + 3,
        "attempt 2 does not run",
    )
    .await;
    node.start_kill().unwrap();
    node.wait().await.unwrap();
    // No third run: the execution ends, saying why.
    let (mut node, base) = start_on(&config, dir.path(), None).await;
    let events = events_until(&base, &fid, DEADLINE, ended).await;
    assert_eq!(check_log(&events), "error");
    let error = events.iter().rfind(|e| e["kind"] == "error").unwrap();
    assert_eq!(
        error["payload"],
        "the node restarted; gave up after 2 attempts"
    );
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_execution_resumes_on_the_survivor_with_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let redis = ScriptServer::redis(dir.path());
    let store = fresh_pg_database().await;
    let extra = format!(
        "[transport]\nkind = \"redis\"\nurl = \"{}\"\nblock = 0.1\nclaim_idle = 1\n\
         [cluster]\nlease = 2\n",
        redis.url
    );
    let (config, side) = setup(dir.path(), None, "", "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{extra}{text}")).unwrap();
    let node = |name: &str| {
        let mut command = run(&config, dir.path());
        command
            .env("KODO_NODE_NAME", name)
            .env("KODO_STORE_URL", &store);
        start_logged(command)
    };
    let (mut a, base_a, _) = node("node-a").await;
    let (mut b, base_b, _) = node("node-b").await;
    let fid = launch_steps(&base_a, 60).await;
    until_true(
        || side_effects(&side, &fid).len() >= 5,
        "the flow does not run",
    )
    .await;
    a.start_kill().unwrap();
    a.wait().await.unwrap();

    // B takes A over, and runs the execution on from its journal.
    let events = events_until(&base_b, &fid, Duration::from_secs(60), ended).await;
    assert_eq!(check_log(&events), "finished", "{events:?}");
    assert_eq!(
        steps_of(&events),
        journal_of(60),
        "one journal entry per step"
    );
    let runs = side_effects(&side, &fid);
    assert_eq!(runs.len(), 60);
    at_most_the_step_in_flight_repeated(&runs, &fid);
    let marker = *markers(&events).first().expect("a marker");
    assert!(
        marker.starts_with("attempt 2 of 3: node node-a was lost;"),
        "{marker}"
    );
    let row = get(&base_b, &format!("/executions/{fid}")).await;
    assert_eq!(row["node"], "node-b", "{row}");
    assert_eq!(terminate(&mut b).await, 0);
}

#[tokio::test]
async fn a_graceful_stop_leaves_a_resuming_execution_to_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (config, side) = setup(dir.path(), None, "", "");
    let (mut node, base) = start_on(&config, dir.path(), None).await;
    let fid = launch_steps(&base, 30).await;
    until_true(
        || side_effects(&side, &fid).len() >= 5,
        "the flow does not run",
    )
    .await;
    // SIGTERM: the flow is stopped, its end not recorded.
    assert_eq!(terminate(&mut node).await, 0);
    let (mut node, base) = start_on(&config, dir.path(), None).await;
    let events = events_until(&base, &fid, DEADLINE, ended).await;
    assert_eq!(check_log(&events), "finished", "{events:?}");
    assert!(
        !events.iter().any(|e| e["kind"] == "error"),
        "no end recorded at the stop: {events:?}"
    );
    let marker = *markers(&events).first().expect("a marker");
    assert!(
        marker.starts_with("attempt 2 of 3: the node restarted;"),
        "{marker}"
    );
    assert_eq!(steps_of(&events).len(), 30);
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test]
async fn a_kill_during_a_stop_ends_a_resuming_execution_for_good() {
    let dir = tempfile::tempdir().unwrap();
    // A flow that shrugs SIGTERM off: the stop waits out its grace.
    let config = write_config(
        dir.path(),
        "[limits]\nkill_grace = 3\n[flows.stubborn]\n\
         command = [\"sh\", \"-c\", \"trap '' TERM; read -r x; echo up; while true; do sleep 0.05; done\"]\n\
         recover = \"resume\"\n",
    );
    let (mut node, base) = start_on(&config, dir.path(), None).await;
    let fid = launch(&base, "stubborn").await;
    events_until(&base, &fid, DEADLINE, |e| stdout_lines(e) == ["up"]).await;
    signal(node.id().unwrap(), "TERM").await;
    // Stopping: launches are refused; then the owner kills it.
    let deadline = std::time::Instant::now() + DEADLINE;
    while post_any(&base, "/flows/stubborn/executions", json!({}))
        .await
        .0
        != 503
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the node does not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = post_any(&base, &format!("/executions/{fid}/kill"), json!({})).await;
    assert_eq!(status, 202);
    assert_eq!(node.wait().await.unwrap().code(), Some(0));
    // The kill is its end: it does not run again.
    let (mut node, base) = start_on(&config, dir.path(), None).await;
    let events = events(&base, &fid).await;
    assert_eq!(check_log(&events), "killed", "{events:?}");
    let error = events.iter().rfind(|e| e["kind"] == "error").unwrap();
    assert_eq!(error["payload"], "killed: by local");
    assert_eq!(stdout_lines(&events), ["up"], "not run again");
    assert_eq!(terminate(&mut node).await, 0);
}
