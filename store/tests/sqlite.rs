//! The SQLite store on real files: write semantics and every error path.
//! (These become the conformance suite shared with PostgreSQL.)

use kodo_core::{Event, Fid, Kind, Meta, Status, json_text};
use kodo_store::{EventQuery, ListQuery, SqliteStore, Store, StoreError, StoreOptions};

fn meta_event(fid: &Fid, owner: &str, flow: &str) -> Event {
    let meta = Meta {
        flow: flow.into(),
        owner: owner.into(),
        node: "n1".into(),
        kodo: "test".into(),
    };
    Event {
        fid: fid.clone(),
        seq: 1,
        ts: 1.0,
        kind: Kind::Meta,
        payload: serde_json::to_string(&meta).unwrap(),
    }
}

fn status(fid: &Fid, seq: u64, s: Status) -> Event {
    Event {
        fid: fid.clone(),
        seq,
        ts: seq as f64,
        kind: Kind::Status,
        payload: json_text(s.as_str()),
    }
}

fn all(after: u64) -> EventQuery {
    EventQuery {
        after,
        limit: 1000,
        kinds: None,
    }
}

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    let url = format!("sqlite://{}", dir.path().join("sub/kodo.db").display());
    SqliteStore::open(&url, &StoreOptions::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn rewrites_are_ignored_and_a_stale_status_never_wins() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
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

#[tokio::test]
async fn lists_page_by_cursor_and_filter_by_owner_status_flow_and_node() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
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
    let ids =
        |rows: Vec<kodo_store::ExecutionRow>| rows.into_iter().map(|r| r.fid).collect::<Vec<_>>();
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
    store.ping().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn bad_urls_are_refused_with_the_url_in_the_message() {
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
async fn a_schema_behind_is_refused_until_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("kodo.db").display());
    let store = SqliteStore::open(&url, &StoreOptions::default())
        .await
        .unwrap();
    store.close().await;
    // Make the database look like one an older build made: no migration recorded.
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&raw)
        .await
        .unwrap();
    raw.close().await;
    match SqliteStore::open(&url, &StoreOptions::default()).await {
        Err(StoreError::SchemaBehind {
            applied: 0,
            known: 1,
            ..
        }) => {}
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("opened a database that is behind"),
    }
    let err = SqliteStore::open(&url, &StoreOptions::default())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("run `runtime db upgrade`"), "{err}");
}
