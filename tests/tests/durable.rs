//! Durable mode (`execution.mode = "temporal"`) against a real Temporal dev
//! server (`scripts/temporal`, started by `scripts/test`; its address in
//! `KODO_TEST_TEMPORAL_ADDRESS`). Each test uses a task queue of its own.

use kodo_actors::{Ctx, FlowDef};
use kodo_core::{Fid, Kind, Status};
use kodo_tests::*;
use serde_json::{Value, json};

fn temporal_address() -> String {
    std::env::var("KODO_TEST_TEMPORAL_ADDRESS")
        .expect("scripts/test starts Temporal; or set KODO_TEST_TEMPORAL_ADDRESS=HOST:PORT")
}

/// Config text for durable mode on a task queue of this test's own.
fn durable_config(extra: &str) -> String {
    format!(
        "[execution]\nmode = \"temporal\"\n[temporal]\naddress = \"{}\"\ntask_queue = \"test-{}\"\nheartbeat_timeout = 10\n{extra}",
        temporal_address(),
        Fid::new()
    )
}

/// The kinds of an execution's events, statuses spelt out.
fn shape(events: &[kodo_core::Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.status() {
            Some(status) => format!("status:{status}"),
            None => e.kind.to_string(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_flow_and_a_command_flow_finish_with_the_shape_of_direct_mode() {
    let hello = FlowDef::rust("hello", |ctx: Ctx, inputs: Value| async move {
        ctx.debug("hi").await?;
        assert_eq!(ctx.attempt(), 1);
        Ok(json!({"echo": inputs}))
    });
    let cmd = "[flows.cmd]\ncommand = [\"sh\", \"-c\", \
               \"read inputs; echo \\\"attempt $KODO_ATTEMPT\\\"; echo '{\\\"kind\\\": \\\"result\\\", \\\"payload\\\": 42}' >&3\"]\n";
    let api = TestApi::start(&durable_config(cmd), vec![hello]).await;
    let node = api.running.node();

    let fid = api.launch("hello").await;
    let events = ended_with(node, &fid, Status::Finished).await;
    assert_eq!(
        shape(&events),
        [
            "meta",
            "status:starting",
            "inputs",
            "status:running",
            "debug",
            "final",
            "status:finished"
        ]
    );
    let meta: Value = serde_json::from_str(&events[0].payload).unwrap();
    assert!(
        meta["node"].as_str().unwrap().starts_with("temporal:"),
        "{meta}"
    );

    let fid = api.launch("cmd").await;
    let events = ended_with(node, &fid, Status::Finished).await;
    assert_eq!(
        shape(&events),
        [
            "meta",
            "status:starting",
            "inputs",
            "status:running",
            "stdout",
            "result",
            "final",
            "status:finished"
        ]
    );
    assert_eq!(payloads(&events, Kind::Stdout), [json!("attempt 1")]);
    assert_eq!(payloads(&events, Kind::Final), [json!(42)]);

    let (code, health) = api.health().await;
    assert_eq!(code, 200, "{health}");
    assert_eq!(health["temporal"]["ok"], true, "{health}");
    let report = api.running.shutdown("test over").await;
    assert!(report.all_stored(), "{report}");
}

/// A Rust flow that says it waits, then waits for ever.
fn waits() -> FlowDef {
    FlowDef::rust("waits", |ctx: Ctx, _| async move {
        ctx.debug("waiting").await?;
        std::future::pending::<()>().await;
        Ok(json!("never"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_reaches_a_durable_execution_and_ends_it_killed() {
    let api = TestApi::start(&durable_config(""), vec![waits()]).await;
    let node = api.running.node();
    let fid = api.launch("waits").await;
    wait_event(node, &fid, Kind::Debug).await;
    let (code, body) = api.post(&format!("/executions/{fid}/kill"), None).await;
    assert_eq!(code, 202, "{body}");
    let events = ended_with(node, &fid, Status::Killed).await;
    assert_eq!(payloads(&events, Kind::Error), [json!("killed: by local")]);
    let report = api.running.shutdown("test over").await;
    assert!(report.all_stored(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_that_fails_on_its_own_is_not_retried() {
    let fails = FlowDef::rust("fails", |ctx: Ctx, _| async move {
        ctx.debug("trying").await?;
        Err::<Value, _>("no luck".into())
    });
    let cmd = "[flows.exits]\ncommand = [\"sh\", \"-c\", \"read -r x; echo oops >&2; exit 3\"]\n";
    let api = TestApi::start(&durable_config(cmd), vec![fails]).await;
    let node = api.running.node();
    for (flow, why) in [("fails", "no luck"), ("exits", "exited with code 3: oops")] {
        let fid = api.launch(flow).await;
        let events = ended_with(node, &fid, Status::Error).await;
        assert_eq!(payloads(&events, Kind::Error), [json!(why)], "{flow}");
        let retried = payloads(&events, Kind::Debug)
            .iter()
            .any(|d| d.as_str().is_some_and(|d| d.starts_with("attempt ")));
        assert!(!retried, "{flow} was retried");
    }
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execution_out_of_time_ends_in_error_recorded_by_the_workflow() {
    let api = TestApi::start(&durable_config("execution_timeout = 1\n"), vec![waits()]).await;
    let node = api.running.node();
    let fid = api.launch("waits").await;
    let events = ended_with(node, &fid, Status::Error).await;
    assert_eq!(
        payloads(&events, Kind::Error),
        [json!("timed out after 1 s")]
    );
    api.running.shutdown("test over").await;
}

/// A Rust flow that emits a `debug` tick every 20 ms, for a long while.
fn ticks() -> FlowDef {
    FlowDef::rust("ticks", |ctx: Ctx, _| async move {
        for i in 0..100_000 {
            ctx.debug(&i.to_string()).await?;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(json!("done"))
    })
}

fn count(events: &[kodo_core::Event], kind: Kind) -> usize {
    events.iter().filter(|e| e.kind == kind).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_rust_flow_blocks_in_its_next_ctx_call_until_resumed() {
    let api = TestApi::start(&durable_config(""), vec![ticks()]).await;
    let node = api.running.node();
    let fid = api.launch("ticks").await;
    events_until(node, &fid, "3 ticks", |e| count(e, Kind::Debug) >= 3).await;

    let (code, body) = api.post(&format!("/executions/{fid}/pause"), None).await;
    assert_eq!((code, &body["paused"]), (202, &json!(true)), "{body}");
    let paused = events_until(node, &fid, "status paused", |e| {
        statuses(e).last() == Some(&Status::Paused)
    })
    .await;
    let (code, body) = api.post(&format!("/executions/{fid}/pause"), None).await;
    assert_eq!(code, 409, "paused already: {body}");
    // One tick may have passed the gate as the pause came; then none.
    let window = std::time::Duration::from_millis(1000);
    tokio::time::sleep(window).await;
    let first = count(&stored_events(node.store(), &fid).await, Kind::Debug);
    assert!(first <= count(&paused, Kind::Debug) + 1);
    tokio::time::sleep(window).await;
    let second = count(&stored_events(node.store(), &fid).await, Kind::Debug);
    assert_eq!(first, second, "no tick while paused");
    let row = node.store().execution(&fid).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Paused);
    let described = api.get(&format!("/executions/{fid}/durable")).await;
    assert_eq!(described["paused"], true, "{described}");
    assert_eq!(described["attempt"], 1, "{described}");
    assert_eq!(described["workflow_status"], "running", "{described}");
    // The worker named by its node's name (the default, `local`) and pid.
    let identity = format!("local@{}", std::process::id());
    assert_eq!(described["worker"], identity.as_str(), "{described}");
    assert!(
        described["workflow_id"]
            .as_str()
            .unwrap()
            .ends_with(fid.as_str())
    );
    // The seq the attempt reported lags by up to a heartbeat interval.
    let start = std::time::Instant::now();
    loop {
        let described = api.get(&format!("/executions/{fid}/durable")).await;
        let reported = described["last_seq"].as_u64().expect("a reported seq");
        assert!(reported <= row.events, "{described}");
        if reported >= 4 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "never reported: {described}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let (code, body) = api.post(&format!("/executions/{fid}/resume"), None).await;
    assert_eq!((code, &body["paused"]), (202, &json!(false)), "{body}");
    let resumed = events_until(node, &fid, "ticks again", |e| {
        count(e, Kind::Debug) >= second + 3
    })
    .await;
    let after = statuses(&resumed);
    assert_eq!(after[after.len() - 2..], [Status::Paused, Status::Running]);
    // Ticks go on where they stopped: 0, 1, 2, ... with none skipped.
    let ticks: Vec<Value> = payloads(&resumed, Kind::Debug);
    let expected: Vec<Value> = (0..ticks.len()).map(|i| json!(i.to_string())).collect();
    assert_eq!(ticks, expected);

    let (code, _) = api.post(&format!("/executions/{fid}/kill"), None).await;
    assert_eq!(code, 202);
    ended_with(node, &fid, Status::Killed).await;
    let (code, body) = api.post(&format!("/executions/{fid}/resume"), None).await;
    assert_eq!(code, 409, "ended: {body}");
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_in_direct_mode_answer_409() {
    let api = TestApi::start("", vec![ticks()]).await;
    let node = api.running.node();
    let fid = api.launch("ticks").await;
    events_until(node, &fid, "a tick", |e| count(e, Kind::Debug) >= 1).await;
    for what in ["pause", "resume"] {
        let (code, body) = api.post(&format!("/executions/{fid}/{what}"), None).await;
        assert_eq!(code, 409, "{what}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("durable mode"),
            "{body}"
        );
    }
    let (code, _) = api
        .post(&format!("/executions/{}/pause", Fid::new()), None)
        .await;
    assert_eq!(code, 404, "an unknown execution");
    let resp = api
        .req(
            reqwest::Method::GET,
            &format!("/executions/{fid}/durable"),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404, "not durable");
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_lock_is_answered_through_its_workflow_and_expires_by_its_timer() {
    let asks = FlowDef::rust("asks", |ctx: Ctx, _| async move {
        let long = Some(std::time::Duration::from_secs(120));
        let yes = ctx.lock("ok?", json!({}), long).await?;
        // The same id asked again after its answer: a new lock.
        let mut same = Vec::new();
        for name in ["first", "second"] {
            same.push(ctx.lock_as("same".into(), name, json!({}), long).await?);
        }
        let late = ctx
            .lock("late?", json!({}), Some(std::time::Duration::from_secs(1)))
            .await;
        Ok(json!({"yes": yes, "same": same, "late": late.err().map(|e| e.to_string())}))
    });
    let api = TestApi::start(&durable_config(""), vec![asks]).await;
    let node = api.running.node();
    let fid = api.launch("asks").await;
    let (_, lid) = wait_lock(node, &fid).await;
    let described = api.get(&format!("/executions/{fid}/durable")).await;
    assert_eq!(described["open_locks"][0]["lid"], json!(lid), "{described}");
    assert_eq!(
        lid,
        format!("{fid}-1"),
        "the nth lock's id is the same in every attempt"
    );
    let answer = |lid: String, answer: Value| {
        let path = format!("/executions/{fid}/locks/{lid}");
        let api = &api;
        async move { api.post(&path, Some(json!({ "answer": answer }))).await }
    };
    let (code, body) = answer("nope".into(), json!(1)).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = answer(lid.clone(), json!("yes")).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = answer(lid.clone(), json!("no")).await;
    assert_eq!(code, 404, "the first answer counts: {body}");
    for (n, said) in [(2, "a"), (3, "b")] {
        let locks = |e: &[kodo_core::Event]| e.iter().filter(|e| e.kind == Kind::Lock).count();
        events_until(node, &fid, "the next lock", |e| locks(e) >= n).await;
        let (code, body) = answer("same".into(), json!(said)).await;
        assert_eq!(code, 200, "{body}");
    }
    let events = ended_with(node, &fid, Status::Finished).await;
    assert_eq!(
        payloads(&events, Kind::Final),
        [
            json!({"yes": "yes", "same": ["a", "b"], "late": format!("lock {fid}-2 (late?) expired")})
        ]
    );
    // The workflow's timer expired it (the attempt itself would wait 30 s more).
    let last = events.iter().rfind(|e| e.kind == Kind::Lock).unwrap();
    let lease = events.iter().rfind(|e| e.kind == Kind::Lease).unwrap();
    assert!(
        lease.ts - last.ts < 10.0,
        "expired after {} s",
        lease.ts - last.ts
    );
    let (code, _) = answer(lid, json!("again")).await;
    assert_eq!(code, 409, "the execution ended");
    api.running.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_given_before_its_lock_was_recorded_is_kept_for_it() {
    use kodo_durable::{Temporal, TemporalBackend, TemporalOptions, TemporalWorker};
    let asks = FlowDef::rust("asks", |ctx: Ctx, _| async move {
        Ok(ctx.lock("ok?", json!({}), None).await?)
    });
    let mut flows = kodo_actors::Flows::default();
    flows.add(asks);
    let temporal = Temporal::connect(TemporalOptions {
        address: temporal_address(),
        namespace: "default".into(),
        task_queue: format!("test-{}", Fid::new()),
        workflow_id_prefix: "kodo-".into(),
        execution_timeout: None,
        heartbeat_timeout: std::time::Duration::from_secs(10),
        attempts: 3,
        identity: format!("kodo@{}", std::process::id()),
    })
    .await
    .expect("temporal");
    let cluster = kodo_cluster::Solo::shared();
    let backend = TemporalBackend::new(temporal.clone(), None, cluster.clone());
    let options = kodo_actors::NodeOptions {
        backend: std::sync::Arc::new(backend),
        launch_wait: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let transport = kodo_transport::LocalQueue::new(2, 1 << 20);
    let t = TestNode::start_on(flows, transport, cluster, options).await;
    // No worker runs: the workflow waits, and nothing opened the lock yet.
    let fid = t.node.launch("asks", "ann", json!({})).await.unwrap().fid;
    // Answered meanwhile (unchecked: no worker can say what is open).
    t.node
        .answer_lock(&fid, &format!("{fid}-1"), json!("early"))
        .await
        .expect("recorded");
    let worker = TemporalWorker::start(temporal, t.node.clone()).expect("worker");
    let events = ended_with(&t.node, &fid, Status::Finished).await;
    assert_eq!(payloads(&events, Kind::Final), [json!("early")]);
    worker.shutdown().await;
    t.node.shutdown("test over").await;
}
