//! The runtime's scenarios: throughput, command-flow output, latency,
//! launch, executions waiting on a lock.

use crate::BenchArgs;
use crate::setup::*;
use kodo_core::Status;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::io::AsyncBufReadExt;

/// `--executions` executions of `--events` events each, launched at once
/// on `b`: the seconds until all of them finished.
pub(crate) async fn emit_all(b: &Bench, args: &BenchArgs) -> Result<f64, String> {
    let start = Instant::now();
    let mut launches = tokio::task::JoinSet::new();
    for _ in 0..args.executions {
        let node = b.node.clone();
        let n = args.events;
        launches.spawn(async move { node.launch("emit", "bench", json!({"n": n})).await });
    }
    let mut fids = Vec::with_capacity(args.executions);
    while let Some(r) = launches.join_next().await {
        fids.push(
            r.map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
                .fid,
        );
    }
    b.until_final(&fids).await;
    Ok(start.elapsed().as_secs_f64())
}

/// `--rate` events/s offered on `b` for `--seconds` (by executions of 100
/// events/s; `finished_before` executions of `b` finished already): how
/// many executions, and every emit->committed latency, sorted.
pub(crate) async fn paced(
    b: &Bench,
    args: &BenchArgs,
    finished_before: u64,
) -> Result<(usize, Vec<f64>), String> {
    let per_execution = 100.0;
    let executions = ((args.rate as f64 / per_execution).ceil() as usize).max(1);
    b.timing.record.store(true, Ordering::Relaxed);
    for _ in 0..executions {
        b.node
            .launch(
                "paced",
                "bench",
                json!({"rate": per_execution, "seconds": args.seconds}),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let all = finished_before + executions as u64;
    b.timing.until(Status::Finished, all).await;
    let mut l = std::mem::take(&mut *b.timing.latencies.lock().unwrap());
    l.sort_by(f64::total_cmp);
    Ok((executions, l))
}

pub(crate) async fn throughput(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let b = fresh(args, "throughput").await?;
    let secs = emit_all(&b, args).await?;
    let flow_events = (args.executions * args.events) as f64;
    let stored = b.timing.events.load(Ordering::Relaxed) as f64;
    let stored = if b.spoolers.is_empty() {
        format!(" ({:.0} stored events/s incl. status/meta)", stored / secs)
    } else {
        String::new()
    };
    report.push(format!(
        "through  {} executions x {} events: {:.0} flow events/s{stored}, {:.2} s",
        args.executions,
        args.events,
        flow_events / secs,
        secs
    ));
    b.end().await;
    Ok(())
}

/// Command-flow output: 4 flows print `--lines` lines each (`seq`), every
/// line a stored `stdout` event; beside the same output read from the pipe
/// and merely counted (the ceiling of the pipe and the process).
pub(crate) async fn output(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    const FLOWS: usize = 4;
    let start = Instant::now();
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..FLOWS {
        let command = seq_command(args.lines);
        reads.spawn(async move {
            let mut child = tokio::process::Command::new(&command[0])
                .args(&command[1..])
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            let stdout = child.stdout.take().expect("piped");
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut n = 0usize;
            while lines.next_line().await?.is_some() {
                n += 1;
            }
            child.wait().await?;
            Ok::<usize, std::io::Error>(n)
        });
    }
    let mut counted = 0;
    while let Some(n) = reads.join_next().await {
        counted += n.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    }
    let raw = counted as f64 / start.elapsed().as_secs_f64();

    let b = fresh(args, "output").await?;
    let start = Instant::now();
    let mut fids = Vec::new();
    for _ in 0..FLOWS {
        let launched = b.node.launch("lines", "bench", json!({})).await;
        fids.push(launched.map_err(|e| e.to_string())?.fid);
    }
    b.until_final(&fids).await;
    let secs = start.elapsed().as_secs_f64();
    for fid in &fids {
        let stored = b.store.event_count(fid).await.map_err(|e| e.to_string())?;
        if stored < args.lines as u64 {
            return Err(format!(
                "{fid}: {stored} events stored for {} lines",
                args.lines
            ));
        }
    }
    report.push(format!(
        "output   {FLOWS} command flows x {} lines: {:.0} stored lines/s (the same output only read and counted: {raw:.0} lines/s)",
        args.lines,
        (FLOWS * args.lines) as f64 / secs
    ));
    b.end().await;
    Ok(())
}

pub(crate) async fn latency(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let b = fresh(args, "latency").await?;
    let (executions, l) = paced(&b, args, 0).await?;
    report.push(format!(
        "latency  {} events/s offered ({executions} executions x 100/s, {} s): {} events, emit->committed p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.rate,
        args.seconds,
        l.len(),
        percentile(&l, 0.5) * 1e3,
        percentile(&l, 0.99) * 1e3,
        l.last().copied().unwrap_or(f64::NAN) * 1e3
    ));
    b.end().await;
    Ok(())
}

pub(crate) async fn launch(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let b = fresh(args, "launch").await?;
    for flow in ["noop", "true"] {
        let times = launch_times(&b, flow, args.launches).await?;
        let kind = if flow == "noop" { "Rust   " } else { "command" };
        report.push(format!(
            "launch   {kind} flow, {} launches: launch->running stored p50 {:.2} ms, p99 {:.2} ms",
            args.launches,
            percentile(&times, 0.5) * 1e3,
            percentile(&times, 0.99) * 1e3
        ));
    }
    b.end().await;
    Ok(())
}

pub(crate) async fn waiting(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let b = fresh(args, "waiting").await?;
    let before = rss_mib();
    let start = Instant::now();
    let mut launched = 0;
    while launched < args.waiting {
        let chunk = (args.waiting - launched).min(1000);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..chunk {
            let node = b.node.clone();
            set.spawn(async move { node.launch("waits", "bench", Value::Null).await });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        }
        launched += chunk;
        if launched % 20_000 == 0 {
            eprintln!("bench: {launched} waiting executions launched");
        }
    }
    b.timing.until(Status::Awaiting, args.waiting as u64).await;
    let secs = start.elapsed().as_secs_f64();
    let after = rss_mib();

    report.push(format!(
        "waiting  {} executions awaiting a lock (launched in {:.1} s): RSS {:.0} MiB ({:.0} MiB before, {:.1} KiB per execution)",
        args.waiting,
        secs,
        after,
        before,
        (after - before) * 1024.0 / args.waiting as f64
    ));
    let stop = Instant::now();
    b.end().await;
    report.push(format!(
        "waiting  shutdown killed and stored all {} in {:.1} s",
        args.waiting,
        stop.elapsed().as_secs_f64()
    ));
    Ok(())
}
