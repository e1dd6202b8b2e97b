//! The `runtime` binary as a user runs it: bad configs, the sample config,
//! SIGTERM, and SIGKILL followed by a restart.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

#[tokio::test]
async fn bad_configs_exit_2_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[api]\nlisen = \"127.0.0.1:1\"\n");
    let err = exits_with(
        &mut runtime(&["run", "--config", cfg.to_str().unwrap()], dir.path()),
        2,
    )
    .await;
    assert!(
        err.contains("kodo.toml: api.lisen: unknown field `lisen`"),
        "{err}"
    );

    let missing = dir.path().join("nope.toml");
    let err = exits_with(
        &mut runtime(&["run", "--config", missing.to_str().unwrap()], dir.path()),
        2,
    )
    .await;
    assert!(err.contains("nope.toml: -: cannot read"), "{err}");

    let good = write_config(dir.path(), "");
    let mut run = runtime(&["run", "--config", good.to_str().unwrap()], dir.path());
    let err = exits_with(run.env("KODO_TRANSPORT_SHARDS", "lots"), 2).await;
    assert!(
        err.contains("KODO_TRANSPORT_SHARDS: transport.shards: expected an integer"),
        "{err}"
    );

    let mut run = runtime(&["run", "--config", good.to_str().unwrap()], dir.path());
    let err = exits_with(
        run.env("KODO_STORE_URL", "sqlite:///proc/no-such-dir/kodo.db"),
        1,
    )
    .await;
    assert!(
        err.contains("cannot start: store url sqlite:///proc/no-such-dir/kodo.db"),
        "{err}"
    );
}

#[tokio::test]
async fn the_sample_config_runs_both_demo_flows() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kodo.toml");
    let (mut child, base) = start(&sample, dir.path()).await;
    let flows = get(&base, "/flows").await;
    assert_eq!(flows["flows"].as_array().unwrap().len(), 2);

    let hello = post(
        &base,
        "/flows/hello/executions",
        json!({"inputs": {"name": "kodo"}}),
    )
    .await;
    let fid = hello["fid"].as_str().unwrap();
    stream_until(&base, fid, "\"finished\"").await;
    let finals = get(
        &base,
        &format!("/executions/{fid}/events?kinds=final,action"),
    )
    .await;
    let events = finals["events"].as_array().unwrap();
    assert_eq!(events.len(), 6, "{finals}");
    assert_eq!(events[5]["payload"]["inputs"], json!({"name": "kodo"}));

    let approve = post(
        &base,
        "/flows/approve/executions",
        json!({"inputs": {"item": "a raise"}}),
    )
    .await;
    let fid = approve["fid"].as_str().unwrap();
    let text = stream_until(&base, fid, "event: lock").await;
    let data = text
        .lines()
        .skip_while(|l| *l != "event: lock")
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let lock: Value = serde_json::from_str(data).unwrap();
    assert_eq!(lock["data"]["question"], "Approve a raise?");
    let lid = lock["lid"].as_str().unwrap();
    post(
        &base,
        &format!("/executions/{fid}/locks/{lid}"),
        json!({"answer": "yes"}),
    )
    .await;
    stream_until(&base, fid, "\"finished\"").await;
    let result = get(&base, &format!("/executions/{fid}/events?kinds=final")).await;
    assert_eq!(
        result["events"][0]["payload"],
        json!({"item": "a raise", "approved": "yes"})
    );
    assert_eq!(terminate(&mut child).await, 0);
}

#[tokio::test]
async fn sigterm_kills_running_executions_and_stores_their_end() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), WAITING_FLOW);
    let mut command = run(&cfg, dir.path());
    command.env("RUST_LOG", "info");
    let (mut child, base, log) = start_logged(command).await;
    let fid = launch_waiting(&base).await;
    assert_eq!(terminate(&mut child).await, 0);
    // The shutdown says what it waits for, step by step.
    let text = log.complete().await;
    for step in [
        "shutdown: stopping 1 running execution(s)",
        "shutdown: executions stopped; storing the",
        "shutdown: checking that every event of the stopped executions is stored",
        "every event is stored",
    ] {
        assert!(text.contains(step), "{step:?} not in {text}");
    }

    let (mut again, base) = start(&cfg, dir.path()).await;
    let row = get(&base, &format!("/executions/{fid}")).await;
    assert_eq!(row["status"], "killed");
    let errors = get(&base, &format!("/executions/{fid}/events?kinds=error")).await;
    assert_eq!(errors["events"][0]["payload"], "killed: node shutting down");
    assert_eq!(terminate(&mut again).await, 0);
}

#[tokio::test]
async fn sigkill_then_restart_ends_every_execution_and_keeps_every_stored_event() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), WAITING_FLOW);
    let (mut child, base) = start(&cfg, dir.path()).await;
    let mut before = Vec::new();
    for _ in 0..3 {
        let fid = launch_waiting(&base).await;
        let events = get(&base, &format!("/executions/{fid}/events")).await;
        before.push((fid, events["events"].as_array().unwrap().clone()));
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let (mut again, base) = start(&cfg, dir.path()).await;
    for (fid, old) in &before {
        let row = get(&base, &format!("/executions/{fid}")).await;
        assert_eq!(row["status"], "error", "{row}");
        let now = get(&base, &format!("/executions/{fid}/events")).await;
        let now = now["events"].as_array().unwrap();
        assert_eq!(
            &now[..old.len()],
            &old[..],
            "everything stored before the kill stays"
        );
        let tail: Vec<_> = now[old.len()..]
            .iter()
            .map(|e| (e["kind"].clone(), e["payload"].clone()))
            .collect();
        assert_eq!(
            tail,
            vec![
                (json!("error"), json!("node restarted")),
                (json!("status"), json!("error"))
            ]
        );
        let seqs: Vec<u64> = now.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=now.len() as u64).collect::<Vec<_>>());
    }
    launch_waiting(&base).await;
    assert_eq!(terminate(&mut again).await, 0);
}

#[tokio::test]
async fn db_upgrade_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    // The first upgrade creates the schema and says so; the second has nothing to do.
    for expected in [
        "applied 3 migration(s):\n  20261126000001 init\n  20261201000001 fences\n  20261202000001 fence floors",
        "nothing applied",
    ] {
        let out = runtime(
            &["db", "upgrade", "--config", cfg.to_str().unwrap()],
            dir.path(),
        )
        .output()
        .await
        .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(expected),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(dir.path().join("kodo.db").exists());
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["db", "upgrade", "--help"],
        &["spool", "--help"],
        &["temporal-worker", "--help"],
        &["bench", "--help"],
    ] {
        let out = runtime(args, dir.path()).output().await.unwrap();
        assert!(out.status.success(), "{args:?}");
    }
    let out = runtime(&["--help"], dir.path()).output().await.unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("kodo runs long-lived executions")
            && help.contains("Start here:\n  runtime run --config kodo.toml"),
        "{help}"
    );
    let out = runtime(&["frobnicate"], dir.path()).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn an_unreachable_postgres_stops_startup_with_the_url_masked() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let port = free_port();
    let url = format!("postgres://kodo:hunter22@127.0.0.1:{port}/kodo");
    let mut run = runtime(&["run", "--config", cfg.to_str().unwrap()], dir.path());
    let err = exits_with(run.env("KODO_STORE_URL", &url), 1).await;
    assert!(
        err.contains(&format!("postgres://kodo:***@127.0.0.1:{port}/kodo"))
            && err.contains("refused")
            && !err.contains("hunter22"),
        "{err}"
    );
}

/// Starts `runtime spool --name NAME` and waits for its first line.
async fn start_spool(config: &Path, dir: &Path, name: &str) -> Child {
    start_spooler(spool(config, dir, name)).await
}

/// Entries delivered to `consumer` and not acknowledged, over both streams.
fn pending_of(redis_url: &str, consumer: &str) -> u64 {
    (0..2)
        .map(|shard| {
            let stream = format!("kodo:events:{shard}");
            let args = ["XPENDING", &stream, "spoolers", "-", "+", "1000", consumer];
            redis_cli(redis_url, &args)
                .lines()
                .filter(|l| l.contains('-'))
                .count() as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooler_killed_mid_batch_leaves_its_entries_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let redis = ScriptServer::redis(dir.path());
    let redis_url = redis.url.clone();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[transport]
kind = "redis"
url = "{redis_url}"
claim_idle = 1.0
block = 0.1
[spooler]
enabled = false
[limits]
launch_wait = 0.5
[flows.lines]
command = ["sh", "-c", "seq 1 200"]
"#
        ),
    );
    let (mut node, base) = start(&cfg, dir.path()).await;
    let mut a = start_spool(&cfg, dir.path(), "a").await;
    let mut fids = Vec::new();
    for _ in 0..2 {
        let fid = launch(&base, "lines").await;
        stream_until(&base, &fid, "data: \"finished\"").await;
        fids.push(fid);
    }
    // Hold the database's write lock: spooler a takes entries and cannot
    // commit them (it retries, holding them), as if killed mid-batch.
    let mut lock = hold_store_writes(dir.path()).await;
    for _ in 0..2 {
        let body = post(&base, "/flows/lines/executions", json!({})).await;
        assert_eq!(body["stored"], false, "nothing can be stored now");
        fids.push(body["fid"].as_str().unwrap().to_string());
    }
    tokio::time::timeout(DEADLINE, async {
        while pending_of(&redis_url, "a-0") + pending_of(&redis_url, "a-1") == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("spooler a took entries");
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    sqlx::Executor::execute(&mut lock, "ROLLBACK")
        .await
        .unwrap();
    drop(lock);

    // Spooler b claims what a left (after claim_idle) and stores it once.
    let mut b = start_spool(&cfg, dir.path(), "b").await;
    for fid in &fids[2..] {
        // Followed live: b's commits reach the node over Redis pub/sub.
        let text = stream_until(&base, fid, "data: \"finished\"").await;
        let ids: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|id| id.parse().unwrap())
            .collect();
        assert_eq!(
            ids,
            (1..=ids.len() as u64).collect::<Vec<_>>(),
            "live order"
        );
    }
    for fid in &fids {
        let events = get(&base, &format!("/executions/{fid}/events?limit=1000")).await;
        let events = events["events"].as_array().unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "{fid}");
        let lines: Vec<String> = events
            .iter()
            .filter(|e| e["kind"] == "stdout")
            .map(|e| e["payload"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(lines, (1..=200).map(|i| i.to_string()).collect::<Vec<_>>());
        assert_eq!(events.last().unwrap()["payload"], "finished");
    }
    assert_eq!(
        pending_of(&redis_url, "a-0") + pending_of(&redis_url, "a-1"),
        0
    );
    assert_eq!(terminate(&mut b).await, 0);
    assert_eq!(terminate(&mut node).await, 0);
}

#[tokio::test]
async fn an_unreachable_redis_stops_startup_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    // Spoolers alone make no sense on the in-process queue.
    let err = exits_with(
        &mut runtime(&["spool", "--config", cfg.to_str().unwrap()], dir.path()),
        2,
    )
    .await;
    assert!(err.contains("transport.kind = \"redis\""), "{err}");
    for command in ["run", "spool"] {
        let mut run = runtime(&[command, "--config", cfg.to_str().unwrap()], dir.path());
        run.env("KODO_TRANSPORT_KIND", "redis")
            .env("KODO_TRANSPORT_URL", &url);
        let err = exits_with(&mut run, 1).await;
        assert!(
            err.contains(&url) && err.contains("transport"),
            "{command}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_closes_its_executions_after_their_events_in_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = ScriptServer::redis(dir.path());
    let redis_url = redis.url.clone();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[transport]\nkind = \"redis\"\nurl = \"{redis_url}\"\nblock = 0.1\n\
             [spooler]\nenabled = false\n[limits]\nlaunch_wait = 0.2\n{WAITING_FLOW}"
        ),
    );
    // No spooler runs: the node's events wait in Redis, unstored.
    let (mut node, base) = start(&cfg, dir.path()).await;
    let body = post(&base, "/flows/waits/executions", json!({})).await;
    assert_eq!(body["stored"], false);
    let fid = body["fid"].as_str().unwrap().to_string();
    tokio::time::timeout(DEADLINE, async {
        // meta+starting+inputs, running, stdout, lock+awaiting: 4 entries or more.
        while redis_len(&redis_url) < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the flow reached its lock");
    node.start_kill().unwrap();
    node.wait().await.unwrap();

    // Restarted, then a spooler: the node first waits for it to store what
    // its previous run published, then closes the execution after it.
    let mut node = runtime(&["run", "--config", cfg.to_str().unwrap()], dir.path())
        .spawn()
        .unwrap();
    let mut spool = start_spool(&cfg, dir.path(), "s").await;
    let mut lines = BufReader::new(node.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the node started once the spooler stored its backlog")
        .unwrap()
        .unwrap();
    let base = line.strip_prefix("kodo listening on ").unwrap().to_string();
    let events = get(&base, &format!("/executions/{fid}/events")).await;
    let events = events["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"lock"), "{kinds:?}");
    let tail: Vec<_> = events[events.len() - 2..]
        .iter()
        .map(|e| (e["kind"].clone(), e["payload"].clone()))
        .collect();
    assert_eq!(
        tail,
        [
            (json!("error"), json!("node restarted")),
            (json!("status"), json!("error"))
        ]
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    assert_eq!(terminate(&mut node).await, 0);
    assert_eq!(terminate(&mut spool).await, 0);
}

/// Entries in both of kodo's streams.
fn redis_len(redis_url: &str) -> u64 {
    (0..2)
        .map(|shard| {
            let stream = format!("kodo:events:{shard}");
            redis_cli(redis_url, &["XLEN", &stream])
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::test]
async fn a_config_means_the_same_from_any_directory_and_misspelt_variables_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, elsewhere) = (dir.path().join("conf"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let cfg = write_config(
        &conf,
        "[store]\nurl = \"sqlite://./data/kodo.db\"\n[flows.pwd]\ncommand = [\"sh\", \"-c\", \"pwd\"]\n",
    );
    let mut command = run(&cfg, &elsewhere);
    command
        .env_remove("KODO_STORE_URL")
        .env("KODO_STORE_UR", "sqlite://typo.db");
    let (mut node, base, log) = start_logged(command).await;
    assert_eq!(cwd_of_a_flow(&base).await, conf.to_str().unwrap());
    assert_eq!(terminate(&mut node).await, 0);
    assert!(
        conf.join("data/kodo.db").exists(),
        "the database is beside the config"
    );
    assert!(!elsewhere.join("data").exists());
    let text = log.complete().await;
    assert!(
        text.contains("KODO_STORE_UR: it names no config key (did you mean KODO_STORE_URL?)"),
        "{text}"
    );

    // Named by its bare file name from its own folder, as the README does.
    let mut command = runtime(&["run", "--config", "kodo.toml"], &conf);
    command.env_remove("KODO_STORE_URL");
    let (mut node, base, _) = start_logged(command).await;
    assert_eq!(cwd_of_a_flow(&base).await, conf.to_str().unwrap());
    assert_eq!(terminate(&mut node).await, 0);
}

/// kodo's own variables hold secrets (the store's URL with its password):
/// a flow sees only those kodo sets for it, and its own `env`.
#[tokio::test]
async fn a_flow_does_not_inherit_kodos_own_variables() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[flows.env]\ncommand = [\"sh\", \"-c\", \"env | cut -d= -f1 | grep -E '^(KODO_|OTEL_)' | sort\"]\n\
         env = { KODO_MINE = \"kept\" }\n",
    );
    let mut command = run(&cfg, dir.path());
    command
        .env("KODO_TRANSPORT_URL", "redis://:secret@127.0.0.1:1")
        .env("OTEL_EXPORTER_OTLP_HEADERS", "x-key=secret")
        .env("OTEL_SERVICE_NAME", "kept");
    let (mut node, base, _) = start_logged(command).await;
    let fid = launch(&base, "env").await;
    stream_until(&base, &fid, "data: \"finished\"").await;
    let names = stdout_lines(&events(&base, &fid).await);
    let expected = [
        "KODO_ATTEMPT",
        "KODO_FID",
        "KODO_FLOW",
        "KODO_JOURNAL",
        "KODO_MINE",
        "KODO_OWNER",
        "OTEL_SERVICE_NAME",
    ];
    assert_eq!(names, expected);
    assert_eq!(terminate(&mut node).await, 0);
}

/// Where the flow `pwd` (no `cwd` of its own) runs.
async fn cwd_of_a_flow(base: &str) -> String {
    let fid = post(base, "/flows/pwd/executions", json!({})).await["fid"]
        .as_str()
        .unwrap()
        .to_string();
    stream_until(base, &fid, "data: \"finished\"").await;
    let out = get(base, &format!("/executions/{fid}/events?kinds=stdout")).await;
    out["events"][0]["payload"].as_str().unwrap().to_string()
}
