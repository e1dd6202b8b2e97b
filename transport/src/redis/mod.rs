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
//!
//! (Commit notices between processes are the cluster's, in `kodo-cluster`.)
//!
//! The modules, one concern each: [`codec`] (an entry is one publish of one
//! execution), [`writer`] (pipelined XADD with backpressure at `max_len`),
//! [`reader`] (XREADGROUP, XAUTOCLAIM of entries idle longer than
//! `claim_idle`, whose consumer died), [`groups`] (what the consumer groups
//! still need: streams are trimmed by MINID below the oldest entry some group
//! has pending or undelivered, never further). This file holds the
//! connection, the layout check and the [`Transport`] implementation: XACK
//! only after the store committed.

mod codec;
pub(crate) mod groups;
pub(crate) mod reader;
mod writer;

use crate::budget::Budget;
use crate::{
    Accepted, Delivery, LeaseFence, Receipt, Transport, TransportError, TransportHealth, shard_of,
};
use async_trait::async_trait;
use kodo_core::{Event, mask_url};
use reader::{GROUP, Held, ShardState, create_group};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamInfoGroupsReply;
use redis::{Value, cmd, pipe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};
use writer::{Outgoing, PIPELINE_MAX, Trouble, send_or_give_back, write_loop};

/// Trim a stream after this many entries were acknowledged on it (or a
/// quarter of `max_len`, if less, so a full stream always drains below it).
const TRIM_EVERY: usize = 1000;

/// How to reach Redis and shape the streams.
#[derive(Clone)]
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

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &mask_url(&self.url))
            .field("prefix", &self.prefix)
            .field("shards", &self.shards)
            .field("consumer", &self.consumer)
            .field("max_len", &self.max_len)
            .field("claim_idle", &self.claim_idle)
            .field("block", &self.block)
            .field("capacity_bytes", &self.capacity_bytes)
            .finish()
    }
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
    /// Failed reads, writes and acks so far (see `TransportHealth::failures`).
    failures: Arc<AtomicU64>,
    closed: AtomicBool,
    closing: Notify,
    error: Arc<Mutex<Option<String>>>,
    /// Set once this process's publishes are fenced by its node's lease.
    fence: Arc<RwLock<Option<LeaseFence>>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreams")
            .field("url", &self.masked)
            .field("prefix", &self.options.prefix)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// How kodo's connections to Redis behave: a 1 s connect timeout,
/// `response_timeout` per command, two retries with a short backoff.
pub fn manager_config(response_timeout: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
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
            .map(|i| ShardState::new(&options.prefix, &options.consumer, i))
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
            failures: Arc::default(),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
            error: error.clone(),
            fence: Arc::default(),
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
            transport.fence.clone(),
            Trouble {
                error,
                failures: transport.failures.clone(),
            },
        ));
        transport.tasks.lock().expect("tasks lock").push(writer);
        Ok(transport)
    }

    fn shard(&self, shard: usize) -> Result<&ShardState, TransportError> {
        self.shards.get(shard).ok_or(TransportError::NoShard(shard))
    }

    fn unavailable(&self, e: &redis::RedisError) -> TransportError {
        self.failures.fetch_add(1, Ordering::Relaxed);
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

    /// Trims a stream below the oldest entry any group still needs.
    async fn trim(&self, key: &str) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        if let Some(minid) = groups::first_unacked(&mut conn, key).await? {
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
        let attempt = first.attempt;
        let cost = self.budget.cost(&events);
        self.budget.take(cost).await?;
        let fields = codec::encode(events);
        let (done, written) = oneshot::channel();
        let out = Outgoing {
            shard: shard_of(&fid, self.shards.len()),
            fid,
            attempt,
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
                match codec::decode(entry) {
                    Ok(mut decoded) => events.append(&mut decoded),
                    Err(why) => {
                        tracing::error!(stream = %state.key, %why, "skipping an entry that is not kodo's")
                    }
                }
                ids.push(entry.id.clone());
            }
            let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
            state.held.lock().expect("held lock").insert(
                ticket,
                Held {
                    ids,
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
        let mut conn = self.conn.clone();
        let acked: Result<Value, _> = cmd("XACK")
            .arg(&state.key)
            .arg(GROUP)
            .arg(&held.ids)
            .query_async(&mut conn)
            .await;
        if let Err(e) = acked {
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

    fn fence(&self, fence: LeaseFence) {
        *self.fence.write().expect("fence lock") = Some(fence);
    }

    async fn health(&self) -> TransportHealth {
        let mut p = pipe();
        p.cmd("PING").ignore();
        for shard in &self.shards {
            p.cmd("XINFO").arg("GROUPS").arg(&shard.key);
        }
        let mut conn = self.conn.clone();
        let answer: Result<Result<Vec<StreamInfoGroupsReply>, _>, _> =
            tokio::time::timeout(Duration::from_secs(2), p.query_async(&mut conn)).await;
        let (backlog, error) = match answer {
            Ok(Ok(replies)) => {
                let backlog = replies.iter().map(groups::backlog).sum();
                (
                    Some(backlog),
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
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

impl Drop for RedisStreams {
    fn drop(&mut self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
    }
}
