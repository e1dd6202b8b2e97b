//! `kodo.toml`: the runtime's configuration, with `KODO_*` overrides.
//!
//! Every key of the fixed sections can be overridden by an environment
//! variable named `KODO_<SECTION>_<KEY>` in upper case (`KODO_API_LISTEN`,
//! `KODO_STORE_URL`, ...). Unknown keys and bad values are errors that name
//! the key and the file (or the variable).

use kodo_actors::{CommandSpec, ExecLimits, FlowDef, Flows, NodeOptions};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Where executions and events are kept.
    pub store: StoreSection,
    /// How events travel from Tracers to Spoolers.
    pub transport: TransportSection,
    /// How Spoolers batch.
    pub spooler: SpoolerSection,
    /// Bounds on executions.
    pub limits: LimitsSection,
    /// Log output.
    pub log: LogSection,
    /// Who may call the API.
    pub auth: AuthSection,
    /// The command flows, by name.
    pub flows: BTreeMap<String, FlowSection>,
}

/// `[node]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name; at start it closes only its own unfinished executions.
    pub name: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: "local".into(),
        }
    }
}

/// `[api]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    /// Address to listen on.
    pub listen: String,
    /// The largest request body, in bytes (larger: 413).
    pub max_body_bytes: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3370".into(),
            max_body_bytes: 1 << 20,
        }
    }
}

/// `[store]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DATABASE`.
    pub url: String,
    /// SQLite: `normal` (survives a crash of the process) or `full` (survives power loss).
    pub synchronous: String,
    /// SQLite: connections for API reads.
    pub read_connections: u32,
    /// PostgreSQL: the most connections (spoolers and API reads share them).
    pub pool: u32,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            url: "sqlite://./data/kodo.db".into(),
            synchronous: "normal".into(),
            read_connections: 4,
            pool: 8,
        }
    }
}

/// `[transport]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportSection {
    /// `local` (the in-process queue) or `redis` (Redis Streams).
    pub kind: String,
    /// Shards (Redis: streams), each drained by one Spooler per process.
    pub shards: usize,
    /// The most bytes of events in flight in this process; Tracers wait beyond it.
    pub capacity_bytes: usize,
    /// Redis: `redis://[:PASSWORD@]HOST:PORT[/DB]`.
    pub url: String,
    /// Redis: prefix of every key (one deployment, one prefix).
    pub prefix: String,
    /// Redis: entries a stream may hold before producers wait.
    pub max_len: usize,
    /// Redis: seconds after which a pending entry of a silent consumer is claimed.
    pub claim_idle: f64,
    /// Redis: seconds one blocking read waits for entries.
    pub block: f64,
}

impl Default for TransportSection {
    fn default() -> Self {
        Self {
            kind: "local".into(),
            shards: 2,
            capacity_bytes: 64 << 20,
            url: "redis://127.0.0.1:6379".into(),
            prefix: "kodo".into(),
            max_len: 100_000,
            claim_idle: 10.0,
            block: 0.5,
        }
    }
}

/// `[spooler]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolerSection {
    /// The most events one transaction commits.
    pub batch_max: usize,
    /// Run Spoolers inside `runtime run`; false leaves the Redis streams to
    /// `runtime spool` processes.
    pub enabled: bool,
}

impl Default for SpoolerSection {
    fn default() -> Self {
        Self {
            batch_max: 1000,
            enabled: true,
        }
    }
}

/// `[limits]` (durations in seconds)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// The largest event payload; longer output lines are split.
    pub max_payload_bytes: usize,
    /// The most executions running at once (more: 503).
    pub max_running: usize,
    /// SIGTERM-to-SIGKILL grace period when a command flow is killed.
    pub kill_grace: f64,
    /// Default time a lock waits for its answer.
    pub lock_timeout: f64,
    /// How long a launch waits for its first events to be stored (then 202).
    pub launch_wait: f64,
    /// How long shutdown waits for executions to stop and events to be stored.
    pub shutdown_wait: f64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1 << 20,
            max_running: 250_000,
            kill_grace: 5.0,
            lock_timeout: 10_800.0,
            launch_wait: 10.0,
            shutdown_wait: 30.0,
        }
    }
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter (`info`, `kodo_actors=debug,info`...); `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// `[auth]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// `[[auth.tokens]]` entries. With none, every caller is the admin `local`
    /// and the API refuses to listen on a non-loopback address.
    pub tokens: Vec<TokenEntry>,
}

/// One bearer token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// The secret the client sends as `Authorization: Bearer <token>`.
    pub token: String,
    /// The user it stands for.
    pub user: String,
    /// Whether the user sees everyone's executions.
    #[serde(default)]
    pub admin: bool,
}

/// `[flows.NAME]`: a command flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSection {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the config file's folder.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// Seconds after which the execution ends with `error`.
    #[serde(default)]
    pub timeout: Option<f64>,
    /// One line for `GET /flows`.
    #[serde(default)]
    pub description: String,
}

/// `KODO_*` variables that are not config keys: kodo sets them for flows.
const NOT_CONFIG: &[&str] = &["KODO_FID", "KODO_FLOW", "KODO_OWNER"];

/// Sections whose keys `KODO_*` variables may override.
const OVERRIDABLE: &[&str] = &[
    "node",
    "api",
    "store",
    "transport",
    "spooler",
    "limits",
    "log",
];

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
        let (from_env, warnings) = apply_env(&mut table, env)?;
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

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((key.to_string(), message.to_string()));
        let addr: SocketAddr = match self.api.listen.parse() {
            Ok(a) => a,
            Err(_) => return bad("api.listen", "expected HOST:PORT with an IP address"),
        };
        if self.auth.tokens.is_empty() && !addr.ip().is_loopback() {
            return bad(
                "api.listen",
                "refusing to listen on a non-loopback address without [[auth.tokens]]",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.token.len() < 8 {
                return bad(
                    &format!("auth.tokens[{i}].token"),
                    "tokens need 8 characters or more",
                );
            }
            if t.user.is_empty() {
                return bad(&format!("auth.tokens[{i}].user"), "empty user");
            }
            if !seen.insert(&t.token) {
                return bad(&format!("auth.tokens[{i}].token"), "duplicate token");
            }
        }
        if kodo_store::Backend::of(&self.store.url).is_err() {
            return bad(
                "store.url",
                "expected sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE",
            );
        }
        if !(1..=1000).contains(&self.store.pool) {
            return bad("store.pool", "expected 1 to 1000 connections");
        }
        if !matches!(self.store.synchronous.as_str(), "normal" | "full") {
            return bad("store.synchronous", "expected \"normal\" or \"full\"");
        }
        match self.transport.kind.as_str() {
            "local" => {
                if !self.spooler.enabled {
                    return bad(
                        "spooler.enabled",
                        "the local transport needs the node's own Spoolers; use transport.kind = \"redis\"",
                    );
                }
            }
            "redis" => {
                if !self.transport.url.starts_with("redis://") {
                    return bad("transport.url", "expected redis://HOST:PORT");
                }
                if self.transport.prefix.is_empty() || self.transport.prefix.contains(' ') {
                    return bad("transport.prefix", "expected a key prefix without spaces");
                }
                if self.transport.max_len < 100 {
                    return bad("transport.max_len", "expected at least 100");
                }
                for (key, v, min) in [
                    ("transport.claim_idle", self.transport.claim_idle, 0.1),
                    ("transport.block", self.transport.block, 0.01),
                ] {
                    if !(min..1e6).contains(&v) {
                        return bad(key, &format!("expected seconds, {min} or more"));
                    }
                }
            }
            _ => return bad("transport.kind", "expected \"local\" or \"redis\""),
        }
        if !(1..=256).contains(&self.transport.shards) {
            return bad("transport.shards", "expected 1 to 256");
        }
        if self.transport.capacity_bytes < 4096 {
            return bad("transport.capacity_bytes", "expected at least 4096");
        }
        if self.spooler.batch_max == 0 {
            return bad("spooler.batch_max", "expected at least 1");
        }
        if self.limits.max_payload_bytes < 256 {
            return bad("limits.max_payload_bytes", "expected at least 256");
        }
        if self.limits.max_running == 0 {
            return bad("limits.max_running", "expected at least 1");
        }
        for (key, v) in [
            ("limits.kill_grace", self.limits.kill_grace),
            ("limits.lock_timeout", self.limits.lock_timeout),
            ("limits.launch_wait", self.limits.launch_wait),
            ("limits.shutdown_wait", self.limits.shutdown_wait),
        ] {
            if !(0.0..1e9).contains(&v) {
                return bad(key, "expected seconds, 0 or more");
            }
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return bad("log.level", "not a valid log filter");
        }
        for (name, flow) in &self.flows {
            let key = format!("flows.{name}");
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return bad(&key, "flow names use letters, digits, '-', '_' and '.'");
            }
            if flow.command.first().is_none_or(String::is_empty) {
                return bad(
                    &format!("{key}.command"),
                    "expected a program and its arguments",
                );
            }
            if let Some(t) = flow.timeout
                && !(t > 0.0 && t < 1e9)
            {
                return bad(&format!("{key}.timeout"), "expected seconds, more than 0");
            }
        }
        Ok(())
    }

    /// The socket address of the API.
    pub fn listen(&self) -> SocketAddr {
        self.api.listen.parse().expect("validated")
    }

    /// The node's options.
    pub fn node_options(&self) -> NodeOptions {
        NodeOptions {
            node: self.node.name.clone(),
            batch_max: self.spooler.batch_max,
            limits: ExecLimits {
                max_payload: self.limits.max_payload_bytes,
                kill_grace: Duration::from_secs_f64(self.limits.kill_grace),
                lock_timeout: Duration::from_secs_f64(self.limits.lock_timeout),
            },
            max_live: self.limits.max_running,
            launch_wait: Duration::from_secs_f64(self.limits.launch_wait),
            shutdown_wait: Duration::from_secs_f64(self.limits.shutdown_wait),
            spoolers: self.spooler.enabled,
        }
    }

    /// The Redis transport's options; `consumer` names this process's
    /// consumers (a stable name re-reads its own pending entries at restart).
    pub fn redis_options(&self, consumer: &str) -> kodo_transport::RedisOptions {
        kodo_transport::RedisOptions {
            url: self.transport.url.clone(),
            prefix: self.transport.prefix.clone(),
            shards: self.transport.shards,
            consumer: consumer.to_string(),
            max_len: self.transport.max_len,
            claim_idle: Duration::from_secs_f64(self.transport.claim_idle),
            block: Duration::from_secs_f64(self.transport.block),
            capacity_bytes: self.transport.capacity_bytes,
        }
    }

    /// Opens the configured transport.
    pub async fn transport(
        &self,
        consumer: &str,
    ) -> Result<kodo_transport::SharedTransport, kodo_transport::TransportError> {
        Ok(match self.transport.kind.as_str() {
            "redis" => kodo_transport::RedisStreams::connect(self.redis_options(consumer)).await?,
            _ => kodo_transport::LocalQueue::new(
                self.transport.shards,
                self.transport.capacity_bytes,
            ),
        })
    }

    /// The store's options.
    pub fn store_options(&self, upgrade: bool) -> kodo_store::StoreOptions {
        kodo_store::StoreOptions {
            read_connections: self.store.read_connections,
            full_sync: self.store.synchronous == "full",
            pool: self.store.pool,
            upgrade,
        }
    }

    /// The command flows.
    pub fn flows(&self) -> Flows {
        let mut flows = Flows::default();
        for (name, f) in &self.flows {
            let mut def = FlowDef::command(
                name,
                CommandSpec {
                    command: f.command.clone(),
                    env: f.env.clone(),
                    cwd: f.cwd.clone(),
                },
            )
            .describe(&f.description);
            def.timeout = f.timeout.map(Duration::from_secs_f64);
            flows.add(def);
        }
        flows
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

/// Applies `KODO_<SECTION>_<KEY>` variables to the parsed file. Returns the
/// keys they set (key -> variable) and a warning for each `KODO_*` variable
/// that names no key.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(BTreeMap<String, String>, Vec<String>), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
    let known: Vec<(String, &str, &String, &toml::Value)> = OVERRIDABLE
        .iter()
        .filter_map(|section| Some((*section, defaults.get(*section)?.as_table()?)))
        .flat_map(|(section, keys)| {
            keys.iter().map(move |(key, default)| {
                (
                    format!("KODO_{section}_{key}").to_uppercase(),
                    section,
                    key,
                    default,
                )
            })
        })
        .collect();
    let (mut set, mut warnings) = (BTreeMap::new(), Vec::new());
    for (var, raw) in env {
        if !var.starts_with("KODO_")
            || NOT_CONFIG.contains(&var.as_str())
            || var.starts_with("KODO_TEST_")
        {
            continue;
        }
        let Some((_, section, key, default)) = known.iter().find(|(name, ..)| *name == var) else {
            let nearest = known
                .iter()
                .map(|(name, ..)| (strsim::levenshtein(name, &var), name))
                .min()
                .filter(|(distance, _)| *distance <= 3)
                .map(|(_, name)| format!(" (did you mean {name}?)"))
                .unwrap_or_default();
            warnings.push(format!(
                "ignoring the environment variable {var}: it names no config key{nearest}"
            ));
            continue;
        };
        let (section, key) = (*section, (*key).clone());
        let bad = |message: String| ConfigError {
            source_name: var.clone(),
            key: format!("{section}.{key}"),
            message,
        };
        let value = match default {
            toml::Value::Integer(_) => raw
                .trim()
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| bad(format!("expected an integer, got {raw:?}")))?,
            toml::Value::Float(_) => raw
                .trim()
                .parse::<f64>()
                .map(toml::Value::Float)
                .map_err(|_| bad(format!("expected a number, got {raw:?}")))?,
            toml::Value::Boolean(_) => raw
                .trim()
                .parse::<bool>()
                .map(toml::Value::Boolean)
                .map_err(|_| bad(format!("expected true or false, got {raw:?}")))?,
            _ => toml::Value::String(raw),
        };
        let section_table = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section_table.as_table_mut() {
            Some(t) => {
                t.insert(key.clone(), value);
            }
            None => return Err(bad(format!("[{section}] is not a table in the file"))),
        }
        set.insert(format!("{section}.{key}"), var);
    }
    Ok((set, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("kodo.toml", text, Vec::new())
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_serve_one_machine() {
        let c = parse("").unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:3370");
        assert_eq!(c.store.url, "sqlite://./data/kodo.db");
        assert_eq!(c.transport.kind, "local");
    }

    #[test]
    fn a_full_file_parses() {
        let c = parse(
            r#"
            [api]
            listen = "0.0.0.0:8080"
            [[auth.tokens]]
            token = "secret-ann"
            user = "ann"
            [[auth.tokens]]
            token = "secret-root"
            user = "root"
            admin = true
            [flows.hello]
            command = ["python3", "hello.py"]
            env = { GREETING = "hi" }
            timeout = 30
            description = "says hello"
            "#,
        )
        .unwrap();
        assert_eq!(c.auth.tokens.len(), 2);
        assert!(c.auth.tokens[1].admin);
        let flows = c.flows();
        let hello = flows.get("hello").unwrap();
        assert_eq!(hello.timeout, Some(Duration::from_secs(30)));
        assert_eq!(hello.description, "says hello");
    }

    #[test]
    fn bad_files_name_the_key_and_the_file() {
        let cases = [
            ("[api]\nlisten = 3", "kodo.toml: api.listen: invalid type"),
            (
                "[api]\nlisen = \"x\"",
                "kodo.toml: api.lisen: unknown field `lisen`",
            ),
            ("[nope]\n", "kodo.toml: nope: unknown field `nope`"),
            ("[api\n", "kodo.toml: -: TOML parse error"),
            (
                "[api]\nlisten = \"localhost\"",
                "kodo.toml: api.listen: expected HOST:PORT",
            ),
            (
                "[api]\nlisten = \"0.0.0.0:1\"",
                "kodo.toml: api.listen: refusing",
            ),
            (
                "[store]\nurl = \"mysql://x\"",
                "kodo.toml: store.url: expected sqlite://PATH or postgres://",
            ),
            (
                "[store]\nsynchronous = \"off\"",
                "kodo.toml: store.synchronous",
            ),
            (
                "[transport]\nkind = \"carrier-pigeon\"",
                "kodo.toml: transport.kind",
            ),
            ("[transport]\nshards = 0", "kodo.toml: transport.shards"),
            ("[store]\npool = 0", "kodo.toml: store.pool"),
            (
                "[spooler]\nenabled = false",
                "kodo.toml: spooler.enabled: the local transport needs",
            ),
            (
                "[transport]\nkind = \"redis\"\nurl = \"http://x\"",
                "kodo.toml: transport.url: expected redis://",
            ),
            (
                "[transport]\nkind = \"redis\"\nprefix = \"a b\"",
                "kodo.toml: transport.prefix",
            ),
            (
                "[transport]\nkind = \"redis\"\nmax_len = 5",
                "kodo.toml: transport.max_len",
            ),
            (
                "[transport]\nkind = \"redis\"\nclaim_idle = 0",
                "kodo.toml: transport.claim_idle",
            ),
            (
                "[transport]\nkind = \"redis\"\nblock = -1",
                "kodo.toml: transport.block",
            ),
            ("[limits]\nkill_grace = -1", "kodo.toml: limits.kill_grace"),
            ("[flows.x]\ncommand = []", "kodo.toml: flows.x.command"),
            (
                "[flows.x]\ncommand = [\"a\"]\ntimeout = 0",
                "kodo.toml: flows.x.timeout",
            ),
            (
                "[flows.x]\ncommand = [\"a\"]\nretries = 1",
                "kodo.toml: flows.x.retries: unknown field `retries`",
            ),
            (
                "[flows.\"a b\"]\ncommand = [\"a\"]",
                "kodo.toml: flows.a b: flow names",
            ),
            (
                "[[auth.tokens]]\ntoken = \"short\"\nuser = \"u\"",
                "kodo.toml: auth.tokens[0].token",
            ),
            ("[log]\nlevel = \"[[[\"", "kodo.toml: log.level"),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with(expected),
                "{text:?}: got {e:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn environment_overrides_keys_and_names_bad_variables() {
        let c = Config::parse(
            "kodo.toml",
            "[api]\nlisten = \"127.0.0.1:1\"",
            env(&[
                ("KODO_API_LISTEN", "127.0.0.1:9"),
                ("KODO_STORE_URL", "sqlite:///tmp/x.db"),
                ("KODO_LIMITS_KILL_GRACE", "0.5"),
                ("KODO_TRANSPORT_SHARDS", "4"),
                ("KODO_SOMETHING_ELSE", "ignored"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.api.listen, "127.0.0.1:9");
        assert_eq!(c.store.url, "sqlite:///tmp/x.db");
        assert_eq!(c.limits.kill_grace, 0.5);
        assert_eq!(c.transport.shards, 4);
        let e =
            Config::parse("kodo.toml", "", env(&[("KODO_TRANSPORT_SHARDS", "many")])).unwrap_err();
        assert_eq!(e.source_name, "KODO_TRANSPORT_SHARDS");
        assert_eq!(e.key, "transport.shards");
        let e =
            Config::parse("kodo.toml", "api = 1", env(&[("KODO_API_LISTEN", "x")])).unwrap_err();
        assert!(e.message.contains("not a table"), "{e}");
    }

    #[test]
    fn a_bad_value_from_a_variable_names_the_variable_and_misspelt_ones_are_reported() {
        for (var, value, key) in [
            ("KODO_API_LISTEN", "garbage", "api.listen"),
            ("KODO_STORE_POOL", "0", "store.pool"),
            ("KODO_STORE_POOL", "-1", "store.pool"),
            ("KODO_STORE_URL", "mysql://x", "store.url"),
        ] {
            let e = Config::parse("kodo.toml", "", env(&[(var, value)])).unwrap_err();
            assert_eq!((e.source_name.as_str(), e.key.as_str()), (var, key), "{e}");
        }
        let e = Config::parse("kodo.toml", "[store]\npool = 0", Vec::new()).unwrap_err();
        assert_eq!(
            e.source_name, "kodo.toml",
            "a bad value in the file names the file"
        );
        let c = Config::parse(
            "kodo.toml",
            "",
            env(&[
                ("KODO_STORE_UR", "sqlite://x.db"),
                ("KODO_NOTHING_LIKE_IT", "1"),
                ("KODO_FID", "set for flows"),
                ("KODO_TEST_PG_URL", "set by scripts/test"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.warnings,
            [
                "ignoring the environment variable KODO_STORE_UR: it names no config key (did you mean KODO_STORE_URL?)",
                "ignoring the environment variable KODO_NOTHING_LIKE_IT: it names no config key",
            ]
        );
    }

    #[test]
    fn relative_paths_in_a_file_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kodo.toml");
        std::fs::write(
            &file,
            "[store]\nurl = \"sqlite://./data/kodo.db?mode=rwc\"\n\
             [flows.a]\ncommand = [\"sh\", \"a.sh\"]\n\
             [flows.b]\ncommand = [\"sh\", \"b.sh\"]\ncwd = \"flows\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file), Vec::new()).unwrap();
        let dir = dir.path();
        assert_eq!(
            c.store.url,
            format!("sqlite://{}/data/kodo.db?mode=rwc", dir.display())
        );
        let flows = c.flows();
        let cwd = |name: &str| match &flows.get(name).unwrap().kind {
            kodo_actors::flow::FlowKind::Command(spec) => spec.cwd.clone().unwrap(),
            _ => unreachable!(),
        };
        assert_eq!((cwd("a"), cwd("b")), (dir.to_path_buf(), dir.join("flows")));
        // A variable's relative path is the shell's: relative to the working directory.
        let c = Config::load(Some(&file), env(&[("KODO_STORE_URL", "sqlite://x.db")])).unwrap();
        assert_eq!(c.store.url, "sqlite://x.db");
        for (url, same) in [
            ("sqlite:///abs/kodo.db", true),
            ("postgres://u:p@h:1/d", true),
            ("sqlite:rel.db", false),
        ] {
            assert_eq!(sqlite_relative_to(url, dir) == url, same, "{url}");
        }
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = Config::load(Some(Path::new("/nonexistent/kodo.toml")), Vec::new()).unwrap_err();
        assert_eq!(e.source_name, "/nonexistent/kodo.toml");
        assert!(e.message.starts_with("cannot read"));
    }
}
