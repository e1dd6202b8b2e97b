//! What both SQL backends share: the read queries (with each backend's
//! placeholder style), decoding rows, and the decision what to do with a
//! database's migrations.

use crate::{EventQuery, ExecutionRow, ListQuery, StoreError};
use kodo_core::{Event, Fid, Kind, Status};
use sqlx::{ColumnIndex, Decode, Row, Type};

/// The columns every execution query selects, in [`ExecutionRow`] order.
pub(crate) const EXECUTION_COLUMNS: &str =
    "fid, flow, owner, node, status, created, updated, events";

/// The SQL that upserts executions rows: commutative, so batches of one
/// execution may commit in any order (two spoolers, a redelivery) and the row
/// still ends the same. A row first made without its `meta` event has empty
/// flow, owner and node until `meta` arrives; the status is the one with the
/// highest seq; counts and times only grow (`created` only shrinks).
/// `rows` is the source of the new values (`VALUES ...` or `SELECT ...`);
/// `greatest`/`least` are the backend's names for max and min of two values.
pub(crate) fn upsert_executions_sql(rows: &str, greatest: &str, least: &str) -> String {
    format!(
        "INSERT INTO executions AS x (fid, flow, owner, node, status, status_seq, created, updated, events) \
         {rows} \
         ON CONFLICT (fid) DO UPDATE SET \
           flow = CASE WHEN x.flow = '' THEN excluded.flow ELSE x.flow END, \
           owner = CASE WHEN x.owner = '' THEN excluded.owner ELSE x.owner END, \
           node = CASE WHEN x.node = '' THEN excluded.node ELSE x.node END, \
           status = CASE WHEN excluded.status_seq > x.status_seq THEN excluded.status ELSE x.status END, \
           status_seq = {greatest}(x.status_seq, excluded.status_seq), \
           created = {least}(x.created, excluded.created), \
           updated = {greatest}(x.updated, excluded.updated), \
           events = {greatest}(x.events, excluded.events)"
    )
}

/// `SELECT` of a page of executions; `ph(n)` writes the n-th placeholder
/// (1-based). Binds, in order: owner, status, flow, before (each only when
/// set), then the limit.
pub(crate) fn list_sql(query: &ListQuery, ph: impl Fn(usize) -> String) -> String {
    let mut sql = format!("SELECT {EXECUTION_COLUMNS} FROM executions WHERE true");
    let mut n = 0;
    let mut next = || {
        n += 1;
        ph(n)
    };
    for (set, column, op) in [
        (query.owner.is_some(), "owner", "="),
        (query.status.is_some(), "status", "="),
        (query.flow.is_some(), "flow", "="),
        (query.before.is_some(), "fid", "<"),
    ] {
        if set {
            sql.push_str(&format!(" AND {column} {op} {}", next()));
        }
    }
    sql.push_str(&format!(" ORDER BY fid DESC LIMIT {}", next()));
    sql
}

/// The text values [`list_sql`] binds before the limit, in order.
pub(crate) fn list_binds(query: &ListQuery) -> Vec<&str> {
    [
        query.owner.as_deref(),
        query.status.map(|s| s.as_str()),
        query.flow.as_deref(),
        query.before.as_ref().map(Fid::as_str),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// `SELECT` of a page of one execution's events. Binds: fid, after, each
/// kind of the filter, then the limit.
pub(crate) fn events_sql(query: &EventQuery, ph: impl Fn(usize) -> String) -> String {
    let mut sql = format!(
        "SELECT seq, ts, kind, payload FROM events WHERE fid = {} AND seq > {}",
        ph(1),
        ph(2)
    );
    let kinds = query.kinds.as_deref().unwrap_or(&[]);
    if !kinds.is_empty() {
        let list: Vec<String> = (0..kinds.len()).map(|i| ph(3 + i)).collect();
        sql.push_str(&format!(" AND kind IN ({})", list.join(", ")));
    }
    sql.push_str(&format!(" ORDER BY seq LIMIT {}", ph(3 + kinds.len())));
    sql
}

/// The kinds an event query filters on (empty: all).
pub(crate) fn kinds(query: &EventQuery) -> &[Kind] {
    query.kinds.as_deref().unwrap_or(&[])
}

/// `SELECT` of a node's executions whose status is not final (the final
/// ones as [`Status::is_final`] knows them).
pub(crate) fn unfinished_sql(ph1: &str) -> String {
    let finals: Vec<String> = Status::ALL
        .iter()
        .filter(|s| s.is_final())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!(
        "SELECT {EXECUTION_COLUMNS} FROM executions WHERE node = {ph1} \
         AND status NOT IN ({}) ORDER BY fid",
        finals.join(", ")
    )
}

/// Decodes a row of [`EXECUTION_COLUMNS`].
pub(crate) fn row_to_execution<R>(row: &R) -> Result<ExecutionRow, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
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

/// Decodes a row of `seq, ts, kind, payload` of execution `fid`.
pub(crate) fn row_to_event<R>(fid: &Fid, row: &R) -> Result<Event, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
    let kind: String = row.try_get("kind")?;
    Ok(Event {
        fid: fid.clone(),
        seq: row.try_get::<i64, _>("seq")? as u64,
        ts: row.try_get("ts")?,
        kind: kind
            .parse()
            .map_err(|e: kodo_core::UnknownName| StoreError::Corrupt(e.to_string()))?,
        payload: row.try_get("payload")?,
        attempt: 0,
    })
}

/// Which migrations to apply to a database, given the versions it has applied
/// (`None`: a new, empty database). A new database gets all; an existing one
/// that is behind gets the missing ones only when `upgrade` is asked, else it
/// is refused with [`StoreError::SchemaBehind`].
pub(crate) fn migrations_to_apply(
    url: &str,
    migrator: &sqlx::migrate::Migrator,
    applied: Option<Vec<i64>>,
    upgrade: bool,
) -> Result<Vec<(i64, String)>, StoreError> {
    let fresh = applied.is_none();
    let applied = applied.unwrap_or_default();
    let missing: Vec<(i64, String)> = migrator
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| (m.version, m.description.to_string()))
        .collect();
    if missing.is_empty() || fresh || upgrade {
        Ok(missing)
    } else {
        Err(StoreError::SchemaBehind {
            url: url.to_string(),
            applied: applied.len(),
            known: migrator.iter().count(),
        })
    }
}

/// A value a read query binds.
enum Bind<'a> {
    Text(&'a str),
    Int(i64),
}

/// What a backend must offer for the shared reads: a sqlx database whose
/// rows decode text, integers and floats, and that binds text and integers.
pub(crate) trait SqlBackend: sqlx::Database {
    /// The n-th placeholder (1-based) in this backend's SQL.
    fn placeholder(n: usize) -> String;
    /// What a SELECT adds to lock the rows it read until the transaction
    /// ends (nothing in SQLite: one writer at a time).
    fn lock_rows() -> &'static str;
}

impl SqlBackend for sqlx::Sqlite {
    fn placeholder(_: usize) -> String {
        "?".into()
    }
    fn lock_rows() -> &'static str {
        ""
    }
}

impl SqlBackend for sqlx::Postgres {
    fn placeholder(n: usize) -> String {
        format!("${n}")
    }
    fn lock_rows() -> &'static str {
        " FOR SHARE"
    }
}

/// The reads of [`crate::Store`], the same queries on every SQL backend
/// (each with its placeholders).
pub(crate) struct Reads<DB>(std::marker::PhantomData<DB>);

impl<DB> Reads<DB>
where
    DB: SqlBackend,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + Type<DB>,
    for<'a> &'a str: ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB>,
    for<'r> f64: Decode<'r, DB> + Type<DB>,
{
    /// Runs a read query with `binds` and decodes every row with `decode`.
    async fn fetch<T>(
        pool: &sqlx::Pool<DB>,
        sql: String,
        binds: Vec<Bind<'_>>,
        decode: impl Fn(&DB::Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut q = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql));
        for bind in binds {
            q = match bind {
                Bind::Text(t) => q.bind(t),
                Bind::Int(i) => q.bind(i),
            };
        }
        q.fetch_all(pool).await?.iter().map(decode).collect()
    }

    /// [`crate::Store::execution`].
    pub(crate) async fn execution(
        pool: &sqlx::Pool<DB>,
        fid: &Fid,
    ) -> Result<Option<ExecutionRow>, StoreError> {
        let sql = format!(
            "SELECT {EXECUTION_COLUMNS} FROM executions WHERE fid = {}",
            DB::placeholder(1)
        );
        let binds = vec![Bind::Text(fid.as_str())];
        let rows = Self::fetch(pool, sql, binds, row_to_execution).await?;
        Ok(rows.into_iter().next())
    }

    /// [`crate::Store::executions`].
    pub(crate) async fn executions(
        pool: &sqlx::Pool<DB>,
        query: &ListQuery,
    ) -> Result<Vec<ExecutionRow>, StoreError> {
        let mut binds: Vec<Bind> = list_binds(query).into_iter().map(Bind::Text).collect();
        binds.push(Bind::Int(query.limit as i64));
        let sql = list_sql(query, DB::placeholder);
        Self::fetch(pool, sql, binds, row_to_execution).await
    }

    /// [`crate::Store::events`].
    pub(crate) async fn events(
        pool: &sqlx::Pool<DB>,
        fid: &Fid,
        query: &EventQuery,
    ) -> Result<Vec<Event>, StoreError> {
        // A seq past i64 is past every stored one (it must not wrap around).
        let after = query.after.min(i64::MAX as u64) as i64;
        let mut binds = vec![Bind::Text(fid.as_str()), Bind::Int(after)];
        binds.extend(kinds(query).iter().map(|k| Bind::Text(k.as_str())));
        binds.push(Bind::Int(query.limit as i64));
        let sql = events_sql(query, DB::placeholder);
        Self::fetch(pool, sql, binds, |row| row_to_event(fid, row)).await
    }

    /// [`crate::Store::event_count`].
    pub(crate) async fn event_count(pool: &sqlx::Pool<DB>, fid: &Fid) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT count(*) AS n FROM events WHERE fid = {}",
            DB::placeholder(1)
        );
        let counts = Self::fetch(pool, sql, vec![Bind::Text(fid.as_str())], |row| {
            Ok(row.try_get::<i64, _>("n")? as u64)
        })
        .await?;
        Ok(counts.into_iter().next().unwrap_or(0))
    }

    /// [`crate::Store::unfinished`].
    pub(crate) async fn unfinished(
        pool: &sqlx::Pool<DB>,
        node: &str,
    ) -> Result<Vec<ExecutionRow>, StoreError> {
        let sql = unfinished_sql(&DB::placeholder(1));
        Self::fetch(pool, sql, vec![Bind::Text(node)], row_to_execution).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kodo_core::Status;

    #[test]
    fn placeholders_follow_the_filters() {
        let q = ListQuery {
            owner: Some("a".into()),
            status: Some(Status::Running),
            flow: None,
            before: Some(Fid::new()),
            limit: 5,
        };
        let sql = list_sql(&q, |n| format!("${n}"));
        assert!(sql.ends_with(
            "WHERE true AND owner = $1 AND status = $2 AND fid < $3 ORDER BY fid DESC LIMIT $4"
        ));
        let e = EventQuery {
            after: 0,
            limit: 9,
            kinds: Some(vec![Kind::Result, Kind::Final]),
        };
        assert!(
            events_sql(&e, |_| "?".into()).ends_with("AND kind IN (?, ?) ORDER BY seq LIMIT ?")
        );
    }
}
