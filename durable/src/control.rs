//! How a running attempt follows what was asked of its execution: the
//! workflow holds it (pause, resume, locks and their answers); the attempt
//! queries the workflow's `state` when it starts (after the first), when
//! nudged, when a lock it waits on is due to expire, and every
//! [`LOOK_AGAIN`] (a nudge may be lost, or never leave its process: a
//! worker of its own on the in-process transport), and applies what it
//! finds to its `Ctx`. Its locks are kept by
//! [`DurableLocks`]: opened in the workflow, answered through it.

use crate::workflow::{Asked, KodoExecution, LockRecord, Opening};
use async_trait::async_trait;
use kodo_actors::{Ctx, KeepError, Kept, LockKeeper, Locks};
use kodo_cluster::NudgeListener;
use kodo_core::Fid;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use temporalio_client::{
    Client, WorkflowHandle, WorkflowQueryOptions, WorkflowSignalOptions,
    errors::{WorkflowInteractionError, WorkflowQueryError},
};
use tokio::sync::Notify;

/// A workflow handle of `kodo_execution`.
pub(crate) type Handle = WorkflowHandle<Client, KodoExecution>;

/// How long one query or signal may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// How often an attempt looks again without a nudge (one sent while Redis
/// was away is lost).
const LOOK_AGAIN: Duration = Duration::from_secs(30);

/// How long after a lock's expiry its attempt asks the workflow whether
/// the timer fired (no one nudges for that).
const AFTER_EXPIRY: Duration = Duration::from_millis(300);

/// How long past a lock's expiry the attempt waits for the workflow to say
/// it expired (its timer decides), before it counts it expired itself.
const EXPIRY_GRACE: Duration = Duration::from_secs(30);

/// Why the workflow could not be asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AskError {
    /// No such workflow (not a durable execution).
    #[error("no such workflow")]
    NotFound,
    /// Temporal did not answer.
    #[error("{0}")]
    Unreachable(String),
    /// No worker answered in time (none may run).
    #[error("no worker answered")]
    NoWorker,
}

/// What was asked of the execution whose workflow `handle` is.
pub(crate) async fn asked(handle: &Handle) -> Result<Asked, AskError> {
    asked_within(handle, ANSWER_WITHIN).await
}

/// [`asked`], waiting at most `within`: a worker answers queries, and
/// while none runs (all lost, or none started yet) no answer comes.
pub(crate) async fn asked_within(handle: &Handle, within: Duration) -> Result<Asked, AskError> {
    let query = handle.query(KodoExecution::state, (), WorkflowQueryOptions::default());
    match tokio::time::timeout(within, query).await {
        Ok(Ok(asked)) => Ok(asked),
        Ok(Err(WorkflowQueryError::NotFound(_))) => Err(AskError::NotFound),
        Ok(Err(e)) => Err(AskError::Unreachable(e.to_string())),
        Err(_) => Err(AskError::NoWorker),
    }
}

/// Waits for a signal's send, at most [`ANSWER_WITHIN`]; Ok(false): no
/// such workflow.
pub(crate) async fn sent(
    signal: impl std::future::Future<Output = Result<(), WorkflowInteractionError>>,
) -> Result<bool, String> {
    match tokio::time::timeout(ANSWER_WITHIN, signal).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(WorkflowInteractionError::NotFound(_))) => Ok(false),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", ANSWER_WITHIN.as_secs())),
    }
}

/// The attempts running on this worker, woken when their execution is
/// nudged (a stale attempt and its retry may run here at once: each has
/// its own registration).
#[derive(Clone, Default)]
pub(crate) struct Nudges(Arc<Mutex<HashMap<Fid, Vec<Arc<Notify>>>>>);

impl Nudges {
    /// Follows nudges for `fid` until the guard is dropped.
    pub(crate) fn register(&self, fid: &Fid) -> Nudged {
        let notify = Arc::new(Notify::new());
        self.0
            .lock()
            .expect("nudges lock")
            .entry(fid.clone())
            .or_default()
            .push(notify.clone());
        Nudged {
            nudges: self.clone(),
            fid: fid.clone(),
            notify,
        }
    }

    /// What the cluster calls with the executions nudged.
    pub(crate) fn listener(&self) -> NudgeListener {
        let nudges = self.clone();
        Arc::new(move |fids: &[Fid]| {
            let running = nudges.0.lock().expect("nudges lock");
            let wake = |attempts: &Vec<Arc<Notify>>| attempts.iter().for_each(|n| n.notify_one());
            if fids.is_empty() {
                running.values().for_each(wake);
            }
            fids.iter()
                .filter_map(|fid| running.get(fid))
                .for_each(wake);
        })
    }
}

/// One attempt's nudges.
pub(crate) struct Nudged {
    nudges: Nudges,
    fid: Fid,
    notify: Arc<Notify>,
}

impl Drop for Nudged {
    fn drop(&mut self) {
        let mut running = self.nudges.0.lock().expect("nudges lock");
        if let Some(attempts) = running.get_mut(&self.fid) {
            attempts.retain(|n| !Arc::ptr_eq(n, &self.notify));
            if attempts.is_empty() {
                running.remove(&self.fid);
            }
        }
    }
}

/// The locks of one durable attempt: each is opened in the workflow first
/// (which expires it by a timer), then waits here for what the workflow
/// says of it. A lock an earlier attempt opened is the same lock: its
/// answer (or expiry) is delivered at once.
pub(crate) struct DurableLocks {
    handle: Option<Handle>,
    /// The locks that wait here, by their workflow key.
    waiting: Locks,
    /// How often this attempt opened each lock id.
    openings: Mutex<HashMap<String, u32>>,
    /// What the workflow said of the execution's locks, last time it was asked.
    known: Mutex<BTreeMap<String, LockRecord>>,
    /// Wakes the follower when a lock opens.
    opened: Notify,
}

impl std::fmt::Debug for DurableLocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableLocks")
            .field("waiting", &self.waiting)
            .finish_non_exhaustive()
    }
}

impl DurableLocks {
    pub(crate) fn new(handle: Option<Handle>) -> Self {
        Self {
            handle,
            waiting: Locks::default(),
            openings: Mutex::new(HashMap::new()),
            known: Mutex::new(BTreeMap::new()),
            opened: Notify::new(),
        }
    }

    /// Takes in what the workflow said: answers and expiries reach the
    /// locks that wait here.
    fn learn(&self, fid: &Fid, locks: BTreeMap<String, LockRecord>) {
        for lid in self.waiting.open_of(fid) {
            match locks.get(&lid) {
                Some(LockRecord {
                    answer: Some(answer),
                    ..
                }) => {
                    let _ = self.waiting.answer(fid, &lid, answer.clone());
                }
                Some(LockRecord { expired: true, .. }) => {
                    let _ = self.waiting.expire(fid, &lid);
                }
                _ => {}
            }
        }
        *self.known.lock().expect("known lock") = locks;
    }

    /// How long until the first lock that waits here is due to expire.
    fn next_expiry(&self, fid: &Fid) -> Option<Duration> {
        let known = self.known.lock().expect("known lock");
        let now_ms = (kodo_core::now_ts() * 1000.0) as u64;
        self.waiting
            .open_of(fid)
            .iter()
            .filter_map(|lid| known.get(lid))
            .map(|lock| Duration::from_millis(lock.expires_ms.saturating_sub(now_ms)))
            .min()
    }

    /// Records the opening in the workflow, retrying while Temporal is
    /// away (up to a minute).
    async fn record(&self, opening: Opening) -> Result<(), KeepError> {
        let handle = self
            .handle
            .as_ref()
            .ok_or_else(|| KeepError::Unavailable("no workflow to keep the lock".into()))?;
        let mut backoff = Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let signal = handle.signal(
                KodoExecution::open_lock,
                opening.clone(),
                WorkflowSignalOptions::default(),
            );
            let why = match sent(signal).await {
                Ok(true) => return Ok(()),
                Ok(false) => "the execution's workflow is gone".to_string(),
                Err(e) => e,
            };
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(KeepError::Unavailable(format!(
                    "temporal could not record lock {}: {why}",
                    opening.lid
                )));
            }
            tracing::warn!(lid = %opening.lid, error = %why, retry_in = ?backoff, "cannot record a lock yet");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[async_trait]
impl LockKeeper for DurableLocks {
    /// The `n`th lock has the same id in every attempt: a retried flow
    /// that opens its locks again finds them (answered, perhaps).
    fn lock_id(&self, fid: &Fid, n: u64) -> String {
        format!("{fid}-{n}")
    }

    /// The kth opening of `lid` in this attempt is the workflow's lock
    /// [`lock_key`]`(lid, k)`: a retry that opens it again the kth time
    /// finds it, while a flow that asks again under the same id (after the
    /// answer) gets a new lock, as in direct mode.
    async fn open(&self, fid: &Fid, lid: &str, wait: Duration) -> Result<Kept, KeepError> {
        let key = {
            let mut openings = self.openings.lock().expect("openings lock");
            let k = openings.entry(lid.to_string()).or_default();
            if *k > 0 && self.waiting.is_open(fid, &lock_key(lid, *k)) {
                return Err(kodo_actors::LockInUse(lid.to_string()).into());
            }
            *k += 1;
            lock_key(lid, *k)
        };
        let known = self.known.lock().expect("known lock").get(&key).cloned();
        let (expires_ms, record) = match known {
            Some(record) => (record.expires_ms, Some(record)),
            None => {
                let wait_ms = wait.as_millis() as u64;
                self.record(Opening {
                    lid: key.clone(),
                    wait_ms,
                })
                .await?;
                ((kodo_core::now_ts() * 1000.0) as u64 + wait_ms, None)
            }
        };
        let open = self.waiting.open(fid, &key)?;
        match record {
            Some(LockRecord {
                answer: Some(answer),
                ..
            }) => {
                let _ = self.waiting.answer(fid, &key, answer);
            }
            Some(LockRecord { expired: true, .. }) => {
                let _ = self.waiting.expire(fid, &key);
            }
            _ => self.opened.notify_one(),
        }
        let expires = expires_ms as f64 / 1000.0;
        let left = Duration::from_secs_f64((expires - kodo_core::now_ts()).max(0.0));
        Ok(Kept {
            expires,
            wait: left + EXPIRY_GRACE,
            open,
        })
    }
}

/// The workflow's key of the `k`th opening (from 1) of lock `lid` in an
/// attempt: the id itself first, then the id, U+001F and `k` (see
/// `workflow::lid_of`).
pub(crate) fn lock_key(lid: &str, k: u32) -> String {
    if k <= 1 {
        lid.to_string()
    } else {
        format!("{lid}\u{1f}{k}")
    }
}

/// Applies what the workflow says was asked to the attempt: pause,
/// resume, lock answers and expiries. A kill comes as the activity's
/// cancellation, not here.
pub(crate) async fn apply(ctx: &Ctx, locks: &DurableLocks, asked: Asked) {
    let traced = match (asked.paused, ctx.is_paused()) {
        (true, false) => ctx.pause().await,
        (false, true) => ctx.resume().await,
        _ => Ok(()),
    };
    if let Err(e) = traced {
        tracing::warn!(fid = %ctx.fid(), error = %e, "could not record a pause or resume");
    }
    locks.learn(ctx.fid(), asked.locks);
}

/// Follows what is asked of the attempt's execution for as long as it runs
/// (until dropped).
pub(crate) async fn follow(ctx: Ctx, handle: Handle, locks: Arc<DurableLocks>, nudged: Nudged) {
    let mut backoff = Duration::ZERO;
    loop {
        if backoff.is_zero() {
            let wait = locks
                .next_expiry(ctx.fid())
                .map_or(LOOK_AGAIN, |due| (due + AFTER_EXPIRY).min(LOOK_AGAIN));
            tokio::select! {
                _ = nudged.notify.notified() => {}
                _ = locks.opened.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        } else {
            tokio::time::sleep(backoff).await;
        }
        match asked(&handle).await {
            Ok(asked) => {
                backoff = Duration::ZERO;
                apply(&ctx, &locks, asked).await;
            }
            // Asked again until Temporal answers: what it holds may have changed.
            Err(e) => {
                backoff = (backoff * 2).clamp(AFTER_EXPIRY, Duration::from_secs(5));
                tracing::warn!(fid = %ctx.fid(), error = %e, retry_in = ?backoff, "cannot ask the workflow what it holds");
            }
        }
    }
}
