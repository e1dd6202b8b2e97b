//! What a previous run of a node left unfinished (it was killed, or its
//! machine died) is closed at the next start: each such execution gets an
//! `error` event and the final `status: error`, through a Tracer resumed
//! after its last stored event, like any other event.

use crate::hub::{Hub, Subscription};
use crate::node::{NodeError, NodeOptions};
use crate::tracer::{Outcome, Trace, TraceBook, Tracer};
use kodo_core::Fid;
use kodo_store::SharedStore;
use kodo_transport::SharedTransport;
use std::sync::Arc;
use std::time::Duration;

/// Ends every execution `node` left unfinished: an `error` event with the
/// reason and the final `status: error`, numbered after the last stored
/// event by a Tracer resumed there, the same path as every other event.
/// Waits (up to `shutdown_wait`) until they are stored. Returns how many
/// executions it closed.
pub(crate) async fn close_unfinished(
    store: &SharedStore,
    transport: &SharedTransport,
    hub: &Arc<Hub>,
    options: &NodeOptions,
    reason: &str,
) -> Result<usize, NodeError> {
    let rows = store.unfinished(&options.node).await?;
    let mut closing = Vec::with_capacity(rows.len());
    for row in &rows {
        let book = TraceBook::resume(options.limits.max_payload, row.events, row.status);
        let tracer = Tracer::resume(row.fid.clone(), book, transport.clone());
        let committed = hub.subscribe(&row.fid);
        let last = tracer
            .trace(Trace::Finish(Outcome::Failed(reason.into())))
            .await
            .map_err(|e| NodeError::Close(format!("{}: {e}", row.fid)))?;
        closing.push((committed, &row.fid, last));
    }
    let all_stored = async {
        for (mut committed, fid, last) in closing {
            stored(store, &mut committed, fid, last).await;
        }
    };
    if tokio::time::timeout(options.shutdown_wait, all_stored)
        .await
        .is_err()
    {
        tracing::warn!(wait = ?options.shutdown_wait, "the closing events are not all stored yet");
    }
    Ok(rows.len())
}

/// Waits until the store holds `fid`'s events up to `last`. The hub wakes
/// it when a spooler of this process commits; the store is also looked at
/// now and then, as a commit made in another process is heard of only if
/// its notice gets through (one sent before this node subscribed is not).
async fn stored(store: &SharedStore, committed: &mut Subscription, fid: &Fid, last: u64) {
    let mut look = Duration::from_millis(20);
    loop {
        if committed.committed() >= last {
            return;
        }
        let row = store.execution(fid).await;
        if row.is_ok_and(|row| row.is_some_and(|row| row.events >= last)) {
            return;
        }
        let _ = tokio::time::timeout(look, committed.until(last)).await;
        look = (look * 2).min(Duration::from_secs(1));
    }
}
