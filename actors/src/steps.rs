//! Durable steps. A step's result is journaled as a `step` event
//! (`{"n","name","result"}`, numbered 1, 2... in the order the flow takes
//! its steps) and is stored before the flow goes on. An execution that runs
//! again (its node restarted, a survivor took its node over, Temporal
//! retried its attempt) is given its journal: each step already done
//! returns its journaled result without running; the one that was running
//! when the crash came runs again (at least once, `docs/semantics.md`).

use crate::flow::{BoxError, Ctx};
use crate::hub::{Hub, Subscription};
use crate::leftovers;
use crate::tracer::{Trace, TraceError};
use kodo_core::{Fid, Kind};
use kodo_store::{EventQuery, SharedStore, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One journaled step.
#[derive(Clone, Debug, PartialEq)]
pub struct JournalEntry {
    /// The step's name.
    pub name: String,
    /// Its result.
    pub result: Value,
}

/// The steps an execution completed in earlier attempts, by number.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Journal {
    entries: BTreeMap<u64, JournalEntry>,
}

/// How long a step waits for its commit notice before it asks the store.
const NOTICE_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Journal pages read at once.
const PAGE: u32 = 1000;

impl Journal {
    /// Reads `fid`'s journal (its stored `step` events). Call it once
    /// nothing older can still be stored (after a settle, or a fence).
    pub async fn load(store: &SharedStore, fid: &Fid) -> Result<Self, StoreError> {
        let mut journal = Self::default();
        let mut after = 0;
        loop {
            let query = EventQuery {
                after,
                limit: PAGE,
                kinds: Some(vec![Kind::Step]),
            };
            let page = store.events(fid, &query).await?;
            for event in &page {
                match serde_json::from_str::<Value>(&event.payload) {
                    Ok(Value::Object(mut step)) => {
                        let n = step.get("n").and_then(Value::as_u64).unwrap_or(event.seq);
                        let name = step
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let result = step.remove("result").unwrap_or(Value::Null);
                        journal.entries.insert(n, JournalEntry { name, result });
                    }
                    _ => {
                        tracing::warn!(%fid, seq = event.seq, "a step event that is not a step; left out of the journal")
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE as usize => after = last.seq,
                _ => return Ok(journal),
            }
        }
    }

    /// The entry of step `n`.
    pub fn get(&self, n: u64) -> Option<&JournalEntry> {
        self.entries.get(&n)
    }

    /// How many steps are journaled.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no step is journaled.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest journaled step number (0: none).
    pub fn last(&self) -> u64 {
        self.entries.keys().next_back().copied().unwrap_or(0)
    }

    /// The entries in step order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &JournalEntry)> {
        self.entries.iter().map(|(n, e)| (*n, e))
    }
}

/// Why a step did not give a result.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The flow's code changed since the journal was written.
    #[error(
        "step {n} is \"{name}\" but the journal holds \"{journaled}\" there: the flow changed \
         since this execution began; its journal cannot be replayed"
    )]
    Changed {
        /// The step's number.
        n: u64,
        /// The name the flow gave now.
        name: String,
        /// The name journaled.
        journaled: String,
    },
    /// The step itself failed (nothing was journaled).
    #[error("step \"{name}\" failed: {source}")]
    Failed {
        /// The step's name.
        name: String,
        /// Its error.
        source: BoxError,
    },
    /// The journaled result does not fit the type asked for, or a result
    /// is not JSON.
    #[error("step \"{name}\": {reason}")]
    Value {
        /// The step's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The result could not be journaled (the execution ended, too large).
    #[error("step \"{name}\" could not be journaled: {source}")]
    Record {
        /// The step's name.
        name: String,
        /// Why.
        source: TraceError,
    },
}

/// An execution's steps: its journal, how many steps it took, and how to
/// wait until a journaled result is stored.
#[derive(Debug)]
pub(crate) struct Steps {
    journal: Journal,
    taken: AtomicU64,
    /// The numbers a command flow gave its steps in this run.
    numbered: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    commits: Commits,
    /// Whether the execution runs again after its node's shutdown
    /// (`recover = "resume"`, a node alone).
    resumes: bool,
}

impl Steps {
    /// Steps going on from `journal`.
    pub(crate) fn new(journal: Journal, commits: Commits) -> Self {
        Self {
            journal,
            taken: AtomicU64::new(0),
            numbered: Default::default(),
            commits,
            resumes: false,
        }
    }

    /// Marks the execution as one that runs again after its node.
    pub(crate) fn resuming(mut self, resumes: bool) -> Self {
        self.resumes = resumes;
        self
    }

    pub(crate) fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The number of the next step the flow takes.
    pub(crate) fn next(&self) -> u64 {
        self.taken.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The flow numbered a step `n` itself (later ones without a number
    /// come after it); None when `n` is journaled or taken already.
    pub(crate) fn took(&self, n: u64) -> Option<u64> {
        let fresh =
            self.journal.get(n).is_none() && self.numbered.lock().expect("numbered lock").insert(n);
        self.taken.fetch_max(n, Ordering::Relaxed);
        fresh.then_some(n)
    }

    /// A flow that replays its journal itself (a command flow) takes its
    /// next step after the journal's last.
    pub(crate) fn skip_journal(&self) {
        self.taken.fetch_max(self.journal.last(), Ordering::Relaxed);
    }

    pub(crate) fn commits(&self) -> &Commits {
        &self.commits
    }
}

/// Waits until an execution's events are stored: the hub's notice, or the
/// store itself.
#[derive(Clone, Debug)]
pub(crate) struct Commits {
    store: SharedStore,
    hub: Arc<Hub>,
}

impl Commits {
    pub(crate) fn new(store: SharedStore, hub: Arc<Hub>) -> Self {
        Self { store, hub }
    }

    /// Follows `fid`'s commits (before publishing what to wait for).
    pub(crate) fn follow(&self, fid: &Fid) -> Subscription {
        self.hub.subscribe(fid)
    }

    /// Waits (as long as it takes) until `fid`'s events up to `seq` are
    /// stored: the commit notice, which comes unless lost (a spooler in
    /// another process), so the store is asked only after a while.
    pub(crate) async fn stored(&self, following: &mut Subscription, fid: &Fid, seq: u64) {
        if tokio::time::timeout(NOTICE_WAIT, following.until(seq))
            .await
            .is_ok()
        {
            return;
        }
        leftovers::stored(&self.store, following, fid, seq).await;
    }
}

impl Ctx {
    /// Whether this execution was stopped by its node's shutdown and runs
    /// again at the node's next start (`recover = "resume"`): its end is
    /// then not recorded.
    pub(crate) fn left_to_resume(&self) -> bool {
        self.steps().resumes && self.stop_request().is_some_and(|stop| stop.node_stopping)
    }

    /// Runs step `name` once: the first time, awaits `work` and journals
    /// its result (returning once it is stored); when the execution runs
    /// again after a crash, returns the journaled result without awaiting
    /// `work`. Steps are numbered in the order they are first polled; a
    /// step whose name differs from the journal's at its number fails with
    /// [`StepError::Changed`]. An error of `work` is not journaled (its
    /// number stays unused, and the step runs again on the next run).
    pub async fn step<T, E, F>(&self, name: &str, work: F) -> Result<T, StepError>
    where
        T: Serialize + DeserializeOwned,
        E: Into<BoxError>,
        F: Future<Output = Result<T, E>>,
    {
        let steps = self.steps();
        let n = steps.next();
        if let Some(entry) = steps.journal().get(n) {
            if entry.name != name {
                return Err(StepError::Changed {
                    n,
                    name: name.to_string(),
                    journaled: entry.name.clone(),
                });
            }
            return T::deserialize(&entry.result).map_err(|e| StepError::Value {
                name: name.to_string(),
                reason: format!("its journaled result does not fit: {e}"),
            });
        }
        let value = work.await.map_err(|e| StepError::Failed {
            name: name.to_string(),
            source: e.into(),
        })?;
        let result = serde_json::to_string(&value).map_err(|e| StepError::Value {
            name: name.to_string(),
            reason: format!("its result is not JSON: {e}"),
        })?;
        self.journal_step(n, name, &result).await?;
        Ok(value)
    }

    /// Publishes the result (JSON text) of a step the flow took itself (a
    /// command flow, which replays its journal on its own), numbered `n`
    /// as the flow counts (None: after the last); [`Ctx::until_journaled`]
    /// waits until it is stored.
    pub(crate) async fn record_step(
        &self,
        name: &str,
        n: Option<u64>,
        result: &str,
    ) -> Result<Journaling, StepError> {
        let n = match n {
            Some(n) => self.steps().took(n).ok_or_else(|| StepError::Value {
                name: name.to_string(),
                reason: format!(
                    "step number {n} is used already (journaled, or taken in this run)"
                ),
            })?,
            None => self.steps().next(),
        };
        self.publish_step(n, name, result).await
    }

    /// Waits (as long as it takes) until a published step is stored.
    pub(crate) async fn until_journaled(&self, mut journaling: Journaling) {
        let commits = self.steps().commits();
        commits
            .stored(&mut journaling.following, self.fid(), journaling.seq)
            .await;
    }

    async fn journal_step(&self, n: u64, name: &str, result: &str) -> Result<(), StepError> {
        let journaling = self.publish_step(n, name, result).await?;
        self.until_journaled(journaling).await;
        Ok(())
    }

    async fn publish_step(
        &self,
        n: u64,
        name: &str,
        result: &str,
    ) -> Result<Journaling, StepError> {
        let following = self.steps().commits().follow(self.fid());
        self.unpaused().await;
        let seq = self
            .tracer()
            .trace(Trace::Step(step_payload(n, name, result)))
            .await
            .map_err(|source| StepError::Record {
                name: name.to_string(),
                source,
            })?;
        Ok(Journaling { n, seq, following })
    }
}

/// A step result published, not yet known to be stored.
#[derive(Debug)]
pub(crate) struct Journaling {
    /// The step's number.
    pub n: u64,
    seq: u64,
    following: Subscription,
}

/// The payload of step `n`'s event: `{"n","name","result"}` (result: JSON text).
pub(crate) fn step_payload(n: u64, name: &str, result: &str) -> String {
    format!(
        "{{\"n\":{n},\"name\":{},\"result\":{result}}}",
        Value::from(name)
    )
}
