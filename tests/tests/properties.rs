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
//! `scripts/redis`), with a second node in the cluster: executions launched
//! there are killed and answered through the first (routed to their node),
//! and the second node may be lost (it stops renewing its lease and
//! publishing, as a dead process does): the first takes it over, and each of
//! its unfinished executions ends `error: node lost` after a gap-free prefix
//! of what its flow had published. It runs in durable mode on a real Temporal server
//! (`KODO_TEST_TEMPORAL_ADDRESS`), where pauses, resumes and worker
//! restarts (its attempts given back and retried: the flow runs again)
//! join the operations, under the same invariants.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256; Redis runs an
//! eighth of them, at least 8); `PROPTEST_TEMPORAL_CASES` those of the
//! durable variant (default 4: each worker restart costs seconds).

use kodo_actors::{Control, Ctx, FlowDef, Flows, NodeOptions};
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
/// Worker restarts per case (each costs a few seconds).
const MAX_RESTARTS: u32 = 2;
/// The lease of the nodes on Redis: short, as a lost node costs a lease.
const LEASE: Duration = Duration::from_secs(1);
/// Failed writes per case: the Spooler's backoff doubles (10 ms, 20 ms... 2 s),
/// so more failures would only outwait the test's deadline.
const MAX_FAILED_WRITES: u32 = 8;

#[derive(Clone, Debug)]
enum Op {
    Launch,
    Emit(usize, u8),
    /// A durable step: its result journaled, replayed by a retry.
    Step(usize),
    Lock(usize),
    Answer(usize),
    Kill(usize),
    Panic(usize),
    Finish(usize),
    Fail(usize),
    CrashSpooler {
        after_commit: bool,
    },
    FailWrites(u8),
    /// Durable mode only: pause, resume, a worker restarted.
    Pause(usize),
    Resume(usize),
    RestartWorker,
    /// Redis only: a launch on the second node; the second node lost.
    LaunchOther,
    LoseOther,
}

fn op() -> impl Strategy<Value = Op> {
    let e = 0usize..8;
    prop_oneof![
        3 => Just(Op::Launch),
        6 => (e.clone(), 1u8..20).prop_map(|(i, n)| Op::Emit(i, n)),
        2 => e.clone().prop_map(Op::Step),
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

/// The operations on Redis: those of [`op`], launches on a second node,
/// and its loss.
fn cluster_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => op(),
        3 => Just(Op::LaunchOther),
        1 => Just(Op::LoseOther),
    ]
}

/// The operations of durable mode: those of [`op`], pauses, resumes and
/// worker restarts.
fn durable_op() -> impl Strategy<Value = Op> {
    let e = 0usize..8;
    prop_oneof![
        8 => op(),
        3 => e.clone().prop_map(Op::Pause),
        3 => e.prop_map(Op::Resume),
        2 => Just(Op::RestartWorker),
    ]
}

/// What the test tells a puppet flow to do.
enum Cmd {
    Emit(u8, oneshot::Sender<Vec<Value>>),
    Step(oneshot::Sender<Result<Value, String>>),
    Lock(String),
    Panic,
    Finish,
    Fail,
}

/// Each puppet's commands; a retried puppet (durable mode) takes up the
/// same mailbox.
type Mailboxes = Arc<Mutex<HashMap<u64, Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Cmd>>>>>>;

/// Each puppet's step results the test was given, in order: a retried
/// puppet takes them again first, from its journal.
type Journals = Arc<Mutex<HashMap<u64, Vec<Value>>>>;

/// A Rust flow that does what the test tells it, one command at a time.
/// A retried one first takes its earlier steps again: each must come from
/// the journal, with the value given the first time, without running.
fn puppet(mailboxes: Mailboxes, journals: Journals) -> FlowDef {
    FlowDef::rust("puppet", move |ctx: Ctx, inputs: Value| {
        let mailboxes = mailboxes.clone();
        let journals = journals.clone();
        async move {
            let key = inputs["key"].as_u64().expect("key");
            let mailbox = mailboxes
                .lock()
                .unwrap()
                .get(&key)
                .expect("mailbox")
                .clone();
            let mut rx = mailbox.lock().await;
            let taken = journals
                .lock()
                .unwrap()
                .get(&key)
                .cloned()
                .unwrap_or_default();
            for (k, given) in taken.iter().enumerate() {
                let replayed: Value = ctx
                    .step(&format!("s{}", k + 1), async {
                        Err::<Value, _>("a journaled step ran again")
                    })
                    .await?;
                if &replayed != given {
                    return Err(format!("step {} replayed {replayed}, given {given}", k + 1).into());
                }
            }
            let mut steps = taken.len();
            let mut counter = 0u64;
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Cmd::Step(reply) => {
                        steps += 1;
                        let attempt = ctx.attempt();
                        let taken = ctx
                            .step(&format!("s{steps}"), async move {
                                Ok::<_, std::convert::Infallible>(
                                    json!({"key": key, "k": steps, "attempt": attempt}),
                                )
                            })
                            .await
                            .map_err(|e| e.to_string());
                        if let Ok(value) = &taken {
                            journals
                                .lock()
                                .unwrap()
                                .entry(key)
                                .or_default()
                                .push(value.clone());
                        }
                        let _ = reply.send(taken);
                    }
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
    /// The results of its steps, in order.
    steps: Vec<Value>,
    lock: Option<String>,
    paused: bool,
    /// Attempts given back by a worker restart (durable mode).
    retries: usize,
    expected: Option<(Status, &'static str)>,
    /// Launched on the second node (Redis).
    other: bool,
    /// Its node was lost: what it published is stored up to some point.
    lost: bool,
}

/// Where a case runs.
enum On<'a> {
    /// The in-process queue, direct mode.
    Local,
    /// Redis Streams at this URL (a fresh key prefix per case).
    Redis(&'a str),
    /// Durable mode on the Temporal server at this address (a task queue
    /// of its own per case), the in-process queue.
    Temporal(&'a str),
}

/// Runs one case.
async fn run_case(ops: Vec<Op>, on: On<'_>) -> Result<(), TestCaseError> {
    let mailboxes: Mailboxes = Arc::default();
    let journals: Journals = Arc::default();
    let mut flows = Flows::default();
    flows.add(puppet(mailboxes.clone(), journals.clone()));
    let mut durable = None;
    let mut other = None;
    let t = match on {
        On::Local => TestNode::start(flows, 2, CAPACITY, NodeOptions::default()).await,
        On::Redis(url) => {
            let options = kodo_transport::RedisOptions {
                capacity_bytes: CAPACITY,
                claim_idle: Duration::from_millis(500),
                ..redis_options(url, "node", 2)
            };
            let cluster = redis_cluster(&options).await;
            let transport = redis_transport(options.clone()).await;
            let node_options = |name: &str| NodeOptions {
                node: name.into(),
                lease: LEASE,
                ..NodeOptions::default()
            };
            let t =
                TestNode::start_on(flows.clone(), transport, cluster, node_options("one")).await;
            // The second node: same Redis, same database, its own everything else.
            let options = kodo_transport::RedisOptions {
                consumer: "other".into(),
                ..options
            };
            let store = kodo_store::open(&t.url, &Default::default())
                .await
                .expect("open the store again");
            let node = kodo_actors::Node::start(
                store,
                redis_transport(options.clone()).await,
                redis_cluster(&options).await,
                flows,
                node_options("two"),
            )
            .await
            .expect("start the second node");
            other = Some(Arc::new(node));
            t
        }
        On::Temporal(address) => {
            let (node, temporal) = durable_node(flows, address).await;
            let worker = kodo_durable::TemporalWorker::start(temporal.clone(), node.node.clone())
                .expect("worker");
            durable = Some((temporal, worker));
            node
        }
    };
    let mut execs: Vec<Exec> = Vec::new();
    let mut crashes = 0;
    let mut restarts = 0;
    let mut failed_writes = 0;
    let mut next_key = 0u64;
    let mut lost_other = None;
    for op in ops {
        let pick = |i: usize, execs: &mut Vec<Exec>| {
            let n = execs.len();
            (n > 0)
                .then(|| i % n)
                .filter(|&i| execs[i].expected.is_none())
        };
        match op {
            Op::Launch | Op::LaunchOther => {
                let on_other = matches!(op, Op::LaunchOther);
                let node = match (on_other, &other) {
                    (false, _) => &t.node,
                    (true, Some(other)) => other,
                    (true, None) => continue,
                };
                let (tx, rx) = mpsc::unbounded_channel();
                next_key += 1;
                let mailbox = Arc::new(tokio::sync::Mutex::new(rx));
                mailboxes.lock().unwrap().insert(next_key, mailbox);
                let launched = node
                    .launch("puppet", "prop", json!({"key": next_key}))
                    .await;
                let fid = launched.expect("launch").fid;
                execs.push(Exec {
                    fid,
                    tx,
                    accepted: Vec::new(),
                    steps: Vec::new(),
                    lock: None,
                    paused: false,
                    retries: 0,
                    expected: None,
                    other: on_other,
                    lost: false,
                });
                if durable.is_some() {
                    // Paused or resumed once it runs (see `Node::control`).
                    let fid = &execs.last().unwrap().fid;
                    events_until(&t.node, fid, "running", |e| {
                        statuses(e).contains(&Status::Running)
                    })
                    .await;
                }
            }
            Op::Emit(i, n) => {
                if let Some(i) =
                    pick(i, &mut execs).filter(|&i| execs[i].lock.is_none() && !execs[i].paused)
                {
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
            Op::Step(i) => {
                if let Some(i) =
                    pick(i, &mut execs).filter(|&i| execs[i].lock.is_none() && !execs[i].paused)
                {
                    let (reply, taken) = oneshot::channel();
                    execs[i].tx.send(Cmd::Step(reply)).unwrap();
                    let taken = tokio::time::timeout(DEADLINE, taken)
                        .await
                        .expect("a step is journaled in time")
                        .expect("puppet replied");
                    let taken = taken.map_err(TestCaseError::fail)?;
                    execs[i].steps.push(taken);
                }
            }
            Op::Lock(i) => {
                if let Some(i) =
                    pick(i, &mut execs).filter(|&i| execs[i].lock.is_none() && !execs[i].paused)
                {
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
                    // Durable mode catches the panic in its activity; direct mode's
                    // supervisor sees the Runner crash.
                    let cause = if durable.is_some() {
                        "flow panicked"
                    } else {
                        "runner crashed"
                    };
                    execs[i].expected = Some((Status::Error, cause));
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
            Op::Pause(i) | Op::Resume(i) if durable.is_some() => {
                let pause = matches!(op, Op::Pause(_));
                if let Some(i) = pick(i, &mut execs).filter(|&i| execs[i].paused != pause) {
                    let control = if pause {
                        Control::Pause
                    } else {
                        Control::Resume
                    };
                    t.node
                        .control(&execs[i].fid, control)
                        .await
                        .expect("pause or resume");
                    execs[i].paused = pause;
                }
            }
            Op::RestartWorker if restarts < MAX_RESTARTS => {
                if let Some((temporal, worker)) = durable.take() {
                    restarts += 1;
                    // Ended ones first: an end the worker took along would be lost to the model.
                    for e in execs.iter().filter(|e| e.expected.is_some()) {
                        wait_final(&t.node, &e.fid).await;
                    }
                    worker.shutdown().await;
                    let worker =
                        kodo_durable::TemporalWorker::start(temporal.clone(), t.node.clone())
                            .expect("worker");
                    durable = Some((temporal, worker));
                    // Their attempts are given back and run again: the flows
                    // start over, waiting on no lock.
                    // Each retry begun (its marker stored) before the next
                    // operation: a worker stopped before it took the retry up
                    // gives nothing back.
                    for e in execs.iter_mut().filter(|e| e.expected.is_none()) {
                        e.lock = None;
                        e.retries += 1;
                        events_until(&t.node, &e.fid, "the retry's marker", |events| {
                            retries_marked(events) == e.retries
                        })
                        .await;
                    }
                }
            }
            Op::LoseOther => {
                if let Some(node) = other.take() {
                    // Ended ones first: their end is published already.
                    for e in execs.iter().filter(|e| e.other && e.expected.is_some()) {
                        wait_final(&t.node, &e.fid).await;
                    }
                    // Dead: no renewal, nothing more published.
                    node.lease().expect("a lease").abandon();
                    node.transport().close();
                    for e in execs.iter_mut().filter(|e| e.other && e.expected.is_none()) {
                        e.expected = Some((Status::Error, "node lost"));
                        e.lost = true;
                    }
                    lost_other = Some(node);
                }
            }
            Op::Pause(_) | Op::Resume(_) | Op::RestartWorker => {}
        }
    }
    // Let every execution still running finish (a paused one resumed
    // first: it emits again).
    for (i, e) in execs.iter_mut().enumerate() {
        if e.expected.is_none() {
            if let Some(lid) = e.lock.take() {
                t.node
                    .answer_lock(&e.fid, &lid, json!(i))
                    .await
                    .expect("open lock answers");
            }
            if e.paused {
                t.node
                    .control(&e.fid, Control::Resume)
                    .await
                    .expect("resume");
                let (reply, accepted) = oneshot::channel();
                e.tx.send(Cmd::Emit(2, reply)).unwrap();
                let accepted = tokio::time::timeout(DEADLINE, accepted)
                    .await
                    .expect("a resumed flow emits again")
                    .expect("puppet replied");
                e.accepted.extend(accepted);
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
        // Every event accepted is stored, in order, whichever attempt's
        // (a retry's marker, a text, aside).
        let stored: Vec<Value> = payloads(&events, Kind::Debug)
            .into_iter()
            .filter(Value::is_object)
            .collect();
        if e.lost {
            // Published but not yet in Redis when the node died: gone.
            prop_assert!(
                e.accepted.starts_with(&stored),
                "a lost node's events: stored = a prefix of accepted"
            );
        } else {
            prop_assert_eq!(&stored, &e.accepted, "accepted = stored, in order");
        }
        // Every step journaled once, in order, with the value it gave.
        let journaled: Vec<Value> = payloads(&events, Kind::Step)
            .into_iter()
            .enumerate()
            .map(|(i, step)| {
                assert_eq!(step["n"], i as u64 + 1, "steps numbered in order");
                assert_eq!(step["name"], format!("s{}", i + 1));
                step["result"].clone()
            })
            .collect();
        prop_assert_eq!(&journaled, &e.steps, "each step journaled once");
        prop_assert_eq!(
            retries_marked(&events),
            e.retries,
            "one retry per restart, marked"
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
    if let Some((_, worker)) = durable {
        worker.shutdown().await;
    }
    for node in other.into_iter().chain(lost_other) {
        node.shutdown("case over").await;
    }
    prop_assert!(report.all_stored(), "{}", report);
    Ok(())
}

/// How many retries `events` mark (durable mode: a `debug` "attempt N of M").
fn retries_marked(events: &[kodo_core::Event]) -> usize {
    payloads(events, Kind::Debug)
        .iter()
        .filter(|d| d.as_str().is_some_and(|d| d.starts_with("attempt ")))
        .count()
}

/// A node whose executions run durably on the Temporal server at
/// `address` (a task queue of its own), on the in-process queue; no
/// worker yet.
async fn durable_node(flows: Flows, address: &str) -> (TestNode, Arc<kodo_durable::Temporal>) {
    let temporal = kodo_durable::Temporal::connect(kodo_durable::TemporalOptions {
        address: address.to_string(),
        namespace: "default".into(),
        task_queue: format!("prop-{}", Fid::new()),
        workflow_id_prefix: "kodo-".into(),
        execution_timeout: None,
        heartbeat_timeout: Duration::from_secs(2),
        attempts: 100,
        identity: format!("kodo@{}", std::process::id()),
    })
    .await
    .expect("temporal");
    let cluster = kodo_cluster::Solo::shared();
    let backend = kodo_durable::TemporalBackend::new(temporal.clone(), None, cluster.clone());
    let options = NodeOptions {
        backend: Arc::new(backend),
        ..NodeOptions::default()
    };
    let transport = kodo_transport::LocalQueue::new(2, CAPACITY);
    let node = TestNode::start_on(flows, transport, cluster, options).await;
    (node, temporal)
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
        rt.block_on(run_case(ops, On::Local))?;
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
    let result = runner.run(&proptest::collection::vec(cluster_op(), 1..40), |ops| {
        rt.block_on(run_case(ops, On::Redis(&server.url)))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The same state machine in durable mode, on the Temporal server of
/// `KODO_TEST_TEMPORAL_ADDRESS` (`scripts/test` starts one), with pauses,
/// resumes and worker restarts among the operations.
#[test]
fn in_durable_mode_no_event_is_lost_duplicated_or_reordered_and_every_execution_ends_once() {
    let address = std::env::var("KODO_TEST_TEMPORAL_ADDRESS")
        .expect("scripts/test starts Temporal; or set KODO_TEST_TEMPORAL_ADDRESS=HOST:PORT");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cases = std::env::var("PROPTEST_TEMPORAL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&proptest::collection::vec(durable_op(), 1..30), |ops| {
        rt.block_on(run_case(ops, On::Temporal(&address)))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
