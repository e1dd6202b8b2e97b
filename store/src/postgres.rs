//! The PostgreSQL store: the same tables and semantics as SQLite, for users
//! who outgrow one machine.
//!
//! A batch is one statement: the events go in by `UNNEST` of five arrays
//! (`ON CONFLICT DO NOTHING`), and a data-modifying CTE upserts the
//! executions rows in the same statement, so both commit together in one
//! round trip. Rows are sorted (events by `(fid, seq)`, executions by fid)
//! so two spoolers writing the same execution take row locks in one order.

use crate::sql::{Reads, migrations_to_apply, upsert_executions_sql};
use crate::{
    EventQuery, ExecutionRow, ListQuery, NodeClaim, Store, StoreError, StoreOptions, mask_url,
    summarize,
};
use async_trait::async_trait;
use kodo_core::{Event, Fid, Status};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

/// The migrations of the PostgreSQL schema.
pub(crate) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a query waits for a pooled connection (or a new one) before it
/// fails: short, so that during an outage writes fail fast into the
/// spoolers' backoff and `/health` answers "down" promptly.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// The statement that writes one batch.
static WRITE_SQL: LazyLock<String> = LazyLock::new(|| {
    let rows = "SELECT * FROM UNNEST($6::text[], $7::text[], $8::text[], $9::text[], \
                $10::text[], $11::int8[], $12::float8[], $13::float8[], $14::int8[])";
    format!(
        "WITH inserted AS (\
           INSERT INTO events (fid, seq, ts, kind, payload) \
           SELECT * FROM UNNEST($1::text[], $2::int8[], $3::float8[], $4::text[], $5::text[]) \
           ON CONFLICT DO NOTHING) {}",
        upsert_executions_sql(rows, "greatest", "least")
    )
});

/// A store in one PostgreSQL database.
pub struct PgStore {
    pool: PgPool,
    connect: PgConnectOptions,
    url: String,
    migrated: Vec<(i64, String)>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL is kept masked: no password in a log line.
        f.debug_struct("PgStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to the database `url` names (`postgres://user:password@host:port/db`),
    /// checks its schema and opens a pool of `options.pool` connections.
    /// Unreachable servers, wrong passwords and missing databases are
    /// [`StoreError::Config`] errors naming the URL with its password masked.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let masked = mask_url(url);
        let config_err = |reason: String| StoreError::Config {
            url: masked.clone(),
            reason,
        };
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| config_err(e.to_string()))?
            .application_name("kodo");
        // One plain connection first: it fails at once with the server's own
        // words, where a pool would retry until its timeout.
        let mut first = tokio::time::timeout(Duration::from_secs(10), connect.connect())
            .await
            .map_err(|_| config_err("no answer within 10 s".into()))?
            .map_err(|e| config_err(e.to_string()))?;
        let migrated = Self::check_schema(&mut first, &masked, options.upgrade).await?;
        first.close().await.ok();
        let pool = PgPoolOptions::new()
            .max_connections(options.pool.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_lazy_with(connect.clone());
        Ok(Self {
            pool,
            connect,
            url: masked,
            migrated,
        })
    }

    /// Applies the migrations a new database needs; an existing one that is
    /// behind is upgraded only when asked, else refused. Returns what it applied.
    async fn check_schema(
        conn: &mut sqlx::PgConnection,
        url: &str,
        upgrade: bool,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name IN ('_sqlx_migrations', 'executions')",
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
            tracing::info!(url, applied = missing.len(), "postgres schema migrated");
        }
        Ok(missing)
    }

    /// The migrations opening this database applied (version, description).
    pub fn migrated(&self) -> &[(i64, String)] {
        &self.migrated
    }
}

#[async_trait]
impl Store for PgStore {
    async fn write(&self, events: &[Event]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.pool.is_closed() {
            return Err(StoreError::Closed);
        }
        if events.iter().any(|e| e.attempt > 0) {
            // A durable attempt's events: checked against the fences in a
            // transaction that holds each execution's fence lock (shared).
            let mut tx = self.pool.begin().await?;
            let mut fids: Vec<&str> = events
                .iter()
                .filter(|e| e.attempt > 0)
                .map(|e| e.fid.as_str())
                .collect();
            fids.sort_unstable();
            fids.dedup();
            for fid in fids {
                sqlx::query("SELECT pg_advisory_xact_lock_shared($1, hashtext($2))")
                    .bind(FENCE_LOCKS)
                    .bind(fid)
                    .execute(&mut *tx)
                    .await?;
            }
            let admitted = crate::fence::admitted::<sqlx::Postgres>(&mut tx, events).await?;
            write_batch(&mut *tx, &admitted).await?;
            tx.commit().await?;
            return Ok(());
        }
        write_batch(&self.pool, events).await?;
        Ok(())
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

    async fn execution(&self, fid: &Fid) -> Result<Option<ExecutionRow>, StoreError> {
        Reads::<sqlx::Postgres>::execution(&self.pool, fid).await
    }

    async fn executions(&self, query: &ListQuery) -> Result<Vec<ExecutionRow>, StoreError> {
        Reads::<sqlx::Postgres>::executions(&self.pool, query).await
    }

    async fn events(&self, fid: &Fid, query: &EventQuery) -> Result<Vec<Event>, StoreError> {
        Reads::<sqlx::Postgres>::events(&self.pool, fid, query).await
    }

    async fn event_count(&self, fid: &Fid) -> Result<u64, StoreError> {
        Reads::<sqlx::Postgres>::event_count(&self.pool, fid).await
    }

    async fn unfinished(&self, node: &str) -> Result<Vec<ExecutionRow>, StoreError> {
        Reads::<sqlx::Postgres>::unfinished(&self.pool, node).await
    }

    async fn adopt(&self, fid: &Fid, node: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE executions SET node = $1 WHERE fid = $2")
            .bind(node)
            .bind(fid.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A session advisory lock on a connection of its own, kept (and taken
    /// again after a lost connection) by a task: see [`crate::claim`].
    async fn claim_node(&self, node: &str) -> Result<NodeClaim, StoreError> {
        crate::claim::claim_advisory(&self.connect, node, &self.url).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn close(&self) {
        tracing::debug!(url = %self.url, "closing postgres pool");
        self.pool.close().await;
    }
}

/// Lock class of the fence locks (`pg_advisory_xact_lock(class, hashtext(fid))`):
/// a two-key lock, which never meets the node claims' one-key locks.
const FENCE_LOCKS: i32 = 7_070;

/// Writes one batch as one statement on `executor` (the pool, or a
/// transaction): the events, then the executions rows they change.
async fn write_batch<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    events: &[Event],
) -> Result<(), StoreError> {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_unstable_by(|a, b| (a.fid.as_str(), a.seq).cmp(&(b.fid.as_str(), b.seq)));
    let mut updates = summarize(events);
    updates.sort_unstable_by(|a, b| a.fid.as_str().cmp(b.fid.as_str()));
    let values: Vec<_> = updates.iter().map(|u| u.values()).collect();
    sqlx::query(AssertSqlSafe(WRITE_SQL.as_str()))
        .bind(sorted.iter().map(|e| e.fid.as_str()).collect::<Vec<_>>())
        .bind(sorted.iter().map(|e| e.seq as i64).collect::<Vec<_>>())
        .bind(sorted.iter().map(|e| e.ts).collect::<Vec<_>>())
        .bind(sorted.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>())
        .bind(
            sorted
                .iter()
                .map(|e| e.payload.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(values.iter().map(|v| v.fid).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.flow).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.owner).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.node).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.status).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.status_seq).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.created).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.updated).collect::<Vec<_>>())
        .bind(values.iter().map(|v| v.events).collect::<Vec<_>>())
        .execute(executor)
        .await?;
    Ok(())
}

impl PgStore {
    /// [`Store::fence`] (`first`: [`Store::fence_first`]).
    async fn fence_for(
        &self,
        fid: &Fid,
        attempt: u32,
        first: bool,
    ) -> Result<Option<(u64, Status)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(FENCE_LOCKS)
            .bind(fid.as_str())
            .execute(&mut *tx)
            .await?;
        let stored = crate::fence::fence::<sqlx::Postgres>(&mut tx, fid, attempt, first).await?;
        tx.commit().await?;
        Ok(stored)
    }
}
