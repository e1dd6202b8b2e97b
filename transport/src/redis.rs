//! Redis Streams: the transport for many nodes and many spooler processes.
//!
//! Key layout (prefix `kodo` by default):
//! - `kodo:events:{i}` for shard `i` in `0..shards`: one stream per shard, an
//!   execution's events all go to shard [`shard_of`]`(fid)`. A fixed set of
//!   streams needs no discovery and no per-execution keys, and a consumer
//!   group spreads each stream over the spooler processes.
//! - consumer group `spoolers` on every stream; consumer `{name}-{i}` reads
//!   stream `i` (a stable name re-reads its own pending entries at restart).
//! - `kodo:shards`: the shard count, so processes configured differently
//!   refuse to start instead of splitting executions across layouts.
//! - channel `kodo:commits`: after each commit a spooler publishes
//!   `fid seq` lines (the highest committed seq per execution), which the
//!   nodes' live hubs follow.
//!
//! An entry is one publish of one execution: field `fid`, then one field per
//! event, named by its seq, valued `"{ts} {kind} {payload}"`.
//!
//! Producers: publishes go through one writer task that pipelines every
//! XADD waiting at that moment into one round trip; a publish returns once
//! Redis has its entry. When a stream holds more than `max_len` entries
//! (consumers are behind or the store is down), the writer waits for the
//! spoolers to catch up, and the Tracers wait on it.
//! Consumers: blocking XREADGROUP, XACK only after the store committed,
//! XAUTOCLAIM of entries idle longer than `claim_idle` (their consumer
//! died). Streams are trimmed by MINID below the oldest entry that any
//! consumer group still has pending or undelivered, never further.

use crate::budget::Budget;
use crate::{
    Accepted, CommitListener, Delivery, Receipt, Transport, TransportError, TransportHealth,
    shard_of,
};
use async_trait::async_trait;
use futures::StreamExt;
use kodo_core::{Event, Fid, Kind, mask_url};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Value, cmd, pipe};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc, oneshot};

/// The consumer group of the spoolers.
const GROUP: &str = "spoolers";
/// The most publishes one pipeline carries.
const PIPELINE_MAX: usize = 512;
/// Trim a stream after this many entries were acknowledged on it (or a
/// quarter of `max_len`, if less, so a full stream always drains below it).
const TRIM_EVERY: usize = 1000;

/// How to reach Redis and shape the streams.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]`.
    pub url: String,
    /// Prefix of every key.
    pub prefix: String,
    /// Shard streams (every process of one deployment must agree).
    pub shards: usize,
    /// This process's consumer name; shard `i` reads as `{consumer}-{i}`.
    pub consumer: String,
    /// Entries a stream may hold before producers wait.
    pub max_len: usize,
    /// Pending entries idle longer than this are claimed from their consumer.
    pub claim_idle: Duration,
    /// How long one XREADGROUP blocks waiting for entries.
    pub block: Duration,
    /// Bytes of events this process may hold on their way into Redis.
    pub capacity_bytes: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "kodo".into(),
            shards: 2,
            consumer: "local".into(),
            max_len: 100_000,
            claim_idle: Duration::from_secs(10),
            block: Duration::from_millis(500),
            capacity_bytes: 64 << 20,
        }
    }
}

/// One publish on its way to Redis.
struct Outgoing {
    shard: usize,
    fid: Fid,
    fields: Vec<(u64, String)>,
    done: oneshot::Sender<()>,
    /// What it holds of the budget, given back once written.
    cost: u32,
}

/// A delivery not yet acknowledged.
struct Held {
    ids: Vec<String>,
    marks: Vec<(Fid, u64)>,
    events: usize,
}

/// What one shard's consumer keeps.
struct ShardState {
    key: String,
    consumer: String,
    /// A connection of its own: a blocking read would hold up anyone sharing it.
    reader: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// Read this consumer's own pending entries (from id 0) before new ones.
    recovering: AtomicBool,
    last_claim: Mutex<Instant>,
    held: Mutex<HashMap<u64, Held>>,
    acked_since_trim: AtomicUsize,
}

/// The Redis Streams transport.
pub struct RedisStreams {
    options: RedisOptions,
    masked: String,
    client: redis::Client,
    conn: ConnectionManager,
    outbox: mpsc::Sender<Outgoing>,
    budget: Arc<Budget>,
    shards: Vec<ShardState>,
    next_ticket: AtomicU64,
    closed: AtomicBool,
    closing: Notify,
    error: Arc<Mutex<Option<String>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

fn is_error_kind(e: &redis::RedisError, code: &str) -> bool {
    e.code() == Some(code)
}

impl RedisStreams {
    /// Connects, checks the shard layout and creates the streams and their
    /// consumer group where missing. An unreachable server or a bad URL is a
    /// [`TransportError::Unavailable`] naming the URL (password masked).
    pub async fn connect(options: RedisOptions) -> Result<Arc<Self>, TransportError> {
        let masked = mask_url(&options.url);
        let fail =
            |e: &dyn std::fmt::Display| TransportError::Unavailable(format!("{masked}: {e}"));
        let client = redis::Client::open(options.url.as_str()).map_err(|e| fail(&e))?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_connection_manager_with_config(manager_config(Duration::from_secs(5))),
        )
        .await
        .map_err(|_| fail(&"no answer within 10 s"))?
        .map_err(|e| fail(&e))?;
        let shards_key = format!("{}:shards", options.prefix);
        let (_, stored): (Value, usize) = pipe()
            .cmd("SET")
            .arg(&shards_key)
            .arg(options.shards)
            .arg("NX")
            .cmd("GET")
            .arg(&shards_key)
            .query_async(&mut conn)
            .await
            .map_err(|e| fail(&e))?;
        if stored != options.shards {
            return Err(fail(&format!(
                "this deployment uses {stored} shards (key {shards_key}), this process is configured for {}; \
                 set transport.shards = {stored}",
                options.shards
            )));
        }
        let shards: Vec<ShardState> = (0..options.shards)
            .map(|i| ShardState {
                key: format!("{}:events:{i}", options.prefix),
                consumer: format!("{}-{i}", options.consumer),
                reader: tokio::sync::Mutex::new(None),
                recovering: AtomicBool::new(true),
                last_claim: Mutex::new(Instant::now()),
                held: Mutex::new(HashMap::new()),
                acked_since_trim: AtomicUsize::new(0),
            })
            .collect();
        for shard in &shards {
            create_group(&mut conn, &shard.key)
                .await
                .map_err(|e| fail(&e))?;
        }
        let (outbox, inbox) = mpsc::channel(PIPELINE_MAX * 4);
        let budget = Arc::new(Budget::new(options.capacity_bytes));
        let error = Arc::new(Mutex::new(None));
        let transport = Arc::new(Self {
            masked,
            client,
            conn: conn.clone(),
            outbox,
            budget: budget.clone(),
            shards,
            next_ticket: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            error: error.clone(),
            tasks: Mutex::new(Vec::new()),
            options,
        });
        let keys: Vec<String> = transport.shards.iter().map(|s| s.key.clone()).collect();
        let writer = tokio::spawn(write_loop(
            conn,
            inbox,
            budget,
            keys,
            transport.options.max_len,
            error,
        ));
        transport.tasks.lock().expect("tasks lock").push(writer);
        Ok(transport)
    }

    fn shard(&self, shard: usize) -> Result<&ShardState, TransportError> {
        self.shards.get(shard).ok_or(TransportError::NoShard(shard))
    }

    fn unavailable(&self, e: &redis::RedisError) -> TransportError {
        let why = format!("{}: {e}", self.masked);
        *self.error.lock().expect("error lock") = Some(why.clone());
        TransportError::Unavailable(why)
    }

    fn works(&self) {
        let mut error = self.error.lock().expect("error lock");
        if error.is_some() {
            tracing::info!(url = %self.masked, "redis works again");
            *error = None;
        }
    }

    /// Reads entries for `shard`: own pending ones first (after a start or
    /// a crash), then claims of dead consumers' entries when due, then new
    /// ones (blocking unless closed).
    async fn read(&self, state: &ShardState, max: usize) -> Result<Vec<Entry>, redis::RedisError> {
        let mut guard = state.reader.lock().await;
        if guard.is_none() {
            let timeout = self.options.block + Duration::from_secs(2);
            *guard = Some(
                self.client
                    .get_connection_manager_with_config(manager_config(timeout))
                    .await?,
            );
        }
        let conn = guard.as_mut().expect("set above");
        if state.recovering.load(Ordering::Acquire) {
            let entries = xreadgroup(conn, state, max, "0", None).await?;
            if !entries.is_empty() {
                return Ok(entries);
            }
            state.recovering.store(false, Ordering::Release);
        }
        let claim_due = {
            let mut last = state.last_claim.lock().expect("claim lock");
            let due = last.elapsed() >= self.options.claim_idle / 2;
            if due {
                *last = Instant::now();
            }
            due
        };
        if claim_due {
            let claimed = xautoclaim(conn, state, max, self.options.claim_idle).await?;
            if !claimed.is_empty() {
                tracing::warn!(
                    stream = %state.key,
                    consumer = %state.consumer,
                    entries = claimed.len(),
                    "claimed entries a dead or stuck consumer left pending"
                );
                return Ok(claimed);
            }
        }
        let block = (!self.closed.load(Ordering::Acquire)).then_some(self.options.block);
        xreadgroup(conn, state, max, ">", block).await
    }

    /// Trims a stream below the oldest entry any group still needs.
    async fn trim(&self, key: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        if let Some(minid) = first_unacked(&mut conn, key).await? {
            let _: Value = cmd("XTRIM")
                .arg(key)
                .arg("MINID")
                .arg(minid.to_string())
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }
}

/// The oldest entry of a stream that some consumer group has not
/// acknowledged (pending at a consumer, or not delivered yet): every entry
/// below it is acknowledged by every group. None when that cannot be told
/// (no group, or an answer that does not parse).
async fn first_unacked(
    conn: &mut ConnectionManager,
    key: &str,
) -> Result<Option<StreamId>, redis::RedisError> {
    let groups: Value = cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(conn)
        .await?;
    let mut first: Option<StreamId> = None;
    for group in groups_of(groups) {
        let needed = if group.pending > 0 {
            let summary: Value = cmd("XPENDING")
                .arg(key)
                .arg(&group.name)
                .query_async(conn)
                .await?;
            oldest_pending(summary)
        } else {
            StreamId::parse(&group.last_delivered).map(|id| id.next())
        };
        let Some(needed) = needed else {
            return Ok(None);
        };
        first = Some(first.map_or(needed, |f| f.min(needed)));
    }
    Ok(first)
}

/// Creates the consumer group (and the stream) unless it exists.
async fn create_group(conn: &mut ConnectionManager, key: &str) -> Result<(), redis::RedisError> {
    let created: Result<Value, _> = cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(e) if !is_error_kind(&e, "BUSYGROUP") => Err(e),
        _ => Ok(()),
    }
}

/// One stream entry: its id and, unless it was deleted, its fields.
struct Entry {
    id: String,
    fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

fn entries(v: Value) -> Vec<Entry> {
    array(v)
        .into_iter()
        .filter_map(|entry| {
            let mut parts = array(entry).into_iter();
            let id = String::from_utf8(bytes(parts.next()?)?).ok()?;
            let fields = parts.next().and_then(|f| match f {
                Value::Nil => None,
                f => {
                    let flat = array(f);
                    let mut pairs = Vec::with_capacity(flat.len() / 2);
                    let mut it = flat.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((bytes(k)?, bytes(v)?));
                    }
                    Some(pairs)
                }
            });
            Some(Entry { id, fields })
        })
        .collect()
}

async fn xreadgroup(
    conn: &mut ConnectionManager,
    state: &ShardState,
    max: usize,
    from: &str,
    block: Option<Duration>,
) -> Result<Vec<Entry>, redis::RedisError> {
    let mut c = cmd("XREADGROUP");
    c.arg("GROUP")
        .arg(GROUP)
        .arg(&state.consumer)
        .arg("COUNT")
        .arg(max);
    if let Some(block) = block {
        c.arg("BLOCK").arg(block.as_millis() as u64);
    }
    c.arg("STREAMS").arg(&state.key).arg(from);
    let reply: Value = match c.query_async(conn).await {
        Err(e) if is_error_kind(&e, "NOGROUP") => {
            // Redis lost the group (restarted without persistence): recreate it.
            create_group(conn, &state.key).await?;
            return Ok(Vec::new());
        }
        r => r?,
    };
    Ok(array(reply)
        .into_iter()
        .flat_map(|stream| {
            let mut parts = array(stream).into_iter();
            parts.next();
            parts.next().map(entries).unwrap_or_default()
        })
        .collect())
}

async fn xautoclaim(
    conn: &mut ConnectionManager,
    state: &ShardState,
    max: usize,
    idle: Duration,
) -> Result<Vec<Entry>, redis::RedisError> {
    let reply: Value = cmd("XAUTOCLAIM")
        .arg(&state.key)
        .arg(GROUP)
        .arg(&state.consumer)
        .arg(idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(max)
        .query_async(conn)
        .await?;
    let mut parts = array(reply).into_iter();
    parts.next();
    Ok(parts.next().map(entries).unwrap_or_default())
}

/// A stream entry id `ms-seq`, ordered as Redis orders them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId(u64, u64);

impl StreamId {
    fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }

    fn next(self) -> Self {
        match self.1.checked_add(1) {
            Some(seq) => Self(self.0, seq),
            None => Self(self.0 + 1, 0),
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// What `XINFO GROUPS` says of one consumer group.
struct GroupInfo {
    name: String,
    pending: u64,
    last_delivered: String,
    /// Entries not yet delivered to the group (0 when Redis cannot tell).
    lag: u64,
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::Int(i) => Some(i.to_string()),
        v => String::from_utf8(bytes(v)?).ok(),
    }
}

fn groups_of(v: Value) -> Vec<GroupInfo> {
    array(v)
        .into_iter()
        .map(|g| {
            let mut info = GroupInfo {
                name: String::new(),
                pending: 0,
                last_delivered: String::new(),
                lag: 0,
            };
            let flat = array(g);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                let number = |v| text(v).and_then(|t| t.parse().ok()).unwrap_or(0);
                match text(k).as_deref() {
                    Some("name") => info.name = text(v).unwrap_or_default(),
                    Some("pending") => info.pending = number(v),
                    Some("lag") => info.lag = number(v),
                    Some("last-delivered-id") => info.last_delivered = text(v).unwrap_or_default(),
                    _ => {}
                }
            }
            info
        })
        .collect()
}

/// The smallest id of an XPENDING summary `[count, smallest, greatest, consumers]`.
fn oldest_pending(v: Value) -> Option<StreamId> {
    let mut parts = array(v).into_iter();
    parts.next();
    StreamId::parse(&text(parts.next()?)?)
}

/// Turns an entry into events; a malformed entry is an error naming it.
fn decode(entry: &Entry) -> Result<Vec<Event>, String> {
    let fields = entry
        .fields
        .as_ref()
        .ok_or_else(|| format!("entry {} was deleted", entry.id))?;
    let bad = |why: &str| format!("entry {}: {why}", entry.id);
    let fid = fields
        .iter()
        .find(|(k, _)| k == b"fid")
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .and_then(Fid::parse)
        .ok_or_else(|| bad("no valid fid"))?;
    let mut events = Vec::with_capacity(fields.len() - 1);
    for (k, v) in fields.iter().filter(|(k, _)| k != b"fid") {
        let seq: u64 = std::str::from_utf8(k)
            .ok()
            .and_then(|k| k.parse().ok())
            .ok_or_else(|| bad("a field is not a seq"))?;
        let v = std::str::from_utf8(v).map_err(|_| bad("not UTF-8"))?;
        let mut parts = v.splitn(3, ' ');
        let (Some(ts), Some(kind), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("an event is not `ts kind payload`"));
        };
        events.push(Event {
            fid: fid.clone(),
            seq,
            ts: ts.parse().map_err(|_| bad("bad ts"))?,
            kind: kind.parse::<Kind>().map_err(|_| bad("bad kind"))?,
            payload: payload.to_string(),
        });
    }
    events.sort_by_key(|e| e.seq);
    Ok(events)
}

/// Pipelines every waiting publish into one round trip; retries (keeping
/// the Tracers waiting) while Redis is down; waits while a stream is over
/// `max_len`.
async fn write_loop(
    mut conn: ConnectionManager,
    mut inbox: mpsc::Receiver<Outgoing>,
    budget: Arc<Budget>,
    keys: Vec<String>,
    max_len: usize,
    error: Arc<Mutex<Option<String>>>,
) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(PIPELINE_MAX);
    while inbox.recv_many(&mut batch, PIPELINE_MAX).await > 0 {
        let mut p = pipe();
        let mut touched = vec![false; keys.len()];
        for out in &batch {
            let c = p
                .cmd("XADD")
                .arg(&keys[out.shard])
                .arg("*")
                .arg("fid")
                .arg(out.fid.as_str());
            for (seq, value) in &out.fields {
                c.arg(*seq).arg(value);
            }
            touched[out.shard] = true;
        }
        let lens: Vec<usize> = (0..keys.len()).filter(|&i| touched[i]).collect();
        for &i in &lens {
            p.cmd("XLEN").arg(&keys[i]);
        }
        let mut backoff = Duration::from_millis(10);
        let replies: Vec<Value> = loop {
            match p.query_async(&mut conn).await {
                Ok(r) => {
                    if error.lock().expect("error lock").take().is_some() {
                        tracing::info!("redis accepts events again");
                    }
                    break r;
                }
                Err(e) => {
                    tracing::warn!(error = %e, publishes = batch.len(), retry_in = ?backoff, "redis XADD failed");
                    *error.lock().expect("error lock") = Some(format!("XADD: {e}"));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        };
        for out in batch.drain(..) {
            budget.give(out.cost as usize);
            let _ = out.done.send(());
        }
        // Backpressure: while a stream is over its bound, take no more.
        let mut over: Vec<usize> = lens
            .iter()
            .zip(replies.iter().skip(replies.len() - lens.len()))
            .filter(|(_, v)| matches!(v, Value::Int(n) if *n as usize > max_len))
            .map(|(&i, _)| i)
            .collect();
        let mut wait = Duration::from_millis(5);
        while !over.is_empty() {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(200));
            let mut still = Vec::new();
            for i in over {
                let len: Result<usize, _> = cmd("XLEN").arg(&keys[i]).query_async(&mut conn).await;
                if len.is_err() || len.is_ok_and(|n| n > max_len) {
                    still.push(i);
                }
            }
            over = still;
        }
    }
}

/// Sends a publish to the writer; the budget it holds comes back if the
/// send fails or is cancelled (dropped before it is sent).
async fn send_or_give_back(
    outbox: &mpsc::Sender<Outgoing>,
    out: Outgoing,
    budget: &Budget,
) -> Result<(), TransportError> {
    struct GiveBack<'a>(&'a Budget, u32, bool);
    impl Drop for GiveBack<'_> {
        fn drop(&mut self) {
            if !self.2 {
                self.0.give(self.1 as usize);
            }
        }
    }
    let mut guard = GiveBack(budget, out.cost, false);
    let sent = outbox.send(out).await.is_ok();
    guard.2 = sent;
    if sent {
        Ok(())
    } else {
        Err(TransportError::Closed)
    }
}

/// Listens to commit notices of other processes, reconnecting as needed.
async fn listen_loop(client: redis::Client, channel: String, listener: CommitListener) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(pubsub) => {
                backoff = Duration::from_millis(50);
                // Notices sent while unsubscribed are gone: wake every follower.
                listener(&[]);
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let marks = parse_marks(msg.get_payload_bytes());
                    if !marks.is_empty() {
                        listener(&marks);
                    }
                }
                tracing::warn!("redis commit notices interrupted; resubscribing");
            }
            Err(e) => {
                tracing::debug!(error = %e, "redis commit notices unavailable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn marks_text(marks: &[(Fid, u64)]) -> String {
    let mut text = String::with_capacity(marks.len() * 48);
    for (fid, seq) in marks {
        text.push_str(fid.as_str());
        text.push(' ');
        text.push_str(&seq.to_string());
        text.push('\n');
    }
    text
}

fn parse_marks(payload: &[u8]) -> Vec<(Fid, u64)> {
    std::str::from_utf8(payload)
        .unwrap_or("")
        .lines()
        .filter_map(|line| {
            let (fid, seq) = line.split_once(' ')?;
            Some((Fid::parse(fid)?, seq.parse().ok()?))
        })
        .collect()
}

#[async_trait]
impl Transport for RedisStreams {
    fn shards(&self) -> usize {
        self.shards.len()
    }

    async fn publish(&self, events: Vec<Event>) -> Result<Accepted, TransportError> {
        let Some(first) = events.first() else {
            return Ok(Accepted::now());
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        let fid = first.fid.clone();
        let cost = self.budget.cost(&events);
        self.budget.take(cost).await?;
        let fields = events
            .into_iter()
            .map(|e| (e.seq, format!("{} {} {}", e.ts, e.kind.as_str(), e.payload)))
            .collect();
        let (done, written) = oneshot::channel();
        let out = Outgoing {
            shard: shard_of(&fid, self.shards.len()),
            fid,
            fields,
            done,
            cost,
        };
        // Cancel-safe up to here (a dropped send sends nothing, and gives
        // its budget back); once sent, the writer writes it, retrying while
        // Redis is down.
        send_or_give_back(&self.outbox, out, &self.budget).await?;
        Ok(Accepted::when(written))
    }

    async fn receive(&self, shard: usize, max: usize) -> Result<Option<Delivery>, TransportError> {
        let state = self.shard(shard)?;
        let mut backoff = Duration::from_millis(10);
        loop {
            let entries = match self.read(state, max.max(1)).await {
                Ok(entries) => {
                    self.works();
                    entries
                }
                Err(e) => {
                    // The read may have been served (entries now pending for
                    // this consumer) with its answer lost: read those again.
                    state.recovering.store(true, Ordering::Release);
                    let err = self.unavailable(&e);
                    tracing::warn!(error = %err, stream = %state.key, retry_in = ?backoff, "redis read failed");
                    if self.closed.load(Ordering::Acquire) {
                        return Ok(None);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.closing.notified() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            if entries.is_empty() {
                if self.closed.load(Ordering::Acquire) && !state.recovering.load(Ordering::Acquire)
                {
                    return Ok(None);
                }
                continue;
            }
            let mut events = Vec::new();
            let mut ids = Vec::with_capacity(entries.len());
            for entry in &entries {
                match decode(entry) {
                    Ok(mut decoded) => events.append(&mut decoded),
                    Err(why) => {
                        tracing::error!(stream = %state.key, %why, "skipping an entry that is not kodo's")
                    }
                }
                ids.push(entry.id.clone());
            }
            let mut marks: HashMap<Fid, u64> = HashMap::new();
            for e in &events {
                let seq = marks.entry(e.fid.clone()).or_default();
                *seq = (*seq).max(e.seq);
            }
            let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
            state.held.lock().expect("held lock").insert(
                ticket,
                Held {
                    ids,
                    marks: marks.into_iter().collect(),
                    events: events.len(),
                },
            );
            return Ok(Some(Delivery {
                receipt: Receipt { shard, ticket },
                events: events.into(),
            }));
        }
    }

    async fn ack(&self, receipt: Receipt) -> Result<(), TransportError> {
        let state = self.shard(receipt.shard)?;
        let Some(held) = state
            .held
            .lock()
            .expect("held lock")
            .remove(&receipt.ticket)
        else {
            return Ok(());
        };
        let mut p = pipe();
        p.cmd("XACK")
            .arg(&state.key)
            .arg(GROUP)
            .arg(&held.ids)
            .ignore();
        if !held.marks.is_empty() {
            p.cmd("PUBLISH")
                .arg(format!("{}:commits", self.options.prefix))
                .arg(marks_text(&held.marks))
                .ignore();
        }
        let mut conn = self.conn.clone();
        if let Err(e) = p.query_async::<()>(&mut conn).await {
            // Still pending in Redis: read again from this consumer's own
            // pending entries (the store ignores what it already has).
            state.recovering.store(true, Ordering::Release);
            return Err(self.unavailable(&e));
        }
        let acked = state
            .acked_since_trim
            .fetch_add(held.ids.len(), Ordering::Relaxed);
        if acked + held.ids.len() >= TRIM_EVERY.min(self.options.max_len / 4).max(1) {
            state.acked_since_trim.store(0, Ordering::Relaxed);
            if let Err(e) = self.trim(&state.key).await {
                tracing::warn!(error = %e, stream = %state.key, "trim failed; the next one retries");
            }
        }
        Ok(())
    }

    async fn recover(&self, shard: usize) -> Result<usize, TransportError> {
        let state = self.shard(shard)?;
        let held: usize = state
            .held
            .lock()
            .expect("held lock")
            .drain()
            .map(|(_, h)| h.events)
            .sum();
        state.recovering.store(true, Ordering::Release);
        Ok(held)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.closing.notify_waiters();
    }

    async fn health(&self) -> TransportHealth {
        let mut p = pipe();
        p.cmd("PING");
        for shard in &self.shards {
            p.cmd("XINFO").arg("GROUPS").arg(&shard.key);
        }
        let mut conn = self.conn.clone();
        let answer: Result<Result<Vec<Value>, _>, _> =
            tokio::time::timeout(Duration::from_secs(2), p.query_async(&mut conn)).await;
        let (backlog, error) = match answer {
            Ok(Ok(replies)) => {
                let backlog: u64 = replies
                    .into_iter()
                    .skip(1)
                    .flat_map(groups_of)
                    .map(|g| g.lag + g.pending)
                    .sum();
                (
                    Some(backlog as usize),
                    self.error.lock().expect("error lock").clone(),
                )
            }
            Ok(Err(e)) => (None, Some(format!("{}: {e}", self.masked))),
            Err(_) => (None, Some(format!("{}: no answer within 2 s", self.masked))),
        };
        let pending = self
            .shards
            .iter()
            .map(|s| {
                s.held
                    .lock()
                    .expect("held lock")
                    .values()
                    .map(|h| h.events)
                    .sum::<usize>()
            })
            .sum();
        TransportHealth {
            kind: "redis",
            ok: error.is_none(),
            queued: self.outbox.max_capacity() - self.outbox.capacity(),
            pending,
            used_bytes: self.budget.used(),
            peak_bytes: self.budget.peak(),
            capacity_bytes: self.budget.capacity(),
            backlog,
            error,
        }
    }

    fn commits_in_order(&self) -> bool {
        false
    }

    async fn settle(&self, wait: Duration) -> bool {
        let start = Instant::now();
        let mut conn = self.conn.clone();
        let mut marks = Vec::new();
        for shard in &self.shards {
            let info: Result<Value, _> = cmd("XINFO")
                .arg("STREAM")
                .arg(&shard.key)
                .query_async(&mut conn)
                .await;
            let last = info.ok().and_then(|v| {
                let mut it = array(v).into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    if text(k).as_deref() == Some("last-generated-id") {
                        return text(v).and_then(|t| StreamId::parse(&t));
                    }
                }
                None
            });
            marks.push(last.unwrap_or(StreamId(0, 0)));
        }
        let mut pause = Duration::from_millis(10);
        loop {
            let mut settled = true;
            for (shard, mark) in self.shards.iter().zip(&marks) {
                // Settled once every entry up to the mark is acknowledged.
                if *mark != StreamId(0, 0) {
                    let first = first_unacked(&mut conn, &shard.key).await;
                    settled &= matches!(first, Ok(Some(first)) if first > *mark);
                }
            }
            if settled {
                return true;
            }
            if start.elapsed() >= wait {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn listen_commits(&self, listener: CommitListener) {
        let channel = format!("{}:commits", self.options.prefix);
        let task = tokio::spawn(listen_loop(self.client.clone(), channel, listener));
        self.tasks.lock().expect("tasks lock").push(task);
    }
}

impl Drop for RedisStreams {
    fn drop(&mut self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_and_step() {
        let a = StreamId::parse("1700000000000-5").unwrap();
        assert_eq!(a.next().to_string(), "1700000000000-6");
        assert!(a < StreamId::parse("1700000000001-0").unwrap());
        assert_eq!(StreamId::parse("nonsense"), None);
    }

    #[test]
    fn entries_round_trip_and_junk_is_refused() {
        let fid = Fid::new();
        let entry = Entry {
            id: "1-1".into(),
            fields: Some(vec![
                (b"fid".to_vec(), fid.as_str().as_bytes().to_vec()),
                (b"3".to_vec(), b"1.5 stdout \"a b c\"".to_vec()),
                (b"2".to_vec(), b"1.25 status \"running\"".to_vec()),
            ]),
        };
        let events = decode(&entry).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(events[1].payload, "\"a b c\"");
        assert_eq!(events[0].ts, 1.25);
        let junk = Entry {
            id: "1-2".into(),
            fields: Some(vec![(b"hello".to_vec(), b"world".to_vec())]),
        };
        assert!(decode(&junk).unwrap_err().contains("1-2"));
        let marks = vec![(fid.clone(), 7)];
        assert_eq!(parse_marks(marks_text(&marks).as_bytes()), marks);
    }
}
