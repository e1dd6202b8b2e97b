//! Command flows: a child process in its own process group, speaking kodo's
//! line protocol.
//!
//! - stdin: the inputs as one JSON line, then one JSON line per lock answer
//!   (`{"lid":..,"answer":..}`, or `{"lid":..,"error":"expired"}`).
//! - stdout / stderr: each line becomes a `stdout` / `stderr` event.
//! - fd 3: JSON lines `{"kind":"result","payload":...}` for any kind a flow may
//!   emit, or `{"kind":"lock","name":..,"data":..,"timeout":secs}`. A line
//!   that is not valid is stored as a `stderr` warning, never a crash.
//! - exit 0: `final` with the last `result` payload (or null); otherwise `error`.
//!
//! Lines longer than the payload limit are split, so nothing is dropped.

use crate::flow::{CommandSpec, Ctx, LockError};
use crate::tracer::{Outcome, Trace};
use kodo_core::{Kind, json_text};
use serde::Deserialize;
use serde_json::{Value, json};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long output readers may run on after the process group is gone.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// Runs a command flow to its outcome.
pub async fn run(spec: &CommandSpec, ctx: &Ctx, inputs: &Value) -> Outcome {
    match start(spec, ctx) {
        Ok(child) => {
            if let Err(e) = ctx.tracer().trace(Trace::Running).await {
                return Outcome::Failed(format!("could not record the start: {e}"));
            }
            drive(child, ctx, inputs).await
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

/// Kills the whole process group when dropped (a crashed Runner leaves no orphans).
struct GroupGuard(libc::pid_t);

impl GroupGuard {
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with a negative pid signals the group we created; no memory is touched.
        unsafe {
            libc::kill(-self.0, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two new descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn start(spec: &CommandSpec, ctx: &Ctx) -> std::io::Result<Started> {
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let (read3, write3) = pipe()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(&spec.env)
        .env("KODO_FID", ctx.fid().as_str())
        .env("KODO_FLOW", ctx.flow())
        .env("KODO_OWNER", ctx.owner())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let w = write3.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, fcntl) run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let ok = if w == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(w, 3)
            };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(write3);
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("child exited at once"))?;
    Ok(Started {
        child,
        group: GroupGuard(pid as libc::pid_t),
        fd3: read3,
    })
}

/// Reads one line of at most `max` bytes (a longer line comes in pieces);
/// `None` at end of input.
pub async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<String>> {
    let max = max.max(1);
    let mut line = Vec::new();
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok((!line.is_empty()).then(|| text(line)));
        }
        let room = max - line.len();
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) if i <= room => {
                line.extend_from_slice(&buf[..i]);
                reader.consume(i + 1);
                return Ok(Some(text(line)));
            }
            _ => {
                let n = buf.len().min(room);
                line.extend_from_slice(&buf[..n]);
                reader.consume(n);
                if line.len() >= max {
                    return Ok(Some(text(line)));
                }
            }
        }
    }
}

fn text(mut bytes: Vec<u8>) -> String {
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
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
}

/// What a fd-3 line asks for.
#[derive(Debug, PartialEq)]
pub enum Fd3Request {
    /// Record an event.
    Emit(Kind, String),
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
pub fn parse_fd3(line: &str) -> Result<Fd3Request, String> {
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
    let kind: Kind = parsed.kind.parse().map_err(|e| format!("{e}"))?;
    if !kind.emittable_by_flow() {
        return Err(format!("a flow may not emit `{kind}` events"));
    }
    Ok(Fd3Request::Emit(kind, parsed.payload.to_string()))
}

async fn drive(started: Started, ctx: &Ctx, inputs: &Value) -> Outcome {
    let Started {
        mut child,
        group,
        fd3,
    } = started;
    let max = ctx.limits().max_payload;
    let stdin = Arc::new(tokio::sync::Mutex::new(child.stdin.take()));
    // The inputs go first: the stdin lock is taken here, before any lock
    // answer can queue for it; the write runs beside the rest, so a child
    // that never reads stdin can still be waited for and killed.
    let first = stdin.clone().lock_owned().await;
    let inputs_line = inputs.to_string();
    let inputs_writer = tokio::spawn(async move { write_to(first, &inputs_line).await });
    let last_result = Arc::new(Mutex::new(None::<String>));
    let mut readers = JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(pump_text(
            BufReader::new(out),
            ctx.clone(),
            Kind::Stdout,
            max,
        ));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(pump_text(
            BufReader::new(err),
            ctx.clone(),
            Kind::Stderr,
            max,
        ));
    }
    // Cancelled once the process is reaped: its open locks can no longer be answered.
    let exited = CancellationToken::new();
    match tokio::net::unix::pipe::Receiver::from_owned_fd(fd3) {
        Ok(rx) => {
            readers.spawn(pump_fd3(
                BufReader::new(rx),
                ctx.clone(),
                stdin.clone(),
                last_result.clone(),
                max,
                exited.clone(),
            ));
        }
        Err(e) => tracing::warn!(fid = %ctx.fid(), error = %e, "fd 3 unavailable"),
    }

    let status = tokio::select! {
        status = child.wait() => status,
        stop = ctx.stopped() => {
            tracing::info!(fid = %ctx.fid(), reason = %stop.reason, "stopping command flow");
            group.signal(libc::SIGTERM);
            match tokio::time::timeout(ctx.limits().kill_grace, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    group.signal(libc::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    // Whatever the leader left behind in its group goes too, so the pipes close.
    drop(group);
    inputs_writer.abort();
    exited.cancel();
    stdin.lock().await.take();
    let drained = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(fid = %ctx.fid(), "output still open after exit; stopped reading");
    }
    if let Some(stop) = ctx.stop_request() {
        return stop.outcome();
    }
    outcome(status, last_result.lock().expect("result lock").take())
}

fn outcome(status: std::io::Result<ExitStatus>, last_result: Option<String>) -> Outcome {
    match status {
        Err(e) => Outcome::Failed(format!("waiting for the process failed: {e}")),
        Ok(s) if s.success() => Outcome::Finished(last_result.unwrap_or_else(|| "null".into())),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => Outcome::Failed(format!("exited with code {code}")),
            (None, Some(sig)) => Outcome::Failed(format!("killed by signal {sig}")),
            _ => Outcome::Failed(format!("ended with {s}")),
        },
    }
}

async fn write_line(stdin: &Arc<tokio::sync::Mutex<Option<ChildStdin>>>, line: &str) {
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

async fn pump_text<R: AsyncBufRead + Unpin>(mut reader: R, ctx: Ctx, kind: Kind, max: usize) {
    loop {
        match next_line(&mut reader, max.saturating_sub(16)).await {
            Ok(Some(line)) => {
                if ctx.emit_json(kind, json_text(&line)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = ctx
                    .emit(Kind::Stderr, &format!("kodo: reading {kind} failed: {e}"))
                    .await;
                return;
            }
        }
    }
}

async fn pump_fd3<R: AsyncBufRead + Unpin>(
    mut reader: R,
    ctx: Ctx,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    last_result: Arc<Mutex<Option<String>>>,
    max: usize,
    exited: CancellationToken,
) {
    let mut locks = JoinSet::new();
    loop {
        let line = match next_line(&mut reader, max.saturating_sub(64)).await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => break,
        };
        if line.trim().is_empty() {
            continue;
        }
        let recorded = match parse_fd3(&line) {
            Ok(Fd3Request::Emit(kind, payload)) => {
                if kind == Kind::Result {
                    *last_result.lock().expect("result lock") = Some(payload.clone());
                }
                ctx.emit_json(kind, payload).await.map(|_| ())
            }
            Ok(Fd3Request::Lock {
                name,
                data,
                timeout,
            }) => {
                let (ctx, stdin) = (ctx.clone(), stdin.clone());
                let lid = uuid::Uuid::new_v4().to_string();
                locks.spawn(async move {
                    let reply = match ctx.lock_as(lid.clone(), &name, data, timeout).await {
                        Ok(answer) => json!({"lid": lid, "name": name, "answer": answer}),
                        Err(LockError::Expired { .. }) => {
                            json!({"lid": lid, "name": name, "error": "expired"})
                        }
                        Err(LockError::Trace(_) | LockError::InUse(_)) => return,
                    };
                    write_line(&stdin, &reply.to_string()).await;
                });
                Ok(())
            }
            Err(reason) => ctx
                .emit(
                    Kind::Stderr,
                    &format!("kodo: ignored invalid fd-3 line ({reason}): {line}"),
                )
                .await
                .map(|_| ()),
        };
        if recorded.is_err() {
            break;
        }
    }
    // Open locks live on until answered or expired, or until the process ends
    // (a child may close fd 3 and still wait on stdin for an answer).
    tokio::select! {
        _ = async { while locks.join_next().await.is_some() {} } => {}
        _ = exited.cancelled() => locks.shutdown().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_come_in_pieces_and_nothing_is_lost() {
        let data = b"short\r\n0123456789abcdef\nlast-without-newline".to_vec();
        let mut reader = BufReader::with_capacity(4, &data[..]);
        let mut lines = Vec::new();
        while let Some(line) = next_line(&mut reader, 10).await.unwrap() {
            lines.push(line);
        }
        assert_eq!(
            lines,
            ["short", "0123456789", "abcdef", "last-witho", "ut-newline"]
        );
        let bad = [0xff, 0xfe, b'o', b'k', b'\n'];
        let mut reader = BufReader::new(&bad[..]);
        assert_eq!(
            next_line(&mut reader, 64).await.unwrap().unwrap(),
            "\u{fffd}\u{fffd}ok"
        );
    }

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
        for (line, reason) in [
            ("not json", "expected"),
            (r#"{"kind":"final","payload":1}"#, "may not emit `final`"),
            (r#"{"kind":"nope"}"#, "unknown Kind `nope`"),
            (r#"{"kind":"lock"}"#, "needs a \"name\""),
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
