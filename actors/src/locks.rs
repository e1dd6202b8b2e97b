//! Open locks (a flow waiting for a person's answer), by lock id, and the
//! seam of where they are kept: [`LockKeeper`]. [`Locks`] keeps them in
//! this node's memory (direct mode); durable mode keeps them in the
//! execution's workflow.

use async_trait::async_trait;
use kodo_core::{Fid, Kind, now_ts};
use kodo_store::{EventQuery, SharedStore, StoreError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// A lock id that is already open.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("lock {0} is already open")]
pub struct LockInUse(pub String);

/// Why an answer was not delivered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// No open lock of that id in that execution (never opened, answered, or expired).
    #[error("no open lock {lid} in execution {fid}")]
    NotFound {
        /// The execution asked.
        fid: String,
        /// The lock asked.
        lid: String,
    },
}

/// An open lock's execution and where its answer (None: it expired) goes.
type Waiter = (Fid, oneshot::Sender<Option<Value>>);

/// Why a lock could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum KeepError {
    /// The id is open already.
    #[error(transparent)]
    InUse(#[from] LockInUse),
    /// Where locks are kept could not be reached.
    #[error("locks unavailable: {0}")]
    Unavailable(String),
}

/// A lock as its keeper opened it.
#[derive(Debug)]
pub struct Kept {
    /// When it expires (Unix seconds), for its `lock` event.
    pub expires: f64,
    /// How long to wait here at most: past it, the lock counts as expired.
    pub wait: Duration,
    /// The lock, open while this lives.
    pub open: OpenLock,
}

/// Where the locks of running executions are kept.
#[async_trait]
pub trait LockKeeper: Send + Sync + std::fmt::Debug {
    /// The id of the `n`th lock (from 1) execution `fid` opens without
    /// naming one.
    fn lock_id(&self, fid: &Fid, n: u64) -> String;

    /// Opens lock `lid` of `fid`, to expire after `wait`.
    async fn open(&self, fid: &Fid, lid: &str, wait: Duration) -> Result<Kept, KeepError>;
}

#[async_trait]
impl LockKeeper for Locks {
    /// A random id: locks kept here do not outlive the execution's run.
    fn lock_id(&self, _fid: &Fid, _n: u64) -> String {
        uuid::Uuid::new_v4().to_string()
    }

    async fn open(&self, fid: &Fid, lid: &str, wait: Duration) -> Result<Kept, KeepError> {
        Ok(Kept {
            expires: now_ts() + wait.as_secs_f64(),
            wait,
            open: Locks::open(self, fid, lid)?,
        })
    }
}

/// The open locks of this node, by lock id.
#[derive(Clone, Default)]
pub struct Locks {
    open: Arc<Mutex<HashMap<String, Waiter>>>,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.open.lock().map(|o| o.len()).unwrap_or(0);
        f.debug_struct("Locks").field("open", &open).finish()
    }
}

/// An open lock; closes itself (forgets the lock) when dropped.
#[derive(Debug)]
pub struct OpenLock {
    locks: Locks,
    lid: String,
    /// Receives the answer (None: the lock expired).
    pub answer: oneshot::Receiver<Option<Value>>,
}

impl Locks {
    /// Opens lock `lid` of execution `fid`; an id that is open already is refused.
    pub fn open(&self, fid: &Fid, lid: &str) -> Result<OpenLock, LockInUse> {
        let (tx, rx) = oneshot::channel();
        match self.open.lock().expect("locks lock").entry(lid.to_string()) {
            std::collections::hash_map::Entry::Occupied(_) => {
                return Err(LockInUse(lid.to_string()));
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert((fid.clone(), tx));
            }
        }
        Ok(OpenLock {
            locks: self.clone(),
            lid: lid.to_string(),
            answer: rx,
        })
    }

    /// Delivers `answer` to lock `lid` of execution `fid`.
    pub fn answer(&self, fid: &Fid, lid: &str, answer: Value) -> Result<(), AnswerError> {
        self.close(fid, lid, Some(answer))
    }

    /// Closes lock `lid` of execution `fid` as expired.
    pub fn expire(&self, fid: &Fid, lid: &str) -> Result<(), AnswerError> {
        self.close(fid, lid, None)
    }

    /// Whether lock `lid` of `fid` is open here.
    pub fn is_open(&self, fid: &Fid, lid: &str) -> bool {
        matches!(self.open.lock().expect("locks lock").get(lid), Some((owner, _)) if owner == fid)
    }

    /// The ids of the locks of `fid` open here.
    pub fn open_of(&self, fid: &Fid) -> Vec<String> {
        let open = self.open.lock().expect("locks lock");
        open.iter()
            .filter(|(_, (owner, _))| owner == fid)
            .map(|(lid, _)| lid.clone())
            .collect()
    }

    fn close(&self, fid: &Fid, lid: &str, answer: Option<Value>) -> Result<(), AnswerError> {
        let not_found = || AnswerError::NotFound {
            fid: fid.to_string(),
            lid: lid.to_string(),
        };
        let mut open = self.open.lock().expect("locks lock");
        match open.get(lid) {
            Some((owner, _)) if owner == fid => {}
            _ => return Err(not_found()),
        }
        let (_, tx) = open.remove(lid).expect("checked above");
        tx.send(answer).map_err(|_| not_found())
    }

    /// How many locks are open.
    pub fn len(&self) -> usize {
        self.open.lock().expect("locks lock").len()
    }

    /// Whether no lock is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for OpenLock {
    fn drop(&mut self) {
        self.locks
            .open
            .lock()
            .expect("locks lock")
            .remove(&self.lid);
    }
}

/// Lock `lid` of `fid` as stored: its `lock` and its `lease` payloads
/// (None: not stored). A lease with `result` was an answer; one with
/// `error`, an expiry.
pub async fn stored_lock(
    store: &SharedStore,
    fid: &Fid,
    lid: &str,
) -> Result<(Option<Value>, Option<Value>), StoreError> {
    let query = EventQuery {
        after: 0,
        limit: 10_000,
        kinds: Some(vec![Kind::Lock, Kind::Lease]),
    };
    let events = store.events(fid, &query).await?;
    let of_lid = |kind: Kind| {
        events
            .iter()
            .filter(move |e| e.kind == kind)
            .filter_map(|e| serde_json::from_str::<Value>(&e.payload).ok())
            .find(|payload| payload["lid"] == lid)
    };
    Ok((of_lid(Kind::Lock), of_lid(Kind::Lease)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_reach_only_the_right_execution_once() {
        let locks = Locks::default();
        let fid = Fid::new();
        let mut lock = locks.open(&fid, "l1").unwrap();
        assert_eq!(
            locks.open(&Fid::new(), "l1").err(),
            Some(LockInUse("l1".into())),
            "an open id is not taken twice"
        );
        assert!(locks.answer(&Fid::new(), "l1", Value::Null).is_err());
        assert!(locks.answer(&fid, "l2", Value::Null).is_err());
        locks.answer(&fid, "l1", Value::from(7)).unwrap();
        assert!(locks.answer(&fid, "l1", Value::from(8)).is_err());
        assert_eq!((&mut lock.answer).await.unwrap(), Some(Value::from(7)));
        let mut expiring = locks.open(&fid, "l4").unwrap();
        assert_eq!(locks.open_of(&fid), ["l4"]);
        locks.expire(&fid, "l4").unwrap();
        assert_eq!((&mut expiring.answer).await.unwrap(), None);
        let dropped = locks.open(&fid, "l3").unwrap();
        drop(dropped);
        assert!(locks.is_empty());
    }
}
