//! Taking lost nodes over: a survivor that has renewed its own lease for a
//! full lease without fault looks, every tick, at the nodes listed in
//! `kodo:nodes`; one whose lease is gone is claimed (`kodo:takeover:N`, set
//! only if absent: exactly one survivor wins) and marked lost, in one
//! script; then the node's [`Takeover`] closes what it left. The claim is
//! kept while that works, and the work is stopped if the claim is lost.

use crate::lease::Shared;
use crate::scripts::{CLAIM, DONE, KEEP, eval};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Instant;

/// What a node does when it takes a lost node over (the node, not the
/// cluster, knows executions).
#[async_trait]
pub trait Takeover: Send + Sync + 'static {
    /// Closes what lost node `node` left unfinished; returns how many
    /// executions it closed. An error (not all closed yet) gives the
    /// takeover up, to be tried again. Called by one survivor at a time.
    async fn take_over(&self, node: &str) -> Result<usize, String>;
}

/// Judges every tick, once this run may (see the module doc).
pub(crate) async fn judge_loop(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(shared.tick());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let healthy = *shared.healthy_since.lock().expect("healthy lock");
        if healthy.is_some_and(|since| since.elapsed() >= shared.spec.lease)
            && let Some(takeover) = shared.takeover.get()
        {
            look_for_lost(&shared, takeover).await;
        }
    }
}

/// Claims the takeover of each listed node whose lease is gone, and starts it.
async fn look_for_lost(shared: &Arc<Shared>, takeover: &Arc<dyn Takeover>) {
    let mut conn = shared.conn.clone();
    let listed: Result<Vec<String>, _> = redis::cmd("SMEMBERS")
        .arg(shared.keys.nodes())
        .query_async(&mut conn)
        .await;
    let Ok(names) = listed else {
        return;
    };
    for name in names {
        if name == shared.spec.name
            || shared
                .taking
                .lock()
                .expect("taking lock")
                .contains_key(&name)
        {
            continue;
        }
        let keys = [
            shared.keys.lease(&shared.spec.name),
            shared.keys.lease(&name),
            shared.keys.takeover(&name),
            shared.keys.lost(&name),
        ];
        let claimed: Result<i64, _> = eval(CLAIM, &keys)
            .arg(&shared.token)
            .arg(shared.lease_ms())
            .query_async(&mut conn)
            .await;
        match claimed {
            Ok(1) => {
                tracing::warn!(node = %name, "node lost (its lease ran out): taking it over");
                let task = tokio::spawn(take_over(shared.clone(), takeover.clone(), name.clone()));
                shared
                    .taking
                    .lock()
                    .expect("taking lock")
                    .insert(name, task.abort_handle());
            }
            Ok(-1) => {
                // Redis lost this run's lease (restarted, flushed): judge
                // nobody until every live node had a lease to take it back.
                shared.healthy_since.lock().expect("healthy lock").take();
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "could not look for lost nodes");
                return;
            }
        }
    }
}

/// Takes `node` over, then ends its takeover (given up on error: another
/// survivor, or this one, tries again).
async fn take_over(shared: Arc<Shared>, takeover: Arc<dyn Takeover>, node: String) {
    let started = Instant::now();
    let done = match takeover.take_over(&node).await {
        Ok(closed) => {
            tracing::warn!(%node, closed, took = ?started.elapsed(), "took a lost node over: closed its executions as `node lost`");
            true
        }
        Err(e) => {
            tracing::error!(%node, error = %e, "could not take a lost node over yet; trying again");
            false
        }
    };
    let ended: Result<i64, _> = eval(DONE, &shared.keys.of(&node))
        .arg(&shared.token)
        .arg(&node)
        .arg(if done { "1" } else { "0" })
        .query_async(&mut shared.conn.clone())
        .await;
    if let Err(e) = ended {
        tracing::warn!(%node, error = %e, "could not end a takeover in Redis; it runs out by itself");
    }
    shared.taking.lock().expect("taking lock").remove(&node);
}

/// Keeps this run's takeovers claimed; stops one whose claim is gone (it
/// ran out while this run could not renew it: another may hold it now).
pub(crate) async fn keep_takeovers(shared: &Shared, renewing: bool) {
    let taking: Vec<String> = shared
        .taking
        .lock()
        .expect("taking lock")
        .keys()
        .cloned()
        .collect();
    for node in taking {
        let kept: Result<i64, _> = eval(KEEP, &[shared.keys.takeover(&node)])
            .arg(&shared.token)
            .arg(shared.lease_ms())
            .query_async(&mut shared.conn.clone())
            .await;
        if matches!(kept, Ok(0)) || (kept.is_err() && !renewing) {
            tracing::error!(%node, "lost the claim to take a node over; stopped taking it over");
            stop_takeover(shared, &node);
        }
    }
}

/// Stops the takeover of `node`, if this run works on one.
pub(crate) fn stop_takeover(shared: &Shared, node: &str) {
    if let Some(task) = shared.taking.lock().expect("taking lock").remove(node) {
        task.abort();
    }
}

/// Stops every takeover of this run.
pub(crate) fn stop_takeovers(shared: &Shared) {
    for (_, task) in shared.taking.lock().expect("taking lock").drain() {
        task.abort();
    }
}
