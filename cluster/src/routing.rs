//! Requests for an execution that runs on another node, over Redis pub/sub:
//! the asking run publishes `{id, to, ask}` on `PREFIX:ask:NODE` and waits
//! for `{id, reply}` on its own channel `to` (`PREFIX:reply:TOKEN`). A node
//! that does not listen (stopped, lost) is known at once: nobody received
//! the request.

use crate::ClusterError;
use crate::redis::listen_loop;
use futures::future::BoxFuture;
use kodo_core::Fid;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio_util::task::AbortOnDropHandle;

/// How long a request waits for its answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// A request for an execution, sent to the node that runs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Ask {
    /// Kill it.
    Kill {
        /// The execution.
        fid: Fid,
        /// Why (`by USER`).
        reason: String,
    },
    /// Answer its open lock.
    Answer {
        /// The execution.
        fid: Fid,
        /// The lock.
        lid: String,
        /// The answer.
        answer: Value,
    },
}

/// What the node that runs an execution answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", content = "why", rename_all = "snake_case")]
pub enum Reply {
    /// Done (killing, answered).
    Done,
    /// The execution does not run there (any more).
    NotRunning(String),
    /// No such open lock.
    NotFound(String),
}

/// Answers the requests sent to this node.
pub type AskHandler = Arc<dyn Fn(Ask) -> BoxFuture<'static, Reply> + Send + Sync>;

#[derive(Serialize, Deserialize)]
struct Request {
    id: u64,
    to: String,
    ask: Ask,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    id: u64,
    reply: Reply,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// Sends requests and hears their answers.
pub(crate) struct Asker {
    conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
    channel: String,
    next: AtomicU64,
    pending: Pending,
    /// True while the answer channel is subscribed.
    ready: watch::Receiver<bool>,
    _listening: AbortOnDropHandle<()>,
}

impl Asker {
    /// Listens on this run's answer channel.
    pub(crate) async fn start(
        conn: ConnectionManager,
        client: redis::Client,
        prefix: &str,
        token: &str,
    ) -> Arc<Self> {
        let channel = format!("{prefix}:reply:{token}");
        let pending: Pending = Arc::default();
        let answers = pending.clone();
        let (listening, ready) = subscribe(client.clone(), channel.clone(), move |payload| {
            if let Ok(answer) = serde_json::from_slice::<Answer>(payload) {
                let waiting = answers.lock().expect("pending lock").remove(&answer.id);
                if let Some(waiting) = waiting {
                    let _ = waiting.send(answer.reply);
                }
            }
        });
        Arc::new(Self {
            conn,
            client,
            prefix: prefix.to_string(),
            channel,
            next: AtomicU64::new(1),
            pending,
            ready,
            _listening: listening,
        })
    }

    pub(crate) fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// Sends `ask` to `node` and waits for the answer.
    pub(crate) async fn ask(&self, node: &str, ask: Ask) -> Result<Reply, ClusterError> {
        let no_answer = |why: String| ClusterError::NoAnswer {
            node: node.to_string(),
            why,
        };
        let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
        let mut ready = self.ready.clone();
        if tokio::time::timeout_at(deadline, ready.wait_for(|r| *r))
            .await
            .is_err()
        {
            return Err(no_answer("this node cannot hear answers (Redis?)".into()));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let forget = || self.pending.lock().expect("pending lock").remove(&id);
        let request = serde_json::to_string(&Request {
            id,
            to: self.channel.clone(),
            ask,
        })
        .expect("a request serializes");
        let heard: Result<u64, _> = redis::cmd("PUBLISH")
            .arg(format!("{}:ask:{node}", self.prefix))
            .arg(request)
            .query_async(&mut self.conn.clone())
            .await;
        match heard {
            Ok(0) => {
                forget();
                return Err(no_answer("it does not listen (stopped, or lost)".into()));
            }
            Err(e) => {
                forget();
                return Err(ClusterError::Unavailable(e.to_string()));
            }
            Ok(_) => {}
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                forget();
                Err(no_answer(format!("no answer within {ANSWER_WITHIN:?}")))
            }
        }
    }
}

/// Answers the requests sent to one node, while it lives.
pub(crate) struct Server {
    _listening: AbortOnDropHandle<()>,
}

impl Server {
    /// Listens on the node's request channel; returns once subscribed (or
    /// after 5 s, still trying).
    pub(crate) async fn start(
        conn: ConnectionManager,
        client: redis::Client,
        prefix: &str,
        node: &str,
        handler: AskHandler,
    ) -> Self {
        let channel = format!("{prefix}:ask:{node}");
        let (listening, mut ready) = subscribe(client, channel, move |payload| {
            let Ok(request) = serde_json::from_slice::<Request>(payload) else {
                return;
            };
            let (handler, mut conn) = (handler.clone(), conn.clone());
            tokio::spawn(async move {
                let reply = handler(request.ask).await;
                let answer = serde_json::to_string(&Answer {
                    id: request.id,
                    reply,
                })
                .expect("an answer serializes");
                let sent: Result<u64, _> = redis::cmd("PUBLISH")
                    .arg(&request.to)
                    .arg(answer)
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = sent {
                    tracing::warn!(error = %e, "could not send an answer to another node");
                }
            });
        });
        let _ = tokio::time::timeout(ANSWER_WITHIN, ready.wait_for(|r| *r)).await;
        Self {
            _listening: listening,
        }
    }
}

/// Listens to `channel` (reconnecting as needed), passing each message to
/// `on_message`; the receiver turns true once the channel is subscribed.
fn subscribe(
    client: redis::Client,
    channel: String,
    on_message: impl Fn(&[u8]) + Send + Sync + 'static,
) -> (AbortOnDropHandle<()>, watch::Receiver<bool>) {
    let (subscribed, ready) = watch::channel(false);
    let listening = tokio::spawn(listen_loop(
        client,
        channel,
        Arc::new(move |payload: &[u8]| {
            // An empty payload: (re)subscribed, messages may have been missed.
            if payload.is_empty() {
                let _ = subscribed.send(true);
            } else {
                on_message(payload);
            }
        }),
    ));
    (AbortOnDropHandle::new(listening), ready)
}
