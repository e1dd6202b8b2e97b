//! The runtime on a real PostgreSQL server that goes away mid-run and comes
//! back: spoolers retry, Tracers wait on the bounded queue, `/health` says
//! the store is down, and every accepted event is stored once.

use kodo_actors::{Ctx, FlowDef};
use kodo_tests::{Server, TestApi};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const EXECUTIONS: u64 = 4;
const LINES: u64 = 400;
const CAPACITY: u64 = 16 * 1024;

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
        fids.push(api.launch("chatty").await);
    }
    let (code, _) = api.health().await;
    assert_eq!(code, 200);

    pg.stop();
    let down = api
        .health_until("the store down", |code, body| {
            code == 503 && body["store"]["ok"] == false
        })
        .await;
    assert!(down["store"]["error"].as_str().is_some(), "{down}");
    // The flows go on emitting into the bounded queue until it is full, then
    // wait: the queue never holds more than its bound.
    let full = api
        .health_until("a full queue", |_, body| {
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
    for lines in api.finished_debug_lines(&fids).await {
        assert_eq!(lines.len() as u64, LINES, "every line stored once");
    }
    api.health_until("the store back", |code, _| code == 200)
        .await;
    let report = api.running.shutdown("test over").await;
    assert!(report.all_stored(), "{report}");
}
