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

/// The longest one answer may take (the first includes importing the app).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

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

impl Host {
    async fn exchange(&mut self, request: &Value) -> Result<Value, String> {
        let line = format!("{request}\n");
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("its host process does not listen: {e}"))?;
        let answer = self
            .lines
            .next_line()
            .await
            .map_err(|e| format!("its host process: {e}"))?
            .ok_or("its host process exited (its traceback is in kodo's log)")?;
        serde_json::from_str(&answer).map_err(|e| format!("its host process answered {e}"))
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

    fn spawn(&self) -> Result<Host, String> {
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
        tracing::info!(flow = %self.flow, "kodosumi app host started");
        Ok(Host {
            _child: child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Asks the host (started, or started again once if it died).
    async fn ask(&self, request: Value) -> Result<Value, String> {
        let mut process = self.process.lock().await;
        let mut why = String::new();
        for _ in 0..2 {
            if process.is_none() {
                *process = Some(self.spawn()?);
            }
            let host = process.as_mut().expect("started above");
            match tokio::time::timeout(ANSWER_WITHIN, host.exchange(&request)).await {
                // An exception in the app's code, or its import failed (then
                // the process exits, and the next request starts another).
                Ok(Ok(answer)) => match answer.get("error").and_then(Value::as_str) {
                    Some(error) => return Err(error.to_string()),
                    None => return Ok(answer),
                },
                Ok(Err(e)) => {
                    tracing::warn!(flow = %self.flow, error = %e, "kodosumi app host failed");
                    *process = None;
                    why = e;
                }
                Err(_) => {
                    *process = None;
                    return Err(format!(
                        "its host process did not answer within {ANSWER_WITHIN:?}"
                    ));
                }
            }
        }
        Err(why)
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
