//! Command flows: a child process in its own process group, speaking kodo's
//! line protocol.
//!
//! - stdin: the inputs as one JSON line, then one JSON line per lock answer
//!   (`{"lid":..,"answer":..}`, or `{"lid":..,"error":"expired"}`).
//! - stdout / stderr: each line becomes a `stdout` / `stderr` event.
//! - fd 3: JSON lines `{"kind":"result","payload":...}` for any kind a flow may
//!   emit, or `{"kind":"lock","name":..,"data":..,"timeout":secs}`. A line
//!   that is not valid (or too large to be one event) is stored as a
//!   `stderr` warning followed by its text, never a crash.
//! - exit 0: `final` with the last `result` payload (or null); otherwise `error`,
//!   with the last line the flow wrote to stderr.
//!
//! Every byte a flow writes is stored: lines are split into events that fit
//! the payload limit once JSON-escaped, and the pipes are read for as long
//! as the flow runs, whatever it writes. One task reads all three pipes;
//! before it records an fd-3 line it records the complete stdout and stderr
//! lines already written, so a line printed before a lock is stored before it.

use crate::flow::{CommandSpec, Ctx, LockError};
use crate::orphans;
use crate::output::{Piece, PipeReader, json_pieces};
use crate::tracer::{Outcome, Trace};
use kodo_core::Kind;
use serde::Deserialize;
use serde_json::{Value, json};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long, in all, kodo waits for output after the process group is gone
/// (the pipes close at once unless a process outside the group holds them).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);
/// How much more than the pipes held at the exit kodo reads after it (from
/// processes that left the group and still write).
const AFTER_EXIT_SLACK: u64 = 1 << 20;

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

/// Kills the whole process group when dropped (a crashed Runner leaves no
/// orphans); while it lives, the watchdog kills the group if this process
/// dies (see [`crate::orphans`]).
struct GroupGuard {
    pgid: libc::pid_t,
    _watched: Option<orphans::Watched>,
}

impl GroupGuard {
    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with a negative pid signals the group we created; no memory is touched.
        unsafe {
            libc::kill(-self.pgid, signal);
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
    let pipe = |fd: std::io::Result<OwnedFd>, max: usize, name: &str| match fd
        .and_then(|fd| PipeReader::new(fd, max))
    {
        Ok(reader) => Some(reader),
        Err(e) => {
            tracing::warn!(fid = %ctx.fid(), error = %e, "{name} unavailable");
            None
        }
    };
    let text_max = max.saturating_sub(2);
    let pipes = Pipes {
        out: child
            .stdout
            .take()
            .and_then(|p| pipe(p.into_owned_fd(), text_max, "stdout")),
        err: child
            .stderr
            .take()
            .and_then(|p| pipe(p.into_owned_fd(), text_max, "stderr")),
        fd3: pipe(Ok(fd3), max + FD3_ENVELOPE, "fd 3"),
    };
    // Cancelled once the process is reaped: its open locks can no longer be answered.
    let exited = CancellationToken::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let pump = Pump {
        ctx: ctx.clone(),
        max,
        stdin: stdin.clone(),
        seen: seen.clone(),
        exited: exited.clone(),
        locks: JoinSet::new(),
        oversized: false,
        refused: false,
    };
    let reader = tokio::spawn(pump.run(pipes));

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

/// Room for what surrounds a payload on an fd-3 line (`{"kind":..,"payload":..}`,
/// a lock's name and data).
const FD3_ENVELOPE: usize = 64 * 1024;
/// The longest stderr line kept for an error message.
const LAST_STDERR_CHARS: usize = 500;

/// A flow's three output pipes (`None` once closed).
struct Pipes {
    out: Option<PipeReader>,
    err: Option<PipeReader>,
    fd3: Option<PipeReader>,
}

impl Pipes {
    fn open(&self) -> impl Iterator<Item = &PipeReader> {
        [&self.out, &self.err, &self.fd3].into_iter().flatten()
    }

    /// Bytes read from all pipes so far.
    fn read_bytes(&self) -> u64 {
        self.open().map(PipeReader::read_bytes).sum()
    }

    /// Bytes the pipes hold now, not read yet.
    fn held(&self) -> u64 {
        self.open().map(|p| p.held().unwrap_or(0) as u64).sum()
    }
}

/// What the reader saw that decides the outcome.
#[derive(Default)]
struct Seen {
    /// The payload of the last `result` event.
    last_result: Option<String>,
    /// The last non-empty line of stderr (cut to [`LAST_STDERR_CHARS`]).
    last_stderr: String,
}

/// Reads a flow's pipes into its events.
struct Pump {
    ctx: Ctx,
    max: usize,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    seen: Arc<Mutex<Seen>>,
    exited: CancellationToken,
    locks: JoinSet<()>,
    /// Inside an fd-3 line too long to be an event: its parts are text.
    oversized: bool,
    /// Recording was refused once (the execution ended): said so in the log.
    refused: bool,
}

/// The next piece of a pipe that is open (never resolves for a closed one).
async fn next(pipe: &mut Option<PipeReader>) -> Read {
    match pipe {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

type Read = std::io::Result<Option<Piece>>;

/// What the reader woke up for.
enum Ready {
    Out(Read),
    Err(Read),
    Fd3(Read),
    /// The flow's process group is gone.
    Exited,
    /// No output for all the patience left after the exit.
    Silent,
    /// Stopped (killed, timed out) after the exit.
    Stopped,
}

impl Pump {
    async fn run(mut self, mut pipes: Pipes) {
        let exited = self.exited.clone();
        // Once the flow's process group is gone: how far reading may go
        // (what the pipes held then, and a little more from processes that
        // escaped the group), how long it may still wait for output (time
        // spent recording does not count: a slow store is waited for), and
        // whether a stop came before the exit.
        let mut after_exit: Option<(u64, Duration, bool)> = None;
        while pipes.out.is_some() || pipes.err.is_some() || pipes.fd3.is_some() {
            if let Some((limit, _, _)) = after_exit
                && pipes.read_bytes() > limit
            {
                self.give_up("keeps writing");
                break;
            }
            let waiting = tokio::time::Instant::now();
            let patience = after_exit.map_or(DRAIN_AFTER_EXIT, |(_, left, _)| left);
            let ready = tokio::select! {
                read = next(&mut pipes.out), if pipes.out.is_some() => Ready::Out(read),
                read = next(&mut pipes.err), if pipes.err.is_some() => Ready::Err(read),
                read = next(&mut pipes.fd3), if pipes.fd3.is_some() => Ready::Fd3(read),
                _ = exited.cancelled(), if after_exit.is_none() => Ready::Exited,
                _ = tokio::time::sleep(patience), if after_exit.is_some() => Ready::Silent,
                _ = self.ctx.stopped(), if after_exit.is_some_and(|(_, _, stopped)| !stopped) => {
                    Ready::Stopped
                }
            };
            if let Some((_, left, _)) = after_exit.as_mut() {
                *left = left.saturating_sub(waiting.elapsed());
            }
            match ready {
                Ready::Out(read) => {
                    self.text(Kind::Stdout, read, &mut pipes.out).await;
                    self.buffered(Kind::Stdout, &mut pipes.out).await;
                }
                Ready::Err(read) => {
                    self.text(Kind::Stderr, read, &mut pipes.err).await;
                    self.buffered(Kind::Stderr, &mut pipes.err).await;
                }
                Ready::Fd3(read) => {
                    self.catch_up(&mut pipes).await;
                    self.fd3(read, &mut pipes.fd3).await;
                }
                Ready::Exited => {
                    let limit = pipes.read_bytes() + pipes.held() + AFTER_EXIT_SLACK;
                    let stopped = self.ctx.stop_request().is_some();
                    after_exit = Some((limit, DRAIN_AFTER_EXIT, stopped));
                }
                Ready::Silent => {
                    self.give_up("holds it open");
                    break;
                }
                // A kill or a timeout after the exit ends the reading too.
                Ready::Stopped => break,
            }
        }
        // Open locks live on until answered or expired, or until the process
        // ends (a child may close fd 3 and still wait on stdin for an answer).
        tokio::select! {
            _ = async { while self.locks.join_next().await.is_some() {} } => {}
            _ = self.exited.cancelled() => self.locks.shutdown().await,
        }
    }

    fn give_up(&self, why: &str) {
        tracing::warn!(
            fid = %self.ctx.fid(),
            "the flow's output stays open after its process group ended: a process outside the group {why}; stopped reading"
        );
    }

    /// Records the complete stdout and stderr lines already written: what
    /// the pipes hold now, read for real, without waiting for more.
    async fn catch_up(&mut self, pipes: &mut Pipes) {
        self.catch_up_on(Kind::Stdout, &mut pipes.out).await;
        self.catch_up_on(Kind::Stderr, &mut pipes.err).await;
    }

    async fn catch_up_on(&mut self, kind: Kind, pipe: &mut Option<PipeReader>) {
        let Some(reader) = pipe else {
            return;
        };
        match reader.catch_up() {
            Ok(()) => self.buffered(kind, pipe).await,
            Err(e) => self.text(kind, Err(e), pipe).await,
        }
    }

    /// Records the complete pieces already read from a pipe (never waits
    /// for the pipe itself).
    async fn buffered(&mut self, kind: Kind, pipe: &mut Option<PipeReader>) {
        while let Some(piece) = pipe.as_mut().and_then(PipeReader::ready) {
            self.text(kind, Ok(Some(piece)), pipe).await;
        }
    }

    /// A piece of stdout or stderr becomes events; the end of the pipe
    /// closes it.
    async fn text<R>(&mut self, kind: Kind, read: Read, pipe: &mut Option<R>) {
        match read {
            Ok(Some(piece)) => {
                if kind == Kind::Stderr && !piece.text().trim().is_empty() {
                    let line: String = piece
                        .text()
                        .trim()
                        .chars()
                        .take(LAST_STDERR_CHARS)
                        .collect();
                    self.seen.lock().expect("seen lock").last_stderr = line;
                }
                self.record_text(kind, piece.text()).await;
            }
            Ok(None) => *pipe = None,
            Err(e) => {
                self.record_text(Kind::Stderr, &format!("kodo: reading {kind} failed: {e}"))
                    .await;
                *pipe = None;
            }
        }
    }

    /// A piece of fd 3: an event or a lock, or (invalid, too large) a
    /// warning with the line's text.
    async fn fd3<R>(&mut self, read: Read, pipe: &mut Option<R>) {
        let piece = match read {
            Ok(Some(piece)) => piece,
            Ok(None) | Err(_) => {
                *pipe = None;
                return;
            }
        };
        let line = match piece {
            Piece::Part(text) => {
                if !self.oversized {
                    self.oversized = true;
                    let limit = self.max + FD3_ENVELOPE;
                    let warning =
                        format!("kodo: ignored an fd-3 line longer than {limit} bytes: {text}");
                    self.record_text(Kind::Stderr, &warning).await;
                } else {
                    self.record_text(Kind::Stderr, &text).await;
                }
                return;
            }
            Piece::Line(text) if self.oversized => {
                self.oversized = false;
                self.record_text(Kind::Stderr, &text).await;
                return;
            }
            Piece::Line(text) => text,
        };
        if line.trim().is_empty() {
            return;
        }
        match parse_fd3(&line) {
            Ok(Fd3Request::Emit(_, payload)) if payload.len() > self.max => {
                let warning = format!(
                    "kodo: ignored an fd-3 line (a payload of {} bytes exceeds the limit of {}): {line}",
                    payload.len(),
                    self.max
                );
                self.record_text(Kind::Stderr, &warning).await;
            }
            Ok(Fd3Request::Emit(kind, payload)) => {
                if kind == Kind::Result {
                    self.seen.lock().expect("seen lock").last_result = Some(payload.clone());
                }
                self.record(kind, payload).await;
            }
            Ok(Fd3Request::Lock {
                name,
                data,
                timeout,
            }) => {
                // The lock event is recorded here, in the pipe's order; only
                // the wait for its answer runs beside the reading.
                let lid = uuid::Uuid::new_v4().to_string();
                let pending = match self.ctx.open_lock(lid.clone(), &name, data, timeout).await {
                    Ok(pending) => pending,
                    Err(e) => {
                        tracing::debug!(fid = %self.ctx.fid(), error = %e, "lock not opened");
                        return;
                    }
                };
                let stdin = self.stdin.clone();
                self.locks.spawn(async move {
                    let reply = match pending.answer().await {
                        Ok(answer) => json!({"lid": lid, "name": name, "answer": answer}),
                        Err(LockError::Expired { .. }) => {
                            json!({"lid": lid, "name": name, "error": "expired"})
                        }
                        Err(LockError::Trace(_) | LockError::InUse(_)) => return,
                    };
                    write_line(&stdin, &reply.to_string()).await;
                });
            }
            Err(reason) => {
                let warning = format!("kodo: ignored invalid fd-3 line ({reason}): {line}");
                self.record_text(Kind::Stderr, &warning).await;
            }
        }
    }

    /// Records text as events of `kind`, in as many pieces as the limit needs.
    async fn record_text(&mut self, kind: Kind, text: &str) {
        for payload in json_pieces(text, self.max) {
            self.record(kind, payload).await;
        }
    }

    /// Records one event. A refusal (the execution has ended, the node is
    /// stopping) is logged once; reading goes on, so the flow never blocks
    /// on a full pipe.
    async fn record(&mut self, kind: Kind, payload: String) {
        if let Err(e) = self.ctx.emit_json(kind, payload).await
            && !self.refused
        {
            self.refused = true;
            tracing::debug!(fid = %self.ctx.fid(), error = %e, "output no longer recorded; still reading");
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
