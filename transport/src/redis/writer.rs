//! The writer: one task that pipelines every publish waiting at that moment
//! into one round trip of XADDs, retries while Redis is down (the Tracers
//! wait on it), and waits while a stream is over `max_len`. A fenced node
//! (in a cluster) writes each entry with a script that first checks its
//! lease ([`LeaseFence`]), in the same atomic step.

use crate::budget::Budget;
use crate::{LeaseFence, TransportError};
use kodo_core::Fid;
use redis::aio::ConnectionManager;
use redis::{Value, cmd, pipe};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The most publishes one pipeline carries.
pub(super) const PIPELINE_MAX: usize = 512;

/// One publish on its way to Redis.
pub(super) struct Outgoing {
    pub(super) shard: usize,
    pub(super) fid: Fid,
    /// The durable attempt of its events (0: direct mode, no field).
    pub(super) attempt: u32,
    pub(super) fields: Vec<(u64, String)>,
    pub(super) done: oneshot::Sender<()>,
    /// What it holds of the budget, given back once written.
    pub(super) cost: u32,
}

/// Adds `key` holds `token` to one XADD: the entry is written only then
/// (nil otherwise). KEYS: lease key, stream; ARGV: token, then XADD's
/// arguments after the id.
const FENCED_XADD: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
";

/// The most seq/value pairs one fenced XADD carries (Lua's `unpack` has a
/// limit); a larger publish becomes several entries, in order.
const FENCED_PAIRS_MAX: usize = 2000;

/// Where the writer reports trouble: the last error (None once Redis
/// accepts again) and how many writes failed.
pub(super) struct Trouble {
    pub(super) error: Arc<Mutex<Option<String>>>,
    pub(super) failures: Arc<std::sync::atomic::AtomicU64>,
}

/// Pipelines every waiting publish into one round trip; retries (keeping
/// the Tracers waiting) while Redis is down or, when `fence` is set, while
/// the lease is not held; waits while a stream is over `max_len`.
pub(super) async fn write_loop(
    mut conn: ConnectionManager,
    mut inbox: mpsc::Receiver<Outgoing>,
    budget: Arc<Budget>,
    keys: Vec<String>,
    max_len: usize,
    fence: Arc<RwLock<Option<LeaseFence>>>,
    trouble: Trouble,
) {
    let Trouble { error, failures } = trouble;
    let mut batch: Vec<Outgoing> = Vec::with_capacity(PIPELINE_MAX);
    while inbox.recv_many(&mut batch, PIPELINE_MAX).await > 0 {
        let mut touched = vec![false; keys.len()];
        for out in &batch {
            touched[out.shard] = true;
        }
        let lens: Vec<usize> = (0..keys.len()).filter(|&i| touched[i]).collect();
        // The publishes still to write (all of them, unless a fence refused some).
        let mut todo: Vec<usize> = (0..batch.len()).collect();
        let mut backoff = Duration::from_millis(10);
        let replies: Vec<Value> = loop {
            let fenced = fence.read().expect("fence lock").clone();
            let mut p = pipe();
            if fenced.is_some() {
                // One transaction: every entry sees the same lease, so none
                // is written after one refused (which would be out of order).
                p.atomic();
            }
            // The entries each publish of `todo` became, in order.
            let mut entries: Vec<usize> = Vec::with_capacity(todo.len());
            for &i in &todo {
                let out = &batch[i];
                match &fenced {
                    Some(f) => {
                        for pairs in out.fields.chunks(FENCED_PAIRS_MAX) {
                            let c = p.cmd("EVAL").arg(FENCED_XADD).arg(2);
                            c.arg(&f.key).arg(&keys[out.shard]).arg(&f.token);
                            entry_args(c, out, pairs);
                            entries.push(i);
                        }
                    }
                    None => {
                        let c = p.cmd("XADD").arg(&keys[out.shard]).arg("*");
                        entry_args(c, out, &out.fields);
                        entries.push(i);
                    }
                }
            }
            for &i in &lens {
                p.cmd("XLEN").arg(&keys[i]);
            }
            match p.query_async::<Vec<Value>>(&mut conn).await {
                Ok(r) => {
                    // EVAL, not EVALSHA: nothing to load again after a Redis restart.
                    let mut refused: Vec<usize> = entries
                        .iter()
                        .zip(r.iter())
                        .filter(|(_, v)| matches!(v, Value::Nil))
                        .map(|(&i, _)| i)
                        .collect();
                    refused.dedup();
                    if refused.is_empty() {
                        if error.lock().expect("error lock").take().is_some() {
                            tracing::info!("redis accepts events again");
                        }
                        break r;
                    }
                    let why = "this node does not hold its lease in the cluster: publishes wait \
                               (until it is renewed, or the node learns it was declared lost)";
                    tracing::warn!(refused = refused.len(), retry_in = ?backoff, "{why}");
                    *error.lock().expect("error lock") = Some(why.into());
                    todo = refused;
                }
                Err(e) => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(error = %e, publishes = todo.len(), retry_in = ?backoff, "redis XADD failed");
                    *error.lock().expect("error lock") = Some(format!("XADD: {e}"));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
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

/// The fields of one entry of `out` after its id: `fid`, `attempt` (durable
/// mode only), then the seq/value pairs.
fn entry_args(c: &mut redis::Pipeline, out: &Outgoing, pairs: &[(u64, String)]) {
    c.arg("fid").arg(out.fid.as_str());
    if out.attempt > 0 {
        c.arg("attempt").arg(out.attempt);
    }
    for (seq, value) in pairs {
        c.arg(*seq).arg(value);
    }
}

/// Sends a publish to the writer; the budget it holds comes back if the
/// send fails or is cancelled (dropped before it is sent).
pub(super) async fn send_or_give_back(
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
