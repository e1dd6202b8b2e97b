//! Fences of durable executions: once attempt `k` of an execution began,
//! the events of its older attempts are refused, but for those published
//! before it began (at or below its floor: see [`below_floor`]). The same statements on
//! both backends (each with its placeholders), run inside the caller's
//! transaction: the write that filters and the fence that reads what is
//! stored cannot interleave (SQLite has one writer; PostgreSQL locks the execution's
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
    let older = |e: &Event| {
        e.attempt > 0
            && fenced
                .get(e.fid.as_str())
                .is_some_and(|&fence| e.attempt < fence)
    };
    if !events.iter().any(older) {
        return Ok(Cow::Borrowed(events));
    }
    let floors = floors::<DB>(conn, &fids).await?;
    let kept: Vec<Event> = events
        .iter()
        .filter(|e| !older(e) || below_floor(&floors, e))
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

/// Each execution's floors: (attempt, highest seq stored when it fenced).
type Floors = HashMap<String, Vec<(u32, u64)>>;

/// The floors of `fids`, read in the caller's transaction.
async fn floors<DB>(conn: &mut DB::Connection, fids: &[&str]) -> Result<Floors, StoreError>
where
    DB: SqlBackend,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
{
    let marks: Vec<String> = (1..=fids.len()).map(DB::placeholder).collect();
    let sql = format!(
        "SELECT fid, attempt, floor FROM fence_floors WHERE fid IN ({})",
        marks.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for fid in fids {
        query = query.bind(*fid);
    }
    let mut floors = Floors::new();
    for row in query.fetch_all(&mut *conn).await? {
        let fid: String = row.try_get("fid")?;
        let attempt: i64 = row.try_get("attempt")?;
        let floor: i64 = row.try_get("floor")?;
        floors
            .entry(fid)
            .or_default()
            .push((attempt.max(0) as u32, floor.max(0) as u64));
    }
    Ok(floors)
}

/// Whether `e`, of an attempt older than its execution's fence, was
/// published before the next attempt began: its seq is at or below the
/// floor of the first attempt that fenced after its own. That retry went on
/// after it, so `e` fills a hole (another spooler stored later events of
/// the same attempt first) and takes no newer attempt's place.
fn below_floor(floors: &Floors, e: &Event) -> bool {
    floors
        .get(e.fid.as_str())
        .and_then(|of| {
            of.iter()
                .filter(|(attempt, _)| *attempt > e.attempt)
                .min_by_key(|(attempt, _)| *attempt)
        })
        .is_some_and(|&(_, floor)| e.seq <= floor)
}

/// Fences `fid` for `attempt`: refuses when a newer attempt fenced it
/// already ([`StoreError::Superseded`]), or, when `first`, when `attempt`
/// did; else records the fence and returns what is stored of the
/// execution now (its highest seq and status), which no older attempt can
/// add to any more.
pub(crate) async fn fence<DB>(
    conn: &mut DB::Connection,
    fid: &Fid,
    attempt: u32,
    first: bool,
) -> Result<Option<(u64, Status)>, StoreError>
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
    let current = format!(
        "SELECT attempt FROM fences WHERE fid = {}{}",
        p(1),
        DB::lock_rows()
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(current))
        .bind(fid.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = row {
        let fenced: i64 = row.try_get("attempt")?;
        if fenced > i64::from(attempt) || (first && fenced == i64::from(attempt)) {
            return Err(StoreError::Superseded {
                fid: fid.to_string(),
                attempt: fenced.max(0) as u32,
            });
        }
    }
    let upsert = format!(
        "INSERT INTO fences (fid, attempt) VALUES ({}, {}) ON CONFLICT (fid) DO UPDATE \
         SET attempt = excluded.attempt",
        p(1),
        p(2),
    );
    sqlx::query(sqlx::AssertSqlSafe(upsert))
        .bind(fid.as_str())
        .bind(i64::from(attempt))
        .execute(&mut *conn)
        .await?;
    let stored = format!("SELECT events, status FROM executions WHERE fid = {}", p(1));
    let row = sqlx::query(sqlx::AssertSqlSafe(stored))
        .bind(fid.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    let stored = match row {
        None => None,
        Some(row) => {
            let events: i64 = row.try_get("events")?;
            let status: String = row.try_get("status")?;
            let status: Status = status
                .parse()
                .map_err(|e: kodo_core::UnknownName| StoreError::Corrupt(e.to_string()))?;
            Some((events.max(0) as u64, status))
        }
    };
    // Where this attempt began; a retried fence of it keeps the first.
    let floor = format!(
        "INSERT INTO fence_floors (fid, attempt, floor) VALUES ({}, {}, {}) \
         ON CONFLICT (fid, attempt) DO NOTHING",
        p(1),
        p(2),
        p(3),
    );
    sqlx::query(sqlx::AssertSqlSafe(floor))
        .bind(fid.as_str())
        .bind(i64::from(attempt))
        .bind(stored.map_or(0, |(events, _)| events as i64))
        .execute(&mut *conn)
        .await?;
    Ok(stored)
}
