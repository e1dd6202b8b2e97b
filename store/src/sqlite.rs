//! The SQLite store: one WAL database file for every execution.
//!
//! Writes go through a single connection (SQLite has one writer anyway, and a
//! pool of writers would only trade SQLITE_BUSY errors); reads use a pool of
//! their own so the API never waits behind a batch. SQLite's automatic
//! checkpoints are turned off on the writer and run by a background task on a
//! reader connection instead, so a checkpoint never lands inside a commit.

use crate::{
    EventQuery, ExecutionRow, ListQuery, Store, StoreError, StoreOptions, mask_url, summarize,
};
use async_trait::async_trait;
use kodo_core::{Event, Fid, Kind, Status};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The migrations of the SQLite schema.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row INSERT statement (5 binds each, well under SQLite's limit).
const ROWS_PER_STATEMENT: usize = 100;
/// Rows written between two background checkpoints: small checkpoints keep
/// the commit tail short (measured: p99 at 10k events/s over 20 s is ~4 ms
/// at 512 rows, ~15 ms at 16k rows, ~3 ms with none); notifications that
/// arrive while one runs coalesce, so under heavy load they run back to back.
const CHECKPOINT_EVERY_ROWS: usize = 512;

/// A store in one SQLite database file.
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    url: String,
    rows_since_checkpoint: AtomicUsize,
    checkpoint: Arc<Notify>,
    checkpointer: tokio::task::JoinHandle<()>,
}

impl SqliteStore {
    /// Opens (and creates, with its folder) the database `url` names.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let masked = mask_url(url);
        let config_err = |reason: String| StoreError::Config {
            url: masked.clone(),
            reason,
        };
        let base = SqliteConnectOptions::from_str(url).map_err(|e| config_err(e.to_string()))?;
        let path = base.get_filename().to_path_buf();
        let in_memory = url.contains(":memory:")
            || url.contains("mode=memory")
            || path.to_string_lossy().starts_with("file:sqlx-in-memory");
        if path.as_os_str().is_empty() || in_memory {
            return Err(config_err(
                "an in-memory database loses every event on exit; name a file".into(),
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| config_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let sync = if options.full_sync {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        };
        let common = base
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sync)
            .busy_timeout(Duration::from_secs(10))
            .pragma("cache_size", "-8192");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(common.clone().pragma("wal_autocheckpoint", "0"))
            .await
            .map_err(|e| config_err(e.to_string()))?;
        Self::check_schema(&writer, &masked, options.upgrade).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .connect_with(common)
            .await
            .map_err(|e| config_err(e.to_string()))?;
        let checkpoint = Arc::new(Notify::new());
        let checkpointer = tokio::spawn(run_checkpoints(reader.clone(), checkpoint.clone()));
        Ok(Self {
            writer,
            reader,
            url: masked,
            rows_since_checkpoint: AtomicUsize::new(0),
            checkpoint,
            checkpointer,
        })
    }

    /// Applies the migrations a new database needs; an existing one that is
    /// behind is upgraded only when asked, else refused.
    async fn check_schema(pool: &SqlitePool, url: &str, upgrade: bool) -> Result<(), StoreError> {
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('_sqlx_migrations', 'executions')",
        )
        .fetch_one(pool)
        .await?;
        let applied: i64 = if tables > 0 {
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
                .fetch_one(pool)
                .await
                .unwrap_or(0)
        } else {
            0
        };
        let known = MIGRATOR.iter().count();
        if tables == 0 || upgrade {
            MIGRATOR.run(pool).await?;
            tracing::info!(url, known, "sqlite schema up to date");
        } else if (applied as usize) < known {
            return Err(StoreError::SchemaBehind {
                url: url.to_string(),
                applied: applied as usize,
                known,
            });
        }
        Ok(())
    }

    /// The migrations this build knows, by version and description.
    pub fn migrations() -> Vec<(i64, String)> {
        MIGRATOR
            .iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpointer.abort();
    }
}

/// Runs a passive checkpoint each time the writer says enough rows were written.
async fn run_checkpoints(reader: SqlitePool, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&reader)
            .await
        {
            tracing::warn!(error = %e, "sqlite checkpoint failed; the next one retries");
        }
    }
}

fn insert_events_sql(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO events (fid, seq, ts, kind, payload) VALUES ");
    push_tuples(&mut sql, rows, 5);
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

fn insert_executions_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO executions (fid, flow, owner, node, status, status_seq, created, updated, events) VALUES ",
    );
    push_tuples(&mut sql, rows, 9);
    sql.push_str(" ON CONFLICT (fid) DO NOTHING");
    sql
}

fn update_executions_sql(rows: usize) -> String {
    let mut sql = String::from("WITH u (fid, updated, events, status, status_seq) AS (VALUES ");
    push_tuples(&mut sql, rows, 5);
    sql.push_str(
        ") UPDATE executions SET \
           updated = max(executions.updated, u.updated), \
           events = max(executions.events, u.events), \
           status = CASE WHEN u.status_seq > executions.status_seq THEN u.status ELSE executions.status END, \
           status_seq = max(executions.status_seq, u.status_seq) \
         FROM u WHERE executions.fid = u.fid",
    );
    sql
}

fn push_tuples(sql: &mut String, rows: usize, columns: usize) {
    let tuple = format!("({})", vec!["?"; columns].join(", "));
    sql.push_str(&vec![tuple; rows].join(", "));
}

fn row_to_execution(row: &SqliteRow) -> Result<ExecutionRow, StoreError> {
    let status: String = row.try_get("status")?;
    Ok(ExecutionRow {
        fid: Fid::from_stored(row.try_get("fid")?),
        flow: row.try_get("flow")?,
        owner: row.try_get("owner")?,
        node: row.try_get("node")?,
        status: status
            .parse()
            .map_err(|e: kodo_core::UnknownName| StoreError::Corrupt(e.to_string()))?,
        created: row.try_get("created")?,
        updated: row.try_get("updated")?,
        events: row.try_get::<i64, _>("events")? as u64,
    })
}

fn row_to_event(fid: &Fid, row: &SqliteRow) -> Result<Event, StoreError> {
    let kind: String = row.try_get("kind")?;
    Ok(Event {
        fid: fid.clone(),
        seq: row.try_get::<i64, _>("seq")? as u64,
        ts: row.try_get("ts")?,
        kind: kind
            .parse()
            .map_err(|e: kodo_core::UnknownName| StoreError::Corrupt(e.to_string()))?,
        payload: row.try_get("payload")?,
    })
}

const EXECUTION_COLUMNS: &str = "fid, flow, owner, node, status, created, updated, events";

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let updates = summarize(events);
        let mut tx = self.writer.begin().await?;
        for chunk in events.chunks(ROWS_PER_STATEMENT) {
            let mut q = sqlx::query(AssertSqlSafe(insert_events_sql(chunk.len())));
            for e in chunk {
                q = q
                    .bind(e.fid.as_str())
                    .bind(e.seq as i64)
                    .bind(e.ts)
                    .bind(e.kind.as_str())
                    .bind(e.payload.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        let created: Vec<_> = updates.iter().filter(|u| u.meta.is_some()).collect();
        for chunk in created.chunks(ROWS_PER_STATEMENT) {
            let mut q = sqlx::query(AssertSqlSafe(insert_executions_sql(chunk.len())));
            for u in chunk {
                let (meta, ts) = u.meta.as_ref().expect("filtered on meta");
                q = q
                    .bind(u.fid.as_str())
                    .bind(meta.flow.as_str())
                    .bind(meta.owner.as_str())
                    .bind(meta.node.as_str())
                    .bind(Status::Starting.as_str())
                    .bind(0_i64)
                    .bind(*ts)
                    .bind(*ts)
                    .bind(0_i64);
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in updates.chunks(ROWS_PER_STATEMENT) {
            let mut q = sqlx::query(AssertSqlSafe(update_executions_sql(chunk.len())));
            for u in chunk {
                let (status, status_seq) = match u.status {
                    Some((s, seq)) => (Some(s.as_str()), seq as i64),
                    None => (None, 0),
                };
                q = q
                    .bind(u.fid.as_str())
                    .bind(u.updated)
                    .bind(u.max_seq as i64)
                    .bind(status)
                    .bind(status_seq);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let rows = self
            .rows_since_checkpoint
            .fetch_add(events.len(), Ordering::Relaxed)
            + events.len();
        if rows >= CHECKPOINT_EVERY_ROWS {
            self.rows_since_checkpoint.store(0, Ordering::Relaxed);
            self.checkpoint.notify_one();
        }
        Ok(())
    }

    async fn execution(&self, fid: &Fid) -> Result<Option<ExecutionRow>, StoreError> {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE fid = ?");
        sqlx::query(AssertSqlSafe(sql))
            .bind(fid.as_str())
            .fetch_optional(&self.reader)
            .await?
            .map(|row| row_to_execution(&row))
            .transpose()
    }

    async fn executions(&self, query: &ListQuery) -> Result<Vec<ExecutionRow>, StoreError> {
        let mut sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE 1 = 1");
        if query.owner.is_some() {
            sql.push_str(" AND owner = ?");
        }
        if query.status.is_some() {
            sql.push_str(" AND status = ?");
        }
        if query.flow.is_some() {
            sql.push_str(" AND flow = ?");
        }
        if query.before.is_some() {
            sql.push_str(" AND fid < ?");
        }
        sql.push_str(" ORDER BY fid DESC LIMIT ?");
        let mut q = sqlx::query(AssertSqlSafe(sql));
        if let Some(owner) = &query.owner {
            q = q.bind(owner.as_str());
        }
        if let Some(status) = query.status {
            q = q.bind(status.as_str());
        }
        if let Some(flow) = &query.flow {
            q = q.bind(flow.as_str());
        }
        if let Some(before) = &query.before {
            q = q.bind(before.as_str());
        }
        q = q.bind(query.limit as i64);
        q.fetch_all(&self.reader)
            .await?
            .iter()
            .map(row_to_execution)
            .collect()
    }

    async fn events(&self, fid: &Fid, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        let mut sql =
            String::from("SELECT seq, ts, kind, payload FROM events WHERE fid = ? AND seq > ?");
        let kinds: &[Kind] = query.kinds.as_deref().unwrap_or(&[]);
        if !kinds.is_empty() {
            sql.push_str(&format!(
                " AND kind IN ({})",
                vec!["?"; kinds.len()].join(", ")
            ));
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        let mut q = sqlx::query(AssertSqlSafe(sql))
            .bind(fid.as_str())
            .bind(query.after as i64);
        for kind in kinds {
            q = q.bind(kind.as_str());
        }
        q.bind(query.limit as i64)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|row| row_to_event(fid, row))
            .collect()
    }

    async fn unfinished(&self, node: &str) -> Result<Vec<ExecutionRow>, StoreError> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE node = ? AND status NOT IN ('finished', 'error', 'killed') ORDER BY fid"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(node)
            .fetch_all(&self.writer)
            .await?
            .iter()
            .map(row_to_execution)
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn close(&self) {
        self.checkpointer.abort();
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.writer)
            .await
        {
            tracing::warn!(url = %self.url, error = %e, "final checkpoint failed");
        }
        self.writer.close().await;
        self.reader.close().await;
    }
}
