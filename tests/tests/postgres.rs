//! The runtime on a real PostgreSQL server that goes away mid-run and comes
//! back: spoolers retry, Tracers wait on the bounded queue, `/health` says
//! the store is down, and every accepted event is stored once.

use kodo_actors::{Ctx, FlowDef};
use kodo_core::Fid;
use kodo_tests::{DEADLINE, Server, TestApi, check_log, stored_events, wait_final};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const EXECUTIONS: u64 = 4;
const LINES: u64 = 400;
const CAPACITY: u64 = 16 * 1024;

async fn health(api: &TestApi) -> (u16, Value) {
    let resp = api.req(Method::GET, "/health", None).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Asks `/health` until `done` holds (a condition with a deadline).
async fn health_until(api: &TestApi, what: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
    let work = async {
        loop {
            let (code, body) = health(api).await;
            if done(code, &body) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(DEADLINE, work)
        .await
        .unwrap_or_else(|_| panic!("/health never showed {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_loses_nothing_and_shows_in_health() {
    let pg = Server::postgres();
    let emitted = Arc::new(AtomicU64::new(0));
    let counter = emitted.clone();
    let flow = FlowDef::rust("chatty", move |ctx: Ctx, _| {
        let counter = counter.clone();
        async move {
            for i in 0..LINES {
                ctx.debug(&format!("line {i} {}", "x".repeat(100))).await?;
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(json!("done"))
        }
    });
    let config = format!("[transport]\ncapacity_bytes = {CAPACITY}\n");
    let api = TestApi::start_on(Some(&pg.url), &config, vec![flow]).await;
    let mut fids = Vec::new();
    for _ in 0..EXECUTIONS {
        let resp = api
            .req(Method::POST, "/flows/chatty/executions", None)
            .json(&json!({"inputs": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: Value = resp.json().await.unwrap();
        fids.push(Fid::parse(body["fid"].as_str().unwrap()).unwrap());
    }
    let (code, _) = health(&api).await;
    assert_eq!(code, 200);

    pg.stop();
    let down = health_until(&api, "the store down", |code, body| {
        code == 503 && body["store"]["ok"] == false
    })
    .await;
    assert!(down["store"]["error"].as_str().is_some(), "{down}");
    // The flows go on emitting into the bounded queue until it is full, then
    // wait: the queue never holds more than its bound.
    let full = health_until(&api, "a full queue", |_, body| {
        body["transport"]["used_bytes"].as_u64().unwrap() + 1024 > CAPACITY
    })
    .await;
    assert!(full["transport"]["peak_bytes"].as_u64().unwrap() <= CAPACITY);
    let during = emitted.load(Ordering::SeqCst);
    assert!(
        during < EXECUTIONS * LINES,
        "the flows felt no backpressure"
    );

    pg.restart();
    for fid in &fids {
        let status = wait_final(api.running.node(), fid).await;
        assert_eq!(status, kodo_core::Status::Finished);
        let events = stored_events(api.running.node().store(), fid).await;
        check_log(&events).unwrap();
        let lines = events
            .iter()
            .filter(|e| e.kind == kodo_core::Kind::Debug)
            .count() as u64;
        assert_eq!(lines, LINES, "every line stored once");
    }
    health_until(&api, "the store back", |code, _| code == 200).await;
    assert_eq!(api.running.shutdown("test over").await, 0);
}
