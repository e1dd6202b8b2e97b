//! A hold: a lock kodo opens before an execution's flow starts, named in
//! its origin's job (`job.hold`: `{"name", "data", "until"}`). A MIP-003
//! job awaiting payment is held this way. The flow starts once the hold is
//! answered; it ends in `error` when the hold expires (at `until`, Unix
//! seconds), `killed` when killed meanwhile. A run resumed after the hold
//! was answered is not held again (`released`).

use crate::flow::{Ctx, LockError};
use crate::tracer::Outcome;
use kodo_core::Fid;
use std::time::Duration;

/// The lock id of `fid`'s hold: one per execution, never a flow's own.
pub fn hold_id(fid: &Fid) -> String {
    format!("hold-{fid}")
}

/// Waits behind the execution's hold, if it has one not released yet:
/// None once answered (the flow starts), else how the execution ends.
pub(crate) async fn held(ctx: &Ctx) -> Option<Outcome> {
    let hold = ctx.job()?.get("hold")?.clone();
    if hold["released"] == true {
        return None;
    }
    let name = hold["name"].as_str().unwrap_or("hold").to_string();
    let until = hold["until"].as_f64().unwrap_or(0.0);
    let left = until - kodo_core::now_ts();
    if left <= 0.0 {
        return Some(Outcome::Failed(format!("{name}: not released in time")));
    }
    let wait = Duration::from_secs_f64(left);
    let data = hold["data"].clone();
    tokio::select! {
        answer = ctx.lock_as(hold_id(ctx.fid()), &name, data, Some(wait)) => match answer {
            Ok(_) => None,
            Err(LockError::Expired { .. }) => {
                Some(Outcome::Failed(format!("{name}: not released in time")))
            }
            Err(e) => Some(Outcome::Failed(format!("{name}: {e}"))),
        },
        stop = ctx.stopped() => Some(stop.outcome()),
    }
}
