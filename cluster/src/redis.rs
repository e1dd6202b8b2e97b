//! The cluster over Redis: commit notices on the channel `PREFIX:commits`
//! (lines `fid seq`, the highest committed seq per execution), nudges on
//! `PREFIX:nudges` (one fid per message), and settling
//! on the transport's streams (everything up to each stream's newest entry
//! acknowledged by the spoolers' group).

use crate::lease::{self, JoinSpec, Keys, Lease, Member};
use crate::{Cluster, ClusterError, CommitListener, NudgeListener, commit_marks};
use async_trait::async_trait;
use futures::StreamExt;
use kodo_core::{Event, Fid, mask_url};
use kodo_transport::redis_layout::{
    EntryId, connection_config, events_key, first_unacked, last_generated,
};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Many nodes and spooler processes sharing Redis Streams.
pub struct RedisCluster {
    client: redis::Client,
    conn: ConnectionManager,
    masked: String,
    channel: String,
    nudges: String,
    streams: Vec<String>,
    keys: Keys,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("url", &self.masked)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl RedisCluster {
    /// Connects to the Redis at `url` of the deployment with key prefix
    /// `prefix` and `shards` event streams. An unreachable server or a bad
    /// URL is an error naming the URL (password masked).
    pub async fn connect(
        url: &str,
        prefix: &str,
        shards: usize,
    ) -> Result<Arc<Self>, ClusterError> {
        let masked = mask_url(url);
        let fail = |e: &dyn std::fmt::Display| ClusterError::Unavailable(format!("{masked}: {e}"));
        let client = redis::Client::open(url).map_err(|e| fail(&e))?;
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_connection_manager_with_config(connection_config(Duration::from_secs(5))),
        )
        .await
        .map_err(|_| fail(&"no answer within 10 s"))?
        .map_err(|e| fail(&e))?;
        Ok(Arc::new(Self {
            client,
            conn,
            channel: format!("{prefix}:commits"),
            nudges: format!("{prefix}:nudges"),
            streams: (0..shards).map(|i| events_key(prefix, i)).collect(),
            keys: Keys {
                prefix: prefix.to_string(),
            },
            masked,
            tasks: Mutex::new(Vec::new()),
        }))
    }
}

#[async_trait]
impl Cluster for RedisCluster {
    fn commits_in_order(&self) -> bool {
        false
    }

    async fn announce_commits(&self, committed: &[Event]) {
        let marks = commit_marks(committed);
        if marks.is_empty() {
            return;
        }
        let mut conn = self.conn.clone();
        let sent: Result<(), _> = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(marks_text(&marks))
            .query_async(&mut conn)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, url = %self.masked, "a commit notice was not sent");
        }
    }

    fn listen_commits(&self, listener: CommitListener) {
        let task = tokio::spawn(listen_loop(
            self.client.clone(),
            self.channel.clone(),
            Arc::new(move |payload: &[u8]| {
                let marks = parse_marks(payload);
                if payload.is_empty() || !marks.is_empty() {
                    listener(&marks);
                }
            }),
        ));
        self.tasks.lock().expect("tasks lock").push(task);
    }

    async fn nudge(&self, fid: &Fid) {
        let mut conn = self.conn.clone();
        let sent: Result<(), _> = redis::cmd("PUBLISH")
            .arg(&self.nudges)
            .arg(fid.as_str())
            .query_async(&mut conn)
            .await;
        if let Err(e) = sent {
            tracing::warn!(%fid, error = %e, url = %self.masked, "a nudge was not sent");
        }
    }

    fn listen_nudges(&self, listener: NudgeListener) {
        let task = tokio::spawn(listen_loop(
            self.client.clone(),
            self.nudges.clone(),
            Arc::new(move |payload: &[u8]| {
                let fid = std::str::from_utf8(payload).ok().and_then(Fid::parse);
                match fid {
                    Some(fid) => listener(&[fid]),
                    None if payload.is_empty() => listener(&[]),
                    None => {}
                }
            }),
        ));
        self.tasks.lock().expect("tasks lock").push(task);
    }

    async fn join(&self, spec: JoinSpec) -> Result<Option<Arc<Lease>>, ClusterError> {
        let name = spec.name.clone();
        let (conn, client, keys) = (self.conn.clone(), self.client.clone(), self.keys.clone());
        let lease = lease::join(conn, client, keys, spec).await.map_err(|e| {
            ClusterError::Unavailable(format!("{}: joining as node {name}: {e}", self.masked))
        })?;
        Ok(Some(lease))
    }

    async fn members(&self) -> Result<Vec<Member>, ClusterError> {
        lease::members(&mut self.conn.clone(), &self.keys)
            .await
            .map_err(|e| ClusterError::Unavailable(format!("{}: {e}", self.masked)))
    }

    async fn settle(&self, wait: Duration) -> bool {
        let start = Instant::now();
        let mut conn = self.conn.clone();
        let mut marks = Vec::with_capacity(self.streams.len());
        for key in &self.streams {
            marks.push(
                last_generated(&mut conn, key)
                    .await
                    .unwrap_or(EntryId(0, 0)),
            );
        }
        let mut pause = Duration::from_millis(10);
        loop {
            let mut settled = true;
            for (key, mark) in self.streams.iter().zip(&marks) {
                // Settled once every entry up to the mark is acknowledged.
                if *mark != EntryId(0, 0) {
                    let first = first_unacked(&mut conn, key).await;
                    settled &= matches!(first, Ok(Some(first)) if first > *mark);
                }
            }
            if settled {
                return true;
            }
            if start.elapsed() >= wait {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for task in self.tasks.lock().expect("tasks lock").drain(..) {
            task.abort();
        }
    }
}

/// Hears one channel's messages; an empty payload: some may have been missed.
pub(crate) type PayloadListener = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Listens to a channel, reconnecting as needed.
pub(crate) async fn listen_loop(client: redis::Client, channel: String, listener: PayloadListener) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        match subscribed {
            Ok(pubsub) => {
                backoff = Duration::from_millis(50);
                // Messages sent while unsubscribed are gone: look at everything.
                listener(&[]);
                let mut messages = pubsub.into_on_message();
                while let Some(msg) = messages.next().await {
                    let payload = msg.get_payload_bytes();
                    if !payload.is_empty() {
                        listener(payload);
                    }
                }
                tracing::warn!(%channel, "redis notices interrupted; resubscribing");
            }
            Err(e) => {
                tracing::debug!(%channel, error = %e, "redis notices unavailable");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn marks_text(marks: &[(Fid, u64)]) -> String {
    let mut text = String::with_capacity(marks.len() * 48);
    for (fid, seq) in marks {
        text.push_str(fid.as_str());
        text.push(' ');
        text.push_str(&seq.to_string());
        text.push('\n');
    }
    text
}

fn parse_marks(payload: &[u8]) -> Vec<(Fid, u64)> {
    std::str::from_utf8(payload)
        .unwrap_or("")
        .lines()
        .filter_map(|line| {
            let (fid, seq) = line.split_once(' ')?;
            Some((Fid::parse(fid)?, seq.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_junk_lines_are_skipped() {
        let marks = vec![(Fid::new(), 7), (Fid::new(), 1)];
        assert_eq!(parse_marks(marks_text(&marks).as_bytes()), marks);
        assert!(parse_marks(b"nonsense\nnot-a-fid 3\n").is_empty());
    }
}
