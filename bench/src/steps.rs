//! `steps`: durable steps, the peers' workloads (100 x 100 steps, 20 x 100,
//! one execution of 10), Rust flows and Python command flows
//! (the `kodo` package): steps per second and launch -> finished stored,
//! beside the same executions emitting as many plain events.

use crate::BenchArgs;
use crate::setup::*;
use kodo_core::Fid;
use serde_json::json;
use std::time::Instant;

/// (executions, steps each) of the peers' measurements.
const WORKLOADS: [(usize, usize); 3] = [(100, 100), (20, 100), (1, 10)];

pub(crate) async fn steps(args: &BenchArgs, report: &mut Vec<String>) -> Result<(), String> {
    let dir = python_dir();
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("kodo.py"), KODO_PY).map_err(|e| e.to_string())?;
    let measured = async {
        for (executions, steps) in WORKLOADS {
            for (flow, what) in [
                ("steps", "Rust steps  "),
                ("python-steps", "Python steps"),
                ("emit", "plain events"),
            ] {
                let (secs, done) = run(args, flow, executions, steps).await?;
                let per_second = (executions * steps) as f64 / secs;
                let unit = if flow == "emit" { "events" } else { "steps" };
                report.push(format!(
                    "steps    {what} {executions:>3} x {steps:>3}: {per_second:>7.0} {unit}/s, \
                     launch->finished p50 {:.1} ms, max {:.1} ms",
                    percentile(&done, 0.5) * 1e3,
                    percentile(&done, 1.0) * 1e3,
                ));
            }
        }
        Ok::<_, String>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    measured
}

/// Launches `executions` of `flow` with `n` at once on a fresh node; the
/// seconds until all finished, and each one's launch -> finished (sorted).
async fn run(
    args: &BenchArgs,
    flow: &str,
    executions: usize,
    n: usize,
) -> Result<(f64, Vec<f64>), String> {
    let b = fresh(args, &format!("steps-{flow}")).await?;
    let start = Instant::now();
    let mut launches = tokio::task::JoinSet::new();
    for _ in 0..executions {
        let node = b.node.clone();
        let flow = flow.to_string();
        launches.spawn(async move {
            let at = Instant::now();
            node.launch(&flow, "bench", json!({"n": n}))
                .await
                .map(|l| (l.fid, at))
        });
    }
    let mut launched: Vec<(Fid, Instant)> = Vec::with_capacity(executions);
    while let Some(r) = launches.join_next().await {
        launched.push(r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?);
    }
    let fids: Vec<Fid> = launched.iter().map(|(fid, _)| fid.clone()).collect();
    b.until_final(&fids).await;
    let secs = start.elapsed().as_secs_f64();
    let finished = b.timing.finished_at.lock().unwrap().clone();
    let mut done: Vec<f64> = launched
        .iter()
        .filter_map(|(fid, at)| {
            finished
                .get(fid)
                .map(|end| end.duration_since(*at).as_secs_f64())
        })
        .collect();
    if done.len() != executions {
        return Err(format!("{flow}: {} of {executions} finished", done.len()));
    }
    done.sort_by(f64::total_cmp);
    b.end().await;
    Ok((secs, done))
}
