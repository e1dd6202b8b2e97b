//! `temporal`: durable mode beside direct mode on this machine, and a raw
//! loop of the same Temporal server (a workflow whose one activity returns
//! at once, started as fast as it goes) as the ceiling of launches.

#![allow(unreachable_pub, missing_docs)]

use crate::BenchArgs;
use crate::setup::*;
use kodo_core::{Fid, Status};
use kodo_durable::{Temporal, TemporalBackend, TemporalOptions, TemporalWorker};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use temporalio_client::{WorkflowGetResultOptions, WorkflowStartOptions};
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{
    ActivityOptions, ApplicationFailure, Worker, WorkerOptions, WorkflowContext, WorkflowResult,
};

pub(crate) async fn temporal(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let Some(address) = &args.temporal else {
        report.push("temporal skipped: give --temporal HOST:PORT".into());
        return Ok(());
    };
    let options = TemporalOptions {
        address: address.clone(),
        namespace: "default".into(),
        task_queue: format!("bench-{}", Fid::new()),
        workflow_id_prefix: "bench-".into(),
        execution_timeout: None,
        heartbeat_timeout: Duration::from_secs(30),
        attempts: 3,
        identity: format!("kodo@{}", std::process::id()),
    };
    let temporal = Temporal::connect(options)
        .await
        .map_err(|e| e.to_string())?;

    // Launch -> running stored, one launch at a time.
    let direct = fresh(args, "temporal-direct").await?;
    let direct_launch = launch_times(&direct, "noop", args.launches).await?;
    let direct_run = gated_run(&direct, args).await?;
    direct.end().await;
    let durable = durable_bench(args, &temporal).await?;
    let durable_launch = launch_times(&durable, "noop", args.launches).await?;
    let durable_run = gated_run(&durable, args).await?;
    let rate = launch_rate(&durable, args.launches).await?;
    durable.end().await;
    let raw = raw_rate(&temporal, args.launches).await?;
    let ms = |t: &[f64], p| percentile(t, p) * 1e3;
    report.push(format!(
        "temporal launch->running stored, {} launches: direct p50 {:.2} ms p99 {:.2} ms; durable p50 {:.2} ms p99 {:.2} ms",
        args.launches,
        ms(&direct_launch, 0.5),
        ms(&direct_launch, 0.99),
        ms(&durable_launch, 0.5),
        ms(&durable_launch, 0.99),
    ));
    report.push(format!(
        "temporal {} x {} events once all run: direct {:.0} events/s, durable {:.0} events/s ({:.0}%)",
        args.executions,
        args.events,
        direct_run,
        durable_run,
        100.0 * durable_run / direct_run
    ));
    report.push(format!(
        "temporal launches to the end, 16 at a time: durable {rate:.0}/s; raw workflow+activity loop {raw:.0}/s ({:.0}%)",
        100.0 * rate / raw
    ));
    crate::takeover::takeover(args, address, report).await
}

/// A bench whose node runs every flow durably and hosts a worker.
async fn durable_bench(args: &BenchArgs, temporal: &Arc<Temporal>) -> Result<Bench, String> {
    let for_backend = temporal.clone();
    let backend = move |cluster| -> kodo_actors::SharedBackend {
        Arc::new(TemporalBackend::new(for_backend.clone(), None, cluster))
    };
    let mut b = fresh_with(args, "temporal-durable", Some(&backend), None).await?;
    b.worker =
        Some(TemporalWorker::start(temporal.clone(), b.node.clone()).map_err(|e| e.to_string())?);
    Ok(b)
}

/// Launches `executions` of `gated`, waits until all run, then opens the
/// gate: their events per second, emit -> committed, until all finished.
async fn gated_run(b: &Bench, args: &BenchArgs) -> Result<f64, String> {
    GATE.send_replace(false);
    let running_before = b.timing.count(Status::Running);
    let finished_before = b.timing.count(Status::Finished);
    let mut launches = tokio::task::JoinSet::new();
    for _ in 0..args.executions {
        let node = b.node.clone();
        let n = args.events;
        launches.spawn(async move { node.launch("gated", "bench", json!({"n": n})).await });
    }
    while let Some(r) = launches.join_next().await {
        r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    }
    let n = args.executions as u64;
    b.timing.until(Status::Running, running_before + n).await;
    let start = Instant::now();
    GATE.send_replace(true);
    b.timing.until(Status::Finished, finished_before + n).await;
    Ok((args.executions * args.events) as f64 / start.elapsed().as_secs_f64())
}

/// `noop` launches to their end, 16 in flight: executions per second.
async fn launch_rate(b: &Bench, launches: usize) -> Result<f64, String> {
    let finished_before = b.timing.count(Status::Finished);
    let start = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..launches {
        if i >= 16 {
            in_flight.join_next().await;
        }
        let node = b.node.clone();
        in_flight.spawn(async move { node.launch("noop", "bench", json!({})).await });
    }
    while in_flight.join_next().await.is_some() {}
    b.timing
        .until(Status::Finished, finished_before + launches as u64)
        .await;
    Ok(launches as f64 / start.elapsed().as_secs_f64())
}

/// A raw loop on the same server: workflows whose one activity returns at
/// once, 16 in flight, each started and awaited: per second.
async fn raw_rate(temporal: &Arc<Temporal>, runs: usize) -> Result<f64, String> {
    let queue = format!("bench-raw-{}", Fid::new());
    let client = temporal.client().clone();
    let worker_queue = queue.clone();
    let worker = TemporalWorker::host(move |sdk| {
        let options = WorkerOptions::new(worker_queue)
            .register_workflow::<RawEcho>()
            .map_err(|e| e.to_string())?
            .register_activities(RawActs)
            .build();
        Worker::new(sdk, client, options).map_err(|e| e.to_string())
    })
    .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for i in 0..runs {
        if i >= 16 {
            in_flight.join_next().await;
        }
        let client = temporal.client().clone();
        let options =
            WorkflowStartOptions::new(queue.clone(), format!("raw-{}", Fid::new())).build();
        in_flight.spawn(async move {
            let handle = client.start_workflow(RawEcho::run, 1u32, options).await?;
            handle
                .get_result(WorkflowGetResultOptions::default())
                .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
    }
    while let Some(done) = in_flight.join_next().await {
        done.map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
    }
    let rate = runs as f64 / start.elapsed().as_secs_f64();
    worker.shutdown().await;
    Ok(rate)
}

pub struct RawActs;

#[activities]
impl RawActs {
    #[activity(name = "kodo_bench_raw")]
    pub async fn echo(_ctx: ActivityContext, x: u32) -> Result<u32, ActivityError> {
        Ok(x)
    }
}

#[workflow]
#[derive(Default)]
pub struct RawEcho;

#[workflow_methods]
impl RawEcho {
    #[run(name = "kodo_bench_raw")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, x: u32) -> WorkflowResult<u32> {
        let options = ActivityOptions::start_to_close_timeout(Duration::from_secs(30));
        ctx.execute_activity(RawActs::echo, x, options)
            .await
            .map_err(ApplicationFailure::new)
            .map_err(Into::into)
    }
}
