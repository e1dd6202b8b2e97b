//! A paid MIP-003 job through a node that is SIGKILLed: the job resumes
//! (`recover = "resume"`) without waiting for its payment again. The
//! payment service is an HTTP server of this test on 127.0.0.1.

mod common;

use common::*;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "payment-secret-0123456789";

/// A payment service: counts the payment requests, answers their fields.
async fn payment_service() -> (String, Arc<Mutex<usize>>) {
    let asked = Arc::new(Mutex::new(0));
    let counter = asked.clone();
    let app = axum::Router::new().route(
        "/pay",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            *counter.lock().unwrap() += 1;
            async move {
                axum::Json(json!({
                    "blockchainIdentifier": format!("bc-{}", body["job_id"].as_str().unwrap()),
                    "payByTime": 1_900_000_000,
                    "submitResultTime": 1_900_000_600,
                    "unlockTime": 1_900_001_200,
                    "externalDisputeUnlockTime": 1_900_001_800,
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/pay", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, asked)
}

/// The job's MIP-003 status once `done` holds it.
async fn status_until(base: &str, job: &str, done: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/mip003/paid/status?job_id={job}");
    until(
        &format!("status of {job}"),
        DEADLINE,
        Duration::from_millis(20),
        async || Some(get(base, &path).await).filter(&done),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_job_resumed_after_sigkill_is_not_held_again() {
    let dir = tempfile::tempdir().unwrap();
    let (url, asked) = payment_service().await;
    let gate = dir.path().join("gate");
    // Says it started, then waits for the gate file (a run that is killed
    // while it waits runs again, from the start, after the restart).
    let config = write_config(
        dir.path(),
        &format!(
            "[flows.paid]\ncommand = [\"sh\", \"-c\", \"echo started; while [ ! -e '{}' ]; do sleep 0.02; done; \
             echo '{{\\\"kind\\\":\\\"result\\\",\\\"payload\\\":\\\"served\\\"}}' >&3\"]\n\
             recover = \"resume\"\n\
             [flows.paid.masumi]\naccess = \"open\"\npayment_url = \"{url}\"\n\
             payment_token = \"{SECRET}\"\npayment_timeout = 120\n",
            gate.display()
        ),
    );
    let (mut node, base) = start(&config, dir.path()).await;
    let started = post(
        &base,
        "/mip003/paid/start_job",
        json!({"identifier_from_purchaser": "buyer"}),
    )
    .await;
    let job = started["job_id"].as_str().unwrap().to_string();
    status_until(&base, &job, |s| s["status"] == "awaiting_payment").await;
    let confirmed = reqwest::Client::new()
        .post(format!("{base}/mip003/paid/payment"))
        .bearer_auth(SECRET)
        .json(&json!({"job_id": job}))
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status().as_u16(), 200);
    stream_until(&base, &job, "data: \"started\"").await;
    node.start_kill().unwrap();
    node.wait().await.unwrap();

    // The restarted node resumes it: running, not awaiting payment.
    let (mut node, base) = start(&config, dir.path()).await;
    let events_path = format!("/executions/{job}/events");
    until(
        "the resumed run starts its flow",
        DEADLINE,
        Duration::from_millis(20),
        async || {
            let events = get(&base, &events_path).await;
            let started = events["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "stdout")
                .count();
            (started == 2).then_some(())
        },
    )
    .await;
    assert_eq!(
        get(&base, &format!("/mip003/paid/status?job_id={job}")).await["status"],
        "running"
    );
    std::fs::write(&gate, "").unwrap();
    let done = status_until(&base, &job, |s| s["status"] == "completed").await;
    assert_eq!(done["result"], "served");
    let locks = get(&base, &format!("{events_path}?kinds=lock")).await;
    assert_eq!(locks["events"].as_array().unwrap().len(), 1, "held once");
    assert_eq!(*asked.lock().unwrap(), 1, "one payment request");
    assert_eq!(terminate(&mut node).await, 0);
}
