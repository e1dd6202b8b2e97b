//! The `runtime` binary under faults a user meets: a full disk, a second
//! node started by mistake on the same store.

mod common;

use common::*;
use serde_json::{Value, json};
use sqlx::{ConnectOptions, Connection};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A small tmpfs mounted for one test (the tests run as root); unmounted
/// when dropped, also when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir.to_path_buf())
    }

    /// Writes a filler file until the filesystem is full.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in [1 << 20, 4096, 1] {
            let bytes = vec![0u8; chunk];
            while file.write_all(&bytes).is_ok() {}
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Checkpoints the WAL into the database and truncates it, so the next
/// write must grow it (on a full disk: SQLITE_FULL).
async fn truncate_wal(db: &Path) {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .busy_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let (busy, log, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            if busy == 0 && log == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the WAL was truncated");
    conn.close().await.unwrap();
}

/// A flow that prints 400 lines of 200 bytes, asks for a lock, then prints 400 more.
const LINES_FLOW: &str = r#"
[flows.lines]
command = ["sh", "-c", "read -r x; i=0; while [ $i -lt 400 ]; do printf '%0200d\n' $i; i=$((i+1)); done; echo '{\"kind\":\"lock\",\"name\":\"go\"}' >&3; read -r answer; while [ $i -lt 800 ]; do printf '%0200d\n' $i; i=$((i+1)); done"]
"#;

async fn request(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

/// Waits until `GET path` answers something `done` accepts; returns it.
async fn get_until(base: &str, path: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let (code, body) = request(reqwest::Method::GET, format!("{base}{path}"), None).await;
            if done(code, &body) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("GET {path} never showed what was awaited"))
}

/// Runs a command that must exit on its own; its output.
async fn exits(command: &mut tokio::process::Command) -> std::process::Output {
    tokio::time::timeout(DEADLINE, command.output())
        .await
        .expect("it exits by itself")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_nothing_shows_in_health_and_shutdown_says_what_is_unstored() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "40m");
    let db = dir.path().join("disk/kodo.db");
    let cfg = write_config(
        dir.path(),
        &format!("[limits]\nlaunch_wait = 1\nshutdown_wait = 3\n{LINES_FLOW}"),
    );
    let mut command = run(&cfg, dir.path());
    command.env("KODO_STORE_URL", format!("sqlite://{}", db.display()));
    let (mut node, base, log) = start_logged(command).await;

    let mut fids = Vec::new();
    for _ in 0..3 {
        let body = post(&base, "/flows/lines/executions", json!({})).await;
        fids.push(body["fid"].as_str().unwrap().to_string());
    }
    for fid in &fids {
        get_until(&base, &format!("/executions/{fid}"), |_, row| {
            row["status"] == "awaiting" && row["events"].as_u64() >= Some(400)
        })
        .await;
    }

    // The disk fills while the flows have 1200 lines left to write.
    truncate_wal(&db).await;
    let filler = disk.fill();
    for fid in &fids {
        let lid = lock_id(&events(&base, fid).await);
        let url = format!("{base}/executions/{fid}/locks/{lid}");
        let (code, _) = request(reqwest::Method::POST, url, Some(json!({"answer": 1}))).await;
        assert_eq!(code, 200);
    }
    let health = get_until(&base, "/health", |code, _| code == 503).await;
    let error = health["store"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("full"), "{health}");
    // A launch now cannot be stored: it says so, and the node still answers for it.
    let (code, body) = request(
        reqwest::Method::POST,
        format!("{base}/flows/lines/executions"),
        Some(json!({})),
    )
    .await;
    assert_eq!((code, &body["stored"]), (202, &json!(false)), "{body}");
    let late = body["fid"].as_str().unwrap().to_string();
    let (code, row) = request(
        reqwest::Method::GET,
        format!("{base}/executions/{late}"),
        None,
    )
    .await;
    assert_eq!((code, &row["status"]), (200, &json!("starting")), "{row}");

    // Space comes back: everything accepted is stored, every execution ends normally.
    std::fs::remove_file(&filler).unwrap();
    get_until(&base, "/health", |code, _| code == 200).await;
    for fid in &fids {
        get_until(&base, &format!("/executions/{fid}"), |_, row| {
            row["status"] == "finished"
        })
        .await;
        let events = events(&base, fid).await;
        assert_eq!(check_log(&events), "finished");
        let expected: Vec<String> = (0..800).map(|i| format!("{i:0200}")).collect();
        assert_eq!(
            stdout_lines(&events),
            expected,
            "{fid}: every line, once, in order"
        );
    }
    get_until(&base, &format!("/executions/{late}"), |_, row| {
        row["status"] == "awaiting"
    })
    .await;

    // Full again, and a shutdown: it cannot store the end of `late` and says so.
    truncate_wal(&db).await;
    let _filler = disk.fill();
    assert_eq!(terminate(&mut node).await, 1);
    let text = log.complete().await;
    assert!(text.contains("not every event is stored"), "{text}");
    let named = text.split(&format!("{late} (")).nth(1).is_some_and(|rest| {
        rest.split(')')
            .next()
            .unwrap_or("")
            .ends_with("events stored")
    });
    assert!(named, "the execution and what it lacks are named: {text}");
    assert!(!text.contains("every event is stored (checked"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_a_live_name_exits_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), WAITING_FLOW);
    let (mut first, base) = start(&cfg, dir.path()).await;
    let fid = launch_waiting(&base).await;
    let before = events(&base, &fid).await;

    // Same name, another port: refused before it touches any execution.
    let out = exits(&mut run(&cfg, dir.path())).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("node `local` is already running"), "{err}");
    assert!(
        err.contains(&format!("process {}", first.id().unwrap())),
        "{err}"
    );
    // Same port too: the port is taken first, and nothing changes either.
    let addr = base.strip_prefix("http://").unwrap();
    let out = exits(run(&cfg, dir.path()).env("KODO_API_LISTEN", addr)).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");

    assert_eq!(
        events(&base, &fid).await,
        before,
        "the first node's execution is untouched"
    );
    let lid = lock_id(&before);
    post(
        &base,
        &format!("/executions/{fid}/locks/{lid}"),
        json!({"answer": "go"}),
    )
    .await;
    stream_until(&base, &fid, "data: \"finished\"").await;
    assert_eq!(check_log(&events(&base, &fid).await), "finished");
    assert_eq!(terminate(&mut first).await, 0);

    // Once it is gone the name is free again.
    let (mut again, _) = start(&cfg, dir.path()).await;
    assert_eq!(terminate(&mut again).await, 0);
}

/// Whether process `pid` still runs (a zombie has ended).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}

/// The watchdog of `runtime`: its child that runs the same program (the
/// flows run `sh`).
fn watchdog_of(runtime: u32) -> u32 {
    let exe = std::fs::read_link(format!("/proc/{runtime}/exe")).unwrap();
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{runtime}/task")).unwrap() {
        let path = task.unwrap().path().join("children");
        let text = std::fs::read_to_string(path).unwrap_or_default();
        children.extend(text.split_whitespace().map(|p| p.parse::<u32>().unwrap()));
    }
    let watchdogs: Vec<u32> = children
        .into_iter()
        .filter(|&child| {
            alive(child) && std::fs::read_link(format!("/proc/{child}/exe")).is_ok_and(|e| e == exe)
        })
        .collect();
    assert_eq!(watchdogs.len(), 1, "one watchdog: {watchdogs:?}");
    watchdogs[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_takes_its_flow_processes_with_it() {
    let dir = tempfile::tempdir().unwrap();
    // The flow's shell starts a child of its own, in its process group.
    let cfg = write_config(
        dir.path(),
        r#"
[flows.family]
command = ["sh", "-c", "read -r x; sleep 1000 & echo \"pids $$ $!\"; echo '{\"kind\":\"lock\",\"name\":\"go\"}' >&3; wait"]
"#,
    );
    let (mut node, base) = start(&cfg, dir.path()).await;
    let runtime_pid = node.id().unwrap();
    let watchdog = watchdog_of(runtime_pid);
    let mut pids = Vec::new();
    for round in 0..3 {
        if round == 2 {
            // The watchdog dies: another is started, which watches the
            // earlier flows too.
            std::process::Command::new("kill")
                .args(["-KILL", &watchdog.to_string()])
                .status()
                .unwrap();
            tokio::time::timeout(DEADLINE, async {
                while alive(watchdog) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .expect("the watchdog died");
        }
        let fid = launch(&base, "family").await;
        let events = get_until(
            &base,
            &format!("/executions/{fid}/events?kinds=stdout"),
            |_, body| body["events"].as_array().is_some_and(|e| !e.is_empty()),
        )
        .await;
        let line = events["events"][0]["payload"].as_str().unwrap().to_string();
        pids.extend(
            line.split_whitespace()
                .skip(1)
                .map(|p| p.parse::<u32>().unwrap()),
        );
    }
    assert_eq!(pids.len(), 6);
    assert!(pids.iter().all(|&pid| alive(pid)), "{pids:?}");
    assert_ne!(watchdog_of(runtime_pid), watchdog, "a new watchdog runs");

    node.start_kill().unwrap();
    node.wait().await.unwrap();
    tokio::time::timeout(DEADLINE, async {
        while pids.iter().any(|&pid| alive(pid)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let left: Vec<_> = pids.iter().filter(|&&pid| alive(pid)).collect();
        panic!("flow processes outlived their node: {left:?}")
    });
}
