//! Helpers of the process tests: the `runtime` binary started as a user
//! starts it, with its stderr collected, and small HTTP calls.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

pub(crate) const DEADLINE: Duration = Duration::from_secs(30);
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_runtime");

pub(crate) fn runtime(args: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("KODO_API_LISTEN", "127.0.0.1:0")
        .env(
            "KODO_STORE_URL",
            format!("sqlite://{}", dir.join("kodo.db").display()),
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Starts `runtime run` and returns it with its base URL (read from its first stdout line).
pub(crate) async fn start(config: &Path, dir: &Path) -> (Child, String) {
    let (child, base, _) = start_logged(run(config, dir)).await;
    (child, base)
}

/// `runtime run --config CONFIG` in `dir`, not started yet.
pub(crate) fn run(config: &Path, dir: &Path) -> Command {
    runtime(&["run", "--config", config.to_str().unwrap()], dir)
}

/// What a process wrote to stderr, collected as it comes (so a chatty
/// process never blocks on a full pipe).
#[derive(Clone)]
pub(crate) struct Log {
    text: Arc<Mutex<String>>,
    reader: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Log {
    /// Collects `child`'s stderr.
    pub(crate) fn of(child: &mut Child) -> Self {
        let text = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let sink = text.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            text,
            reader: Arc::new(Mutex::new(Some(reader))),
        }
    }

    /// Everything after the process closed its stderr (it exited).
    pub(crate) async fn complete(&self) -> String {
        let reader = self.reader.lock().unwrap().take();
        if let Some(reader) = reader {
            tokio::time::timeout(DEADLINE, reader)
                .await
                .expect("stderr closed in time")
                .unwrap();
        }
        self.text.lock().unwrap().clone()
    }
}

/// Starts a `runtime run` command and returns it with its base URL (read
/// from its first stdout line) and its stderr.
pub(crate) async fn start_logged(mut command: Command) -> (Child, String, Log) {
    let mut child = command.spawn().expect("spawn runtime");
    let log = Log::of(&mut child);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("runtime printed its address in time")
        .unwrap();
    let Some(line) = line else {
        panic!("runtime exited at start: {}", log.complete().await);
    };
    let base = line
        .strip_prefix("kodo listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, base, log)
}

/// `runtime spool --config CONFIG --name NAME` in `dir`, not started yet.
pub(crate) fn spool(config: &Path, dir: &Path, name: &str) -> Command {
    runtime(
        &[
            "spool",
            "--config",
            config.to_str().unwrap(),
            "--name",
            name,
        ],
        dir,
    )
}

/// Starts a `runtime spool` command and waits for its first line.
pub(crate) async fn start_spooler(mut command: Command) -> Child {
    let mut child = command.spawn().expect("spawn runtime spool");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("spool printed its first line in time")
        .unwrap()
        .unwrap_or_default();
    assert!(line.starts_with("kodo spooling"), "{line:?}");
    child
}

/// Sends `signal` (`TERM`, `STOP`, `CONT`) to process `pid`, as `kill` does.
pub(crate) async fn signal(pid: u32, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
}

/// `redis-cli ARGS` on the Redis at `redis_url`; its output, trimmed.
pub(crate) fn redis_cli(redis_url: &str, args: &[&str]) -> String {
    let port = redis_url.rsplit(':').next().unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", port])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Sends SIGTERM (as `kill` does) and returns the exit code.
pub(crate) async fn terminate(child: &mut Child) -> i32 {
    signal(child.id().expect("still running"), "TERM").await;
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("runtime exited in time")
        .unwrap()
        .code()
        .unwrap_or(-1)
}

/// Runs `command` to its end, checks that it exits with `code`, and
/// returns its stderr.
pub(crate) async fn exits_with(command: &mut Command, code: i32) -> String {
    let out = command.output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{:?}: {err}",
        command.as_std()
    );
    err
}

/// `POST path` with `body`, expecting success: the JSON body.
pub(crate) async fn post(base: &str, path: &str, body: Value) -> Value {
    let (code, body) = post_any(base, path, body).await;
    assert!((200..300).contains(&code), "{path}: {code} {body}");
    body
}

/// `POST path` with `body`: the status code and JSON body (null if none).
pub(crate) async fn post_any(base: &str, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or_default(),
    )
}

/// Launches `flow` with no inputs; its fid.
pub(crate) async fn launch(base: &str, flow: &str) -> String {
    post(base, &format!("/flows/{flow}/executions"), json!({})).await["fid"]
        .as_str()
        .expect("a fid")
        .to_string()
}

pub(crate) async fn get(base: &str, path: &str) -> Value {
    reqwest::get(format!("{base}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Reads an execution's stream until its text contains `needle` (or it ends).
pub(crate) async fn stream_until(base: &str, fid: &str, needle: &str) -> String {
    let mut resp = reqwest::get(format!("{base}/executions/{fid}/stream"))
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(DEADLINE, async {
        while !text.contains(needle) {
            match resp.chunk().await.unwrap() {
                Some(b) => text.push_str(&String::from_utf8_lossy(&b)),
                None => break,
            }
        }
    })
    .await
    .expect("stream reached what was awaited");
    assert!(
        text.contains(needle),
        "stream ended without {needle:?}: {text}"
    );
    text
}

/// Waits until `check` gives a value, asking every `every`; fails naming
/// `what` after `within`.
pub(crate) async fn until<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < within, "{what}");
        tokio::time::sleep(every).await;
    }
}

/// A 127.0.0.1 port nothing listens on (bound, then let go).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("kodo.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) const WAITING_FLOW: &str = r#"
[flows.waits]
command = ["sh", "-c", "read -r x; echo started; echo '{\"kind\":\"lock\",\"name\":\"go\"}' >&3; read -r answer; echo \"$answer\""]
"#;

pub(crate) async fn launch_waiting(base: &str) -> String {
    let fid = launch(base, "waits").await;
    // Its stdout and its fd 3 are read apart: wait for both lines.
    stream_until(base, &fid, "event: lock").await;
    stream_until(base, &fid, "data: \"started\"").await;
    fid
}

/// A server of one test (`scripts/redis` or `scripts/temporal`), in its own
/// folder, stopped when dropped (also when the test fails).
pub(crate) struct ScriptServer {
    script: &'static str,
    dir: std::path::PathBuf,
    /// Its URL (Redis) or address (Temporal).
    pub(crate) url: String,
}

impl ScriptServer {
    /// Starts `scripts/SCRIPT start DIR/SCRIPT`.
    pub(crate) fn start(script: &'static str, dir: &Path) -> Self {
        let dir = dir.join(script);
        let url = server_script(script, "start", &dir);
        Self { script, dir, url }
    }

    /// A Redis server.
    pub(crate) fn redis(dir: &Path) -> Self {
        Self::start("redis", dir)
    }

    /// Runs `scripts/SCRIPT CMD DIR` on this server (`stop`, `kill`, `start`).
    pub(crate) fn run(&self, cmd: &str) -> String {
        server_script(self.script, cmd, &self.dir)
    }
}

impl Drop for ScriptServer {
    fn drop(&mut self) {
        server_script(self.script, "stop", &self.dir);
    }
}

/// Runs `scripts/SCRIPT CMD DIR` and returns its output (the URL for `start`).
fn server_script(script: &str, cmd: &str, dir: &Path) -> String {
    let path = format!("{}/../scripts/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(path)
        .args([cmd, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/{script} {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Holds the write lock of the SQLite database in `dir` (an open exclusive
/// transaction) until the returned connection is rolled back or dropped:
/// every store write waits meanwhile.
pub(crate) async fn hold_store_writes(dir: &Path) -> sqlx::SqliteConnection {
    let db = format!("sqlite://{}", dir.join("kodo.db").display());
    let mut lock = <sqlx::SqliteConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    sqlx::Executor::execute(&mut lock, "BEGIN EXCLUSIVE")
        .await
        .unwrap();
    lock
}

/// The payloads of the `kind` events among `events` (as the API lists them).
#[allow(dead_code)]
pub(crate) fn payloads<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .map(|e| &e["payload"])
        .collect()
}

/// The payloads of the `stdout` events among `events` (as the API lists them).
pub(crate) fn stdout_lines(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["kind"] == "stdout")
        .map(|e| e["payload"].as_str().unwrap().to_string())
        .collect()
}

/// The stored events of `fid`, through the API at `base`.
pub(crate) async fn events(base: &str, fid: &str) -> Vec<Value> {
    let answer = get(base, &format!("/executions/{fid}/events?limit=10000")).await;
    match answer["events"].as_array() {
        Some(events) => events.clone(),
        None => panic!("no events of {fid}: {answer}"),
    }
}

/// Waits (up to `within`) until `done` holds for the stored events.
pub(crate) async fn events_until(
    base: &str,
    fid: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let path = format!("/executions/{fid}/events?limit=10000");
        // A busy store may answer 503 for a while: asked again.
        let answer = get(base, &path).await;
        let events = answer["events"].as_array().cloned().unwrap_or_default();
        if done(&events) {
            return events;
        }
        assert!(
            start.elapsed() < within,
            "not reached in {within:?}: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The lid of the first lock among `events`.
pub(crate) fn lock_id(events: &[Value]) -> String {
    let lock = events.iter().find(|e| e["kind"] == "lock").expect("a lock");
    lock["payload"]["lid"].as_str().unwrap().to_string()
}

/// Seqs 1..=n without a gap, one final status and it is the last event.
pub(crate) fn check_log(events: &[Value]) -> String {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let finals: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["kind"] == "status"
                && ["finished", "error", "killed"].contains(&e["payload"].as_str().unwrap())
        })
        .collect();
    assert_eq!(finals.len(), 1, "one final status");
    assert_eq!(
        finals[0],
        events.last().unwrap(),
        "the final status is last"
    );
    finals[0]["payload"].as_str().unwrap().to_string()
}

/// Whether the final status is stored, and every event before it: with
/// spoolers in several processes a later batch (the end) may be committed
/// before an earlier one.
pub(crate) fn ended(events: &[Value]) -> bool {
    let last = events.last().is_some_and(|e| {
        e["kind"] == "status"
            && ["finished", "error", "killed"].contains(&e["payload"].as_str().unwrap())
    });
    last && whole(events)
}

/// Whether `events` are seqs 1, 2, 3... with no gap: with several
/// spoolers, a running execution's later events can be stored before an
/// earlier one is.
#[allow(dead_code)]
pub(crate) fn whole(events: &[Value]) -> bool {
    events
        .iter()
        .enumerate()
        .all(|(i, e)| e["seq"].as_u64() == Some(i as u64 + 1))
}

/// The payload of the last `status` event.
pub(crate) fn last_status(events: &[Value]) -> Option<&str> {
    events
        .iter()
        .rev()
        .find(|e| e["kind"] == "status")
        .and_then(|e| e["payload"].as_str())
}

/// A new, empty database on the tests' PostgreSQL server (`scripts/test`
/// starts it and names it in `KODO_TEST_PG_URL`); its URL.
pub(crate) async fn fresh_pg_database() -> String {
    use sqlx::{Connection, Executor};
    let server = std::env::var("KODO_TEST_PG_URL").expect(
        "KODO_TEST_PG_URL is not set: these tests need PostgreSQL; run them with scripts/test",
    );
    let name = format!("kodo_test_{}_{}", std::process::id(), free_port());
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    admin.close().await.unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}
