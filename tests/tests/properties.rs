//! Property tests, state-machine style: random schedules of launches, emits,
//! locks, answers, kills, Runner panics, Spooler crashes and store write
//! failures run against a real node on a real SQLite file (behind the
//! fault-injecting wrapper), checked against a model.
//!
//! Invariants: every event a flow had accepted is stored exactly once and in
//! order; seqs have no gap; every execution reaches exactly one final status,
//! the one the model expects; the queue never holds more bytes than its
//! bound; shutdown leaves nothing unstored.
//!
//! The same machine runs on Redis Streams too (a real server from
//! `scripts/redis`), under the same invariants.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256; Redis runs an
//! eighth of them, at least 8).

use kodo_actors::{Ctx, FlowDef, Flows, NodeOptions};
use kodo_core::{Fid, Kind, Status};
use kodo_tests::*;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The queue bound of every case: small, so Tracers feel backpressure.
const CAPACITY: usize = 16 * 1024;
/// Spooler crashes per case stay under the restart policy (10 per minute per shard).
const MAX_CRASHES: u32 = 8;
/// Failed writes per case: the Spooler's backoff doubles (10 ms, 20 ms... 2 s),
/// so more failures would only outwait the test's deadline.
const MAX_FAILED_WRITES: u32 = 8;

#[derive(Clone, Debug)]
enum Op {
    Launch,
    Emit(usize, u8),
    Lock(usize),
    Answer(usize),
    Kill(usize),
    Panic(usize),
    Finish(usize),
    Fail(usize),
    CrashSpooler { after_commit: bool },
    FailWrites(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let e = 0usize..8;
    prop_oneof![
        3 => Just(Op::Launch),
        6 => (e.clone(), 1u8..20).prop_map(|(i, n)| Op::Emit(i, n)),
        2 => e.clone().prop_map(Op::Lock),
        2 => e.clone().prop_map(Op::Answer),
        1 => e.clone().prop_map(Op::Kill),
        1 => e.clone().prop_map(Op::Panic),
        1 => e.clone().prop_map(Op::Finish),
        1 => e.prop_map(Op::Fail),
        1 => any::<bool>().prop_map(|after_commit| Op::CrashSpooler { after_commit }),
        1 => (1u8..4).prop_map(Op::FailWrites),
    ]
}

/// What the test tells a puppet flow to do.
enum Cmd {
    Emit(u8, oneshot::Sender<Vec<Value>>),
    Lock(String),
    Panic,
    Finish,
    Fail,
}

type Mailboxes = Arc<Mutex<HashMap<u64, mpsc::UnboundedReceiver<Cmd>>>>;

/// A Rust flow that does what the test tells it, one command at a time.
fn puppet(mailboxes: Mailboxes) -> FlowDef {
    FlowDef::rust("puppet", move |ctx: Ctx, inputs: Value| {
        let mailboxes = mailboxes.clone();
        async move {
            let key = inputs["key"].as_u64().expect("key");
            let mut rx = mailboxes.lock().unwrap().remove(&key).expect("mailbox");
            let mut counter = 0u64;
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Cmd::Emit(n, reply) => {
                        let mut accepted = Vec::new();
                        for _ in 0..n {
                            counter += 1;
                            let payload = json!({"key": key, "i": counter, "pad": "x".repeat(64)});
                            if ctx.emit(Kind::Debug, &payload).await.is_err() {
                                break;
                            }
                            accepted.push(payload);
                        }
                        let _ = reply.send(accepted);
                    }
                    Cmd::Lock(lid) => {
                        ctx.lock_as(
                            lid,
                            "ask",
                            json!({"key": key}),
                            Some(Duration::from_secs(3600)),
                        )
                        .await?;
                    }
                    Cmd::Panic => panic!("puppet {key} told to panic"),
                    Cmd::Finish => return Ok(json!({"key": key})),
                    Cmd::Fail => return Err(format!("puppet {key} told to fail").into()),
                }
            }
            Ok(Value::Null)
        }
    })
}

struct Exec {
    fid: Fid,
    tx: mpsc::UnboundedSender<Cmd>,
    accepted: Vec<Value>,
    lock: Option<String>,
    expected: Option<(Status, &'static str)>,
}

/// Runs one case on the local queue, or on Redis Streams at `redis` (a
/// fresh key prefix per case).
async fn run_case(ops: Vec<Op>, redis: Option<&str>) -> Result<(), TestCaseError> {
    let mailboxes: Mailboxes = Arc::default();
    let mut flows = Flows::default();
    flows.add(puppet(mailboxes.clone()));
    let t = match redis {
        None => TestNode::start(flows, 2, CAPACITY, NodeOptions::default()).await,
        Some(url) => {
            let options = kodo_transport::RedisOptions {
                capacity_bytes: CAPACITY,
                ..redis_options(url, "node", 2)
            };
            let cluster = redis_cluster(&options).await;
            let transport = redis_transport(options).await;
            TestNode::start_on(flows, transport, cluster, NodeOptions::default()).await
        }
    };
    let mut execs: Vec<Exec> = Vec::new();
    let mut crashes = 0;
    let mut failed_writes = 0;
    let mut next_key = 0u64;
    for op in ops {
        let pick = |i: usize, execs: &mut Vec<Exec>| {
            let n = execs.len();
            (n > 0)
                .then(|| i % n)
                .filter(|&i| execs[i].expected.is_none())
        };
        match op {
            Op::Launch => {
                let (tx, rx) = mpsc::unbounded_channel();
                next_key += 1;
                mailboxes.lock().unwrap().insert(next_key, rx);
                let launched = t
                    .node
                    .launch("puppet", "prop", json!({"key": next_key}))
                    .await;
                let fid = launched.expect("launch").fid;
                execs.push(Exec {
                    fid,
                    tx,
                    accepted: Vec::new(),
                    lock: None,
                    expected: None,
                });
            }
            Op::Emit(i, n) => {
                if let Some(i) = pick(i, &mut execs).filter(|&i| execs[i].lock.is_none()) {
                    let (reply, accepted) = oneshot::channel();
                    execs[i].tx.send(Cmd::Emit(n, reply)).unwrap();
                    let accepted = tokio::time::timeout(DEADLINE, accepted)
                        .await
                        .expect("emits accepted in time")
                        .expect("puppet replied");
                    prop_assert_eq!(
                        accepted.len(),
                        n as usize,
                        "a live flow's emits are accepted"
                    );
                    execs[i].accepted.extend(accepted);
                }
            }
            Op::Lock(i) => {
                if let Some(i) = pick(i, &mut execs).filter(|&i| execs[i].lock.is_none()) {
                    next_key += 1;
                    let lid = format!("lock-{}-{next_key}", execs[i].fid);
                    execs[i].tx.send(Cmd::Lock(lid.clone())).unwrap();
                    // Wait until this very lock is stored (an earlier one may be too).
                    let mut sub = t.node.hub().subscribe(&execs[i].fid);
                    tokio::time::timeout(DEADLINE, async {
                        while !stored_events(&t.store, &execs[i].fid)
                            .await
                            .iter()
                            .any(|e| e.kind == Kind::Lock && e.payload.contains(&lid))
                        {
                            sub.changed().await;
                        }
                    })
                    .await
                    .expect("lock stored in time");
                    execs[i].lock = Some(lid);
                }
            }
            Op::Answer(i) => {
                if let Some(i) = pick(i, &mut execs)
                    && let Some(lid) = execs[i].lock.take()
                {
                    t.node
                        .answer_lock(&execs[i].fid, &lid, json!(i))
                        .await
                        .expect("open lock answers");
                }
            }
            Op::Kill(i) => {
                if let Some(i) = pick(i, &mut execs) {
                    t.node
                        .kill(&execs[i].fid, "by the test")
                        .await
                        .expect("kill a live execution");
                    execs[i].expected = Some((Status::Killed, "killed: by the test"));
                }
            }
            Op::Panic(i) => {
                if let Some(i) = pick(i, &mut execs).filter(|&i| execs[i].lock.is_none()) {
                    execs[i].tx.send(Cmd::Panic).unwrap();
                    execs[i].expected = Some((Status::Error, "runner crashed"));
                }
            }
            Op::Finish(i) => {
                if let Some(i) = pick(i, &mut execs).filter(|&i| execs[i].lock.is_none()) {
                    execs[i].tx.send(Cmd::Finish).unwrap();
                    execs[i].expected = Some((Status::Finished, ""));
                }
            }
            Op::Fail(i) => {
                if let Some(i) = pick(i, &mut execs).filter(|&i| execs[i].lock.is_none()) {
                    execs[i].tx.send(Cmd::Fail).unwrap();
                    execs[i].expected = Some((Status::Error, "told to fail"));
                }
            }
            Op::CrashSpooler { after_commit } => {
                if crashes < MAX_CRASHES {
                    crashes += 1;
                    let f = &t.faults;
                    let which = if after_commit {
                        &f.panic_after_commit
                    } else {
                        &f.panic_before_commit
                    };
                    which.fetch_add(1, Ordering::SeqCst);
                }
            }
            Op::FailWrites(k) => {
                let k = (k as u32).min(MAX_FAILED_WRITES - failed_writes);
                failed_writes += k;
                t.faults.fail_writes.fetch_add(k, Ordering::SeqCst);
            }
        }
    }
    // Let every execution still running finish.
    for (i, e) in execs.iter_mut().enumerate() {
        if e.expected.is_none() {
            if let Some(lid) = e.lock.take() {
                t.node
                    .answer_lock(&e.fid, &lid, json!(i))
                    .await
                    .expect("open lock answers");
            }
            e.tx.send(Cmd::Finish).unwrap();
            e.expected = Some((Status::Finished, ""));
        }
    }
    for e in &execs {
        let status = wait_final(&t.node, &e.fid).await;
        let events = stored_events(&t.store, &e.fid).await;
        let logged = check_log(&events).map_err(TestCaseError::fail)?;
        let (expected, cause) = e.expected.expect("set above");
        prop_assert_eq!(status, expected);
        prop_assert_eq!(logged, expected);
        if !cause.is_empty() {
            let error = payloads(&events, Kind::Error);
            prop_assert!(error[0].as_str().unwrap().contains(cause), "{:?}", error);
        }
        prop_assert_eq!(
            &payloads(&events, Kind::Debug),
            &e.accepted,
            "accepted = stored, in order"
        );
    }
    let health = t.node.transport().health().await;
    prop_assert!(
        health.peak_bytes <= CAPACITY,
        "queue peak {} > {}",
        health.peak_bytes,
        CAPACITY
    );
    let report = t.node.shutdown("case over").await;
    prop_assert!(report.all_stored(), "{}", report);
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_event_is_lost_duplicated_or_reordered_and_every_execution_ends_once(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_case(ops, None))?;
    }
}

/// The same state machine with Redis Streams as the transport (one real
/// server for all cases; fewer cases: each costs a few round trips more).
#[test]
fn on_redis_no_event_is_lost_duplicated_or_reordered_and_every_execution_ends_once() {
    let server = Server::redis();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = ProptestConfig {
        cases: (cases() / 8).max(8),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
        rt.block_on(run_case(ops, Some(&server.url)))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
