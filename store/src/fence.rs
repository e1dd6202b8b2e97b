//! Fences of durable executions: once attempt `k` of an execution began,
//! the events of its older attempts are refused. The same statements on
//! both backends (each with its placeholders), run inside the caller's
//! transaction: the write that filters and the fence that deletes cannot
//! interleave (SQLite has one writer; PostgreSQL locks the execution's
//! fence row, or an advisory lock for a fid not fenced yet).

use crate::StoreError;
use crate::sql::SqlBackend;
use kodo_core::{Event, Fid, Status};
use sqlx::{ColumnIndex, Decode, Row, Type};
use std::borrow::Cow;
use std::collections::HashMap;

/// The events of `events` that no fence refuses. Events of direct mode
/// (attempt 0) are never fenced, and cost nothing here.
pub(crate) async fn admitted<'e, DB>(
    conn: &mut DB::Connection,
    events: &'e [Event],
) -> Result<Cow<'e, [Event]>, StoreError>
where
    DB: SqlBackend,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
{
    let mut fids: Vec<&str> = events
        .iter()
        .filter(|e| e.attempt > 0)
        .map(|e| e.fid.as_str())
        .collect();
    if fids.is_empty() {
        return Ok(Cow::Borrowed(events));
    }
    fids.sort_unstable();
    fids.dedup();
    let marks: Vec<String> = (1..=fids.len()).map(DB::placeholder).collect();
    let sql = format!(
        "SELECT fid, attempt FROM fences WHERE fid IN ({}){}",
        marks.join(", "),
        DB::lock_rows()
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for fid in &fids {
        query = query.bind(*fid);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let mut fenced: HashMap<String, u32> = HashMap::new();
    for row in rows {
        let fid: String = row.try_get("fid")?;
        let attempt: i64 = row.try_get("attempt")?;
        fenced.insert(fid, attempt.max(0) as u32);
    }
    if fenced.is_empty() {
        return Ok(Cow::Borrowed(events));
    }
    let kept: Vec<Event> = events
        .iter()
        .filter(|e| e.attempt == 0 || fenced.get(e.fid.as_str()).is_none_or(|&a| e.attempt >= a))
        .cloned()
        .collect();
    if kept.len() < events.len() {
        tracing::warn!(
            refused = events.len() - kept.len(),
            "refused events of an older, fenced attempt (a worker woke after its attempt was retried)"
        );
    }
    Ok(Cow::Owned(kept))
}

/// Fences `fid` for `attempt` (never lowering an earlier fence), deletes
/// its events after seq `stored` (stored late by an older attempt), and
/// sets its row back to what it was at `stored`.
pub(crate) async fn fence<DB>(
    conn: &mut DB::Connection,
    fid: &Fid,
    attempt: u32,
    stored: u64,
) -> Result<(), StoreError>
where
    DB: SqlBackend,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
{
    let p = DB::placeholder;
    let upsert = format!(
        "INSERT INTO fences (fid, attempt) VALUES ({}, {}) ON CONFLICT (fid) DO UPDATE \
         SET attempt = {}(fences.attempt, excluded.attempt)",
        p(1),
        p(2),
        DB::greatest()
    );
    sqlx::query(sqlx::AssertSqlSafe(upsert))
        .bind(fid.as_str())
        .bind(i64::from(attempt))
        .execute(&mut *conn)
        .await?;
    let delete = format!("DELETE FROM events WHERE fid = {} AND seq > {}", p(1), p(2));
    sqlx::query(sqlx::AssertSqlSafe(delete))
        .bind(fid.as_str())
        .bind(stored as i64)
        .execute(&mut *conn)
        .await?;
    let last_status = format!(
        "SELECT seq, payload FROM events WHERE fid = {} AND kind = 'status' \
         ORDER BY seq DESC LIMIT 1",
        p(1)
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(last_status))
        .bind(fid.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = row {
        let seq: i64 = row.try_get("seq")?;
        let payload: String = row.try_get("payload")?;
        let status: Status = serde_json::from_str::<String>(&payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt(format!("status payload {payload}")))?;
        let update = format!(
            "UPDATE executions SET events = {}, status = {}, status_seq = {} WHERE fid = {}",
            p(1),
            p(2),
            p(3),
            p(4)
        );
        sqlx::query(sqlx::AssertSqlSafe(update))
            .bind(stored as i64)
            .bind(status.as_str())
            .bind(seq)
            .bind(fid.as_str())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
