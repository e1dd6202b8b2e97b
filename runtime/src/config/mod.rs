//! `kodo.toml`: the runtime's configuration, with `KODO_*` overrides.
//!
//! Every key of the fixed sections can be overridden by an environment
//! variable named `KODO_<SECTION>_<KEY>` in upper case (`KODO_API_LISTEN`,
//! `KODO_STORE_URL`, ...). Unknown keys and bad values are errors that name
//! the key and the file (or the variable).

//!
//! The modules: [`schema`] (the sections and their defaults), `env` (the
//! `KODO_*` overlay), `validate` (values that parse but cannot work). Turning
//! a config into a running node is [`crate::wiring`]'s.

mod env;
pub mod schema;
#[cfg(test)]
mod tests;
mod validate;

pub use schema::*;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

/// A configuration that cannot be used; `runtime` exits with code 2.
#[derive(Debug, PartialEq, thiserror::Error)]
#[error("{source_name}: {key}: {message}")]
pub struct ConfigError {
    /// The file or environment variable at fault.
    pub source_name: String,
    /// The key at fault (dotted path), or `-` for the whole file.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What loading noticed and ignored (a `KODO_*` variable that names no
    /// key); `runtime` logs these once logging runs.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// This node.
    pub node: NodeSection,
    /// The HTTP API.
    pub api: ApiSection,
    /// The metrics listener.
    pub metrics: MetricsSection,
    /// OpenTelemetry traces.
    pub telemetry: TelemetrySection,
    /// Where executions and events are kept.
    pub store: StoreSection,
    /// How events travel from Tracers to Spoolers.
    pub transport: TransportSection,
    /// Nodes over one Redis: leases and takeover.
    pub cluster: ClusterSection,
    /// How Spoolers batch.
    pub spooler: SpoolerSection,
    /// Bounds on executions.
    pub limits: LimitsSection,
    /// Log output.
    pub log: LogSection,
    /// Who may call the API.
    pub auth: AuthSection,
    /// How executions run: here, or durably on Temporal.
    pub execution: ExecutionSection,
    /// The Temporal server, for `execution.mode = "temporal"`.
    pub temporal: TemporalSection,
    /// The command flows, by name.
    pub flows: BTreeMap<String, FlowSection>,
}

impl Config {
    /// Reads `path` (or only defaults when `path` is None) and applies `env`.
    /// Relative paths in the file mean the same wherever `runtime` starts:
    /// relative to the file's folder (a SQLite `store.url`, a flow's `cwd`,
    /// which is that folder when not given). A relative path in a `KODO_*`
    /// variable is relative to the working directory, as in any shell.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (name, text) = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(text) => (p.display().to_string(), text),
                Err(e) => {
                    return Err(ConfigError {
                        source_name: p.display().to_string(),
                        key: "-".into(),
                        message: format!("cannot read: {e}"),
                    });
                }
            },
            None => ("(defaults)".to_string(), String::new()),
        };
        let (mut config, from_env) = Self::parse_sourced(&name, &text, env)?;
        if let Some(dir) = path.and_then(Path::parent) {
            // `--config kodo.toml` has the parent "": the working directory.
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
            for flow in config.flows.values_mut() {
                flow.cwd = Some(match &flow.cwd {
                    Some(cwd) => dir.join(cwd),
                    None => dir.clone(),
                });
                for folder in &mut flow.pythonpath {
                    *folder = dir.join(&*folder);
                }
            }
            if !from_env.contains_key("store.url") {
                config.store.url = sqlite_relative_to(&config.store.url, &dir);
            }
        }
        Ok(config)
    }

    /// Parses config text named `name`, applies `env` overrides and validates.
    pub fn parse(
        name: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Self::parse_sourced(name, text, env).map(|(config, _)| config)
    }

    /// [`Config::parse`], also returning which keys variables set (key -> variable).
    fn parse_sourced(
        name: &str,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, BTreeMap<String, String>), ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            source_name: name.to_string(),
            key: "-".into(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let (from_env, warnings) = env::apply_env(&mut table, env)?;
        // An error in a key a variable set names the variable, not the file.
        let err = |key: &str, message: String| ConfigError {
            source_name: from_env
                .get(key)
                .cloned()
                .unwrap_or_else(|| name.to_string()),
            key: key.to_string(),
            message,
        };
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let message = e.into_inner().to_string();
                err(
                    &key,
                    message.lines().next().unwrap_or("").trim().to_string(),
                )
            })?;
        config
            .validate()
            .map_err(|(key, message)| err(&key, message))?;
        config.warnings = warnings;
        Ok((config, from_env))
    }

    /// The socket address of the API.
    pub fn listen(&self) -> SocketAddr {
        self.api.listen.parse().expect("validated")
    }
}

/// `sqlite://PATH` with a relative PATH made relative to `dir` (other URLs as they are).
fn sqlite_relative_to(url: &str, dir: &Path) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url.to_string();
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, format!("?{query}")),
        None => (rest, String::new()),
    };
    if path.is_empty() || path.contains(":memory:") || Path::new(path).is_absolute() {
        return url.to_string();
    }
    let path: std::path::PathBuf = Path::new(path)
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    format!("sqlite://{}{query}", dir.join(path).display())
}
