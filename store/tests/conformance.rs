//! One conformance suite for every store backend: the same test functions
//! run against a real SQLite file (`sqlite::`) and a real PostgreSQL database
//! (`postgres::`, one fresh database per test on the server that
//! `KODO_TEST_PG_URL` names; `scripts/test` starts one). Backend-specific
//! error paths (URLs, connections) follow at the end.

use kodo_core::{Event, Fid, Kind, Meta, Status, json_text};
use kodo_store::{
    EventQuery, ExecutionRow, ListQuery, SharedStore, SqliteStore, StoreError, StoreOptions,
};
use sqlx::{ConnectOptions, Connection, Executor};

/// A database for one test: a file in a temp dir, or a fresh PostgreSQL database.
struct Db {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("sub/kodo.db").display());
        Self {
            url,
            _dir: Some(dir),
        }
    }

    async fn postgres() -> Self {
        Self {
            url: fresh_pg_database().await,
            _dir: None,
        }
    }

    async fn open(&self) -> SharedStore {
        kodo_store::open(&self.url, &StoreOptions::default())
            .await
            .unwrap()
    }

    async fn open_with(&self, options: &StoreOptions) -> Result<SharedStore, StoreError> {
        kodo_store::open(&self.url, options).await
    }
}

/// The server the PostgreSQL tests use.
fn pg_server() -> String {
    std::env::var("KODO_TEST_PG_URL").expect(
        "KODO_TEST_PG_URL is not set: the PostgreSQL tests need a server; \
         run them with scripts/test, which starts a throwaway one",
    )
}

/// A new, empty database on the test server; its URL.
async fn fresh_pg_database() -> String {
    let server = pg_server();
    let name = format!("kodo_{}", Fid::new().as_str().replace('-', ""));
    let mut admin = sqlx::PgConnection::connect(&server).await.unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .unwrap();
    admin.close().await.unwrap();
    with_database(&server, &name)
}

fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

/// Runs each listed test function against both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Db::sqlite().await).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Db::postgres().await).await
            })*
        }
    };
}

conformance!(
    rewrites_are_ignored_and_a_stale_status_never_wins,
    lists_page_by_cursor_and_filter_by_owner_status_flow_and_node,
    batches_of_one_execution_may_commit_in_any_order,
    concurrent_spoolers_writing_the_same_executions_store_each_event_once,
    payloads_and_times_come_back_exactly,
    a_schema_behind_is_refused_until_upgraded,
    a_write_failing_midway_stores_nothing_and_the_next_one_really_commits,
    a_node_name_is_held_by_one_claim_at_a_time,
    a_fence_refuses_an_older_attempt_and_says_what_is_stored,
    an_older_attempts_event_fills_a_hole_below_the_retrys_floor,
);

fn meta_event(fid: &Fid, owner: &str, flow: &str) -> Event {
    let meta = Meta {
        flow: flow.into(),
        owner: owner.into(),
        node: "n1".into(),
        kodo: "test".into(),
        trace: None,
        launch: None,
        job: None,
    };
    Event {
        fid: fid.clone(),
        seq: 1,
        ts: 1.0,
        kind: Kind::Meta,
        payload: serde_json::to_string(&meta).unwrap(),
        attempt: 0,
    }
}

fn status(fid: &Fid, seq: u64, s: Status) -> Event {
    Event {
        fid: fid.clone(),
        seq,
        ts: seq as f64,
        kind: Kind::Status,
        payload: json_text(s.as_str()),
        attempt: 0,
    }
}

fn line(fid: &Fid, seq: u64) -> Event {
    Event {
        fid: fid.clone(),
        seq,
        ts: seq as f64,
        kind: Kind::Stdout,
        payload: json_text(&format!("line {seq}")),
        attempt: 0,
    }
}

fn all(after: u64) -> EventQuery {
    EventQuery {
        after,
        limit: 1000,
        kinds: None,
    }
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// A whole execution: meta, starting, running, `lines` stdout lines, finished.
fn execution(fid: &Fid, owner: &str, lines: u64) -> Vec<Event> {
    let mut events = vec![
        meta_event(fid, owner, "f"),
        status(fid, 2, Status::Starting),
        status(fid, 3, Status::Running),
    ];
    events.extend((4..4 + lines).map(|seq| line(fid, seq)));
    events.push(status(fid, 4 + lines, Status::Finished));
    events
}

async fn rewrites_are_ignored_and_a_stale_status_never_wins(db: Db) {
    let store = db.open().await;
    let fid = Fid::new();
    let first = vec![
        meta_event(&fid, "ann", "f"),
        status(&fid, 2, Status::Starting),
    ];
    store.write(&first).await.unwrap();
    let second = vec![
        status(&fid, 3, Status::Running),
        status(&fid, 4, Status::Finished),
    ];
    store.write(&second).await.unwrap();
    // A redelivery of both batches, in their order, changes nothing.
    store.write(&first).await.unwrap();
    store.write(&second).await.unwrap();
    // Even a lone stale status changes nothing.
    store
        .write(&[status(&fid, 3, Status::Running)])
        .await
        .unwrap();
    let row = store.execution(&fid).await.unwrap().unwrap();
    assert_eq!(
        (row.status, row.events, row.owner.as_str()),
        (Status::Finished, 4, "ann")
    );
    let events = store.events(&fid, &all(0)).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(events[1], first[1]);
    let page = store
        .events(
            &fid,
            &EventQuery {
                after: 1,
                limit: 2,
                kinds: Some(vec![Kind::Status]),
            },
        )
        .await
        .unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert!(store.execution(&Fid::new()).await.unwrap().is_none());
    assert!(store.events(&Fid::new(), &all(0)).await.unwrap().is_empty());
    store.close().await;
}

async fn lists_page_by_cursor_and_filter_by_owner_status_flow_and_node(db: Db) {
    let store = db.open().await;
    let mut fids = Vec::new();
    for i in 0..5 {
        let fid = Fid::new();
        let owner = if i % 2 == 0 { "ann" } else { "bob" };
        let mut batch = vec![meta_event(&fid, owner, if i < 3 { "a" } else { "b" })];
        if i == 4 {
            batch.push(status(&fid, 2, Status::Error));
        }
        store.write(&batch).await.unwrap();
        fids.push(fid);
    }
    let q =
        |owner: Option<&str>, status, flow: Option<&str>, before: Option<Fid>, limit| ListQuery {
            owner: owner.map(String::from),
            status,
            flow: flow.map(String::from),
            before,
            limit,
        };
    let ids = |rows: Vec<ExecutionRow>| rows.into_iter().map(|r| r.fid).collect::<Vec<_>>();
    let first = ids(store
        .executions(&q(None, None, None, None, 2))
        .await
        .unwrap());
    assert_eq!(first, [fids[4].clone(), fids[3].clone()]);
    let next = ids(store
        .executions(&q(None, None, None, Some(fids[3].clone()), 10))
        .await
        .unwrap());
    assert_eq!(next, [fids[2].clone(), fids[1].clone(), fids[0].clone()]);
    let anns = ids(store
        .executions(&q(Some("ann"), None, None, None, 10))
        .await
        .unwrap());
    assert_eq!(anns, [fids[4].clone(), fids[2].clone(), fids[0].clone()]);
    let errors = ids(store
        .executions(&q(None, Some(Status::Error), None, None, 10))
        .await
        .unwrap());
    assert_eq!(errors, [fids[4].clone()]);
    let flow_b = ids(store
        .executions(&q(None, None, Some("b"), None, 10))
        .await
        .unwrap());
    assert_eq!(flow_b, [fids[4].clone(), fids[3].clone()]);
    let open_on_n1 = store.unfinished("n1").await.unwrap();
    assert_eq!(open_on_n1.len(), 4, "the one in error is final");
    assert!(store.unfinished("n2").await.unwrap().is_empty());
    // A survivor adopts one: it is n2's now, also after more of its events.
    let adopted = open_on_n1[0].fid.clone();
    store.adopt(&adopted, "n2").await.unwrap();
    let count = store.event_count(&adopted).await.unwrap();
    store
        .write(&[Event {
            fid: adopted.clone(),
            seq: count + 1,
            ts: 9.0,
            kind: Kind::Debug,
            payload: "\"resumed\"".into(),
            attempt: 0,
        }])
        .await
        .unwrap();
    let on_n2 = store.unfinished("n2").await.unwrap();
    assert_eq!(on_n2.len(), 1);
    assert_eq!(
        (on_n2[0].fid.clone(), on_n2[0].node.as_str()),
        (adopted, "n2")
    );
    assert_eq!(store.unfinished("n1").await.unwrap().len(), 3);
    store.ping().await.unwrap();
    store.close().await;
}

async fn batches_of_one_execution_may_commit_in_any_order(db: Db) {
    let store = db.open().await;
    let fid = Fid::new();
    let events = execution(&fid, "ann", 6);
    // The last batch first, then the middle one reversed, then the first:
    // what two spoolers or a redelivery can do.
    store.write(&events[7..]).await.unwrap();
    let middle: Vec<Event> = events[3..7].iter().rev().cloned().collect();
    store.write(&middle).await.unwrap();
    let row = store.execution(&fid).await.unwrap().unwrap();
    assert_eq!(row.status, Status::Finished, "a status stored before meta");
    assert_eq!(row.flow, "", "no meta yet");
    store.write(&events[..3]).await.unwrap();
    let row = store.execution(&fid).await.unwrap().unwrap();
    assert_eq!(
        (
            row.status,
            row.events,
            row.owner.as_str(),
            row.flow.as_str()
        ),
        (Status::Finished, 10, "ann", "f")
    );
    assert_eq!((row.created, row.updated), (1.0, 10.0));
    assert_eq!(
        store.events(&fid, &all(0)).await.unwrap(),
        events,
        "read back in seq order"
    );
    store.close().await;
}

async fn concurrent_spoolers_writing_the_same_executions_store_each_event_once(db: Db) {
    let store = db.open().await;
    let fids: Vec<Fid> = (0..20).map(|_| Fid::new()).collect();
    let all_events: Vec<Event> = fids
        .iter()
        .flat_map(|fid| execution(fid, "ann", 40))
        .collect();
    // Four writers each take every event, interleaved across executions in
    // their own order and cut into their own batch sizes: every event is
    // written four times, concurrently, in different orders.
    let writers: Vec<_> = (0..4_usize)
        .map(|w| {
            let store = store.clone();
            let mut mine = all_events.clone();
            mine.sort_by_key(|e| ((e.seq as usize * (w + 1)) % 7, e.fid.clone(), e.seq));
            if w % 2 == 1 {
                mine.reverse();
            }
            tokio::spawn(async move {
                for batch in mine.chunks(17 + 30 * w) {
                    store.write(batch).await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    for fid in &fids {
        let row = store.execution(fid).await.unwrap().unwrap();
        assert_eq!(
            (row.status, row.events, row.flow.as_str()),
            (Status::Finished, 44, "f")
        );
        let stored = store.events(fid, &all(0)).await.unwrap();
        assert_eq!(seqs(&stored), (1..=44).collect::<Vec<_>>());
    }
    let listed = store
        .executions(&ListQuery {
            owner: Some("ann".into()),
            limit: 100,
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), fids.len());
    store.close().await;
}

async fn payloads_and_times_come_back_exactly(db: Db) {
    let store = db.open().await;
    let fid = Fid::new();
    let odd = serde_json::json!({
        "text": "ünïcödé ✓ 日本語 \u{0} \\ \" '; DROP TABLE events; --",
        "n": 1e300,
        "nested": [1, {"a": null}],
    });
    let mut events = vec![meta_event(&fid, "ann", "f")];
    events.push(Event {
        fid: fid.clone(),
        seq: 2,
        ts: 1_764_000_000.123_456_7,
        kind: Kind::Result,
        payload: odd.to_string(),
        attempt: 0,
    });
    events.push(Event {
        fid: fid.clone(),
        seq: 3,
        ts: 1_764_000_000.123_456_8,
        kind: Kind::Stdout,
        payload: json_text(&"x".repeat(200_000)),
        attempt: 0,
    });
    store.write(&events).await.unwrap();
    let back = store.events(&fid, &all(0)).await.unwrap();
    assert_eq!(back, events);
    let value: serde_json::Value = serde_json::from_str(&back[1].payload).unwrap();
    assert_eq!(value, odd);
    store.close().await;
}

async fn a_schema_behind_is_refused_until_upgraded(db: Db) {
    let store = db.open().await;
    store.close().await;
    // Make the database look like one the build before made: the latest
    // migration (fence floors) neither recorded nor applied.
    for sql in [
        "DELETE FROM _sqlx_migrations WHERE version = 20261202000001",
        "DROP TABLE fence_floors",
    ] {
        run_sql(&db.url, sql).await;
    }
    match db.open_with(&StoreOptions::default()).await {
        Err(StoreError::SchemaBehind {
            applied: 2,
            known: 3,
            ..
        }) => {}
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a database that is behind"),
    }
    let err = db
        .open_with(&StoreOptions::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("run `runtime db upgrade`"), "{err}");
    // An upgrade says what it applied; a second one has nothing to do.
    let applied = kodo_store::upgrade(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert!(applied[0].1.contains("fence floors"), "{applied:?}");
    let again = kodo_store::upgrade(&db.url, &StoreOptions::default())
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    let store = db.open().await;
    store.fence(&Fid::new(), 1).await.unwrap();
    store.close().await;
}

/// A write that fails in the middle of its batch (a trigger refuses one row
/// in its second statement) stores nothing of it and leaves the store able to
/// write: the next batches really commit, as another connection sees, and no
/// transaction is left open. On SQLite the first failure ends the transaction
/// from inside (`RAISE(ROLLBACK)`, as SQLITE_FULL does), so the driver's own
/// ROLLBACK fails; the second fails one statement only (`RAISE(ABORT)`). A
/// writer that kept its connection would now sit inside a transaction that
/// never commits.
async fn a_write_failing_midway_stores_nothing_and_the_next_one_really_commits(db: Db) {
    let store = db.open().await;
    let fid = Fid::new();
    let batch = execution(&fid, "ann", 250);
    for how in ["ROLLBACK", "ABORT"] {
        poison_seq(&db.url, 150, how).await;
        let err = store.write(&batch).await.unwrap_err();
        assert!(err.to_string().contains("poisoned"), "{err}");
        assert_eq!(stored_outside(&db.url, &fid).await, 0);
    }
    unpoison(&db.url).await;
    store.write(&batch[..100]).await.unwrap();
    assert_eq!(
        stored_outside(&db.url, &fid).await,
        100,
        "a commit is a commit"
    );
    store.write(&batch).await.unwrap();
    assert_eq!(stored_outside(&db.url, &fid).await, batch.len() as i64);
    let row = store.execution(&fid).await.unwrap().unwrap();
    assert_eq!((row.status, row.events), (Status::Finished, 254));
    assert_eq!(store.event_count(&fid).await.unwrap(), 254);
    store.close().await;
    // Closed is closed: a late write fails instead of reconnecting.
    assert!(matches!(store.write(&batch).await, Err(StoreError::Closed)));
}

/// Two stores on one database (as two processes would open it): a node
/// name claimed through one is refused through the other until released.
async fn a_node_name_is_held_by_one_claim_at_a_time(db: Db) {
    let (a, b) = (db.open().await, db.open().await);
    let claim = a.claim_node("node-1").await.unwrap();
    let err = b.claim_node("node-1").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NodeTaken { node, .. } if node == "node-1"),
        "{err}"
    );
    assert!(err.to_string().contains("already running"), "{err}");
    let other = b.claim_node("node-2").await.unwrap();
    drop(claim);
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            // PostgreSQL ends the dropped claim's session asynchronously.
            match b.claim_node("node-1").await {
                Ok(claim) => return claim,
                Err(StoreError::NodeTaken { .. }) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("a released name can be claimed again");
    drop((again, other));
    a.close().await;
    b.close().await;
}

/// Makes every write of an event with this seq fail, from inside the
/// database; `sqlite_raise` is how SQLite fails it (`ROLLBACK` or `ABORT`).
async fn poison_seq(url: &str, seq: u64, sqlite_raise: &str) {
    unpoison(url).await;
    if url.starts_with("sqlite:") {
        let sql = format!(
            "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.seq = {seq} \
             BEGIN SELECT RAISE({sqlite_raise}, 'poisoned row'); END"
        );
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        c.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
        c.close().await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        c.execute(sqlx::AssertSqlSafe(format!(
            "CREATE OR REPLACE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.seq = {seq} THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$"
        )))
        .await
        .unwrap();
        c.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION poison()",
        )
        .await
        .unwrap();
        c.close().await.unwrap();
    }
}

/// Removes the trigger of [`poison_seq`].
async fn unpoison(url: &str) {
    if url.starts_with("sqlite:") {
        run_sql(url, "DROP TRIGGER IF EXISTS poison").await;
    } else {
        run_sql(url, "DROP TRIGGER IF EXISTS poison ON events").await;
    }
}

/// How many events of `fid` another connection sees; on SQLite it also
/// takes the write lock, which fails while a transaction is left open.
async fn stored_outside(url: &str, fid: &Fid) -> i64 {
    let count = "SELECT count(*) FROM events WHERE fid = $1";
    if url.starts_with("sqlite:") {
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        let mut c = options
            .busy_timeout(std::time::Duration::from_millis(500))
            .connect()
            .await
            .unwrap();
        c.execute("BEGIN IMMEDIATE")
            .await
            .expect("the write lock is free between writes");
        let n = sqlx::query_scalar(count)
            .bind(fid.as_str())
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.execute("ROLLBACK").await.unwrap();
        c.close().await.unwrap();
        n
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let n = sqlx::query_scalar(count)
            .bind(fid.as_str())
            .fetch_one(&mut c)
            .await
            .unwrap();
        c.close().await.unwrap();
        n
    }
}

async fn run_sql(url: &str, sql: &'static str) {
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        c.execute(sql).await.unwrap();
        c.close().await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        c.execute(sql).await.unwrap();
        c.close().await.unwrap();
    }
}

#[tokio::test]
async fn bad_sqlite_urls_are_refused_with_the_url_in_the_message() {
    let opts = StoreOptions::default();
    for (url, expected) in [
        ("sqlite::memory:", "in-memory database"),
        (
            "sqlite:///proc/no-such-dir/kodo.db",
            "cannot create /proc/no-such-dir",
        ),
        ("sqlite://x.db?mode=bogus", "sqlite://x.db?mode=bogus"),
    ] {
        let err = match SqliteStore::open(url, &opts).await {
            Ok(_) => panic!("{url} opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(expected) && err.contains(url.split('?').next().unwrap()),
            "{url}: {err}"
        );
    }
    let err = match kodo_store::open("mysql://u:secret@db/kodo", &opts).await {
        Ok(_) => panic!("mysql opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("mysql://u:***@db/kodo") && !err.contains("secret"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_postgres_urls_are_refused_with_the_url_masked() {
    let server = pg_server();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let wrong_password = {
        let (scheme_user, rest) = server.split_once(':').unwrap();
        let rest = rest.trim_start_matches("//");
        let (user, after) = rest.split_once(':').unwrap();
        let (_, host) = after.split_once('@').unwrap();
        format!("{scheme_user}://{user}:wrong-secret@{host}")
    };
    let missing_db = with_database(&server, "no_such_database");
    let unreachable = format!("postgres://kodo:unreach-secret@127.0.0.1:{port}/kodo");
    let cases = [
        (unreachable.as_str(), "refused"),
        (
            "postgres://kodo:bad-secret@127.0.0.1:notaport/kodo",
            "invalid port",
        ),
        (wrong_password.as_str(), "password authentication failed"),
        (missing_db.as_str(), "does not exist"),
    ];
    for (url, expected) in cases {
        let err = match kodo_store::open(url, &StoreOptions::default()).await {
            Ok(_) => panic!("{url} opened"),
            Err(e) => e.to_string(),
        };
        let masked = kodo_store::mask_url(url);
        assert!(
            err.contains(expected) && err.contains(&masked) && !err.contains("secret"),
            "{url}: {err}"
        );
    }
}

/// The pid of the session holding node `node`'s claim (named `kodo node NODE`),
/// once one holds its advisory lock.
async fn claim_holder(admin: &mut sqlx::PgConnection, node: &str) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = $1",
    )
    .bind(format!("kodo node {node}"))
    .fetch_optional(&mut *admin)
    .await
    .unwrap()
}

/// A PostgreSQL claim lives on a connection of its own: when that session
/// ends, the claim takes the lock again on a new one; when another process
/// took the name first, the claim says it is lost.
#[tokio::test]
async fn postgres_a_claim_survives_its_connection_or_says_it_is_lost() {
    let db = Db::postgres().await;
    let (a, b) = (db.open().await, db.open().await);
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let node = format!("n-{}", Fid::new());
    let claim = a.claim_node(&node).await.unwrap();
    let deadline = std::time::Duration::from_secs(30);

    let first = claim_holder(&mut admin, &node).await.expect("held");
    let refused = b.claim_node(&node).await.unwrap_err().to_string();
    assert!(
        refused.contains(&format!("server process {first} ")),
        "the holder is named: {refused}"
    );
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(first)
        .execute(&mut admin)
        .await
        .unwrap();
    tokio::time::timeout(deadline, async {
        while claim_holder(&mut admin, &node)
            .await
            .is_none_or(|pid| pid == first)
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the claim took its lock again on a new connection");
    assert!(matches!(
        b.claim_node(&node).await,
        Err(StoreError::NodeTaken { .. })
    ));

    // Cut again, and another process takes the name before the claim can.
    let taken = tokio::time::timeout(deadline, async {
        loop {
            if let Some(pid) = claim_holder(&mut admin, &node).await {
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&mut admin)
                    .await
                    .unwrap();
            }
            match b.claim_node(&node).await {
                Ok(claim) => return claim,
                Err(StoreError::NodeTaken { .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the other store took the name");
    let why = tokio::time::timeout(deadline, claim.lost())
        .await
        .expect("the claim says it is lost");
    assert!(why.contains("took this node's name"), "{why}");
    drop((claim, taken));
    a.close().await;
    b.close().await;
}

/// `e` as an event of durable attempt `attempt`.
fn of_attempt(attempt: u32, e: Event) -> Event {
    Event { attempt, ..e }
}

async fn a_fence_refuses_an_older_attempt_and_says_what_is_stored(db: Db) {
    let store = db.open().await;
    let fid = Fid::new();
    let one = |e| of_attempt(1, e);
    let two = |e| of_attempt(2, e);
    let first = vec![
        one(meta_event(&fid, "ann", "f")),
        one(status(&fid, 2, Status::Starting)),
        one(status(&fid, 3, Status::Running)),
        one(line(&fid, 4)),
    ];
    store.write(&first).await.unwrap();
    // The retry fences, and goes on after what is stored.
    assert_eq!(
        store.fence(&fid, 2).await.unwrap(),
        Some((4, Status::Running))
    );
    // Attempt 1 goes on: refused, in a batch with an execution of direct
    // mode, which is stored.
    let other = Fid::new();
    store
        .write(&[
            one(line(&fid, 5)),
            one(status(&fid, 6, Status::Finished)),
            meta_event(&other, "bob", "g"),
        ])
        .await
        .unwrap();
    assert_eq!(store.event_count(&fid).await.unwrap(), 4);
    assert_eq!(store.event_count(&other).await.unwrap(), 1);
    store
        .write(&[two(line(&fid, 5)), two(status(&fid, 6, Status::Finished))])
        .await
        .unwrap();
    // An older attempt that fences late (it was frozen) is refused, and
    // changes nothing; a newer one sees what is stored.
    match store.fence(&fid, 1).await {
        Err(StoreError::Superseded { attempt: 2, .. }) => {}
        other => panic!("a stale fence must be refused, got {other:?}"),
    }
    let events = store.events(&fid, &all(0)).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        store.fence(&fid, 3).await.unwrap(),
        Some((6, Status::Finished))
    );
    // Fencing the same attempt again is allowed (a retried call), but not
    // as the first to begin it: of two resumers, one wins.
    assert!(store.fence(&fid, 3).await.is_ok());
    match store.fence_first(&fid, 3).await {
        Err(StoreError::Superseded { attempt: 3, .. }) => {}
        other => panic!("a second beginner of attempt 3 must be refused, got {other:?}"),
    }
    assert_eq!(
        store.fence_first(&fid, 4).await.unwrap(),
        Some((6, Status::Finished))
    );
    store.write(&[two(line(&fid, 7))]).await.unwrap();
    assert_eq!(store.event_count(&fid).await.unwrap(), 6);
    // A fence of an execution with nothing stored yet holds too.
    let fresh = Fid::new();
    assert_eq!(store.fence(&fresh, 2).await.unwrap(), None);
    store
        .write(&[one(meta_event(&fresh, "ann", "f"))])
        .await
        .unwrap();
    assert!(store.execution(&fresh).await.unwrap().is_none());
    store.close().await;
}

/// An event of attempt 1 published before attempt 2 began, but stored
/// after it fenced (another spooler stored attempt 1's later events first):
/// it fills its hole, since attempt 2 goes on after it. Above that floor,
/// and in a hole of attempt 2's own events, it is refused.
async fn an_older_attempts_event_fills_a_hole_below_the_retrys_floor(db: Db) {
    let store = db.open().await;
    let fid = Fid::new();
    let by = |attempt, e: Event| Event {
        ts: 100.0 * f64::from(attempt) + e.seq as f64,
        ..of_attempt(attempt, e)
    };
    store
        .write(&[
            by(1, meta_event(&fid, "ann", "f")),
            by(1, status(&fid, 2, Status::Starting)),
            by(1, status(&fid, 3, Status::Running)),
            by(1, line(&fid, 5)),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.fence(&fid, 2).await.unwrap(),
        Some((5, Status::Running))
    );
    // Attempt 1's seq 4 arrives late: taken. Its seq 6 is past the floor.
    store
        .write(&[by(1, line(&fid, 4)), by(1, line(&fid, 6))])
        .await
        .unwrap();
    // Attempt 2 goes on after 5, and its seq 7 is stored after its 8.
    store
        .write(&[by(2, line(&fid, 6)), by(2, line(&fid, 8))])
        .await
        .unwrap();
    assert_eq!(
        store.fence(&fid, 3).await.unwrap(),
        Some((8, Status::Running))
    );
    // Attempt 1 may not fill attempt 2's hole; attempt 2 may.
    store.write(&[by(1, line(&fid, 7))]).await.unwrap();
    store.write(&[by(2, line(&fid, 7))]).await.unwrap();
    // A retried fence of attempt 3 keeps its floor (8): attempt 2's seq 9
    // stays refused, in the hole attempt 3 leaves at 9.
    store.write(&[by(3, line(&fid, 10))]).await.unwrap();
    store.fence(&fid, 3).await.unwrap();
    store.write(&[by(2, line(&fid, 9))]).await.unwrap();
    store.write(&[by(3, line(&fid, 9))]).await.unwrap();
    let events = store.events(&fid, &all(0)).await.unwrap();
    assert_eq!(
        events.iter().map(|e| (e.seq, e.ts)).collect::<Vec<_>>(),
        [
            (1, 101.0),
            (2, 102.0),
            (3, 103.0),
            (4, 104.0),
            (5, 105.0),
            (6, 206.0),
            (7, 207.0),
            (8, 208.0),
            (9, 309.0),
            (10, 310.0),
        ]
    );
    store.close().await;
}
