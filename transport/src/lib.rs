//! Transports carry events from the Tracers to the Spoolers.
//!
//! A transport is split into shards: all events of one execution go to the
//! same shard ([`shard_of`]), and each shard is drained by one Spooler at a
//! time, so per-execution order holds end to end. Delivery is at-least-once:
//! a [`Delivery`] stays pending until it is acknowledged after the store
//! committed it, and [`Transport::recover`] hands a dead consumer's pending
//! deliveries back, first in line, in their original order.
//!
//! The embedded default is [`LocalQueue`], a bounded in-process queue (what
//! Kodosumi's Ray queue was, without Ray). [`RedisStreams`] puts the same
//! trait on Redis Streams: a shard is then a stream, read by a consumer
//! group that any number of spooler processes join.

mod budget;
mod local;
mod redis;

pub use local::LocalQueue;
pub use redis::{RedisOptions, RedisStreams};

/// The Redis stream layout, what its consumer groups still need, and how
/// kodo connects to Redis: the contract shared with `kodo-cluster`, which
/// settles a node's start on these streams and sends commit notices on the
/// same server.
pub mod redis_layout {
    pub use crate::redis::groups::{EntryId, first_unacked, last_generated};
    pub use crate::redis::manager_config as connection_config;
    pub use crate::redis::reader::events_key;
}

use async_trait::async_trait;
use kodo_core::{Event, Fid};
use serde::Serialize;
use std::sync::Arc;

/// What went wrong in a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The transport was closed (the node is shutting down).
    #[error("transport closed")]
    Closed,
    /// No such shard.
    #[error("no shard {0}")]
    NoShard(usize),
    /// The transport's server could not be reached.
    #[error("transport unavailable: {0}")]
    Unavailable(String),
}

/// Identifies one delivery, to acknowledge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The shard it came from.
    pub shard: usize,
    /// Its number within the transport.
    pub ticket: u64,
}

/// A batch of events handed to a consumer, oldest first.
#[derive(Debug)]
pub struct Delivery {
    /// What to acknowledge once the batch is committed.
    pub receipt: Receipt,
    /// The events, in publish order.
    pub events: Arc<[Event]>,
}

/// The state a transport reports on `/health`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TransportHealth {
    /// Which transport.
    pub kind: &'static str,
    /// Whether it works now.
    pub ok: bool,
    /// Events waiting for a consumer.
    pub queued: usize,
    /// Events delivered and not yet acknowledged.
    pub pending: usize,
    /// Bytes held now, of `capacity_bytes`.
    pub used_bytes: usize,
    /// The most bytes ever held at once.
    pub peak_bytes: usize,
    /// The configured bound.
    pub capacity_bytes: usize,
    /// Redis: entries in the streams not yet acknowledged by the spoolers
    /// (of every process): what a store outage piles up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<usize>,
    /// Why it does not work, when it does not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Operations that failed since the process started (each was retried).
    pub failures: u64,
}

/// Carries events from Tracers (producers) to Spoolers (consumers).
#[async_trait]
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// How many shards; consumer `i` drains shard `i`.
    fn shards(&self) -> usize;

    /// Publishes events of one execution, in order. Waits while the
    /// transport is full: this is the backpressure the Tracers feel.
    ///
    /// Cancel-safe: when the returned future is dropped before it resolves,
    /// nothing was published. Once it resolves, the events are taken (in
    /// order, ahead of any later publish); [`Accepted::durable`] then waits
    /// until they are safe from a crash of this process (Redis: written).
    async fn publish(&self, events: Vec<Event>) -> Result<Accepted, TransportError>;

    /// Waits for events on `shard` and returns up to `max` of them, oldest
    /// first; `None` once the transport is closed and the shard is drained.
    async fn receive(&self, shard: usize, max: usize) -> Result<Option<Delivery>, TransportError>;

    /// Confirms that a delivery is stored; its events are not delivered again.
    async fn ack(&self, receipt: Receipt) -> Result<(), TransportError>;

    /// Hands every unacknowledged delivery of `shard` back for redelivery,
    /// ahead of newer events and in their order (its consumer died).
    /// Returns how many events come again.
    async fn recover(&self, shard: usize) -> Result<usize, TransportError>;

    /// Stops accepting events; consumers drain what is left, then get `None`.
    fn close(&self);

    /// The transport's state now.
    async fn health(&self) -> TransportHealth;

    /// From now on, writes this process's publishes only while `fence`
    /// holds (see [`LeaseFence`]); a later call replaces it. The in-process
    /// queue has nothing to fence: its node is the only writer.
    fn fence(&self, _fence: LeaseFence) {}
}

/// A node's lease in a cluster, as its publishes are fenced by it: each
/// publish is written only while the Redis key `key` holds `token`, checked
/// in the same step as the write. A node declared lost (another node took
/// its lease over) can thus add nothing to the streams after that moment,
/// whatever it still holds in memory; a refused publish waits and is tried
/// again (the lease may come back: Redis itself was away).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseFence {
    /// The lease key.
    pub key: String,
    /// What it holds while this process owns it.
    pub token: String,
}

/// Events a transport took (see [`Transport::publish`]).
#[derive(Debug)]
pub struct Accepted(Option<tokio::sync::oneshot::Receiver<()>>);

impl Accepted {
    /// Taken and as safe as they will be (an in-process queue).
    pub fn now() -> Self {
        Self(None)
    }

    /// Safe once `written` fires.
    pub fn when(written: tokio::sync::oneshot::Receiver<()>) -> Self {
        Self(Some(written))
    }

    /// Waits until the events are safe from a crash of this process.
    pub async fn durable(self) -> Result<(), TransportError> {
        match self.0 {
            Some(written) => written.await.map_err(|_| TransportError::Closed),
            None => Ok(()),
        }
    }
}

/// A shared transport.
pub type SharedTransport = Arc<dyn Transport>;

/// The shard an execution's events go to: FNV-1a of its id, stable across
/// processes and builds, so every node agrees.
pub fn shard_of(fid: &Fid, shards: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in fid.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let fid = Fid::parse("01990000-0000-7000-8000-000000000000").unwrap();
        assert_eq!(shard_of(&fid, 4), shard_of(&fid.clone(), 4));
        assert_eq!(shard_of(&fid, 1), 0);
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            seen[shard_of(&Fid::new(), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 40), "uneven spread {seen:?}");
    }
}
