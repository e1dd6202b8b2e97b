//! Durable mode as a user runs it: `runtime run` nodes and `runtime
//! temporal-worker` processes against a real Temporal dev server
//! (`KODO_TEST_TEMPORAL_ADDRESS`, from `scripts/test`) and a real Redis;
//! workers SIGKILLed; Temporal unreachable, or stopped mid-run.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

fn temporal_address() -> String {
    std::env::var("KODO_TEST_TEMPORAL_ADDRESS")
        .expect("scripts/test starts Temporal; or set KODO_TEST_TEMPORAL_ADDRESS=HOST:PORT")
}

/// A fresh name (task queues and key prefixes of one test).
fn fresh(what: &str) -> String {
    format!("{what}-{}-{}", std::process::id(), free_port())
}

/// Starts `runtime temporal-worker` as node `name`; waits for its first line.
async fn start_worker(config: &Path, dir: &Path, name: &str) -> (Child, Log) {
    let mut cmd = runtime(
        &["temporal-worker", "--config", config.to_str().unwrap()],
        dir,
    );
    cmd.env("KODO_NODE_NAME", name);
    let mut child = cmd.spawn().expect("spawn worker");
    let log = Log::of(&mut child);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the worker started in time")
        .unwrap();
    let Some(line) = line else {
        panic!("worker {name} exited at start: {}", log.complete().await);
    };
    assert!(line.starts_with("kodo temporal worker on "), "{line}");
    (child, log)
}

/// Process `pid`'s name and the fields of /proc/PID/stat after it (state,
/// ppid, ...); the name may hold spaces and parentheses, not the last `)`.
fn stat_of(pid: u32) -> Option<(String, Vec<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, after) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    Some((comm, after.split_whitespace().map(String::from).collect()))
}

/// The pids of `sh` processes whose parent is `pid` (from /proc): a
/// worker's flows (its watchdog is a child too, but not a shell).
fn shells_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Some((comm, fields)) = stat_of(child) else {
            continue;
        };
        let ppid = fields.get(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) && comm == "sh" {
            children.push(child);
        }
    }
    children
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_is_taken_over_and_no_line_is_lost_or_reused() {
    let dir = tempfile::tempdir().unwrap();
    let Running {
        redis,
        prefix,
        base,
        mut a,
        mut b,
        fid,
        _node: _node_runs_on,
    } = chatty_on_two_workers(dir.path(), 4, 3).await;
    // Kill the worker whose process runs the flow (the flow's shell is its child).
    let running_on_a = !shells_of(a.id().unwrap()).is_empty();
    assert_ne!(
        running_on_a,
        !shells_of(b.id().unwrap()).is_empty(),
        "one worker runs it"
    );
    let (lost, lost_name) = if running_on_a {
        (&mut a, "worker-a")
    } else {
        (&mut b, "worker-b")
    };
    // Hold every store write (an exclusive lock on the SQLite file) until the
    // lost worker's spoolers hold some of its lines unacknowledged, so that
    // they are stored only once another spooler claims them: after
    // `claim_idle`, later than the retry starts.
    let mut lock = hold_store_writes(dir.path()).await;
    let start = Instant::now();
    while pending_at(&redis.url, &prefix, lost_name).await == 0 {
        assert!(
            start.elapsed() < DEADLINE,
            "the lost worker never held a line"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lost.start_kill().unwrap();
    lost.wait().await.unwrap();
    sqlx::Executor::execute(&mut lock, "ROLLBACK")
        .await
        .unwrap();
    let killed_at = Instant::now();
    // What the lost attempt had published: its entries in Redis, all added
    // before the kill (the other worker's come later). A spooler of the lost
    // worker may have held some of them: claimed only after `claim_idle`,
    // which is longer than the heartbeat timeout, so the retry must wait.
    let published = published_lines(&redis.url, &prefix, &fid).await;
    let all = events_until(&base, &fid, Duration::from_secs(60), |e| {
        ended(e) && e.iter().any(|e| e["kind"] == "debug")
    })
    .await;
    eprintln!(
        "the execution ended {:?} after the kill",
        killed_at.elapsed()
    );
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=all.len() as u64).collect::<Vec<_>>(),
        "no gap, no reuse"
    );
    assert_eq!(all.last().unwrap()["payload"], "finished");
    let marker = all.iter().position(|e| e["kind"] == "debug").unwrap();
    let note = all[marker]["payload"].as_str().unwrap();
    assert!(note.starts_with("attempt 2 of 3:"), "{note}");
    assert_eq!(
        all[marker + 1]["payload"],
        "running",
        "status back to running"
    );
    let first = stdout_lines(&all[..marker]);
    let expected = |n: usize| (1..=n).map(|i| format!("line {i}")).collect::<Vec<_>>();
    assert!(first.len() >= 5);
    assert_eq!(
        first,
        expected(first.len()),
        "the first attempt's lines, each once, in order"
    );
    assert_eq!(
        first, published,
        "every line the lost attempt published is stored"
    );
    assert_eq!(
        stdout_lines(&all[marker..]),
        expected(30),
        "the retry ran the flow again, whole"
    );
    let row = get(&base, &format!("/executions/{fid}")).await;
    assert_eq!(row["status"], "finished", "{row}");
}

/// A connection to the Redis at `url`, and the event streams of `prefix`.
async fn streams(url: &str, prefix: &str) -> (redis::aio::MultiplexedConnection, Vec<String>) {
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:events:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    (conn, keys)
}

/// An `XPENDING key group` summary: count, first and last id, and the
/// count held by each consumer.
type PendingSummary = (usize, Option<String>, Option<String>, Vec<(String, String)>);

/// Entries the consumers of node `node` hold unacknowledged, in all streams.
async fn pending_at(url: &str, prefix: &str, node: &str) -> usize {
    let (mut conn, keys) = streams(url, prefix).await;
    let mut held = 0;
    for key in keys {
        // XPENDING key group: [count, first, last, [[consumer, count]...]].
        let (_, _, _, consumers): PendingSummary = redis::cmd("XPENDING")
            .arg(&key)
            .arg("spoolers")
            .query_async(&mut conn)
            .await
            .unwrap();
        held += consumers
            .iter()
            .filter(|(name, _)| name.starts_with(&format!("{node}-")))
            .map(|(_, n)| n.parse::<usize>().unwrap())
            .sum::<usize>();
    }
    held
}

/// The `stdout` lines of execution `fid` in the Redis streams, in seq order.
async fn published_lines(url: &str, prefix: &str, fid: &str) -> Vec<String> {
    let (mut conn, keys) = streams(url, prefix).await;
    let mut lines = Vec::new();
    for key in keys {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for (_, fields) in entries {
            if !fields.iter().any(|(k, v)| k == "fid" && v == fid) {
                continue;
            }
            for (seq, value) in fields.iter().filter(|(k, _)| k != "fid") {
                let mut parts = value.splitn(3, ' ');
                let (_, kind, payload) = (parts.next(), parts.next(), parts.next());
                if kind == Some("stdout") {
                    let line: String = serde_json::from_str(payload.unwrap()).unwrap();
                    lines.push((seq.parse::<u64>().unwrap(), line));
                }
            }
        }
    }
    lines.sort();
    lines.into_iter().map(|(_, line)| line).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporal_unreachable_or_an_unknown_namespace_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!("[execution]\nmode = \"temporal\"\n[temporal]\naddress = \"127.0.0.1:{port}\"\n"),
    );
    let err = exits_with(&mut run(&config, dir.path()), 1).await;
    assert!(
        err.contains(&format!("temporal at 127.0.0.1:{port}")),
        "{err}"
    );

    let config = write_config(
        dir.path(),
        &format!(
            "[execution]\nmode = \"temporal\"\n[temporal]\naddress = \"{}\"\nnamespace = \"no-such-namespace\"\n",
            temporal_address()
        ),
    );
    let err = exits_with(&mut run(&config, dir.path()), 1).await;
    assert!(
        err.contains("namespace `no-such-namespace` not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_temporal_is_down_launches_answer_503_and_health_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let temporal = ScriptServer::start("temporal", dir.path());
    let config = on_own_temporal(
        dir.path(),
        &temporal,
        "[flows.quick]\ncommand = [\"sh\", \"-c\", \"read -r x; echo done\"]\n\
         [flows.here]\ncommand = [\"sh\", \"-c\", \"read -r x; echo done\"]\nmode = \"direct\"\n",
    );
    let (_node, base) = start(&config, dir.path()).await;
    let fid = launch(&base, "quick").await;
    events_until(&base, &fid, DEADLINE, ended).await;
    temporal.run("stop");
    let durable = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{base}/flows/quick/executions"))
            .json(&json!({}))
            .send(),
    );
    // While that launch waits on Temporal, the node launches a direct
    // flow: the start of a workflow does not hold its supervisor.
    let here = post(&base, "/flows/here/executions", json!({})).await;
    assert_eq!(here["stored"], true, "{here}");
    assert!(
        !durable.is_finished(),
        "Temporal answered a refused connection at once?"
    );
    let resp = durable.await.unwrap().unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("temporal at"),
        "{body}"
    );
    let health = reqwest::get(format!("{base}/health")).await.unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["temporal"]["ok"], false, "{health}");
    let listed = get(&base, "/executions").await;
    assert_eq!(
        listed["executions"].as_array().unwrap().len(),
        2,
        "nothing half-started (the first durable one and the direct one): {listed}"
    );
}

/// Whether Redis got an entry of `fid`'s attempt `attempt` after `since_ms`
/// (milliseconds since the epoch).
async fn published_after(
    url: &str,
    prefix: &str,
    fid: &str,
    attempt: &str,
    since_ms: u128,
) -> bool {
    let (mut conn, keys) = streams(url, prefix).await;
    for key in keys {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&key)
            .arg(since_ms.to_string())
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        if entries.iter().any(|(_, fields)| {
            fields.iter().any(|(k, v)| k == "fid" && v == fid)
                && fields.iter().any(|(k, v)| k == "attempt" && v == attempt)
        }) {
            return true;
        }
    }
    false
}

/// Entries not yet acknowledged by the spoolers, in all streams.
async fn backlog(url: &str, prefix: &str) -> usize {
    let (mut conn, keys) = streams(url, prefix).await;
    let mut left = 0;
    for key in keys {
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        left += groups
            .groups
            .iter()
            .map(|g| g.pending + g.lag.unwrap_or(0))
            .sum::<usize>();
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_that_wakes_after_its_retry_began_is_fenced_off() {
    let dir = tempfile::tempdir().unwrap();
    // (10 attempts: a frozen worker's outstanding task polls can still be
    // handed a retry, which is then lost too, after another timeout.)
    let Running {
        redis,
        prefix,
        base,
        a,
        b,
        fid,
        _node: _node_runs_on,
    } = chatty_on_two_workers(dir.path(), 1, 10).await;
    let (a, b) = (a.id().unwrap(), b.id().unwrap());
    let frozen = if shells_of(a).is_empty() { b } else { a };
    assert!(!shells_of(frozen).is_empty(), "one worker runs it");
    // Frozen: its flow's shell runs on and fills the pipe nobody reads.
    signal(frozen, "STOP").await;
    // The retry begins elsewhere; wake the frozen one while it runs. (If
    // the frozen worker was stopped inside a store write, it holds SQLite's
    // write lock: the retry cannot fence before it wakes. Then wake it after
    // a while: its late events come before the retry's marker, or not at all.)
    let retry_runs = |e: &[Value]| {
        e.iter()
            .position(|e| e["kind"] == "debug")
            .is_some_and(|marker| stdout_lines(&e[marker..]).len() >= 2)
    };
    let stopped_at = Instant::now();
    while !retry_runs(&events(&base, &fid).await) && stopped_at.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let woken_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    signal(frozen, "CONT").await;
    // The woken attempt publishes what it had read and reads now...
    let start = Instant::now();
    while !published_after(&redis.url, &prefix, &fid, "1", woken_ms).await {
        assert!(
            start.elapsed() < DEADLINE,
            "the woken worker published nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = events_until(&base, &fid, Duration::from_secs(60), ended).await;
    assert_eq!(all.last().unwrap()["payload"], "finished");
    // ...and once every entry is consumed, none of it is stored.
    while backlog(&redis.url, &prefix).await > 0 {
        assert!(start.elapsed() < DEADLINE, "entries left unconsumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (An event the woken attempt published before the retry began may be
    // stored late, in its hole below the retry's marker: nothing else.)
    let after = events(&base, &fid).await;
    assert!(
        all.iter().all(|e| after.contains(e)),
        "what was stored stays"
    );
    let seqs: Vec<u64> = after.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=after.len() as u64).collect::<Vec<_>>());
    let marker = after.iter().position(|e| e["kind"] == "debug").unwrap();
    for late in after.iter().filter(|e| !all.contains(e)) {
        assert!(
            late["seq"].as_u64() < after[marker]["seq"].as_u64(),
            "only holes below the retry's marker are filled late: {late}"
        );
    }
    let expected: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
    assert_eq!(
        stdout_lines(&after[marker..]),
        expected,
        "only the retry's lines after its marker"
    );
}

/// Redis, a node without a worker, and two worker processes running
/// `chatty`, 5 of whose lines are stored.
struct Running {
    redis: ScriptServer,
    prefix: String,
    _node: Child,
    base: String,
    a: Child,
    b: Child,
    fid: String,
}

async fn chatty_on_two_workers(dir: &Path, claim_idle: u32, attempts: u32) -> Running {
    let redis = ScriptServer::redis(dir);
    let prefix = fresh("durable");
    let config = on_redis(
        dir,
        &redis,
        &prefix,
        &format!("attempts = {attempts}\n"),
        &format!("claim_idle = {claim_idle}\n"),
    );
    let (node, base) = start(&config, dir).await;
    let (a, _) = start_worker(&config, dir, "worker-a").await;
    let (b, _) = start_worker(&config, dir, "worker-b").await;
    let fid = launch(&base, "chatty").await;
    events_until(&base, &fid, DEADLINE, |e| stdout_lines(e).len() >= 5).await;
    Running {
        redis,
        prefix,
        _node: node,
        base,
        a,
        b,
        fid,
    }
}

/// A config of durable mode whose nodes host no worker and share the Redis
/// `redis` under key prefix `prefix`: `temporal` adds `[temporal]` keys,
/// `transport` `[transport]` keys. Their lease (cluster mode) is long: a
/// worker a test freezes for a while stays a member (one frozen past its
/// lease is fenced off whole: `cluster.rs`).
fn on_redis(
    dir: &Path,
    redis: &ScriptServer,
    prefix: &str,
    temporal: &str,
    transport: &str,
) -> std::path::PathBuf {
    durable_config(
        dir,
        &format!(
            "{temporal}worker = false\n[transport]\nkind = \"redis\"\nurl = \"{}\"\n\
             prefix = \"{prefix}\"\nblock = 0.1\n{transport}\n[cluster]\nlease = 120\n",
            redis.url
        ),
    )
}

/// A config of durable mode on the test's own Temporal server `temporal`
/// and task queue; `rest` follows the `[temporal]` keys.
fn on_own_temporal(dir: &Path, temporal: &ScriptServer, rest: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[execution]\nmode = \"temporal\"\n[temporal]\naddress = \"{}\"\ntask_queue = \"{}\"\n{rest}",
            temporal.url,
            fresh("queue")
        ),
    )
}

/// A config of durable mode on this test's own task queue, with `extra`.
fn durable_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[execution]\nmode = \"temporal\"\n[temporal]\naddress = \"{}\"\ntask_queue = \"{}\"\n\
             heartbeat_timeout = 2\n{extra}\n[flows.chatty]\ncommand = [\"sh\", \"-c\", \
             \"read -r x; i=1; while [ $i -le 30 ]; do echo \\\"line $i\\\"; i=$((i+1)); sleep 0.1; done\"]\n",
            temporal_address(),
            fresh("queue"),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_run_does_not_close_its_durable_execution_which_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = durable_config(dir.path(), "attempts = 3");
    let (mut node, base) = start(&config, dir.path()).await;
    let fid = launch(&base, "chatty").await;
    events_until(&base, &fid, DEADLINE, |e| stdout_lines(e).len() >= 5).await;
    node.start_kill().unwrap();
    node.wait().await.unwrap();
    // The same node again: it closes nothing durable; its worker takes the
    // attempt over once the heartbeat timeout passed.
    let (_node, base) = start(&config, dir.path()).await;
    let all = events_until(&base, &fid, Duration::from_secs(60), ended).await;
    assert_eq!(all.last().unwrap()["payload"], "finished", "{all:?}");
    assert!(
        !all.iter().any(|e| e["payload"] == "node restarted"),
        "a node's restart does not close a durable execution"
    );
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    let marker = all.iter().position(|e| e["kind"] == "debug").unwrap();
    let expected: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout_lines(&all[marker..]), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_last_attempt_is_lost_the_execution_ends_in_error_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let redis = ScriptServer::redis(dir.path());
    // Workers in processes of their own: the nodes hear of their commits
    // through Redis.
    let config = on_redis(dir.path(), &redis, &fresh("last"), "attempts = 1\n", "");
    let (_node, base) = start(&config, dir.path()).await;
    let (mut a, _) = start_worker(&config, dir.path(), "worker-a").await;
    let fid = launch(&base, "chatty").await;
    events_until(&base, &fid, DEADLINE, |e| stdout_lines(e).len() >= 3).await;
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    // Another worker records the end: there is no attempt left.
    let (_b, _) = start_worker(&config, dir.path(), "worker-b").await;
    let all = events_until(&base, &fid, Duration::from_secs(60), ended).await;
    assert_eq!(all.last().unwrap()["payload"], "error", "{all:?}");
    let error = all.iter().rev().find(|e| e["kind"] == "error").unwrap();
    let why = error["payload"].as_str().unwrap();
    assert!(
        why.starts_with("the execution could not go on (1 attempt(s) allowed):"),
        "{why}"
    );
    assert!(!all.iter().any(|e| e["kind"] == "debug"), "never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_through_a_node_that_did_not_launch_it_ends_it_killed() {
    let dir = tempfile::tempdir().unwrap();
    let redis = ScriptServer::redis(dir.path());
    let config = on_redis(dir.path(), &redis, &fresh("kill"), "", "");
    let (_a, base_a) = start(&config, dir.path()).await;
    let mut other = run(&config, dir.path());
    other.env("KODO_NODE_NAME", "node-b");
    let (_b, base_b, _) = start_logged(other).await;
    let (_worker, _) = start_worker(&config, dir.path(), "worker-w").await;
    let fid = launch(&base_a, "chatty").await;
    events_until(&base_a, &fid, DEADLINE, |e| !stdout_lines(e).is_empty()).await;
    let killed = post(&base_b, &format!("/executions/{fid}/kill"), json!({})).await;
    assert_eq!(killed["killing"], true, "{killed}");
    let all = events_until(&base_b, &fid, DEADLINE, ended).await;
    assert_eq!(all.last().unwrap()["payload"], "killed", "{all:?}");
    let error = all.iter().rev().find(|e| e["kind"] == "error").unwrap();
    assert_eq!(error["payload"], "killed: by local");
    assert!(stdout_lines(&all).len() < 30, "killed before its end");
}

/// The state letter of process `pid` (`S` sleeping, `R` running, `T`
/// stopped, ...), from /proc.
fn process_state(pid: u32) -> Option<char> {
    stat_of(pid)?.1.first()?.chars().next()
}

/// Two nodes and a worker process over Redis; `extra` adds flows.
struct TwoNodes {
    _redis: ScriptServer,
    config: std::path::PathBuf,
    a: Child,
    base_a: String,
    _b: Child,
    base_b: String,
}

async fn two_nodes(dir: &Path, extra: &str) -> TwoNodes {
    let redis = ScriptServer::redis(dir);
    let config = on_redis(
        dir,
        &redis,
        &fresh("two"),
        "attempts = 3\n",
        &format!("claim_idle = 1\n{extra}"),
    );
    let (a, base_a) = start(&config, dir).await;
    let mut other = run(&config, dir);
    other.env("KODO_NODE_NAME", "node-b");
    let (b, base_b, _) = start_logged(other).await;
    TwoNodes {
        _redis: redis,
        config,
        a,
        base_a,
        _b: b,
        base_b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_through_another_node_stops_the_flows_processes_and_resume_continues_them() {
    let dir = tempfile::tempdir().unwrap();
    let ticker = "[flows.ticker]\ncommand = [\"sh\", \"-c\", \
                  \"read -r x; i=1; while true; do echo \\\"tick $i\\\"; i=$((i+1)); sleep 0.05; done\"]\n";
    let nodes = two_nodes(dir.path(), ticker).await;
    let (worker, _) = start_worker(&nodes.config, dir.path(), "worker-w").await;
    let fid = launch(&nodes.base_a, "ticker").await;
    events_until(&nodes.base_b, &fid, DEADLINE, |e| {
        stdout_lines(e).len() >= 3
    })
    .await;
    let shell = shells_of(worker.id().unwrap());
    assert_eq!(shell.len(), 1, "the flow's shell: {shell:?}");

    // Paused through the node that did not launch it, run by a third process.
    let (code, body) = post_any(
        &nodes.base_b,
        &format!("/executions/{fid}/pause"),
        json!({}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    events_until(&nodes.base_b, &fid, DEADLINE, |e| {
        last_status(e) == Some("paused")
    })
    .await;
    assert_eq!(
        process_state(shell[0]),
        Some('T'),
        "the flow's process is stopped"
    );
    // What was in the pipe as it stopped is stored; then nothing.
    let window = Duration::from_millis(1000);
    tokio::time::sleep(window).await;
    let before = stdout_lines(&events(&nodes.base_b, &fid).await).len();
    tokio::time::sleep(window).await;
    let after = stdout_lines(&events(&nodes.base_b, &fid).await).len();
    assert_eq!(before, after, "no line while paused");

    let (code, body) = post_any(
        &nodes.base_a,
        &format!("/executions/{fid}/resume"),
        json!({}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let resumed = events_until(&nodes.base_b, &fid, DEADLINE, |e| {
        stdout_lines(e).len() >= after + 3
    })
    .await;
    assert_eq!(last_status(&resumed), Some("running"));
    let lines = stdout_lines(&resumed);
    let expected: Vec<String> = (1..=lines.len()).map(|i| format!("tick {i}")).collect();
    assert_eq!(lines, expected, "it went on where it stopped");

    // Paused again, then killed while paused: `killed`, and its processes are gone.
    post(
        &nodes.base_b,
        &format!("/executions/{fid}/pause"),
        json!({}),
    )
    .await;
    events_until(&nodes.base_b, &fid, DEADLINE, |e| {
        last_status(e) == Some("paused")
    })
    .await;
    let killed = post(&nodes.base_b, &format!("/executions/{fid}/kill"), json!({})).await;
    assert_eq!(killed["killing"], true, "{killed}");
    let all = events_until(&nodes.base_a, &fid, DEADLINE, ended).await;
    assert_eq!(last_status(&all), Some("killed"), "{all:?}");
    let start = Instant::now();
    while process_state(shell[0]).is_some_and(|s| s != 'Z') {
        assert!(
            start.elapsed() < DEADLINE,
            "the paused flow's shell outlived its kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_locks_are_answered_through_any_node_outlive_their_worker_and_launcher_and_expire()
{
    let dir = tempfile::tempdir().unwrap();
    let asks = "[flows.asks]\ncommand = [\"sh\", \"-c\", \
                \"read -r x; \
                  echo '{\\\"kind\\\":\\\"lock\\\",\\\"name\\\":\\\"first\\\"}' >&3; read -r a; echo \\\"first $a\\\"; \
                  echo '{\\\"kind\\\":\\\"lock\\\",\\\"name\\\":\\\"second\\\"}' >&3; read -r a; echo \\\"second $a\\\"; \
                  echo '{\\\"kind\\\":\\\"lock\\\",\\\"name\\\":\\\"third\\\",\\\"timeout\\\":1}' >&3; read -r a; echo \\\"third $a\\\"\"]\n";
    let mut nodes = two_nodes(dir.path(), asks).await;
    let (mut w1, _) = start_worker(&nodes.config, dir.path(), "worker-1").await;
    let fid = launch(&nodes.base_a, "asks").await;
    let locks = |n: usize| move |e: &[Value]| e.iter().filter(|e| e["kind"] == "lock").count() >= n;
    events_until(&nodes.base_b, &fid, DEADLINE, locks(1)).await;
    let answer = |base: String, n: u32, answer: &'static str| {
        let path = format!("/executions/{fid}/locks/{fid}-{n}");
        async move { post_any(&base, &path, json!({ "answer": answer })).await }
    };
    // Answered through the node that did not launch it.
    let (code, body) = answer(nodes.base_b.clone(), 1, "one").await;
    assert_eq!(code, 200, "{body}");
    events_until(&nodes.base_b, &fid, DEADLINE, locks(2)).await;

    // The worker that opened the second lock dies, and so does the node
    // that launched the execution; the answer is given meanwhile, through
    // that node restarted.
    w1.start_kill().unwrap();
    w1.wait().await.unwrap();
    nodes.a.start_kill().unwrap();
    nodes.a.wait().await.unwrap();
    let (_a, base_a) = start(&nodes.config, dir.path()).await;
    let (code, body) = answer(base_a.clone(), 2, "two").await;
    assert_eq!(code, 200, "answered while no attempt runs: {body}");

    // The retry runs the flow again: its first two locks are the same
    // locks, answered; the third expires by the workflow's timer.
    let (_w2, _) = start_worker(&nodes.config, dir.path(), "worker-2").await;
    let all = events_until(&base_a, &fid, Duration::from_secs(60), ended).await;
    assert_eq!(last_status(&all), Some("finished"), "{all:?}");
    let marker = all
        .iter()
        .position(|e| e["kind"] == "debug")
        .expect("a retry marker");
    let lines = stdout_lines(&all[marker..]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let expect = [
        ("first ", "\"answer\":\"one\""),
        ("second ", "\"answer\":\"two\""),
        ("third ", "\"error\":\"expired\""),
    ];
    for (line, (start, has)) in lines.iter().zip(expect) {
        assert!(line.starts_with(start) && line.contains(has), "{line}");
    }
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    let (code, body) = answer(base_a, 2, "late").await;
    assert_eq!(code, 409, "the execution ended: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_goes_on_through_a_temporal_restart_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let temporal = ScriptServer::start("temporal", dir.path());
    let config = on_own_temporal(
        dir.path(),
        &temporal,
        "heartbeat_timeout = 5\n[flows.chatty]\ncommand = [\"sh\", \"-c\", \
         \"read -r x; i=1; while [ $i -le 40 ]; do echo \\\"line $i\\\"; i=$((i+1)); sleep 0.1; done\"]\n",
    );
    let (_node, base) = start(&config, dir.path()).await;
    let fid = launch(&base, "chatty").await;
    events_until(&base, &fid, DEADLINE, |e| stdout_lines(e).len() >= 5).await;
    // A crash of Temporal mid-run; back on the same port with its state.
    temporal.run("kill");
    let during = stdout_lines(&events(&base, &fid).await).len();
    temporal.run("start");
    let all = events_until(&base, &fid, Duration::from_secs(90), ended).await;
    assert_eq!(last_status(&all), Some("finished"), "{all:?}");
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());
    // Whether or not the attempt outlived the outage, every line is stored
    // once after the last start of the flow.
    let marker = all
        .iter()
        .rposition(|e| e["kind"] == "debug")
        .map_or(0, |m| m);
    let expected: Vec<String> = (1..=40).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout_lines(&all[marker..]), expected);
    assert!(during < 40, "Temporal was down mid-run");
}
