//! What a batch of events changes in the executions table: a plain function,
//! shared by every backend and tested without a database.

use kodo_core::{Event, Fid, Kind, Meta, Status};

/// The change one batch makes to one execution's row.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionUpdate {
    /// The execution.
    pub fid: Fid,
    /// Present when the batch holds the execution's `meta` event: the row to create.
    pub meta: Option<(Meta, f64)>,
    /// The latest status in the batch and its seq.
    pub status: Option<(Status, u64)>,
    /// The highest seq in the batch (the stored count once it is committed, as seqs have no gaps).
    pub max_seq: u64,
    /// The latest timestamp in the batch.
    pub updated: f64,
}

/// The values one [`ExecutionUpdate`] upserts into the executions table, in
/// column order: a row made before its `meta` is stored has empty flow,
/// owner and node, and status `starting` at seq 0 unless the batch has one.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionValues<'a> {
    /// `fid`
    pub fid: &'a str,
    /// `flow` (empty without meta)
    pub flow: &'a str,
    /// `owner` (empty without meta)
    pub owner: &'a str,
    /// `node` (empty without meta)
    pub node: &'a str,
    /// `status`
    pub status: &'static str,
    /// `status_seq`
    pub status_seq: i64,
    /// `created`
    pub created: f64,
    /// `updated`
    pub updated: f64,
    /// `events`
    pub events: i64,
}

impl ExecutionUpdate {
    /// The row values this update upserts.
    pub fn values(&self) -> ExecutionValues<'_> {
        let (status, status_seq) = self
            .status
            .map_or((Status::Starting, 0), |(s, seq)| (s, seq as i64));
        let (flow, owner, node, created) = match &self.meta {
            Some((m, ts)) => (m.flow.as_str(), m.owner.as_str(), m.node.as_str(), *ts),
            None => ("", "", "", self.updated),
        };
        ExecutionValues {
            fid: self.fid.as_str(),
            flow,
            owner,
            node,
            status: status.as_str(),
            status_seq,
            created,
            updated: self.updated,
            events: self.max_seq as i64,
        }
    }
}

/// Folds a batch into one update per execution, in order of first appearance.
pub fn summarize(events: &[Event]) -> Vec<ExecutionUpdate> {
    let mut updates: Vec<ExecutionUpdate> = Vec::new();
    let mut index = std::collections::HashMap::<&Fid, usize>::new();
    for event in events {
        let i = *index.entry(&event.fid).or_insert_with(|| {
            updates.push(ExecutionUpdate {
                fid: event.fid.clone(),
                meta: None,
                status: None,
                max_seq: 0,
                updated: event.ts,
            });
            updates.len() - 1
        });
        let update = &mut updates[i];
        update.max_seq = update.max_seq.max(event.seq);
        update.updated = update.updated.max(event.ts);
        match event.kind {
            Kind::Meta => {
                if let Ok(meta) = serde_json::from_str::<Meta>(&event.payload) {
                    update.meta = Some((meta, event.ts));
                }
            }
            Kind::Status => {
                if let Some(status) = event.status()
                    && update.status.is_none_or(|(_, seq)| seq < event.seq)
                {
                    update.status = Some((status, event.seq));
                }
            }
            _ => {}
        }
    }
    updates
}

#[cfg(test)]
mod tests {
    use super::*;
    use kodo_core::json_text;

    fn ev(fid: &Fid, seq: u64, kind: Kind, payload: String) -> Event {
        Event {
            fid: fid.clone(),
            seq,
            ts: seq as f64,
            kind,
            payload,
            attempt: 0,
        }
    }

    #[test]
    fn folds_per_execution() {
        let a = Fid::new();
        let b = Fid::new();
        let meta = serde_json::to_string(&Meta {
            flow: "f".into(),
            owner: "u".into(),
            node: "n".into(),
            kodo: "0".into(),
            trace: None,
            launch: None,
            job: None,
        })
        .unwrap();
        let batch = vec![
            ev(&a, 1, Kind::Meta, meta),
            ev(&b, 7, Kind::Stdout, json_text("x")),
            ev(&a, 2, Kind::Status, json_text("starting")),
            ev(&a, 3, Kind::Status, json_text("running")),
            ev(&b, 8, Kind::Status, json_text("finished")),
        ];
        let ups = summarize(&batch);
        assert_eq!(ups.len(), 2);
        assert_eq!(ups[0].fid, a);
        assert_eq!(ups[0].meta.as_ref().unwrap().0.flow, "f");
        assert_eq!(ups[0].status, Some((Status::Running, 3)));
        assert_eq!(ups[0].max_seq, 3);
        assert_eq!(ups[1].status, Some((Status::Finished, 8)));
        assert_eq!(ups[1].updated, 8.0);
        assert!(ups[1].meta.is_none());
    }
}
