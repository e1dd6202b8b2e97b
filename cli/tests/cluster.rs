//! Cluster mode as a user runs it: several `runtime run` nodes and `runtime
//! spool` processes over one Redis and one PostgreSQL, each a real process.
//! Requests reach the node that runs an execution from any node; a node
//! that dies or freezes past its lease is taken over by a survivor.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The lease of the tests' nodes: short, so losses are seen quickly.
const LEASE: f64 = 2.0;

/// A flow that prints a numbered line every 20 ms until killed.
const TICKS_FLOW: &str = r#"
[flows.ticks]
command = ["sh", "-c", "read -r x; i=1; while true; do echo \"tick $i\"; i=$((i+1)); sleep 0.02; done"]
"#;

/// One Redis, one PostgreSQL database, one config; nodes and spoolers are
/// started from it, each with its own name.
struct Deployment {
    dir: PathBuf,
    redis: ScriptServer,
    config: PathBuf,
    store: String,
}

impl Deployment {
    async fn new(dir: &Path) -> Self {
        let redis = ScriptServer::redis(dir);
        let store = fresh_pg_database().await;
        let config = write_config(
            dir,
            &format!(
                "[transport]\nkind = \"redis\"\nurl = \"{}\"\nblock = 0.1\nclaim_idle = 1\n\
                 [spooler]\nenabled = false\n[cluster]\nlease = {LEASE}\n\
                 [limits]\nshutdown_wait = 10\n{WAITING_FLOW}{TICKS_FLOW}",
                redis.url
            ),
        );
        Self {
            dir: dir.to_path_buf(),
            redis,
            config,
            store,
        }
    }

    /// `runtime run` as node `name`, not started yet.
    fn node_command(&self, name: &str) -> Command {
        let mut cmd = run(&self.config, &self.dir);
        cmd.env("KODO_NODE_NAME", name)
            .env("KODO_STORE_URL", &self.store);
        cmd
    }

    /// Starts node `name`: its process, base URL and stderr.
    async fn node(&self, name: &str) -> (Child, String, Log) {
        start_logged(self.node_command(name)).await
    }

    /// Starts spooler process `name`.
    async fn spooler(&self, name: &str) -> Child {
        let mut cmd = spool(&self.config, &self.dir, name);
        cmd.env("KODO_STORE_URL", &self.store);
        start_spooler(cmd).await
    }
}

/// The nodes `GET /cluster` lists at `base`: name -> (live, api, running).
async fn members(base: &str) -> Vec<(String, bool, String, u64)> {
    let view = get(base, "/cluster").await;
    view["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("GET /cluster: {view}"))
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["live"].as_bool().unwrap(),
                n["api"].as_str().unwrap().to_string(),
                n["running"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The address part of a base URL.
fn addr(base: &str) -> &str {
    base.strip_prefix("http://").unwrap()
}

/// Whether the execution ended `error: node lost` after all of its events.
fn lost(events: &[Value]) -> bool {
    ended(events) && {
        let tail = &events[events.len() - 2..];
        tail[0]["kind"] == "error"
            && tail[0]["payload"] == "node lost"
            && tail[1]["payload"] == "error"
    }
}

/// The tick lines of an execution are 1..=n, none missing, none twice.
fn ticks_gap_free(events: &[Value]) -> usize {
    let ticks = stdout_lines(events);
    let want: Vec<String> = (1..=ticks.len()).map(|i| format!("tick {i}")).collect();
    assert_eq!(ticks, want, "every tick line, in order, once");
    ticks.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_launched_on_one_node_is_killed_through_another_and_answered_through_a_third()
{
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::new(dir.path()).await;
    let (_a, base_a, _) = d.node("node-a").await;
    let (_b, base_b, _) = d.node("node-b").await;
    let (mut c, base_c, _) = d.node("node-c").await;
    let _s1 = d.spooler("s1").await;
    let _s2 = d.spooler("s2").await;

    let listed = members(&base_b).await;
    let names: Vec<(&str, bool, &str)> = listed
        .iter()
        .map(|(n, live, api, _)| (n.as_str(), *live, api.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("node-a", true, addr(&base_a)),
            ("node-b", true, addr(&base_b)),
            ("node-c", true, addr(&base_c)),
        ]
    );

    // A lock of an execution on A, answered through C.
    let answered = launch_waiting(&base_a).await;
    let lid = lock_id(&events(&base_a, &answered).await);
    let (code, body) = post_any(
        &base_c,
        &format!("/executions/{answered}/locks/{lid}"),
        json!({"answer": "through C"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let events = events_until(&base_b, &answered, DEADLINE, ended).await;
    assert_eq!(last_status(&events), Some("finished"));
    assert!(
        stdout_lines(&events)
            .iter()
            .any(|l| l.contains("through C")),
        "{:?}",
        stdout_lines(&events)
    );

    // An execution on A, killed through B.
    let killed = launch_waiting(&base_a).await;
    let (code, body) = post_any(&base_b, &format!("/executions/{killed}/kill"), json!({})).await;
    assert_eq!(code, 202, "{body}");
    let events = events_until(&base_c, &killed, DEADLINE, ended).await;
    assert_eq!(last_status(&events), Some("killed"));

    // Ended: 409 on any node; unknown: 404.
    let (code, _) = post_any(&base_b, &format!("/executions/{killed}/kill"), json!({})).await;
    assert_eq!(code, 409);
    let (code, _) = post_any(
        &base_c,
        &format!("/executions/{answered}/locks/{lid}"),
        json!({"answer": "again"}),
    )
    .await;
    assert_eq!(code, 409);
    let unknown = "01990000-0000-7000-8000-000000000000";
    let (code, _) = post_any(&base_c, &format!("/executions/{unknown}/kill"), json!({})).await;
    assert_eq!(code, 404);

    // A lock that does not exist, on an execution that runs on A: 404 through B.
    let waiting = launch_waiting(&base_a).await;
    let (code, body) = post_any(
        &base_b,
        &format!("/executions/{waiting}/locks/no-such-lock"),
        json!({"answer": 1}),
    )
    .await;
    assert_eq!(code, 404, "{body}");

    // C stops cleanly: it leaves the list at once, and is not taken over.
    assert_eq!(terminate(&mut c).await, 0);
    let names: Vec<String> = members(&base_b).await.into_iter().map(|m| m.0).collect();
    assert_eq!(names, ["node-a", "node-b"]);
    let watched = Instant::now();
    while watched.elapsed().as_secs_f64() < LEASE * 2.0 {
        let lost = redis_cli(&d.redis.url, &["EXISTS", "kodo:lost:node-c"]);
        assert_eq!(lost, "0", "a node that stopped cleanly was declared lost");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_for_good_has_its_executions_closed_as_node_lost_by_a_survivor() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::new(dir.path()).await;
    let (mut a, base_a, _) = d.node("node-a").await;
    let (_b, base_b, _) = d.node("node-b").await;
    let (_c, _base_c, _) = d.node("node-c").await;
    let _s1 = d.spooler("s1").await;
    let _s2 = d.spooler("s2").await;
    let on_a: Vec<String> = [
        launch(&base_a, "ticks").await,
        launch(&base_a, "ticks").await,
        launch(&base_a, "ticks").await,
    ]
    .into();
    let on_b = launch(&base_b, "ticks").await;
    for fid in on_a.iter().chain([&on_b]) {
        events_until(&base_b, fid, DEADLINE, |e| stdout_lines(e).len() >= 5).await;
    }

    a.start_kill().unwrap();
    a.wait().await.unwrap();
    let died = Instant::now();
    // The bound: the lease, then 5 s for a survivor to notice and close.
    let bound = Duration::from_secs_f64(LEASE + 5.0);
    for fid in &on_a {
        let events = events_until(&base_b, fid, bound.saturating_sub(died.elapsed()), lost).await;
        assert!(ticks_gap_free(&events) >= 5);
    }
    // (A gap-free prefix: spoolers s1 and s2 may store a later tick first.)
    let b_events = events_until(&base_b, &on_b, DEADLINE, |e| {
        whole(e) && stdout_lines(e).len() >= 100
    })
    .await;
    assert_eq!(
        last_status(&b_events),
        Some("running"),
        "B's execution goes on"
    );
    ticks_gap_free(&b_events);

    // A has left the list; B and C are there.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let names: Vec<String> = members(&base_b).await.into_iter().map(|m| m.0).collect();
        if names == ["node-b", "node-c"] {
            break;
        }
        assert!(Instant::now() < deadline, "members: {names:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frozen_past_its_lease_learns_it_was_lost_and_stores_nothing_after() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::new(dir.path()).await;
    let (mut a, base_a, a_log) = d.node("node-a").await;
    let (_b, base_b, _) = d.node("node-b").await;
    let _s1 = d.spooler("s1").await;
    let fid = launch(&base_a, "ticks").await;
    events_until(&base_b, &fid, DEADLINE, |e| stdout_lines(e).len() >= 5).await;

    // Frozen: its flow's shell goes on printing into the pipe meanwhile.
    signal(a.id().unwrap(), "STOP").await;
    let closed = events_until(&base_b, &fid, DEADLINE, lost).await;
    ticks_gap_free(&closed);
    signal(a.id().unwrap(), "CONT").await;

    // Woken, it learns it was declared lost and exits, writing nothing.
    let status = tokio::time::timeout(DEADLINE, a.wait())
        .await
        .expect("the lost node exits by itself")
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let log = a_log.complete().await;
    assert!(log.contains("declared lost"), "{log}");
    // Whatever it held is refused: once the streams are drained, the log
    // is what it was at the close.
    wait_drained(&d).await;
    assert_eq!(events(&base_b, &fid).await, closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_a_name_in_use_exits_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::new(dir.path()).await;
    let (_a, _base_a, _) = d.node("node-a").await;
    let err = exits_with(&mut d.node_command("node-a"), 1).await;
    assert!(err.contains("node-a"), "{err}");
    assert!(err.contains("already running"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_longer_than_a_lease_declares_no_node_lost_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Deployment::new(dir.path()).await;
    let (_a, base_a, _) = d.node("node-a").await;
    let (_b, base_b, _) = d.node("node-b").await;
    let _s1 = d.spooler("s1").await;
    let fids = [
        launch(&base_a, "ticks").await,
        launch(&base_b, "ticks").await,
    ];
    for fid in &fids {
        events_until(&base_b, fid, DEADLINE, |e| stdout_lines(e).len() >= 5).await;
    }

    // Redis away for twice the lease: every lease has run out when it is
    // back (its AOF keeps the keys, with their expiry).
    d.redis.run("stop");
    tokio::time::sleep(Duration::from_secs_f64(LEASE * 2.0)).await;
    d.redis.run("start");

    // Both nodes take their lease again and go on; after more than a lease
    // of renewals, neither was declared lost.
    let back = Instant::now();
    let deadline = back + DEADLINE;
    loop {
        let live: Vec<bool> = members(&base_a).await.iter().map(|m| m.1).collect();
        if live == [true, true] && back.elapsed().as_secs_f64() > LEASE * 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "members: {live:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for fid in &fids {
        let (code, body) = post_any(&base_a, &format!("/executions/{fid}/kill"), json!({})).await;
        assert_eq!(code, 202, "{body}");
    }
    for fid in &fids {
        let events = events_until(&base_b, fid, DEADLINE, ended).await;
        assert_eq!(last_status(&events), Some("killed"));
        ticks_gap_free(&events);
    }
}

/// Waits until the spoolers acknowledged every entry of both streams.
async fn wait_drained(d: &Deployment) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let drained = (0..2).all(|shard| {
            let stream = format!("kodo:events:{shard}");
            let text = redis_cli(&d.redis.url, &["XINFO", "GROUPS", &stream]);
            let lines: Vec<&str> = text.lines().collect();
            let field = |name: &str| {
                lines
                    .iter()
                    .position(|l| *l == name)
                    .and_then(|i| lines.get(i + 1))
                    .map(|v| v.trim().to_string())
            };
            field("pending").as_deref() == Some("0") && field("lag").as_deref() == Some("0")
        });
        if drained {
            return;
        }
        assert!(Instant::now() < deadline, "the streams never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
