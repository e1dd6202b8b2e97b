//! Command flows: a child process in its own process group, speaking kodo's
//! line protocol, which `docs/protocol.md` describes (the one description;
//! this module, `pump`, `output` and `locks` implement it): the process,
//! the fd-3 lines and the outcome are here; one task reads the three pipes
//! (the `pump` module), and `output` splits lines into events.

use crate::flow::{CommandSpec, Ctx};
use crate::orphans;
use crate::pump::{Pipes, Pump, Seen};
use crate::sys;
use crate::tracer::{Outcome, Trace};
use kodo_core::Kind;
use serde::Deserialize;
use serde_json::{Value, json};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio_util::sync::CancellationToken;

/// Keeps kodo's own settings (`KODO_*`) out of a child's environment: they
/// hold secrets (the store's and the transport's URLs), and a flow that
/// prints its environment would store them as events. The OTLP exporter's
/// headers (a collector's key) stay out likewise.
pub fn keep_secrets_out(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let bytes = name.as_encoded_bytes();
        if bytes.starts_with(b"KODO_")
            || (bytes.starts_with(b"OTEL_EXPORTER_OTLP_") && bytes.ends_with(b"HEADERS"))
        {
            cmd.env_remove(name);
        }
    }
}

/// Runs a command flow to its outcome.
pub(crate) async fn run(spec: &CommandSpec, ctx: &Ctx, inputs: &Value) -> Outcome {
    // A durable attempt may begin paused: the process starts once resumed.
    let pauses = ctx.pause_changes();
    ctx.unpaused().await;
    if let Some(stop) = ctx.stop_request() {
        return stop.outcome();
    }
    match start(spec, ctx) {
        Ok(child) => {
            if let Err(e) = ctx.tracer().trace(Trace::Running).await {
                return Outcome::Failed(format!("could not record the start: {e}"));
            }
            drive(child, ctx, inputs, pauses).await
        }
        Err(e) => Outcome::Failed(format!(
            "cannot start {:?}: {e}",
            spec.command.first().map(String::as_str).unwrap_or("")
        )),
    }
}

struct Started {
    child: Child,
    group: GroupGuard,
    fd3: OwnedFd,
}

/// Kills the whole process group when dropped (a crashed Runner leaves no
/// orphans); while it lives, the watchdog kills the group if this process
/// dies (see [`crate::orphans`]).
struct GroupGuard {
    pgid: libc::pid_t,
    _watched: Option<orphans::Watched>,
}

impl GroupGuard {
    fn signal(&self, signal: libc::c_int) {
        sys::signal_group(self.pgid, signal);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

fn start(spec: &CommandSpec, ctx: &Ctx) -> std::io::Result<Started> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let (read3, write3) = std::io::pipe()?;
    let (read3, write3) = (OwnedFd::from(read3), OwnedFd::from(write3));
    let mut cmd = Command::new(program);
    keep_secrets_out(&mut cmd);
    cmd.args(args)
        .envs(&spec.env)
        .env("KODO_FID", ctx.fid().as_str())
        .env("KODO_FLOW", ctx.flow())
        .env("KODO_OWNER", ctx.owner())
        .env("KODO_ATTEMPT", ctx.attempt().to_string())
        .env("KODO_JOURNAL", ctx.steps().journal().len().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // What its form decided at the launch (a Kodosumi app's entry point).
    match ctx.launch() {
        Some(launch) => cmd.env("KODO_LAUNCH", launch.to_string()),
        None => cmd.env_remove("KODO_LAUNCH"),
    };
    // Its spans join the execution's trace (W3C Trace Context).
    match ctx.traceparent() {
        Some(parent) => cmd.env("TRACEPARENT", parent),
        None => cmd.env_remove("TRACEPARENT"),
    };
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let w = write3.as_raw_fd();
    sys::give_fd3(&mut cmd, w);
    let child = cmd.spawn()?;
    drop(write3);
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("child exited at once"))?;
    let pgid = pid as libc::pid_t;
    Ok(Started {
        child,
        group: GroupGuard {
            pgid,
            _watched: orphans::watch(pgid),
        },
        fd3: read3,
    })
}

/// A line on fd 3.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fd3Line {
    kind: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    n: Option<u64>,
}

/// What a fd-3 line asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum Fd3Request {
    /// Record an event.
    Emit(Kind, String),
    /// Journal a step's result (JSON text): `{"kind":"step","name","n","payload"}`.
    Step {
        /// The step's name.
        name: String,
        /// Its number, as the flow counts its steps (None: after the last).
        n: Option<u64>,
        /// Its result.
        result: String,
    },
    /// Open a lock.
    Lock {
        /// Its name.
        name: String,
        /// What to show the person.
        data: Value,
        /// Seconds until it expires (None: the node's default).
        timeout: Option<Duration>,
    },
}

/// Parses one fd-3 line; the error says what is wrong with it.
pub(crate) fn parse_fd3(line: &str) -> Result<Fd3Request, String> {
    let parsed: Fd3Line = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if parsed.kind == "lock" {
        let name = parsed.name.ok_or("a lock needs a \"name\"")?;
        let timeout = match parsed.timeout {
            None => None,
            Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t.min(1e9))),
            Some(t) => return Err(format!("bad lock timeout {t}")),
        };
        return Ok(Fd3Request::Lock {
            name,
            data: parsed.data,
            timeout,
        });
    }
    if parsed.kind == "step" {
        let name = parsed.name.ok_or("a step needs a \"name\"")?;
        if parsed.n == Some(0) {
            return Err("steps are numbered from 1".into());
        }
        return Ok(Fd3Request::Step {
            name,
            n: parsed.n,
            result: parsed.payload.to_string(),
        });
    }
    if parsed.n.is_some() {
        return Err("only a step has an \"n\"".into());
    }
    let kind: Kind = parsed.kind.parse().map_err(|e| format!("{e}"))?;
    if !kind.emittable_by_flow() {
        return Err(format!("a flow may not emit `{kind}` events"));
    }
    Ok(Fd3Request::Emit(kind, parsed.payload.to_string()))
}

async fn drive(
    started: Started,
    ctx: &Ctx,
    inputs: &Value,
    mut pauses: tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let Started {
        mut child,
        group,
        fd3,
    } = started;
    let stdin = Arc::new(tokio::sync::Mutex::new(child.stdin.take()));
    // The inputs go first: the stdin lock is taken here, before any lock
    // answer can queue for it; the write runs beside the rest, so a child
    // that never reads stdin can still be waited for and killed.
    let first = stdin.clone().lock_owned().await;
    // Then the journal of steps, one line per step (`KODO_JOURNAL` says
    // how many): the flow replays them itself, and its next step follows.
    let mut first_lines = inputs.to_string();
    for (n, step) in ctx.steps().journal().iter() {
        let line = json!({"n": n, "name": step.name, "result": step.result});
        first_lines.push('\n');
        first_lines.push_str(&line.to_string());
    }
    ctx.steps().skip_journal();
    let inputs_writer = tokio::spawn(async move { write_to(first, &first_lines).await });
    let pipes = Pipes::open(ctx, child.stdout.take(), child.stderr.take(), fd3);
    // Cancelled once the process is reaped: its open locks can no longer be answered.
    let exited = CancellationToken::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pump = Pump::new(ctx, stdin.clone(), seen.clone(), exited.clone());
    let reader = tokio::spawn(pump.run(pipes));

    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            stop = ctx.stopped() => {
                tracing::info!(fid = %ctx.fid(), reason = %stop.reason, "stopping command flow");
                group.signal(libc::SIGTERM);
                // A paused group takes its SIGTERM once continued.
                group.signal(libc::SIGCONT);
                break match tokio::time::timeout(ctx.limits().kill_grace, child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        group.signal(libc::SIGKILL);
                        child.wait().await
                    }
                };
            }
            // A pause stops the whole group (no CPU, no output); resume continues it.
            Ok(()) = pauses.changed() => {
                let paused = *pauses.borrow_and_update();
                tracing::info!(fid = %ctx.fid(), paused, "command flow paused or resumed");
                group.signal(if paused { libc::SIGSTOP } else { libc::SIGCONT });
            }
        }
    };
    // Whatever the leader left behind in its group goes too, so the pipes close.
    drop(group);
    inputs_writer.abort();
    exited.cancel();
    stdin.lock().await.take();
    // The reader ends once the pipes close (the group is gone), or
    // DRAIN_AFTER_EXIT after the last output when something outside the
    // group holds them; it is not hurried while it records.
    if let Err(e) = reader.await {
        tracing::error!(fid = %ctx.fid(), error = %e, "the output reader failed");
    }
    if let Some(stop) = ctx.stop_request() {
        return stop.outcome();
    }
    let seen = std::mem::take(&mut *seen.lock().expect("seen lock"));
    outcome(status, seen.last_result, &seen.last_stderr)
}

fn outcome(
    status: std::io::Result<ExitStatus>,
    last_result: Option<String>,
    last_stderr: &str,
) -> Outcome {
    let failed = |what: String| {
        if last_stderr.is_empty() {
            Outcome::Failed(what)
        } else {
            Outcome::Failed(format!("{what}: {last_stderr}"))
        }
    };
    match status {
        Err(e) => Outcome::Failed(format!("waiting for the process failed: {e}")),
        Ok(s) if s.success() => Outcome::Finished(last_result.unwrap_or_else(|| "null".into())),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => failed(format!("exited with code {code}")),
            (None, Some(sig)) => failed(format!("killed by signal {sig}")),
            _ => failed(format!("ended with {s}")),
        },
    }
}

/// Writes one line to the flow's stdin (a lock's answer).
pub(crate) async fn write_line(stdin: &Arc<tokio::sync::Mutex<Option<ChildStdin>>>, line: &str) {
    write_to(stdin.clone().lock_owned().await, line).await;
}

async fn write_to(mut guard: tokio::sync::OwnedMutexGuard<Option<ChildStdin>>, line: &str) {
    if let Some(pipe) = guard.as_mut() {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        // A child that does not read stdin, or has exited, is not an error.
        if pipe.write_all(&bytes).await.is_err() || pipe.flush().await.is_err() {
            guard.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd3_lines_are_parsed_or_refused_with_a_reason() {
        assert_eq!(
            parse_fd3(r#"{"kind":"result","payload":{"a":1}}"#),
            Ok(Fd3Request::Emit(Kind::Result, r#"{"a":1}"#.into()))
        );
        assert_eq!(
            parse_fd3(r#"{"kind":"lock","name":"ok?","timeout":2.5}"#),
            Ok(Fd3Request::Lock {
                name: "ok?".into(),
                data: Value::Null,
                timeout: Some(Duration::from_millis(2500))
            })
        );
        assert_eq!(
            parse_fd3(r#"{"kind":"step","name":"fetch","payload":{"b":2,"a":1}}"#),
            Ok(Fd3Request::Step {
                name: "fetch".into(),
                n: None,
                result: r#"{"a":1,"b":2}"#.into()
            })
        );
        assert_eq!(
            parse_fd3(r#"{"kind":"step","name":"x","n":4}"#),
            Ok(Fd3Request::Step {
                name: "x".into(),
                n: Some(4),
                result: "null".into()
            })
        );
        for (line, reason) in [
            ("not json", "expected"),
            (r#"{"kind":"final","payload":1}"#, "may not emit `final`"),
            (r#"{"kind":"nope"}"#, "unknown Kind `nope`"),
            (r#"{"kind":"lock"}"#, "needs a \"name\""),
            (r#"{"kind":"step","payload":1}"#, "needs a \"name\""),
            (r#"{"kind":"step","name":"x","n":0}"#, "numbered from 1"),
            (r#"{"kind":"debug","n":1}"#, "only a step"),
            (
                r#"{"kind":"lock","name":"x","timeout":-1}"#,
                "bad lock timeout",
            ),
            (r#"{"kind":"debug","payload":1,"extra":2}"#, "unknown field"),
        ] {
            let err = parse_fd3(line).unwrap_err();
            assert!(err.contains(reason), "{line}: {err}");
        }
    }
}
