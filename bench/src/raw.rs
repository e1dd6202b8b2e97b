//! The baselines: writes straight into the store, and plain loops on
//! PostgreSQL and Redis with none of the runtime around them.

use crate::BenchArgs;
use crate::setup::*;
use kodo_core::{Event, Fid, Kind, now_ts};
use kodo_store::StoreOptions;
use std::time::Instant;

/// Plain loops into PostgreSQL's events table, with none of the runtime
/// around them: a batched UNNEST insert (`ON CONFLICT DO NOTHING`, what the
/// store does for events) and a batched COPY (no conflict handling at all).
pub(crate) async fn raw_postgres(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let Some(server) = &args.store_url else {
        return Ok(());
    };
    let total = args.executions * args.events;
    let text = payload(0).to_string();
    // COPY's text format escapes backslashes.
    let escaped = text.replace('\\', "\\\\");
    for method in ["UNNEST", "COPY"] {
        let url = fresh_pg_database(server, &format!("raw_{method}")).await?;
        kodo_store::open(&url, &StoreOptions::default())
            .await
            .map_err(|e| e.to_string())?
            .close()
            .await;
        let pool = sqlx::PgPool::connect(&url)
            .await
            .map_err(|e| e.to_string())?;
        let fids: Vec<String> = (0..args.executions)
            .map(|_| Fid::new().as_str().to_string())
            .collect();
        let rows: Vec<(usize, i64)> = (0..args.executions)
            .flat_map(|f| (1..=args.events as i64).map(move |seq| (f, seq)))
            .collect();
        let start = Instant::now();
        for chunk in rows.chunks(1000) {
            if method == "UNNEST" {
                sqlx::query(
                    "INSERT INTO events (fid, seq, ts, kind, payload) \
                     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::float8[], $4::text[], $5::text[]) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(chunk.iter().map(|&(f, _)| fids[f].as_str()).collect::<Vec<_>>())
                .bind(chunk.iter().map(|&(_, s)| s).collect::<Vec<_>>())
                .bind(chunk.iter().map(|_| now_ts()).collect::<Vec<_>>())
                .bind(vec!["debug"; chunk.len()])
                .bind(vec![text.as_str(); chunk.len()])
                .execute(&pool)
                .await
                .map_err(|e| e.to_string())?;
            } else {
                let mut data = String::with_capacity(chunk.len() * (text.len() + 80));
                for &(f, seq) in chunk {
                    data.push_str(&format!(
                        "{}\t{seq}\t{}\tdebug\t{escaped}\n",
                        fids[f],
                        now_ts()
                    ));
                }
                let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
                let mut copy = conn
                    .copy_in_raw("COPY events (fid, seq, ts, kind, payload) FROM STDIN")
                    .await
                    .map_err(|e| e.to_string())?;
                copy.send(data.as_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                copy.finish().await.map_err(|e| e.to_string())?;
            }
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        report.push(format!(
            "raw      plain {method:<6} loop into events, batches of 1000, {total} events: {rate:.0} events/s"
        ));
        pool.close().await;
    }
    Ok(())
}

/// Batched writes straight into the store, in two orders: fid-major (each
/// execution's events together: the store's best case, the ceiling) and
/// interleaved (1000 executions in lockstep, one event each per batch).
pub(crate) async fn raw(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let total = args.executions * args.events;
    let text = payload(0).to_string();
    for interleaved in [false, true] {
        let b = fresh(
            args,
            if interleaved {
                "raw-interleaved"
            } else {
                "raw"
            },
        )
        .await?;
        let fids: Vec<Fid> = (0..args.executions).map(|_| Fid::new()).collect();
        let order: Vec<(usize, u64)> = if interleaved {
            (1..=args.events as u64)
                .flat_map(|seq| (0..args.executions).map(move |f| (f, seq)))
                .collect()
        } else {
            (0..args.executions)
                .flat_map(|f| (1..=args.events as u64).map(move |seq| (f, seq)))
                .collect()
        };
        let start = Instant::now();
        for chunk in order.chunks(1000) {
            let batch: Vec<Event> = chunk
                .iter()
                .map(|&(f, seq)| Event {
                    fid: fids[f].clone(),
                    seq,
                    ts: now_ts(),
                    kind: Kind::Debug,
                    payload: text.clone(),
                    attempt: 0,
                })
                .collect();
            b.store.write(&batch).await.map_err(|e| e.to_string())?;
        }
        let rate = total as f64 / start.elapsed().as_secs_f64();
        let how = if interleaved {
            "interleaved"
        } else {
            "fid-major  "
        };
        report.push(format!(
            "raw      store.write, batches of 1000, {how}, {total} events: {rate:.0} events/s"
        ));
        b.end().await;
    }
    Ok(())
}

/// Plain loops on Redis with none of the runtime around them, with the
/// transport's entry shape (one event per entry): pipelined XADD (100 per
/// round trip), then XREADGROUP (COUNT 100) + XACK until all are read.
pub(crate) async fn raw_redis(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let Some(url) = &args.transport_url else {
        return Ok(());
    };
    let err = |e: redis::RedisError| e.to_string();
    let mut conn = redis::Client::open(url.as_str())
        .map_err(err)?
        .get_multiplexed_async_connection()
        .await
        .map_err(err)?;
    let key = format!("bench-raw-{}", Fid::new());
    let total = args.executions * args.events;
    let fid = Fid::new();
    let value = format!("{} debug {}", now_ts(), payload(0));
    let start = Instant::now();
    for chunk in (0..total).collect::<Vec<_>>().chunks(100) {
        let mut p = redis::pipe();
        for &i in chunk {
            p.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("fid")
                .arg(fid.as_str())
                .arg(i + 1)
                .arg(&value)
                .ignore();
        }
        p.query_async::<()>(&mut conn).await.map_err(err)?;
    }
    let add = total as f64 / start.elapsed().as_secs_f64();
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("g")
        .arg("0")
        .query_async::<()>(&mut conn)
        .await
        .map_err(err)?;
    let start = Instant::now();
    let mut read = 0;
    while read < total {
        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("g")
            .arg("c")
            .arg("COUNT")
            .arg(100)
            .arg("STREAMS")
            .arg(&key)
            .arg(">")
            .query_async(&mut conn)
            .await
            .map_err(err)?;
        let ids: Vec<String> = reply
            .keys
            .into_iter()
            .flat_map(|k| k.ids.into_iter().map(|id| id.id))
            .collect();
        if ids.is_empty() {
            break;
        }
        read += ids.len();
        redis::cmd("XACK")
            .arg(&key)
            .arg("g")
            .arg(&ids)
            .query_async::<()>(&mut conn)
            .await
            .map_err(err)?;
    }
    let consume = read as f64 / start.elapsed().as_secs_f64();
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<()>(&mut conn)
        .await
        .map_err(err)?;
    report.push(format!(
        "raw      plain redis loops, {total} one-event entries: pipelined XADD {add:.0}/s, XREADGROUP+XACK {consume:.0}/s"
    ));
    Ok(())
}
