//! The Tracer: the only writer of an execution's events. It numbers them
//! (seq 1, 2, 3... with no gap), stamps them and publishes them to the
//! transport, waiting while the transport is full (backpressure).
//!
//! What to emit for each request lives in [`TraceBook::plan`], a plain
//! function that tests call without actors.

use kodo_core::{Event, Fid, Kind, Status, json_text, now_ts};
use kodo_metrics::ExecutionMetrics;
use kodo_transport::{Accepted, SharedTransport};
use std::sync::atomic::{AtomicU64, Ordering};

/// How an execution ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The flow returned this result (JSON text).
    Finished(String),
    /// The flow failed, crashed or timed out, for this reason.
    Failed(String),
    /// Someone stopped it, for this reason.
    Killed(String),
}

/// What a Tracer is asked to record.
#[derive(Clone, Debug, PartialEq)]
pub enum Trace {
    /// The execution starts: `meta`, `status: starting`, `inputs`.
    Begin {
        /// JSON text of the [`kodo_core::Meta`].
        meta: String,
        /// JSON text of the inputs.
        inputs: String,
    },
    /// The flow starts running: `status: running`.
    Running,
    /// An event the flow emits itself.
    Emit {
        /// Its kind; only [`Kind::emittable_by_flow`] kinds are accepted.
        kind: Kind,
        /// JSON text.
        payload: String,
    },
    /// A lock opens (JSON text of `{lid, name, data, expires}`).
    Lock(String),
    /// A lock closes (JSON text of `{lid, name, result | error}`).
    Lease(String),
    /// A step's result is journaled (JSON text of `{n, name, result}`).
    Step(String),
    /// The execution ends.
    Finish(Outcome),
    /// A durable execution runs again after its attempt was lost: a `debug`
    /// event saying why, then `status: running` (also when it was already).
    Retry(String),
    /// A durable execution is paused: `status: paused` (once).
    Pause,
    /// A paused execution goes on: back to `awaiting` while a lock is
    /// open, else `running`.
    Resume,
}

/// Why a Tracer refused an event.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TraceError {
    /// The execution already has its final status.
    #[error("the execution has ended")]
    Ended,
    /// Flows may not emit this kind themselves.
    #[error("a flow may not emit `{0}` events")]
    NotEmittable(Kind),
    /// The payload is larger than the configured limit.
    #[error("payload of {bytes} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The payload is not JSON text.
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    /// The transport refused the events.
    #[error("transport: {0}")]
    Transport(String),
}

/// The numbering and status state of one execution.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceBook {
    /// The seq the next event gets.
    next_seq: u64,
    /// Locks opened and not yet leased.
    open_locks: usize,
    /// The latest status emitted.
    status: Option<Status>,
    /// The largest payload accepted, in bytes.
    max_payload: usize,
    /// The durable attempt its events belong to (0: direct mode).
    attempt: u32,
    /// Paused: lock events change no status until resumed.
    paused: bool,
}

impl TraceBook {
    /// A new execution's book.
    pub fn new(max_payload: usize) -> Self {
        Self {
            next_seq: 1,
            open_locks: 0,
            status: None,
            max_payload,
            attempt: 0,
            paused: false,
        }
    }

    /// The book of an execution that has `stored` events and is at
    /// `status`: numbering goes on after them (a node closing what its
    /// previous run left, a durable execution resumed elsewhere).
    pub fn resume(max_payload: usize, stored: u64, status: Status) -> Self {
        Self {
            next_seq: stored + 1,
            open_locks: 0,
            status: Some(status),
            max_payload,
            attempt: 0,
            paused: status == Status::Paused,
        }
    }

    /// The same book, stamping its events as attempt `attempt` of a durable
    /// execution (the store refuses an older attempt's events once a newer
    /// one fenced the execution).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The seq the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The latest status emitted.
    pub fn status(&self) -> Option<Status> {
        self.status
    }

    /// Whether the final status was emitted.
    pub fn ended(&self) -> bool {
        self.status.is_some_and(Status::is_final)
    }

    /// Decides which events a request becomes, and updates the book.
    pub fn plan(&mut self, trace: Trace) -> Result<Vec<(Kind, String)>, TraceError> {
        if self.ended() {
            return match trace {
                Trace::Finish(_) => Ok(Vec::new()),
                _ => Err(TraceError::Ended),
            };
        }
        let mut out = Vec::new();
        match trace {
            Trace::Begin { meta, inputs } => {
                out.push((Kind::Meta, meta));
                self.set(Status::Starting, &mut out);
                out.push((Kind::Inputs, inputs));
            }
            Trace::Running => self.set(Status::Running, &mut out),
            Trace::Emit { kind, payload } => {
                if !kind.emittable_by_flow() {
                    return Err(TraceError::NotEmittable(kind));
                }
                if payload.len() > self.max_payload {
                    return Err(TraceError::TooLarge {
                        bytes: payload.len(),
                        max: self.max_payload,
                    });
                }
                serde_json::from_str::<serde::de::IgnoredAny>(&payload)
                    .map_err(|e| TraceError::NotJson(e.to_string()))?;
                out.push((kind, payload));
            }
            Trace::Lock(payload) => {
                out.push((Kind::Lock, payload));
                self.open_locks += 1;
                if self.open_locks == 1 {
                    self.set(Status::Awaiting, &mut out);
                }
            }
            Trace::Lease(payload) => {
                out.push((Kind::Lease, payload));
                self.open_locks = self.open_locks.saturating_sub(1);
                if self.open_locks == 0 {
                    self.set(Status::Running, &mut out);
                }
            }
            Trace::Step(payload) => {
                if payload.len() > self.max_payload {
                    return Err(TraceError::TooLarge {
                        bytes: payload.len(),
                        max: self.max_payload,
                    });
                }
                out.push((Kind::Step, payload));
            }
            Trace::Retry(why) => {
                out.push((Kind::Debug, json_text(&why)));
                self.open_locks = 0;
                self.paused = false;
                self.status = Some(Status::Running);
                out.push((Kind::Status, json_text(Status::Running.as_str())));
            }
            Trace::Pause => {
                self.set(Status::Paused, &mut out);
                self.paused = true;
            }
            Trace::Resume => {
                self.paused = false;
                let status = if self.open_locks > 0 {
                    Status::Awaiting
                } else {
                    Status::Running
                };
                self.set(status, &mut out);
            }
            Trace::Finish(outcome) => match outcome {
                Outcome::Finished(result) => {
                    out.push((Kind::Final, result));
                    self.set(Status::Finished, &mut out);
                }
                Outcome::Failed(reason) => {
                    out.push((Kind::Error, json_text(&reason)));
                    self.set(Status::Error, &mut out);
                }
                Outcome::Killed(reason) => {
                    out.push((Kind::Error, json_text(&format!("killed: {reason}"))));
                    self.set(Status::Killed, &mut out);
                }
            },
        }
        Ok(out)
    }

    fn set(&mut self, status: Status, out: &mut Vec<(Kind, String)>) {
        // A paused execution stays `paused` until resumed or ended.
        if self.paused && !status.is_final() {
            return;
        }
        if self.status != Some(status) {
            self.status = Some(status);
            out.push((Kind::Status, json_text(status.as_str())));
        }
    }

    /// Numbers and stamps planned events.
    pub fn stamp(&mut self, fid: &Fid, planned: Vec<(Kind, String)>) -> Vec<Event> {
        let ts = now_ts();
        planned
            .into_iter()
            .map(|(kind, payload)| {
                let seq = self.next_seq;
                self.next_seq += 1;
                Event {
                    fid: fid.clone(),
                    seq,
                    ts,
                    kind,
                    payload,
                    attempt: self.attempt,
                }
            })
            .collect()
    }
}

/// The Tracer of one execution: the only writer of its events. Requests
/// are served one at a time in arrival order (a fair async mutex), and each
/// returns once the transport accepted its events, so a flow that emits
/// faster than the store commits waits here.
#[derive(Debug)]
pub struct Tracer {
    fid: Fid,
    book: tokio::sync::Mutex<TraceBook>,
    transport: SharedTransport,
    published: AtomicU64,
    metrics: Option<std::sync::Mutex<ExecutionMetrics>>,
}

impl Tracer {
    /// The Tracer of a new execution `fid`.
    pub fn new(fid: Fid, max_payload: usize, transport: SharedTransport) -> Self {
        Self::resume(fid, TraceBook::new(max_payload), transport)
    }

    /// The Tracer of execution `fid`, going on from `book` (see
    /// [`TraceBook::resume`]). An execution has one writer: resume only
    /// one whose previous Tracer is gone (its node died or stopped), or
    /// two would hand out the same seqs and the store would keep one of each.
    pub fn resume(fid: Fid, book: TraceBook, transport: SharedTransport) -> Self {
        Self {
            fid,
            published: AtomicU64::new(book.next_seq - 1),
            book: tokio::sync::Mutex::new(book),
            transport,
            metrics: None,
        }
    }

    /// The same Tracer, counting what it publishes in `metrics`.
    pub fn counted(mut self, metrics: ExecutionMetrics) -> Self {
        if metrics.is_on() {
            self.metrics = Some(std::sync::Mutex::new(metrics));
        }
        self
    }

    /// The highest seq the transport has taken (0: none yet): what the
    /// store must hold once everything is stored.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Whether its final status was published.
    pub async fn ended(&self) -> bool {
        self.book.lock().await.ended()
    }

    /// Records a request; returns the last seq it used once the transport
    /// accepted its events.
    pub async fn trace(&self, trace: Trace) -> Result<u64, TraceError> {
        let mut book = self.book.lock().await;
        // Plan on a draft so a refused publish leaves no gap in the numbering.
        let mut draft = book.clone();
        let planned = draft.plan(trace)?;
        let mut accepted = Accepted::now();
        if !planned.is_empty() {
            let events = draft.stamp(&self.fid, planned);
            let counted: Vec<Event> = match &self.metrics {
                Some(_) => events
                    .iter()
                    .filter(|e| ExecutionMetrics::counts(e.kind))
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            // Cancel-safe: if this call is dropped here (a killed flow),
            // nothing was published and the book stays as it was.
            accepted = self.transport.publish(events).await.map_err(|e| {
                if let Some(m) = &self.metrics {
                    m.lock().expect("metrics lock").transport_error();
                }
                TraceError::Transport(e.to_string())
            })?;
            if let Some(m) = self.metrics.as_ref().filter(|_| !counted.is_empty()) {
                let mut m = m.lock().expect("metrics lock");
                counted.iter().for_each(|e| m.published(e));
            }
        }
        *book = draft;
        let last = book.next_seq - 1;
        self.published.store(last, Ordering::Release);
        drop(book);
        accepted
            .durable()
            .await
            .map_err(|e| TraceError::Transport(e.to_string()))?;
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(v: &[(Kind, String)]) -> Vec<String> {
        v.iter()
            .map(|(k, p)| {
                if *k == Kind::Status {
                    format!("status:{}", serde_json::from_str::<String>(p).unwrap())
                } else {
                    k.to_string()
                }
            })
            .collect()
    }

    #[test]
    fn a_life_with_two_locks() {
        let mut b = TraceBook::new(1024);
        let begin = Trace::Begin {
            meta: "{}".into(),
            inputs: "{}".into(),
        };
        assert_eq!(
            kinds(&b.plan(begin).unwrap()),
            ["meta", "status:starting", "inputs"]
        );
        assert_eq!(kinds(&b.plan(Trace::Running).unwrap()), ["status:running"]);
        assert_eq!(
            kinds(&b.plan(Trace::Lock("{}".into())).unwrap()),
            ["lock", "status:awaiting"]
        );
        assert_eq!(kinds(&b.plan(Trace::Lock("{}".into())).unwrap()), ["lock"]);
        assert_eq!(
            kinds(&b.plan(Trace::Lease("{}".into())).unwrap()),
            ["lease"]
        );
        assert_eq!(
            kinds(&b.plan(Trace::Lease("{}".into())).unwrap()),
            ["lease", "status:running"]
        );
        let fin = Trace::Finish(Outcome::Finished("1".into()));
        assert_eq!(kinds(&b.plan(fin).unwrap()), ["final", "status:finished"]);
        assert!(b.ended());
        let again = Trace::Finish(Outcome::Failed("late".into()));
        assert!(b.plan(again).unwrap().is_empty(), "only one final status");
        let late = Trace::Emit {
            kind: Kind::Debug,
            payload: "1".into(),
        };
        assert_eq!(b.plan(late), Err(TraceError::Ended));
    }

    #[test]
    fn refuses_runtime_kinds_big_and_non_json_payloads() {
        let mut b = TraceBook::new(8);
        let emit = |kind, payload: &str| Trace::Emit {
            kind,
            payload: payload.into(),
        };
        assert_eq!(
            b.plan(emit(Kind::Final, "1")),
            Err(TraceError::NotEmittable(Kind::Final))
        );
        assert!(matches!(
            b.plan(emit(Kind::Debug, "\"0123456789\"")),
            Err(TraceError::TooLarge { bytes: 12, max: 8 })
        ));
        assert!(matches!(
            b.plan(emit(Kind::Debug, "{no")),
            Err(TraceError::NotJson(_))
        ));
        assert_eq!(b.next_seq, 1);
    }

    #[test]
    fn stamps_without_gaps() {
        let mut b = TraceBook::new(64);
        let fid = Fid::new();
        let planned = b
            .plan(Trace::Finish(Outcome::Killed("by x".into())))
            .unwrap();
        let events = b.stamp(&fid, planned);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(events[0].payload, json_text("killed: by x"));
        assert_eq!(events[1].status(), Some(Status::Killed));
        assert_eq!(b.next_seq, 3);
    }

    #[test]
    fn a_resumed_book_numbers_on_and_ends_once() {
        let mut b = TraceBook::resume(64, 5, Status::Awaiting);
        let planned = b
            .plan(Trace::Finish(Outcome::Failed("node restarted".into())))
            .unwrap();
        let events = b.stamp(&Fid::new(), planned);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 7]);
        assert_eq!(events[1].status(), Some(Status::Error));
        assert!(b.ended());
        let mut done = TraceBook::resume(64, 2, Status::Finished);
        assert!(done.plan(Trace::Running).is_err(), "an ended book refuses");
    }

    fn statuses(b: &mut TraceBook, trace: Trace) -> Vec<String> {
        b.plan(trace)
            .unwrap()
            .into_iter()
            .filter(|(kind, _)| *kind == Kind::Status)
            .map(|(_, payload)| payload)
            .collect()
    }

    #[test]
    fn a_pause_holds_the_status_until_resumed_or_ended() {
        let mut b = TraceBook::new(64);
        statuses(&mut b, Trace::Running);
        assert_eq!(statuses(&mut b, Trace::Pause), [json_text("paused")]);
        assert!(statuses(&mut b, Trace::Pause).is_empty(), "paused once");
        // A lock opened while paused changes nothing visible...
        assert!(statuses(&mut b, Trace::Lock("{}".into())).is_empty());
        // ...and shows once resumed.
        assert_eq!(statuses(&mut b, Trace::Resume), [json_text("awaiting")]);
        statuses(&mut b, Trace::Pause);
        assert!(statuses(&mut b, Trace::Lease("{}".into())).is_empty());
        assert_eq!(statuses(&mut b, Trace::Resume), [json_text("running")]);
        statuses(&mut b, Trace::Pause);
        let end = Trace::Finish(Outcome::Killed("by x".into()));
        assert_eq!(statuses(&mut b, end), [json_text("killed")]);
        // A book resumed at `paused` is paused.
        let mut again = TraceBook::resume(64, 9, Status::Paused);
        assert!(statuses(&mut again, Trace::Lock("{}".into())).is_empty());
    }
}
