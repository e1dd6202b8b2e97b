//! Durable execution on Temporal: a placeholder, no code yet.
//!
//! What comes here: an implementation of `kodo_actors::ExecutionBackend`
//! whose actor starts a Temporal workflow per execution; the workflow's
//! activity drives the flow with `kodo_actors::drive`, its Tracer resumed
//! with `kodo_actors::TraceBook::resume` at the last stored seq, so a
//! retried attempt continues the numbering and the store drops what the
//! first attempt already stored. This crate depends on `kodo-actors`, never
//! the other way round, and carries the Temporal SDK alone.
