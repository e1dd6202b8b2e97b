//! The actors of kodo and the node that supervises them.
//!
//! - `Runner`: one per execution, drives its flow (a Rust function or a
//!   child process, a *command flow*) in direct mode; other backends plug in
//!   through [`ExecutionBackend`].
//! - [`Tracer`]: one per execution, numbers and publishes its events (a
//!   plain struct owned by the execution, not an actor).
//! - `Spooler`: one per transport shard, commits batches to the store.
//! - the Executions and Spoolers supervisors, with the restart policies of
//!   [`policy`].
//! - [`Node`]: the tree, with launch, kill, lock answers and shutdown.
//!
//! Only the types callers use are public, at the crate root; the modules
//! are private, but for [`policy`] (the declared restart policies).

mod admission;
mod backend;
mod command;
mod executions;
mod flow;
mod form;
mod hold;
mod hub;
mod leftovers;
mod locks;
mod membership;
mod node;
mod orphans;
mod output;
pub mod policy;
mod pump;
mod recovery;
mod runner;
mod shutdown;
mod spans;
mod spooler;
mod steps;
mod sys;
mod tracer;

pub use admission::{Admission, Admitted, Refused, SharedAdmission};
pub use backend::{
    Control, ControlError, Direct, Execution, ExecutionBackend, SharedBackend, Started,
};
pub use command::keep_secrets_out;
pub use executions::LaunchError;
pub use flow::{
    BoxError, CommandSpec, Ctx, DEFAULT_ATTEMPTS, ExecLimits, FlowDef, FlowKind, FlowResult, Flows,
    LockError, Origin, PendingLock, Recover, RustFlow, Stop,
};
pub use form::Form;
pub use hold::hold_id;
pub use hub::{Hub, Subscription};
pub use locks::{KeepError, Kept, LockInUse, LockKeeper, Locks, OpenLock, stored_lock};
pub use node::{KillError, Launched, Node, NodeError, NodeOptions};
pub use orphans::start as start_watchdog;
pub use runner::drive;
pub use shutdown::{ShutdownReport, telling};
pub use spans::SpanBook;
pub use spooler::{SpoolerGroup, SpoolerShared, StoreHealth};
pub use steps::{Journal, JournalEntry, StepError};
pub use tracer::{Outcome, Trace, TraceBook, TraceError, Tracer};
