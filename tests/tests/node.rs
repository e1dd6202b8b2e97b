//! The node end to end on a real SQLite file: Rust and command flows, locks,
//! kills, crashes of Runners and Spoolers, and restart recovery.

use kodo_actors::{CommandSpec, Ctx, FlowDef, Flows, NodeOptions};
use kodo_cluster::Solo;
use kodo_core::{Event, Fid, Kind, Meta, Status, json_text};
use kodo_tests::*;
use kodo_transport::LocalQueue;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn flows() -> Flows {
    let mut flows = Flows::default();
    flows.add(FlowDef::rust(
        "count",
        |ctx: Ctx, inputs: Value| async move {
            let n = inputs["n"].as_u64().unwrap_or(3);
            for i in 0..n {
                ctx.debug(&format!("step {i}")).await?;
            }
            Ok(json!({"counted": n}))
        },
    ));
    flows.add(FlowDef::rust("panics", |ctx: Ctx, _| async move {
        ctx.debug("about to panic").await?;
        panic!("boom in the flow");
    }));
    flows.add(FlowDef::rust("fails", |_ctx: Ctx, _| async move {
        Err("no luck".into())
    }));
    flows.add(FlowDef::rust("asks", |ctx: Ctx, _| async move {
        let answer = ctx.lock("approve", json!({"q": "ok?"}), None).await?;
        Ok(json!({"answer": answer}))
    }));
    flows.add(FlowDef::rust("asks-briefly", |ctx: Ctx, _| async move {
        let answer = ctx
            .lock("approve", json!({}), Some(Duration::from_millis(50)))
            .await?;
        Ok(answer)
    }));
    flows.add(FlowDef::rust("sleeps", |ctx: Ctx, _| async move {
        ctx.debug("sleeping").await?;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Value::Null)
    }));
    flows.add(
        FlowDef::rust("slow", |_ctx: Ctx, _| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Value::Null)
        })
        .timeout(Duration::from_millis(100)),
    );
    flows.add(FlowDef::command(
        "sh",
        CommandSpec {
            command: vec!["sh".into(), "-c".into(), SH_FLOW.into()],
            ..Default::default()
        },
    ));
    flows.add(FlowDef::command(
        "suicide",
        CommandSpec {
            command: vec!["sh".into(), "-c".into(), "echo before; kill -9 $$".into()],
            ..Default::default()
        },
    ));
    flows.add(FlowDef::command(
        "asks-cmd-briefly",
        CommandSpec {
            command: vec!["sh".into(), "-c".into(), ASKS_BRIEFLY.into()],
            ..Default::default()
        },
    ));
    flows.add(FlowDef::command(
        "ignores-stdin",
        CommandSpec {
            command: vec!["sh".into(), "-c".into(), "echo up; sleep 3600".into()],
            ..Default::default()
        },
    ));
    flows.add(FlowDef::command(
        "asks-cmd",
        CommandSpec {
            command: vec![
                "sh".into(),
                "-c".into(),
                r#"read -r x; echo '{"kind":"lock","name":"go"}' >&3; read -r answer"#.into(),
            ],
            ..Default::default()
        },
    ));
    flows.add(FlowDef::command(
        "missing",
        CommandSpec {
            command: vec!["/nonexistent/kodo-flow".into()],
            ..Default::default()
        },
    ));
    flows
}

/// Reads its inputs, writes stdout/stderr, a bad fd-3 line, a result, asks
/// for a lock and reports the answer.
const SH_FLOW: &str = r#"
read inputs
echo "got $inputs"
echo "to stderr" >&2
echo 'not json' >&3
echo '{"kind":"final","payload":1}' >&3
echo '{"kind":"result","payload":{"x":1}}' >&3
echo '{"kind":"lock","name":"ok?","data":{"a":1}}' >&3
read answer
echo "answer $answer"
echo "{\"kind\":\"result\",\"payload\":$answer}" >&3
"#;

/// Asks with a 50 ms lock, reports the expiry it reads on stdin, and fails.
const ASKS_BRIEFLY: &str = r#"
read inputs
echo '{"kind":"lock","name":"hurry","timeout":0.05}' >&3
read reply
echo "reply $reply"
exit 3
"#;

async fn start() -> TestNode {
    TestNode::start(flows(), 2, 1 << 20, NodeOptions::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_flow_runs_to_finished_with_every_event_in_order() {
    let t = start().await;
    let launched = t
        .node
        .launch("count", "ann", json!({"n": 5}))
        .await
        .unwrap();
    assert!(
        launched.stored,
        "meta and starting are committed before launch returns"
    );
    assert_eq!(wait_final(&t.node, &launched.fid).await, Status::Finished);
    let events = stored_events(&t.store, &launched.fid).await;
    assert_eq!(check_log(&events), Ok(Status::Finished));
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        &kinds[..4],
        &[Kind::Meta, Kind::Status, Kind::Inputs, Kind::Status]
    );
    assert_eq!(payloads(&events, Kind::Debug).len(), 5);
    assert_eq!(payloads(&events, Kind::Final), vec![json!({"counted": 5})]);
    let row = t.store.execution(&launched.fid).await.unwrap().unwrap();
    assert_eq!((row.flow.as_str(), row.owner.as_str()), ("count", "ann"));
    assert_eq!(row.events, events.len() as u64);
    let report = t.node.shutdown("test over").await;
    assert!(report.all_stored(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_panics_and_timeouts_end_in_error_with_the_cause() {
    let t = start().await;
    for (flow, cause) in [
        ("fails", "no luck"),
        ("panics", "boom in the flow"),
        ("slow", "timed out"),
        ("missing", "cannot start"),
        ("suicide", "killed by signal 9"),
    ] {
        let fid = t.node.launch(flow, "ann", json!({})).await.unwrap().fid;
        assert_eq!(wait_final(&t.node, &fid).await, Status::Error, "{flow}");
        let events = stored_events(&t.store, &fid).await;
        assert_eq!(check_log(&events), Ok(Status::Error), "{flow}");
        let error = payloads(&events, Kind::Error);
        assert!(
            error[0].as_str().unwrap().contains(cause),
            "{flow}: {error:?}"
        );
    }
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_flow_speaks_the_protocol_and_answers_a_lock() {
    let t = start().await;
    let fid = t
        .node
        .launch("sh", "ann", json!({"k": "v"}))
        .await
        .unwrap()
        .fid;
    let lock = wait_event(&t.node, &fid, Kind::Lock).await;
    let lock: Value = serde_json::from_str(&lock.payload).unwrap();
    assert_eq!(lock["name"], "ok?");
    let row = t.store.execution(&fid).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Awaiting);
    let lid = lock["lid"].as_str().unwrap();
    assert!(t.node.answer_lock(&fid, "nope", json!(1)).await.is_err());
    t.node
        .answer_lock(&fid, lid, json!({"yes": true}))
        .await
        .unwrap();
    assert_eq!(wait_final(&t.node, &fid).await, Status::Finished);
    let events = stored_events(&t.store, &fid).await;
    check_log(&events).unwrap();
    let stdout = payloads(&events, Kind::Stdout);
    assert_eq!(stdout[0], json!(r#"got {"k":"v"}"#));
    let answered = stdout[1].as_str().unwrap();
    assert!(
        answered.contains(lid) && answered.contains(r#""answer":{"yes":true}"#),
        "{answered}"
    );
    // stderr and fd 3 are separate pipes: their relative order is not defined.
    assert!(payloads(&events, Kind::Stderr).contains(&json!("to stderr")));
    let warnings: Vec<_> = payloads(&events, Kind::Stderr)
        .into_iter()
        .filter(|p| {
            p.as_str()
                .unwrap()
                .starts_with("kodo: ignored invalid fd-3 line")
        })
        .collect();
    assert_eq!(warnings.len(), 2, "bad JSON and a runtime-only kind");
    assert_eq!(
        payloads(&events, Kind::Lease)[0]["result"],
        json!({"yes": true})
    );
    assert_eq!(
        payloads(&events, Kind::Final)[0]["answer"],
        json!({"yes": true})
    );
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_expire_into_error_and_kills_end_killed() {
    let t = start().await;
    let brief = t
        .node
        .launch("asks-briefly", "ann", json!({}))
        .await
        .unwrap()
        .fid;
    assert_eq!(wait_final(&t.node, &brief).await, Status::Error);
    let events = stored_events(&t.store, &brief).await;
    assert_eq!(payloads(&events, Kind::Lease)[0]["error"], "expired");

    let asks = t.node.launch("asks", "ann", json!({})).await.unwrap().fid;
    wait_event(&t.node, &asks, Kind::Lock).await;
    let sleeps = t.node.launch("sleeps", "ann", json!({})).await.unwrap().fid;
    wait_event(&t.node, &sleeps, Kind::Debug).await;
    for fid in [&asks, &sleeps] {
        t.node.kill(fid, "by ann").await.unwrap();
        assert_eq!(wait_final(&t.node, fid).await, Status::Killed);
        let events = stored_events(&t.store, fid).await;
        assert_eq!(check_log(&events), Ok(Status::Killed));
        assert_eq!(payloads(&events, Kind::Error)[0], "killed: by ann");
    }
    assert!(t.node.kill(&asks, "again").await.is_err());
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooler_crashes_and_store_errors_lose_and_duplicate_nothing() {
    let t = start().await;
    t.faults.panic_before_commit.store(2, Ordering::SeqCst);
    t.faults.panic_after_commit.store(2, Ordering::SeqCst);
    t.faults.fail_writes.store(3, Ordering::SeqCst);
    let mut fids = Vec::new();
    for _ in 0..10 {
        fids.push(
            t.node
                .launch("count", "ann", json!({"n": 50}))
                .await
                .unwrap()
                .fid,
        );
    }
    for fid in &fids {
        assert_eq!(wait_final(&t.node, fid).await, Status::Finished);
        let events = stored_events(&t.store, fid).await;
        assert_eq!(check_log(&events), Ok(Status::Finished));
        assert_eq!(payloads(&events, Kind::Debug).len(), 50);
    }
    assert_eq!(t.faults.panic_before_commit.load(Ordering::SeqCst), 0);
    assert_eq!(t.faults.panic_after_commit.load(Ordering::SeqCst), 0);
    assert_eq!(t.faults.fail_writes.load(Ordering::SeqCst), 0);
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_kills_running_executions_and_checks_they_are_stored() {
    let t = start().await;
    let fid = t.node.launch("asks", "ann", json!({})).await.unwrap().fid;
    wait_event(&t.node, &fid, Kind::Lock).await;
    let report = t.node.shutdown("node shutting down").await;
    assert!(report.all_stored(), "{report}");
    assert_eq!(report.checked, 1, "the execution it stopped was checked");
    let store = kodo_store::SqliteStore::open(&t.url, &Default::default())
        .await
        .unwrap();
    let row = kodo_store::Store::execution(&store, &fid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, Status::Killed);
    kodo_store::Store::close(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_lock_expires_on_stdin_and_a_child_deaf_to_stdin_can_be_killed() {
    let t = start().await;
    let fid = t
        .node
        .launch("asks-cmd-briefly", "ann", json!({}))
        .await
        .unwrap()
        .fid;
    assert_eq!(wait_final(&t.node, &fid).await, Status::Error);
    let events = stored_events(&t.store, &fid).await;
    check_log(&events).unwrap();
    let lease = &payloads(&events, Kind::Lease)[0];
    assert_eq!(lease["error"], "expired");
    let reply = payloads(&events, Kind::Stdout)[0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reply.contains(r#""error":"expired""#) && reply.contains(lease["lid"].as_str().unwrap()),
        "{reply}"
    );
    assert_eq!(payloads(&events, Kind::Error)[0], "exited with code 3");

    // Inputs far larger than a pipe buffer, to a child that never reads stdin.
    let big = json!({"blob": "x".repeat(512 * 1024)});
    let fid = t
        .node
        .launch("ignores-stdin", "ann", big)
        .await
        .unwrap()
        .fid;
    wait_event(&t.node, &fid, Kind::Stdout).await;
    t.node.kill(&fid, "by ann").await.unwrap();
    assert_eq!(wait_final(&t.node, &fid).await, Status::Killed);
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_command_waiting_on_a_lock_ends_it_at_once() {
    let options = NodeOptions {
        limits: kodo_actors::ExecLimits {
            kill_grace: Duration::from_secs(5),
            ..NodeOptions::default().limits
        },
        ..NodeOptions::default()
    };
    let t = TestNode::start(flows(), 2, 1 << 20, options).await;
    let fid = t
        .node
        .launch("asks-cmd", "ann", json!({}))
        .await
        .unwrap()
        .fid;
    wait_event(&t.node, &fid, Kind::Lock).await;
    let started = std::time::Instant::now();
    t.node.kill(&fid, "by ann").await.unwrap();
    assert_eq!(wait_final(&t.node, &fid).await, Status::Killed);
    // sh dies on SIGTERM at once; its open lock must not hold the end back
    // until the 5 s output drain timeout (as it once did).
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "kill took {took:?}");
    assert!(t.node.answer_lock(&fid, "any", json!(1)).await.is_err());
    t.node.shutdown("test over").await;
}

/// What a killed run of node `local` left open is closed when a node of
/// that name starts again: an `error` and the final status, numbered right
/// after the last stored event, and stored before `Node::start` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_closes_leftovers_after_their_last_stored_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = kodo_store::open(&db_url(dir.path()), &Default::default())
        .await
        .unwrap();
    let meta = |node: &str| Meta {
        flow: "asks".into(),
        owner: "ann".into(),
        node: node.into(),
        kodo: "test".into(),
        trace: None,
        launch: None,
        job: None,
    };
    let left = |node: &str, status: Status| {
        let fid = Fid::new();
        let payloads = [
            (Kind::Meta, serde_json::to_string(&meta(node)).unwrap()),
            (Kind::Status, json_text("starting")),
            (Kind::Inputs, "{}".to_string()),
            (Kind::Status, json_text(status.as_str())),
        ];
        let events: Vec<Event> = payloads
            .into_iter()
            .zip(1..)
            .map(|((kind, payload), seq)| Event {
                fid: fid.clone(),
                seq,
                ts: seq as f64,
                kind,
                payload,
                attempt: 0,
            })
            .collect();
        (fid, events)
    };
    let (ours, mine) = left("local", Status::Awaiting);
    let (theirs, other) = left("elsewhere", Status::Running);
    store.write(&[mine, other].concat()).await.unwrap();
    store.close().await;

    let transport = LocalQueue::new(2, 1 << 20);
    let t = TestNode::start_in(
        dir,
        flows(),
        transport,
        Solo::shared(),
        NodeOptions::default(),
    )
    .await;
    // No wait: start returned once the closing events were stored.
    let events = stored_events(&t.store, &ours).await;
    check_log(&events).unwrap();
    let tail: Vec<(u64, Kind, String)> = events[4..]
        .iter()
        .map(|e| (e.seq, e.kind, e.payload.clone()))
        .collect();
    assert_eq!(
        tail,
        [
            (5, Kind::Error, json_text("node restarted")),
            (6, Kind::Status, json_text("error")),
        ]
    );
    let row = t.store.execution(&ours).await.unwrap().unwrap();
    assert_eq!((row.status, row.events), (Status::Error, 6));
    let row = t.store.execution(&theirs).await.unwrap().unwrap();
    assert_eq!(
        row.status,
        Status::Running,
        "another node's execution is left alone"
    );
    t.node.shutdown("test over").await;
}
