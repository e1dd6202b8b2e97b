//! `GET /executions/{fid}/stream`: server-sent events that replay what is
//! stored and then follow commits as the Spoolers report them (no polling),
//! sending only the gap-free run, until the final status.

use super::AppState;
use super::auth::User;
use super::error::{ApiResult, query, seq_param};
use super::executions::visible;
use super::types::StreamParams;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use kodo_core::{Event, Fid, Status};
use kodo_store::EventQuery;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Server-sent events: replays stored events after `Last-Event-ID` (or
/// `?after=`), then follows commits through the live hub, and ends after the
/// final status. The store is read only when the hub says there is more.
pub(super) async fn stream(
    State(state): State<Arc<AppState>>,
    user: User,
    Path(fid): Path<String>,
    headers: HeaderMap,
    params: Result<Query<StreamParams>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let p = query(params)?;
    let row = visible(&state, &user, &fid).await?;
    let after = match headers.get("last-event-id") {
        Some(v) => {
            let seq = v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
            seq_param("Last-Event-ID", seq.unwrap_or(u64::MAX))?
        }
        None => seq_param("after", p.after.unwrap_or(0))?,
    };
    // Subscribe before the first read so no commit falls between the two.
    let follow = SseFollow {
        sub: state.node.hub().subscribe(&row.fid),
        state,
        fid: row.fid,
        last: after,
        buffer: VecDeque::new(),
        done: false,
    };
    let events =
        futures::stream::unfold(
            follow,
            |mut f| async move { f.next().await.map(|e| (Ok(e), f)) },
        );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// One live stream: what it sent last, and what it read but did not send yet.
struct SseFollow {
    state: Arc<AppState>,
    sub: kodo_actors::Subscription,
    fid: Fid,
    last: u64,
    buffer: VecDeque<Event>,
    done: bool,
}

impl SseFollow {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.last = e.seq;
                if e.status().is_some_and(Status::is_final) {
                    self.done = true;
                }
                return Some(
                    SseEvent::default()
                        .id(e.seq.to_string())
                        .event(e.kind.as_str())
                        .data(&e.payload),
                );
            }
            if self.done {
                return None;
            }
            let store = self.state.node.store();
            let query = EventQuery {
                after: self.last,
                limit: 500,
                kinds: None,
            };
            match store.events(&self.fid, &query).await {
                Ok(events) if events.first().is_some_and(|e| e.seq == self.last + 1) => {
                    // Only the gap-free run after the last one sent: with
                    // spoolers in several processes a later batch can commit
                    // before an earlier one; the gap fills, then it follows.
                    let run = events
                        .iter()
                        .zip(self.last + 1..)
                        .take_while(|(e, seq)| e.seq == *seq)
                        .count();
                    self.buffer.extend(events.into_iter().take(run));
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(SseEvent::default().event("kodo-error").data(e.to_string()));
                }
            }
            // Nothing newer stored: ended already (a resume past the end), or wait for a commit.
            match store.execution(&self.fid).await {
                Ok(Some(row)) if row.status.is_final() && row.events <= self.last => return None,
                Ok(_) => {}
                Err(e) => {
                    self.done = true;
                    return Some(SseEvent::default().event("kodo-error").data(e.to_string()));
                }
            }
            self.sub.changed().await;
        }
    }
}
