//! What a command flow writes, stored whole whatever it is: lines that grow
//! when escaped, oversized and invalid fd-3 lines, invalid UTF-8, and the
//! order of stdout lines written before an fd-3 line. A small payload limit
//! (4 KiB) makes every case quick.

use kodo_actors::{CommandSpec, FlowDef, Flows, NodeOptions};
use kodo_core::{Event, Kind, Status};
use kodo_tests::*;
use serde_json::{Value, json};

const MAX: usize = 4096;

fn sh(name: &str, script: &str) -> FlowDef {
    FlowDef::command(
        name,
        CommandSpec {
            command: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        },
    )
}

fn flows() -> Flows {
    let mut flows = Flows::default();
    // 20 KB of NUL bytes on one line (six bytes each once escaped), then more.
    flows.add(sh(
        "nuls",
        "head -c 20000 /dev/zero; printf '\\nafter\\n'; head -c 3000 /dev/zero | tr '\\0' '\"' >&2; echo >&2",
    ));
    // A result line far over the limit, one of invalid JSON made of quotes
    // (twice its size once escaped), then a valid result.
    flows.add(sh(
        "fd3-junk",
        r#"{ printf '{"kind":"result","payload":"'; head -c 100000 /dev/zero | tr '\0' x; printf '"}\n'; } >&3
           head -c 3000 /dev/zero | tr '\0' '"' >&3; echo >&3
           echo '{"kind":"result","payload":"the end"}' >&3
           echo done"#,
    ));
    // A result whose payload alone is over the limit, though the line is read whole.
    flows.add(sh(
        "fd3-big-payload",
        r#"{ printf '{"kind":"result","payload":"'; head -c 5000 /dev/zero | tr '\0' y; printf '"}\n'; } >&3"#,
    ));
    // Step lines kodo cannot journal, then one it can: each reply echoed.
    flows.add(sh(
        "fd3-steps",
        r#"read -r inputs
say() { read -r reply; echo "$reply"; }
echo '{"kind":"step","payload":1}' >&3; say
{ printf '{"kind":"step","name":"big","payload":"'; head -c 5000 /dev/zero | tr '\0' y; printf '"}\n'; } >&3; say
{ printf '{"kind":"step","name":"huge","payload":"'; head -c 80000 /dev/zero | tr '\0' z; printf '"}\n'; } >&3; say
echo '{"kind":"step","name":"ok","n":7,"payload":{"b":1}}' >&3; say
echo '{"kind":"step","name":"again","n":7,"payload":2}' >&3; say"#,
    ));
    // Invalid UTF-8, and multibyte characters across every cut.
    flows.add(sh(
        "bytes",
        "printf 'a\\377b\\n'; i=0; while [ $i -lt 3000 ]; do printf 'é€😀'; i=$((i+1)); done; echo",
    ));
    flows.add(sh(
        "ordered",
        r#"i=1; while [ $i -le 200 ]; do echo "before $i"; echo "{\"kind\":\"result\",\"payload\":$i}" >&3; i=$((i+1)); done"#,
    ));
    // fd 3 in its own order: a lock, a result, another lock.
    flows.add(sh(
        "fd3-order",
        r#"read -r x
           echo '{"kind":"lock","name":"a"}' >&3
           echo '{"kind":"result","payload":1}' >&3
           echo '{"kind":"lock","name":"b"}' >&3
           read -r one; read -r two"#,
    ));
    // A writer that leaves the flow's process group and keeps its stdout.
    flows.add(sh(
        "escapes",
        r#"f=$(mktemp -u); mkfifo "$f"
           setsid sh -c 'echo up > "$1"; while true; do echo tick; sleep 0.2; done' sh "$f" &
           read -r up < "$f"; rm "$f"; echo "escaped $!"; echo done"#,
    ));
    // The Python helper, with stdout a pipe (block-buffered unless told).
    flows.add(FlowDef::command(
        "py-print-then-lock",
        CommandSpec {
            command: vec![
                "python3".into(),
                "-c".into(),
                "import kodo; kodo.inputs(); print('before'); kodo.lock('go', {}); print('after')"
                    .into(),
            ],
            env: [
                (
                    "PYTHONPATH".to_string(),
                    concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/python").to_string(),
                ),
                // Empty is off: the helper must not depend on it.
                ("PYTHONUNBUFFERED".to_string(), String::new()),
            ]
            .into(),
            ..Default::default()
        },
    ));
    flows.add(sh(
        "fails-loudly",
        "echo 'Traceback (most recent call last):' >&2; echo \"ModuleNotFoundError: No module named 'kodo'\" >&2; exit 1",
    ));
    flows
}

async fn start() -> TestNode {
    let mut options = NodeOptions::default();
    options.limits.max_payload = MAX;
    TestNode::start(flows(), 2, 1 << 20, options).await
}

/// Runs `flow` to its end; its checked event log.
async fn run(t: &TestNode, flow: &str) -> (Status, Vec<Event>) {
    let fid = t.node.launch(flow, "ann", json!({})).await.unwrap().fid;
    let status = wait_final(&t.node, &fid).await;
    let events = stored_events(&t.store, &fid).await;
    assert_eq!(check_log(&events), Ok(status), "{flow}");
    assert!(
        events.iter().all(|e| e.payload.len() <= MAX),
        "{flow}: every event fits"
    );
    (status, events)
}

/// Asserts two long texts are equal, showing only where they part.
fn assert_same(got: &str, want: &str) {
    if got != want {
        let at = got
            .bytes()
            .zip(want.bytes())
            .take_while(|(a, b)| a == b)
            .count();
        let near = |s: &str| {
            s.get(at.saturating_sub(60)..(at + 60).min(s.len()))
                .unwrap_or("")
                .to_string()
        };
        panic!(
            "{} bytes, want {}; they part at {at}: {:?} vs {:?}",
            got.len(),
            want.len(),
            near(got),
            near(want)
        );
    }
}

/// The text of every `kind` event, joined.
fn joined(events: &[Event], kind: Kind) -> String {
    payloads(events, kind)
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_that_grow_when_escaped_are_stored_whole_and_reading_goes_on() {
    let t = start().await;
    let (status, events) = run(&t, "nuls").await;
    assert_eq!(status, Status::Finished);
    let stdout = joined(&events, Kind::Stdout);
    assert!(
        stdout == format!("{}after", "\0".repeat(20000)),
        "every byte, in order"
    );
    assert!(payloads(&events, Kind::Stdout).len() >= 20000 * 6 / MAX);
    assert!(joined(&events, Kind::Stderr) == "\"".repeat(3000));
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_invalid_fd3_lines_become_warnings_with_their_text() {
    let t = start().await;
    let (status, events) = run(&t, "fd3-junk").await;
    assert_eq!(status, Status::Finished, "nothing a flow writes ends it");
    assert_eq!(payloads(&events, Kind::Final), [json!("the end")]);
    assert_eq!(payloads(&events, Kind::Stdout), [json!("done")]);
    let stderr = joined(&events, Kind::Stderr);
    let oversized = format!(
        "kodo: ignored an fd-3 line longer than {} bytes: {{\"kind\":\"result\",\"payload\":\"{}\"}}",
        MAX + 64 * 1024,
        "x".repeat(100_000)
    );
    let quotes = format!(
        "kodo: ignored invalid fd-3 line (invalid type: string \"\", expected struct Fd3Line at line 1 column 2): {}",
        "\"".repeat(3000)
    );
    assert_same(&stderr, &format!("{oversized}{quotes}"));

    let (status, events) = run(&t, "fd3-big-payload").await;
    assert_eq!(status, Status::Finished);
    assert_eq!(payloads(&events, Kind::Final), [Value::Null]);
    let stderr = joined(&events, Kind::Stderr);
    assert!(
        stderr.starts_with(
            "kodo: ignored an fd-3 line (a payload of 5002 bytes exceeds the limit of 4096)"
        ) && stderr.ends_with(&format!("{}\"}}", "y".repeat(5000))),
        "{}",
        &stderr[..200]
    );
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_line_kodo_cannot_journal_is_answered_with_an_error() {
    let t = start().await;
    let (status, events) = run(&t, "fd3-steps").await;
    assert_eq!(status, Status::Finished);
    let replies: Vec<Value> = payloads(&events, Kind::Stdout)
        .iter()
        .map(|line| serde_json::from_str(line.as_str().unwrap()).unwrap())
        .collect();
    assert_eq!(replies.len(), 5, "{replies:?}");
    assert_eq!(replies[0]["step"], Value::Null);
    assert!(
        replies[0]["error"]
            .as_str()
            .unwrap()
            .contains("a step needs a \"name\"")
    );
    assert_eq!(replies[1]["step"], "big");
    assert!(
        replies[1]["error"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit"),
        "{}",
        replies[1]
    );
    assert_eq!(replies[2]["step"], Value::Null);
    assert!(
        replies[2]["error"]
            .as_str()
            .unwrap()
            .contains("longer than")
    );
    assert_eq!(replies[3], json!({"step": "ok", "n": 7, "stored": true}));
    assert_eq!(replies[4]["step"], "again");
    assert!(
        replies[4]["error"]
            .as_str()
            .unwrap()
            .contains("step number 7 is used already")
    );
    // Only the good one is journaled, with its number.
    assert_eq!(
        payloads(&events, Kind::Step),
        [json!({"n": 7, "name": "ok", "result": {"b": 1}})]
    );
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn characters_are_never_cut_and_invalid_utf8_is_replaced() {
    let t = start().await;
    let (_, events) = run(&t, "bytes").await;
    let lines = payloads(&events, Kind::Stdout);
    assert_eq!(lines[0], json!("a\u{fffd}b"));
    let rest: String = lines[1..].iter().map(|p| p.as_str().unwrap()).collect();
    assert!(
        rest == "é€😀".repeat(3000),
        "every character whole, in order"
    );
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_printed_before_an_fd3_line_is_stored_before_it() {
    let t = start().await;
    let (_, events) = run(&t, "ordered").await;
    let seq_of = |kind: Kind, payload: String| {
        events
            .iter()
            .find(|e| e.kind == kind && e.payload == payload)
            .unwrap_or_else(|| panic!("no {kind} {payload}"))
            .seq
    };
    for n in 1..=200 {
        let printed = seq_of(Kind::Stdout, format!("\"before {n}\""));
        let result = seq_of(Kind::Result, n.to_string());
        assert!(
            printed < result,
            "line {n}: stdout at seq {printed}, fd 3 at {result}"
        );
    }
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd3_lines_keep_their_order_locks_too() {
    let t = start().await;
    let fid = t
        .node
        .launch("fd3-order", "ann", json!({}))
        .await
        .unwrap()
        .fid;
    let mut sub = t.node.hub().subscribe(&fid);
    let locks = tokio::time::timeout(DEADLINE, async {
        loop {
            let events = stored_events(&t.store, &fid).await;
            let locks = payloads(&events, Kind::Lock);
            if locks.len() == 2 {
                return (events, locks);
            }
            sub.changed().await;
        }
    })
    .await
    .expect("both locks stored");
    let (events, locks) = locks;
    let order: Vec<String> = events
        .iter()
        .filter(|e| matches!(e.kind, Kind::Lock | Kind::Result))
        .map(|e| {
            format!(
                "{} {}",
                e.kind,
                e.payload.chars().take(40).collect::<String>()
            )
        })
        .collect();
    assert_eq!(locks[0]["name"], "a", "{order:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.kind, Kind::Lock | Kind::Result))
            .map(|e| e.kind)
            .collect::<Vec<_>>(),
        [Kind::Lock, Kind::Result, Kind::Lock],
        "{order:?}"
    );
    for lock in &locks {
        t.node
            .answer_lock(&fid, lock["lid"].as_str().unwrap(), json!(1))
            .await
            .unwrap();
    }
    assert_eq!(wait_final(&t.node, &fid).await, Status::Finished);
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_helper_stores_a_print_before_the_lock_after_it() {
    let t = start().await;
    let fid = t
        .node
        .launch("py-print-then-lock", "ann", json!({}))
        .await
        .unwrap()
        .fid;
    let (lock, lid) = wait_lock(&t.node, &fid).await;
    let stored = stored_events(&t.store, &fid).await;
    let before = stored.iter().find(|e| e.kind == Kind::Stdout);
    assert_eq!(
        before.map(|e| (e.payload.as_str(), e.seq < lock.seq)),
        Some(("\"before\"", true)),
        "the print is stored before the lock, while the flow waits"
    );
    t.node.answer_lock(&fid, &lid, json!("yes")).await.unwrap();
    assert_eq!(wait_final(&t.node, &fid).await, Status::Finished);
    let events = stored_events(&t.store, &fid).await;
    assert_eq!(
        payloads(&events, Kind::Stdout),
        [json!("before"), json!("after")]
    );
    t.node.shutdown("test over").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_flow_says_its_last_stderr_line() {
    let t = start().await;
    let (status, events) = run(&t, "fails-loudly").await;
    assert_eq!(status, Status::Error);
    assert_eq!(
        payloads(&events, Kind::Error),
        [json!(
            "exited with code 1: ModuleNotFoundError: No module named 'kodo'"
        )]
    );
    t.node.shutdown("test over").await;
}

/// A flow that exits with its output still in the pipes while the store
/// fails: nothing is given up while recording waits (it once was, after 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_left_in_the_pipes_is_stored_however_long_the_store_takes() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("exited");
    let mut flows = Flows::default();
    flows.add(FlowDef::command(
        "prints-and-exits",
        CommandSpec {
            command: vec![
                "sh".into(),
                "-c".into(),
                r#"i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done; touch "$MARKER""#
                    .into(),
            ],
            env: [("MARKER".to_string(), marker.display().to_string())].into(),
            ..Default::default()
        },
    ));
    // A 16 KiB queue fills at once while every write fails.
    let options = NodeOptions {
        launch_wait: std::time::Duration::from_millis(100),
        ..NodeOptions::default()
    };
    let t = TestNode::start(flows, 1, 16 << 10, options).await;
    t.faults
        .fail_writes
        .store(u32::MAX, std::sync::atomic::Ordering::SeqCst);
    let fid = t
        .node
        .launch("prints-and-exits", "ann", json!({}))
        .await
        .unwrap()
        .fid;
    tokio::time::timeout(DEADLINE, async {
        while !marker.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the flow wrote everything and exited");
    // Longer than kodo waits for pipes that stay open after an exit.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    t.faults
        .fail_writes
        .store(0, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(wait_final(&t.node, &fid).await, Status::Finished);
    let events = stored_events(&t.store, &fid).await;
    let lines: Vec<Value> = (0..3000).map(|i| json!(format!("line {i}"))).collect();
    assert!(
        payloads(&events, Kind::Stdout) == lines,
        "every line, in order"
    );
    t.node.shutdown("test over").await;
}

/// A process that left the flow's group and keeps writing to its stdout
/// cannot keep the execution open: kodo stops reading after a while, or at
/// once when the execution is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_escaped_the_group_cannot_keep_an_execution_open() {
    let t = start().await;
    let mut escaped = Vec::new();
    for kill in [false, true] {
        let fid = t
            .node
            .launch("escapes", "ann", json!({}))
            .await
            .unwrap()
            .fid;
        let mut sub = t.node.hub().subscribe(&fid);
        let pid = tokio::time::timeout(DEADLINE, async {
            loop {
                let events = stored_events(&t.store, &fid).await;
                let lines = payloads(&events, Kind::Stdout);
                if lines.contains(&json!("done")) {
                    let pid = lines
                        .iter()
                        .find_map(|l| l.as_str()?.strip_prefix("escaped "))
                        .expect("the escaped writer's pid");
                    return pid.parse::<i32>().unwrap();
                }
                sub.changed().await;
            }
        })
        .await
        .expect("the flow said it was done");
        escaped.push(pid);
        if kill {
            t.node.kill(&fid, "by ann").await.unwrap();
        }
        let want = if kill {
            Status::Killed
        } else {
            Status::Finished
        };
        assert_eq!(wait_final(&t.node, &fid).await, want);
        let events = stored_events(&t.store, &fid).await;
        assert!(payloads(&events, Kind::Stdout).contains(&json!("tick")));
    }
    for pid in escaped {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    t.node.shutdown("test over").await;
}
