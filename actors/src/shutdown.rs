//! What a node's shutdown found: whether every event is stored, checked
//! rather than assumed. The transport must hold nothing unstored, and each
//! execution that ended during the shutdown must have in the store every
//! event its Tracer published (read back from the store itself).

use futures::StreamExt;
use kodo_core::Fid;
use kodo_store::SharedStore;
use std::fmt;
use std::time::Duration;

/// Awaits `future`, saying every 2 s that a shutdown still waits for
/// `what` (and how many events `transport` still holds).
pub async fn telling<T>(
    what: &str,
    transport: Option<&kodo_transport::SharedTransport>,
    future: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(future);
    let mut ticks = tokio::time::interval(Duration::from_secs(2));
    ticks.tick().await;
    loop {
        tokio::select! {
            out = &mut future => return out,
            _ = ticks.tick() => match transport {
                Some(transport) => {
                    let held = transport.health().await;
                    tracing::info!(
                        left = held.queued + held.pending,
                        "shutdown: still waiting for {what}"
                    );
                }
                None => tracing::info!("shutdown: still waiting for {what}"),
            },
        }
    }
}

/// The most executions named in a report.
const NAMED: usize = 10;

/// What a shutdown checked, and what it found missing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShutdownReport {
    /// Events the transport still held, never committed.
    pub unstored: usize,
    /// Executions ended during the shutdown whose stored events were read back.
    pub checked: usize,
    /// Executions whose store holds fewer events than their Tracer
    /// published: (fid, events stored, events published).
    pub short: Vec<(Fid, u64, u64)>,
    /// Why the check could not be completed, if it could not.
    pub unchecked: Option<String>,
    /// Spooler processes elsewhere store this node's events: what is not
    /// stored yet waits in the transport (Redis keeps it), not lost.
    pub stored_elsewhere: bool,
}

impl ShutdownReport {
    /// Whether every event is stored, as checked.
    pub fn all_stored(&self) -> bool {
        self.unstored == 0 && self.short.is_empty() && self.unchecked.is_none()
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.all_stored() {
            return write!(
                f,
                "every event is stored (checked: the transport holds none, and the store has every event of the {} execution(s) stopped now)",
                self.checked
            );
        }
        let mut parts = Vec::new();
        if self.unstored > 0 {
            parts.push(format!("{} events were never stored", self.unstored));
        }
        if !self.short.is_empty() {
            let named: Vec<String> = self
                .short
                .iter()
                .take(NAMED)
                .map(|(fid, stored, published)| {
                    format!("{fid} ({stored} of {published} events stored)")
                })
                .collect();
            let more = self.short.len().saturating_sub(NAMED);
            parts.push(format!(
                "{} executions lack events: {}{}",
                self.short.len(),
                named.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        if let Some(why) = &self.unchecked {
            parts.push(format!("could not check the store: {why}"));
        }
        if self.stored_elsewhere {
            parts.push(
                "what is missing waits in the transport for the spooler processes to store it"
                    .into(),
            );
        }
        f.write_str(&parts.join("; "))
    }
}

/// Counts each execution's stored events and notes those short of what was
/// published (seqs are unique, so the count equals the last seq only when
/// no event is missing); gives up (saying so) after `wait`.
pub(crate) async fn check_stored(
    store: &SharedStore,
    ended: Vec<(Fid, u64)>,
    wait: Duration,
    report: &mut ShutdownReport,
) {
    let reads = futures::stream::iter(ended)
        .map(|(fid, published)| async move {
            let stored = store.event_count(&fid).await;
            (fid, published, stored)
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>();
    let Ok(results) = tokio::time::timeout(wait, reads).await else {
        report.unchecked = Some(format!("no answer within {wait:?}"));
        return;
    };
    for (fid, published, stored) in results {
        match stored {
            Ok(stored) => {
                report.checked += 1;
                if stored < published {
                    report.short.push((fid, stored, published));
                }
            }
            Err(e) => report.unchecked = Some(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kodo_core::{Event, Kind};

    fn event(fid: &Fid, seq: u64) -> Event {
        Event {
            fid: fid.clone(),
            seq,
            ts: seq as f64,
            kind: Kind::Debug,
            payload: "1".into(),
            attempt: 0,
        }
    }

    /// A gap below the last stored seq is found: the count is short even
    /// though the highest seq is there.
    #[tokio::test]
    async fn a_missing_event_below_the_last_one_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kodo.db").display());
        let store = kodo_store::open(&url, &Default::default()).await.unwrap();
        let (whole, gap) = (Fid::new(), Fid::new());
        let mut events: Vec<Event> = (1..=6).map(|seq| event(&whole, seq)).collect();
        events.extend([1, 2, 3, 5, 6].map(|seq| event(&gap, seq)));
        store.write(&events).await.unwrap();
        let mut report = ShutdownReport::default();
        let ended = vec![(whole.clone(), 6), (gap.clone(), 6)];
        check_stored(&store, ended, Duration::from_secs(10), &mut report).await;
        assert_eq!(report.checked, 2);
        assert_eq!(report.short, [(gap.clone(), 5, 6)]);
        assert!(!report.all_stored());
        assert!(
            report
                .to_string()
                .contains(&format!("{gap} (5 of 6 events stored)"))
        );
        store.close().await;
    }
}
