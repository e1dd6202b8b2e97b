//! How a node ends: on request (a graceful shutdown that checks every
//! event is stored), or because it can no longer work (a supervisor gave
//! up, its name or its lease was lost).

use super::Node;
use crate::executions::ExecMsg;
use crate::shutdown::{ShutdownReport, check_stored};
use kodo_store::NodeClaim;
use std::sync::atomic::Ordering;

impl Node {
    /// Resolves if this node's name was lost to another process (its
    /// PostgreSQL claim's connection dropped and another node took the
    /// name), or the cluster declared it lost (it was away past its lease,
    /// and a survivor closed its executions): either way this run must stop
    /// at once, without writing anything more.
    pub fn name_lost(&self) -> impl std::future::Future<Output = String> + Send + use<> {
        let claim = self.claim.lock().expect("claim lock");
        let lost = claim.as_ref().map(NodeClaim::lost);
        drop(claim);
        let declared = self.lease.as_ref().map(|lease| lease.lost());
        async move {
            tokio::select! {
                why = or_pending(lost) => why,
                why = or_pending(declared) => why,
            }
        }
    }

    /// Resolves when a supervisor gave up (a Spooler kept crashing) or
    /// stopped unasked (the execution supervisor): the node can no longer
    /// do its work and should exit with this reason.
    pub async fn failed(&self) -> String {
        let spoolers = async {
            match &self.spoolers {
                Some(spoolers) => spoolers.failed().await,
                None => std::future::pending().await,
            }
        };
        let executions = async {
            let mut ended = self.executions_ended.clone();
            let _ = ended.wait_for(|ended| *ended).await;
            if self.stopping.load(Ordering::Acquire) {
                return std::future::pending().await;
            }
            "the execution supervisor stopped (policy::SUPERVISOR: no restart)".to_string()
        };
        tokio::select! {
            why = spoolers => why,
            why = executions => why,
        }
    }

    /// Why the node can no longer work, if it already cannot (see
    /// [`Node::failed`]).
    pub fn has_failed(&self) -> Option<String> {
        futures::FutureExt::now_or_never(self.failed())
    }

    /// Whether a shutdown began.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Stops every execution (`killed: <reason>`; on a node alone, those
    /// that resume are left to the next start), drains the transport into
    /// the store, checks that every event is stored, closes the store and
    /// gives the node's name up. Calling it again does nothing more (and
    /// reports nothing missing).
    pub async fn shutdown(&self, reason: &str) -> ShutdownReport {
        let mut report = ShutdownReport::default();
        if self.stopping.swap(true, Ordering::AcqRel) {
            return report;
        }
        if let Some(lease) = &self.lease {
            lease.leaving();
        }
        let wait = self.options.shutdown_wait;
        let running = self.running().await;
        tracing::info!(
            running,
            ?wait,
            "shutdown: stopping {running} running execution(s)"
        );
        let all_stopped = self.executions.call(
            |reply| ExecMsg::StopAll {
                reason: reason.to_string(),
                reply,
            },
            Some(wait),
        );
        let ended = match all_stopped.await {
            Ok(ractor::rpc::CallResult::Success(ended)) => ended,
            _ => {
                tracing::warn!(?wait, "executions did not all stop in time");
                report.unchecked = Some(format!("executions did not all stop within {wait:?}"));
                Vec::new()
            }
        };
        self.executions.stop(None);
        let _ = self.executions_ended.clone().wait_for(|ended| *ended).await;
        let held = self.transport.health().await;
        tracing::info!(
            stopped = ended.len(),
            queued = held.queued + held.pending,
            "shutdown: executions stopped; storing the {} event(s) the transport holds",
            held.queued + held.pending
        );
        match &self.spoolers {
            Some(spoolers) => {
                self.transport.close();
                let drained = spoolers.drain(wait);
                crate::shutdown::telling(
                    "the spoolers to store the transport's events",
                    Some(&self.transport),
                    drained,
                )
                .await;
            }
            None => {
                // Spooler processes elsewhere store what this node published.
                report.stored_elsewhere = true;
                let settled = self.cluster.settle(wait);
                if !crate::shutdown::telling(
                    "the spooler processes to store what this node published",
                    Some(&self.transport),
                    settled,
                )
                .await
                {
                    tracing::warn!(
                        ?wait,
                        "the spooler processes have not stored everything yet"
                    );
                }
                self.transport.close();
            }
        }
        let health = self.transport.health().await;
        report.unstored = health.queued + health.pending;
        tracing::info!(
            executions = ended.len(),
            "shutdown: checking that every event of the stopped executions is stored"
        );
        check_stored(&self.store, ended, wait, &mut report).await;
        if report.all_stored() {
            tracing::info!(checked = report.checked, "every event is stored");
        } else {
            tracing::error!(%report, "events are missing from the store");
        }
        self.store.close().await;
        if let Some(lease) = &self.lease {
            lease.release().await;
        }
        self.claim.lock().expect("claim lock").take();
        report
    }
}

/// Awaits `future`, or forever when there is none.
async fn or_pending<T>(future: Option<impl std::future::Future<Output = T>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}
