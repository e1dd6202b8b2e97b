//! Which executions have a span, by fid: the Spoolers link each commit's
//! span to the spans of the executions in its batch. This process's own
//! executions are listed while they run; the others' (a `runtime spool`
//! process, or a node storing other nodes' events over Redis) are learned
//! from the `trace` of their `meta` event, until their final status.

use kodo_core::{Event, Fid, Kind, Meta};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use kodo_telemetry::SpanLink;

/// The most links a commit span gets.
const MOST_LINKS: usize = 8;

/// The most executions learned from `meta` events at once: past it the
/// oldest are forgotten (their final status was never stored here).
const MOST_LEARNED: usize = 10_000;

/// Execution span contexts, by fid.
#[derive(Debug, Default)]
pub struct SpanBook {
    spans: Mutex<HashMap<Fid, SpanLink>>,
    learned: Mutex<Learned>,
}

/// Spans learned from `meta` events, oldest first.
#[derive(Debug, Default)]
struct Learned {
    links: HashMap<Fid, SpanLink>,
    order: VecDeque<Fid>,
}

impl Learned {
    /// Learns the spans of the executions `events` begin, but those `listed`.
    fn learn(&mut self, events: &[Event], listed: &HashMap<Fid, SpanLink>) {
        let begun = events.iter().filter(|e| e.kind == Kind::Meta);
        for e in begun.filter(|e| !listed.contains_key(&e.fid)) {
            let Some(link) = serde_json::from_str::<Meta>(&e.payload)
                .ok()
                .and_then(|meta| meta.trace)
                .and_then(|tp| SpanLink::from_traceparent(&tp))
            else {
                continue;
            };
            if self.links.insert(e.fid.clone(), link).is_none() {
                self.order.push_back(e.fid.clone());
            }
        }
        while self.order.len() > MOST_LEARNED {
            if let Some(old) = self.order.pop_front() {
                self.links.remove(&old);
            }
        }
    }

    fn forget_ended(&mut self, events: &[Event]) {
        if self.links.is_empty() {
            return;
        }
        let before = self.links.len();
        for e in events {
            if e.status().is_some_and(|s| s.is_final()) {
                self.links.remove(&e.fid);
            }
        }
        if self.links.len() != before {
            self.order.retain(|fid| self.links.contains_key(fid));
        }
    }
}

/// An execution's entry in the book, removed when dropped.
#[derive(Debug)]
pub(crate) struct Listed {
    book: Arc<SpanBook>,
    fid: Fid,
    link: SpanLink,
}

impl Drop for Listed {
    fn drop(&mut self) {
        let mut spans = self.book.spans.lock().expect("span book");
        // Another context of the same execution (a durable attempt hosted
        // by the node that launched it) may have listed its own since.
        if spans.get(&self.fid) == Some(&self.link) {
            spans.remove(&self.fid);
        }
    }
}

impl SpanBook {
    /// Lists `fid`'s span (None: traces are off, nothing to list).
    pub(crate) fn list(self: &Arc<Self>, fid: &Fid, span: &tracing::Span) -> Option<Listed> {
        let link = kodo_telemetry::span_link(span)?;
        let book = self.clone();
        book.spans
            .lock()
            .expect("span book")
            .insert(fid.clone(), link.clone());
        Some(Listed {
            book,
            fid: fid.clone(),
            link,
        })
    }

    /// A span for committing `events`, linked to their executions' spans.
    pub(crate) fn commit_span(&self, events: &[Event]) -> tracing::Span {
        let span = tracing::info_span!("commit", events = events.len());
        if kodo_telemetry::span_link(&span).is_none() {
            // Traces are off (or this span is not sampled): nothing to link.
            return span;
        }
        let spans = self.spans.lock().expect("span book");
        let mut learned = self.learned.lock().expect("span book");
        learned.learn(events, &spans);
        let mut seen = HashSet::new();
        for e in events {
            if seen.len() == MOST_LINKS {
                break;
            }
            if seen.insert(&e.fid)
                && let Some(linked) = spans.get(&e.fid).or_else(|| learned.links.get(&e.fid))
            {
                kodo_telemetry::add_link(&span, linked);
            }
        }
        learned.forget_ended(events);
        span
    }
}
