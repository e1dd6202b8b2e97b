//! A Temporal worker for kodo's workflow and activities, hosted on a node.
//!
//! The SDK's worker future is not `Send` (it drives workflows in a
//! `LocalSet`): it runs on a thread of its own, inside the node's tokio
//! runtime, so activities still run on the runtime's pool.

use crate::activities::KodoActivities;
use crate::control::Nudges;
use crate::workflow::KodoExecution;
use crate::{DurableError, Temporal};
use kodo_actors::Node;
use std::sync::Arc;
use std::time::Duration;
use temporalio_sdk::runtime::RuntimeOptions;
use temporalio_sdk::runtime::worker_tuner::{FixedSizeSlotSupplier, TunerHolder};
use temporalio_sdk::{Runtime, Worker, WorkerOptions};

/// How long a stopping worker lets its activities finish before it gives
/// them back to Temporal (which retries them elsewhere).
const GIVE_BACK_AFTER: Duration = Duration::from_secs(2);

/// How long a workflow task waits for the worker that ran the workflow last.
const STICKY_WAIT: Duration = Duration::from_secs(1);

type ShutdownHandle = Box<dyn Fn() + Send + Sync>;

/// A running worker.
pub struct TemporalWorker {
    shutdown: ShutdownHandle,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl std::fmt::Debug for TemporalWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporalWorker").finish_non_exhaustive()
    }
}

impl TemporalWorker {
    /// Starts a worker on `temporal`'s task queue whose activities run
    /// flows on `node`. Call from within the node's tokio runtime.
    pub fn start(temporal: Arc<Temporal>, node: Arc<Node>) -> Result<Self, DurableError> {
        let client = temporal.client.clone();
        let queue = temporal.options.task_queue.clone();
        // An attempt occupies an activity slot for as long as its flow runs:
        // as many slots as the node runs executions (the SDK's default, 100,
        // would hold every later execution back, unseen, in the queue).
        let slots = node.max_running().max(1);
        // Heartbeats carry kills (a cancel in the answer): often enough for a
        // kill to land within seconds, rarely enough for a Temporal server
        // to take one per running execution (0.4 x the timeout, 0.5-5 s).
        let throttle = temporal
            .options
            .heartbeat_timeout
            .mul_f64(0.4)
            .clamp(Duration::from_millis(500), Duration::from_secs(5));
        let tuner = TunerHolder::builder()
            .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(100))
            .activity_task_slot_supplier(FixedSizeSlotSupplier::new(slots))
            .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(100))
            .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(100))
            .build();
        // Pauses and answers given through any node reach the attempts here.
        let nudges = Nudges::default();
        node.cluster().listen_nudges(nudges.listener());
        Self::host(move |sdk| {
            let options = WorkerOptions::new(queue.clone())
                .register_workflow::<KodoExecution>()
                .map_err(|e| e.to_string())?
                .register_activities(KodoActivities {
                    node,
                    task_queue: queue,
                    nudges,
                })
                .tuner(tuner)
                .graceful_shutdown_period(GIVE_BACK_AFTER)
                // A lost worker's workflow tasks and queries (a retry's first
                // question) wait this long on its sticky queue before any
                // worker takes them (the SDK's 10 s would delay every takeover).
                .sticky_queue_schedule_to_start_timeout(STICKY_WAIT)
                .max_heartbeat_throttle_interval(throttle)
                .default_heartbeat_throttle_interval(throttle)
                .build();
            Worker::new(sdk, client, options).map_err(|e| e.to_string())
        })
    }

    /// Hosts the worker `build` makes on a thread of its own, inside the
    /// current tokio runtime (also for other workflows than kodo's: the
    /// bench's raw loop).
    pub fn host(
        build: impl FnOnce(&Runtime) -> Result<Worker, String> + Send + 'static,
    ) -> Result<Self, DurableError> {
        let runtime = tokio::runtime::Handle::current();
        let (ready, started) = std::sync::mpsc::channel::<Result<ShutdownHandle, String>>();
        let thread = std::thread::Builder::new()
            .name("temporal-worker".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // The SDK's runtime, alive as long as the worker.
                    let sdk = Runtime::from_current_tokio(RuntimeOptions::default());
                    let worker = match &sdk {
                        Ok(sdk) => build(sdk),
                        Err(e) => Err(e.to_string()),
                    };
                    let mut worker = match worker {
                        Ok(worker) => worker,
                        Err(e) => {
                            let _ = ready.send(Err(e.clone()));
                            return Err(e);
                        }
                    };
                    let _ = ready.send(Ok(Box::new(worker.shutdown_handle())));
                    let ran = worker.run().await.map_err(|e| e.to_string());
                    drop(worker);
                    drop(sdk);
                    ran
                })
            })
            .map_err(|e| DurableError::Worker(e.to_string()))?;
        match started.recv() {
            Ok(Ok(shutdown)) => Ok(Self {
                shutdown,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(DurableError::Worker(e)),
            Err(_) => Err(DurableError::Worker(
                "the worker thread ended at start".into(),
            )),
        }
    }

    /// Stops polling, lets running activities finish for a moment, gives
    /// the others back to Temporal, and waits for the worker to end.
    pub async fn shutdown(mut self) {
        (self.shutdown)();
        if let Some(thread) = self.thread.take() {
            let ended = tokio::task::spawn_blocking(move || thread.join()).await;
            if let Ok(Ok(Err(e))) = ended {
                tracing::warn!(error = %e, "the temporal worker ended with an error");
            }
        }
    }
}
