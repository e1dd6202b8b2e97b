//! The live hub: tells waiters (SSE streams, launches) that an execution's
//! events up to some seq are committed. Spoolers publish after each commit;
//! nothing polls the database.

use kodo_core::{Event, Fid};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Commit notifications per execution, for those who subscribed.
#[derive(Debug, Default)]
pub struct Hub {
    subs: Mutex<HashMap<Fid, watch::Sender<u64>>>,
}

/// A subscription to one execution's commits; unsubscribes when dropped.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    fid: Fid,
    rx: watch::Receiver<u64>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Follows the commits of `fid` from now on.
    pub fn subscribe(self: &Arc<Self>, fid: &Fid) -> Subscription {
        let mut subs = self.subs.lock().expect("hub lock");
        let tx = subs
            .entry(fid.clone())
            .or_insert_with(|| watch::channel(0).0);
        Subscription {
            hub: self.clone(),
            fid: fid.clone(),
            rx: tx.subscribe(),
        }
    }

    /// Tells subscribers that `events` are committed.
    pub fn committed(&self, events: &[Event]) {
        self.advance(events.iter().map(|e| (&e.fid, e.seq)));
    }

    /// Tells subscribers that events up to these seqs are committed
    /// (notices from spoolers in other processes). No marks at all means
    /// notices may have been lost: every subscriber is woken to look again.
    pub fn committed_marks(&self, marks: &[(Fid, u64)]) {
        if marks.is_empty() {
            for tx in self.subs.lock().expect("hub lock").values() {
                tx.send_modify(|_| {});
            }
            return;
        }
        self.advance(marks.iter().map(|(fid, seq)| (fid, *seq)));
    }

    fn advance<'a>(&self, marks: impl Iterator<Item = (&'a Fid, u64)>) {
        let subs = self.subs.lock().expect("hub lock");
        if subs.is_empty() {
            return;
        }
        for (fid, seq) in marks {
            if let Some(tx) = subs.get(fid) {
                // Every commit wakes the followers, even one below the mark:
                // with spoolers in several processes, a late batch can fill
                // a gap below events already committed.
                tx.send_modify(|mark| *mark = (*mark).max(seq));
            }
        }
    }

    /// How many executions someone follows now.
    pub fn followed(&self) -> usize {
        self.subs.lock().expect("hub lock").len()
    }
}

impl Subscription {
    /// The highest seq known committed since subscribing (0: none yet).
    pub fn committed(&self) -> u64 {
        *self.rx.borrow()
    }

    /// Waits until a commit newer than the last one seen arrives.
    pub async fn changed(&mut self) {
        // The sender lives in the hub as long as this subscription does.
        let _ = self.rx.changed().await;
    }

    /// Waits until events up to `seq` are committed.
    pub async fn until(&mut self, seq: u64) {
        let _ = self.rx.wait_for(|&s| s >= seq).await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subs = self.hub.subs.lock().expect("hub lock");
        if let Some(tx) = subs.get(&self.fid)
            && tx.receiver_count() <= 1
        {
            subs.remove(&self.fid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kodo_core::Kind;

    #[tokio::test]
    async fn subscribers_see_commits_and_unsubscribe_on_drop() {
        let hub = Hub::new();
        let fid = Fid::new();
        let mut a = hub.subscribe(&fid);
        let b = hub.subscribe(&fid);
        let ev = |seq| Event {
            fid: fid.clone(),
            seq,
            ts: 0.0,
            kind: Kind::Debug,
            payload: "null".into(),
            attempt: 0,
        };
        hub.committed(&[ev(1), ev(3)]);
        a.until(3).await;
        assert_eq!(b.committed(), 3);
        hub.committed(&[ev(2)]);
        assert_eq!(a.committed(), 3, "an older seq never moves the mark back");
        let woken = std::time::Duration::from_secs(5);
        // Woken even so: it may fill a gap.
        tokio::time::timeout(woken, a.changed()).await.unwrap();
        hub.committed_marks(&[]);
        // Woken by a "look again".
        tokio::time::timeout(woken, a.changed()).await.unwrap();
        drop(b);
        assert_eq!(hub.followed(), 1);
        drop(a);
        assert_eq!(hub.followed(), 0);
    }
}
