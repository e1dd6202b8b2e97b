//! Durable execution on Temporal: a placeholder.
//!
//! What comes here: in `mode = "durable"` a Runner runs its flow inside a
//! Temporal activity (temporalio-sdk); the Tracer's sink forwards to the
//! configured transport and heartbeats the last seq, so a retried attempt
//! continues the numbering and the store drops what the first attempt
//! already stored; executions survive a node restart as `paused`, then resume.
