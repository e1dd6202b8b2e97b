//! Node names are owned: a node claims its name in the store before it
//! touches any execution (at start it closes what a previous run of that
//! name left unfinished), and a second live node with the same name is
//! refused. The claim dies with the process that holds it, whatever kills it.
//!
//! - SQLite: an exclusive `flock` on a lock file beside the database
//!   (`kodo.db.node-NAME.lock`); the kernel drops it when the process dies.
//! - PostgreSQL: a session advisory lock on a connection of its own; the
//!   server drops it when that session ends. That connection can be lost (a
//!   server restart, a network cut): a task checks it every
//!   [`CLAIM_CHECK`] and takes the lock again on a new one. If another
//!   process took the name meanwhile, the claim is lost, and says so
//!   ([`NodeClaim::lost`]): two live nodes now share a name, and the node
//!   must stop at once.

use crate::StoreError;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use std::fs::{OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// How often a PostgreSQL claim checks that its connection still holds the lock.
pub(crate) const CLAIM_CHECK: Duration = Duration::from_secs(2);
/// How long one connection attempt of a claim may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Proof that this process owns a node name in a store; the name is free
/// again once this is dropped (or the process ends).
pub struct NodeClaim {
    _held: Box<dyn Send>,
    /// Says why, if the claim was lost to another process.
    lost: Option<watch::Receiver<Option<String>>>,
}

impl std::fmt::Debug for NodeClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeClaim")
    }
}

impl NodeClaim {
    /// A claim held by `held` for as long as it lives, that cannot be lost.
    pub fn new(held: impl Send + 'static) -> Self {
        Self {
            _held: Box::new(held),
            lost: None,
        }
    }

    /// Resolves with the reason if the claim is lost to another process;
    /// never for a claim that cannot be lost. Independent of `self`.
    pub fn lost(&self) -> impl std::future::Future<Output = String> + Send + use<> {
        let lost = self.lost.clone();
        async move {
            let why = match lost {
                Some(mut rx) => rx
                    .wait_for(Option::is_some)
                    .await
                    .map(|why| why.clone().unwrap_or_default())
                    .ok(),
                None => None,
            };
            match why {
                Some(why) => why,
                None => std::future::pending().await,
            }
        }
    }
}

/// The lock file of node `node` beside the database file `db`: the name is
/// spelled safely (anything but letters, digits, `-`, `_` and `.` as `%XX`).
fn lock_path(db: &Path, node: &str) -> std::path::PathBuf {
    let mut safe = String::new();
    for b in node.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            safe.push(b as char);
        } else {
            safe.push_str(&format!("%{b:02X}"));
        }
    }
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".node-{safe}.lock"));
    db.with_file_name(name)
}

/// Claims `node` beside the SQLite database file `db`.
pub(crate) fn claim_file(db: &Path, node: &str) -> Result<NodeClaim, StoreError> {
    let path = lock_path(db, node);
    let io = |e: std::io::Error| StoreError::ClaimFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            file.read_to_string(&mut holder).ok();
            let holder = holder.trim();
            return Err(StoreError::NodeTaken {
                node: node.to_string(),
                holder: if holder.is_empty() {
                    format!("{} is locked", path.display())
                } else {
                    format!("{holder}, lock file {}", path.display())
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "held by process {}", std::process::id()).map_err(io)?;
    Ok(NodeClaim::new(file))
}

/// The SQL that takes node `$1`'s advisory lock without waiting, and says
/// which session holds it (this one when taken).
const PG_CLAIM_SQL: &str = "SELECT pg_try_advisory_lock(hashtextextended('kodo-node:' || $1, 0)), \
     pg_backend_pid(), \
     (SELECT min(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
      AND ((classid::bigint << 32) | objid::bigint) = hashtextextended('kodo-node:' || $1, 0))";

/// What trying to take a node's advisory lock found.
enum Advisory {
    /// Taken, on this connection (its server process).
    Taken(PgConnection, i32),
    /// Held by this server process (none known: 0).
    HeldBy(i32),
}

/// Tries to take node `node`'s advisory lock on a connection of its own
/// (named `kodo node NAME` in `pg_stat_activity`); the whole attempt gives up
/// after [`CONNECT_TIMEOUT`].
async fn lock_advisory(options: &PgConnectOptions, node: &str) -> Result<Advisory, StoreError> {
    let attempt = async {
        let options = options
            .clone()
            .application_name(&format!("kodo node {node}"));
        let mut conn = options.connect().await?;
        let (claimed, me, holder): (bool, i32, Option<i32>) = sqlx::query_as(PG_CLAIM_SQL)
            .bind(node)
            .fetch_one(&mut conn)
            .await?;
        if claimed {
            return Ok(Advisory::Taken(conn, me));
        }
        conn.close().await.ok();
        Ok(Advisory::HeldBy(holder.unwrap_or(0)))
    };
    bounded(attempt).await
}

/// Runs one attempt at the server, giving up after [`CONNECT_TIMEOUT`].
async fn bounded<T>(
    attempt: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(StoreError::Database(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {CONNECT_TIMEOUT:?}"),
        )))),
    }
}

/// Claims `node` with a PostgreSQL advisory lock, kept by a task of its own.
pub(crate) async fn claim_advisory(
    options: &PgConnectOptions,
    node: &str,
    url: &str,
) -> Result<NodeClaim, StoreError> {
    let (conn, pid) = match lock_advisory(options, node).await? {
        Advisory::Taken(conn, pid) => (conn, pid),
        Advisory::HeldBy(holder) => {
            return Err(StoreError::NodeTaken {
                node: node.to_string(),
                holder: format!("server process {holder} of {url} holds its lock"),
            });
        }
    };
    let (lost, rx) = watch::channel(None);
    let keeper = tokio::spawn(keep_advisory(
        options.clone(),
        node.to_string(),
        url.to_string(),
        (conn, pid),
        lost,
    ));
    Ok(NodeClaim {
        _held: Box::new(AbortOnDropHandle::new(keeper)),
        lost: Some(rx),
    })
}

/// Checks the claim's connection every [`CLAIM_CHECK`]; when it fails,
/// drops it and takes the lock again on a new one. The old session may still
/// hold the lock (a slow answer, or a cut the server has not noticed yet):
/// then it is ended and the lock taken again. The claim is lost only when a
/// different session holds the lock.
async fn keep_advisory(
    options: PgConnectOptions,
    node: String,
    url: String,
    (mut conn, mut pid): (PgConnection, i32),
    lost: watch::Sender<Option<String>>,
) {
    loop {
        tokio::time::sleep(CLAIM_CHECK).await;
        let ping = tokio::time::timeout(CLAIM_CHECK, conn.ping()).await;
        if matches!(ping, Ok(Ok(()))) {
            continue;
        }
        tracing::warn!(%node, %url, "the connection holding this node's name failed; claiming the name again");
        drop(conn);
        let mut backoff = Duration::from_millis(100);
        (conn, pid) = loop {
            match lock_advisory(&options, &node).await {
                Ok(Advisory::Taken(conn, new)) => {
                    tracing::info!(%node, "node name claimed again");
                    break (conn, new);
                }
                Ok(Advisory::HeldBy(holder)) if holder == pid || holder == 0 => {
                    // Still ours, on the old session: end it and try again.
                    if let Err(e) = end_session(&options, pid).await {
                        tracing::warn!(%node, error = %e, "cannot end the claim's old session yet");
                    }
                }
                Ok(Advisory::HeldBy(holder)) => {
                    let why = format!(
                        "node `{node}`: another process (server process {holder}) took this node's name while its connection to {url} was down"
                    );
                    tracing::error!("{why}");
                    let _ = lost.send(Some(why));
                    return;
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e, "cannot claim the node name again yet");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(CLAIM_CHECK);
        };
    }
}

/// Ends server process `pid` (the claim's own old session).
async fn end_session(options: &PgConnectOptions, pid: i32) -> Result<(), StoreError> {
    let attempt = async {
        let mut conn = options.connect().await?;
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&mut conn)
            .await?;
        conn.close().await.ok();
        Ok(())
    };
    bounded(attempt).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_claimed_once_until_its_claim_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("kodo.db");
        let first = claim_file(&db, "node a/b").unwrap();
        assert!(dir.path().join("kodo.db.node-node%20a%2Fb.lock").exists());
        let err = claim_file(&db, "node a/b").unwrap_err().to_string();
        assert!(err.contains("node `node a/b` is already running"), "{err}");
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        let other = claim_file(&db, "other").unwrap();
        drop(first);
        claim_file(&db, "node a/b").unwrap();
        drop(other);
    }
}
