//! The consumer side: what one shard's consumer keeps, and how it reads:
//! its own pending entries first (after a start or a crash), then claims of
//! a dead consumer's entries when due, then new entries (blocking).

use super::RedisStreams;
use super::codec::{self, Entry};
use redis::aio::ConnectionManager;
use redis::cmd;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The consumer group of the spoolers.
pub(super) const GROUP: &str = "spoolers";

/// A delivery not yet acknowledged.
pub(super) struct Held {
    pub(super) ids: Vec<String>,
    pub(super) events: usize,
}

/// What one shard's consumer keeps.
pub(super) struct ShardState {
    pub(super) key: String,
    pub(super) consumer: String,
    /// A connection of its own: a blocking read would hold up anyone sharing it.
    reader: tokio::sync::Mutex<Option<ConnectionManager>>,
    /// Read this consumer's own pending entries (from id 0) before new ones.
    pub(super) recovering: AtomicBool,
    last_claim: Mutex<Instant>,
    pub(super) held: Mutex<HashMap<u64, Held>>,
    pub(super) acked_since_trim: AtomicUsize,
}

impl ShardState {
    /// Shard `i` of a deployment with key prefix `prefix`, read as `{consumer}-{i}`.
    pub(super) fn new(prefix: &str, consumer: &str, i: usize) -> Self {
        Self {
            key: events_key(prefix, i),
            consumer: format!("{consumer}-{i}"),
            reader: tokio::sync::Mutex::new(None),
            recovering: AtomicBool::new(true),
            last_claim: Mutex::new(Instant::now()),
            held: Mutex::new(HashMap::new()),
            acked_since_trim: AtomicUsize::new(0),
        }
    }
}

/// The stream of shard `i`.
pub fn events_key(prefix: &str, i: usize) -> String {
    format!("{prefix}:events:{i}")
}

/// Whether a Redis error carries this error code.
pub(super) fn is_error_kind(e: &redis::RedisError, code: &str) -> bool {
    e.code() == Some(code)
}

impl RedisStreams {
    /// Reads entries for `state`'s shard: own pending ones first, then
    /// claims of dead consumers' entries when due, then new ones (blocking
    /// unless closed).
    pub(super) async fn read(
        &self,
        state: &ShardState,
        max: usize,
    ) -> Result<Vec<Entry>, redis::RedisError> {
        let mut guard = state.reader.lock().await;
        if guard.is_none() {
            let timeout = self.options.block + Duration::from_secs(2);
            *guard = Some(
                self.client
                    .get_connection_manager_with_config(super::manager_config(timeout))
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
}

/// Creates the consumer group (and the stream) unless it exists.
pub(super) async fn create_group(
    conn: &mut ConnectionManager,
    key: &str,
) -> Result<(), redis::RedisError> {
    let created: Result<redis::Value, _> = cmd("XGROUP")
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
    let reply: redis::Value = match c.query_async(conn).await {
        Err(e) if is_error_kind(&e, "NOGROUP") => {
            // Redis lost the group (restarted without persistence): recreate it.
            create_group(conn, &state.key).await?;
            return Ok(Vec::new());
        }
        r => r?,
    };
    Ok(codec::read_reply(reply))
}

async fn xautoclaim(
    conn: &mut ConnectionManager,
    state: &ShardState,
    max: usize,
    idle: Duration,
) -> Result<Vec<Entry>, redis::RedisError> {
    let reply: redis::Value = cmd("XAUTOCLAIM")
        .arg(&state.key)
        .arg(GROUP)
        .arg(&state.consumer)
        .arg(idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(max)
        .query_async(conn)
        .await?;
    Ok(codec::claim_reply(reply))
}
