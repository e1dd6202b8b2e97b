//! Which executions of this process have a span, by fid: the Spoolers link
//! each commit's span to the spans of the executions in its batch.

use kodo_core::{Event, Fid};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kodo_telemetry::SpanLink;

/// The most links a commit span gets.
const MOST_LINKS: usize = 8;

/// Execution span contexts, by fid.
#[derive(Debug, Default)]
pub struct SpanBook {
    spans: Mutex<HashMap<Fid, SpanLink>>,
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
        let spans = self.spans.lock().expect("span book");
        if spans.is_empty() {
            return span;
        }
        let mut seen = HashSet::new();
        for e in events {
            if seen.len() == MOST_LINKS {
                break;
            }
            if seen.insert(&e.fid)
                && let Some(linked) = spans.get(&e.fid)
            {
                kodo_telemetry::add_link(&span, linked);
            }
        }
        span
    }
}
