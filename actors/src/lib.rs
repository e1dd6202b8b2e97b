//! The actors of kodo and the node that supervises them.
//!
//! - [`runner::Runner`]: one per execution, drives its flow (a Rust function
//!   or a child process, see [`command`]).
//! - [`tracer::Tracer`]: one per execution, numbers and publishes its events
//!   (a plain struct owned by the execution, not an actor: see its docs).
//! - [`spooler::Spooler`]: one per transport shard, commits batches to the store.
//! - [`executions::Executions`] and [`spooler::Spoolers`]: the supervisors,
//!   with the restart policies of [`policy`].
//! - [`node::Node`]: the tree, with launch, kill, lock answers and shutdown.

#![warn(missing_docs)]

pub mod command;
pub mod executions;
pub mod flow;
pub mod hub;
pub mod locks;
pub mod node;
pub mod orphans;
pub mod output;
pub mod policy;
mod pump;
pub mod runner;
pub mod shutdown;
pub mod spooler;
pub mod tracer;

pub use executions::LaunchError;
pub use flow::{
    BoxError, CommandSpec, Ctx, ExecLimits, FlowDef, FlowResult, Flows, LockError, Stop,
};
pub use hub::{Hub, Subscription};
pub use locks::AnswerError;
pub use node::{KillError, Launched, Node, NodeError, NodeOptions};
pub use shutdown::ShutdownReport;
pub use spooler::{SpoolerGroup, SpoolerShared, StoreHealth};
pub use tracer::{Outcome, TraceError, Tracer};
