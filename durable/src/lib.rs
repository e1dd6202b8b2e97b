//! Durable execution on Temporal.
//!
//! In `execution.mode = "temporal"` an execution is a Temporal workflow
//! (`kodo_execution`, id = prefix + fid) whose one activity runs the flow on
//! any worker, with `kodo_actors::drive`, exactly as a Runner does in direct
//! mode: its Tracer publishes to the node's transport and Spoolers commit
//! the events. Temporal's history holds the decisions (start, attempts,
//! kills, the outcome), never the events, nor any token: the workflow's
//! input is the flow's name, the owner and the inputs.
//!
//! - [`Temporal`]: a connected client, checked at start (address, namespace).
//! - [`TemporalBackend`]: the `ExecutionBackend` a node launches through;
//!   the launching node only watches the workflow (and passes kills on).
//! - [`TemporalWorker`]: hosts the workflow and its activities on a node.
//!
//! An attempt whose worker is lost (no heartbeat within the timeout) is
//! retried elsewhere: the new attempt waits until everything published
//! before it is stored, then numbers its events after the last stored one
//! (a `debug` "attempt 2 of 3: ..." and `status: running` mark it), so no
//! seq is reused and none is skipped; the flow starts again from the
//! beginning (`KODO_ATTEMPT`, `Ctx::attempt`).

mod activities;
mod backend;
mod client;
mod control;
mod described;
mod worker;
mod workflow;

pub use backend::TemporalBackend;
pub use client::{DurableError, Temporal, TemporalOptions};
pub use described::{Described, OpenLock};
pub use worker::TemporalWorker;
