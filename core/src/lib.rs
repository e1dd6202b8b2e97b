//! The shared vocabulary of kodo: execution ids, events, kinds and statuses.
//!
//! Every other crate depends on this one and on nothing above it, so the words
//! mean the same thing in the store, the transports, the actors and the API.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The id of one execution: a UUIDv7, so ids sort by creation time.
/// Clones share one allocation (an execution's id is held in many places).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fid(Arc<str>);

impl Fid {
    /// A fresh, time-sortable id.
    pub fn new() -> Self {
        Fid(uuid::Uuid::now_v7().to_string().into())
    }

    /// Parses an id given by a client; only canonical UUID text is accepted.
    pub fn parse(text: &str) -> Option<Self> {
        let id = uuid::Uuid::parse_str(text).ok()?;
        let canonical = id.to_string();
        (canonical == text).then(|| Fid(canonical.into()))
    }

    /// Wraps a string that is already known to be a valid id (read from the store).
    pub fn from_stored(text: String) -> Self {
        Fid(text.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Fid {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for Fid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Declares a string enum with its wire names in one place.
macro_rules! names {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($(#[$vdoc])* $variant,)* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(text: &str) -> Result<Self, UnknownName> {
                match text {
                    $($text => Ok($name::$variant),)*
                    _ => Err(UnknownName { what: stringify!($name), text: text.to_string() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

names! {
    /// What an event is about; Kodosumi's fourteen names, so its users feel
    /// at home, and kodo's `step`.
    Kind {
        /// Who launched what, where: the first event of every execution.
        Meta = "meta",
        /// The inputs the execution was launched with.
        Inputs = "inputs",
        /// A status change; the payload is a [`Status`] name.
        Status = "status",
        /// An agent description (CrewAI style).
        Agent = "agent",
        /// Files handed to the execution.
        Upload = "upload",
        /// Debug output of the flow.
        Debug = "debug",
        /// One line the flow wrote to stdout.
        Stdout = "stdout",
        /// One line the flow wrote to stderr, or a runtime warning about the flow.
        Stderr = "stderr",
        /// A step the flow took.
        Action = "action",
        /// An intermediate result.
        Result = "result",
        /// The final result of a successful execution.
        Final = "final",
        /// Why the execution failed.
        Error = "error",
        /// The flow asks a person for input.
        Lock = "lock",
        /// The answer to a lock (or its expiry).
        Lease = "lease",
        /// A step's journaled result (`{"n","name","result"}`): a recovered
        /// execution replays it instead of running the step again.
        Step = "step",
    }
}

names! {
    /// Where an execution is in its life.
    Status {
        /// Launched, not yet running the flow.
        Starting = "starting",
        /// Running the flow.
        Running = "running",
        /// Waiting for the answer to at least one open lock.
        Awaiting = "awaiting",
        /// Held by a pause (durable mode): the flow makes no progress until resumed.
        Paused = "paused",
        /// Final: the flow succeeded.
        Finished = "finished",
        /// Final: the flow failed, crashed, timed out or its node went away.
        Error = "error",
        /// Final: someone killed it.
        Killed = "killed",
    }
}

impl Status {
    /// Whether no further event follows this status.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Finished | Status::Error | Status::Killed)
    }
}

impl Kind {
    /// Kinds a flow may emit itself (on fd 3 or through its context);
    /// the others are written by the runtime.
    pub fn emittable_by_flow(self) -> bool {
        matches!(
            self,
            Kind::Agent
                | Kind::Upload
                | Kind::Debug
                | Kind::Stdout
                | Kind::Stderr
                | Kind::Action
                | Kind::Result
        )
    }
}

/// A name that is not one of a [`Kind`]'s or [`Status`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{text}`")]
pub struct UnknownName {
    /// Which vocabulary was asked.
    pub what: &'static str,
    /// The text that matched none of its names.
    pub text: String,
}

/// One event of one execution, as the Tracer numbered it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The execution.
    pub fid: Fid,
    /// 1, 2, 3... per execution with no gap.
    pub seq: u64,
    /// Seconds since the Unix epoch, when the Tracer accepted the event.
    pub ts: f64,
    /// What the event is about.
    pub kind: Kind,
    /// JSON text of the payload.
    pub payload: String,
    /// The attempt of a durable execution that wrote it (1, 2...; 0 in
    /// direct mode). The store refuses events of an attempt older than the
    /// one its execution was fenced for (see `Store::fence`).
    #[serde(default)]
    pub attempt: u32,
}

impl Event {
    /// Bytes this event holds in memory, for queue budgets.
    pub fn weight(&self) -> usize {
        self.payload.len() + self.fid.as_str().len() + 48
    }

    /// The status this event sets, if it is a status event.
    pub fn status(&self) -> Option<Status> {
        if self.kind != Kind::Status {
            return None;
        }
        serde_json::from_str::<String>(&self.payload)
            .ok()?
            .parse()
            .ok()
    }
}

/// What the first (`meta`) event of an execution says; the store keeps it
/// in the executions table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The flow's name.
    pub flow: String,
    /// The user who launched it.
    pub owner: String,
    /// The node that runs it; that node closes it if it restarts.
    pub node: String,
    /// The kodo version that ran it.
    pub kodo: String,
    /// The W3C `traceparent` of its span when traces are on: the spool
    /// processes link their commit spans to it, and a resumed run continues
    /// its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// What the flow's form decided at the launch (a Kodosumi app: the
    /// entry point its `Launch` named); a resumed run gets it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<serde_json::Value>,
    /// What the API that launched it keeps with it (a MIP-003 job: the
    /// purchaser's identifier and the input hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<serde_json::Value>,
}

/// Now, in seconds since the Unix epoch.
pub fn now_ts() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The JSON text of a string payload.
pub fn json_text(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// Replaces the password of a URL by `***`, for messages and logs.
pub fn mask_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let scheme = &url[..scheme_end + 3];
    let host = &rest[at..];
    match authority[..at].find(':') {
        Some(colon) => format!("{scheme}{}:***{host}", &authority[..colon]),
        // redis://PASSWORD@host: a lone user part is the password.
        None if url.starts_with("redis") => format!("{scheme}***{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_only() {
        assert_eq!(
            mask_url("postgres://kodo:secret@db:5432/kodo"),
            "postgres://kodo:***@db:5432/kodo"
        );
        assert_eq!(
            mask_url("sqlite://./data/kodo.db"),
            "sqlite://./data/kodo.db"
        );
        assert_eq!(mask_url("redis://db:6379"), "redis://db:6379");
        assert_eq!(mask_url("redis://:pw@db:6379/0"), "redis://:***@db:6379/0");
        assert_eq!(mask_url("redis://pw@db:6379"), "redis://***@db:6379");
        assert_eq!(mask_url("nonsense"), "nonsense");
    }

    #[test]
    fn fifteen_kinds_seven_statuses_round_trip() {
        // Kodosumi's fourteen and `step`.
        assert_eq!(Kind::ALL.len(), 15);
        assert_eq!(Status::ALL.len(), 7);
        for k in Kind::ALL {
            assert_eq!(k.as_str().parse::<Kind>().unwrap(), *k);
            assert_eq!(serde_json::to_string(k).unwrap(), format!("\"{k}\""));
        }
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), *s);
        }
        let err = "nope".parse::<Kind>().unwrap_err();
        assert_eq!(err.to_string(), "unknown Kind `nope`");
    }

    #[test]
    fn fids_sort_by_time_and_parse_strictly() {
        let a = Fid::new();
        let b = Fid::new();
        assert!(a < b);
        assert_eq!(Fid::parse(a.as_str()), Some(a.clone()));
        assert_eq!(Fid::parse("not-a-fid"), None);
        assert_eq!(Fid::parse(&a.as_str().to_uppercase()), None);
    }

    #[test]
    fn status_of_event() {
        let e = Event {
            fid: Fid::new(),
            seq: 1,
            ts: now_ts(),
            kind: Kind::Status,
            payload: json_text("killed"),
            attempt: 0,
        };
        assert_eq!(e.status(), Some(Status::Killed));
        assert!(Status::Killed.is_final());
        assert!(!Status::Awaiting.is_final());
        let not = Event {
            kind: Kind::Stdout,
            ..e
        };
        assert_eq!(not.status(), None);
    }
}
