//! The SQLite store: one WAL database file for every execution.
//!
//! Writes go through a single connection (SQLite has one writer anyway, and a
//! pool of writers would only trade SQLITE_BUSY errors); reads use a pool of
//! their own so the API never waits behind a batch. SQLite's automatic
//! checkpoints are turned off on the writer and run by a background task on a
//! reader connection instead, so a checkpoint never lands inside a commit.
//!
//! After any failed write the writer connection is closed and the next write
//! opens a fresh one. On SQLITE_FULL (and some I/O errors) SQLite rolls the
//! transaction back by itself; the driver's own ROLLBACK then fails and it
//! still counts a transaction open, so its next `begin` would be a SAVEPOINT
//! inside a transaction that never commits: every later "commit" would be a
//! RELEASE, and nothing would be stored. A fresh connection is the one state
//! known to be clean, and a batch counts as stored only after its COMMIT.

use crate::sql::{Reads, migrations_to_apply, upsert_executions_sql};
use crate::{
    EventQuery, ExecutionRow, ListQuery, NodeClaim, Store, StoreError, StoreOptions, mask_url,
    summarize,
};
use async_trait::async_trait;
use kodo_core::{Event, Fid, Status};
use sqlx::AssertSqlSafe;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The migrations of the SQLite schema.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per multi-row INSERT statement (5 binds each, well under SQLite's limit).
const ROWS_PER_STATEMENT: usize = 100;
/// Rows written between two background checkpoints: small checkpoints keep
/// the commit tail short (measured: p99 at 10k events/s over 20 s is ~4 ms
/// at 512 rows, ~15 ms at 16k rows, ~3 ms with none); notifications that
/// arrive while one runs coalesce, so under heavy load they run back to back.
const CHECKPOINT_EVERY_ROWS: usize = 512;

/// A store in one SQLite database file.
pub struct SqliteStore {
    /// The one writer connection; `None` after a failed write (the next
    /// write connects afresh).
    writer: tokio::sync::Mutex<Option<SqliteConnection>>,
    writer_options: SqliteConnectOptions,
    reader: SqlitePool,
    path: std::path::PathBuf,
    url: String,
    rows_since_checkpoint: AtomicUsize,
    /// Set by `close`: a write after it fails instead of reconnecting.
    closed: AtomicBool,
    checkpoint: Arc<Notify>,
    checkpointer: tokio::task::JoinHandle<()>,
    migrated: Vec<(i64, String)>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
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
        let writer_options = common.clone().pragma("wal_autocheckpoint", "0");
        let mut writer = writer_options
            .connect()
            .await
            .map_err(|e| config_err(e.to_string()))?;
        let migrated = Self::check_schema(&mut writer, &masked, options.upgrade).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .connect_with(common)
            .await
            .map_err(|e| config_err(e.to_string()))?;
        let checkpoint = Arc::new(Notify::new());
        let checkpointer = tokio::spawn(run_checkpoints(reader.clone(), checkpoint.clone()));
        Ok(Self {
            writer: tokio::sync::Mutex::new(Some(writer)),
            writer_options,
            reader,
            path,
            url: masked,
            rows_since_checkpoint: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            checkpoint,
            checkpointer,
            migrated,
        })
    }

    /// Applies the migrations a new database needs; an existing one that is
    /// behind is upgraded only when asked, else refused. Returns what it applied.
    async fn check_schema(
        conn: &mut SqliteConnection,
        url: &str,
        upgrade: bool,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('_sqlx_migrations', 'executions')",
        )
        .fetch_all(&mut *conn)
        .await?;
        let applied = if tables.iter().any(|t| t == "_sqlx_migrations") {
            Some(
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&mut *conn)
                    .await?,
            )
        } else if tables.is_empty() {
            None
        } else {
            Some(Vec::new())
        };
        let missing = migrations_to_apply(url, &MIGRATOR, applied, upgrade)?;
        if !missing.is_empty() {
            MIGRATOR.run(&mut *conn).await?;
            tracing::info!(url, applied = missing.len(), "sqlite schema migrated");
        }
        Ok(missing)
    }

    /// The migrations opening this database applied (version, description).
    pub fn migrated(&self) -> &[(i64, String)] {
        &self.migrated
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

fn upsert_sql(rows: usize) -> String {
    let mut values = String::from("VALUES ");
    push_tuples(&mut values, rows, 9);
    upsert_executions_sql(&values, "max", "min")
}

fn push_tuples(sql: &mut String, rows: usize, columns: usize) {
    let tuple = format!("({})", vec!["?"; columns].join(", "));
    sql.push_str(&vec![tuple; rows].join(", "));
}

/// Writes one batch in one transaction on `conn`: the events (ignoring
/// those already stored), then the executions rows they change.
async fn write_batch(conn: &mut SqliteConnection, events: &[Event]) -> Result<(), StoreError> {
    let mut tx = conn.begin().await?;
    let events = crate::fence::admitted::<sqlx::Sqlite>(&mut tx, events).await?;
    let updates = summarize(&events);
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
    for chunk in updates.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::query(AssertSqlSafe(upsert_sql(chunk.len())));
        for u in chunk {
            let v = u.values();
            q = q
                .bind(v.fid)
                .bind(v.flow)
                .bind(v.owner)
                .bind(v.node)
                .bind(v.status)
                .bind(v.status_seq)
                .bind(v.created)
                .bind(v.updated)
                .bind(v.events);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

impl SqliteStore {
    /// Runs `work` on the one writer connection, taken out of its slot
    /// meanwhile: if `work` fails, or is cancelled midway, the connection is
    /// dropped (closed, which rolls back whatever it held) instead of going
    /// back, and the next one connects afresh. A refused fence
    /// (`Superseded`) left it clean: it goes back.
    async fn with_writer<T>(
        &self,
        work: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = self.writer.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => self.writer_options.connect().await?,
        };
        let result = work(&mut conn).await;
        match &result {
            Ok(_) | Err(StoreError::Superseded { .. }) => *slot = Some(conn),
            Err(_) => {
                conn.close_hard().await.ok();
            }
        }
        result
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.with_writer(async |conn| write_batch(conn, events).await)
            .await?;
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
        Reads::<sqlx::Sqlite>::execution(&self.reader, fid).await
    }

    async fn executions(&self, query: &ListQuery) -> Result<Vec<ExecutionRow>, StoreError> {
        Reads::<sqlx::Sqlite>::executions(&self.reader, query).await
    }

    async fn events(&self, fid: &Fid, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        Reads::<sqlx::Sqlite>::events(&self.reader, fid, query).await
    }

    async fn event_count(&self, fid: &Fid) -> Result<u64, StoreError> {
        Reads::<sqlx::Sqlite>::event_count(&self.reader, fid).await
    }

    async fn unfinished(&self, node: &str) -> Result<Vec<ExecutionRow>, StoreError> {
        Reads::<sqlx::Sqlite>::unfinished(&self.reader, node).await
    }

    async fn adopt(&self, fid: &Fid, node: &str) -> Result<(), StoreError> {
        self.with_writer(async |conn| {
            sqlx::query("UPDATE executions SET node = ? WHERE fid = ?")
                .bind(node)
                .bind(fid.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(())
        })
        .await
    }

    async fn fence(&self, fid: &Fid, attempt: u32) -> Result<Option<(u64, Status)>, StoreError> {
        self.fence_for(fid, attempt, false).await
    }

    async fn fence_first(
        &self,
        fid: &Fid,
        attempt: u32,
    ) -> Result<Option<(u64, Status)>, StoreError> {
        self.fence_for(fid, attempt, true).await
    }

    async fn claim_node(&self, node: &str) -> Result<NodeClaim, StoreError> {
        crate::claim::claim_file(&self.path, node)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn close(&self) {
        self.checkpointer.abort();
        let mut slot = self.writer.lock().await;
        self.closed.store(true, Ordering::Release);
        if let Some(mut writer) = slot.take() {
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&mut writer)
                .await
            {
                tracing::warn!(url = %self.url, error = %e, "final checkpoint failed");
            }
            writer.close().await.ok();
        }
        self.reader.close().await;
    }
}

impl SqliteStore {
    /// [`Store::fence`] (`first`: [`Store::fence_first`]).
    async fn fence_for(
        &self,
        fid: &Fid,
        attempt: u32,
        first: bool,
    ) -> Result<Option<(u64, Status)>, StoreError> {
        self.with_writer(async |conn| {
            let mut tx = conn.begin().await?;
            let stored = crate::fence::fence::<sqlx::Sqlite>(&mut tx, fid, attempt, first).await?;
            tx.commit().await?;
            Ok(stored)
        })
        .await
    }
}
