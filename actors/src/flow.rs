//! Flows (what can be executed) and the context an execution runs with.

use crate::locks::{KeepError, Kept, LockKeeper};
use crate::steps::Steps;
use crate::tracer::{Outcome, Trace, TraceError, Tracer};
use futures::future::BoxFuture;
use kodo_core::{Fid, Kind, Status};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Any error a Rust flow returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a Rust flow returns: its final result, or why it failed.
pub type FlowResult = Result<Value, BoxError>;

/// A Rust flow: `async fn(ctx, inputs) -> Result<Value, _>`.
pub type RustFlow = Arc<dyn Fn(Ctx, Value) -> BoxFuture<'static, FlowResult> + Send + Sync>;

/// A command flow: a child process speaking kodo's line protocol
/// (`docs/protocol.md`).
#[derive(Clone, Default, PartialEq)]
pub struct CommandSpec {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the runtime's).
    pub cwd: Option<PathBuf>,
}

impl std::fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The names of the variables only: their values may be keys.
        f.debug_struct("CommandSpec")
            .field("command", &self.command)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .finish()
    }
}

/// How a flow runs.
#[derive(Clone)]
pub enum FlowKind {
    /// A child process.
    Command(CommandSpec),
    /// A Rust async function.
    Rust(RustFlow),
}

impl std::fmt::Debug for FlowKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Command(spec) => f.debug_tuple("Command").field(spec).finish(),
            Self::Rust(_) => f.write_str("Rust(..)"),
        }
    }
}

/// A named flow.
#[derive(Clone, Debug)]
pub struct FlowDef {
    /// Its name, as in `POST /flows/{name}/executions`.
    pub name: String,
    /// One line for `GET /flows`.
    pub description: String,
    /// How it runs.
    pub kind: FlowKind,
    /// Ends the execution with `error` when it runs longer.
    pub timeout: Option<Duration>,
    /// What happens to an execution its node left unfinished (direct mode).
    pub recover: Recover,
    /// How many runs a recovered execution gets in all, the first included
    /// (`recover = "resume"`); then it ends with `error` and the cause.
    pub attempts: u32,
    /// Its input form and the check of each launch (None: any object).
    pub admission: Option<crate::admission::SharedAdmission>,
}

/// What happens to an execution whose node died while it ran (direct mode;
/// durable mode retries on Temporal, replaying the journal either way).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Recover {
    /// It ends with `error: node restarted` (or `node lost`).
    #[default]
    Error,
    /// It runs again from the start with its journal of steps
    /// (see [`Ctx::step`]) when its node restarts.
    Resume,
}

/// Runs a resumed execution gets by default, the first included.
pub const DEFAULT_ATTEMPTS: u32 = 3;

impl FlowDef {
    /// A Rust flow from an async function or closure.
    pub fn rust<F, Fut>(name: &str, f: F) -> Self
    where
        F: Fn(Ctx, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = FlowResult> + Send + 'static,
    {
        Self {
            name: name.to_string(),
            description: String::new(),
            kind: FlowKind::Rust(Arc::new(move |ctx, inputs| Box::pin(f(ctx, inputs)))),
            timeout: None,
            recover: Recover::Error,
            attempts: DEFAULT_ATTEMPTS,
            admission: None,
        }
    }

    /// A command flow.
    pub fn command(name: &str, spec: CommandSpec) -> Self {
        Self {
            name: name.to_string(),
            description: String::new(),
            kind: FlowKind::Command(spec),
            timeout: None,
            recover: Recover::Error,
            attempts: DEFAULT_ATTEMPTS,
            admission: None,
        }
    }

    /// Sets the input form and the check of each launch.
    pub fn admit_with(mut self, admission: crate::admission::SharedAdmission) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Sets the description.
    pub fn describe(mut self, text: &str) -> Self {
        self.description = text.to_string();
        self
    }

    /// Sets the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets what happens when its node dies while it runs.
    pub fn recover(mut self, recover: Recover) -> Self {
        self.recover = recover;
        self
    }

    /// Sets how many runs a recovered execution gets in all (at least 1).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// "command" or "rust".
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            FlowKind::Command(_) => "command",
            FlowKind::Rust(_) => "rust",
        }
    }
}

/// The flows a node can run, by name.
#[derive(Clone, Debug, Default)]
pub struct Flows {
    map: BTreeMap<String, Arc<FlowDef>>,
}

impl Flows {
    /// Adds (or replaces) a flow.
    pub fn add(&mut self, flow: FlowDef) {
        self.map.insert(flow.name.clone(), Arc::new(flow));
    }

    /// A flow by name.
    pub fn get(&self, name: &str) -> Option<Arc<FlowDef>> {
        self.map.get(name).cloned()
    }

    /// All flows, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<FlowDef>> {
        self.map.values()
    }
}

/// Why and how an execution is being stopped from outside its flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Stop {
    /// `killed` for a kill or shutdown, `error` for a timeout or crash.
    pub status: Status,
    /// Why.
    pub reason: String,
    /// The node is shutting down (not a kill of this execution): a durable
    /// execution is left to go on elsewhere.
    pub node_stopping: bool,
}

impl Stop {
    /// A stop of this execution (a kill, a timeout, a crash).
    pub fn new(status: Status, reason: impl Into<String>) -> Self {
        Self {
            status,
            reason: reason.into(),
            node_stopping: false,
        }
    }

    /// The outcome a stopped execution ends with.
    pub fn outcome(&self) -> Outcome {
        if self.status == Status::Killed {
            Outcome::Killed(self.reason.clone())
        } else {
            Outcome::Failed(self.reason.clone())
        }
    }
}

/// Limits that apply to every execution of a node.
#[derive(Clone, Debug)]
pub struct ExecLimits {
    /// The largest event payload, in bytes (longer output lines are split).
    pub max_payload: usize,
    /// SIGTERM-to-SIGKILL grace period for command flows.
    pub kill_grace: Duration,
    /// How long a lock waits for its answer unless the flow says otherwise.
    pub lock_timeout: Duration,
}

/// A lock was not answered in time.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Nobody answered before the lock expired.
    #[error("lock {lid} ({name}) expired")]
    Expired {
        /// The lock.
        lid: String,
        /// Its name.
        name: String,
    },
    /// Its events could not be recorded.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The lock id chosen with [`Ctx::lock_as`] is open already.
    #[error(transparent)]
    InUse(#[from] crate::locks::LockInUse),
    /// Where locks are kept could not be reached (durable mode: Temporal).
    #[error("{0}")]
    Unavailable(String),
}

impl From<KeepError> for LockError {
    fn from(e: KeepError) -> Self {
        match e {
            KeepError::InUse(e) => LockError::InUse(e),
            KeepError::Unavailable(why) => LockError::Unavailable(why),
        }
    }
}

/// A lock whose `lock` event is recorded; [`PendingLock::answer`] waits
/// for the answer (or the expiry) and records the `lease`.
#[derive(Debug)]
pub struct PendingLock {
    ctx: Ctx,
    lid: String,
    name: String,
    kept: Kept,
}

impl PendingLock {
    /// The lock's id.
    pub fn lid(&self) -> &str {
        &self.lid
    }

    /// Waits for the answer given through the API, records the `lease` and
    /// returns the answer; after the lock's timeout, [`LockError::Expired`].
    pub async fn answer(mut self) -> Result<Value, LockError> {
        let (lid, name) = (self.lid, self.name);
        let tracer = &self.ctx.inner.tracer;
        let span = tracing::info_span!(parent: self.ctx.span(), "lock", lid, name);
        let wait = tokio::time::timeout(self.kept.wait, &mut self.kept.open.answer);
        match tracing::Instrument::instrument(wait, span).await {
            Ok(Ok(Some(answer))) => {
                let lease = json!({"lid": lid, "name": name, "result": answer});
                tracer.trace(Trace::Lease(lease.to_string())).await?;
                Ok(answer)
            }
            _ => {
                let lease = json!({"lid": lid, "name": name, "error": "expired"});
                tracer.trace(Trace::Lease(lease.to_string())).await?;
                Err(LockError::Expired { lid, name })
            }
        }
    }
}

struct CtxInner {
    fid: Fid,
    flow: String,
    owner: String,
    tracer: Arc<Tracer>,
    keeper: Arc<dyn LockKeeper>,
    /// Locks opened without a chosen id so far.
    locks_opened: AtomicU64,
    limits: ExecLimits,
    stop_token: CancellationToken,
    stop: Mutex<Option<Stop>>,
    attempt: u32,
    steps: Steps,
    /// Whether the execution is paused (durable mode).
    paused: watch::Sender<bool>,
    /// Its span (`execution`: fid, flow, owner, attempt, final status).
    span: tracing::Span,
    /// What it was launched with besides its inputs.
    origin: Origin,
    /// Its span's entry in the node's span book, while it runs.
    listed: Option<crate::spans::Listed>,
}

/// What a launch carries besides its inputs; kept in the execution's
/// `meta` event, so a run resumed after a crash gets it again.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Origin {
    /// The W3C `traceparent` its span is a child of: a launch's header, the
    /// launching node's span (durable mode), or the first run's (a resume).
    pub traceparent: Option<String>,
    /// What the flow's form decided at the launch (a Kodosumi app: the
    /// entry point its `Launch` named); a command flow gets it as
    /// `KODO_LAUNCH` (JSON).
    pub launch: Option<Value>,
    /// What the API that launched it keeps with it (a MIP-003 job).
    pub job: Option<Value>,
}

/// What a running execution is given: its identity, the Tracer's verbs,
/// locks, and the signal that it is being stopped.
#[derive(Clone)]
pub struct Ctx {
    inner: Arc<CtxInner>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("fid", self.fid())
            .field("flow", &self.flow())
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// A context for one execution.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        fid: Fid,
        flow: &str,
        owner: &str,
        tracer: Arc<Tracer>,
        keeper: Arc<dyn LockKeeper>,
        limits: ExecLimits,
        attempt: u32,
        steps: Steps,
    ) -> Self {
        let span = tracing::info_span!(
            "execution",
            fid = %fid,
            flow,
            owner,
            attempt,
            status = tracing::field::Empty,
        );
        Self {
            inner: Arc::new(CtxInner {
                span,
                origin: Origin::default(),
                listed: None,
                attempt,
                steps,
                fid,
                flow: flow.to_string(),
                owner: owner.to_string(),
                tracer,
                keeper,
                locks_opened: AtomicU64::new(0),
                paused: watch::Sender::new(false),
                limits,
                stop_token: CancellationToken::new(),
                stop: Mutex::new(None),
            }),
        }
    }

    /// The execution's id.
    pub fn fid(&self) -> &Fid {
        &self.inner.fid
    }

    /// The same context launched with `origin`: its span a child of the
    /// origin's `traceparent`. Call it before the context is shared.
    pub(crate) fn with_origin(mut self, origin: Origin) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("a context not shared yet");
        if let Some(parent) = &origin.traceparent {
            kodo_telemetry::set_parent(&inner.span, parent);
        }
        inner.origin = origin;
        self
    }

    /// What the flow's form decided at the launch (see [`Origin::launch`]).
    pub fn launch(&self) -> Option<&Value> {
        self.inner.origin.launch.as_ref()
    }

    /// What the API that launched it keeps with it (see [`Origin::job`]).
    pub fn job(&self) -> Option<&Value> {
        self.inner.origin.job.as_ref()
    }

    /// The same context, its span listed in `book` (for the commit spans'
    /// links). Call it before the context is shared.
    pub(crate) fn listed_in(mut self, book: &Arc<crate::spans::SpanBook>) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("a context not shared yet");
        inner.listed = book.list(&inner.fid, &inner.span);
        self
    }

    /// The execution's span: its flow's work, locks and kill are its children.
    pub fn span(&self) -> &tracing::Span {
        &self.inner.span
    }

    /// What a command flow gets as `TRACEPARENT`: the execution span's
    /// context, or (traces off) the one it was launched with.
    pub fn traceparent(&self) -> Option<String> {
        kodo_telemetry::traceparent(&self.inner.span)
            .or_else(|| self.inner.origin.traceparent.clone())
    }

    /// The flow's name.
    pub fn flow(&self) -> &str {
        &self.inner.flow
    }

    /// Who launched it.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Which attempt this is: 1, or more when a durable execution was
    /// retried after its worker was lost (the flow starts again).
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The node's limits.
    pub fn limits(&self) -> &ExecLimits {
        &self.inner.limits
    }

    /// Its steps: the journal of earlier attempts, and those taken now.
    pub(crate) fn steps(&self) -> &Steps {
        &self.inner.steps
    }

    /// Records an event of `kind` with a serializable payload; returns its seq
    /// once the transport accepted it (waits while the transport is full).
    pub async fn emit(&self, kind: Kind, payload: &impl Serialize) -> Result<u64, TraceError> {
        let payload =
            serde_json::to_string(payload).map_err(|e| TraceError::NotJson(e.to_string()))?;
        self.emit_json(kind, payload).await
    }

    /// Records an event whose payload is already JSON text (while the
    /// execution is paused, waits until it is resumed).
    pub async fn emit_json(&self, kind: Kind, payload: String) -> Result<u64, TraceError> {
        self.unpaused().await;
        self.inner.tracer.trace(Trace::Emit { kind, payload }).await
    }

    /// A `debug` event.
    pub async fn debug(&self, text: &str) -> Result<u64, TraceError> {
        self.emit(Kind::Debug, &text).await
    }

    /// A `result` event (an intermediate result).
    pub async fn result(&self, value: &impl Serialize) -> Result<u64, TraceError> {
        self.emit(Kind::Result, value).await
    }

    /// An `action` event.
    pub async fn action(&self, value: &impl Serialize) -> Result<u64, TraceError> {
        self.emit(Kind::Action, value).await
    }

    /// A `result` event holding markdown text (`{"markdown": text}`).
    pub async fn markdown(&self, text: &str) -> Result<u64, TraceError> {
        self.emit(Kind::Result, &json!({ "markdown": text })).await
    }

    /// Asks a person: emits a `lock` (status `awaiting`), waits for the answer
    /// given through the API, emits the `lease` and returns the answer. After
    /// `timeout` (default: the node's lock timeout) the lock expires and this
    /// returns [`LockError::Expired`].
    pub async fn lock(
        &self,
        name: &str,
        data: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, LockError> {
        self.lock_as(self.next_lock_id(), name, data, timeout).await
    }

    /// [`Ctx::lock`] with a lock id chosen by the caller; an id that is open
    /// already is refused with [`LockError::InUse`].
    pub async fn lock_as(
        &self,
        lid: String,
        name: &str,
        data: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, LockError> {
        self.open_lock(lid, name, data, timeout)
            .await?
            .answer()
            .await
    }

    /// Opens a lock and records its `lock` event (status `awaiting`);
    /// [`PendingLock::answer`] then waits for the answer. Two steps, so a
    /// caller can record what follows the lock while it waits.
    pub async fn open_lock(
        &self,
        lid: String,
        name: &str,
        data: Value,
        timeout: Option<Duration>,
    ) -> Result<PendingLock, LockError> {
        self.unpaused().await;
        let wait = timeout.unwrap_or(self.inner.limits.lock_timeout);
        let kept = self.inner.keeper.open(&self.inner.fid, &lid, wait).await?;
        // Only the text is kept: a JSON value held here would live as long as the wait.
        let lock =
            json!({"lid": lid, "name": name, "data": data, "expires": kept.expires}).to_string();
        self.inner.tracer.trace(Trace::Lock(lock)).await?;
        Ok(PendingLock {
            ctx: self.clone(),
            lid,
            name: name.to_string(),
            kept,
        })
    }

    /// A fresh id for a lock the flow opens without choosing one (the
    /// `n`th lock gets the same id in every attempt of a durable execution).
    pub fn next_lock_id(&self) -> String {
        let n = self.inner.locks_opened.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.keeper.lock_id(&self.inner.fid, n)
    }

    /// Pauses the execution (durable mode): records `status: paused`; from
    /// then on its `ctx` calls wait, and a command flow's process group is
    /// stopped. Pausing a paused execution does nothing.
    pub async fn pause(&self) -> Result<(), TraceError> {
        if self.inner.paused.send_replace(true) {
            return Ok(());
        }
        let traced = self.inner.tracer.trace(Trace::Pause).await.map(drop);
        if traced.is_err() {
            // Not recorded (it ended, or the transport refused): not held.
            self.inner.paused.send_replace(false);
        }
        traced
    }

    /// Resumes a paused execution: records its status and lets it go on.
    pub async fn resume(&self) -> Result<(), TraceError> {
        if !*self.inner.paused.borrow() {
            return Ok(());
        }
        let traced = self.inner.tracer.trace(Trace::Resume).await.map(drop);
        self.inner.paused.send_replace(false);
        traced
    }

    /// Whether the execution is paused.
    pub fn is_paused(&self) -> bool {
        *self.inner.paused.borrow()
    }

    /// Follows the paused state (true: paused).
    pub fn pause_changes(&self) -> watch::Receiver<bool> {
        self.inner.paused.subscribe()
    }

    /// Returns once the execution is not paused, or is being stopped.
    pub async fn unpaused(&self) {
        let mut paused = self.inner.paused.subscribe();
        tokio::select! {
            _ = paused.wait_for(|p| !p) => {}
            _ = self.inner.stop_token.cancelled() => {}
        }
    }

    /// Asks the execution to stop; the first request wins.
    pub fn stop(&self, stop: Stop) {
        let mut current = self.inner.stop.lock().expect("stop lock");
        match current.as_ref() {
            None => {
                *current = Some(stop);
                self.inner.stop_token.cancel();
            }
            // A kill while the node stops it: the kill is its end (and it
            // is not left to resume).
            Some(first) if first.node_stopping && !stop.node_stopping => *current = Some(stop),
            Some(_) => {}
        }
    }

    /// Resolves once the execution is asked to stop, with why.
    pub async fn stopped(&self) -> Stop {
        self.inner.stop_token.cancelled().await;
        self.stop_request().expect("set before cancel")
    }

    /// The stop request, if any.
    pub fn stop_request(&self) -> Option<Stop> {
        self.inner.stop.lock().expect("stop lock").clone()
    }

    /// The execution's Tracer.
    pub fn tracer(&self) -> &Arc<Tracer> {
        &self.inner.tracer
    }
}
