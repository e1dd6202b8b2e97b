//! `GET /metrics` scraped by a real Prometheus (Debian's `prometheus`,
//! started here on a free 127.0.0.1 port): after a run with finished,
//! failed, killed and lock-waiting executions, its query API reports the
//! counts the store reports.

mod common;

use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const TOKEN: &str = "metrics-test-token";

const FLOWS: &str = r#"
[[auth.tokens]]
token = "metrics-test-token"
user = "scraper"
admin = true

[[auth.tokens]]
token = "a-users-token"
user = "ann"

[flows.ok]
command = ["sh", "-c", "read -r x; echo one; echo two"]

[flows.fails]
command = ["sh", "-c", "read -r x; echo bad >&2; exit 3"]

[flows.sleeps]
command = ["sh", "-c", "read -r x; echo sleeping; sleep 60"]
"#;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn call(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = client().request(method, url).bearer_auth(TOKEN);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or_default(),
    )
}

async fn launch_authed(base: &str, flow: &str) -> String {
    let url = format!("{base}/flows/{flow}/executions");
    let (code, body) = call(reqwest::Method::POST, &url, Some(json!({}))).await;
    assert!((200..300).contains(&code), "{code} {body}");
    body["fid"].as_str().unwrap().to_string()
}

/// How long, and how often, the waits here ask.
const WITHIN: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_millis(200);

/// Prometheus scraping `target` every second with the token.
async fn prometheus(dir: &Path, target: &str) -> (Child, String) {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
             scrape_configs:\n\
             - job_name: kodo\n  \
               authorization: {{credentials: {TOKEN}}}\n  \
               static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus (the Debian package; scripts/test installs it)");
    let base = format!("http://127.0.0.1:{port}");
    until("prometheus ready", WITHIN, EVERY, async || {
        let ready = client().get(format!("{base}/-/ready")).send().await.ok()?;
        ready.status().is_success().then_some(())
    })
    .await;
    (child, base)
}

/// The value of a PromQL instant query with one result (None: no result yet).
async fn query(prometheus: &str, promql: &str) -> Option<f64> {
    let url = format!("{prometheus}/api/v1/query");
    let url = reqwest::Url::parse_with_params(&url, &[("query", promql)]).unwrap();
    let resp = client().get(url).send().await.ok()?;
    let body: Value = resp.json().await.ok()?;
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_counts_the_store_reports() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &format!("{FLOWS}{WAITING_FLOW}"));
    let (mut node, base, _) = start_logged(run(&cfg, dir.path())).await;
    let target = base.trim_start_matches("http://").to_string();

    // Tokens guard it as every route but /health.
    let bare = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status().as_u16(), 401);
    // It shows every user's flows and load: admins only.
    let user = client()
        .get(format!("{base}/metrics"))
        .bearer_auth("a-users-token")
        .send()
        .await
        .unwrap();
    assert_eq!(user.status().as_u16(), 403);

    let (_prom, prom) = prometheus(dir.path(), &target).await;
    let mut fids = Vec::new();
    for flow in ["ok", "ok", "ok", "fails", "fails"] {
        fids.push(launch_authed(&base, flow).await);
    }
    let sleeper = launch_authed(&base, "sleeps").await;
    let waiter = launch_authed(&base, "waits").await;
    fids.extend([sleeper.clone(), waiter.clone()]);
    // The lock opens, is answered; the sleeper is killed once it runs.
    let lid = until("the lock opened", WITHIN, EVERY, async || {
        let url = format!("{base}/executions/{waiter}/events");
        let (_, body) = call(reqwest::Method::GET, &url, None).await;
        let events = body["events"].as_array()?.clone();
        events
            .iter()
            .any(|e| e["kind"] == "lock")
            .then(|| lock_id(&events))
    })
    .await;
    let url = format!("{base}/executions/{waiter}/locks/{lid}");
    let (code, body) = call(reqwest::Method::POST, &url, Some(json!({"answer": "go"}))).await;
    assert_eq!(code, 200, "{body}");
    until("the sleeper runs", WITHIN, EVERY, async || {
        let url = format!("{base}/executions/{sleeper}");
        let (_, row) = call(reqwest::Method::GET, &url, None).await;
        (row["status"] == "running").then_some(())
    })
    .await;
    let url = format!("{base}/executions/{sleeper}/kill");
    let (code, body) = call(reqwest::Method::POST, &url, Some(json!({}))).await;
    assert!((200..300).contains(&code), "{code} {body}");

    // What the store reports once every execution ended.
    let rows = until("every execution ended", WITHIN, EVERY, async || {
        let (_, list) = call(reqwest::Method::GET, &format!("{base}/executions"), None).await;
        let rows = list["executions"].as_array()?.clone();
        let done = rows.len() == fids.len()
            && rows
                .iter()
                .all(|r| ["finished", "error", "killed"].contains(&r["status"].as_str().unwrap()));
        done.then_some(rows)
    })
    .await;
    let stored: u64 = rows.iter().map(|r| r["events"].as_u64().unwrap()).sum();
    let with = |status: &str| rows.iter().filter(|r| r["status"] == status).count() as f64;
    assert_eq!(
        (with("finished"), with("error"), with("killed")),
        (4.0, 2.0, 1.0)
    );

    // Prometheus, once a scrape after the end landed, says the same.
    let expected = [
        ("sum(kodo_executions_launched_total)", fids.len() as f64),
        (
            "sum(kodo_executions_ended_total{status=\"finished\"})",
            with("finished"),
        ),
        (
            "sum(kodo_executions_ended_total{status=\"error\"})",
            with("error"),
        ),
        (
            "sum(kodo_executions_ended_total{status=\"killed\"})",
            with("killed"),
        ),
        ("sum(kodo_events_stored_total)", stored as f64),
        ("sum(kodo_locks_total{event=\"opened\"})", 1.0),
        ("sum(kodo_locks_total{event=\"answered\"})", 1.0),
        ("sum(kodo_executions_live)", 0.0),
        ("sum(kodo_commit_batch_events_sum)", stored as f64),
    ];
    let mut last = Vec::new();
    let start = Instant::now();
    loop {
        last.clear();
        for (promql, want) in expected {
            last.push((promql, query(&prom, promql).await, want));
        }
        if last.iter().all(|(_, got, want)| *got == Some(*want)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "prometheus never reported the store's counts: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(terminate(&mut node).await, 0);
}

/// The value of the sample line `name` in OpenMetrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_process_serves_its_own_metrics_on_metrics_listen() {
    let dir = tempfile::tempdir().unwrap();
    let redis = ScriptServer::redis(dir.path());
    let cfg = write_config(
        dir.path(),
        &format!(
            "{FLOWS}\n[transport]\nkind = \"redis\"\nurl = \"{}\"\nblock = 0.1\n\
             [spooler]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            redis.url
        ),
    );
    let (mut node, base, _) = start_logged(run(&cfg, dir.path())).await;
    let mut spooler = spool(&cfg, dir.path(), "m").spawn().unwrap();
    let mut lines = BufReader::new(spooler.stdout.take().unwrap()).lines();
    let scrape = tokio::time::timeout(DEADLINE, async {
        loop {
            let line = lines.next_line().await.unwrap().expect("spool runs");
            if let Some(url) = line.strip_prefix("metrics on ") {
                return url.to_string();
            }
        }
    })
    .await
    .expect("spool printed its metrics address");

    for _ in 0..3 {
        launch_authed(&base, "ok").await;
    }
    let stored = until("every execution finished", WITHIN, EVERY, async || {
        let (_, list) = call(reqwest::Method::GET, &format!("{base}/executions"), None).await;
        let rows = list["executions"].as_array()?.clone();
        let done = rows.len() == 3 && rows.iter().all(|r| r["status"] == "finished");
        done.then(|| {
            rows.iter()
                .map(|r| r["events"].as_f64().unwrap())
                .sum::<f64>()
        })
    })
    .await;

    let bare = client().get(&scrape).send().await.unwrap();
    assert_eq!(bare.status().as_u16(), 401, "a token, as on the API");
    until(
        "the spooler counted every stored event",
        WITHIN,
        EVERY,
        async || {
            let text = client().get(&scrape).bearer_auth(TOKEN).send().await.ok()?;
            let text = text.text().await.ok()?;
            (sample(&text, "kodo_events_stored_total") == Some(stored)).then_some(())
        },
    )
    .await;
    // Each process counts what it did: this node's spoolers are off.
    let resp = client()
        .get(format!("{base}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let node_text = resp.text().await.unwrap();
    assert_eq!(sample(&node_text, "kodo_events_stored_total"), Some(0.0));
    let launched = "kodo_executions_launched_total{flow=\"ok\"}";
    assert_eq!(sample(&node_text, launched), Some(3.0));
    spooler.start_kill().unwrap();
    assert_eq!(terminate(&mut node).await, 0);
}
