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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_reaches_a_durable_execution_and_ends_it_killed() {
    let waits = FlowDef::rust("waits", |ctx: Ctx, _| async move {
        ctx.debug("waiting").await?;
        std::future::pending::<()>().await;
        Ok(json!("never"))
    });
    let api = TestApi::start(&durable_config(""), vec![waits]).await;
    let node = api.running.node();
    let fid = api.launch("waits").await;
    wait_event(node, &fid, Kind::Debug).await;
    let resp = api
        .req(
            reqwest::Method::POST,
            &format!("/executions/{fid}/kill"),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
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
    let waits = FlowDef::rust("waits", |ctx: Ctx, _| async move {
        ctx.debug("waiting").await?;
        std::future::pending::<()>().await;
        Ok(json!("never"))
    });
    let api = TestApi::start(&durable_config("execution_timeout = 1\n"), vec![waits]).await;
    let node = api.running.node();
    let fid = api.launch("waits").await;
    let events = ended_with(node, &fid, Status::Error).await;
    assert_eq!(
        payloads(&events, Kind::Error),
        [json!("timed out after 1 s")]
    );
    api.running.shutdown("test over").await;
}
