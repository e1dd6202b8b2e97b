//! The reader of a command flow's output: one task reads its stdout, stderr
//! and fd 3 into events (the protocol: `docs/protocol.md`).
//!
//! - Every byte is stored: pieces that fit the payload limit once escaped
//!   ([`crate::output`]); reading goes on whatever the flow writes, and a
//!   refused event (the execution ended) never stops it.
//! - Before it records an fd-3 line it records the complete stdout and
//!   stderr lines already written (a print before a lock is stored first).
//! - After the flow's process group is gone, what the pipes hold is still
//!   stored, however long the store takes; a process that left the group
//!   and keeps them open is given [`DRAIN_AFTER_EXIT`] of waiting, or
//!   [`AFTER_EXIT_SLACK`] more bytes.

use crate::command::{Fd3Request, parse_fd3, write_line};
use crate::flow::{Ctx, LockError};
use crate::output::{Piece, PipeReader, json_pieces};
use kodo_core::Kind;
use serde_json::{Value, json};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long, in all, kodo waits for output after the process group is gone
/// (the pipes close at once unless a process outside the group holds them).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);
/// How much more than the pipes held at the exit kodo reads after it (from
/// processes that left the group and still write).
const AFTER_EXIT_SLACK: u64 = 1 << 20;

/// Room for what surrounds a payload on an fd-3 line (`{"kind":..,"payload":..}`,
/// a lock's name and data).
const FD3_ENVELOPE: usize = 64 * 1024;
/// The longest stderr line kept for an error message.
const LAST_STDERR_CHARS: usize = 500;

/// A flow's three output pipes (`None` once closed).
pub(crate) struct Pipes {
    out: Option<PipeReader>,
    err: Option<PipeReader>,
    fd3: Option<PipeReader>,
}

impl Pipes {
    /// The pipes of a flow just started (one that cannot be read is logged
    /// and left out).
    pub(crate) fn open(
        ctx: &Ctx,
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
        fd3: OwnedFd,
    ) -> Self {
        let max = ctx.limits().max_payload;
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
        Self {
            out: stdout.and_then(|p| pipe(p.into_owned_fd(), text_max, "stdout")),
            err: stderr.and_then(|p| pipe(p.into_owned_fd(), text_max, "stderr")),
            fd3: pipe(Ok(fd3), max + FD3_ENVELOPE, "fd 3"),
        }
    }

    fn readers(&self) -> impl Iterator<Item = &PipeReader> {
        [&self.out, &self.err, &self.fd3].into_iter().flatten()
    }

    /// Bytes read from all pipes so far.
    fn read_bytes(&self) -> u64 {
        self.readers().map(PipeReader::read_bytes).sum()
    }

    /// Bytes the pipes hold now, not read yet.
    fn held(&self) -> u64 {
        self.readers().map(|p| p.held().unwrap_or(0) as u64).sum()
    }
}

/// What the reader saw that decides the outcome.
#[derive(Default)]
pub(crate) struct Seen {
    /// The payload of the last `result` event.
    pub(crate) last_result: Option<String>,
    /// The last non-empty line of stderr (cut to [`LAST_STDERR_CHARS`]).
    pub(crate) last_stderr: String,
}

/// Reads a flow's pipes into its events.
pub(crate) struct Pump {
    ctx: Ctx,
    max: usize,
    stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
    seen: Arc<Mutex<Seen>>,
    exited: CancellationToken,
    /// What answers on stdin once it happens: lock answers, stored steps.
    waits: JoinSet<()>,
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
    /// A reader for the execution of `ctx`, answering locks on `stdin`,
    /// noting what decides the outcome in `seen`; `exited` is cancelled
    /// once the flow's process group is gone.
    pub(crate) fn new(
        ctx: &Ctx,
        stdin: Arc<tokio::sync::Mutex<Option<ChildStdin>>>,
        seen: Arc<Mutex<Seen>>,
        exited: CancellationToken,
    ) -> Self {
        Self {
            ctx: ctx.clone(),
            max: ctx.limits().max_payload,
            stdin,
            seen,
            exited,
            waits: JoinSet::new(),
            oversized: false,
            refused: false,
        }
    }

    /// Reads until the pipes close (or are given up after the exit), then
    /// waits for the open locks while the process lives.
    pub(crate) async fn run(mut self, mut pipes: Pipes) {
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
            _ = async { while self.waits.join_next().await.is_some() {} } => {}
            _ = self.exited.cancelled() => self.waits.shutdown().await,
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
                    if looks_like_step(&text) {
                        let why = format!("kodo: ignored an fd-3 line longer than {limit} bytes");
                        self.refuse_step(Value::Null, &why).await;
                    }
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
            Ok(Fd3Request::Step { name, n, result }) => {
                // Published here, in the pipe's order; the flow hears once
                // it is stored (it waits for that line before going on).
                match self.ctx.record_step(&name, n, &result).await {
                    Ok(journaling) => {
                        let (ctx, stdin) = (self.ctx.clone(), self.stdin.clone());
                        self.waits.spawn(async move {
                            let n = journaling.n;
                            ctx.until_journaled(journaling).await;
                            let reply = json!({"step": name, "n": n, "stored": true});
                            write_line(&stdin, &reply.to_string()).await;
                        });
                    }
                    Err(e) => {
                        let reply = json!({"step": name, "error": e.to_string()});
                        write_line(&self.stdin, &reply.to_string()).await;
                    }
                }
            }
            Ok(Fd3Request::Lock {
                name,
                data,
                timeout,
            }) => {
                // The lock event is recorded here, in the pipe's order; only
                // the wait for its answer runs beside the reading.
                let lid = self.ctx.next_lock_id();
                let pending = match self.ctx.open_lock(lid.clone(), &name, data, timeout).await {
                    Ok(pending) => pending,
                    // Where locks are kept is down: the flow hears it at once
                    // (in the answer's place) rather than waiting for nothing.
                    Err(e @ LockError::Unavailable(_)) => {
                        let reply = json!({"lid": lid, "name": name, "error": e.to_string()});
                        write_line(&self.stdin, &reply.to_string()).await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(fid = %self.ctx.fid(), error = %e, "lock not opened");
                        return;
                    }
                };
                let stdin = self.stdin.clone();
                self.waits.spawn(async move {
                    let reply = match pending.answer().await {
                        Ok(answer) => json!({"lid": lid, "name": name, "answer": answer}),
                        Err(LockError::Expired { .. }) => {
                            json!({"lid": lid, "name": name, "error": "expired"})
                        }
                        Err(
                            LockError::Trace(_) | LockError::InUse(_) | LockError::Unavailable(_),
                        ) => return,
                    };
                    write_line(&stdin, &reply.to_string()).await;
                });
            }
            Err(reason) => {
                let warning = format!("kodo: ignored invalid fd-3 line ({reason}): {line}");
                self.record_text(Kind::Stderr, &warning).await;
                if let Some(name) = step_name(&line) {
                    self.refuse_step(name, &warning).await;
                }
            }
        }
    }

    /// Tells a flow waiting for its step to be journaled that it was not.
    async fn refuse_step(&self, name: Value, why: &str) {
        let reply = json!({"step": name, "error": why});
        write_line(&self.stdin, &reply.to_string()).await;
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

/// The name of the step an invalid fd-3 line was meant to journal (null
/// when it has none), or None when the line is no step.
fn step_name(line: &str) -> Option<Value> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(o)) if o.get("kind") == Some(&Value::from("step")) => {
            Some(o.get("name").cloned().unwrap_or(Value::Null))
        }
        Ok(_) => None,
        Err(_) => looks_like_step(line).then_some(Value::Null),
    }
}

/// Whether the start of a line that is no JSON object reads like a step.
fn looks_like_step(text: &str) -> bool {
    text.contains(r#""kind":"step""#) || text.contains(r#""kind": "step""#)
}
