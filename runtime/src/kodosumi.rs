//! The form of a Kodosumi app flow (`kodosumi = "pkg.mod:app"`, `path`):
//! one long-lived Python process per flow (`python -m kodo.kodosumi.host`)
//! that imports the app once and answers, one request at a time, for its
//! form and for each launch (its `@app.enter` handler: `InputsError`, or
//! the `Launch` that decides the entry point and the inputs). It starts at
//! the first request and again after it died.

use kodo_actors::{Admission, Admitted, CommandSpec, Refused};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

/// The longest one answer may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// The longest the host may take to import the app (its first line).
const READY_WITHIN: Duration = Duration::from_secs(300);

/// A Kodosumi app's host process, started when first needed.
#[derive(Debug)]
pub struct KodosumiHost {
    flow: String,
    spec: CommandSpec,
    process: Mutex<Option<Host>>,
}

#[derive(Debug)]
struct Host {
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

/// Why an exchange with the host failed.
enum Failed {
    /// The request was not written: no handler ran, it may be sent again.
    NotSent(String),
    /// It was written, and then the host died or answered nonsense.
    Lost(String),
}

impl Host {
    async fn read(&mut self) -> Result<Value, String> {
        let answer = self
            .lines
            .next_line()
            .await
            .map_err(|e| format!("its host process: {e}"))?
            .ok_or("its host process exited (its traceback is in kodo's log)")?;
        serde_json::from_str(&answer)
            .map_err(|e| format!("its host process answered a line that is not JSON ({e})"))
    }

    async fn exchange(&mut self, request: &Value) -> Result<Value, Failed> {
        let line = format!("{request}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| Failed::NotSent(format!("its host process does not listen: {e}")))?;
        self.read().await.map_err(Failed::Lost)
    }
}

impl KodosumiHost {
    /// The host of flow `flow`: `spec` runs it (`PYTHON -m
    /// kodo.kodosumi.host TARGET --path PATH`, its environment and folder).
    pub fn new(flow: &str, spec: CommandSpec) -> Self {
        Self {
            flow: flow.to_string(),
            spec,
            process: Mutex::new(None),
        }
    }

    /// Starts the host and waits until it imported the app.
    async fn spawn(&self) -> Result<Host, String> {
        let (program, args) = self.spec.command.split_first().ok_or("no command")?;
        let mut cmd = Command::new(program);
        kodo_actors::keep_secrets_out(&mut cmd);
        cmd.args(args)
            .envs(&self.spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its tracebacks go to kodo's log.
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(dir) = &self.spec.cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {program:?}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut host = Host {
            _child: child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let ready = tokio::time::timeout(READY_WITHIN, host.read())
            .await
            .map_err(|_| {
                format!("its host process did not import the app within {READY_WITHIN:?}")
            })??;
        if let Some(error) = ready.get("error").and_then(Value::as_str) {
            return Err(error.to_string());
        }
        tracing::info!(flow = %self.flow, "kodosumi app host ready");
        Ok(host)
    }

    /// Asks the host (started first if need be). The host is out of its
    /// slot while it is asked: a request given up halfway (its caller went
    /// away) drops it, so no later request reads an answer meant for this
    /// one. A host that died before it read the request is started again
    /// once; one that died after is not asked again (the handler may have run).
    async fn ask(&self, request: Value) -> Result<Value, String> {
        let mut slot = self.process.lock().await;
        for _ in 0..2 {
            let mut host = match slot.take() {
                Some(host) => host,
                None => self.spawn().await?,
            };
            match tokio::time::timeout(ANSWER_WITHIN, host.exchange(&request)).await {
                Ok(Ok(answer)) => {
                    *slot = Some(host);
                    // An exception in the app's code (or an unknown request).
                    return match answer.get("error").and_then(Value::as_str) {
                        Some(error) => Err(error.to_string()),
                        None => Ok(answer),
                    };
                }
                Ok(Err(Failed::NotSent(e))) => {
                    tracing::warn!(flow = %self.flow, error = %e, "kodosumi app host gone; starting another");
                }
                Ok(Err(Failed::Lost(e))) => return Err(e),
                Err(_) => {
                    return Err(format!(
                        "its host process did not answer within {ANSWER_WITHIN:?}"
                    ));
                }
            }
        }
        Err("its host process keeps exiting (its traceback is in kodo's log)".into())
    }
}

#[async_trait::async_trait]
impl Admission for KodosumiHost {
    async fn form(&self) -> Result<Value, String> {
        let answer = self.ask(json!({"op": "form"})).await?;
        answer
            .get("form")
            .cloned()
            .ok_or_else(|| format!("its host process answered {answer}"))
    }

    async fn admit(&self, owner: &str, submitted: Value) -> Result<Admitted, Refused> {
        let request = json!({"op": "enter", "inputs": submitted, "user": owner});
        let answer = self.ask(request).await.map_err(Refused::Failed)?;
        if let Some(errors) = answer.get("errors") {
            return Err(Refused::Invalid(errors.clone()));
        }
        let launch = answer
            .get("launch")
            .ok_or_else(|| Refused::Failed(format!("its host process answered {answer}")))?;
        Ok(Admitted {
            inputs: launch.get("inputs").cloned().unwrap_or_else(|| json!({})),
            launch: Some(json!({"entry_point": launch["entry_point"]})),
        })
    }

    async fn answer(&self, name: &str, data: Value, answer: Value) -> Result<Value, Refused> {
        let request = json!({"op": "lease", "name": name, "data": data, "answer": answer});
        let reply = self.ask(request).await.map_err(Refused::Failed)?;
        if let Some(errors) = reply.get("errors") {
            return Err(Refused::Invalid(errors.clone()));
        }
        reply
            .get("result")
            .cloned()
            .ok_or_else(|| Refused::Failed(format!("its host process answered {reply}")))
    }
}
