//! Helpers for kodo's integration and property tests: a node on a real
//! SQLite file in a temp dir, waits with deadlines that follow the live hub
//! (no sleeps), checks of the stored event log, and [`FaultyStore`], a
//! fault-injecting wrapper around the real store.

use kodo_actors::{Flows, Node, NodeOptions};
use kodo_cluster::{RedisCluster, SharedCluster, Solo};
use kodo_core::{Event, Fid, Kind, Status};
use kodo_store::{EventQuery, Hooked, SharedStore, StoreError, StoreOptions, WriteHooks};
use kodo_transport::{LocalQueue, RedisOptions, RedisStreams, SharedTransport};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Faults to inject into the next store writes.
#[derive(Debug, Default)]
pub struct Faults {
    /// Writes that fail with an error (the spooler retries).
    pub fail_writes: AtomicU32,
    /// Writes that panic before committing (the spooler crashes, mid-batch).
    pub panic_before_commit: AtomicU32,
    /// Writes that commit and then panic (the spooler crashes before its ack).
    pub panic_after_commit: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

impl WriteHooks for Faults {
    fn before(&self, _events: &[Event]) -> Result<(), StoreError> {
        if take(&self.fail_writes) {
            return Err(StoreError::Injected("write refused".into()));
        }
        if take(&self.panic_before_commit) {
            panic!("injected panic before commit");
        }
        Ok(())
    }

    fn after(&self, _events: &[Event]) {
        if take(&self.panic_after_commit) {
            panic!("injected panic after commit");
        }
    }
}

/// The real store (SQLite or PostgreSQL) with injectable faults.
#[derive(Debug)]
pub struct FaultyStore;

impl FaultyStore {
    /// Opens the store at `url`, wrapped; returns it and its fault switches.
    pub async fn open(url: &str) -> (SharedStore, Arc<Faults>) {
        let inner = kodo_store::open(url, &StoreOptions::default())
            .await
            .expect("open store");
        let faults = Arc::new(Faults::default());
        let store = Arc::new(Hooked::new(inner, faults.clone()));
        (store, faults)
    }
}

/// A node on a fresh SQLite file, with fault injection.
#[derive(Debug)]
pub struct TestNode {
    /// The node.
    pub node: Arc<Node>,
    /// The store (the faulty wrapper).
    pub store: SharedStore,
    /// Its faults.
    pub faults: Arc<Faults>,
    /// The database URL.
    pub url: String,
    /// Keeps the temp dir alive.
    pub dir: tempfile::TempDir,
}

/// The URL of a database file in `dir`.
pub fn db_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("kodo.db").display())
}

impl TestNode {
    /// Starts a node with `flows`, `shards` spoolers and `capacity` bytes of queue.
    pub async fn start(flows: Flows, shards: usize, capacity: usize, options: NodeOptions) -> Self {
        let transport = LocalQueue::new(shards, capacity);
        Self::start_on(flows, transport, Solo::shared(), options).await
    }

    /// Starts a node with `flows` on `transport`, in `cluster`.
    pub async fn start_on(
        flows: Flows,
        transport: SharedTransport,
        cluster: SharedCluster,
        options: NodeOptions,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, flows, transport, cluster, options).await
    }

    /// Starts a node with `flows` on `transport`, in `cluster`, on the
    /// store in `dir` (which may hold what an earlier node left).
    pub async fn start_in(
        dir: tempfile::TempDir,
        flows: Flows,
        transport: SharedTransport,
        cluster: SharedCluster,
        options: NodeOptions,
    ) -> Self {
        let url = db_url(dir.path());
        let (store, faults) = FaultyStore::open(&url).await;
        let node = Node::start(store.clone(), transport, cluster, flows, options)
            .await
            .expect("start node");
        Self {
            node: Arc::new(node),
            store,
            faults,
            url,
            dir,
        }
    }
}

/// Every stored event of an execution, in seq order.
pub async fn stored_events(store: &SharedStore, fid: &Fid) -> Vec<Event> {
    store
        .events(
            fid,
            &EventQuery {
                after: 0,
                limit: u32::MAX,
                kinds: None,
            },
        )
        .await
        .expect("read events")
}

/// Waits until the execution ends with `status` (see [`wait_final`]), checks
/// its stored log ([`check_log`]) and returns it.
pub async fn ended_with(node: &Node, fid: &Fid, status: Status) -> Vec<Event> {
    assert_eq!(wait_final(node, fid).await, status, "{fid}");
    let events = stored_events(node.store(), fid).await;
    check_log(&events).unwrap_or_else(|e| panic!("{fid}: {e}"));
    events
}

/// Waits (following the hub, with [`DEADLINE`]) until the execution's final
/// status is stored, and every event before it; returns it.
pub async fn wait_final(node: &Node, fid: &Fid) -> Status {
    let mut sub = node.hub().subscribe(fid);
    let work = async {
        loop {
            // Final, and every event before it stored: with spoolers in
            // several processes, a later batch may be committed first.
            if let Some(row) = node.store().execution(fid).await.expect("read execution")
                && row.status.is_final()
                && node.store().event_count(fid).await.expect("count events") == row.events
            {
                return row.status;
            }
            sub.changed().await;
        }
    };
    tokio::time::timeout(DEADLINE, work)
        .await
        .unwrap_or_else(|_| panic!("execution {fid} did not end within {DEADLINE:?}"))
}

/// Waits until a stored event of `kind` exists; returns it.
pub async fn wait_event(node: &Node, fid: &Fid, kind: Kind) -> Event {
    let mut sub = node.hub().subscribe(fid);
    let work = async {
        loop {
            let events = stored_events(node.store(), fid).await;
            if let Some(e) = events.into_iter().find(|e| e.kind == kind) {
                return e;
            }
            sub.changed().await;
        }
    };
    tokio::time::timeout(DEADLINE, work)
        .await
        .unwrap_or_else(|_| panic!("no {kind} event for {fid} within {DEADLINE:?}"))
}

/// Waits until `done` holds for the execution's stored events (following
/// the hub, with [`DEADLINE`]); returns them.
pub async fn events_until(
    node: &Node,
    fid: &Fid,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let mut sub = node.hub().subscribe(fid);
    let work = async {
        loop {
            let events = stored_events(node.store(), fid).await;
            if done(&events) {
                return events;
            }
            // Commits wake this; a status or a count may also change by a
            // commit this node did not hear of: look again now and then.
            let _ = tokio::time::timeout(Duration::from_millis(200), sub.changed()).await;
        }
    };
    tokio::time::timeout(DEADLINE, work)
        .await
        .unwrap_or_else(|_| panic!("{fid}: {what} not reached within {DEADLINE:?}"))
}

/// The statuses among `events`, in order.
pub fn statuses(events: &[Event]) -> Vec<Status> {
    events.iter().filter_map(Event::status).collect()
}

/// Waits until the execution's `lock` event is stored; returns it and the lock id.
pub async fn wait_lock(node: &Node, fid: &Fid) -> (Event, String) {
    let lock = wait_event(node, fid, Kind::Lock).await;
    let payload: serde_json::Value = serde_json::from_str(&lock.payload).expect("lock payload");
    let lid = payload["lid"].as_str().expect("a lock id").to_string();
    (lock, lid)
}

/// Checks the invariants of one stored event log: seqs 1..=n with no gap,
/// `meta` first, exactly one final status and it is the last event.
pub fn check_log(events: &[Event]) -> Result<Status, String> {
    for (i, e) in events.iter().enumerate() {
        if e.seq != i as u64 + 1 {
            return Err(format!("seq {} at position {}", e.seq, i + 1));
        }
    }
    if events.first().map(|e| e.kind) != Some(Kind::Meta) {
        return Err("the first event is not meta".into());
    }
    let finals: Vec<_> = events
        .iter()
        .filter_map(|e| e.status().filter(|s| s.is_final()))
        .collect();
    if finals.len() != 1 {
        return Err(format!("{} final statuses: {finals:?}", finals.len()));
    }
    let last = events.last().and_then(Event::status);
    if last != Some(finals[0]) {
        return Err("the final status is not the last event".into());
    }
    Ok(finals[0])
}

/// The payloads of the stored events of `kind`, parsed.
pub fn payloads(events: &[Event], kind: Kind) -> Vec<serde_json::Value> {
    events
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| serde_json::from_str(&e.payload).expect("stored payload is JSON"))
        .collect()
}

/// A runtime with its HTTP API on 127.0.0.1 (a free port) and a SQLite file.
#[derive(Debug)]
pub struct TestApi {
    /// The running runtime.
    pub running: kodo_runtime::Running,
    /// Its store's fault switches.
    pub faults: Arc<Faults>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// An HTTP client.
    pub http: reqwest::Client,
    /// Keeps the database alive.
    pub dir: tempfile::TempDir,
}

impl TestApi {
    /// Starts a runtime from config text (the store URL and address are filled in) and Rust flows.
    pub async fn start(config: &str, flows: Vec<kodo_actors::FlowDef>) -> Self {
        Self::start_on(None, config, flows).await
    }

    /// Like [`TestApi::start`], on the store `url` names (None: a SQLite file in a temp dir).
    pub async fn start_on(
        url: Option<&str>,
        config: &str,
        flows: Vec<kodo_actors::FlowDef>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = url.map_or_else(|| db_url(dir.path()), String::from);
        let text = format!(
            "[api]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 4096\n[store]\nurl = \"{url}\"\n{config}"
        );
        let config =
            kodo_runtime::Config::parse("test.toml", &text, Vec::new()).expect("test config");
        let (store, faults) = FaultyStore::open(&url).await;
        let mut runtime = kodo_runtime::Runtime::new(config).with_store(store);
        for flow in flows {
            runtime = runtime.flow(flow);
        }
        let running = runtime.start().await.expect("start runtime");
        let base = format!("http://{}", running.addr());
        Self {
            running,
            faults,
            base,
            http: reqwest::Client::new(),
            dir,
        }
    }

    /// Launches `flow` without a token (no auth configured) and expects 201.
    pub async fn launch(&self, flow: &str) -> Fid {
        let resp = self
            .req(
                reqwest::Method::POST,
                &format!("/flows/{flow}/executions"),
                None,
            )
            .json(&serde_json::json!({}))
            .send()
            .await
            .expect("launch");
        assert_eq!(resp.status().as_u16(), 201, "launch of {flow}");
        let body: serde_json::Value = resp.json().await.expect("launch JSON");
        Fid::parse(body["fid"].as_str().expect("fid")).expect("a valid fid")
    }

    /// Waits until each execution finished, checks its log (gap-free, one
    /// final status, last) and returns its `debug` payloads.
    pub async fn finished_debug_lines(&self, fids: &[Fid]) -> Vec<Vec<serde_json::Value>> {
        let node = self.running.node();
        let mut all = Vec::new();
        for fid in fids {
            assert_eq!(wait_final(node, fid).await, Status::Finished, "{fid}");
            let events = stored_events(node.store(), fid).await;
            check_log(&events).unwrap_or_else(|e| panic!("{fid}: {e}"));
            all.push(payloads(&events, Kind::Debug));
        }
        all
    }

    /// `GET /health` without a token: its status code and body.
    pub async fn health(&self) -> (u16, serde_json::Value) {
        let resp = self
            .req(reqwest::Method::GET, "/health", None)
            .send()
            .await
            .expect("GET /health");
        (
            resp.status().as_u16(),
            resp.json().await.expect("health JSON"),
        )
    }

    /// Asks `/health` until `done` holds (with [`DEADLINE`]); returns that body.
    pub async fn health_until(
        &self,
        what: &str,
        done: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let work = async {
            loop {
                let (code, body) = self.health().await;
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

    /// `GET path` without a token, expecting 200: its JSON body.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let resp = self
            .req(reqwest::Method::GET, path, None)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        resp.json().await.expect("JSON")
    }

    /// `GET path` with `token`, expecting 200: its JSON body.
    pub async fn get_with(&self, path: &str, token: &str) -> serde_json::Value {
        let resp = self
            .req(reqwest::Method::GET, path, Some(token))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        resp.json().await.expect("JSON")
    }

    /// `POST path` (body `{}` or `body`) without a token: its status code and JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .req(reqwest::Method::POST, path, None)
            .json(&body.unwrap_or_else(|| serde_json::json!({})))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let code = resp.status().as_u16();
        (code, resp.json().await.unwrap_or_default())
    }

    /// A request to `path` with an optional bearer token.
    pub fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

/// One server-sent event.
#[derive(Clone, Debug, PartialEq)]
pub struct Sse {
    /// `id:`
    pub id: Option<u64>,
    /// `event:`
    pub event: String,
    /// `data:`
    pub data: String,
}

/// Parses server-sent events from text (comments and keep-alives skipped).
pub fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter_map(|block| {
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            Some(Sse {
                id,
                event: event?,
                data: data.unwrap_or_default(),
            })
        })
        .collect()
}

/// Reads a live SSE response, keeping what it read.
#[derive(Debug)]
pub struct SseReader {
    response: reqwest::Response,
    text: String,
}

impl SseReader {
    /// Reads from `response`.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            text: String::new(),
        }
    }

    /// Reads until `done` holds for all complete events so far, or the
    /// stream ends (with [`DEADLINE`]); returns all complete events so far.
    pub async fn until(&mut self, done: impl Fn(&[Sse]) -> bool) -> Vec<Sse> {
        let work = async {
            loop {
                let complete = self.text.rfind("\n\n").map_or("", |end| &self.text[..end]);
                let events = parse_sse(complete);
                if done(&events) {
                    return events;
                }
                match self.response.chunk().await.expect("read stream") {
                    Some(bytes) => self.text.push_str(&String::from_utf8_lossy(&bytes)),
                    None => return parse_sse(&self.text),
                }
            }
        };
        tokio::time::timeout(DEADLINE, work)
            .await
            .expect("stream produced the awaited events in time")
    }
}

/// Runs `scripts/NAME ARGS...` (the project's service scripts); its stdout.
fn script(name: &str, args: &[&str]) -> String {
    let path = format!("{}/../scripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {path}: {e}"));
    assert!(
        out.status.success(),
        "scripts/{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A throwaway server of one test, started by a project script (`scripts/pg`
/// or `scripts/redis`) in a temp dir on a free 127.0.0.1 port, which the
/// test may stop and start again; stopped when dropped.
#[derive(Debug)]
pub struct Server {
    script: &'static str,
    dir: tempfile::TempDir,
    extra: &'static [&'static str],
    /// Its URL.
    pub url: String,
}

impl Server {
    fn start(name: &'static str, extra: &'static [&'static str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args = vec!["start", dir.path().to_str().unwrap()];
        args.extend(extra);
        let url = script(name, &args);
        Self {
            script: name,
            dir,
            extra,
            url,
        }
    }

    /// A PostgreSQL server (fsync off: test data only), user `kodo`, database `postgres`.
    pub fn postgres() -> Self {
        Self::start("pg", &["--fast"])
    }

    /// A Redis server with AOF on (`appendfsync always`).
    pub fn redis() -> Self {
        Self::start("redis", &[])
    }

    /// Stops the server gracefully (PostgreSQL: fast shutdown; Redis: SHUTDOWN).
    pub fn stop(&self) {
        script(self.script, &["stop", self.dir.path().to_str().unwrap()]);
    }

    /// Kills the server with SIGKILL, as a crash would (Redis only).
    pub fn kill(&self) {
        assert_eq!(self.script, "redis", "only scripts/redis can kill");
        script(self.script, &["kill", self.dir.path().to_str().unwrap()]);
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) {
        let mut args = vec!["start", self.dir.path().to_str().unwrap()];
        args.extend(self.extra);
        script(self.script, &args);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let path = format!("{}/../scripts/{}", env!("CARGO_MANIFEST_DIR"), self.script);
        let _ = std::process::Command::new(path)
            .args(["stop", self.dir.path().to_str().unwrap()])
            .output();
    }
}

/// Redis transport options for tests: a fresh key prefix (so tests share a
/// server without sharing streams), short blocking reads.
pub fn redis_options(url: &str, consumer: &str, shards: usize) -> RedisOptions {
    RedisOptions {
        url: url.to_string(),
        prefix: format!("test-{}", Fid::new()),
        shards,
        consumer: consumer.to_string(),
        block: Duration::from_millis(100),
        ..RedisOptions::default()
    }
}

/// The cluster of the Redis deployment these options name.
pub async fn redis_cluster(options: &RedisOptions) -> SharedCluster {
    RedisCluster::connect(&options.url, &options.prefix, options.shards)
        .await
        .expect("connect to the test redis")
}

/// Connects a Redis transport with these options.
pub async fn redis_transport(options: RedisOptions) -> Arc<RedisStreams> {
    RedisStreams::connect(options)
        .await
        .expect("connect to the test redis")
}
