//! The event store of kodo: the [`Store`] trait the actors and the API use,
//! and its two implementations: SQLite (the embedded default) and PostgreSQL.
//!
//! A store keeps two tables: `executions` (one row per execution, its flow,
//! owner, node, status and counts) and `events` (primary key `(fid, seq)`).
//! [`Store::write`] takes a batch of events and commits them together with
//! the executions rows they change, in one transaction; an event whose
//! `(fid, seq)` is already stored is ignored, which makes redelivery safe.

mod claim;
mod fence;
mod hooked;
mod postgres;
mod sql;
mod sqlite;
mod summary;

pub use claim::NodeClaim;
pub use hooked::{Hooked, WriteHooks};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use summary::{ExecutionUpdate, ExecutionValues, summarize};

use async_trait::async_trait;
use kodo_core::{Event, Fid, Kind, Status};
use std::sync::Arc;

/// What went wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL or its options are not usable.
    #[error("store url {url}: {reason}")]
    Config {
        /// The URL, with any password masked.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The database schema is older than this build; `runtime db upgrade` fixes it.
    #[error(
        "the database schema at {url} is behind this build (applied {applied}, known {known}): run `runtime db upgrade`"
    )]
    SchemaBehind {
        /// The URL, with any password masked.
        url: String,
        /// Migrations applied in the database.
        applied: usize,
        /// Migrations this build knows.
        known: usize,
    },
    /// The database said no, or could not be reached (the driver's error).
    #[error("store: {0}")]
    Database(#[source] Cause),
    /// Applying migrations failed.
    #[error("store migration: {0}")]
    Migrate(#[source] Cause),
    /// A value read back could not be understood.
    #[error("store holds a bad value: {0}")]
    Corrupt(String),
    /// Another live process holds this node name in this store.
    #[error(
        "node `{node}` is already running on this store ({holder}); stop it, or give this node another name (node.name, KODO_NODE_NAME)"
    )]
    NodeTaken {
        /// The node name.
        node: String,
        /// Who holds it, as far as the store can tell.
        holder: String,
    },
    /// The lock file that holds a node name could not be used.
    #[error("cannot claim the node name with {path}: {reason}")]
    ClaimFile {
        /// The lock file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A newer attempt of this durable execution fenced it already: this
    /// attempt must stop.
    #[error("execution {fid} is fenced for attempt {attempt}, a newer one")]
    Superseded {
        /// The execution.
        fid: String,
        /// The attempt it is fenced for.
        attempt: u32,
    },
    /// The store was closed; nothing more is written.
    #[error("the store is closed")]
    Closed,
    /// An injected fault (tests only ever produce this).
    #[error("injected fault: {0}")]
    Injected(String),
}

/// The error underneath a [`StoreError`], whatever the backend.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

// The backends' errors convert with `?`; the public type stays free of them.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(Box::new(e))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(Box::new(e))
    }
}

/// One execution as the store knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionRow {
    /// Its id.
    pub fid: Fid,
    /// The flow it runs.
    pub flow: String,
    /// The user who launched it.
    pub owner: String,
    /// The node that runs it.
    pub node: String,
    /// Its latest stored status.
    pub status: Status,
    /// When it was launched (seconds since the epoch).
    pub created: f64,
    /// When its latest stored event was accepted.
    pub updated: f64,
    /// How many events are stored (equal to the highest stored seq).
    pub events: u64,
}

/// A page of executions, newest first.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only this owner's executions (None: everyone's).
    pub owner: Option<String>,
    /// Only executions in this status.
    pub status: Option<Status>,
    /// Only executions of this flow.
    pub flow: Option<String>,
    /// Only executions older than this one (the cursor of the previous page).
    pub before: Option<Fid>,
    /// At most this many.
    pub limit: u32,
}

/// A page of one execution's events, in seq order.
#[derive(Clone, Debug)]
pub struct EventQuery {
    /// Only events with a greater seq.
    pub after: u64,
    /// At most this many.
    pub limit: u32,
    /// Only these kinds (None: all).
    pub kinds: Option<Vec<Kind>>,
}

/// Where executions and their events are kept.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a batch of events and updates the executions they belong to,
    /// all in one transaction; events already stored are ignored.
    async fn write(&self, events: &[Event]) -> Result<(), StoreError>;

    /// One execution.
    async fn execution(&self, fid: &Fid) -> Result<Option<ExecutionRow>, StoreError>;

    /// A page of executions, newest first.
    async fn executions(&self, query: &ListQuery) -> Result<Vec<ExecutionRow>, StoreError>;

    /// A page of one execution's events in seq order.
    async fn events(&self, fid: &Fid, query: &EventQuery) -> Result<Vec<Event>, StoreError>;

    /// How many events of `fid` are stored (with no gap: its highest seq).
    async fn event_count(&self, fid: &Fid) -> Result<u64, StoreError>;

    /// Executions of `node` whose stored status is not final.
    async fn unfinished(&self, node: &str) -> Result<Vec<ExecutionRow>, StoreError>;

    /// Fences durable execution `fid` for attempt `attempt`: from now on
    /// [`Store::write`] refuses the events of older attempts (a worker that
    /// was frozen past its heartbeat timeout, then woke). Returns what is
    /// stored of the execution (its highest seq and status; None: nothing),
    /// after which the attempt numbers its events; refuses with
    /// [`StoreError::Superseded`] when a newer attempt fenced it already.
    async fn fence(&self, fid: &Fid, attempt: u32) -> Result<Option<(u64, Status)>, StoreError>;

    /// [`Store::fence`], but refused also when `attempt` fenced it already:
    /// of two that race to begin the same attempt, one wins.
    async fn fence_first(
        &self,
        fid: &Fid,
        attempt: u32,
    ) -> Result<Option<(u64, Status)>, StoreError>;

    /// Makes `node` the node that runs execution `fid` (a survivor resumes
    /// a lost node's execution); its unfinished executions now count it.
    async fn adopt(&self, fid: &Fid, node: &str) -> Result<(), StoreError>;

    /// Claims node name `node` for this process until the claim is dropped
    /// or the process ends; [`StoreError::NodeTaken`] while another live
    /// process holds it.
    async fn claim_node(&self, node: &str) -> Result<NodeClaim, StoreError>;

    /// Whether the store answers now.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Flushes and closes the store.
    async fn close(&self);
}

/// A shared store.
pub type SharedStore = Arc<dyn Store>;

pub use kodo_core::mask_url;

/// Opens the store a URL names: `sqlite://PATH` or `postgres://...`
/// (`postgresql://` too).
pub async fn open(url: &str, options: &StoreOptions) -> Result<SharedStore, StoreError> {
    Ok(match Backend::of(url)? {
        Backend::Sqlite => Arc::new(SqliteStore::open(url, options).await?),
        Backend::Postgres => Arc::new(PgStore::open(url, options).await?),
    })
}

/// Brings the schema of the database a URL names up to date and returns the
/// migrations it applied (empty: it was already up to date).
pub async fn upgrade(url: &str, options: &StoreOptions) -> Result<Vec<(i64, String)>, StoreError> {
    let options = StoreOptions {
        upgrade: true,
        ..options.clone()
    };
    Ok(match Backend::of(url)? {
        Backend::Sqlite => {
            let store = SqliteStore::open(url, &options).await?;
            store.close().await;
            store.migrated().to_vec()
        }
        Backend::Postgres => {
            let store = PgStore::open(url, &options).await?;
            store.close().await;
            store.migrated().to_vec()
        }
    })
}

/// The database kinds a store URL can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH`
    Sqlite,
    /// `postgres://...` or `postgresql://...`
    Postgres,
}

impl Backend {
    /// The backend of a URL, or a [`StoreError::Config`] naming it.
    pub fn of(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(StoreError::Config {
                url: mask_url(url),
                reason: "unsupported scheme; use sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE".into(),
            })
        }
    }
}

/// Knobs of a store; the defaults serve one machine.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// SQLite: connections for readers (the API).
    pub read_connections: u32,
    /// SQLite: `synchronous=FULL` instead of `NORMAL` (survives power loss, slower commits).
    pub full_sync: bool,
    /// PostgreSQL: the most connections of the pool (spoolers and API share it).
    pub pool: u32,
    /// Apply migrations on open: always for a new database; for an existing one
    /// only when this is true (`runtime db upgrade`), else a schema behind is an error.
    pub upgrade: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            read_connections: 4,
            full_sync: false,
            pool: 8,
            upgrade: false,
        }
    }
}
