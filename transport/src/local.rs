//! The in-process transport: a bounded queue per shard, with acknowledgement
//! and redelivery, and one byte budget across all shards.

use crate::budget::Budget;
use crate::{Accepted, Delivery, Receipt, Transport, TransportError, TransportHealth, shard_of};
use async_trait::async_trait;
use kodo_core::Event;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// A bounded in-process queue: the embedded default transport.
///
/// Memory is bounded by `capacity_bytes` (an event costs [`Event::weight`]):
/// a publisher waits for room, and room comes back only when a delivery is
/// acknowledged, so events in the queue and events in a Spooler's hands both
/// count. Nothing here polls: consumers sleep on a [`Notify`] until a
/// publisher or `close` wakes them.
pub struct LocalQueue {
    shards: Vec<Shard>,
    budget: Budget,
    closed: AtomicBool,
}

struct Shard {
    state: Mutex<ShardState>,
    ready: Notify,
}

#[derive(Default)]
struct ShardState {
    queue: VecDeque<(Event, u32)>,
    pending: BTreeMap<u64, (Arc<[Event]>, u32)>,
    next_ticket: u64,
}

impl std::fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalQueue")
            .field("shards", &self.shards.len())
            .field("capacity_bytes", &self.budget.capacity())
            .finish_non_exhaustive()
    }
}

impl LocalQueue {
    /// A queue of `shards` shards holding at most `capacity_bytes` of events.
    pub fn new(shards: usize, capacity_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..shards.max(1))
                .map(|_| Shard {
                    state: Mutex::new(ShardState::default()),
                    ready: Notify::new(),
                })
                .collect(),
            budget: Budget::new(capacity_bytes),
            closed: AtomicBool::new(false),
        })
    }

    fn shard(&self, shard: usize) -> Result<&Shard, TransportError> {
        self.shards.get(shard).ok_or(TransportError::NoShard(shard))
    }
}

#[async_trait]
impl Transport for LocalQueue {
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
        let shard = self.shard(shard_of(&first.fid, self.shards.len()))?;
        let total = self.budget.cost(&events);
        self.budget.take(total).await?;
        // The first event carries the whole charge; a delivery gives back the
        // sum of its events' charges when it is acknowledged.
        let mut state = shard.state.lock().expect("queue lock");
        for (i, event) in events.into_iter().enumerate() {
            state
                .queue
                .push_back((event, if i == 0 { total } else { 0 }));
        }
        drop(state);
        shard.ready.notify_one();
        Ok(Accepted::now())
    }

    async fn receive(&self, shard: usize, max: usize) -> Result<Option<Delivery>, TransportError> {
        let shard_ref = self.shard(shard)?;
        loop {
            {
                let mut state = shard_ref.state.lock().expect("queue lock");
                if !state.queue.is_empty() {
                    let n = state.queue.len().min(max.max(1));
                    let mut cost = 0;
                    let events: Vec<Event> = state
                        .queue
                        .drain(..n)
                        .map(|(e, c)| {
                            cost += c;
                            e
                        })
                        .collect();
                    let events: Arc<[Event]> = events.into();
                    let ticket = state.next_ticket;
                    state.next_ticket += 1;
                    state.pending.insert(ticket, (events.clone(), cost));
                    return Ok(Some(Delivery {
                        receipt: Receipt { shard, ticket },
                        events,
                    }));
                }
                if self.closed.load(Ordering::Acquire) {
                    return Ok(None);
                }
            }
            shard_ref.ready.notified().await;
        }
    }

    async fn ack(&self, receipt: Receipt) -> Result<(), TransportError> {
        let shard = self.shard(receipt.shard)?;
        let done = shard
            .state
            .lock()
            .expect("queue lock")
            .pending
            .remove(&receipt.ticket);
        if let Some((_, cost)) = done {
            self.budget.give(cost as usize);
        }
        Ok(())
    }

    async fn recover(&self, shard: usize) -> Result<usize, TransportError> {
        let shard_ref = self.shard(shard)?;
        let mut state = shard_ref.state.lock().expect("queue lock");
        let pending = std::mem::take(&mut state.pending);
        let mut count = 0;
        // Newest delivery first, each back to front, so the oldest ends up first in line.
        for (_, (events, cost)) in pending.into_iter().rev() {
            count += events.len();
            for (i, event) in events.iter().enumerate().rev() {
                state
                    .queue
                    .push_front((event.clone(), if i == 0 { cost } else { 0 }));
            }
        }
        drop(state);
        if count > 0 {
            shard_ref.ready.notify_one();
        }
        Ok(count)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        for shard in &self.shards {
            shard.ready.notify_one();
        }
    }

    async fn health(&self) -> TransportHealth {
        let (mut queued, mut pending) = (0, 0);
        for shard in &self.shards {
            let state = shard.state.lock().expect("queue lock");
            queued += state.queue.len();
            pending += state.pending.values().map(|(e, _)| e.len()).sum::<usize>();
        }
        TransportHealth {
            kind: "local",
            ok: true,
            queued,
            pending,
            used_bytes: self.budget.used(),
            peak_bytes: self.budget.peak(),
            capacity_bytes: self.budget.capacity(),
            backlog: None,
            error: None,
            failures: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kodo_core::{Fid, Kind, json_text};
    use std::time::Duration;

    fn events(fid: &Fid, seqs: std::ops::RangeInclusive<u64>) -> Vec<Event> {
        seqs.map(|seq| Event {
            fid: fid.clone(),
            seq,
            ts: 0.0,
            kind: Kind::Stdout,
            payload: json_text("0123456789"),
            attempt: 0,
        })
        .collect()
    }

    fn seqs(d: &Delivery) -> Vec<u64> {
        d.events.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn delivers_in_order_and_redelivers_unacked_first() {
        let q = LocalQueue::new(1, 1 << 20);
        let fid = Fid::new();
        q.publish(events(&fid, 1..=3)).await.unwrap();
        q.publish(events(&fid, 4..=5)).await.unwrap();
        let a = q.receive(0, 2).await.unwrap().unwrap();
        let b = q.receive(0, 2).await.unwrap().unwrap();
        assert_eq!((seqs(&a), seqs(&b)), (vec![1, 2], vec![3, 4]));
        q.ack(a.receipt).await.unwrap();
        // The consumer dies holding b: b comes again, before 5.
        assert_eq!(q.recover(0).await.unwrap(), 2);
        let c = q.receive(0, 10).await.unwrap().unwrap();
        assert_eq!(seqs(&c), vec![3, 4, 5]);
        q.ack(c.receipt).await.unwrap();
        let h = q.health().await;
        assert_eq!((h.queued, h.pending, h.used_bytes), (0, 0, 0));
    }

    #[tokio::test]
    async fn publishers_wait_for_room_until_an_ack() {
        let fid = Fid::new();
        let one = events(&fid, 1..=1)[0].weight();
        let q = LocalQueue::new(1, one * 2);
        q.publish(events(&fid, 1..=2)).await.unwrap();
        let blocked = tokio::spawn({
            let q = q.clone();
            let fid = fid.clone();
            async move { q.publish(events(&fid, 3..=3)).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !blocked.is_finished(),
            "a full queue must make the publisher wait"
        );
        let d = q.receive(0, 10).await.unwrap().unwrap();
        assert!(
            !blocked.is_finished(),
            "delivered but unacked events still hold room"
        );
        q.ack(d.receipt).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .expect("publisher resumes after the ack")
            .unwrap()
            .unwrap();
        assert!(q.health().await.peak_bytes <= one * 2);
    }

    #[tokio::test]
    async fn close_drains_then_ends_and_refuses_new_events() {
        let q = LocalQueue::new(2, 1 << 20);
        let fid = Fid::new();
        let shard = shard_of(&fid, 2);
        q.publish(events(&fid, 1..=2)).await.unwrap();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.receive(1 - shard, 10).await }
        });
        q.close();
        assert!(matches!(
            q.publish(events(&fid, 3..=3)).await,
            Err(TransportError::Closed)
        ));
        let d = q.receive(shard, 10).await.unwrap().unwrap();
        assert_eq!(seqs(&d), vec![1, 2]);
        assert!(q.receive(shard, 10).await.unwrap().is_none());
        let idle = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("close wakes an idle consumer")
            .unwrap()
            .unwrap();
        assert!(idle.is_none());
        assert!(matches!(
            q.receive(9, 1).await,
            Err(TransportError::NoShard(9))
        ));
    }

    #[tokio::test]
    async fn an_event_larger_than_the_budget_still_passes() {
        let q = LocalQueue::new(1, 16);
        let fid = Fid::new();
        q.publish(events(&fid, 1..=3)).await.unwrap();
        let d = q.receive(0, 10).await.unwrap().unwrap();
        assert_eq!(d.events.len(), 3);
        q.ack(d.receipt).await.unwrap();
        assert_eq!(q.health().await.used_bytes, 0);
    }
}
