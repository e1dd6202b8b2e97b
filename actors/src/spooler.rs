//! Spoolers drain the transport into the store: receive a batch, commit it,
//! acknowledge it, tell the live hub. One Spooler per shard; their
//! supervisor hands a crashed Spooler's unacknowledged batches back to the
//! transport and restarts it (see [`crate::policy::SPOOLER`]).

use crate::hub::Hub;
use crate::policy::{self, RestartLog};
use kodo_cluster::SharedCluster;
use kodo_store::{SharedStore, StoreError};
use kodo_transport::SharedTransport;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The store's state as the Spoolers see it, for `/health`.
#[derive(Debug, Default)]
pub struct StoreHealth {
    last_error: Mutex<Option<String>>,
}

impl StoreHealth {
    /// The error of the last failed write, while writes keep failing.
    pub fn error(&self) -> Option<String> {
        self.last_error.lock().expect("health lock").clone()
    }

    fn set(&self, error: Option<String>) {
        *self.last_error.lock().expect("health lock") = error;
    }
}

/// What every Spooler needs.
#[derive(Debug, Clone)]
pub struct SpoolerShared {
    /// Where events come from.
    pub transport: SharedTransport,
    /// Where they go.
    pub store: SharedStore,
    /// Who hears about commits in this process.
    pub hub: Arc<Hub>,
    /// Who hears about them in other processes.
    pub cluster: SharedCluster,
    /// The most events per batch.
    pub batch_max: usize,
    /// Store health, shared with the API.
    pub health: Arc<StoreHealth>,
    /// What this process counts.
    pub metrics: kodo_metrics::SharedMetrics,
    /// The spans of this process's executions (empty in a spool process).
    pub spans: Arc<crate::spans::SpanBook>,
}

/// The Spooler actor.
pub(crate) struct Spooler;

/// A Spooler's one message: take the next batch (sent to itself).
pub(crate) struct Pull;

/// A Spooler's state.
pub(crate) struct SpoolerState {
    shard: usize,
    shared: SpoolerShared,
}

impl Actor for Spooler {
    type Msg = Pull;
    type State = SpoolerState;
    type Arguments = (usize, SpoolerShared);

    async fn pre_start(
        &self,
        myself: ActorRef<Pull>,
        (shard, shared): (usize, SpoolerShared),
    ) -> Result<SpoolerState, ActorProcessingErr> {
        myself.cast(Pull)?;
        Ok(SpoolerState { shard, shared })
    }

    async fn handle(
        &self,
        myself: ActorRef<Pull>,
        _msg: Pull,
        state: &mut SpoolerState,
    ) -> Result<(), ActorProcessingErr> {
        let shared = &state.shared;
        // Transports count their own failures (`TransportHealth::failures`).
        let Some(delivery) = shared
            .transport
            .receive(state.shard, shared.batch_max)
            .await?
        else {
            myself.stop(Some("transport drained".into()));
            return Ok(());
        };
        let span = shared.spans.commit_span(&delivery.events);
        let commit = commit_with_retry(shared, &delivery.events);
        if tracing::Instrument::instrument(commit, span).await.is_err() {
            // Closed at shutdown while the store failed: the batch stays
            // unacknowledged (the shutdown reports it unstored).
            tracing::error!(
                shard = state.shard,
                events = delivery.events.len(),
                "the store was closed before this batch could be stored"
            );
            myself.stop(Some("store closed".into()));
            return Ok(());
        }
        // A failure crashes this Spooler: its supervisor hands the batch back.
        shared.transport.ack(delivery.receipt).await?;
        shared.hub.committed(&delivery.events);
        shared.cluster.announce_commits(&delivery.events).await;
        // Those woken by this commit (a step waits for it) publish their
        // next events before the next batch is taken: fuller batches.
        tokio::task::yield_now().await;
        myself.cast(Pull)?;
        Ok(())
    }
}

/// Commits a batch, retrying with backoff (capped at 2 s) while the store
/// fails: the batch stays in hand, the transport stays full, Tracers wait.
/// Gives up only when the store was closed.
async fn commit_with_retry(
    shared: &SpoolerShared,
    events: &[kodo_core::Event],
) -> Result<(), StoreError> {
    let mut backoff = Duration::from_millis(10);
    loop {
        let start = Instant::now();
        match shared.store.write(events).await {
            Ok(()) => {
                shared.metrics.committed(events, start.elapsed());
                if shared.health.error().is_some() {
                    tracing::info!("store writes work again");
                    shared.health.set(None);
                }
                return Ok(());
            }
            Err(StoreError::Closed) => return Err(StoreError::Closed),
            Err(e) => {
                shared.metrics.store_error();
                tracing::warn!(error = %e, events = events.len(), retry_in = ?backoff, "store write failed");
                shared.health.set(Some(e.to_string()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The Spooler supervisor actor.
pub(crate) struct Spoolers;

/// The Spooler supervisor's state.
pub(crate) struct SpoolersState {
    shared: SpoolerShared,
    shards: HashMap<ActorId, usize>,
    restarts: Vec<RestartLog>,
    escalation: Arc<Mutex<Option<String>>>,
}

/// The Spooler supervisor has no messages of its own.
pub(crate) enum SpoolersMsg {}

impl Spoolers {
    async fn spawn(
        myself: &ActorRef<SpoolersMsg>,
        state: &mut SpoolersState,
        shard: usize,
    ) -> Result<(), ActorProcessingErr> {
        let (spooler, _) = Actor::spawn_linked(
            None,
            Spooler,
            (shard, state.shared.clone()),
            myself.get_cell(),
        )
        .await?;
        state.shards.insert(spooler.get_id(), shard);
        Ok(())
    }
}

impl Actor for Spoolers {
    type Msg = SpoolersMsg;
    type State = SpoolersState;
    type Arguments = (SpoolerShared, Arc<Mutex<Option<String>>>);

    async fn pre_start(
        &self,
        myself: ActorRef<SpoolersMsg>,
        (shared, escalation): Self::Arguments,
    ) -> Result<SpoolersState, ActorProcessingErr> {
        let n = shared.transport.shards();
        let mut state = SpoolersState {
            shared,
            shards: HashMap::new(),
            restarts: (0..n).map(|_| RestartLog::default()).collect(),
            escalation,
        };
        for shard in 0..n {
            Self::spawn(&myself, &mut state, shard).await?;
        }
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SpoolersMsg>,
        event: SupervisionEvent,
        state: &mut SpoolersState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                let Some(shard) = state.shards.remove(&cell.get_id()) else {
                    return Ok(());
                };
                let again = state.shared.transport.recover(shard).await?;
                tracing::error!(shard, error = %err, redelivered = again, "spooler crashed");
                if !state.restarts[shard].allow(policy::SPOOLER, Instant::now()) {
                    let why = format!(
                        "spooler {shard} crashed more than {} times in {:?}, last: {err}",
                        policy::SPOOLER.max_restarts,
                        policy::SPOOLER.within
                    );
                    *state.escalation.lock().expect("escalation lock") = Some(why.clone());
                    return Err(why.into());
                }
                Self::spawn(&myself, state, shard).await?;
                state.shared.metrics.spooler_restarted();
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.shards.remove(&cell.get_id());
                if state.shards.is_empty() {
                    myself.stop(Some("all spoolers drained".into()));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The Spoolers and their supervisor as one handle: a node starts one, and
/// `runtime spool` runs one alone (the spoolers-only process of a Redis
/// deployment).
#[derive(Debug)]
pub struct SpoolerGroup {
    spoolers: ActorRef<SpoolersMsg>,
    /// None while the spoolers run; then why they ended (empty: drained on request).
    ended: watch::Receiver<Option<String>>,
    draining: Arc<AtomicBool>,
}

impl SpoolerGroup {
    /// Starts one Spooler per shard of `shared.transport` under their supervisor.
    pub async fn start(shared: SpoolerShared) -> Result<Self, String> {
        let escalation = Arc::new(Mutex::new(None));
        let (spoolers, done) = Actor::spawn(None, Spoolers, (shared, escalation.clone()))
            .await
            .map_err(|e| format!("spoolers: {e}"))?;
        let draining = Arc::new(AtomicBool::new(false));
        let (ended_tx, ended) = watch::channel(None);
        let watching = draining.clone();
        tokio::spawn(async move {
            let _ = done.await;
            let why = if watching.load(Ordering::Acquire) {
                String::new()
            } else {
                escalation
                    .lock()
                    .expect("escalation lock")
                    .clone()
                    .unwrap_or_else(|| "the spooler supervisor stopped".into())
            };
            let _ = ended_tx.send(Some(why));
        });
        Ok(Self {
            spoolers,
            ended,
            draining,
        })
    }

    /// Resolves when the supervisor gave up (a Spooler kept crashing): no
    /// more events can be stored, the process should exit with this reason.
    pub async fn failed(&self) -> String {
        let mut ended = self.ended.clone();
        match ended
            .wait_for(|why| why.as_ref().is_some_and(|w| !w.is_empty()))
            .await
        {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Waits (up to `wait`) for the Spoolers to drain a closed transport and
    /// end; stops them if they take longer. Returns whether they drained.
    pub async fn drain(&self, wait: Duration) -> bool {
        self.draining.store(true, Ordering::Release);
        let mut ended = self.ended.clone();
        if tokio::time::timeout(wait, ended.wait_for(Option::is_some))
            .await
            .is_err()
        {
            tracing::error!(?wait, "spoolers did not drain in time");
            self.spoolers.stop(None);
            return false;
        }
        true
    }
}
