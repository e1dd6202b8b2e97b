//! The Redis Streams transport against a real Redis server (AOF on, from
//! `scripts/redis`): order, acks and redelivery, claims of a dead
//! consumer's entries, trimming that keeps what is unacknowledged,
//! backpressure, clear errors, and a Redis restart under a running node.

use kodo_actors::{Ctx, FlowDef};
use kodo_core::{Event, Fid, Kind, json_text};
use kodo_tests::*;
use kodo_transport::{Delivery, LeaseFence, RedisOptions, RedisStreams, Transport, TransportError};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn event(fid: &Fid, seq: u64) -> Event {
    Event {
        fid: fid.clone(),
        seq,
        ts: seq as f64 + 0.5,
        kind: Kind::Stdout,
        payload: json_text(&format!("line {seq} with spaces\nand a newline")),
        attempt: 0,
    }
}

async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn xlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> usize {
    redis::cmd("XLEN").arg(key).query_async(conn).await.unwrap()
}

/// Receives from `shard` until `done` holds for everything received so far
/// (with the tests' deadline); acknowledges each delivery when `ack`.
async fn receive_until(
    t: &RedisStreams,
    shard: usize,
    ack: bool,
    got: &mut Vec<Event>,
    done: impl Fn(&[Event]) -> bool,
) {
    let work = async {
        while !done(got) {
            let d: Delivery = t.receive(shard, 100).await.unwrap().expect("open");
            got.extend(d.events.iter().cloned());
            if ack {
                t.ack(d.receipt).await.unwrap();
            }
        }
    };
    tokio::time::timeout(DEADLINE, work)
        .await
        .expect("received in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_each_execution_in_order_and_redelivers_what_was_not_acked() {
    let server = Server::redis();
    let t = redis_transport(redis_options(&server.url, "n", 2)).await;
    let fids: Vec<Fid> = (0..10).map(|_| Fid::new()).collect();
    let mut publishers = tokio::task::JoinSet::new();
    for fid in fids.clone() {
        let t = t.clone();
        publishers.spawn(async move {
            let mut seq = 1;
            while seq <= 20 {
                let n = 1 + seq % 3;
                let events: Vec<Event> = (seq..seq + n)
                    .filter(|s| *s <= 20)
                    .map(|s| event(&fid, s))
                    .collect();
                seq += events.len() as u64;
                t.publish(events).await.unwrap().durable().await.unwrap();
            }
        });
    }
    while let Some(r) = publishers.join_next().await {
        r.unwrap();
    }
    let mut got = Vec::new();
    for shard in 0..2 {
        let mut mine = Vec::new();
        let expected = fids
            .iter()
            .filter(|f| kodo_transport::shard_of(f, 2) == shard)
            .count()
            * 20;
        receive_until(&t, shard, true, &mut mine, |g| g.len() >= expected).await;
        got.extend(mine);
    }
    let mut per_fid: HashMap<Fid, Vec<u64>> = HashMap::new();
    for e in &got {
        per_fid.entry(e.fid.clone()).or_default().push(e.seq);
        assert_eq!(e, &event(&e.fid, e.seq), "an event comes back as it went");
    }
    for fid in &fids {
        assert_eq!(per_fid[fid], (1..=20).collect::<Vec<_>>(), "in order, once");
    }

    // A delivery that is not acknowledged comes again after `recover`
    // (its spooler crashed), first and whole; the next one continues.
    let fid = fids[0].clone();
    let shard = kodo_transport::shard_of(&fid, 2);
    t.publish((21..=25).map(|s| event(&fid, s)).collect())
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    let first = t.receive(shard, 100).await.unwrap().unwrap();
    assert_eq!(first.events.len(), 5);
    assert_eq!(t.recover(shard).await.unwrap(), 5);
    let again = t.receive(shard, 100).await.unwrap().unwrap();
    assert_eq!(again.events, first.events);
    t.ack(again.receipt).await.unwrap();
    let health = t.health().await;
    assert!(health.ok, "{health:?}");
    assert_eq!((health.backlog, health.pending), (Some(0), 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_entries_are_claimed_and_trims_keep_them_until_then() {
    let server = Server::redis();
    let base = RedisOptions {
        shards: 1,
        claim_idle: Duration::from_secs(3600),
        ..redis_options(&server.url, "a", 1)
    };
    let key = format!("{}:events:0", base.prefix);
    let mut conn = redis(&server.url).await;
    let dead = redis_transport(base.clone()).await;
    let x = Fid::new();
    dead.publish((1..=10).map(|s| event(&x, s)).collect())
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    // Consumer "a" takes the entry and dies before acknowledging it.
    let taken = dead.receive(0, 100).await.unwrap().unwrap();
    assert_eq!(taken.events.len(), 10);
    drop(taken);
    drop(dead);

    // Consumer "b" (who never claims) drains 2000 more entries and
    // acknowledges them. Trims run, but a stream is trimmed only below its
    // oldest unacknowledged entry: a's entry and all after it stay.
    let b = redis_transport(RedisOptions {
        consumer: "b".into(),
        ..base.clone()
    })
    .await;
    let y = Fid::new();
    publish_one_by_one(&b, &y, 1..=2000).await;
    let mut got = Vec::new();
    receive_until(&b, 0, true, &mut got, |g| g.len() >= 2000).await;
    assert!(got.iter().all(|e| e.fid == y));
    assert_eq!(xlen(&mut conn, &key).await, 2001, "nothing below a's entry");
    let oldest: redis::Value = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(format!("{oldest:?}").contains(x.as_str()), "{oldest:?}");

    // Consumer "c" claims entries idle longer than 200 ms: a's, whole.
    let c = redis_transport(RedisOptions {
        consumer: "c".into(),
        claim_idle: Duration::from_millis(200),
        ..base
    })
    .await;
    let mut claimed = Vec::new();
    receive_until(&c, 0, true, &mut claimed, |g| g.iter().any(|e| e.fid == x)).await;
    let xs: Vec<u64> = claimed
        .iter()
        .filter(|e| e.fid == x)
        .map(|e| e.seq)
        .collect();
    assert_eq!(xs, (1..=10).collect::<Vec<_>>());
    // Nothing is pending now: the next trim drops every acknowledged entry.
    publish_one_by_one(&c, &x, 11..=1010).await;
    let mut rest = Vec::new();
    receive_until(&c, 0, true, &mut rest, |g| g.len() >= 1000).await;
    let health = c.health().await;
    assert_eq!(health.backlog, Some(0), "{health:?}");
    let len = xlen(&mut conn, &key).await;
    assert!(len < 50, "acknowledged entries were trimmed ({len} left)");
}

/// Publishes one entry per event (as Tracers do for single emits).
async fn publish_one_by_one(t: &RedisStreams, fid: &Fid, seqs: std::ops::RangeInclusive<u64>) {
    let mut written = Vec::new();
    for seq in seqs {
        written.push(t.publish(vec![event(fid, seq)]).await.unwrap());
    }
    for w in written {
        w.durable().await.unwrap();
    }
}

/// A process that only publishes (its spoolers run elsewhere) counts the
/// writes that failed while Redis was down, and loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_are_counted_and_retried() {
    let server = Server::redis();
    let t = redis_transport(redis_options(&server.url, "n", 1)).await;
    assert_eq!(t.health().await.failures, 0);
    server.stop();
    let fid = Fid::new();
    let publishing = tokio::spawn({
        let (t, fid) = (t.clone(), fid.clone());
        async move { publish_one_by_one(&t, &fid, 1..=3).await }
    });
    let counted = async {
        while t.health().await.failures == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(DEADLINE, counted)
        .await
        .expect("the failed writes were counted");
    server.restart();
    tokio::time::timeout(DEADLINE, publishing)
        .await
        .expect("published once Redis was back")
        .unwrap();
    let mut got = Vec::new();
    receive_until(&t, 0, true, &mut got, |g| g.len() == 3).await;
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_wait_while_a_stream_is_over_its_bound() {
    let server = Server::redis();
    let options = RedisOptions {
        max_len: 100,
        ..redis_options(&server.url, "n", 1)
    };
    let key = format!("{}:events:0", options.prefix);
    let t = redis_transport(options).await;
    let published = Arc::new(AtomicU64::new(0));
    let fid = Fid::new();
    let producer = tokio::spawn({
        let (t, published, fid) = (t.clone(), published.clone(), fid.clone());
        async move {
            for seq in 1..=300 {
                t.publish(vec![event(&fid, seq)])
                    .await
                    .unwrap()
                    .durable()
                    .await
                    .unwrap();
                published.store(seq, Ordering::SeqCst);
            }
        }
    });
    let mut conn = redis(&server.url).await;
    tokio::time::timeout(DEADLINE, async {
        while xlen(&mut conn, &key).await <= 100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stream filled up");
    assert!(
        published.load(Ordering::SeqCst) < 300,
        "the producer went on past the bound"
    );
    let mut got = Vec::new();
    receive_until(&t, 0, true, &mut got, |g| g.len() >= 300).await;
    tokio::time::timeout(DEADLINE, producer)
        .await
        .expect("the producer finished once the stream drained")
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_publishes_are_written_only_while_the_lease_holds() {
    let server = Server::redis();
    let options = redis_options(&server.url, "f", 1);
    let key = format!("{}:events:0", options.prefix);
    let lease = format!("{}:lease:n", options.prefix);
    let t = redis_transport(options).await;
    let mut conn = redis(&server.url).await;
    let set = |token: &'static str| redis::cmd("SET").arg(&lease).arg(token).clone();
    let _: () = set("mine").query_async(&mut conn).await.unwrap();
    t.fence(LeaseFence {
        key: lease.clone(),
        token: "mine".into(),
    });
    let fid = Fid::new();
    let written = t.publish(vec![event(&fid, 1)]).await.unwrap();
    tokio::time::timeout(DEADLINE, written.durable())
        .await
        .expect("written while the lease holds")
        .unwrap();
    assert_eq!(xlen(&mut conn, &key).await, 1);

    // The lease is another's (a survivor took this node over): held back.
    let _: () = set("another").query_async(&mut conn).await.unwrap();
    let held = t
        .publish((2..=4500).map(|seq| event(&fid, seq)).collect())
        .await
        .unwrap();
    let held = tokio::spawn(held.durable());
    tokio::time::timeout(DEADLINE, async {
        while !t.health().await.error.is_some_and(|e| e.contains("lease")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("health says why publishes wait");
    assert_eq!(xlen(&mut conn, &key).await, 1, "nothing written meanwhile");

    // Back (Redis had lost it, say): written, in order, in entries small
    // enough for the script.
    let _: () = set("mine").query_async(&mut conn).await.unwrap();
    tokio::time::timeout(DEADLINE, held)
        .await
        .expect("written once the lease holds again")
        .unwrap()
        .unwrap();
    assert!(xlen(&mut conn, &key).await >= 3, "split into entries");
    let mut got = Vec::new();
    receive_until(&t, 0, true, &mut got, |g| g.len() >= 4500).await;
    assert_eq!(
        got.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=4500).collect::<Vec<_>>()
    );
    assert!(t.health().await.error.is_none());
}

#[tokio::test]
async fn unreachable_redis_and_a_shard_mismatch_are_clear_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://:hunter22@127.0.0.1:{port}");
    let err = match RedisStreams::connect(redis_options(&url, "n", 2)).await {
        Err(TransportError::Unavailable(why)) => why,
        Err(e) => panic!("wrong error {e}"),
        Ok(_) => panic!("connected to nothing"),
    };
    assert!(
        err.contains(&format!("redis://:***@127.0.0.1:{port}")) && !err.contains("hunter22"),
        "{err}"
    );
    let server = Server::redis();
    let two = redis_options(&server.url, "n", 2);
    redis_transport(two.clone()).await;
    let err = match RedisStreams::connect(RedisOptions { shards: 3, ..two }).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a second layout was accepted"),
    };
    assert!(
        err.contains("uses 2 shards") && err.contains("transport.shards = 2"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing_and_shows_in_health() {
    redis_goes_away_mid_run(Server::stop).await;
}

/// With `appendfsync always`, even a crash of Redis loses no entry it
/// acknowledged: a kill -9 mid-run and a restart from the AOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_crash_loses_nothing_and_shows_in_health() {
    redis_goes_away_mid_run(Server::kill).await;
}

async fn redis_goes_away_mid_run(go_away: fn(&Server)) {
    const EXECUTIONS: u64 = 4;
    const LINES: u64 = 1000;
    let server = Server::redis();
    let flow = FlowDef::rust("chatty", |ctx: Ctx, _| async move {
        for i in 0..LINES {
            ctx.debug(&format!("line {i}")).await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(json!("done"))
    });
    let config = format!(
        "[transport]\nkind = \"redis\"\nurl = \"{}\"\nprefix = \"restart-{}\"\nblock = 0.1\n",
        server.url,
        Fid::new()
    );
    let api = TestApi::start(&config, vec![flow]).await;
    let mut fids = Vec::new();
    for _ in 0..EXECUTIONS {
        fids.push(api.launch("chatty").await);
    }
    go_away(&server);
    let down = api
        .health_until("the transport down", |code, body| {
            code == 503 && body["transport"]["ok"] == false
        })
        .await;
    assert!(down["transport"]["error"].as_str().is_some(), "{down}");
    assert!(
        down["running"].as_u64().unwrap() > 0,
        "flows were mid-run: {down}"
    );
    server.restart();
    let expected: Vec<Value> = (0..LINES).map(|i| json!(format!("line {i}"))).collect();
    for lines in api.finished_debug_lines(&fids).await {
        assert_eq!(lines, expected, "every line stored once, in order");
    }
    let back = api
        .health_until("the transport back", |code, _| code == 200)
        .await;
    // The transport's failed reads and writes while Redis was away are
    // counted, by itself and in the metrics (with the Tracers' refusals).
    let failures = back["transport"]["failures"].as_f64().unwrap();
    assert!(failures >= 1.0, "{back}");
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kodo_transport_errors_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(errors.is_some_and(|n| n >= failures), "{metrics}");
    let report = api.running.shutdown("test over").await;
    assert!(report.all_stored(), "{report}");
}

/// An entry kodo did not write (field names that are not even UTF-8) in a
/// kodo stream is skipped and acknowledged, also when it is read again
/// after a crash; it never blocks the events behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_kodo_did_not_write_is_skipped_and_blocks_nothing() {
    let server = Server::redis();
    let options = redis_options(&server.url, "n", 1);
    let stream = format!("{}:events:0", options.prefix);
    let t = redis_transport(options).await;
    let mut conn = redis(&server.url).await;
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(b"\xff\xfe".as_slice())
        .arg("not kodo's")
        .query_async(&mut conn)
        .await
        .unwrap();
    let fid = Fid::new();
    t.publish(vec![event(&fid, 1)])
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    // Read once and "crash" (recover), so both are read again from the
    // pending list, then for real.
    let mut got = Vec::new();
    receive_until(&t, 0, false, &mut got, |got| !got.is_empty()).await;
    t.recover(0).await.unwrap();
    let mut again = Vec::new();
    receive_until(&t, 0, true, &mut again, |got| !got.is_empty()).await;
    assert_eq!(again, vec![event(&fid, 1)]);
    let health = t.health().await;
    assert!(health.ok, "{health:?}");
    assert_eq!(
        health.backlog,
        Some(0),
        "the foreign entry is acknowledged too"
    );
}
