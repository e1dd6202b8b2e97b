//! What a previous run of a node left unfinished (it was killed, or its
//! machine died) is closed at the next start (`node restarted`), or by the
//! survivor that takes a lost node over (`node lost`): each such execution
//! gets an `error` event and the final `status: error`, through a Tracer
//! resumed after its last stored event, like any other event.

use crate::hub::{Hub, Subscription};
use crate::node::{NodeError, NodeOptions};
use crate::tracer::{Outcome, Trace, TraceBook, Tracer};
use kodo_core::Fid;
use kodo_store::{ExecutionRow, SharedStore};
use kodo_transport::SharedTransport;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Ends every execution `node` left unfinished for which `reason` gives a
/// reason (None: it runs again, see [`crate::recovery`]): an `error` event
/// with the reason and the final `status: error`, numbered after the last
/// stored event. Waits (up to `options.shutdown_wait` in all) until the
/// store has them. Returns how many executions it closed.
///
/// An event of the previous run that is stored late (Redis, its spoolers
/// behind) takes the seq a closing event wanted, and the store keeps the
/// first: so once the closing events are in, the store is asked again, and
/// what is still open is closed again, after what is stored now. What is
/// not closed when the time is up stays open (logged) until the events
/// reach the store, or the next start. When the start did not `settle`
/// (nothing stores the events now), it publishes once and does not wait.
pub(crate) async fn close_unfinished(
    store: &SharedStore,
    transport: &SharedTransport,
    hub: &Arc<Hub>,
    options: &NodeOptions,
    node: &str,
    settled: bool,
    reason: &(dyn Fn(&ExecutionRow) -> Option<String> + Sync),
) -> Result<usize, NodeError> {
    let deadline = Instant::now() + options.shutdown_wait;
    let mut closed = std::collections::HashSet::new();
    loop {
        let rows: Vec<(ExecutionRow, String)> = store
            .unfinished(node)
            .await?
            .into_iter()
            .filter_map(|row| reason(&row).map(|why| (row, why)))
            .collect();
        if rows.is_empty() {
            return Ok(closed.len());
        }
        let round = async {
            let closing = close(&rows, transport, hub, options).await?;
            if !settled {
                return Ok(false);
            }
            for (mut committed, fid, last) in closing {
                stored(store, &mut committed, fid, last).await;
            }
            Ok::<_, NodeError>(true)
        };
        match tokio::time::timeout_at(deadline, round).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => {
                tracing::warn!(
                    open = rows.len(),
                    "closing what a previous run left without waiting: nothing stores events now"
                );
                return Ok(rows.len());
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                tracing::warn!(
                    open = rows.len(),
                    wait = ?options.shutdown_wait,
                    "executions a previous run left are not all closed in the store yet; \
                     they close once their events are stored, or at the next start"
                );
                return Ok(closed.len());
            }
        }
        closed.extend(rows.into_iter().map(|(row, _)| row.fid));
    }
}

/// Publishes the closing events of `rows` (each with its reason); returns,
/// per execution, a subscription to its commits and the last seq it was given.
async fn close<'a>(
    rows: &'a [(ExecutionRow, String)],
    transport: &SharedTransport,
    hub: &Arc<Hub>,
    options: &NodeOptions,
) -> Result<Vec<(Subscription, &'a Fid, u64)>, NodeError> {
    let mut closing = Vec::with_capacity(rows.len());
    for (row, reason) in rows {
        let book = TraceBook::resume(options.limits.max_payload, row.events, row.status);
        let tracer = Tracer::resume(row.fid.clone(), book, transport.clone())
            .counted(options.metrics.execution(&row.flow));
        let committed = hub.subscribe(&row.fid);
        let last = tracer
            .trace(Trace::Finish(Outcome::Failed(reason.clone())))
            .await
            .map_err(|e| NodeError::Close(format!("{}: {e}", row.fid)))?;
        closing.push((committed, &row.fid, last));
    }
    Ok(closing)
}

/// Waits until the store holds `fid`'s events up to `last`. The hub wakes
/// it when a spooler of this process commits; the store is also looked at
/// now and then, as a commit made in another process is heard of only if
/// its notice gets through (one sent before this node subscribed is not).
pub(crate) async fn stored(
    store: &SharedStore,
    committed: &mut Subscription,
    fid: &Fid,
    last: u64,
) {
    let mut look = Duration::from_millis(20);
    loop {
        // The notice first: it costs no query, and it usually comes.
        if tokio::time::timeout(look, committed.until(last))
            .await
            .is_ok()
        {
            return;
        }
        let row = store.execution(fid).await;
        if row.is_ok_and(|row| row.is_some_and(|row| row.events >= last)) {
            return;
        }
        look = (look * 2).min(Duration::from_secs(1));
    }
}
